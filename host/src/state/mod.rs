//! Durable state in sled: per tenant, the delta cursors, the merged cloud state, where each managed group
//! lives in AD, which groups still await a directory apply, and the audit log.
//!
//! Each tenant has one tree; keys carry a one-letter kind prefix. A group's members are one value (`m`),
//! and so are the groups that list a member (`r`), encoded by [`members`]. A delta page is merged with one atomic
//! batch that also records the page's cursor and marks the touched groups pending, so a crash between a page
//! and the directory apply loses nothing: the pending marks survive, and a group leaves the pending set only
//! after its directory changes were applied. Everything here can be rebuilt from Graph and the directory.
//!
//! One file per concern, each an `impl TenantState` with its own small API: [`cursors`] (delta rounds and
//! what the tenant's cycles recorded about Graph), [`cloud_store`] (the merged cloud state), [`anchors`] (where
//! managed groups live in AD, and which were taken over), [`pending`] (groups awaiting an apply, their
//! problems, the thresholds' window), [`schedules`] (time-bound members from PIM for Groups under `e`, groups whose
//! schedule is still to be read under `f`; `p` held problems once and is dropped on open) and [`journal`] (the audit log and the write journal). This file holds the
//! store, the tenant's tree and the key and record encoding they share.

mod anchors;
mod cloud_store;
mod cursors;
mod journal;
mod members;
mod pending;
mod schedules;

pub use anchors::Anchor;
pub use cloud_store::{MergeStats, Unreadable};
pub use cursors::{Cursor, Resource};
pub use journal::AuditRecord;
pub use pending::{GroupProblems, Threshold};
pub use schedules::SweepMark;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cloud::{CloudGroup, CloudUser, GroupEntry, MemberKind, Removal, UserEntry};
use crate::reasons::{HeldReason, SkipReason};

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

    fn corrupt(&self, k: &[u8], cause: impl ToString) -> StateError {
        StateError::Corrupt {
            tenant: self.name.clone(),
            key: String::from_utf8_lossy(k).replace('\0', "/"),
            cause: cause.to_string(),
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

    /// Deletes everything this tenant's state holds except the audit log; the next cycle resyncs in full.
    pub fn reset(&self) -> Result<(), StateError> {
        self.tree.clear()?;
        self.tree.insert(LAYOUT_KEY, LAYOUT)?;
        Ok(())
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
        assert_eq!(s.pending().unwrap(), ["g"]);
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
        s.clear_pending("g").unwrap();
        s.merge_user_page(&user(json!({"id":"u1","@removed":{"reason":"changed"}})), &[], &cursor(false)).unwrap();
        assert!(s.user("u1").unwrap().is_some());
        assert!(s.pending().unwrap().is_empty(), "nothing of the group changes");
        s.merge_user_page(&user(json!({"id":"u1","@removed":{"reason":"deleted"}})), &[], &cursor(false)).unwrap();
        assert_eq!(s.user("u1").unwrap(), None);
        assert_eq!(s.pending().unwrap(), ["g"]);
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
        s.clear_pending("g").unwrap();
        let user = |v: serde_json::Value| vec![parse_user(&v).unwrap()];
        s.merge_user_page(&user(json!({"id":"u1","displayName":"A"})), &[], &cursor(true)).unwrap();
        assert_eq!(s.pending().unwrap(), ["g"], "a user that arrives after its group resolves that member");
        s.clear_pending("g").unwrap();
        s.merge_user_page(&user(json!({"id":"u1","displayName":"B"})), &[], &cursor(false)).unwrap();
        assert!(s.pending().unwrap().is_empty(), "a display name change does not touch membership");
        s.merge_user_page(
            &user(json!({"id":"u1","onPremisesSecurityIdentifier":"S-1-5-21-1-2-3-1000"})),
            &[],
            &cursor(false),
        )
        .unwrap();
        assert_eq!(s.pending().unwrap(), ["g"]);
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
        s.clear_pending("parent").unwrap();
        s.merge_group_page(
            &group_entries(json!([{"id":"child","writebackConfiguration":{"isEnabled":false}}])),
            &[],
            &cursor(false),
        )
        .unwrap();
        assert_eq!(s.pending().unwrap(), ["child", "parent"]);
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
            cause: None,
            found: None,
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
        state.clear_pending("g1").unwrap();
        state
            .tree
            .insert(
                key("p", &["g1"]),
                br#"{"skipped_members":[],"conflict":null,"held":"apply failed: busy"}"#.to_vec(),
            )
            .unwrap();
        let state = store.tenant("t").unwrap();
        assert!(state.problems().unwrap().is_empty());
        assert_eq!(state.pending().unwrap(), ["g1"]);
        let held = GroupProblems { held: Some(HeldReason::ApplyFailed { cause: "busy".into() }), ..Default::default() };
        state.set_problems("g1", &held).unwrap();
        assert_eq!(store.tenant("t").unwrap().problems_of("g1").unwrap(), Some(held));
    }
}
