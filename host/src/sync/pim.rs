//! PIM for Groups in a cycle: which groups' schedule instances are read (every cycle for groups with
//! time-bound members and groups with cloud changes, and a slow sweep over the rest), and the removal of
//! members whose end has come, even while group delta still lists them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::apply::Cause;
use super::{CycleOptions, CycleReport, SyncError, TenantSync};
use crate::directory::GroupDirectory;
use crate::model::{DesiredMember, Intent};
use crate::pim::Schedule;
use crate::plan::{MemberValue, Op, Plan, Snapshot};
use crate::state::SweepMark;
use crate::status::TimeBoundMember;

/// The most groups whose instances one cycle reads beyond those with time-bound members: a first cycle
/// has every group pending, and the sweep reads the rest within `sweep`.
const POLLS_PER_CYCLE: usize = 200;

/// Seconds since the Unix epoch, with the fraction: ends are compared to the second and better.
pub(super) fn wall_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// The members of a batch's groups whose end has come, by group: their SIDs (as the directory names
/// them) and ends.
pub(super) type Ended = HashMap<String, HashMap<String, f64>>;

impl TenantSync<'_> {
    /// Whether the tenant reads PIM for Groups.
    pub(super) fn pim_on(&self) -> bool {
        self.config.pim.enabled
    }

    /// First thing in a cycle, before Graph is asked anything: the members whose end has come leave their
    /// groups. An agent that was down at an end removes the member at its first cycle; Graph being
    /// unreachable does not keep a privilege in place.
    pub(super) async fn apply_expiries(
        &self,
        options: CycleOptions,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        if !self.pim_on() || options.standby {
            return Ok(());
        }
        let due = self.mark_due_expiries(options.dry_run)?;
        if due.is_empty() || options.dry_run {
            return Ok(());
        }
        tracing::info!(tenant = %self.config.name, groups = due.len(), "time-bound memberships ended; removing them first");
        let mut directory = self.open_directory().await?;
        let options = CycleOptions { full: false, drift: false, ..options };
        let result = self.reconcile_ids(&mut directory, due, options, report).await;
        directory.close().await;
        result
    }

    /// Marks the groups with a member whose end has come pending, and (unless this is a dry run) records
    /// those ends as planned for. Returns the groups.
    pub(super) fn mark_due_expiries(&self, dry_run: bool) -> Result<Vec<String>, SyncError> {
        let now = wall_now();
        let mut due = Vec::new();
        for (id, mut schedule) in self.state.schedules()? {
            let members = schedule.due(now);
            if members.is_empty() {
                continue;
            }
            self.state.mark_pending(&id)?;
            if !dry_run {
                schedule.applied.extend(members);
                self.state.set_schedule(&id, &schedule)?;
            }
            due.push(id);
        }
        Ok(due)
    }

    /// Reads the schedule instances of the groups that need it this cycle. A group whose read fails keeps what
    /// was known of it (its ends still apply); the failures are logged once and shown in `status`.
    pub(super) async fn read_schedules(&self, report: &mut CycleReport) -> Result<(), SyncError> {
        if !self.pim_on() {
            return Ok(());
        }
        let now = wall_now();
        let ids = self.schedules_to_read(now)?;
        let mut failed = 0;
        for id in &ids {
            let Some(read) = self.unless_stopped(self.graph.schedule_instances(id)).await else { break };
            let instances = match read {
                Ok(instances) => instances,
                Err(e) => {
                    failed += 1;
                    report.status.pim_error.get_or_insert_with(|| format!("group {id}: {e}"));
                    continue;
                }
            };
            self.state.mark_schedule_read(id)?;
            let old = self.state.schedule(id)?;
            let mut new = old.merged(&instances, now);
            let members: BTreeSet<String> = self.state.members(id)?.into_iter().map(|(m, _)| m).collect();
            new.forget_gone(now, |m| members.contains(m));
            let ended = |s: &Schedule| s.ended(now).into_keys().map(str::to_string).collect::<BTreeSet<_>>();
            // A new activation of an ended member, or an early deactivation, changes what AD should hold.
            if ended(&old) != ended(&new) {
                self.state.mark_pending(id)?;
            }
            self.state.set_schedule(id, &new)?;
        }
        if let Some(first) = &report.status.pim_error {
            tracing::warn!(tenant = %self.config.name, failed, read = ids.len(), "cannot read PIM schedule instances; the time-bound members already known still leave at their ends; first: {first}");
        }
        self.store.flush().await?;
        Ok(())
    }

    /// The groups to read this cycle: those with time-bound members, then those with cloud changes, then
    /// the sweep's share of the written groups (all of them once per `sweep`).
    pub(super) fn schedules_to_read(&self, now: f64) -> Result<Vec<String>, SyncError> {
        let mut ids: BTreeSet<String> = self.state.schedules()?.into_keys().collect();
        let time_bound = ids.len();
        let budget = ids.len() + POLLS_PER_CYCLE;
        // Groups with cloud changes (a new activation arrives as a member added), and those earlier cycles
        // had no room for, stay marked until read: a first cycle's thousands are read over the next cycles.
        let mut changed = Vec::new();
        for id in self.state.pending()? {
            if self.state.group(&id)?.is_some() && !ids.contains(&id) {
                changed.push(id);
            }
        }
        self.state.mark_schedules_unread(&changed)?;
        for id in self.state.schedules_unread()? {
            if ids.len() >= budget {
                break;
            }
            if self.state.group(&id)?.is_some() {
                ids.insert(id);
            } else {
                self.state.mark_schedule_read(&id)?;
            }
        }
        let mark = self.state.sweep_mark()?;
        let managed = self.state.managed_count();
        let elapsed = if mark.time > 0.0 { (now - mark.time).max(0.0) } else { f64::MAX };
        let share = (managed as f64 * elapsed / self.config.pim.sweep.as_secs_f64()).ceil();
        let share = if share.is_finite() { (share as usize).min(managed) } else { managed };
        let allowed = share.min(budget.saturating_sub(ids.len()));
        if allowed > 0 {
            let swept = self.state.managed_ids_after(mark.after.as_deref(), allowed)?;
            let after = swept.last().cloned().or(mark.after);
            ids.extend(swept);
            // A share cut short by the budget moves the mark on by what was read, so the sweep catches up.
            let time = if allowed < share && mark.time > 0.0 {
                mark.time + self.config.pim.sweep.as_secs_f64() * allowed as f64 / managed as f64
            } else {
                now
            };
            self.state.set_sweep_mark(&SweepMark { after, time })?;
        }
        tracing::info!(tenant = %self.config.name, time_bound, share, read = ids.len(), "reading PIM schedule instances");
        Ok(ids.into_iter().collect())
    }

    /// Takes the members whose end has come out of the batch's intents: group delta may still list them.
    /// Returns them by group, named by SID.
    pub(super) fn drop_ended(&self, intents: &mut BTreeMap<String, Intent>) -> Result<Ended, SyncError> {
        let mut dropped = Ended::new();
        if !self.pim_on() {
            return Ok(dropped);
        }
        let now = wall_now();
        for (id, intent) in intents.iter_mut() {
            let Intent::Write(desired) = intent else { continue };
            let schedule = self.state.schedule(id)?;
            let ended = schedule.ended(now);
            if ended.is_empty() {
                continue;
            }
            let mut sids = HashMap::new();
            for member in &desired.members {
                let (member_id, sid) = match member {
                    DesiredMember::Sid { member_id, sid } => (member_id, Some(sid.clone())),
                    DesiredMember::CloudGroup { member_id, converted_from } => (
                        member_id,
                        match self.state.anchor(member_id)? {
                            Some(anchor) => anchor.sid,
                            None => converted_from.clone(),
                        },
                    ),
                };
                if let (Some(&end), Some(sid)) = (ended.get(member_id.as_str()), sid) {
                    sids.insert(sid.to_ascii_uppercase(), end);
                }
            }
            desired.members.retain(|m| !ended.contains_key(member_id(m)));
            dropped.insert(id.clone(), sids);
        }
        Ok(dropped)
    }

    /// Writes the adds of time-bound members as TTL links where the forest expires them by itself, so that
    /// the membership ends on time even while the agent is down.
    pub(super) async fn link_with_ttl<D: GroupDirectory>(
        &self,
        directory: &mut D,
        plan: &mut Plan,
        snapshot: &Snapshot,
        intents: &BTreeMap<String, Intent>,
    ) -> Result<(), SyncError> {
        let adds = |op: &Op| matches!(op, Op::AddMembers { .. } | Op::Create { .. });
        if !self.pim_on() || !plan.ops.iter().any(adds) {
            return Ok(());
        }
        let now = wall_now();
        // The end of each time-bound member about to be added, by group and the DN the plan adds it with.
        let mut ends: HashMap<(String, String), f64> = HashMap::new();
        for op in plan.ops.iter().filter(|op| adds(op)) {
            let Some(Intent::Write(desired)) = intents.get(op.group_id()) else { continue };
            let schedule = self.state.schedule(op.group_id())?;
            for member in &desired.members {
                let DesiredMember::Sid { member_id, sid } = member else { continue };
                let principal = snapshot.principals.get(&sid.to_ascii_uppercase());
                if let (Some(&end), Some(principal)) = (schedule.ends.get(member_id), principal) {
                    ends.insert((op.group_id().to_string(), principal.dn.to_ascii_lowercase()), end);
                }
            }
        }
        if ends.is_empty() || !directory.time_to_live_links().await {
            return Ok(());
        }
        let link = |group: &str, dn: &mut String| {
            let end = ends.get(&(group.to_string(), dn.to_ascii_lowercase()));
            if let Some(linked) = end.and_then(|&end| crate::pim::ttl_value(dn, end, now)) {
                *dn = linked;
            }
        };
        for op in &mut plan.ops {
            match op {
                Op::AddMembers { group_id, values, .. } => {
                    for value in values.iter_mut() {
                        if let MemberValue::Dn(dn) = value {
                            link(group_id, dn);
                        }
                    }
                }
                Op::Create { group_id, attributes, .. } => {
                    for (_, values) in attributes.iter_mut().filter(|(name, _)| name.eq_ignore_ascii_case("member")) {
                        values.iter_mut().for_each(|dn| link(group_id, dn));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The time-bound members whose end is still to come, for `status`, and how long the oldest end whose
    /// group still waits for its apply is overdue, for `writeback_pim_overdue_seconds`.
    pub(super) fn time_bound_members(&self) -> Result<Vec<TimeBoundMember>, SyncError> {
        let now = wall_now();
        let pending: BTreeSet<String> = self.state.pending()?.into_iter().collect();
        let mut overdue: f64 = 0.0;
        let mut out = Vec::new();
        for (group_id, schedule) in self.state.schedules()? {
            if pending.contains(&group_id)
                && let Some(first) = schedule.ended(now).values().copied().min_by(f64::total_cmp)
            {
                overdue = overdue.max(now - first);
            }
            for (member_id, &end) in &schedule.ends {
                if end > now {
                    out.push(TimeBoundMember {
                        group_id: group_id.clone(),
                        member_id: member_id.clone(),
                        ends: end as u64,
                    });
                }
            }
        }
        crate::metrics::global()
            .pim_overdue
            .get_or_create(&crate::metrics::TenantLabel { tenant: self.config.name.clone() })
            .set(overdue as i64);
        Ok(out)
    }

    /// When the next time-bound membership ends, in seconds since the Unix epoch.
    pub fn next_expiry(&self) -> Option<f64> {
        if !self.pim_on() {
            return None;
        }
        let now = wall_now();
        self.state.schedules().ok()?.values().filter_map(|s| s.next_end(now)).min_by(f64::total_cmp)
    }
}

fn member_id(member: &DesiredMember) -> &str {
    match member {
        DesiredMember::Sid { member_id, .. } | DesiredMember::CloudGroup { member_id, .. } => member_id,
    }
}

/// Moves the removals of ended members out of the plan's member removals into operations of their own,
/// so that they are audited as expiries and no removal threshold holds them. Returns those operations with
/// the latest end each removes.
pub(super) fn split_expiries(plan: &mut Plan, snapshot: &Snapshot, ended: &Ended) -> Vec<(Op, f64)> {
    let mut expiries = Vec::new();
    for op in &mut plan.ops {
        let Op::RemoveMembers { group_id, guid, dn, values } = op else { continue };
        let (Some(sids), Some(group)) = (ended.get(group_id.as_str()), snapshot.managed.get(group_id.as_str())) else {
            continue;
        };
        let end_of = |value: &String| {
            let member = group.members.iter().find(|m| &m.dn == value)?;
            sids.get(&member.sid.as_deref()?.to_ascii_uppercase()).copied()
        };
        let (expired, rest): (Vec<String>, Vec<String>) = values.drain(..).partition(|v| end_of(v).is_some());
        if expired.is_empty() {
            *values = rest;
            continue;
        }
        let latest = expired.iter().filter_map(end_of).fold(f64::MIN, f64::max);
        *values = rest;
        let expiry =
            Op::RemoveMembers { group_id: group_id.clone(), guid: guid.clone(), dn: dn.clone(), values: expired };
        expiries.push((expiry, latest));
    }
    plan.ops.retain(|op| !matches!(op, Op::RemoveMembers { values, .. } if values.is_empty()));
    expiries
}

/// The cause of an expiry's write, when `op` is one of `expiries`.
pub(super) fn expiry_cause(op: &Op, expiries: &[(Op, f64)]) -> Option<Cause> {
    expiries.iter().find(|(expiry, _)| expiry == op).map(|&(_, ended)| Cause::PimExpiry { ended })
}
