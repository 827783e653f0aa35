//! Reconcile without a DC: the cloud state in a scratch sled store, the directory in memory ([`Memory`]) and a
//! clock the test moves. The suite holds the same behaviour against the real Samba DC end to end.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::*;
use crate::config::{ClientCredential, Config, Secret};
use crate::directory::{Applied, ApplyError, GroupDirectory, LeaseObject, ManagedGroups};
use crate::dn;
use crate::graph::delta::{parse_group, parse_user};
use crate::model::BuiltinPolicy;
use crate::plan::{AttributeChange, DirectoryGroup, DirectoryMember, GroupRef, MemberValue, Op, Principal};
use crate::reasons::HeldReason;
use crate::state::{Cursor, GroupProblems};

const OU: &str = "OU=Writeback,DC=corp,DC=test";

/// One group object of [`Memory`].
#[derive(Debug, Clone)]
struct Object {
    guid: String,
    sid: String,
    dn: String,
    attributes: HashMap<String, Vec<String>>,
    members: Vec<String>,
}

/// A directory in memory: groups and users, every write in order, and groups whose writes it refuses.
#[derive(Debug, Default)]
struct Memory {
    objects: Vec<Object>,
    /// Users by upper-case SID.
    users: HashMap<String, String>,
    /// Cloud ids whose writes the directory refuses.
    refuse: HashSet<String>,
    /// Every operation applied (refused ones too), in order.
    writes: Vec<Op>,
    /// The ids of each `managed_groups` call.
    lookups: Vec<Vec<String>>,
    serial: u32,
    /// Asked at each member removal whether the group's anchor is recorded in the state yet.
    anchor_recorded: Option<AnchorProbe>,
    /// What `anchor_recorded` answered at each member removal, by group id.
    removals: Vec<(String, bool)>,
    /// The domain's SID, when the test gives one.
    domain: Option<String>,
    /// The forest expires `<TTL=…,DN>` links by itself.
    ttl_links: bool,
    /// How many operations each wave sent together.
    waves: Vec<usize>,
}

/// Whether the state has recorded a group's anchor.
struct AnchorProbe(Box<dyn Fn(&str) -> bool>);

impl std::fmt::Debug for AnchorProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnchorProbe")
    }
}

impl Memory {
    fn with_users(sids: &[&str]) -> Memory {
        let users = sids.iter().map(|sid| (sid.to_uppercase(), format!("CN={sid},CN=Users,DC=corp,DC=test"))).collect();
        Memory { users, ..Memory::default() }
    }

    fn anchor_of(object: &Object) -> Option<String> {
        object.attributes.get("admindescription")?.first()?.strip_prefix("Group_").map(str::to_string)
    }

    fn by_id(&self, id: &str) -> Option<&Object> {
        self.objects.iter().find(|o| Self::anchor_of(o).as_deref() == Some(id))
    }

    fn by_guid(&mut self, guid: &str) -> Option<&mut Object> {
        self.objects.iter_mut().find(|o| o.guid == guid)
    }

    fn sid_of(&self, member_dn: &str) -> Option<String> {
        let user = self.users.iter().find(|(_, dn)| dn::same(dn, member_dn)).map(|(sid, _)| sid.clone());
        user.or_else(|| self.objects.iter().find(|o| dn::same(&o.dn, member_dn)).map(|o| o.sid.clone()))
    }

    fn group_type(object: &Object) -> Option<i32> {
        object.attributes.get("grouptype")?.first()?.parse().ok()
    }

    fn read(&self, object: &Object) -> DirectoryGroup {
        let mut attributes = object.attributes.clone();
        attributes.insert("cn".into(), vec![dn::leaf_value(&object.dn).unwrap_or_default()]);
        let members = object.members.iter().map(|m| DirectoryMember { dn: m.clone(), sid: self.sid_of(m) }).collect();
        DirectoryGroup {
            guid: object.guid.clone(),
            sid: Some(object.sid.clone()),
            dn: object.dn.clone(),
            attributes,
            members,
        }
    }

    fn member_dn(value: &MemberValue, created: &HashMap<String, String>) -> String {
        match value {
            MemberValue::Dn(dn) => dn.clone(),
            MemberValue::NewGroup(id) => created.get(id).cloned().unwrap_or_default(),
        }
    }

    fn write(&mut self, op: &Op, created: &HashMap<String, String>) -> Applied {
        match op {
            Op::Create { dn, attributes, .. } => {
                self.serial += 1;
                let mut object = Object {
                    guid: format!("guid-{}", self.serial),
                    sid: format!("S-1-5-21-9-{}", 1000 + self.serial),
                    dn: dn.clone(),
                    attributes: HashMap::new(),
                    members: Vec::new(),
                };
                for (name, values) in attributes {
                    match name.as_str() {
                        "member" => object.members.extend(values.iter().cloned()),
                        "objectClass" => {}
                        _ => drop(object.attributes.insert(name.to_lowercase(), values.clone())),
                    }
                }
                let applied =
                    Applied::Created { guid: object.guid.clone(), sid: Some(object.sid.clone()), dn: dn.clone() };
                self.objects.push(object);
                applied
            }
            Op::Rename { guid, dn: old, new_cn, new_parent, .. } => {
                let parent = new_parent.clone().or_else(|| dn::parent(old)).unwrap_or_default();
                let dn = dn::child(new_cn, &parent);
                if let Some(object) = self.by_guid(guid) {
                    object.dn = dn.clone();
                }
                Applied::Moved { dn }
            }
            Op::Modify { guid, changes, .. } | Op::TakeOver { guid, changes, .. } => {
                if let Some(object) = self.by_guid(guid) {
                    for change in changes {
                        match change {
                            AttributeChange::Replace(name, values) => {
                                object.attributes.insert(name.to_lowercase(), values.clone());
                            }
                            AttributeChange::Clear(name) => drop(object.attributes.remove(&name.to_lowercase())),
                        }
                    }
                }
                Applied::Done
            }
            Op::AddMembers { group_id, target, values } => {
                // A TTL link is stored as its DN, as AD shows it to a reader without the TTL control.
                let strip = |v: String| match v.strip_prefix("<TTL=").and_then(|rest| rest.split_once(',')) {
                    Some((_, dn)) => dn.trim_end_matches('>').to_string(),
                    None => v,
                };
                let dns: Vec<String> = values.iter().map(|v| strip(Self::member_dn(v, created))).collect();
                let target = match target {
                    GroupRef::Existing { guid, .. } => guid.clone(),
                    GroupRef::New => self.by_id(group_id).map(|o| o.guid.clone()).unwrap_or_default(),
                };
                if let Some(object) = self.by_guid(&target) {
                    object.members.extend(dns);
                }
                Applied::Done
            }
            Op::RemoveMembers { guid, values, .. } => {
                if let Some(object) = self.by_guid(guid) {
                    object.members.retain(|m| !values.iter().any(|v| dn::same(v, m)));
                }
                Applied::Done
            }
            Op::Delete { guid, .. } => {
                self.objects.retain(|o| &o.guid != guid);
                Applied::Done
            }
        }
    }

    /// The member DNs of the group written for cloud group `id`.
    fn members_of(&self, id: &str) -> Vec<String> {
        self.by_id(id).map(|o| o.members.clone()).unwrap_or_default()
    }
}

impl GroupDirectory for Memory {
    fn schema(&self) -> SchemaSupport {
        SchemaSupport::default()
    }

    async fn domain_sid(&mut self) -> Option<String> {
        self.domain.clone()
    }

    async fn managed_index(&mut self, ous: &[String]) -> Result<Vec<(String, String)>, DirectoryError> {
        let within = |o: &&Object| ous.iter().any(|ou| dn::is_within(&o.dn, ou));
        Ok(self.objects.iter().filter(within).filter_map(|o| Some((Self::anchor_of(o)?, o.dn.clone()))).collect())
    }

    async fn managed_groups(
        &mut self,
        ids: &[String],
        _recorded: &HashMap<String, String>,
        _ous: &[String],
    ) -> Result<ManagedGroups, DirectoryError> {
        self.lookups.push(ids.to_vec());
        let groups = ids.iter().filter_map(|id| Some((id.clone(), self.read(self.by_id(id)?)))).collect();
        Ok(ManagedGroups { groups, ..ManagedGroups::default() })
    }

    async fn groups_by_sid(&mut self, sids: &[String]) -> Result<HashMap<String, DirectoryGroup>, DirectoryError> {
        let wanted: HashSet<String> = sids.iter().map(|s| s.to_uppercase()).collect();
        Ok(self.objects.iter().filter(|o| wanted.contains(&o.sid)).map(|o| (o.sid.clone(), self.read(o))).collect())
    }

    async fn principals(&mut self, sids: &[String]) -> Result<HashMap<String, Principal>, DirectoryError> {
        let mut found = HashMap::new();
        for sid in sids.iter().map(|s| s.to_uppercase()) {
            if let Some(dn) = self.users.get(&sid) {
                found.insert(sid, Principal { dn: dn.clone(), group_type: None, classes: vec!["user".into()] });
            } else if let Some(object) = self.objects.iter().find(|o| o.sid == sid) {
                let principal = Principal {
                    dn: object.dn.clone(),
                    group_type: Self::group_type(object),
                    classes: vec!["group".into()],
                };
                found.insert(sid, principal);
            }
        }
        Ok(found)
    }

    async fn member_groups(&mut self, group_dns: &[String]) -> Result<HashMap<String, Principal>, DirectoryError> {
        let holders: Vec<&Object> =
            self.objects.iter().filter(|o| group_dns.iter().any(|d| dn::same(d, &o.dn))).collect();
        let members: HashSet<String> = holders.iter().flat_map(|o| o.members.iter().map(|m| dn::fold(m))).collect();
        Ok(self
            .objects
            .iter()
            .filter(|o| members.contains(&dn::fold(&o.dn)))
            .map(|o| {
                (o.sid.clone(), Principal { dn: o.dn.clone(), group_type: Self::group_type(o), classes: Vec::new() })
            })
            .collect())
    }

    async fn containing_groups(&mut self, dn: &str) -> Result<HashMap<String, Principal>, DirectoryError> {
        let holders = self.objects.iter().filter(|o| o.members.iter().any(|m| dn::same(m, dn)));
        Ok(holders
            .map(|o| {
                (o.sid.clone(), Principal { dn: o.dn.clone(), group_type: Self::group_type(o), classes: Vec::new() })
            })
            .collect())
    }

    async fn protecting_group(&mut self, _: &str, _: &[String]) -> Result<Option<String>, DirectoryError> {
        Ok(None)
    }

    async fn apply(&mut self, op: &Op, created: &HashMap<String, String>) -> Result<Applied, ApplyError> {
        self.writes.push(op.clone());
        if let (Op::RemoveMembers { group_id, .. }, Some(probe)) = (op, &self.anchor_recorded) {
            self.removals.push((group_id.clone(), (probe.0)(group_id)));
        }
        if self.refuse.contains(op.group_id()) {
            return Err(ApplyError::Refused { code: 53, message: "unwilling to perform".into() });
        }
        Ok(self.write(op, created))
    }

    /// Applies a wave last to first, as writes in flight together may land in any order: a wave that holds two
    /// operations which depend on each other then fails its test.
    async fn apply_all(
        &mut self,
        ops: &[&Op],
        created: &HashMap<String, String>,
        go_on: crate::directory::GoOn<'_>,
    ) -> Vec<crate::directory::Sent> {
        self.waves.push(ops.len());
        let mut results = Vec::with_capacity(ops.len());
        for op in ops.iter().rev() {
            results.push(if go_on() { Some(self.apply(op, created).await) } else { None });
        }
        results.reverse();
        results
    }

    async fn read_lease(&mut self, dn: &str) -> Result<LeaseObject, DirectoryError> {
        Err(DirectoryError::Connect { url: dn.into(), cause: "the in-memory directory keeps no lease".into() })
    }

    async fn time_to_live_links(&mut self) -> bool {
        self.ttl_links
    }
}

/// A clock that moves only when the test moves it.
#[derive(Debug)]
struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn tenant(settings: &str) -> TenantConfig {
    let text = format!(
        r#"
[agent]
state_dir = "/nonexistent/writeback"

[[tenant]]
name = "t"
tenant_id = "t"
client_id = "c"
client_secret_env = "WRITEBACK_SYNC_TESTS_UNUSED"
graph_url = "http://127.0.0.1:9"
login_url = "http://127.0.0.1:9"
{settings}

[tenant.directory]
url = "ldaps://127.0.0.1:9"
bind_dn = "CN=agent,DC=corp,DC=test"
password_env = "WRITEBACK_SYNC_TESTS_UNUSED"
target_ou = "{OU}"
"#
    );
    let mut config = Config::parse(&text, Path::new("sync-tests.toml")).expect("the test config parses");
    config.tenants.remove(0)
}

/// A tenant's sync over a scratch store, with the built-in policy, no lease and `clock`.
fn sync_for<'a>(config: &'a TenantConfig, store: &Store, clock: Arc<TestClock>) -> TenantSync<'a> {
    // No test reaches Graph: the groups are in the state, and none is an orphan.
    let credential = ClientCredential::Secret(Secret::new("unused".into()));
    TenantSync {
        config,
        store: store.clone(),
        state: store.tenant(&config.name).expect("a scratch tenant"),
        graph: crate::graph::GraphClient::new(config, credential).expect("a Graph client"),
        stop: StopFlag::default(),
        policy: Mutex::new(LoadedPolicy { policy: Box::new(BuiltinPolicy), fingerprint: String::new() }),
        fence: None,
        progress: crate::progress::Progress::hidden(),
        clock,
        own_writes: Default::default(),
    }
}

fn id(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn sid(n: u32) -> String {
    format!("S-1-5-21-1-2-3-{}", 1100 + n)
}

/// A written-back security group with these members: users by number, groups by id.
fn group(n: u32, name: &str, users: &[u32], groups: &[u32]) -> Value {
    let mut members: Vec<Value> =
        users.iter().map(|u| json!({"@odata.type": "#microsoft.graph.user", "id": format!("u{u}")})).collect();
    members.extend(groups.iter().map(|g| json!({"@odata.type": "#microsoft.graph.group", "id": id(*g)})));
    json!({
        "id": id(n),
        "displayName": name,
        "securityEnabled": true,
        "mailEnabled": false,
        "groupTypes": [],
        "writebackConfiguration": {"isEnabled": true, "onPremisesGroupType": null},
        "members@delta": members,
    })
}

fn merge_groups(state: &TenantState, entries: Value) {
    let entries: Vec<_> = entries.as_array().unwrap().iter().map(|e| parse_group(e).unwrap()).collect();
    let cursor = Cursor { link: "delta".into(), full: false, complete: true, select: None };
    state.merge_group_page(&entries, &[], &cursor).unwrap();
}

fn merge_users(state: &TenantState, users: &[u32]) {
    let entries: Vec<_> = users
        .iter()
        .map(|u| {
            let user =
                json!({"id": format!("u{u}"), "onPremisesSyncEnabled": true, "onPremisesSecurityIdentifier": sid(*u)});
            parse_user(&user).unwrap()
        })
        .collect();
    let cursor = Cursor { link: "delta".into(), full: false, complete: true, select: None };
    state.merge_user_page(&entries, &[], &cursor).unwrap();
}

fn users(numbers: &[u32]) -> Memory {
    let sids: Vec<String> = numbers.iter().map(|n| sid(*n)).collect();
    Memory::with_users(&sids.iter().map(String::as_str).collect::<Vec<_>>())
}

async fn reconcile(sync: &TenantSync<'_>, directory: &mut Memory, options: CycleOptions) -> CycleReport {
    let mut report = CycleReport::default();
    sync.reconcile(directory, options, &mut report).await.expect("the reconcile runs");
    sync.load_problems(&mut report.status).unwrap();
    report
}

fn clock() -> Arc<TestClock> {
    Arc::new(TestClock(AtomicU64::new(1_800_000_000)))
}

#[tokio::test]
async fn groups_are_planned_a_batch_at_a_time_and_each_batch_is_checkpointed() {
    let config = tenant("reconcile_batch = 2");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    merge_users(&sync.state, &[1]);
    merge_groups(&sync.state, json!((1..=5).map(|n| group(n, &format!("G{n}"), &[1], &[])).collect::<Vec<_>>()));
    let mut directory = users(&[1]);

    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    assert_eq!(report.status.writes, 5);
    assert_eq!(directory.lookups.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1], "batches of reconcile_batch");
    assert!(sync.state.pending().unwrap().is_empty(), "every applied group is clean");
    for n in 1..=5 {
        let anchor = sync.state.anchor(&id(n)).unwrap().expect("an anchor is recorded");
        assert_eq!(Some(anchor.guid.as_str()), directory.by_id(&id(n)).map(|o| o.guid.as_str()));
        assert_eq!(directory.members_of(&id(n)).len(), 1);
    }
    // Nothing changed: a second reconcile of every group writes nothing.
    sync.state.mark_all_pending().unwrap();
    let before = directory.writes.len();
    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    assert_eq!((report.status.writes, directory.writes.len()), (0, before));
}

#[tokio::test]
async fn a_nested_group_that_a_later_batch_creates_is_linked_in_the_same_cycle() {
    let config = tenant("reconcile_batch = 1");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    // Group 1 is planned first and holds group 2, which only the second batch creates.
    merge_groups(&sync.state, json!([group(1, "Parent", &[], &[2]), group(2, "Child", &[], &[])]));
    let mut directory = Memory::default();

    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    let child = directory.by_id(&id(2)).expect("the child is written").dn.clone();
    assert_eq!(directory.members_of(&id(1)), [child]);
    assert!(report.status.skipped_members.is_empty(), "{:?}", report.status.skipped_members);
    assert!(sync.state.pending().unwrap().is_empty());
}

#[tokio::test]
async fn renames_and_deletes_wait_for_the_last_batch_and_deletes_over_the_threshold_are_held() {
    let config = tenant("reconcile_batch = 1\ndelete_threshold = 1");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    merge_groups(
        &sync.state,
        json!([group(1, "One", &[], &[]), group(2, "Two", &[], &[]), group(3, "Three", &[], &[])]),
    );
    let mut directory = Memory::default();
    reconcile(&sync, &mut directory, CycleOptions::default()).await;

    // Group 1 is renamed, 2 and 3 are deleted, and group 4 is new.
    let gone = |n: u32| json!({"id": id(n), "@removed": {"reason": "deleted"}});
    merge_groups(
        &sync.state,
        json!([{"id": id(1), "displayName": "One renamed"}, gone(2), gone(3), group(4, "Four", &[], &[])]),
    );
    directory.writes.clear();
    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    let kinds: Vec<&str> = directory.writes.iter().map(|op| crate::plan::describe(op).0).collect();
    let at = |kind: &str| kinds.iter().position(|k| *k == kind).unwrap_or_else(|| panic!("no {kind} in {kinds:?}"));
    assert!(at("create") < at("rename"), "the rename waits for the end of the cycle, after a later batch: {kinds:?}");
    assert!(!kinds.contains(&"delete"), "{kinds:?}");
    let held: Vec<&str> = report.status.held_deletes.iter().map(|d| d.group_id.as_str()).collect();
    assert_eq!(held, [id(2), id(3)], "two deletes are more than delete_threshold (1): both are held");
    assert!(directory.by_id(&id(2)).is_some() && directory.by_id(&id(3)).is_some());
    assert_eq!(sync.state.pending().unwrap(), [id(2), id(3)], "held deletes stay pending");

    let allowed = CycleOptions { allow_deletes: true, ..CycleOptions::default() };
    reconcile(&sync, &mut directory, allowed).await;
    assert!(directory.by_id(&id(2)).is_none() && directory.by_id(&id(3)).is_none());
    assert!(sync.state.group(&id(2)).unwrap().is_none(), "a deleted group is forgotten");
    assert!(sync.state.pending().unwrap().is_empty());
}

#[tokio::test]
async fn a_group_whose_writes_keep_failing_is_quarantined_at_the_third_cycle_and_the_others_go_on() {
    let config = tenant("");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    merge_groups(&sync.state, json!([group(1, "Refused", &[], &[]), group(2, "Fine", &[], &[])]));
    let mut directory = Memory { refuse: [id(1)].into(), ..Memory::default() };

    for attempt in 1..=3u32 {
        let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
        let held = report.status.held_groups.iter().find(|h| h.group_id == id(1)).expect("held").reason.clone();
        let problems: GroupProblems = sync.state.problems_of(&id(1)).unwrap().unwrap();
        assert_eq!(problems.failures, attempt);
        if attempt < 3 {
            assert!(matches!(held, HeldReason::ApplyFailed { .. }), "{held:?}");
            assert_eq!(sync.state.pending().unwrap(), [id(1)], "a failed group stays pending");
        } else {
            assert_eq!(
                held,
                HeldReason::Quarantined { attempts: 3, cause: "unwilling to perform (LDAP result 53)".into() }
            );
            assert!(sync.state.pending().unwrap().is_empty(), "a quarantined group leaves the pending set");
        }
    }
    assert!(directory.by_id(&id(2)).is_some(), "the other group is written at the first cycle");
    assert!(directory.by_id(&id(1)).is_none());
}

#[tokio::test]
async fn member_removals_count_over_a_window_that_moves_with_the_clock() {
    let config = tenant("member_removal_threshold = 2\nthreshold_window = \"1h\"");
    let store = Store::temporary().unwrap();
    let clock = clock();
    let sync = sync_for(&config, &store, clock.clone());
    merge_users(&sync.state, &[1, 2, 3]);
    merge_groups(&sync.state, json!([group(1, "One", &[1, 2, 3], &[])]));
    let mut directory = users(&[1, 2, 3]);
    reconcile(&sync, &mut directory, CycleOptions::default()).await;

    let remove = |user: u32| json!([{"id": id(1), "members@delta": [{"@odata.type": "#microsoft.graph.user", "id": format!("u{user}"), "@removed": {"reason": "deleted"}}]}]);
    merge_groups(&sync.state, remove(1));
    merge_groups(&sync.state, remove(2));
    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    assert!(report.status.held_member_removals.is_empty(), "two removals are within the threshold");
    assert_eq!(directory.members_of(&id(1)).len(), 1);

    clock.0.fetch_add(1800, Ordering::SeqCst);
    merge_groups(&sync.state, remove(3));
    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    assert_eq!(report.status.held_member_removals.len(), 1, "a third removal within the hour is held");
    assert_eq!(directory.members_of(&id(1)).len(), 1);
    assert_eq!(sync.state.pending().unwrap(), [id(1)], "held removals keep their group pending");

    clock.0.fetch_add(3600, Ordering::SeqCst);
    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    assert!(report.status.held_member_removals.is_empty(), "an hour later the first two left the window");
    assert!(directory.members_of(&id(1)).is_empty());
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_leaves_every_group_pending() {
    let config = tenant("");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    merge_groups(&sync.state, json!([group(1, "One", &[], &[]), group(2, "Two", &[], &[1])]));
    let mut directory = Memory::default();
    let mut report = CycleReport::default();
    let dry = CycleOptions { dry_run: true, ..CycleOptions::default() };
    sync.reconcile(&mut directory, dry, &mut report).await.unwrap();
    assert!(directory.writes.is_empty());
    assert_eq!(report.plan.iter().filter(|op| matches!(op, Op::Create { .. })).count(), 2, "{:?}", report.plan);
    assert_eq!(sync.state.pending().unwrap().len(), 2);
}

#[tokio::test]
async fn a_scope_change_goes_through_universal_and_waits_while_ad_would_refuse_it() {
    let global = tenant("group_scope = \"global\"");
    let store = Store::temporary().unwrap();
    let mut directory = Memory::default();
    let sync = sync_for(&global, &store, clock());
    merge_groups(&sync.state, json!([group(1, "Scoped", &[], &[])]));
    reconcile(&sync, &mut directory, CycleOptions::default()).await;
    let written = directory.by_id(&id(1)).unwrap().clone();
    assert_eq!(Memory::group_type(&written), Some(-2147483646), "written as a global group");
    // It is put into another global group, so AD would refuse to make it universal.
    directory.serial += 1;
    directory.objects.push(Object {
        guid: "guid-parent".into(),
        sid: "S-1-5-21-9-9999".into(),
        dn: "CN=Parent,OU=Elsewhere,DC=corp,DC=test".into(),
        attributes: [("grouptype".to_string(), vec!["-2147483646".to_string()])].into(),
        members: vec![written.dn.clone()],
    });

    let local = tenant("group_scope = \"domain-local\"");
    let sync = sync_for(&local, &store, clock());
    sync.state.mark_all_pending().unwrap();
    directory.writes.clear();
    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    let held = report.status.held_groups.iter().find(|h| h.group_id == id(1)).expect("held").reason.clone();
    assert_eq!(
        held,
        HeldReason::ScopeChangeRefused {
            from: "global".into(),
            to: "domain-local".into(),
            cause: "A global group cannot have a universal group as a member.".into()
        }
    );
    assert!(directory.writes.is_empty(), "no step of a refused change is written: {:?}", directory.writes);
    assert_eq!(Memory::group_type(directory.by_id(&id(1)).unwrap()), Some(-2147483646));

    // Out of that group, the change goes through universal, one step at a time.
    directory.objects.retain(|o| o.guid != "guid-parent");
    sync.state.mark_all_pending().unwrap();
    reconcile(&sync, &mut directory, CycleOptions::default()).await;
    let steps: Vec<String> = directory
        .writes
        .iter()
        .filter_map(|op| match op {
            Op::Modify { changes, .. } => match changes.as_slice() {
                [AttributeChange::Replace(name, values)] if name == "groupType" => Some(values[0].clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(steps, ["-2147483640", "-2147483644"], "universal first, then domain-local");
    assert_eq!(Memory::group_type(directory.by_id(&id(1)).unwrap()), Some(-2147483644));
}

/// A cloud group converted from the AD group with SID `ad_sid`: not synced any more, the SID kept.
fn converted(n: u32, name: &str, ad_sid: &str, users: &[u32]) -> Value {
    let mut group = group(n, name, users, &[]);
    group["onPremisesSyncEnabled"] = Value::Null;
    group["onPremisesSecurityIdentifier"] = json!(ad_sid);
    group
}

/// An AD group no tool of ours wrote, holding `members`.
fn legacy(sid: &str, dn: &str, attributes: &[(&str, &str)], members: Vec<String>) -> Object {
    let mut all: HashMap<String, Vec<String>> =
        [("grouptype".to_string(), vec!["-2147483646".to_string()]), ("samaccountname".into(), vec![sid.into()])]
            .into();
    all.extend(attributes.iter().map(|(k, v)| (k.to_string(), vec![v.to_string()])));
    Object { guid: format!("guid-{sid}"), sid: sid.into(), dn: dn.into(), attributes: all, members }
}

#[tokio::test]
async fn a_converted_group_is_taken_over_in_place_before_its_members_change_and_only_where_allowed() {
    let config = tenant("[tenant.adopt]\nous = [\"OU=Legacy,DC=corp,DC=test\"]");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    merge_users(&sync.state, &[1, 2]);
    let mut directory = users(&[1, 2]);
    let user_dn = |n: u32| format!("CN={},CN=Users,DC=corp,DC=test", sid(n));
    let original = legacy("S-1-5-21-9-5001", "CN=Sales,OU=Legacy,DC=corp,DC=test", &[], vec![user_dn(2)]);
    directory.objects.extend([
        original.clone(),
        legacy("S-1-5-21-9-5002", "CN=Other,OU=Elsewhere,DC=corp,DC=test", &[], vec![]),
        legacy(
            "S-1-5-21-9-5003",
            "CN=Foreign,OU=Legacy,DC=corp,DC=test",
            &[("admindescription", "Group_DoNotSync")],
            vec![],
        ),
        legacy("S-1-5-21-9-5004", "CN=Admins,OU=Legacy,DC=corp,DC=test", &[("admincount", "1")], vec![]),
    ]);
    merge_groups(
        &sync.state,
        json!([
            converted(1, "Sales (cloud)", "S-1-5-21-9-5001", &[1]),
            converted(2, "Other", "S-1-5-21-9-5002", &[1]),
            converted(3, "Foreign", "S-1-5-21-9-5003", &[1]),
            converted(4, "Admins", "S-1-5-21-9-5004", &[1]),
            converted(5, "Gone", "S-1-5-21-9-5005", &[1]),
        ]),
    );

    // A parent in the same batch nests it only once it is taken over.
    merge_groups(&sync.state, json!([group(6, "Parent", &[], &[1])]));
    let state = store.tenant("t").unwrap();
    directory.anchor_recorded = Some(AnchorProbe(Box::new(move |id| state.anchor(id).unwrap().is_some())));

    // `plan` shows the take-over and the member changes that follow it, and writes nothing.
    let dry = CycleOptions { dry_run: true, ..CycleOptions::default() };
    let report = reconcile(&sync, &mut directory, dry).await;
    assert!(directory.writes.is_empty());
    let shown: Vec<String> = report.plan.iter().map(Op::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|op| op.starts_with("take-over CN=Sales,OU=Legacy") && op.contains("objectSid S-1-5-21-9-5001")),
        "{shown:?}"
    );
    let removal = format!("remove-members CN=Sales,OU=Legacy,DC=corp,DC=test: -1: {}", user_dn(2));
    assert!(shown.contains(&removal), "{shown:?}");

    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    let taken = directory.by_guid(&original.guid).unwrap().clone();
    assert_eq!((taken.dn.as_str(), taken.sid.as_str()), (original.dn.as_str(), original.sid.as_str()));
    assert_eq!(taken.attributes["admindescription"], [format!("Group_{}", id(1))]);
    assert_eq!(taken.attributes["samaccountname"], original.attributes["samaccountname"], "its name is kept");
    assert_eq!(taken.attributes["grouptype"], original.attributes["grouptype"], "its scope is kept");
    assert_eq!(taken.attributes["displayname"], ["Sales (cloud)"]);
    assert_eq!(taken.members, [user_dn(1)], "its members follow the cloud group");
    // The member that the cloud group lacks is removed only after the take-over is written and recorded.
    let position = |f: &dyn Fn(&Op) -> bool| directory.writes.iter().position(|op| f(op) && op.group_id() == id(1));
    let take_over = position(&|op| matches!(op, Op::TakeOver { .. })).expect("a take-over");
    assert!(take_over < position(&|op| matches!(op, Op::RemoveMembers { .. })).expect("a removal"));
    assert_eq!(directory.removals, [(id(1), true)], "removed only once the take-over is recorded");
    assert_eq!(directory.members_of(&id(6)), std::slice::from_ref(&original.dn), "nested once taken over");
    assert_eq!(sync.state.anchor(&id(1)).unwrap().map(|a| a.guid), Some(original.guid.clone()));
    let records = sync.state.takeovers().unwrap();
    assert_eq!(
        records.iter().map(|t| (t.group_id.as_str(), t.dn.as_str())).collect::<Vec<_>>(),
        [(id(1).as_str(), "CN=Sales,OU=Legacy,DC=corp,DC=test")]
    );

    let conflict = |n: u32| {
        report.status.conflicts.iter().find(|c| c.group_id == id(n)).map(|c| c.reason.clone()).unwrap_or_default()
    };
    assert!(conflict(2).contains("outside every [tenant.adopt] ous entry"), "{}", conflict(2));
    assert!(conflict(3).contains("adminDescription \"Group_DoNotSync\""), "{}", conflict(3));
    assert!(conflict(4).contains("is protected"), "{}", conflict(4));
    for n in 2..=4 {
        assert!(directory.writes.iter().all(|op| op.group_id() != id(n)), "group {n} is not touched");
    }
    let created = directory.by_id(&id(5)).expect("a converted group whose AD group is gone is written anew");
    assert!(dn::is_within(&created.dn, OU), "{}", created.dn);

    // Renamed in the cloud, it keeps the name AD gave it.
    merge_groups(&sync.state, json!([converted(1, "Sales renamed", "S-1-5-21-9-5001", &[1])]));
    directory.writes.clear();
    reconcile(&sync, &mut directory, CycleOptions::default()).await;
    let ops: Vec<String> = directory.writes.iter().filter(|op| op.group_id() == id(1)).map(Op::to_string).collect();
    assert_eq!(ops, [format!("modify {}: displayName=Sales renamed", original.dn)]);

    // Graph stops sending the SID: the take-over is remembered, so the name stays.
    let mut silent = converted(1, "Sales renamed", "S-1-5-21-9-5001", &[1]);
    silent["onPremisesSecurityIdentifier"] = Value::Null;
    merge_groups(&sync.state, json!([silent]));
    directory.writes.clear();
    reconcile(&sync, &mut directory, CycleOptions { full: true, ..CycleOptions::default() }).await;
    assert!(directory.writes.iter().all(|op| op.group_id() != id(1)), "{:?}", directory.writes);

    // Deleted in the cloud, it is handed back to AD, never deleted: its SID is named in ACLs everywhere.
    merge_groups(&sync.state, json!([{"id": id(1), "@removed": {"reason": "deleted"}}]));
    directory.writes.clear();
    reconcile(&sync, &mut directory, CycleOptions::default()).await;
    let kept = directory.by_guid(&original.guid).expect("kept").clone();
    assert!(!kept.attributes.contains_key("admindescription"), "its anchor is off: {:?}", kept.attributes);
    assert_eq!(kept.members, [user_dn(1)], "its members stay");
    assert!(directory.writes.iter().all(|op| !matches!(op, Op::Delete { .. })), "{:?}", directory.writes);
    assert!(sync.state.anchor(&id(1)).unwrap().is_none() && sync.state.takeovers().unwrap().is_empty());
}

#[tokio::test]
async fn converted_groups_are_not_taken_over_unless_the_tenant_names_ous() {
    let config = tenant("");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    let mut directory = Memory::default();
    directory.objects.push(legacy("S-1-5-21-9-5001", &format!("CN=Sales,{OU}"), &[], vec![]));
    merge_groups(&sync.state, json!([converted(1, "Sales", "S-1-5-21-9-5001", &[])]));
    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    assert!(directory.writes.is_empty(), "{:?}", directory.writes);
    let reason = &report.status.conflicts[0].reason;
    assert!(reason.contains("taking over converted groups is off for this tenant"), "{reason}");
    assert_eq!(sync.state.pending().unwrap(), [id(1)], "it stays pending, to be taken over once allowed");
}

#[tokio::test]
async fn a_take_over_that_fails_changes_no_member_and_nests_the_group_nowhere() {
    let config = tenant("[tenant.adopt]\nous = [\"OU=Legacy,DC=corp,DC=test\"]");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    merge_users(&sync.state, &[1, 2]);
    let mut directory = users(&[1, 2]);
    let member = format!("CN={},CN=Users,DC=corp,DC=test", sid(2));
    directory.objects.push(legacy("S-1-5-21-9-5001", "CN=Sales,OU=Legacy,DC=corp,DC=test", &[], vec![member.clone()]));
    merge_groups(&sync.state, json!([converted(1, "Sales", "S-1-5-21-9-5001", &[1]), group(6, "Parent", &[], &[1])]));
    directory.refuse.insert(id(1));
    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    let ops: Vec<String> = directory.writes.iter().filter(|op| op.group_id() == id(1)).map(Op::to_string).collect();
    assert_eq!(ops.len(), 1, "the take-over only: {ops:?}");
    assert!(ops[0].starts_with("take-over"), "{ops:?}");
    assert_eq!(directory.objects[0].members, [member], "its members are untouched");
    assert!(directory.members_of(&id(6)).is_empty(), "a group not taken over is nested nowhere");
    assert!(report.status.held_groups.iter().any(|h| h.group_id == id(1)), "{:?}", report.status.held_groups);
    assert!(sync.state.anchor(&id(1)).unwrap().is_none() && sync.state.takeovers().unwrap().is_empty());
}

#[tokio::test]
async fn converted_groups_of_other_domains_built_in_listed_protected_or_claimed_twice_are_not_taken_over() {
    let listed = "CN=Listed,OU=Legacy,DC=corp,DC=test";
    let config =
        tenant(&format!("protected_groups = [\"{listed}\"]\n[tenant.adopt]\nous = [\"OU=Legacy,DC=corp,DC=test\"]"));
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    let mut directory = Memory { domain: Some("S-1-5-21-9".into()), ..Memory::default() };
    directory.objects.extend([
        legacy("S-1-5-21-9-512", "CN=Domain Admins,OU=Legacy,DC=corp,DC=test", &[], vec![]),
        legacy("S-1-5-21-9-5001", listed, &[], vec![]),
        legacy("S-1-5-21-9-5002", "CN=Twice,OU=Legacy,DC=corp,DC=test", &[], vec![]),
        legacy(
            "S-1-5-21-9-5003",
            "CN=Critical,OU=Legacy,DC=corp,DC=test",
            &[("iscriticalsystemobject", "TRUE")],
            vec![],
        ),
    ]);
    merge_groups(
        &sync.state,
        json!([
            converted(1, "Admins", "S-1-5-21-9-512", &[]),
            converted(2, "Listed", "S-1-5-21-9-5001", &[]),
            converted(3, "Twice", "S-1-5-21-9-5002", &[]),
            converted(4, "Twice again", "S-1-5-21-9-5002", &[]),
            converted(5, "Elsewhere", "S-1-5-21-8-5004", &[]),
            converted(6, "Critical", "S-1-5-21-9-5003", &[]),
        ]),
    );
    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    assert!(directory.writes.is_empty(), "nothing taken over, nothing written: {:?}", directory.writes);
    let conflict = |n: u32| {
        report.status.conflicts.iter().find(|c| c.group_id == id(n)).map(|c| c.reason.clone()).unwrap_or_default()
    };
    assert!(conflict(1).contains("one of the domain's built-in groups (RID 512)"), "{}", conflict(1));
    assert!(conflict(2).contains("is protected"), "{}", conflict(2));
    for n in [3, 4] {
        assert!(conflict(n).contains("several cloud groups carry the SID"), "{}", conflict(n));
    }
    assert!(conflict(5).contains("which is not of this domain"), "{}", conflict(5));
    assert!(conflict(6).contains("critical system objects"), "{}", conflict(6));
}

#[tokio::test]
async fn scope_changes_count_against_the_rename_threshold_and_wait_until_allowed() {
    let store = Store::temporary().unwrap();
    let mut directory = Memory::default();
    let universal = tenant("");
    let sync = sync_for(&universal, &store, clock());
    merge_groups(&sync.state, json!([group(1, "One", &[], &[]), group(2, "Two", &[], &[])]));
    reconcile(&sync, &mut directory, CycleOptions::default()).await;

    // A new scope for every group, as a new group_scope or naming plugin version gives: two changes, threshold 1.
    let global = tenant("group_scope = \"global\"\nrename_threshold = 1");
    let sync = sync_for(&global, &store, clock());
    sync.state.mark_all_pending().unwrap();
    directory.writes.clear();
    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    assert!(directory.writes.is_empty(), "{:?}", directory.writes);
    assert_eq!(report.status.held_renames.len(), 2, "{:?}", report.status.held_renames);
    assert!(
        report.status.held_renames[0].contains("more than rename_threshold (1)"),
        "{:?}",
        report.status.held_renames
    );
    assert_eq!(sync.state.pending().unwrap().len(), 2, "held, so planned again");

    let allowed = CycleOptions { allow_renames: true, ..CycleOptions::default() };
    reconcile(&sync, &mut directory, allowed).await;
    for n in [1, 2] {
        assert_eq!(Memory::group_type(directory.by_id(&id(n)).unwrap()), Some(-2147483646));
    }
}

fn wall() -> f64 {
    super::pim::wall_now()
}

fn ends(members: &[(u32, f64)]) -> crate::pim::Schedule {
    let ends = members.iter().map(|(u, end)| (format!("u{u}"), *end)).collect();
    crate::pim::Schedule { ends, ..Default::default() }
}

#[tokio::test]
async fn time_bound_members_are_linked_with_a_ttl_where_the_forest_expires_them_and_plain_where_not() {
    let config = tenant("[tenant.pim]\nenabled = true");
    for ttl_links in [true, false] {
        let store = Store::temporary().unwrap();
        let sync = sync_for(&config, &store, clock());
        merge_users(&sync.state, &[1, 2]);
        merge_groups(&sync.state, json!([group(1, "Timed", &[1, 2], &[])]));
        sync.state.set_schedule(&id(1), &ends(&[(2, wall() + 3600.0)])).unwrap();
        let mut directory = Memory { ttl_links, ..users(&[1, 2]) };
        reconcile(&sync, &mut directory, CycleOptions::default()).await;
        let added: Vec<String> = directory
            .writes
            .iter()
            .flat_map(|op| match op {
                Op::AddMembers { values, .. } => values.clone(),
                Op::Create { attributes, .. } => attributes
                    .iter()
                    .filter(|(k, _)| k == "member")
                    .flat_map(|(_, v)| v.iter().cloned().map(MemberValue::Dn))
                    .collect(),
                _ => Vec::new(),
            })
            .map(|v| match v {
                MemberValue::Dn(dn) => dn,
                MemberValue::NewGroup(id) => id,
            })
            .collect();
        let timed = added.iter().find(|v| v.contains(&sid(2))).unwrap_or_else(|| panic!("{added:?}"));
        let plain = added.iter().find(|v| v.contains(&sid(1))).unwrap_or_else(|| panic!("{added:?}"));
        assert!(!plain.starts_with("<TTL="), "{added:?}");
        if ttl_links {
            let secs: u64 = timed.strip_prefix("<TTL=").and_then(|r| r.split(',').next()?.parse().ok()).unwrap_or(0);
            assert!((3590..=3600).contains(&secs), "{added:?}");
        } else {
            assert!(!timed.starts_with("<TTL="), "without the feature the agent expires it: {added:?}");
        }
    }
}

#[tokio::test]
async fn an_ended_member_leaves_while_delta_lists_it_and_no_removal_threshold_holds_it() {
    let config = tenant("member_removal_threshold = 0\n[tenant.pim]\nenabled = true");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    merge_users(&sync.state, &[1, 2, 3]);
    merge_groups(&sync.state, json!([group(1, "Timed", &[1, 2, 3], &[])]));
    sync.state.set_schedule(&id(1), &ends(&[(2, wall() + 3600.0), (3, wall() - 5.0)])).unwrap();
    let mut directory = users(&[1, 2, 3]);
    reconcile(&sync, &mut directory, CycleOptions::default()).await;
    let members = directory.members_of(&id(1));
    assert_eq!(members.len(), 2, "an ended member is never written: {members:?}");
    assert!(!members.iter().any(|m| m.contains(&sid(3))));

    // Its time comes: it leaves, though group delta still lists it and removals are held.
    sync.state.set_schedule(&id(1), &ends(&[(2, wall() - 1.0), (3, wall() - 5.0)])).unwrap();
    assert_eq!(sync.mark_due_expiries(false).unwrap(), [id(1)]);
    assert!(sync.mark_due_expiries(false).unwrap().is_empty(), "an end is planned for once");
    reconcile(&sync, &mut directory, CycleOptions::default()).await;
    let members = directory.members_of(&id(1));
    assert_eq!(members.len(), 1, "{members:?}");
    assert!(members[0].contains(&sid(1)));
    let expiry = sync.state.audit_log().unwrap().into_iter().find(|r| r.operation == "remove-members").unwrap();
    assert_eq!(expiry.cause.as_deref(), Some("pim-expiry"));
    assert!(expiry.detail.contains(&sid(2)), "{expiry:?}");

    // A removal for any other cause is still held.
    let remove = json!([{"id": id(1), "members@delta": [{"@odata.type": "#microsoft.graph.user", "id": "u1", "@removed": {"reason": "deleted"}}]}]);
    merge_groups(&sync.state, remove);
    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    assert_eq!(report.status.held_member_removals.len(), 1);
}

#[tokio::test]
async fn a_drift_repair_passes_the_thresholds_uncounted_and_a_backed_off_one_only_removes_members() {
    let config = tenant("member_removal_threshold = 0\nrename_threshold = 0");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    merge_users(&sync.state, &[1, 2]);
    merge_groups(&sync.state, json!([group(1, "Guarded", &[1], &[])]));
    let mut directory = users(&[1, 2]);
    reconcile(&sync, &mut directory, CycleOptions::default()).await;
    let intruder = directory.users[&sid(2).to_uppercase()].clone();
    let edit = |directory: &mut Memory| {
        let object = directory.objects.iter_mut().find(|o| Memory::anchor_of(o) == Some(id(1))).unwrap();
        object.members.push(intruder.clone());
        object.attributes.insert("description".into(), vec!["edited on-prem".into()]);
    };

    // Backed off: the member added on-premises goes at once, the rest waits.
    edit(&mut directory);
    sync.repair_drift(&mut directory, &[id(1)], true).await.unwrap();
    assert_eq!(directory.members_of(&id(1)).len(), 1);
    let object = directory.by_id(&id(1)).unwrap();
    assert_eq!(object.attributes.get("description").map(Vec::as_slice), Some(&["edited on-prem".to_string()][..]));

    // A full repair puts everything back, though removals are over their threshold of 0.
    edit(&mut directory);
    let report = sync.repair_drift(&mut directory, &[id(1)], false).await.unwrap();
    assert!(report.status.held_member_removals.is_empty());
    assert_eq!(directory.members_of(&id(1)).len(), 1);
    assert!(directory.by_id(&id(1)).unwrap().attributes.get("description").is_none_or(Vec::is_empty));
    let since = 0;
    assert_eq!(
        sync.state.applied_since(crate::state::Threshold::MemberRemovals, since).unwrap(),
        0,
        "repairs use no budget"
    );
    let causes: Vec<_> = sync.state.audit_log().unwrap().into_iter().filter_map(|r| r.cause).collect();
    assert_eq!(causes, ["drift-repair", "drift-repair", "drift-repair"]);
}

#[tokio::test]
async fn the_pim_sweep_reads_every_written_group_once_per_sweep_besides_the_time_bound_ones() {
    let config = tenant("[tenant.pim]\nenabled = true\nsweep = \"1h\"");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    for n in 0..1000 {
        let anchor = crate::state::Anchor { guid: format!("guid-{n}"), sid: None, dn: format!("CN=g{n},{OU}") };
        sync.state.set_anchor(&id(n), &anchor).unwrap();
    }
    // Other kinds of keys after the anchors' must not be read as groups.
    merge_users(&sync.state, &[1, 2, 3]);
    sync.state.set_schedule(&id(5000), &ends(&[(1, wall() + 600.0)])).unwrap();
    let now = wall();
    sync.state.set_sweep_mark(&crate::state::SweepMark { after: Some(id(10)), time: now - 30.0 }).unwrap();
    let read = sync.schedules_to_read(now).unwrap();
    // 1,000 groups an hour is 8.3 every 30 s: 9, after the mark, and the group with a time-bound member.
    let expected: Vec<String> = (11..=19).map(id).chain([id(5000)]).collect();
    assert_eq!(read, expected);
    let mark = sync.state.sweep_mark().unwrap();
    // The mark is kept as JSON, whose parser may round a float's last bit.
    assert_eq!(mark.after, Some(id(19)));
    assert!((mark.time - now).abs() < 1e-6, "{}", mark.time - now);
    // At the end of the groups it goes round to the first ones.
    sync.state.set_sweep_mark(&crate::state::SweepMark { after: Some(id(995)), time: now - 30.0 }).unwrap();
    let read = sync.schedules_to_read(now).unwrap();
    assert_eq!(read.len(), 10, "{read:?}");
    assert!(read.contains(&id(999)) && read.contains(&id(0)) && read.contains(&id(4)), "{read:?}");
    // After an hour without a read, the share is every group; 200 fit, and the mark moves on by what they
    // are of an hour's sweep, so that the next cycles catch up.
    sync.state.set_sweep_mark(&crate::state::SweepMark { after: None, time: now - 3600.0 }).unwrap();
    assert_eq!(sync.schedules_to_read(now).unwrap().len(), 201);
    let mark = sync.state.sweep_mark().unwrap();
    assert!((mark.time - (now - 3600.0 + 720.0)).abs() < 1e-6, "{}", mark.time - now);
}

#[tokio::test]
async fn groups_with_cloud_changes_that_a_cycle_has_no_room_to_read_are_read_in_the_next_cycles() {
    let config = tenant("[tenant.pim]\nenabled = true");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    merge_groups(&sync.state, json!((0..250).map(|n| group(n, &format!("G{n}"), &[], &[])).collect::<Vec<_>>()));
    let now = wall();
    // No group is managed yet, so the sweep reads none: only the 250 changed ones are to read.
    let first = sync.schedules_to_read(now).unwrap();
    assert_eq!(first.len(), 200, "one cycle reads at most 200 beyond the time-bound ones");
    for id in &first {
        sync.state.mark_schedule_read(id).unwrap();
        sync.state.clear_pending(id).unwrap();
    }
    for n in 0..250 {
        sync.state.clear_pending(&id(n)).unwrap();
    }
    let second = sync.schedules_to_read(now).unwrap();
    assert_eq!(second.len(), 50, "the rest come next, though their group is no longer pending");
    assert!(second.iter().all(|id| !first.contains(id)));
}

#[tokio::test]
async fn an_end_whose_group_still_waits_for_its_apply_is_reported_overdue() {
    let config = tenant("[tenant.pim]\nenabled = true");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    merge_users(&sync.state, &[1]);
    merge_groups(&sync.state, json!([group(1, "Timed", &[1], &[]), group(2, "Applied", &[1], &[])]));
    sync.state.set_schedule(&id(1), &ends(&[(1, wall() - 90.0)])).unwrap();
    sync.state.set_schedule(&id(2), &ends(&[(1, wall() - 600.0)])).unwrap();
    sync.state.clear_pending(&id(2)).unwrap();
    sync.time_bound_members().unwrap();
    let overdue = |text: &str| {
        let line = text.lines().find(|l| l.starts_with(r#"writeback_pim_overdue_seconds{tenant="t"}"#))?;
        line.rsplit(' ').next()?.parse::<i64>().ok()
    };
    let seconds = overdue(&crate::metrics::global().encode()).expect("the gauge is exported");
    assert!((90..120).contains(&seconds), "the pending group's end, not the applied one's: {seconds}");
    sync.state.clear_pending(&id(1)).unwrap();
    sync.time_bound_members().unwrap();
    assert_eq!(overdue(&crate::metrics::global().encode()), Some(0));
}

fn create_op(group: &str, dn: &str, members: &[&str]) -> Op {
    let mut attributes = vec![("objectClass".to_string(), vec!["group".to_string()])];
    if !members.is_empty() {
        attributes.push(("member".into(), members.iter().map(|m| m.to_string()).collect()));
    }
    Op::Create { group_id: group.into(), dn: dn.into(), attributes }
}

fn add_op(group: &str, target: Option<&str>, values: Vec<MemberValue>) -> Op {
    let target = match target {
        Some(dn) => GroupRef::Existing { guid: format!("guid-{group}"), dn: dn.into() },
        None => GroupRef::New,
    };
    Op::AddMembers { group_id: group.into(), target, values }
}

#[test]
fn writes_go_in_waves_that_keep_each_groups_order_and_wait_for_the_groups_they_name() {
    let user = |n: u32| MemberValue::Dn(format!("CN=u{n},{OU}"));
    let ops = vec![
        // 0, 1: independent creates sharing a member go together.
        create_op("a", &format!("CN=A,{OU}"), &[&format!("CN=u1,{OU}")]),
        create_op("b", &format!("CN=B,{OU}"), &[&format!("CN=u1,{OU}")]),
        // 2: a's second write waits for its create.
        add_op("a", None, vec![user(2)]),
        // 3: c names b, created in this apply, so it waits for b's create.
        add_op("c", Some(&format!("CN=C,{OU}")), vec![MemberValue::NewGroup("b".into())]),
        // 4: d names E by another spelling of its DN; E's scope change (5) comes after it in the plan.
        add_op("d", Some(&format!("CN=D,{OU}")), vec![MemberValue::Dn(format!("cn=e, {}", OU.to_lowercase()))]),
        Op::Modify { group_id: "e".into(), guid: "guid-e".into(), dn: format!("CN=E,{OU}"), changes: vec![] },
        // 6: f moves to where g's create (7) wants to be; the create waits for it.
        Op::Rename {
            group_id: "f".into(),
            guid: "guid-f".into(),
            dn: format!("CN=F,{OU}"),
            new_cn: "G".into(),
            new_parent: None,
        },
        create_op("g", &format!("CN=G,{OU}"), &[]),
        // 8, 9: h leaves c, then h is deleted.
        Op::RemoveMembers {
            group_id: "c".into(),
            guid: "guid-c".into(),
            dn: format!("CN=C,{OU}"),
            values: vec![format!("CN=H,{OU}")],
        },
        Op::Delete { group_id: "h".into(), guid: "guid-h".into(), dn: format!("CN=H,{OU}") },
    ];
    let waves = apply::waves(&ops);
    let wave_of = |i: usize| waves.iter().position(|w| w.contains(&i)).expect("every op is in a wave");
    assert_eq!(waves.iter().map(Vec::len).sum::<usize>(), ops.len());
    assert_eq!(wave_of(0), 0);
    assert_eq!(wave_of(1), 0, "two creates that share only a user go together");
    assert!(wave_of(2) > wave_of(0), "a group's writes keep their order");
    assert!(wave_of(3) > wave_of(1), "a member add waits for the create of the group it names");
    assert_eq!(wave_of(4), 0);
    assert!(wave_of(5) > wave_of(4), "a group's scope change keeps its place after an add naming it");
    assert!(wave_of(7) > wave_of(6), "a create waits for the rename that frees its DN");
    assert!(wave_of(8) > wave_of(3), "c's writes keep their order");
    assert!(wave_of(9) > wave_of(8), "a delete waits for the removal that names the group");
    for wave in &waves {
        assert!(wave.windows(2).all(|w| w[0] < w[1]), "a wave keeps the plan's order: {waves:?}");
    }

    // Renames keep their order among themselves: a sAMAccountName one gives up may be the next one's. So do
    // scope changes, which AD checks against memberships that no operation names.
    let modify = |group: &str, attribute: &str| Op::Modify {
        group_id: group.into(),
        guid: format!("guid-{group}"),
        dn: format!("CN={group},{OU}"),
        changes: vec![AttributeChange::Replace(attribute.into(), vec!["x".into()])],
    };
    let ops = vec![
        modify("a", "sAMAccountName"),
        modify("b", "sAMAccountName"),
        modify("c", "groupType"),
        modify("d", "groupType"),
        modify("e", "description"),
    ];
    assert_eq!(apply::waves(&ops), vec![vec![0, 2, 4], vec![1, 3]]);
}

#[tokio::test]
async fn independent_groups_are_written_in_one_wave() {
    let config = tenant("");
    let store = Store::temporary().unwrap();
    let sync = sync_for(&config, &store, clock());
    merge_users(&sync.state, &[1, 2]);
    let groups: Vec<Value> = (10..30).map(|n| group(n, &format!("g{n}"), &[1, 2], &[])).collect();
    merge_groups(&sync.state, json!(groups));
    let mut directory = users(&[1, 2]);
    let report = reconcile(&sync, &mut directory, CycleOptions::default()).await;
    assert_eq!(report.status.writes, 20);
    assert_eq!(directory.waves, vec![20], "20 creates of unrelated groups go out together");
    let audit = sync.state.audit_log().unwrap();
    assert_eq!(audit.len(), 20, "each write is audited once");
    assert!(audit.iter().all(|r| r.outcome == "ok" && r.operation == "create"), "{audit:?}");
}
