//! The plugin against the agent's built-in policy: `host/src/naming.rs` itself is compiled in here, so any change
//! to the built-in that the plugin does not follow breaks this test. Ok values must be equal, and where one
//! side refuses a group, so must the other (the error texts differ).

#[allow(dead_code)]
#[path = "../../../host/src/naming.rs"]
mod builtin;

use cloud_sync_naming::name_group;

const ID: &str = "2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718";

/// Ids: the usual GUID, upper case, odd shapes, and too few letters or digits.
fn ids() -> Vec<String> {
    [
        ID,
        "2F8A3C1E-5B7D-4E9F-A1B2-C3D4E5F60718",
        "00000000-0000-0000-0000-000000000000",
        "abcdefghijkl",            // exactly 12 alphanumerics
        "abcdefghijk",             // 11
        "abc-def-ghi-jk",          // 11 alphanumerics, 14 characters
        "ab-cd-ef-gh-ij-kl",       // 12 alphanumerics; the last 12 characters include hyphens
        "a-b-c-d-e-f-g-h-i-j-k-l", // 12 alphanumerics, every other one a hyphen
        "short",
        "",
        "éééééééééééééééééé123456789012", // multi-byte characters in the last 12 are kept in the CN
        "1234567890123456789012345678901234567890", // more than 18 alphanumerics
        "123456789012\u{7}",              // a control character ends up in the CN
        "123456789012 ",                  // a trailing space ends up in the CN
        "1234567890ab\u{3000}",           // an ideographic space too
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// Display names that have tripped naming code before, or could.
fn names() -> Vec<String> {
    let mut names: Vec<String> = [
        "Finance Team",
        "  Finance Team  ",
        "",
        " ",
        "   \t  ",
        "\u{a0}\u{3000}",
        "a",
        "Ops, \"Tier 0\" + #Admins\\",
        ",+\"\\<>;=#",
        "#leading hash",
        "trailing backslash\\",
        " leading space",
        "trailing space ",
        "a\nb",
        "a\rb",
        "a\u{0}b",
        "a\u{7f}b",
        "a\u{85}b",
        "\tTabbed\t",
        "Line\n",
        "\u{85}next-line-is-whitespace-and-control\u{85}",
        "Zero\u{200b}Width",
        "Right\u{202e}ToLeft",
        "Ärzte & Pflege",
        "日本語のグループ",
        "😀 emoji group 😀",
        "e\u{301}combining",
        "{id} {displayName}",
        "DC=corp,DC=example",
        "OU=x",
        "CN=Injected,OU=Evil",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for len in [50, 51, 52, 53, 63, 64, 65, 80, 256] {
        names.push("x".repeat(len));
        names.push("é".repeat(len));
        names.push("😀".repeat(len));
        names.push(format!(" {} ", "y".repeat(len)));
    }
    // Whitespace exactly at the cut, and just before and after it.
    for at in [49, 50, 51, 52] {
        let mut s: String = "n".repeat(at);
        s.push(' ');
        s.push_str(&"m".repeat(20));
        names.push(s);
        names.push(format!("{}  \t {}", "n".repeat(at - 2), "m".repeat(20)));
        names.push(format!("{}\u{3000}\u{a0}{}", "n".repeat(at), "m".repeat(20)));
    }
    // A control character past the part the CN keeps is still refused.
    names.push(format!("{}\u{1}", "z".repeat(60)));
    // 51 characters of which the last ones are spaces, then more text.
    names.push(format!("{}{}tail", "w".repeat(45), " ".repeat(10)));
    names
}

fn assert_same(id: &str, name: &str) {
    let ours = name_group(id, name);
    let theirs = builtin::default_placement(id, Some(name));
    match (&ours, &theirs) {
        (Ok(p), Ok(b)) => {
            assert_eq!(
                (&p.cn, &p.sam_account_name, &p.ou),
                (&b.cn, &b.sam_account_name, &b.ou),
                "id {id:?}, display name {name:?}"
            );
            assert!(p.cn.chars().count() <= 64 && p.sam_account_name.chars().count() <= 20);
        }
        (Err(_), Err(_)) => {}
        _ => panic!("id {id:?}, display name {name:?}: plugin says {ours:?}, agent says {theirs:?}"),
    }
}

#[test]
fn corpus_matches_the_builtin() {
    let (mut ok, mut err) = (0, 0);
    for id in ids() {
        for name in names() {
            assert_same(&id, &name);
            if name_group(&id, &name).is_ok() { ok += 1 } else { err += 1 }
        }
    }
    // The corpus must exercise both outcomes, plenty of each.
    assert!(ok > 300 && err > 300, "{ok} ok, {err} refused");
}

/// Generated names from an alphabet of awkward characters, a few thousand of them, deterministic.
#[test]
fn generated_names_match_the_builtin() {
    const ALPHABET: &[char] = &[
        'a', 'Z', '0', ' ', ' ', '\t', '\n', '\u{a0}', '\u{3000}', '\u{85}', '\u{7f}', 'é', 'ß', '😀', '\u{301}', ',',
        '+', '"', '\\', '<', '>', ';', '=', '#', '*', '.', '_', '-',
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Every other name leaves out the control characters, or long names would nearly all be refused.
    let printable: Vec<char> = ALPHABET.iter().copied().filter(|c| !c.is_control()).collect();
    let ids = ids();
    let (mut ok, mut err) = (0, 0);
    for round in 0..6000 {
        let alphabet = if round % 2 == 0 { ALPHABET } else { &printable[..] };
        let len = (next() % 90) as usize;
        let name: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
        let id = if round % 3 == 0 { &ids[(next() % ids.len() as u64) as usize] } else { ID };
        assert_same(id, &name);
        if name_group(id, &name).is_ok() { ok += 1 } else { err += 1 }
    }
    assert!(ok > 2000 && err > 1000, "{ok} ok, {err} refused");
}

#[test]
fn expected_values() {
    let p = name_group(ID, "  Finance Team  ").unwrap();
    assert_eq!(
        (p.cn.as_str(), p.sam_account_name.as_str(), p.ou),
        ("Finance Team_c3d4e5f60718", "G_9fa1b2c3d4e5f60718", None)
    );

    // 51 characters are kept; 52 and 80 are cut to 51.
    for len in [51, 52, 80] {
        let p = name_group(ID, &"x".repeat(len)).unwrap();
        assert_eq!(p.cn, format!("{}_c3d4e5f60718", "x".repeat(51)));
        assert_eq!(p.cn.chars().count(), 64);
    }
    // Characters, not bytes.
    let p = name_group(ID, &"é".repeat(60)).unwrap();
    assert_eq!(p.cn, format!("{}_c3d4e5f60718", "é".repeat(51)));
    // Whitespace at the cut goes, whitespace inside stays.
    let p = name_group(ID, &format!("{} {}", "n".repeat(50), "m".repeat(20))).unwrap();
    assert_eq!(p.cn, format!("{}_c3d4e5f60718", "n".repeat(50)));
    let p = name_group(ID, "a  b").unwrap();
    assert_eq!(p.cn, "a  b_c3d4e5f60718");
    // Specials are kept as they are: escaping them in DNs is the directory writer's job.
    let p = name_group(ID, ",+\"\\<>;=#").unwrap();
    assert_eq!(p.cn, ",+\"\\<>;=#_c3d4e5f60718");
    // The last 12 characters of the id, hyphens included; the sAM only from letters and digits.
    let p = name_group("ab-cd-ef-gh-ij-kl", "x").unwrap();
    assert_eq!((p.cn.as_str(), p.sam_account_name.as_str()), ("x_-ef-gh-ij-kl", "G_abcdefghijkl"));
    let p = name_group("2F8A3C1E-5B7D-4E9F-A1B2-C3D4E5F60718", "x").unwrap();
    assert_eq!((p.cn.as_str(), p.sam_account_name.as_str()), ("x_C3D4E5F60718", "G_9fa1b2c3d4e5f60718"));
}

#[test]
fn refusals() {
    for name in ["", "   ", "\u{3000}", "a\nb", "a\u{0}b", &format!("{}\u{1}", "z".repeat(60))] {
        assert!(name_group(ID, name).is_err(), "{name:?}");
    }
    for id in ["", "short", "abcdefghijk", "abc-def-ghi-jk", "123456789012\u{7}"] {
        assert!(name_group(id, "Finance").is_err(), "{id:?}");
    }
    // Leading and trailing control characters that are also whitespace are trimmed away, as the agent does.
    assert!(name_group(ID, "\tTabbed\n").is_ok());
}
