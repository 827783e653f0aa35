//! Delta pages: parsing Graph's JSON into typed changes, without trusting its shape.
//!
//! A page that is not JSON, or lacks `value` and a next or delta link, fails as a whole so that the cycle
//! stops without advancing the cursor. A single entry of the wrong shape is skipped with a reason, so one
//! odd object cannot block the tenant.

use serde_json::{Map, Value};

use crate::cloud::{Field, GroupEntry, GroupFields, MemberChange, MemberKind, Removal, UserEntry, UserFields};

/// Why a page could not be used at all.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PageError {
    #[error("the response is not JSON: {0}")]
    NotJson(String),
    #[error("the response has no `value` array")]
    NoValue,
    #[error("the response has neither @odata.nextLink nor @odata.deltaLink")]
    NoLink,
}

/// Where the round goes after this page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextLink {
    /// More pages of this round follow.
    Next(String),
    /// The round is complete; use this link to start the next one.
    Delta(String),
}

/// One page of a delta round: raw entries and the link onwards.
#[derive(Debug)]
pub struct Page {
    pub entries: Vec<Value>,
    pub link: NextLink,
}

/// Splits a page body into its entries and link.
pub fn parse_page(body: &[u8]) -> Result<Page, PageError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| PageError::NotJson(e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(PageError::NoValue);
    };
    let Some(Value::Array(entries)) = map.remove("value") else {
        return Err(PageError::NoValue);
    };
    let link = match (map.get("@odata.nextLink"), map.get("@odata.deltaLink")) {
        (Some(Value::String(next)), _) => NextLink::Next(next.clone()),
        (None, Some(Value::String(delta))) => NextLink::Delta(delta.clone()),
        _ => return Err(PageError::NoLink),
    };
    Ok(Page { entries, link })
}

/// Why one entry could not be read, and which object it was about when its id could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct EntryError {
    /// The object's id: known unless the id itself is missing or malformed.
    pub id: Option<String>,
    pub reason: String,
}

impl EntryError {
    fn unnamed(reason: impl Into<String>) -> EntryError {
        EntryError { id: None, reason: reason.into() }
    }
}

/// A field's shape error, before the entry's id is attached.
#[derive(Debug)]
struct FieldError(String);

/// The kind of a member from its `@odata.type`.
fn member_kind(odata_type: Option<&str>) -> MemberKind {
    // Graph spells type names in more than one case (`#Microsoft.Graph.User` appears too).
    let name = odata_type.map(str::to_ascii_lowercase);
    match name.as_deref().map(|t| t.trim_start_matches("#microsoft.graph.")) {
        Some("user") => MemberKind::User,
        Some("group") => MemberKind::Group,
        Some("device") => MemberKind::Device,
        Some("serviceprincipal") => MemberKind::ServicePrincipal,
        Some("orgcontact") => MemberKind::OrgContact,
        _ => MemberKind::Other,
    }
}

/// The `$select` list for users.
pub const USER_SELECT: &str = "id,displayName,userPrincipalName,onPremisesSyncEnabled,onPremisesSecurityIdentifier";

/// Parses one group entry.
pub fn parse_group(entry: &Value) -> Result<GroupEntry, EntryError> {
    let map = entry.as_object().ok_or_else(|| EntryError::unnamed("group entry is not a JSON object"))?;
    let id = entry_id(map)?;
    let bad = |e: FieldError| EntryError { id: Some(id.clone()), reason: format!("group {id}: {}", e.0) };
    let writeback = writeback_fields(map).map_err(bad)?;
    let fields = GroupFields {
        display_name: string(map, "displayName").map_err(bad)?,
        description: string(map, "description").map_err(bad)?,
        mail_nickname: string(map, "mailNickname").map_err(bad)?,
        mail: string(map, "mail").map_err(bad)?,
        mail_enabled: boolean(map, "mailEnabled").map_err(bad)?,
        security_enabled: boolean(map, "securityEnabled").map_err(bad)?,
        group_types: strings(map, "groupTypes").map_err(bad)?,
        proxy_addresses: strings(map, "proxyAddresses").map_err(bad)?,
        on_premises_sync_enabled: boolean(map, "onPremisesSyncEnabled").map_err(bad)?,
        on_premises_security_identifier: string(map, "onPremisesSecurityIdentifier").map_err(bad)?,
        writeback_enabled: writeback.0,
        writeback_group_type: writeback.1,
    };
    let members = member_changes(map).map_err(bad)?;
    Ok(GroupEntry { removed: removal(map), members, fields, id })
}

/// Parses one user entry.
pub fn parse_user(entry: &Value) -> Result<UserEntry, EntryError> {
    let map = entry.as_object().ok_or_else(|| EntryError::unnamed("user entry is not a JSON object"))?;
    let id = entry_id(map)?;
    let bad = |e: FieldError| EntryError { id: Some(id.clone()), reason: format!("user {id}: {}", e.0) };
    let fields = UserFields {
        display_name: string(map, "displayName").map_err(bad)?,
        user_principal_name: string(map, "userPrincipalName").map_err(bad)?,
        on_premises_sync_enabled: boolean(map, "onPremisesSyncEnabled").map_err(bad)?,
        on_premises_security_identifier: string(map, "onPremisesSecurityIdentifier").map_err(bad)?,
    };
    Ok(UserEntry { removed: removal(map), fields, id })
}

/// The longest id accepted; Graph's ids are 36-character GUIDs, and the state stores ids of at most 255 bytes.
const MAX_ID_BYTES: usize = 255;

/// Graph's ids are GUIDs; an id with a control character (NUL separates state keys) or longer than
/// [`MAX_ID_BYTES`] is malformed.
fn usable_id(id: &str) -> bool {
    !id.trim().is_empty() && id.len() <= MAX_ID_BYTES && !id.chars().any(char::is_control)
}

fn entry_id(map: &Map<String, Value>) -> Result<String, EntryError> {
    match map.get("id") {
        Some(Value::String(id)) if usable_id(id) => Ok(id.clone()),
        Some(_) => Err(EntryError::unnamed(
            "entry has an id that is not a non-empty string of at most 255 bytes without control characters",
        )),
        None => Err(EntryError::unnamed("entry has no id")),
    }
}

fn removal(map: &Map<String, Value>) -> Option<Removal> {
    let removed = map.get("@removed")?;
    // Graph documents "changed" (soft delete) and "deleted"; treat anything else as the safer soft delete.
    match removed.get("reason").and_then(Value::as_str) {
        Some("deleted") => Some(Removal::Deleted),
        _ => Some(Removal::Changed),
    }
}

/// The membership changes of an entry. Items without an id are ignored; an id with a control character
/// makes the whole entry malformed rather than silently dropping that one change.
fn member_changes(map: &Map<String, Value>) -> Result<Vec<MemberChange>, FieldError> {
    let Some(Value::Array(items)) = map.get("members@delta") else {
        return Ok(Vec::new());
    };
    let mut changes = Vec::with_capacity(items.len());
    for item in items {
        let Some(id) = item.get("id").and_then(Value::as_str).filter(|id| !id.trim().is_empty()) else { continue };
        if !usable_id(id) {
            return Err(FieldError(
                "members@delta holds an id longer than 255 bytes or with a control character".into(),
            ));
        }
        let kind = member_kind(item.get("@odata.type").and_then(Value::as_str));
        changes.push(MemberChange { id: id.to_string(), kind, removed: item.get("@removed").is_some() });
    }
    Ok(changes)
}

fn writeback_fields(map: &Map<String, Value>) -> Result<(Field<bool>, Field<String>), FieldError> {
    match map.get("writebackConfiguration") {
        None => Ok((Field::Absent, Field::Absent)),
        Some(Value::Null) => Ok((Field::Null, Field::Null)),
        Some(Value::Object(config)) => Ok((boolean(config, "isEnabled")?, string(config, "onPremisesGroupType")?)),
        Some(_) => Err(FieldError("writebackConfiguration is not an object".into())),
    }
}

fn string(map: &Map<String, Value>, key: &str) -> Result<Field<String>, FieldError> {
    match map.get(key) {
        None => Ok(Field::Absent),
        Some(Value::Null) => Ok(Field::Null),
        Some(Value::String(s)) => Ok(Field::Set(s.clone())),
        Some(_) => Err(FieldError(format!("{key} is not a string"))),
    }
}

fn boolean(map: &Map<String, Value>, key: &str) -> Result<Field<bool>, FieldError> {
    match map.get(key) {
        None => Ok(Field::Absent),
        Some(Value::Null) => Ok(Field::Null),
        Some(Value::Bool(b)) => Ok(Field::Set(*b)),
        Some(_) => Err(FieldError(format!("{key} is not true, false or null"))),
    }
}

fn strings(map: &Map<String, Value>, key: &str) -> Result<Field<Vec<String>>, FieldError> {
    match map.get(key) {
        None => Ok(Field::Absent),
        Some(Value::Null) => Ok(Field::Null),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| FieldError(format!("{key} holds a non-string"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Field::Set),
        Some(_) => Err(FieldError(format!("{key} is not a list"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn page_links_are_read() {
        let page = parse_page(br#"{"value":[],"@odata.nextLink":"n"}"#).unwrap();
        assert_eq!(page.link, NextLink::Next("n".into()));
        let page = parse_page(br#"{"value":[{"id":"a"}],"@odata.deltaLink":"d"}"#).unwrap();
        assert_eq!(page.link, NextLink::Delta("d".into()));
        assert_eq!(page.entries.len(), 1);
    }

    #[test]
    fn broken_pages_fail_whole() {
        assert!(matches!(parse_page(br#"{"value":[{"id":"a"}"#), Err(PageError::NotJson(_))));
        assert_eq!(parse_page(br#"{"@odata.deltaLink":"d"}"#).unwrap_err(), PageError::NoValue);
        assert_eq!(parse_page(br#"{"value":[]}"#).unwrap_err(), PageError::NoLink);
        assert_eq!(parse_page(br#"[1,2]"#).unwrap_err(), PageError::NoValue);
    }

    #[test]
    fn absent_null_and_set_are_distinct() {
        let entry = parse_group(&json!({"id":"g","displayName":"A","description":null})).unwrap();
        assert_eq!(entry.fields.display_name, Field::Set("A".into()));
        assert_eq!(entry.fields.description, Field::Null);
        assert_eq!(entry.fields.mail, Field::Absent);
        let mut stored = Some("old".to_string());
        entry.fields.mail.clone().apply_to(&mut stored);
        assert_eq!(stored.as_deref(), Some("old"));
        entry.fields.description.apply_to(&mut stored);
        assert_eq!(stored, None);
    }

    #[test]
    fn members_and_removals_are_typed() {
        let entry = parse_group(&json!({
            "id": "g",
            "writebackConfiguration": {"isEnabled": true, "onPremisesGroupType": null},
            "members@delta": [
                {"@odata.type": "#microsoft.graph.user", "id": "u1"},
                {"@odata.type": "#microsoft.graph.device", "id": "d1", "@removed": {"reason": "deleted"}},
                {"@odata.type": "#microsoft.graph.group"},
            ]
        }))
        .unwrap();
        assert_eq!(entry.fields.writeback_enabled, Field::Set(true));
        assert_eq!(entry.fields.writeback_group_type, Field::Null);
        assert_eq!(entry.members.len(), 2);
        assert_eq!(entry.members[1], MemberChange { id: "d1".into(), kind: MemberKind::Device, removed: true });
        let odd_case = parse_group(&json!({"id": "g", "members@delta": [
            {"@odata.type": "#Microsoft.Graph.User", "id": "u1"},
            {"@odata.type": "#microsoft.graph.ServicePrincipal", "id": "s1"},
        ]}))
        .unwrap();
        assert_eq!(odd_case.members[0].kind, MemberKind::User);
        assert_eq!(odd_case.members[1].kind, MemberKind::ServicePrincipal);
        let gone = parse_group(&json!({"id":"g","@removed":{"reason":"deleted"}})).unwrap();
        assert_eq!(gone.removed, Some(Removal::Deleted));
        let soft = parse_group(&json!({"id":"g","@removed":{"reason":"changed"}})).unwrap();
        assert_eq!(soft.removed, Some(Removal::Changed));
    }

    #[test]
    fn wrong_shapes_are_named() {
        assert_eq!(parse_group(&json!({"displayName":"x"})).unwrap_err(), EntryError::unnamed("entry has no id"));
        let err = parse_group(&json!({"id":"g","mailEnabled":"yes"})).unwrap_err();
        assert_eq!(err.reason, "group g: mailEnabled is not true, false or null");
        assert_eq!(err.id.as_deref(), Some("g"), "a bad field still names its object");
        assert!(parse_user(&json!("just a string")).is_err());
        assert!(parse_group(&json!({"id":"g","groupTypes":[1]})).is_err());
    }
}
