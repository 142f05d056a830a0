//! The reporter outbox's queries: add a report, claim the next deliverable one
//! per order key with a lease, and finish, retry or give up on it.
//!
//! Like events, a claim is a single `UPDATE … RETURNING` (SKIP LOCKED on
//! PostgreSQL), and a unique index allows one row per order key in `sending`,
//! so two replicas never deliver two reports of one key at once.

use std::time::Duration;

use sqlx::{Any, Row, Transaction};

use super::leases::new_token;
use super::{events::is_unique_violation, now_ms, Backend, Lease, Run, Store, StoreResult};

/// A report to store; see [`Store::enqueue_report`].
#[derive(Debug, Clone)]
pub struct NewReport {
    pub kind: &'static str,
    /// Rows of one key are delivered one at a time, in insertion order.
    pub order_key: String,
    /// Pending rows of this key are superseded by the new one.
    pub coalesce_key: Option<String>,
    pub provider_id: String,
    pub repo: String,
    /// What to send, as JSON.
    pub payload: String,
    /// Skip the row when the newest row of the coalesce key that was sent (or
    /// is being sent) carries the same payload: an unchanged status is not
    /// posted again.
    pub skip_if_sent: bool,
}

/// A claimed report.
#[derive(Debug, Clone)]
pub struct ReportRow {
    pub id: i64,
    /// This claim: every write about it names its token.
    pub lease: Lease,
    pub kind: String,
    pub provider_id: String,
    pub repo: String,
    pub payload: String,
    /// Delivery attempts so far, this one included.
    pub attempts: i64,
    pub created_at: i64,
}

const COLUMNS: &str = "id, lease_token, kind, provider_id, repo, payload, attempts, created_at";

fn report_from_row(row: &sqlx::any::AnyRow) -> StoreResult<ReportRow> {
    let id: i64 = row.try_get("id")?;
    Ok(ReportRow {
        id,
        lease: Lease {
            id,
            token: row.try_get("lease_token")?,
        },
        kind: row.try_get("kind")?,
        provider_id: row.try_get("provider_id")?,
        repo: row.try_get("repo")?,
        payload: row.try_get("payload")?,
        attempts: row.try_get("attempts")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The order key of a run's commit status (`gantry/<workspace>` on its commit).
/// The same string as the outbox module's, which builds it from
/// `report::status_context` (the store imports no module above it).
fn run_status_key(run: &Run) -> String {
    format!(
        "status|{}|{}|{}|gantry/{}",
        run.provider_id, run.repo, run.head_sha, run.workspace
    )
}

/// Marks the pending rows of `coalesce_key` superseded (never sent) and
/// returns the backoff they carried (`not_before`, `attempts`) for the row
/// that replaces them, so a burst during an outage does not hammer the API.
async fn supersede_pending(
    tx: &mut Transaction<'_, Any>,
    coalesce_key: &str,
    now: i64,
) -> StoreResult<(i64, i64)> {
    let rows = sqlx::query(
        "UPDATE outbox SET state = 'superseded', done_at = $2
         WHERE coalesce_key = $1 AND state = 'pending'
         RETURNING not_before, attempts",
    )
    .bind(coalesce_key)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let mut carried = (0i64, 0i64);
    for row in &rows {
        let not_before: i64 = row.try_get("not_before")?;
        let attempts: i64 = row.try_get("attempts")?;
        carried = (carried.0.max(not_before), carried.1.max(attempts));
    }
    Ok(carried)
}

/// Queues, inside the transaction that ended `run` (e.g. reaping it after a
/// crash), a report rendered from the run when it is delivered: its status
/// and its comment. So the end of a run is reported even if this process dies
/// right after the commit.
pub(super) async fn enqueue_run_report(
    tx: &mut Transaction<'_, Any>,
    run: &Run,
    now: i64,
) -> StoreResult<()> {
    let key = run_status_key(run);
    let (not_before, attempts) = supersede_pending(tx, &key, now).await?;
    sqlx::query(
        "INSERT INTO outbox (kind, order_key, coalesce_key, provider_id, repo, payload, state,
                             attempts, not_before, created_at)
         VALUES ('run_report', $1, $1, $2, $3, $4, 'pending', $5, $6, $7)",
    )
    .bind(&key)
    .bind(&run.provider_id)
    .bind(&run.repo)
    .bind(serde_json::json!({"kind": "run_report", "run_id": run.id}).to_string())
    .bind(attempts)
    .bind(not_before)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Stores a report to deliver. In one transaction, the pending rows of its
    /// coalesce key are marked `superseded` (never sent) and the new row takes
    /// over their backoff, so a burst of reports during an outage does not
    /// hammer the API. `None` when the row was skipped (see
    /// [`NewReport::skip_if_sent`]).
    pub async fn enqueue_report(&self, r: &NewReport) -> StoreResult<Option<i64>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // First statement a write (SQLite takes the write lock up front).
        let (not_before, attempts) = match &r.coalesce_key {
            Some(key) => {
                let carried = supersede_pending(&mut tx, key, now).await?;
                if r.skip_if_sent {
                    let last: Option<String> = sqlx::query_scalar(
                        "SELECT payload FROM outbox WHERE coalesce_key = $1 AND state IN ('sending', 'sent')
                         ORDER BY id DESC LIMIT 1",
                    )
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if last.as_deref() == Some(r.payload.as_str()) {
                        tx.commit().await?;
                        return Ok(None);
                    }
                }
                carried
            }
            None => (0, 0),
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (kind, order_key, coalesce_key, provider_id, repo, payload, state,
                                 attempts, not_before, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9)
             RETURNING id",
        )
        .bind(r.kind)
        .bind(&r.order_key)
        .bind(&r.coalesce_key)
        .bind(&r.provider_id)
        .bind(&r.repo)
        .bind(&r.payload)
        .bind(attempts)
        .bind(not_before)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    /// Claims the oldest due report whose order key has no report being sent
    /// and no older pending one.
    pub async fn claim_report(
        &self,
        node: &str,
        lease: Duration,
    ) -> StoreResult<Option<ReportRow>> {
        let now = now_ms();
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE outbox SET state = 'sending', claimed_by = $1, lease_until = $2, attempts = attempts + 1,
                               lease_token = $4
             WHERE id = (
                 SELECT o.id FROM outbox o
                 WHERE o.state = 'pending' AND o.not_before <= $3
                   AND NOT EXISTS (SELECT 1 FROM outbox s WHERE s.state = 'sending' AND s.order_key = o.order_key)
                   AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending'
                                   AND p.order_key = o.order_key AND p.id < o.id)
                 ORDER BY o.id LIMIT 1 {lock})
             RETURNING {COLUMNS}"
        );
        let result = sqlx::query(&sql)
            .bind(node)
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .bind(new_token())
            .fetch_optional(&self.pool)
            .await;
        match result {
            Ok(row) => row.as_ref().map(report_from_row).transpose(),
            // Another replica claimed a row of the same key at the same moment.
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Marks a claimed report delivered (`sent`) or given up (`failed`). False
    /// when this claim no longer holds it (its lease ran out and it was reaped).
    pub async fn finish_report(
        &self,
        lease: &Lease,
        delivered: bool,
        error: Option<&str>,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE outbox SET state = $3, last_error = $4, done_at = $5, claimed_by = NULL,
                               lease_until = NULL, lease_token = NULL
             WHERE id = $1 AND lease_token = $2 AND state = 'sending'",
        )
        .bind(lease.id)
        .bind(&lease.token)
        .bind(if delivered { "sent" } else { "failed" })
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Extends a claim on a report being delivered by `length`. False when
    /// the claim no longer holds it.
    pub async fn renew_report(&self, lease: &Lease, length: Duration) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE outbox SET lease_until = $3
             WHERE id = $1 AND lease_token = $2 AND state = 'sending'",
        )
        .bind(lease.id)
        .bind(&lease.token)
        .bind(now_ms() + length.as_millis() as i64)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Puts a claimed report back to pending, due again after `delay`.
    pub async fn retry_report(
        &self,
        lease: &Lease,
        error: &str,
        delay: Duration,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE outbox SET state = 'pending', last_error = $3, not_before = $4,
                               claimed_by = NULL, lease_until = NULL, lease_token = NULL
             WHERE id = $1 AND lease_token = $2 AND state = 'sending'",
        )
        .bind(lease.id)
        .bind(&lease.token)
        .bind(error)
        .bind(now_ms() + delay.as_millis() as i64)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The provider answered again: its reports waiting out a backoff are due
    /// now, so an outage's backlog goes out as soon as the API is back.
    pub async fn reports_due_now(&self, provider_id: &str) -> StoreResult<u64> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE outbox SET not_before = $2
             WHERE state = 'pending' AND provider_id = $1 AND not_before > $2",
        )
        .bind(provider_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Returns reports whose sender died (their lease expired) to pending,
    /// due at once. Only expired leases: a live claim is left alone.
    pub async fn reap_reports(&self) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE outbox SET state = 'pending', claimed_by = NULL, lease_until = NULL, lease_token = NULL
             WHERE state = 'sending' AND lease_until < $1",
        )
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Hands back reports this process still holds as it stops (`leases`:
    /// its claims), due at once for another replica. Returns how many.
    pub async fn release_reports(&self, leases: &[Lease]) -> StoreResult<u64> {
        let mut released = 0;
        for lease in leases {
            let done = sqlx::query(
                "UPDATE outbox SET state = 'pending', claimed_by = NULL, lease_until = NULL, lease_token = NULL
                 WHERE id = $1 AND lease_token = $2 AND state = 'sending'",
            )
            .bind(lease.id)
            .bind(&lease.token)
            .execute(&self.pool)
            .await?;
            released += done.rows_affected();
        }
        Ok(released)
    }

    /// Deletes reports that were finished (sent, superseded or given up) before `before_ms`.
    pub async fn delete_finished_reports(&self, before_ms: i64) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM outbox WHERE state IN ('sent', 'superseded', 'failed') AND done_at < $1",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Reports not delivered yet (pending or being sent).
    pub async fn undelivered_reports(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'sending')")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
