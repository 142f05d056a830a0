//! Webhook events: insert (deduplicated on the delivery id), claim for dispatch,
//! and complete a dispatch together with the runs it creates.

use std::time::Duration;

use sqlx::Row;

use super::leases::new_token;
use super::{
    now_ms, runs::insert_run, Backend, Lease, NewRun, Run, Store, StoreError, StoreResult,
};

/// A webhook delivery to persist.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub provider_id: String,
    pub delivery_id: String,
    pub event_type: String,
    pub action: Option<String>,
    pub repo: Option<String>,
    /// The normalized event as JSON.
    pub body: String,
    /// `pending` when it needs dispatching, otherwise a terminal state
    /// (`ignored`, `recorded`).
    pub state: &'static str,
    pub detail: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: i64,
    pub provider_id: String,
    pub delivery_id: String,
    pub event_type: String,
    pub repo: Option<String>,
    pub body: String,
    pub state: String,
    pub attempts: i64,
}

const EVENT_COLUMNS: &str = "id, provider_id, delivery_id, event_type, repo, body, state, attempts";

fn event_from_row(row: &sqlx::any::AnyRow) -> StoreResult<EventRow> {
    Ok(EventRow {
        id: row.try_get("id")?,
        provider_id: row.try_get("provider_id")?,
        delivery_id: row.try_get("delivery_id")?,
        event_type: row.try_get("event_type")?,
        repo: row.try_get("repo")?,
        body: row.try_get("body")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
    })
}

/// Whether a database error is a unique-constraint violation (a lost race).
pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.kind() == sqlx::error::ErrorKind::UniqueViolation
                || db.message().contains("UNIQUE constraint failed")
                || db.code().as_deref() == Some("23505")
        }
        _ => false,
    }
}

impl Store {
    /// Stores a delivery. Returns its id, or `None` when this delivery id was
    /// already stored for the provider (a redelivery), in which case nothing changes.
    pub async fn insert_event(&self, e: &NewEvent) -> StoreResult<Option<i64>> {
        let now = now_ms();
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO events (provider_id, delivery_id, event_type, action, repo, body, state, detail,
                                 received_at, dispatched_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CASE WHEN $7 = 'pending' THEN NULL ELSE $9 END)
             ON CONFLICT (provider_id, delivery_id) DO NOTHING
             RETURNING id",
        )
        .bind(&e.provider_id)
        .bind(&e.delivery_id)
        .bind(&e.event_type)
        .bind(&e.action)
        .bind(&e.repo)
        .bind(&e.body)
        .bind(e.state)
        .bind(&e.detail)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id)
    }

    pub async fn event(&self, id: i64) -> StoreResult<Option<EventRow>> {
        let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    pub async fn count_events(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Claims the oldest pending event whose repository has no event being
    /// dispatched and no older pending one, so each repository's events are
    /// dispatched in arrival order. The claim's [`Lease`] is renewed with
    /// [`Store::renew_event`] and names the holder in every completion.
    pub async fn claim_event(
        &self,
        node: &str,
        lease: Duration,
    ) -> StoreResult<Option<(EventRow, Lease)>> {
        let now = now_ms();
        let token = new_token();
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE events SET state = 'dispatching', claimed_by = $1, lease_until = $2, lease_token = $4,
                               attempts = attempts + 1
             WHERE id = (
                 SELECT e.id FROM events e
                 WHERE e.state = 'pending' AND e.not_before <= $3
                   AND NOT EXISTS (SELECT 1 FROM events d WHERE d.state = 'dispatching'
                                   AND d.provider_id = e.provider_id AND d.repo = e.repo)
                   AND NOT EXISTS (SELECT 1 FROM events o WHERE o.state = 'pending'
                                   AND o.provider_id = e.provider_id AND o.repo = e.repo AND o.id < e.id)
                 ORDER BY e.id LIMIT 1 {lock})
             RETURNING {EVENT_COLUMNS}"
        );
        let result = sqlx::query(&sql)
            .bind(node)
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .bind(&token)
            .fetch_optional(&self.pool)
            .await;
        match result {
            Ok(Some(row)) => {
                let event = event_from_row(&row)?;
                let lease = Lease {
                    id: event.id,
                    token,
                };
                Ok(Some((event, lease)))
            }
            Ok(None) => Ok(None),
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Extends the lease of an event being dispatched. False when the claim is
    /// no longer this one's (it expired and was reaped or claimed again).
    pub async fn renew_event(&self, lease: &Lease, duration: Duration) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE events SET lease_until = $3
             WHERE id = $1 AND lease_token = $2 AND state = 'dispatching'",
        )
        .bind(lease.id)
        .bind(&lease.token)
        .bind(now_ms() + duration.as_millis() as i64)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks a claimed event dispatched and stores the runs it causes, in one
    /// transaction. For a pull request, queued runs of older commits on the same
    /// pull request are superseded in the same transaction. Fails with
    /// [`StoreError::LeaseLost`], storing nothing, when `lease` is no longer
    /// the event's claim.
    pub async fn complete_dispatch(
        &self,
        lease: &Lease,
        detail: &str,
        runs: &[NewRun],
        supersede: Option<&Supersede>,
    ) -> StoreResult<Vec<Run>> {
        let event_id = lease.id;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE events SET state = 'dispatched', detail = $2, dispatched_at = $3,
                               claimed_by = NULL, lease_until = NULL, lease_token = NULL
             WHERE id = $1 AND lease_token = $4 AND state = 'dispatching'",
        )
        .bind(event_id)
        .bind(detail)
        .bind(now)
        .bind(&lease.token)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::LeaseLost {
                what: "event",
                id: event_id,
            });
        }
        if let Some(s) = supersede {
            let ids: Vec<i64> = sqlx::query_scalar(
                "UPDATE runs SET state = 'superseded', state_reason = $5, finished_at = $6, updated_at = $6
                 WHERE provider_id = $1 AND repo = $2 AND pr_number = $3 AND state = 'queued'
                   AND head_sha <> $4 AND apply_requested = 0 AND (event_id IS NULL OR event_id < $7)
                 RETURNING id",
            )
            .bind(&s.provider_id)
            .bind(&s.repo)
            .bind(s.pr_number)
            .bind(&s.head_sha)
            .bind(format!("superseded by commit {}", short_sha(&s.head_sha)))
            .bind(now)
            .bind(event_id)
            .fetch_all(&mut *tx)
            .await?;
            for id in ids {
                super::runs::insert_transition(
                    &mut tx,
                    id,
                    "superseded",
                    Some("newer commit on the pull request"),
                    now,
                )
                .await?;
            }
        }
        let mut created = Vec::with_capacity(runs.len());
        for r in runs {
            created.push(insert_run(&mut tx, r, now).await?);
        }
        tx.commit().await?;
        Ok(created)
    }

    /// Puts a claimed event back to pending after a transient failure; it is
    /// tried again after `delay`.
    pub async fn retry_dispatch(
        &self,
        lease: &Lease,
        error: &str,
        delay: Duration,
    ) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE events SET state = 'pending', detail = $2, not_before = $3,
                               claimed_by = NULL, lease_until = NULL, lease_token = NULL
             WHERE id = $1 AND lease_token = $4 AND state = 'dispatching'",
        )
        .bind(lease.id)
        .bind(error)
        .bind(now_ms() + delay.as_millis() as i64)
        .bind(&lease.token)
        .execute(&self.pool)
        .await?;
        held(done.rows_affected(), lease)
    }

    /// Gives up on an event: it stays stored, with the reason.
    pub async fn fail_dispatch(&self, lease: &Lease, error: &str) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE events SET state = 'failed', detail = $2, dispatched_at = $3,
                               claimed_by = NULL, lease_until = NULL, lease_token = NULL
             WHERE id = $1 AND lease_token = $4 AND state = 'dispatching'",
        )
        .bind(lease.id)
        .bind(error)
        .bind(now_ms())
        .bind(&lease.token)
        .execute(&self.pool)
        .await?;
        held(done.rows_affected(), lease)
    }

    /// Returns events whose dispatcher died (their lease expired) to pending.
    /// Only expired leases: a live claim, whoever holds it, is left alone.
    pub async fn reap_events(&self) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE events SET state = 'pending', claimed_by = NULL, lease_until = NULL, lease_token = NULL
             WHERE state = 'dispatching' AND lease_until < $1",
        )
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// `Ok` when a holder's write changed its event, else [`StoreError::LeaseLost`].
fn held(rows: u64, lease: &Lease) -> StoreResult<()> {
    if rows == 0 {
        return Err(StoreError::LeaseLost {
            what: "event",
            id: lease.id,
        });
    }
    Ok(())
}

/// Which queued runs a pull request's new head makes stale.
#[derive(Debug, Clone)]
pub struct Supersede {
    pub provider_id: String,
    pub repo: String,
    pub pr_number: i64,
    pub head_sha: String,
}

pub fn short_sha(sha: &str) -> &str {
    &sha[..sha.len().min(8)]
}

/// Whether two commit ids name the same commit, one possibly abbreviated (as
/// Bitbucket Cloud sends them): equal, or one a prefix (of 7+ digits) of the other.
pub fn same_commit(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    short.len() >= 7 && long.starts_with(short)
}
