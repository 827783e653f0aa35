//! Hot reload of a tenant's plugins in the daemon: when a plugin file changes, or on SIGHUP, the new
//! version is loaded and run over the tenant's current groups, and used only if every output is valid.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::attributes::SchemaSupport;
use crate::config::PluginsConfig;
use crate::plugins::{PluginEngine, TenantPlugins};
use crate::sync::{LoadedPolicy, TenantSync};

/// Set by SIGHUP: reload every tenant's plugins at the next cycle.
#[derive(Clone, Default)]
pub struct Trigger(Arc<AtomicBool>);

impl Trigger {
    /// A trigger that SIGHUP sets.
    pub fn watch_sighup() -> Trigger {
        let trigger = Trigger::default();
        let flag = trigger.0.clone();
        tokio::spawn(async move {
            let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading plugins at the next cycle");
                flag.store(true, Ordering::SeqCst);
            }
        });
        trigger
    }

    /// Whether a reload was asked for since the last call.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// The content of a tenant's plugin files and settings, to notice when a file is replaced.
#[derive(Debug, PartialEq, Eq)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of what the config names now.
    pub fn of(config: &PluginsConfig) -> Fingerprint {
        Fingerprint(crate::plugins::fingerprint(config))
    }

    /// The fingerprint of the policy the tenant uses: a file replaced while it loaded is reloaded at the first
    /// cycle, and so are plugins that did not load.
    pub fn loaded(sync: &TenantSync) -> Fingerprint {
        Fingerprint(sync.policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner).fingerprint.clone())
    }
}

/// Reloads the tenant's plugins when their files changed or `forced`, keeping the old ones unless the new
/// ones load and give valid output for every current group.
pub fn reload_if_changed(sync: &TenantSync, engine: &PluginEngine, seen: &mut Fingerprint, forced: bool) {
    let plugins = &sync.config.plugins;
    if !plugins.any() {
        return;
    }
    let now = Fingerprint::of(plugins);
    if !forced && now == *seen {
        return;
    }
    // Remember this version either way, so a broken file is reported once, not every cycle.
    *seen = now;
    let tenant = &sync.config.name;
    let mut candidate = match TenantPlugins::load(engine, plugins) {
        Ok(candidate) => candidate,
        Err(e) if sync.policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_unloaded() => {
            tracing::warn!(tenant = %tenant, "the tenant's plugins still do not load, and its groups stay held: {e}");
            return;
        }
        Err(e) => {
            tracing::warn!(tenant = %tenant, "keeping the current plugins: the new version does not load: {e}");
            return;
        }
    };
    let settings = sync.model_settings(SchemaSupport::default());
    match crate::plugins::off_reactor(|| sync.check_policy(&mut candidate, &settings)) {
        Ok(groups) => {
            // What was loaded, which may be newer than what was looked at: a file replaced again since is
            // noticed by the next check.
            *seen = Fingerprint(candidate.fingerprint().to_string());
            let fingerprint = seen.0.clone();
            sync.replace_policy(LoadedPolicy { policy: Box::new(candidate), fingerprint });
            tracing::info!(tenant = %tenant, groups, "switched to the new plugin version");
        }
        Err(reason) => {
            tracing::warn!(tenant = %tenant, "keeping the current plugins: the new version gives invalid output for {reason}");
        }
    }
}
