//! What guards an apply: the checks before it may start (refused otherwise),
//! and the lock on a workspace whose infrastructure a run may have left in an
//! unknown state, with the reason and an audit entry: an apply that did not
//! finish, or a saved plan that is not the one that was reviewed. An apply
//! stopped by shutdown is left to the reaper, which locks the same way.

use std::path::Path;

use crate::policy::groups::Verdict;
use crate::runner::RunnerError;
use crate::runs::execute::policy_block_reason;
use crate::runs::execute::Deps;
use crate::runs::outcome::{tampered_reason, Failure};
use crate::runs::Run;
use crate::store::Audit;

/// Why the saved plan of `run` may not be applied now, if it may not.
pub async fn check_applicable(ctx: &Deps, run: &Run) -> Result<(), Failure> {
    let ws = &run.workspace;
    if let Some(lock) = ctx.store.workspace_lock(ws).await? {
        let locked = lock.reason;
        return Err(Failure::Refused(format!(
            "workspace {ws} is locked ({locked})"
        )));
    }
    if matches!(
        run.policy_verdict(),
        Verdict::HardBlocked | Verdict::SoftBlocked
    ) {
        return Err(Failure::Refused(policy_block_reason(run)));
    }
    let planned_at = run
        .planned_at
        .ok_or_else(|| Failure::Refused("the run has no plan".into()))?;
    if let Some(other) = ctx.store.applied_since(ws, planned_at, run.id).await? {
        return Err(Failure::Refused(format!(
            "the plan is stale, run {other} applied to {ws} after it was made; re-plan"
        )));
    }
    let now = crate::state::current_version(&ctx.store, ws).await?;
    if run.state_version_at_plan.is_some_and(|v| v != now) {
        return Err(Failure::Refused(format!(
            "the plan is stale, the state of {ws} changed after it was made; re-plan"
        )));
    }
    Ok(())
}

/// An apply that did not finish (timed out, canceled, or whose state could
/// not be stored) leaves the infrastructure in an unknown state: the
/// workspace is locked with the reason and the audit log says so. The state
/// terraform could not store (`errored.tfstate`) is kept in the spool.
/// `workdir` is where terraform ran, for gantry-kept state (`gantry_state`).
pub async fn lock_unfinished_apply(
    ctx: &Deps,
    run: &Run,
    gantry_state: bool,
    workdir: &Path,
    error: &RunnerError,
) {
    if matches!(error, RunnerError::Canceled) && ctx.shutdown.is_cancelled() {
        return;
    }
    if let RunnerError::AgentLost { .. } = error {
        // As the reaper does for a replica that vanished mid-apply.
        let reason = format!(
            "run {} was interrupted during apply; check the state, then unlock",
            run.id
        );
        lock_as(ctx, run, "lock", &reason, "interrupted during apply").await;
        return;
    }
    let spooled = if gantry_state {
        let why = format!("state left by run {}'s unfinished apply", run.id);
        crate::state::spool_errored(&ctx.store, &run.workspace, run.id, workdir, &why)
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
    lock(ctx, run, "lock", &reason).await;
}

/// The saved plan is not the plan that was reviewed: nothing is applied, the
/// workspace is locked with the reason, and the audit log says so.
pub async fn refuse_tampered_plan(ctx: &Deps, run: &Run, expected: &str, actual: &str) -> Failure {
    let reason = tampered_reason(run.id, expected, actual);
    lock(ctx, run, "apply refused: plan integrity", &reason).await;
    Failure::Tampered {
        run_id: run.id,
        expected: expected.to_string(),
        actual: actual.to_string(),
    }
}

/// Locks `run`'s workspace for `reason` and audits it as `action`. Failures
/// are logged: the run's own end is recorded either way.
async fn lock(ctx: &Deps, run: &Run, action: &str, reason: &str) {
    lock_as(ctx, run, action, reason, reason).await
}

/// [`lock`], with the audit entry's own `detail`.
async fn lock_as(ctx: &Deps, run: &Run, action: &str, reason: &str, detail: &str) {
    tracing::error!(run.id = run.id, workspace.name = %run.workspace, "{reason}; locking {}", run.workspace);
    if let Err(e) = ctx
        .store
        .lock_workspace(&run.workspace, reason, "gantry", Some(run.id))
        .await
    {
        tracing::error!(run.id = run.id, error = %e, "locking {} failed", run.workspace);
    }
    if let Err(e) = ctx
        .store
        .audit(Audit {
            actor: "gantry",
            action,
            workspace: Some(&run.workspace),
            run_id: Some(run.id),
            commit_sha: Some(&run.head_sha),
            detail: Some(detail),
        })
        .await
    {
        tracing::error!(run.id = run.id, error = %e, "auditing run {} failed", run.id);
    }
}
