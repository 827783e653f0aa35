//! One sync cycle for one tenant: read Graph's deltas into the state ([`rounds`]), then, a batch of groups at
//! a time ([`reconcile`]), build the desired model, read the directory, plan, apply and checkpoint
//! ([`apply`]), and keep each group's problems for `status` ([`problems`]).

mod apply;
mod drift;
mod pim;
mod problems;
mod reconcile;
mod rounds;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::attributes::SchemaSupport;
use crate::config::{ConfigError, TenantConfig};
use crate::directory::{Directory, DirectoryError};
use crate::graph::{GraphClient, GraphError};
use crate::model::{self, GroupPolicy, Hold, ModelSettings};
use crate::plan::Op;
use crate::state::{Resource, StateError, Store, TenantState};
use crate::status::TenantStatus;

pub use drift::{DriftWatch, OwnWrites};

/// Why a cycle stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What kind of cycle to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct CycleOptions {
    /// Re-read every managed group and repair drift.
    pub full: bool,
    /// Apply deletes even above the threshold.
    pub allow_deletes: bool,
    /// Apply renames and moves even above the threshold.
    pub allow_renames: bool,
    /// Apply member removals even above the threshold.
    pub allow_member_removals: bool,
    /// Plan only: write nothing to the directory.
    pub dry_run: bool,
    /// Skip the directory when no group needs planning (the daemon's quiet cycles); a one-shot `sync`
    /// always connects, so that it also proves the directory settings.
    pub lazy_directory: bool,
    /// Another agent holds the writer lease: follow Graph, plan against the directory only on full cycles,
    /// write nothing. Pending groups stay pending for this agent's takeover reconcile.
    pub standby: bool,
    /// Repair on-premises edits of groups whose cloud state has not changed: every write is audited and
    /// counted as a drift repair, and none counts against the thresholds' window.
    pub drift: bool,
    /// Of a drift repair, write only the removal of members (a group whose repairs are backed off).
    pub drift_removals_only: bool,
}

/// Set when the agent should stop after the current write.
#[derive(Debug, Clone, Default)]
pub struct StopFlag {
    set: Arc<AtomicBool>,
    notify: Arc<tokio::sync::Notify>,
}

impl StopFlag {
    /// Asks the cycle to stop at the next safe point.
    pub fn stop(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }
    /// Resolves once a stop is asked for.
    pub async fn stopped(&self) {
        let notified = self.notify.notified();
        if !self.is_set() {
            notified.await;
        }
    }
}

/// The result of one cycle.
#[derive(Debug, Default)]
pub struct CycleReport {
    pub status: TenantStatus,
    /// The planned operations (all of them in a dry run).
    pub plan: Vec<Op>,
    /// Whether the cycle ended early because a stop was asked for.
    pub stopped: bool,
    /// Group and user entries read from Graph in this cycle.
    pub read_groups: usize,
    pub read_users: usize,
}

impl CycleReport {
    /// Whether the cycle left something an admin must act on: held deletes or failed groups.
    pub fn needs_attention(&self) -> Option<String> {
        let s = &self.status;
        if !s.held_deletes.is_empty() {
            return Some(format!(
                "{} deletes held (more than delete_threshold within threshold_window); review them with `status`, then run `sync --once --allow-deletes`",
                s.held_deletes.len()
            ));
        }
        if !s.held_member_removals.is_empty() {
            return Some(format!(
                "member removals of {} groups held (more than member_removal_threshold within threshold_window); review them with `plan`, then run `sync --once --allow-member-removals`",
                s.held_member_removals.len()
            ));
        }
        if !s.held_renames.is_empty() {
            return Some(format!(
                "{} renames or moves held (more than rename_threshold within threshold_window); review them with `plan`, then run `sync --once --allow-renames`",
                s.held_renames.len()
            ));
        }
        let failed: Vec<_> = s.held_groups.iter().filter(|h| h.reason.is_failure()).collect();
        if let Some(first) = failed.first() {
            return Some(format!(
                "{} groups failed to apply; first: group {}: {}",
                failed.len(),
                first.group_id,
                first.reason
            ));
        }
        s.pim_error.as_ref().map(|e| {
            format!("PIM for Groups schedule instances cannot be read ({e}); grant the application permission PrivilegedAssignmentSchedule.Read.AzureADGroup, or set [tenant.pim] enabled = false")
        })
    }
}

/// A tenant's naming and transform policy, with the fingerprint of the plugin files and settings it was loaded
/// from (prefixed `unloaded` when they did not load). The fingerprint is the loaded policy's, not the files' as
/// they are now: a file replaced after the policy was loaded must not count as planned with.
pub struct LoadedPolicy {
    pub policy: Box<dyn GroupPolicy>,
    pub fingerprint: String,
}

/// How the fingerprint of a tenant whose plugins did not load starts.
const UNLOADED: &str = "unloaded ";

impl LoadedPolicy {
    /// The policy of a tenant whose plugins did not load, for this cause: every group is held.
    pub fn unloaded(plugins: &crate::config::PluginsConfig, cause: String) -> LoadedPolicy {
        let fingerprint = format!("{UNLOADED}{}", crate::plugins::fingerprint(plugins));
        LoadedPolicy { policy: Box::new(crate::plugins::Unloaded(cause)), fingerprint }
    }

    /// Whether this is the policy of plugins that did not load.
    pub fn is_unloaded(&self) -> bool {
        self.fingerprint.starts_with(UNLOADED)
    }
}

/// A tenant's sync context: its config, state, Graph client and naming/transform policy.
pub struct TenantSync<'a> {
    pub config: &'a TenantConfig,
    pub store: Store,
    pub state: TenantState,
    pub graph: GraphClient,
    pub stop: StopFlag,
    pub policy: Mutex<LoadedPolicy>,
    /// The tenant's writer lease fence, when several agents share the tenant.
    pub fence: Option<crate::lease::Fence>,
    /// What an admin watching the terminal sees.
    pub progress: crate::progress::Progress,
    /// The wall-clock time.
    pub clock: Arc<dyn Clock>,
    /// The USNs of this agent's writes, when a drift watch needs them.
    pub own_writes: OwnWrites,
}

/// Where sync reads the wall-clock time: audit records, the thresholds' window and the last cycle's time.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
    }
}

impl TenantSync<'_> {
    /// Runs one cycle.
    pub async fn cycle(&self, mut options: CycleOptions) -> Result<CycleReport, SyncError> {
        // A state without a groups cursor is new or was lost, and one in a full round is resyncing: groups it
        // does not know may still be in the directory (and gone from the cloud), and only a full reconcile
        // finds them.
        options.full |= self.state.cursor(Resource::Groups)?.is_none_or(|cursor| cursor.full);
        let mut report = CycleReport::default();
        report.status.full = options.full;
        let interrupted = self.state.file_interrupted()?;
        if interrupted > 0 {
            tracing::warn!(tenant = %self.config.name, writes = interrupted, "the last run stopped during writes; they are in the audit log as interrupted and are reconciled now");
        }
        self.apply_expiries(options, &mut report).await?;
        // The token endpoint may ask for long waits; SIGTERM must not wait for them.
        tokio::select! {
            biased;
            () = self.stop.stopped() => {
                report.stopped = true;
                return Ok(report);
            }
            signed_in = self.graph.authenticate() => signed_in?,
        }
        let source = match self.config.writeback_source {
            crate::config::WritebackSource::Delta => "delta",
            crate::config::WritebackSource::Batch => "batch",
        };
        if self.state.note_writeback_source(source)? {
            tracing::info!(tenant = %self.config.name, source, "writeback_source changed; reading every group again in a full round");
            self.state.drop_cursor(Resource::Groups)?;
        }
        self.read_round(Resource::Users, &mut report).await?;
        // A round that turned into a full one (Graph asked for a resync) makes a full cycle: groups deleted
        // while the cursor was dead are found only by a full reconcile.
        options.full |= self.read_round(Resource::Groups, &mut report).await?;
        report.status.full = options.full;
        self.refresh_m365_default(options.full).await?;
        self.replan_if_policy_changed()?;
        self.read_schedules(&mut report).await?;
        if self.pim_on() && !options.standby {
            self.mark_due_expiries(options.dry_run)?;
        }
        if self.stop.is_set() {
            report.stopped = true;
            return Ok(report);
        }
        // A quiet daemon cycle has nothing to plan, so it does not even connect to the DC.
        let quiet = options.lazy_directory && !options.full && (options.standby || self.state.pending()?.is_empty());
        if !quiet {
            let mut directory = self.open_directory().await?;
            let result = self.reconcile(&mut directory, options, &mut report).await;
            directory.close().await;
            result?;
        }
        if !options.dry_run && !options.standby {
            self.load_problems(&mut report.status)?;
        }
        report.status.pending_groups = self.state.pending()?.len();
        report.status.managed_groups = self.state.managed_count();
        report.status.taken_over = self.state.takeovers()?;
        if self.pim_on() {
            report.status.time_bound = self.time_bound_members()?;
        }
        report.status.last_cycle = self.clock.now();
        report.status.outcome = report.needs_attention().unwrap_or_else(|| "ok".into());
        if options.standby {
            report.status.outcome = format!(
                "standby: another agent writes; {} groups pending here, {} changes planned",
                report.status.pending_groups,
                report.plan.len()
            );
        }
        let s = &report.status;
        tracing::info!(
            writes = s.writes,
            managed = s.managed_groups,
            pending = s.pending_groups,
            held = s.held_groups.len(),
            "cycle applied"
        );
        Ok(report)
    }

    /// Opens a connection to the tenant's directory that reads its transform attributes too, and whose every
    /// write first checks the tenant's writer lease.
    pub(super) async fn open_directory(&self) -> Result<Directory, SyncError> {
        let password = self.config.directory.password(&self.config.name)?;
        let mut directory = Directory::connect(&self.config.directory, &password).await?;
        directory.also_read(&crate::plugins::transform_attributes(&self.config.plugins));
        if let Some(fence) = &self.fence {
            directory.set_gate(Arc::new(fence.clone()));
        }
        crate::metrics::global()
            .directory_connections
            .get_or_create(&crate::metrics::TenantLabel { tenant: self.config.name.clone() })
            .inc();
        Ok(directory)
    }

    /// Reads the tenant's `NewUnifiedGroupWritebackDefault` when the config leaves it to the tenant: on full
    /// cycles and when it was never read, so that quiet cycles cost no request. A change plans every group again.
    async fn refresh_m365_default(&self, full: bool) -> Result<(), SyncError> {
        if self.config.m365_default_writeback.is_some() {
            return Ok(());
        }
        let stored = self.state.m365_default()?;
        if stored.is_some() && !full {
            return Ok(());
        }
        let current = self.graph.m365_writeback_default().await?;
        if stored != Some(current) {
            if stored.is_some() {
                tracing::info!(tenant = %self.config.name, current, "the tenant's NewUnifiedGroupWritebackDefault changed; planning every group again");
                self.state.mark_all_pending()?;
            }
            self.state.set_m365_default(current)?;
        }
        Ok(())
    }

    /// The Microsoft 365 writeback default in force: the config's, else the tenant's as last read, else
    /// Microsoft's documented default (true).
    pub fn m365_default(&self) -> (bool, &'static str) {
        match self.config.m365_default_writeback {
            Some(value) => (value, "config"),
            None => match self.state.m365_default().ok().flatten() {
                Some(value) => (value, "tenant setting NewUnifiedGroupWritebackDefault"),
                None => (true, "default (the tenant setting was not read yet)"),
            },
        }
    }

    /// A new plugin version or new plugin settings can change every group's name, place or attributes, new
    /// `[tenant.scope]` rules which groups are written, and a new `group_scope` every group's scope, so every group is planned again (and its deletes
    /// and renames count against the thresholds). The first cycle of a fresh state plans every group anyway.
    fn replan_if_policy_changed(&self) -> Result<(), StateError> {
        let mut current = self.policy.lock().unwrap_or_else(PoisonError::into_inner).fingerprint.clone();
        // Only rules that differ from Microsoft's join the fingerprint, so that states from before they existed
        // are not planned again for nothing.
        if self.config.scope != crate::config::ScopeConfig::default() {
            current.push_str(&format!(" scope {:?}", self.config.scope));
        }
        if self.config.group_scope != model::GroupScope::Universal {
            current.push_str(&format!(" group_scope {}", self.config.group_scope.name()));
        }
        let previous = self.state.policy_fingerprint()?;
        if previous.as_deref() != Some(current.as_str()) {
            if previous.is_some() {
                tracing::info!(tenant = %self.config.name, "the plugins, their settings, the scope rules or the group scope changed; planning every group again");
                self.state.mark_all_pending()?;
            }
            self.state.set_policy_fingerprint(&current)?;
        }
        Ok(())
    }

    /// Runs a candidate policy over every group the tenant writes, as `plan` would, without writing.
    /// `Err` names the first group for which the candidate fails where the current policy does not; the
    /// candidate must not be used then. A refusal is a policy's answer, and a failure that the current
    /// policy has too is no reason to keep it.
    pub fn check_policy(&self, candidate: &mut dyn GroupPolicy, settings: &ModelSettings) -> Result<usize, String> {
        let mut current = self.policy.lock().unwrap_or_else(PoisonError::into_inner);
        let mut checked = 0;
        for id in self.state.group_ids().map_err(|e| e.to_string())? {
            let Some(group) = self.state.group(&id).map_err(|e| e.to_string())? else { continue };
            let Ok(kind) = model::scope(&group, settings.m365_default_writeback, &settings.rules) else { continue };
            let count = u32::try_from(self.state.members(&id).map_err(|e| e.to_string())?.len()).unwrap_or(u32::MAX);
            if let Err(Hold::Failed(reason)) = model::place_and_transform(&group, kind, count, settings, candidate) {
                let already = matches!(
                    model::place_and_transform(&group, kind, count, settings, current.policy.as_mut()),
                    Err(Hold::Failed(_) | Hold::NotLoaded(_))
                );
                if !already {
                    return Err(format!("group {id}: {reason}"));
                }
            }
            checked += 1;
        }
        Ok(checked)
    }

    /// The tenant's settings for the desired model, with the directory's schema facts.
    pub fn model_settings(&self, schema: SchemaSupport) -> ModelSettings {
        ModelSettings {
            m365_default_writeback: self.m365_default().0,
            target_ou: self.config.directory.target_ou.clone(),
            allowed_ous: self.config.plugins.allowed_ous.clone(),
            schema,
            rules: self.config.scope.rules(),
            group_scope: self.config.group_scope,
        }
    }

    /// Switches to a new policy; the next cycle plans every group with it.
    pub fn replace_policy(&self, policy: LoadedPolicy) {
        *self.policy.lock().unwrap_or_else(PoisonError::into_inner) = policy;
    }
}

/// Failed cycles in a row after which a group is quarantined.
pub const QUARANTINE_AFTER: u32 = 3;
