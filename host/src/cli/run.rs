//! `writeback run`: the daemon. A delta cycle every `interval`, a full reconcile every `reconcile_interval` and
//! at every takeover of a tenant's lease, a look for on-premises edits every `drift_watch`, plugins reloaded
//! when their files change or on SIGHUP.

use std::time::Instant;

use anyhow::{Context, Result};

use super::reload;
use super::setup::{daemon_policy, open_store, plugin_engine, tenant_sync, watch_signals};
use super::sync::run_cycle;
use crate::config::Config;
use crate::lease::{Leases, Mode, Role};
use crate::progress::Progress;
use crate::status::StatusFile;
use crate::sync::{CycleOptions, DriftWatch, OwnWrites, StopFlag, TenantSync};

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: &Config) -> Result<()> {
    let store = open_store(config)?;
    let stop = StopFlag::default();
    watch_signals(stop.clone());
    let engine = plugin_engine(config)?;
    for tenant in &config.tenants {
        crate::metrics::global().start_tenant(&tenant.name);
    }
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
    let mut syncs: Vec<TenantSync> = config
        .tenants
        .iter()
        .map(|t| tenant_sync(t, &store, &stop, daemon_policy(t, engine.as_ref()), Some(&leases), Progress::hidden()))
        .collect::<Result<_>>()?;
    let watch_every = config.agent.drift_watch;
    let mut watches: Vec<DriftWatch> = syncs.iter().map(|_| DriftWatch::default()).collect();
    // The DC's change notifications wake the drift watch as an edit commits; the looks every drift_watch
    // catch what they do not tell (a group moved out of its OU, a DC that offers none).
    let edited = std::sync::Arc::new(tokio::sync::Notify::new());
    if !watch_every.is_zero() {
        for (sync, watch) in syncs.iter_mut().zip(&mut watches) {
            sync.own_writes = OwnWrites::on();
            watch.listen(sync, std::sync::Arc::clone(&edited), watch_every);
        }
    }
    // Per tenant, how many times this agent had taken its lease at its last cycle as the writer.
    let mut takes_seen: Vec<u64> = vec![0; syncs.len()];
    let mut watched: Vec<reload::Fingerprint> = syncs.iter().map(reload::Fingerprint::loaded).collect();
    // The first cycle after start is a full reconcile: the directory may have drifted while we were down.
    // The drift watch takes its mark before it, so that no edit falls between the two.
    let mut next_full = Instant::now();
    let mut next_cycle = Instant::now();
    let mut next_watch = Instant::now();
    tracing::info!(tenants = syncs.len(), interval = ?config.agent.interval, drift_watch = ?watch_every, "writeback running");
    while !stop.is_set() {
        if !watch_every.is_zero() && Instant::now() >= next_watch {
            for (sync, watch) in syncs.iter().zip(&mut watches) {
                if stop.is_set() {
                    break;
                }
                watch_drift(config, sync, watch, &leases).await;
            }
            next_watch = Instant::now() + watch_every;
        }
        if Instant::now() >= next_cycle {
            let full = Instant::now() >= next_full;
            if full {
                next_full = Instant::now() + config.agent.reconcile_interval;
            }
            let hangup = reload.take();
            for (((sync, fingerprint), seen), watch) in
                syncs.iter().zip(&mut watched).zip(&mut takes_seen).zip(&mut watches)
            {
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
                watch.cycle_done();
            }
            next_cycle = Instant::now() + config.agent.interval;
        }
        // A time-bound membership leaves its group at its end, not at the next interval.
        if let Some(expiry) = next_expiry(&syncs) {
            next_cycle = next_cycle.min(expiry);
        }
        let wake = if watch_every.is_zero() { next_cycle } else { next_cycle.min(next_watch) };
        tokio::select! {
            _ = wait_until(wake, &stop) => {}
            _ = leases.changed() => next_cycle = Instant::now(),
            _ = edited.notified(), if !watch_every.is_zero() => next_watch = Instant::now(),
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

/// When the first time-bound membership of any tenant ends, on the monotonic clock.
fn next_expiry(syncs: &[TenantSync<'_>]) -> Option<Instant> {
    let end = syncs.iter().filter_map(TenantSync::next_expiry).min_by(f64::total_cmp)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
    // A few milliseconds late, so that the end has passed by the wall clock too when the cycle looks.
    Some(Instant::now() + std::time::Duration::from_secs_f64((end - now).max(0.0) + 0.01))
}

/// Sleeps until `deadline`, waking early when a stop is asked for.
async fn wait_until(deadline: Instant, stop: &StopFlag) {
    tokio::select! {
        _ = tokio::time::sleep_until(deadline.into()) => {}
        _ = stop.stopped() => {}
    }
}

/// One look of a tenant's drift watch; only the lease holder repairs. The groups whose edits keep coming
/// back show in `status`.
async fn watch_drift(config: &Config, sync: &TenantSync<'_>, watch: &mut DriftWatch, leases: &Leases) {
    let standby = leases.tenant(&sync.config.name).is_some_and(|l| l.role() == Role::Standby);
    match watch.poll(sync, standby).await {
        Ok(fights) => {
            let fighting = i64::try_from(fights.len()).unwrap_or(i64::MAX);
            let shown = StatusFile::update(&config.agent.state_dir, &sync.config.name, |status| {
                let changed = status.drift_fights != fights;
                status.drift_fights = fights;
                changed
            });
            crate::metrics::global()
                .drift_fights
                .get_or_create(&crate::metrics::TenantLabel { tenant: sync.config.name.clone() })
                .set(fighting);
            if let Err(e) = shown {
                tracing::warn!("cannot write status.json: {e}");
            }
        }
        Err(e) => tracing::warn!(tenant = %sync.config.name, "drift watch failed: {e}; it looks again in drift_watch"),
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
