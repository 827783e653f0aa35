//! Test plugin: "version 2" of a naming policy that otherwise names like the agent. Its CN is the trimmed display
//! name cut to 46 characters, trailing whitespace removed, then ` (v2)`, `_` and the last 12 characters of the
//! id (at most 64 characters); the sAMAccountName is the agent's `G_…`, so it does not change. Swapping it in
//! changes every CN: the agent must treat that as renames, not as deletes and creates.

use naming_rules::Placement;

/// What version 2 adds before the `_`.
pub const TAG: &str = " (v2)";
/// How much of the display name fits beside the tag: 46 + 5 + 1 + 12 = 64.
pub const NAME_CHARS: usize = 46;

/// Names a group the version 2 way; refuses exactly what the agent refuses.
pub fn name_group(id: &str, display_name: &str) -> Result<Placement, String> {
    let placement = Placement {
        cn: naming_rules::tagged_cn(id, display_name, NAME_CHARS, TAG)?,
        sam_account_name: naming_rules::id_sam(id)?,
        ou: None,
    };
    naming_rules::validate(&placement)?;
    Ok(placement)
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "naming-policy", path: "../../../wit/0.1.0" });

    use exports::writeback::plugin::naming::Guest;
    use writeback::plugin::types::{Group, Placement};

    struct SuffixV2;

    impl Guest for SuffixV2 {
        fn name_group(group: Group) -> Result<Placement, String> {
            let p = super::name_group(&group.id, &group.display_name)?;
            Ok(Placement { cn: p.cn, sam_account_name: p.sam_account_name, ou: p.ou })
        }
    }

    export!(SuffixV2);
}

#[cfg(test)]
mod tests {
    use super::name_group;

    const ID: &str = "2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718";

    #[test]
    fn v2_cns_differ_but_keep_the_sam() {
        let v1 = naming_rules::default_placement(ID, " Finance ").unwrap();
        let v2 = name_group(ID, " Finance ").unwrap();
        assert_eq!(v2.cn, "Finance (v2)_c3d4e5f60718");
        assert_ne!(v1.cn, v2.cn);
        assert_eq!(v1.sam_account_name, v2.sam_account_name);
    }

    #[test]
    fn long_names_still_fit() {
        let v2 = name_group(ID, &"x".repeat(80)).unwrap();
        assert_eq!(v2.cn, format!("{} (v2)_c3d4e5f60718", "x".repeat(46)));
        assert_eq!(v2.cn.chars().count(), 64);
        let v2 = name_group(ID, &format!("{} tail", "y".repeat(45))).unwrap();
        assert_eq!(v2.cn, format!("{} (v2)_c3d4e5f60718", "y".repeat(45)));
    }

    #[test]
    fn refuses_what_the_agent_refuses() {
        for (id, name) in [(ID, ""), (ID, " \t"), (ID, "a\u{0}b"), ("short", "Finance")] {
            assert!(name_group(id, name).is_err());
            assert!(naming_rules::default_placement(id, name).is_err());
        }
    }
}
