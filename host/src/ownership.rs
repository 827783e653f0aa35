//! Which directory object is a cloud group's own. Anyone who can create a group somewhere in the domain can
//! copy a managed group's anchor (`adminDescription`), so an anchor alone proves nothing. An object is the
//! group's own when it is the one whose objectGUID the state recorded, or, with none recorded, the only
//! anchored object inside the tenant's OUs. Any other object carrying the anchor is a look-alike: reported,
//! and never written, nested or deleted. Two candidates inside the tenant's OUs, with none recorded, are a
//! conflict: neither is touched until an admin removes one.

/// One directory object carrying a group's anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// objectGUID, lower case.
    pub guid: String,
    pub dn: String,
}

/// Which of a group's candidates is its own.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The index of the group's own object.
    pub ours: Option<usize>,
    /// Indexes of objects that carry the anchor but are not the group's own.
    pub lookalikes: Vec<usize>,
    /// Indexes of the objects that make it ambiguous which one is the group's own (none is then).
    pub conflicting: Vec<usize>,
}

/// Decides which `candidates` (all carrying one group's anchor) is the group's own, given the objectGUID the
/// state recorded for it and the tenant's OUs.
pub fn judge(candidates: &[Candidate], recorded_guid: Option<&str>, ous: &[String]) -> Verdict {
    let mut verdict = Verdict::default();
    let recorded = recorded_guid.and_then(|guid| candidates.iter().position(|c| c.guid.eq_ignore_ascii_case(guid)));
    if let Some(ours) = recorded {
        verdict.ours = Some(ours);
        verdict.lookalikes = (0..candidates.len()).filter(|&i| i != ours).collect();
        return verdict;
    }
    let (inside, outside): (Vec<usize>, Vec<usize>) =
        (0..candidates.len()).partition(|&i| ous.iter().any(|ou| crate::dn::is_within(&candidates[i].dn, ou)));
    verdict.lookalikes = outside;
    match inside.as_slice() {
        [] => {}
        [only] => verdict.ours = Some(*only),
        _ => verdict.conflicting = inside,
    }
    verdict
}

/// The cloud id an anchor value names: `Group_<GUID>` only. Connect's `Group_DoNotSync` and any other
/// anchor that does not carry a GUID is not writeback's.
pub fn anchor_id(value: &str) -> Option<&str> {
    value.strip_prefix("Group_").filter(|id| is_guid(id))
}

/// Whether `text` is a GUID in its 8-4-4-4-12 hexadecimal form, as Graph writes object ids.
pub fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    groups.len() == lengths.len()
        && groups.iter().zip(lengths).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUS: &[&str] = &["OU=Writeback,DC=corp", "OU=Finance,DC=corp"];

    fn ous() -> Vec<String> {
        OUS.iter().map(|s| s.to_string()).collect()
    }

    fn at(guid: &str, dn: &str) -> Candidate {
        Candidate { guid: guid.into(), dn: dn.into() }
    }

    #[test]
    fn the_recorded_object_is_ours_wherever_it_is_and_every_copy_is_a_lookalike() {
        // Moved out on-premises: still ours (a full reconcile moves it back); the copy in our OU is not.
        let found = [at("copy", "CN=G,OU=Writeback,DC=corp"), at("real", "CN=G,OU=Elsewhere,DC=corp")];
        let verdict = judge(&found, Some("REAL"), &ous());
        assert_eq!(verdict, Verdict { ours: Some(1), lookalikes: vec![0], conflicting: vec![] });
    }

    #[test]
    fn without_a_record_only_an_object_inside_the_tenant_ous_is_ours() {
        let found = [at("a", "CN=G,OU=Users,DC=corp"), at("b", "CN=G,OU=Sub,OU=Finance,DC=corp")];
        assert_eq!(judge(&found, None, &ous()), Verdict { ours: Some(1), lookalikes: vec![0], conflicting: vec![] });
        // A recorded object that is gone (deleted, or its anchor removed) counts as no record.
        assert_eq!(
            judge(&found, Some("gone"), &ous()),
            Verdict { ours: Some(1), lookalikes: vec![0], conflicting: vec![] }
        );
        // Outside every OU of the tenant, an anchored object is never ours.
        let outside = [at("a", "CN=G,OU=Users,DC=corp"), at("b", "CN=G,OU=Writeback2,DC=corp")];
        assert_eq!(judge(&outside, None, &ous()), Verdict { ours: None, lookalikes: vec![0, 1], conflicting: vec![] });
    }

    #[test]
    fn two_objects_inside_the_tenant_ous_without_a_record_are_a_conflict_never_last_one_wins() {
        let found =
            [at("a", "CN=G,OU=Writeback,DC=corp"), at("b", "CN=G2,OU=Writeback,DC=corp"), at("c", "CN=G,DC=corp")];
        assert_eq!(judge(&found, None, &ous()), Verdict { ours: None, lookalikes: vec![2], conflicting: vec![0, 1] });
        assert_eq!(
            judge(&found, Some("b"), &ous()),
            Verdict { ours: Some(1), lookalikes: vec![0, 2], conflicting: vec![] }
        );
    }

    #[test]
    fn only_guid_anchors_are_ours() {
        assert_eq!(
            anchor_id("Group_2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718"),
            Some("2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718")
        );
        assert_eq!(
            anchor_id("Group_2F8A3C1E-5B7D-4E9F-A1B2-C3D4E5F60718"),
            Some("2F8A3C1E-5B7D-4E9F-A1B2-C3D4E5F60718")
        );
        for foreign in [
            "Group_DoNotSync",
            "Group_",
            "Group_2f8a3c1e5b7d4e9fa1b2c3d4e5f60718",
            "Group_2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f6071g",
            "group_2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718",
            "Group_2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718 ",
        ] {
            assert_eq!(anchor_id(foreign), None, "{foreign}");
        }
    }
}
