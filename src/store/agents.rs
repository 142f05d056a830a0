//! Agent jobs and agents: the queue between a replica's remote runner and
//! the `gantry agent` processes of a pool (claims with a lease, heartbeats,
//! log chunks, uploaded artifacts, the result), and the agents as last seen.
//!
//! A job's writes by its agent name the lease token it was granted (`WHERE id
//! = ? AND lease_token = ?`), as runs' do: once the job was queued again or
//! ended, a late agent writes nothing. No secret is kept in a job: the
//! variables and backend token of its grant are made when it is claimed.

use std::time::Duration;

use sqlx::Row;

use super::leases::new_token;
use super::{now_ms, Backend, Store, StoreError, StoreResult};

/// A job's states: `queued` → `running` → `done`; `canceled` (its run was
/// canceled, handed back or reaped) and `lost` (its agent vanished twice, or
/// during an apply) end it too.
pub mod job_state {
    pub const QUEUED: &str = "queued";
    pub const RUNNING: &str = "running";
    pub const DONE: &str = "done";
    pub const CANCELED: &str = "canceled";
    pub const LOST: &str = "lost";
}

/// A job to queue for a pool.
#[derive(Debug, Clone)]
pub struct NewAgentJob {
    pub run_id: i64,
    pub pool: String,
    /// The protocol's `JobKind`, as JSON.
    pub job: String,
    pub workspace: String,
    pub commit: String,
    pub dir: String,
    pub gantry_state: bool,
    pub timeout_ms: i64,
    pub plan_sha256: Option<String>,
    /// The checkout, as a tar.gz.
    pub source: Vec<u8>,
}

/// One agent job as stored (without its source archive).
#[derive(Debug, Clone)]
pub struct AgentJob {
    pub id: i64,
    pub run_id: i64,
    pub pool: String,
    pub job: String,
    pub workspace: String,
    pub commit: String,
    pub dir: String,
    pub gantry_state: bool,
    pub timeout_ms: i64,
    pub plan_sha256: Option<String>,
    pub state: String,
    pub attempt: i64,
    /// The agent that holds (or last held) it.
    pub agent: Option<String>,
    pub lease_token: Option<String>,
    pub lease_until: Option<i64>,
    pub cancel_requested: bool,
    /// The protocol's `JobResult` as JSON, once done.
    pub result: Option<String>,
}

/// Whether an agent's request about a job may go on.
#[derive(Debug, Clone)]
pub enum JobAccess {
    /// It holds the job's lease.
    Held(Box<AgentJob>),
    /// A job of another pool, or one granted to another agent: as if it
    /// did not exist.
    NotFound,
    /// The agent no longer holds the lease (the job was queued again, or
    /// ended): it must stop.
    Lost,
}

/// One agent as last seen.
#[derive(Debug, Clone)]
pub struct AgentRow {
    pub pool: String,
    pub name: String,
    pub version: String,
    pub first_seen: i64,
    pub last_seen: i64,
    /// The runs of the jobs it holds now.
    pub running_runs: Vec<i64>,
}

const JOB_COLUMNS: &str =
    "id, run_id, pool, job, workspace, commit_sha, dir, gantry_state, timeout_ms,
    plan_sha256, state, attempt, agent, lease_token, lease_until, cancel_requested, result";

const ACTIVE_RUN: &str = "('fetching', 'planning', 'applying')";

fn job_from_row(row: &sqlx::any::AnyRow) -> StoreResult<AgentJob> {
    Ok(AgentJob {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        pool: row.try_get("pool")?,
        job: row.try_get("job")?,
        workspace: row.try_get("workspace")?,
        commit: row.try_get("commit_sha")?,
        dir: row.try_get("dir")?,
        gantry_state: row.try_get::<i64, _>("gantry_state")? != 0,
        timeout_ms: row.try_get("timeout_ms")?,
        plan_sha256: row.try_get("plan_sha256")?,
        state: row.try_get("state")?,
        attempt: row.try_get("attempt")?,
        agent: row.try_get("agent")?,
        lease_token: row.try_get("lease_token")?,
        lease_until: row.try_get("lease_until")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        result: row.try_get("result")?,
    })
}

impl Store {
    /// Resolves when this process next queues, completes, re-queues, cancels
    /// or ends an agent job: a claim waiting for work and a runner waiting
    /// for its job's end look again at once. Create it (and `enable` it)
    /// before looking, so a change in between is not missed. Waiters also
    /// poll: jobs changed by another replica are only found that way.
    pub fn agent_jobs_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.agent_jobs.notified()
    }

    fn agent_jobs_touched(&self) {
        self.agent_jobs.notify_waiters();
    }
}

impl Store {
    /// Queues a job for its pool; returns its id.
    pub async fn insert_agent_job(&self, j: &NewAgentJob) -> StoreResult<i64> {
        let now = now_ms();
        let id = sqlx::query_scalar(
            "INSERT INTO agent_jobs (run_id, pool, job, workspace, commit_sha, dir, gantry_state, timeout_ms,
                                     plan_sha256, source, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING id",
        )
        .bind(j.run_id)
        .bind(&j.pool)
        .bind(&j.job)
        .bind(&j.workspace)
        .bind(&j.commit)
        .bind(&j.dir)
        .bind(j.gantry_state as i64)
        .bind(j.timeout_ms)
        .bind(&j.plan_sha256)
        .bind(&j.source)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        self.agent_jobs_touched();
        Ok(id)
    }

    pub async fn agent_job(&self, id: i64) -> StoreResult<Option<AgentJob>> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM agent_jobs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Whether `agent` of `pool`, presenting `token`, holds job `id`.
    pub async fn agent_job_access(
        &self,
        id: i64,
        pool: &str,
        agent: &str,
        token: Option<&str>,
    ) -> StoreResult<JobAccess> {
        let Some(job) = self.agent_job(id).await? else {
            return Ok(JobAccess::NotFound);
        };
        if job.pool != pool || job.agent.as_deref().is_some_and(|a| a != agent) {
            return Ok(JobAccess::NotFound);
        }
        let held = job.state == job_state::RUNNING
            && token.is_some()
            && job.lease_token.as_deref() == token;
        Ok(if held {
            JobAccess::Held(Box::new(job))
        } else {
            JobAccess::Lost
        })
    }

    /// Grants the oldest queued job of `pool` whose run is still active to
    /// `agent`, under a new lease; records that the run is executed by that
    /// agent, and that it no longer waits (reporting it if it did).
    pub async fn claim_agent_job(
        &self,
        pool: &str,
        agent: &str,
        lease: Duration,
    ) -> StoreResult<Option<AgentJob>> {
        let token = new_token();
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE agent_jobs SET state = 'running', agent = $2, lease_token = $3, lease_until = $4,
                                   log_seq = -1, updated_at = $5
             WHERE id = (
                 SELECT j.id FROM agent_jobs j
                 WHERE j.state = 'queued' AND j.pool = $1
                   AND EXISTS (SELECT 1 FROM runs r WHERE r.id = j.run_id AND r.state IN {ACTIVE_RUN})
                 ORDER BY j.id LIMIT 1 {lock})
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(pool)
        .bind(agent)
        .bind(&token)
        .bind(now + lease.as_millis() as i64)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let job = job_from_row(&row)?;
        let waited: Option<String> =
            sqlx::query_scalar("SELECT waiting_for FROM runs WHERE id = $1")
                .bind(job.run_id)
                .fetch_one(&mut *tx)
                .await?;
        let run = sqlx::query(&format!(
            "UPDATE runs SET runner = $2, waiting_for = NULL WHERE id = $1 RETURNING {}",
            super::runs::RUN_COLUMNS
        ))
        .bind(job.run_id)
        .bind(format!("agent:{pool}/{agent}"))
        .fetch_one(&mut *tx)
        .await?;
        if waited.is_some() {
            let run = super::runs::run_from_row(&run)?;
            super::outbox::enqueue_run_report(&mut tx, &run, now).await?;
        }
        tx.commit().await?;
        Ok(Some(job))
    }

    /// The job's source archive.
    pub async fn agent_job_source(&self, id: i64) -> StoreResult<Vec<u8>> {
        Ok(
            sqlx::query_scalar("SELECT source FROM agent_jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Renews the lease of a job its agent holds. `None` when it no longer
    /// holds it; otherwise whether its run asks it to stop.
    pub async fn heartbeat_agent_job(
        &self,
        id: i64,
        token: &str,
        lease: Duration,
    ) -> StoreResult<Option<bool>> {
        let flag: Option<i64> = sqlx::query_scalar(
            "UPDATE agent_jobs SET lease_until = $3 WHERE id = $1 AND lease_token = $2 AND state = 'running'
             RETURNING cancel_requested",
        )
        .bind(id)
        .bind(token)
        .bind(now_ms() + lease.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(flag.map(|f| f != 0))
    }

    /// Appends log chunk `seq` of a held job to its run's log, once: a
    /// chunk sent again (a retry) is not stored twice. `Err(LeaseLost)` when
    /// the lease is no longer held.
    pub async fn append_agent_log(
        &self,
        job: &AgentJob,
        token: &str,
        seq: i64,
        text: &str,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE agent_jobs SET log_seq = $3 WHERE id = $1 AND lease_token = $2 AND state = 'running' AND log_seq < $3",
        )
        .bind(job.id)
        .bind(token)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            tx.rollback().await?;
            return match self.holds(job.id, token).await? {
                true => Ok(false),
                false => Err(lease_lost(job.id)),
            };
        }
        if !text.is_empty() {
            sqlx::query(
                "INSERT INTO run_log_chunks (run_id, text, created_at) VALUES ($1, $2, $3)",
            )
            .bind(job.run_id)
            .bind(text)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn holds(&self, id: i64, token: &str) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM agent_jobs WHERE id = $1 AND lease_token = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(token)
        .fetch_one(&self.pool)
        .await?;
        Ok(n == 1)
    }

    /// Stores (or replaces) an artifact a held job uploaded, its hash
    /// already checked. `Err(LeaseLost)` (nothing stored) when the lease is
    /// no longer held.
    pub async fn put_agent_artifact(
        &self,
        id: i64,
        token: &str,
        kind: &str,
        bytes: &[u8],
        sha256: &str,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let held = sqlx::query(
            "UPDATE agent_jobs SET updated_at = $3 WHERE id = $1 AND lease_token = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(token)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if held.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(lease_lost(id));
        }
        sqlx::query(
            "INSERT INTO agent_job_artifacts (job_id, kind, data, sha256) VALUES ($1, $2, $3, $4)
             ON CONFLICT (job_id, kind) DO UPDATE SET data = excluded.data, sha256 = excluded.sha256",
        )
        .bind(id)
        .bind(kind)
        .bind(bytes)
        .bind(sha256)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// An artifact a job uploaded: its bytes and the sha256 they were
    /// checked against.
    pub async fn agent_artifact(
        &self,
        id: i64,
        kind: &str,
    ) -> StoreResult<Option<(Vec<u8>, String)>> {
        let row = sqlx::query(
            "SELECT data, sha256 FROM agent_job_artifacts WHERE job_id = $1 AND kind = $2",
        )
        .bind(id)
        .bind(kind)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("data")?, r.try_get("sha256")?)))
            .transpose()
    }

    /// Ends a held job with its result (JSON). `handed_back`: the agent is
    /// draining and stopped it unfinished; it is queued again at once for
    /// another agent, its uploads dropped. `Err(LeaseLost)` when the lease
    /// is no longer held.
    pub async fn complete_agent_job(
        &self,
        id: i64,
        token: &str,
        result: &str,
        handed_back: bool,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let (state, result) = match handed_back {
            true => (job_state::QUEUED, None),
            false => (job_state::DONE, Some(result)),
        };
        let done = sqlx::query(
            "UPDATE agent_jobs SET state = $3, result = $4, lease_token = NULL, lease_until = NULL,
                                   agent = CASE WHEN $3 = 'queued' THEN NULL ELSE agent END, updated_at = $5
             WHERE id = $1 AND lease_token = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(token)
        .bind(state)
        .bind(result)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(lease_lost(id));
        }
        if handed_back {
            drop_uploads(&mut tx, id).await?;
        }
        tx.commit().await?;
        self.agent_jobs_touched();
        Ok(())
    }

    /// Asks a job to stop: a queued one ends at once (`true`); a running
    /// one is flagged, and its agent's next heartbeat is told to cancel.
    pub async fn cancel_agent_job(&self, id: i64) -> StoreResult<bool> {
        let now = now_ms();
        let ended = sqlx::query(
            "UPDATE agent_jobs SET state = 'canceled', updated_at = $2 WHERE id = $1 AND state = 'queued'",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if ended.rows_affected() == 1 {
            self.agent_jobs_touched();
            return Ok(true);
        }
        sqlx::query("UPDATE agent_jobs SET cancel_requested = 1, updated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(false)
    }

    /// Ends a job that is not done yet as `state` (`canceled`, `lost`): its
    /// agent's next request gets 409 and stops terraform.
    pub async fn end_agent_job(&self, id: i64, state: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE agent_jobs SET state = $2, lease_token = NULL, lease_until = NULL, updated_at = $3
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(id)
        .bind(state)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.agent_jobs_touched();
        Ok(done.rows_affected() == 1)
    }

    /// Closes a job its runner no longer waits for: ended (`canceled`) if
    /// it was not, its source archive and uploads dropped (what a run keeps
    /// is in its own artifacts by now).
    pub async fn close_agent_job(&self, id: i64) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE agent_jobs SET source = $2, lease_token = NULL, lease_until = NULL, updated_at = $3,
                                   state = CASE WHEN state IN ('queued', 'running') THEN 'canceled' ELSE state END
             WHERE id = $1",
        )
        .bind(id)
        .bind(Vec::<u8>::new())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        drop_uploads(&mut tx, id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Queues a job whose agent vanished (its lease `token` ran out) again,
    /// for another agent, as attempt 2. False when it was not (it is no
    /// longer that claim, or is on its second attempt already).
    pub async fn requeue_lost_agent_job(&self, id: i64, token: &str) -> StoreResult<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE agent_jobs SET state = 'queued', attempt = attempt + 1, agent = NULL, lease_token = NULL,
                                   lease_until = NULL, updated_at = $3
             WHERE id = $1 AND lease_token = $2 AND state = 'running' AND attempt = 1 AND lease_until < $3",
        )
        .bind(id)
        .bind(token)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        drop_uploads(&mut tx, id).await?;
        tx.commit().await?;
        self.agent_jobs_touched();
        Ok(true)
    }

    /// Records what a running run waits for (`None`: nothing), and queues
    /// its report when that changed, so its status and comment say so.
    pub async fn set_waiting_for(&self, run_id: i64, what: Option<&str>) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE runs SET waiting_for = $2, updated_at = $3
             WHERE id = $1 AND COALESCE(waiting_for, '') <> COALESCE($2, '') AND state IN {ACTIVE_RUN}
             RETURNING {}",
            super::runs::RUN_COLUMNS
        ))
        .bind(run_id)
        .bind(what)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            let run = super::runs::run_from_row(&row)?;
            super::outbox::enqueue_run_report(&mut tx, &run, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records which runner executes the run (`local`, `agent:POOL/NAME`).
    pub async fn set_runner(&self, run_id: i64, runner: &str) -> StoreResult<()> {
        sqlx::query("UPDATE runs SET runner = $2 WHERE id = $1")
            .bind(run_id)
            .bind(runner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that an agent asked for work (or heartbeated: `version`
    /// `None` keeps the one it claimed with).
    pub async fn agent_seen(
        &self,
        pool: &str,
        name: &str,
        version: Option<&str>,
    ) -> StoreResult<()> {
        let now = now_ms();
        match version {
            Some(v) => {
                sqlx::query(
                    "INSERT INTO agents (pool, name, version, first_seen, last_seen) VALUES ($1, $2, $3, $4, $4)
                     ON CONFLICT (pool, name) DO UPDATE SET version = excluded.version, last_seen = excluded.last_seen",
                )
                .bind(pool)
                .bind(name)
                .bind(v)
                .bind(now)
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("UPDATE agents SET last_seen = $3 WHERE pool = $1 AND name = $2")
                    .bind(pool)
                    .bind(name)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// How many agents of `pool` were seen since `since` (ms).
    pub async fn live_agents(&self, pool: &str, since: i64) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM agents WHERE pool = $1 AND last_seen >= $2")
                .bind(pool)
                .bind(since)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Every agent ever seen, by pool and name, with the runs it holds jobs of.
    pub async fn agents(&self) -> StoreResult<Vec<AgentRow>> {
        let rows = sqlx::query(
            "SELECT pool, name, version, first_seen, last_seen FROM agents ORDER BY pool, name",
        )
        .fetch_all(&self.pool)
        .await?;
        let running = sqlx::query(
            "SELECT pool, agent, run_id FROM agent_jobs WHERE state = 'running' ORDER BY run_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let (pool, name): (String, String) = (r.try_get("pool")?, r.try_get("name")?);
                let mut running_runs = Vec::new();
                for j in &running {
                    let (p, a): (String, Option<String>) =
                        (j.try_get("pool")?, j.try_get("agent")?);
                    if p == pool && a.as_deref() == Some(name.as_str()) {
                        running_runs.push(j.try_get("run_id")?);
                    }
                }
                Ok(AgentRow {
                    version: r.try_get("version")?,
                    first_seen: r.try_get("first_seen")?,
                    last_seen: r.try_get("last_seen")?,
                    pool,
                    name,
                    running_runs,
                })
            })
            .collect()
    }
}

/// A lost agent's uploads are never mistaken for the next attempt's.
async fn drop_uploads(tx: &mut sqlx::Transaction<'_, sqlx::Any>, id: i64) -> StoreResult<()> {
    sqlx::query("DELETE FROM agent_job_artifacts WHERE job_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn lease_lost(id: i64) -> StoreError {
    StoreError::LeaseLost {
        what: "agent job",
        id,
    }
}

/// Ends the jobs of a run that was reaped (its replica died): their agents'
/// next requests get 409 and stop terraform.
pub(super) async fn end_jobs_of_run(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run_id: i64,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE agent_jobs SET state = 'canceled', lease_token = NULL, lease_until = NULL, updated_at = $2
         WHERE run_id = $1 AND state IN ('queued', 'running')",
    )
    .bind(run_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
