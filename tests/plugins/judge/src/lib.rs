//! Test plugin, built against `writeback:plugin@0.2.0` (world `transformer`): writes into `info` what 0.2.0 tells
//! a transform of the group, so a test can see the host fill it in: `members=N types=A,B scope=S target=T`.

/// The `info` value for these facts.
pub fn info(members: u32, types: &[String], scope: &str, target: &str) -> String {
    format!("members={members} types={} scope={scope} target={target}", types.join(","))
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "transformer", path: "../../../wit" });

    use exports::writeback::plugin::transform::{Guest, Verdict};
    use writeback::plugin::types::{Attribute, Group, GroupScope, OnpremGroupType};

    struct Judge;

    impl Guest for Judge {
        fn transform_group(group: Group, _attributes: Vec<Attribute>) -> Result<Verdict, String> {
            let scope = match group.scope {
                GroupScope::Universal => "universal",
                GroupScope::Global => "global",
                GroupScope::DomainLocal => "domain-local",
            };
            let target = match group.target_type {
                OnpremGroupType::Security => "security",
                OnpremGroupType::Distribution => "distribution",
                OnpremGroupType::MailEnabledSecurity => "mail-enabled-security",
            };
            let info = super::info(group.member_count, &group.group_types, scope, target);
            Ok(Verdict::Write(vec![Attribute { name: "info".into(), values: vec![info] }]))
        }
    }

    export!(Judge);
}

#[cfg(test)]
mod tests {
    #[test]
    fn info_names_every_fact() {
        let types = ["Unified".to_string(), "DynamicMembership".to_string()];
        assert_eq!(
            super::info(3, &types, "global", "security"),
            "members=3 types=Unified,DynamicMembership scope=global target=security"
        );
    }
}
