//! Takes one claimed run through its phases, as a straight line:
//!
//! ```text
//! fetch ─▶ checkout ─▶ plan ─▶ evaluate ─▶ decide ─▶ apply    (plan and apply runs)
//!                        └───▶ drift report                   (drift checks)
//! fetch ─▶ checkout ─▶ apply                                  (a confirmed apply)
//! ```
//!
//! Each phase returns a [`Failure`] when it stops short; the phases together
//! give a [`RunOutcome`], and `finish` alone decides what it means: the end
//! is recorded with its report in one transaction, or the run goes back to
//! the queue (this replica drains), or it is left to the reaper (the lease was
//! lost). States in between (`planning`, `applying`) are reported through the
//! outbox as they are reached.
//!
//! An apply only ever applies the plan file of its own run, and only when
//! nothing was applied to the workspace since that plan was made and the
//! workspace is not locked.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::git::Mirrors;
use crate::outbox::Outbox;
use crate::policy::groups::Policies;
use crate::policy::groups::Verdict;
use crate::policy::tfrun::tfrun;
use crate::policy::EnforcementLevel;
use crate::redact::Redactor;
use crate::runner::Sandbox;
use crate::runner::{JobPhase, LogSink, PlanArtifacts, RunnerError};
use crate::runs::artifacts::RunLog;
use crate::runs::guard::{self, lock_unfinished_apply, refuse_tampered_plan};
use crate::runs::heartbeat::{Heartbeat, LEASE_LOST};
use crate::runs::job::{self, backend_config, job_spec, work_dir, Checkout};
use crate::runs::outcome::{Disposal, Failure, RunOutcome};
use crate::runs::running::Running;
use crate::runs::{Run, RunKind, RunState};
use crate::settings::Settings;
use crate::store::Store;
use crate::store::{Audit, Lease, StoreError};
use std::net::SocketAddr;

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

/// The states a worker ends a run from.
const ACTIVE: [RunState; 3] = [RunState::Fetching, RunState::Planning, RunState::Applying];

#[tracing::instrument(skip_all, fields(run.id = run.id, workspace.name = %run.workspace))]
pub async fn execute(ctx: Arc<Deps>, run: Run, lease: Lease) {
    let ctx = &ctx;
    let started = std::time::Instant::now();
    crate::outbox::run_changed(&ctx.outbox, run.id).await;

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

    let phases = Phases {
        ctx,
        run: &run,
        lease: &lease,
        cancel: &before_apply,
        log: log.sink(),
    };
    let outcome = phases.run().await.unwrap_or_else(RunOutcome::Failed);

    log.finish().await;
    drain.abort();
    let fenced = heartbeat.stop();
    ctx.running.unregister_run(run.id);
    let _ = tokio::fs::remove_dir_all(work_dir(&ctx.config(), run.id)).await;
    finish(ctx, &run, &lease, outcome, fenced, &cancel, started).await;
}

/// Ends the run as its outcome says (see [`RunOutcome::disposal`]).
async fn finish(
    ctx: &Deps,
    run: &Run,
    lease: &Lease,
    outcome: RunOutcome,
    fenced: bool,
    cancel: &CancellationToken,
    started: std::time::Instant,
) {
    match outcome.disposal(fenced, ctx.shutdown.is_cancelled()) {
        Disposal::LeaveToReaper => {
            // terraform was stopped before the lease ran out; the reaper of
            // whichever replica ends the run.
            tracing::warn!(?outcome, "run {} stopped: {LEASE_LOST}", run.id);
            return;
        }
        Disposal::HandBack => {
            let node = ctx.config().node_id.clone();
            match ctx.store.requeue_run(lease, &node).await {
                Ok(true) => {
                    // Another replica takes it at once.
                    tracing::info!(
                        "run {} handed back to the queue: this replica is shutting down",
                        run.id
                    );
                    crate::outbox::run_changed(&ctx.outbox, run.id).await;
                    return;
                }
                // A cancel request during the drain: recorded like any other.
                Ok(false) if cancel.is_cancelled() && !ctx.stop_runs.is_cancelled() => {}
                result => {
                    if let Err(e) = result {
                        tracing::error!(error = %e, "handing run {} back to the queue failed", run.id);
                    }
                    // Left active with its lease ended now that terraform has
                    // stopped: the reaper (of another replica, or of this one
                    // as it exits) marks it interrupted at once; an apply
                    // locks its workspace.
                    tracing::warn!("run {} interrupted by shutdown", run.id);
                    if let Err(e) = ctx.store.expire_lease(lease).await {
                        tracing::warn!(error = %e, "releasing the lease of run {} failed", run.id);
                    }
                    return;
                }
            }
        }
        Disposal::Record => {}
    }
    let (to, reason, failure) = outcome.end();
    if failure.is_some() {
        tracing::warn!(
            reason = reason.as_deref().unwrap_or_default(),
            "run {} {to}",
            run.id
        );
    }
    let recorded = ctx
        .store
        .transition_and_report(lease, &ACTIVE, to, failure, reason.as_deref())
        .await;
    match recorded {
        Ok(true) => {
            let duration_ms = started.elapsed().as_millis() as u64;
            tracing::info!(state = %to, duration_ms, "run {} finished: {to}", run.id);
            ctx.outbox.reports_queued();
        }
        // Moved by someone else meanwhile: report it as it is.
        Ok(false) => crate::outbox::run_changed(&ctx.outbox, run.id).await,
        Err(e @ StoreError::LeaseLost { .. }) => {
            tracing::warn!("the end of run {} was not recorded: {e}", run.id)
        }
        Err(e) => tracing::error!(error = %e, "recording the end of run {} failed", run.id),
    }
}

/// One run's phases, and what each of them needs.
struct Phases<'a> {
    ctx: &'a Deps,
    run: &'a Run,
    lease: &'a Lease,
    /// Stops terraform: a cancel request, a lost lease, or (before an apply)
    /// this replica draining.
    cancel: &'a CancellationToken,
    log: &'a dyn LogSink,
}

/// A saved plan, kept in the store.
struct Plan {
    artifacts: PlanArtifacts,
    /// A drift check found differences (`-detailed-exitcode`).
    changes: bool,
    /// The workspace's state version the plan saw (not for drift checks).
    state_version: Option<i64>,
}

/// What an apply run does once its plan is evaluated.
enum Decision {
    Apply,
    End(RunOutcome),
}

impl Phases<'_> {
    async fn run(&self) -> Result<RunOutcome, Failure> {
        if self.run.apply_requested {
            // Confirmed: apply the plan this run made earlier.
            guard::check_applicable(self.ctx, self.run).await?;
            let work = self.working_copy().await?;
            return self.apply(&work, RunState::Fetching, true).await;
        }
        let work = self.working_copy().await?;
        self.moved(RunState::Fetching, RunState::Planning, "while fetching")
            .await?;
        let plan = self.plan(&work).await?;
        if self.run.kind == RunKind::Drift {
            return self.drift_report(&work, &plan).await;
        }
        self.evaluate(&work, &plan).await?;
        if self.run.kind == RunKind::Plan {
            return Ok(RunOutcome::Planned(None));
        }
        match self.decide(&work, &plan).await? {
            Decision::End(outcome) => Ok(outcome),
            Decision::Apply => self.apply(&work, RunState::Planning, false).await,
        }
    }

    /// The run's commit, fetched and checked out, ready for terraform.
    async fn working_copy(&self) -> Result<Checkout, Failure> {
        let workspace = job::workspace(self.ctx, self.run)?;
        let mirror = job::fetch(self.ctx, self.run).await?;
        job::checkout(self.ctx, self.run, workspace, mirror).await
    }

    /// terraform init, plan and show; the plan is kept in the store (a drift
    /// check's only as JSON: it is never applied).
    async fn plan(&self, work: &Checkout) -> Result<Plan, Failure> {
        let (store, id) = (&self.ctx.store, self.run.id);
        let drift = self.run.kind == RunKind::Drift;
        let state_version = match drift {
            true => None,
            false => Some(crate::state::current_version(store, &work.workspace.name).await?),
        };
        let out = match work.runner.run(&work.job, self.log, self.cancel).await {
            Ok(out) => out,
            Err(e) => {
                if let RunnerError::Failed { message, .. } = &e {
                    // Kept for the comment's error section.
                    let _ = store.set_plan_text(id, message).await;
                }
                return Err(e.into());
            }
        };
        let artifacts = out
            .plan
            .ok_or_else(|| Failure::internal("the runner returned no plan"))?;
        crate::runs::artifacts::keep_plan(store, id, &artifacts, !drift).await?;
        store.set_plan_text(id, &out.text).await?;
        Ok(Plan {
            artifacts,
            changes: out.changes,
            state_version,
        })
    }

    /// Cost, then the policies that govern the workspace's environment;
    /// recorded on the run with the plan.
    async fn evaluate(&self, work: &Checkout, plan: &Plan) -> Result<(), Failure> {
        let (ctx, run, artifacts) = (self.ctx, self.run, &plan.artifacts);
        let cost = crate::cost::estimate(&artifacts.parsed, &ctx.config().pricing);
        ctx.store.set_cost_estimate(run.id, &cost).await?;
        let environment = &work.workspace.environment;
        let governed = ctx
            .config()
            .policy_groups
            .iter()
            .any(|g| g.environments.contains(environment));
        if governed {
            let tfrun = tfrun(
                &ctx.store,
                &ctx.mirrors,
                run,
                &work.workspace,
                &artifacts.summary,
                &cost,
            )
            .await;
            // Policies never see values terraform marks sensitive, so no deny
            // message can carry one into a comment.
            let mut masked = artifacts.parsed.clone();
            crate::redact::mask_sensitive_plan(&mut masked);
            let input = crate::policy::input(masked, tfrun);
            let checks = crate::policy::groups::evaluate(&ctx.policies, environment, &input).await;
            ctx.store.set_policy_results(run.id, &checks).await?;
        }
        let sha256 = Some(artifacts.file.sha256.as_str());
        ctx.store
            .record_plan(run.id, artifacts.summary, plan.state_version, sha256)
            .await?;
        Ok(())
    }

    /// An apply run (a merge): apply now, or wait for a confirmation.
    async fn decide(&self, work: &Checkout, plan: &Plan) -> Result<Decision, Failure> {
        let (ctx, run) = (self.ctx, self.run);
        let wait = |reason: String| Ok(Decision::End(RunOutcome::NeedsConfirmation(reason)));
        if !plan.artifacts.summary.has_changes() {
            let reason = Some("no changes to apply".to_string());
            return Ok(Decision::End(RunOutcome::Applied(reason)));
        }
        let planned = self.stored().await?;
        match planned.policy_verdict() {
            Verdict::HardBlocked => return Err(Failure::Refused(policy_block_reason(&planned))),
            Verdict::SoftBlocked => {
                let blocked = policy_block_reason(&planned);
                return wait(format!("{blocked}; override it, then confirm"));
            }
            Verdict::Passed | Verdict::Warned => {}
        }
        if let Some(lock) = ctx.store.workspace_lock(&work.workspace.name).await? {
            let locked = lock.reason;
            return wait(format!(
                "workspace is locked ({locked}); unlock it, then confirm"
            ));
        }
        if !work.workspace.auto_apply {
            return wait("waiting for confirmation".into());
        }
        ctx.store
            .audit(Audit {
                actor: "gantry (auto_apply)",
                action: "apply",
                workspace: Some(&work.workspace.name),
                run_id: Some(run.id),
                commit_sha: Some(&run.head_sha),
                detail: Some("applied on merge"),
            })
            .await?;
        Ok(Decision::Apply)
    }

    /// A drift check's end: its report (and notification); never an apply.
    async fn drift_report(&self, work: &Checkout, plan: &Plan) -> Result<RunOutcome, Failure> {
        let (ctx, run, artifacts) = (self.ctx, self.run, &plan.artifacts);
        let mode = work.workspace.drift_mode;
        let report = crate::drift::report(&artifacts.parsed, mode, plan.changes);
        ctx.store
            .add_drift_report(&run.workspace, run.id, &run.head_sha, &report)
            .await?;
        if let Some(notify) = &work.workspace.drift_notify {
            crate::outbox::notify_drift(&ctx.outbox, &work.workspace, run, &report, notify).await;
        }
        ctx.store
            .record_plan(run.id, artifacts.summary, None, None)
            .await?;
        Ok(RunOutcome::Planned(Some(match report.resources.len() {
            _ if !report.drifted => "no drift".to_string(),
            1 => "drift found in 1 resource".to_string(),
            n => format!("drift found in {n} resources"),
        })))
    }

    /// Applies the reviewed plan, from the store (whichever replica made it).
    /// `init`: the checkout is fresh (a confirmed apply), so terraform init
    /// runs first.
    async fn apply(
        &self,
        work: &Checkout,
        from: RunState,
        init: bool,
    ) -> Result<RunOutcome, Failure> {
        let (ctx, run) = (self.ctx, self.run);
        // Checked again at the last moment, with the run holding the workspace
        // (and as stored now: the plan was recorded after this run was claimed).
        let fresh = self.stored().await?;
        guard::check_applicable(ctx, &fresh).await?;
        if self.cancel.is_cancelled() {
            // Canceled, or this replica drains: no apply starts now.
            return Err(Failure::Canceled);
        }
        // Once applying, only a cancel request, a lost lease or the end of the
        // shutdown grace stops the run, not the start of a drain.
        let cancel = &ctx
            .running
            .run_token(run.id)
            .unwrap_or_else(|| self.cancel.clone());
        let plan = crate::runs::artifacts::load_plan(&ctx.store, &fresh, &ctx.config().data_dir)
            .await
            .map_err(Failure::Refused)?;
        self.moved(from, RunState::Applying, "before applying")
            .await?;
        let phase = JobPhase::Apply { plan, init };
        let mut job = job_spec(&ctx.config(), &work.workspace, run.id, &run.head_sha, phase);
        if work.gantry_state {
            // Only the apply may write the state.
            let base = crate::state::backend_base(&ctx.config(), ctx.local_addr);
            let (ws, write) = (&work.workspace.name, crate::state::Access::Write);
            let creds = crate::state::run_credentials(&ctx.store, &base, ws, run.id, write).await?;
            job.backend = Some(backend_config(creds));
        }
        match work.runner.run(&job, self.log, cancel).await {
            Ok(out) => ctx.store.set_apply_text(run.id, &out.text).await?,
            Err(RunnerError::PlanTampered { expected, actual }) => {
                return Err(refuse_tampered_plan(ctx, run, &expected, &actual).await);
            }
            Err(e) => {
                lock_unfinished_apply(ctx, run, work.gantry_state, &work.workdir, &e).await;
                if let RunnerError::Failed { message, .. } = &e {
                    ctx.store.set_apply_text(run.id, message).await?;
                }
                return Err(e.into());
            }
        }
        Ok(RunOutcome::Applied(None))
    }

    /// Moves the run on (and reports it); fails if something else moved it
    /// while it was `during`.
    async fn moved(&self, from: RunState, to: RunState, during: &str) -> Result<(), Failure> {
        let moved = self
            .ctx
            .store
            .transition(self.lease, &[from], to, None)
            .await?;
        if !moved {
            return Err(Failure::internal(format!("run changed state {during}")));
        }
        crate::outbox::run_changed(&self.ctx.outbox, self.run.id).await;
        Ok(())
    }

    /// The run as stored now.
    async fn stored(&self) -> Result<Run, Failure> {
        self.ctx
            .store
            .run(self.run.id)
            .await?
            .ok_or_else(|| Failure::internal("the run disappeared"))
    }
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
