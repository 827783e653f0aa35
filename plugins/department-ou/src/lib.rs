//! A naming plugin that files groups into departmental OUs by display-name prefix and names them after their
//! mailNickname.
//!
//! * OU: the longest configured prefix (`prefixes`, case-insensitive) that the trimmed display name starts with
//!   picks `ou.<prefix>`; no match picks `default-ou`, or the tenant's target OU when that is not set.
//! * CN: the cloud sync CN, as the agent's default.
//! * sAMAccountName: the mailNickname without the characters AD refuses and without whitespace, cut to 20
//!   characters, without trailing periods; `G_` and the last 18 letters or digits of the id when nothing usable
//!   is left.
//!
//! The configuration is read on every call (the host cannot list keys, so `prefixes` names them) and checked as a
//! whole: a prefix without its `ou.` key refuses every group, not only the ones it would route, so that a broken
//! configuration shows at once.

use naming_rules::{Placement, first_chars, is_illegal_sam_char, starts_with_ignore_case};

/// What the plugin needs from the agent: the WIT `host` interface, as a trait so tests can stand in for it.
pub trait Host {
    /// A `[tenant.plugins.config]` setting.
    fn config(&self, key: &str) -> Option<String>;
    /// A line in the agent's log.
    fn log(&self, level: Level, message: &str);
}

/// The log levels this plugin uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
}

/// The routing configuration, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    /// Each configured prefix with its OU, in the order of `prefixes`.
    pub prefixes: Vec<(String, String)>,
    /// The OU for groups that match no prefix; `None` = the tenant's target OU.
    pub default_ou: Option<String>,
}

/// Where a group goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// The longest matching prefix, and its OU.
    Prefix { prefix: &'a str, ou: &'a str },
    /// No prefix matched; `default-ou`.
    Default(&'a str),
    /// No prefix matched and there is no `default-ou`: the tenant's target OU.
    Target,
}

/// A setting, trimmed; blank counts as absent.
fn setting(host: &impl Host, key: &str) -> Option<String> {
    host.config(key).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Refuses OU values that cannot be a DN, naming the key.
fn check_dn(key: &str, value: &str) -> Result<(), String> {
    if !value.contains('=') || value.chars().any(char::is_control) {
        return Err(format!(
            "department-ou: {key} = {value:?} is not a DN (expected something like OU=Finance,DC=corp,DC=example)"
        ));
    }
    Ok(())
}

impl Routes {
    /// Reads `prefixes`, every `ou.<prefix>` and `default-ou`. A prefix without its `ou.` key is an error that
    /// names the key.
    pub fn read(host: &impl Host) -> Result<Routes, String> {
        let mut prefixes = Vec::new();
        for prefix in setting(host, "prefixes").unwrap_or_default().split(',').map(str::trim) {
            if prefix.is_empty() {
                continue;
            }
            let key = format!("ou.{prefix}");
            let ou = setting(host, &key).ok_or_else(|| {
                format!(
                    "department-ou: prefix {prefix:?} is listed in `prefixes` but `{key}` is missing or empty in \
                     [tenant.plugins.config]"
                )
            })?;
            check_dn(&key, &ou)?;
            prefixes.push((prefix.to_string(), ou));
        }
        let default_ou = setting(host, "default-ou");
        if let Some(ou) = &default_ou {
            check_dn("default-ou", ou)?;
        }
        Ok(Routes { prefixes, default_ou })
    }

    /// The route for a display name: the longest prefix it starts with (ignoring case and leading and trailing
    /// whitespace; the first listed wins a tie), else `default-ou`, else the target OU.
    pub fn route(&self, display_name: &str) -> Route<'_> {
        let name = display_name.trim();
        let best = self.prefixes.iter().filter(|(prefix, _)| starts_with_ignore_case(name, prefix)).fold(
            None::<&(String, String)>,
            |best, candidate| match best {
                Some(b) if b.0.chars().count() >= candidate.0.chars().count() => Some(b),
                _ => Some(candidate),
            },
        );
        match (best, &self.default_ou) {
            (Some((prefix, ou)), _) => Route::Prefix { prefix, ou },
            (None, Some(ou)) => Route::Default(ou),
            (None, None) => Route::Target,
        }
    }
}

/// The sAMAccountName a mailNickname gives: the characters AD refuses and all whitespace removed, cut to 20
/// characters, trailing periods removed. `None` when nothing is left.
pub fn nickname_sam(mail_nickname: &str) -> Option<String> {
    let cleaned: String = mail_nickname.chars().filter(|&c| !is_illegal_sam_char(c) && !c.is_whitespace()).collect();
    let sam = first_chars(&cleaned, naming_rules::MAX_SAM).trim_end_matches('.');
    (!sam.is_empty()).then(|| sam.to_string())
}

/// Names and places a group.
pub fn name_group(
    host: &impl Host,
    id: &str,
    display_name: &str,
    mail_nickname: Option<&str>,
) -> Result<Placement, String> {
    let cn = naming_rules::cloud_sync_cn(id, display_name)?;
    let routes = Routes::read(host)?;
    let ou = match routes.route(display_name) {
        Route::Prefix { prefix, ou } => {
            host.log(Level::Debug, &format!("group {id}: display name starts with {prefix:?}, OU {ou}"));
            Some(ou.to_string())
        }
        Route::Default(ou) => {
            host.log(Level::Debug, &format!("group {id}: no prefix matches, default-ou {ou}"));
            Some(ou.to_string())
        }
        Route::Target => {
            host.log(Level::Debug, &format!("group {id}: no prefix matches and no default-ou, the tenant's target OU"));
            None
        }
    };
    let sam_account_name = match mail_nickname.map(|n| (n, nickname_sam(n))) {
        Some((_, Some(sam))) => sam,
        Some((nickname, None)) => {
            let sam = naming_rules::id_sam(id)?;
            host.log(
                Level::Info,
                &format!("group {id}: mailNickname {nickname:?} leaves no usable sAMAccountName, using {sam}"),
            );
            sam
        }
        None => {
            let sam = naming_rules::id_sam(id)?;
            host.log(Level::Debug, &format!("group {id}: no mailNickname, sAMAccountName {sam}"));
            sam
        }
    };
    let placement = Placement { cn, sam_account_name, ou };
    naming_rules::validate(&placement)?;
    Ok(placement)
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "naming-policy", path: "../../wit" });

    use exports::writeback::plugin::naming::Guest;
    use writeback::plugin::host;
    use writeback::plugin::types::{Group, Placement};

    struct Agent;

    impl super::Host for Agent {
        fn config(&self, key: &str) -> Option<String> {
            host::config(key)
        }
        fn log(&self, level: super::Level, message: &str) {
            let level = match level {
                super::Level::Debug => host::Level::Debug,
                super::Level::Info => host::Level::Info,
            };
            host::log(level, message);
        }
    }

    struct DepartmentOu;

    impl Guest for DepartmentOu {
        fn name_group(group: Group) -> Result<Placement, String> {
            let p = super::name_group(&Agent, &group.id, &group.display_name, group.mail_nickname.as_deref())?;
            Ok(Placement { cn: p.cn, sam_account_name: p.sam_account_name, ou: p.ou, scope: None })
        }
    }

    export!(DepartmentOu);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    const ID: &str = "2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718";
    const FIN: &str = "OU=Finance,OU=Writeback,DC=corp,DC=example";
    const FIN_EU: &str = "OU=Finance EU,OU=Writeback,DC=corp,DC=example";
    const HR: &str = "OU=HR,OU=Writeback,DC=corp,DC=example";
    const OTHER: &str = "OU=Other,OU=Writeback,DC=corp,DC=example";

    #[derive(Default)]
    struct FakeHost {
        config: HashMap<String, String>,
        logged: RefCell<Vec<(Level, String)>>,
    }

    impl FakeHost {
        fn with(pairs: &[(&str, &str)]) -> FakeHost {
            let config = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            FakeHost { config, ..FakeHost::default() }
        }
        fn standard() -> FakeHost {
            FakeHost::with(&[
                ("prefixes", "FIN-, HR-,FIN-EU-"),
                ("ou.FIN-", FIN),
                ("ou.HR-", HR),
                ("ou.FIN-EU-", FIN_EU),
            ])
        }
    }

    impl Host for FakeHost {
        fn config(&self, key: &str) -> Option<String> {
            self.config.get(key).cloned()
        }
        fn log(&self, level: Level, message: &str) {
            self.logged.borrow_mut().push((level, message.to_string()));
        }
    }

    fn ou_of(host: &FakeHost, name: &str) -> Option<String> {
        name_group(host, ID, name, Some("nick")).unwrap().ou
    }

    #[test]
    fn routes_by_longest_prefix_ignoring_case() {
        let host = FakeHost::standard();
        assert_eq!(ou_of(&host, "FIN-Budget").as_deref(), Some(FIN));
        assert_eq!(ou_of(&host, "fin-budget").as_deref(), Some(FIN));
        assert_eq!(ou_of(&host, "  Fin-Budget ").as_deref(), Some(FIN));
        assert_eq!(ou_of(&host, "FIN-EU-Budget").as_deref(), Some(FIN_EU));
        assert_eq!(ou_of(&host, "fin-eu-budget").as_deref(), Some(FIN_EU));
        assert_eq!(ou_of(&host, "HR-Recruiting").as_deref(), Some(HR));
        assert_eq!(ou_of(&host, "FINANCE"), None);
        assert_eq!(ou_of(&host, "Sales"), None);
        let logged = host.logged.borrow();
        assert!(logged.iter().any(|(l, m)| *l == Level::Debug && m.contains("\"FIN-EU-\"") && m.contains(FIN_EU)));
        assert!(logged.iter().any(|(_, m)| m.contains("target OU")));
    }

    #[test]
    fn a_tie_goes_to_the_first_listed_prefix() {
        let host = FakeHost::with(&[("prefixes", "fin-,FIN-"), ("ou.fin-", FIN), ("ou.FIN-", OTHER)]);
        assert_eq!(ou_of(&host, "FIN-x").as_deref(), Some(FIN));
    }

    #[test]
    fn default_ou_catches_the_rest() {
        let mut host = FakeHost::standard();
        host.config.insert("default-ou".into(), format!("  {OTHER} "));
        assert_eq!(ou_of(&host, "Sales").as_deref(), Some(OTHER));
        assert_eq!(ou_of(&host, "HR-x").as_deref(), Some(HR));
        assert!(host.logged.borrow().iter().any(|(_, m)| m.contains("default-ou") && m.contains(OTHER)));
        // Blank is unset.
        host.config.insert("default-ou".into(), "  ".into());
        assert_eq!(ou_of(&host, "Sales"), None);
    }

    #[test]
    fn no_configuration_places_in_the_target_ou() {
        let host = FakeHost::default();
        let p = name_group(&host, ID, "FIN-Budget", None).unwrap();
        assert_eq!(p, naming_rules::default_placement(ID, "FIN-Budget").unwrap());
        let host = FakeHost::with(&[("prefixes", " , ,")]);
        assert_eq!(ou_of(&host, "FIN-Budget"), None);
    }

    #[test]
    fn a_prefix_without_its_ou_key_is_an_error_naming_the_key() {
        for host in [
            FakeHost::with(&[("prefixes", "FIN-,HR-"), ("ou.FIN-", FIN)]),
            FakeHost::with(&[("prefixes", "FIN-,HR-"), ("ou.FIN-", FIN), ("ou.HR-", "   ")]),
            FakeHost::with(&[("prefixes", "FIN-,HR-"), ("ou.FIN-", FIN), ("ou.hr-", HR)]),
        ] {
            for name in ["HR-x", "FIN-x", "Sales"] {
                let err = name_group(&host, ID, name, Some("nick")).unwrap_err();
                assert!(err.contains("`ou.HR-`"), "{err}");
            }
        }
    }

    #[test]
    fn ou_values_must_look_like_dns() {
        let host = FakeHost::with(&[("prefixes", "FIN-"), ("ou.FIN-", "Finance")]);
        let err = name_group(&host, ID, "FIN-x", None).unwrap_err();
        assert!(err.contains("ou.FIN-") && err.contains("not a DN"), "{err}");
        let host = FakeHost::with(&[("default-ou", "Other")]);
        assert!(name_group(&host, ID, "x", None).unwrap_err().contains("default-ou"));
    }

    #[test]
    fn cn_is_the_cloud_sync_cn_and_errors_are_the_builtins() {
        let host = FakeHost::standard();
        let long = format!("FIN-{}", "x".repeat(80));
        let p = name_group(&host, ID, &long, Some("fin")).unwrap();
        assert_eq!(p.cn, naming_rules::cloud_sync_cn(ID, &long).unwrap());
        assert_eq!(p.cn.chars().count(), 64);
        assert!(name_group(&host, ID, "   ", Some("nick")).is_err());
        assert!(name_group(&host, ID, "FIN-a\nb", Some("nick")).is_err());
        assert!(name_group(&host, "short", "FIN-x", Some("nick")).is_err());
    }

    #[test]
    fn sam_comes_from_the_mail_nickname() {
        assert_eq!(nickname_sam("finance-team").as_deref(), Some("finance-team"));
        assert_eq!(nickname_sam("Fin Team \"A\"/[1]:;|=,+*?<>\\").as_deref(), Some("FinTeamA1"));
        assert_eq!(nickname_sam("a\tb\u{7}c\u{a0}d").as_deref(), Some("abcd"));
        assert_eq!(nickname_sam("abcdefghijklmnopqrstuvwxyz").as_deref(), Some("abcdefghijklmnopqrst"));
        assert_eq!(nickname_sam("abcdefghijklmnopqrs.tuv").as_deref(), Some("abcdefghijklmnopqrs"));
        assert_eq!(nickname_sam("abcdefghijklmnopqr..tuv").as_deref(), Some("abcdefghijklmnopqr"));
        assert_eq!(nickname_sam("team.").as_deref(), Some("team"));
        assert_eq!(nickname_sam(".team").as_deref(), Some(".team"));
        assert_eq!(nickname_sam("ärzte").as_deref(), Some("ärzte"));
        for unusable in ["", "   ", "...", "*?*", ". . ."] {
            assert_eq!(nickname_sam(unusable), None, "{unusable:?}");
        }
    }

    #[test]
    fn unusable_nicknames_fall_back_to_the_id() {
        let host = FakeHost::standard();
        let p = name_group(&host, ID, "FIN-x", Some("fin.team")).unwrap();
        assert_eq!(p.sam_account_name, "fin.team");
        for nickname in [None, Some(""), Some("***"), Some("...")] {
            let p = name_group(&host, ID, "FIN-x", nickname).unwrap();
            assert_eq!(p.sam_account_name, "G_9fa1b2c3d4e5f60718", "{nickname:?}");
        }
        assert!(host.logged.borrow().iter().any(|(l, m)| *l == Level::Info && m.contains("\"***\"")));
        for nickname in ["x", "a*b", "  spaced name ", &"long".repeat(20), "trailing...", "ärzte"] {
            let p = name_group(&host, ID, "HR-x", Some(nickname)).unwrap();
            assert!(naming_rules::validate(&p).is_ok(), "{nickname:?} -> {p:?}");
        }
    }
}
