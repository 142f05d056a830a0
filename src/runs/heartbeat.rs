//! A run's heartbeat: keeps the worker's lease on its run, and fences the run
//! off when the lease cannot be kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{Lease, Store};

/// Why a run stopped when its replica could not keep the lease.
pub const LEASE_LOST: &str = "lease lost";

/// Renews a run's lease every quarter lease while the run works. A cancel
/// request stops the run. So does losing the lease (fencing): when another
/// holder has it, or when no renewal succeeded for three quarters of the lease
/// (the database is unreachable, or too slow), the run's token is canceled
/// with [`LEASE_LOST`], leaving the last quarter for terraform to exit before
/// any other replica may reap the run and start on its workspace.
pub struct Heartbeat {
    task: tokio::task::JoinHandle<()>,
    lost: Arc<AtomicBool>,
}

impl Heartbeat {
    /// Starts renewing `lease` (just claimed) for `duration` at a time.
    pub fn spawn(
        store: Store,
        lease: Lease,
        duration: Duration,
        cancel: CancellationToken,
    ) -> Heartbeat {
        let lost = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(beat(store, lease, duration, cancel, lost.clone()));
        Heartbeat { task, lost }
    }

    /// Stops renewing. True when the run was fenced: its lease was lost, and
    /// whatever this worker would still write about the run is stale.
    pub fn stop(self) -> bool {
        self.task.abort();
        self.lost.load(Ordering::SeqCst)
    }
}

async fn beat(
    store: Store,
    lease: Lease,
    duration: Duration,
    cancel: CancellationToken,
    lost: Arc<AtomicBool>,
) {
    let id = lease.id;
    let fence = || {
        tracing::warn!(
            run.id = id,
            "run {id}: {LEASE_LOST}; stopping its terraform"
        );
        lost.store(true, Ordering::SeqCst);
        cancel.cancel();
    };
    let every = duration / 4;
    let hold_for = duration - duration / 4;
    // The claim was made just before; renewals count from when they were sent.
    let mut renewed = Instant::now();
    let mut next = renewed + every;
    loop {
        let fence_at = renewed + hold_for;
        tokio::select! {
            _ = tokio::time::sleep_until(next.min(fence_at)) => {}
            _ = cancel.cancelled() => return,
        }
        if Instant::now() >= fence_at {
            return fence();
        }
        let sent = Instant::now();
        match tokio::time::timeout_at(fence_at, store.heartbeat(&lease, duration)).await {
            Ok(Ok(Some(false))) => {
                renewed = sent;
                next = sent + every;
            }
            Ok(Ok(Some(true))) => {
                tracing::info!(run.id = id, "run {id} cancel requested");
                cancel.cancel();
                return;
            }
            Ok(Ok(None)) => {
                // Reaped or claimed again (or its worker just finished it).
                if !cancel.is_cancelled() {
                    fence();
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(run.id = id, error = %e, "heartbeat of run {id} failed; retrying");
                next = Instant::now() + (every / 4).max(Duration::from_millis(100));
            }
            Err(_) => return fence(),
        }
    }
}
