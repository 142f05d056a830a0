//! The policy checks a run records: each policy's outcome at its enforcement
//! level, and what they allow ([`Verdict`]). Stored with the run (as JSON), read
//! by the reports and the API; `policy` evaluates them and re-exports these.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnforcementLevel {
    Advisory,
    SoftMandatory,
    HardMandatory,
}

impl EnforcementLevel {
    pub fn parse(s: &str) -> Option<EnforcementLevel> {
        match s {
            "advisory" => Some(EnforcementLevel::Advisory),
            "soft-mandatory" => Some(EnforcementLevel::SoftMandatory),
            "hard-mandatory" => Some(EnforcementLevel::HardMandatory),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EnforcementLevel::Advisory => "advisory",
            EnforcementLevel::SoftMandatory => "soft-mandatory",
            EnforcementLevel::HardMandatory => "hard-mandatory",
        }
    }

    /// The short form used in statuses: `hard`, `soft`, `advisory`.
    pub fn short(self) -> &'static str {
        match self {
            EnforcementLevel::Advisory => "advisory",
            EnforcementLevel::SoftMandatory => "soft",
            EnforcementLevel::HardMandatory => "hard",
        }
    }
}

/// One policy's outcome for a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyCheck {
    pub group: String,
    pub policy: String,
    pub enforcement_level: EnforcementLevel,
    /// passed, failed or errored.
    pub result: String,
    pub messages: Vec<String>,
}

/// What the policy results allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// Only advisory policies failed.
    Warned,
    /// A soft-mandatory policy failed and nobody overrode it.
    SoftBlocked,
    /// A hard-mandatory policy failed, or a policy could not be evaluated.
    HardBlocked,
}

pub fn verdict(checks: &[PolicyCheck], overridden: bool) -> Verdict {
    let failed = |level: EnforcementLevel| {
        checks.iter().any(|c| {
            c.result != "passed" && (c.enforcement_level == level || c.result == "errored")
        })
    };
    if failed(EnforcementLevel::HardMandatory) || checks.iter().any(|c| c.result == "errored") {
        Verdict::HardBlocked
    } else if failed(EnforcementLevel::SoftMandatory) && !overridden {
        Verdict::SoftBlocked
    } else if checks.iter().any(|c| c.result != "passed") {
        Verdict::Warned
    } else {
        Verdict::Passed
    }
}

/// "policies: 1 failed (hard)"; `None` when every policy passed.
pub fn summary(checks: &[PolicyCheck]) -> Option<String> {
    failure_summary(
        checks
            .iter()
            .map(|c| (c.enforcement_level, c.result.as_str())),
    )
}

/// "policies: 1 failed (hard)" for a status description, from each policy's
/// level and result; `None` when all passed. An error counts as a hard failure.
pub fn failure_summary<'a>(
    outcomes: impl IntoIterator<Item = (EnforcementLevel, &'a str)>,
) -> Option<String> {
    let failed: Vec<EnforcementLevel> = outcomes
        .into_iter()
        .filter(|(_, result)| *result != "passed")
        .map(|(level, result)| {
            if result == "errored" {
                EnforcementLevel::HardMandatory
            } else {
                level
            }
        })
        .collect();
    let worst = failed.iter().max()?;
    Some(format!(
        "policies: {} failed ({})",
        failed.len(),
        worst.short()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(level: EnforcementLevel, result: &str) -> PolicyCheck {
        PolicyCheck {
            group: "g".into(),
            policy: "p".into(),
            enforcement_level: level,
            result: result.into(),
            messages: vec![],
        }
    }

    #[test]
    fn verdicts() {
        use EnforcementLevel::*;
        assert_eq!(
            verdict(&[check(HardMandatory, "passed")], false),
            Verdict::Passed
        );
        assert_eq!(
            verdict(&[check(Advisory, "failed")], false),
            Verdict::Warned
        );
        assert_eq!(
            verdict(&[check(SoftMandatory, "failed")], false),
            Verdict::SoftBlocked
        );
        assert_eq!(
            verdict(&[check(SoftMandatory, "failed")], true),
            Verdict::Warned
        );
        assert_eq!(
            verdict(&[check(HardMandatory, "failed")], true),
            Verdict::HardBlocked
        );
        assert_eq!(
            verdict(&[check(Advisory, "errored")], true),
            Verdict::HardBlocked
        );
        assert_eq!(
            summary(&[check(Advisory, "failed"), check(SoftMandatory, "failed")]).as_deref(),
            Some("policies: 2 failed (soft)")
        );
        assert_eq!(summary(&[check(Advisory, "passed")]), None);
    }
}
