//! PIM for Groups: each group's time-bound members and their ends, and where the slow sweep over every
//! written group has got to.

use super::*;
use crate::pim::Schedule;

/// Where the sweep stands: the last group it read, and when.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SweepMark {
    pub after: Option<String>,
    /// Seconds since the Unix epoch.
    pub time: f64,
}

impl TenantState {
    /// A group's time-bound members; empty when it has none.
    pub fn schedule(&self, id: &str) -> Result<Schedule, StateError> {
        Ok(self.get(&key("e", &[id]))?.unwrap_or_default())
    }

    /// Records a group's time-bound members; a group without any keeps no record.
    pub fn set_schedule(&self, id: &str, schedule: &Schedule) -> Result<(), StateError> {
        if schedule.ends.is_empty() {
            self.tree.remove(key("e", &[id]))?;
        } else {
            self.tree.insert(key("e", &[id]), encode(schedule))?;
        }
        Ok(())
    }

    /// Every group with time-bound members, with them.
    pub fn schedules(&self) -> Result<BTreeMap<String, Schedule>, StateError> {
        let mut out = BTreeMap::new();
        for item in self.tree.scan_prefix(b"e\0") {
            let (k, v) = item?;
            out.insert(key_tail(&k, 2), self.decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Groups whose schedule is still to be read because it may have changed (cloud changes a cycle had no
    /// room to read), in id order.
    pub fn schedules_unread(&self) -> Result<Vec<String>, StateError> {
        let mut ids = Vec::new();
        for item in self.tree.scan_prefix(b"f\0") {
            ids.push(key_tail(&item?.0, 2));
        }
        Ok(ids)
    }

    /// Marks groups whose schedule is still to be read.
    pub fn mark_schedules_unread(&self, ids: &[String]) -> Result<(), StateError> {
        self.apply_in_batches(ids.iter().map(|id| Ok((key("f", &[id]), Some(Vec::new())))))
    }

    /// Records that a group's schedule was read.
    pub fn mark_schedule_read(&self, id: &str) -> Result<(), StateError> {
        self.tree.remove(key("f", &[id]))?;
        Ok(())
    }

    /// Where the sweep stands.
    pub fn sweep_mark(&self) -> Result<SweepMark, StateError> {
        Ok(self.get(b"c\0pim-sweep")?.unwrap_or_default())
    }

    /// Records where the sweep stands.
    pub fn set_sweep_mark(&self, mark: &SweepMark) -> Result<(), StateError> {
        self.tree.insert(b"c\0pim-sweep", encode(mark))?;
        Ok(())
    }
}
