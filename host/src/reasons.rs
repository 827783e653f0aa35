//! Why the agent did not write something, as types: metrics and the quarantine match on the kind, never on
//! the text, and admins read the text through `Display`. In the state, `status.json` and `status --json` a
//! reason is an object with a snake_case `kind` and the kind's fields.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cloud::MemberKind;

/// Why one member of a group is not written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// The user has not been read from Graph yet.
    UserNotKnown,
    /// The user exists only in the cloud, so AD has no object for it.
    CloudOnlyUser,
    /// The group has not been read from Graph.
    GroupNotKnown,
    /// A group synced from AD whose SID Graph does not give.
    SyncedGroupWithoutSid,
    /// A nested cloud group that is not written back itself.
    NestedGroupNotWritten,
    /// A nested cloud group that is written back but not in AD (see its own status).
    NestedGroupNotInDirectory,
    /// A device, service principal, contact or unknown type: AD groups do not hold them.
    UnsupportedType { member_kind: MemberKind },
    /// The member's SID names no object in the domain.
    UnresolvedSid { sid: String },
    /// The SID names a domain-local group, which a universal group cannot hold.
    DomainLocalGroup,
    /// A global group cannot hold a domain-local group.
    GlobalCantHaveLocal,
    /// A global group cannot hold a universal group.
    GlobalCantHaveUniversal,
    /// A global group holds members of its own domain only.
    GlobalCantHaveCrossDomain,
    /// A domain-local group cannot hold a domain-local group of another domain.
    LocalCantHaveCrossDomainLocal,
    /// The SID names an object of a class that cannot be a member.
    WrongClass { sid: String, class: String },
    /// The group is in a protected group, so the member would gain that group's rights.
    ProtectedGroup { protected: String },
}

impl SkipReason {
    /// Every metric label [`SkipReason::label`] gives, so that a reason that no longer occurs is reported as 0.
    pub const LABELS: &'static [&'static str] = &[
        "cloud_only_user",
        "unresolved_sid",
        "domain_local_group",
        "protected_group",
        "nested_group_not_written",
        "unsupported_member_type",
        "unknown_member",
        "synced_group_without_sid",
        "group_scope_nesting",
    ];

    /// A short, bounded metric label (the texts carry SIDs and DNs).
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::UserNotKnown | SkipReason::GroupNotKnown => "unknown_member",
            SkipReason::CloudOnlyUser => "cloud_only_user",
            SkipReason::SyncedGroupWithoutSid => "synced_group_without_sid",
            SkipReason::NestedGroupNotWritten | SkipReason::NestedGroupNotInDirectory => "nested_group_not_written",
            SkipReason::UnsupportedType { .. } | SkipReason::WrongClass { .. } => "unsupported_member_type",
            SkipReason::UnresolvedSid { .. } => "unresolved_sid",
            SkipReason::DomainLocalGroup => "domain_local_group",
            SkipReason::GlobalCantHaveLocal
            | SkipReason::GlobalCantHaveUniversal
            | SkipReason::GlobalCantHaveCrossDomain
            | SkipReason::LocalCantHaveCrossDomainLocal => "group_scope_nesting",
            SkipReason::ProtectedGroup { .. } => "protected_group",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::UserNotKnown => f.write_str("user not known to the agent yet"),
            SkipReason::CloudOnlyUser => f.write_str("cloud-only user (no on-premises SID)"),
            SkipReason::GroupNotKnown => f.write_str("group not known to the agent"),
            SkipReason::SyncedGroupWithoutSid => f.write_str("group synced from AD without an on-premises SID"),
            SkipReason::NestedGroupNotWritten => f.write_str("nested cloud group that is not written back"),
            SkipReason::NestedGroupNotInDirectory => f.write_str("nested group is not in AD (see that group's status)"),
            SkipReason::UnsupportedType { member_kind } => {
                write!(f, "a {} cannot be a member of an AD group", member_kind.label())
            }
            SkipReason::UnresolvedSid { sid } => write!(f, "SID {sid} names no object in the domain"),
            // AD's own words for this refusal.
            SkipReason::DomainLocalGroup => f.write_str("A universal group cannot have a local group as a member"),
            SkipReason::GlobalCantHaveLocal => f.write_str("A global group cannot have a local group as a member."),
            SkipReason::GlobalCantHaveUniversal => {
                f.write_str("A global group cannot have a universal group as a member.")
            }
            SkipReason::GlobalCantHaveCrossDomain => f.write_str("A global group cannot have a cross-domain member."),
            SkipReason::LocalCantHaveCrossDomainLocal => {
                f.write_str("A local group cannot have another cross domain local group as a member.")
            }
            SkipReason::WrongClass { sid, class } => write!(
                f,
                "SID {sid} names a {class} object, which cannot be a member: only users, groups and computers are written"
            ),
            SkipReason::ProtectedGroup { protected } => write!(
                f,
                "refused: the group is in protected group {protected}, so the member would gain its rights; list the group in allow_protected_groups to allow it"
            ),
        }
    }
}

/// Why nothing of a group is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeldReason {
    /// The group cannot be written as it is: the model or a policy said no (an unreadable Graph entry, an id
    /// that is not a GUID, an unknown type, a naming plugin's refusal).
    Refused { cause: String },
    /// A policy broke (trap, timeout, memory) or gave an answer that cannot be used.
    PolicyFailed { cause: String },
    /// The tenant's plugins did not load, so none of its groups is written.
    PluginsNotLoaded { cause: String },
    /// The directory refused a write in this cycle.
    ApplyFailed { cause: String },
    /// The write failed `attempts` cycles in a row; the group leaves the pending set.
    Quarantined { attempts: u32, cause: String },
    /// A new groupType would give the members of this group the rights of a protected group it is in.
    GroupTypeProtected { protected: String },
    /// AD would refuse the change of the group's scope; `cause` is AD's own message.
    ScopeChangeRefused { from: String, to: String, cause: String },
}

impl HeldReason {
    /// Whether a write of the group failed (and counts towards its quarantine).
    pub fn is_failure(&self) -> bool {
        matches!(self, HeldReason::ApplyFailed { .. } | HeldReason::Quarantined { .. })
    }
}

impl fmt::Display for HeldReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeldReason::Refused { cause } | HeldReason::PolicyFailed { cause } => f.write_str(cause),
            HeldReason::PluginsNotLoaded { cause } => write!(f, "the tenant's plugins did not load: {cause}"),
            HeldReason::ApplyFailed { cause } => write!(f, "apply failed: {cause}"),
            HeldReason::Quarantined { attempts, cause } => write!(
                f,
                "quarantined after {attempts} failed attempts; retried when the group changes or at the next full reconcile: apply failed: {cause}"
            ),
            HeldReason::ScopeChangeRefused { from, to, cause } => write!(
                f,
                "scope change from {from} to {to} refused, as AD would refuse it: {cause} Take the group out of that group, or keep group_scope as it was"
            ),
            HeldReason::GroupTypeProtected { protected } => write!(
                f,
                "groupType change refused: the group is in protected group {protected}, so a new type could give its members that group's rights; list the group in allow_protected_groups to allow it"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_skip_reason_has_a_listed_label() {
        let all = [
            SkipReason::UserNotKnown,
            SkipReason::CloudOnlyUser,
            SkipReason::GroupNotKnown,
            SkipReason::SyncedGroupWithoutSid,
            SkipReason::NestedGroupNotWritten,
            SkipReason::NestedGroupNotInDirectory,
            SkipReason::UnsupportedType { member_kind: MemberKind::Device },
            SkipReason::UnresolvedSid { sid: "S-1-5-21-1".into() },
            SkipReason::DomainLocalGroup,
            SkipReason::GlobalCantHaveLocal,
            SkipReason::GlobalCantHaveUniversal,
            SkipReason::GlobalCantHaveCrossDomain,
            SkipReason::LocalCantHaveCrossDomainLocal,
            SkipReason::WrongClass { sid: "S-1".into(), class: "contact".into() },
            SkipReason::ProtectedGroup { protected: "CN=Domain Admins".into() },
        ];
        for reason in &all {
            assert!(SkipReason::LABELS.contains(&reason.label()), "{reason:?}");
        }
        assert_eq!(SkipReason::SyncedGroupWithoutSid.label(), "synced_group_without_sid", "not the other bucket");
    }

    #[test]
    fn reasons_are_tagged_objects_and_round_trip() {
        let held = HeldReason::Quarantined { attempts: 3, cause: "busy".into() };
        let json = serde_json::to_value(&held).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "quarantined", "attempts": 3, "cause": "busy"}));
        assert_eq!(serde_json::from_value::<HeldReason>(json).unwrap(), held);
        assert!(held.to_string().starts_with("quarantined after 3 failed attempts"), "{held}");
        let skip = SkipReason::UnsupportedType { member_kind: MemberKind::ServicePrincipal };
        assert_eq!(skip.to_string(), "a service principal cannot be a member of an AD group");
        let json = serde_json::to_value(&skip).unwrap();
        assert_eq!(json["kind"], "unsupported_type");
    }
}
