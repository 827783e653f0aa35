//! The cloud's objects as the agent knows them: delta entries as Graph sends them (every field may be absent),
//! and groups and users as merged from every entry seen so far. Plain data, shared by the Graph reader, the
//! state and the model, so that none of them depends on another for its types.

use serde::{Deserialize, Serialize};

/// Why an entry was `@removed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Removal {
    /// Soft-deleted: restorable from deleted items for 30 days.
    Changed,
    /// Gone for good.
    Deleted,
}

/// The kind of a directory object named in `members@delta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberKind {
    User,
    Group,
    Device,
    ServicePrincipal,
    OrgContact,
    Other,
}

impl MemberKind {
    /// A plain name for status output.
    pub fn label(self) -> &'static str {
        match self {
            MemberKind::User => "user",
            MemberKind::Group => "group",
            MemberKind::Device => "device",
            MemberKind::ServicePrincipal => "service principal",
            MemberKind::OrgContact => "contact",
            MemberKind::Other => "unknown object type",
        }
    }
}

/// One change to a group's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    pub id: String,
    pub kind: MemberKind,
    pub removed: bool,
}

/// A property that an entry may carry: absent (unchanged), null, or a value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Field<T> {
    #[default]
    Absent,
    Null,
    Set(T),
}

impl<T> Field<T> {
    /// Applies this field to a stored value: absent leaves it, null clears it.
    pub fn apply_to(self, target: &mut Option<T>) {
        match self {
            Field::Absent => {}
            Field::Null => *target = None,
            Field::Set(value) => *target = Some(value),
        }
    }
}

/// The group properties an entry may change; every field may be absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupFields {
    pub display_name: Field<String>,
    pub description: Field<String>,
    pub mail_nickname: Field<String>,
    pub mail: Field<String>,
    pub mail_enabled: Field<bool>,
    pub security_enabled: Field<bool>,
    pub group_types: Field<Vec<String>>,
    pub proxy_addresses: Field<Vec<String>>,
    pub on_premises_sync_enabled: Field<bool>,
    pub on_premises_security_identifier: Field<String>,
    pub writeback_enabled: Field<bool>,
    pub writeback_group_type: Field<String>,
}

/// One group entry of a delta page.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupEntry {
    pub id: String,
    pub removed: Option<Removal>,
    pub fields: GroupFields,
    pub members: Vec<MemberChange>,
}

/// The user properties an entry may change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserFields {
    pub display_name: Field<String>,
    pub user_principal_name: Field<String>,
    pub on_premises_sync_enabled: Field<bool>,
    pub on_premises_security_identifier: Field<String>,
}

/// One user entry of a delta page.
#[derive(Debug, Clone, PartialEq)]
pub struct UserEntry {
    pub id: String,
    pub removed: Option<Removal>,
    pub fields: UserFields,
}

/// A group as Graph describes it, merged from every delta entry seen so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CloudGroup {
    pub id: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub mail_nickname: Option<String>,
    pub mail: Option<String>,
    pub mail_enabled: Option<bool>,
    pub security_enabled: Option<bool>,
    pub group_types: Option<Vec<String>>,
    pub proxy_addresses: Option<Vec<String>>,
    pub on_premises_sync_enabled: Option<bool>,
    pub on_premises_security_identifier: Option<String>,
    pub writeback_enabled: Option<bool>,
    pub writeback_group_type: Option<String>,
    /// Set when Graph reported the group `@removed`; cleared by a restore.
    pub removed: Option<Removal>,
}

impl CloudGroup {
    /// Whether `groupTypes` marks a Microsoft 365 group.
    pub fn is_unified(&self) -> bool {
        self.group_types.as_deref().unwrap_or_default().iter().any(|t| t.eq_ignore_ascii_case("Unified"))
    }
}

/// A user as Graph describes it: only what membership needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CloudUser {
    pub id: String,
    pub display_name: Option<String>,
    pub user_principal_name: Option<String>,
    pub on_premises_sync_enabled: Option<bool>,
    pub on_premises_security_identifier: Option<String>,
}

impl CloudGroup {
    /// Merges one delta entry: a property it carries replaces the stored one, `null` clears it, an absent one
    /// stays as it was.
    pub fn apply(&mut self, entry: &GroupEntry) {
        let group = self;
        let f = entry.fields.clone();
        f.display_name.apply_to(&mut group.display_name);
        f.description.apply_to(&mut group.description);
        f.mail_nickname.apply_to(&mut group.mail_nickname);
        f.mail.apply_to(&mut group.mail);
        f.mail_enabled.apply_to(&mut group.mail_enabled);
        f.security_enabled.apply_to(&mut group.security_enabled);
        f.group_types.apply_to(&mut group.group_types);
        f.proxy_addresses.apply_to(&mut group.proxy_addresses);
        f.on_premises_sync_enabled.apply_to(&mut group.on_premises_sync_enabled);
        f.on_premises_security_identifier.apply_to(&mut group.on_premises_security_identifier);
        f.writeback_enabled.apply_to(&mut group.writeback_enabled);
        f.writeback_group_type.apply_to(&mut group.writeback_group_type);
        // An entry without @removed for a removed group is a restore.
        group.removed = entry.removed.clone();
    }
}

impl CloudUser {
    /// The user after one delta entry; `None` once it is deleted for good.
    pub fn merged(current: Option<CloudUser>, entry: &UserEntry) -> Option<CloudUser> {
        match entry.removed {
            Some(Removal::Deleted) => return None,
            // Graph keeps a soft-deleted user's memberships (a restore brings them back), and group delta says
            // nothing until the hard delete; so the user and its AD memberships stay until then.
            Some(Removal::Changed) => return current,
            None => {}
        }
        let mut user = current.unwrap_or_else(|| CloudUser { id: entry.id.clone(), ..Default::default() });
        let f = entry.fields.clone();
        f.display_name.apply_to(&mut user.display_name);
        f.user_principal_name.apply_to(&mut user.user_principal_name);
        f.on_premises_sync_enabled.apply_to(&mut user.on_premises_sync_enabled);
        f.on_premises_security_identifier.apply_to(&mut user.on_premises_security_identifier);
        Some(user)
    }
}

/// What the desired model reads of the merged cloud state besides the group itself: its members, the users
/// and groups they are, and whether Graph sent an entry for it that could not be read. The state implements
/// it over sled; a test can implement it over a map.
pub trait CloudView {
    /// Why reading failed.
    type Error;
    /// Why Graph's last entry for `id` could not be read, if it could not.
    fn unreadable(&self, id: &str) -> Result<Option<String>, Self::Error>;
    /// The group's members, with their kinds.
    fn members(&self, group: &str) -> Result<Vec<(String, MemberKind)>, Self::Error>;
    /// A user by id.
    fn user(&self, id: &str) -> Result<Option<CloudUser>, Self::Error>;
    /// A group by id.
    fn group(&self, id: &str) -> Result<Option<CloudGroup>, Self::Error>;
}
