//! The database: one sqlx `Any` pool over SQLite (default, WAL) or PostgreSQL
//! (several replicas), migrations for both, and every query gantry makes.
//!
//! Queries are written once in SQL both engines accept (`$N` placeholders,
//! `RETURNING`, `ON CONFLICT`); the few that differ branch on [`Backend`].
//! Timestamps are Unix milliseconds (`BIGINT`).
//!
//! The bottom layer: it imports no domain module. What it persists comes in as
//! its own types ([`records`]: runs and the cost estimates on them;
//! [`policy_checks`]) or, for drift reports, as a [`DriftRecord`] kept as JSON.
//!
//! SQLite rule: a transaction's first statement is a write, so it takes the write
//! lock up front and waits on `busy_timeout` instead of failing on a lock upgrade.

mod agents;
mod artifacts;
mod events;
mod failure;
mod leases;
mod outbox;
pub mod policy_checks;
mod policy_sets;
pub mod records;
mod retention;
mod runs;
mod state;
mod wake;
mod workspaces;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use agents::{job_state, AgentJob, AgentRow, JobAccess, NewAgentJob};
pub use artifacts::{sha256_hex, Artifact, ArtifactKind};
pub use events::{same_commit, short_sha, EventRow, NewEvent, Supersede};
pub use failure::FailureKind;
pub use leases::Lease;
pub use outbox::{NewReport, ReportRow};
pub use policy_checks::{EnforcementLevel, PolicyCheck, Verdict};
pub use policy_sets::{listen_policy_sets, PolicySetWrite, StoredPolicySet, POLICY_SETS_CHANNEL};
pub use records::{
    CostEstimate, PlanSummary, ResourceCost, Run, RunKind, RunSource, RunState, Unpriced,
};
pub use retention::{Cutoffs, Pruned};
pub use runs::{NewRun, TickOutcome};
pub use state::{PutState, RunToken, SpooledState, StateLock};
pub use wake::{EventsStored, RunsQueued};
pub use workspaces::{Audit, AuditEntry, DriftEntry, DriftRecord, StateVersion, WorkspaceLock};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A store error: the database failed or a row broke an invariant.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A holder wrote after its lease was taken over: nothing was written.
    #[error("{what} {id} is no longer held by this claim (its lease expired and was taken over); nothing was written")]
    LeaseLost { what: &'static str, id: i64 },
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Wakes this process's waiters when it changes an agent job (see
    /// [`Store::agent_jobs_changed`]).
    agent_jobs: std::sync::Arc<tokio::sync::Notify>,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Connects to `url`, creating a SQLite file (and its directory) if needed.
    pub async fn connect(url: &SecretString) -> anyhow::Result<Store> {
        Self::connect_sized(url, 10).await
    }

    /// Like [`Store::connect`], with a PostgreSQL pool of `pg_connections`
    /// (the daemon sizes it from `concurrency`: each run's report may hold one
    /// connection while reading through another).
    pub async fn connect_sized(url: &SecretString, pg_connections: u32) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let raw = url.expose_secret();
        let backend = if raw.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            Backend::Sqlite => {
                let path = raw
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:")
                    .split('?')
                    .next()
                    .unwrap_or_default();
                if let Some(parent) = std::path::Path::new(path).parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent).with_context(|| {
                            format!("creating the database directory {}", parent.display())
                        })?;
                    }
                }
                if raw.contains("mode=") {
                    raw.to_string()
                } else if raw.contains('?') {
                    format!("{raw}&mode=rwc")
                } else {
                    format!("{raw}?mode=rwc")
                }
            }
            Backend::Postgres => raw.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url).context("parsing database_url")?;
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => pg_connections,
            })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .context("connecting to the database")?;
        Ok(Store {
            pool,
            backend,
            agent_jobs: Default::default(),
        })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .context("running migrations")?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// `SELECT 1`: whether the database answers.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Takes the pull request's comment slot: across replicas (PostgreSQL row
    /// lock, held until the guard is dropped or finished) only one process
    /// renders and edits a PR's comment at a time, so the newest render always
    /// lands last and the first comment is created once. SQLite serves one
    /// process, whose in-process lock does the same.
    pub async fn lock_pr_comment(
        &self,
        provider_id: &str,
        repo: &str,
        pr: i64,
        kind: &str,
    ) -> StoreResult<PrCommentSlot> {
        let key = CommentKey {
            provider_id: provider_id.into(),
            repo: repo.into(),
            pr,
            kind: kind.into(),
        };
        const WHERE: &str = "provider_id = $1 AND repo = $2 AND pr_number = $3 AND kind = $4";
        let (tx, id) = match self.backend {
            Backend::Sqlite => {
                let id: Option<String> = sqlx::query_scalar(&format!(
                    "SELECT comment_id FROM vcs_comments WHERE {WHERE}"
                ))
                .bind(provider_id)
                .bind(repo)
                .bind(pr)
                .bind(kind)
                .fetch_optional(&self.pool)
                .await?;
                (None, id)
            }
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO vcs_comments (provider_id, repo, pr_number, kind, comment_id, updated_at)
                     VALUES ($1, $2, $3, $4, '', $5) ON CONFLICT (provider_id, repo, pr_number, kind) DO NOTHING",
                )
                .bind(provider_id)
                .bind(repo)
                .bind(pr)
                .bind(kind)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
                let id: String = sqlx::query_scalar(&format!(
                    "SELECT comment_id FROM vcs_comments WHERE {WHERE} FOR UPDATE"
                ))
                .bind(provider_id)
                .bind(repo)
                .bind(pr)
                .bind(kind)
                .fetch_one(&mut *tx)
                .await?;
                (Some(tx), Some(id))
            }
        };
        Ok(PrCommentSlot {
            pool: self.pool.clone(),
            tx,
            key,
            comment_id: id.filter(|i| !i.is_empty()),
        })
    }
}

struct CommentKey {
    provider_id: String,
    repo: String,
    pr: i64,
    kind: String,
}

/// A held PR comment slot; see [`Store::lock_pr_comment`].
pub struct PrCommentSlot {
    pool: AnyPool,
    tx: Option<sqlx::Transaction<'static, sqlx::Any>>,
    key: CommentKey,
    /// The comment's id, when gantry made one.
    pub comment_id: Option<String>,
}

impl PrCommentSlot {
    /// Records the comment's id and releases the slot.
    pub async fn finish(mut self, comment_id: Option<&str>) -> StoreResult<()> {
        let k = &self.key;
        if let Some(id) = comment_id {
            let q = sqlx::query(
                "INSERT INTO vcs_comments (provider_id, repo, pr_number, kind, comment_id, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (provider_id, repo, pr_number, kind)
                 DO UPDATE SET comment_id = excluded.comment_id, updated_at = excluded.updated_at",
            )
            .bind(&k.provider_id)
            .bind(&k.repo)
            .bind(k.pr)
            .bind(&k.kind)
            .bind(id)
            .bind(now_ms());
            match self.tx.as_mut() {
                Some(tx) => q.execute(&mut **tx).await?,
                None => q.execute(&self.pool).await?,
            };
        }
        if let Some(tx) = self.tx.take() {
            tx.commit().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
