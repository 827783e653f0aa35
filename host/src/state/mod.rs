//! Durable state in sled: per tenant, the delta cursors, the merged cloud state, where each managed group
//! lives in AD, which groups still await a directory apply, and the audit log.
//!
//! Each tenant has one tree; keys carry a one-letter kind prefix. A group's members are one value (`m`),
//! and so are the groups that list a member (`r`), encoded by [`members`]. A delta page is merged with one atomic
//! batch that also records the page's cursor and marks the touched groups dirty, so a crash between a page
//! and the directory apply loses nothing: the dirty marks survive, and a group leaves the dirty set only
//! after its directory changes were applied. Everything here can be rebuilt from Graph and the directory.

mod members;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cloud::{CloudGroup, CloudUser, GroupEntry, MemberKind, Removal, UserEntry};
use crate::reasons::{HeldReason, SkipReason};

/// An entry that could not be read, with its object's id when the id itself could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub id: Option<String>,
    pub reason: String,
}

/// A failure of the local state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot open the state in {path}: {cause}. If it is damaged, run `writeback --config FILE reset-state --tenant NAME` for each tenant (a full resync follows) or move the directory away"
    )]
    Open { path: PathBuf, cause: String },
    #[error("state store error: {0}")]
    Store(#[from] sled::Error),
    #[error("state record {key} is damaged ({cause}); run `writeback --config FILE reset-state --tenant {tenant}`")]
    Corrupt { tenant: String, key: String, cause: String },
    #[error("cannot create the state directory {path}: {cause}")]
    CreateDir { path: PathBuf, cause: std::io::Error },
}

/// Where a managed group was last seen in AD: a hint for reads, never a licence to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub guid: String,
    pub sid: Option<String>,
    pub dn: String,
}

/// A kind of change whose count the thresholds limit over a rolling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    Deletes,
    Renames,
    MemberRemovals,
}

impl Threshold {
    /// Where the changes applied recently are kept: `[(seconds since the Unix epoch, count)]`.
    fn key(self) -> &'static [u8] {
        match self {
            Threshold::Deletes => b"c\0window-deletes",
            Threshold::Renames => b"c\0window-renames",
            Threshold::MemberRemovals => b"c\0window-member-removals",
        }
    }
}

/// Which delta query a cursor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Groups,
    Users,
}

impl Resource {
    fn key(self) -> &'static [u8] {
        match self {
            Resource::Groups => b"c\0groups",
            Resource::Users => b"c\0users",
        }
    }

    /// Set when this resource must be read in a full round again.
    fn resync_key(self) -> &'static [u8] {
        match self {
            Resource::Groups => b"c\0resync-groups",
            Resource::Users => b"c\0resync-users",
        }
    }

    /// How many cycles in a row Graph refused this resource's stored delta link.
    fn refusals_key(self) -> &'static [u8] {
        match self {
            Resource::Groups => b"c\0refused-groups",
            Resource::Users => b"c\0refused-users",
        }
    }

    /// Set when the full round in progress met an entry without a readable id: any object it did not list
    /// may be that one, so none of them counts as gone.
    fn unnamed_key(self) -> &'static [u8] {
        match self {
            Resource::Groups => b"c\0unnamed-groups",
            Resource::Users => b"c\0unnamed-users",
        }
    }
}

/// Where a delta round stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The next page to fetch, or, when `complete`, the deltaLink that starts the next round.
    pub link: String,
    /// Whether the round in progress lists every object (initial sync or resync).
    pub full: bool,
    /// Whether `link` is a deltaLink.
    pub complete: bool,
    /// The `$select` the round was started with (Graph keeps it in the links). `None` in cursors written
    /// before it was recorded.
    #[serde(default)]
    pub select: Option<String>,
}

/// One directory write, as recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub tenant: String,
    pub group_id: String,
    /// `create`, `rename`, `modify`, `add-members`, `remove-members` or `delete`.
    pub operation: String,
    pub dn: String,
    pub detail: String,
    /// `ok`, or the error.
    pub outcome: String,
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

/// What merging one page changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeStats {
    pub entries: usize,
    pub member_changes: usize,
}

/// Mode 0700 for `dir` and every directory below it, 0600 for every file.
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            make_private(&path)?;
        } else {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// sled's page cache. Its default (1 GB) made a 100,000-group tenant cost about 1 GB of RSS; the state is read
/// once per cycle, in order, so a small cache costs little time (the OS caches the files anyway).
const CACHE_BYTES: u64 = 32 << 20;

/// The sled database behind every tenant.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// The private directory of a scratch store, removed when the last clone is dropped.
    _scratch: Option<std::sync::Arc<tempfile::TempDir>>,
}

impl Store {
    /// Opens (or creates, mode 0700) the state directory.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        create_private_dir(dir)?;
        let path = dir.join("db");
        // A damaged database must give the admin the recovery, whatever sled does with it.
        let opened = std::panic::catch_unwind(|| sled::Config::new().path(&path).cache_capacity(CACHE_BYTES).open());
        let open_error = |cause: String| StateError::Open { path: dir.to_path_buf(), cause };
        let db = match opened {
            Ok(result) => result.map_err(|e| open_error(e.to_string()))?,
            Err(_) => return Err(open_error("the database is damaged".into())),
        };
        Ok(Store { db, _scratch: None })
    }

    /// A throwaway store (tests, and `plan`'s scratch copy). It holds UPNs, SIDs and memberships, so it
    /// lives in a directory of its own, mode 0700, with its files 0600; sled alone would follow the umask.
    pub fn temporary() -> Result<Store, StateError> {
        let dir = tempfile::Builder::new()
            .prefix("writeback-scratch-")
            .tempdir()
            .map_err(|cause| StateError::CreateDir { path: std::env::temp_dir(), cause })?;
        let db = sled::Config::new().path(dir.path().join("db")).temporary(true).cache_capacity(CACHE_BYTES).open()?;
        make_private(dir.path()).map_err(|cause| StateError::CreateDir { path: dir.path().to_path_buf(), cause })?;
        Ok(Store { db, _scratch: Some(std::sync::Arc::new(dir)) })
    }

    /// The state of one tenant. A state of an older layout is cleared first: a full resync rebuilds it.
    pub fn tenant(&self, name: &str) -> Result<TenantState, StateError> {
        let state = TenantState {
            name: name.to_string(),
            tree: self.db.open_tree(format!("tenant/{name}"))?,
            audit: self.db.open_tree(format!("audit/{name}"))?,
            journal: self.db.open_tree(format!("journal/{name}"))?,
            db: self.db.clone(),
        };
        state.check_layout()?;
        state.drop_untyped_problems()?;
        Ok(state)
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StateError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Copies one tenant's state into `other`, so that a dry run can change the copy freely.
    pub fn copy_tenant_to(&self, name: &str, other: &Store) -> Result<(), StateError> {
        let from = self.tenant(name)?;
        let to = other.tenant(name)?;
        for item in from.tree.iter() {
            let (k, v) = item?;
            to.tree.insert(k, v)?;
        }
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |cause| StateError::CreateDir { path: dir.to_path_buf(), cause };
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// The most writes applied in one sled batch where atomicity is not needed.
const BATCH_KEYS: usize = 1_000;

/// The key and value that name how a tenant's tree is laid out. Layout 1 (no key) kept one key per
/// membership; layout 2 keeps one member-list value per group and one group-list value per member.
const LAYOUT_KEY: &[u8] = b"c\0layout";

const LAYOUT: &[u8] = b"2";

/// One tenant's slice of the store.
pub struct TenantState {
    name: String,
    tree: sled::Tree,
    audit: sled::Tree,
    /// Writes sent or about to be sent whose outcome is not filed yet.
    journal: sled::Tree,
    db: sled::Db,
}

fn key(kind: &str, parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(64);
    k.extend_from_slice(kind.as_bytes());
    for part in parts {
        k.push(0);
        k.extend_from_slice(part.as_bytes());
    }
    k
}

/// The text after the prefix of a key, as the id it names.
fn key_tail(k: &[u8], prefix_len: usize) -> String {
    String::from_utf8_lossy(&k[prefix_len..]).into_owned()
}

/// Pending writes of one page, applied as one atomic batch. Reads see the page's own earlier writes.
struct PageWrites<'a> {
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
    fn new(state: &'a TenantState) -> Self {
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

    fn members_of(&mut self, group: &str) -> Result<&mut BTreeMap<String, MemberKind>, StateError> {
        if !self.members.contains_key(group) {
            let stored = self.state.member_list(group)?;
            self.members.insert(group.to_string(), stored);
        }
        Ok(self.members.get_mut(group).expect("inserted above"))
    }

    fn parents_of(&mut self, member: &str) -> Result<&mut BTreeSet<String>, StateError> {
        if !self.parents.contains_key(member) {
            let stored = self.state.parent_list(member)?;
            self.parents.insert(member.to_string(), stored);
        }
        Ok(self.parents.get_mut(member).expect("inserted above"))
    }

    fn group(&mut self, id: &str) -> Result<&mut CloudGroup, StateError> {
        if !self.groups.contains_key(id) {
            let stored =
                self.state.group(id)?.unwrap_or_else(|| CloudGroup { id: id.to_string(), ..Default::default() });
            self.groups.insert(id.to_string(), stored);
        }
        Ok(self.groups.get_mut(id).expect("inserted above"))
    }

    fn put_member(&mut self, group: &str, member: &str, kind: MemberKind) -> Result<(), StateError> {
        self.members_of(group)?.insert(member.to_string(), kind);
        self.parents_of(member)?.insert(group.to_string());
        Ok(())
    }

    fn drop_member(&mut self, group: &str, member: &str) -> Result<(), StateError> {
        self.members_of(group)?.remove(member);
        self.parents_of(member)?.remove(group);
        Ok(())
    }

    /// Marks `group` as listed in this full round; true the first time (also across pages).
    fn first_in_round(&mut self, group: &str) -> Result<bool, StateError> {
        if !self.cleared.insert(group.to_string()) || self.state.tree.contains_key(key("s", &[group]))? {
            return Ok(false);
        }
        self.batch.insert(key("s", &[group]), vec![]);
        Ok(true)
    }

    /// In a full round the first entry of a group replaces everything stored about it: Graph leaves unset
    /// properties out, and members removed while our cursor was lost must not linger either.
    fn start_afresh(&mut self, group: &str) -> Result<(), StateError> {
        *self.group(group)? = CloudGroup { id: group.to_string(), ..Default::default() };
        let members: Vec<String> = std::mem::take(self.members_of(group)?).into_keys().collect();
        for member in members {
            self.parents_of(&member)?.remove(group);
        }
        self.batch.remove(key("b", &[group]));
        Ok(())
    }

    fn mark_dirty(&mut self, group: &str) {
        self.batch.insert(key("d", &[group]), vec![]);
    }

    /// Records what an unreadable entry means for the round: in a delta round its change is lost, so a full
    /// round must follow; in a full round an entry without an id keeps every unlisted object from counting
    /// as gone.
    fn note_unreadable(&mut self, resource: Resource, unnamed: bool, cursor: &Cursor) {
        if !cursor.full {
            self.batch.insert(resource.resync_key(), vec![]);
        } else if unnamed {
            self.batch.insert(resource.unnamed_key(), vec![]);
        }
    }

    fn commit(mut self, resource: Resource, cursor: &Cursor) -> Result<(), StateError> {
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
fn put_or_remove(batch: &mut sled::Batch, k: Vec<u8>, value: Option<Vec<u8>>) {
    match value {
        Some(value) => batch.insert(k, value),
        None => batch.remove(k),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("state records always serialise")
}

impl TenantState {
    /// The tenant this state belongs to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Clears a state written in another layout (or none), so that the next cycle resyncs in full.
    fn check_layout(&self) -> Result<(), StateError> {
        if self.tree.get(LAYOUT_KEY)?.as_deref() == Some(LAYOUT) {
            return Ok(());
        }
        if !self.tree.is_empty() {
            tracing::warn!(tenant = %self.name, "the state was written in an older layout; it is cleared, and a full resync rebuilds it");
            self.tree.clear()?;
        }
        self.tree.insert(LAYOUT_KEY, LAYOUT)?;
        Ok(())
    }

    /// Problems recorded with reasons as text (under `p`, before they were typed, under `q`) cannot be read
    /// as types: they are dropped, and every group is planned again, which records them anew.
    fn drop_untyped_problems(&self) -> Result<(), StateError> {
        let old: Vec<sled::IVec> = self.tree.scan_prefix(b"p\0").keys().collect::<Result<_, _>>()?;
        if old.is_empty() {
            return Ok(());
        }
        // Dirty first: a crash in between leaves old records to drop again, never a group that is not replanned.
        self.mark_all_dirty()?;
        for k in old {
            self.tree.remove(k)?;
        }
        Ok(())
    }

    fn corrupt(&self, k: &[u8], cause: impl ToString) -> StateError {
        StateError::Corrupt {
            tenant: self.name.clone(),
            key: String::from_utf8_lossy(k).replace('\0', "/"),
            cause: cause.to_string(),
        }
    }

    /// A group's stored member list.
    fn member_list(&self, group: &str) -> Result<BTreeMap<String, MemberKind>, StateError> {
        let k = key("m", &[group]);
        match self.tree.get(&k)? {
            Some(bytes) => members::decode_members(&bytes).ok_or_else(|| self.corrupt(&k, "not a member list")),
            None => Ok(BTreeMap::new()),
        }
    }

    /// The stored list of groups that list `member`.
    fn parent_list(&self, member: &str) -> Result<BTreeSet<String>, StateError> {
        let k = key("r", &[member]);
        match self.tree.get(&k)? {
            Some(bytes) => members::decode_ids(&bytes).ok_or_else(|| self.corrupt(&k, "not a group list")),
            None => Ok(BTreeSet::new()),
        }
    }

    fn decode<T: for<'de> Deserialize<'de>>(&self, k: &[u8], bytes: &[u8]) -> Result<T, StateError> {
        serde_json::from_slice(bytes).map_err(|e| self.corrupt(k, e))
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, k: &[u8]) -> Result<Option<T>, StateError> {
        match self.tree.get(k)? {
            Some(bytes) => self.decode(k, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Where a delta round stands, if one was ever started.
    pub fn cursor(&self, resource: Resource) -> Result<Option<Cursor>, StateError> {
        self.get(resource.key())
    }

    /// Forgets a delta cursor so the next cycle starts a full round.
    pub fn drop_cursor(&self, resource: Resource) -> Result<(), StateError> {
        self.tree.remove(resource.key())?;
        Ok(())
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
            writes.mark_dirty(&entry.id);
            // A nested group's change (scope, removal, first arrival) can change how its parents write it.
            for parent in self.groups_containing(&entry.id)? {
                writes.mark_dirty(&parent);
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
            writes.mark_dirty(id);
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

    /// Whether a delta round met an unreadable entry (or a change to a group held for one), so the objects
    /// must be read in a full round again. Taking the request clears it.
    pub fn take_resync_request(&self, resource: Resource) -> Result<bool, StateError> {
        Ok(self.tree.remove(resource.resync_key())?.is_some())
    }

    /// Records where `writebackConfiguration` is read from (`delta` or `batch`); returns whether that changed
    /// since the last call, which only a full round can make good.
    pub fn note_writeback_source(&self, source: &str) -> Result<bool, StateError> {
        let key: &[u8] = b"c\0writeback-source";
        let previous = self.tree.get(key)?;
        if previous.as_deref() == Some(source.as_bytes()) {
            // Quiet cycles write nothing.
            return Ok(false);
        }
        self.tree.insert(key, source.as_bytes())?;
        Ok(previous.is_some())
    }

    /// The tenant's `NewUnifiedGroupWritebackDefault` as last read from Graph.
    pub fn m365_default(&self) -> Result<Option<bool>, StateError> {
        self.get(b"c\0m365-default")
    }

    /// Records the tenant's `NewUnifiedGroupWritebackDefault`.
    pub fn set_m365_default(&self, value: bool) -> Result<(), StateError> {
        self.tree.insert(b"c\0m365-default", encode(&value))?;
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

    /// Counts one more cycle in which Graph refused the stored delta link, and returns the count in a row.
    pub fn count_link_refusal(&self, resource: Resource) -> Result<u32, StateError> {
        let previous = self
            .tree
            .get(resource.refusals_key())?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map_or(0, u32::from_be_bytes);
        let count = previous.saturating_add(1);
        self.tree.insert(resource.refusals_key(), &count.to_be_bytes())?;
        Ok(count)
    }

    /// Forgets the refusals of the stored delta link: it was read, or replaced by a full round.
    pub fn clear_link_refusals(&self, resource: Resource) -> Result<(), StateError> {
        self.tree.remove(resource.refusals_key())?;
        Ok(())
    }

    /// Merges a page of user entries; groups that contain a changed user become dirty. A user in `unreadable`
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
                    writes.mark_dirty(&group);
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

    /// Forgets users that are gone for good; the groups that listed them become dirty.
    pub fn drop_users(&self, ids: &[String]) -> Result<(), StateError> {
        for id in ids {
            self.tree.remove(key("u", &[id]))?;
            for group in self.groups_containing(id)? {
                self.mark_dirty(&group)?;
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
    fn remove_prefix(&self, prefix: &[u8]) -> Result<(), StateError> {
        let keys = self.tree.scan_prefix(prefix).keys();
        self.apply_in_batches(keys.map(|k| k.map(|k| (k.to_vec(), None))))
    }

    /// Applies the writes (`None` removes) in batches of [`BATCH_KEYS`]: one batch of 100,000 removals made
    /// sled allocate about 250 MB while applying it, and the allocator kept that memory afterwards.
    fn apply_in_batches(
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
            self.mark_dirty(id)?;
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

    /// Groups whose directory changes are not applied yet.
    pub fn dirty(&self) -> Result<Vec<String>, StateError> {
        let mut ids = Vec::new();
        for item in self.tree.scan_prefix(b"d\0") {
            ids.push(key_tail(&item?.0, 2));
        }
        Ok(ids)
    }

    /// Marks a group as needing a directory apply.
    pub fn mark_dirty(&self, id: &str) -> Result<(), StateError> {
        self.tree.insert(key("d", &[id]), vec![])?;
        Ok(())
    }

    /// Marks every group as needing a directory apply (the naming or transform policy changed).
    pub fn mark_all_dirty(&self) -> Result<(), StateError> {
        self.apply_in_batches(self.group_ids()?.into_iter().map(|id| Ok((key("d", &[&id]), Some(Vec::new())))))
    }

    /// The fingerprint of the policy the groups were last planned with.
    pub fn policy_fingerprint(&self) -> Result<Option<String>, StateError> {
        Ok(self.tree.get(b"c\0policy")?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the fingerprint of the policy in use.
    pub fn set_policy_fingerprint(&self, fingerprint: &str) -> Result<(), StateError> {
        self.tree.insert(b"c\0policy", fingerprint.as_bytes())?;
        Ok(())
    }

    /// Marks a group's directory changes as applied.
    pub fn clear_dirty(&self, id: &str) -> Result<(), StateError> {
        self.tree.remove(key("d", &[id]))?;
        Ok(())
    }

    /// Where a managed group was last seen in AD.
    pub fn anchor(&self, id: &str) -> Result<Option<Anchor>, StateError> {
        self.get(&key("a", &[id]))
    }

    /// Every recorded anchor.
    pub fn anchors(&self) -> Result<BTreeMap<String, Anchor>, StateError> {
        let mut anchors = BTreeMap::new();
        for item in self.tree.scan_prefix(b"a\0") {
            let (k, v) = item?;
            anchors.insert(key_tail(&k, 2), self.decode(&k, &v)?);
        }
        Ok(anchors)
    }

    /// Records where a managed group lives.
    pub fn set_anchor(&self, id: &str, anchor: &Anchor) -> Result<(), StateError> {
        self.tree.insert(key("a", &[id]), encode(anchor))?;
        Ok(())
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
        for kind in ["g", "a", "d", "s", "p", "m", "b"] {
            batch.remove(key(kind, &[id]));
        }
        self.tree.apply_batch(batch)?;
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

    /// Appends a record to the audit log.
    pub fn audit(&self, record: &AuditRecord) -> Result<(), StateError> {
        let seq = self.db.generate_id()?;
        self.audit.insert(seq.to_be_bytes(), encode(record))?;
        Ok(())
    }

    /// Records writes about to be sent. The caller flushes before sending them, so that a crash between a
    /// write and its audit record still leaves the write accounted for. Returns one key per record.
    pub fn journal(&self, records: &[AuditRecord]) -> Result<Vec<u64>, StateError> {
        let mut keys = Vec::with_capacity(records.len());
        let mut batch = sled::Batch::default();
        for record in records {
            let key = self.db.generate_id()?;
            batch.insert(&key.to_be_bytes(), encode(record));
            keys.push(key);
        }
        self.journal.apply_batch(batch)?;
        Ok(keys)
    }

    /// Files a journaled write's outcome in the audit log, in one transaction with removing its intent.
    pub fn settle(&self, key: u64, outcome: Option<&AuditRecord>) -> Result<(), StateError> {
        use sled::Transactional;
        let encoded = outcome.map(encode);
        (&self.audit, &self.journal)
            .transaction(|(audit, journal)| {
                if let Some(record) = &encoded {
                    audit.insert(&key.to_be_bytes(), record.clone())?;
                }
                journal.remove(&key.to_be_bytes())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => StateError::Store(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StateError::Store(sled::Error::Unsupported("transaction aborted".into()))
                }
            })
    }

    /// Files the intents a crash left behind as writes whose outcome is unknown; the cycle that follows
    /// reads the directory, so whatever they did is reconciled. Returns how many there were.
    pub fn file_interrupted(&self) -> Result<usize, StateError> {
        let mut filed = 0;
        for item in self.journal.iter() {
            let (k, v) = item?;
            let mut record: AuditRecord = self.decode(&k, &v)?;
            record.outcome =
                "interrupted: the agent stopped before the outcome was recorded; the next cycle reconciled it".into();
            let key = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            self.settle(key, Some(&record))?;
            filed += 1;
        }
        Ok(filed)
    }

    /// The audit log, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditRecord>, StateError> {
        let mut records = Vec::new();
        for item in self.audit.iter() {
            let (k, v) = item?;
            records.push(self.decode(&k, &v)?);
        }
        Ok(records)
    }

    /// Deletes everything this tenant's state holds except the audit log; the next cycle resyncs in full.
    pub fn reset(&self) -> Result<(), StateError> {
        self.tree.clear()?;
        self.tree.insert(LAYOUT_KEY, LAYOUT)?;
        Ok(())
    }
}

/// The identity fields of a user that decide how it is written as a member.
fn user_identity(user: &CloudUser) -> (Option<bool>, Option<String>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::delta::{parse_group, parse_user};
    use serde_json::json;

    fn cursor(full: bool) -> Cursor {
        Cursor { link: "next".into(), full, complete: false, select: None }
    }

    fn group_entries(values: serde_json::Value) -> Vec<GroupEntry> {
        values.as_array().unwrap().iter().map(|v| parse_group(v).unwrap()).collect()
    }

    fn state() -> TenantState {
        Store::temporary().unwrap().tenant("t").unwrap()
    }

    #[test]
    fn members_split_across_entries_and_pages_merge() {
        let s = state();
        s.merge_group_page(
            &group_entries(json!([
                {"id":"g","displayName":"G","members@delta":[{"@odata.type":"#microsoft.graph.user","id":"u1"}]},
                {"id":"g","members@delta":[{"@odata.type":"#microsoft.graph.user","id":"u2"}]}
            ])),
            &[],
            &cursor(true),
        )
        .unwrap();
        s.merge_group_page(
            &group_entries(json!([{"id":"g","members@delta":[{"@odata.type":"#microsoft.graph.group","id":"g2"}]}])),
            &[],
            &cursor(true),
        )
        .unwrap();
        let members: Vec<_> = s.members("g").unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(members, ["g2", "u1", "u2"]);
        assert_eq!(s.group("g").unwrap().unwrap().display_name.as_deref(), Some("G"));
        assert_eq!(s.groups_containing("u2").unwrap(), ["g"]);
        assert_eq!(s.dirty().unwrap(), ["g"]);
        assert_eq!(s.cursor(Resource::Groups).unwrap(), Some(cursor(true)));
    }

    #[test]
    fn partial_updates_keep_absent_properties_and_replays_are_harmless() {
        let s = state();
        let first = group_entries(
            json!([{"id":"g","displayName":"G","description":"d","members@delta":[{"@odata.type":"#microsoft.graph.user","id":"u1"}]}]),
        );
        s.merge_group_page(&first, &[], &cursor(true)).unwrap();
        let later = group_entries(
            json!([{"id":"g","description":null,"members@delta":[{"@odata.type":"#microsoft.graph.user","id":"u1","@removed":{"reason":"deleted"}}]}]),
        );
        s.merge_group_page(&later, &[], &cursor(false)).unwrap();
        s.merge_group_page(&later, &[], &cursor(false)).unwrap();
        let group = s.group("g").unwrap().unwrap();
        assert_eq!(group.display_name.as_deref(), Some("G"));
        assert_eq!(group.description, None);
        assert!(s.members("g").unwrap().is_empty());
        assert!(s.groups_containing("u1").unwrap().is_empty());
    }

    #[test]
    fn a_full_round_replaces_stale_members_and_finds_missing_groups() {
        let s = state();
        let members = |ids: &[&str]| {
            json!(ids.iter().map(|id| json!({"@odata.type":"#microsoft.graph.user","id":id})).collect::<Vec<_>>())
        };
        s.merge_group_page(
            &group_entries(json!([{"id":"g","members@delta":members(&["u1","u2"])},{"id":"h"}])),
            &[],
            &cursor(true),
        )
        .unwrap();
        s.clear_group_round_marks().unwrap();
        // A resync lists g with u2 and u3 over two entries, and no longer lists h.
        s.merge_group_page(&group_entries(json!([{"id":"g","members@delta":members(&["u2"])}])), &[], &cursor(true))
            .unwrap();
        s.merge_group_page(&group_entries(json!([{"id":"g","members@delta":members(&["u3"])}])), &[], &cursor(true))
            .unwrap();
        let ids: Vec<_> = s.members("g").unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["u2", "u3"]);
        assert_eq!(s.groups_missing_from_full_round().unwrap(), ["h"]);
    }

    #[test]
    fn the_first_entry_of_a_full_round_replaces_every_stored_property() {
        let s = state();
        let full = json!([{"id":"g","displayName":"G","description":"d","mail":"g@x","proxyAddresses":["SMTP:g@x"],"groupTypes":["Unified"]}]);
        s.merge_group_page(&group_entries(full), &[], &cursor(true)).unwrap();
        s.clear_group_round_marks().unwrap();
        // A resync while the description, mail and addresses were cleared: Graph leaves them out.
        s.merge_group_page(&group_entries(json!([{"id":"g","displayName":"G","groupTypes":[]}])), &[], &cursor(true))
            .unwrap();
        let group = s.group("g").unwrap().unwrap();
        assert_eq!((group.description, group.mail, group.proxy_addresses), (None, None, None));
        assert_eq!(group.display_name.as_deref(), Some("G"));
        // Later entries of the same round (a large group's members) add to it and keep what the first set.
        s.merge_group_page(
            &group_entries(json!([{"id":"g","members@delta":[{"@odata.type":"#microsoft.graph.user","id":"u1"}]}])),
            &[],
            &cursor(true),
        )
        .unwrap();
        assert_eq!(s.group("g").unwrap().unwrap().display_name.as_deref(), Some("G"));
        assert_eq!(s.members("g").unwrap().len(), 1);
    }

    #[test]
    fn a_full_user_entry_replaces_every_stored_property() {
        let s = state();
        let user = |v: serde_json::Value| vec![parse_user(&v).unwrap()];
        s.merge_user_page(
            &user(json!({"id":"u1","onPremisesSecurityIdentifier":"S-1-5-21-1-2-3-1000","onPremisesSyncEnabled":true})),
            &[],
            &cursor(true),
        )
        .unwrap();
        s.clear_user_round_marks().unwrap();
        s.merge_user_page(&user(json!({"id":"u1","displayName":"A"})), &[], &cursor(true)).unwrap();
        let stored = s.user("u1").unwrap().unwrap();
        assert_eq!((stored.on_premises_security_identifier, stored.on_premises_sync_enabled), (None, None));
    }

    fn unreadable(id: Option<&str>) -> Vec<Unreadable> {
        vec![Unreadable { id: id.map(str::to_string), reason: "proxyAddresses holds a non-string".into() }]
    }

    #[test]
    fn an_unreadable_entry_in_a_full_round_counts_as_listed_and_holds_its_group() {
        let s = state();
        s.merge_group_page(
            &group_entries(json!([{"id":"g","displayName":"G"},{"id":"h","displayName":"H"}])),
            &[],
            &cursor(true),
        )
        .unwrap();
        s.clear_group_round_marks().unwrap();
        s.merge_group_page(
            &group_entries(json!([{"id":"h","displayName":"H"}])),
            &unreadable(Some("g")),
            &cursor(true),
        )
        .unwrap();
        assert!(s.groups_missing_from_full_round().unwrap().is_empty(), "g was listed, if unreadably");
        assert!(s.unreadable("g").unwrap().unwrap().contains("proxyAddresses"));
        assert!(!s.take_resync_request(Resource::Groups).unwrap(), "a full round needs no other full round");
        // Only a full round whose first entry of g is readable releases it.
        s.clear_group_round_marks().unwrap();
        s.merge_group_page(&group_entries(json!([{"id":"g","displayName":"G"}])), &[], &cursor(true)).unwrap();
        assert_eq!(s.unreadable("g").unwrap(), None);
    }

    #[test]
    fn an_unreadable_entry_never_known_before_still_makes_its_group_known() {
        let s = state();
        s.merge_group_page(&[], &unreadable(Some("new")), &cursor(true)).unwrap();
        assert_eq!(s.group_ids().unwrap(), ["new"], "an AD group anchored to it is then no orphan to delete");
    }

    #[test]
    fn an_unreadable_entry_in_a_delta_round_asks_for_a_full_round() {
        let s = state();
        s.merge_group_page(&group_entries(json!([{"id":"g","displayName":"G"}])), &[], &cursor(true)).unwrap();
        s.merge_group_page(&[], &unreadable(Some("g")), &cursor(false)).unwrap();
        assert!(s.unreadable("g").unwrap().is_some());
        assert!(s.take_resync_request(Resource::Groups).unwrap());
        assert!(!s.take_resync_request(Resource::Groups).unwrap(), "taking the request clears it");
        // A readable change to a held group in a delta round does not release it: what was lost is still lost.
        s.merge_group_page(&group_entries(json!([{"id":"g","displayName":"G2"}])), &[], &cursor(false)).unwrap();
        assert!(s.unreadable("g").unwrap().is_some());
        assert!(s.take_resync_request(Resource::Groups).unwrap());
    }

    #[test]
    fn an_entry_without_an_id_keeps_a_full_round_from_finding_anything_missing() {
        let s = state();
        s.merge_group_page(&group_entries(json!([{"id":"g"},{"id":"h"}])), &[], &cursor(true)).unwrap();
        s.merge_user_page(&[parse_user(&json!({"id":"u1"})).unwrap()], &[], &cursor(true)).unwrap();
        s.clear_group_round_marks().unwrap();
        s.clear_user_round_marks().unwrap();
        s.merge_group_page(&group_entries(json!([{"id":"g"}])), &unreadable(None), &cursor(true)).unwrap();
        s.merge_user_page(&[], &unreadable(None), &cursor(true)).unwrap();
        assert!(s.groups_missing_from_full_round().unwrap().is_empty());
        assert!(s.users_missing_from_full_round().unwrap().is_empty());
        s.clear_group_round_marks().unwrap();
        s.clear_user_round_marks().unwrap();
        assert_eq!(s.groups_missing_from_full_round().unwrap(), ["g", "h"], "the next round counts again");
        assert_eq!(s.users_missing_from_full_round().unwrap(), ["u1"]);
    }

    #[test]
    fn a_soft_deleted_user_keeps_its_memberships_until_the_hard_delete() {
        let s = state();
        s.merge_group_page(
            &group_entries(json!([{"id":"g","members@delta":[{"@odata.type":"#microsoft.graph.user","id":"u1"}]}])),
            &[],
            &cursor(true),
        )
        .unwrap();
        let user = |v: serde_json::Value| vec![parse_user(&v).unwrap()];
        s.merge_user_page(
            &user(json!({"id":"u1","onPremisesSecurityIdentifier":"S-1-5-21-1-2-3-1000"})),
            &[],
            &cursor(true),
        )
        .unwrap();
        s.clear_dirty("g").unwrap();
        s.merge_user_page(&user(json!({"id":"u1","@removed":{"reason":"changed"}})), &[], &cursor(false)).unwrap();
        assert!(s.user("u1").unwrap().is_some());
        assert!(s.dirty().unwrap().is_empty(), "nothing of the group changes");
        s.merge_user_page(&user(json!({"id":"u1","@removed":{"reason":"deleted"}})), &[], &cursor(false)).unwrap();
        assert_eq!(s.user("u1").unwrap(), None);
        assert_eq!(s.dirty().unwrap(), ["g"]);
    }

    #[test]
    fn a_user_identity_change_dirties_its_groups() {
        let s = state();
        s.merge_group_page(
            &group_entries(json!([{"id":"g","members@delta":[{"@odata.type":"#microsoft.graph.user","id":"u1"}]}])),
            &[],
            &cursor(true),
        )
        .unwrap();
        s.clear_dirty("g").unwrap();
        let user = |v: serde_json::Value| vec![parse_user(&v).unwrap()];
        s.merge_user_page(&user(json!({"id":"u1","displayName":"A"})), &[], &cursor(true)).unwrap();
        assert_eq!(s.dirty().unwrap(), ["g"], "a user that arrives after its group resolves that member");
        s.clear_dirty("g").unwrap();
        s.merge_user_page(&user(json!({"id":"u1","displayName":"B"})), &[], &cursor(false)).unwrap();
        assert!(s.dirty().unwrap().is_empty(), "a display name change does not touch membership");
        s.merge_user_page(
            &user(json!({"id":"u1","onPremisesSecurityIdentifier":"S-1-5-21-1-2-3-1000"})),
            &[],
            &cursor(false),
        )
        .unwrap();
        assert_eq!(s.dirty().unwrap(), ["g"]);
        s.merge_user_page(&user(json!({"id":"u1","@removed":{"reason":"deleted"}})), &[], &cursor(false)).unwrap();
        assert_eq!(s.user("u1").unwrap(), None);
    }

    #[test]
    fn a_nested_group_change_dirties_its_parents() {
        let s = state();
        s.merge_group_page(
            &group_entries(
                json!([{"id":"parent","members@delta":[{"@odata.type":"#microsoft.graph.group","id":"child"}]}]),
            ),
            &[],
            &cursor(true),
        )
        .unwrap();
        s.clear_dirty("parent").unwrap();
        s.merge_group_page(
            &group_entries(json!([{"id":"child","writebackConfiguration":{"isEnabled":false}}])),
            &[],
            &cursor(false),
        )
        .unwrap();
        assert_eq!(s.dirty().unwrap(), ["child", "parent"]);
    }

    #[test]
    fn a_state_of_an_older_layout_is_cleared_for_a_full_resync() {
        let store = Store::temporary().unwrap();
        let tree = store.db.open_tree("tenant/t").unwrap();
        // Layout 1 kept one key per membership and no layout key.
        tree.insert(b"m\0g\0u1", vec![b'u']).unwrap();
        tree.insert(b"c\0groups", encode(&cursor(false))).unwrap();
        let s = store.tenant("t").unwrap();
        assert_eq!(s.cursor(Resource::Groups).unwrap(), None, "the next cycle resyncs in full");
        assert!(s.members("g").unwrap().is_empty());
        let page =
            group_entries(json!([{"id":"g","members@delta":[{"@odata.type":"#microsoft.graph.user","id":"u1"}]}]));
        s.merge_group_page(&page, &[], &cursor(false)).unwrap();
        s.reset().unwrap();
        s.merge_group_page(&page, &[], &cursor(false)).unwrap();
        let reopened = store.tenant("t").unwrap();
        assert_eq!(
            reopened.members("g").unwrap(),
            [("u1".to_string(), MemberKind::User)],
            "a current layout is kept, also after a reset"
        );
    }

    #[test]
    fn purging_a_group_forgets_it_as_a_parent_only() {
        let s = state();
        let users = |ids: &[&str]| {
            json!(ids.iter().map(|id| json!({"@odata.type":"#microsoft.graph.user","id":id})).collect::<Vec<_>>())
        };
        s.merge_group_page(
            &group_entries(
                json!([{"id":"g","members@delta":users(&["u1","u2"])},{"id":"h","members@delta":users(&["u1"])}]),
            ),
            &[],
            &cursor(false),
        )
        .unwrap();
        s.purge_group("g").unwrap();
        assert!(s.members("g").unwrap().is_empty());
        assert_eq!(s.groups_containing("u1").unwrap(), ["h"]);
        assert!(s.groups_containing("u2").unwrap().is_empty());
        assert_eq!(s.members("h").unwrap().len(), 1);
    }

    #[test]
    fn restore_clears_removal() {
        let s = state();
        s.merge_group_page(&group_entries(json!([{"id":"g","@removed":{"reason":"changed"}}])), &[], &cursor(false))
            .unwrap();
        assert_eq!(s.group("g").unwrap().unwrap().removed, Some(Removal::Changed));
        s.merge_group_page(&group_entries(json!([{"id":"g","displayName":"back"}])), &[], &cursor(false)).unwrap();
        assert_eq!(s.group("g").unwrap().unwrap().removed, None);
    }

    #[test]
    fn journaled_writes_are_settled_or_filed_as_interrupted() {
        let s = state();
        let record = |op: &str| AuditRecord {
            time: 1,
            tenant: "t".into(),
            group_id: "g".into(),
            operation: op.into(),
            dn: "CN=g".into(),
            detail: String::new(),
            outcome: "pending".into(),
        };
        let keys = s.journal(&[record("create"), record("add-members"), record("delete")]).unwrap();
        s.settle(keys[0], Some(&AuditRecord { outcome: "ok".into(), ..record("create") })).unwrap();
        s.settle(keys[2], None).unwrap();
        assert_eq!(s.file_interrupted().unwrap(), 1);
        let log = s.audit_log().unwrap();
        let outcomes: Vec<_> =
            log.iter().map(|r| (r.operation.as_str(), r.outcome.starts_with("interrupted"))).collect();
        assert_eq!(outcomes, [("create", false), ("add-members", true)]);
        assert_eq!(s.file_interrupted().unwrap(), 0, "filed once");
    }

    #[test]
    fn damaged_record_names_the_recovery() {
        let s = state();
        s.tree.insert(key("g", &["g"]), b"{not json".to_vec()).unwrap();
        let err = s.group("g").unwrap_err().to_string();
        assert!(err.contains("reset-state --tenant t"), "{err}");
    }

    #[test]
    fn applied_changes_count_within_their_window_only() {
        let store = Store::temporary().unwrap();
        let state = store.tenant("t").unwrap();
        state.record_applied(Threshold::Deletes, 300, 1_000, 0).unwrap();
        state.record_applied(Threshold::Deletes, 200, 2_000, 0).unwrap();
        state.record_applied(Threshold::Renames, 7, 2_000, 0).unwrap();
        assert_eq!(state.applied_since(Threshold::Deletes, 0).unwrap(), 500);
        assert_eq!(state.applied_since(Threshold::Deletes, 1_500).unwrap(), 200, "older ones fall out of the window");
        assert_eq!(state.applied_since(Threshold::Renames, 0).unwrap(), 7, "each kind counts on its own");
        assert_eq!(state.applied_since(Threshold::MemberRemovals, 0).unwrap(), 0);
        // Recording forgets what has left the window.
        state.record_applied(Threshold::Deletes, 1, 5_000, 1_500).unwrap();
        assert_eq!(state.applied_since(Threshold::Deletes, 0).unwrap(), 201);
    }

    #[test]
    fn stored_link_refusals_count_in_a_row_per_resource_until_cleared() {
        let store = Store::temporary().unwrap();
        let state = store.tenant("t").unwrap();
        assert_eq!(state.count_link_refusal(Resource::Groups).unwrap(), 1);
        assert_eq!(state.count_link_refusal(Resource::Users).unwrap(), 1, "each resource counts on its own");
        assert_eq!(state.count_link_refusal(Resource::Groups).unwrap(), 2);
        state.clear_link_refusals(Resource::Groups).unwrap();
        assert_eq!(state.count_link_refusal(Resource::Groups).unwrap(), 1, "a read in between breaks the run");
        assert_eq!(state.count_link_refusal(Resource::Users).unwrap(), 2);
    }

    #[test]
    fn state_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        Store::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn the_scratch_copy_is_private_and_removed_when_dropped() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = Store::temporary().unwrap();
        scratch.tenant("t").unwrap();
        let dir = scratch._scratch.as_ref().unwrap().path().to_path_buf();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let mut files = 0;
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                if path.is_dir() {
                    assert_eq!(mode, 0o700, "{}", path.display());
                    stack.push(path);
                } else {
                    assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
                    files += 1;
                }
            }
        }
        assert!(files > 0, "sled wrote its files there");
        drop(scratch);
        assert!(!dir.exists());
    }

    #[test]
    fn problems_recorded_as_text_are_dropped_and_their_groups_planned_again() {
        let store = Store::temporary().unwrap();
        let state = store.tenant("t").unwrap();
        state.merge_group_page(&group_entries(json!([{"id": "g1", "displayName": "G"}])), &[], &cursor(false)).unwrap();
        state.clear_dirty("g1").unwrap();
        state
            .tree
            .insert(
                key("p", &["g1"]),
                br#"{"skipped_members":[],"conflict":null,"held":"apply failed: busy"}"#.to_vec(),
            )
            .unwrap();
        let state = store.tenant("t").unwrap();
        assert!(state.problems().unwrap().is_empty());
        assert_eq!(state.dirty().unwrap(), ["g1"]);
        let held = GroupProblems { held: Some(HeldReason::ApplyFailed { cause: "busy".into() }), ..Default::default() };
        state.set_problems("g1", &held).unwrap();
        assert_eq!(store.tenant("t").unwrap().problems_of("g1").unwrap(), Some(held));
    }
}
