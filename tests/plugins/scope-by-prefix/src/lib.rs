//! Test plugin, built against `writeback:plugin@0.2.0`: names like the agent, and chooses each group's scope by
//! its display name: `GG-` global, `DL-` domain-local, anything else the tenant's `group_scope`.

/// The scope a display name asks for; `None` leaves the tenant's.
pub fn scope_of(display_name: &str) -> Option<&'static str> {
    if display_name.starts_with("GG-") {
        Some("global")
    } else if display_name.starts_with("DL-") {
        Some("domain-local")
    } else {
        None
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "naming-policy", path: "../../../wit" });

    use exports::writeback::plugin::naming::Guest;
    use writeback::plugin::types::{Group, GroupScope, Placement};

    struct ScopeByPrefix;

    impl Guest for ScopeByPrefix {
        fn name_group(group: Group) -> Result<Placement, String> {
            let p = naming_rules::default_placement(&group.id, &group.display_name)?;
            let scope = match super::scope_of(&group.display_name) {
                Some("global") => Some(GroupScope::Global),
                Some(_) => Some(GroupScope::DomainLocal),
                None => None,
            };
            Ok(Placement { cn: p.cn, sam_account_name: p.sam_account_name, ou: p.ou, scope })
        }
    }

    export!(ScopeByPrefix);
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefixes_choose_the_scope() {
        assert_eq!(super::scope_of("GG-Admins"), Some("global"));
        assert_eq!(super::scope_of("DL-Share"), Some("domain-local"));
        assert_eq!(super::scope_of("Finance"), None);
    }
}
