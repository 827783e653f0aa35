//! A naming plugin that does exactly what the agent does without one: the cloud sync CN
//! (`Left(Trim(displayName), 51) + "_" + last 12 of objectId`), `G_` and the last 18 letters or digits of the
//! object id as sAMAccountName, and the tenant's target OU. It is the reference for writing naming plugins,
//! and switching to it must never rename a group.

pub use naming_rules::Placement;

/// Names a group as the built-in policy does. Only the id and the display name matter.
pub fn name_group(id: &str, display_name: &str) -> Result<Placement, String> {
    naming_rules::default_placement(id, display_name)
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "naming-policy", path: "../../wit" });

    use exports::writeback::plugin::naming::Guest;
    use writeback::plugin::types::{Group, Placement};

    struct CloudSyncNaming;

    impl Guest for CloudSyncNaming {
        fn name_group(group: Group) -> Result<Placement, String> {
            let p = super::name_group(&group.id, &group.display_name)?;
            Ok(Placement { cn: p.cn, sam_account_name: p.sam_account_name, ou: p.ou, scope: None })
        }
    }

    export!(CloudSyncNaming);
}
