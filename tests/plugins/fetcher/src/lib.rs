//! Test plugin, built against `writeback:plugin@0.2.0`: a naming policy that also imports `acme:net/fetch`, an
//! interface the agent does not provide, as components from other toolchains import `wasi:http`. It names like
//! the agent, and calls the import only for a group whose display name contains `fetch` (a function) or `connect`
//! (a resource), so it must load, name every other group, and trap on those two alone.

/// What a display name makes the plugin call, if anything.
pub fn calls(display_name: &str) -> Option<&'static str> {
    if display_name.contains("fetch") {
        Some("get")
    } else if display_name.contains("connect") {
        Some("connection")
    } else {
        None
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "fetcher", path: "wit", generate_all });

    use acme::net::fetch;
    use exports::writeback::plugin::naming::Guest;
    use writeback::plugin::types::{Group, Placement};

    struct Fetcher;

    impl Guest for Fetcher {
        fn name_group(group: Group) -> Result<Placement, String> {
            match super::calls(&group.display_name) {
                Some("get") => drop(fetch::get("https://example.invalid/")),
                Some(_) => drop(fetch::Connection::new("example.invalid").send("hello")),
                None => {}
            }
            let p = naming_rules::default_placement(&group.id, &group.display_name)?;
            Ok(Placement { cn: p.cn, sam_account_name: p.sam_account_name, ou: p.ou, scope: None })
        }
    }

    export!(Fetcher);
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_some_names_call_the_import() {
        assert_eq!(super::calls("fetch this"), Some("get"));
        assert_eq!(super::calls("connect there"), Some("connection"));
        assert_eq!(super::calls("Finance"), None);
    }
}
