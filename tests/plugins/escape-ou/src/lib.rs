//! Test plugin: names groups like the agent does, but places them in an OU outside the tenant's target OU and
//! `allowed_ous`. The agent must refuse the placement.

use naming_rules::Placement;

/// The OU this plugin tries to escape to.
pub const EVIL_OU: &str = "OU=Elsewhere,DC=evil,DC=example";

/// The built-in names, in `EVIL_OU`.
pub fn name_group(id: &str, display_name: &str) -> Result<Placement, String> {
    let placement = naming_rules::default_placement(id, display_name)?;
    Ok(Placement { ou: Some(EVIL_OU.to_string()), ..placement })
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "naming-policy", path: "../../../wit/0.1.0" });

    use exports::writeback::plugin::naming::Guest;
    use writeback::plugin::types::{Group, Placement};

    struct EscapeOu;

    impl Guest for EscapeOu {
        fn name_group(group: Group) -> Result<Placement, String> {
            let p = super::name_group(&group.id, &group.display_name)?;
            Ok(Placement { cn: p.cn, sam_account_name: p.sam_account_name, ou: p.ou })
        }
    }

    export!(EscapeOu);
}

#[cfg(test)]
mod tests {
    #[test]
    fn valid_names_foreign_ou() {
        let p = super::name_group("2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718", "Finance").unwrap();
        assert!(naming_rules::validate(&p).is_ok());
        assert_eq!(p.ou.as_deref(), Some(super::EVIL_OU));
    }
}
