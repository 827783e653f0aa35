//! Reconciling groups against the directory a batch at a time: each batch's intents, directory reads, plan,
//! writes and checkpoint, so that memory follows the batch and not the tenant. Renames, moves and deletes
//! wait for the end of the cycle, where their thresholds count the whole cycle.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::PoisonError;

use super::drift::drift_cause;
use super::pim::{expiry_cause, split_expiries};
use super::{CycleOptions, CycleReport, SyncError, TenantSync};
use crate::directory::{GroupDirectory, ManagedGroups};
use crate::dn;
use crate::graph::Presence;
use crate::model::{self, DesiredMember, GroupScope, Intent, ModelSettings};
use crate::plan::{self, DirectoryGroup, GroupRef, Op, Plan, PlanOptions, Principal, Snapshot};
use crate::reasons::{HeldReason, SkipReason};
use crate::state::Threshold;
use crate::status::{GroupProblem, HeldGroup};

/// What a reconcile carries from one batch to the next.
#[derive(Default)]
struct Carry {
    /// Renames, moves and deletes by group, applied after the last batch.
    deferred: BTreeMap<String, Op>,
    /// Groups with a nested member group that a later batch creates; planned again after the last batch.
    waiting: BTreeSet<String>,
    /// Groups whose writes failed in this cycle: their later writes are skipped.
    failed: HashSet<String>,
}

impl TenantSync<'_> {
    /// Plans the groups that need it (every group on a full reconcile) against the directory and applies
    /// the plan, a batch at a time.
    pub(super) async fn reconcile<D: GroupDirectory>(
        &self,
        directory: &mut D,
        options: CycleOptions,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        directory.hold_listing(true);
        let result = async {
            let ids = if options.full { self.full_reconcile_ids(directory).await? } else { self.state.pending()? };
            self.reconcile_listed(directory, ids, options, report).await
        }
        .await;
        directory.hold_listing(false);
        result
    }

    /// Plans `ids` against the directory and applies the plan, a batch at a time.
    pub(super) async fn reconcile_ids<D: GroupDirectory>(
        &self,
        directory: &mut D,
        ids: Vec<String>,
        options: CycleOptions,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        directory.hold_listing(true);
        let result = self.reconcile_listed(directory, ids, options, report).await;
        directory.hold_listing(false);
        result
    }

    /// [`TenantSync::reconcile_ids`], the directory holding its listings.
    async fn reconcile_listed<D: GroupDirectory>(
        &self,
        directory: &mut D,
        mut ids: Vec<String>,
        options: CycleOptions,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        let settings = self.model_settings(directory.schema());
        ids.sort_unstable();
        self.progress.planning(ids.len());
        let mut carry = Carry::default();
        for (batch, later) in plan::batches(&ids, self.config.reconcile_batch) {
            if self.stop.is_set() {
                // Groups not reached, and those with writes still deferred, stay pending.
                report.stopped = true;
                return Ok(());
            }
            self.reconcile_batch(directory, batch, &settings, &later, options, &mut carry, report).await?;
        }
        // A dry run created nothing, so planning the waiting groups again would only repeat their creates.
        let mut waiting = std::mem::take(&mut carry.waiting);
        // A group whose write failed writes nothing more this cycle; its problems are recorded already.
        waiting.retain(|id| !carry.failed.contains(id));
        if !waiting.is_empty() && !options.dry_run && !options.standby {
            // Their problems are counted again, from this plan.
            report.status.skipped_members.retain(|s| !waiting.contains(&s.group_id));
            let waiting: Vec<String> = waiting.into_iter().collect();
            self.reconcile_batch(directory, &waiting, &settings, &|_| false, options, &mut carry, report).await?;
        }
        self.apply_deferred(directory, options, carry, report).await?;
        self.store.flush().await?;
        Ok(())
    }

    /// Every group a full reconcile plans: those the state knows, and the anchored groups in the target OU that
    /// it does not.
    async fn full_reconcile_ids<D: GroupDirectory>(&self, directory: &mut D) -> Result<Vec<String>, SyncError> {
        let mut ids: BTreeSet<String> = self.state.group_ids()?.into_iter().collect();
        // Look-alikes and groups with two anchored objects are reported when their batch reads them. Groups
        // the state does not know are adopted (and perhaps deleted) from the target OU only: an allowed OU may
        // be shared with groups that Connect or another tool writes with the same kind of anchor.
        let target = [self.config.directory.target_ou.clone()];
        ids.extend(directory.managed_index(&target).await?.into_iter().map(|(id, _)| id));
        Ok(ids.into_iter().collect())
    }

    /// Plans one batch, applies it except for its renames, moves and deletes (carried to the end), and
    /// checkpoints it.
    #[allow(clippy::too_many_arguments)]
    async fn reconcile_batch<D: GroupDirectory>(
        &self,
        directory: &mut D,
        batch: &[String],
        settings: &ModelSettings,
        later: &dyn Fn(&str) -> bool,
        options: CycleOptions,
        carry: &mut Carry,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        let ids: BTreeSet<String> = batch.iter().cloned().collect();
        let mut intents = self.intents(&ids, settings, report).await?;
        let ended = self.drop_ended(&mut intents)?;
        let snapshot = self.snapshot(directory, &mut intents, &mut carry.failed, report).await?;
        let mut plan = plan::plan_batch(&intents, &snapshot, later);
        self.link_with_ttl(directory, &mut plan, &snapshot, &intents).await?;
        drop(intents);
        // Ended memberships leave on time: no removal threshold holds them.
        let expiries = split_expiries(&mut plan, &snapshot, &ended);
        if !options.dry_run && !options.standby {
            // Planned again once the take-over is recorded; `plan` shows them now.
            plan.ops.retain(|op| !plan::member_change_of_takeover(op, &snapshot));
        }
        self.withhold_protected_adds(directory, &mut plan, &snapshot, report).await?;
        self.check_scope_changes(directory, &mut plan, &snapshot, report).await?;
        let held_scopes = self.hold_scope_changes(&mut plan, options, report)?;
        let (mut deferred, now): (Vec<Op>, Vec<Op>) = std::mem::take(&mut plan.ops)
            .into_iter()
            .partition(|op| plan::is_rename(op) || matches!(op, Op::Delete { .. }));
        plan.ops = now;
        if options.drift_removals_only {
            deferred.clear();
            plan.ops.retain(|op| matches!(op, Op::RemoveMembers { .. }));
        }
        let held_removals = self.hold_member_removals(&mut plan, options, report)?;
        plan.ops.extend(expiries.iter().map(|(op, _)| op.clone()));
        report.status.skipped_members.extend(plan.skipped.iter().cloned());
        report.plan.extend(plan.ops.iter().cloned());
        // Held removals and scope changes keep their group pending, so they are planned again until allowed.
        let mut unsettled: BTreeSet<String> =
            plan.waiting.iter().cloned().chain(held_removals).chain(held_scopes).collect();
        carry.waiting.extend(plan.waiting.iter().cloned());
        for op in deferred {
            unsettled.insert(op.group_id().to_string());
            carry.deferred.insert(op.group_id().to_string(), op);
        }
        self.progress.planned(batch.len(), plan.ops.len());
        if options.dry_run || options.standby {
            return Ok(());
        }
        let causes =
            |op: &Op| expiry_cause(op, &expiries).or_else(|| options.drift.then(|| drift_cause(op, &snapshot)));
        self.apply(directory, &plan, &causes, &mut carry.failed, report).await?;
        if !options.drift {
            let expired: usize = expiries
                .iter()
                .map(|(op, _)| if let Op::RemoveMembers { values, .. } = op { values.len() } else { 0 })
                .sum();
            self.record_applied(Threshold::MemberRemovals, plan::member_removals_in(&plan) - expired)?;
            self.record_applied(Threshold::Renames, scope_changes_in(&plan).len())?;
        }
        self.checkpoint(&ids, &plan, &carry.failed, &snapshot, &unsettled)?;
        // A waiting or deferred group's problems are recorded once, when it settles, or when it fails: a failed
        // group writes nothing more this cycle.
        let settled: BTreeSet<String> =
            ids.iter().filter(|id| !unsettled.contains(*id) || carry.failed.contains(*id)).cloned().collect();
        self.record_problems(&settled, &plan, &report.status)?;
        self.store.flush().await?;
        Ok(())
    }

    /// Applies the renames, moves and deletes of every batch, holding them when there are more than the
    /// tenant's thresholds allow.
    async fn apply_deferred<D: GroupDirectory>(
        &self,
        directory: &mut D,
        options: CycleOptions,
        mut carry: Carry,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        let ids: BTreeSet<String> = carry.deferred.keys().cloned().collect();
        // Those that failed in their batch had their problems recorded there.
        let unrecorded: BTreeSet<String> = ids.iter().filter(|id| !carry.failed.contains(*id)).cloned().collect();
        let (mut ops, deletes): (Vec<Op>, Vec<Op>) = carry.deferred.into_values().partition(plan::is_rename);
        ops.extend(deletes);
        let mut plan = Plan { ops, ..Plan::default() };
        let since = self.window_start();
        let thresholds = PlanOptions {
            delete_threshold: self.config.delete_threshold,
            allow_deletes: options.allow_deletes,
            rename_threshold: self.config.rename_threshold,
            allow_renames: options.allow_renames,
            recent_deletes: self.state.applied_since(Threshold::Deletes, since)?,
            recent_renames: self.state.applied_since(Threshold::Renames, since)?,
        };
        plan::hold_over_thresholds(&mut plan, thresholds);
        report.status.held_deletes = plan.held_deletes.clone();
        report.status.held_renames.extend(plan.held_renames.iter().map(|op| op.to_string()));
        report.plan.extend(plan.ops.iter().cloned());
        if options.dry_run || options.standby || ids.is_empty() {
            return Ok(());
        }
        self.progress.planned(0, plan.ops.len());
        let causes = |op: &Op| options.drift.then(|| drift_cause(op, &Snapshot::default()));
        self.apply(directory, &plan, &causes, &mut carry.failed, report).await?;
        if !options.drift {
            self.record_applied(Threshold::Renames, plan.ops.iter().filter(|op| plan::is_rename(op)).count())?;
            let deletes = plan.ops.iter().filter(|op| matches!(op, Op::Delete { .. })).count();
            self.record_applied(Threshold::Deletes, deletes)?;
        }
        self.checkpoint(&ids, &plan, &carry.failed, &Snapshot::default(), &BTreeSet::new())?;
        self.record_problems(&unrecorded, &plan, &report.status)?;
        Ok(())
    }

    /// What the directory holds for a batch: its groups and the groups they nest, found by anchor, and the
    /// principals their members name. A member already in its group needs no lookup: its extended DN gives
    /// its SID and DN, and one search per hundred groups finds which of them are groups, and of what type.
    /// A group whose own object cannot be told apart from another anchored one is left alone (and stays
    /// pending) as a conflict; look-alikes of the batch's groups are reported.
    async fn snapshot<D: GroupDirectory>(
        &self,
        directory: &mut D,
        intents: &mut BTreeMap<String, Intent>,
        failed: &mut HashSet<String>,
        report: &mut CycleReport,
    ) -> Result<Snapshot, SyncError> {
        let ids = lookup_ids(intents);
        let mut recorded = HashMap::new();
        for id in &ids {
            if let Some(anchor) = self.state.anchor(id)? {
                recorded.insert(id.clone(), anchor.guid);
            }
        }
        let ous: Vec<String> = self.config.ous().cloned().collect();
        let mut found = directory.managed_groups(&ids, &recorded, &ous).await?;
        let takeovers = self.find_converted(directory, intents, &mut found, failed, report).await?;
        self.report_ownership(&found, intents, failed, report);
        let managed = found.groups;
        let wanted = member_sids(intents);
        let mut present: HashMap<String, Principal> = HashMap::new();
        let mut holders = BTreeSet::new();
        for group in managed.values() {
            for member in &group.members {
                let Some(sid) = member.sid.as_ref().map(|s| s.to_uppercase()) else { continue };
                if wanted.contains(&sid) {
                    holders.insert(group.dn.clone());
                    present.entry(sid).or_insert_with(|| Principal {
                        dn: member.dn.clone(),
                        group_type: None,
                        classes: Vec::new(),
                    });
                }
            }
        }
        let unresolved: Vec<String> = wanted.into_iter().filter(|sid| !present.contains_key(sid)).collect();
        let mut principals = directory.principals(&unresolved).await?;
        if !present.is_empty() {
            let holders: Vec<String> = holders.into_iter().collect();
            for (sid, group) in directory.member_groups(&holders).await? {
                if let Some(principal) = present.get_mut(&sid) {
                    principal.group_type = group.group_type;
                }
            }
        }
        principals.extend(present);
        let taken_over = self.state.takeovers()?.into_iter().map(|t| t.group_id).filter(|id| managed.contains_key(id));
        let taken_over = taken_over.collect();
        Ok(Snapshot { managed, principals, domain_sid: directory.domain_sid().await, takeovers, taken_over })
    }

    /// Finds the AD groups that the batch's converted cloud groups came from, for those no anchor names yet, and
    /// adds each that may be taken over to `found`; the ids returned are taken over by this plan. A group whose
    /// AD group is gone is written as a new one. One that may not be taken over becomes a conflict that writes
    /// nothing: a second group beside the one its members know would split them.
    async fn find_converted<D: GroupDirectory>(
        &self,
        directory: &mut D,
        intents: &mut BTreeMap<String, Intent>,
        found: &mut ManagedGroups,
        failed: &mut HashSet<String>,
        report: &mut CycleReport,
    ) -> Result<HashSet<String>, SyncError> {
        let unanchored = |id: &String| !found.groups.contains_key(id) && !found.conflicts.iter().any(|(c, _)| c == id);
        let wanted: Vec<(String, String)> = intents
            .iter()
            .filter(|(id, _)| unanchored(id))
            .filter_map(|(id, intent)| match intent {
                Intent::Write(desired) => Some((id.clone(), desired.converted_from.as_ref()?.to_uppercase())),
                _ => None,
            })
            .collect();
        if wanted.is_empty() {
            return Ok(HashSet::new());
        }
        let sids: Vec<String> = wanted.iter().map(|(_, sid)| sid.clone()).collect();
        let groups = directory.groups_by_sid(&sids).await?;
        let domain = directory.domain_sid().await;
        let mut takeovers = HashSet::new();
        for (id, sid) in &wanted {
            // None: the domain's SID is unknown; Some(None): the SID is not of this domain.
            let rid = domain.as_deref().map(|domain| crate::directory::sid::domain_rid(sid, domain));
            let group = groups.get(sid);
            let refusal = match (group, rid) {
                // Not found here, and not to be written here as a second group either.
                (_, Some(None)) => Some(format!(
                    "it was converted from the group with SID {sid}, which is not of this domain; a tenant takes over groups of the domain it writes to only"
                )),
                // Gone from AD: written as a new group.
                (None, _) => continue,
                (Some(group), Some(Some(rid))) if rid < 1000 => Some(format!(
                    "the AD group {} it was converted from is one of the domain's built-in groups (RID {rid})",
                    group.dn
                )),
                (Some(group), _) if wanted.iter().filter(|(_, other)| other == sid).count() > 1 => Some(format!(
                    "several cloud groups carry the SID of the AD group {}, so none takes it over",
                    group.dn
                )),
                (Some(group), _) => self.takeover_refusal(directory, id, group).await?,
            };
            if let Some(reason) = refusal {
                self.refuse_takeover(id, format!("not taken over: {reason}"), intents, failed, report);
                continue;
            }
            let Some(group) = group else { continue };
            // An earlier take-over whose record was lost carries the anchor already: it is the same object.
            found.lookalikes.retain(|(other, dn)| !(other == id && dn::same(dn, &group.dn)));
            found.groups.insert(id.clone(), group.clone());
            takeovers.insert(id.clone());
        }
        Ok(takeovers)
    }

    /// Makes a group whose take-over is refused a conflict that writes nothing.
    fn refuse_takeover(
        &self,
        id: &str,
        reason: String,
        intents: &mut BTreeMap<String, Intent>,
        failed: &mut HashSet<String>,
        report: &mut CycleReport,
    ) {
        tracing::warn!(tenant = %self.config.name, group = %id, "conflict: {reason}");
        intents.insert(id.to_string(), Intent::Leave(reason.clone()));
        failed.insert(id.to_string());
        report.status.conflicts.push(GroupProblem { group_id: id.to_string(), reason });
    }

    /// Why the AD group `group`, which the cloud group `id` was converted from, may not be taken over: it lies
    /// outside `[tenant.adopt] ous`, carries another adminDescription, is one of AD's critical objects, or is
    /// protected.
    async fn takeover_refusal<D: GroupDirectory>(
        &self,
        directory: &mut D,
        id: &str,
        group: &DirectoryGroup,
    ) -> Result<Option<String>, SyncError> {
        let ous = &self.config.adopt.ous;
        if ous.is_empty() {
            return Ok(Some(format!(
                "it was converted from the AD group {}, and taking over converted groups is off for this tenant; list that group's OU in [tenant.adopt] ous to take it over",
                group.dn
            )));
        }
        if !ous.iter().any(|ou| dn::is_within(&group.dn, ou)) {
            return Ok(Some(format!(
                "the AD group {} it was converted from is outside every [tenant.adopt] ous entry",
                group.dn
            )));
        }
        let anchor = model::anchor_value(id);
        if let Some(value) = group.attributes.get("admindescription").and_then(|v| v.first()).filter(|v| **v != anchor)
        {
            return Ok(Some(format!(
                "the AD group {} it was converted from has adminDescription {value:?}, which is not this group's anchor; another tool may manage it",
                group.dn
            )));
        }
        if group
            .attributes
            .get("iscriticalsystemobject")
            .is_some_and(|v| v.iter().any(|x| x.eq_ignore_ascii_case("TRUE")))
        {
            return Ok(Some(format!(
                "the AD group {} it was converted from is one of AD's critical system objects",
                group.dn
            )));
        }
        let protected = self.protecting(directory, &group.dn, marked_protected(group)).await?;
        Ok(protected.map(|p| {
            format!(
                "the AD group {} it was converted from is protected (adminCount=1 or protected_groups: {p}); a cloud group must not decide who holds its rights",
                group.dn
            )
        }))
    }

    /// Where the thresholds' rolling window starts now, in seconds since the Unix epoch.
    fn window_start(&self) -> u64 {
        self.clock.now().saturating_sub(self.config.threshold_window.as_secs())
    }

    /// Counts writes of `kind` this cycle sent against the thresholds' window (failed ones too: they were
    /// meant, and a DC that refuses them now may take them later).
    fn record_applied(&self, kind: Threshold, count: usize) -> Result<(), SyncError> {
        Ok(self.state.record_applied(kind, count, self.clock.now(), self.window_start())?)
    }

    /// Takes the batch's member removals out of the plan when they, with those applied within the window,
    /// are more than `member_removal_threshold`, unless allowed. Returns the groups whose removals were held.
    fn hold_member_removals(
        &self,
        plan: &mut Plan,
        options: CycleOptions,
        report: &mut CycleReport,
    ) -> Result<Vec<String>, SyncError> {
        let planned = plan::member_removals_in(plan);
        if options.allow_member_removals || planned == 0 {
            return Ok(Vec::new());
        }
        let recent = self.state.applied_since(Threshold::MemberRemovals, self.window_start())?;
        if recent + planned <= self.config.member_removal_threshold {
            return Ok(Vec::new());
        }
        let mut held = Vec::new();
        plan.ops.retain(|op| {
            let Op::RemoveMembers { group_id, values, .. } = op else { return true };
            let reason = format!(
                "{} members not removed: {planned} removals planned and {recent} applied within threshold_window are more than member_removal_threshold ({}); review them with `plan`, then run `sync --once --allow-member-removals`",
                values.len(),
                self.config.member_removal_threshold
            );
            report.status.held_member_removals.push(GroupProblem { group_id: group_id.clone(), reason });
            held.push(group_id.clone());
            false
        });
        // A scope change waits for the removals that make it possible, and so do the adds its new scope allows.
        let changing: BTreeSet<String> =
            plan.ops.iter().filter(|op| scope_step(op).is_some()).map(|op| op.group_id().to_string()).collect();
        let waits: Vec<String> = held.iter().filter(|id| changing.contains(*id)).cloned().collect();
        hold_scope_change(plan, &waits);
        tracing::warn!(tenant = %self.config.name, planned, recent, groups = held.len(), "member removals held: more than member_removal_threshold within threshold_window");
        Ok(held)
    }

    /// Holds the batch's scope changes when they, with the renames and scope changes applied within the window,
    /// are more than `rename_threshold`, unless renames are allowed: a new naming plugin or `group_scope` can
    /// convert every group at once, as a naming plugin can rename every group. Returns the groups held.
    fn hold_scope_changes(
        &self,
        plan: &mut Plan,
        options: CycleOptions,
        report: &mut CycleReport,
    ) -> Result<Vec<String>, SyncError> {
        let changing = scope_changes_in(plan);
        if options.allow_renames || changing.is_empty() {
            return Ok(Vec::new());
        }
        let recent = self.state.applied_since(Threshold::Renames, self.window_start())?;
        if recent + changing.len() <= self.config.rename_threshold {
            return Ok(Vec::new());
        }
        for id in &changing {
            let to = plan_target(plan, id).map_or("unknown", GroupScope::name);
            report.status.held_renames.push(format!(
                "scope change of group {id} to {to}: {} scope changes planned and {recent} renames applied within threshold_window are more than rename_threshold ({})",
                changing.len(),
                self.config.rename_threshold
            ));
        }
        let held: Vec<String> = changing.into_iter().collect();
        hold_scope_change(plan, &held);
        tracing::warn!(tenant = %self.config.name, groups = held.len(), recent, "scope changes held: more than rename_threshold within threshold_window");
        Ok(held)
    }

    /// Reports the batch's look-alikes, and turns each ambiguous group into a conflict that writes nothing.
    fn report_ownership(
        &self,
        found: &ManagedGroups,
        intents: &mut BTreeMap<String, Intent>,
        failed: &mut HashSet<String>,
        report: &mut CycleReport,
    ) {
        for (id, dn) in found.lookalikes.iter().filter(|(id, _)| intents.contains_key(id)) {
            tracing::warn!(tenant = %self.config.name, group = %id, dn = %dn, "an object carries this group's anchor but is not its own; it is never written, nested or deleted");
            report.status.lookalikes.push(GroupProblem { group_id: id.clone(), reason: lookalike_reason(dn) });
        }
        for (id, reason) in &found.conflicts {
            if !intents.contains_key(id) {
                continue;
            }
            tracing::warn!(tenant = %self.config.name, group = %id, "conflict: {reason}");
            intents.insert(id.clone(), Intent::Leave(reason.clone()));
            failed.insert(id.clone());
            report.status.conflicts.push(GroupProblem { group_id: id.clone(), reason: reason.clone() });
        }
    }

    /// A member added to a group nested in a protected group (adminCount=1, or listed in
    /// `protected_groups`) would gain that group's rights, so such adds are withheld unless the tenant
    /// allows the group in `allow_protected_groups`. A new groupType would too (a distribution group that
    /// becomes a security group gives its members the rights), so it is withheld alike. Only groups with
    /// planned adds or type changes are looked at.
    async fn withhold_protected_adds<D: GroupDirectory>(
        &self,
        directory: &mut D,
        plan: &mut Plan,
        snapshot: &Snapshot,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        let mut withheld = Vec::new();
        let mut scope_held = BTreeSet::new();
        for index in 0..plan.ops.len() {
            match &plan.ops[index] {
                Op::AddMembers { group_id, target: GroupRef::Existing { dn: group_dn, .. }, .. } => {
                    if let Some(protected) = self.protection(directory, group_id, group_dn, snapshot).await? {
                        withheld.push((index, SkipReason::ProtectedGroup { protected }));
                    }
                }
                Op::Modify { group_id, dn: group_dn, changes, .. } if changes.iter().any(changes_group_type) => {
                    let (group_id, group_dn) = (group_id.clone(), group_dn.clone());
                    let step = scope_step(&plan.ops[index]).is_some();
                    if let Some(protected) = self.protection(directory, &group_id, &group_dn, snapshot).await? {
                        if let Op::Modify { changes, .. } = &mut plan.ops[index] {
                            changes.retain(|c| !changes_group_type(c));
                        }
                        if step {
                            scope_held.insert(group_id.clone());
                        }
                        // A scope change of two steps is one held change.
                        if !report.status.held_groups.iter().any(|h| h.group_id == group_id) {
                            let reason = HeldReason::GroupTypeProtected { protected };
                            report.status.held_groups.push(HeldGroup { group_id, reason });
                        }
                    }
                }
                _ => {}
            }
        }
        // By index, so before anything else leaves the plan.
        plan::withhold_adds(plan, &withheld);
        plan.ops.retain(|op| !matches!(op, Op::Modify { changes, .. } if changes.is_empty()));
        hold_scope_change(plan, &scope_held.into_iter().collect::<Vec<_>>());
        Ok(())
    }

    /// Holds each scope change that AD would refuse because of the groups the group is in: a global group in a
    /// global group cannot become universal, and a universal group in a universal group cannot become
    /// domain-local. (What its own members allow is left to the plan, which removes the members the new scope
    /// refuses before the change. Written-back groups nested in each other convert in the same cycle in id
    /// order, so a Windows DC may refuse a parent's step once, until its child has converted; it is retried.)
    /// A refused change writes none of its steps, nor its member changes.
    async fn check_scope_changes<D: GroupDirectory>(
        &self,
        directory: &mut D,
        plan: &mut Plan,
        snapshot: &Snapshot,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        let mut refused: BTreeMap<String, HeldReason> = BTreeMap::new();
        let mut from: HashMap<String, GroupScope> = HashMap::new();
        for op in &plan.ops {
            let Some(to) = scope_step(op) else { continue };
            let Op::Modify { group_id, dn, .. } = op else { continue };
            let current = snapshot.managed.get(group_id).and_then(|g| g.attributes.get("grouptype"));
            let start = current.and_then(|v| v.first()?.parse().ok()).and_then(GroupScope::of);
            let Some(step_from) = from.get(group_id).copied().or(start) else { continue };
            from.insert(group_id.clone(), to);
            let cause = match (step_from, to) {
                (GroupScope::Global, GroupScope::Universal) => SkipReason::GlobalCantHaveUniversal,
                (GroupScope::Universal, GroupScope::DomainLocal) => SkipReason::DomainLocalGroup,
                _ => continue,
            };
            let parent = if cause == SkipReason::DomainLocalGroup { GroupScope::Universal } else { GroupScope::Global };
            let parents = directory.containing_groups(dn).await?;
            if parents.values().any(|p| p.group_type.and_then(GroupScope::of) == Some(parent)) {
                let reason = HeldReason::ScopeChangeRefused {
                    from: start.map_or("unknown", GroupScope::name).to_string(),
                    to: plan_target(plan, group_id).map_or("unknown", GroupScope::name).to_string(),
                    cause: format!("{}.", cause.to_string().trim_end_matches('.')),
                };
                refused.entry(group_id.clone()).or_insert(reason);
            }
        }
        hold_scope_change(plan, &refused.keys().cloned().collect::<Vec<_>>());
        for (group_id, reason) in refused {
            tracing::warn!(tenant = %self.config.name, group = %group_id, "{reason}");
            report.status.held_groups.push(HeldGroup { group_id, reason });
        }
        Ok(())
    }

    /// The protected group that `group_dn` is in, directly or nested, unless the tenant allows the group.
    async fn protection<D: GroupDirectory>(
        &self,
        directory: &mut D,
        group_id: &str,
        group_dn: &str,
        snapshot: &Snapshot,
    ) -> Result<Option<String>, SyncError> {
        if self.config.allow_protected_groups.iter().any(|id| id == group_id) {
            return Ok(None);
        }
        let marked = snapshot.managed.get(group_id).is_some_and(marked_protected);
        self.protecting(directory, group_dn, marked).await
    }

    /// The protected group that `group_dn` is or is in: itself when `marked` (adminCount=1) or listed in
    /// `protected_groups`, else a group marked or listed that it is nested in, however deeply.
    async fn protecting<D: GroupDirectory>(
        &self,
        directory: &mut D,
        group_dn: &str,
        marked: bool,
    ) -> Result<Option<String>, SyncError> {
        let deny = &self.config.protected_groups;
        if marked || deny.iter().any(|d| dn::same(d, group_dn)) {
            return Ok(Some(group_dn.to_string()));
        }
        Ok(directory.protecting_group(group_dn, deny).await?)
    }

    /// Intents for `ids`, plus orphans: managed AD groups whose cloud group the state does not know.
    async fn intents(
        &self,
        ids: &BTreeSet<String>,
        settings: &ModelSettings,
        report: &mut CycleReport,
    ) -> Result<BTreeMap<String, Intent>, SyncError> {
        let mut intents = crate::plugins::off_reactor(|| self.known_intents(ids, settings, report))?;
        // Known to the directory only: the state was lost or the delete was never recorded.
        let orphans: Vec<&String> = ids.iter().filter(|id| !intents.contains_key(*id)).collect();
        for id in orphans {
            let intent = match self.graph.group_presence(id).await? {
                Presence::Gone => Intent::Delete,
                Presence::SoftDeleted => Intent::Leave("soft-deleted in Entra ID".into()),
                Presence::Live => Intent::Leave("in Entra ID, but not read from Graph yet".into()),
            };
            intents.insert(id.clone(), intent);
        }
        Ok(intents)
    }

    /// Intents of the groups the state knows, through the tenant's policy (plugins run here).
    fn known_intents(
        &self,
        ids: &BTreeSet<String>,
        settings: &ModelSettings,
        report: &mut CycleReport,
    ) -> Result<BTreeMap<String, Intent>, SyncError> {
        let mut policy = self.policy.lock().unwrap_or_else(PoisonError::into_inner);
        let mut intents = BTreeMap::new();
        // Few groups are taken over, so one scan beats a lookup per group.
        let taken_over: HashMap<String, String> =
            self.state.takeovers()?.into_iter().map(|t| (t.group_id, t.sid)).collect();
        for id in ids {
            let Some(group) = self.state.group(id)? else { continue };
            let (mut intent, skipped) = model::intent(&self.state, &group, settings, policy.policy.as_mut())?;
            if let Intent::Write(desired) = &mut intent
                && desired.converted_from.is_none()
            {
                // Taken over, it keeps the name AD gave it even if Graph stops sending the SID.
                desired.converted_from = taken_over.get(id).cloned();
            }
            report.status.skipped_members.extend(skipped);
            // A group the rules leave out is reported only when it was written: a group owner who renames a
            // group out of `include` must not freeze its AD group unseen, and a tenant's thousands of groups
            // the rules never took need no line each.
            let was_written = matches!(intent, Intent::LeftOut(_)) && self.state.anchor(id)?.is_some();
            match &intent {
                Intent::Refuse(reason) => {
                    report.status.held_groups.push(HeldGroup { group_id: id.clone(), reason: reason.clone() })
                }
                Intent::Exclude(reason) => {
                    report.status.excluded.push(GroupProblem { group_id: id.clone(), reason: reason.clone() })
                }
                Intent::LeftOut(reason) if was_written => {
                    let reason = format!("{reason}; its AD group is kept as it is and no longer changed");
                    report.status.excluded.push(GroupProblem { group_id: id.clone(), reason });
                }
                _ => {}
            }
            intents.insert(id.clone(), intent);
        }
        Ok(intents)
    }
}

/// Whether AD marks the group as protected (adminCount=1, which it sets on its protected groups and their members).
fn marked_protected(group: &DirectoryGroup) -> bool {
    group.attributes.get("admincount").is_some_and(|v| v.iter().any(|x| x == "1"))
}

/// Takes the scope changes of `groups` out of the plan, with their member changes: the plan made those for the
/// new scope, so without the change they could be what the current scope refuses.
fn hold_scope_change(plan: &mut Plan, groups: &[String]) {
    plan.ops.retain(|op| {
        let member_change = matches!(op, Op::AddMembers { .. } | Op::RemoveMembers { .. });
        !((scope_step(op).is_some() || member_change) && groups.iter().any(|id| id == op.group_id()))
    });
}

/// The scope a groupType-only modify moves a group to: one step of a scope change.
fn scope_step(op: &Op) -> Option<GroupScope> {
    let Op::Modify { changes, .. } = op else { return None };
    match changes.as_slice() {
        [plan::AttributeChange::Replace(name, values)] if name.eq_ignore_ascii_case("groupType") => {
            values.first()?.parse().ok().and_then(GroupScope::of)
        }
        _ => None,
    }
}

/// The groups whose scope the plan changes.
fn scope_changes_in(plan: &Plan) -> BTreeSet<String> {
    plan.ops.iter().filter(|op| scope_step(op).is_some()).map(|op| op.group_id().to_string()).collect()
}

/// Where a group's planned scope steps end.
fn plan_target(plan: &Plan, group_id: &str) -> Option<GroupScope> {
    plan.ops.iter().rev().filter(|op| op.group_id() == group_id).find_map(scope_step)
}

fn changes_group_type(change: &plan::AttributeChange) -> bool {
    let (plan::AttributeChange::Replace(name, _) | plan::AttributeChange::Clear(name)) = change;
    name.eq_ignore_ascii_case("groupType")
}

/// Why a look-alike of a group is left alone, for `status`.
fn lookalike_reason(dn: &str) -> String {
    format!(
        "look-alike: {dn} carries this group's anchor but is not its own (not the recorded objectGUID, or outside the tenant's OUs); it is never written, nested or deleted: remove its adminDescription or delete it"
    )
}

/// The groups to look up by anchor: the planned ones and the cloud groups they list as members.
fn lookup_ids(intents: &BTreeMap<String, Intent>) -> Vec<String> {
    let mut ids: BTreeSet<String> = intents.keys().cloned().collect();
    for intent in intents.values() {
        if let Intent::Write(desired) = intent {
            for member in &desired.members {
                if let DesiredMember::CloudGroup { member_id, .. } = member {
                    ids.insert(member_id.clone());
                }
            }
        }
    }
    ids.into_iter().collect()
}

/// Every SID (upper case) the planned groups name as members.
fn member_sids(intents: &BTreeMap<String, Intent>) -> BTreeSet<String> {
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
    sids
}
