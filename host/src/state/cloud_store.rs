//! The merged cloud state: groups, users and memberships as every delta page so far describes them, and the
//! bookkeeping of full rounds.

use super::*;

/// An entry that could not be read, with its object's id when the id itself could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub id: Option<String>,
    pub reason: String,
}

/// What merging one page changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeStats {
    pub entries: usize,
    pub member_changes: usize,
}

/// Pending writes of one page, applied as one atomic batch. Reads see the page's own earlier writes.
pub(super) struct PageWrites<'a> {
    state: &'a TenantState,
    batch: sled::Batch,
    groups: HashMap<String, CloudGroup>,
    users: HashMap<String, Option<CloudUser>>,
    /// Member lists the page changed, by group.
    members: HashMap<String, BTreeMap<String, MemberKind>>,
    /// Group lists the page changed, by member.
    parents: HashMap<String, BTreeSet<String>>,
    cleared: HashSet<String>,
}

impl<'a> PageWrites<'a> {
    pub(super) fn new(state: &'a TenantState) -> Self {
        PageWrites {
            state,
            batch: sled::Batch::default(),
            groups: HashMap::new(),
            users: HashMap::new(),
            members: HashMap::new(),
            parents: HashMap::new(),
            cleared: HashSet::new(),
        }
    }

    pub(super) fn members_of(&mut self, group: &str) -> Result<&mut BTreeMap<String, MemberKind>, StateError> {
        if !self.members.contains_key(group) {
            let stored = self.state.member_list(group)?;
            self.members.insert(group.to_string(), stored);
        }
        Ok(self.members.get_mut(group).expect("inserted above"))
    }

    pub(super) fn parents_of(&mut self, member: &str) -> Result<&mut BTreeSet<String>, StateError> {
        if !self.parents.contains_key(member) {
            let stored = self.state.parent_list(member)?;
            self.parents.insert(member.to_string(), stored);
        }
        Ok(self.parents.get_mut(member).expect("inserted above"))
    }

    pub(super) fn group(&mut self, id: &str) -> Result<&mut CloudGroup, StateError> {
        if !self.groups.contains_key(id) {
            let stored =
                self.state.group(id)?.unwrap_or_else(|| CloudGroup { id: id.to_string(), ..Default::default() });
            self.groups.insert(id.to_string(), stored);
        }
        Ok(self.groups.get_mut(id).expect("inserted above"))
    }

    pub(super) fn put_member(&mut self, group: &str, member: &str, kind: MemberKind) -> Result<(), StateError> {
        self.members_of(group)?.insert(member.to_string(), kind);
        self.parents_of(member)?.insert(group.to_string());
        Ok(())
    }

    pub(super) fn drop_member(&mut self, group: &str, member: &str) -> Result<(), StateError> {
        self.members_of(group)?.remove(member);
        self.parents_of(member)?.remove(group);
        Ok(())
    }

    /// Marks `group` as listed in this full round; true the first time (also across pages).
    pub(super) fn first_in_round(&mut self, group: &str) -> Result<bool, StateError> {
        if !self.cleared.insert(group.to_string()) || self.state.tree.contains_key(key("s", &[group]))? {
            return Ok(false);
        }
        self.batch.insert(key("s", &[group]), vec![]);
        Ok(true)
    }

    /// In a full round the first entry of a group replaces everything stored about it: Graph leaves unset
    /// properties out, and members removed while our cursor was lost must not linger either.
    pub(super) fn start_afresh(&mut self, group: &str) -> Result<(), StateError> {
        *self.group(group)? = CloudGroup { id: group.to_string(), ..Default::default() };
        let members: Vec<String> = std::mem::take(self.members_of(group)?).into_keys().collect();
        for member in members {
            self.parents_of(&member)?.remove(group);
        }
        self.batch.remove(key("b", &[group]));
        Ok(())
    }

    pub(super) fn mark_pending(&mut self, group: &str) {
        self.batch.insert(key("d", &[group]), vec![]);
    }

    /// Records what an unreadable entry means for the round: in a delta round its change is lost, so a full
    /// round must follow; in a full round an entry without an id keeps every unlisted object from counting
    /// as gone.
    pub(super) fn note_unreadable(&mut self, resource: Resource, unnamed: bool, cursor: &Cursor) {
        if !cursor.full {
            self.batch.insert(resource.resync_key(), vec![]);
        } else if unnamed {
            self.batch.insert(resource.unnamed_key(), vec![]);
        }
    }

    pub(super) fn commit(mut self, resource: Resource, cursor: &Cursor) -> Result<(), StateError> {
        for (id, group) in &self.groups {
            self.batch.insert(key("g", &[id]), encode(group));
        }
        for (id, user) in &self.users {
            match user {
                Some(user) => self.batch.insert(key("u", &[id]), encode(user)),
                None => self.batch.remove(key("u", &[id])),
            }
        }
        for (group, list) in &self.members {
            put_or_remove(
                &mut self.batch,
                key("m", &[group]),
                (!list.is_empty()).then(|| members::encode_members(list)),
            );
        }
        for (member, list) in &self.parents {
            put_or_remove(&mut self.batch, key("r", &[member]), (!list.is_empty()).then(|| members::encode_ids(list)));
        }
        self.batch.insert(resource.key(), encode(cursor));
        self.state.tree.apply_batch(self.batch)?;
        Ok(())
    }
}

/// Stores `value` under `k`, or removes `k` when there is none (an empty list is not kept).
pub(super) fn put_or_remove(batch: &mut sled::Batch, k: Vec<u8>, value: Option<Vec<u8>>) {
    match value {
        Some(value) => batch.insert(k, value),
        None => batch.remove(k),
    }
}

/// The identity fields of a user that decide how it is written as a member.
pub(super) fn user_identity(user: &CloudUser) -> (Option<bool>, Option<String>) {
    (user.on_premises_sync_enabled, user.on_premises_security_identifier.clone())
}

impl crate::cloud::CloudView for TenantState {
    type Error = StateError;
    fn unreadable(&self, id: &str) -> Result<Option<String>, StateError> {
        TenantState::unreadable(self, id)
    }
    fn members(&self, group: &str) -> Result<Vec<(String, MemberKind)>, StateError> {
        TenantState::members(self, group)
    }
    fn user(&self, id: &str) -> Result<Option<CloudUser>, StateError> {
        TenantState::user(self, id)
    }
    fn group(&self, id: &str) -> Result<Option<CloudGroup>, StateError> {
        TenantState::group(self, id)
    }
}

impl TenantState {
    /// A group's stored member list.
    pub(super) fn member_list(&self, group: &str) -> Result<BTreeMap<String, MemberKind>, StateError> {
        let k = key("m", &[group]);
        match self.tree.get(&k)? {
            Some(bytes) => members::decode_members(&bytes).ok_or_else(|| self.corrupt(&k, "not a member list")),
            None => Ok(BTreeMap::new()),
        }
    }

    /// The stored list of groups that list `member`.
    pub(super) fn parent_list(&self, member: &str) -> Result<BTreeSet<String>, StateError> {
        let k = key("r", &[member]);
        match self.tree.get(&k)? {
            Some(bytes) => members::decode_ids(&bytes).ok_or_else(|| self.corrupt(&k, "not a group list")),
            None => Ok(BTreeSet::new()),
        }
    }

    /// Merges a page of group entries and records the cursor after it, in one atomic batch. `unreadable` are
    /// the page's entries that named a group but could not be parsed: that group is held (see
    /// [`TenantState::unreadable`]) and, in a full round, counts as listed, so that it is never taken for deleted.
    pub fn merge_group_page(
        &self,
        entries: &[GroupEntry],
        unreadable: &[Unreadable],
        cursor: &Cursor,
    ) -> Result<MergeStats, StateError> {
        let mut writes = PageWrites::new(self);
        let mut stats = MergeStats::default();
        let mut resync = false;
        for entry in entries {
            stats.entries += 1;
            stats.member_changes += entry.members.len();
            if cursor.full {
                if writes.first_in_round(&entry.id)? {
                    writes.start_afresh(&entry.id)?;
                }
            } else if self.tree.contains_key(key("b", &[&entry.id]))? {
                // What the unreadable entry carried is lost; only a full round makes the group whole again.
                resync = true;
            }
            writes.group(&entry.id)?.apply(entry);
            for change in &entry.members {
                if change.removed {
                    writes.drop_member(&entry.id, &change.id)?;
                } else {
                    writes.put_member(&entry.id, &change.id, change.kind)?;
                }
            }
            writes.mark_pending(&entry.id);
            // A nested group's change (scope, removal, first arrival) can change how its parents write it.
            for parent in self.groups_containing(&entry.id)? {
                writes.mark_pending(&parent);
            }
        }
        for bad in unreadable {
            writes.note_unreadable(Resource::Groups, bad.id.is_none(), cursor);
            let Some(id) = &bad.id else { continue };
            if cursor.full {
                writes.first_in_round(id)?;
            }
            // The group is known from now on, so that an AD group carrying its anchor is never an orphan.
            writes.group(id)?;
            writes.batch.insert(key("b", &[id]), bad.reason.as_bytes());
            writes.mark_pending(id);
        }
        if resync {
            writes.batch.insert(Resource::Groups.resync_key(), vec![]);
        }
        writes.commit(Resource::Groups, cursor)?;
        Ok(stats)
    }

    /// Why a group is held because Graph sent an entry for it that could not be read, if it is. Such a group
    /// is neither written nor deleted until a full round lists it readably from its first entry on.
    pub fn unreadable(&self, id: &str) -> Result<Option<String>, StateError> {
        Ok(self.tree.get(key("b", &[id]))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Merges a page of user entries; groups that contain a changed user become pending. A user in `unreadable`
    /// keeps what was stored about it and, in a full round, counts as listed.
    pub fn merge_user_page(
        &self,
        entries: &[UserEntry],
        unreadable: &[Unreadable],
        cursor: &Cursor,
    ) -> Result<MergeStats, StateError> {
        let mut writes = PageWrites::new(self);
        for entry in entries {
            let first = cursor.full
                && writes.cleared.insert(entry.id.clone())
                && !self.tree.contains_key(key("su", &[&entry.id]))?;
            if cursor.full {
                writes.batch.insert(key("su", &[&entry.id]), vec![]);
            }
            let current = match writes.users.get(&entry.id) {
                Some(user) => user.clone(),
                None => self.user(&entry.id)?,
            };
            // In a full round the first entry is the whole user: properties it leaves out are unset.
            let base = if first {
                current.as_ref().map(|u| CloudUser { id: u.id.clone(), ..Default::default() })
            } else {
                current.clone()
            };
            let updated = CloudUser::merged(base, entry);
            if current.as_ref().map(user_identity) != updated.as_ref().map(user_identity) {
                for group in self.groups_containing(&entry.id)? {
                    writes.mark_pending(&group);
                }
            }
            writes.users.insert(entry.id.clone(), updated);
        }
        for bad in unreadable {
            writes.note_unreadable(Resource::Users, bad.id.is_none(), cursor);
            if let (Some(id), true) = (&bad.id, cursor.full) {
                writes.batch.insert(key("su", &[id]), vec![]);
            }
        }
        writes.commit(Resource::Users, cursor)?;
        Ok(MergeStats { entries: entries.len(), member_changes: 0 })
    }

    /// The groups the full round in progress did not list (to be checked against Graph before anything is
    /// taken for deleted), or none at all when the round met an entry without a readable id.
    pub fn groups_missing_from_full_round(&self) -> Result<Vec<String>, StateError> {
        if self.tree.contains_key(Resource::Groups.unnamed_key())? {
            return Ok(Vec::new());
        }
        let mut missing = Vec::new();
        for id in self.group_ids()? {
            if !self.tree.contains_key(key("s", &[&id]))? {
                missing.push(id);
            }
        }
        Ok(missing)
    }

    /// Clears the "seen in this full round" marks of groups.
    pub fn clear_group_round_marks(&self) -> Result<(), StateError> {
        self.tree.remove(Resource::Groups.unnamed_key())?;
        self.remove_prefix(b"s\0")
    }

    /// The users the full round in progress did not list, or none when it met an entry without a readable id.
    pub fn users_missing_from_full_round(&self) -> Result<Vec<String>, StateError> {
        if self.tree.contains_key(Resource::Users.unnamed_key())? {
            return Ok(Vec::new());
        }
        let mut missing = Vec::new();
        for item in self.tree.scan_prefix(b"u\0") {
            let (k, _) = item?;
            let id = key_tail(&k, 2);
            if !self.tree.contains_key(key("su", &[&id]))? {
                missing.push(id);
            }
        }
        Ok(missing)
    }

    /// Forgets users that are gone for good; the groups that listed them become pending.
    pub fn drop_users(&self, ids: &[String]) -> Result<(), StateError> {
        for id in ids {
            self.tree.remove(key("u", &[id]))?;
            for group in self.groups_containing(id)? {
                self.mark_pending(&group)?;
            }
        }
        Ok(())
    }

    /// Clears the "seen in this full round" marks of users.
    pub fn clear_user_round_marks(&self) -> Result<(), StateError> {
        self.tree.remove(Resource::Users.unnamed_key())?;
        self.remove_prefix(b"su\0")
    }

    /// Removes every key under `prefix`, a bounded batch at a time. Callers need no atomicity: they clear
    /// round marks before the round's final cursor is stored, so a crash half-way repeats the clearing.
    pub(super) fn remove_prefix(&self, prefix: &[u8]) -> Result<(), StateError> {
        let keys = self.tree.scan_prefix(prefix).keys();
        self.apply_in_batches(keys.map(|k| k.map(|k| (k.to_vec(), None))))
    }

    /// Applies the writes (`None` removes) in batches of [`BATCH_KEYS`]: one batch of 100,000 removals made
    /// sled allocate about 250 MB while applying it, and the allocator kept that memory afterwards.
    pub(super) fn apply_in_batches(
        &self,
        writes: impl Iterator<Item = sled::Result<(Vec<u8>, Option<Vec<u8>>)>>,
    ) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for write in writes {
            let (k, value) = write?;
            put_or_remove(&mut batch, k, value);
            pending += 1;
            if pending == BATCH_KEYS {
                self.tree.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Records how Graph answered for a group missing after a resync.
    pub fn mark_removed(&self, id: &str, removal: Removal) -> Result<(), StateError> {
        if let Some(mut group) = self.group(id)? {
            group.removed = Some(removal);
            self.tree.insert(key("g", &[id]), encode(&group))?;
            self.mark_pending(id)?;
        }
        Ok(())
    }

    /// A group by id.
    pub fn group(&self, id: &str) -> Result<Option<CloudGroup>, StateError> {
        self.get(&key("g", &[id]))
    }

    /// A user by id.
    pub fn user(&self, id: &str) -> Result<Option<CloudUser>, StateError> {
        self.get(&key("u", &[id]))
    }

    /// Every group id in the state.
    pub fn group_ids(&self) -> Result<Vec<String>, StateError> {
        let mut ids = Vec::new();
        for item in self.tree.scan_prefix(b"g\0") {
            ids.push(key_tail(&item?.0, 2));
        }
        Ok(ids)
    }

    /// How many groups the agent manages in AD (has an anchor for).
    pub fn managed_count(&self) -> usize {
        self.tree.scan_prefix(b"a\0").count()
    }

    /// The members of a group with their kinds, in id order.
    pub fn members(&self, group: &str) -> Result<Vec<(String, MemberKind)>, StateError> {
        Ok(self.member_list(group)?.into_iter().collect())
    }

    /// The groups that list `member`, in id order.
    pub fn groups_containing(&self, member: &str) -> Result<Vec<String>, StateError> {
        Ok(self.parent_list(member)?.into_iter().collect())
    }

    /// Forgets a group entirely, after its hard delete was applied.
    pub fn purge_group(&self, id: &str) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        for member in self.member_list(id)?.into_keys() {
            let mut parents = self.parent_list(&member)?;
            parents.remove(id);
            put_or_remove(
                &mut batch,
                key("r", &[&member]),
                (!parents.is_empty()).then(|| members::encode_ids(&parents)),
            );
        }
        for kind in ["g", "a", "d", "s", "p", "m", "b", "t"] {
            batch.remove(key(kind, &[id]));
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}
