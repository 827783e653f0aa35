//! Test plugin: names groups like the agent does, except that it sleeps for an hour when the display name
//! contains `sleep`. A sleep waits in `wasi:io/poll`, in the host, where epoch interruption never fires; the
//! agent must still end the call at its timeout and hold only that group.

use naming_rules::Placement;

/// How long a sleeping call asks to wait: far past any timeout a test would wait for.
pub const NAP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether this display name makes the plugin sleep.
pub fn sleeps(display_name: &str) -> bool {
    display_name.contains("sleep")
}

/// The built-in naming, after a long sleep for display names containing `sleep`.
pub fn name_group(id: &str, display_name: &str) -> Result<Placement, String> {
    if sleeps(display_name) {
        std::thread::sleep(NAP);
    }
    naming_rules::default_placement(id, display_name)
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "naming-policy", path: "../../../wit/0.1.0" });

    use exports::writeback::plugin::naming::Guest;
    use writeback::plugin::types::{Group, Placement};

    struct Sleeper;

    impl Guest for Sleeper {
        fn name_group(group: Group) -> Result<Placement, String> {
            let p = super::name_group(&group.id, &group.display_name)?;
            Ok(Placement { cn: p.cn, sam_account_name: p.sam_account_name, ou: p.ou })
        }
    }

    export!(Sleeper);
}

#[cfg(test)]
mod tests {
    const ID: &str = "2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718";

    #[test]
    fn names_like_the_agent_when_awake() {
        assert!(!super::sleeps("Finance"));
        assert!(super::sleeps("Nap: sleep well"));
        assert_eq!(super::name_group(ID, "Finance"), naming_rules::default_placement(ID, "Finance"));
    }
}
