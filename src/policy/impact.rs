//! Policy impact analysis: a pull request on a policy group's repository is
//! evaluated, with the pull request's version of the policies and with the
//! current one, against the latest stored plan of every workspace the group
//! governs. No terraform runs: it answers in seconds for thousands of
//! workspaces. The result is a table on the policy PR (workspaces whose
//! outcome changes first) and a `gantry/policy-impact` status that fails when
//! a workspace newly fails a hard-mandatory policy.

use std::collections::BTreeMap;

use super::groups::{self, Policies, PolicyCheck};
use super::{EnforcementLevel, PolicySet};
use crate::config::{PolicyGroupConfig, Workspace};
use crate::store::short_sha;
use crate::vcs::{CommitStatus, PullRequestEvent, StatusState};

pub const MARKER: &str = "<!-- gantry:policy-impact -->";

/// One workspace's outcome before and after the policy change.
#[derive(Debug, Clone, PartialEq)]
pub struct Impact {
    pub workspace: String,
    pub before: Vec<PolicyCheck>,
    pub after: Vec<PolicyCheck>,
}

fn describe(checks: &[PolicyCheck]) -> String {
    groups::summary(checks)
        .map(|s| s.trim_start_matches("policies: ").to_string())
        .unwrap_or_else(|| "passed".into())
}

fn failing(c: &PolicyCheck) -> bool {
    c.result != "passed"
}

impl Impact {
    pub fn changed(&self) -> bool {
        let key = |cs: &[PolicyCheck]| -> BTreeMap<String, (String, Vec<String>)> {
            cs.iter()
                .map(|c| (c.policy.clone(), (c.result.clone(), c.messages.clone())))
                .collect()
        };
        key(&self.before) != key(&self.after)
    }

    /// A hard-mandatory policy (or an error) fails after but not before.
    pub fn newly_fails_hard(&self) -> bool {
        self.after
            .iter()
            .filter(|c| {
                failing(c)
                    && (c.enforcement_level == EnforcementLevel::HardMandatory
                        || c.result == "errored")
            })
            .any(|a| {
                !self
                    .before
                    .iter()
                    .any(|b| b.policy == a.policy && failing(b))
            })
    }

    /// Messages added and removed by the change.
    fn changes(&self) -> String {
        let msgs = |cs: &[PolicyCheck]| -> Vec<String> {
            cs.iter()
                .flat_map(|c| c.messages.iter().map(move |m| format!("{}: {m}", c.policy)))
                .collect()
        };
        let (before, after) = (msgs(&self.before), msgs(&self.after));
        let mut out: Vec<String> = after
            .iter()
            .filter(|m| !before.contains(m))
            .map(|m| format!("+ {m}"))
            .collect();
        out.extend(
            before
                .iter()
                .filter(|m| !after.contains(m))
                .map(|m| format!("− {m}")),
        );
        out.iter()
            .take(5)
            .map(|m| m.replace('|', "\\|"))
            .collect::<Vec<_>>()
            .join("<br>")
    }
}

/// The comment for a policy PR.
pub fn render(group: &str, head_sha: &str, impacts: &[Impact], without_plan: &[String]) -> String {
    let mut rows: Vec<&Impact> = impacts.iter().collect();
    rows.sort_by_key(|i| (!i.newly_fails_hard(), !i.changed(), i.workspace.clone()));
    let changed = impacts.iter().filter(|i| i.changed()).count();
    let mut out = format!(
        "{MARKER}\n### gantry policy impact of `{}` (group `{group}`)\n\n{} workspaces evaluated against their latest plan; {changed} change outcome.\n\n",
        short_sha(head_sha),
        impacts.len()
    );
    if !rows.is_empty() {
        out.push_str("| Workspace | Before | After | Changes |\n| --- | --- | --- | --- |\n");
        for i in rows {
            let after = if i.newly_fails_hard() {
                format!("❌ {}", describe(&i.after))
            } else {
                describe(&i.after)
            };
            let changes = if i.changed() {
                i.changes()
            } else {
                "unchanged".into()
            };
            out.push_str(&format!(
                "| `{}` | {} | {after} | {changes} |\n",
                i.workspace,
                describe(&i.before)
            ));
        }
    }
    if !without_plan.is_empty() {
        out.push_str(&format!(
            "\nNo stored plan yet (not evaluated): {}\n",
            without_plan
                .iter()
                .map(|w| format!("`{w}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out
}

fn checks(group: &str, set: &PolicySet, input: &regorus::Value) -> Vec<PolicyCheck> {
    set.evaluate(input)
        .into_iter()
        .map(|r| PolicyCheck {
            group: group.to_string(),
            policy: r.policy,
            enforcement_level: r.enforcement_level,
            result: r.result.to_string(),
            messages: r.messages,
        })
        .collect()
}

/// Analyzes a pull request on a policy group's repository and reports on it.
pub async fn analyze(
    policies: &Policies,
    provider_id: &str,
    pr: &PullRequestEvent,
    group: &PolicyGroupConfig,
) -> anyhow::Result<()> {
    let provider = policies
        .settings
        .providers()
        .get(provider_id)
        .ok_or_else(|| anyhow::anyhow!("provider {provider_id} is gone"))?;
    let creds = provider.git_credentials(&pr.repo).await?;
    let branch_ref = format!("refs/heads/{}", group.branch);
    let mirror = policies
        .mirrors
        .fetch(
            provider_id,
            &pr.repo,
            &provider.clone_url(&pr.repo),
            creds,
            &[pr.fetch_ref.clone(), branch_ref],
        )
        .await?;
    let status = |state: StatusState, description: String| CommitStatus {
        state,
        context: "gantry/policy-impact".into(),
        description,
        target_url: None,
        pull_request: Some(pr.number),
    };
    let proposed = match groups::load_at(policies, group, &mirror, &pr.head_sha).await {
        Ok(set) => set,
        Err(error) => {
            let st = status(
                StatusState::Failure,
                format!(
                    "policies do not load: {}",
                    error.lines().next().unwrap_or_default()
                ),
            );
            crate::outbox::post_status(&policies.outbox, provider_id, &pr.repo, &pr.head_sha, st)
                .await;
            upsert(policies, provider_id, pr, &format!("{MARKER}\n### gantry policy impact of `{}`\n\nThe policies in this pull request do not load:\n\n```\n{error}\n```\n", short_sha(&pr.head_sha))).await?;
            return Ok(());
        }
    };
    let current = groups::active(policies, group).await.map(|g| g.set);
    let config = policies.settings.config();
    let governed: Vec<&Workspace> = config
        .workspaces
        .iter()
        .filter(|w| group.environments.contains(&w.environment))
        .collect();
    let mut impacts = Vec::new();
    let mut without_plan = Vec::new();
    for ws in governed {
        let Some(run) = policies.store.latest_planned_run(&ws.name).await? else {
            without_plan.push(ws.name.clone());
            continue;
        };
        // From the store: the replica that planned may be gone.
        let Some(mut plan) = policies.store.plan_json(run.id).await? else {
            without_plan.push(ws.name.clone());
            continue;
        };
        // The proposed rego is untrusted: it never sees values terraform marks
        // sensitive, so no message can carry one into the comment.
        crate::redact::mask_sensitive_plan(&mut plan);
        let cost = run
            .cost
            .clone()
            .unwrap_or_else(|| crate::cost::estimate(&plan, &config.pricing));
        let tfrun = super::tfrun::tfrun(
            &policies.store,
            &policies.mirrors,
            &run,
            ws,
            &run.plan.unwrap_or_default(),
            &cost,
        )
        .await;
        let input = super::input(plan, tfrun);
        let before = current
            .as_deref()
            .map(|s| checks(&group.name, s, &input))
            .unwrap_or_default();
        let after = checks(&group.name, &proposed, &input);
        impacts.push(Impact {
            workspace: ws.name.clone(),
            before,
            after,
        });
    }
    let newly_failing: Vec<&Impact> = impacts.iter().filter(|i| i.newly_fails_hard()).collect();
    let changed = impacts.iter().filter(|i| i.changed()).count();
    let st = if newly_failing.is_empty() {
        status(StatusState::Success, format!("{} workspaces evaluated; {changed} change outcome; none newly fails a hard-mandatory policy", impacts.len()))
    } else {
        status(
            StatusState::Failure,
            format!(
                "{} workspaces would newly fail hard-mandatory policies",
                newly_failing.len()
            ),
        )
    };
    crate::outbox::post_status(&policies.outbox, provider_id, &pr.repo, &pr.head_sha, st).await;
    upsert(
        policies,
        provider_id,
        pr,
        &render(&group.name, &pr.head_sha, &impacts, &without_plan),
    )
    .await?;
    tracing::info!(policy_group = %group.name, workspaces = impacts.len(), changed, "policy impact of {}#{} reported", pr.repo, pr.number);
    Ok(())
}

/// Queues the PR's policy impact comment (through the outbox, like every report).
async fn upsert(
    policies: &Policies,
    provider_id: &str,
    pr: &PullRequestEvent,
    body: &str,
) -> anyhow::Result<()> {
    let body = format!("{body}{}", policies.outbox.footer());
    crate::outbox::put_comment(
        &policies.outbox,
        provider_id,
        &pr.repo,
        pr.number,
        "policy-impact",
        MARKER,
        body,
    )
    .await;
    Ok(())
}
