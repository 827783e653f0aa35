//! A transform plugin that records where a group comes from in its `info` attribute (the "Notes" field of
//! Active Directory Users and Computers) and keeps groups whose display name matches a pattern out of AD.

/// The note when `note` is not configured.
pub const DEFAULT_NOTE: &str = "Managed by writeback from Entra ID group {id}";
/// AD's upper bound for `info` (its `rangeUpper`), in characters.
pub const MAX_INFO: usize = 1024;

/// What the plugin needs from the agent: `host.config`, as a trait so tests can stand in for it.
pub trait Host {
    fn config(&self, key: &str) -> Option<String>;
}

/// The part of the WIT `group` the plugin uses.
#[derive(Debug, Clone, Copy)]
pub struct Group<'a> {
    pub id: &'a str,
    pub display_name: &'a str,
    /// `security` or `microsoft365`, as the WIT `group-kind` spells it.
    pub kind: &'a str,
}

/// What to do with a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Write `info` with these values (none: clear it).
    WriteInfo(Vec<String>),
    /// Keep the group out of AD, for this reason.
    Exclude(String),
}

/// Decides for one group: excluded when its display name matches `exclude`, otherwise the note in `info`.
pub fn transform(host: &impl Host, group: Group<'_>) -> Verdict {
    if let Some(pattern) = host.config("exclude").filter(|p| !p.trim().is_empty()) {
        let pattern = pattern.trim();
        if wildcard_match(pattern, group.display_name.trim()) {
            return Verdict::Exclude(format!("display name matches exclude pattern {pattern}"));
        }
    }
    let template = host.config("note").unwrap_or_else(|| DEFAULT_NOTE.to_string());
    let note = render(&template, group);
    let note: String = note.trim().chars().take(MAX_INFO).collect();
    Verdict::WriteInfo(if note.is_empty() { Vec::new() } else { vec![note] })
}

/// Fills in `{id}`, `{displayName}` and `{kind}` in one pass, so that braces inside a display name are never
/// taken for placeholders. Anything else in braces stays as written.
pub fn render(template: &str, group: Group<'_>) -> String {
    let mut out = String::with_capacity(template.len() + group.display_name.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        rest = &rest[open..];
        let value = [("{id}", group.id), ("{displayName}", group.display_name), ("{kind}", group.kind)]
            .into_iter()
            .find(|(placeholder, _)| rest.starts_with(placeholder));
        match value {
            Some((placeholder, value)) => {
                out.push_str(value);
                rest = &rest[placeholder.len()..];
            }
            None => {
                out.push('{');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether all of `text` matches `pattern`, ignoring case: `*` is any run of characters (also none), `?` exactly
/// one character, everything else itself.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently stands for the end of.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && (pattern[p] == '?' || same_ignoring_case(pattern[p], text[t])) {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            // Let the last `*` swallow one more character and retry from there.
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

fn same_ignoring_case(a: char, b: char) -> bool {
    a == b || a.to_lowercase().eq(b.to_lowercase())
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "transformer", path: "../../wit" });

    use exports::writeback::plugin::transform::{Guest, Verdict};
    use writeback::plugin::host;
    use writeback::plugin::types::{Attribute, Group, GroupKind};

    struct Agent;

    impl super::Host for Agent {
        fn config(&self, key: &str) -> Option<String> {
            host::config(key)
        }
    }

    struct ProvenanceNote;

    impl Guest for ProvenanceNote {
        fn transform_group(group: Group, _attributes: Vec<Attribute>) -> Result<Verdict, String> {
            let kind = match group.kind {
                GroupKind::Security => "security",
                GroupKind::Microsoft365 => "microsoft365",
            };
            let view = super::Group { id: &group.id, display_name: &group.display_name, kind };
            Ok(match super::transform(&Agent, view) {
                super::Verdict::Exclude(reason) => {
                    host::log(host::Level::Debug, &format!("group {}: {reason}", group.id));
                    Verdict::Exclude(reason)
                }
                super::Verdict::WriteInfo(values) => {
                    Verdict::Write(vec![Attribute { name: "info".to_string(), values }])
                }
            })
        }
    }

    export!(ProvenanceNote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const ID: &str = "2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718";

    struct FakeHost(HashMap<&'static str, &'static str>);

    impl Host for FakeHost {
        fn config(&self, key: &str) -> Option<String> {
            self.0.get(key).map(|v| v.to_string())
        }
    }

    fn host(pairs: &[(&'static str, &'static str)]) -> FakeHost {
        FakeHost(pairs.iter().copied().collect())
    }

    fn group(display_name: &str) -> Group<'_> {
        Group { id: ID, display_name, kind: "security" }
    }

    #[test]
    fn default_note() {
        assert_eq!(
            transform(&host(&[]), group("Finance")),
            Verdict::WriteInfo(vec![format!("Managed by writeback from Entra ID group {ID}")])
        );
    }

    #[test]
    fn template_placeholders() {
        let h = host(&[("note", "{kind} group {displayName} ({id}); {unknown} {id")]);
        let g = Group { id: "abc", display_name: "Ops {id}", kind: "microsoft365" };
        assert_eq!(
            transform(&h, g),
            Verdict::WriteInfo(vec!["microsoft365 group Ops {id} (abc); {unknown} {id".into()])
        );
        assert_eq!(render("{id}{id}", g), "abcabc");
        assert_eq!(render("é{displayName}é", g), "éOps {id}é");
        assert_eq!(render("", g), "");
    }

    #[test]
    fn notes_fit_ad_and_blank_notes_clear_info() {
        let long: &'static str = "n".repeat(2000).leak();
        let h = host(&[("note", long)]);
        assert_eq!(transform(&h, group("x")), Verdict::WriteInfo(vec!["n".repeat(MAX_INFO)]));
        assert_eq!(transform(&host(&[("note", "  ")]), group("x")), Verdict::WriteInfo(vec![]));
    }

    #[test]
    fn exclude_pattern() {
        let h = host(&[("exclude", "*-test")]);
        assert_eq!(
            transform(&h, group("Finance-TEST")),
            Verdict::Exclude("display name matches exclude pattern *-test".into())
        );
        assert_eq!(
            transform(&h, group(" finance-test ")),
            Verdict::Exclude("display name matches exclude pattern *-test".into())
        );
        assert!(matches!(transform(&h, group("Finance-test-2")), Verdict::WriteInfo(_)));
        assert!(matches!(transform(&host(&[("exclude", "  ")]), group("")), Verdict::WriteInfo(_)));
    }

    #[test]
    fn wildcards() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("", "", true),
            ("", "x", false),
            ("abc", "ABC", true),
            ("abc", "abcd", false),
            ("a*c", "abbbc", true),
            ("a*c", "ac", true),
            ("a*c", "acb", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("?", "é", true),
            ("??", "😀", false),
            ("*test*", "my TEST group", true),
            ("*-test", "a-test-test", true),
            ("*a*b*c*", "xaxxbxxcx", true),
            ("*a*b*c*", "xaxxcxxbx", false),
            ("tmp-*-old", "TMP-finance-OLD", true),
            ("Ärzte*", "ärzte team", true),
            ("**", "x", true),
            ("a**b", "ab", true),
            ("*aab", "aaab", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(wildcard_match(pattern, text), expected, "{pattern:?} vs {text:?}");
        }
    }
}
