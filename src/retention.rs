//! Retention: once an hour, one replica (the holder of the `retention`
//! maintenance lease) deletes plan files, logs, state versions and webhook
//! deliveries older than `retention:` keeps them. What it never deletes is in
//! `store::retention`. It takes only what it uses: the store, the live
//! configuration, the shutdown signal.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::SharedConfig;
use crate::store::{now_ms, Cutoffs, Store};

/// How often a pass runs.
const EVERY: Duration = Duration::from_secs(3600);

/// How long one replica holds the job: longer than a pass, shorter than the
/// time between passes, so a replica that goes away hands it on.
const LEASE: Duration = Duration::from_secs(600);

/// The cutoffs `config` sets, from `now` (Unix ms).
pub fn cutoffs(config: &crate::config::RetentionConfig, now: i64) -> Cutoffs {
    let before = |d: Duration| now - d.as_millis() as i64;
    Cutoffs {
        plans_before: before(config.plan_files),
        logs_before: before(config.logs),
        state_versions: config.state_versions,
        events_before: before(config.events),
    }
}

/// One pass, if this node holds (or takes) the lease.
pub async fn pass(store: &Store, config: &crate::config::Config) {
    match store
        .take_maintenance_lease("retention", &config.node_id, LEASE)
        .await
    {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(error = %e, "taking the retention lease failed");
            return;
        }
    }
    match store.prune(cutoffs(&config.retention, now_ms())).await {
        Ok(p) => tracing::info!(
            plan_artifacts = p.plan_artifacts,
            logs = p.logs,
            state_versions = p.state_versions,
            events = p.events,
            "retention pass done"
        ),
        Err(e) => tracing::warn!(error = %e, "retention pass failed"),
    }
}

/// Runs [`pass`] every hour until shutdown.
pub async fn retention(store: Store, config: SharedConfig, shutdown: CancellationToken) {
    loop {
        let snapshot = config.load_full();
        pass(&store, &snapshot).await;
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}
