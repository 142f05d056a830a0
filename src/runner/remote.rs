//! [`RemoteRunner`]: runs a job on a `gantry agent` of the workspace's pool.
//!
//! The replica that holds the run keeps orchestrating it (lease, phases,
//! reports); only terraform moves. The job becomes an `agent_jobs` row with
//! the checkout as a tar.gz (the agent never gets a VCS credential) and no
//! secret: the replica that answers the agent's claim builds the grant
//! (the phase's variables, a backend token) from the config and the store.
//! The agent streams its log into the run's log and uploads the plan; this
//! runner polls the row until the job ends and turns its result back into a
//! [`JobOutput`] or [`RunnerError`], so the phases above the [`Runner`]
//! border do not know where terraform ran.
//!
//! An agent that stops heartbeating loses the job after its lease: a plan or
//! drift job is queued again once; an apply is never repeated
//! ([`RunnerError::AgentLost`]: the run ends interrupted during apply and
//! its workspace is locked).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::protocol::{JobKind, JobResult, Outcome};
use super::{JobOutput, JobPhase, JobSpec, LogSink, PlanArtifacts, PlanFile, Runner, RunnerError};
use crate::store::{job_state, now_ms, sha256_hex, AgentJob, NewAgentJob, PlanSummary, Store};

/// How often the job's row is read while an agent works on it.
const POLL: Duration = Duration::from_millis(250);

/// How often a queued job checks whether its pool has a live agent.
const LIVENESS_EVERY: Duration = Duration::from_secs(1);

/// How long a canceled job's agent gets to stop terraform and say so
/// (terraform gets SIGINT, then SIGKILL after 10 s on the agent).
const CANCEL_GRACE: Duration = Duration::from_secs(30);

/// The artifacts a plan or drift job uploads (`PUT …/artifacts/{kind}`).
pub const PLAN_FILE: &str = "plan_file";
pub const PLAN_JSON: &str = "plan_json";

/// Runs jobs on the agents of one pool, through the store.
pub struct RemoteRunner {
    store: Store,
    pool: String,
    /// The run's checkout: what the job's source archive holds.
    checkout: PathBuf,
    /// The agents' lease (`queue.lease`); an agent not seen within two of
    /// them is not live.
    lease: Duration,
    cancel_grace: Duration,
}

impl RemoteRunner {
    /// A runner for the jobs of the run whose commit is checked out in
    /// `checkout`, on the agents of `pool`.
    pub fn new(store: Store, pool: &str, checkout: impl Into<PathBuf>, lease: Duration) -> Self {
        RemoteRunner {
            store,
            pool: pool.to_string(),
            checkout: checkout.into(),
            lease,
            cancel_grace: CANCEL_GRACE,
        }
    }

    /// How long a canceled job's agent gets before the job is given up.
    pub fn with_cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// What a run waits for while no agent of this pool is live.
    pub fn waiting_for(pool: &str) -> String {
        format!("an agent of pool {pool}")
    }

    /// Queues the job; returns its id.
    async fn queue(&self, spec: &JobSpec) -> Result<i64, RunnerError> {
        let (kind, plan_sha256) = match &spec.phase {
            JobPhase::Plan => (JobKind::Plan, None),
            JobPhase::Drift { refresh_only } => (
                JobKind::Drift {
                    refresh_only: *refresh_only,
                },
                None,
            ),
            // The agent unpacks the source into a fresh scratch for every
            // job (maybe on another agent than the plan's), so its apply
            // always runs `init` first, whatever the replica's checkout has.
            JobPhase::Apply { plan, .. } => {
                (JobKind::Apply { init: true }, Some(plan.sha256.clone()))
            }
        };
        let dir = self.checkout.clone();
        let source = tokio::task::spawn_blocking(move || super::archive::pack(&dir))
            .await
            .map_err(|e| RunnerError::Spawn(format!("archiving the checkout: {e}")))??;
        let job = NewAgentJob {
            run_id: spec.run_id,
            pool: self.pool.clone(),
            job: serde_json::to_string(&kind).expect("a job kind serializes"),
            workspace: spec.workspace.clone(),
            commit: spec.commit.clone(),
            dir: spec.dir.clone(),
            gantry_state: spec.backend.is_some(),
            timeout_ms: spec.timeout.as_millis() as i64,
            plan_sha256,
            source,
        };
        self.store.insert_agent_job(&job).await.map_err(store_error)
    }

    /// Polls the job until it ends.
    async fn wait(
        &self,
        id: i64,
        spec: &JobSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<JobOutput, RunnerError> {
        let apply = matches!(spec.phase, JobPhase::Apply { .. });
        let mut give_up_at: Option<tokio::time::Instant> = None;
        let mut checked_liveness: Option<tokio::time::Instant> = None;
        loop {
            let changed = self.store.agent_jobs_changed();
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                // This process completed or re-queued a job: look at once.
                _ = changed => {}
                _ = cancel.cancelled(), if give_up_at.is_none() => {
                    if self.store.cancel_agent_job(id).await.map_err(store_error)? {
                        return Err(RunnerError::Canceled);
                    }
                    log.append("gantry: asking the agent to stop terraform\n");
                    give_up_at = Some(tokio::time::Instant::now() + self.cancel_grace);
                }
            }
            if give_up_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
                self.store
                    .end_agent_job(id, job_state::CANCELED)
                    .await
                    .map_err(store_error)?;
                log.append("gantry: the agent did not stop in time; job given up\n");
                return Err(RunnerError::Canceled);
            }
            let job = self
                .store
                .agent_job(id)
                .await
                .map_err(store_error)?
                .ok_or_else(|| RunnerError::Spawn(format!("agent job {id} disappeared")))?;
            match job.state.as_str() {
                job_state::QUEUED => {
                    let due = checked_liveness.is_none_or(|at| at.elapsed() >= LIVENESS_EVERY);
                    if due {
                        checked_liveness = Some(tokio::time::Instant::now());
                        self.mark_waiting(spec.run_id).await?;
                    }
                }
                job_state::RUNNING => {
                    let expired = job.lease_until.is_some_and(|until| until < now_ms());
                    if expired {
                        self.lost(&job, apply, log).await?;
                    }
                }
                job_state::DONE => return self.outcome(&job, spec).await,
                job_state::LOST => {
                    return Err(RunnerError::AgentLost {
                        agent: job.agent.unwrap_or_default(),
                        apply,
                    })
                }
                _ => return Err(RunnerError::Canceled),
            }
        }
    }

    /// Shows the run as waiting while no agent of the pool is live (none
    /// seen within two leases), and no longer once one is.
    async fn mark_waiting(&self, run_id: i64) -> Result<(), RunnerError> {
        let since = now_ms() - 2 * self.lease.as_millis() as i64;
        let live = self
            .store
            .live_agents(&self.pool, since)
            .await
            .map_err(store_error)?;
        let waiting = (live == 0).then(|| Self::waiting_for(&self.pool));
        self.store
            .set_waiting_for(run_id, waiting.as_deref())
            .await
            .map_err(store_error)
    }

    /// The job's agent stopped heartbeating: a plan or drift job on its
    /// first attempt is queued again for another agent; otherwise the job
    /// is lost.
    async fn lost(
        &self,
        job: &AgentJob,
        apply: bool,
        log: &dyn LogSink,
    ) -> Result<(), RunnerError> {
        let agent = job.agent.clone().unwrap_or_default();
        if !apply && job.attempt == 1 {
            let token = job.lease_token.as_deref().unwrap_or_default();
            if self
                .store
                .requeue_lost_agent_job(job.id, token)
                .await
                .map_err(store_error)?
            {
                tracing::warn!(run.id = job.run_id, agent = %agent, "run {}: agent {agent} stopped answering; its job is queued again", job.run_id);
                log.append(&format!(
                    "gantry: agent {}/{agent} stopped answering; the job is queued again for another agent\n",
                    self.pool
                ));
            }
            return Ok(());
        }
        self.store
            .end_agent_job(job.id, job_state::LOST)
            .await
            .map_err(store_error)?;
        tracing::warn!(run.id = job.run_id, agent = %agent, "run {}: agent {agent} stopped answering; job lost", job.run_id);
        log.append(&format!(
            "gantry: agent {}/{agent} stopped answering; the job is lost\n",
            self.pool
        ));
        Err(RunnerError::AgentLost { agent, apply })
    }

    /// What the agent said of the job, as the runner's result.
    async fn outcome(&self, job: &AgentJob, spec: &JobSpec) -> Result<JobOutput, RunnerError> {
        let result: JobResult = serde_json::from_str(job.result.as_deref().unwrap_or_default())
            .map_err(|e| {
                RunnerError::Spawn(format!("unreadable result of agent job {}: {e}", job.id))
            })?;
        match result.outcome {
            Outcome::Succeeded { changes } => {
                let plan = match spec.phase {
                    JobPhase::Apply { .. } => None,
                    _ => Some(self.plan_artifacts(job.id).await?),
                };
                Ok(JobOutput {
                    text: result.text,
                    changes,
                    plan,
                    // The agent's log went to the run's log in the store as it came.
                    log: String::new(),
                })
            }
            Outcome::Failed { step, message } => Err(RunnerError::Failed {
                step: known_step(&step),
                message,
            }),
            Outcome::TimedOut { step, after_ms } => Err(RunnerError::TimedOut {
                step: known_step(&step),
                after: Duration::from_millis(after_ms),
            }),
            Outcome::Canceled => Err(RunnerError::Canceled),
            Outcome::PlanTampered { expected, actual } => {
                Err(RunnerError::PlanTampered { expected, actual })
            }
            Outcome::Error { message } => Err(RunnerError::Spawn(format!(
                "agent {}/{}: {message}",
                self.pool,
                job.agent.as_deref().unwrap_or_default()
            ))),
            // Queued again by the handler, never stored as a result.
            Outcome::HandedBack => Err(RunnerError::Spawn("the agent handed the job back".into())),
        }
    }

    /// The plan file and JSON the job uploaded, their hashes checked again.
    async fn plan_artifacts(&self, id: i64) -> Result<PlanArtifacts, RunnerError> {
        let read = |kind: &'static str| async move {
            let (bytes, sha256) = self
                .store
                .agent_artifact(id, kind)
                .await
                .map_err(store_error)?
                .ok_or_else(|| RunnerError::Spawn(format!("the agent uploaded no {kind}")))?;
            if sha256_hex(&bytes) != sha256 {
                return Err(RunnerError::Spawn(format!(
                    "the {kind} of agent job {id} does not match its sha256"
                )));
            }
            Ok((bytes, sha256))
        };
        let (file, sha256) = read(PLAN_FILE).await?;
        let (json, _) = read(PLAN_JSON).await?;
        let parsed: serde_json::Value =
            serde_json::from_slice(&json).map_err(|e| RunnerError::Failed {
                step: "show",
                message: format!("unreadable plan JSON: {e}"),
            })?;
        Ok(PlanArtifacts {
            file: PlanFile {
                bytes: file,
                sha256,
            },
            json,
            summary: PlanSummary::from_plan_json(&parsed),
            parsed,
        })
    }
}

#[async_trait]
impl Runner for RemoteRunner {
    async fn run(
        &self,
        spec: &JobSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<JobOutput, RunnerError> {
        if cancel.is_cancelled() {
            return Err(RunnerError::Canceled);
        }
        let id = self.queue(spec).await?;
        log.append(&format!(
            "gantry: job {id} queued for agent pool {}\n",
            self.pool
        ));
        let result = self.wait(id, spec, log, cancel).await;
        if let Err(e) = self.store.set_waiting_for(spec.run_id, None).await {
            tracing::warn!(run.id = spec.run_id, error = %e, "clearing what run {} waits for failed", spec.run_id);
        }
        if let Err(e) = self.store.close_agent_job(id).await {
            tracing::warn!(run.id = spec.run_id, error = %e, "closing agent job {id} failed");
        }
        result
    }
}

/// The step names a runner error carries (`&'static`); anything else an
/// agent reports is the agent's own step.
fn known_step(step: &str) -> &'static str {
    match step {
        "init" => "init",
        "plan" => "plan",
        "show" => "show",
        "apply" => "apply",
        _ => "agent",
    }
}

fn store_error(e: crate::store::StoreError) -> RunnerError {
    RunnerError::Spawn(format!("agent job store: {e}"))
}
