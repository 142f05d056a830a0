//! Takes one claimed run through its phases: fetch the commit, check it out,
//! point gantry-kept state at gantry's backend, plan, and for apply runs apply the saved plan
//! (at once with `auto_apply`, or once confirmed); then report the result.
//!
//! An apply only ever applies the plan file of its own run, and only when
//! nothing was applied to the workspace since that plan was made and the
//! workspace is not locked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Workspace};
use crate::git::Mirrors;
use crate::outbox::Outbox;
use crate::policy::groups::{Policies, Verdict};
use crate::policy::EnforcementLevel;
use crate::redact::Redactor;
use crate::runner::{
    BackendConfig, JobPhase, JobSpec, LocalRunner, LogSink, RunDirs, Runner, RunnerError, Sandbox,
};
use crate::runs::artifacts::RunLog;
use crate::runs::heartbeat::{Heartbeat, LEASE_LOST};
use crate::runs::running::Running;
use crate::runs::{Run, RunKind, RunState};
use crate::settings::Settings;
use crate::store::{Audit, Lease, Store};

/// What executing a run uses.
pub struct Deps {
    pub settings: Settings,
    pub store: Store,
    pub mirrors: Mirrors,
    /// A run's statuses, comments and drift notifications.
    pub outbox: Outbox,
    pub policies: Policies,
    /// Where this run's cancel token is found by a cancel request.
    pub running: Running,
    /// The sandbox terraform runs in; `None` only with `runner.sandbox: off`.
    pub sandbox: Option<Sandbox>,
    /// The address the HTTP server is bound to (runs reach the state backend
    /// there unless `state_backend_url` says otherwise).
    pub local_addr: SocketAddr,
    /// Canceled when this replica starts draining: plans stop and go back to
    /// the queue, applies go on.
    pub shutdown: CancellationToken,
    /// Canceled when `shutdown_grace` is over: applies still running are
    /// interrupted.
    pub stop_runs: CancellationToken,
}

impl Deps {
    /// The config now (read at each use: a reload applies to the next read).
    pub fn config(&self) -> Arc<Config> {
        self.settings.config()
    }

    /// The redactor for the current config.
    pub fn redactor(&self) -> Arc<Redactor> {
        self.settings.redactor()
    }
}

/// A phase failure: the reason recorded on the run.
struct Failure(String);

impl Failure {
    fn canceled() -> Failure {
        Failure(CANCELED.into())
    }
}

const CANCELED: &str = "canceled";

impl From<crate::git::GitError> for Failure {
    fn from(e: crate::git::GitError) -> Self {
        Failure(e.to_string())
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        Failure(e.to_string())
    }
}

impl From<crate::state::StateError> for Failure {
    fn from(e: crate::state::StateError) -> Self {
        Failure(e.to_string())
    }
}

impl From<RunnerError> for Failure {
    fn from(e: RunnerError) -> Self {
        match e {
            RunnerError::Failed { step, message } => {
                Failure(format!("terraform {step} failed: {message}"))
            }
            RunnerError::TimedOut { step, after } => Failure(format!(
                "terraform {step} timed out after {}",
                humantime::format_duration(after)
            )),
            RunnerError::Canceled => Failure::canceled(),
            other => Failure(other.to_string()),
        }
    }
}

#[tracing::instrument(skip_all, fields(run.id = run.id, workspace.name = %run.workspace))]
pub async fn execute(ctx: Arc<Deps>, run: Run, lease: Lease) {
    let ctx = &ctx;
    let started = std::time::Instant::now();
    // Reports are outbox rows: terraform never waits on the VCS API.
    let reporter = RunReporter { run_id: run.id };
    reporter.changed(ctx).await;

    let cancel = ctx.stop_runs.child_token();
    ctx.running.register_run(run.id, cancel.clone());
    let heartbeat = Heartbeat::spawn(
        ctx.store.clone(),
        lease.clone(),
        ctx.config().queue.lease,
        cancel.clone(),
    );
    // The phases before an apply also stop when this replica starts draining
    // (the run goes back to the queue); an apply itself uses `cancel`.
    let before_apply = cancel.child_token();
    let drain = {
        let (draining, before_apply) = (ctx.shutdown.clone(), before_apply.clone());
        tokio::spawn(async move {
            draining.cancelled().await;
            before_apply.cancel();
        })
    };

    let log = RunLog::start(ctx.store.clone(), run.id);

    let result = if run.apply_requested {
        apply_confirmed(ctx, &run, &lease, &before_apply, &reporter, log.sink()).await
    } else if run.kind == RunKind::Drift {
        drift_run(ctx, &run, &lease, &before_apply, &reporter, log.sink()).await
    } else {
        plan_run(ctx, &run, &lease, &before_apply, &reporter, log.sink()).await
    };
    log.finish().await;
    drain.abort();
    let fenced = heartbeat.stop();
    ctx.running.unregister_run(run.id);
    let _ = tokio::fs::remove_dir_all(work_dir(ctx, run.id)).await;

    if fenced && result.is_err() {
        // Fenced: terraform was stopped before the lease ran out. The run is
        // left as it is for the replica that reaps it (a plan is queued again,
        // an apply is marked interrupted and locks the workspace); this
        // holder's writes would be stale.
        tracing::warn!(outcome = ?result.as_ref().err().map(|f| &f.0), "run {} stopped: {LEASE_LOST}", run.id);
    } else if let Err(Failure(reason)) = result {
        if reason == CANCELED && ctx.shutdown.is_cancelled() {
            let node = ctx.config().node_id.clone();
            match ctx.store.requeue_run(&lease, &node).await {
                Ok(true) => {
                    // Another replica takes it at once.
                    tracing::info!(
                        "run {} handed back to the queue: this replica is shutting down",
                        run.id
                    );
                    reporter.changed(ctx).await;
                    return;
                }
                Ok(false) if cancel.is_cancelled() && !ctx.stop_runs.is_cancelled() => {
                    // A cancel request during the drain: recorded below like
                    // any other.
                }
                result => {
                    if let Err(e) = result {
                        tracing::error!(error = %e, "handing run {} back to the queue failed", run.id);
                    }
                    // Left active, its lease ended now that terraform has
                    // stopped: the reaper (of another replica, or of this one
                    // as it exits) marks it interrupted at once; an apply
                    // locks its workspace.
                    tracing::warn!("run {} interrupted by shutdown", run.id);
                    if let Err(e) = ctx.store.expire_lease(&lease).await {
                        tracing::warn!(error = %e, "releasing the lease of run {} failed", run.id);
                    }
                    return;
                }
            }
        }
        let (to, reason) = if reason == CANCELED {
            (RunState::Canceled, "canceled on request".to_string())
        } else {
            (RunState::Errored, reason)
        };
        tracing::warn!(reason = %reason, "run {} {}", run.id, to);
        let active = [RunState::Fetching, RunState::Planning, RunState::Applying];
        match ctx
            .store
            .transition(&lease, &active, to, Some(&reason))
            .await
        {
            Ok(_) => {}
            Err(e @ crate::store::StoreError::LeaseLost { .. }) => {
                tracing::warn!("the end of run {} was not recorded: {e}", run.id)
            }
            Err(e) => tracing::error!(error = %e, "recording the end of run {} failed", run.id),
        }
    }
    if let Ok(Some(done)) = ctx.store.run(run.id).await {
        tracing::info!(state = %done.state, duration_ms = started.elapsed().as_millis() as u64, "run {} finished: {}", run.id, done.state);
    }
    reporter.changed(ctx).await;
}

fn work_dir(ctx: &Deps, run_id: i64) -> PathBuf {
    ctx.config()
        .data_dir
        .join("work")
        .join(format!("run-{run_id}"))
}

/// The terraform job of one run phase: its timeout, and only that
/// workspace's variables for `phase`.
pub fn job_spec(
    config: &crate::config::Config,
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

/// A checked-out commit ready for terraform.
struct Prepared {
    workspace: Workspace,
    runner: LocalRunner,
    job: JobSpec,
    /// Where terraform runs: the workspace's directory in the run's scratch.
    workdir: PathBuf,
    /// Whether gantry keeps this workspace's state.
    gantry_state: bool,
}

/// Fetch (if the mirror lacks the commit), check out, and point gantry-kept
/// state at gantry's backend.
async fn prepare(ctx: &Deps, run: &Run) -> Result<Prepared, Failure> {
    let config = ctx.config();
    let workspace = config
        .workspace(&run.workspace)
        .ok_or_else(|| {
            Failure(format!(
                "workspace {} is no longer configured",
                run.workspace
            ))
        })?
        .clone();
    let provider = ctx
        .settings
        .providers()
        .get(&run.provider_id)
        .ok_or_else(|| {
            Failure(format!(
                "provider {} is no longer configured",
                run.provider_id
            ))
        })?;
    let mut mirror = crate::git::Mirror {
        path: ctx.mirrors.path_for(&run.provider_id, &run.repo),
    };
    if !mirror.has_commit(&run.head_sha) {
        mirror = match &run.head_repo {
            Some(fork) => {
                crate::runs::dispatch::fetch_fork(
                    &ctx.mirrors,
                    &*provider,
                    &run.repo,
                    fork,
                    &run.git_ref,
                    run.pr_number,
                )
                .await?
            }
            None => {
                let creds = provider
                    .git_credentials(&run.repo)
                    .await
                    .map_err(|e| Failure(format!("git credentials: {e}")))?;
                ctx.mirrors
                    .fetch(
                        &run.provider_id,
                        &run.repo,
                        &provider.clone_url(&run.repo),
                        creds,
                        std::slice::from_ref(&run.git_ref),
                    )
                    .await?
            }
        };
    }
    let dirs = RunDirs::new(work_dir(ctx, run.id));
    let _ = tokio::fs::remove_dir_all(&dirs.root).await;
    {
        let (mirror, sha, checkout) = (mirror.clone(), run.head_sha.clone(), dirs.checkout());
        tokio::task::spawn_blocking(move || mirror.checkout(&sha, &checkout))
            .await
            .map_err(|e| Failure(format!("checkout task failed: {e}")))??;
    }
    let phase = if run.kind == RunKind::Drift {
        JobPhase::Drift {
            refresh_only: workspace.drift_mode == crate::drift::DriftMode::RefreshOnly,
        }
    } else {
        JobPhase::Plan
    };
    let env = ctx.settings.env.clone();
    let mut job = job_spec(&config, &workspace, run.id, &run.head_sha, phase);
    let workdir = dirs.checkout().join(&job.dir);
    let gantry_state = !crate::state::has_own_backend(&workdir);
    if gantry_state {
        let base = crate::state::backend_base(&config, ctx.local_addr);
        let creds =
            crate::state::configure_run(&ctx.store, &base, &workspace.name, run.id, &workdir)
                .await?;
        job.backend = Some(BackendConfig {
            env: backend_env_vars(creds),
        });
    }
    let runner = LocalRunner::new(&config, &*env, ctx.sandbox.clone(), ctx.redactor())
        .map_err(|e| Failure(format!("preparing the runner: {e}")))?;
    Ok(Prepared {
        workspace,
        runner,
        job,
        workdir,
        gantry_state,
    })
}

/// terraform's http backend reads its credentials from the environment, so
/// the token is in no file of the checkout and in no saved plan.
fn backend_env_vars(creds: crate::state::RunCredentials) -> Vec<crate::runner::EnvVar> {
    use secrecy::ExposeSecret;
    let address = |name: &str| crate::runner::EnvVar {
        name: name.into(),
        value: creds.address.clone(),
        sensitive: false,
    };
    vec![
        address("TF_HTTP_ADDRESS"),
        address("TF_HTTP_LOCK_ADDRESS"),
        address("TF_HTTP_UNLOCK_ADDRESS"),
        crate::runner::EnvVar {
            name: "TF_HTTP_USERNAME".into(),
            value: creds.username,
            sensitive: false,
        },
        crate::runner::EnvVar {
            name: "TF_HTTP_PASSWORD".into(),
            value: creds.password.expose_secret().to_string(),
            sensitive: true,
        },
    ]
}

/// Checks the run's commit out and moves it to `planning`.
async fn start_planning(
    ctx: &Deps,
    run: &Run,
    lease: &Lease,
    reporter: &RunReporter,
) -> Result<Prepared, Failure> {
    let prepared = prepare(ctx, run).await?;
    if !ctx
        .store
        .transition(lease, &[RunState::Fetching], RunState::Planning, None)
        .await?
    {
        return Err(Failure("run changed state while fetching".into()));
    }
    reporter.changed(ctx).await;
    Ok(prepared)
}

async fn plan_run(
    ctx: &Deps,
    run: &Run,
    lease: &Lease,
    cancel: &CancellationToken,
    reporter: &RunReporter,
    log: &dyn LogSink,
) -> Result<(), Failure> {
    let prepared = start_planning(ctx, run, lease, reporter).await?;
    let state_version = crate::state::current_version(&ctx.store, &prepared.workspace.name).await?;
    let out = match prepared.runner.run(&prepared.job, log, cancel).await {
        Ok(out) => out,
        Err(e) => {
            if let RunnerError::Failed { message, .. } = &e {
                // Kept for the comment's error section.
                let _ = ctx.store.set_plan_text(run.id, message).await;
            }
            return Err(e.into());
        }
    };
    let plan = out
        .plan
        .ok_or_else(|| Failure("the runner returned no plan".into()))?;
    crate::runs::artifacts::keep_plan(&ctx.store, run.id, &plan, true).await?;
    ctx.store.set_plan_text(run.id, &out.text).await?;
    let cost = crate::cost::estimate(&plan.parsed, &ctx.config().pricing);
    ctx.store.set_cost_estimate(run.id, &cost).await?;
    let governed = ctx
        .config()
        .policy_groups
        .iter()
        .any(|g| g.environments.contains(&prepared.workspace.environment));
    if governed {
        let tfrun = tfrun(
            &ctx.store,
            &ctx.mirrors,
            run,
            &prepared.workspace,
            &plan.summary,
            &cost,
        )
        .await;
        // Policies never see values terraform marks sensitive, so no deny
        // message can carry one into a comment.
        let mut masked = plan.parsed.clone();
        crate::redact::mask_sensitive_plan(&mut masked);
        let input = crate::policy::input(masked, tfrun);
        let checks =
            crate::policy::groups::evaluate(&ctx.policies, &prepared.workspace.environment, &input)
                .await;
        ctx.store.set_policy_results(run.id, &checks).await?;
    }
    ctx.store
        .record_plan(
            run.id,
            plan.summary,
            Some(state_version),
            Some(&plan.file.sha256),
        )
        .await?;

    if run.kind == RunKind::Plan {
        ctx.store
            .transition(lease, &[RunState::Planning], RunState::Planned, None)
            .await?;
        return Ok(());
    }
    // An apply run (a merge): apply now, or wait for a confirmation.
    if !plan.summary.has_changes() {
        ctx.store
            .transition(
                lease,
                &[RunState::Planning],
                RunState::Applied,
                Some("no changes to apply"),
            )
            .await?;
        return Ok(());
    }
    let planned = ctx
        .store
        .run(run.id)
        .await?
        .ok_or_else(|| Failure("the run disappeared".into()))?;
    match planned.policy_verdict() {
        Verdict::HardBlocked => {
            return Err(Failure(format!(
                "apply refused: {}",
                policy_block_reason(&planned)
            )));
        }
        Verdict::SoftBlocked => {
            let reason = format!(
                "{}; override it, then confirm",
                policy_block_reason(&planned)
            );
            ctx.store
                .transition(
                    lease,
                    &[RunState::Planning],
                    RunState::NeedsConfirmation,
                    Some(&reason),
                )
                .await?;
            return Ok(());
        }
        Verdict::Passed | Verdict::Warned => {}
    }
    if let Some(lock) = ctx.store.workspace_lock(&prepared.workspace.name).await? {
        let reason = format!(
            "workspace is locked ({}); unlock it, then confirm",
            lock.reason
        );
        ctx.store
            .transition(
                lease,
                &[RunState::Planning],
                RunState::NeedsConfirmation,
                Some(&reason),
            )
            .await?;
        return Ok(());
    }
    if !prepared.workspace.auto_apply {
        ctx.store
            .transition(
                lease,
                &[RunState::Planning],
                RunState::NeedsConfirmation,
                Some("waiting for confirmation"),
            )
            .await?;
        return Ok(());
    }
    ctx.store
        .audit(Audit {
            actor: "gantry (auto_apply)",
            action: "apply",
            workspace: Some(&prepared.workspace.name),
            run_id: Some(run.id),
            commit_sha: Some(&run.head_sha),
            detail: Some("applied on merge"),
        })
        .await?;
    apply_phase(
        ctx,
        run,
        lease,
        &prepared,
        RunState::Planning,
        false,
        cancel,
        reporter,
        log,
    )
    .await
}

/// A drift check: plan the tracked branch head (refresh-only unless the
/// workspace asks for `plan` mode), record the report, never apply.
async fn drift_run(
    ctx: &Deps,
    run: &Run,
    lease: &Lease,
    cancel: &CancellationToken,
    reporter: &RunReporter,
    log: &dyn LogSink,
) -> Result<(), Failure> {
    let prepared = start_planning(ctx, run, lease, reporter).await?;
    let mode = prepared.workspace.drift_mode;
    let out = match prepared.runner.run(&prepared.job, log, cancel).await {
        Ok(out) => out,
        Err(e) => {
            if let RunnerError::Failed { message, .. } = &e {
                let _ = ctx.store.set_plan_text(run.id, message).await;
            }
            return Err(e.into());
        }
    };
    let plan = out
        .plan
        .ok_or_else(|| Failure("the runner returned no plan".into()))?;
    // A drift check's plan is never applied: only its JSON is kept.
    crate::runs::artifacts::keep_plan(&ctx.store, run.id, &plan, false).await?;
    ctx.store.set_plan_text(run.id, &out.text).await?;
    let report = crate::drift::report(&plan.parsed, mode, out.changes);
    ctx.store
        .add_drift_report(&run.workspace, run.id, &run.head_sha, &report)
        .await?;
    if let Some(notify) = &prepared.workspace.drift_notify {
        crate::outbox::notify_drift(&ctx.outbox, &prepared.workspace, run, &report, notify).await;
    }
    ctx.store
        .record_plan(run.id, plan.summary, None, None)
        .await?;
    let reason = if report.drifted {
        match report.resources.len() {
            1 => "drift found in 1 resource".to_string(),
            n => format!("drift found in {n} resources"),
        }
    } else {
        "no drift".to_string()
    };
    ctx.store
        .transition(
            lease,
            &[RunState::Planning],
            RunState::Planned,
            Some(&reason),
        )
        .await?;
    Ok(())
}

/// Why policies block the apply of `run`: the failing mandatory policies.
pub fn policy_block_reason(run: &Run) -> String {
    let checks = run.policy.as_deref().unwrap_or_default();
    let blocking: Vec<String> = checks
        .iter()
        .filter(|c| {
            c.result == "errored"
                || (c.result == "failed"
                    && (c.enforcement_level == EnforcementLevel::HardMandatory
                        || (c.enforcement_level == EnforcementLevel::SoftMandatory
                            && run.policy_override.is_none())))
        })
        .map(|c| {
            format!(
                "{} ({}) {}",
                c.policy,
                c.enforcement_level.as_str(),
                c.result
            )
        })
        .collect();
    format!("blocked by policy: {}", blocking.join(", "))
}

/// The `tfrun` policy input, in Scalr's shape.
pub(crate) async fn tfrun(
    store: &Store,
    mirrors: &Mirrors,
    run: &Run,
    workspace: &Workspace,
    summary: &crate::runs::PlanSummary,
    cost: &crate::cost::CostEstimate,
) -> serde_json::Value {
    let mirror = crate::git::Mirror {
        path: mirrors.path_for(&run.provider_id, &run.repo),
    };
    let (message, author) = mirror.commit_info(&run.head_sha).unwrap_or_default();
    let event = match run.event_id {
        Some(id) => store
            .event(id)
            .await
            .ok()
            .flatten()
            .and_then(|e| serde_json::from_str::<crate::vcs::VcsEvent>(&e.body).ok()),
        None => None,
    };
    let pull_request = match (&event, run.pr_number) {
        (Some(crate::vcs::VcsEvent::PullRequest(p)), Some(_)) => serde_json::json!({
            "id": p.number, "title": p.title, "author": p.author, "merged_by": null,
            "head_branch": p.head_ref, "base_branch": p.base_ref
        }),
        (_, Some(n)) => serde_json::json!({
            "id": n, "title": null, "author": null, "merged_by": null,
            "head_branch": null, "base_branch": run.branch
        }),
        _ => serde_json::Value::Null,
    };
    let created_by = match &event {
        Some(crate::vcs::VcsEvent::PullRequest(p)) => p.author.clone(),
        Some(crate::vcs::VcsEvent::Command(c)) => c.author.clone(),
        _ => author.clone(),
    };
    serde_json::json!({
        "workspace": {
            "name": workspace.name,
            "auto_apply": workspace.auto_apply,
            "working_directory": workspace.dir.as_str(),
            "tags": []
        },
        "environment": {"id": workspace.environment, "name": workspace.environment},
        "vcs": {
            "repository_id": run.repo,
            "branch": run.branch,
            "commit": {"sha": run.head_sha, "message": message, "author": {"username": author}},
            "pull_request": pull_request
        },
        "cost_estimate": {
            "prior_monthly_cost": cost.prior_monthly_cost,
            "proposed_monthly_cost": cost.proposed_monthly_cost,
            "delta_monthly_cost": cost.delta_monthly_cost
        },
        "created_by": {"username": created_by},
        "is_destroy": summary.destroy > 0 && summary.add == 0 && summary.change == 0,
        "is_dry": run.kind == RunKind::Plan,
        "source": "vcs"
    })
}

/// A confirmed apply of a plan made earlier by this run.
async fn apply_confirmed(
    ctx: &Deps,
    run: &Run,
    lease: &Lease,
    cancel: &CancellationToken,
    reporter: &RunReporter,
    log: &dyn LogSink,
) -> Result<(), Failure> {
    check_applicable(ctx, run).await?;
    let prepared = prepare(ctx, run).await?;
    apply_phase(
        ctx,
        run,
        lease,
        &prepared,
        RunState::Fetching,
        true,
        cancel,
        reporter,
        log,
    )
    .await
}

/// Why the saved plan of `run` may not be applied now, if it may not.
async fn check_applicable(ctx: &Deps, run: &Run) -> Result<(), Failure> {
    if let Some(lock) = ctx.store.workspace_lock(&run.workspace).await? {
        return Err(Failure(format!(
            "apply refused: workspace {} is locked ({})",
            run.workspace, lock.reason
        )));
    }
    if matches!(
        run.policy_verdict(),
        Verdict::HardBlocked | Verdict::SoftBlocked
    ) {
        return Err(Failure(format!(
            "apply refused: {}",
            policy_block_reason(run)
        )));
    }
    let planned_at = run
        .planned_at
        .ok_or_else(|| Failure("apply refused: the run has no plan".into()))?;
    if let Some(other) = ctx
        .store
        .applied_since(&run.workspace, planned_at, run.id)
        .await?
    {
        return Err(Failure(format!(
            "apply refused: the plan is stale, run {other} applied to {} after it was made; re-plan",
            run.workspace
        )));
    }
    let now = crate::state::current_version(&ctx.store, &run.workspace).await?;
    if run.state_version_at_plan.is_some_and(|v| v != now) {
        return Err(Failure(format!(
            "apply refused: the plan is stale, the state of {} changed after it was made; re-plan",
            run.workspace
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn apply_phase(
    ctx: &Deps,
    run: &Run,
    lease: &Lease,
    prepared: &Prepared,
    from: RunState,
    init: bool,
    cancel: &CancellationToken,
    reporter: &RunReporter,
    log: &dyn LogSink,
) -> Result<(), Failure> {
    // Checked again at the last moment, with the run holding the workspace
    // (and as stored now: the plan was recorded after this run was claimed).
    let fresh = ctx
        .store
        .run(run.id)
        .await?
        .ok_or_else(|| Failure("the run disappeared".into()))?;
    check_applicable(ctx, &fresh).await?;
    if cancel.is_cancelled() {
        // Canceled, or this replica drains: no apply starts now.
        return Err(Failure::canceled());
    }
    // Once applying, only a cancel request, a lost lease or the end of the
    // shutdown grace stops the run, not the start of a drain.
    let cancel = &ctx
        .running
        .run_token(run.id)
        .unwrap_or_else(|| cancel.clone());
    // The reviewed plan, from the store: whichever replica made it.
    let plan = crate::runs::artifacts::load_plan(&ctx.store, &fresh, &ctx.config().data_dir)
        .await
        .map_err(|e| Failure(format!("apply refused: {e}")))?;
    if !ctx
        .store
        .transition(lease, &[from], RunState::Applying, None)
        .await?
    {
        return Err(Failure("run changed state before applying".into()));
    }
    reporter.changed(ctx).await;
    let mut job = job_spec(
        &ctx.config(),
        &prepared.workspace,
        run.id,
        &run.head_sha,
        JobPhase::Apply { plan, init },
    );
    if prepared.gantry_state {
        // Only the apply may write the state.
        let config = ctx.config();
        let base = crate::state::backend_base(&config, ctx.local_addr);
        let creds = crate::state::run_credentials(
            &ctx.store,
            &base,
            &prepared.workspace.name,
            run.id,
            crate::state::Access::Write,
        )
        .await?;
        job.backend = Some(BackendConfig {
            env: backend_env_vars(creds),
        });
    }
    let result = prepared.runner.run(&job, log, cancel).await;
    if let Err(RunnerError::PlanTampered { expected, actual }) = &result {
        return Err(refuse_tampered_plan(ctx, run, expected, actual).await);
    }
    match &result {
        Ok(out) => ctx.store.set_apply_text(run.id, &out.text).await?,
        Err(RunnerError::Failed { message, .. }) => {
            ctx.store.set_apply_text(run.id, message).await?
        }
        Err(_) => {}
    }
    if let Err(e) = &result {
        lock_unfinished_apply(ctx, run, prepared, e).await;
    }
    result?;
    ctx.store
        .transition(lease, &[RunState::Applying], RunState::Applied, None)
        .await?;
    Ok(())
}

/// An apply that did not finish (timed out, canceled, or whose state could
/// not be stored) leaves the infrastructure in an unknown state: the
/// workspace is locked with the reason and the audit log says so. The state
/// terraform could not store (`errored.tfstate`) is kept in the spool.
/// An apply stopped by shutdown is left to the reaper, which does the same.
async fn lock_unfinished_apply(ctx: &Deps, run: &Run, prepared: &Prepared, error: &RunnerError) {
    if matches!(error, RunnerError::Canceled) && ctx.shutdown.is_cancelled() {
        return;
    }
    let spooled = if prepared.gantry_state {
        let why = format!("state left by run {}'s unfinished apply", run.id);
        crate::state::spool_errored(
            &ctx.store,
            &run.workspace,
            run.id,
            &prepared.workdir,
            &why,
        )
        .await
        .unwrap_or_else(|e| {
            tracing::error!(run.id = run.id, error = %e, "spooling the state of run {} failed", run.id);
            None
        })
    } else {
        None
    };
    let what = match error {
        RunnerError::TimedOut {
            step: "apply",
            after,
        } => format!(
            "apply of run {} timed out after {}",
            run.id,
            humantime::format_duration(*after)
        ),
        RunnerError::Canceled => format!("apply of run {} was canceled", run.id),
        _ if spooled.is_some() => format!("apply of run {} could not store its state", run.id),
        // A plain failed apply: terraform stored what it did.
        _ => return,
    };
    let reason = match spooled {
        Some(id) => format!("{what}; the state it could not store is kept as spooled state {id}"),
        None => what,
    };
    tracing::error!(run.id = run.id, workspace.name = %run.workspace, "{reason}; locking {}", run.workspace);
    if let Err(e) = ctx
        .store
        .lock_workspace(&run.workspace, &reason, "gantry", Some(run.id))
        .await
    {
        tracing::error!(run.id = run.id, error = %e, "locking {} failed", run.workspace);
    }
    if let Err(e) = ctx
        .store
        .audit(Audit {
            actor: "gantry",
            action: "lock",
            workspace: Some(&run.workspace),
            run_id: Some(run.id),
            commit_sha: Some(&run.head_sha),
            detail: Some(&reason),
        })
        .await
    {
        tracing::error!(run.id = run.id, error = %e, "auditing run {} failed", run.id);
    }
}

/// The saved plan is not the plan that was reviewed: nothing is applied, the
/// workspace is locked with the reason, and the audit log says so.
async fn refuse_tampered_plan(ctx: &Deps, run: &Run, expected: &str, actual: &str) -> Failure {
    let reason = format!(
        "plan file of run {} changed after it was reviewed (sha256 {actual}, expected {expected}); apply refused",
        run.id
    );
    tracing::error!(run.id = run.id, workspace.name = %run.workspace, "{reason}");
    if let Err(e) = ctx
        .store
        .lock_workspace(&run.workspace, &reason, "gantry", Some(run.id))
        .await
    {
        tracing::error!(run.id = run.id, error = %e, "locking {} failed", run.workspace);
    }
    if let Err(e) = ctx
        .store
        .audit(Audit {
            actor: "gantry",
            action: "apply refused: plan integrity",
            workspace: Some(&run.workspace),
            run_id: Some(run.id),
            commit_sha: Some(&run.head_sha),
            detail: Some(&reason),
        })
        .await
    {
        tracing::error!(run.id = run.id, error = %e, "auditing run {} failed", run.id);
    }
    Failure(format!("apply refused: {reason}"))
}

/// Reports the run's state whenever it changes, through the outbox: the
/// status and comment rows are stored before the worker goes on.
struct RunReporter {
    run_id: i64,
}

impl RunReporter {
    /// The run's state changed: queue its reports.
    async fn changed(&self, ctx: &Deps) {
        crate::outbox::run_changed(&ctx.outbox, self.run_id).await;
    }
}
