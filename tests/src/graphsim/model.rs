//! Directory objects the simulated tenant holds, in Graph's camelCase JSON
//! shape so that a tenant fixture can be written as Graph would return it.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

/// `@odata.type` of a user member.
pub const USER_TYPE: &str = "#microsoft.graph.user";
/// `@odata.type` of a group member (nested group).
pub const GROUP_TYPE: &str = "#microsoft.graph.group";
/// `@odata.type` of a device member.
pub const DEVICE_TYPE: &str = "#microsoft.graph.device";
/// `@odata.type` of a service principal member.
pub const SERVICE_PRINCIPAL_TYPE: &str = "#microsoft.graph.servicePrincipal";
/// `@odata.type` of an organisational contact member.
pub const ORG_CONTACT_TYPE: &str = "#microsoft.graph.orgContact";

/// Every member type a group can hold.
pub const MEMBER_TYPES: [&str; 5] = [USER_TYPE, GROUP_TYPE, DEVICE_TYPE, SERVICE_PRINCIPAL_TYPE, ORG_CONTACT_TYPE];

/// A reference to a group member, as it appears in `members@delta`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberRef {
    /// Object id of the member.
    pub id: String,
    /// One of [`MEMBER_TYPES`].
    #[serde(rename = "@odata.type")]
    pub odata_type: String,
}

impl MemberRef {
    /// A member of the given `@odata.type`.
    pub fn new(odata_type: &str, id: impl Into<String>) -> Self {
        Self { id: id.into(), odata_type: odata_type.to_owned() }
    }

    /// A user member.
    pub fn user(id: impl Into<String>) -> Self {
        Self::new(USER_TYPE, id)
    }

    /// A nested group member.
    pub fn group(id: impl Into<String>) -> Self {
        Self::new(GROUP_TYPE, id)
    }

    /// A device member.
    pub fn device(id: impl Into<String>) -> Self {
        Self::new(DEVICE_TYPE, id)
    }

    /// A service principal member.
    pub fn service_principal(id: impl Into<String>) -> Self {
        Self::new(SERVICE_PRINCIPAL_TYPE, id)
    }

    /// An organisational contact member.
    pub fn org_contact(id: impl Into<String>) -> Self {
        Self::new(ORG_CONTACT_TYPE, id)
    }

    /// The `members@delta` item announcing this member, or its removal.
    pub(crate) fn to_delta(&self, removed: bool) -> Value {
        let mut item = json!({ "@odata.type": self.odata_type, "id": self.id });
        if removed {
            item["@removed"] = json!({ "reason": "deleted" });
        }
        item
    }
}

/// A group's `writebackConfiguration` (beta only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WritebackConfiguration {
    /// Whether writeback is enabled; null means "the tenant default".
    #[serde(default)]
    pub is_enabled: Option<bool>,
    /// `universalDistributionGroup`, `universalSecurityGroup`,
    /// `universalMailEnabledSecurityGroup`, or null.
    #[serde(default)]
    pub on_premises_group_type: Option<String>,
}

/// An Entra ID group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    /// Object id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Free-text description.
    #[serde(default)]
    pub description: Option<String>,
    /// Mail alias.
    #[serde(default)]
    pub mail_nickname: Option<String>,
    /// Primary SMTP address.
    #[serde(default)]
    pub mail: Option<String>,
    /// Whether the group is mail-enabled.
    #[serde(default)]
    pub mail_enabled: bool,
    /// Whether the group is a security group.
    #[serde(default)]
    pub security_enabled: bool,
    /// `Unified` (Microsoft 365 group) and/or `DynamicMembership`.
    #[serde(default)]
    pub group_types: Vec<String>,
    /// Proxy addresses such as `SMTP:team@contoso.com`.
    #[serde(default)]
    pub proxy_addresses: Vec<String>,
    /// True when the group is synced from on-premises AD.
    #[serde(default)]
    pub on_premises_sync_enabled: Option<bool>,
    /// SID of the on-premises group it is synced from.
    #[serde(default)]
    pub on_premises_security_identifier: Option<String>,
    /// Writeback settings; absent means both fields are null.
    #[serde(default, rename = "writebackConfiguration")]
    pub writeback: Option<WritebackConfiguration>,
    /// Current members.
    #[serde(default)]
    pub members: Vec<MemberRef>,
}

impl Group {
    /// A cloud security group with no members.
    pub fn security(id: impl Into<String>, display_name: impl Into<String>) -> Self {
        Self { id: id.into(), display_name: display_name.into(), security_enabled: true, ..Self::default() }
    }

    /// A security group whose source of authority was converted from the AD group with SID `sid`: as Graph shows
    /// it after the conversion, `onPremisesSyncEnabled` null and the AD group's SID kept.
    pub fn converted(id: impl Into<String>, display_name: impl Into<String>, sid: &str) -> Self {
        Self { on_premises_security_identifier: Some(sid.to_owned()), ..Self::security(id, display_name) }
    }

    /// A Microsoft 365 (Unified) group with no members.
    pub fn unified(id: impl Into<String>, display_name: impl Into<String>, mail_nickname: &str) -> Self {
        Self {
            id: id.into(),
            display_name: display_name.into(),
            mail_nickname: Some(mail_nickname.to_owned()),
            mail: Some(format!("{mail_nickname}@contoso.com")),
            mail_enabled: true,
            group_types: vec!["Unified".to_owned()],
            ..Self::default()
        }
    }

    /// Whether this is a Microsoft 365 group, the only kind Entra can restore.
    pub fn is_unified(&self) -> bool {
        self.group_types.iter().any(|t| t.eq_ignore_ascii_case("Unified"))
    }

    /// Whether `id` is a member.
    pub fn has_member(&self, id: &str) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// The JSON value of the named property, or None for an unknown name.
    pub(crate) fn property(&self, name: &str) -> Option<Value> {
        let value = match name {
            "id" => json!(self.id),
            "displayName" => json!(self.display_name),
            "description" => json!(self.description),
            "mailNickname" => json!(self.mail_nickname),
            "mail" => json!(self.mail),
            "mailEnabled" => json!(self.mail_enabled),
            "securityEnabled" => json!(self.security_enabled),
            "groupTypes" => json!(self.group_types),
            "proxyAddresses" => json!(self.proxy_addresses),
            "onPremisesSyncEnabled" => json!(self.on_premises_sync_enabled),
            "onPremisesSecurityIdentifier" => json!(self.on_premises_security_identifier),
            // Graph always returns the complex value, with null fields when unset.
            "writebackConfiguration" => json!(self.writeback.clone().unwrap_or_default()),
            _ => return None,
        };
        Some(value)
    }
}

/// Group properties the simulator models, in the order it emits them.
pub(crate) const GROUP_PROPERTIES: [&str; 11] = [
    "displayName",
    "description",
    "mailNickname",
    "mail",
    "mailEnabled",
    "securityEnabled",
    "groupTypes",
    "proxyAddresses",
    "onPremisesSyncEnabled",
    "onPremisesSecurityIdentifier",
    "writebackConfiguration",
];

/// Properties that exist only on the beta endpoint.
pub(crate) const BETA_ONLY_PROPERTIES: [&str; 1] = ["writebackConfiguration"];

/// An Entra ID user, reduced to what group writeback needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// Object id.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub display_name: String,
    /// Sign-in name.
    #[serde(default)]
    pub user_principal_name: String,
    /// True when the user is synced from on-premises AD.
    #[serde(default)]
    pub on_premises_sync_enabled: Option<bool>,
    /// SID of the on-premises account.
    #[serde(default)]
    pub on_premises_security_identifier: Option<String>,
    /// sAMAccountName of the on-premises account.
    #[serde(default)]
    pub on_premises_sam_account_name: Option<String>,
    /// Distinguished name of the on-premises account.
    #[serde(default)]
    pub on_premises_distinguished_name: Option<String>,
    /// Immutable id (source anchor) of the on-premises account.
    #[serde(default)]
    pub on_premises_immutable_id: Option<String>,
}

impl User {
    /// A cloud-only user.
    pub fn cloud(id: impl Into<String>, user_principal_name: impl Into<String>) -> Self {
        let user_principal_name = user_principal_name.into();
        let display_name = user_principal_name.split('@').next().unwrap_or_default().to_owned();
        Self { id: id.into(), display_name, user_principal_name, ..Self::default() }
    }

    /// A user synced from on-premises AD with the given SID and sAMAccountName.
    pub fn synced(id: impl Into<String>, user_principal_name: impl Into<String>, sid: &str, sam: &str) -> Self {
        Self {
            on_premises_sync_enabled: Some(true),
            on_premises_security_identifier: Some(sid.to_owned()),
            on_premises_sam_account_name: Some(sam.to_owned()),
            ..Self::cloud(id, user_principal_name)
        }
    }

    /// The JSON value of the named property, or None for an unknown name.
    pub(crate) fn property(&self, name: &str) -> Option<Value> {
        let value = match name {
            "id" => json!(self.id),
            "displayName" => json!(self.display_name),
            "userPrincipalName" => json!(self.user_principal_name),
            "onPremisesSyncEnabled" => json!(self.on_premises_sync_enabled),
            "onPremisesSecurityIdentifier" => json!(self.on_premises_security_identifier),
            "onPremisesSamAccountName" => json!(self.on_premises_sam_account_name),
            "onPremisesDistinguishedName" => json!(self.on_premises_distinguished_name),
            "onPremisesImmutableId" => json!(self.on_premises_immutable_id),
            _ => return None,
        };
        Some(value)
    }
}

/// User properties the simulator models, in the order it emits them.
pub(crate) const USER_PROPERTIES: [&str; 7] = [
    "displayName",
    "userPrincipalName",
    "onPremisesSyncEnabled",
    "onPremisesSecurityIdentifier",
    "onPremisesSamAccountName",
    "onPremisesDistinguishedName",
    "onPremisesImmutableId",
];

/// Reads a field that may be absent (leave alone) or null (clear): absent
/// stays `None` through `#[serde(default)]`, present becomes `Some(value)`.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Sets `field` to `value` if given and different, noting `name` as changed.
fn assign<T: PartialEq>(field: &mut T, value: Option<T>, name: &'static str, changed: &mut Vec<&'static str>) {
    if let Some(value) = value
        && *field != value
    {
        *field = value;
        changed.push(name);
    }
}

/// A partial update of a group: `None` leaves a property alone; for nullable
/// properties `Some(None)` sets it to null. Members change through their own
/// calls, as in Graph.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupPatch {
    /// New display name.
    pub display_name: Option<String>,
    /// New description, or null.
    #[serde(default, deserialize_with = "nullable")]
    pub description: Option<Option<String>>,
    /// New mail alias, or null.
    #[serde(default, deserialize_with = "nullable")]
    pub mail_nickname: Option<Option<String>>,
    /// New primary SMTP address, or null.
    #[serde(default, deserialize_with = "nullable")]
    pub mail: Option<Option<String>>,
    /// New mail-enabled flag.
    pub mail_enabled: Option<bool>,
    /// New security-enabled flag.
    pub security_enabled: Option<bool>,
    /// New group types.
    pub group_types: Option<Vec<String>>,
    /// New proxy addresses.
    pub proxy_addresses: Option<Vec<String>>,
    /// New on-premises sync flag, or null.
    #[serde(default, deserialize_with = "nullable")]
    pub on_premises_sync_enabled: Option<Option<bool>>,
    /// New on-premises SID, or null.
    #[serde(default, deserialize_with = "nullable")]
    pub on_premises_security_identifier: Option<Option<String>>,
    /// New writeback settings, or null.
    #[serde(default, rename = "writebackConfiguration", deserialize_with = "nullable")]
    pub writeback: Option<Option<WritebackConfiguration>>,
}

impl GroupPatch {
    /// Applies the patch; returns the names of properties whose value changed.
    pub(crate) fn apply(self, group: &mut Group) -> Vec<&'static str> {
        let mut changed = Vec::new();
        assign(&mut group.display_name, self.display_name, "displayName", &mut changed);
        assign(&mut group.description, self.description, "description", &mut changed);
        assign(&mut group.mail_nickname, self.mail_nickname, "mailNickname", &mut changed);
        assign(&mut group.mail, self.mail, "mail", &mut changed);
        assign(&mut group.mail_enabled, self.mail_enabled, "mailEnabled", &mut changed);
        assign(&mut group.security_enabled, self.security_enabled, "securityEnabled", &mut changed);
        assign(&mut group.group_types, self.group_types, "groupTypes", &mut changed);
        assign(&mut group.proxy_addresses, self.proxy_addresses, "proxyAddresses", &mut changed);
        assign(
            &mut group.on_premises_sync_enabled,
            self.on_premises_sync_enabled,
            "onPremisesSyncEnabled",
            &mut changed,
        );
        assign(
            &mut group.on_premises_security_identifier,
            self.on_premises_security_identifier,
            "onPremisesSecurityIdentifier",
            &mut changed,
        );
        assign(&mut group.writeback, self.writeback, "writebackConfiguration", &mut changed);
        changed
    }
}

/// A partial update of a user, with the same conventions as [`GroupPatch`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserPatch {
    /// New display name.
    pub display_name: Option<String>,
    /// New sign-in name.
    pub user_principal_name: Option<String>,
    /// New on-premises sync flag, or null.
    #[serde(default, deserialize_with = "nullable")]
    pub on_premises_sync_enabled: Option<Option<bool>>,
    /// New on-premises SID, or null.
    #[serde(default, deserialize_with = "nullable")]
    pub on_premises_security_identifier: Option<Option<String>>,
    /// New sAMAccountName, or null.
    #[serde(default, deserialize_with = "nullable")]
    pub on_premises_sam_account_name: Option<Option<String>>,
    /// New distinguished name, or null.
    #[serde(default, deserialize_with = "nullable")]
    pub on_premises_distinguished_name: Option<Option<String>>,
    /// New immutable id, or null.
    #[serde(default, deserialize_with = "nullable")]
    pub on_premises_immutable_id: Option<Option<String>>,
}

impl UserPatch {
    /// Applies the patch; returns the names of properties whose value changed.
    pub(crate) fn apply(self, user: &mut User) -> Vec<&'static str> {
        let mut changed = Vec::new();
        assign(&mut user.display_name, self.display_name, "displayName", &mut changed);
        assign(&mut user.user_principal_name, self.user_principal_name, "userPrincipalName", &mut changed);
        assign(
            &mut user.on_premises_sync_enabled,
            self.on_premises_sync_enabled,
            "onPremisesSyncEnabled",
            &mut changed,
        );
        assign(
            &mut user.on_premises_security_identifier,
            self.on_premises_security_identifier,
            "onPremisesSecurityIdentifier",
            &mut changed,
        );
        assign(
            &mut user.on_premises_sam_account_name,
            self.on_premises_sam_account_name,
            "onPremisesSamAccountName",
            &mut changed,
        );
        assign(
            &mut user.on_premises_distinguished_name,
            self.on_premises_distinguished_name,
            "onPremisesDistinguishedName",
            &mut changed,
        );
        assign(
            &mut user.on_premises_immutable_id,
            self.on_premises_immutable_id,
            "onPremisesImmutableId",
            &mut changed,
        );
        changed
    }
}

/// A tenant to load at start-up: `{ "users": [...], "groups": [...] }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// Users, loaded first.
    #[serde(default)]
    pub users: Vec<User>,
    /// Groups with their `members`.
    #[serde(default)]
    pub groups: Vec<Group>,
}

impl Fixture {
    /// Reads a fixture from a JSON file.
    pub fn from_path(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading fixture {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing fixture {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_reads_graph_json() {
        let group: Group = serde_json::from_value(json!({
            "id": "g1",
            "displayName": "Team",
            "groupTypes": ["Unified"],
            "writebackConfiguration": {"isEnabled": true, "onPremisesGroupType": null},
            "members": [{"@odata.type": USER_TYPE, "id": "u1"}]
        }))
        .expect("valid group JSON");
        assert!(group.is_unified());
        assert_eq!(group.members, vec![MemberRef::user("u1")]);
        assert_eq!(group.writeback.and_then(|w| w.is_enabled), Some(true));
    }

    #[test]
    fn patch_distinguishes_absent_from_null() {
        let mut group = Group { description: Some("old".into()), ..Group::security("g1", "Team") };
        let patch: GroupPatch = serde_json::from_value(json!({"description": null})).expect("valid patch");
        assert_eq!(patch.apply(&mut group), vec!["description"]);
        assert_eq!(group.description, None);
        assert_eq!(group.display_name, "Team");

        let unchanged: GroupPatch = serde_json::from_value(json!({"displayName": "Team"})).expect("valid patch");
        assert!(unchanged.apply(&mut group).is_empty());
    }
}
