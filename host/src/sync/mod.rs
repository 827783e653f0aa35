//! One sync cycle for one tenant: read Graph's deltas into the state ([`rounds`]), build the desired model for
//! the groups that need it, read the directory, plan, apply and checkpoint ([`apply`]), and keep each group's
//! problems for `status` ([`problems`]).

mod apply;
mod problems;
mod rounds;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{ConfigError, TenantConfig};
use crate::dn;
use crate::directory::{Directory, DirectoryError};
use crate::graph::{GraphClient, GraphError};
use crate::model::{self, DesiredMember, GroupPolicy, Intent, ModelSettings, SchemaSupport};
use crate::plan::{self, GroupRef, Op, Plan, PlanOptions, Snapshot};
use crate::state::{Resource, StateError, Store, TenantState};
use crate::status::{GroupProblem, TenantStatus};

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
    /// Plan only: write nothing to the directory.
    pub dry_run: bool,
    /// Skip the directory when no group needs planning (the daemon's quiet cycles); a one-shot `sync`
    /// always connects, so that it also proves the directory settings.
    pub lazy_directory: bool,
    /// Another agent holds the writer lease: follow Graph, plan against the directory only on full cycles,
    /// write nothing. Pending groups stay pending for this agent's takeover reconcile.
    pub standby: bool,
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
                "{} deletes held (more than delete_threshold); review them with `status`, then run `sync --once --allow-deletes`",
                s.held_deletes.len()
            ));
        }
        if !s.held_renames.is_empty() {
            return Some(format!(
                "{} renames or moves held (more than rename_threshold); review them with `plan`, then run `sync --once --allow-renames`",
                s.held_renames.len()
            ));
        }
        let failed: Vec<_> =
            s.held_groups.iter().filter(|p| p.reason.starts_with(APPLY_FAILED) || p.reason.starts_with(QUARANTINED)).collect();
        failed.first().map(|first| format!("{} groups failed to apply; first: group {}: {}", failed.len(), first.group_id, first.reason))
    }
}

/// A tenant's sync context: its config, state, Graph client and naming/transform policy.
pub struct TenantSync<'a> {
    pub config: &'a TenantConfig,
    pub store: Store,
    pub state: TenantState,
    pub graph: GraphClient,
    pub stop: StopFlag,
    pub policy: Mutex<Box<dyn GroupPolicy>>,
    /// The tenant's writer lease fence, when several agents share the tenant.
    pub fence: Option<crate::lease::Fence>,
    /// What an admin watching the terminal sees.
    pub progress: crate::progress::Progress,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
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
        self.graph.authenticate().await?;
        self.read_round(Resource::Users, &mut report).await?;
        self.read_round(Resource::Groups, &mut report).await?;
        self.replan_if_policy_changed()?;
        if self.stop.is_set() {
            report.stopped = true;
            return Ok(report);
        }
        // A quiet daemon cycle has nothing to plan, so it does not even connect to the DC.
        let quiet = options.lazy_directory && !options.full && (options.standby || self.state.dirty()?.is_empty());
        if !quiet {
            let password = self.config.directory.password(&self.config.name)?;
            let mut directory = Directory::connect(&self.config.directory, &password).await?;
            if let Some(fence) = &self.fence {
                directory.set_fence(fence.clone());
            }
            crate::metrics::global().directory_connections.get_or_create(&crate::metrics::TenantLabel { tenant: self.config.name.clone() }).inc();
            let result = self.reconcile(&mut directory, options, &mut report).await;
            directory.close().await;
            result?;
        }
        if !options.dry_run && !options.standby {
            self.load_problems(&mut report.status)?;
        }
        report.status.pending_groups = self.state.dirty()?.len();
        report.status.managed_groups = self.state.managed_count();
        report.status.last_cycle = now();
        report.status.outcome = report.needs_attention().unwrap_or_else(|| "ok".into());
        if options.standby {
            report.status.outcome = format!("standby: another agent writes; {} groups pending here, {} changes planned", report.status.pending_groups, report.plan.len());
        }
        let s = &report.status;
        tracing::info!(writes = s.writes, managed = s.managed_groups, pending = s.pending_groups, held = s.held_groups.len(), "cycle applied");
        Ok(report)
    }

    /// A new plugin version or new plugin settings can change every group's name, place or attributes,
    /// so every group is planned again. The first cycle of a fresh state plans every group anyway.
    fn replan_if_policy_changed(&self) -> Result<(), StateError> {
        let current = crate::plugins::fingerprint(&self.config.plugins);
        let previous = self.state.policy_fingerprint()?;
        if previous.as_deref() != Some(current.as_str()) {
            if previous.is_some() {
                tracing::info!(tenant = %self.config.name, "the plugins or their settings changed; planning every group again");
                self.state.mark_all_dirty()?;
            }
            self.state.set_policy_fingerprint(&current)?;
        }
        Ok(())
    }

    /// Plans the groups that need it against the directory and applies the plan.
    async fn reconcile(&self, directory: &mut Directory, options: CycleOptions, report: &mut CycleReport) -> Result<(), SyncError> {
        let settings = self.model_settings(directory.schema.clone());
        let mut snapshot = Snapshot::default();
        let ids: BTreeSet<String> = if options.full {
            let known: BTreeSet<String> = self.state.group_ids()?.into_iter().collect();
            // An anchored group the state does not know is ours only inside our target OU; elsewhere it
            // may belong to another tenant writing to the same domain.
            snapshot.managed = directory
                .all_managed_groups()
                .await?
                .into_iter()
                .filter(|(id, group)| known.contains(id) || dn::is_within(&group.dn, &settings.target_ou))
                .collect();
            known.into_iter().chain(snapshot.managed.keys().cloned()).collect()
        } else {
            self.state.dirty()?.into_iter().collect()
        };
        self.progress.planning(ids.len());
        let intents = self.intents(&ids, &settings, report).await?;
        if !options.full {
            snapshot.managed = directory.managed_groups(&lookup_ids(&intents)).await?;
        }
        snapshot.principals = directory.principals(&member_sids(&intents)).await?;
        let plan_options = PlanOptions {
            delete_threshold: self.config.delete_threshold,
            allow_deletes: options.allow_deletes,
            rename_threshold: self.config.rename_threshold,
            allow_renames: options.allow_renames,
        };
        let mut plan = plan::plan(&intents, &snapshot, plan_options);
        self.withhold_protected_adds(directory, &mut plan, &snapshot).await?;
        report.status.skipped_members.extend(plan.skipped.iter().cloned());
        report.status.held_deletes = plan.held_deletes.clone();
        report.status.held_renames = plan.held_renames.iter().map(|op| op.to_string()).collect();
        report.plan = plan.ops.clone();
        if options.dry_run || options.standby {
            return Ok(());
        }
        let failed = self.apply(directory, &plan, report).await?;
        self.checkpoint(&ids, &plan, &failed, &snapshot)?;
        self.record_problems(&ids, &plan, &report.status)?;
        self.store.flush().await?;
        Ok(())
    }

    /// A member added to a group nested in a protected group (adminCount=1, or listed in
    /// `protected_groups`) would gain that group's rights, so such adds are withheld unless the tenant
    /// allows the group in `allow_protected_groups`. Only groups with planned adds are looked at.
    async fn withhold_protected_adds(&self, directory: &mut Directory, plan: &mut Plan, snapshot: &Snapshot) -> Result<(), SyncError> {
        let deny = &self.config.protected_groups;
        let mut withheld = Vec::new();
        for (index, op) in plan.ops.iter().enumerate() {
            let Op::AddMembers { group_id, target: GroupRef::Existing { dn: group_dn, .. }, .. } = op else { continue };
            if self.config.allow_protected_groups.contains(group_id) {
                continue;
            }
            let marked = snapshot.managed.get(group_id).is_some_and(|g| g.attributes.get("admincount").is_some_and(|v| v.iter().any(|x| x == "1")));
            let listed = deny.iter().any(|d| dn::same(d, group_dn));
            let protecting = if marked || listed { Some(group_dn.clone()) } else { directory.protecting_group(group_dn, deny).await? };
            if let Some(protected) = protecting {
                withheld.push((index, format!(
                    "refused: the group is in protected group {protected}, so the member would gain its rights; list the group in allow_protected_groups to allow it"
                )));
            }
        }
        plan::withhold_adds(plan, &withheld);
        Ok(())
    }

    /// Intents for `ids`, plus orphans: managed AD groups whose cloud group the state does not know.
    async fn intents(&self, ids: &BTreeSet<String>, settings: &ModelSettings, report: &mut CycleReport) -> Result<BTreeMap<String, Intent>, SyncError> {
        let mut intents = crate::plugins::off_reactor(|| self.known_intents(ids, settings, report))?;
        // Known to the directory only: the state was lost or the delete was never recorded.
        let orphans: Vec<&String> = ids.iter().filter(|id| !intents.contains_key(*id)).collect();
        for id in orphans {
            let intent = if self.graph.in_deleted_items(id).await? { Intent::Leave("soft-deleted in Entra ID".into()) } else { Intent::Delete };
            intents.insert(id.clone(), intent);
        }
        Ok(intents)
    }

    /// Intents of the groups the state knows, through the tenant's policy (plugins run here).
    fn known_intents(&self, ids: &BTreeSet<String>, settings: &ModelSettings, report: &mut CycleReport) -> Result<BTreeMap<String, Intent>, SyncError> {
        let mut policy = self.policy.lock().unwrap_or_else(PoisonError::into_inner);
        let mut intents = BTreeMap::new();
        for id in ids {
            let Some(group) = self.state.group(id)? else { continue };
            let (intent, skipped) = model::intent(&self.state, &group, settings, policy.as_mut())?;
            report.status.skipped_members.extend(skipped);
            match &intent {
                Intent::Refuse(reason) => report.status.held_groups.push(GroupProblem { group_id: id.clone(), reason: reason.clone() }),
                Intent::Exclude(reason) => report.status.excluded.push(GroupProblem { group_id: id.clone(), reason: reason.clone() }),
                _ => {}
            }
            intents.insert(id.clone(), intent);
        }
        Ok(intents)
    }

    /// Runs a candidate policy over every group the tenant writes, as `plan` would, without writing.
    /// `Err` names the first group whose output is invalid; the candidate must not be used then.
    pub fn check_policy(&self, candidate: &mut dyn GroupPolicy, settings: &ModelSettings) -> Result<usize, String> {
        let mut checked = 0;
        for id in self.state.group_ids().map_err(|e| e.to_string())? {
            let Some(group) = self.state.group(&id).map_err(|e| e.to_string())? else { continue };
            let Ok(kind) = model::scope(&group, settings.m365_default_writeback) else { continue };
            if let Err(reason) = model::place_and_transform(&group, kind, settings, candidate) {
                return Err(format!("group {id}: {reason}"));
            }
            checked += 1;
        }
        Ok(checked)
    }

    /// The tenant's settings for the desired model, with the directory's schema facts.
    pub fn model_settings(&self, schema: SchemaSupport) -> ModelSettings {
        ModelSettings {
            m365_default_writeback: self.config.m365_default_writeback,
            target_ou: self.config.directory.target_ou.clone(),
            allowed_ous: self.config.plugins.allowed_ous.clone(),
            schema,
        }
    }

    /// Switches to a new policy.
    pub fn replace_policy(&self, policy: Box<dyn GroupPolicy>) {
        *self.policy.lock().unwrap_or_else(PoisonError::into_inner) = policy;
    }

}

/// How the reason of a group whose apply failed starts.
const APPLY_FAILED: &str = "apply failed";
/// How the reason of a quarantined group starts.
pub const QUARANTINED: &str = "quarantined";
/// Failed cycles in a row after which a group is quarantined.
pub const QUARANTINE_AFTER: u32 = 3;

/// The groups to look up by anchor: the planned ones and the cloud groups they list as members.
fn lookup_ids(intents: &BTreeMap<String, Intent>) -> Vec<String> {
    let mut ids: BTreeSet<String> = intents.keys().cloned().collect();
    for intent in intents.values() {
        if let Intent::Write(desired) = intent {
            for member in &desired.members {
                if let DesiredMember::CloudGroup { member_id } = member {
                    ids.insert(member_id.clone());
                }
            }
        }
    }
    ids.into_iter().collect()
}

/// Every SID the planned groups name as members.
fn member_sids(intents: &BTreeMap<String, Intent>) -> Vec<String> {
    let mut sids = BTreeSet::new();
    for intent in intents.values() {
        if let Intent::Write(desired) = intent {
            for member in &desired.members {
                if let DesiredMember::Sid { sid, .. } = member {
                    sids.insert(sid.to_uppercase());
                }
            }
        }
    }
    sids.into_iter().collect()
}
