//! Test plugin: answers every group with names AD refuses, a CN of 70 characters and a sAMAccountName with a
//! `*`. The agent must refuse the answer rather than write it (Samba would accept both).
//!
//! Optional `[tenant.plugins.config]` key `break`: `cn` breaks only the CN (the sAMAccountName is then a valid
//! `G_…`), `sam` only the sAMAccountName (the CN is then a valid cloud sync style CN); unset or anything else
//! breaks both.

/// A CN well past AD's 64 characters.
pub fn long_cn() -> String {
    "B".repeat(70)
}

/// A sAMAccountName with a character AD refuses.
pub const BAD_SAM: &str = "bad*name";

/// The answer: (cn, sAMAccountName), as broken as `which` asks for.
pub fn names(which: Option<&str>) -> (String, String) {
    match which.map(str::trim) {
        Some("cn") => (long_cn(), "G_valid".to_string()),
        Some("sam") => ("Bad names_000000000000".to_string(), BAD_SAM.to_string()),
        _ => (long_cn(), BAD_SAM.to_string()),
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "naming-policy", path: "../../../wit/0.1.0" });

    use exports::writeback::plugin::naming::Guest;
    use writeback::plugin::host;
    use writeback::plugin::types::{Group, Placement};

    struct BadNames;

    impl Guest for BadNames {
        fn name_group(_group: Group) -> Result<Placement, String> {
            let (cn, sam_account_name) = super::names(host::config("break").as_deref());
            Ok(Placement { cn, sam_account_name, ou: None })
        }
    }

    export!(BadNames);
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn broken_as_asked() {
        let (cn, sam) = names(None);
        assert_eq!(cn.chars().count(), 70);
        assert!(sam.contains('*'));
        let (cn, sam) = names(Some("cn"));
        assert_eq!((cn.chars().count(), sam.as_str()), (70, "G_valid"));
        let (cn, sam) = names(Some("sam"));
        assert!(cn.chars().count() <= 64 && sam.contains('*'));
    }
}
