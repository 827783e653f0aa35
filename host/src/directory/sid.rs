//! Security identifiers: the string form Graph uses and the binary form AD stores.

/// Parses `S-1-5-21-…` into AD's binary layout; `None` when it is not a SID.
pub fn to_binary(sid: &str) -> Option<Vec<u8>> {
    let mut parts = sid.strip_prefix("S-").or_else(|| sid.strip_prefix("s-"))?.split('-');
    let revision: u8 = parts.next()?.parse().ok()?;
    let authority: u64 = parts.next()?.parse().ok()?;
    if authority >= 1 << 48 {
        return None;
    }
    let subs: Vec<u32> = parts.map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if subs.is_empty() || subs.len() > 15 {
        return None;
    }
    let mut out = vec![revision, subs.len() as u8];
    out.extend_from_slice(&authority.to_be_bytes()[2..]);
    for sub in subs {
        out.extend_from_slice(&sub.to_le_bytes());
    }
    Some(out)
}

/// Formats AD's binary SID as `S-1-…`; `None` when the bytes are not a SID.
pub fn to_string(bytes: &[u8]) -> Option<String> {
    let (&revision, rest) = bytes.split_first()?;
    let (&count, rest) = rest.split_first()?;
    if rest.len() != 6 + 4 * count as usize {
        return None;
    }
    let mut authority = [0u8; 8];
    authority[2..].copy_from_slice(&rest[..6]);
    let mut text = format!("S-{revision}-{}", u64::from_be_bytes(authority));
    for chunk in rest[6..].chunks_exact(4) {
        let sub = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        text.push_str(&format!("-{sub}"));
    }
    Some(text)
}

/// The relative id of `sid` within the domain whose SID is `domain`; `None` when `sid` is not of that domain.
pub fn domain_rid(sid: &str, domain: &str) -> Option<u32> {
    let (prefix, rid) = sid.rsplit_once('-')?;
    if prefix.eq_ignore_ascii_case(domain) { rid.parse().ok() } else { None }
}

/// An LDAP filter value matching the binary SID (every byte escaped, as RFC 4515 allows).
pub fn filter_value(sid: &str) -> Option<String> {
    Some(to_binary(sid)?.iter().map(|b| format!("\\{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for sid in ["S-1-5-21-3623811015-3361044348-30300820-1013", "S-1-5-32-544", "S-1-1-0"] {
            let bin = to_binary(sid).unwrap();
            assert_eq!(to_string(&bin).as_deref(), Some(sid));
        }
    }

    #[test]
    fn known_layout() {
        let bin = to_binary("S-1-5-32-544").unwrap();
        assert_eq!(bin, [1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 2, 0, 0]);
        assert_eq!(filter_value("S-1-5-32-544").unwrap(), r"\01\02\00\00\00\00\00\05\20\00\00\00\20\02\00\00");
    }

    #[test]
    fn junk_is_refused() {
        for bad in ["", "S-", "S-1", "S-1-5", "X-1-5-21", "S-1-5-21-x", "S-1-5-99999999999", "S-1-281474976710656-1"] {
            assert!(to_binary(bad).is_none(), "{bad}");
        }
        assert!(to_string(&[1, 2, 0]).is_none());
        assert!(to_string(&[]).is_none());
    }

    #[test]
    fn a_rid_is_only_of_its_own_domain() {
        let domain = "S-1-5-21-1-2-3";
        assert_eq!(domain_rid("S-1-5-21-1-2-3-1105", domain), Some(1105));
        assert_eq!(domain_rid("s-1-5-21-1-2-3-512", domain), Some(512));
        assert_eq!(domain_rid("S-1-5-21-1-2-33-1105", domain), None);
        assert_eq!(domain_rid("S-1-5-32-544", domain), None);
        assert_eq!(domain_rid("S-1-5-21-1-2-3-x", domain), None);
    }
}
