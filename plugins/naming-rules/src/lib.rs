//! The agent's built-in naming rules as plain Rust, for the naming plugins to build on.
//!
//! This mirrors `host/src/naming.rs` (`default_placement` and `validate`) step by step: the CN follows
//! Microsoft's cloud sync (`Left(Trim(displayName), 51) + "_" + last 12 of objectId`) and the sAMAccountName is
//! `G_` and the last 18 letters or digits of the object id, lower-cased. Errors are plain strings, because that
//! is what a plugin hands back through WIT; the texts differ from the agent's, the cases where they occur do not.
//! `plugins/cloud-sync-naming/tests/builtin.rs` checks the two against each other on a corpus.

/// Windows AD caps `cn` at 64 UTF-16 units (an emoji counts twice).
pub const MAX_CN: usize = 64;
/// The pre-Windows 2000 logon name limit.
pub const MAX_SAM: usize = 20;
/// How many UTF-16 units of the trimmed display name the cloud sync CN keeps.
pub const CN_NAME_CHARS: usize = 51;
/// How many trailing characters of the object id end the CN.
pub const CN_ID_CHARS: usize = 12;
/// How many trailing letters and digits of the object id the sAMAccountName keeps.
pub const SAM_ID_CHARS: usize = 18;
/// Characters AD refuses in a sAMAccountName (besides control characters).
pub const SAM_ILLEGAL: &str = "\"/\\[]:;|=,+*?<>";

/// Where and under which names a group lives (the WIT `placement` record, without the WIT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub cn: String,
    pub sam_account_name: String,
    /// Full DN of the parent OU; `None` means the tenant's target OU.
    pub ou: Option<String>,
}

/// The display name as the CN uses it: trimmed, not blank, free of control characters (anywhere, also past the
/// part the CN keeps).
pub fn usable_display_name(display_name: &str) -> Result<&str, String> {
    let name = display_name.trim();
    if name.is_empty() {
        return Err("the group has no display name".into());
    }
    if name.chars().any(char::is_control) {
        return Err("the display name contains a control character, which AD does not allow in a CN".into());
    }
    Ok(name)
}

/// Checks that the object id has at least 12 ASCII letters or digits, the names derive from them.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.bytes().filter(u8::is_ascii_alphanumeric).count() < CN_ID_CHARS {
        return Err(format!("the object id {id:?} has too few letters or digits to derive names from"));
    }
    Ok(())
}

/// The last `n` characters of `s` (all of it when shorter).
pub fn last_chars(s: &str, n: usize) -> &str {
    match s.char_indices().rev().nth(n.saturating_sub(1)) {
        Some((at, _)) if n > 0 => &s[at..],
        _ if n == 0 => "",
        _ => s,
    }
}

/// The first `n` characters of `s` (all of it when shorter).
pub fn first_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// The longest prefix of `s` that fits in `units` UTF-16 units, never splitting a character. AD counts
/// string lengths in UTF-16 units.
pub fn first_utf16(s: &str, units: usize) -> &str {
    let mut used = 0;
    for (at, c) in s.char_indices() {
        used += c.len_utf16();
        if used > units {
            return &s[..at];
        }
    }
    s
}

/// The cloud sync CN: the trimmed display name cut to 51 UTF-16 units, trailing whitespace of the cut removed,
/// `_`, the last 12 characters of the id.
pub fn cloud_sync_cn(id: &str, display_name: &str) -> Result<String, String> {
    tagged_cn(id, display_name, CN_NAME_CHARS, "")
}

/// A cloud sync style CN with a tag before the `_`: the trimmed display name cut to `name_chars` UTF-16 units,
/// trailing whitespace of the cut removed, then `tag`, `_` and the last 12 characters of the id. Checks the
/// display name and the id exactly as the built-in policy does.
pub fn tagged_cn(id: &str, display_name: &str, name_chars: usize, tag: &str) -> Result<String, String> {
    let name = usable_display_name(display_name)?;
    check_id(id)?;
    let cut = first_utf16(name, name_chars).trim_end();
    let last = last_chars(id, CN_ID_CHARS);
    // Plain pushes rather than format!: names are made for every group on every cycle.
    let mut cn = String::with_capacity(cut.len() + tag.len() + 1 + last.len());
    for part in [cut, tag, "_", last] {
        cn.push_str(part);
    }
    Ok(cn)
}

/// The id-derived sAMAccountName: `G_` and the last 18 ASCII letters or digits of the id, lower-cased.
pub fn id_sam(id: &str) -> Result<String, String> {
    check_id(id)?;
    // Filled from the end, so that the id is read once and nothing is allocated but the name itself.
    let mut tail = [0u8; SAM_ID_CHARS];
    let mut start = SAM_ID_CHARS;
    for b in id.bytes().rev().filter(u8::is_ascii_alphanumeric).take(SAM_ID_CHARS) {
        start -= 1;
        tail[start] = b.to_ascii_lowercase();
    }
    let mut sam = String::with_capacity(2 + SAM_ID_CHARS);
    sam.push_str("G_");
    sam.extend(tail[start..].iter().map(|b| char::from(*b)));
    Ok(sam)
}

/// The agent's default placement: cloud sync CN, id-derived sAMAccountName, the tenant's target OU.
pub fn default_placement(id: &str, display_name: &str) -> Result<Placement, String> {
    let placement = Placement { cn: cloud_sync_cn(id, display_name)?, sam_account_name: id_sam(id)?, ou: None };
    validate(&placement)?;
    Ok(placement)
}

/// The rules Windows AD enforces on names (and Samba does not); the agent applies the same to every plugin's
/// answer.
pub fn validate(placement: &Placement) -> Result<(), String> {
    let cn = &placement.cn;
    if cn.trim().is_empty() {
        return Err("CN is empty".into());
    }
    let len = cn.encode_utf16().count();
    if len > MAX_CN {
        return Err(format!("CN {cn:?} is {len} UTF-16 units long; AD allows at most {MAX_CN}"));
    }
    if cn.chars().any(char::is_control) {
        return Err(format!("CN {cn:?} contains a control character"));
    }
    validate_sam(&placement.sam_account_name)
}

/// Is `c` refused in a sAMAccountName? (The characters of [`SAM_ILLEGAL`], matched without a search per
/// character.)
pub fn is_illegal_sam_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '"' | '/' | '\\' | '[' | ']' | ':' | ';' | '|' | '=' | ',' | '+' | '*' | '?' | '<' | '>')
}

/// The sAMAccountName rules: not empty, at most 20 characters, none of `"/\[]:;|=,+*?<>` or control
/// characters, no trailing period.
pub fn validate_sam(sam: &str) -> Result<(), String> {
    let why = if sam.is_empty() {
        "it is empty"
    } else if sam.chars().count() > MAX_SAM {
        "it is longer than 20 characters"
    } else if sam.chars().any(is_illegal_sam_char) {
        "it contains one of \"/\\[]:;|=,+*?<> or a control character"
    } else if sam.ends_with('.') {
        "it ends with a period"
    } else {
        return Ok(());
    };
    Err(format!("sAMAccountName {sam:?} is not valid: {why}"))
}

/// Does `text` start with `prefix`, ignoring case? Compares character by character, each lower-cased.
pub fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    let mut text = text.chars();
    prefix.chars().all(|p| text.next().is_some_and(|t| same_ignoring_case(t, p)))
}

/// Are two characters equal when both are lower-cased?
pub fn same_ignoring_case(a: char, b: char) -> bool {
    a == b || a.to_lowercase().eq(b.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718";

    #[test]
    fn utf16_cuts_count_as_ad_does_and_never_split_a_character() {
        assert_eq!(first_utf16("ab😀c", 3), "ab");
        assert_eq!(first_utf16("ab😀c", 4), "ab😀");
        assert_eq!(first_utf16("abc", 10), "abc");
        let cn = cloud_sync_cn("2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718", &"😀".repeat(40)).unwrap();
        assert_eq!(cn.encode_utf16().count(), 50 + 13);
    }

    #[test]
    fn char_cuts_never_split_a_character() {
        assert_eq!(last_chars("abcdé", 2), "dé");
        assert_eq!(last_chars("ab", 5), "ab");
        assert_eq!(last_chars("ab", 0), "");
        assert_eq!(last_chars("", 3), "");
        assert_eq!(first_chars("ééé", 2), "éé");
        assert_eq!(first_chars("ab", 5), "ab");
        assert_eq!(first_chars("ab", 0), "");
    }

    #[test]
    fn default_placement_follows_cloud_sync() {
        let p = default_placement(ID, "  Finance Team  ").unwrap();
        assert_eq!(p.cn, "Finance Team_c3d4e5f60718");
        assert_eq!(p.sam_account_name, "G_9fa1b2c3d4e5f60718");
        assert_eq!(p.ou, None);
    }

    #[test]
    fn tagged_cn_cuts_the_name_to_make_room() {
        let cn = tagged_cn(ID, &"x".repeat(80), 46, " (v2)").unwrap();
        assert_eq!(cn, format!("{} (v2)_c3d4e5f60718", "x".repeat(46)));
        assert_eq!(cn.chars().count(), MAX_CN);
    }

    #[test]
    fn the_illegal_sam_characters_are_exactly_the_documented_ones() {
        let matched: String = (' '..='~').filter(|c| is_illegal_sam_char(*c)).collect();
        let mut documented: Vec<char> = SAM_ILLEGAL.chars().collect();
        documented.sort();
        assert_eq!(matched, documented.into_iter().collect::<String>());
        assert!(is_illegal_sam_char('\u{7}'));
    }

    #[test]
    fn ids_need_twelve_letters_or_digits() {
        assert!(check_id(ID).is_ok());
        assert!(check_id("abc-def-ghi-jk").is_err());
        assert_eq!(id_sam("ab-CD-ef-12-34-56-78-90-12-34").unwrap(), "G_cdef12345678901234");
    }

    #[test]
    fn sam_rules() {
        assert!(validate_sam("ok name@x").is_ok());
        assert!(validate_sam("").is_err());
        assert!(validate_sam(&"a".repeat(21)).is_err());
        assert!(validate_sam(&"é".repeat(20)).is_ok());
        assert!(validate_sam("bad*name").is_err());
        assert!(validate_sam("tab\tname").is_err());
        assert!(validate_sam("trailing.").is_err());
    }

    #[test]
    fn prefixes_ignore_case_character_by_character() {
        assert!(starts_with_ignore_case("fin-Budget", "FIN-"));
        assert!(starts_with_ignore_case("ÄRZTE-Team", "ärzte-"));
        assert!(!starts_with_ignore_case("FI", "FIN-"));
        assert!(starts_with_ignore_case("anything", ""));
    }
}
