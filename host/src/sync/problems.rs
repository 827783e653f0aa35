//! Each group's problems (skipped members, conflicts, held, excluded), kept so that `status` shows them all,
//! and the quarantine of groups that keep failing.

use std::collections::{BTreeMap, BTreeSet};

use super::{QUARANTINE_AFTER, TenantSync};
use crate::model::SkippedMember;
use crate::plan::Plan;
use crate::reasons::HeldReason;
use crate::state::{GroupProblems, StateError};
use crate::status::{GroupProblem, HeldGroup, TenantStatus};

impl TenantSync<'_> {
    /// Stores what this cycle found wrong with each planned group, so `status` shows every group's
    /// current problems and not only those of the groups the last cycle touched.
    pub(super) fn record_problems(
        &self,
        ids: &BTreeSet<String>,
        plan: &Plan,
        status: &TenantStatus,
    ) -> Result<(), StateError> {
        let mut problems: BTreeMap<&str, GroupProblems> =
            ids.iter().map(|id| (id.as_str(), GroupProblems::default())).collect();
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
        for l in &status.lookalikes {
            if let Some(p) = problems.get_mut(l.group_id.as_str()) {
                p.lookalikes.push(l.reason.clone());
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
    pub(super) fn count_failures(&self, id: &str, problems: &mut GroupProblems) -> Result<(), StateError> {
        let Some(HeldReason::ApplyFailed { cause }) = &problems.held else {
            return Ok(());
        };
        problems.failures = self.state.problems_of(id)?.map_or(0, |p| p.failures) + 1;
        if problems.failures >= QUARANTINE_AFTER {
            problems.held = Some(HeldReason::Quarantined { attempts: problems.failures, cause: cause.clone() });
            self.state.clear_pending(id)?;
        }
        Ok(())
    }

    /// Replaces the cycle's own lists with every group's stored problems.
    pub(super) fn load_problems(&self, status: &mut TenantStatus) -> Result<(), StateError> {
        status.skipped_members.clear();
        status.conflicts.clear();
        status.held_groups.clear();
        status.excluded.clear();
        status.lookalikes.clear();
        for (id, p) in self.state.problems()? {
            for reason in p.lookalikes {
                status.lookalikes.push(GroupProblem { group_id: id.clone(), reason });
            }
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
                status.held_groups.push(HeldGroup { group_id: id.clone(), reason });
            }
        }
        Ok(())
    }
}
