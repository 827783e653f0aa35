//! The plan: a pure diff of the desired model against what the directory holds.
//!
//! Given the intents and a snapshot of the managed groups (found by anchor) and of the principals the
//! members name, it lists the smallest set of directory operations: creates, renames and moves, attribute
//! replacements, member value adds and deletes, and deletes. It talks to no server.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::dn;
use crate::model::{DesiredGroup, DesiredMember, GroupScope, Intent, SkippedMember};
use crate::reasons::SkipReason;

/// A managed group as read from the directory.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryGroup {
    pub guid: String,
    pub sid: Option<String>,
    pub dn: String,
    /// Attribute values by lower-case attribute name.
    pub attributes: HashMap<String, Vec<String>>,
    pub members: Vec<DirectoryMember>,
}

/// One value of a group's `member` attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryMember {
    pub dn: String,
    pub sid: Option<String>,
}

/// What a SID names in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub dn: String,
    /// `groupType` when the principal is a group.
    pub group_type: Option<i32>,
    /// Its `objectClass` values when it was looked up by SID; empty for a member already in its group.
    pub classes: Vec<String>,
}

impl Principal {
    /// The object class that keeps it out of a group, when its classes are known and include none of user
    /// (computers and managed service accounts derive from it), group or computer: a foreign security
    /// principal, say.
    pub fn wrong_class(&self) -> Option<&str> {
        let fits = |c: &String| ["user", "group", "computer"].iter().any(|k| c.eq_ignore_ascii_case(k));
        if self.classes.is_empty() || self.classes.iter().any(fits) {
            return None;
        }
        self.classes.last().map(String::as_str)
    }
}

/// What the directory holds that the plan depends on.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Managed groups by cloud id.
    pub managed: HashMap<String, DirectoryGroup>,
    /// Principals by upper-case SID.
    pub principals: HashMap<String, Principal>,
    /// The domain's SID, when the directory gave it: a member whose SID lies outside it is of another domain.
    pub domain_sid: Option<String>,
    /// Groups whose entry in `managed` is the AD group they were converted from, found by its SID and not
    /// anchored yet: this plan takes them over.
    pub takeovers: HashSet<String>,
    /// Groups taken over earlier: when their cloud group is deleted, the AD group is handed back (its anchor
    /// taken off), never deleted.
    pub taken_over: HashSet<String>,
}

/// A value to add to `member`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberValue {
    Dn(String),
    /// A group created earlier in the same apply, known by its cloud id.
    NewGroup(String),
}

/// A change to one attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeChange {
    Replace(String, Vec<String>),
    Clear(String),
}

/// One directory operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Create {
        group_id: String,
        dn: String,
        attributes: Vec<(String, Vec<String>)>,
    },
    Rename {
        group_id: String,
        guid: String,
        dn: String,
        new_cn: String,
        new_parent: Option<String>,
    },
    Modify {
        group_id: String,
        guid: String,
        dn: String,
        changes: Vec<AttributeChange>,
    },
    /// Stamps the anchor on the AD group a cloud group was converted from (it must not carry one yet), with
    /// the group's other attribute changes in the same write.
    TakeOver {
        group_id: String,
        guid: String,
        dn: String,
        sid: String,
        changes: Vec<AttributeChange>,
    },
    AddMembers {
        group_id: String,
        target: GroupRef,
        values: Vec<MemberValue>,
    },
    RemoveMembers {
        group_id: String,
        guid: String,
        dn: String,
        values: Vec<String>,
    },
    Delete {
        group_id: String,
        guid: String,
        dn: String,
    },
}

/// The group a member operation targets: an existing one, or one this apply creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRef {
    Existing { guid: String, dn: String },
    New,
}

impl Op {
    /// The cloud id of the group the operation is for.
    pub fn group_id(&self) -> &str {
        match self {
            Op::Create { group_id, .. }
            | Op::Rename { group_id, .. }
            | Op::Modify { group_id, .. }
            | Op::TakeOver { group_id, .. }
            | Op::AddMembers { group_id, .. }
            | Op::RemoveMembers { group_id, .. }
            | Op::Delete { group_id, .. } => group_id,
        }
    }
}

/// An operation as the audit log and `plan` show it: its name, the DN it targets, and what it changes.
pub fn describe(op: &Op) -> (&'static str, String, String) {
    let values = |values: &[String]| values.join("; ");
    let list = |changes: &[AttributeChange]| {
        let list: Vec<String> = changes
            .iter()
            .map(|c| match c {
                AttributeChange::Replace(name, v) => format!("{name}={}", values(v)),
                AttributeChange::Clear(name) => format!("{name} cleared"),
            })
            .collect();
        list.join(", ")
    };
    match op {
        Op::Create { dn, attributes, .. } => {
            let attrs: Vec<String> = attributes.iter().map(|(k, v)| format!("{k}={}", values(v))).collect();
            ("create", dn.clone(), attrs.join(", "))
        }
        Op::Rename { dn, new_cn, new_parent, .. } => {
            let target = match new_parent {
                Some(parent) => format!("to CN={} under {parent}", dn::escape_value(new_cn)),
                None => format!("to CN={}", dn::escape_value(new_cn)),
            };
            ("rename", dn.clone(), target)
        }
        Op::Modify { dn, changes, .. } => ("modify", dn.clone(), list(changes)),
        Op::TakeOver { dn, sid, changes, .. } => {
            ("take-over", dn.clone(), format!("objectSid {sid}: {}", list(changes)))
        }
        Op::AddMembers { target, values: adds, .. } => {
            let dn = match target {
                GroupRef::Existing { dn, .. } => dn.clone(),
                GroupRef::New => "(the group created above)".into(),
            };
            let list: Vec<String> = adds
                .iter()
                .map(|v| match v {
                    MemberValue::Dn(dn) => dn.clone(),
                    MemberValue::NewGroup(id) => format!("(new group {id})"),
                })
                .collect();
            ("add-members", dn, format!("+{}: {}", adds.len(), list.join("; ")))
        }
        Op::RemoveMembers { dn, values: removes, .. } => {
            ("remove-members", dn.clone(), format!("-{}: {}", removes.len(), values(removes)))
        }
        Op::Delete { dn, .. } => ("delete", dn.clone(), String::new()),
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (operation, dn, detail) = describe(self);
        if detail.is_empty() { write!(f, "{operation} {dn}") } else { write!(f, "{operation} {dn}: {detail}") }
    }
}

/// A delete that was not applied because the cycle had too many.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldDelete {
    pub group_id: String,
    pub dn: String,
}

/// The result of planning.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub skipped: Vec<SkippedMember>,
    pub held_deletes: Vec<HeldDelete>,
    /// Renames and moves not applied because the cycle had too many.
    pub held_renames: Vec<Op>,
    /// Groups whose deletes were applied or that need no directory object: their state can be purged.
    pub gone: Vec<String>,
    /// Groups with a nested member group that a later batch creates (see [`plan_batch`]).
    pub waiting: Vec<String>,
}

/// Plan options.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    pub delete_threshold: usize,
    pub allow_deletes: bool,
    /// More renames and moves than this are held (a new naming plugin version can move every group).
    pub rename_threshold: usize,
    pub allow_renames: bool,
    /// Deletes and renames already applied within the tenant's threshold window: they count too.
    pub recent_deletes: usize,
    pub recent_renames: usize,
}

/// Diffs one batch of intents against the snapshot, holding nothing back (see [`hold_over_thresholds`]). A nested member group that is
/// not in the directory yet but that `later` says a later batch plans is not skipped: its parent is listed
/// in [`Plan::waiting`], to be planned again once that batch has created it.
pub fn plan_batch(intents: &BTreeMap<String, Intent>, snapshot: &Snapshot, later: &dyn Fn(&str) -> bool) -> Plan {
    let creating: HashSet<&str> = intents
        .iter()
        .filter(|(id, intent)| matches!(intent, Intent::Write(_)) && !snapshot.managed.contains_key(*id))
        .map(|(id, _)| id.as_str())
        .collect();
    let scopes: HashMap<&str, GroupScope> = intents
        .iter()
        .filter_map(|(id, intent)| match intent {
            Intent::Write(desired) => Some((id.as_str(), scope_in_ad(desired, snapshot.managed.get(id)))),
            _ => None,
        })
        .collect();
    let nested = NestedGroups { creating: &creating, later, scopes: &scopes };
    let mut out = Plan::default();
    let mut creates = Vec::new();
    let mut updates = Vec::new();
    let mut member_ops = Vec::new();
    // A group changing scope loses the members its new scope refuses first, and gains those only it takes
    // after: AD checks each step against the members the group has then.
    let mut scope_changes = Vec::new();
    let mut deletes = Vec::new();
    for (id, intent) in intents {
        let existing = snapshot.managed.get(id);
        match (intent, existing) {
            (Intent::Write(desired), None) => {
                let diff = member_diff(desired, None, snapshot, &nested);
                out.skipped.extend(diff.skipped);
                if diff.waiting {
                    out.waiting.push(id.clone());
                }
                // Members that exist already go into the create itself: one write instead of two. Groups
                // created in this apply have no DN yet, so they are added once every create is done.
                let (inline, later) = split_inline(diff.adds);
                creates.push(create(desired, inline));
                if !later.is_empty() {
                    member_ops.push(Op::AddMembers { group_id: id.clone(), target: GroupRef::New, values: later });
                }
            }
            (Intent::Write(desired), Some(current)) => {
                let taking_over = snapshot.takeovers.contains(id);
                if taking_over {
                    // Its member changes are listed, for `plan`, but a sync applies them only once the take-over
                    // is recorded: the group is planned again then (see `member_change_of_takeover`).
                    updates.push(take_over(desired, current));
                } else {
                    updates.extend(rename(desired, current));
                    updates.extend(modify(desired, current));
                }
                let diff = member_diff(desired, Some(current), snapshot, &nested);
                out.skipped.extend(diff.skipped);
                if diff.waiting || taking_over {
                    out.waiting.push(id.clone());
                }
                let target = GroupRef::Existing { guid: current.guid.clone(), dn: current.dn.clone() };
                if !diff.adds.is_empty() {
                    member_ops.push(Op::AddMembers { group_id: id.clone(), target, values: diff.adds });
                }
                let removes = member_removals(desired, current, snapshot, &nested);
                let steps = scope_steps(desired, current);
                if !removes.is_empty() {
                    let op = Op::RemoveMembers {
                        group_id: id.clone(),
                        guid: current.guid.clone(),
                        dn: current.dn.clone(),
                        values: removes,
                    };
                    if steps.is_empty() { member_ops.push(op) } else { scope_changes.push(op) }
                }
                scope_changes.extend(steps);
            }
            (Intent::Delete, Some(current)) if snapshot.taken_over.contains(id) => {
                updates.push(release(id, current));
                out.gone.push(id.clone());
            }
            (Intent::Delete, Some(current)) => {
                deletes.push(Op::Delete { group_id: id.clone(), guid: current.guid.clone(), dn: current.dn.clone() });
            }
            (Intent::Delete, None) => out.gone.push(id.clone()),
            (Intent::Leave(_) | Intent::Refuse(_) | Intent::Exclude(_) | Intent::LeftOut(_), _) => {}
        }
    }
    out.ops = creates.into_iter().chain(updates).chain(scope_changes).chain(member_ops).chain(deletes).collect();
    out
}

/// Splits sorted `ids` into batches of `size` (at least one), each with the test [`plan_batch`] takes: whether
/// an id is planned by a later batch.
pub fn batches(ids: &[String], size: usize) -> impl Iterator<Item = (&[String], impl Fn(&str) -> bool + '_)> {
    let size = size.max(1);
    ids.chunks(size).enumerate().map(move |(n, batch)| {
        let rest = &ids[((n + 1) * size).min(ids.len())..];
        (batch, move |id: &str| rest.binary_search_by(|x| x.as_str().cmp(id)).is_ok())
    })
}

/// Moves the plan's deletes to [`Plan::held_deletes`] when they and the deletes already applied in the
/// window are more than the delete threshold, and its renames and moves to [`Plan::held_renames`] likewise,
/// unless allowed.
pub fn hold_over_thresholds(plan: &mut Plan, options: PlanOptions) {
    let is_delete = |op: &Op| matches!(op, Op::Delete { .. });
    let deletes = plan.ops.iter().filter(|op| is_delete(op)).count();
    if deletes > 0 && options.recent_deletes + deletes > options.delete_threshold && !options.allow_deletes {
        let (held, kept): (Vec<Op>, Vec<Op>) = std::mem::take(&mut plan.ops).into_iter().partition(is_delete);
        plan.ops = kept;
        plan.held_deletes.extend(held.into_iter().filter_map(|op| match op {
            Op::Delete { group_id, dn, .. } => Some(HeldDelete { group_id, dn }),
            _ => None,
        }));
    }
    let renames = plan.ops.iter().filter(|op| is_rename(op)).count();
    if renames > 0 && options.recent_renames + renames > options.rename_threshold && !options.allow_renames {
        let (held, kept): (Vec<Op>, Vec<Op>) = std::mem::take(&mut plan.ops).into_iter().partition(is_rename);
        plan.ops = kept;
        plan.held_renames.extend(held);
    }
}

/// Takes the member adds at the given op indices out of the plan, reporting each value as a skipped member
/// with the given reason.
pub fn withhold_adds(plan: &mut Plan, withheld: &[(usize, SkipReason)]) {
    for (index, reason) in withheld.iter().rev() {
        if let Op::AddMembers { group_id, values, .. } = plan.ops.remove(*index) {
            for value in values {
                let member_id = match value {
                    MemberValue::Dn(dn) => dn,
                    MemberValue::NewGroup(id) => id,
                };
                plan.skipped.push(SkippedMember { group_id: group_id.clone(), member_id, reason: reason.clone() });
            }
        }
    }
}

/// At most this many members are written inside a create; the rest follow as member adds, in chunks.
pub const INLINE_MEMBERS: usize = 500;

/// Splits a new group's member adds into the DNs its create can carry and the adds that must follow it.
fn split_inline(adds: Vec<MemberValue>) -> (Vec<String>, Vec<MemberValue>) {
    let mut inline = Vec::new();
    let mut later = Vec::new();
    for value in adds {
        match value {
            MemberValue::Dn(dn) if inline.len() < INLINE_MEMBERS => inline.push(dn),
            other => later.push(other),
        }
    }
    (inline, later)
}

fn create(desired: &DesiredGroup, members: Vec<String>) -> Op {
    let mut attributes = vec![("objectClass".to_string(), vec!["group".to_string()])];
    attributes.extend(desired.attributes.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.clone(), v.clone())));
    if !members.is_empty() {
        attributes.push(("member".to_string(), members));
    }
    Op::Create { group_id: desired.id.clone(), dn: dn::child(&desired.cn, &desired.parent_dn), attributes }
}

/// The write that takes over the AD group `desired` was converted from: its anchor and the other attributes the
/// group's [`modify`] would write, in one modify.
fn take_over(desired: &DesiredGroup, current: &DirectoryGroup) -> Op {
    let changes = modify(desired, current)
        .into_iter()
        .flat_map(|op| match op {
            Op::Modify { changes, .. } => changes,
            _ => Vec::new(),
        })
        .collect();
    Op::TakeOver {
        group_id: desired.id.clone(),
        guid: current.guid.clone(),
        dn: current.dn.clone(),
        sid: current.sid.clone().unwrap_or_default(),
        changes,
    }
}

/// The write that hands a group taken over back to AD when its cloud group is deleted: its anchors come off, and
/// its SID, name and members stay. Deleting it would take away the SID that ACLs everywhere name.
fn release(id: &str, current: &DirectoryGroup) -> Op {
    let anchors = ["adminDescription", "msDS-ExternalDirectoryObjectId"];
    let changes = anchors
        .iter()
        .filter(|name| current.attributes.get(&name.to_lowercase()).is_some_and(|v| !v.is_empty()))
        .map(|name| AttributeChange::Clear(name.to_string()))
        .collect();
    Op::Modify { group_id: id.to_string(), guid: current.guid.clone(), dn: current.dn.clone(), changes }
}

/// Whether `current` is the AD group `desired` was converted from: it keeps the name, place and scope AD gave
/// it, which the cloud never knew.
fn keeps_its_name(desired: &DesiredGroup, current: &DirectoryGroup) -> bool {
    desired.converted_from(current.sid.as_deref())
}

fn rename(desired: &DesiredGroup, current: &DirectoryGroup) -> Option<Op> {
    if keeps_its_name(desired, current) {
        return None;
    }
    let current_cn = dn::leaf_value(&current.dn).unwrap_or_default();
    let current_parent = dn::parent(&current.dn).unwrap_or_default();
    // A case-only change is still a rename: AD keeps the CN's case as given.
    let new_cn = current_cn != desired.cn;
    let moved = !dn::same(&current_parent, &desired.parent_dn);
    (new_cn || moved).then(|| Op::Rename {
        group_id: desired.id.clone(),
        guid: current.guid.clone(),
        dn: current.dn.clone(),
        new_cn: desired.cn.clone(),
        new_parent: moved.then(|| desired.parent_dn.clone()),
    })
}

/// The scope an existing group has, from its groupType.
fn current_scope(current: &DirectoryGroup) -> Option<GroupScope> {
    current.attributes.get("grouptype")?.first()?.parse().ok().and_then(GroupScope::of)
}

/// A change of an existing group's scope, as the groupType modifies AD accepts: global and domain-local groups
/// convert only through universal, one step each. Empty when the scope stays.
fn scope_steps(desired: &DesiredGroup, current: &DirectoryGroup) -> Vec<Op> {
    if keeps_its_name(desired, current) {
        return Vec::new();
    }
    let Some(from) = current_scope(current).filter(|from| *from != desired.scope) else { return Vec::new() };
    let path = match (from, desired.scope) {
        (GroupScope::Global, GroupScope::DomainLocal) | (GroupScope::DomainLocal, GroupScope::Global) => {
            vec![GroupScope::Universal, desired.scope]
        }
        _ => vec![desired.scope],
    };
    path.into_iter()
        .map(|scope| Op::Modify {
            group_id: desired.id.clone(),
            guid: current.guid.clone(),
            dn: current.dn.clone(),
            changes: vec![AttributeChange::Replace(
                "groupType".into(),
                vec![desired.kind.group_type(scope).to_string()],
            )],
        })
        .collect()
}

/// The attribute modify, and a sAMAccountName change as an op of its own: it renames the group for every
/// script and ACL tool that names it, so it counts and is held as a rename (see [`is_rename`]). A new scope is
/// left to [`scope_steps`]. A group taken over keeps its sAMAccountName and groupType.
fn modify(desired: &DesiredGroup, current: &DirectoryGroup) -> Vec<Op> {
    let scope_changes = current_scope(current).is_some_and(|from| from != desired.scope);
    let kept = keeps_its_name(desired, current);
    let mut changes = Vec::new();
    for (name, want) in &desired.attributes {
        let group_type = name.eq_ignore_ascii_case("groupType");
        if (scope_changes && group_type) || (kept && (group_type || name.eq_ignore_ascii_case("sAMAccountName"))) {
            continue;
        }
        let have = current.attributes.get(&name.to_lowercase()).map(Vec::as_slice).unwrap_or_default();
        if same_values(name, want, have) {
            continue;
        }
        changes.push(if want.is_empty() {
            AttributeChange::Clear(name.clone())
        } else {
            AttributeChange::Replace(name.clone(), want.clone())
        });
    }
    let (sam, others): (Vec<AttributeChange>, Vec<AttributeChange>) = changes.into_iter().partition(changes_sam);
    [others, sam]
        .into_iter()
        .filter(|changes| !changes.is_empty())
        .map(|changes| Op::Modify {
            group_id: desired.id.clone(),
            guid: current.guid.clone(),
            dn: current.dn.clone(),
            changes,
        })
        .collect()
}

fn changes_sam(change: &AttributeChange) -> bool {
    let (AttributeChange::Replace(name, _) | AttributeChange::Clear(name)) = change;
    name.eq_ignore_ascii_case("sAMAccountName")
}

/// Whether `op` renames a group: a new CN or OU, or a new sAMAccountName. Renames wait for the end of the
/// cycle and count against `rename_threshold`.
pub fn is_rename(op: &Op) -> bool {
    match op {
        Op::Rename { .. } => true,
        Op::Modify { changes, .. } => changes.iter().any(changes_sam),
        _ => false,
    }
}

/// How many member values the plan removes.
pub fn member_removals_in(plan: &Plan) -> usize {
    plan.ops.iter().map(|op| if let Op::RemoveMembers { values, .. } = op { values.len() } else { 0 }).sum()
}

/// Multi-valued attributes compare as sets; single values exactly, except the sAMAccountName that AD
/// compares without case.
fn same_values(name: &str, want: &[String], have: &[String]) -> bool {
    if name.eq_ignore_ascii_case("sAMAccountName") {
        return want.len() == have.len() && want.iter().zip(have).all(|(a, b)| a.eq_ignore_ascii_case(b));
    }
    let want: HashSet<&String> = want.iter().collect();
    let have: HashSet<&String> = have.iter().collect();
    want == have
}

/// The SID a desired member has in the directory, if it exists there. A converted group not found by its
/// anchor (its take-over is refused or waits) is still the AD group it was converted from.
fn member_sid<'a>(member: &'a DesiredMember, snapshot: &'a Snapshot) -> Option<String> {
    match member {
        DesiredMember::Sid { sid, .. } => Some(sid.to_uppercase()),
        DesiredMember::CloudGroup { member_id, converted_from } => match snapshot.managed.get(member_id) {
            Some(group) => group.sid.as_ref().map(|s| s.to_uppercase()),
            None => converted_from.as_ref().map(|s| s.to_uppercase()),
        },
    }
}

/// Whether `op` is a member change of a group this plan takes over: a sync applies those only once the take-over
/// is recorded, when the group is planned again.
pub fn member_change_of_takeover(op: &Op, snapshot: &Snapshot) -> bool {
    matches!(op, Op::AddMembers { .. } | Op::RemoveMembers { .. }) && snapshot.takeovers.contains(op.group_id())
}

/// Where nested member groups that are not in the directory yet will come from.
struct NestedGroups<'a> {
    /// Created by this plan.
    creating: &'a HashSet<&'a str>,
    /// Planned by a later batch of the same reconcile.
    later: &'a dyn Fn(&str) -> bool,
    /// The scope each group of this batch is planned with.
    scopes: &'a HashMap<&'a str, GroupScope>,
}

impl NestedGroups<'_> {
    /// The scopes of the nested cloud group `id`: the one it has in AD now, and the one it is planned with when
    /// this batch plans it. A group taken over (converted from the AD group with SID `converted_from`) keeps the
    /// one AD gave it.
    fn scope(&self, id: &str, in_ad: Option<&DirectoryGroup>, converted_from: Option<&str>) -> ChildScope {
        let now = in_ad.and_then(current_scope);
        let kept =
            in_ad.is_some_and(|g| converted_from.zip(g.sid.as_deref()).is_some_and(|(a, b)| a.eq_ignore_ascii_case(b)));
        if kept {
            return ChildScope { now, planned: now };
        }
        ChildScope { now, planned: self.scopes.get(id).copied() }
    }
}

/// A nested group's scope in AD now and once planned (`None`: not in AD yet, or not planned in this batch).
#[derive(Debug, Clone, Copy)]
struct ChildScope {
    now: Option<GroupScope>,
    planned: Option<GroupScope>,
}

impl ChildScope {
    /// Why a group of scope `parent` may not take it: by the scope it is planned with, or by the one it has while
    /// its conversion waits (AD checks the scope it has when the member is added).
    fn refusal(self, parent: GroupScope) -> Option<SkipReason> {
        scope_refusal(parent, self.planned).or_else(|| scope_refusal(parent, self.now))
    }

    /// Whether a group of scope `parent` already holding it must let it go: only when its scope is final (planned
    /// and reached) and refused. While its conversion waits, it may come to fit, or be held for being in the
    /// parent; removing it then would only add it back later.
    fn must_leave(self, parent: GroupScope) -> bool {
        self.planned.is_some() && self.now == self.planned && scope_refusal(parent, self.planned).is_some()
    }
}

/// A group's member adds, the members that cannot be written, and whether a member waits for a later batch.
struct MemberDiff {
    adds: Vec<MemberValue>,
    skipped: Vec<SkippedMember>,
    waiting: bool,
}

/// Member values to add, and the members that cannot be written.
fn member_diff(
    desired: &DesiredGroup,
    current: Option<&DirectoryGroup>,
    snapshot: &Snapshot,
    nested: &NestedGroups,
) -> MemberDiff {
    let present: HashSet<String> = current
        .map(|c| c.members.iter().filter_map(|m| m.sid.as_ref().map(|s| s.to_uppercase())).collect())
        .unwrap_or_default();
    let mut diff = MemberDiff { adds: Vec::new(), skipped: Vec::new(), waiting: false };
    let skip = |member_id: &str, reason: SkipReason| SkippedMember {
        group_id: desired.id.clone(),
        member_id: member_id.to_string(),
        reason,
    };
    let scope = scope_in_ad(desired, current);
    for member in &desired.members {
        match member {
            DesiredMember::Sid { member_id, sid } => match snapshot.principals.get(&sid.to_uppercase()) {
                None => diff.skipped.push(skip(member_id, SkipReason::UnresolvedSid { sid: sid.clone() })),
                Some(p) => match refusal(scope, sid, p, snapshot.domain_sid.as_deref()) {
                    Some(reason) => diff.skipped.push(skip(member_id, reason)),
                    None if present.contains(&sid.to_uppercase()) => {}
                    None => diff.adds.push(MemberValue::Dn(p.dn.clone())),
                },
            },
            DesiredMember::CloudGroup { member_id, converted_from } => match snapshot.managed.get(member_id) {
                // Nested only once it is taken over: the take-over may still fail.
                Some(_) if snapshot.takeovers.contains(member_id) => diff.waiting = true,
                Some(g) => match nested.scope(member_id, Some(g), converted_from.as_deref()).refusal(scope) {
                    Some(reason) => diff.skipped.push(skip(member_id, reason)),
                    None if g.sid.as_ref().is_some_and(|s| present.contains(&s.to_uppercase())) => {}
                    None => diff.adds.push(MemberValue::Dn(g.dn.clone())),
                },
                None if nested.creating.contains(member_id.as_str()) => {
                    match nested.scope(member_id, None, None).refusal(scope) {
                        Some(reason) => diff.skipped.push(skip(member_id, reason)),
                        None => diff.adds.push(MemberValue::NewGroup(member_id.clone())),
                    }
                }
                None if (nested.later)(member_id) => diff.waiting = true,
                None => diff.skipped.push(skip(member_id, SkipReason::NestedGroupNotInDirectory)),
            },
        }
    }
    diff
}

/// Why AD refuses the principal with SID `sid` as a member of a group of scope `parent`, in AD's own words.
/// Samba does not enforce these rules, so the agent does. A universal group holds no domain-local group; a
/// global group holds only users, computers and global groups of its own domain; a domain-local group holds
/// anything, foreign security principals too, except domain-local groups of other domains.
fn refusal(parent: GroupScope, sid: &str, principal: &Principal, domain_sid: Option<&str>) -> Option<SkipReason> {
    // A member already in its group comes without its classes; its container still tells.
    let foreign_principal = principal.classes.iter().any(|c| c.eq_ignore_ascii_case("foreignSecurityPrincipal"))
        || dn::parent(&principal.dn)
            .and_then(|parent| dn::leaf_value(&parent))
            .is_some_and(|container| container.eq_ignore_ascii_case("ForeignSecurityPrincipals"));
    let wrong_class = match foreign_principal {
        true if parent == GroupScope::DomainLocal => None,
        true => Some("foreignSecurityPrincipal"),
        false => principal.wrong_class(),
    };
    if let Some(class) = wrong_class {
        return Some(SkipReason::WrongClass { sid: sid.to_string(), class: class.to_string() });
    }
    let other_domain = foreign_principal || domain_sid.is_some_and(|domain| !in_domain(sid, domain));
    let child = principal.group_type.and_then(GroupScope::of);
    if let Some(reason) = scope_refusal(parent, child) {
        return Some(reason);
    }
    match (parent, child) {
        (GroupScope::Global, _) if other_domain => Some(SkipReason::GlobalCantHaveCrossDomain),
        (GroupScope::DomainLocal, Some(GroupScope::DomainLocal)) if other_domain => {
            Some(SkipReason::LocalCantHaveCrossDomainLocal)
        }
        _ => None,
    }
}

/// Why AD refuses a group of scope `child` of the same domain in a group of scope `parent`.
fn scope_refusal(parent: GroupScope, child: Option<GroupScope>) -> Option<SkipReason> {
    match (parent, child?) {
        (GroupScope::Universal, GroupScope::DomainLocal) => Some(SkipReason::DomainLocalGroup),
        (GroupScope::Global, GroupScope::DomainLocal) => Some(SkipReason::GlobalCantHaveLocal),
        (GroupScope::Global, GroupScope::Universal) => Some(SkipReason::GlobalCantHaveUniversal),
        _ => None,
    }
}

/// The scope `desired` has in AD once planned: its own, or, for a group taken over, the one AD gave it.
fn scope_in_ad(desired: &DesiredGroup, current: Option<&DirectoryGroup>) -> GroupScope {
    current.filter(|c| keeps_its_name(desired, c)).and_then(current_scope).unwrap_or(desired.scope)
}

/// Whether `sid` is an account SID of the domain with SID `domain`.
fn in_domain(sid: &str, domain: &str) -> bool {
    sid.rsplit_once('-').is_some_and(|(prefix, _)| prefix.eq_ignore_ascii_case(domain))
}

/// Current member values that the desired model does not list (including refused and unknown ones). A nested
/// cloud group is removed for its scope only when that scope is final: one about to convert may fit again
/// (AD then refuses the conversion while it does not, and the conversion is retried).
fn member_removals(
    desired: &DesiredGroup,
    current: &DirectoryGroup,
    snapshot: &Snapshot,
    nested: &NestedGroups,
) -> Vec<String> {
    let scope = scope_in_ad(desired, Some(current));
    let keep: HashSet<String> = desired
        .members
        .iter()
        .filter(|m| match m {
            DesiredMember::Sid { sid, .. } => snapshot
                .principals
                .get(&sid.to_uppercase())
                .is_some_and(|p| refusal(scope, sid, p, snapshot.domain_sid.as_deref()).is_none()),
            DesiredMember::CloudGroup { member_id, converted_from } => match snapshot.managed.get(member_id) {
                Some(g) => !nested.scope(member_id, Some(g), converted_from.as_deref()).must_leave(scope),
                None => converted_from.is_some(),
            },
        })
        .filter_map(|m| member_sid(m, snapshot))
        .collect();
    current
        .members
        .iter()
        .filter(|m| !m.sid.as_ref().is_some_and(|s| keep.contains(&s.to_uppercase())))
        .map(|m| m.dn.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GroupKind;

    const OU: &str = "OU=Writeback,DC=corp,DC=test";

    fn refused(cause: &str) -> crate::reasons::HeldReason {
        crate::reasons::HeldReason::Refused { cause: cause.into() }
    }

    #[test]
    fn each_scope_refuses_what_windows_ad_refuses() {
        use GroupScope::{DomainLocal, Global, Universal};
        let domain = Some("S-1-5-21-1-2-3");
        let group = |group_type: i32| Principal { dn: "CN=g".into(), group_type: Some(group_type), classes: vec![] };
        let user = Principal { dn: "CN=u".into(), group_type: None, classes: vec!["user".into()] };
        let fsp = Principal { dn: "CN=f".into(), group_type: None, classes: vec!["foreignSecurityPrincipal".into()] };
        let (ours, theirs) = ("S-1-5-21-1-2-3-1105", "S-1-5-21-9-9-9-1105");
        let (global, universal, local) = (group(-2147483646), group(-2147483640), group(-2147483644));
        let check = |parent, sid, p: &Principal| refusal(parent, sid, p, domain);
        assert_eq!(check(Universal, ours, &local), Some(SkipReason::DomainLocalGroup));
        assert_eq!(check(Universal, theirs, &user), None, "a universal group takes members of any domain");
        assert_eq!(check(Global, ours, &universal), Some(SkipReason::GlobalCantHaveUniversal));
        assert_eq!(check(Global, ours, &local), Some(SkipReason::GlobalCantHaveLocal));
        assert_eq!(check(Global, theirs, &user), Some(SkipReason::GlobalCantHaveCrossDomain));
        assert_eq!(check(Global, theirs, &global), Some(SkipReason::GlobalCantHaveCrossDomain));
        assert_eq!((check(Global, ours, &global), check(Global, ours, &user)), (None, None));
        assert_eq!(check(DomainLocal, theirs, &local), Some(SkipReason::LocalCantHaveCrossDomainLocal));
        assert_eq!(check(DomainLocal, ours, &local), None);
        assert_eq!(
            check(DomainLocal, "S-1-5-21-7-7-7-500", &fsp),
            None,
            "a domain-local group takes trusted principals"
        );
        assert!(matches!(check(Universal, "S-1-5-21-7-7-7-500", &fsp), Some(SkipReason::WrongClass { .. })));
        assert!(matches!(check(Global, "S-1-5-21-7-7-7-500", &fsp), Some(SkipReason::WrongClass { .. })));
        assert_eq!(refusal(Global, theirs, &user, None), None, "without the domain's SID, no cross-domain check");
        // A foreign principal already in a group has no classes read, but its container tells.
        let present = Principal {
            dn: "CN=S-1-5-21-7-7-7-500,CN=ForeignSecurityPrincipals,DC=corp,DC=test".into(),
            group_type: None,
            classes: vec![],
        };
        assert!(matches!(
            refusal(Universal, "S-1-5-21-7-7-7-500", &present, None),
            Some(SkipReason::WrongClass { .. })
        ));
        assert_eq!(refusal(DomainLocal, "S-1-5-21-7-7-7-500", &present, None), None);
    }

    fn desired(id: &str, cn: &str, members: Vec<DesiredMember>) -> DesiredGroup {
        let mut attributes = BTreeMap::new();
        attributes.insert("displayName".to_string(), vec![cn.to_string()]);
        attributes.insert("description".to_string(), vec![]);
        DesiredGroup {
            id: id.into(),
            cn: cn.into(),
            parent_dn: OU.into(),
            kind: GroupKind::Security,
            scope: GroupScope::Universal,
            attributes,
            members,
            converted_from: None,
        }
    }

    fn existing(id: &str, cn: &str, members: &[(&str, &str)]) -> DirectoryGroup {
        let mut attributes = HashMap::new();
        attributes.insert("displayname".to_string(), vec![cn.to_string()]);
        DirectoryGroup {
            guid: format!("guid-{id}"),
            sid: Some(format!("S-1-5-21-9-{id}")),
            dn: dn::child(cn, OU),
            attributes,
            members: members
                .iter()
                .map(|(dn, sid)| DirectoryMember { dn: dn.to_string(), sid: Some(sid.to_string()) })
                .collect(),
        }
    }

    fn user(sid: &str) -> DesiredMember {
        DesiredMember::Sid { member_id: format!("u-{sid}"), sid: sid.into() }
    }

    fn snapshot_with_users(sids: &[&str]) -> Snapshot {
        let mut s = Snapshot::default();
        for sid in sids {
            s.principals.insert(
                sid.to_string(),
                Principal { dn: format!("CN={sid},CN=Users,DC=corp"), group_type: None, classes: vec!["user".into()] },
            );
        }
        s
    }

    /// One batch planned alone, with its thresholds applied, as a reconcile of a single batch does.
    fn plan(intents: &BTreeMap<String, Intent>, snapshot: &Snapshot, options: PlanOptions) -> Plan {
        let mut out = plan_batch(intents, snapshot, &|_| false);
        hold_over_thresholds(&mut out, options);
        out
    }

    const OPTS: PlanOptions = PlanOptions {
        delete_threshold: 10,
        allow_deletes: false,
        rename_threshold: 10,
        allow_renames: false,
        recent_deletes: 0,
        recent_renames: 0,
    };

    fn intents(list: Vec<(&str, Intent)>) -> BTreeMap<String, Intent> {
        list.into_iter().map(|(id, i)| (id.to_string(), i)).collect()
    }

    #[test]
    fn a_new_group_is_created_with_its_members_in_one_write() {
        let snap = snapshot_with_users(&["S-1"]);
        let plan = plan(&intents(vec![("g", Intent::Write(desired("g", "G", vec![user("S-1")])))]), &snap, OPTS);
        assert_eq!(plan.ops.len(), 1, "{:?}", plan.ops);
        let Op::Create { dn, attributes, .. } = &plan.ops[0] else { panic!("create first") };
        assert_eq!(dn, &format!("CN=G,{OU}"));
        assert!(attributes.iter().all(|(k, v)| k != "description" && !v.is_empty()), "empty attributes are not sent");
        assert!(
            attributes.contains(&("member".to_string(), vec!["CN=S-1,CN=Users,DC=corp".to_string()])),
            "{attributes:?}"
        );
    }

    #[test]
    fn a_new_group_with_more_members_than_a_create_carries_gets_the_rest_as_adds() {
        let sids: Vec<String> = (0..INLINE_MEMBERS + 3).map(|i| format!("S-{i}")).collect();
        let snap = snapshot_with_users(&sids.iter().map(String::as_str).collect::<Vec<_>>());
        let want = desired("g", "G", sids.iter().map(|s| user(s)).collect());
        let plan = plan(&intents(vec![("g", Intent::Write(want))]), &snap, OPTS);
        let Op::Create { attributes, .. } = &plan.ops[0] else { panic!("create first") };
        let inline = attributes.iter().find(|(k, _)| k == "member").map(|(_, v)| v.len());
        assert_eq!(inline, Some(INLINE_MEMBERS));
        let Op::AddMembers { target: GroupRef::New, values, .. } = &plan.ops[1] else {
            panic!("then adds: {:?}", plan.ops[1])
        };
        assert_eq!(values.len(), 3);
    }

    #[test]
    fn an_unchanged_group_plans_nothing() {
        let snap = {
            let mut s = snapshot_with_users(&["S-1"]);
            s.managed.insert("g".into(), existing("g", "G", &[("CN=S-1,CN=Users,DC=corp", "s-1")]));
            s
        };
        let plan = plan(&intents(vec![("g", Intent::Write(desired("g", "G", vec![user("S-1")])))]), &snap, OPTS);
        assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    }

    #[test]
    fn one_membership_change_is_one_value() {
        let mut snap = snapshot_with_users(&["S-1", "S-2", "S-3"]);
        snap.managed.insert(
            "g".into(),
            existing("g", "G", &[("CN=S-1,CN=Users,DC=corp", "S-1"), ("CN=S-2,CN=Users,DC=corp", "S-2")]),
        );
        let want = desired("g", "G", vec![user("S-1"), user("S-3")]);
        let plan = plan(&intents(vec![("g", Intent::Write(want))]), &snap, OPTS);
        assert_eq!(plan.ops.len(), 2);
        assert!(
            matches!(&plan.ops[0], Op::AddMembers { values, .. } if values == &[MemberValue::Dn("CN=S-3,CN=Users,DC=corp".into())])
        );
        assert!(
            matches!(&plan.ops[1], Op::RemoveMembers { values, .. } if values == &["CN=S-2,CN=Users,DC=corp".to_string()])
        );
    }

    #[test]
    fn rename_move_and_attribute_drift_are_repaired() {
        let mut snap = Snapshot::default();
        let mut current = existing("g", "Old", &[]);
        current.dn = "CN=Old,OU=Elsewhere,DC=corp,DC=test".into();
        current.attributes.insert("description".into(), vec!["edited on-prem".into()]);
        snap.managed.insert("g".into(), current);
        let plan = plan(&intents(vec![("g", Intent::Write(desired("g", "New", vec![])))]), &snap, OPTS);
        let Op::Rename { new_cn, new_parent, .. } = &plan.ops[0] else { panic!("rename first: {:?}", plan.ops) };
        assert_eq!((new_cn.as_str(), new_parent.as_deref()), ("New", Some(OU)));
        let Op::Modify { changes, .. } = &plan.ops[1] else { panic!("then modify") };
        assert!(changes.contains(&AttributeChange::Replace("displayName".into(), vec!["New".into()])));
        assert!(changes.contains(&AttributeChange::Clear("description".into())));
    }

    #[test]
    fn domain_local_and_unresolved_members_are_refused_and_removed() {
        let mut snap = snapshot_with_users(&["S-1"]);
        snap.principals.insert(
            "S-LOCAL".into(),
            Principal { dn: "CN=L,DC=corp".into(), group_type: Some(-2147483644), classes: Vec::new() },
        );
        snap.managed.insert("g".into(), existing("g", "G", &[("CN=L,DC=corp", "S-LOCAL")]));
        let want = desired("g", "G", vec![user("S-1"), user("S-LOCAL"), user("S-GONE")]);
        let plan = plan(&intents(vec![("g", Intent::Write(want))]), &snap, OPTS);
        let reasons: Vec<_> = plan.skipped.iter().map(|s| s.reason.to_string()).collect();
        assert_eq!(
            reasons,
            ["A universal group cannot have a local group as a member", "SID S-GONE names no object in the domain"]
        );
        assert!(
            plan.ops
                .iter()
                .any(|op| matches!(op, Op::RemoveMembers { values, .. } if values == &["CN=L,DC=corp".to_string()]))
        );
        assert!(plan.ops.iter().any(|op| matches!(op, Op::AddMembers { .. })));
    }

    #[test]
    fn nested_groups_resolve_in_any_order() {
        let snap = Snapshot::default();
        let parent = desired("a", "A", vec![DesiredMember::CloudGroup { member_id: "b".into(), converted_from: None }]);
        let child = desired("b", "B", vec![]);
        let plan = plan(&intents(vec![("a", Intent::Write(parent)), ("b", Intent::Write(child))]), &snap, OPTS);
        assert!(matches!(plan.ops[0], Op::Create { .. }) && matches!(plan.ops[1], Op::Create { .. }));
        assert_eq!(
            plan.ops[2],
            Op::AddMembers {
                group_id: "a".into(),
                target: GroupRef::New,
                values: vec![MemberValue::NewGroup("b".into())]
            }
        );
    }

    #[test]
    fn a_nested_group_that_a_later_batch_creates_makes_its_parent_wait() {
        let parent = || {
            intents(vec![(
                "a",
                Intent::Write(desired(
                    "a",
                    "A",
                    vec![DesiredMember::CloudGroup { member_id: "z".into(), converted_from: None }],
                )),
            )])
        };
        let batch = plan_batch(&parent(), &Snapshot::default(), &|id| id == "z");
        assert_eq!(batch.waiting, ["a"]);
        assert!(batch.skipped.is_empty(), "{:?}", batch.skipped);
        assert!(matches!(batch.ops[..], [Op::Create { .. }]), "{:?}", batch.ops);
        let alone = plan_batch(&parent(), &Snapshot::default(), &|_| false);
        assert!(alone.waiting.is_empty());
        assert_eq!(alone.skipped.len(), 1, "a nested group no batch plans is skipped");
    }

    #[test]
    fn a_batch_knows_which_ids_later_batches_plan() {
        let ids: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let seen: Vec<(Vec<String>, Vec<bool>)> =
            batches(&ids, 2).map(|(batch, later)| (batch.to_vec(), ids.iter().map(|id| later(id)).collect())).collect();
        assert_eq!(seen[0], (vec!["a".into(), "b".into()], vec![false, false, true, true, true]));
        assert_eq!(seen[2], (vec!["e".into()], vec![false; 5]));
        assert_eq!(batches(&ids, 0).count(), 5, "a size of 0 plans one group at a time");
    }

    #[test]
    fn too_many_deletes_are_held_and_others_still_apply() {
        let mut snap = Snapshot::default();
        let mut list = vec![];
        for i in 0..3 {
            let id = format!("d{i}");
            snap.managed.insert(id.clone(), existing(&id, &id, &[]));
            list.push((id, Intent::Delete));
        }
        list.push(("new".to_string(), Intent::Write(desired("new", "N", vec![]))));
        let intents: BTreeMap<_, _> = list.into_iter().collect();
        let strict = PlanOptions { delete_threshold: 2, ..OPTS };
        let held = plan(&intents, &snap, strict);
        assert_eq!(held.held_deletes.len(), 3);
        assert!(held.ops.iter().all(|op| !matches!(op, Op::Delete { .. })));
        assert!(held.ops.iter().any(|op| matches!(op, Op::Create { .. })));
        let allowed = plan(&intents, &snap, PlanOptions { allow_deletes: true, ..strict });
        assert_eq!(allowed.ops.iter().filter(|op| matches!(op, Op::Delete { .. })).count(), 3);
    }

    #[test]
    fn too_many_renames_are_held_and_attribute_changes_still_apply() {
        let mut snap = Snapshot::default();
        let mut list = vec![];
        for i in 0..3 {
            let id = format!("r{i}");
            snap.managed.insert(id.clone(), existing(&id, &format!("Old {i}"), &[]));
            list.push((id.clone(), Intent::Write(desired(&id, &format!("New {i}"), vec![]))));
        }
        let intents: BTreeMap<_, _> = list.into_iter().collect();
        let strict = PlanOptions { rename_threshold: 2, ..OPTS };
        let held = plan(&intents, &snap, strict);
        assert_eq!(held.held_renames.len(), 3);
        assert!(held.ops.iter().all(|op| matches!(op, Op::Modify { .. })), "{:?}", held.ops);
        let allowed = plan(&intents, &snap, PlanOptions { allow_renames: true, ..strict });
        assert_eq!(allowed.ops.iter().filter(|op| matches!(op, Op::Rename { .. })).count(), 3);
    }

    #[test]
    fn deletes_and_renames_already_applied_in_the_window_count_too() {
        let mut snap = Snapshot::default();
        snap.managed.insert("d".into(), existing("d", "d", &[]));
        snap.managed.insert("r".into(), existing("r", "Old", &[]));
        let intents = intents(vec![("d", Intent::Delete), ("r", Intent::Write(desired("r", "New", vec![])))]);
        // One each is under the threshold of 2, but not on top of two applied earlier in the window.
        let fresh = plan(&intents, &snap, PlanOptions { delete_threshold: 2, rename_threshold: 2, ..OPTS });
        assert!(fresh.held_deletes.is_empty() && fresh.held_renames.is_empty());
        let later = plan(
            &intents,
            &snap,
            PlanOptions { delete_threshold: 2, rename_threshold: 2, recent_deletes: 2, recent_renames: 2, ..OPTS },
        );
        assert_eq!((later.held_deletes.len(), later.held_renames.len()), (1, 1));
        // A window that is full already holds nothing when there is nothing to hold.
        let quiet = plan(&BTreeMap::new(), &snap, PlanOptions { delete_threshold: 2, recent_deletes: 9, ..OPTS });
        assert!(quiet.held_deletes.is_empty());
    }

    #[test]
    fn a_new_sam_account_name_is_a_rename_of_its_own() {
        let mut snap = Snapshot::default();
        let mut current = existing("g", "G", &[]);
        current.attributes.insert("samaccountname".into(), vec!["G_old".into()]);
        snap.managed.insert("g".into(), current);
        let mut want = desired("g", "G", vec![]);
        want.attributes.insert("displayName".into(), vec!["G renamed".into()]);
        want.attributes.insert("sAMAccountName".into(), vec!["G_new".into()]);
        let strict = PlanOptions { rename_threshold: 0, ..OPTS };
        let held = plan(&intents(vec![("g", Intent::Write(want.clone()))]), &snap, strict);
        // The display name still changes; the new sAMAccountName waits as a rename.
        assert_eq!(held.held_renames.len(), 1, "{held:?}");
        assert!(is_rename(&held.held_renames[0]));
        assert!(
            matches!(&held.ops[..], [Op::Modify { changes, .. }] if changes.len() == 1 && !changes.iter().any(changes_sam)),
            "{:?}",
            held.ops
        );
        // Case alone is no change: AD compares sAMAccountNames without case.
        want.attributes.insert("sAMAccountName".into(), vec!["g_OLD".into()]);
        let same = plan(&intents(vec![("g", Intent::Write(want))]), &snap, strict);
        assert!(same.held_renames.is_empty(), "{same:?}");
    }

    #[test]
    fn a_sid_of_an_object_that_cannot_be_a_member_is_skipped() {
        let mut snap = Snapshot::default();
        let fsp = Principal {
            dn: "CN=S-1-5-11,CN=ForeignSecurityPrincipals,DC=corp".into(),
            group_type: None,
            classes: vec!["top".into(), "foreignSecurityPrincipal".into()],
        };
        snap.principals.insert("S-1-5-11".into(), fsp);
        let computer = Principal {
            dn: "CN=PC,DC=corp".into(),
            group_type: None,
            classes: vec!["top".into(), "person".into(), "user".into(), "computer".into()],
        };
        snap.principals.insert("S-PC".into(), computer);
        let plan = plan(
            &intents(vec![("g", Intent::Write(desired("g", "G", vec![user("S-1-5-11"), user("S-PC")])))]),
            &snap,
            OPTS,
        );
        assert_eq!(plan.skipped.len(), 1, "{:?}", plan.skipped);
        assert!(
            plan.skipped[0].reason.to_string().contains("names a foreignSecurityPrincipal object"),
            "{:?}",
            plan.skipped
        );
        assert!(
            matches!(&plan.ops[..], [Op::Create { attributes, .. }] if attributes.iter().any(|(k, v)| k == "member" && v == &["CN=PC,DC=corp".to_string()])),
            "{:?}",
            plan.ops
        );
    }

    #[test]
    fn withheld_adds_become_skipped_members() {
        let mut snap = snapshot_with_users(&["S-1"]);
        snap.managed.insert("g".into(), existing("g", "G", &[]));
        let mut plan = plan(&intents(vec![("g", Intent::Write(desired("g", "G", vec![user("S-1")])))]), &snap, OPTS);
        assert_eq!(plan.ops.len(), 1);
        let protected = SkipReason::ProtectedGroup { protected: "CN=P".into() };
        withhold_adds(&mut plan, &[(0, protected.clone())]);
        assert!(plan.ops.is_empty());
        assert_eq!(
            plan.skipped,
            [SkippedMember { group_id: "g".into(), member_id: "CN=S-1,CN=Users,DC=corp".into(), reason: protected }]
        );
    }

    #[test]
    fn leave_and_refuse_touch_nothing() {
        let mut snap = Snapshot::default();
        snap.managed.insert("g".into(), existing("g", "G", &[]));
        let plan = plan(
            &intents(vec![("g", Intent::Leave("off".into())), ("h", Intent::Refuse(refused("bad")))]),
            &snap,
            OPTS,
        );
        assert!(plan.ops.is_empty());
    }

    /// A converted group and the AD group it came from, named otherwise than the cloud would name it.
    fn converted() -> (DesiredGroup, DirectoryGroup) {
        let mut want = desired("g", "Cloud Name", vec![user("S-1")]);
        want.converted_from = Some("s-1-5-21-9-g".into());
        want.attributes.insert("sAMAccountName".into(), vec!["CloudName".into()]);
        want.attributes
            .insert("groupType".into(), vec![GroupKind::Security.group_type(GroupScope::Universal).to_string()]);
        want.attributes.insert("adminDescription".into(), vec!["Group_g".into()]);
        let mut current = existing("g", "Legacy", &[("CN=S-2,CN=Users,DC=corp", "S-2")]);
        current.dn = "CN=Legacy,OU=Old,DC=corp".into();
        current.attributes.insert("samaccountname".into(), vec!["legacy-sam".into()]);
        current
            .attributes
            .insert("grouptype".into(), vec![GroupKind::Security.group_type(GroupScope::Global).to_string()]);
        (want, current)
    }

    #[test]
    fn a_converted_group_is_taken_over_in_one_write_and_its_members_wait_for_the_anchor() {
        let (want, current) = converted();
        let mut snap = snapshot_with_users(&["S-1", "S-2"]);
        snap.managed.insert("g".into(), current);
        snap.takeovers.insert("g".into());
        let out = plan_batch(&intents(vec![("g", Intent::Write(want))]), &snap, &|_| false);
        let [Op::TakeOver { sid, dn, changes, .. }, members @ ..] = out.ops.as_slice() else {
            panic!("a take-over first: {:?}", out.ops)
        };
        // Listed for `plan`, applied by a sync only once the take-over is recorded.
        assert_eq!(members.len(), 2, "an add and a removal: {members:?}");
        assert!(members.iter().all(|op| member_change_of_takeover(op, &snap)));
        assert_eq!((sid.as_str(), dn.as_str()), ("S-1-5-21-9-g", "CN=Legacy,OU=Old,DC=corp"));
        assert!(changes.contains(&AttributeChange::Replace("adminDescription".into(), vec!["Group_g".into()])));
        assert!(changes.contains(&AttributeChange::Replace("displayName".into(), vec!["Cloud Name".into()])));
        let names: Vec<&str> = changes
            .iter()
            .map(|c| match c {
                AttributeChange::Replace(n, _) | AttributeChange::Clear(n) => n.as_str(),
            })
            .collect();
        assert!(!names.contains(&"sAMAccountName") && !names.contains(&"groupType"), "{names:?}");
        assert_eq!(out.waiting, ["g"], "planned again once the anchor is recorded");
        assert_eq!(describe(&out.ops[0]).0, "take-over");
    }

    #[test]
    fn a_group_taken_over_keeps_its_name_place_and_scope_and_its_members_follow_the_cloud() {
        let (want, mut current) = converted();
        current.attributes.insert("admindescription".into(), vec!["Group_g".into()]);
        let mut snap = snapshot_with_users(&["S-1", "S-2"]);
        snap.managed.insert("g".into(), current.clone());
        let out = plan(&intents(vec![("g", Intent::Write(want.clone()))]), &snap, OPTS);
        assert!(!out.ops.iter().any(|op| matches!(op, Op::Rename { .. } | Op::TakeOver { .. })), "{:?}", out.ops);
        assert!(!out.ops.iter().any(|op| is_rename(op) || op.to_string().contains("groupType")), "{:?}", out.ops);
        assert!(out.ops.iter().any(|op| matches!(op, Op::AddMembers { .. })));
        assert!(out.ops.iter().any(
            |op| matches!(op, Op::RemoveMembers { values, .. } if values == &["CN=S-2,CN=Users,DC=corp".to_string()])
        ));
        // A group the agent created for a converted group whose AD group was gone is named as any other.
        current.sid = Some("S-1-5-21-9-new".into());
        snap.managed.insert("g".into(), current);
        let out = plan(&intents(vec![("g", Intent::Write(want))]), &snap, OPTS);
        assert!(out.ops.iter().any(|op| matches!(op, Op::Rename { .. })), "{:?}", out.ops);
        assert!(out.ops.iter().any(|op| op.to_string().contains("sAMAccountName=CloudName")), "{:?}", out.ops);
    }

    #[test]
    fn nested_groups_are_checked_with_the_scope_each_has_once_planned() {
        let universal = GroupKind::Security.group_type(GroupScope::Universal).to_string();
        let local = GroupKind::Security.group_type(GroupScope::DomainLocal).to_string();
        // A kept global group holding a written universal group: refused.
        let (mut kept, current) = converted();
        kept.members = vec![DesiredMember::CloudGroup { member_id: "w".into(), converted_from: None }];
        let mut written = existing("w", "Written", &[]);
        written.attributes.insert("grouptype".into(), vec![universal.clone()]);
        let mut snap = Snapshot::default();
        snap.managed.insert("w".into(), written.clone());
        let mut with_child = current.clone();
        with_child.members.push(DirectoryMember { dn: written.dn.clone(), sid: written.sid.clone() });
        snap.managed.insert("g".into(), with_child);
        // Planned in another batch, its scope may be about to change: it stays where it is.
        let out = plan(&intents(vec![("g", Intent::Write(kept.clone()))]), &snap, OPTS);
        assert_eq!(
            out.skipped.iter().map(|s| s.reason.clone()).collect::<Vec<_>>(),
            [SkipReason::GlobalCantHaveUniversal]
        );
        let touches_child = |op: &Op| match op {
            Op::RemoveMembers { values, .. } => values.contains(&written.dn),
            Op::AddMembers { .. } => true,
            _ => false,
        };
        assert!(!out.ops.iter().any(touches_child), "{:?}", out.ops);
        // Planned in this batch as universal, its scope is final: it is removed.
        let child = Intent::Write(desired("w", "Written", vec![]));
        let out = plan(&intents(vec![("g", Intent::Write(kept.clone())), ("w", child)]), &snap, OPTS);
        assert!(
            out.ops.iter().any(|op| matches!(op, Op::RemoveMembers { values, .. } if values.contains(&written.dn))),
            "{:?}",
            out.ops
        );

        // A written universal group and a kept domain-local group: refused by the kept group's own scope.
        let mut parent = desired(
            "p",
            "Parent",
            vec![DesiredMember::CloudGroup { member_id: "g".into(), converted_from: Some("S-1-5-21-9-g".into()) }],
        );
        let mut local_kept = current.clone();
        local_kept.attributes.insert("grouptype".into(), vec![local]);
        let mut snap = Snapshot::default();
        snap.managed.insert("g".into(), local_kept.clone());
        let out = plan(&intents(vec![("p", Intent::Write(parent.clone()))]), &snap, OPTS);
        assert_eq!(out.skipped.iter().map(|s| s.reason.clone()).collect::<Vec<_>>(), [SkipReason::DomainLocalGroup]);
        // The same group not taken over, planned in this batch as universal: nested once its conversion is done
        // (AD checks the scope a member has when it is added, and the conversion may be held).
        parent.members = vec![DesiredMember::CloudGroup { member_id: "g".into(), converted_from: None }];
        let child = Intent::Write(desired("g", "Child", vec![]));
        let out = plan(&intents(vec![("p", Intent::Write(parent.clone())), ("g", child.clone())]), &snap, OPTS);
        assert_eq!(out.skipped.iter().map(|s| s.reason.clone()).collect::<Vec<_>>(), [SkipReason::DomainLocalGroup]);
        let mut converted_child = local_kept.clone();
        converted_child.attributes.insert("grouptype".into(), vec![universal.clone()]);
        snap.managed.insert("g".into(), converted_child);
        let out = plan(&intents(vec![("p", Intent::Write(parent.clone())), ("g", child)]), &snap, OPTS);
        assert!(out.skipped.is_empty(), "{:?}", out.skipped);
        let Some(Op::Create { attributes, .. }) = out.ops.iter().find(|op| op.group_id() == "p") else {
            panic!("{:?}", out.ops)
        };
        assert!(attributes.iter().any(|(k, v)| k == "member" && v == &[local_kept.dn.clone()]), "{attributes:?}");
        // A universal parent holding a universal child that a naming policy makes domain-local: the child stays
        // while its conversion waits (AD holds it for being in the parent), so it is not removed and added back.
        let mut holder = existing("h", "Holder", &[]);
        holder.attributes.insert("grouptype".into(), vec![universal.clone()]);
        let mut child_now = existing("c", "Child", &[]);
        child_now.attributes.insert("grouptype".into(), vec![universal.clone()]);
        holder.members.push(DirectoryMember { dn: child_now.dn.clone(), sid: child_now.sid.clone() });
        let mut snap = Snapshot::default();
        snap.managed.insert("h".into(), holder);
        snap.managed.insert("c".into(), child_now.clone());
        let holding =
            desired("h", "Holder", vec![DesiredMember::CloudGroup { member_id: "c".into(), converted_from: None }]);
        let mut becoming_local = desired("c", "Child", vec![]);
        becoming_local.scope = GroupScope::DomainLocal;
        let out = plan(
            &intents(vec![("h", Intent::Write(holding.clone())), ("c", Intent::Write(becoming_local.clone()))]),
            &snap,
            OPTS,
        );
        assert!(
            !out.ops.iter().any(|op| matches!(op, Op::RemoveMembers { group_id, .. } if group_id == "h")),
            "{:?}",
            out.ops
        );
        // Once it is domain-local in AD, its scope is final: it leaves the universal parent.
        child_now
            .attributes
            .insert("grouptype".into(), vec![GroupKind::Security.group_type(GroupScope::DomainLocal).to_string()]);
        snap.managed.insert("c".into(), child_now.clone());
        let out =
            plan(&intents(vec![("h", Intent::Write(holding)), ("c", Intent::Write(becoming_local))]), &snap, OPTS);
        assert!(out.ops.iter().any(|op| matches!(op, Op::RemoveMembers { group_id, values, .. } if group_id == "h" && values.contains(&child_now.dn))), "{:?}", out.ops);

        // A group a naming policy makes domain-local, created in this batch: refused in a universal parent.
        let mut local_child = desired("n", "New local", vec![]);
        local_child.scope = GroupScope::DomainLocal;
        parent.members = vec![DesiredMember::CloudGroup { member_id: "n".into(), converted_from: None }];
        let out = plan(
            &intents(vec![("p", Intent::Write(parent)), ("n", Intent::Write(local_child))]),
            &Snapshot::default(),
            OPTS,
        );
        assert_eq!(out.skipped.iter().map(|s| s.reason.clone()).collect::<Vec<_>>(), [SkipReason::DomainLocalGroup]);
    }
}
