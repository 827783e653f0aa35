//! Test plugin, built against `writeback:plugin@0.2.0`: a naming policy that imports `wasi:cli/bogus`, an
//! interface of a package the agent provides but that the package does not have. It cannot be linked, and the
//! agent must name that import when it refuses it.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "misfit", path: "wit", generate_all });

    use exports::writeback::plugin::naming::Guest;
    use writeback::plugin::types::{Group, Placement};

    struct Misfit;

    impl Guest for Misfit {
        fn name_group(group: Group) -> Result<Placement, String> {
            if group.display_name.contains("ping") {
                wasi::cli::bogus::ping();
            }
            let p = naming_rules::default_placement(&group.id, &group.display_name)?;
            Ok(Placement { cn: p.cn, sam_account_name: p.sam_account_name, ou: p.ou, scope: None })
        }
    }

    export!(Misfit);
}
