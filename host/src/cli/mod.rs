//! The command line: argument parsing and the commands `sync`, `run`, `plan`, `status`, `reset-state`,
//! `lease release` and `plugin check`.

mod audit;
mod doctor;
mod plugin_check;
mod reload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, TenantConfig};
use crate::graph::GraphClient;
use crate::lease::{Leases, Mode, Role, TenantLease};
use crate::model::{BuiltinPolicy, GroupPolicy};
use crate::plugins::{PluginEngine, TenantPlugins};
use crate::progress::Progress;
use crate::state::Store;
use crate::status::StatusFile;
use crate::sync::{CycleOptions, CycleReport, StopFlag, TenantSync};

/// Writes Microsoft Entra ID groups back into on-premises Active Directory.
#[derive(Debug, Parser)]
#[command(name = "writeback", version)]
pub struct Cli {
    /// The agent's TOML configuration file (given before the command; `plugin check` takes its own
    /// `--config KEY=VALUE` settings).
    #[arg(long, short, env = "WRITEBACK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The agent's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one sync cycle for each tenant and exit.
    Sync {
        /// Run exactly one cycle (required; `run` is the daemon).
        #[arg(long)]
        once: bool,
        /// Re-read every managed group from the directory and repair drift.
        #[arg(long)]
        full: bool,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Apply deletes even when there are more than the tenant's delete_threshold.
        #[arg(long)]
        allow_deletes: bool,
        /// Apply renames and moves even when there are more than the tenant's rename_threshold.
        #[arg(long)]
        allow_renames: bool,
        /// Apply member removals even when there are more than the tenant's member_removal_threshold.
        #[arg(long)]
        allow_member_removals: bool,
    },
    /// Run as a daemon: a delta cycle every `interval`, a full reconcile every `reconcile_interval`.
    Run,
    /// Print every directory change the next cycle would make; write nothing.
    Plan {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Plan a full reconcile instead of a delta cycle.
        #[arg(long)]
        full: bool,
    },
    /// Print each tenant's last cycle, managed groups, skipped members, conflicts and held deletes.
    Status {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Forget a tenant's local state; the next cycle resyncs from Graph and the directory.
    ResetState {
        #[arg(long)]
        tenant: String,
    },
    /// Print the audit log of directory writes as JSON lines.
    Audit {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only records since this time (2026-11-22T10:00:00Z) or this long ago (2h).
        #[arg(long)]
        since: Option<String>,
        /// Only records of this cloud group id.
        #[arg(long)]
        group: Option<String>,
    },
    /// Check each tenant's setup: credentials, Graph permissions, LDAPS, bind, rights and schema.
    Doctor {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Tools for plugin authors.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// The writer lease of tenants that several agents share.
    #[command(subcommand)]
    Lease(LeaseCommand),
}

/// `writeback lease …`
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Hand this agent's writer leases to a standby, for maintenance. A running daemon of this agent stops
    /// writing before its next batch and does not take the lease back while another agent wants it.
    Release {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// `writeback plugin …`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a plugin on sample groups and print each result with its validation verdict.
    Check(plugin_check::CheckArgs),
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    if let Command::Plugin(PluginCommand::Check(args)) = &cli.command {
        return crate::plugins::off_reactor(|| plugin_check::run(args));
    }
    let config_path = cli.config.clone().context("no config file given; pass --config FILE")?;
    let config = Config::load(&config_path)?;
    match cli.command {
        Command::Sync { once, full, tenant, allow_deletes, allow_renames, allow_member_removals } => {
            if !once {
                bail!("`sync` needs --once (use `run` for the daemon)");
            }
            let options =
                CycleOptions { full, allow_deletes, allow_renames, allow_member_removals, ..Default::default() };
            sync_once(&config, tenant.as_deref(), options).await
        }
        Command::Plugin(_) => unreachable!("handled above"),
        Command::Run => daemon(&config).await,
        Command::Plan { tenant, full } => plan(&config, tenant.as_deref(), full).await,
        Command::Status { tenant } => status(&config, tenant.as_deref()),
        Command::ResetState { tenant } => reset_state(&config, &tenant),
        Command::Doctor { tenant } => doctor::run(&config, &selected(&config, tenant.as_deref())?).await,
        Command::Lease(LeaseCommand::Release { tenant }) => lease_release(&config, tenant.as_deref()).await,
        Command::Audit { tenant, since, group } => {
            let since = since.as_deref().map(audit::parse_since).transpose()?;
            audit::print(&config, &selected(&config, tenant.as_deref())?, &audit::Filter { since, group })
        }
    }
}

fn selected<'a>(config: &'a Config, tenant: Option<&str>) -> Result<Vec<&'a TenantConfig>> {
    match tenant {
        Some(name) => Ok(vec![config.tenant(name).with_context(|| format!("no tenant named {name:?} in the config"))?]),
        None => Ok(config.tenants.iter().collect()),
    }
}

fn open_store(config: &Config) -> Result<Store> {
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
fn plugin_engine(config: &Config) -> Result<Option<PluginEngine>> {
    if !config.tenants.iter().any(|t| t.plugins.any()) {
        return Ok(None);
    }
    Ok(Some(PluginEngine::new(Some(config.agent.state_dir.join("plugin-cache")))?))
}

/// The tenant's policy: its plugins, or the built-in naming when it has none.
fn policy(tenant: &TenantConfig, engine: Option<&PluginEngine>) -> Result<Box<dyn GroupPolicy>> {
    match engine {
        Some(engine) if tenant.plugins.any() => Ok(Box::new(
            TenantPlugins::load(engine, &tenant.plugins).with_context(|| format!("tenant {}", tenant.name))?,
        )),
        _ => Ok(Box::new(BuiltinPolicy)),
    }
}

/// The daemon's policy for a tenant. Plugins that do not load hold every group of that one tenant, with the
/// cause in `status`, instead of stopping the agent and every other tenant; a fixed file is picked up by the
/// hot reload.
fn daemon_policy(tenant: &TenantConfig, engine: Option<&PluginEngine>) -> Box<dyn GroupPolicy> {
    policy(tenant, engine).unwrap_or_else(|e| {
        let reason = format!("the tenant's plugins did not load: {}", e.root_cause());
        tracing::error!(tenant = %tenant.name, "{reason}; every group of this tenant is held until a fixed plugin is loaded");
        Box::new(crate::plugins::Unloaded(reason))
    })
}

fn tenant_sync<'a>(
    tenant: &'a TenantConfig,
    store: &Store,
    stop: &StopFlag,
    policy: Box<dyn GroupPolicy>,
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
    })
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
async fn run_cycle(
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
    let status_for_metrics = result.as_ref().map(|r| &r.status).map_err(|e| e.to_string());
    crate::metrics::global().record_cycle(&sync.config.name, status_for_metrics, started.elapsed().as_secs_f64());
    let mut status = match &result {
        Ok(report) => report.status.clone(),
        Err(e) => {
            let mut status = StatusFile::load(&config.agent.state_dir)
                .unwrap_or_default()
                .tenants
                .remove(&sync.config.name)
                .unwrap_or_default();
            status.last_cycle = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            status.outcome = format!("failed: {e}");
            status
        }
    };
    status.lease = lease.map(TenantLease::view);
    if let Err(e) = StatusFile::record(&config.agent.state_dir, &sync.config.name, status) {
        tracing::warn!("cannot write status.json: {e}");
    }
    tracing::info!(tenant = %sync.config.name, elapsed_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "cycle finished");
    Ok(result?)
}

fn show_lease(config: &Config, tenant: &str, view: crate::lease::LeaseView) {
    let mut status =
        StatusFile::load(&config.agent.state_dir).unwrap_or_default().tenants.remove(tenant).unwrap_or_default();
    if status.lease.as_ref() != Some(&view) {
        status.lease = Some(view);
        if let Err(e) = StatusFile::record(&config.agent.state_dir, tenant, status) {
            tracing::warn!("cannot write status.json: {e}");
        }
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

async fn plan(config: &Config, tenant: Option<&str>, full: bool) -> Result<()> {
    let store = open_store(config)?;
    let stop = StopFlag::default();
    let engine = plugin_engine(config)?;
    for tenant in selected(config, tenant)? {
        // The dry run reads Graph into a scratch copy, so the real cursor does not move.
        let scratch = Store::temporary()?;
        store.copy_tenant_to(&tenant.name, &scratch)?;
        let sync = tenant_sync(tenant, &scratch, &stop, policy(tenant, engine.as_ref())?, None, Progress::hidden())?;
        let options = CycleOptions { full, dry_run: true, ..Default::default() };
        let report = sync.cycle(options).await.with_context(|| format!("tenant {}", tenant.name))?;
        println!("tenant {}: {} changes", tenant.name, report.plan.len());
        for op in &report.plan {
            println!("  {op}");
        }
        for held in &report.status.held_groups {
            println!("  held group {}: {}", held.group_id, held.reason);
        }
        for held in &report.status.held_deletes {
            println!("  held delete {} (more deletes than delete_threshold): {}", held.group_id, held.dn);
        }
        for held in &report.status.held_renames {
            println!("  held (more renames than rename_threshold): {held}");
        }
        for held in &report.status.held_member_removals {
            println!("  held member removals of group {}: {}", held.group_id, held.reason);
        }
        for excluded in &report.status.excluded {
            println!("  excluded group {}: {}", excluded.group_id, excluded.reason);
        }
        for skipped in &report.status.skipped_members {
            println!("  skipped member {} of group {}: {}", skipped.member_id, skipped.group_id, skipped.reason);
        }
        for entry in &report.status.bad_entries {
            println!("  skipped Graph entry: {entry}");
        }
        for lookalike in &report.status.lookalikes {
            println!("  group {}: {}", lookalike.group_id, lookalike.reason);
        }
        for conflict in &report.status.conflicts {
            println!("  conflict for group {}: {}", conflict.group_id, conflict.reason);
        }
    }
    Ok(())
}

fn status(config: &Config, tenant: Option<&str>) -> Result<()> {
    let file = StatusFile::load(&config.agent.state_dir)
        .with_context(|| format!("cannot read the status in {}", config.agent.state_dir.display()))?;
    for tenant in selected(config, tenant)? {
        let status = file.tenants.get(&tenant.name).cloned().unwrap_or_default();
        print!("{}", status.render(&tenant.name));
    }
    Ok(())
}

fn reset_state(config: &Config, tenant: &str) -> Result<()> {
    let tenant = selected(config, Some(tenant))?[0];
    let path = &config.agent.state_dir;
    match Store::open(path) {
        Ok(store) => store.tenant(&tenant.name)?.reset()?,
        Err(e) => {
            // A store too damaged to open is moved aside whole; every tenant then resyncs.
            let aside = path.join(format!("db.damaged-{}", std::process::id()));
            std::fs::rename(path.join("db"), &aside)
                .with_context(|| format!("cannot move the damaged state ({e}) aside"))?;
            println!("the state could not be opened ({e}); moved it to {}", aside.display());
        }
    }
    println!("state of tenant {} reset; the next cycle resyncs from Graph and the directory", tenant.name);
    Ok(())
}

/// SIGTERM and SIGINT ask the agent to stop after the current write.
fn watch_signals(stop: StopFlag) {
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

async fn daemon(config: &Config) -> Result<()> {
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
    let mut watched: Vec<reload::Fingerprint> =
        config.tenants.iter().map(|t| reload::Fingerprint::of(&t.plugins)).collect();
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

/// `lease release`: hands over the leases this agent holds.
async fn lease_release(config: &Config, tenant: Option<&str>) -> Result<()> {
    let tenants = selected(config, tenant)?;
    let leases = Leases::new(&config.agent.agent_id(), tenants.iter().copied(), Mode::Claim);
    if leases.is_empty() {
        bail!("no selected tenant has a [tenant.lease] table, so there is no lease to release");
    }
    let mut failed = Vec::new();
    for line in leases.release_all().await {
        match line {
            Ok(text) => println!("{text}"),
            Err(text) => failed.push(text),
        }
    }
    if failed.is_empty() { Ok(()) } else { bail!("{}", failed.join(" / ")) }
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
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn plugin_check_takes_settings_after_the_file() {
        let cli = Cli::try_parse_from(["writeback", "plugin", "check", "p.wasm", "--config", "a=b", "--config", "c=d"])
            .unwrap();
        let Command::Plugin(PluginCommand::Check(args)) = cli.command else { panic!("plugin check expected") };
        assert_eq!(args.settings, ["a=b", "c=d"]);
    }

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
