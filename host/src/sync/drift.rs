//! Live drift enforcement: between reconciles, the daemon looks for on-premises edits of the groups it manages
//! (one search on the indexed `uSNChanged`, when the DC's change notification tells of a change and every
//! `drift_watch` besides) and plans those groups again at once. The agent's own writes are told apart by the
//! USNs they took; an edit that keeps coming back is repaired with back-off and shown in `status`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::apply::Cause;
use super::{CycleOptions, CycleReport, SyncError, TenantSync};
use crate::directory::{ChangedGroup, Directory, GroupDirectory};
use crate::plan::{AttributeChange, Op, Snapshot};
use crate::status::DriftFight;

/// The USN windows of this agent's own writes, by group: a change of the group inside its window is the
/// agent's. Off unless a drift watch runs, so that one-shot runs read no USNs.
#[derive(Debug, Clone, Default)]
pub struct OwnWrites(Option<Arc<Mutex<UsnWindows>>>);

/// By group, the USN before and after the batch of writes that last wrote it.
type UsnWindows = HashMap<String, (u64, u64)>;

impl OwnWrites {
    /// Tracks the USNs of writes, for a drift watch.
    pub fn on() -> OwnWrites {
        OwnWrites(Some(Arc::default()))
    }

    /// Whether writes are tracked.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Records that the writes to `groups` took USNs after `before` and up to `after`.
    pub(super) fn record<'a>(&self, groups: impl Iterator<Item = &'a str>, before: u64, after: u64) {
        let Some(map) = &self.0 else { return };
        let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
        for group in groups {
            map.insert(group.to_string(), (before, after));
        }
    }

    /// Whether the change of `group` at `usn` lies in the window of the agent's last write to it.
    fn is_own(&self, group: &str, usn: u64) -> bool {
        let Some(map) = &self.0 else { return false };
        let map = map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(group).is_some_and(|&(before, after)| usn > before && usn <= after)
    }

    /// Forgets the windows that end at or below `usn`: changes at or below it were looked at already.
    fn forget_up_to(&self, usn: u64) {
        if let Some(map) = &self.0 {
            map.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, &mut (_, after)| after > usn);
        }
    }
}

/// A group repaired again within this time counts as a fight with whoever edits it.
const FIGHT_WINDOW: Duration = Duration::from_secs(600);
/// Repairs in a row within [`FIGHT_WINDOW`] that are applied at once; later ones wait, doubling each time.
const FREE_REPAIRS: u32 = 2;
/// The first wait of a fight, and the longest.
const FIRST_WAIT: Duration = Duration::from_secs(5);
const LONGEST_WAIT: Duration = Duration::from_secs(300);

/// How long to wait before the next repair of a group repaired `repairs` times in a row.
fn back_off(repairs: u32) -> Duration {
    match repairs.checked_sub(FREE_REPAIRS) {
        None | Some(0) => Duration::ZERO,
        Some(n) => FIRST_WAIT.saturating_mul(1 << (n - 1).min(16)).min(LONGEST_WAIT),
    }
}

/// One group's repairs in a row.
#[derive(Debug, Clone)]
struct Fight {
    repairs: u32,
    last: Instant,
    /// Seconds since the epoch of the last repair, for `status`.
    last_time: u64,
}

impl Fight {
    fn next_allowed(&self) -> Instant {
        self.last + back_off(self.repairs)
    }
}

/// One tenant's drift watch: its own directory connection, the USN it has looked up to, and the fights.
#[derive(Default)]
pub struct DriftWatch {
    directory: Option<Directory>,
    /// The DC and the USN up to which its changes were looked at.
    mark: Option<(String, u64)>,
    /// Recorded objectGUID to cloud id, built when a changed group's anchor does not name the group whose
    /// objectGUID it has; dropped after each cycle, which may have created groups.
    guids: Option<HashMap<String, String>>,
    fights: HashMap<String, Fight>,
    /// Edited groups whose repair waits for its back-off.
    waiting: BTreeSet<String>,
    /// The tasks listening for the DC's change notifications.
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DriftWatch {
    fn drop(&mut self) {
        for listener in self.listeners.drain(..) {
            listener.abort();
        }
    }
}

/// Notification searches one connection carries: Windows AD allows five.
const NOTIFICATIONS_PER_CONNECTION: usize = 5;

/// Listens for the DC's change notifications under `bases` on a connection of its own, waking `wake` at each,
/// and listens again after `retry` when the connection ends; stops when the DC offers none.
async fn listen(
    directory: crate::config::DirectoryConfig,
    tenant: String,
    bases: Vec<String>,
    wake: Arc<tokio::sync::Notify>,
    retry: Duration,
) {
    loop {
        let listened = async {
            let password = directory.password(&tenant)?;
            let mut connection = Directory::connect(&directory, &password).await?;
            Ok::<bool, SyncError>(connection.notify_changes(&bases, Arc::clone(&wake)).await?)
        };
        match listened.await {
            Ok(false) => {
                tracing::info!(%tenant, "the DC offers no change notification; the drift watch looks every drift_watch");
                return;
            }
            Ok(true) => tracing::debug!(%tenant, "the change notification connection ended; listening again"),
            Err(e) => tracing::debug!(%tenant, "change notification failed: {e}; listening again"),
        }
        tokio::time::sleep(retry).await;
    }
}

impl DriftWatch {
    /// Listens for the DC's change notifications on the tenant's OUs, each of which wakes `wake`, so that an
    /// edit there is looked at as it commits rather than at the next look. A DC that offers none leaves the
    /// looks every `drift_watch`; a connection that ends is opened again after `retry`.
    pub fn listen(&mut self, sync: &TenantSync<'_>, wake: Arc<tokio::sync::Notify>, retry: Duration) {
        let ous: Vec<String> = sync.config.ous().cloned().collect();
        for bases in ous.chunks(NOTIFICATIONS_PER_CONNECTION).map(<[String]>::to_vec) {
            let (directory, tenant) = (sync.config.directory.clone(), sync.config.name.clone());
            self.listeners.push(tokio::spawn(listen(directory, tenant, bases, Arc::clone(&wake), retry)));
        }
    }

    /// Drops what a cycle may have changed: the map of recorded GUIDs.
    pub fn cycle_done(&mut self) {
        self.guids = None;
    }

    /// Looks for on-premises edits since the last look and, unless `standby`, repairs them; returns the groups
    /// whose edits keep coming back, for `status`. The first look only takes the DC's USN as its mark. A
    /// connection that fails is opened again at the next look.
    pub async fn poll(&mut self, sync: &TenantSync<'_>, standby: bool) -> Result<Vec<DriftFight>, SyncError> {
        let result = self.look(sync, standby).await;
        if result.is_err()
            && let Some(directory) = self.directory.take()
        {
            directory.close().await;
        }
        result
    }

    async fn look(&mut self, sync: &TenantSync<'_>, standby: bool) -> Result<Vec<DriftFight>, SyncError> {
        let mut directory = match self.directory.take() {
            Some(directory) => directory,
            None => sync.open_directory().await?,
        };
        let result = self.look_with(&mut directory, sync, standby).await;
        self.directory = Some(directory);
        result
    }

    async fn look_with(
        &mut self,
        directory: &mut Directory,
        sync: &TenantSync<'_>,
        standby: bool,
    ) -> Result<Vec<DriftFight>, SyncError> {
        let (server, highest) = directory.usn_mark().await?;
        let since = match &self.mark {
            Some((seen, usn)) if *seen == server => *usn,
            Some((seen, _)) => {
                // Another DC's USNs say nothing about this one's: check every group at the next cycle.
                tracing::warn!(tenant = %sync.config.name, before = %seen, now = %server, "the drift watch reached another DC; every group is planned again at the next cycle");
                sync.state.mark_all_pending()?;
                self.mark = Some((server, highest));
                return Ok(self.fights());
            }
            None => {
                self.mark = Some((server, highest));
                return Ok(Vec::new());
            }
        };
        let changed = directory.groups_changed_since(since).await?;
        // Every USN up to `highest` was committed before the search; a later one may yet have a lower one
        // beside it, so changes above it are looked at again next time.
        let up_to = highest.max(since);
        let (edited, own) = self.changed_groups(sync, &changed)?;
        if standby {
            for id in &edited {
                tracing::info!(tenant = %sync.config.name, group = %id, "group edited on-premises; the lease holder repairs it");
            }
        } else {
            // Groups whose cloud changes still wait for a cycle are left to it: it plans them against the
            // directory anyway, and their writes are not drift repairs.
            let pending: HashSet<String> = sync.state.pending()?.into_iter().collect();
            for id in edited.into_iter().filter(|id| !pending.contains(id)) {
                tracing::info!(tenant = %sync.config.name, group = %id, "group changed on-premises; planning it again");
                self.waiting.insert(id);
            }
            // An edit made between a cycle's read of a group and its write to it carries no USN of its own
            // any more: the agent's write took a later one. So the groups the agent wrote are planned again
            // too, quietly; what differs is drift like any other.
            for id in own.into_iter().filter(|id| !pending.contains(id)) {
                tracing::debug!(tenant = %sync.config.name, group = %id, "checking a group this agent wrote");
                self.waiting.insert(id);
            }
            self.repair_due(directory, sync).await?;
        }
        // The repairs' own writes lie in their windows; changes up to the mark are looked at.
        self.mark = Some((server, up_to));
        sync.own_writes.forget_up_to(up_to);
        Ok(self.fights())
    }

    /// The managed groups among `changed`: those edited by others, and those whose last change lies in the
    /// window of the agent's own write to them.
    fn changed_groups(
        &mut self,
        sync: &TenantSync<'_>,
        changed: &[ChangedGroup],
    ) -> Result<(BTreeSet<String>, BTreeSet<String>), SyncError> {
        let (mut edited, mut own) = (BTreeSet::new(), BTreeSet::new());
        for change in changed {
            for id in self.groups_of(sync, change)? {
                if sync.own_writes.is_own(&id, change.usn) {
                    own.insert(id);
                } else {
                    edited.insert(id);
                }
            }
        }
        own.retain(|id| !edited.contains(id));
        Ok((edited, own))
    }

    /// The tenant's groups a changed object may be: the one whose objectGUID the state recorded, and the one
    /// its anchor names. An anchor copied onto another group, or changed, must not hide the group's own edit.
    fn groups_of(&mut self, sync: &TenantSync<'_>, change: &ChangedGroup) -> Result<Vec<String>, SyncError> {
        let mut ids = Vec::new();
        if let Some(id) = &change.anchor_id
            && sync.state.group(id)?.is_some()
        {
            ids.push(id.clone());
            if sync.state.anchor(id)?.is_some_and(|a| a.guid == change.guid) {
                return Ok(ids);
            }
        }
        if let Some(id) = self.guid_map(sync)?.get(&change.guid)
            && !ids.contains(id)
        {
            ids.push(id.clone());
        }
        Ok(ids)
    }

    fn guid_map(&mut self, sync: &TenantSync<'_>) -> Result<&HashMap<String, String>, SyncError> {
        if self.guids.is_none() {
            let anchors = sync.state.anchors()?;
            self.guids = Some(anchors.into_iter().map(|(id, anchor)| (anchor.guid, id)).collect());
        }
        Ok(self.guids.get_or_insert_default())
    }

    /// Repairs the waiting groups whose back-off has passed (and, of the others, removes the members added
    /// on-premises), and records the fights.
    async fn repair_due(&mut self, directory: &mut Directory, sync: &TenantSync<'_>) -> Result<(), SyncError> {
        let now = Instant::now();
        self.fights.retain(|_, f| now.duration_since(f.last) < FIGHT_WINDOW);
        let (due, restrained): (Vec<String>, Vec<String>) =
            self.waiting.iter().cloned().partition(|id| self.fights.get(id).is_none_or(|f| f.next_allowed() <= now));
        let mut repaired: Vec<String> = Vec::new();
        if !due.is_empty() {
            let report = sync.repair_drift(directory, &due, false).await?;
            repaired.extend(report.plan.iter().map(|op| op.group_id().to_string()));
            for id in &due {
                self.waiting.remove(id);
            }
        }
        // A back-off never leaves a member added on-premises in the group: a moment of membership is enough
        // for a Kerberos ticket. Only the rest of the repair waits.
        if !restrained.is_empty() {
            let report = sync.repair_drift(directory, &restrained, true).await?;
            repaired.extend(report.plan.iter().map(|op| op.group_id().to_string()));
        }
        repaired.sort_unstable();
        repaired.dedup();
        for id in &repaired {
            let fight = self.fights.entry(id.clone()).or_insert(Fight { repairs: 0, last: now, last_time: 0 });
            fight.repairs += 1;
            fight.last = now;
            fight.last_time = sync.clock.now();
            if fight.repairs > FREE_REPAIRS {
                tracing::warn!(tenant = %sync.config.name, group = %id, repairs = fight.repairs, "an on-premises edit of this group keeps coming back; the next repair waits {:?}", back_off(fight.repairs));
            }
        }
        Ok(())
    }

    /// The groups repaired more than [`FREE_REPAIRS`] times in a row, for `status`.
    fn fights(&self) -> Vec<DriftFight> {
        let now = Instant::now();
        let mut fights: Vec<DriftFight> = self
            .fights
            .iter()
            .filter(|(_, f)| f.repairs > FREE_REPAIRS && now.duration_since(f.last) < FIGHT_WINDOW)
            .map(|(id, f)| DriftFight {
                group_id: id.clone(),
                repairs: f.repairs,
                last_repair: f.last_time,
                next_repair_in_secs: f.next_allowed().saturating_duration_since(now).as_secs(),
            })
            .collect();
        fights.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        fights
    }
}

impl TenantSync<'_> {
    /// Plans `ids` again against the directory and applies what differs (with `removals_only`, only the
    /// removal of members), each write audited as a drift repair. Their cloud state is unchanged since their
    /// last apply, so whatever differs was edited on-premises. The thresholds do not hold repairs: they put
    /// back what the agent wrote, and one would let whoever adds more members than it keep them.
    pub async fn repair_drift<D: GroupDirectory>(
        &self,
        directory: &mut D,
        ids: &[String],
        removals_only: bool,
    ) -> Result<CycleReport, SyncError> {
        let mut report = CycleReport::default();
        let options = CycleOptions {
            drift: true,
            drift_removals_only: removals_only,
            allow_member_removals: true,
            allow_renames: true,
            ..CycleOptions::default()
        };
        self.reconcile_ids(directory, ids.to_vec(), options, &mut report).await?;
        Ok(report)
    }
}

/// The cause of a drift repair: what the directory held where `op` restores the cloud's value.
pub(super) fn drift_cause(op: &Op, snapshot: &Snapshot) -> Cause {
    let group = snapshot.managed.get(op.group_id());
    let found = match op {
        Op::Modify { changes, .. } | Op::TakeOver { changes, .. } => {
            let shown: Vec<String> = changes
                .iter()
                .map(|change| {
                    let name = match change {
                        AttributeChange::Replace(name, _) | AttributeChange::Clear(name) => name,
                    };
                    match group.and_then(|g| g.attributes.get(&name.to_ascii_lowercase())) {
                        Some(values) if !values.is_empty() => format!("{name}={}", values.join("; ")),
                        _ => format!("{name} unset"),
                    }
                })
                .collect();
            shown.join(", ")
        }
        Op::Rename { dn, .. } => format!("the group at {dn}"),
        Op::AddMembers { values, .. } => format!("{} members missing", values.len()),
        Op::RemoveMembers { values, .. } => {
            format!("{} members not in the cloud group: {}", values.len(), values.join("; "))
        }
        Op::Create { .. } => "no object: the group was deleted on-premises".into(),
        Op::Delete { dn, .. } => format!("the group at {dn}"),
    };
    Cause::DriftRepair { found }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_wait_longer_the_longer_an_edit_keeps_coming_back() {
        assert_eq!(back_off(1), Duration::ZERO);
        assert_eq!(back_off(2), Duration::ZERO);
        assert_eq!(back_off(3), Duration::from_secs(5));
        assert_eq!(back_off(4), Duration::from_secs(10));
        assert_eq!(back_off(7), Duration::from_secs(80));
        assert_eq!(back_off(40), LONGEST_WAIT);
    }

    #[test]
    fn a_change_inside_the_window_of_an_own_write_is_the_agents() {
        let own = OwnWrites::on();
        own.record(["g"].into_iter(), 100, 110);
        assert!(own.is_own("g", 105));
        assert!(own.is_own("g", 110));
        assert!(!own.is_own("g", 100), "before the write");
        assert!(!own.is_own("g", 111), "an edit after the write");
        assert!(!own.is_own("h", 105), "another group");
        own.forget_up_to(110);
        assert!(!own.is_own("g", 105));
        let off = OwnWrites::default();
        off.record(["g"].into_iter(), 100, 110);
        assert!(!off.is_own("g", 105));
    }
}
