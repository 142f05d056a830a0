//! Policy groups: a repository folder of policies governing environments.
//! Each group is fetched into the mirror cache, checked out at its branch head
//! and compiled; a set that fails to load never replaces the last good one
//! (the error is reported on the policy repository's commit status).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{EnforcementLevel, PolicySet};
use crate::app::Ctx;
use crate::config::PolicyGroupConfig;
use crate::vcs::{CommitStatus, StatusState};

/// A group's compiled policies at one commit.
#[derive(Clone)]
pub struct LoadedGroup {
    pub sha: String,
    pub set: Arc<PolicySet>,
}

/// The groups this process has loaded, and the last load error of each.
#[derive(Default)]
pub struct PolicyGroups {
    loaded: Mutex<HashMap<String, LoadedGroup>>,
    errors: Mutex<HashMap<String, String>>,
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
    super::failure_summary(
        checks
            .iter()
            .map(|c| (c.enforcement_level, c.result.as_str())),
    )
}

impl PolicyGroups {
    pub fn get(&self, name: &str) -> Option<LoadedGroup> {
        self.loaded
            .lock()
            .expect("policy groups poisoned")
            .get(name)
            .cloned()
    }

    pub fn error(&self, name: &str) -> Option<String> {
        self.errors
            .lock()
            .expect("policy groups poisoned")
            .get(name)
            .cloned()
    }
}

/// Fetches a group's branch and loads its policies if the head moved.
/// Returns the loaded sha; on a broken set the last good one stays.
pub async fn sync(ctx: &Ctx, group: &PolicyGroupConfig) -> Result<String, String> {
    let provider = ctx
        .providers
        .load()
        .get(&group.provider)
        .ok_or_else(|| format!("provider {} is not configured", group.provider))?;
    let branch_ref = format!("refs/heads/{}", group.branch);
    let creds = provider
        .git_credentials(&group.repo)
        .await
        .map_err(|e| e.to_string())?;
    let mirror = ctx
        .mirrors
        .fetch(
            &group.provider,
            &group.repo,
            &provider.clone_url(&group.repo),
            creds,
            std::slice::from_ref(&branch_ref),
        )
        .await
        .map_err(|e| e.to_string())?;
    let sha = mirror
        .resolve(&branch_ref)
        .map_err(|e| e.to_string())?
        .to_string();
    if ctx
        .policy_groups
        .get(&group.name)
        .is_some_and(|g| g.sha == sha)
    {
        return Ok(sha);
    }
    let loaded = load_at(ctx, group, &mirror, &sha).await;
    match loaded {
        Ok(set) => {
            tracing::info!(policy_group = %group.name, sha = %sha, policies = set.policies.len(), "policy group {} loaded at {}", group.name, &sha[..8.min(sha.len())]);
            ctx.policy_groups
                .loaded
                .lock()
                .expect("policy groups poisoned")
                .insert(
                    group.name.clone(),
                    LoadedGroup {
                        sha: sha.clone(),
                        set: Arc::new(set),
                    },
                );
            ctx.policy_groups
                .errors
                .lock()
                .expect("policy groups poisoned")
                .remove(&group.name);
            Ok(sha)
        }
        Err(error) => {
            tracing::error!(policy_group = %group.name, sha = %sha, "policy group {} at {} is broken; keeping the last good set: {error}", group.name, &sha[..8.min(sha.len())]);
            ctx.policy_groups
                .errors
                .lock()
                .expect("policy groups poisoned")
                .insert(group.name.clone(), error.clone());
            let status = CommitStatus {
                state: StatusState::Error,
                context: "gantry/policy-group".into(),
                description: format!(
                    "policy group {} does not load: {}",
                    group.name,
                    error.lines().next().unwrap_or_default()
                ),
                target_url: None,
                pull_request: None,
            };
            if let Err(e) = provider.set_status(&group.repo, &sha, &status).await {
                tracing::warn!(error = %e, "reporting the broken policy group failed");
            }
            Err(error)
        }
    }
}

/// Checks out `sha` and compiles the group's folder.
pub async fn load_at(
    ctx: &Ctx,
    group: &PolicyGroupConfig,
    mirror: &crate::git::Mirror,
    sha: &str,
) -> Result<PolicySet, String> {
    let dir = ctx
        .config()
        .data_dir
        .join("policy-groups")
        .join(&group.name)
        .join(sha);
    if !dir.exists() {
        let (mirror, sha2, tmp) = (mirror.clone(), sha.to_string(), dir.with_extension("tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        tokio::task::spawn_blocking(move || mirror.checkout(&sha2, &tmp).map(|_| tmp))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
            .and_then(|tmp| std::fs::rename(&tmp, &dir).map_err(|e| e.to_string()))?;
    }
    let folder = dir.join(group.path.as_str());
    tokio::task::spawn_blocking(move || PolicySet::load(&folder))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|errors| {
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
}

/// Evaluates every group governing `environment` (loading groups not loaded
/// yet). A group that cannot be loaded at all fails the check.
pub async fn evaluate(ctx: &Ctx, environment: &str, input: &regorus::Value) -> Vec<PolicyCheck> {
    let config = ctx.config();
    let mut checks = Vec::new();
    for group in config
        .policy_groups
        .iter()
        .filter(|g| g.environments.iter().any(|e| e == environment))
    {
        if ctx.policy_groups.get(&group.name).is_none() {
            let _ = sync(ctx, group).await;
        }
        match ctx.policy_groups.get(&group.name) {
            Some(loaded) => {
                for r in loaded.set.evaluate(input) {
                    checks.push(PolicyCheck {
                        group: group.name.clone(),
                        policy: r.policy,
                        enforcement_level: r.enforcement_level,
                        result: r.result.to_string(),
                        messages: r.messages,
                    });
                }
            }
            None => checks.push(PolicyCheck {
                group: group.name.clone(),
                policy: "(policy group)".into(),
                enforcement_level: EnforcementLevel::HardMandatory,
                result: "errored".into(),
                messages: vec![ctx
                    .policy_groups
                    .error(&group.name)
                    .unwrap_or_else(|| "the policy group could not be loaded".into())],
            }),
        }
    }
    checks
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
