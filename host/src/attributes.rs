//! The one table of group attributes: which AD attribute comes from which Graph property, which the agent
//! writes and reads back, which exist only in some schemas or only on mail-enabled kinds, and which a transform
//! may or may never write.
//!
//! Everything that lists attributes elsewhere is derived from [`ATTRIBUTES`]: the Graph `$select`, the
//! attributes read from each managed group, the schema probe, the default transform allow-list and the
//! forbidden list. Adding an attribute that flows from Graph into AD is one row here, plus its Graph parsing
//! (`cloud::GroupFields`, `cloud::CloudGroup`, `graph::delta::parse_group`) and the tests.

use crate::cloud::CloudGroup;

/// Whether a tenant's transforms may write an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transforms {
    /// Never: it carries identity, membership, type or security, and a transform that sets it is refused.
    Never,
    /// Unless the tenant lists its own `transform_attributes`. (An attribute the table does not name may be
    /// written only when the tenant lists it.)
    ByDefault,
}

/// Where the value the agent writes comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// The agent does not write it as a value (it may read it, or only a transform may write it).
    None,
    /// The naming policy's sAMAccountName.
    Placement,
    /// The group's kind and scope.
    GroupType,
    /// The anchor, `Group_<id>`.
    Anchor,
    /// Copied from the cloud group, and cut where AD would refuse it.
    Cloud { value: fn(&CloudGroup) -> Vec<String>, cut: Cut },
}

/// Where a copied value is cut, so that the DC does not refuse the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Never.
    None,
    /// After this many characters.
    Chars(usize),
    /// After this many UTF-16 units, as AD counts rangeUpper.
    Utf16(usize),
}

/// One attribute of a group object.
#[derive(Debug, Clone, Copy)]
pub struct Attribute {
    /// Its lDAPDisplayName.
    pub ad: &'static str,
    /// The Graph group property its value comes from, when one does.
    pub graph: Option<&'static str>,
    /// What the agent writes into it.
    pub source: Source,
    /// Read from every managed group although the agent does not write it as a value (every written attribute
    /// is read too, so that a plan compares instead of rewriting).
    pub read: bool,
    /// Written only when the directory's schema defines it (Exchange's or a newer Windows Server's schema).
    pub schema_optional: bool,
    /// Carries a value only on mail-enabled kinds; on a security group it is cleared.
    pub mail_only: bool,
    /// Whether transforms may write it.
    pub transforms: Transforms,
}

impl Attribute {
    /// Whether the agent itself writes a value into it.
    pub fn written(&self) -> bool {
        !matches!(self.source, Source::None)
    }
}

const fn plain(ad: &'static str, transforms: Transforms) -> Attribute {
    Attribute {
        ad,
        graph: None,
        source: Source::None,
        read: false,
        schema_optional: false,
        mail_only: false,
        transforms,
    }
}

const fn never(ad: &'static str) -> Attribute {
    plain(ad, Transforms::Never)
}

const fn read_only(ad: &'static str) -> Attribute {
    Attribute { read: true, ..never(ad) }
}

/// Longest description written, in characters; longer text is cut.
pub const MAX_DESCRIPTION: usize = 448;
/// AD's limit (rangeUpper) for displayName, in UTF-16 units; longer text is cut rather than refused by the DC.
pub const MAX_DISPLAY_NAME: usize = 256;

fn one(value: &Option<String>) -> Vec<String> {
    value.iter().filter(|s| !s.is_empty()).cloned().collect()
}

/// Every attribute the agent knows about. Order is the order in which they are read and listed.
pub const ATTRIBUTES: &[Attribute] = &[
    Attribute { source: Source::Placement, ..never("sAMAccountName") },
    Attribute { source: Source::GroupType, ..never("groupType") },
    Attribute { graph: Some("id"), source: Source::Anchor, ..never("adminDescription") },
    Attribute {
        graph: Some("displayName"),
        source: Source::Cloud { value: |g| one(&g.display_name), cut: Cut::Utf16(MAX_DISPLAY_NAME) },
        ..plain("displayName", Transforms::ByDefault)
    },
    Attribute {
        graph: Some("description"),
        source: Source::Cloud { value: |g| one(&g.description), cut: Cut::Chars(MAX_DESCRIPTION) },
        ..plain("description", Transforms::ByDefault)
    },
    Attribute {
        graph: Some("mail"),
        source: Source::Cloud { value: |g| one(&g.mail), cut: Cut::None },
        mail_only: true,
        ..plain("mail", Transforms::ByDefault)
    },
    Attribute {
        graph: Some("proxyAddresses"),
        source: Source::Cloud { value: |g| g.proxy_addresses.clone().unwrap_or_default(), cut: Cut::None },
        mail_only: true,
        ..plain("proxyAddresses", Transforms::ByDefault)
    },
    Attribute {
        graph: Some("mailNickname"),
        source: Source::Cloud { value: |g| one(&g.mail_nickname), cut: Cut::None },
        mail_only: true,
        schema_optional: true,
        ..plain("mailNickname", Transforms::ByDefault)
    },
    Attribute {
        graph: Some("id"),
        source: Source::Anchor,
        schema_optional: true,
        ..never("msDS-ExternalDirectoryObjectId")
    },
    // Read for the plan: the name, the protection mark, the members (written value by value).
    read_only("cn"),
    read_only("adminCount"),
    read_only("member"),
    // Free for transforms by default.
    plain("info", Transforms::ByDefault),
    plain("department", Transforms::ByDefault),
    plain("company", Transforms::ByDefault),
    plain("extensionAttribute1", Transforms::ByDefault),
    plain("extensionAttribute2", Transforms::ByDefault),
    plain("extensionAttribute3", Transforms::ByDefault),
    plain("extensionAttribute4", Transforms::ByDefault),
    plain("extensionAttribute5", Transforms::ByDefault),
    plain("extensionAttribute6", Transforms::ByDefault),
    plain("extensionAttribute7", Transforms::ByDefault),
    plain("extensionAttribute8", Transforms::ByDefault),
    plain("extensionAttribute9", Transforms::ByDefault),
    plain("extensionAttribute10", Transforms::ByDefault),
    plain("extensionAttribute11", Transforms::ByDefault),
    plain("extensionAttribute12", Transforms::ByDefault),
    plain("extensionAttribute13", Transforms::ByDefault),
    plain("extensionAttribute14", Transforms::ByDefault),
    plain("extensionAttribute15", Transforms::ByDefault),
    // Never written by a transform: identity, type, placement.
    never("objectClass"),
    never("nTSecurityDescriptor"),
    never("name"),
    never("distinguishedName"),
    never("objectGUID"),
    never("objectSid"),
    // Protection, ownership and Unix membership.
    never("managedBy"),
    never("memberUid"),
    never("gidNumber"),
    never("msSFU30PosixMember"),
    // Linked attributes: each value is a link to another object.
    never("memberOf"),
    never("manager"),
    never("directReports"),
    never("msDS-MembersForAzRole"),
    never("msDS-NonMembers"),
    // Security and delegation.
    never("sIDHistory"),
    never("primaryGroupID"),
    never("userAccountControl"),
    never("servicePrincipalName"),
    never("msDS-AllowedToDelegateTo"),
    never("msDS-AllowedToActOnBehalfOfOtherIdentity"),
    never("msDS-KeyCredentialLink"),
    never("altSecurityIdentities"),
    never("userPassword"),
    never("unicodePwd"),
    never("isCriticalSystemObject"),
    never("systemFlags"),
    never("objectCategory"),
    never("instanceType"),
];

/// Graph group properties the model decides by (scope, kind, membership, ownership), besides those the
/// attributes are copied from.
const GRAPH_INPUTS: &[&str] = &[
    "id",
    "mailEnabled",
    "securityEnabled",
    "groupTypes",
    "onPremisesSyncEnabled",
    "onPremisesSecurityIdentifier",
    "writebackConfiguration",
    "members",
];

/// Which of the [`schema_optional`] attributes the directory's schema defines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaSupport {
    /// Lower-case names of the optional attributes present.
    present: Vec<String>,
}

impl SchemaSupport {
    /// The schema defines these (of the optional attributes; others are ignored).
    pub fn with<'a>(names: impl IntoIterator<Item = &'a str>) -> SchemaSupport {
        let mut present: Vec<String> =
            names.into_iter().filter_map(find).filter(|a| a.schema_optional).map(|a| a.ad.to_lowercase()).collect();
        present.sort();
        present.dedup();
        SchemaSupport { present }
    }

    /// A schema with every optional attribute (Exchange's and Windows Server 2016's).
    pub fn full() -> SchemaSupport {
        SchemaSupport::with(schema_optional())
    }

    /// Whether the schema defines `name`; attributes every schema has are always defined.
    pub fn has(&self, name: &str) -> bool {
        find(name).is_none_or(|attribute| self.supports(attribute))
    }

    /// Whether the schema defines `attribute`: no lookup by name, for the model's path through every group.
    pub fn supports(&self, attribute: &Attribute) -> bool {
        !attribute.schema_optional || self.present.iter().any(|p| p.eq_ignore_ascii_case(attribute.ad))
    }
}

/// The entry for `name`, matched as LDAP matches names (without regard to case).
pub fn find(name: &str) -> Option<&'static Attribute> {
    ATTRIBUTES.iter().find(|a| a.ad.eq_ignore_ascii_case(name))
}

/// The attributes the agent writes a value into.
pub fn written() -> impl Iterator<Item = &'static Attribute> {
    ATTRIBUTES.iter().filter(|a| a.written())
}

/// The attributes read from every managed group.
pub fn read_back() -> impl Iterator<Item = &'static str> {
    ATTRIBUTES.iter().filter(|a| a.read || a.written()).map(|a| a.ad)
}

/// The attributes the schema may lack, and which are written only where it has them.
pub fn schema_optional() -> impl Iterator<Item = &'static str> {
    ATTRIBUTES.iter().filter(|a| a.schema_optional).map(|a| a.ad)
}

/// The attributes a transform may write when the tenant sets no `transform_attributes`.
pub fn transform_defaults() -> impl Iterator<Item = &'static str> {
    ATTRIBUTES.iter().filter(|a| a.transforms == Transforms::ByDefault).map(|a| a.ad)
}

/// Whether a transform may never write `name`, whatever the tenant lists.
pub fn forbidden_to_transforms(name: &str) -> bool {
    find(name).is_some_and(|a| a.transforms == Transforms::Never)
}

/// Whether `name` is an attribute's name (a letter, then letters, digits and hyphens), as LDAP's `descr` form
/// is. An OID (`2.5.4.31` is `member`) or a name with options (`member;range=0-9`) would slip past the
/// forbidden list, so neither is accepted.
pub fn is_attribute_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The `$select` of the groups delta query: every Graph property an attribute comes from, and the inputs.
/// A cursor records the select it was made with, so a change here starts a full round by itself.
pub fn group_select() -> String {
    let mut names: Vec<&str> = Vec::new();
    for name in GRAPH_INPUTS.iter().copied().chain(ATTRIBUTES.iter().filter_map(|a| a.graph)) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        for (i, a) in ATTRIBUTES.iter().enumerate() {
            assert!(is_attribute_name(a.ad), "{}", a.ad);
            assert!(!ATTRIBUTES[..i].iter().any(|b| b.ad.eq_ignore_ascii_case(a.ad)), "{} twice", a.ad);
        }
    }

    #[test]
    fn identity_and_membership_are_forbidden_to_transforms() {
        for name in ["member", "MEMBER", "groupType", "adminDescription", "sAMAccountName", "cn", "objectSid"] {
            assert!(forbidden_to_transforms(name), "{name}");
        }
        assert!(!forbidden_to_transforms("extensionAttribute1"));
        assert!(!forbidden_to_transforms("info"));
        assert!(transform_defaults().all(|name| !forbidden_to_transforms(name)));
    }

    #[test]
    fn every_written_attribute_is_read_back_and_every_copied_one_selected() {
        let read: Vec<&str> = read_back().collect();
        let select = group_select();
        for a in written() {
            assert!(read.contains(&a.ad), "{} is written but never read back", a.ad);
            if let Some(property) = a.graph {
                assert!(select.split(',').any(|s| s == property), "{property} is not selected");
            }
        }
        assert!(select.split(',').any(|s| s == "members"));
    }

    #[test]
    fn attribute_names_are_descr_only() {
        assert!(is_attribute_name("extensionAttribute1"));
        assert!(is_attribute_name("msDS-ExternalDirectoryObjectId"));
        assert!(!is_attribute_name("2.5.4.31"));
        assert!(!is_attribute_name("member;range=0-9"));
        assert!(!is_attribute_name(""));
    }
}
