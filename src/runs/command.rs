//! `/gantry plan|apply|help` comments on a pull request.
//!
//! `plan` queues fresh plans at the PR's head. `apply` applies the plans the PR
//! already shows, for workspaces with `workflow: apply_before_merge`, once the
//! commenter's write access and the workspaces' `apply_requirements` are
//! checked through the provider. Every command is audited; every refusal is
//! answered on the pull request with the reason.

use std::sync::Arc;

use crate::commands::{Command, HELP};
use crate::config::{ApplyRequirement, Workflow};
use crate::runs::dispatch::{runs_for, Change, Deps, DiffFrom, Outcome};
use crate::runs::{Run, RunSource, RunState};
use crate::store::{short_sha, Audit, EventRow, Supersede};
use crate::vcs::{CommandEvent, VcsProvider};

pub(super) async fn handle(
    ctx: &Deps,
    event: &EventRow,
    c: &CommandEvent,
) -> anyhow::Result<Outcome> {
    let Some(provider) = ctx.settings.providers().get(&event.provider_id) else {
        return Ok(Outcome::nothing(format!(
            "provider {} is no longer configured",
            event.provider_id
        )));
    };
    let actor = format!("{}:{}", event.provider_id, c.author);
    let text = match &c.command {
        Command::Help => format!("/gantry {}", c.command.name()),
        Command::Invalid { why } => format!("/gantry: {why}"),
        Command::Override { workspace, reason } => format!(
            "/gantry override{} {reason}",
            workspace
                .as_ref()
                .map(|w| format!(" -w {w}"))
                .unwrap_or_default()
        ),
        Command::Plan { workspace } | Command::Apply { workspace } => format!(
            "/gantry {}{}",
            c.command.name(),
            workspace
                .as_ref()
                .map(|w| format!(" -w {w}"))
                .unwrap_or_default()
        ),
    };
    ctx.store
        .audit(Audit {
            actor: &actor,
            action: "comment",
            workspace: command_workspace(&c.command),
            commit_sha: None,
            detail: Some(&format!("{text} on {}#{}", c.repo, c.pr_number)),
            ..Default::default()
        })
        .await?;
    // Replies are outbox rows too: dispatch never waits on the VCS API.
    let reply = |body: String| {
        let (outbox, provider_id) = (ctx.outbox.clone(), provider.id().to_string());
        let (repo, pr, author) = (c.repo.clone(), c.pr_number, c.author.clone());
        async move {
            let body = format!("@{author} {body}");
            crate::outbox::reply(&outbox, &provider_id, &repo, pr, body).await
        }
    };
    match &c.command {
        Command::Help => {
            reply(HELP.to_string()).await;
            Ok(Outcome::nothing("help sent"))
        }
        Command::Invalid { why } => {
            reply(format!("{why}.\n\n{HELP}")).await;
            Ok(Outcome::nothing(format!("invalid command: {why}")))
        }
        Command::Plan { workspace } => {
            plan(ctx, event, c, &*provider, workspace.as_deref(), reply).await
        }
        Command::Apply { workspace } => {
            apply(ctx, c, &provider, &actor, workspace.as_deref(), reply).await
        }
        Command::Override { workspace, reason } => {
            override_policies(
                ctx,
                c,
                &provider,
                &actor,
                workspace.as_deref(),
                reason,
                reply,
            )
            .await
        }
    }
}

fn command_workspace(c: &Command) -> Option<&str> {
    match c {
        Command::Plan { workspace }
        | Command::Apply { workspace }
        | Command::Override { workspace, .. } => workspace.as_deref(),
        _ => None,
    }
}

async fn plan<R, F>(
    ctx: &Deps,
    event: &EventRow,
    c: &CommandEvent,
    provider: &dyn VcsProvider,
    workspace: Option<&str>,
    reply: R,
) -> anyhow::Result<Outcome>
where
    R: Fn(String) -> F,
    F: std::future::Future<Output = ()>,
{
    let pr = provider.pull_request(&c.repo, c.pr_number).await?;
    if !pr.open {
        reply("this pull request is closed; nothing to plan.".into()).await;
        return Ok(Outcome::nothing("plan refused: pull request closed"));
    }
    if pr.from_fork && !ctx.settings.config().allow_fork_prs {
        reply("this pull request comes from a fork, and gantry does not run forks' code (`allow_fork_prs`).".into())
            .await;
        return Ok(Outcome::nothing("plan refused: pull request from a fork"));
    }
    let change = Change {
        repo: &c.repo,
        branch: &pr.base_ref,
        head_sha: &pr.head_sha,
        git_ref: pr.fetch_ref.clone(),
        head_repo: pr.head_repo.as_deref(),
        source: RunSource::Comment,
        pr_number: Some(c.pr_number),
        diff_from: DiffFrom::ForkOf(format!("refs/heads/{}", pr.base_ref)),
        only: workspace,
    };
    let crate::runs::dispatch::Found { runs, head_sha, .. } =
        match runs_for(ctx, event, &change).await? {
            Ok(found) => found,
            Err(why) => {
                reply(format!("nothing to plan: {why}.")).await;
                return Ok(Outcome::nothing(why));
            }
        };
    if runs.is_empty() {
        reply("nothing to plan: this pull request affects no workspace.".into()).await;
    }
    Ok(Outcome {
        detail: format!(
            "/gantry plan on #{} at {}: {} runs",
            c.pr_number,
            short_sha(&head_sha),
            runs.len()
        ),
        runs,
        supersede: Some(Supersede {
            provider_id: event.provider_id.clone(),
            repo: c.repo.clone(),
            pr_number: c.pr_number,
            head_sha: head_sha.clone(),
        }),
        pr: Some((c.repo.clone(), c.pr_number, head_sha)),
    })
}

async fn apply<R, F>(
    ctx: &Deps,
    c: &CommandEvent,
    provider: &Arc<dyn VcsProvider>,
    actor: &str,
    workspace: Option<&str>,
    reply: R,
) -> anyhow::Result<Outcome>
where
    R: Fn(String) -> F,
    F: std::future::Future<Output = ()>,
{
    let refuse = |why: String| {
        let reply = &reply;
        async move {
            ctx.store
                .audit(Audit {
                    actor,
                    action: "apply refused",
                    workspace,
                    detail: Some(&why),
                    ..Default::default()
                })
                .await?;
            reply(format!("apply refused: {why}")).await;
            Ok::<_, anyhow::Error>(Outcome::nothing(format!("apply refused: {why}")))
        }
    };
    if !provider.can_write(&c.repo, &c.author).await? {
        return refuse(format!(
            "{} needs write access to {} to apply.",
            c.author, c.repo
        ))
        .await;
    }
    let pr = provider.pull_request(&c.repo, c.pr_number).await?;
    if !pr.open {
        return refuse("the pull request is closed.".into()).await;
    }
    if pr.from_fork && !ctx.settings.config().allow_fork_prs {
        return refuse("the pull request comes from a fork (`allow_fork_prs` is off).".into())
            .await;
    }
    let config = ctx.settings.config();
    let shown = ctx
        .store
        .pr_head_runs(provider.id(), &c.repo, c.pr_number)
        .await?
        .filter(|(head, _)| crate::store::same_commit(head, &pr.head_sha))
        .map(|(_, runs)| runs)
        .unwrap_or_default();
    let mut targets: Vec<Run> = shown
        .into_iter()
        .filter(|r| workspace.is_none_or(|w| r.workspace == w))
        .collect();
    if targets.is_empty() {
        return refuse(match workspace {
            Some(w) => format!("no plan of `{w}` is shown for the head commit {}; run `/gantry plan -w {w}` first.", short_sha(&pr.head_sha)),
            None => format!("no plan is shown for the head commit {}; run `/gantry plan` first.", short_sha(&pr.head_sha)),
        })
        .await;
    }
    // Workspaces that apply on merge are left to the merge (unless named alone).
    if workspace.is_none() {
        targets.retain(|r| {
            config
                .workspace(&r.workspace)
                .is_some_and(|w| w.workflow == Workflow::ApplyBeforeMerge)
        });
        if targets.is_empty() {
            return refuse(
                "the workspaces of this pull request apply on merge (`workflow: apply_on_merge`)."
                    .into(),
            )
            .await;
        }
    }
    let mut requirements: Vec<ApplyRequirement> = Vec::new();
    for run in &targets {
        let Some(ws) = config.workspace(&run.workspace) else {
            return refuse(format!(
                "workspace {} is no longer configured.",
                run.workspace
            ))
            .await;
        };
        if ws.workflow != Workflow::ApplyBeforeMerge {
            return refuse(format!(
                "workspace {} applies on merge (`workflow: apply_on_merge`).",
                ws.name
            ))
            .await;
        }
        if run.state != RunState::Planned {
            return refuse(format!(
                "the plan of {} is {}{}; only a finished plan can be applied.",
                run.workspace,
                run.state,
                run.state_reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ))
            .await;
        }
        if matches!(
            run.policy_verdict(),
            crate::policy::groups::Verdict::HardBlocked
                | crate::policy::groups::Verdict::SoftBlocked
        ) {
            return refuse(format!(
                "the plan of {} is {} (soft-mandatory failures can be overridden with `/gantry override REASON`).",
                run.workspace,
                crate::runs::execute::policy_block_reason(run)
            ))
            .await;
        }
        if let Some(lock) = ctx.store.workspace_lock(&run.workspace).await? {
            return refuse(format!(
                "workspace {} is locked: {}.",
                run.workspace, lock.reason
            ))
            .await;
        }
        for r in &ws.apply_requirements {
            if !requirements.contains(r) {
                requirements.push(*r);
            }
        }
    }
    for r in requirements {
        let met = match r {
            ApplyRequirement::Approved => provider.is_approved(&c.repo, c.pr_number).await?,
            ApplyRequirement::Mergeable => pr.mergeable == Some(true),
        };
        if !met {
            let what = match r {
                ApplyRequirement::Approved => "the pull request is not approved",
                ApplyRequirement::Mergeable => "the pull request is not mergeable",
            };
            return refuse(format!("{what} (`apply_requirements: [{}]`).", r.as_str())).await;
        }
    }
    let mut applied = Vec::new();
    for run in &targets {
        if ctx.store.request_apply(run.id, actor).await? {
            ctx.store
                .audit(Audit {
                    actor,
                    action: "apply",
                    workspace: Some(&run.workspace),
                    run_id: Some(run.id),
                    commit_sha: Some(&run.head_sha),
                    detail: Some(&format!("/gantry apply on {}#{}", c.repo, c.pr_number)),
                })
                .await?;
            applied.push(run.workspace.clone());
        }
    }
    ctx.runs_queued.notify();
    // The runs' reporters edit the PR comment as the applies progress.
    Ok(Outcome::nothing(format!(
        "/gantry apply on #{}: {}",
        c.pr_number,
        applied.join(", ")
    )))
}

/// `/gantry override [-w NAME] REASON`: lets the plans shown on the PR whose
/// soft-mandatory policies failed be applied. Needs write access.
async fn override_policies<R, F>(
    ctx: &Deps,
    c: &CommandEvent,
    provider: &Arc<dyn VcsProvider>,
    actor: &str,
    workspace: Option<&str>,
    reason: &str,
    reply: R,
) -> anyhow::Result<Outcome>
where
    R: Fn(String) -> F,
    F: std::future::Future<Output = ()>,
{
    if !provider.can_write(&c.repo, &c.author).await? {
        reply(format!(
            "override refused: {} needs write access to {}.",
            c.author, c.repo
        ))
        .await;
        return Ok(Outcome::nothing("override refused: no write access"));
    }
    let runs = ctx
        .store
        .pr_head_runs(provider.id(), &c.repo, c.pr_number)
        .await?
        .map(|(_, runs)| runs)
        .unwrap_or_default();
    let mut overridden = Vec::new();
    for run in runs
        .iter()
        .filter(|r| workspace.is_none_or(|w| r.workspace == w))
    {
        if run.policy_verdict() != crate::policy::groups::Verdict::SoftBlocked {
            continue;
        }
        if ctx
            .store
            .override_policy(run.id, &format!("{actor}: {reason}"))
            .await?
        {
            ctx.store
                .audit(Audit {
                    actor,
                    action: "override",
                    workspace: Some(&run.workspace),
                    run_id: Some(run.id),
                    commit_sha: Some(&run.head_sha),
                    detail: Some(reason),
                })
                .await?;
            overridden.push(run.workspace.clone());
        }
    }
    if overridden.is_empty() {
        reply("nothing to override: no plan shown here failed a soft-mandatory policy (hard-mandatory failures cannot be overridden).".into())
            .await;
        return Ok(Outcome::nothing("override: nothing to override"));
    }
    reply(format!(
        "soft-mandatory policy failures overridden for {}.",
        overridden.join(", ")
    ))
    .await;
    crate::outbox::refresh_pr_comment(&ctx.outbox, provider.id(), &c.repo, c.pr_number, None).await;
    Ok(Outcome::nothing(format!(
        "override on #{}: {}",
        c.pr_number,
        overridden.join(", ")
    )))
}
