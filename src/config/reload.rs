//! Hot reload: watch the config file (its directory, since editors replace
//! files) and swap in each valid edit; an invalid one is logged with the same
//! messages as `gantry config check` and the running config stays.

use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EnvFn, SharedConfig};

/// Edits arriving within this window are applied once.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// What a reload reads, and how it swaps in a new config.
pub struct Reloader {
    /// The running config (its `source` is the file read again).
    pub config: SharedConfig,
    pub env: EnvFn,
    /// Swaps in a valid new config, with everything built from it; an error
    /// keeps the running one.
    pub apply: Box<dyn Fn(Config) -> anyhow::Result<()> + Send + Sync>,
}

/// Starts watching; the returned future ends at shutdown.
pub fn watch(
    reloader: Reloader,
    shutdown: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let path = reloader.config.load().source.clone();
    let abs = std::path::absolute(&path)?;
    let dir = abs
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| ".".into());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let file_name = abs.file_name().map(|f| f.to_os_string());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|f| f.to_os_string()) == file_name)
            {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
                _ = shutdown.cancelled() => return,
            }
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            reload(&reloader);
        }
    })
}

/// Loads the config file again and applies it if valid. Returns whether it was applied.
pub fn reload(reloader: &Reloader) -> bool {
    let old = reloader.config.load_full();
    let path = old.source.clone();
    match Config::load(&path, &*reloader.env) {
        Ok(new) => {
            if new.listen != old.listen || new.data_dir != old.data_dir {
                tracing::warn!("listen and data_dir changes take effect after a restart");
            }
            let (added, removed) = diff_names(&old, &new);
            match (reloader.apply)(new) {
                Ok(()) => {
                    tracing::info!(added = ?added, removed = ?removed, "configuration reloaded from {}", path.display());
                    true
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "configuration not reloaded");
                    false
                }
            }
        }
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!("configuration not reloaded: {e}");
            }
            false
        }
    }
}

fn diff_names(old: &Config, new: &Config) -> (Vec<String>, Vec<String>) {
    let added = new
        .workspaces
        .iter()
        .filter(|w| old.workspace(&w.name).is_none())
        .map(|w| w.name.clone())
        .collect();
    let removed = old
        .workspaces
        .iter()
        .filter(|w| new.workspace(&w.name).is_none())
        .map(|w| w.name.clone())
        .collect();
    (added, removed)
}
