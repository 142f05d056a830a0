//! The live settings: the config, the VCS providers built from it and the
//! redactor that masks its secrets, swapped together on hot reload.
//!
//! Everything that reads the config at work time holds a [`Settings`] (a cheap
//! clone) and reads it at each use, so a reload applies to the next read.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, EnvFn, SharedConfig};
use crate::redact::Redactor;
use crate::vcs::Providers;

#[derive(Clone)]
pub struct Settings {
    config: SharedConfig,
    providers: Arc<ArcSwap<Providers>>,
    /// Masks the config's secrets. The process-wide `redact::global()` (the
    /// log's) is set to the same one.
    redactor: Arc<ArcSwap<Redactor>>,
    /// The environment the config's `*_env` names are read from (also at
    /// reload and for each run's variables).
    pub env: EnvFn,
}

impl Settings {
    /// Builds the providers and the redactor of `config`, and makes that
    /// redactor the process-wide one.
    pub fn new(config: Config, env: EnvFn) -> anyhow::Result<Settings> {
        let (redactor, providers) = derived(&config)?;
        Ok(Settings {
            config: Arc::new(ArcSwap::from_pointee(config)),
            providers: Arc::new(ArcSwap::from_pointee(providers)),
            redactor: Arc::new(ArcSwap::new(redactor)),
            env,
        })
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The config handle itself, for what reads it on its own schedule
    /// (retention, the state backend, the reload watcher).
    pub fn shared_config(&self) -> &SharedConfig {
        &self.config
    }

    pub fn providers(&self) -> Arc<Providers> {
        self.providers.load_full()
    }

    /// The redactor for the current config: every way out goes through it.
    pub fn redactor(&self) -> Arc<Redactor> {
        self.redactor.load_full()
    }

    /// Swaps in a new configuration (hot reload), with its providers and
    /// redactor; nothing is swapped if the providers cannot be built.
    pub fn apply(&self, config: Config) -> anyhow::Result<()> {
        let (redactor, providers) = derived(&config)?;
        self.redactor.store(redactor);
        self.providers.store(Arc::new(providers));
        self.config.store(Arc::new(config));
        Ok(())
    }
}

/// The redactor and providers of `config`; the redactor also becomes the
/// process-wide one.
fn derived(config: &Config) -> anyhow::Result<(Arc<Redactor>, Providers)> {
    let redactor = Arc::new(Redactor::for_config(config));
    let providers = Providers::with_redactor(config, redactor.clone())?;
    crate::redact::set_global(Redactor::clone(&redactor));
    Ok((redactor, providers))
}
