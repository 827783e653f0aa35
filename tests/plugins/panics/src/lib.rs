//! Test plugin: names groups like the agent does, except that it panics when the display name contains `boom`
//! (lower case). A panic in a wasm32-wasip2 component prints its message to stderr and traps; the agent must
//! log it, count the group as failed, and use a fresh instance for the next call.

use naming_rules::Placement;

/// The built-in naming, or a panic for display names containing `boom`.
pub fn name_group(id: &str, display_name: &str) -> Result<Placement, String> {
    if display_name.contains("boom") {
        panic!("panics plugin: display name {display_name:?} contains boom");
    }
    naming_rules::default_placement(id, display_name)
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "naming-policy", path: "../../../wit/0.1.0" });

    use exports::writeback::plugin::naming::Guest;
    use writeback::plugin::types::{Group, Placement};

    struct Panics;

    impl Guest for Panics {
        fn name_group(group: Group) -> Result<Placement, String> {
            let p = super::name_group(&group.id, &group.display_name)?;
            Ok(Placement { cn: p.cn, sam_account_name: p.sam_account_name, ou: p.ou })
        }
    }

    export!(Panics);
}

#[cfg(test)]
mod tests {
    const ID: &str = "2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718";

    #[test]
    fn names_like_the_agent() {
        assert_eq!(super::name_group(ID, "Finance"), naming_rules::default_placement(ID, "Finance"));
        assert_eq!(super::name_group(ID, "BOOM"), naming_rules::default_placement(ID, "BOOM"));
    }

    #[test]
    #[should_panic(expected = "contains boom")]
    fn boom() {
        let _ = super::name_group(ID, "ka-boom!");
    }
}
