//! `writeback run`: the daemon. A delta cycle every `interval`, a full reconcile every `reconcile_interval` and
//! at every takeover of a tenant's lease, plugins reloaded when their files change or on SIGHUP.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::reload;
use super::setup::{daemon_policy, open_store, plugin_engine, tenant_sync, watch_signals};
use super::sync::run_cycle;
use crate::config::Config;
use crate::lease::{Leases, Mode, Role};
use crate::progress::Progress;
use crate::sync::{CycleOptions, StopFlag, TenantSync};

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: &Config) -> Result<()> {
    let store = open_store(config)?;
    let stop = StopFlag::default();
    watch_signals(stop.clone());
    let engine = plugin_engine(config)?;
    if let Some(addr) = config.agent.metrics_addr {
        crate::metrics::serve(addr).await.with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    let reload = reload::Trigger::watch_sighup();
    let leases = std::sync::Arc::new(Leases::new(&config.agent.agent_id(), &config.tenants, Mode::Share));
    if !leases.is_empty() {
        // Know each tenant's role before the first cycle.
        leases.round().await;
        tokio::spawn(leases.clone().run());
    }
    let syncs: Vec<TenantSync> = config
        .tenants
        .iter()
        .map(|t| tenant_sync(t, &store, &stop, daemon_policy(t, engine.as_ref()), Some(&leases), Progress::hidden()))
        .collect::<Result<_>>()?;
    // Per tenant, how many times this agent had taken its lease at its last cycle as the writer.
    let mut takes_seen: Vec<u64> = vec![0; syncs.len()];
    let mut watched: Vec<reload::Fingerprint> = syncs.iter().map(reload::Fingerprint::loaded).collect();
    // The first cycle after start is a full reconcile: the directory may have drifted while we were down.
    let mut next_full = Instant::now();
    tracing::info!(tenants = syncs.len(), interval = ?config.agent.interval, "writeback running");
    while !stop.is_set() {
        let full = Instant::now() >= next_full;
        if full {
            next_full = Instant::now() + config.agent.reconcile_interval;
        }
        let hangup = reload.take();
        for ((sync, fingerprint), seen) in syncs.iter().zip(&mut watched).zip(&mut takes_seen) {
            if stop.is_set() {
                break;
            }
            if let Some(engine) = &engine {
                reload::reload_if_changed(sync, engine, fingerprint, hangup);
            }
            let lease = leases.tenant(&sync.config.name);
            let role = lease.as_ref().map_or(Role::Active, |l| l.role());
            let takeover = lease.as_ref().is_some_and(|l| is_takeover(role, l.takes(), seen));
            let options = CycleOptions {
                full: full || takeover,
                lazy_directory: true,
                standby: role == Role::Standby,
                ..Default::default()
            };
            if let Err(e) = run_cycle(config, sync, options, lease.as_deref()).await {
                tracing::error!(tenant = %sync.config.name, "cycle failed: {e:#}");
            }
        }
        tokio::select! {
            _ = wait(config.agent.interval, &stop) => {}
            _ = leases.changed() => {}
        }
    }
    leases.shutdown().await;
    store.flush().await?;
    tracing::info!("writeback stopped");
    Ok(())
}

/// Whether a cycle is a takeover, which reconciles the whole directory first: the old holder may have
/// stopped mid-cycle, and this agent's standby cycles planned but wrote nothing. `takes` counts this agent's
/// takes of the lease, and `seen` what it was at the last cycle as the writer; a take counts even when the
/// lease went to another agent and came back between two cycles, so that no standby cycle saw it.
fn is_takeover(role: Role, takes: u64, seen: &mut u64) -> bool {
    if role != Role::Active {
        return false;
    }
    std::mem::replace(seen, takes) != takes
}

/// Sleeps for `interval`, waking early when a stop is asked for.
async fn wait(interval: Duration, stop: &StopFlag) {
    tokio::select! {
        _ = tokio::time::sleep(interval) => {}
        _ = stop.stopped() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_take_of_the_lease_makes_a_takeover_even_one_no_standby_cycle_saw() {
        let mut seen = 0;
        assert!(!is_takeover(Role::Standby, 0, &mut seen));
        assert!(is_takeover(Role::Active, 1, &mut seen), "the first take");
        assert!(!is_takeover(Role::Active, 1, &mut seen), "still the same holding");
        assert!(is_takeover(Role::Active, 2, &mut seen), "lost and taken again between two cycles");
        assert!(!is_takeover(Role::Standby, 2, &mut seen));
        assert!(is_takeover(Role::Active, 3, &mut seen));
    }
}
