//! Run queries: insert, claim (one active run per workspace), transitions,
//! leases and heartbeats, reaping runs whose worker died, and reads for the API
//! and the reporter.

use std::time::Duration;

use sqlx::{Any, Row, Transaction};

use super::events::is_unique_violation;
use super::leases::new_token;
use super::{now_ms, Backend, FailureKind, Lease, Store, StoreError, StoreResult};
use super::{PlanSummary, Run, RunKind, RunSource, RunState};

/// A run to enqueue.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub workspace: String,
    pub event_id: Option<i64>,
    pub kind: RunKind,
    pub source: RunSource,
    pub provider_id: String,
    pub repo: String,
    pub branch: String,
    pub pr_number: Option<i64>,
    pub head_sha: String,
    pub git_ref: String,
    /// The fork `git_ref` is fetched from (Bitbucket pull requests from forks).
    pub head_repo: Option<String>,
}

pub(super) const RUN_COLUMNS: &str = "id, workspace, event_id, kind, source, state, state_reason, failure, provider_id, repo, branch,
    pr_number, head_sha, git_ref, attempt, retry_of, enqueued_at, started_at, finished_at, updated_at,
    plan_add, plan_change, plan_destroy, apply_requested, planned_at, state_version_at_plan, requested_by, cost_estimate,
    policy_results, policy_override, head_repo, plan_sha256, runner, waiting_for";

const ACTIVE: &str = "('fetching', 'planning', 'applying')";

pub(super) fn run_from_row(row: &sqlx::any::AnyRow) -> StoreResult<Run> {
    let kind: String = row.try_get("kind")?;
    let source: String = row.try_get("source")?;
    let state: String = row.try_get("state")?;
    let failure: Option<String> = row.try_get("failure")?;
    let add: Option<i64> = row.try_get("plan_add")?;
    let change: Option<i64> = row.try_get("plan_change")?;
    let destroy: Option<i64> = row.try_get("plan_destroy")?;
    Ok(Run {
        id: row.try_get("id")?,
        workspace: row.try_get("workspace")?,
        event_id: row.try_get("event_id")?,
        kind: RunKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("run kind `{kind}`")))?,
        source: RunSource::parse(&source)
            .ok_or_else(|| StoreError::Corrupt(format!("run source `{source}`")))?,
        state: RunState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("run state `{state}`")))?,
        state_reason: row.try_get("state_reason")?,
        failure: match failure {
            Some(f) => Some(
                FailureKind::parse(&f)
                    .ok_or_else(|| StoreError::Corrupt(format!("run failure `{f}`")))?,
            ),
            None => None,
        },
        provider_id: row.try_get("provider_id")?,
        repo: row.try_get("repo")?,
        branch: row.try_get("branch")?,
        pr_number: row.try_get("pr_number")?,
        head_sha: row.try_get("head_sha")?,
        git_ref: row.try_get("git_ref")?,
        head_repo: row.try_get("head_repo")?,
        attempt: row.try_get("attempt")?,
        retry_of: row.try_get("retry_of")?,
        enqueued_at: row.try_get("enqueued_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        updated_at: row.try_get("updated_at")?,
        plan: match (add, change, destroy) {
            (Some(add), Some(change), Some(destroy)) => Some(PlanSummary {
                add,
                change,
                destroy,
            }),
            _ => None,
        },
        apply_requested: row.try_get::<i64, _>("apply_requested")? != 0,
        planned_at: row.try_get("planned_at")?,
        state_version_at_plan: row.try_get("state_version_at_plan")?,
        plan_sha256: row.try_get("plan_sha256")?,
        requested_by: row.try_get("requested_by")?,
        policy: match row.try_get::<Option<String>, _>("policy_results")? {
            Some(json) => Some(
                serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("policy results: {e}")))?,
            ),
            None => None,
        },
        policy_override: row.try_get("policy_override")?,
        runner: row.try_get("runner")?,
        waiting_for: row.try_get("waiting_for")?,
        cost: match row.try_get::<Option<String>, _>("cost_estimate")? {
            Some(json) => Some(
                serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("cost estimate: {e}")))?,
            ),
            None => None,
        },
    })
}

/// The newest run of each workspace among `rows` (ordered by id), by workspace name.
fn newest_per_workspace(rows: &[sqlx::any::AnyRow]) -> StoreResult<Vec<Run>> {
    let mut latest: Vec<Run> = Vec::new();
    for row in rows {
        let run = run_from_row(row)?;
        match latest.iter_mut().find(|r| r.workspace == run.workspace) {
            Some(slot) => *slot = run,
            None => latest.push(run),
        }
    }
    latest.sort_by(|a, b| a.workspace.cmp(&b.workspace));
    Ok(latest)
}

pub(super) async fn insert_transition(
    tx: &mut Transaction<'_, Any>,
    run_id: i64,
    state: &str,
    reason: Option<&str>,
    at: i64,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO run_transitions (run_id, state, reason, at) VALUES ($1, $2, $3, $4)")
        .bind(run_id)
        .bind(state)
        .bind(reason)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) async fn insert_run(
    tx: &mut Transaction<'_, Any>,
    r: &NewRun,
    now: i64,
) -> StoreResult<Run> {
    let row = sqlx::query(&format!(
        "INSERT INTO runs (workspace, event_id, kind, source, state, provider_id, repo, branch, pr_number,
                           head_sha, git_ref, head_repo, attempt, enqueued_at, updated_at)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10, $11, 1, $12, $12)
         RETURNING {RUN_COLUMNS}"
    ))
    .bind(&r.workspace)
    .bind(r.event_id)
    .bind(r.kind.as_str())
    .bind(r.source.as_str())
    .bind(&r.provider_id)
    .bind(&r.repo)
    .bind(&r.branch)
    .bind(r.pr_number)
    .bind(&r.head_sha)
    .bind(&r.git_ref)
    .bind(&r.head_repo)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    let run = run_from_row(&row)?;
    insert_transition(tx, run.id, "queued", None, now).await?;
    Ok(run)
}

/// A state change to write: where to, why, and how the run failed (if it did).
struct Change<'a> {
    to: RunState,
    reason: Option<&'a str>,
    failure: Option<FailureKind>,
    /// Queue the run's report in the same transaction.
    report: bool,
}

/// One recorded state change of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transition {
    pub state: String,
    pub reason: Option<String>,
    pub at: i64,
}

impl Store {
    /// Enqueues runs outside any webhook (tests, API).
    pub async fn insert_runs(&self, runs: &[NewRun]) -> StoreResult<Vec<Run>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::new();
        for r in runs {
            out.push(insert_run(&mut tx, r, now).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Claims the oldest queued run whose workspace has no active run, moving it
    /// to `fetching` under a lease held by `node`. The [`Lease`] it returns is
    /// renewed by [`Store::heartbeat`] and names the holder in every transition.
    pub async fn claim_run(
        &self,
        node: &str,
        lease: Duration,
    ) -> StoreResult<Option<(Run, Lease)>> {
        let token = new_token();
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE runs SET state = 'fetching', claimed_by = $1, lease_until = $2, lease_token = $4,
                             started_at = $3, updated_at = $3
             WHERE id = (
                 SELECT r.id FROM runs r
                 WHERE r.state = 'queued'
                   AND NOT EXISTS (SELECT 1 FROM runs a WHERE a.workspace = r.workspace AND a.state IN {ACTIVE})
                 ORDER BY r.enqueued_at, r.id LIMIT 1 {lock})
             RETURNING {RUN_COLUMNS}"
        );
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Sqlite {
            // Takes the write lock before the clock is read: a claim that
            // waited for the lock never starts before the run it waited on
            // finished.
            sqlx::query("UPDATE runs SET updated_at = updated_at WHERE id = -1")
                .execute(&mut *tx)
                .await?;
        }
        let now = now_ms();
        let result = sqlx::query(&sql)
            .bind(node)
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .bind(&token)
            .fetch_optional(&mut *tx)
            .await;
        let row = match result {
            Ok(row) => row,
            // Another replica claimed a run of the same workspace at the same moment.
            Err(e) if is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(row) = row else { return Ok(None) };
        let run = run_from_row(&row)?;
        insert_transition(&mut tx, run.id, "fetching", None, now).await?;
        tx.commit().await?;
        let lease = Lease { id: run.id, token };
        Ok(Some((run, lease)))
    }

    /// Moves a run this worker holds from one of `from` to `to`. Returns false
    /// (and changes nothing) when the run is not in one of `from`; fails with
    /// [`StoreError::LeaseLost`] (changing nothing) when `lease` is no longer
    /// the run's claim. Leaving the active states (`planned`, waiting for a
    /// confirmation, or finished) releases the lease; terminal states also set
    /// `finished_at`.
    pub async fn transition(
        &self,
        lease: &Lease,
        from: &[RunState],
        to: RunState,
        reason: Option<&str>,
    ) -> StoreResult<bool> {
        let change = Change {
            to,
            reason,
            failure: None,
            report: false,
        };
        self.held_transition(lease, from, change).await
    }

    /// Ends a run this worker holds, like [`Store::transition`], and queues
    /// its final report (status and comment) in the same transaction: the end
    /// of a run is reported even if this process dies right after the commit.
    pub async fn transition_and_report(
        &self,
        lease: &Lease,
        from: &[RunState],
        to: RunState,
        failure: Option<FailureKind>,
        reason: Option<&str>,
    ) -> StoreResult<bool> {
        let change = Change {
            to,
            reason,
            failure,
            report: true,
        };
        self.held_transition(lease, from, change).await
    }

    async fn held_transition(
        &self,
        lease: &Lease,
        from: &[RunState],
        change: Change<'_>,
    ) -> StoreResult<bool> {
        let to = change.to;
        let moved = self
            .write_transition(lease.id, Some(&lease.token), from, change)
            .await?;
        if !moved && self.lease_token(lease.id).await?.as_deref() != Some(&lease.token) {
            tracing::warn!(run.id = lease.id, to = %to, "stale holder of run {}: its move to {to} was ignored", lease.id);
            return Err(StoreError::LeaseLost {
                what: "run",
                id: lease.id,
            });
        }
        Ok(moved)
    }

    /// Moves a run nobody holds (queued, planned, waiting for a confirmation),
    /// as the API does. A run under a worker's lease is left to its worker.
    pub async fn transition_unclaimed(
        &self,
        id: i64,
        from: &[RunState],
        to: RunState,
        reason: Option<&str>,
    ) -> StoreResult<bool> {
        let change = Change {
            to,
            reason,
            failure: None,
            report: false,
        };
        self.write_transition(id, None, from, change).await
    }

    async fn write_transition(
        &self,
        id: i64,
        token: Option<&str>,
        from: &[RunState],
        change: Change<'_>,
    ) -> StoreResult<bool> {
        let Change {
            to,
            reason,
            failure,
            report,
        } = change;
        let now = now_ms();
        let from_sql = from
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let release = if to.is_terminal() {
            ", finished_at = $4, claimed_by = NULL, lease_until = NULL, lease_token = NULL"
        } else if !to.is_active() {
            ", claimed_by = NULL, lease_until = NULL, lease_token = NULL"
        } else {
            ""
        };
        let holder = if token.is_some() {
            "lease_token = $6"
        } else {
            "lease_token IS NULL"
        };
        let sql = format!(
            "UPDATE runs SET state = $2, state_reason = $3, updated_at = $4, failure = $5
                 {release}
             WHERE id = $1 AND {holder} AND state IN ({from_sql})
             RETURNING {RUN_COLUMNS}"
        );
        let mut tx = self.pool.begin().await?;
        let mut query = sqlx::query(&sql)
            .bind(id)
            .bind(to.as_str())
            .bind(reason)
            .bind(now)
            .bind(failure.map(FailureKind::as_str));
        if let Some(token) = token {
            query = query.bind(token);
        }
        let Some(row) = query.fetch_optional(&mut *tx).await? else {
            tx.rollback().await?;
            return Ok(false);
        };
        insert_transition(&mut tx, id, to.as_str(), reason, now).await?;
        if report {
            super::outbox::enqueue_run_report(&mut tx, &run_from_row(&row)?, now).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The token of the run's current claim, if it has one.
    async fn lease_token(&self, id: i64) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar::<_, Option<String>>("SELECT lease_token FROM runs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// Records a finished plan on a `planning` run (its state is moved by the
    /// caller): the summary, when it was made, and the state version it saw.
    pub async fn record_plan(
        &self,
        id: i64,
        summary: PlanSummary,
        state_version: Option<i64>,
        plan_sha256: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE runs SET plan_add = $2, plan_change = $3, plan_destroy = $4, planned_at = $5,
                             state_version_at_plan = $6, plan_sha256 = $7, updated_at = $5
             WHERE id = $1",
        )
        .bind(id)
        .bind(summary.add)
        .bind(summary.change)
        .bind(summary.destroy)
        .bind(now_ms())
        .bind(state_version)
        .bind(plan_sha256)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_cost_estimate(
        &self,
        id: i64,
        estimate: &super::CostEstimate,
    ) -> StoreResult<()> {
        let json =
            serde_json::to_string(estimate).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query("UPDATE runs SET cost_estimate = $2 WHERE id = $1")
            .bind(id)
            .bind(json)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_policy_results(
        &self,
        id: i64,
        checks: &[super::PolicyCheck],
    ) -> StoreResult<()> {
        let json = serde_json::to_string(checks).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query("UPDATE runs SET policy_results = $2 WHERE id = $1")
            .bind(id)
            .bind(json)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records an override of the run's soft-mandatory failures. False when
    /// it was already overridden.
    pub async fn override_policy(&self, id: i64, by: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE runs SET policy_override = $2 WHERE id = $1 AND policy_override IS NULL",
        )
        .bind(id)
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Queues the apply of a run's saved plan (a confirmation or `/gantry apply`).
    /// Only a `planned` or `needs_confirmation` run with a plan can be applied.
    pub async fn request_apply(&self, id: i64, actor: &str) -> StoreResult<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE runs SET state = 'queued', apply_requested = 1, requested_by = $2, state_reason = NULL, failure = NULL,
                             enqueued_at = $3, updated_at = $3, finished_at = NULL
             WHERE id = $1 AND state IN ('planned', 'needs_confirmation') AND planned_at IS NOT NULL",
        )
        .bind(id)
        .bind(actor)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_transition(
            &mut tx,
            id,
            "queued",
            Some(&format!("apply requested by {actor}")),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// An `applied` run of `workspace` other than `except` that finished after
    /// `since` (ms): a plan made at `since` is stale.
    pub async fn applied_since(
        &self,
        workspace: &str,
        since: i64,
        except: i64,
    ) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MAX(id) FROM runs WHERE workspace = $1 AND state = 'applied' AND finished_at >= $2 AND id <> $3",
        )
        .bind(workspace)
        .bind(since)
        .bind(except)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Asks for a run to stop: a queued (or waiting) run is canceled at once;
    /// an active one is flagged, and its worker stops it. False when the run is
    /// already finished.
    pub async fn request_cancel(&self, id: i64, actor: &str) -> StoreResult<bool> {
        let reason = format!("canceled by {actor}");
        let change = Change {
            to: RunState::Canceled,
            reason: Some(&reason),
            failure: Some(FailureKind::Canceled),
            report: false,
        };
        let waiting = [RunState::Queued, RunState::NeedsConfirmation];
        if self.write_transition(id, None, &waiting, change).await? {
            return Ok(true);
        }
        let done = sqlx::query(&format!(
            "UPDATE runs SET cancel_requested = 1 WHERE id = $1 AND state IN {ACTIVE}"
        ))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Extends the lease of an active run this worker holds. `None` when the
    /// run is no longer held by `lease` (or no longer active); otherwise
    /// whether a cancel was requested.
    pub async fn heartbeat(&self, lease: &Lease, duration: Duration) -> StoreResult<Option<bool>> {
        let flag: Option<i64> = sqlx::query_scalar(&format!(
            "UPDATE runs SET lease_until = $3 WHERE id = $1 AND lease_token = $2 AND state IN {ACTIVE}
             RETURNING cancel_requested"
        ))
        .bind(lease.id)
        .bind(&lease.token)
        .bind(now_ms() + duration.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(flag.map(|f| f != 0))
    }

    /// Ends this holder's lease now, keeping the run as it is: its worker
    /// stopped (shutdown) and the run is the reaper's to take back at once,
    /// here after a restart or on another replica. False when the lease was no
    /// longer this one.
    pub async fn expire_lease(&self, lease: &Lease) -> StoreResult<bool> {
        let done = sqlx::query(&format!(
            "UPDATE runs SET lease_until = $3 WHERE id = $1 AND lease_token = $2 AND state IN {ACTIVE}"
        ))
        .bind(lease.id)
        .bind(&lease.token)
        .bind(now_ms() - 1)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks runs whose worker died `errored` ("interrupted"): those whose
    /// lease expired, whoever held them (a crashed process, or a replica fenced
    /// off from the database, which stopped its terraform before the lease ran
    /// out). A live lease is never taken, even from a process with the same
    /// node id. A plan that was interrupted on its first attempt is queued
    /// again once, keeping its place; an interrupted apply locks its workspace.
    pub async fn reap_runs(&self) -> StoreResult<Vec<Run>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(&format!(
            "UPDATE runs SET state = 'errored', finished_at = $1, updated_at = $1,
                             state_reason = CASE WHEN state = 'applying' THEN 'interrupted during apply' ELSE 'interrupted' END,
                             failure = CASE WHEN state = 'applying' THEN 'interrupted_apply' ELSE 'interrupted' END,
                             claimed_by = NULL, lease_until = NULL, lease_token = NULL
             WHERE state IN {ACTIVE} AND lease_until < $1
             RETURNING {RUN_COLUMNS}"
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::new();
        for row in &rows {
            let run = run_from_row(row)?;
            let reason = run.state_reason.clone().unwrap_or_default();
            insert_transition(&mut tx, run.id, "errored", Some(&reason), now).await?;
            // Its final status and comment, committed with its end.
            super::outbox::enqueue_run_report(&mut tx, &run, now).await?;
            // An agent running its terraform stops at its next request.
            super::agents::end_jobs_of_run(&mut tx, run.id, now).await?;
            if run.failure == Some(FailureKind::InterruptedApply) {
                // Nobody knows what the apply changed: stop further applies until a person looks.
                sqlx::query(
                    "INSERT INTO workspace_locks (workspace, reason, locked_by, run_id, locked_at)
                     VALUES ($1, $2, 'gantry', $3, $4) ON CONFLICT (workspace) DO NOTHING",
                )
                .bind(&run.workspace)
                .bind(format!(
                    "run {} was interrupted during apply; check the state, then unlock",
                    run.id
                ))
                .bind(run.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO audit_log (at, actor, action, workspace, run_id, commit_sha, detail)
                     VALUES ($1, 'gantry', 'lock', $2, $3, $4, 'interrupted during apply')",
                )
                .bind(now)
                .bind(&run.workspace)
                .bind(run.id)
                .bind(&run.head_sha)
                .execute(&mut *tx)
                .await?;
            } else if !run.apply_requested && run.attempt == 1 {
                let retry = sqlx::query(&format!(
                    "INSERT INTO runs (workspace, event_id, kind, source, state, provider_id, repo, branch, pr_number,
                                       head_sha, git_ref, head_repo, attempt, retry_of, enqueued_at, updated_at)
                     SELECT workspace, event_id, kind, source, 'queued', provider_id, repo, branch, pr_number,
                            head_sha, git_ref, head_repo, attempt + 1, id, enqueued_at, $2
                     FROM runs WHERE id = $1
                     RETURNING {RUN_COLUMNS}"
                ))
                .bind(run.id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                let retry = run_from_row(&retry)?;
                insert_transition(
                    &mut tx,
                    retry.id,
                    "queued",
                    Some(&format!("retry of interrupted run {}", run.id)),
                    now,
                )
                .await?;
            }
            out.push(run);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Puts a run this node holds back to `queued` at once, keeping its
    /// place, for any replica to claim (this replica is draining). Only a run
    /// still fetching or planning, with no cancel requested; false otherwise
    /// (an applying run is never handed over).
    pub async fn requeue_run(&self, lease: &Lease, node: &str) -> StoreResult<bool> {
        let id = lease.id;
        let now = now_ms();
        let reason = format!("handed back by {node}, which is shutting down");
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE runs SET state = 'queued', state_reason = $3, failure = NULL, claimed_by = NULL, lease_until = NULL,
                             lease_token = NULL, updated_at = $4
             WHERE id = $1 AND lease_token = $2 AND state IN ('fetching', 'planning') AND cancel_requested = 0",
        )
        .bind(id)
        .bind(&lease.token)
        .bind(&reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_transition(&mut tx, id, "queued", Some(&reason), now).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn run(&self, id: i64) -> StoreResult<Option<Run>> {
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// Newest first; `workspace` filters.
    pub async fn list_runs(&self, workspace: Option<&str>, limit: i64) -> StoreResult<Vec<Run>> {
        let rows = match workspace {
            Some(w) => {
                sqlx::query(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE workspace = $1 ORDER BY id DESC LIMIT $2"
                ))
                .bind(w)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(run_from_row).collect()
    }

    pub async fn count_runs(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM runs")
            .fetch_one(&self.pool)
            .await?)
    }

    /// The newest run of each workspace.
    pub async fn latest_runs(&self) -> StoreResult<Vec<Run>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN (SELECT MAX(id) FROM runs GROUP BY workspace)"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    pub async fn transitions(&self, run_id: i64) -> StoreResult<Vec<Transition>> {
        let rows = sqlx::query(
            "SELECT state, reason, at FROM run_transitions WHERE run_id = $1 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Transition {
                    state: r.try_get("state")?,
                    reason: r.try_get("reason")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }

    /// The runs of a pull request's newest head commit (the newest run per
    /// workspace), with that commit's sha. Superseded runs are left out.
    pub async fn pr_head_runs(
        &self,
        provider_id: &str,
        repo: &str,
        pr: i64,
    ) -> StoreResult<Option<(String, Vec<Run>)>> {
        let head: Option<String> = sqlx::query_scalar(
            "SELECT head_sha FROM runs WHERE id = (
                 SELECT MAX(id) FROM runs WHERE provider_id = $1 AND repo = $2 AND pr_number = $3)",
        )
        .bind(provider_id)
        .bind(repo)
        .bind(pr)
        .fetch_optional(&self.pool)
        .await?;
        let Some(head) = head else { return Ok(None) };
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs
             WHERE provider_id = $1 AND repo = $2 AND pr_number = $3 AND head_sha = $4 AND state <> 'superseded'
             ORDER BY id"
        ))
        .bind(provider_id)
        .bind(repo)
        .bind(pr)
        .bind(&head)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some((head, newest_per_workspace(&rows)?)))
    }
}

impl Store {
    pub async fn set_plan_text(&self, run_id: i64, text: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO run_outputs (run_id, plan_text) VALUES ($1, $2)
             ON CONFLICT (run_id) DO UPDATE SET plan_text = excluded.plan_text",
        )
        .bind(run_id)
        .bind(text)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn plan_text(&self, run_id: i64) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT plan_text FROM run_outputs WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

impl Store {
    pub async fn set_apply_text(&self, run_id: i64, text: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO run_outputs (run_id, plan_text, apply_text) VALUES ($1, '', $2)
             ON CONFLICT (run_id) DO UPDATE SET apply_text = excluded.apply_text",
        )
        .bind(run_id)
        .bind(text)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn apply_text(&self, run_id: i64) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar::<_, Option<String>>(
            "SELECT apply_text FROM run_outputs WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }

    /// The newest run per workspace of one kind at one commit (an apply comment's rows).
    pub async fn commit_runs(
        &self,
        provider_id: &str,
        repo: &str,
        sha: &str,
        kind: RunKind,
    ) -> StoreResult<Vec<Run>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs
             WHERE provider_id = $1 AND repo = $2 AND head_sha = $3 AND kind = $4 ORDER BY id"
        ))
        .bind(provider_id)
        .bind(repo)
        .bind(sha)
        .bind(kind.as_str())
        .fetch_all(&self.pool)
        .await?;
        newest_per_workspace(&rows)
    }

    /// The workspaces already run for a merge to their branch at `sha` (from
    /// the push or the merged pull request, whichever came first).
    pub async fn merge_run_workspaces(
        &self,
        provider_id: &str,
        repo: &str,
        sha: &str,
    ) -> StoreResult<std::collections::HashSet<String>> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT workspace FROM runs
             WHERE provider_id = $1 AND repo = $2 AND head_sha = $3 AND source = $4",
        )
        .bind(provider_id)
        .bind(repo)
        .bind(sha)
        .bind(RunSource::Push.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(names.into_iter().collect())
    }
}

impl Store {
    /// The newest run of a workspace that made a plan (its plan JSON is in the run's artifacts).
    pub async fn latest_planned_run(&self, workspace: &str) -> StoreResult<Option<Run>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE workspace = $1 AND planned_at IS NOT NULL ORDER BY id DESC LIMIT 1"
        ))
        .bind(workspace)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }
}

/// What happened to a scheduled drift tick.
#[derive(Debug, Clone)]
pub enum TickOutcome {
    /// Another replica (or an earlier pass) already handled this tick.
    AlreadyHandled,
    /// The workspace had a run active or queued: no drift run, recorded as skipped.
    Skipped,
    Queued(Box<Run>),
}

impl Store {
    /// Handles one drift tick exactly once: records it (unique per workspace
    /// and tick), then queues `run` unless the workspace already has a run
    /// active or queued, in which case the tick is recorded as skipped.
    pub async fn claim_drift_tick(&self, tick_at: i64, run: &NewRun) -> StoreResult<TickOutcome> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO drift_ticks (workspace, tick_at, outcome, created_at) VALUES ($1, $2, 'claimed', $3)
             ON CONFLICT (workspace, tick_at) DO NOTHING",
        )
        .bind(&run.workspace)
        .bind(tick_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(TickOutcome::AlreadyHandled);
        }
        let busy: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM runs WHERE workspace = $1 AND (state = 'queued' OR state IN {ACTIVE})"
        ))
        .bind(&run.workspace)
        .fetch_one(&mut *tx)
        .await?;
        if busy > 0 {
            sqlx::query(
                "UPDATE drift_ticks SET outcome = 'skipped' WHERE workspace = $1 AND tick_at = $2",
            )
            .bind(&run.workspace)
            .bind(tick_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(TickOutcome::Skipped);
        }
        let created = insert_run(&mut tx, run, now).await?;
        sqlx::query("UPDATE drift_ticks SET outcome = 'queued', run_id = $3 WHERE workspace = $1 AND tick_at = $2")
            .bind(&run.workspace)
            .bind(tick_at)
            .bind(created.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(TickOutcome::Queued(Box::new(created)))
    }

    /// The newest drift tick handled for a workspace (ms).
    pub async fn last_drift_tick(&self, workspace: &str) -> StoreResult<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT MAX(tick_at) FROM drift_ticks WHERE workspace = $1")
                .bind(workspace)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// `(tick_at, outcome, run_id)` of a workspace's drift ticks, newest first.
    pub async fn drift_ticks(
        &self,
        workspace: &str,
    ) -> StoreResult<Vec<(i64, String, Option<i64>)>> {
        let rows = sqlx::query("SELECT tick_at, outcome, run_id FROM drift_ticks WHERE workspace = $1 ORDER BY tick_at DESC")
            .bind(workspace)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("tick_at")?,
                    r.try_get("outcome")?,
                    r.try_get("run_id")?,
                ))
            })
            .collect()
    }
}
