//! How a run failed, as stored (`runs.failure`): a stable kind next to the
//! reason text people read. Reports, the outbox and the reaper decide on the
//! kind, so rewording a reason never changes what gantry does.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Stopped on request (the API, a `/gantry cancel`).
    Canceled,
    /// terraform failed or timed out before any apply (init, plan, show).
    Terraform,
    /// terraform apply failed or timed out.
    Apply,
    /// The apply was refused before it started: the workspace is locked,
    /// policy blocks it, or the plan is missing or stale.
    Refused,
    /// The saved plan file is not the one that was reviewed: refused, and the
    /// workspace locked.
    Tampered,
    /// Its worker stopped (a crash, a lost lease) before the run ended.
    Interrupted,
    /// Its worker stopped during the apply: the reaper locked the workspace.
    InterruptedApply,
    /// gantry or its surroundings failed: git, the store, the state backend,
    /// the runner's setup.
    Internal,
}

impl FailureKind {
    pub const ALL: [FailureKind; 8] = [
        FailureKind::Canceled,
        FailureKind::Terraform,
        FailureKind::Apply,
        FailureKind::Refused,
        FailureKind::Tampered,
        FailureKind::Interrupted,
        FailureKind::InterruptedApply,
        FailureKind::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Canceled => "canceled",
            FailureKind::Terraform => "terraform",
            FailureKind::Apply => "apply",
            FailureKind::Refused => "refused",
            FailureKind::Tampered => "tampered",
            FailureKind::Interrupted => "interrupted",
            FailureKind::InterruptedApply => "interrupted_apply",
            FailureKind::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<FailureKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The change (its Terraform, its plan, what policy says of it) is at
    /// fault rather than gantry or its surroundings: a failed check, not an
    /// error.
    pub fn is_change_at_fault(self) -> bool {
        matches!(
            self,
            FailureKind::Terraform
                | FailureKind::Apply
                | FailureKind::Refused
                | FailureKind::Tampered
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in FailureKind::ALL {
            assert_eq!(FailureKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
        assert_eq!(FailureKind::parse("interrupted during apply"), None);
    }

    #[test]
    fn only_the_change_s_own_failures_are_its_fault() {
        let at_fault: Vec<_> = FailureKind::ALL
            .into_iter()
            .filter(|k| k.is_change_at_fault())
            .collect();
        assert_eq!(
            at_fault,
            [
                FailureKind::Terraform,
                FailureKind::Apply,
                FailureKind::Refused,
                FailureKind::Tampered
            ]
        );
    }
}
