//! The background loops over the durable queues in the database: the
//! dispatcher (stored webhook events → runs), the worker pool (runs →
//! terraform), and the reaper (claims whose holder died).
//!
//! Each loop claims work with a lease, wakes on an in-process notification and
//! polls as a fallback, so another replica's work is picked up too.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::DRAIN_IN_FLIGHT;
use crate::git::Mirrors;
use crate::outbox::Outbox;
use crate::policy::groups::Policies;
use crate::runs::{dispatch, execute};
use crate::settings::Settings;
use crate::store::{EventsStored, RunsQueued, Store};

const POLL: Duration = Duration::from_secs(1);
const REAP_EVERY: Duration = Duration::from_secs(15);

/// Waits for a wake-up, the poll interval, or shutdown. False on shutdown.
async fn idle(wake: impl std::future::Future<Output = ()>, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = wake => true,
        _ = tokio::time::sleep(POLL) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Dispatches stored events one at a time per repository (the claim query
/// enforces that), up to two repositories at once.
pub async fn dispatcher(
    ctx: Arc<dispatch::Deps>,
    events_stored: EventsStored,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(2));
    let mut running = JoinSet::new();
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => break,
        };
        let node = ctx.settings.config().node_id.clone();
        let lease = ctx.settings.config().queue.lease;
        match ctx.store.claim_event(&node, lease).await {
            Ok(Some((event, lease))) => {
                let ctx = ctx.clone();
                running.spawn(async move {
                    crate::runs::dispatch::dispatch(&ctx, event, lease).await;
                    drop(permit);
                });
            }
            Ok(None) => {
                drop(permit);
                if !idle(events_stored.notified(), &shutdown).await {
                    break;
                }
            }
            Err(e) => {
                drop(permit);
                tracing::error!(error = %e, "claiming an event failed");
                if !idle(events_stored.notified(), &shutdown).await {
                    break;
                }
            }
        }
        while running.try_join_next().is_some() {}
    }
    // Draining: dispatches in flight get a moment, then are abandoned (their
    // events are handed back at exit, for another replica).
    let finish = async { while running.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_IN_FLIGHT, finish).await.is_err() {
        tracing::warn!(
            dispatches = running.len(),
            "abandoning dispatches still in flight"
        );
        running.shutdown().await;
    }
}

/// Runs up to `concurrency` runs at once (re-read from the config on every
/// claim, so a reload can raise or lower it).
pub async fn workers(ctx: Arc<execute::Deps>, runs_queued: RunsQueued) {
    let mut running = JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        if ctx.shutdown.is_cancelled() {
            break;
        }
        let limit = ctx.config().concurrency;
        if running.len() >= limit {
            tokio::select! {
                _ = running.join_next() => continue,
                _ = ctx.shutdown.cancelled() => break,
            }
        }
        let node = ctx.config().node_id.clone();
        let lease = ctx.config().queue.lease;
        match ctx.store.claim_run(&node, lease).await {
            Ok(Some((run, lease))) => {
                let ctx = ctx.clone();
                running.spawn(crate::runs::execute::execute(ctx, run, lease));
            }
            Ok(None) => {
                if !idle(runs_queued.notified(), &ctx.shutdown).await {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "claiming a run failed");
                if !idle(runs_queued.notified(), &ctx.shutdown).await {
                    break;
                }
            }
        }
    }
    // Runs in flight see the drain: plans stop and go back to the queue,
    // applies finish (or are interrupted when `shutdown_grace` is over).
    while running.join_next().await.is_some() {}
}

/// Takes back runs and events whose holder stopped heartbeating (their lease
/// expired), checking every quarter lease (at most every 15 s).
pub async fn reaper(
    store: Store,
    settings: Settings,
    outbox: Outbox,
    runs_queued: RunsQueued,
    shutdown: CancellationToken,
) {
    loop {
        let every = (settings.config().queue.lease / 4).min(REAP_EVERY);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => break,
        }
        match store.reap_runs().await {
            Ok(runs) if !runs.is_empty() => {
                for r in &runs {
                    tracing::warn!(run.id = r.id, workspace.name = %r.workspace, "run {} lost its worker; marked interrupted", r.id);
                }
                // Their final statuses and comments were queued with their end.
                outbox.reports_queued();
                runs_queued.notify();
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "reaping runs failed"),
        }
        if let Err(e) = store.reap_events().await {
            tracing::error!(error = %e, "reaping events failed");
        }
        if let Err(e) = store.reap_reports().await {
            tracing::error!(error = %e, "reaping reports failed");
        }
    }
}

/// How often policy groups are fetched even without a push webhook.
const POLICY_SYNC_EVERY: Duration = Duration::from_secs(600);

/// Loads every policy group at start, then keeps them fresh: fetched every
/// `POLICY_SYNC_EVERY` (a push webhook reloads at once), and the sets other
/// replicas store are picked up within seconds (`groups::watch`).
pub async fn policy_sync(policies: Policies, shutdown: CancellationToken) {
    // Listening before the first load, so no change after it is missed.
    let (listening, ready) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(crate::policy::groups::watch(
        policies.clone(),
        shutdown.clone(),
        move || {
            let _ = listening.send(());
        },
    ));
    let _ = ready.await;
    loop {
        let pass = async {
            for g in policies.settings.config().policy_groups.clone() {
                if let Err(e) = crate::policy::groups::sync(&policies, &g).await {
                    tracing::warn!(policy_group = %g.name, "policy group {} not synced: {e}", g.name);
                }
            }
        };
        tokio::select! {
            _ = pass => {}
            // A sync may wait on the VCS API; a shutdown does not.
            _ = shutdown.cancelled() => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(POLICY_SYNC_EVERY) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    let _ = watcher.await;
}

/// What the drift scheduler uses.
#[derive(Clone)]
pub struct DriftDeps {
    pub settings: Settings,
    pub store: Store,
    /// Fetches each workspace's branch head, the commit a check plans.
    pub mirrors: Mirrors,
    pub runs_queued: RunsQueued,
}

/// How often the drift scheduler looks for due ticks.
const DRIFT_EVERY: Duration = Duration::from_secs(20);

/// Queues the drift checks due at `now`: for each workspace with a schedule,
/// the latest tick whose jittered start has passed and that no replica has
/// handled (ticks missed while down come back as one; a schedule does not
/// backfill ticks from before `since`). Each tick is claimed once in the
/// database; a workspace with a run active or queued has the tick recorded
/// as skipped.
pub async fn drift_pass(
    ctx: &DriftDeps,
    since: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, crate::store::TickOutcome)> {
    let config = ctx.settings.config();
    let mut out = Vec::new();
    for ws in &config.workspaces {
        let Some(schedule) = &ws.drift_schedule else {
            continue;
        };
        let last = match ctx.store.last_drift_tick(&ws.name).await {
            Ok(l) => l.and_then(chrono::DateTime::from_timestamp_millis),
            Err(e) => {
                tracing::warn!(workspace.name = %ws.name, error = %e, "reading drift ticks failed");
                continue;
            }
        };
        let Some(tick) = schedule.due_within(&ws.name, last, since, now, config.drift_jitter)
        else {
            continue;
        };
        let Some(provider) = ctx.settings.providers().get(&ws.provider) else {
            continue;
        };
        let branch_ref = format!("refs/heads/{}", ws.branch);
        let head = ctx.mirrors.fetch_branch(&*provider, &ws.repo, &ws.branch);
        let sha = match head.await {
            Ok((_, sha)) => sha,
            Err(e) => {
                // Not recorded: the next pass tries this tick again.
                tracing::warn!(workspace.name = %ws.name, "drift check of {} not queued: {e}", ws.name);
                continue;
            }
        };
        let run = crate::store::NewRun {
            workspace: ws.name.clone(),
            event_id: None,
            kind: crate::runs::RunKind::Drift,
            source: crate::runs::RunSource::Schedule,
            provider_id: ws.provider.clone(),
            repo: ws.repo.clone(),
            branch: ws.branch.clone(),
            pr_number: None,
            head_sha: sha,
            git_ref: branch_ref,
            head_repo: None,
        };
        match ctx
            .store
            .claim_drift_tick(tick.timestamp_millis(), &run)
            .await
        {
            Ok(outcome) => {
                match &outcome {
                    crate::store::TickOutcome::Queued(r) => {
                        tracing::info!(workspace.name = %ws.name, run.id = r.id, "drift check {} queued for the {} tick", r.id, tick);
                        ctx.runs_queued.notify();
                    }
                    crate::store::TickOutcome::Skipped => {
                        tracing::info!(workspace.name = %ws.name, "drift tick {tick} skipped: a run is active or queued")
                    }
                    crate::store::TickOutcome::AlreadyHandled => {}
                }
                out.push((ws.name.clone(), outcome));
            }
            Err(e) => {
                tracing::warn!(workspace.name = %ws.name, error = %e, "claiming a drift tick failed")
            }
        }
    }
    out
}

/// Runs [`drift_pass`] every few seconds until shutdown.
pub async fn drift_scheduler(ctx: DriftDeps, shutdown: CancellationToken) {
    let since = chrono::Utc::now();
    loop {
        tokio::select! {
            _ = drift_pass(&ctx, since, chrono::Utc::now()) => {}
            _ = shutdown.cancelled() => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(DRIFT_EVERY) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}
