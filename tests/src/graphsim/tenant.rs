//! The simulated directory: live objects, deleted items, and a change log
//! that delta rounds are computed from.

use std::collections::BTreeMap;
use std::fmt;

use super::model::{Group, GroupPatch, MEMBER_TYPES, MemberRef, User, UserPatch};
use super::wire::UtcTime;

/// Which collection an object belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ObjectKind {
    Group,
    User,
}

/// What happened to an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    /// Created, or restored from deleted items.
    Created,
    /// These properties got new values.
    Updated(Vec<&'static str>),
    /// A member joined the group.
    MemberAdded(MemberRef),
    /// A member left the group, or was itself deleted.
    MemberRemoved(MemberRef),
    /// Moved to deleted items (restorable).
    SoftDeleted,
    /// Gone for good.
    HardDeleted,
}

/// One entry of the change log.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub(crate) seq: u64,
    pub(crate) kind: ObjectKind,
    pub(crate) id: String,
    pub(crate) what: ChangeKind,
}

/// What `soft_delete_group` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The group is in deleted items and can be restored.
    SoftDeleted,
    /// Entra deletes security groups permanently, so this one is gone.
    HardDeleted,
}

/// Why a tenant mutation was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantError {
    /// No such object (or no such member).
    NotFound(String),
    /// The id is already taken.
    AlreadyExists(String),
    /// The request makes no sense, e.g. an unknown member type.
    Invalid(String),
}

impl fmt::Display for TenantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(what) => write!(f, "not found: {what}"),
            Self::AlreadyExists(id) => write!(f, "object {id} already exists"),
            Self::Invalid(why) => write!(f, "invalid request: {why}"),
        }
    }
}

impl std::error::Error for TenantError {}

/// An object in deleted items, with the time it was deleted.
#[derive(Clone, Debug)]
pub(crate) struct Deleted<T> {
    pub(crate) object: T,
    pub(crate) deleted_date_time: String,
}

impl<T> Deleted<T> {
    fn now(object: T) -> Self {
        Self { object, deleted_date_time: UtcTime::now().iso8601() }
    }
}

/// The directory's objects and the log of every change made to them.
#[derive(Debug, Default)]
pub(crate) struct Tenant {
    groups: BTreeMap<String, Group>,
    deleted_groups: BTreeMap<String, Deleted<Group>>,
    users: BTreeMap<String, User>,
    deleted_users: BTreeMap<String, Deleted<User>>,
    log: Vec<Change>,
    seq: u64,
    security_groups_restorable: bool,
}

impl Tenant {
    /// An empty tenant. `security_groups_restorable` overrides Entra's rule
    /// that only Microsoft 365 groups go to deleted items.
    pub(crate) fn new(security_groups_restorable: bool) -> Self {
        Self { security_groups_restorable, ..Self::default() }
    }

    /// Sequence number of the latest change (0 before any change).
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Changes made after `seq`, oldest first.
    pub(crate) fn changes_since(&self, seq: u64) -> impl Iterator<Item = &Change> {
        let start = self.log.partition_point(|c| c.seq <= seq);
        self.log[start..].iter()
    }

    pub(crate) fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    pub(crate) fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    pub(crate) fn deleted_group(&self, id: &str) -> Option<&Deleted<Group>> {
        self.deleted_groups.get(id)
    }

    pub(crate) fn deleted_groups(&self) -> impl Iterator<Item = &Group> {
        self.deleted_groups.values().map(|d| &d.object)
    }

    pub(crate) fn user(&self, id: &str) -> Option<&User> {
        self.users.get(id)
    }

    pub(crate) fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub(crate) fn deleted_user(&self, id: &str) -> Option<&Deleted<User>> {
        self.deleted_users.get(id)
    }

    pub(crate) fn deleted_users(&self) -> impl Iterator<Item = &User> {
        self.deleted_users.values().map(|d| &d.object)
    }

    fn record(&mut self, kind: ObjectKind, id: &str, what: ChangeKind) -> u64 {
        self.seq += 1;
        self.log.push(Change { seq: self.seq, kind, id: id.to_owned(), what });
        self.seq
    }

    /// Object ids are unique across the whole directory, deleted items included.
    fn ensure_id_free(&self, id: &str) -> Result<(), TenantError> {
        if id.is_empty() {
            return Err(TenantError::Invalid("an object needs a non-empty id".into()));
        }
        let taken = self.groups.contains_key(id)
            || self.deleted_groups.contains_key(id)
            || self.users.contains_key(id)
            || self.deleted_users.contains_key(id);
        if taken { Err(TenantError::AlreadyExists(id.to_owned())) } else { Ok(()) }
    }

    fn live_group_mut(&mut self, id: &str) -> Result<&mut Group, TenantError> {
        self.groups.get_mut(id).ok_or_else(|| TenantError::NotFound(format!("group {id}")))
    }

    /// Creates a group with its initial members.
    pub(crate) fn add_group(&mut self, group: Group) -> Result<u64, TenantError> {
        self.ensure_id_free(&group.id)?;
        check_member_types(&group.members)?;
        let id = group.id.clone();
        self.groups.insert(id.clone(), group);
        Ok(self.record(ObjectKind::Group, &id, ChangeKind::Created))
    }

    /// Changes some properties of a live group. A patch that changes nothing
    /// records nothing, as Graph would not report the object either.
    pub(crate) fn update_group(&mut self, id: &str, patch: GroupPatch) -> Result<u64, TenantError> {
        let changed = patch.apply(self.live_group_mut(id)?);
        if changed.is_empty() {
            return Ok(self.seq);
        }
        Ok(self.record(ObjectKind::Group, id, ChangeKind::Updated(changed)))
    }

    /// Adds members; ones already present are skipped.
    pub(crate) fn add_members(&mut self, group_id: &str, members: &[MemberRef]) -> Result<u64, TenantError> {
        check_member_types(members)?;
        let group = self.live_group_mut(group_id)?;
        let mut added = Vec::new();
        for member in members {
            if !group.has_member(&member.id) && !added.contains(member) {
                group.members.push(member.clone());
                added.push(member.clone());
            }
        }
        for member in added {
            self.record(ObjectKind::Group, group_id, ChangeKind::MemberAdded(member));
        }
        Ok(self.seq)
    }

    /// Removes members; fails without changing anything if one is not a member.
    pub(crate) fn remove_members(&mut self, group_id: &str, member_ids: &[&str]) -> Result<u64, TenantError> {
        let group = self.live_group_mut(group_id)?;
        if let Some(missing) = member_ids.iter().find(|id| !group.has_member(id)) {
            return Err(TenantError::NotFound(format!("member {missing} of group {group_id}")));
        }
        let (removed, kept) = group.members.drain(..).partition(|m| member_ids.contains(&m.id.as_str()));
        group.members = kept;
        self.record_removals(group_id, removed);
        Ok(self.seq)
    }

    fn record_removals(&mut self, group_id: &str, removed: Vec<MemberRef>) {
        for member in removed {
            self.record(ObjectKind::Group, group_id, ChangeKind::MemberRemoved(member));
        }
    }

    /// Entra drops a deleted object from every group it belonged to; each
    /// live group reports that as a removed member.
    fn detach_member(&mut self, member_id: &str) {
        let mut removals = Vec::new();
        for group in self.groups.values_mut() {
            if let Some(pos) = group.members.iter().position(|m| m.id == member_id) {
                removals.push((group.id.clone(), group.members.remove(pos)));
            }
        }
        for deleted in self.deleted_groups.values_mut() {
            deleted.object.members.retain(|m| m.id != member_id);
        }
        for (group_id, member) in removals {
            self.record_removals(&group_id, vec![member]);
        }
    }

    /// Deletes a group. Only Microsoft 365 groups go to deleted items; Entra
    /// deletes security groups permanently (see "Get deleted item").
    pub(crate) fn soft_delete_group(&mut self, id: &str) -> Result<DeleteOutcome, TenantError> {
        let group = self.groups.remove(id).ok_or_else(|| TenantError::NotFound(format!("group {id}")))?;
        let outcome = if group.is_unified() || self.security_groups_restorable {
            self.deleted_groups.insert(id.to_owned(), Deleted::now(group));
            self.record(ObjectKind::Group, id, ChangeKind::SoftDeleted);
            DeleteOutcome::SoftDeleted
        } else {
            self.record(ObjectKind::Group, id, ChangeKind::HardDeleted);
            DeleteOutcome::HardDeleted
        };
        self.detach_member(id);
        Ok(outcome)
    }

    /// Brings a group back from deleted items, with the members it had.
    pub(crate) fn restore_group(&mut self, id: &str) -> Result<u64, TenantError> {
        let deleted =
            self.deleted_groups.remove(id).ok_or_else(|| TenantError::NotFound(format!("deleted group {id}")))?;
        self.groups.insert(id.to_owned(), deleted.object);
        Ok(self.record(ObjectKind::Group, id, ChangeKind::Created))
    }

    /// Deletes a live or soft-deleted group for good.
    pub(crate) fn hard_delete_group(&mut self, id: &str) -> Result<u64, TenantError> {
        let was_live = self.groups.remove(id).is_some();
        if !was_live && self.deleted_groups.remove(id).is_none() {
            return Err(TenantError::NotFound(format!("group {id}")));
        }
        let seq = self.record(ObjectKind::Group, id, ChangeKind::HardDeleted);
        if was_live {
            self.detach_member(id);
        }
        Ok(seq)
    }

    /// Creates a user.
    pub(crate) fn add_user(&mut self, user: User) -> Result<u64, TenantError> {
        self.ensure_id_free(&user.id)?;
        let id = user.id.clone();
        self.users.insert(id.clone(), user);
        Ok(self.record(ObjectKind::User, &id, ChangeKind::Created))
    }

    /// Changes some properties of a live user.
    pub(crate) fn update_user(&mut self, id: &str, patch: UserPatch) -> Result<u64, TenantError> {
        let user = self.users.get_mut(id).ok_or_else(|| TenantError::NotFound(format!("user {id}")))?;
        let changed = patch.apply(user);
        if changed.is_empty() {
            return Ok(self.seq);
        }
        Ok(self.record(ObjectKind::User, id, ChangeKind::Updated(changed)))
    }

    /// Deletes a user: to deleted items, or for good when `hard`.
    pub(crate) fn delete_user(&mut self, id: &str, hard: bool) -> Result<u64, TenantError> {
        let live = self.users.remove(id);
        let seq = match (live, hard) {
            (Some(user), false) => {
                self.deleted_users.insert(id.to_owned(), Deleted::now(user));
                self.record(ObjectKind::User, id, ChangeKind::SoftDeleted)
            }
            (Some(_), true) => self.record(ObjectKind::User, id, ChangeKind::HardDeleted),
            (None, true) if self.deleted_users.remove(id).is_some() => {
                self.record(ObjectKind::User, id, ChangeKind::HardDeleted)
            }
            (None, _) => return Err(TenantError::NotFound(format!("user {id}"))),
        };
        // Entra ID keeps a soft-deleted user's memberships (a restore brings them back) and group delta
        // reports nothing about them until the hard delete.
        if hard {
            self.detach_member(id);
        }
        Ok(seq)
    }

    /// Brings a user back from deleted items, with the memberships it kept.
    pub(crate) fn restore_user(&mut self, id: &str) -> Result<u64, TenantError> {
        let deleted =
            self.deleted_users.remove(id).ok_or_else(|| TenantError::NotFound(format!("deleted user {id}")))?;
        self.users.insert(id.to_owned(), deleted.object);
        Ok(self.record(ObjectKind::User, id, ChangeKind::Created))
    }
}

fn check_member_types(members: &[MemberRef]) -> Result<(), TenantError> {
    match members.iter().find(|m| !MEMBER_TYPES.contains(&m.odata_type.as_str())) {
        Some(bad) => Err(TenantError::Invalid(format!("member {} has unknown type {}", bad.id, bad.odata_type))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(tenant: &Tenant, since: u64) -> Vec<ChangeKind> {
        tenant.changes_since(since).map(|c| c.what.clone()).collect()
    }

    #[test]
    fn security_group_delete_is_permanent_unless_configured() {
        let mut tenant = Tenant::new(false);
        tenant.add_group(Group::security("s", "Sec")).expect("add");
        tenant.add_group(Group::unified("u", "M365", "m365")).expect("add");
        assert_eq!(tenant.soft_delete_group("s"), Ok(DeleteOutcome::HardDeleted));
        assert_eq!(tenant.soft_delete_group("u"), Ok(DeleteOutcome::SoftDeleted));
        assert!(tenant.deleted_group("s").is_none());
        assert!(tenant.deleted_group("u").is_some());

        let mut lenient = Tenant::new(true);
        lenient.add_group(Group::security("s", "Sec")).expect("add");
        assert_eq!(lenient.soft_delete_group("s"), Ok(DeleteOutcome::SoftDeleted));
    }

    #[test]
    fn a_soft_deleted_user_keeps_its_memberships_and_a_hard_delete_removes_them() {
        let mut tenant = Tenant::new(false);
        tenant.add_user(User::cloud("u1", "u1@contoso.com")).expect("add user");
        let group = Group { members: vec![MemberRef::user("u1")], ..Group::security("g", "G") };
        tenant.add_group(group).expect("add group");
        let before = tenant.seq();
        tenant.delete_user("u1", false).expect("delete");
        assert_eq!(kinds(&tenant, before), vec![ChangeKind::SoftDeleted]);
        assert!(tenant.group("g").is_some_and(|g| g.members.len() == 1));
        let before = tenant.seq();
        tenant.delete_user("u1", true).expect("hard delete");
        assert_eq!(
            kinds(&tenant, before),
            vec![ChangeKind::HardDeleted, ChangeKind::MemberRemoved(MemberRef::user("u1"))]
        );
        assert!(tenant.group("g").is_some_and(|g| g.members.is_empty()));
    }

    #[test]
    fn removing_a_non_member_changes_nothing() {
        let mut tenant = Tenant::new(false);
        let group = Group { members: vec![MemberRef::user("a")], ..Group::security("g", "G") };
        tenant.add_group(group).expect("add");
        let before = tenant.seq();
        assert!(matches!(tenant.remove_members("g", &["a", "zz"]), Err(TenantError::NotFound(_))));
        assert_eq!(tenant.seq(), before);
        assert!(tenant.group("g").is_some_and(|g| g.has_member("a")));
    }

    #[test]
    fn ids_are_unique_across_kinds_and_deleted_items() {
        let mut tenant = Tenant::new(false);
        tenant.add_group(Group::unified("x", "X", "x")).expect("add");
        tenant.soft_delete_group("x").expect("delete");
        assert_eq!(tenant.add_user(User::cloud("x", "x@contoso.com")), Err(TenantError::AlreadyExists("x".into())));
        assert!(matches!(
            tenant.add_group(Group {
                members: vec![MemberRef::new("#microsoft.graph.team", "t")],
                ..Group::security("y", "Y")
            }),
            Err(TenantError::Invalid(_))
        ));
    }
}
