//! What a delta round contains: the query a round answers, and the entries
//! computed from the tenant for an initial round or for the changes since a
//! delta token.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value, json};

use super::model::{BETA_ONLY_PROPERTIES, GROUP_PROPERTIES, Group, MemberRef, USER_PROPERTIES, User};
use super::tenant::{Change, ChangeKind, ObjectKind, Tenant};

/// The collection a delta query tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resource {
    Groups,
    Users,
}

impl Resource {
    /// URL segment, also the entity-set name in `@odata.context`.
    pub(crate) fn segment(self) -> &'static str {
        match self {
            Self::Groups => "groups",
            Self::Users => "users",
        }
    }

    fn type_name(self) -> &'static str {
        match self {
            Self::Groups => "microsoft.graph.group",
            Self::Users => "microsoft.graph.user",
        }
    }

    fn kind(self) -> ObjectKind {
        match self {
            Self::Groups => ObjectKind::Group,
            Self::Users => ObjectKind::User,
        }
    }

    fn catalog(self) -> &'static [&'static str] {
        match self {
            Self::Groups => &GROUP_PROPERTIES,
            Self::Users => &USER_PROPERTIES,
        }
    }
}

/// Graph API version, taken from the first path segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApiVersion {
    Beta,
    V1,
}

impl ApiVersion {
    /// The version a request path starts with, if any.
    pub(crate) fn from_path(path: &str) -> Option<Self> {
        let first = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        match first.to_ascii_lowercase().as_str() {
            "beta" => Some(Self::Beta),
            "v1.0" => Some(Self::V1),
            _ => None,
        }
    }

    pub(crate) fn segment(self) -> &'static str {
        match self {
            Self::Beta => "beta",
            Self::V1 => "v1.0",
        }
    }

    /// Whether the property exists in this version's schema.
    pub(crate) fn has_property(self, name: &str) -> bool {
        self == Self::Beta || !BETA_ONLY_PROPERTIES.contains(&name)
    }
}

/// A delta query as the initial request stated it; tokens carry it forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Query {
    pub(crate) resource: Resource,
    pub(crate) version: ApiVersion,
    /// Canonical property names from `$select` (may include `id` and
    /// `members`); None means Graph's default of every property.
    pub(crate) select: Option<Vec<&'static str>>,
}

impl Query {
    /// Validates `$select` (case-insensitively, as Graph does) against the
    /// version's schema. `expand_members` is the older `$expand=members` form.
    pub(crate) fn new(
        resource: Resource,
        version: ApiVersion,
        select: Option<&str>,
        expand_members: bool,
    ) -> Result<Self, String> {
        if expand_members && resource != Resource::Groups {
            return Err(format!("Could not find a property named 'members' on type '{}'.", resource.type_name()));
        }
        let Some(select) = select else {
            return Ok(Self { resource, version, select: None });
        };
        let mut names = Vec::new();
        for raw in select.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let name = canonical_name(resource, version, raw).ok_or_else(|| {
                format!("Could not find a property named '{raw}' on type '{}'.", resource.type_name())
            })?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if expand_members && !names.contains(&"members") {
            names.push("members");
        }
        Ok(Self { resource, version, select: Some(names) })
    }

    /// Properties an entry carries besides `id`, in schema order.
    pub(crate) fn properties(&self) -> Vec<&'static str> {
        let selected = |name: &&str| self.select.as_ref().is_none_or(|s| s.contains(name));
        self.resource.catalog().iter().copied().filter(|n| self.version.has_property(n)).filter(selected).collect()
    }

    /// Whether membership is tracked (`members` selected, or no `$select`).
    pub(crate) fn tracks_members(&self) -> bool {
        self.resource == Resource::Groups && self.select.as_ref().is_none_or(|s| s.contains(&"members"))
    }

    /// The `$select` value, for URLs.
    pub(crate) fn select_param(&self) -> Option<String> {
        self.select.as_ref().map(|s| s.join(","))
    }

    /// `{base}/{version}/{resource}/delta`.
    pub(crate) fn delta_url(&self, base_url: &str) -> String {
        format!("{base_url}/{}/{}/delta", self.version.segment(), self.resource.segment())
    }

    /// `@odata.context` of a page, naming the selected properties.
    pub(crate) fn context_url(&self, base_url: &str) -> String {
        let selection = self.select_param().map(|s| format!("({s})")).unwrap_or_default();
        format!("{base_url}/{}/$metadata#{}{selection}", self.version.segment(), self.resource.segment())
    }

    /// The original query with an empty `$deltatoken`: where a 410 sends the
    /// client to start over.
    pub(crate) fn fresh_start_url(&self, base_url: &str) -> String {
        let select = self.select_param().map(|s| format!("$select={s}&")).unwrap_or_default();
        format!("{}?{select}$deltatoken=", self.delta_url(base_url))
    }
}

fn canonical_name(resource: Resource, version: ApiVersion, raw: &str) -> Option<&'static str> {
    let navigation: &[&'static str] = if resource == Resource::Groups { &["id", "members"] } else { &["id"] };
    navigation
        .iter()
        .chain(resource.catalog())
        .copied()
        .filter(|n| version.has_property(n))
        .find(|n| n.eq_ignore_ascii_case(raw))
}

/// How entries of a round are shaped.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryOptions {
    /// Member changes one entry carries before the object is repeated.
    pub(crate) members_per_entry: usize,
    /// Updated objects carry only their changed properties.
    pub(crate) minimal: bool,
    /// Initial rounds also list soft-deleted objects as `@removed`.
    pub(crate) report_deleted_initially: bool,
}

/// What a round says about one object, before it is split into entries.
enum ObjectDelta {
    Present { id: String, properties: Map<String, Value>, members: Vec<Value> },
    Removed { id: String, reason: &'static str },
}

/// A directory object as delta renders it.
trait Tracked {
    fn id(&self) -> &str;
    fn property(&self, name: &str) -> Option<Value>;
    fn member_refs(&self) -> &[MemberRef];
}

impl Tracked for Group {
    fn id(&self) -> &str {
        &self.id
    }
    fn property(&self, name: &str) -> Option<Value> {
        Group::property(self, name)
    }
    fn member_refs(&self) -> &[MemberRef] {
        &self.members
    }
}

impl Tracked for User {
    fn id(&self) -> &str {
        &self.id
    }
    fn property(&self, name: &str) -> Option<Value> {
        User::property(self, name)
    }
    fn member_refs(&self) -> &[MemberRef] {
        &[]
    }
}

fn live_objects(tenant: &Tenant, resource: Resource) -> Vec<&dyn Tracked> {
    match resource {
        Resource::Groups => tenant.groups().map(|g| g as &dyn Tracked).collect(),
        Resource::Users => tenant.users().map(|u| u as &dyn Tracked).collect(),
    }
}

fn live_object<'a>(tenant: &'a Tenant, resource: Resource, id: &str) -> Option<&'a dyn Tracked> {
    match resource {
        Resource::Groups => tenant.group(id).map(|g| g as &dyn Tracked),
        Resource::Users => tenant.user(id).map(|u| u as &dyn Tracked),
    }
}

fn soft_deleted_ids(tenant: &Tenant, resource: Resource) -> Vec<String> {
    match resource {
        Resource::Groups => tenant.deleted_groups().map(|g| g.id.clone()).collect(),
        Resource::Users => tenant.deleted_users().map(|u| u.id.clone()).collect(),
    }
}

fn is_soft_deleted(tenant: &Tenant, resource: Resource, id: &str) -> bool {
    match resource {
        Resource::Groups => tenant.deleted_group(id).is_some(),
        Resource::Users => tenant.deleted_user(id).is_some(),
    }
}

fn render_properties(object: &dyn Tracked, names: &[&'static str]) -> Map<String, Value> {
    names.iter().filter_map(|n| object.property(n).map(|v| ((*n).to_owned(), v))).collect()
}

/// The properties that are set: Graph leaves unset (null) properties out of an object's full entry.
fn render_set_properties(object: &dyn Tracked, names: &[&'static str]) -> Map<String, Value> {
    let mut properties = render_properties(object, names);
    properties.retain(|_, value| !value.is_null());
    properties
}

/// The object in full, members listed as additions.
fn full_delta(object: &dyn Tracked, query: &Query) -> ObjectDelta {
    let members = if query.tracks_members() {
        object.member_refs().iter().map(|m| m.to_delta(false)).collect()
    } else {
        Vec::new()
    };
    ObjectDelta::Present {
        id: object.id().to_owned(),
        properties: render_set_properties(object, &query.properties()),
        members,
    }
}

/// Entries of an initial round: every live object in full.
pub(crate) fn initial_entries(tenant: &Tenant, query: &Query, options: EntryOptions) -> Vec<Value> {
    let mut deltas: Vec<ObjectDelta> =
        live_objects(tenant, query.resource).into_iter().map(|o| full_delta(o, query)).collect();
    if options.report_deleted_initially {
        let removed = soft_deleted_ids(tenant, query.resource).into_iter();
        deltas.extend(removed.map(|id| ObjectDelta::Removed { id, reason: "changed" }));
    }
    split_entries(deltas, options.members_per_entry)
}

/// The net effect of a window of the change log on one object.
#[derive(Default)]
struct Touched {
    created: bool,
    properties: BTreeSet<&'static str>,
    /// Last membership operation per member: (member, added?).
    members: Vec<(MemberRef, bool)>,
}

impl Touched {
    fn note(&mut self, what: &ChangeKind) {
        match what {
            ChangeKind::Created => self.created = true,
            ChangeKind::Updated(names) => self.properties.extend(names.iter().copied()),
            ChangeKind::MemberAdded(member) => self.note_member(member, true),
            ChangeKind::MemberRemoved(member) => self.note_member(member, false),
            // Whether the object still exists is read from the tenant itself.
            ChangeKind::SoftDeleted | ChangeKind::HardDeleted => {}
        }
    }

    fn note_member(&mut self, member: &MemberRef, added: bool) {
        match self.members.iter_mut().find(|(m, _)| m.id == member.id) {
            Some(slot) => *slot = (member.clone(), added),
            None => self.members.push((member.clone(), added)),
        }
    }
}

/// Folds the changes to objects of `kind` per object, in first-touched order.
fn summarize<'a>(changes: impl Iterator<Item = &'a Change>, kind: ObjectKind) -> Vec<(String, Touched)> {
    let mut touched: Vec<(String, Touched)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for change in changes.filter(|c| c.kind == kind) {
        let slot = *index.entry(change.id.clone()).or_insert_with(|| {
            touched.push((change.id.clone(), Touched::default()));
            touched.len() - 1
        });
        touched[slot].1.note(&change.what);
    }
    touched
}

/// What an update round says about a live object that was not created in the
/// window, or None if nothing the query tracks changed.
fn update_delta(object: &dyn Tracked, touched: Touched, query: &Query, minimal: bool) -> Option<ObjectDelta> {
    let tracked = query.properties();
    let changed: Vec<&'static str> = tracked.iter().copied().filter(|n| touched.properties.contains(n)).collect();
    let members: Vec<Value> = if query.tracks_members() {
        touched.members.iter().map(|(m, added)| m.to_delta(!added)).collect()
    } else {
        Vec::new()
    };
    if changed.is_empty() && members.is_empty() {
        return None;
    }
    // A changed property is sent even when it became null (that is how a clear is told); without
    // `Prefer: return=minimal` the other selected properties come too, those that are set.
    let mut properties = if minimal { Map::new() } else { render_set_properties(object, &tracked) };
    properties.extend(render_properties(object, &changed));
    Some(ObjectDelta::Present { id: object.id().to_owned(), properties, members })
}

/// Entries of a round that follows a delta token issued at `since`.
pub(crate) fn change_entries(tenant: &Tenant, query: &Query, since: u64, options: EntryOptions) -> Vec<Value> {
    let mut deltas = Vec::new();
    for (id, touched) in summarize(tenant.changes_since(since), query.resource.kind()) {
        let delta = match live_object(tenant, query.resource, &id) {
            Some(object) if touched.created => Some(full_delta(object, query)),
            Some(object) => update_delta(object, touched, query, options.minimal),
            None if is_soft_deleted(tenant, query.resource, &id) => {
                Some(ObjectDelta::Removed { id, reason: "changed" })
            }
            None => Some(ObjectDelta::Removed { id, reason: "deleted" }),
        };
        deltas.extend(delta);
    }
    split_entries(deltas, options.members_per_entry)
}

/// Turns object deltas into entries. An object with more member changes than
/// fit in one entry is repeated, each copy with the same properties and the
/// next chunk of `members@delta`, as Graph does for large groups.
fn split_entries(deltas: Vec<ObjectDelta>, members_per_entry: usize) -> Vec<Value> {
    let mut entries = Vec::new();
    for delta in deltas {
        match delta {
            ObjectDelta::Removed { id, reason } => {
                entries.push(json!({ "id": id, "@removed": { "reason": reason } }));
            }
            ObjectDelta::Present { id, properties, members } => {
                let mut base = Map::new();
                base.insert("id".to_owned(), Value::String(id));
                base.extend(properties);
                if members.is_empty() {
                    entries.push(Value::Object(base));
                    continue;
                }
                for chunk in members.chunks(members_per_entry.max(1)) {
                    let mut entry = base.clone();
                    entry.insert("members@delta".to_owned(), Value::Array(chunk.to_vec()));
                    entries.push(Value::Object(entry));
                }
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graphsim::model::{GroupPatch, User};

    const OPTIONS: EntryOptions = EntryOptions { members_per_entry: 2, minimal: true, report_deleted_initially: false };

    fn groups_query(select: &str) -> Query {
        Query::new(Resource::Groups, ApiVersion::Beta, Some(select), false).expect("valid select")
    }

    #[test]
    fn select_is_validated_per_version() {
        let beta = groups_query("DisplayName,writebackConfiguration,members");
        assert_eq!(beta.select, Some(vec!["displayName", "writebackConfiguration", "members"]));
        assert!(beta.tracks_members());
        let v1 = Query::new(Resource::Groups, ApiVersion::V1, Some("writebackConfiguration"), false);
        assert!(v1.is_err_and(|e| e.contains("writebackConfiguration")));
        let users = Query::new(Resource::Users, ApiVersion::V1, Some("members"), false);
        assert!(users.is_err());
    }

    #[test]
    fn initial_round_splits_large_groups_and_repeats_properties() {
        let mut tenant = Tenant::new(false);
        let members = (0..5).map(|i| MemberRef::user(format!("u{i}"))).collect();
        tenant.add_group(Group { members, ..Group::security("g", "G") }).expect("add");
        let entries = initial_entries(&tenant, &groups_query("displayName,members"), OPTIONS);
        assert_eq!(entries.len(), 3);
        assert!(entries.iter().all(|e| e["displayName"] == "G" && e["id"] == "g"));
        let counts: Vec<usize> = entries.iter().map(|e| e["members@delta"].as_array().map_or(0, Vec::len)).collect();
        assert_eq!(counts, vec![2, 2, 1]);
    }

    #[test]
    fn update_round_reports_net_member_changes_and_changed_properties() {
        let mut tenant = Tenant::new(false);
        let group = Group { members: vec![MemberRef::user("a")], ..Group::security("g", "G") };
        tenant.add_group(group).expect("add");
        let since = tenant.seq();
        tenant.add_members("g", &[MemberRef::user("b")]).expect("add b");
        tenant.remove_members("g", &["a"]).expect("remove a");
        let patch = GroupPatch { description: Some(Some("new".into())), ..GroupPatch::default() };
        tenant.update_group("g", patch).expect("patch");
        let patch = GroupPatch { mail: Some(Some("x@contoso.com".into())), ..GroupPatch::default() };
        tenant.update_group("g", patch).expect("untracked patch");

        let entries = change_entries(&tenant, &groups_query("displayName,description,members"), since, OPTIONS);
        assert_eq!(entries.len(), 1);
        let entry = &entries[0];
        assert_eq!(entry["description"], "new");
        assert!(entry.get("displayName").is_none(), "unchanged property sent in minimal mode: {entry}");
        assert_eq!(entry["members@delta"][0], json!({"@odata.type": "#microsoft.graph.user", "id": "b"}));
        assert_eq!(entry["members@delta"][1]["@removed"]["reason"], "deleted");

        let full = EntryOptions { minimal: false, ..OPTIONS };
        let entries = change_entries(&tenant, &groups_query("displayName,description,members"), since, full);
        assert_eq!(entries[0]["displayName"], "G");
    }

    #[test]
    fn full_entries_leave_unset_properties_out_and_updates_resend_the_set_ones() {
        let mut tenant = Tenant::new(false);
        let group = Group { description: Some("d".into()), ..Group::security("g", "G") };
        tenant.add_group(group).expect("add");
        let query = groups_query("displayName,description,mail");
        let entries = initial_entries(&tenant, &query, OPTIONS);
        assert!(entries[0].get("mail").is_none(), "an unset property is left out: {}", entries[0]);
        assert_eq!(entries[0]["description"], "d");

        let since = tenant.seq();
        let patch = GroupPatch { description: Some(None), ..GroupPatch::default() };
        tenant.update_group("g", patch).expect("clear");
        let full = EntryOptions { minimal: false, ..OPTIONS };
        let entry = &change_entries(&tenant, &query, since, full)[0];
        assert!(entry["description"].is_null(), "a cleared property is sent as null: {entry}");
        assert_eq!(entry["displayName"], "G", "an update re-sends the other selected properties");
        assert!(entry.get("mail").is_none(), "but not unset ones: {entry}");
        let entry = &change_entries(&tenant, &query, since, OPTIONS)[0];
        assert!(entry["description"].is_null() && entry.get("displayName").is_none(), "{entry}");

        let entries = initial_entries(&tenant, &query, OPTIONS);
        assert!(entries[0].get("description").is_none(), "{}", entries[0]);
    }

    #[test]
    fn a_soft_deleted_user_keeps_its_memberships_until_the_hard_delete() {
        let mut tenant = Tenant::new(false);
        tenant.add_user(User { id: "u".into(), ..User::default() }).expect("user");
        let group = Group { members: vec![MemberRef::user("u")], ..Group::security("g", "G") };
        tenant.add_group(group).expect("add");
        let since = tenant.seq();
        tenant.delete_user("u", false).expect("soft delete");
        let query = groups_query("displayName,members");
        assert!(change_entries(&tenant, &query, since, OPTIONS).is_empty(), "group delta says nothing");
        assert_eq!(tenant.group("g").expect("g").members.len(), 1);
        tenant.restore_user("u").expect("restore");
        assert_eq!(tenant.group("g").expect("g").members.len(), 1, "a restore keeps them");
        tenant.delete_user("u", true).expect("hard delete");
        let entries = change_entries(&tenant, &query, since, OPTIONS);
        assert_eq!(entries[0]["members@delta"][0]["@removed"]["reason"], "deleted");
    }

    #[test]
    fn untracked_changes_do_not_surface_the_object() {
        let mut tenant = Tenant::new(false);
        tenant.add_group(Group::security("g", "G")).expect("add");
        let since = tenant.seq();
        tenant.add_members("g", &[MemberRef::user("b")]).expect("add b");
        assert!(change_entries(&tenant, &groups_query("displayName"), since, OPTIONS).is_empty());
    }

    #[test]
    fn deletions_use_the_documented_reasons() {
        let mut tenant = Tenant::new(false);
        tenant.add_group(Group::unified("m", "M", "m")).expect("add");
        tenant.add_group(Group::security("s", "S")).expect("add");
        let since = tenant.seq();
        tenant.soft_delete_group("m").expect("soft");
        tenant.soft_delete_group("s").expect("permanent");
        let entries = change_entries(&tenant, &groups_query("displayName"), since, OPTIONS);
        assert_eq!(
            entries,
            vec![
                json!({"id": "m", "@removed": {"reason": "changed"}}),
                json!({"id": "s", "@removed": {"reason": "deleted"}})
            ]
        );
    }
}
