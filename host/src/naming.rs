//! The built-in naming policy: where a group lives in AD and under which names.
//!
//! The CN follows Microsoft's cloud sync (`Left(Trim(displayName), 51) + "_" + last 12 of objectId`), so
//! groups keep the names admins already know. The sAMAccountName is derived from the object id alone, so
//! that a rename in the cloud never changes the logon name that scripts and ACL tooling refer to.

/// Windows AD caps `cn` at 64 characters; Samba does not, so the agent enforces it.
pub const MAX_CN: usize = 64;
/// The pre-Windows 2000 name limit, which Samba does not enforce either.
pub const MAX_SAM: usize = 20;

/// Where and under which names a group lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub cn: String,
    pub sam_account_name: String,
    /// Full DN of the parent OU; `None` means the tenant's target OU.
    pub ou: Option<String>,
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
    #[error("CN {cn:?} is {len} characters; AD allows at most {MAX_CN}")]
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
    let cut: String = name.chars().take(51).collect();
    let cn = format!("{}_{}", cut.trim_end(), last12);
    let sam_tail: String = id_chars[id_chars.len().saturating_sub(18)..].iter().collect::<String>().to_lowercase();
    let placement = Placement { cn, sam_account_name: format!("G_{sam_tail}"), ou: None };
    validate(&placement)?;
    Ok(placement)
}

/// Checks the rules Windows AD enforces on names (and Samba does not).
pub fn validate(placement: &Placement) -> Result<(), NamingError> {
    let len = placement.cn.chars().count();
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
    let illegal = |c: char| c.is_control() || matches!(c, '"' | '/' | '\\' | '[' | ']' | ':' | ';' | '|' | '=' | ',' | '+' | '*' | '?' | '<' | '>');
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
