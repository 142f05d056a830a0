//! One granted job, start to end: heartbeat, source, terraform through a
//! [`LocalRunner`], the log streamed, artifacts uploaded, completion; the
//! scratch deleted after.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::{Client, ClientError, JobRef};
use super::Agent;
use crate::redact::Redactor;
use crate::runner::protocol::{Backend, JobGrant, JobKind, JobResult, Outcome};
use crate::runner::{
    archive, BackendConfig, EnvVar, JobOutput, JobPhase, JobSpec, LocalRunner, PlanFile, Runner,
    RunnerError, Standalone,
};

/// Why terraform was told to stop; the first reason wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// A heartbeat answered `cancel: true`.
    CancelRequested,
    /// The server answered 409: the job is no longer ours.
    LeaseLost,
    /// The agent is draining and the job is a plan or drift check.
    HandBack,
    /// The agent drained for `--shutdown-grace` and the apply still ran.
    GraceOver,
}

/// The job's stop switch: the token the runner watches, and why it fired.
#[derive(Default)]
struct Stopper {
    token: CancellationToken,
    reason: Mutex<Option<Stop>>,
}

impl Stopper {
    fn stop(&self, why: Stop) {
        self.reason.lock().expect("stop lock").get_or_insert(why);
        self.token.cancel();
    }

    fn reason(&self) -> Option<Stop> {
        *self.reason.lock().expect("stop lock")
    }
}

/// Runs `grant` to its end. `drain` fires when the agent shuts down.
pub async fn run(agent: Arc<Agent>, grant: JobGrant, drain: CancellationToken) {
    let job = JobRef::of(&grant);
    tracing::info!(job.id = job.id, run.id = grant.run_id, workspace = %grant.workspace, kind = ?grant.job, "job claimed");
    let stopper = Arc::new(Stopper::default());
    let watchers = [
        tokio::spawn(heartbeat(
            agent.client.clone(),
            job.clone(),
            Duration::from_millis((grant.lease_ms / 3).max(100)),
            stopper.clone(),
        )),
        tokio::spawn(on_drain(
            drain,
            matches!(grant.job, JobKind::Apply { .. }),
            agent.options.shutdown_grace,
            stopper.clone(),
        )),
    ];
    let runner = agent.runner(&grant);
    let scratch = runner.dirs(grant.run_id).root;
    let result = execute(&agent, &runner, &grant, &job, &stopper).await;
    for w in watchers {
        w.abort();
    }
    if let Err(e) = tokio::fs::remove_dir_all(&scratch).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(job.id = job.id, error = %e, "cannot delete the job's scratch");
        }
    }
    let result = match (result, stopper.reason()) {
        (_, Some(Stop::LeaseLost)) | (Err(ClientError::LeaseLost), _) => {
            tracing::warn!(job.id = job.id, "the job's lease is lost; dropped");
            return;
        }
        // An apply is never handed back: the lease lapses and the server
        // records it interrupted, as for a replica that stopped mid-apply.
        (_, Some(Stop::GraceOver)) => {
            tracing::warn!(
                job.id = job.id,
                "the shutdown grace is over; the apply was stopped"
            );
            return;
        }
        (Ok(r), _) => r,
        (Err(e), _) => JobResult {
            outcome: Outcome::Error {
                message: e.to_string(),
            },
            text: String::new(),
        },
    };
    tracing::info!(job.id = job.id, outcome = ?result.outcome, "job done");
    if let Err(e) = agent.client.complete(&job, &result).await {
        tracing::warn!(job.id = job.id, error = %e, "cannot report the job's completion");
    }
}

/// Everything between the claim and the completion. `Err` is a failure to
/// talk to the server; what terraform did is in the `JobResult`.
async fn execute(
    agent: &Agent,
    runner: &LocalRunner,
    grant: &JobGrant,
    job: &JobRef,
    stopper: &Stopper,
) -> Result<JobResult, ClientError> {
    let outcome = |outcome| JobResult {
        outcome,
        text: String::new(),
    };
    let error = |message: String| outcome(Outcome::Error { message });
    let dirs = runner.dirs(grant.run_id);
    // A scratch left by an earlier attempt (a crash) is not this job's.
    let _ = tokio::fs::remove_dir_all(&dirs.root).await;
    let source = agent.client.source(job).await?;
    let checkout = dirs.checkout();
    let unpacked = tokio::task::spawn_blocking(move || archive::unpack(&source, &checkout)).await;
    match unpacked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Ok(error(format!("bad source archive: {e}"))),
        Err(e) => return Ok(error(format!("unpacking the source: {e}"))),
    }
    let phase = match &grant.job {
        JobKind::Plan => JobPhase::Plan,
        JobKind::Drift { refresh_only } => JobPhase::Drift {
            refresh_only: *refresh_only,
        },
        JobKind::Apply { init } => {
            let Some(sha256) = grant.plan_sha256.clone() else {
                return Ok(error("an apply job without the plan's sha256".into()));
            };
            let bytes = agent.client.plan(job).await?;
            JobPhase::Apply {
                plan: PlanFile { bytes, sha256 },
                init: *init,
            }
        }
    };
    let spec = JobSpec {
        run_id: grant.run_id,
        workspace: grant.workspace.clone(),
        phase,
        commit: grant.commit.clone(),
        dir: grant.dir.clone(),
        variables: grant
            .variables
            .iter()
            .map(|v| EnvVar {
                name: v.name.clone(),
                value: v.value.clone(),
                sensitive: v.sensitive,
            })
            .collect(),
        backend: grant
            .backend
            .as_ref()
            .map(|b| backend_env(&agent.client, b)),
        timeout: Duration::from_millis(grant.timeout_ms),
    };
    if let Some(why) = stopper.reason() {
        return Ok(outcome(stopped(why)));
    }

    let (lines, rx) = mpsc::unbounded_channel::<String>();
    let streaming = {
        let (client, job, every) = (agent.client.clone(), job.clone(), agent.options.log_every);
        tokio::spawn(async move { super::log::stream(&client, &job, rx, every).await })
    };
    let ran = runner.run(&spec, &lines, &stopper.token).await;
    drop(lines);
    match streaming.await {
        Ok(Err(ClientError::LeaseLost)) => stopper.stop(Stop::LeaseLost),
        Ok(Err(e)) => tracing::warn!(job.id = job.id, error = %e, "part of the log was not sent"),
        _ => {}
    }
    let out = match ran {
        Ok(out) => out,
        Err(RunnerError::Canceled) => {
            return Ok(outcome(stopped(
                stopper.reason().unwrap_or(Stop::CancelRequested),
            )))
        }
        Err(e) => return Ok(outcome(failure(e))),
    };
    upload(agent, job, &out).await?;
    Ok(JobResult {
        outcome: Outcome::Succeeded {
            changes: out.changes,
        },
        text: out.text,
    })
}

/// Sends a plan's file and JSON (plan and drift jobs) before the completion
/// says it succeeded.
async fn upload(agent: &Agent, job: &JobRef, out: &JobOutput) -> Result<(), ClientError> {
    if let Some(plan) = &out.plan {
        agent
            .client
            .upload(job, "plan_file", &plan.file.bytes)
            .await?;
        agent.client.upload(job, "plan_json", &plan.json).await?;
    }
    Ok(())
}

fn stopped(why: Stop) -> Outcome {
    match why {
        Stop::HandBack => Outcome::HandedBack,
        Stop::CancelRequested | Stop::LeaseLost | Stop::GraceOver => Outcome::Canceled,
    }
}

/// The remote form of what the runner said went wrong.
fn failure(e: RunnerError) -> Outcome {
    match e {
        RunnerError::Failed { step, message } => Outcome::Failed {
            step: step.into(),
            message,
        },
        RunnerError::TimedOut { step, after } => Outcome::TimedOut {
            step: step.into(),
            after_ms: after.as_millis() as u64,
        },
        RunnerError::PlanTampered { expected, actual } => {
            Outcome::PlanTampered { expected, actual }
        }
        RunnerError::Canceled => Outcome::Canceled,
        // A local runner never loses an agent; the arm keeps the match total.
        e @ (RunnerError::Spawn(_) | RunnerError::Io(_) | RunnerError::AgentLost { .. }) => {
            Outcome::Error {
                message: e.to_string(),
            }
        }
    }
}

/// terraform's `http` backend at gantry's state endpoint, credentials in the
/// environment (never in a file of the checkout or in the saved plan).
fn backend_env(client: &Client, backend: &Backend) -> BackendConfig {
    let address = client.server_url(&backend.path);
    BackendConfig::http(&address, &backend.username, &backend.password)
}

/// Renews the lease every `every` while the job runs; stops terraform on a
/// cancel request or a lost lease. A heartbeat that fails even after its
/// retries is tried again at the next tick: the lease may still hold.
async fn heartbeat(client: Client, job: JobRef, every: Duration, stopper: Arc<Stopper>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match client.heartbeat(&job).await {
            Ok(h) if h.cancel => {
                tracing::info!(job.id = job.id, "the run was canceled; stopping terraform");
                stopper.stop(Stop::CancelRequested);
            }
            Ok(_) => {}
            Err(ClientError::LeaseLost | ClientError::NotFound) => {
                stopper.stop(Stop::LeaseLost);
                return;
            }
            Err(e) => tracing::warn!(job.id = job.id, error = %e, "heartbeat failed"),
        }
    }
}

/// On drain: a plan or drift job stops at once (to be handed back); an
/// apply gets `grace` to finish.
async fn on_drain(drain: CancellationToken, apply: bool, grace: Duration, stopper: Arc<Stopper>) {
    drain.cancelled().await;
    if apply {
        tokio::time::sleep(grace).await;
        stopper.stop(Stop::GraceOver);
    } else {
        stopper.stop(Stop::HandBack);
    }
}

impl Agent {
    /// A runner for `grant`: the binary `--terraform` names, else the
    /// grant's CLI on PATH. The redactor starts with the agent's own token;
    /// the runner adds the job's sensitive variables.
    fn runner(&self, grant: &JobGrant) -> LocalRunner {
        let o = &self.options;
        let bin = o
            .terraform
            .clone()
            .unwrap_or_else(|| grant.terraform.clone());
        let mut redactor = Redactor::default();
        redactor.add(secrecy::ExposeSecret::expose_secret(&o.token));
        LocalRunner::standalone(
            Standalone {
                bin,
                path: o.path.clone(),
                cli_config_file: o.cli_config_file.clone(),
                allow_read: o.allow_read.clone(),
                work_root: o.work_dir.join("work"),
                plugin_caches: o.work_dir.join("plugin-cache"),
            },
            o.sandbox.clone(),
            Arc::new(redactor),
        )
    }
}
