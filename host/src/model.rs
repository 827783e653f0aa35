//! The desired model: what each cloud group should look like in AD, derived from the merged cloud state.
//!
//! This is where writeback scope, group types, managed attributes and member eligibility are decided.
//! Nothing here talks to a server; the directory's answers come in later, in the plan.

use std::collections::BTreeMap;

use crate::attributes::{self, Cut, SchemaSupport, Source};
use crate::cloud::{CloudGroup, CloudView, MemberKind, Removal};
pub use crate::naming::GroupScope;
use crate::naming::{self, Placement};
use crate::reasons::{HeldReason, SkipReason};

/// AD `groupType` of a universal security group.
pub const UNIVERSAL_SECURITY: i32 = -2147483640;
/// The groupType bit of a security group (as opposed to a distribution group).
const SECURITY_FLAG: i32 = i32::MIN;

/// What kind of AD group a cloud group becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    Security,
    MailEnabledSecurity,
    Distribution,
}

impl GroupKind {
    /// The AD `groupType` value of this kind in `scope`.
    pub fn group_type(self, scope: GroupScope) -> i32 {
        match self {
            GroupKind::Security | GroupKind::MailEnabledSecurity => SECURITY_FLAG | scope.flag(),
            GroupKind::Distribution => scope.flag(),
        }
    }

    /// Whether the group carries mail attributes.
    pub fn mail_enabled(self) -> bool {
        !matches!(self, GroupKind::Security)
    }
}

/// Tenant settings the model needs.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub m365_default_writeback: bool,
    pub target_ou: String,
    /// OUs besides the target OU (and their subtrees) that a naming policy may place groups in.
    pub allowed_ous: Vec<String>,
    pub schema: SchemaSupport,
    /// Which groups the tenant writes back by rule.
    pub rules: WritebackRules,
    /// The scope of the groups the tenant writes.
    pub group_scope: GroupScope,
}

/// A group as naming and transform policies see it.
#[derive(Debug, Clone, Copy)]
pub struct PolicyGroup<'a> {
    pub id: &'a str,
    pub display_name: &'a str,
    pub description: Option<&'a str>,
    pub mail_nickname: Option<&'a str>,
    pub mail: Option<&'a str>,
    /// A Microsoft 365 group (as opposed to a security group).
    pub unified: bool,
    pub kind: GroupKind,
    /// The tenant's `group_scope`, which a naming policy may replace for this group.
    pub scope: GroupScope,
    /// Graph's `groupTypes`, such as `Unified` and `DynamicMembership`.
    pub group_types: &'a [String],
    /// How many members the cloud group lists, of every kind.
    pub member_count: u32,
}

/// What a transform decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transformed {
    /// Write the (possibly changed) attributes.
    Write,
    /// Keep the group out of AD, for this reason.
    Exclude(String),
}

/// Why a policy holds a group: nothing of it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// The policy's own answer for this group (a plugin returned an error): a decision, not a fault.
    Refused(String),
    /// The policy broke (trap, timeout, memory) or answered with something that cannot be used.
    Failed(String),
    /// The tenant's plugins did not load, so there is no policy to ask.
    NotLoaded(String),
}

impl From<Hold> for HeldReason {
    fn from(hold: Hold) -> HeldReason {
        match hold {
            Hold::Refused(cause) => HeldReason::Refused { cause },
            Hold::Failed(cause) => HeldReason::PolicyFailed { cause },
            Hold::NotLoaded(cause) => HeldReason::PluginsNotLoaded { cause },
        }
    }
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        HeldReason::from(self.clone()).fmt(f)
    }
}

/// Where a group goes and what is written for it: the built-in policy, or a tenant's plugins.
pub trait GroupPolicy: Send {
    /// The group's CN, sAMAccountName and OU; `Err` holds the group.
    fn place(&mut self, group: &PolicyGroup) -> Result<Placement, Hold>;
    /// Changes the attributes about to be written, or excludes the group; `Err` holds the group.
    fn transform(
        &mut self,
        group: &PolicyGroup,
        attributes: &mut BTreeMap<String, Vec<String>>,
    ) -> Result<Transformed, Hold>;
}

/// The built-in policy: cloud sync's naming, no transforms.
#[derive(Debug, Default, Clone, Copy)]
pub struct BuiltinPolicy;

impl GroupPolicy for BuiltinPolicy {
    fn place(&mut self, group: &PolicyGroup) -> Result<Placement, Hold> {
        naming::default_placement(group.id, Some(group.display_name)).map_err(|e| Hold::Refused(e.to_string()))
    }

    fn transform(&mut self, _: &PolicyGroup, _: &mut BTreeMap<String, Vec<String>>) -> Result<Transformed, Hold> {
        Ok(Transformed::Write)
    }
}

/// Checks a placement against the rules Windows AD enforces and the OUs the tenant allows.
pub fn check_placement(placement: &Placement, settings: &ModelSettings) -> Result<(), String> {
    naming::validate(placement).map_err(|e| e.to_string())?;
    let Some(ou) = &placement.ou else { return Ok(()) };
    if !crate::dn::is_dn(ou) {
        return Err(format!("ou {ou:?} is not a distinguished name"));
    }
    let allowed =
        std::iter::once(&settings.target_ou).chain(&settings.allowed_ous).any(|base| crate::dn::is_within(ou, base));
    if allowed { Ok(()) } else { Err(format!("ou {ou:?} is outside the target OU and every allowed_ous entry")) }
}

/// A member the group should have, before the directory is asked about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredMember {
    /// A principal that already exists in AD, named by its SID.
    Sid { member_id: String, sid: String },
    /// A cloud group that is itself written back; it may not exist in AD yet. `converted_from` is the SID of
    /// the AD group it was converted from, if it was.
    CloudGroup { member_id: String, converted_from: Option<String> },
}

/// A member that will not be written, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkippedMember {
    pub group_id: String,
    pub member_id: String,
    pub reason: SkipReason,
}

/// How a group should look in AD.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredGroup {
    pub id: String,
    pub cn: String,
    pub parent_dn: String,
    pub kind: GroupKind,
    pub scope: GroupScope,
    /// Every managed attribute; an empty list means the attribute must be absent.
    pub attributes: BTreeMap<String, Vec<String>>,
    pub members: Vec<DesiredMember>,
    /// The SID of the AD group it was converted from (the cloud group's `onPremisesSecurityIdentifier`): that
    /// group, once taken over, keeps its name, place and scope.
    pub converted_from: Option<String>,
}

impl DesiredGroup {
    /// Whether `sid` is that of the AD group this group was converted from.
    pub fn converted_from(&self, sid: Option<&str>) -> bool {
        self.converted_from.as_deref().zip(sid).is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

/// What the agent intends for one group.
#[derive(Debug, Clone, PartialEq)]
pub enum Intent {
    /// Make AD match.
    Write(DesiredGroup),
    /// Leave any AD group as it is.
    Leave(String),
    /// Delete the AD group carrying its anchor.
    Delete,
    /// The group cannot be written as it is; nothing of it is written.
    Refuse(HeldReason),
    /// A transform keeps the group out of AD; any AD group is left as it is.
    Exclude(String),
    /// The tenant's `[tenant.scope]` rules leave the group out; any AD group is left as it is.
    LeftOut(String),
}

/// The anchor value that marks a group as ours.
pub fn anchor_value(id: &str) -> String {
    format!("Group_{id}")
}

/// The tenant's rules for which groups are written back, besides each group's own `writebackConfiguration`.
#[derive(Debug, Clone, Default)]
pub struct WritebackRules {
    /// Security groups whose `isEnabled` is null are written too.
    pub all_security_groups: bool,
    /// When not empty, only groups whose displayName matches one of these are written.
    pub include: Vec<glob::Pattern>,
    /// Groups whose displayName matches one of these are not written.
    pub exclude: Vec<glob::Pattern>,
}

/// Microsoft's rules: only what is switched on, every name.
pub const OPTED_IN: WritebackRules =
    WritebackRules { all_security_groups: false, include: Vec::new(), exclude: Vec::new() };

impl WritebackRules {
    /// Why the rules leave a group with this display name out, if they do. Names match without regard to case
    /// (the patterns are lower case) or to the spaces around them, as the CN drops those.
    fn leaves_out(&self, display_name: Option<&str>) -> Option<String> {
        let options = glob::MatchOptions { case_sensitive: false, ..glob::MatchOptions::new() };
        let name = display_name.unwrap_or_default().trim().to_lowercase();
        let name = name.as_str();
        if !self.include.is_empty() && !self.include.iter().any(|p| p.matches_with(name, options)) {
            return Some("left out: its name matches no include pattern of the tenant's [tenant.scope]".into());
        }
        let excluded = self.exclude.iter().find(|p| p.matches_with(name, options))?;
        Some(format!(
            "left out: its name matches the exclude pattern {:?} of the tenant's [tenant.scope]",
            excluded.as_str()
        ))
    }
}

/// Decides whether a group is written and as what kind, or why not. An admin's explicit "no"
/// (`isEnabled = false`) wins over every rule.
#[expect(clippy::result_large_err, reason = "the error is never the large Write intent, and is built once per group")]
pub fn scope(group: &CloudGroup, m365_default: bool, rules: &WritebackRules) -> Result<GroupKind, Intent> {
    match group.removed {
        Some(Removal::Deleted) => return Err(Intent::Delete),
        Some(Removal::Changed) => {
            return Err(Intent::Leave("soft-deleted in Entra ID; kept until it is restored or deleted".into()));
        }
        None => {}
    }
    if group.on_premises_sync_enabled == Some(true) {
        return Err(Intent::Leave("mastered in on-premises AD".into()));
    }
    let unified = group.is_unified();
    if group.writeback_enabled == Some(false) {
        return Err(Intent::Leave("writeback is turned off for this group".into()));
    }
    if let Some(reason) = rules.leaves_out(group.display_name.as_deref()) {
        return Err(Intent::LeftOut(reason));
    }
    match group.writeback_enabled {
        Some(_) => {}
        None if unified && m365_default => {}
        None if unified => return Err(Intent::Leave("Microsoft 365 group writeback is off by default".into())),
        None if rules.all_security_groups => {}
        None => return Err(Intent::Leave("security group without writeback enabled".into())),
    }
    match group.writeback_group_type.as_deref() {
        Some("universalSecurityGroup") => Ok(GroupKind::Security),
        Some("universalMailEnabledSecurityGroup") => Ok(GroupKind::MailEnabledSecurity),
        Some("universalDistributionGroup") => Ok(GroupKind::Distribution),
        None if unified => Ok(GroupKind::Distribution),
        None => Ok(GroupKind::Security),
        Some(other) => {
            Err(Intent::Refuse(HeldReason::Refused { cause: format!("unknown onPremisesGroupType {other:?}") }))
        }
    }
}

/// The kind of a group converted from AD whose writeback type is unset: what its mail and security flags say,
/// which mirror the AD group it came from, so that taking over a distribution list does not clear its mail.
fn converted_kind(group: &CloudGroup, kind: GroupKind) -> GroupKind {
    let converted = group.on_premises_security_identifier.as_deref().is_some_and(|sid| !sid.trim().is_empty());
    if !converted || group.writeback_group_type.is_some() || group.is_unified() {
        return kind;
    }
    match (group.mail_enabled, group.security_enabled) {
        (Some(true), Some(true)) => GroupKind::MailEnabledSecurity,
        (Some(true), _) => GroupKind::Distribution,
        _ => kind,
    }
}

/// The group as policies see it; `None` when it has no display name to name it by.
pub fn policy_group(
    group: &CloudGroup,
    kind: GroupKind,
    scope: GroupScope,
    member_count: u32,
) -> Option<PolicyGroup<'_>> {
    let display_name = group.display_name.as_deref().filter(|n| !n.trim().is_empty())?;
    Some(PolicyGroup {
        id: &group.id,
        display_name,
        description: group.description.as_deref(),
        mail_nickname: group.mail_nickname.as_deref(),
        mail: group.mail.as_deref(),
        unified: group.is_unified(),
        kind,
        scope,
        group_types: group.group_types.as_deref().unwrap_or_default(),
        member_count,
    })
}

/// Builds the intent for one group, with the members that cannot be written.
pub fn intent<V: CloudView>(
    state: &V,
    group: &CloudGroup,
    settings: &ModelSettings,
    policy: &mut dyn GroupPolicy,
) -> Result<(Intent, Vec<SkippedMember>), V::Error> {
    if let Some(reason) = state.unreadable(&group.id)? {
        let cause = format!(
            "Graph sent an entry for this group that cannot be read ({reason}); nothing of it is written or deleted until a full round reads it whole"
        );
        return Ok((Intent::Refuse(HeldReason::Refused { cause }), Vec::new()));
    }
    let kind = match scope(group, settings.m365_default_writeback, &settings.rules) {
        Ok(kind) => converted_kind(group, kind),
        Err(intent) => return Ok((intent, Vec::new())),
    };
    // The anchor carries the id, and only `Group_<GUID>` anchors are recognised as writeback's.
    if !crate::ownership::is_guid(&group.id) {
        return Ok((
            Intent::Refuse(HeldReason::Refused {
                cause: format!("the group's id {:?} is not a GUID, so its anchor could not be recognised", group.id),
            }),
            Vec::new(),
        ));
    }
    // Every member is either written or skipped, so together they are what a policy counts.
    let (members, skipped) = members(state, group, settings)?;
    let count = u32::try_from(members.len() + skipped.len()).unwrap_or(u32::MAX);
    let (placement, attributes) = match place_and_transform(group, kind, count, settings, policy) {
        Ok(Ok(found)) => found,
        Ok(Err(excluded)) => return Ok((Intent::Exclude(excluded), Vec::new())),
        Err(hold) => return Ok((Intent::Refuse(hold.into()), Vec::new())),
    };
    let desired = DesiredGroup {
        id: group.id.clone(),
        parent_dn: placement.ou.clone().unwrap_or_else(|| settings.target_ou.clone()),
        scope: placement.scope.unwrap_or(settings.group_scope),
        cn: placement.cn,
        attributes,
        kind,
        members,
        // Not synced (the scope rules leave those alone), yet with a SID: its source of authority moved here.
        converted_from: group.on_premises_security_identifier.clone().filter(|sid| !sid.trim().is_empty()),
    };
    Ok((Intent::Write(desired), skipped))
}

/// Where a group goes and the attributes written for it.
pub type Placed = (Placement, BTreeMap<String, Vec<String>>);

/// Names the group and transforms its attributes. The outer `Err` holds the group; the inner one excludes it.
/// `member_count` is how many members the group lists, for policies that judge by it.
pub fn place_and_transform(
    group: &CloudGroup,
    kind: GroupKind,
    member_count: u32,
    settings: &ModelSettings,
    policy: &mut dyn GroupPolicy,
) -> Result<Result<Placed, String>, Hold> {
    let view = policy_group(group, kind, settings.group_scope, member_count)
        .ok_or_else(|| Hold::Refused(format!("cannot name the group: {}", naming::NamingError::NoDisplayName)))?;
    let placement = policy.place(&view)?;
    check_placement(&placement, settings).map_err(|e| Hold::Failed(format!("invalid placement: {e}")))?;
    let scope = placement.scope.unwrap_or(settings.group_scope);
    let mut attrs = attributes(group, kind, scope, &placement, &settings.schema);
    // Transforms judge the group as it will be written: with the scope the naming policy chose.
    let view = PolicyGroup { scope, ..view };
    match policy.transform(&view, &mut attrs)? {
        Transformed::Write => Ok(Ok((placement, attrs))),
        Transformed::Exclude(reason) => Ok(Err(reason)),
    }
}

/// The managed attributes ([`attributes::written`]); those the schema lacks are left out entirely, and the
/// mail attributes of a kind without mail are empty (absent in AD).
fn attributes(
    group: &CloudGroup,
    kind: GroupKind,
    scope: GroupScope,
    placement: &Placement,
    schema: &SchemaSupport,
) -> BTreeMap<String, Vec<String>> {
    let mut attrs = BTreeMap::new();
    for attribute in attributes::written().filter(|a| schema.supports(a)) {
        let values = match attribute.source {
            _ if attribute.mail_only && !kind.mail_enabled() => Vec::new(),
            Source::None => continue,
            Source::Placement => vec![placement.sam_account_name.clone()],
            Source::GroupType => vec![kind.group_type(scope).to_string()],
            Source::Anchor => vec![anchor_value(&group.id)],
            Source::Cloud { value, cut } => value(group).into_iter().map(|v| cut_value(v, cut)).collect(),
        };
        attrs.insert(attribute.ad.to_string(), values);
    }
    attrs
}

fn cut_value(value: String, cut: Cut) -> String {
    match cut {
        Cut::None => value,
        Cut::Chars(max) => value.chars().take(max).collect(),
        Cut::Utf16(max) => naming::utf16_prefix(&value, max),
    }
}

fn members<V: CloudView>(
    state: &V,
    group: &CloudGroup,
    settings: &ModelSettings,
) -> Result<(Vec<DesiredMember>, Vec<SkippedMember>), V::Error> {
    let mut desired = Vec::new();
    let mut skipped = Vec::new();
    for (member_id, kind) in state.members(&group.id)? {
        match member(state, &member_id, kind, settings)? {
            Ok(member) => desired.push(member),
            Err(reason) => skipped.push(SkippedMember { group_id: group.id.clone(), member_id, reason }),
        }
    }
    Ok((desired, skipped))
}

fn member<V: CloudView>(
    state: &V,
    id: &str,
    kind: MemberKind,
    settings: &ModelSettings,
) -> Result<Result<DesiredMember, SkipReason>, V::Error> {
    let sid = |sid: &str| DesiredMember::Sid { member_id: id.to_string(), sid: sid.to_string() };
    Ok(match kind {
        MemberKind::User => match state.user(id)? {
            None => Err(SkipReason::UserNotKnown),
            Some(user) => match (user.on_premises_sync_enabled, user.on_premises_security_identifier.as_deref()) {
                (Some(true), Some(s)) if !s.is_empty() => Ok(sid(s)),
                _ => Err(SkipReason::CloudOnlyUser),
            },
        },
        MemberKind::Group => match state.group(id)? {
            None => Err(SkipReason::GroupNotKnown),
            Some(g) if g.on_premises_sync_enabled == Some(true) => match g.on_premises_security_identifier.as_deref() {
                Some(s) if !s.is_empty() => Ok(sid(s)),
                _ => Err(SkipReason::SyncedGroupWithoutSid),
            },
            Some(g) => match scope(&g, settings.m365_default_writeback, &settings.rules) {
                Ok(_) => Ok(DesiredMember::CloudGroup {
                    member_id: id.to_string(),
                    converted_from: g.on_premises_security_identifier.clone(),
                }),
                Err(_) => Err(SkipReason::NestedGroupNotWritten),
            },
        },
        member_kind => Err(SkipReason::UnsupportedType { member_kind }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_take_null_security_groups_by_name_and_an_explicit_no_wins() {
        let patterns = |list: &[&str]| list.iter().map(|p| glob::Pattern::new(p).unwrap()).collect();
        let rules = WritebackRules {
            all_security_groups: true,
            include: patterns(&["SG-*", "DSG-*"]),
            exclude: patterns(&["*-test"]),
        };
        let named = |name: &str, enabled: Option<bool>| {
            group(|g| {
                g.display_name = Some(name.into());
                g.writeback_enabled = enabled;
            })
        };
        assert_eq!(scope(&named("SG-Finance", None), true, &rules), Ok(GroupKind::Security));
        assert_eq!(
            scope(&named("sg-finance", None), true, &rules),
            Ok(GroupKind::Security),
            "names match without case"
        );
        assert_eq!(scope(&named("DSG-Mail", Some(true)), true, &rules), Ok(GroupKind::Security));
        let left_out = |name: &str, enabled: Option<bool>| match scope(&named(name, enabled), true, &rules) {
            Err(Intent::Leave(reason) | Intent::LeftOut(reason)) => reason,
            other => panic!("{name}: {other:?}"),
        };
        assert!(left_out("SG-Finance-test", None).contains("exclude pattern \"*-test\""));
        assert!(left_out("Finance", Some(true)).contains("no include pattern"), "include narrows opted-in groups too");
        assert_eq!(left_out("SG-Off", Some(false)), "writeback is turned off for this group", "an explicit no wins");
        let opted_in = WritebackRules { all_security_groups: false, ..rules };
        assert!(matches!(scope(&named("SG-Null", None), true, &opted_in), Err(Intent::Leave(_))));
    }

    fn group(f: impl FnOnce(&mut CloudGroup)) -> CloudGroup {
        let mut g = CloudGroup {
            id: "2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718".into(),
            display_name: Some("G".into()),
            ..Default::default()
        };
        f(&mut g);
        g
    }

    #[test]
    fn every_attribute_written_is_in_the_list_the_directory_reads_back() {
        let full_schema = SchemaSupport::full();
        let read_back: Vec<&str> = attributes::read_back().collect();
        let placement = Placement { cn: "G".into(), sam_account_name: "G".into(), ou: None, scope: None };
        let mailed = group(|g| {
            g.mail = Some("g@x".into());
            g.mail_nickname = Some("g".into());
            g.proxy_addresses = Some(vec!["SMTP:g@x".into()]);
            g.description = Some("d".into());
        });
        for kind in [GroupKind::Security, GroupKind::Distribution, GroupKind::MailEnabledSecurity] {
            for name in attributes(&mailed, kind, GroupScope::Universal, &placement, &full_schema).keys() {
                assert!(read_back.contains(&name.as_str()), "{name} is written but never read back");
            }
        }
    }

    #[test]
    fn scope_follows_writeback_configuration() {
        let unified = |g: &mut CloudGroup| g.group_types = Some(vec!["Unified".into()]);
        assert_eq!(scope(&group(|g| g.writeback_enabled = Some(true)), true, &OPTED_IN), Ok(GroupKind::Security));
        assert!(
            matches!(scope(&group(|_| {}), true, &OPTED_IN), Err(Intent::Leave(_))),
            "security group with null is not written"
        );
        assert_eq!(scope(&group(unified), true, &OPTED_IN), Ok(GroupKind::Distribution));
        assert!(matches!(scope(&group(unified), false, &OPTED_IN), Err(Intent::Leave(_))));
        assert!(matches!(scope(&group(|g| g.writeback_enabled = Some(false)), true, &OPTED_IN), Err(Intent::Leave(_))));
        let synced = group(|g| {
            g.writeback_enabled = Some(true);
            g.on_premises_sync_enabled = Some(true);
        });
        assert!(matches!(scope(&synced, true, &OPTED_IN), Err(Intent::Leave(_))));
    }

    #[test]
    fn group_type_maps_to_kind() {
        let typed = |t: &str| {
            group(|g| {
                g.writeback_enabled = Some(true);
                g.writeback_group_type = Some(t.into());
            })
        };
        assert_eq!(scope(&typed("universalDistributionGroup"), true, &OPTED_IN), Ok(GroupKind::Distribution));
        assert_eq!(
            scope(&typed("universalMailEnabledSecurityGroup"), true, &OPTED_IN),
            Ok(GroupKind::MailEnabledSecurity)
        );
        assert_eq!(scope(&typed("universalSecurityGroup"), true, &OPTED_IN), Ok(GroupKind::Security));
        assert!(matches!(scope(&typed("globalSecurityGroup"), true, &OPTED_IN), Err(Intent::Refuse(_))));
        let types = |scope| (GroupKind::Security.group_type(scope), GroupKind::Distribution.group_type(scope));
        assert_eq!(types(GroupScope::Universal), (-2147483640, 8));
        assert_eq!(types(GroupScope::Global), (-2147483646, 2));
        assert_eq!(types(GroupScope::DomainLocal), (-2147483644, 4));
        for scope in [GroupScope::Universal, GroupScope::Global, GroupScope::DomainLocal] {
            assert_eq!(GroupScope::of(GroupKind::MailEnabledSecurity.group_type(scope)), Some(scope));
        }
    }

    #[test]
    fn removals_decide_before_anything_else() {
        let deleted = group(|g| g.removed = Some(Removal::Deleted));
        assert_eq!(scope(&deleted, true, &OPTED_IN), Err(Intent::Delete));
        let soft = group(|g| {
            g.removed = Some(Removal::Changed);
            g.writeback_enabled = Some(true);
        });
        assert!(matches!(scope(&soft, true, &OPTED_IN), Err(Intent::Leave(_))));
    }

    #[test]
    fn mail_attributes_only_for_mail_kinds_and_schema() {
        let g = group(|g| {
            g.mail = Some("a@x".into());
            g.mail_nickname = Some("a".into());
            g.proxy_addresses = Some(vec!["SMTP:a@x".into()]);
            g.description = Some("d".repeat(500));
        });
        let placement = naming::default_placement(&g.id, Some("G")).unwrap();
        let schema = SchemaSupport::default();
        let sec = attributes(&g, GroupKind::Security, GroupScope::Universal, &placement, &schema);
        assert!(sec["mail"].is_empty() && sec["proxyAddresses"].is_empty());
        assert!(!sec.contains_key("mailNickname"));
        assert_eq!(sec["description"][0].chars().count(), attributes::MAX_DESCRIPTION);
        let wide = group(|g| g.display_name = Some("😀".repeat(200)));
        let display =
            &attributes(&wide, GroupKind::Security, GroupScope::Universal, &placement, &schema)["displayName"][0];
        assert_eq!(display.encode_utf16().count(), attributes::MAX_DISPLAY_NAME, "AD counts UTF-16 units");
        let dist = attributes(
            &g,
            GroupKind::Distribution,
            GroupScope::Universal,
            &placement,
            &SchemaSupport::with(["mailNickname"]),
        );
        assert_eq!(dist["mail"], ["a@x"]);
        assert_eq!(dist["mailNickname"], ["a"]);
        assert_eq!(dist["groupType"], ["8"]);
        assert_eq!(dist["adminDescription"], [format!("Group_{}", g.id)]);
    }

    #[test]
    fn a_converted_list_keeps_its_mail_and_other_groups_keep_their_kind() {
        let list = group(|g| {
            g.on_premises_security_identifier = Some("S-1-5-21-1-2-3-4000".into());
            g.mail_enabled = Some(true);
            g.security_enabled = Some(false);
        });
        assert_eq!(converted_kind(&list, GroupKind::Security), GroupKind::Distribution);
        let mail_security = group(|g| {
            g.on_premises_security_identifier = Some("S-1-5-21-1-2-3-4001".into());
            g.mail_enabled = Some(true);
            g.security_enabled = Some(true);
        });
        assert_eq!(converted_kind(&mail_security, GroupKind::Security), GroupKind::MailEnabledSecurity);
        // A cloud-born group, or a converted one whose writeback type is set, keeps the kind the model gave it.
        let cloud = group(|g| {
            g.mail_enabled = Some(true);
            g.security_enabled = Some(false);
        });
        assert_eq!(converted_kind(&cloud, GroupKind::Security), GroupKind::Security);
        let typed = group(|g| {
            g.on_premises_security_identifier = Some("S-1-5-21-1-2-3-4000".into());
            g.mail_enabled = Some(true);
            g.writeback_group_type = Some("universalSecurityGroup".into());
        });
        assert_eq!(converted_kind(&typed, GroupKind::Security), GroupKind::Security);
    }
}
