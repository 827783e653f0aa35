//! The built-in naming policy: where a group lives in AD and under which names.
//!
//! The CN follows Microsoft's cloud sync (`Left(Trim(displayName), 51) + "_" + last 12 of objectId`), so
//! groups keep the names admins already know. The sAMAccountName is derived from the object id alone, so
//! that a rename in the cloud never changes the logon name that scripts and ACL tooling refer to.

/// Windows AD caps `cn` at 64 characters; Samba does not, so the agent enforces it.
pub const MAX_CN: usize = 64;
/// The pre-Windows 2000 name limit, which Samba does not enforce either.
pub const MAX_SAM: usize = 20;

/// Where and under which names a group lives, and with which scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub cn: String,
    pub sam_account_name: String,
    /// Full DN of the parent OU; `None` means the tenant's target OU.
    pub ou: Option<String>,
    /// The group's scope; `None` means the tenant's `group_scope`.
    pub scope: Option<GroupScope>,
}

/// An AD group's scope, which decides what it may hold and where it may be used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupScope {
    /// Members from any domain of the forest; usable anywhere in the forest. What Microsoft's tools write.
    #[default]
    Universal,
    /// Members from its own domain only; usable anywhere, and in groups such as Domain Admins.
    Global,
    /// Members from anywhere, trusted domains too; usable in its own domain only.
    DomainLocal,
}

impl GroupScope {
    /// The groupType bit of this scope.
    pub fn flag(self) -> i32 {
        match self {
            GroupScope::Global => 0x2,
            GroupScope::DomainLocal => 0x4,
            GroupScope::Universal => 0x8,
        }
    }

    /// The scope a groupType value carries, if it carries exactly one.
    pub fn of(group_type: i32) -> Option<GroupScope> {
        match group_type & 0xE {
            0x2 => Some(GroupScope::Global),
            0x4 => Some(GroupScope::DomainLocal),
            0x8 => Some(GroupScope::Universal),
            _ => None,
        }
    }

    /// Its name as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            GroupScope::Universal => "universal",
            GroupScope::Global => "global",
            GroupScope::DomainLocal => "domain-local",
        }
    }
}

/// Why a group cannot be named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamingError {
    #[error("the group has no display name")]
    NoDisplayName,
    #[error("the display name contains a control character, which AD does not allow in a CN")]
    ControlCharacter,
    #[error("the object id {0:?} has too few letters or digits to derive names from")]
    BadId(String),
    #[error("CN {cn:?} is {len} UTF-16 units long; AD allows at most {MAX_CN}")]
    CnTooLong { cn: String, len: usize },
    #[error("CN is empty")]
    EmptyCn,
    #[error("sAMAccountName {0:?} is not valid: {1}")]
    BadSam(String, &'static str),
}

/// The default placement: cloud sync's CN, an id-derived sAMAccountName, the tenant's target OU.
pub fn default_placement(id: &str, display_name: Option<&str>) -> Result<Placement, NamingError> {
    let name = display_name.map(str::trim).filter(|n| !n.is_empty()).ok_or(NamingError::NoDisplayName)?;
    if name.chars().any(char::is_control) {
        return Err(NamingError::ControlCharacter);
    }
    let id_chars: Vec<char> = id.chars().filter(char::is_ascii_alphanumeric).collect();
    if id_chars.len() < 12 {
        return Err(NamingError::BadId(id.to_string()));
    }
    let last12: String = id.chars().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
    // Cloud sync keeps 51 characters of the name; an id with characters outside the BMP (never a GUID) has a
    // longer suffix, and the name gives way so that the CN still fits.
    let budget = (MAX_CN - 1).saturating_sub(last12.encode_utf16().count()).min(51);
    let cut = utf16_prefix(name, budget);
    let cn = format!("{}_{}", cut.trim_end(), last12);
    let sam_tail: String = id_chars[id_chars.len().saturating_sub(18)..].iter().collect::<String>().to_lowercase();
    let placement = Placement { cn, sam_account_name: format!("G_{sam_tail}"), ou: None, scope: None };
    validate(&placement)?;
    Ok(placement)
}

/// The longest prefix of `text` that fits in `units` UTF-16 code units, never splitting a character. AD
/// counts string lengths in UTF-16 units, so a character outside the BMP (an emoji) counts twice.
pub fn utf16_prefix(text: &str, units: usize) -> String {
    let mut used = 0;
    text.chars()
        .take_while(|c| {
            used += c.len_utf16();
            used <= units
        })
        .collect()
}

/// Checks the rules Windows AD enforces on names (and Samba does not).
pub fn validate(placement: &Placement) -> Result<(), NamingError> {
    let len = placement.cn.encode_utf16().count();
    if placement.cn.trim().is_empty() {
        return Err(NamingError::EmptyCn);
    }
    if len > MAX_CN {
        return Err(NamingError::CnTooLong { cn: placement.cn.clone(), len });
    }
    if placement.cn.chars().any(char::is_control) {
        return Err(NamingError::ControlCharacter);
    }
    validate_sam(&placement.sam_account_name)
}

fn validate_sam(sam: &str) -> Result<(), NamingError> {
    let bad = |why| Err(NamingError::BadSam(sam.to_string(), why));
    if sam.is_empty() {
        return bad("it is empty");
    }
    if sam.chars().count() > MAX_SAM {
        return bad("it is longer than 20 characters");
    }
    let illegal = |c: char| {
        c.is_control()
            || matches!(c, '"' | '/' | '\\' | '[' | ']' | ':' | ';' | '|' | '=' | ',' | '+' | '*' | '?' | '<' | '>')
    };
    if sam.chars().any(illegal) {
        return bad("it contains one of \"/\\[]:;|=,+*?<> or a control character");
    }
    if sam.ends_with('.') {
        return bad("it ends with a period");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_counted_in_utf16_units_as_ad_counts_them() {
        assert_eq!(utf16_prefix("ab😀c", 3), "ab");
        assert_eq!(utf16_prefix("ab😀c", 4), "ab😀");
        let p = default_placement(ID, Some(&"😀".repeat(40))).unwrap();
        assert!(p.cn.encode_utf16().count() <= MAX_CN, "{} units", p.cn.encode_utf16().count());
        assert!(p.cn.ends_with("_c3d4e5f60718"));
        let emoji = Placement { cn: "😀".repeat(40), sam_account_name: "G_x".into(), ou: None, scope: None };
        assert!(matches!(validate(&emoji), Err(NamingError::CnTooLong { len: 80, .. })));
    }

    const ID: &str = "2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718";

    #[test]
    fn cn_follows_cloud_sync() {
        let p = default_placement(ID, Some("  Finance Team  ")).unwrap();
        assert_eq!(p.cn, "Finance Team_c3d4e5f60718");
        let long = "x".repeat(80);
        let p = default_placement(ID, Some(&long)).unwrap();
        assert_eq!(p.cn, format!("{}_c3d4e5f60718", "x".repeat(51)));
        assert_eq!(p.cn.chars().count(), 64);
    }

    #[test]
    fn sam_is_id_derived_short_and_legal() {
        let p = default_placement(ID, Some("Ops, \"Tier 0\" + #Admins\\")).unwrap();
        assert_eq!(p.sam_account_name, "G_9fa1b2c3d4e5f60718");
        assert!(p.sam_account_name.len() <= MAX_SAM);
        let renamed = default_placement(ID, Some("Another name")).unwrap();
        assert_eq!(renamed.sam_account_name, p.sam_account_name);
    }

    #[test]
    fn unusable_names_are_refused_with_a_reason() {
        assert_eq!(default_placement(ID, Some("  ")), Err(NamingError::NoDisplayName));
        assert_eq!(default_placement(ID, None), Err(NamingError::NoDisplayName));
        assert_eq!(default_placement(ID, Some("a\nb")), Err(NamingError::ControlCharacter));
        assert!(matches!(default_placement("short", Some("a")), Err(NamingError::BadId(_))));
    }

    #[test]
    fn validation_catches_what_samba_allows() {
        let mut p = default_placement(ID, Some("ok")).unwrap();
        p.sam_account_name = "a".repeat(21);
        assert!(validate(&p).is_err());
        p.sam_account_name = "bad*name".into();
        assert!(validate(&p).is_err());
        p.sam_account_name = "trailing.".into();
        assert!(validate(&p).is_err());
        p.sam_account_name = "ok name@x".into();
        assert!(validate(&p).is_ok());
        p.cn = "y".repeat(65);
        assert!(matches!(validate(&p), Err(NamingError::CnTooLong { .. })));
    }
}
