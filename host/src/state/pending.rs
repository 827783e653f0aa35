//! Which groups still await a directory apply, each group's problems as of its last plan, and the changes
//! applied within the thresholds' window.

use super::*;

/// A kind of change whose count the thresholds limit over a rolling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    Deletes,
    Renames,
    MemberRemovals,
}

impl Threshold {
    /// Where the changes applied recently are kept: `[(seconds since the Unix epoch, count)]`.
    pub(super) fn key(self) -> &'static [u8] {
        match self {
            Threshold::Deletes => b"c\0window-deletes",
            Threshold::Renames => b"c\0window-renames",
            Threshold::MemberRemovals => b"c\0window-member-removals",
        }
    }
}

/// What kept parts of a group from being written, as of the last time the group was planned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupProblems {
    /// Members not written: (member id, reason).
    pub skipped_members: Vec<(String, SkipReason)>,
    /// The group's name is taken by an object the agent does not manage.
    pub conflict: Option<String>,
    /// Why nothing of the group is written (refused or failed).
    pub held: Option<HeldReason>,
    /// Why a transform keeps the group out of AD.
    #[serde(default)]
    pub excluded: Option<String>,
    /// Cycles in a row in which applying the group failed.
    #[serde(default)]
    pub failures: u32,
    /// Why each object carrying the group's anchor but not its own is left alone, one per object.
    #[serde(default)]
    pub lookalikes: Vec<String>,
}

impl GroupProblems {
    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.skipped_members.is_empty()
            && self.conflict.is_none()
            && self.held.is_none()
            && self.excluded.is_none()
            && self.failures == 0
            && self.lookalikes.is_empty()
    }
}

impl TenantState {
    /// Groups whose directory changes are not applied yet.
    pub fn pending(&self) -> Result<Vec<String>, StateError> {
        let mut ids = Vec::new();
        for item in self.tree.scan_prefix(b"d\0") {
            ids.push(key_tail(&item?.0, 2));
        }
        Ok(ids)
    }

    /// Marks a group as needing a directory apply.
    pub fn mark_pending(&self, id: &str) -> Result<(), StateError> {
        self.tree.insert(key("d", &[id]), vec![])?;
        Ok(())
    }

    /// Marks every group as needing a directory apply (the naming or transform policy changed).
    pub fn mark_all_pending(&self) -> Result<(), StateError> {
        self.apply_in_batches(self.group_ids()?.into_iter().map(|id| Ok((key("d", &[&id]), Some(Vec::new())))))
    }

    /// Marks a group's directory changes as applied.
    pub fn clear_pending(&self, id: &str) -> Result<(), StateError> {
        self.tree.remove(key("d", &[id]))?;
        Ok(())
    }

    /// Records a group's problems, replacing earlier ones; nothing is kept for a group without problems.
    pub fn set_problems(&self, id: &str, problems: &GroupProblems) -> Result<(), StateError> {
        if problems.is_empty() {
            self.tree.remove(key("q", &[id]))?;
        } else {
            self.tree.insert(key("q", &[id]), encode(problems))?;
        }
        Ok(())
    }

    /// One group's recorded problems.
    pub fn problems_of(&self, id: &str) -> Result<Option<GroupProblems>, StateError> {
        self.get(&key("q", &[id]))
    }

    /// Every group's current problems.
    pub fn problems(&self) -> Result<Vec<(String, GroupProblems)>, StateError> {
        let mut all = Vec::new();
        for item in self.tree.scan_prefix(b"q\0") {
            let (k, v) = item?;
            all.push((key_tail(&k, 2), self.decode(&k, &v)?));
        }
        Ok(all)
    }

    /// Problems recorded with reasons as text (under `p`, before they were typed, under `q`) cannot be read
    /// as types: they are dropped, and every group is planned again, which records them anew.
    pub(super) fn drop_untyped_problems(&self) -> Result<(), StateError> {
        let old: Vec<sled::IVec> = self.tree.scan_prefix(b"p\0").keys().collect::<Result<_, _>>()?;
        if old.is_empty() {
            return Ok(());
        }
        // Dirty first: a crash in between leaves old records to drop again, never a group that is not replanned.
        self.mark_all_pending()?;
        for k in old {
            self.tree.remove(k)?;
        }
        Ok(())
    }

    /// How many changes of `kind` were applied since `since` (seconds since the Unix epoch).
    pub fn applied_since(&self, kind: Threshold, since: u64) -> Result<usize, StateError> {
        let applied: Vec<(u64, u64)> = self.get(kind.key())?.unwrap_or_default();
        Ok(applied.iter().filter(|(at, _)| *at >= since).map(|(_, n)| *n as usize).sum())
    }

    /// Records `count` changes of `kind` applied at `now`, forgetting those from before `since`.
    pub fn record_applied(&self, kind: Threshold, count: usize, now: u64, since: u64) -> Result<(), StateError> {
        if count == 0 {
            return Ok(());
        }
        let mut applied: Vec<(u64, u64)> = self.get(kind.key())?.unwrap_or_default();
        applied.retain(|(at, _)| *at >= since);
        applied.push((now, count as u64));
        self.tree.insert(kind.key(), encode(&applied))?;
        Ok(())
    }
}
