//! `writeback sync --once`: one cycle for each tenant, then exit; and the cycle runner the daemon shares.

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;

use super::setup::{open_store, plugin_engine, policy, selected, tenant_sync, watch_signals};
use crate::config::Config;
use crate::lease::{Leases, Mode, Role, TenantLease};
use crate::progress::Progress;
use crate::status::{StatusFile, TenantStatus};
use crate::sync::{CycleOptions, CycleReport, StopFlag, TenantSync};

/// Arguments of `sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Run exactly one cycle (required; `run` is the daemon).
    #[arg(long)]
    pub once: bool,
    /// Re-read every managed group from the directory and repair drift.
    #[arg(long)]
    pub full: bool,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Apply deletes even when there are more than the tenant's delete_threshold.
    #[arg(long)]
    pub allow_deletes: bool,
    /// Apply renames and moves even when there are more than the tenant's rename_threshold.
    #[arg(long)]
    pub allow_renames: bool,
    /// Apply member removals even when there are more than the tenant's member_removal_threshold.
    #[arg(long)]
    pub allow_member_removals: bool,
}

/// Runs `sync`.
pub async fn run(config: &Config, args: SyncArgs) -> Result<()> {
    let SyncArgs { once, full, tenant, allow_deletes, allow_renames, allow_member_removals } = args;
    if !once {
        bail!("`sync` needs --once (use `run` for the daemon)");
    }
    let options = CycleOptions { full, allow_deletes, allow_renames, allow_member_removals, ..Default::default() };
    sync_once(config, tenant.as_deref(), options).await
}

async fn sync_once(config: &Config, tenant: Option<&str>, options: CycleOptions) -> Result<()> {
    let store = open_store(config)?;
    let stop = StopFlag::default();
    watch_signals(stop.clone());
    let engine = plugin_engine(config)?;
    let tenants = selected(config, tenant)?;
    // A one-shot sync of a shared tenant takes the lease if it is free, keeps it for the cycle, and
    // hands it back at the end.
    let leases = std::sync::Arc::new(Leases::new(&config.agent.agent_id(), tenants.iter().copied(), Mode::Claim));
    if !leases.is_empty() {
        leases.claim().await;
        tokio::spawn(leases.clone().run());
    }
    let mut problems = Vec::new();
    for tenant in tenants {
        let lease = leases.tenant(&tenant.name);
        let mut options = options;
        if let Some(lease) = &lease {
            if lease.role() != Role::Active {
                problems.push(format!("tenant {}: {}", tenant.name, held_elsewhere(lease)));
                continue;
            }
            // The lease was just taken, so the directory is reconciled in full, as at every takeover.
            options.full = true;
        }
        // An admin running a sync by hand sees its progress; a full reconcile always shows the bar.
        let progress = Progress::on_terminal(&tenant.name, options.full);
        let sync = tenant_sync(tenant, &store, &stop, policy(tenant, engine.as_ref())?, Some(&leases), progress)?;
        match run_cycle(config, &sync, options, lease.as_deref()).await {
            Ok(report) => {
                println!("{}", summary(&tenant.name, &report));
                if let Some(problem) = report.needs_attention() {
                    problems.push(format!("tenant {}: {problem}", tenant.name));
                }
            }
            Err(e) => problems.push(format!("tenant {}: {e:#}", tenant.name)),
        }
    }
    leases.shutdown().await;
    match problems.len() {
        0 => Ok(()),
        1 => bail!("{}", problems[0]),
        n => bail!("{n} tenants need attention: {}", problems.join(" / ")),
    }
}

fn held_elsewhere(lease: &TenantLease) -> String {
    let view = lease.view();
    if let Some(error) = lease.last_error() {
        format!("the writer lease could not be taken, so nothing was written: {error}")
    } else if view.holder.is_empty() {
        "the writer lease is free but was left to another agent; nothing was written".into()
    } else {
        format!(
            "agent {} holds the writer lease (epoch {}), so this agent writes nothing; stop that agent or run `writeback lease release` there first",
            view.holder, view.epoch
        )
    }
}

/// Runs a cycle and records its status, successful or not.
pub(super) async fn run_cycle(
    config: &Config,
    sync: &TenantSync<'_>,
    options: CycleOptions,
    lease: Option<&TenantLease>,
) -> Result<CycleReport> {
    let started = Instant::now();
    if let Some(lease) = lease {
        // The role shows in `status` as soon as it changes, not only after a takeover's long first cycle.
        show_lease(config, &sync.config.name, lease.view());
    }
    // Every log line of the cycle carries its tenant and kind.
    let span = tracing::info_span!("cycle", tenant = %sync.config.name, full = options.full);
    let result = tracing::Instrument::instrument(sync.cycle(options), span).await;
    sync.progress.finish();
    let status_for_metrics = result.as_ref().map(|r| r.status.counts()).map_err(|e| e.to_string());
    crate::metrics::global().record_cycle(&sync.config.name, status_for_metrics, started.elapsed().as_secs_f64());
    let dir = &config.agent.state_dir;
    let view = lease.map(TenantLease::view);
    let recorded = match &result {
        // The drift watch's fights are its own to update.
        Ok(report) => StatusFile::update(dir, &sync.config.name, |status| {
            let drift_fights = std::mem::take(&mut status.drift_fights);
            *status = TenantStatus { lease: view, drift_fights, ..report.status.clone() };
            true
        }),
        // A failed cycle keeps what the last good one found, with the failure as its outcome.
        Err(e) => StatusFile::update(dir, &sync.config.name, |status| {
            status.last_cycle = sync.clock.now();
            status.outcome = format!("failed: {e}");
            status.lease = view;
            true
        }),
    };
    if let Err(e) = recorded {
        tracing::warn!("cannot write status.json: {e}");
    }
    tracing::info!(tenant = %sync.config.name, elapsed_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "cycle finished");
    Ok(result?)
}

fn show_lease(config: &Config, tenant: &str, view: crate::lease::LeaseView) {
    let shown = StatusFile::update(&config.agent.state_dir, tenant, |status| {
        let changed = status.lease.as_ref() != Some(&view);
        status.lease = Some(view);
        changed
    });
    if let Err(e) = shown {
        tracing::warn!("cannot write status.json: {e}");
    }
}

fn summary(tenant: &str, report: &CycleReport) -> String {
    let s = &report.status;
    format!(
        "tenant {tenant}: {} writes, {} managed groups, {} members skipped, {} conflicts, {} held groups, {} held deletes{}",
        s.writes,
        s.managed_groups,
        s.skipped_members.len(),
        s.conflicts.len(),
        s.held_groups.len(),
        s.held_deletes.len(),
        if report.stopped { " (stopped early)" } else { "" }
    )
}
