//! Distinguished names: building them with RFC 4514 escaping and comparing them by meaning.
//!
//! A DC spells a DN back differently from how it was sent (`;` as `\3B`, `=` as `\3D`), so DNs are never
//! compared as strings: they are parsed into attribute/value pairs and compared case-insensitively.

use std::borrow::Cow;

/// One attribute-value pair of an RDN, with the value unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ava {
    pub attr: String,
    pub value: String,
}

/// A parsed DN: its RDNs from the leaf up, each a set of attribute-value pairs.
pub type Rdns = Vec<Vec<Ava>>;

/// Escapes an attribute value for use inside a DN (RFC 4514).
pub fn escape_value(value: &str) -> Cow<'_, str> {
    ldap3::dn_escape(value)
}

/// Builds `CN=<escaped cn>,<parent>`.
pub fn child(cn: &str, parent: &str) -> String {
    format!("CN={},{}", escape_value(cn), parent)
}

/// Whether `text` is a distinguished name of at least one RDN.
pub fn is_dn(text: &str) -> bool {
    parse(text).is_some_and(|rdns| !rdns.is_empty())
}

/// Whether `dn` names a domain root (every RDN a `DC=`).
pub fn is_domain_root(dn: &str) -> bool {
    parse(dn)
        .is_some_and(|rdns| !rdns.is_empty() && rdns.iter().flatten().all(|ava| ava.attr.eq_ignore_ascii_case("DC")))
}

/// Parses a string DN; `None` when it is not a valid RFC 4514 DN.
pub fn parse(dn: &str) -> Option<Rdns> {
    let mut rdns = Vec::new();
    if dn.trim().is_empty() {
        return Some(rdns);
    }
    let mut rest = dn.as_bytes();
    loop {
        let (rdn, next, more) = parse_rdn(rest)?;
        rdns.push(rdn);
        rest = next;
        if !more {
            break;
        }
    }
    Some(rdns)
}

/// Parses one RDN; returns it, the remaining input and whether another RDN follows.
fn parse_rdn(mut input: &[u8]) -> Option<(Vec<Ava>, &[u8], bool)> {
    let mut avas = Vec::new();
    loop {
        let (ava, rest, sep) = parse_ava(input)?;
        avas.push(ava);
        input = rest;
        match sep {
            Some(b'+') => continue,
            Some(_) => return Some((avas, input, true)),
            None => return Some((avas, input, false)),
        }
    }
}

/// Parses `attr=value`; returns the pair, the rest after the separator, and the separator seen.
fn parse_ava(input: &[u8]) -> Option<(Ava, &[u8], Option<u8>)> {
    let eq = input.iter().position(|&b| b == b'=')?;
    let attr = std::str::from_utf8(&input[..eq]).ok()?.trim();
    let attr_ok = !attr.is_empty() && attr.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !attr_ok {
        return None;
    }
    let (value, consumed, sep) = parse_value(&input[eq + 1..])?;
    let rest = &input[eq + 1 + consumed..];
    Some((Ava { attr: attr.to_string(), value }, rest, sep))
}

/// Reads an escaped value up to an unescaped `,`, `;` or `+`. Returns the value, the bytes consumed
/// (separator included) and the separator.
fn parse_value(input: &[u8]) -> Option<(String, usize, Option<u8>)> {
    let mut out: Vec<u8> = Vec::new();
    // Unescaped trailing spaces are not part of the value: everything past this length is such a space.
    let mut significant_len = 0;
    let mut i = 0;
    let mut started = false;
    while i < input.len() {
        let b = input[i];
        match b {
            b'\\' => {
                let (byte, width) = unescape_at(&input[i + 1..])?;
                out.push(byte);
                significant_len = out.len();
                i += 1 + width;
                started = true;
                continue;
            }
            b',' | b';' | b'+' => {
                out.truncate(significant_len);
                return Some((String::from_utf8(out).ok()?, i + 1, Some(b)));
            }
            b' ' if !started => {}
            _ => {
                out.push(b);
                started = true;
                if b != b' ' {
                    significant_len = out.len();
                }
            }
        }
        i += 1;
    }
    out.truncate(significant_len);
    Some((String::from_utf8(out).ok()?, i, None))
}

/// Decodes the byte after a backslash: either a special character or two hex digits.
fn unescape_at(input: &[u8]) -> Option<(u8, usize)> {
    let first = *input.first()?;
    if first.is_ascii_hexdigit() {
        let second = *input.get(1)?;
        let hex = std::str::from_utf8(&[first, second]).ok()?.to_string();
        return u8::from_str_radix(&hex, 16).ok().map(|b| (b, 2));
    }
    Some((first, 1))
}

/// Whether two DNs name the same entry (attribute names and values compared case-insensitively).
pub fn same(a: &str, b: &str) -> bool {
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => rdns_equal(&a, &b),
        _ => a.eq_ignore_ascii_case(b),
    }
}

fn rdns_equal(a: &[Vec<Ava>], b: &[Vec<Ava>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| rdn_equal(x, y))
}

/// RDNs are equal when they hold the same attribute-value pairs, in any order, counted with repeats.
fn rdn_equal(a: &[Ava], b: &[Ava]) -> bool {
    let folded = |rdn: &[Ava]| {
        let mut pairs: Vec<(String, String)> =
            rdn.iter().map(|ava| (ava.attr.to_ascii_lowercase(), fold(&ava.value))).collect();
        pairs.sort();
        pairs
    };
    a.len() == b.len() && folded(a) == folded(b)
}

/// One spelling for all DNs that are [`same`] (attribute names lower case, values folded and escaped, the
/// pairs of a multi-valued RDN sorted), for use as a map key; a DN that does not parse is folded whole.
pub fn key(dn: &str) -> String {
    let Some(rdns) = parse(dn) else { return fold(dn) };
    let rdn_key = |rdn: &Vec<Ava>| {
        let mut pairs: Vec<String> = rdn
            .iter()
            .map(|ava| format!("{}={}", ava.attr.to_ascii_lowercase(), escape_value(&fold(&ava.value))))
            .collect();
        pairs.sort();
        pairs.join("+")
    };
    rdns.iter().map(rdn_key).collect::<Vec<_>>().join(",")
}

/// Case folding as the directory does it for names (Unicode lower case, so `Ü` equals `ü`).
pub fn fold(value: &str) -> String {
    value.to_lowercase()
}

/// The DN of the parent entry, keeping the parent's own spelling; `None` for a single-RDN DN or a bad DN.
pub fn parent(dn: &str) -> Option<String> {
    let bytes = dn.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b',' | b';' => return Some(dn[i + 1..].trim_start().to_string()),
            _ => i += 1,
        }
    }
    None
}

/// The unescaped value of the leaf RDN (the CN of a group).
pub fn leaf_value(dn: &str) -> Option<String> {
    parse(dn)?.into_iter().next()?.into_iter().next().map(|ava| ava.value)
}

/// Whether `dn` is `base` or lies below it.
pub fn is_within(dn: &str, base: &str) -> bool {
    let (Some(dn), Some(base)) = (parse(dn), parse(base)) else {
        return false;
    };
    dn.len() >= base.len() && rdns_equal(&dn[dn.len() - base.len()..], &base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dn_has_an_rdn_and_a_domain_root_only_dcs() {
        assert!(is_dn("OU=Groups,DC=corp,DC=example"));
        assert!(!is_dn("") && !is_dn("not a dn"));
        assert!(is_domain_root("DC=corp,DC=example") && is_domain_root("dc=corp"));
        assert!(!is_domain_root("OU=Groups,DC=corp,DC=example") && !is_domain_root(""));
    }

    #[test]
    fn specials_round_trip_through_escape_and_parse() {
        for cn in [
            r#"Ops, "Tier 0" + #Admins\"#,
            "#leading hash",
            " leading and trailing ",
            "semi;colon=equals<less>greater",
            "Ünïcødé 名前",
            "line\nfeed",
        ] {
            let dn = child(cn, "OU=Writeback,DC=corp,DC=example,DC=test");
            assert_eq!(leaf_value(&dn).as_deref(), Some(cn), "{dn}");
            assert_eq!(parent(&dn).as_deref(), Some("OU=Writeback,DC=corp,DC=example,DC=test"));
        }
    }

    #[test]
    fn server_spelling_is_the_same_entry() {
        assert!(same(r"CN=a\3Bb\3Dc,OU=X,DC=corp", r"cn=A\;B\=C, ou=x,dc=CORP"));
        assert!(same("CN=Über,DC=x", "CN=über,DC=x"));
        assert!(!same("CN=a,DC=x", "CN=a,DC=y"));
        assert!(!same("CN=a,OU=b,DC=x", "CN=a,DC=x"));
    }

    #[test]
    fn the_key_of_a_dn_is_one_for_every_spelling_of_it() {
        assert_eq!(key(r"CN=a\3Bb\3Dc,OU=X,DC=corp"), key(r"cn=A\;B\=C, ou=x,dc=CORP"));
        assert_eq!(key("CN=Über+sn=x,DC=x"), key("sn=X+cn=über,DC=x"));
        assert_ne!(key("CN=a,DC=x"), key("CN=a,DC=y"));
        // An escaped comma is part of the value, not a separator.
        assert_ne!(key(r"CN=a\,OU=b,DC=x"), key("CN=a,OU=b,DC=x"));
    }

    #[test]
    fn within_compares_suffixes() {
        assert!(is_within("CN=g,OU=Writeback,DC=corp", "ou=writeback,dc=corp"));
        assert!(is_within("OU=Writeback,DC=corp", "OU=Writeback,DC=corp"));
        assert!(!is_within("CN=g,OU=Other,DC=corp", "OU=Writeback,DC=corp"));
    }

    #[test]
    fn malformed_dns_do_not_parse() {
        assert!(parse("CN=a,noequals").is_none());
        assert!(parse(r"CN=a\").is_none());
        assert!(parse(r"CN=a\zz").is_some()); // "\z" escapes a plain character
        assert!(parse(r"CN=\ff").is_none()); // a lone 0xff byte is not UTF-8
    }

    #[test]
    fn escaped_trailing_space_is_kept() {
        assert_eq!(leaf_value(r"CN=a\ ,DC=x").as_deref(), Some("a "));
        assert_eq!(leaf_value("CN=a  ,DC=x").as_deref(), Some("a"));
    }
}
