//! A run's job: its working copy (the commit fetched into the mirror and
//! checked out into the run's scratch directory), the runner, and the job
//! spec of each phase with the backend credentials of gantry-kept state.

use std::path::PathBuf;

use crate::config::{Config, Workspace};
use crate::git::Mirror;
use crate::runner::{BackendConfig, JobPhase, JobSpec, LocalRunner, RemoteRunner};
use crate::runner::{RunDirs, Runner};
use crate::runs::execute::Deps;
use crate::runs::outcome::Failure;
use crate::runs::{Run, RunKind};

/// A checked-out commit ready for terraform.
pub struct Checkout {
    pub workspace: Workspace,
    /// The local runner, or the remote one of the workspace's agent pool.
    pub runner: Box<dyn Runner>,
    /// The plan (or drift check) job.
    pub job: JobSpec,
    /// Where terraform runs: the workspace's directory in the run's scratch.
    pub workdir: PathBuf,
    /// Whether gantry keeps this workspace's state.
    pub gantry_state: bool,
}

/// The run's workspace, as configured now.
pub fn workspace(ctx: &Deps, run: &Run) -> Result<Workspace, Failure> {
    let config = ctx.config();
    let workspace = config.workspace(&run.workspace).ok_or_else(|| {
        Failure::internal(format!(
            "workspace {} is no longer configured",
            run.workspace
        ))
    })?;
    Ok(workspace.clone())
}

/// Fetches the commit into the mirror, unless it is there already.
pub async fn fetch(ctx: &Deps, run: &Run) -> Result<Mirror, Failure> {
    let provider = ctx
        .settings
        .providers()
        .get(&run.provider_id)
        .ok_or_else(|| {
            Failure::internal(format!(
                "provider {} is no longer configured",
                run.provider_id
            ))
        })?;
    let mirror = Mirror {
        path: ctx.mirrors.path_for(&run.provider_id, &run.repo),
    };
    if mirror.has_commit(&run.head_sha) {
        return Ok(mirror);
    }
    Ok(match &run.head_repo {
        Some(fork) => {
            let (repo, git_ref) = (&run.repo, &run.git_ref);
            crate::runs::dispatch::fetch_fork(
                &ctx.mirrors,
                &*provider,
                repo,
                fork,
                git_ref,
                run.pr_number,
            )
            .await?
        }
        None => {
            let creds = provider
                .git_credentials(&run.repo)
                .await
                .map_err(|e| Failure::internal(format!("git credentials: {e}")))?;
            let url = provider.clone_url(&run.repo);
            let refs = std::slice::from_ref(&run.git_ref);
            ctx.mirrors
                .fetch(&run.provider_id, &run.repo, &url, creds, refs)
                .await?
        }
    })
}

/// Checks the commit out into the run's scratch, points gantry-kept state
/// at gantry's backend, and sets up the runner.
pub async fn checkout(
    ctx: &Deps,
    run: &Run,
    workspace: Workspace,
    mirror: Mirror,
) -> Result<Checkout, Failure> {
    let config = ctx.config();
    let dirs = RunDirs::new(work_dir(&config, run.id));
    let _ = tokio::fs::remove_dir_all(&dirs.root).await;
    let (sha, checkout) = (run.head_sha.clone(), dirs.checkout());
    tokio::task::spawn_blocking(move || mirror.checkout(&sha, &checkout))
        .await
        .map_err(|e| Failure::internal(format!("checkout task failed: {e}")))??;
    let phase = match run.kind {
        RunKind::Drift => JobPhase::Drift {
            refresh_only: workspace.drift_mode == crate::drift::DriftMode::RefreshOnly,
        },
        _ => JobPhase::Plan,
    };
    let mut job = job_spec(&config, &workspace, run.id, &run.head_sha, phase);
    let workdir = dirs.checkout().join(&job.dir);
    let gantry_state = !crate::state::has_own_backend(&workdir);
    if gantry_state {
        let base = crate::state::backend_base(&config, ctx.local_addr);
        let creds =
            crate::state::configure_run(&ctx.store, &base, &workspace.name, run.id, &workdir)
                .await?;
        job.backend = Some(backend_config(creds));
    }
    let runner = runner_for(ctx, &config, &workspace, run.id, &dirs).await?;
    Ok(Checkout {
        workspace,
        runner,
        job,
        workdir,
        gantry_state,
    })
}

/// The runner of `workspace`: the remote runner of its agent pool (the
/// claiming agent records itself as the run's runner), or the local one,
/// recorded as the run's runner now.
async fn runner_for(
    ctx: &Deps,
    config: &Config,
    workspace: &Workspace,
    run_id: i64,
    dirs: &RunDirs,
) -> Result<Box<dyn Runner>, Failure> {
    if let Some(pool) = &workspace.agent_pool {
        let (store, lease) = (ctx.store.clone(), config.queue.lease);
        return Ok(Box::new(RemoteRunner::new(
            store,
            pool,
            dirs.checkout(),
            lease,
        )));
    }
    let env = ctx.settings.env.clone();
    let runner = LocalRunner::new(config, &*env, ctx.sandbox.clone(), ctx.redactor())
        .map_err(|e| Failure::internal(format!("preparing the runner: {e}")))?;
    ctx.store.set_runner(run_id, "local").await?;
    Ok(Box::new(runner))
}

/// The terraform job of one run phase: its timeout, and only that
/// workspace's variables for `phase`.
pub fn job_spec(
    config: &Config,
    workspace: &Workspace,
    run_id: i64,
    commit: &str,
    phase: JobPhase,
) -> JobSpec {
    JobSpec {
        run_id,
        workspace: workspace.name.clone(),
        variables: crate::runner::variables_for(config, &workspace.name, phase.variables()),
        phase,
        commit: commit.to_string(),
        dir: workspace.dir.as_str().to_string(),
        backend: None,
        timeout: workspace.timeout.unwrap_or(config.terraform.timeout),
    }
}

/// The run's scratch directory, deleted when the run ends.
pub fn work_dir(config: &Config, run_id: i64) -> PathBuf {
    config.data_dir.join("work").join(format!("run-{run_id}"))
}

/// terraform's http backend reads its credentials from the environment, so
/// the token is in no file of the checkout and in no saved plan.
pub fn backend_config(creds: crate::state::RunCredentials) -> BackendConfig {
    use secrecy::ExposeSecret;
    BackendConfig::http(
        &creds.address,
        &creds.username,
        creds.password.expose_secret(),
    )
}
