//! What the commands set up from the config: the selected tenants, the state store, the plugin engine and each
//! tenant's policy, a tenant's sync, and the stop signal.

use anyhow::{Context, Result};

use crate::config::{Config, TenantConfig};
use crate::graph::GraphClient;
use crate::lease::Leases;
use crate::model::BuiltinPolicy;
use crate::plugins::{PluginEngine, TenantPlugins};
use crate::progress::Progress;
use crate::state::Store;
use crate::sync::{LoadedPolicy, StopFlag, SystemClock, TenantSync};

pub(super) fn selected<'a>(config: &'a Config, tenant: Option<&str>) -> Result<Vec<&'a TenantConfig>> {
    match tenant {
        Some(name) => Ok(vec![config.tenant(name).with_context(|| format!("no tenant named {name:?} in the config"))?]),
        None => Ok(config.tenants.iter().collect()),
    }
}

pub(super) fn open_store(config: &Config) -> Result<Store> {
    Store::open(&config.agent.state_dir).map_err(|e| {
        let text = e.to_string();
        if text.contains("lock") {
            anyhow::anyhow!(
                "the state directory {} is in use by another writeback process; stop it first",
                config.agent.state_dir.display()
            )
        } else {
            anyhow::Error::new(e)
        }
    })
}

/// The plugin engine, created only when some tenant uses plugins; compiled plugins are cached in the state.
pub(super) fn plugin_engine(config: &Config) -> Result<Option<PluginEngine>> {
    if !config.tenants.iter().any(|t| t.plugins.any()) {
        return Ok(None);
    }
    Ok(Some(PluginEngine::new(Some(config.agent.state_dir.join("plugin-cache")))?))
}

/// The tenant's policy: its plugins, or the built-in naming when it has none.
pub(super) fn policy(tenant: &TenantConfig, engine: Option<&PluginEngine>) -> Result<LoadedPolicy> {
    match engine {
        Some(engine) if tenant.plugins.any() => {
            let plugins =
                TenantPlugins::load(engine, &tenant.plugins).with_context(|| format!("tenant {}", tenant.name))?;
            // The fingerprint of the bytes loaded: a file replaced meanwhile is noticed by the next reload check.
            Ok(LoadedPolicy { fingerprint: plugins.fingerprint().to_string(), policy: Box::new(plugins) })
        }
        _ => Ok(LoadedPolicy {
            policy: Box::new(BuiltinPolicy),
            fingerprint: crate::plugins::fingerprint(&tenant.plugins),
        }),
    }
}

/// The daemon's policy for a tenant. Plugins that do not load hold every group of that one tenant, with the
/// cause in `status`, instead of stopping the agent and every other tenant; a fixed file is picked up by the
/// hot reload.
pub(super) fn daemon_policy(tenant: &TenantConfig, engine: Option<&PluginEngine>) -> LoadedPolicy {
    policy(tenant, engine).unwrap_or_else(|e| {
        let cause = e.root_cause().to_string();
        tracing::error!(tenant = %tenant.name, "the tenant's plugins did not load: {cause}; every group of this tenant is held until a fixed plugin is loaded");
        LoadedPolicy::unloaded(&tenant.plugins, cause)
    })
}

pub(super) fn tenant_sync<'a>(
    tenant: &'a TenantConfig,
    store: &Store,
    stop: &StopFlag,
    policy: LoadedPolicy,
    leases: Option<&Leases>,
    progress: Progress,
) -> Result<TenantSync<'a>> {
    let credential = tenant.client_credential()?;
    let graph = GraphClient::new(tenant, credential).with_context(|| format!("tenant {}", tenant.name))?;
    Ok(TenantSync {
        config: tenant,
        store: store.clone(),
        state: store.tenant(&tenant.name)?,
        graph,
        stop: stop.clone(),
        policy: std::sync::Mutex::new(policy),
        fence: leases.and_then(|l| l.tenant(&tenant.name)).map(|l| l.fence()),
        progress,
        clock: std::sync::Arc::new(SystemClock),
        own_writes: Default::default(),
    })
}

/// SIGTERM and SIGINT ask the agent to stop after the current write.
pub(super) fn watch_signals(stop: StopFlag) {
    tokio::spawn(async move {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stop requested; finishing the current write");
        stop.stop();
    });
}
