//! The records of a run as the store keeps them: its state machine's states,
//! its kind and source, its plan summary, and the values its phases record on
//! it (the cost estimate, the policy checks in [`super::policy_checks`]). They
//! live here, under everything that reads them, so the store imports no domain
//! module; `runs` and `cost` re-export them.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::policy_checks::{self, PolicyCheck, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Fetching,
    Planning,
    Planned,
    NeedsConfirmation,
    Applying,
    Applied,
    Errored,
    Superseded,
    Canceled,
}

impl RunState {
    pub const ALL: [RunState; 10] = [
        RunState::Queued,
        RunState::Fetching,
        RunState::Planning,
        RunState::Planned,
        RunState::NeedsConfirmation,
        RunState::Applying,
        RunState::Applied,
        RunState::Errored,
        RunState::Superseded,
        RunState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Fetching => "fetching",
            RunState::Planning => "planning",
            RunState::Planned => "planned",
            RunState::NeedsConfirmation => "needs_confirmation",
            RunState::Applying => "applying",
            RunState::Applied => "applied",
            RunState::Errored => "errored",
            RunState::Superseded => "superseded",
            RunState::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<RunState> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Claimed by a worker and not finished.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunState::Fetching | RunState::Planning | RunState::Applying
        )
    }

    /// Finished: nothing more will happen to the run by itself. A `planned` PR
    /// plan and a `needs_confirmation` run may still be applied by a user.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Planned
                | RunState::NeedsConfirmation
                | RunState::Applied
                | RunState::Errored
                | RunState::Superseded
                | RunState::Canceled
        )
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// A dry run: plan only (PR checks).
    Plan,
    /// Plan, then apply (on merge; with `auto_apply`, or once confirmed).
    Apply,
    /// A drift check: plan the tracked branch head, never apply.
    Drift,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Plan => "plan",
            RunKind::Apply => "apply",
            RunKind::Drift => "drift",
        }
    }
    pub fn parse(s: &str) -> Option<RunKind> {
        match s {
            "plan" => Some(RunKind::Plan),
            "apply" => Some(RunKind::Apply),
            "drift" => Some(RunKind::Drift),
            _ => None,
        }
    }
}

/// What caused a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunSource {
    PullRequest,
    Push,
    /// A `/gantry plan` comment.
    Comment,
    /// The REST API.
    Api,
    /// A drift schedule tick.
    Schedule,
}

impl RunSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RunSource::PullRequest => "pull_request",
            RunSource::Push => "push",
            RunSource::Comment => "comment",
            RunSource::Api => "api",
            RunSource::Schedule => "schedule",
        }
    }
    pub fn parse(s: &str) -> Option<RunSource> {
        match s {
            "pull_request" => Some(RunSource::PullRequest),
            "push" => Some(RunSource::Push),
            "comment" => Some(RunSource::Comment),
            "api" => Some(RunSource::Api),
            "schedule" => Some(RunSource::Schedule),
            _ => None,
        }
    }
}

/// Resource counts of a plan, from `terraform show -json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct PlanSummary {
    pub add: i64,
    pub change: i64,
    pub destroy: i64,
}

impl PlanSummary {
    pub fn has_changes(&self) -> bool {
        self.add + self.change + self.destroy > 0
    }

    /// Counts the actions in a plan's `resource_changes`, as terraform's own
    /// "Plan:" line does (a replacement counts as one add and one destroy).
    pub fn from_plan_json(plan: &serde_json::Value) -> PlanSummary {
        let mut s = PlanSummary::default();
        let changes = plan
            .get("resource_changes")
            .and_then(|v| v.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default();
        for rc in changes {
            // Data source reads are not changes to infrastructure.
            if rc.get("mode").and_then(|m| m.as_str()) == Some("data") {
                continue;
            }
            let actions: Vec<&str> = rc
                .pointer("/change/actions")
                .and_then(|a| a.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            for a in actions {
                match a {
                    "create" => s.add += 1,
                    "update" => s.change += 1,
                    "delete" => s.destroy += 1,
                    _ => {}
                }
            }
        }
        s
    }
}

impl fmt::Display for PlanSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Plan: {} to add, {} to change, {} to destroy.",
            self.add, self.change, self.destroy
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: i64,
    pub workspace: String,
    pub event_id: Option<i64>,
    pub kind: RunKind,
    pub source: RunSource,
    pub state: RunState,
    pub state_reason: Option<String>,
    /// How the run failed (errored or canceled), as stored.
    pub failure: Option<super::FailureKind>,
    pub provider_id: String,
    pub repo: String,
    pub branch: String,
    pub pr_number: Option<i64>,
    pub head_sha: String,
    pub git_ref: String,
    /// The fork `git_ref` is fetched from (Bitbucket pull requests from forks).
    pub head_repo: Option<String>,
    pub attempt: i64,
    pub retry_of: Option<i64>,
    pub enqueued_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
    pub plan: Option<PlanSummary>,
    /// Confirmed (or `/gantry apply`): apply the saved plan when claimed.
    pub apply_requested: bool,
    pub planned_at: Option<i64>,
    /// The workspace's state version when the plan was made (gantry-kept state).
    pub state_version_at_plan: Option<i64>,
    /// sha256 of the saved plan file, recorded when the plan was made.
    pub plan_sha256: Option<String>,
    /// Who confirmed or requested the apply.
    pub requested_by: Option<String>,
    /// The monthly cost of the plan.
    pub cost: Option<CostEstimate>,
    /// OPA policy results of the plan; `None` when no policy group governs it.
    pub policy: Option<Vec<PolicyCheck>>,
    /// Who overrode soft-mandatory failures, and why.
    pub policy_override: Option<String>,
    /// Which runner executed it: `local` or `agent:POOL/NAME`.
    pub runner: Option<String>,
    /// What the running run waits for: `agent pool NAME` while no agent of
    /// its pool is live to take its job.
    pub waiting_for: Option<String>,
}

impl Run {
    /// What the policy results allow for this run.
    pub fn policy_verdict(&self) -> Verdict {
        match &self.policy {
            Some(checks) => policy_checks::verdict(checks, self.policy_override.is_some()),
            None => Verdict::Passed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// A plan's monthly cost, in Scalr's shape (`cost::estimate` makes it).
pub struct CostEstimate {
    pub currency: String,
    pub prior_monthly_cost: f64,
    pub proposed_monthly_cost: f64,
    pub delta_monthly_cost: f64,
    pub resources: Vec<ResourceCost>,
    pub unpriced: Vec<Unpriced>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceCost {
    pub address: String,
    #[serde(rename = "type")]
    pub resource_type: String,
    /// create, update, replace, delete or no-op.
    pub action: String,
    pub prior_monthly_cost: f64,
    pub proposed_monthly_cost: f64,
    pub delta_monthly_cost: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unpriced {
    pub address: String,
    #[serde(rename = "type")]
    pub resource_type: String,
    pub action: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_summary_counts_like_terraform() {
        let plan = serde_json::json!({
            "resource_changes": [
                {"mode": "managed", "change": {"actions": ["create"]}},
                {"mode": "managed", "change": {"actions": ["update"]}},
                {"mode": "managed", "change": {"actions": ["delete", "create"]}},
                {"mode": "managed", "change": {"actions": ["no-op"]}},
                {"mode": "data", "change": {"actions": ["read"]}}
            ]
        });
        let s = PlanSummary::from_plan_json(&plan);
        assert_eq!(
            s,
            PlanSummary {
                add: 2,
                change: 1,
                destroy: 1
            }
        );
        assert_eq!(s.to_string(), "Plan: 2 to add, 1 to change, 1 to destroy.");
    }

    #[test]
    fn states_round_trip() {
        for s in RunState::ALL {
            assert_eq!(RunState::parse(s.as_str()), Some(s));
        }
        assert_eq!(RunState::parse("bogus"), None);
    }
}
