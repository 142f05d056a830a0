//! `gantry agent`: runs terraform for one agent pool on a host of its own.
//!
//! The agent long-polls a replica for a job of its pool
//! ([`crate::runner::protocol`]), unpacks the source archive it is given
//! into the job's scratch, runs terraform there with a [`LocalRunner`](crate::runner::LocalRunner) (the
//! same sandbox, clean environment and timeouts as a replica's runs), and
//! sends back the log as it goes, the plan file and JSON with their sha256,
//! and the outcome. It never holds a database connection, a VCS credential,
//! a webhook secret or another job's variables: only the pool's token and,
//! per job, what the grant carries.
//!
//! | file | owns |
//! | --- | --- |
//! | `mod.rs` | [`Options`], the claim loop and its slots, drain |
//! | `client.rs` | the protocol's calls, retried with backoff |
//! | `job.rs` | one job: heartbeat, source, terraform, uploads, completion |
//! | `log.rs` | the log streamed in numbered chunks |
//!
//! Shutdown (the `drain` token): no more claims; plan and drift jobs stop
//! and are completed [`Outcome::HandedBack`](crate::runner::protocol::Outcome)
//! so the server queues them again at once; applies get
//! [`Options::shutdown_grace`] to finish (after it their lease lapses and the
//! server records them interrupted). Then [`run`] returns.
//!
//! Scratch layout, as a replica's `data_dir`: `<work_dir>/work/run-<id>`
//! ([`crate::runner::RunDirs`]) and `<work_dir>/plugin-cache/<workspace>`.

mod client;
mod job;
mod log;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use client::{Backoff, Client, ClientError};

use crate::runner::protocol::ClaimRequest;
use crate::runner::Sandbox;

/// How an agent runs (the CLI's flags; tests build it directly).
#[derive(Debug, Clone)]
pub struct Options {
    /// A replica's base URL (`https://gantry.example.com`).
    pub server: url::Url,
    pub pool: String,
    /// The pool's token (`GANTRY_AGENT_TOKEN`).
    pub token: SecretString,
    /// This agent's name in its pool.
    pub name: String,
    /// Jobs run at once (at least 1).
    pub concurrency: u32,
    /// Scratch of the jobs and the plugin caches.
    pub work_dir: PathBuf,
    /// The terraform/tofu binary for every job; `None`: the grant's CLI name
    /// looked up on `path`.
    pub terraform: Option<String>,
    /// `None` only when the operator turned the sandbox off.
    pub sandbox: Option<Sandbox>,
    /// How long an apply may still run once the agent drains.
    pub shutdown_grace: Duration,
    /// PATH of terraform's processes.
    pub path: String,
    /// `TF_CLI_CONFIG_FILE` for terraform (mirrors, caches).
    pub cli_config_file: Option<PathBuf>,
    /// More paths terraform may read in the sandbox.
    pub allow_read: Vec<PathBuf>,
    /// Retries of every call to the server.
    pub backoff: Backoff,
    /// How often the log is sent while terraform runs.
    pub log_every: Duration,
}

impl Options {
    /// The defaults of everything but where to connect and as whom.
    pub fn new(server: url::Url, pool: &str, token: SecretString, name: &str) -> Options {
        Options {
            server,
            pool: pool.to_string(),
            token,
            name: name.to_string(),
            concurrency: 1,
            work_dir: PathBuf::from("gantry-agent"),
            terraform: None,
            sandbox: None,
            shutdown_grace: Duration::from_secs(30 * 60),
            path: "/usr/local/bin:/usr/bin:/bin".into(),
            cli_config_file: None,
            allow_read: Vec::new(),
            backoff: Backoff::default(),
            log_every: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("work dir {path}: {source}")]
    WorkDir {
        path: String,
        source: std::io::Error,
    },
}

/// What every job of this agent shares.
struct Agent {
    options: Options,
    client: Client,
    /// Run ids of the jobs running now (sent with each claim).
    running: Mutex<Vec<i64>>,
}

/// Claims and runs jobs until `drain` fires, then lets the running ones end
/// (see the module docs) and returns. Fails only when the server refuses the
/// pool token or answers a claim in a way no retry will change.
pub async fn run(options: Options, drain: CancellationToken) -> Result<(), AgentError> {
    std::fs::create_dir_all(options.work_dir.join("work")).map_err(|source| {
        AgentError::WorkDir {
            path: options.work_dir.display().to_string(),
            source,
        }
    })?;
    let client = Client::new(
        &options.server,
        options.token.clone(),
        &options.name,
        options.backoff,
    )?;
    let concurrency = options.concurrency.max(1);
    tracing::info!(server = %options.server, pool = %options.pool, name = %options.name, concurrency, "agent started");
    let agent = Arc::new(Agent {
        options,
        client,
        running: Mutex::new(Vec::new()),
    });
    let slots = Arc::new(Semaphore::new(concurrency as usize));
    let mut jobs = JoinSet::new();
    let result = loop {
        // Reap finished jobs so the set does not grow.
        while jobs.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = drain.cancelled() => break Ok(()),
        };
        let request = ClaimRequest {
            version: env!("CARGO_PKG_VERSION").to_string(),
            free: slots.available_permits() as u32 + 1,
            running: agent.running.lock().expect("running lock").clone(),
        };
        let claimed = tokio::select! {
            c = agent.client.claim(&request) => c,
            _ = drain.cancelled() => break Ok(()),
        };
        let grant = match claimed {
            Ok(Some(grant)) => grant,
            Ok(None) => continue,
            Err(e) => break Err(AgentError::from(e)),
        };
        let (agent, drain) = (agent.clone(), drain.clone());
        jobs.spawn(async move {
            let run_id = grant.run_id;
            agent.running.lock().expect("running lock").push(run_id);
            job::run(agent.clone(), grant, drain).await;
            agent
                .running
                .lock()
                .expect("running lock")
                .retain(|r| *r != run_id);
            drop(slot);
        });
    };
    if !jobs.is_empty() {
        tracing::info!(jobs = jobs.len(), "draining: waiting for the running jobs");
    }
    // On a fatal claim error the running jobs still end properly.
    drain.cancel();
    while jobs.join_next().await.is_some() {}
    tracing::info!("agent stopped");
    result
}

/// The sandbox for an agent's jobs, probed once at start: like `serve`'s,
/// with the sandbox's uid given a way to the scratch under `work_dir`.
pub async fn sandbox(
    work_dir: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Sandbox> {
    use anyhow::Context;
    let helper = Sandbox::helper_path(env)?;
    let sandbox = Sandbox::probe(&helper).await.context(
        "terraform cannot be sandboxed on this host; fix the host, or pass `--sandbox off` to run jobs without isolation",
    )?;
    if let Some((uid, _)) = sandbox.run_as() {
        crate::runner::sandbox::ensure_traversable(work_dir, uid)?;
    }
    tracing::info!(sandbox = %sandbox.layers(), "terraform runs sandboxed: {}", sandbox.layers());
    Ok(sandbox)
}
