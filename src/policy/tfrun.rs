//! The `tfrun` half of the policy input (`input.tfrun`), in Scalr's shape:
//! the workspace, its environment, the commit and pull request, the cost
//! estimate, who made the change. Built for a run's policy phase and for
//! impact analysis over a stored plan, from what the store and the mirror hold.

use crate::config::Workspace;
use crate::git::{Mirror, Mirrors};
use crate::store::{CostEstimate, PlanSummary, Run, RunKind, Store};
use crate::vcs::VcsEvent;

/// The `tfrun` policy input, in Scalr's shape.
pub async fn tfrun(
    store: &Store,
    mirrors: &Mirrors,
    run: &Run,
    workspace: &Workspace,
    summary: &PlanSummary,
    cost: &CostEstimate,
) -> serde_json::Value {
    let mirror = Mirror {
        path: mirrors.path_for(&run.provider_id, &run.repo),
    };
    let (message, author) = mirror.commit_info(&run.head_sha).unwrap_or_default();
    let event = match run.event_id {
        Some(id) => store
            .event(id)
            .await
            .ok()
            .flatten()
            .and_then(|e| serde_json::from_str::<VcsEvent>(&e.body).ok()),
        None => None,
    };
    let pull_request = match (&event, run.pr_number) {
        (Some(VcsEvent::PullRequest(p)), Some(_)) => serde_json::json!({
            "id": p.number, "title": p.title, "author": p.author, "merged_by": null,
            "head_branch": p.head_ref, "base_branch": p.base_ref
        }),
        (_, Some(n)) => serde_json::json!({
            "id": n, "title": null, "author": null, "merged_by": null,
            "head_branch": null, "base_branch": run.branch
        }),
        _ => serde_json::Value::Null,
    };
    let created_by = match &event {
        Some(VcsEvent::PullRequest(p)) => p.author.clone(),
        Some(VcsEvent::Command(c)) => c.author.clone(),
        _ => author.clone(),
    };
    serde_json::json!({
        "workspace": {
            "name": workspace.name,
            "auto_apply": workspace.auto_apply,
            "working_directory": workspace.dir.as_str(),
            "tags": []
        },
        "environment": {"id": workspace.environment, "name": workspace.environment},
        "vcs": {
            "repository_id": run.repo,
            "branch": run.branch,
            "commit": {"sha": run.head_sha, "message": message, "author": {"username": author}},
            "pull_request": pull_request
        },
        "cost_estimate": {
            "prior_monthly_cost": cost.prior_monthly_cost,
            "proposed_monthly_cost": cost.proposed_monthly_cost,
            "delta_monthly_cost": cost.delta_monthly_cost
        },
        "created_by": {"username": created_by},
        "is_destroy": summary.destroy > 0 && summary.add == 0 && summary.change == 0,
        "is_dry": run.kind == RunKind::Plan,
        "source": "vcs"
    })
}
