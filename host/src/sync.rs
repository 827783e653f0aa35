//! One sync cycle for one tenant: read Graph's deltas into the state, build the desired model for the
//! groups that need it, read the directory, plan, apply, and checkpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{ConfigError, TenantConfig};
use crate::dn;
use crate::directory::{ApplyError, Applied, Directory, DirectoryError};
use crate::graph::delta::{self, NextLink, Removal};
use crate::graph::{GraphClient, GraphError};
use crate::model::{self, DesiredMember, GroupPolicy, Intent, ModelSettings, SchemaSupport, SkippedMember};
use crate::plan::{self, GroupRef, Op, Plan, PlanOptions, Snapshot};
use crate::state::{Anchor, AuditRecord, Cursor, GroupProblems, Resource, StateError, Store, TenantState};
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
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

impl TenantSync<'_> {
    /// Runs one cycle.
    pub async fn cycle(&self, options: CycleOptions) -> Result<CycleReport, SyncError> {
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
        let quiet = options.lazy_directory && !options.full && self.state.dirty()?.is_empty();
        if !quiet {
            let password = self.config.directory.password(&self.config.name)?;
            let mut directory = Directory::connect(&self.config.directory, &password).await?;
            crate::metrics::global().directory_connections.get_or_create(&crate::metrics::TenantLabel { tenant: self.config.name.clone() }).inc();
            let result = self.reconcile(&mut directory, options, &mut report).await;
            directory.close().await;
            result?;
        }
        if !options.dry_run {
            self.load_problems(&mut report.status)?;
        }
        report.status.pending_groups = self.state.dirty()?.len();
        report.status.managed_groups = self.state.managed_count();
        report.status.last_cycle = now();
        report.status.outcome = report.needs_attention().unwrap_or_else(|| "ok".into());
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

    /// Reads one delta round to its end, restarting once with a full round when Graph asks for a resync.
    async fn read_round(&self, resource: Resource, report: &mut CycleReport) -> Result<(), SyncError> {
        match self.read_pages(resource, report).await {
            Err(SyncError::Graph(GraphError::ResyncRequired { .. })) => {
                tracing::warn!(tenant = %self.config.name, ?resource, "Graph asked for a full resync; starting a full round");
                self.state.drop_cursor(resource)?;
                self.read_pages(resource, report).await
            }
            other => other,
        }
    }

    async fn read_pages(&self, resource: Resource, report: &mut CycleReport) -> Result<(), SyncError> {
        let (mut link, full) = match self.state.cursor(resource)? {
            None => (self.start_url(resource), true),
            Some(c) if c.complete => {
                self.finish_full_round(resource, &c).await?;
                (c.link, false)
            }
            Some(c) => (c.link, c.full),
        };
        loop {
            if self.stop.is_set() {
                return Ok(());
            }
            let page = self.graph.delta_page(&link).await?;
            let (next, complete) = match page.link {
                NextLink::Next(next) => (next, false),
                NextLink::Delta(delta) => (delta, true),
            };
            let cursor = Cursor { link: next.clone(), full, complete };
            self.merge(resource, &page.entries, &cursor, report)?;
            self.store.flush().await?;
            if complete {
                return self.finish_full_round(resource, &cursor).await;
            }
            link = next;
        }
    }

    fn start_url(&self, resource: Resource) -> String {
        match resource {
            Resource::Groups => self.graph.groups_delta_start(),
            Resource::Users => self.graph.users_delta_start(),
        }
    }

    fn merge(&self, resource: Resource, entries: &[serde_json::Value], cursor: &Cursor, report: &mut CycleReport) -> Result<(), SyncError> {
        let mut bad = Vec::new();
        match resource {
            Resource::Groups => {
                let parsed: Vec<_> = entries.iter().filter_map(|e| delta::parse_group(e).map_err(|err| bad.push(err.0)).ok()).collect();
                self.state.merge_group_page(&parsed, cursor)?;
            }
            Resource::Users => {
                let parsed: Vec<_> = entries.iter().filter_map(|e| delta::parse_user(e).map_err(|err| bad.push(err.0)).ok()).collect();
                self.state.merge_user_page(&parsed, cursor)?;
            }
        }
        for reason in &bad {
            tracing::warn!(tenant = %self.config.name, "skipped a Graph entry: {reason}");
        }
        report.status.bad_entries.extend(bad);
        Ok(())
    }

    /// After a full round, objects it did not list are gone. A group counts as hard-deleted only when
    /// Graph's deleted items do not hold it either.
    async fn finish_full_round(&self, resource: Resource, cursor: &Cursor) -> Result<(), SyncError> {
        if !(cursor.full && cursor.complete) {
            return Ok(());
        }
        match resource {
            Resource::Users => {
                self.state.finish_full_user_round()?;
            }
            Resource::Groups => {
                for id in self.state.groups_missing_from_full_round()? {
                    let removal = if self.graph.in_deleted_items(&id).await? { Removal::Changed } else { Removal::Deleted };
                    self.state.mark_removed(&id, removal)?;
                }
                self.state.clear_group_round_marks()?;
            }
        }
        let done = Cursor { full: false, ..cursor.clone() };
        match resource {
            Resource::Groups => self.state.merge_group_page(&[], &done)?,
            Resource::Users => self.state.merge_user_page(&[], &done)?,
        };
        self.store.flush().await?;
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
        if options.dry_run {
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

    /// Applies the plan in order. Returns the groups whose operations failed (they stay dirty).
    async fn apply(&self, directory: &mut Directory, plan: &Plan, report: &mut CycleReport) -> Result<HashMap<String, String>, SyncError> {
        let mut created: HashMap<String, String> = HashMap::new();
        let mut failed: HashMap<String, String> = HashMap::new();
        for chunk in plan.ops.chunks(JOURNAL_CHUNK) {
            // The intents are durable before any of these writes is sent: a crash cannot hide a write.
            let keys = self.state.journal(&chunk.iter().map(|op| self.audit_record(op, "pending".into())).collect::<Vec<_>>())?;
            self.store.flush().await?;
            let mut journaled = chunk.iter().zip(keys);
            while let Some((op, key)) = journaled.next() {
                if let Err(e) = self.apply_one(directory, op, key, &mut created, &mut failed, report).await {
                    // The cycle stops here; the writes journaled after this one were never sent.
                    for (_, unsent) in journaled {
                        self.state.settle(unsent, None)?;
                    }
                    return Err(e);
                }
            }
        }
        Ok(failed)
    }

    /// Applies one journaled operation and files its outcome.
    async fn apply_one(
        &self,
        directory: &mut Directory,
        op: &Op,
        key: u64,
        created: &mut HashMap<String, String>,
        failed: &mut HashMap<String, String>,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        if self.stop.is_set() {
            report.stopped = true;
            failed.insert(op.group_id().to_string(), "stopped before this write".into());
        }
        if failed.contains_key(op.group_id()) {
            self.state.settle(key, None)?;
            return Ok(());
        }
        let result = directory.apply(op, created).await;
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        self.state.settle(key, Some(&self.audit_record(op, outcome)))?;
        self.count_operation(op, &result);
        match result {
            Ok(Applied::Created { guid, sid, dn }) => {
                report.status.writes += 1;
                self.state.set_anchor(op.group_id(), &Anchor { guid, sid, dn: dn.clone() })?;
                created.insert(op.group_id().to_string(), dn);
            }
            Ok(Applied::Moved { dn }) => {
                report.status.writes += 1;
                if let Some(mut anchor) = self.state.anchor(op.group_id())? {
                    anchor.dn = dn;
                    self.state.set_anchor(op.group_id(), &anchor)?;
                }
            }
            Ok(Applied::Done) => report.status.writes += 1,
            Err(ApplyError::Directory(e)) => return Err(e.into()),
            Err(e @ ApplyError::Conflict { .. }) => {
                tracing::warn!(tenant = %self.config.name, group = %op.group_id(), "conflict: {e}");
                report.status.conflicts.push(GroupProblem { group_id: op.group_id().into(), reason: e.to_string() });
                failed.insert(op.group_id().to_string(), e.to_string());
            }
            Err(e) => {
                tracing::warn!(tenant = %self.config.name, group = %op.group_id(), "apply failed: {e}");
                let reason = format!("{APPLY_FAILED}: {e}");
                report.status.held_groups.push(GroupProblem { group_id: op.group_id().into(), reason: reason.clone() });
                failed.insert(op.group_id().to_string(), reason);
            }
        }
        Ok(())
    }

    fn count_operation(&self, op: &Op, result: &Result<Applied, ApplyError>) {
        let (kind, _, _) = plan::describe(op);
        let outcome = match result {
            Ok(_) => "ok",
            Err(ApplyError::Conflict { .. }) => "conflict",
            Err(_) => "failed",
        };
        let labels = crate::metrics::DirectoryLabels { tenant: self.config.name.clone(), kind: kind.into(), outcome: outcome.into() };
        crate::metrics::global().directory_operations.get_or_create(&labels).inc();
    }

    fn audit_record(&self, op: &Op, outcome: String) -> AuditRecord {
        let (operation, dn, detail) = plan::describe(op);
        AuditRecord {
            time: now(),
            tenant: self.config.name.clone(),
            group_id: op.group_id().to_string(),
            operation: operation.to_string(),
            dn,
            detail,
            outcome,
        }
    }

    /// Marks applied groups clean, forgets deleted ones, and records where managed groups live.
    fn checkpoint(&self, ids: &BTreeSet<String>, plan: &Plan, failed: &HashMap<String, String>, snapshot: &Snapshot) -> Result<(), StateError> {
        // Held deletes and renames stay pending, so they are planned again until they are allowed.
        let held: BTreeSet<&str> =
            plan.held_deletes.iter().map(|d| d.group_id.as_str()).chain(plan.held_renames.iter().map(Op::group_id)).collect();
        let deleted: BTreeSet<&str> = plan.ops.iter().filter(|op| matches!(op, Op::Delete { .. })).map(Op::group_id).collect();
        for id in ids {
            if failed.contains_key(id) || held.contains(id.as_str()) {
                continue;
            }
            if deleted.contains(id.as_str()) || plan.gone.contains(id) {
                self.state.purge_group(id)?;
                continue;
            }
            if let Some(group) = snapshot.managed.get(id) {
                let anchor = Anchor { guid: group.guid.clone(), sid: group.sid.clone(), dn: group.dn.clone() };
                if self.state.anchor(id)?.as_ref() != Some(&anchor) {
                    self.state.set_anchor(id, &anchor)?;
                }
            }
            self.state.clear_dirty(id)?;
        }
        Ok(())
    }
}

impl TenantSync<'_> {
    /// Stores what this cycle found wrong with each planned group, so `status` shows every group's
    /// current problems and not only those of the groups the last cycle touched.
    fn record_problems(&self, ids: &BTreeSet<String>, plan: &Plan, status: &TenantStatus) -> Result<(), StateError> {
        let mut problems: BTreeMap<&str, GroupProblems> = ids.iter().map(|id| (id.as_str(), GroupProblems::default())).collect();
        for s in &status.skipped_members {
            if let Some(p) = problems.get_mut(s.group_id.as_str()) {
                p.skipped_members.push((s.member_id.clone(), s.reason.clone()));
            }
        }
        for c in &status.conflicts {
            if let Some(p) = problems.get_mut(c.group_id.as_str()) {
                p.conflict = Some(c.reason.clone());
            }
        }
        for h in &status.held_groups {
            if let Some(p) = problems.get_mut(h.group_id.as_str()) {
                p.held = Some(h.reason.clone());
            }
        }
        for e in &status.excluded {
            if let Some(p) = problems.get_mut(e.group_id.as_str()) {
                p.excluded = Some(e.reason.clone());
            }
        }
        let purged: BTreeSet<&str> = plan.gone.iter().map(String::as_str).collect();
        for (id, mut p) in problems {
            if purged.contains(id) || self.state.group(id)?.is_none() {
                continue;
            }
            self.count_failures(id, &mut p)?;
            self.state.set_problems(id, &p)?;
        }
        Ok(())
    }

    /// A group whose apply keeps failing is quarantined: it leaves the pending set, so quiet cycles stop
    /// retrying it, until it changes in the cloud or a full reconcile plans it again.
    fn count_failures(&self, id: &str, problems: &mut GroupProblems) -> Result<(), StateError> {
        let failed = problems.held.as_deref().is_some_and(|h| h.starts_with(APPLY_FAILED));
        if !failed {
            return Ok(());
        }
        problems.failures = self.state.problems_of(id)?.map_or(0, |p| p.failures) + 1;
        if problems.failures >= QUARANTINE_AFTER {
            let reason = problems.held.take().unwrap_or_default();
            problems.held = Some(format!(
                "{QUARANTINED} after {} failed attempts; retried when the group changes or at the next full reconcile: {reason}",
                problems.failures
            ));
            self.state.clear_dirty(id)?;
        }
        Ok(())
    }

    /// Replaces the cycle's own lists with every group's stored problems.
    fn load_problems(&self, status: &mut TenantStatus) -> Result<(), StateError> {
        status.skipped_members.clear();
        status.conflicts.clear();
        status.held_groups.clear();
        status.excluded.clear();
        for (id, p) in self.state.problems()? {
            if let Some(reason) = p.excluded {
                status.excluded.push(GroupProblem { group_id: id.clone(), reason });
            }
            for (member_id, reason) in p.skipped_members {
                status.skipped_members.push(SkippedMember { group_id: id.clone(), member_id, reason });
            }
            if let Some(reason) = p.conflict {
                status.conflicts.push(GroupProblem { group_id: id.clone(), reason });
            }
            if let Some(reason) = p.held {
                status.held_groups.push(GroupProblem { group_id: id.clone(), reason });
            }
        }
        Ok(())
    }
}

/// How many writes are journaled (and flushed) at a time before they are sent.
const JOURNAL_CHUNK: usize = 64;

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
