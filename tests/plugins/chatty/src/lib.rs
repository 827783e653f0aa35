//! Test plugin: names groups like the agent does, and on every call prints one line to stdout, one to stderr,
//! and logs one through `host.log` (level info). Each line starts with a fixed marker and ends with the group
//! id, so a test can find all three in the agent's log, tagged with the plugin's name:
//!
//! ```text
//! chatty-stdout: naming group <id>
//! chatty-stderr: naming group <id>
//! chatty-log: naming group <id>
//! ```

use naming_rules::Placement;

pub const STDOUT_MARKER: &str = "chatty-stdout";
pub const STDERR_MARKER: &str = "chatty-stderr";
pub const LOG_MARKER: &str = "chatty-log";

/// Prints, logs through `log`, and names like the agent.
pub fn name_group(id: &str, display_name: &str, log: impl FnOnce(&str)) -> Result<Placement, String> {
    println!("{STDOUT_MARKER}: naming group {id}");
    eprintln!("{STDERR_MARKER}: naming group {id}");
    log(&format!("{LOG_MARKER}: naming group {id}"));
    naming_rules::default_placement(id, display_name)
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "naming-policy", path: "../../../wit/0.1.0" });

    use exports::writeback::plugin::naming::Guest;
    use writeback::plugin::host;
    use writeback::plugin::types::{Group, Placement};

    struct Chatty;

    impl Guest for Chatty {
        fn name_group(group: Group) -> Result<Placement, String> {
            let log = |message: &str| host::log(host::Level::Info, message);
            let p = super::name_group(&group.id, &group.display_name, log)?;
            Ok(Placement { cn: p.cn, sam_account_name: p.sam_account_name, ou: p.ou })
        }
    }

    export!(Chatty);
}

#[cfg(test)]
mod tests {
    #[test]
    fn logs_and_names_like_the_agent() {
        let id = "2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718";
        let mut logged = String::new();
        let p = super::name_group(id, "Finance", |m| logged = m.to_string()).unwrap();
        assert_eq!(p, naming_rules::default_placement(id, "Finance").unwrap());
        assert_eq!(logged, format!("chatty-log: naming group {id}"));
    }
}
