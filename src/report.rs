//! What gantry says on the pull request: commit status texts and the one PR
//! comment (markdown), kept under the provider's size limit by truncating plan
//! output per workspace, never the summary table.

use crate::store::{short_sha, FailureKind, Run, RunState};
use crate::vcs::{CommitStatus, StatusState};

/// Marks gantry's comment so it can be found again.
pub const COMMENT_MARKER: &str = "<!-- gantry:pr-comment -->";

/// Marks the comment on the applies of one merge commit.
pub fn apply_marker(sha: &str) -> String {
    format!("<!-- gantry:apply-comment:{sha} -->")
}

pub fn status_context(workspace: &str) -> String {
    format!("gantry/{workspace}")
}

/// Whether an errored run failed because of the change (its terraform, its
/// plan, policy) rather than in gantry or its surroundings.
fn change_at_fault(run: &Run) -> bool {
    run.failure.is_some_and(FailureKind::is_change_at_fault)
}

/// The commit status that shows `run`'s current state.
pub fn status_for(run: &Run, target_url: Option<String>) -> CommitStatus {
    let (state, description) = match run.state {
        // An agent pool's job that no live agent can take yet.
        _ if run.state.is_active() && run.waiting_for.is_some() => (
            StatusState::Pending,
            format!(
                "Waiting for {}…",
                run.waiting_for.as_deref().unwrap_or_default()
            ),
        ),
        RunState::Queued => (StatusState::Pending, "Queued".to_string()),
        RunState::Fetching | RunState::Planning => (StatusState::Pending, "Planning…".to_string()),
        RunState::Planned => (
            StatusState::Success,
            run.plan
                .map(|p| p.to_string())
                .unwrap_or_else(|| "Planned.".to_string()),
        ),
        RunState::NeedsConfirmation => (
            StatusState::Pending,
            match run.plan {
                Some(p) => format!("{p} Needs confirmation."),
                None => "Needs confirmation.".to_string(),
            },
        ),
        RunState::Applying => (StatusState::Pending, "Applying…".to_string()),
        RunState::Applied => (
            StatusState::Success,
            match (run.plan, run.state_reason.as_deref()) {
                (_, Some(reason)) => format!("Applied: {reason}."),
                (Some(p), None) => format!("Applied. {p}"),
                (None, None) => "Applied.".to_string(),
            },
        ),
        RunState::Errored if change_at_fault(run) => (
            StatusState::Failure,
            first_line(run.state_reason.as_deref().unwrap_or("failed")),
        ),
        RunState::Errored => (
            StatusState::Error,
            match (run.failure, run.state_reason.as_deref()) {
                // Reaped after a crash: the reaper locked the workspace.
                (Some(FailureKind::InterruptedApply), reason) => format!(
                    "gantry error: {}: workspace locked",
                    first_line(reason.unwrap_or("interrupted during apply"))
                ),
                (_, reason) => format!("gantry error: {}", first_line(reason.unwrap_or("unknown"))),
            },
        ),
        RunState::Superseded => (
            StatusState::Error,
            "Superseded by a newer commit".to_string(),
        ),
        RunState::Canceled => (StatusState::Error, "Canceled".to_string()),
    };
    let description = match (&run.cost, run.state) {
        (Some(cost), RunState::Planned | RunState::NeedsConfirmation | RunState::Applied) => {
            format!("{description} · {}", cost.status_suffix())
        }
        _ => description,
    };
    // Policies: a mandatory failure fails the check; advisory ones only say so.
    let (state, description) = match (&run.policy, run.state) {
        (Some(checks), RunState::Planned | RunState::NeedsConfirmation | RunState::Applied) => {
            match crate::store::policy_checks::summary(checks) {
                Some(summary) => {
                    let state = match run.policy_verdict() {
                        crate::store::Verdict::HardBlocked | crate::store::Verdict::SoftBlocked => {
                            StatusState::Failure
                        }
                        _ => state,
                    };
                    (state, format!("{description} · {summary}"))
                }
                None => (state, description),
            }
        }
        _ => (state, description),
    };
    CommitStatus {
        state,
        context: status_context(&run.workspace),
        description,
        target_url,
        pull_request: run.pr_number,
    }
}

/// Terraform's error output uses box-drawing gutters; a status line wants the words.
fn first_line(s: &str) -> String {
    let joined: Vec<&str> = s
        .lines()
        .map(|l| l.trim().trim_start_matches(['│', '╷', '╵']).trim())
        .filter(|l| !l.is_empty())
        .take(2)
        .collect();
    joined.join(" ")
}

/// One workspace's part of the comment.
pub struct Section<'a> {
    pub run: &'a Run,
    /// The plan or apply output, or terraform's error.
    pub output: Option<String>,
    /// The workspace's lock: applies are refused while it holds.
    pub lock: Option<crate::store::WorkspaceLock>,
}

fn state_cell(run: &Run) -> &'static str {
    match run.state {
        RunState::Queued => "⏳ queued",
        RunState::Fetching | RunState::Planning => "⏳ planning",
        RunState::Planned => "✅ planned",
        RunState::NeedsConfirmation => "⏸️ needs confirmation",
        RunState::Applying => "⏳ applying",
        RunState::Applied => "✅ applied",
        RunState::Errored if change_at_fault(run) => "❌ failed",
        RunState::Errored => "⚠️ errored",
        RunState::Superseded => "⏭️ superseded",
        RunState::Canceled => "🚫 canceled",
    }
}

fn result_cell(s: &Section<'_>) -> String {
    let run = s.run;
    let mut cell = match run.state {
        // An apply whose job waits for an agent says so, before its plan.
        RunState::Applying if run.waiting_for.is_some() => format!(
            "waiting for {}. {}",
            run.waiting_for.as_deref().unwrap_or_default(),
            run.plan.map(|p| p.to_string()).unwrap_or_default()
        ),
        RunState::Planned | RunState::NeedsConfirmation | RunState::Applying => {
            run.plan.map(|p| p.to_string()).unwrap_or_default()
        }
        RunState::Applied => match run.state_reason.as_deref() {
            Some(reason) => reason.to_string(),
            None => run
                .plan
                .map(|p| format!("Applied. {p}"))
                .unwrap_or_default(),
        },
        RunState::Errored | RunState::Canceled | RunState::Superseded => {
            first_line(run.state_reason.as_deref().unwrap_or(""))
        }
        _ => match &run.waiting_for {
            Some(what) => format!("waiting for {what}"),
            None => String::new(),
        },
    };
    if let (
        Some(cost),
        RunState::Planned | RunState::NeedsConfirmation | RunState::Applying | RunState::Applied,
    ) = (&run.cost, run.state)
    {
        cell.push_str(&format!(" · {}", cost.status_suffix()));
    }
    if let Some(lock) = &s.lock {
        cell.push_str(&format!(" 🔒 locked: {}; applies are refused", lock.reason));
    }
    cell.trim().replace('|', "\\|")
}

/// What every gantry comment ends with when terraform runs unsandboxed
/// (`runner.sandbox: off`); nothing otherwise.
pub fn footer(sandboxed: bool) -> String {
    if sandboxed {
        String::new()
    } else {
        "\n---\n⚠️ _Runs are not isolated: `runner.sandbox` is off, so this pull request's Terraform ran with access to gantry's files and credentials._\n".into()
    }
}

/// Renders a PR comment for the runs of `head_sha`, at most `limit` characters,
/// starting with `marker`.
pub fn render_comment(
    head_sha: &str,
    sections: &[Section<'_>],
    limit: usize,
    marker: &str,
) -> String {
    let applying = sections.iter().any(|s| {
        s.run.kind == crate::store::RunKind::Apply
            || s.run.apply_requested
            || matches!(s.run.state, RunState::Applying | RunState::Applied)
    });
    let what = if applying { "apply" } else { "plan" };
    let mut head = format!(
        "{marker}\n### gantry {what} for `{}`\n\n",
        short_sha(head_sha)
    );
    if sections.is_empty() {
        head.push_str("No workspace is affected by this commit.\n");
        return head;
    }
    head.push_str("| Workspace | Status | Result |\n| --- | --- | --- |\n");
    for s in sections {
        head.push_str(&format!(
            "| `{}` | {} | {} |\n",
            s.run.workspace,
            state_cell(s.run),
            result_cell(s)
        ));
    }
    head.push('\n');

    let with_output: Vec<&Section<'_>> = sections.iter().filter(|s| s.output.is_some()).collect();
    if with_output.is_empty() {
        return head;
    }
    // Fixed text per section (heading, <details>, fences, truncation note).
    const OVERHEAD: usize = 400;
    let available = limit.saturating_sub(head.chars().count());
    let per_section = (available / with_output.len()).saturating_sub(OVERHEAD);
    let mut body = head;
    for s in with_output {
        let output = s.output.as_deref().unwrap_or_default();
        let (title, summary) = match s.run.state {
            RunState::Applied | RunState::Applying => ("Applied".to_string(), "Apply output"),
            RunState::Planned | RunState::NeedsConfirmation => (
                s.run.plan.map(|p| p.to_string()).unwrap_or_default(),
                "Plan output",
            ),
            _ => ("Error".to_string(), "Error output"),
        };
        let title = match &s.run.cost {
            Some(cost) if !title.is_empty() && title != "Error" => {
                format!("{title} · {}", cost.status_suffix())
            }
            _ => title,
        };
        let cost_block = s.run.cost.as_ref().map(cost_table).unwrap_or_default()
            + &s.run
                .policy
                .as_deref()
                .map(|c| policy_table(c, s.run.policy_override.as_deref()))
                .unwrap_or_default();
        let (shown, note) = truncate_middle(output, per_section.saturating_sub(cost_block.len()));
        body.push_str(&format!(
            "#### `{}` — {}\n{cost_block}<details><summary>{summary}</summary>\n\n```\n{}\n```\n{}</details>\n\n",
            s.run.workspace,
            title,
            shown.replace("```", "`\u{200b}``"),
            note.map(|n| format!("\n_{n}; the full log is in run {} (`GET /api/runs/{}`)._\n", s.run.id, s.run.id))
                .unwrap_or_default(),
        ));
    }
    body
}

/// A workspace's policy results: policy, level, result, messages.
pub fn policy_table(checks: &[crate::store::PolicyCheck], overridden_by: Option<&str>) -> String {
    if checks.is_empty() {
        return String::new();
    }
    let mut out =
        String::from("\n| Policy | Level | Result | Messages |\n| --- | --- | --- | --- |\n");
    for c in checks {
        let icon = match c.result.as_str() {
            "passed" => "✅ passed",
            "errored" => "💥 errored",
            _ => "❌ failed",
        };
        let messages = c
            .messages
            .iter()
            .take(5)
            .map(|m| m.replace('|', "\\|").replace('\n', " "))
            .collect::<Vec<_>>()
            .join("<br>");
        out.push_str(&format!(
            "| `{}/{}` | {} | {icon} | {messages} |\n",
            c.group,
            c.policy,
            c.enforcement_level.as_str()
        ));
    }
    if let Some(by) = overridden_by {
        out.push_str(&format!("\nSoft-mandatory failures overridden by {by}.\n"));
    }
    out.push('\n');
    out
}

/// Rows shown in a workspace's cost table before the rest are summarized.
const COST_ROWS: usize = 15;

/// The short cost table of one workspace: resource, monthly before → after,
/// and what could not be priced.
pub fn cost_table(cost: &crate::cost::CostEstimate) -> String {
    use crate::cost::{format_delta, format_money};
    let mut out = String::new();
    let changed: Vec<_> = cost
        .resources
        .iter()
        .filter(|r| r.action != "no-op")
        .collect();
    if !changed.is_empty() {
        out.push_str("\n| Resource | Monthly cost |\n| --- | --- |\n");
        for r in changed.iter().take(COST_ROWS) {
            out.push_str(&format!(
                "| `{}` | {} → {} |\n",
                r.address,
                format_money(r.prior_monthly_cost),
                format_money(r.proposed_monthly_cost)
            ));
        }
        if changed.len() > COST_ROWS {
            out.push_str(&format!("| … {} more | |\n", changed.len() - COST_ROWS));
        }
        out.push_str(&format!(
            "| **Total** | {} → {} ({}) |\n",
            format_money(cost.prior_monthly_cost),
            format_money(cost.proposed_monthly_cost),
            format_delta(cost.delta_monthly_cost)
        ));
    }
    if !cost.unpriced.is_empty() {
        let names: Vec<String> = cost
            .unpriced
            .iter()
            .take(5)
            .map(|u| format!("`{}`", u.address))
            .collect();
        let more = cost.unpriced.len().saturating_sub(5);
        out.push_str(&format!(
            "\n{} not priced: {}{}\n",
            cost.unpriced.len(),
            names.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    out.push('\n');
    out
}

/// Keeps the first and last lines of `text` within `budget` characters.
/// Returns the text and, when something was cut, a note saying how much.
pub fn truncate_middle(text: &str, budget: usize) -> (String, Option<String>) {
    let text = text.trim_end();
    if text.chars().count() <= budget {
        return (text.to_string(), None);
    }
    let lines: Vec<&str> = text.lines().collect();
    let half = budget / 2;
    let mut head_len = 0;
    let mut head_n = 0;
    for l in &lines {
        let n = l.chars().count() + 1;
        if head_len + n > half {
            break;
        }
        head_len += n;
        head_n += 1;
    }
    let mut tail_len = 0;
    let mut tail_n = 0;
    for l in lines.iter().rev() {
        let n = l.chars().count() + 1;
        if tail_len + n > budget - head_len || tail_n + head_n >= lines.len() {
            break;
        }
        tail_len += n;
        tail_n += 1;
    }
    let cut = lines.len() - head_n - tail_n;
    let mut out = lines[..head_n].join("\n");
    out.push_str(&format!("\n… {cut} lines truncated …\n"));
    out.push_str(&lines[lines.len() - tail_n..].join("\n"));
    (
        out,
        Some(format!(
            "plan output truncated: {cut} of {} lines not shown",
            lines.len()
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{PlanSummary, RunKind, RunSource};

    fn run(ws: &str, state: RunState) -> Run {
        Run {
            id: 1,
            workspace: ws.into(),
            event_id: None,
            kind: RunKind::Plan,
            source: RunSource::PullRequest,
            state,
            state_reason: None,
            failure: None,
            provider_id: "github".into(),
            repo: "acme/infra".into(),
            branch: "main".into(),
            pr_number: Some(7),
            head_sha: "abcdef1234567890".into(),
            git_ref: "refs/pull/7/head".into(),
            head_repo: None,
            attempt: 1,
            retry_of: None,
            enqueued_at: 0,
            started_at: None,
            finished_at: None,
            updated_at: 0,
            plan: Some(PlanSummary {
                add: 1,
                change: 0,
                destroy: 0,
            }),
            apply_requested: false,
            planned_at: None,
            state_version_at_plan: None,
            plan_sha256: None,
            requested_by: None,
            cost: None,
            policy: None,
            policy_override: None,
            runner: None,
            waiting_for: None,
        }
    }

    #[test]
    fn status_texts() {
        let r = run("network", RunState::Planned);
        let s = status_for(&r, None);
        assert_eq!(s.state, StatusState::Success);
        assert_eq!(s.context, "gantry/network");
        assert_eq!(s.description, "Plan: 1 to add, 0 to change, 0 to destroy.");
        let mut e = run("network", RunState::Errored);
        e.state_reason =
            Some("terraform plan failed: │ Error: Unsupported argument\n│ more".into());
        e.failure = Some(FailureKind::Terraform);
        assert_eq!(status_for(&e, None).state, StatusState::Failure);
        // The kind decides, not the text.
        e.failure = Some(FailureKind::Internal);
        assert_eq!(status_for(&e, None).state, StatusState::Error);
        e.state_reason = Some("git fetch failed".into());
        assert_eq!(status_for(&e, None).state, StatusState::Error);
        e.state_reason = Some("interrupted during apply".into());
        e.failure = Some(FailureKind::InterruptedApply);
        let s = status_for(&e, None);
        assert_eq!(s.state, StatusState::Error);
        assert_eq!(
            s.description,
            "gantry error: interrupted during apply: workspace locked"
        );
    }

    #[test]
    fn comment_keeps_the_table_and_truncates_output_under_the_limit() {
        let a = run("network", RunState::Planned);
        let b = run("app", RunState::Planned);
        let huge: String = (0..20_000).map(|i| format!("  + line {i}\n")).collect();
        let sections = [
            Section {
                run: &a,
                output: Some(huge.clone()),
                lock: None,
            },
            Section {
                run: &b,
                output: Some("small plan".into()),
                lock: None,
            },
        ];
        let body = render_comment("abcdef1234567890", &sections, 60_000, COMMENT_MARKER);
        assert!(body.chars().count() <= 60_000, "{}", body.chars().count());
        assert!(body.starts_with(COMMENT_MARKER));
        assert!(body
            .contains("| `network` | ✅ planned | Plan: 1 to add, 0 to change, 0 to destroy. |"));
        assert!(body.contains("| `app` | ✅ planned |"));
        assert!(body.contains("lines truncated"));
        assert!(body.contains("small plan"));
        assert!(body.contains("  + line 0\n"));
        assert!(body.contains("  + line 19999"));
    }

    #[test]
    fn every_providers_comment_stays_under_its_limit() {
        let a = run("network", RunState::Planned);
        let huge: String = (0..100_000).map(|i| format!("  + line {i}\n")).collect();
        let sections = [Section {
            run: &a,
            output: Some(huge),
            lock: None,
        }];
        for (provider, limit, hard) in [
            ("github", crate::vcs::github::COMMENT_LIMIT, 65_536),
            ("gitlab", crate::vcs::gitlab::COMMENT_LIMIT, 1_000_000),
            ("bitbucket", crate::vcs::bitbucket::COMMENT_LIMIT, 32_768),
            (
                "azure_devops",
                crate::vcs::azure_devops::COMMENT_LIMIT,
                150_000,
            ),
        ] {
            let mut body = render_comment("abcdef1234567890", &sections, limit, COMMENT_MARKER);
            if provider == "bitbucket" {
                body = crate::vcs::bitbucket::plain_markdown(&body);
            }
            let n = body.chars().count();
            assert!(n <= hard, "{provider}: {n} > {hard}");
            assert!(n > limit / 2, "{provider}: the room is used ({n})");
            assert!(body.contains("lines truncated"), "{provider}");
        }
    }

    #[test]
    fn truncate_middle_leaves_short_text_alone() {
        assert_eq!(truncate_middle("a\nb\n", 100), ("a\nb".to_string(), None));
    }

    #[test]
    fn a_run_waiting_for_an_agent_says_so() {
        let mut r = run("network", RunState::Planning);
        r.waiting_for = Some("an agent of pool blue".into());
        let s = status_for(&r, None);
        assert_eq!(s.state, StatusState::Pending);
        assert_eq!(s.description, "Waiting for an agent of pool blue…");
        let section = Section {
            run: &r,
            output: None,
            lock: None,
        };
        assert_eq!(result_cell(&section), "waiting for an agent of pool blue");
        // An apply waiting for its agent says so too, with the plan it applies.
        r.state = RunState::Applying;
        r.plan = Some(crate::store::PlanSummary {
            add: 1,
            change: 0,
            destroy: 0,
        });
        let section = Section {
            run: &r,
            output: None,
            lock: None,
        };
        let cell = result_cell(&section);
        assert!(
            cell.starts_with("waiting for an agent of pool blue. Plan: 1 to add"),
            "{cell}"
        );
        // Only while it runs: a finished run's status is its end.
        r.state = RunState::Planned;
        assert!(!status_for(&r, None).description.contains("Waiting"));
    }
}
