//! Applying a plan: every write journaled before it is sent, its outcome audited, and the checkpoint.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{CycleReport, SyncError, TenantSync};
use crate::directory::{Applied, ApplyError, GroupDirectory};
use crate::plan::{self, AttributeChange, GroupRef, MemberValue, Op, Plan, Snapshot};
use crate::reasons::HeldReason;
use crate::state::{Anchor, AuditRecord, StateError};
use crate::status::{GroupProblem, HeldGroup, TakenOver};

/// How many writes are journaled (and flushed) at a time before they are sent.
const JOURNAL_CHUNK: usize = 64;

/// One wave of a journaled chunk: `members` index into `ops` and `keys` (the operations' journal keys).
#[derive(Clone, Copy)]
struct Wave<'a> {
    ops: &'a [Op],
    keys: &'a [u64],
    members: &'a [usize],
}

/// Why an operation is written when not for a cloud change, as the audit log and metrics tell it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cause {
    /// An on-premises edit undone; `found` is what the directory held.
    DriftRepair { found: String },
    /// Time-bound memberships that ended at `ended` (seconds since the epoch) and leave the group.
    PimExpiry { ended: f64 },
}

impl Cause {
    fn name(&self) -> &'static str {
        match self {
            Cause::DriftRepair { .. } => "drift-repair",
            Cause::PimExpiry { .. } => "pim-expiry",
        }
    }
}

/// The cause of each operation of a plan; `None` for a cloud change.
pub(super) type Causes<'a> = &'a (dyn Fn(&Op) -> Option<Cause> + Sync);

impl TenantSync<'_> {
    /// Applies the plan, adding the groups whose operations fail to `failed` (they stay pending). The
    /// operations of groups already in `failed` are skipped. Each chunk is journaled, then sent in [`waves`]:
    /// the operations of one wave are in flight together, and each group's operations keep the plan's order.
    pub(super) async fn apply<D: GroupDirectory>(
        &self,
        directory: &mut D,
        plan: &Plan,
        causes: Causes<'_>,
        failed: &mut HashSet<String>,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        let mut created: HashMap<String, String> = HashMap::new();
        for chunk in plan.ops.chunks(JOURNAL_CHUNK) {
            // Another agent may have taken the lease over since the last batch (a pause, a release).
            if let Some(fence) = &self.fence {
                fence.confirm(directory).await?;
            }
            // The intents are durable before any of these writes is sent: a crash cannot hide a write.
            let records: Vec<AuditRecord> =
                chunk.iter().map(|op| self.audit_record(op, "pending".into(), causes(op).as_ref())).collect();
            let keys = self.state.journal(&records)?;
            self.store.flush().await?;
            // The USNs these writes take lie between the two reads, so that the drift watch can tell them
            // from on-premises edits.
            let before = if self.own_writes.is_on() { directory.highest_usn().await } else { None };
            let waves = waves(chunk);
            for (n, wave) in waves.iter().enumerate() {
                let sent = Wave { ops: chunk, keys: &keys, members: wave };
                if let Err(e) = self.apply_wave(directory, sent, causes, &mut created, failed, report).await {
                    // The cycle stops here; the later waves were never sent.
                    let unsent: Vec<(u64, Option<AuditRecord>)> =
                        waves[n + 1..].iter().flatten().map(|&i| (keys[i], None)).collect();
                    self.state.settle_all(&unsent)?;
                    return Err(e);
                }
            }
            if let Some(before) = before
                && let Some(after) = directory.highest_usn().await
            {
                self.own_writes.record(chunk.iter().map(Op::group_id), before, after);
            }
        }
        Ok(())
    }

    /// Sends one wave's operations together and files their outcomes, in one store transaction. A directory
    /// failure ends the cycle, but only after every answered write of the wave is filed.
    async fn apply_wave<D: GroupDirectory>(
        &self,
        directory: &mut D,
        wave: Wave<'_>,
        causes: Causes<'_>,
        created: &mut HashMap<String, String>,
        failed: &mut HashSet<String>,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        if self.stop.is_set() {
            report.stopped = true;
            failed.extend(wave.members.iter().map(|&i| wave.ops[i].group_id().to_string()));
        }
        let (send, skip): (Vec<usize>, Vec<usize>) =
            wave.members.iter().partition(|&&i| !failed.contains(wave.ops[i].group_id()));
        let ops: Vec<&Op> = send.iter().map(|&i| &wave.ops[i]).collect();
        let go_on = || !self.stop.is_set();
        let results = if ops.is_empty() { Vec::new() } else { directory.apply_all(&ops, created, &go_on).await };
        let mut outcomes: Vec<(u64, Option<AuditRecord>)> = skip.iter().map(|&i| (wave.keys[i], None)).collect();
        for ((&i, op), result) in send.iter().zip(&ops).zip(&results) {
            let outcome = result.as_ref().map(|result| match result {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            });
            outcomes.push((wave.keys[i], outcome.map(|outcome| self.audit_record(op, outcome, causes(op).as_ref()))));
        }
        self.state.settle_all(&outcomes)?;
        let mut stopped = Ok(());
        for (op, result) in ops.into_iter().zip(results) {
            self.progress.wrote();
            let Some(result) = result else {
                // Not sent: the agent is stopping, or the directory failed (and that error ends the cycle).
                report.stopped |= self.stop.is_set();
                failed.insert(op.group_id().to_string());
                continue;
            };
            let filed = self.file_result(op, result, causes, created, failed, report);
            if stopped.is_ok() {
                stopped = filed;
            }
        }
        skip.iter().for_each(|_| self.progress.wrote());
        stopped
    }

    /// Counts one answered operation and records what it changed: the new group's anchor, its new DN, a
    /// take-over, or why the group is held.
    fn file_result(
        &self,
        op: &Op,
        result: Result<Applied, ApplyError>,
        causes: Causes<'_>,
        created: &mut HashMap<String, String>,
        failed: &mut HashSet<String>,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        self.count_operation(op, &result);
        if result.is_ok()
            && let Some(cause) = causes(op)
        {
            self.count_cause(op, &cause);
        }
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
            Ok(Applied::Done) => {
                report.status.writes += 1;
                if let Op::TakeOver { dn, sid, .. } = op {
                    tracing::info!(tenant = %self.config.name, group = %op.group_id(), dn = %dn, sid = %sid, "took over the AD group this group was converted from");
                    let record = TakenOver {
                        group_id: op.group_id().into(),
                        dn: dn.clone(),
                        sid: sid.clone(),
                        time: self.clock.now(),
                    };
                    self.state.record_takeover(&record)?;
                }
            }
            Err(ApplyError::Directory(e)) => return Err(e.into()),
            Err(e @ (ApplyError::Conflict { .. } | ApplyError::AnchorTaken { .. })) => {
                tracing::warn!(tenant = %self.config.name, group = %op.group_id(), "conflict: {e}");
                report.status.conflicts.push(GroupProblem { group_id: op.group_id().into(), reason: e.to_string() });
                failed.insert(op.group_id().to_string());
            }
            Err(e) => {
                tracing::warn!(tenant = %self.config.name, group = %op.group_id(), "apply failed: {e}");
                let reason = HeldReason::ApplyFailed { cause: e.to_string() };
                failed.insert(op.group_id().to_string());
                report.status.held_groups.push(HeldGroup { group_id: op.group_id().into(), reason });
            }
        }
        Ok(())
    }

    pub(super) fn count_operation(&self, op: &Op, result: &Result<Applied, ApplyError>) {
        let (kind, _, _) = plan::describe(op);
        let outcome = match result {
            Ok(_) => "ok",
            Err(ApplyError::Conflict { .. } | ApplyError::AnchorTaken { .. }) => "conflict",
            Err(_) => "failed",
        };
        let labels = crate::metrics::DirectoryLabels {
            tenant: self.config.name.clone(),
            kind: kind.into(),
            outcome: outcome.into(),
        };
        crate::metrics::global().directory_operations.get_or_create(&labels).inc();
    }

    /// Counts and logs a write made for `cause`: a drift repair is a warning, because someone changed a group
    /// that the cloud manages.
    fn count_cause(&self, op: &Op, cause: &Cause) {
        let tenant = crate::metrics::TenantLabel { tenant: self.config.name.clone() };
        let (operation, dn, detail) = plan::describe(op);
        match cause {
            Cause::DriftRepair { found } => {
                let kind = drift_kind(op);
                let labels = crate::metrics::DriftLabels { tenant: tenant.tenant, kind: kind.into() };
                crate::metrics::global().drift_repairs.get_or_create(&labels).inc();
                tracing::warn!(tenant = %self.config.name, group = %op.group_id(), dn = %dn, "repaired an on-premises edit ({kind}): found {found}; restored with {operation} {detail}");
            }
            Cause::PimExpiry { ended } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or_default();
                let metrics = crate::metrics::global();
                metrics.pim_expiries.get_or_create(&tenant).inc();
                metrics.pim_expiry_lateness.get_or_create(&tenant).observe((now - ended).max(0.0));
                tracing::info!(tenant = %self.config.name, group = %op.group_id(), dn = %dn, "time-bound membership ended: {detail}");
            }
        }
    }

    pub(super) fn audit_record(&self, op: &Op, outcome: String, cause: Option<&Cause>) -> AuditRecord {
        let (operation, dn, detail) = plan::describe(op);
        AuditRecord {
            time: self.clock.now(),
            tenant: self.config.name.clone(),
            group_id: op.group_id().to_string(),
            operation: operation.to_string(),
            dn,
            detail,
            outcome,
            cause: cause.map(|c| c.name().to_string()),
            found: match cause {
                Some(Cause::DriftRepair { found }) => Some(found.clone()),
                _ => None,
            },
        }
    }

    /// Marks applied groups clean, forgets deleted ones, and records where managed groups live. Groups in
    /// `unsettled` still have writes to come later in the cycle, so they stay pending.
    pub(super) fn checkpoint(
        &self,
        ids: &BTreeSet<String>,
        plan: &Plan,
        failed: &HashSet<String>,
        snapshot: &Snapshot,
        unsettled: &BTreeSet<String>,
    ) -> Result<(), StateError> {
        // Held deletes and renames stay pending, so they are planned again until they are allowed.
        let held: BTreeSet<&str> = plan
            .held_deletes
            .iter()
            .map(|d| d.group_id.as_str())
            .chain(plan.held_renames.iter().map(Op::group_id))
            .collect();
        let deleted: BTreeSet<&str> =
            plan.ops.iter().filter(|op| matches!(op, Op::Delete { .. })).map(Op::group_id).collect();
        for id in ids {
            if failed.contains(id) || held.contains(id.as_str()) {
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
            if !unsettled.contains(id) {
                self.state.clear_pending(id)?;
            }
        }
        Ok(())
    }
}

/// What a drift repair of `op` undoes, for `writeback_drift_repairs_total`.
pub(super) fn drift_kind(op: &Op) -> &'static str {
    match op {
        Op::AddMembers { .. } | Op::RemoveMembers { .. } => "member",
        Op::Modify { .. } | Op::TakeOver { .. } => "attribute",
        Op::Rename { new_parent: Some(_), .. } => "move",
        Op::Rename { .. } => "rename",
        Op::Create { .. } => "recreate",
        Op::Delete { .. } => "delete",
    }
}

/// Splits a chunk's operations (in plan order) into waves that may each be in flight at once, by index. An
/// operation joins the first wave after every earlier operation that touches its group or a group it names, or
/// that names its group. So a group's operations keep their order; a member add that names a group waits for
/// that group's create, rename or scope change; a create waits for the rename or delete that frees its DN; and
/// two groups that only share members (users) go together. Renames (which may free a sAMAccountName that
/// another rename takes) and scope changes (which AD checks against memberships no operation names) keep the
/// plan's order among themselves: they are few, and held over a threshold.
pub(super) fn waves(ops: &[Op]) -> Vec<Vec<usize>> {
    // The latest wave that touches, or names, each group (by "id:" cloud id or "dn:" DN key).
    let mut touched: HashMap<String, usize> = HashMap::new();
    let mut named: HashMap<String, usize> = HashMap::new();
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let (own, names) = groups_of(op);
        let after = own
            .iter()
            .chain(&names)
            .filter_map(|g| touched.get(g))
            .chain(own.iter().filter_map(|g| named.get(g)))
            .max();
        let wave = after.map_or(0, |w| w + 1);
        for g in own {
            let latest = touched.entry(g).or_insert(wave);
            *latest = (*latest).max(wave);
        }
        for g in names {
            let latest = named.entry(g).or_insert(wave);
            *latest = (*latest).max(wave);
        }
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        waves[wave].push(i);
    }
    waves
}

/// Whether `op` writes a group's groupType.
fn changes_scope(op: &Op) -> bool {
    let (Op::Modify { changes, .. } | Op::TakeOver { changes, .. }) = op else { return false };
    changes.iter().any(|change| {
        let (AttributeChange::Replace(name, _) | AttributeChange::Clear(name)) = change;
        name.eq_ignore_ascii_case("groupType")
    })
}

/// The group an operation writes (its cloud id and every DN it has or takes), and the entries it names as
/// members (DNs, or the cloud ids of groups created in this apply).
fn groups_of(op: &Op) -> (Vec<String>, Vec<String>) {
    let id = |id: &str| format!("id:{id}");
    let dn = |dn: &str| format!("dn:{}", crate::dn::key(dn));
    let mut own = vec![id(op.group_id())];
    let mut names = Vec::new();
    if plan::is_rename(op) {
        own.push("renames".into());
    }
    if changes_scope(op) {
        own.push("scope changes".into());
    }
    match op {
        Op::Create { dn: at, attributes, .. } => {
            own.push(dn(at));
            let inline = attributes.iter().filter(|(name, _)| name.eq_ignore_ascii_case("member"));
            names.extend(inline.flat_map(|(_, values)| values).map(|v| dn(v)));
        }
        Op::Rename { dn: at, new_cn, new_parent, .. } => {
            own.push(dn(at));
            let parent = new_parent.clone().or_else(|| crate::dn::parent(at)).unwrap_or_default();
            own.push(dn(&crate::dn::child(new_cn, &parent)));
        }
        Op::Modify { dn: at, .. } | Op::TakeOver { dn: at, .. } | Op::Delete { dn: at, .. } => own.push(dn(at)),
        Op::AddMembers { target, values, .. } => {
            if let GroupRef::Existing { dn: at, .. } = target {
                own.push(dn(at));
            }
            names.extend(values.iter().map(|v| match v {
                MemberValue::Dn(value) => dn(value),
                MemberValue::NewGroup(group) => id(group),
            }));
        }
        Op::RemoveMembers { dn: at, values, .. } => {
            own.push(dn(at));
            names.extend(values.iter().map(|v| dn(v)));
        }
    }
    (own, names)
}
