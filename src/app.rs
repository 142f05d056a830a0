//! The application: everything `gantry serve` runs, built from a config so tests
//! build the very same thing on port 0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SharedConfig};
use crate::git::Mirrors;
use crate::redact::Redactor;
use crate::store::Store;
use crate::vcs::Providers;

/// How long a claim on a run or event lasts without a heartbeat, unless
/// `queue.lease` says otherwise (read `config().queue.lease`).
pub const LEASE: Duration = crate::config::DEFAULT_LEASE;

/// How long a draining replica waits for the reports and dispatches it has in
/// flight before abandoning them: a shutdown never waits on VCS retries (an
/// abandoned dispatch is handed back and redone by another replica).
pub const DRAIN_IN_FLIGHT: Duration = Duration::from_secs(10);

pub type EnvFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Shared by the HTTP handlers, the dispatcher and the workers.
pub struct Ctx {
    pub config: SharedConfig,
    pub providers: ArcSwap<Providers>,
    /// Masks the config's secrets; swapped with the config. The process-wide
    /// `redact::global()` (the log's) is set to the same one.
    pub redactor: ArcSwap<Redactor>,
    pub store: Store,
    pub mirrors: Mirrors,
    pub env: EnvFn,
    /// Wakes the workers when runs were queued.
    pub runs_queued: Notify,
    /// Wakes the dispatcher when an event was stored.
    pub events_stored: Notify,
    /// Wakes the outbox sender when a report was stored.
    pub outbox_queued: Notify,
    /// Policy groups loaded by this process.
    pub policy_groups: crate::policy::groups::PolicyGroups,
    /// The sandbox terraform runs in; `None` only with `runner.sandbox: off`.
    /// Probed once at start (a change of `runner.sandbox` needs a restart).
    pub sandbox: Option<crate::runner::Sandbox>,
    /// Cancel tokens of the runs this process is executing.
    running: Mutex<HashMap<i64, CancellationToken>>,
    /// Canceled when this replica starts draining (SIGTERM): the loops stop
    /// taking work, running plans go back to the queue, `readyz` answers 503.
    pub shutdown: CancellationToken,
    /// Canceled when `shutdown_grace` is over: applies still running are
    /// interrupted (their terraform gets SIGINT, then SIGKILL).
    pub stop_runs: CancellationToken,
    /// The address the HTTP server is bound to (runs reach the state backend
    /// there unless `state_backend_url` says otherwise).
    pub local_addr: SocketAddr,
}

impl Ctx {
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The redactor for the current config: every way out goes through it.
    pub fn redactor(&self) -> Arc<Redactor> {
        self.redactor.load_full()
    }

    pub fn register_run(&self, run_id: i64, cancel: CancellationToken) {
        self.running
            .lock()
            .expect("running map poisoned")
            .insert(run_id, cancel);
    }

    pub fn unregister_run(&self, run_id: i64) {
        self.running
            .lock()
            .expect("running map poisoned")
            .remove(&run_id);
    }

    /// The cancel token of a run this process is executing: a cancel
    /// request, a lost lease or the end of the shutdown grace, but not the
    /// start of a drain (which stops plans only).
    pub fn run_token(&self, run_id: i64) -> Option<CancellationToken> {
        self.running
            .lock()
            .expect("running map poisoned")
            .get(&run_id)
            .cloned()
    }

    /// Stops a run this process is executing (its terraform gets SIGINT, then
    /// SIGKILL). Runs held by other replicas stop at their next heartbeat.
    pub fn cancel_local_run(&self, run_id: i64) -> bool {
        match self
            .running
            .lock()
            .expect("running map poisoned")
            .get(&run_id)
        {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// A link to a run for statuses, when `public_url` is configured.
    pub fn run_url(&self, run_id: i64) -> Option<String> {
        self.config()
            .public_url
            .as_ref()
            .map(|u| format!("{u}/api/runs/{run_id}"))
    }

    /// Swaps in a new configuration (hot reload).
    pub fn apply_config(&self, config: Config) -> anyhow::Result<()> {
        let redactor = Arc::new(Redactor::for_config(&config));
        let providers = Providers::with_redactor(&config, redactor.clone())?;
        crate::redact::set_global(Redactor::clone(&redactor));
        self.redactor.store(redactor);
        self.providers.store(Arc::new(providers));
        self.config.store(Arc::new(config));
        self.runs_queued.notify_one();
        Ok(())
    }
}

/// Probes the sandbox `serve` runs terraform in, or explains why there is none.
/// With `runner.sandbox: on` (the default) a host that cannot sandbox is an
/// error: there is no silent fallback.
pub async fn sandbox_for(
    config: &Config,
    env: &(dyn Fn(&str) -> Option<String> + Send + Sync),
) -> anyhow::Result<Option<crate::runner::Sandbox>> {
    use crate::config::SandboxMode;
    match config.runner.sandbox {
        SandboxMode::Off => {
            tracing::warn!(
                "runner.sandbox is off: terraform runs are NOT isolated; a pull request's code can read gantry's files and credentials"
            );
            Ok(None)
        }
        SandboxMode::On => {
            let helper = crate::runner::Sandbox::helper_path(env)?;
            let sandbox = crate::runner::Sandbox::probe(&helper).await.with_context(|| {
                format!(
                    "runner.sandbox is on (the default) but terraform cannot be sandboxed on this host; \
                     fix the host, or set `runner.sandbox: off` in {} to run pull requests' Terraform without isolation",
                    config.source.display()
                )
            })?;
            crate::runner::check_exposure(config, env).with_context(|| {
                format!("checking the sandbox against {}", config.source.display())
            })?;
            tracing::info!(sandbox = %sandbox.layers(), "terraform runs sandboxed: {}", sandbox.layers());
            Ok(Some(sandbox))
        }
    }
}

/// [`sandbox_for`], for a process that will run terraform: the sandbox's uid
/// is also given a way to the run directories under `data_dir`.
/// (`config check` uses `sandbox_for` alone and changes nothing on disk.)
pub async fn sandbox_for_runs(
    config: &Config,
    env: &(dyn Fn(&str) -> Option<String> + Send + Sync),
) -> anyhow::Result<Option<crate::runner::Sandbox>> {
    let sandbox = sandbox_for(config, env).await?;
    if let Some((uid, _)) = sandbox.as_ref().and_then(|s| s.run_as()) {
        crate::runner::sandbox::ensure_traversable(&config.data_dir, uid)?;
    }
    Ok(sandbox)
}

pub struct App {
    ctx: Arc<Ctx>,
    listener: TcpListener,
    watch_config: bool,
}

impl App {
    /// Connects the database, runs migrations, binds the listener.
    pub async fn build(config: Config, env: EnvFn) -> anyhow::Result<App> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
        let pg_connections = (config.concurrency as u32)
            .saturating_mul(2)
            .saturating_add(8);
        let sandbox = sandbox_for_runs(&config, &*env).await?;
        let store = Store::connect_sized(&config.database_url, pg_connections).await?;
        store.migrate().await?;
        let redactor = Arc::new(Redactor::for_config(&config));
        let providers = Providers::with_redactor(&config, redactor.clone())?;
        crate::redact::set_global(Redactor::clone(&redactor));
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let ctx = Arc::new(Ctx {
            mirrors: Mirrors::new(&config.data_dir),
            config: Arc::new(ArcSwap::from_pointee(config)),
            providers: ArcSwap::from_pointee(providers),
            redactor: ArcSwap::new(redactor),
            store,
            env,
            runs_queued: Notify::new(),
            events_stored: Notify::new(),
            outbox_queued: Notify::new(),
            running: Mutex::default(),
            sandbox,
            policy_groups: Default::default(),
            shutdown: CancellationToken::new(),
            stop_runs: CancellationToken::new(),
            local_addr: listener.local_addr().context("listener address")?,
        });
        Ok(App {
            ctx,
            listener,
            watch_config: true,
        })
    }

    /// Tests drive reloads themselves.
    pub fn without_config_watch(mut self) -> Self {
        self.watch_config = false;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    pub fn ctx(&self) -> Arc<Ctx> {
        self.ctx.clone()
    }

    /// Serves until `shutdown` resolves, then drains and exits: the loops
    /// stop taking work, `readyz` answers 503, running plans are stopped and
    /// go back to the queue for another replica, running applies finish
    /// within `shutdown_grace` (then they are interrupted), reports and
    /// dispatches in flight get [`DRAIN_IN_FLIGHT`]. Last, what this process
    /// still holds in the queue is handed back, and the HTTP server stops.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let ctx = self.ctx;
        // Claims whose lease ran out while no replica was up are taken back at
        // once. Only expired ones: a live claim may belong to another process,
        // even one configured with the same node_id. What this process held
        // before a restart comes back once its lease expires.
        let reaped = ctx.store.reap_runs().await?;
        for run in &reaped {
            tracing::warn!(run.id = run.id, workspace.name = %run.workspace, "run {} was interrupted (its lease expired)", run.id);
        }
        ctx.store.reap_events().await?;
        ctx.store.reap_reports().await?;

        let mut tasks = JoinSet::new();
        tasks.spawn(crate::queue::dispatcher(ctx.clone()));
        tasks.spawn(crate::queue::workers(ctx.clone()));
        tasks.spawn(crate::queue::reaper(ctx.clone()));
        tasks.spawn(crate::queue::policy_sync(ctx.clone()));
        tasks.spawn(crate::queue::drift_scheduler(ctx.clone()));
        tasks.spawn(crate::retention::retention(
            ctx.store.clone(),
            ctx.config.clone(),
            ctx.shutdown.clone(),
        ));
        tasks.spawn(crate::outbox::sender(ctx.clone()));
        if self.watch_config {
            let watcher = crate::config::reload::watch(ctx.clone())?;
            tasks.spawn(async move {
                watcher.await;
            });
        }

        let drain = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                shutdown.await;
                let grace = ctx.config().shutdown_grace;
                tracing::info!(
                    shutdown_grace_s = grace.as_secs(),
                    "draining: plans go back to the queue, applies may finish within {}",
                    humantime::format_duration(grace)
                );
                ctx.shutdown.cancel();
                tokio::time::sleep(grace).await;
                tracing::warn!("shutdown grace is over: interrupting running applies");
                ctx.stop_runs.cancel();
            })
        };
        let router = crate::api::router(ctx.clone());
        tracing::info!(address = %self.listener.local_addr()?, "gantry listening on {}", self.listener.local_addr()?);
        // The server keeps answering while the replica drains (readyz: 503).
        let stop_serving = CancellationToken::new();
        let server = {
            let stop = stop_serving.clone();
            let serve = axum::serve(self.listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            tokio::spawn(async move { serve.await })
        };
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "background task failed");
            }
        }
        drain.abort();
        // Nothing of this process runs any more: the runs it stopped (an
        // apply interrupted at the end of the grace) ended their leases, and
        // are marked interrupted now rather than by another replica later.
        // An abandoned dispatch comes back when its lease runs out.
        match ctx.store.reap_runs().await {
            Ok(runs) => {
                for run in &runs {
                    tracing::warn!(run.id = run.id, workspace.name = %run.workspace, "run {} was interrupted by the shutdown", run.id);
                }
            }
            Err(e) => tracing::error!(error = %e, "handing back this replica's runs failed"),
        }
        stop_serving.cancel();
        server
            .await
            .context("HTTP server task")?
            .context("HTTP server")?;
        ctx.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}
