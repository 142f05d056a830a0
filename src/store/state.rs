//! What gantry's Terraform `http` backend keeps besides the state versions:
//! terraform's state locks, the run-scoped backend tokens, and the spool of
//! state an apply could not store.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, Store, StoreResult};

/// A run holds its backend token only while it is in one of these states.
const ACTIVE_RUN_STATES: &str = "('fetching', 'planning', 'applying')";

/// Terraform's lock on a workspace's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateLock {
    pub workspace: String,
    pub lock_id: String,
    /// The lock info JSON terraform sent with LOCK.
    pub info: String,
    /// `run N` or `api`.
    pub locked_by: String,
    pub run_id: Option<i64>,
    pub locked_at: i64,
}

/// What a backend token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunToken {
    pub run_id: i64,
    pub workspace: String,
    /// Whether the run is still active (the token is only good while it is).
    pub active: bool,
    /// Whether it may write state (an apply's token), or only read and lock.
    pub can_write: bool,
}

/// A state an apply produced and gantry could not store.
#[derive(Debug, Clone, Serialize)]
pub struct SpooledState {
    pub id: i64,
    pub workspace: String,
    pub run_id: Option<i64>,
    pub reason: String,
    pub created_at: i64,
    #[serde(skip)]
    pub state: String,
}

/// The outcome of a state write through the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutState {
    /// Stored as this version.
    Stored(i64),
    /// The workspace is locked by someone else (or the writer's lock is gone).
    Locked(Option<StateLock>),
}

fn lock_from_row(r: &sqlx::any::AnyRow) -> StoreResult<StateLock> {
    Ok(StateLock {
        workspace: r.try_get("workspace")?,
        lock_id: r.try_get("lock_id")?,
        info: r.try_get("info")?,
        locked_by: r.try_get("locked_by")?,
        run_id: r.try_get("run_id")?,
        locked_at: r.try_get("locked_at")?,
    })
}

impl Store {
    /// Takes terraform's lock on `workspace`. Returns `None` when taken (or
    /// already held under the same id), else the current holder.
    ///
    /// A lock held by a run that is no longer active (killed terraform never
    /// unlocks) is taken over: the run's workspace lock, if the apply was
    /// interrupted, is what guards the workspace then.
    pub async fn lock_state(
        &self,
        workspace: &str,
        lock_id: &str,
        info: &str,
        by: &str,
        run_id: Option<i64>,
    ) -> StoreResult<Option<StateLock>> {
        sqlx::query(&format!(
            "DELETE FROM state_locks WHERE workspace = $1 AND run_id IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.id = state_locks.run_id AND runs.state IN {ACTIVE_RUN_STATES})"
        ))
        .bind(workspace)
        .execute(&self.pool)
        .await?;
        // Twice at most: the holder may unlock between the insert and the read.
        for _ in 0..2 {
            let done = sqlx::query(
                "INSERT INTO state_locks (workspace, lock_id, info, locked_by, run_id, locked_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workspace) DO NOTHING",
            )
            .bind(workspace)
            .bind(lock_id)
            .bind(info)
            .bind(by)
            .bind(run_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
            if done.rows_affected() == 1 {
                return Ok(None);
            }
            match self.state_lock(workspace).await? {
                Some(l) if l.lock_id == lock_id => return Ok(None),
                Some(l) => return Ok(Some(l)),
                None => continue,
            }
        }
        Err(super::StoreError::Corrupt(format!(
            "the state lock of {workspace} kept changing hands"
        )))
    }

    /// Releases terraform's lock when `lock_id` holds it (any lock when
    /// `None`: a forced unlock). Returns the holder when another id holds it.
    pub async fn unlock_state(
        &self,
        workspace: &str,
        lock_id: Option<&str>,
    ) -> StoreResult<Result<Option<StateLock>, StateLock>> {
        let row = sqlx::query(
            "DELETE FROM state_locks WHERE workspace = $1 AND ($2 = '' OR lock_id = $2)
             RETURNING workspace, lock_id, info, locked_by, run_id, locked_at",
        )
        .bind(workspace)
        .bind(lock_id.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(r) = row {
            return Ok(Ok(Some(lock_from_row(&r)?)));
        }
        match self.state_lock(workspace).await? {
            Some(other) => Ok(Err(other)),
            None => Ok(Ok(None)),
        }
    }

    pub async fn state_lock(&self, workspace: &str) -> StoreResult<Option<StateLock>> {
        let row = sqlx::query(
            "SELECT workspace, lock_id, info, locked_by, run_id, locked_at FROM state_locks WHERE workspace = $1",
        )
        .bind(workspace)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(lock_from_row).transpose()
    }

    /// Stores a state written through the backend, atomically with the lock
    /// check: with `lock_id` only while that id holds the lock, without one
    /// only while nobody does.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_state(
        &self,
        workspace: &str,
        serial: i64,
        lineage: &str,
        run_id: Option<i64>,
        written_by: &str,
        lock_id: Option<&str>,
        state: &str,
    ) -> StoreResult<PutState> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO state_versions (workspace, serial, lineage, run_id, created_at, state, written_by)
             SELECT $1, $2, $3, $4, $5, $6, $7
             WHERE ($8 = '' AND NOT EXISTS (SELECT 1 FROM state_locks WHERE workspace = $1))
                OR EXISTS (SELECT 1 FROM state_locks WHERE workspace = $1 AND lock_id = $8)
             RETURNING id",
        )
        .bind(workspace)
        .bind(serial)
        .bind(lineage)
        .bind(run_id)
        .bind(now_ms())
        .bind(state)
        .bind(written_by)
        .bind(lock_id.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await?;
        match id {
            Some(id) => Ok(PutState::Stored(id)),
            None => Ok(PutState::Locked(self.state_lock(workspace).await?)),
        }
    }

    /// Issues nothing itself: records the sha256 of a token made by the
    /// caller for `run_id` on `workspace`. Tokens of runs that ended are
    /// dropped on the way.
    pub async fn add_state_token(
        &self,
        token_sha256: &str,
        run_id: i64,
        workspace: &str,
        can_write: bool,
    ) -> StoreResult<()> {
        sqlx::query(&format!(
            "DELETE FROM state_tokens WHERE run_id NOT IN (SELECT id FROM runs WHERE state IN {ACTIVE_RUN_STATES})"
        ))
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "INSERT INTO state_tokens (token_sha256, run_id, workspace, can_write, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_sha256)
        .bind(run_id)
        .bind(workspace)
        .bind(i64::from(can_write))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The run and workspace a token (by its sha256) was issued for.
    pub async fn state_token(&self, token_sha256: &str) -> StoreResult<Option<RunToken>> {
        let row = sqlx::query(&format!(
            "SELECT t.run_id, t.workspace, t.can_write,
                    CAST(CASE WHEN r.state IN {ACTIVE_RUN_STATES} THEN 1 ELSE 0 END AS BIGINT) AS active
             FROM state_tokens t LEFT JOIN runs r ON r.id = t.run_id WHERE t.token_sha256 = $1"
        ))
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(RunToken {
                run_id: r.try_get("run_id")?,
                workspace: r.try_get("workspace")?,
                active: r.try_get::<i64, _>("active")? != 0,
                can_write: r.try_get::<i64, _>("can_write")? != 0,
            })
        })
        .transpose()
    }

    /// Keeps a state that could not be stored as a version.
    pub async fn spool_state(
        &self,
        workspace: &str,
        run_id: Option<i64>,
        reason: &str,
        state: &str,
    ) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO state_spool (workspace, run_id, reason, state, created_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(workspace)
        .bind(run_id)
        .bind(reason)
        .bind(state)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?)
    }

    /// A workspace's spooled states, newest first, with their documents.
    pub async fn spooled_states(&self, workspace: &str) -> StoreResult<Vec<SpooledState>> {
        let rows = sqlx::query(
            "SELECT id, workspace, run_id, reason, state, created_at FROM state_spool
             WHERE workspace = $1 ORDER BY id DESC",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SpooledState {
                    id: r.try_get("id")?,
                    workspace: r.try_get("workspace")?,
                    run_id: r.try_get("run_id")?,
                    reason: r.try_get("reason")?,
                    state: r.try_get("state")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }
}
