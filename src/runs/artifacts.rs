//! A run's artifacts between the runner and the store: the log written while
//! the run goes, the saved plan kept once it is made, and the plan an apply
//! loads back, on whichever replica it runs.

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::runner::{LogSink, PlanArtifacts, PlanFile};
use crate::runs::Run;
use crate::store::{ArtifactKind, Store, StoreResult};

/// How often streamed log lines are written to the store: a run killed with
/// SIGKILL loses at most this much of its log.
const LOG_FLUSH: Duration = Duration::from_secs(1);

/// Buffered log text written at once, whatever the clock says.
const LOG_FLUSH_BYTES: usize = 64 * 1024;

/// The log of one run: lines the runner streams are appended to the store
/// every second (one row per flush), and folded into the run's compressed
/// `log` artifact when [`RunLog::finish`] is called.
pub struct RunLog {
    tx: mpsc::UnboundedSender<String>,
    task: tokio::task::JoinHandle<()>,
}

impl RunLog {
    pub fn start(store: Store, run_id: i64) -> RunLog {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let task = tokio::spawn(async move {
            let mut buf = String::new();
            let mut tick = tokio::time::interval(LOG_FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    chunk = rx.recv() => match chunk {
                        Some(chunk) => {
                            buf.push_str(&chunk);
                            if buf.len() >= LOG_FLUSH_BYTES {
                                flush(&store, run_id, &mut buf).await;
                            }
                        }
                        None => break,
                    },
                    _ = tick.tick() => flush(&store, run_id, &mut buf).await,
                }
            }
            flush(&store, run_id, &mut buf).await;
            if let Err(e) = store.fold_log(run_id).await {
                // The chunks stay readable; folding is only compaction.
                tracing::warn!(run.id = run_id, error = %e, "folding the log of run {run_id} failed");
            }
        });
        RunLog { tx, task }
    }

    /// Where the runner streams the log.
    pub fn sink(&self) -> &dyn LogSink {
        &self.tx
    }

    /// Writes what is left and folds the log into its artifact.
    pub async fn finish(self) {
        drop(self.tx);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "run log writer failed");
        }
    }
}

/// Appends the buffered text; on failure it stays buffered for the next try.
async fn flush(store: &Store, run_id: i64, buf: &mut String) {
    if buf.is_empty() {
        return;
    }
    match store.append_log(run_id, buf).await {
        Ok(()) => buf.clear(),
        Err(e) => {
            tracing::warn!(run.id = run_id, error = %e, "writing the log of run {run_id} failed")
        }
    }
}

/// Keeps what a plan made: its plan JSON, and (`with_file`: a plan that may be
/// applied) the plan file itself.
pub async fn keep_plan(
    store: &Store,
    run_id: i64,
    plan: &PlanArtifacts,
    with_file: bool,
) -> StoreResult<()> {
    if with_file {
        store
            .put_artifact(run_id, ArtifactKind::PlanFile, &plan.file.bytes)
            .await?;
    }
    store
        .put_artifact(run_id, ArtifactKind::PlanJson, &plan.json)
        .await?;
    Ok(())
}

/// The plan `run` made, as the store has it, with the sha256 recorded when it
/// was reviewed: the runner applies it only if the two agree. `Err` says why
/// there is nothing to apply.
///
/// A plan made before artifacts moved to the store (kept under
/// `data_dir/runs/<id>/` by the replica that made it) is taken into the store
/// on first use, so runs waiting for a confirmation survive the upgrade.
pub async fn load_plan(store: &Store, run: &Run, data_dir: &Path) -> Result<PlanFile, String> {
    let sha256 = run
        .plan_sha256
        .clone()
        .ok_or("no checksum was recorded for the plan; re-plan")?;
    let stored = store
        .artifact(run.id, ArtifactKind::PlanFile)
        .await
        .map_err(|e| format!("loading the saved plan: {e}"))?;
    let bytes = match stored {
        Some(a) => a.bytes,
        None => {
            let legacy = data_dir
                .join("runs")
                .join(run.id.to_string())
                .join("plan.tfplan");
            let bytes = tokio::fs::read(&legacy)
                .await
                .map_err(|_| "the saved plan file is missing; re-plan".to_string())?;
            store
                .put_artifact(run.id, ArtifactKind::PlanFile, &bytes)
                .await
                .map_err(|e| format!("storing the saved plan: {e}"))?;
            let _ = tokio::fs::remove_file(&legacy).await;
            bytes
        }
    };
    Ok(PlanFile { bytes, sha256 })
}
