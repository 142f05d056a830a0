//! The application: everything `gantry serve` runs, built from a config so tests
//! build the very same thing on port 0. [`Ctx`] is the composition root, the
//! one place that knows every component; each handler and loop gets only the
//! components it uses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::config::reload::Reloader;
use crate::config::Config;
use crate::git::Mirrors;
use crate::outbox::Outbox;
use crate::policy::groups::{Policies, PolicyGroups};
use crate::queue::DriftDeps;
use crate::runs::running::Running;
use crate::runs::{dispatch, execute};
use crate::settings::Settings;
use crate::store::{EventsStored, RunsQueued, Store};

pub use crate::config::EnvFn;

/// How long a claim on a run or event lasts without a heartbeat, unless
/// `queue.lease` says otherwise (read `config().queue.lease`).
pub const LEASE: Duration = crate::config::DEFAULT_LEASE;

/// The composition root: owns one of each component, and builds what each
/// handler and loop receives (only what it uses). Nothing below `app` knows
/// this type.
pub struct Ctx {
    /// The config, providers and redactor, swapped together on reload.
    pub settings: Settings,
    pub store: Store,
    pub mirrors: Mirrors,
    pub outbox: Outbox,
    /// Policy groups loaded by this process.
    pub policy_groups: Arc<PolicyGroups>,
    /// Cancel tokens of the runs this process is executing.
    pub running: Running,
    pub runs_queued: RunsQueued,
    pub events_stored: EventsStored,
    /// The sandbox terraform runs in; `None` only with `runner.sandbox: off`.
    /// Probed once at start (a change of `runner.sandbox` needs a restart).
    pub sandbox: Option<crate::runner::Sandbox>,
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
        self.settings.config()
    }

    pub fn policies(&self) -> Policies {
        Policies {
            settings: self.settings.clone(),
            store: self.store.clone(),
            mirrors: self.mirrors.clone(),
            outbox: self.outbox.clone(),
            policy_groups: self.policy_groups.clone(),
        }
    }

    fn dispatch(&self) -> dispatch::Deps {
        dispatch::Deps {
            settings: self.settings.clone(),
            store: self.store.clone(),
            mirrors: self.mirrors.clone(),
            outbox: self.outbox.clone(),
            policies: self.policies(),
            runs_queued: self.runs_queued.clone(),
        }
    }

    fn execute(&self) -> execute::Deps {
        execute::Deps {
            settings: self.settings.clone(),
            store: self.store.clone(),
            mirrors: self.mirrors.clone(),
            outbox: self.outbox.clone(),
            policies: self.policies(),
            running: self.running.clone(),
            sandbox: self.sandbox.clone(),
            local_addr: self.local_addr,
            shutdown: self.shutdown.clone(),
            stop_runs: self.stop_runs.clone(),
        }
    }

    pub fn drift(&self) -> DriftDeps {
        DriftDeps {
            settings: self.settings.clone(),
            store: self.store.clone(),
            mirrors: self.mirrors.clone(),
            runs_queued: self.runs_queued.clone(),
        }
    }

    fn api(&self) -> ApiState {
        ApiState {
            settings: self.settings.clone(),
            store: self.store.clone(),
            mirrors: self.mirrors.clone(),
            outbox: self.outbox.clone(),
            running: self.running.clone(),
            runs_queued: self.runs_queued.clone(),
            events_stored: self.events_stored.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Hot reload: a valid new config is swapped in with its providers and
    /// redactor, and the workers look again (`concurrency` may have grown).
    fn reloader(&self) -> Reloader {
        let (settings, runs_queued) = (self.settings.clone(), self.runs_queued.clone());
        Reloader {
            config: self.settings.shared_config().clone(),
            env: self.settings.env.clone(),
            apply: Box::new(move |config| {
                settings.apply(config)?;
                runs_queued.notify();
                Ok(())
            }),
        }
    }

    /// Loads the config file again and applies it if valid (what the
    /// watcher does on an edit). Returns whether it was applied.
    pub fn reload(&self) -> bool {
        crate::config::reload::reload(&self.reloader())
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
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let mirrors = Mirrors::new(&config.data_dir);
        let settings = Settings::new(config, env)?;
        let ctx = Arc::new(Ctx {
            outbox: Outbox::new(store.clone(), settings.clone(), sandbox.is_some()),
            settings,
            store,
            mirrors,
            policy_groups: Default::default(),
            running: Running::default(),
            runs_queued: RunsQueued::default(),
            events_stored: EventsStored::default(),
            sandbox,
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
    /// dispatches in flight get [`DRAIN_IN_FLIGHT`](crate::config::DRAIN_IN_FLIGHT).
    /// Last, what this process still holds in the queue is handed back, and
    /// the HTTP server stops.
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
        tasks.spawn(crate::queue::dispatcher(
            Arc::new(ctx.dispatch()),
            ctx.events_stored.clone(),
            ctx.shutdown.clone(),
        ));
        tasks.spawn(crate::queue::workers(
            Arc::new(ctx.execute()),
            ctx.runs_queued.clone(),
        ));
        tasks.spawn(crate::queue::reaper(
            ctx.store.clone(),
            ctx.settings.clone(),
            ctx.outbox.clone(),
            ctx.runs_queued.clone(),
            ctx.shutdown.clone(),
        ));
        tasks.spawn(crate::queue::policy_sync(
            ctx.policies(),
            ctx.shutdown.clone(),
        ));
        tasks.spawn(crate::queue::drift_scheduler(
            ctx.drift(),
            ctx.shutdown.clone(),
        ));
        tasks.spawn(crate::retention::retention(
            ctx.store.clone(),
            ctx.settings.shared_config().clone(),
            ctx.shutdown.clone(),
        ));
        tasks.spawn(crate::outbox::sender(
            ctx.outbox.clone(),
            ctx.shutdown.clone(),
        ));
        if self.watch_config {
            let watcher = crate::config::reload::watch(ctx.reloader(), ctx.shutdown.clone())?;
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
        let router = crate::api::router(ctx.api());
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
