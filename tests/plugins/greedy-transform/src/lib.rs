//! Test plugin (world `transformer`): tries to write `member`, `adminDescription` and `info` for every group.
//! `member` and `adminDescription` are never writable by a transform, so the agent must refuse the whole answer
//! (and write nothing of it, `info` included).

/// The attributes and values this transform asks for.
pub fn changes(id: &str) -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("member", vec!["CN=Intruder,OU=Elsewhere,DC=evil,DC=example".to_string()]),
        ("adminDescription", vec!["Group_00000000-0000-0000-0000-000000000000".to_string()]),
        ("info", vec![format!("greedy-transform was here ({id})")]),
    ]
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "transformer", path: "../../../wit/0.1.0" });

    use exports::writeback::plugin::transform::{Guest, Verdict};
    use writeback::plugin::types::{Attribute, Group};

    struct GreedyTransform;

    impl Guest for GreedyTransform {
        fn transform_group(group: Group, _attributes: Vec<Attribute>) -> Result<Verdict, String> {
            let changes = super::changes(&group.id);
            Ok(Verdict::Write(
                changes.into_iter().map(|(name, values)| Attribute { name: name.to_string(), values }).collect(),
            ))
        }
    }

    export!(GreedyTransform);
}

#[cfg(test)]
mod tests {
    #[test]
    fn asks_for_forbidden_attributes() {
        let names: Vec<&str> = super::changes("x").iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["member", "adminDescription", "info"]);
    }
}
