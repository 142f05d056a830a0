//! How a run's phases end: a [`RunOutcome`], and for a failure a typed
//! [`Failure`] whose text is the reason people read and whose
//! [`FailureKind`] is what gantry stores and decides on.

use std::fmt;
use std::time::Duration;

use crate::runner::RunnerError;
use crate::runs::RunState;
use crate::store::FailureKind;

/// Where a run's phases brought it.
#[derive(Debug)]
pub enum RunOutcome {
    /// A plan (or drift check) is done; a drift check says what it found.
    Planned(Option<String>),
    /// An apply run waits for a person, for this reason.
    NeedsConfirmation(String),
    /// Applied; or nothing to apply, with the reason.
    Applied(Option<String>),
    Failed(Failure),
}

impl RunOutcome {
    /// The state the run ends in, with its reason and how it failed.
    pub fn end(&self) -> (RunState, Option<String>, Option<FailureKind>) {
        match self {
            RunOutcome::Planned(reason) => (RunState::Planned, reason.clone(), None),
            RunOutcome::NeedsConfirmation(reason) => {
                (RunState::NeedsConfirmation, Some(reason.clone()), None)
            }
            RunOutcome::Applied(reason) => (RunState::Applied, reason.clone(), None),
            RunOutcome::Failed(f @ Failure::Canceled) => {
                (RunState::Canceled, Some(f.to_string()), Some(f.kind()))
            }
            RunOutcome::Failed(f) => (RunState::Errored, Some(f.to_string()), Some(f.kind())),
        }
    }

    /// What the worker does with the run now. A run whose lease was lost
    /// (`fenced`) while it failed is left to the reaper (a plan is queued
    /// again, an apply marked interrupted and its workspace locked): this
    /// holder's writes would be stale. A run stopped because this replica
    /// drains (`draining`) goes back to the queue for another.
    pub fn disposal(&self, fenced: bool, draining: bool) -> Disposal {
        match self {
            RunOutcome::Failed(_) if fenced => Disposal::LeaveToReaper,
            RunOutcome::Failed(Failure::Canceled) if draining => Disposal::HandBack,
            _ => Disposal::Record,
        }
    }
}

/// See [`RunOutcome::disposal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposal {
    /// Record the end and report it.
    Record,
    /// Queue the run again, for any replica.
    HandBack,
    /// Write nothing: the reaper ends the run.
    LeaveToReaper,
}

/// Why a run's phases stopped short.
#[derive(Debug)]
pub enum Failure {
    /// terraform was stopped: a cancel request, this replica draining, or
    /// the lease lost ([`RunOutcome::disposal`] tells which).
    Canceled,
    /// A terraform step ran out of time.
    TimedOut { step: &'static str, after: Duration },
    /// A terraform step failed; `message` is the tail of its output.
    Terraform { step: &'static str, message: String },
    /// The apply may not run: why.
    Refused(String),
    /// The saved plan file of `run_id` is not the one that was reviewed.
    Tampered {
        run_id: i64,
        expected: String,
        actual: String,
    },
    /// The agent running its terraform vanished and the job may not be
    /// repeated (an apply, or a plan already retried once).
    Interrupted { apply: bool },
    /// gantry or its surroundings failed.
    Internal(String),
}

impl Failure {
    pub fn internal(reason: impl Into<String>) -> Failure {
        Failure::Internal(reason.into())
    }

    pub fn kind(&self) -> FailureKind {
        match self {
            Failure::Canceled => FailureKind::Canceled,
            Failure::TimedOut { step: "apply", .. } | Failure::Terraform { step: "apply", .. } => {
                FailureKind::Apply
            }
            Failure::TimedOut { .. } | Failure::Terraform { .. } => FailureKind::Terraform,
            Failure::Refused(_) => FailureKind::Refused,
            Failure::Tampered { .. } => FailureKind::Tampered,
            Failure::Interrupted { apply: true } => FailureKind::InterruptedApply,
            Failure::Interrupted { apply: false } => FailureKind::Interrupted,
            Failure::Internal(_) => FailureKind::Internal,
        }
    }
}

/// Why a tampered plan locks its workspace (also the audit entry's detail).
pub fn tampered_reason(run_id: i64, expected: &str, actual: &str) -> String {
    format!(
        "plan file of run {run_id} changed after it was reviewed (sha256 {actual}, expected {expected}); apply refused"
    )
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Canceled => f.write_str("canceled on request"),
            Failure::TimedOut { step, after } => write!(
                f,
                "terraform {step} timed out after {}",
                humantime::format_duration(*after)
            ),
            Failure::Terraform { step, message } => {
                write!(f, "terraform {step} failed: {message}")
            }
            Failure::Refused(why) => write!(f, "apply refused: {why}"),
            Failure::Tampered {
                run_id,
                expected,
                actual,
            } => write!(
                f,
                "apply refused: {}",
                tampered_reason(*run_id, expected, actual)
            ),
            // The reaper's words for a replica that vanished.
            Failure::Interrupted { apply: true } => f.write_str("interrupted during apply"),
            Failure::Interrupted { apply: false } => f.write_str("interrupted"),
            Failure::Internal(why) => f.write_str(why),
        }
    }
}

impl From<crate::git::GitError> for Failure {
    fn from(e: crate::git::GitError) -> Self {
        Failure::Internal(e.to_string())
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        Failure::Internal(e.to_string())
    }
}

impl From<crate::state::StateError> for Failure {
    fn from(e: crate::state::StateError) -> Self {
        Failure::Internal(e.to_string())
    }
}

impl From<RunnerError> for Failure {
    fn from(e: RunnerError) -> Self {
        match e {
            RunnerError::Failed { step, message } => Failure::Terraform { step, message },
            RunnerError::TimedOut { step, after } => Failure::TimedOut { step, after },
            RunnerError::Canceled => Failure::Canceled,
            RunnerError::AgentLost { apply, .. } => Failure::Interrupted { apply },
            other => Failure::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<(Failure, &'static str, FailureKind)> {
        vec![
            (Failure::Canceled, "canceled on request", FailureKind::Canceled),
            (
                Failure::TimedOut {
                    step: "plan",
                    after: Duration::from_secs(90),
                },
                "terraform plan timed out after 1m 30s",
                FailureKind::Terraform,
            ),
            (
                Failure::TimedOut {
                    step: "apply",
                    after: Duration::from_secs(5),
                },
                "terraform apply timed out after 5s",
                FailureKind::Apply,
            ),
            (
                Failure::Terraform {
                    step: "init",
                    message: "no provider".into(),
                },
                "terraform init failed: no provider",
                FailureKind::Terraform,
            ),
            (
                Failure::Terraform {
                    step: "apply",
                    message: "boom".into(),
                },
                "terraform apply failed: boom",
                FailureKind::Apply,
            ),
            (
                Failure::Refused("the run has no plan".into()),
                "apply refused: the run has no plan",
                FailureKind::Refused,
            ),
            (
                Failure::Tampered {
                    run_id: 3,
                    expected: "aa".into(),
                    actual: "bb".into(),
                },
                "apply refused: plan file of run 3 changed after it was reviewed (sha256 bb, expected aa); apply refused",
                FailureKind::Tampered,
            ),
            (
                Failure::Interrupted { apply: true },
                "interrupted during apply",
                FailureKind::InterruptedApply,
            ),
            (
                Failure::Interrupted { apply: false },
                "interrupted",
                FailureKind::Interrupted,
            ),
            (
                Failure::internal("git fetch failed"),
                "git fetch failed",
                FailureKind::Internal,
            ),
        ]
    }

    #[test]
    fn failures_keep_their_reason_texts_and_kinds() {
        for (failure, text, kind) in samples() {
            assert_eq!(failure.to_string(), text);
            assert_eq!(failure.kind(), kind, "{text}");
            assert_eq!(FailureKind::parse(kind.as_str()), Some(kind));
        }
    }

    /// Rows written before kinds were stored get theirs from their reason
    /// text (migration 0015): the same kind the failure has now.
    #[tokio::test]
    async fn reasons_stored_before_kinds_get_the_kind_of_their_failure() {
        use secrecy::SecretString;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = crate::store::Store::connect(&SecretString::from(url))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let migration = include_str!("../../migrations/sqlite/0015_run_failure.sql");
        let backfill = &migration[migration.find("UPDATE runs SET failure").unwrap()..];
        let mut rows: Vec<(RunState, String, FailureKind)> = samples()
            .into_iter()
            .map(|(f, text, kind)| (RunOutcome::Failed(f).end().0, text.to_string(), kind))
            .collect();
        rows.push((
            RunState::Canceled,
            "canceled by api".into(),
            FailureKind::Canceled,
        ));
        rows.push((
            RunState::Errored,
            "interrupted".into(),
            FailureKind::Interrupted,
        ));
        rows.push((
            RunState::Errored,
            "interrupted during apply".into(),
            FailureKind::InterruptedApply,
        ));
        let mut ids = Vec::new();
        for (state, reason, _) in &rows {
            let run = crate::store::NewRun {
                workspace: "w".into(),
                event_id: None,
                kind: crate::runs::RunKind::Apply,
                source: crate::runs::RunSource::Push,
                provider_id: "github".into(),
                repo: "acme/infra".into(),
                branch: "main".into(),
                pr_number: None,
                head_sha: "abc".into(),
                git_ref: "refs/heads/main".into(),
                head_repo: None,
            };
            let id = store.insert_runs(&[run]).await.unwrap()[0].id;
            sqlx::query(
                "UPDATE runs SET state = $1, state_reason = $2, failure = NULL WHERE id = $3",
            )
            .bind(state.as_str())
            .bind(reason)
            .bind(id)
            .execute(store.pool())
            .await
            .unwrap();
            ids.push(id);
        }
        sqlx::raw_sql(backfill).execute(store.pool()).await.unwrap();
        for ((_, reason, kind), id) in rows.iter().zip(ids) {
            let run = store.run(id).await.unwrap().unwrap();
            assert_eq!(run.failure, Some(*kind), "{reason}");
        }
    }

    #[test]
    fn runner_errors_map_to_failures() {
        let f = Failure::from(RunnerError::TimedOut {
            step: "apply",
            after: Duration::from_millis(1500),
        });
        assert_eq!(f.to_string(), "terraform apply timed out after 1s 500ms");
        assert_eq!(f.kind(), FailureKind::Apply);
        assert!(matches!(
            Failure::from(RunnerError::Canceled),
            Failure::Canceled
        ));
        let spawn = Failure::from(RunnerError::Spawn("no such file".into()));
        assert_eq!(spawn.kind(), FailureKind::Internal);
        assert_eq!(spawn.to_string(), "cannot run terraform: no such file");
    }

    #[test]
    fn ends_record_state_reason_and_kind() {
        let canceled = RunOutcome::Failed(Failure::Canceled).end();
        assert_eq!(
            canceled,
            (
                RunState::Canceled,
                Some("canceled on request".into()),
                Some(FailureKind::Canceled)
            )
        );
        let (state, _, kind) = RunOutcome::Failed(Failure::internal("x")).end();
        assert_eq!(
            (state, kind),
            (RunState::Errored, Some(FailureKind::Internal))
        );
        assert_eq!(
            RunOutcome::Applied(Some("no changes to apply".into())).end(),
            (RunState::Applied, Some("no changes to apply".into()), None)
        );
    }

    #[test]
    fn only_a_drain_hands_back_and_only_a_lost_lease_leaves_the_run() {
        let canceled = RunOutcome::Failed(Failure::Canceled);
        let failed = RunOutcome::Failed(Failure::internal("x"));
        let planned = RunOutcome::Planned(None);
        assert_eq!(canceled.disposal(false, true), Disposal::HandBack);
        assert_eq!(canceled.disposal(false, false), Disposal::Record);
        assert_eq!(canceled.disposal(true, true), Disposal::LeaveToReaper);
        assert_eq!(failed.disposal(true, false), Disposal::LeaveToReaper);
        assert_eq!(failed.disposal(false, true), Disposal::Record);
        // A run that finished records its end even if the lease went just after.
        assert_eq!(planned.disposal(true, true), Disposal::Record);
    }
}
