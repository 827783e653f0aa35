//! What real Graph does that a kind simulator would not: entries that cannot be parsed in a resync,
//! properties left out because they are unset, and soft-deleted users that keep their memberships. Each
//! test drives the real binary against the Samba DC.

use serde_json::json;
use writeback_tests::e2e::{Env, enabled_group, new_id, text};
use writeback_tests::graphsim::{Fault, FaultKind, FaultTarget, Group, GroupPatch, MemberRef, WritebackConfiguration};

/// Expires the delta tokens the way Graph does after a week: the next request answers 410.
fn resync(env: &Env) {
    env.sim.inject(Fault { target: FaultTarget::GroupsDelta, kind: FaultKind::Gone410 });
    env.sim.inject(Fault { target: FaultTarget::UsersDelta, kind: FaultKind::Gone410 });
}

#[tokio::test]
async fn an_entry_that_cannot_be_read_in_a_resync_holds_its_group_and_deletes_nothing() -> anyhow::Result<()> {
    let env = Env::new("trust-garbled").await?;
    let (user, user_ad) = env.synced_user("garbled-u1").await?;
    let (group, other) = (new_id(), new_id());
    env.sim.add_group(enabled_group(&group, "Payroll", &[&user])).unwrap();
    env.sim.add_group(enabled_group(&other, "Other", &[&user])).unwrap();
    env.sync(&[]).await?;
    let before = env.group(&group).await?.expect("written");

    // After a 410, the group's and the user's only entries cannot be parsed.
    env.sim.garble(&group, "proxyAddresses", Some(json!([42])));
    env.sim.garble(&user, "onPremisesSecurityIdentifier", Some(json!(42)));
    resync(&env);
    env.sync(&[]).await?;
    let after = env.group(&group).await?.expect("a group whose entry cannot be read is not deleted");
    assert_eq!(after.guid, before.guid);
    assert_eq!(after.members.len(), 1, "{after:?}");
    let kept = env.group(&other).await?.expect("other group");
    assert!(
        kept.members.iter().any(|m| writeback::dn::same(m, &user_ad.dn)),
        "the user keeps its memberships: {kept:?}"
    );
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(
        status.contains(&format!("group {group}: Graph sent an entry for this group that cannot be read")),
        "{status}"
    );

    // A readable full round releases the group.
    env.sim.garble(&group, "proxyAddresses", None);
    env.sim.garble(&user, "onPremisesSecurityIdentifier", None);
    resync(&env);
    env.sync(&[]).await?;
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(!status.contains("cannot be read"), "{status}");
    Ok(())
}

#[tokio::test]
async fn an_entry_that_cannot_be_read_in_a_delta_round_leads_to_a_full_round() -> anyhow::Result<()> {
    let env = Env::new("trust-garbled-delta").await?;
    let (u1, u1_ad) = env.synced_user("garbled-d1").await?;
    let (u2, _) = env.synced_user("garbled-d2").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Delta garbled", &[&u1, &u2])).unwrap();
    env.sync(&[]).await?;

    // The change that removes u2 arrives in an entry that cannot be read: the group is held, not half-applied.
    env.sim.garble(&id, "mailEnabled", Some(json!("yes")));
    env.sim.remove_members(&id, &[&u2]).unwrap();
    env.sync(&[]).await?;
    assert_eq!(env.group(&id).await?.expect("kept").members.len(), 2);
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains("cannot be read"), "{status}");

    // Once Graph sends it whole again, the next cycle reads everything in a full round and the change lands.
    env.sim.garble(&id, "mailEnabled", None);
    env.sync(&[]).await?;
    let members = env.group(&id).await?.expect("kept").members;
    assert!(members.len() == 1 && writeback::dn::same(&members[0], &u1_ad.dn), "{members:?}");
    Ok(())
}

#[tokio::test]
async fn a_property_cleared_while_the_cursor_was_dead_is_cleared_in_ad() -> anyhow::Result<()> {
    let env = Env::new("trust-cleared").await?;
    let id = new_id();
    let mut group = enabled_group(&id, "Described", &[]);
    group.description = Some("Payroll approvers".into());
    env.sim.add_group(group).unwrap();
    env.sync(&[]).await?;
    assert_eq!(env.group(&id).await?.expect("written").description.as_deref(), Some("Payroll approvers"));

    // The description is cleared, and the cursor dies before the agent reads that change: the full round
    // that follows leaves the unset description out.
    env.sim.update_group(&id, GroupPatch { description: Some(None), ..GroupPatch::default() }).unwrap();
    resync(&env);
    env.sync(&[]).await?;
    assert_eq!(env.group(&id).await?.expect("kept").description, None);
    Ok(())
}

#[tokio::test]
async fn a_soft_deleted_user_keeps_its_ad_memberships_and_a_hard_delete_removes_them() -> anyhow::Result<()> {
    let env = Env::new("trust-soft-user").await?;
    let (user, user_ad) = env.synced_user("soft-u1").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Soft user", &[&user])).unwrap();
    env.sync(&[]).await?;
    let is_member = |members: &[String]| members.iter().any(|m| writeback::dn::same(m, &user_ad.dn));
    assert!(is_member(&env.group(&id).await?.expect("written").members));

    env.sim.delete_user(&user, false).unwrap();
    env.sync(&[]).await?;
    assert!(
        is_member(&env.group(&id).await?.expect("kept").members),
        "Entra ID keeps a soft-deleted user's memberships"
    );
    // A resync does not list the soft-deleted user; Graph's deleted items still hold it.
    resync(&env);
    env.sync(&[]).await?;
    assert!(is_member(&env.group(&id).await?.expect("kept").members), "a resync keeps them too");

    env.sim.restore_user(&user).unwrap();
    env.sync(&[]).await?;
    assert!(is_member(&env.group(&id).await?.expect("kept").members));

    env.sim.delete_user(&user, false).unwrap();
    env.sim.delete_user(&user, true).unwrap();
    env.sync(&[]).await?;
    assert!(!is_member(&env.group(&id).await?.expect("kept").members), "the hard delete removes the membership");
    Ok(())
}

/// The group at `dn` in the test's OU tree, if it is there.
async fn group_at(env: &Env, dn: &str) -> anyhow::Result<Option<writeback_tests::dc::GroupEntry>> {
    Ok(env.groups().await?.into_iter().find(|g| writeback::dn::same(&g.dn, dn)))
}

#[tokio::test]
async fn a_copied_anchor_is_never_written_nested_or_deleted() -> anyhow::Result<()> {
    let env = Env::new("trust-lookalike").await?;
    let (u1, _) = env.synced_user("look-u1").await?;
    let (u2, _) = env.synced_user("look-u2").await?;
    let (child, parent) = (new_id(), new_id());
    env.sim.add_group(enabled_group(&child, "Child", &[&u1])).unwrap();
    let mut nesting = enabled_group(&parent, "Parent", &[]);
    nesting.members = vec![MemberRef::group(&child)];
    env.sim.add_group(nesting).unwrap();
    env.sync(&[]).await?;
    let real = env.group(&child).await?.expect("written");

    // Someone who may create groups elsewhere in the domain copies the child's anchor onto a group of theirs.
    let copy = env.dc.create_group(&env.ou.users_dn, "Lookalike", -2147483640).await?;
    env.dc.set_attribute(&copy.dn, "adminDescription", &format!("Group_{child}")).await?;

    // A member change, a full reconcile and a nesting all go to the real group only.
    env.sim.add_members(&child, &[MemberRef::user(&u2)]).unwrap();
    env.sync(&[]).await?;
    env.sync(&["--full"]).await?;
    let copied = group_at(&env, &copy.dn).await?.expect("the look-alike is not deleted");
    assert!(copied.members.is_empty(), "the look-alike gained members: {copied:?}");
    let now = group_at(&env, &real.dn).await?.expect("the real group stays");
    assert_eq!(now.members.len(), 2, "{now:?}");
    let nest = env.group(&parent).await?.expect("parent written");
    assert_eq!(nest.members.len(), 1, "{nest:?}");
    assert!(writeback::dn::same(&nest.members[0], &real.dn), "the parent nests the real group, not the copy: {nest:?}");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains(&format!("group {child}: look-alike: {}", copy.dn)), "{status}");

    // A copy inside the target OU, its anchor spelled in upper case, is a look-alike too: it neither splits
    // the group in two nor makes the agent create a duplicate.
    let shouting = env.dc.create_group(&env.ou.groups_dn, "Shouting", -2147483640).await?;
    env.dc.set_attribute(&shouting.dn, "adminDescription", &format!("Group_{}", child.to_uppercase())).await?;
    let before = env.groups().await?.len();
    env.sync(&["--full"]).await?;
    assert_eq!(env.groups().await?.len(), before, "no group was created");
    assert!(group_at(&env, &shouting.dn).await?.expect("kept").members.is_empty());
    assert_eq!(group_at(&env, &real.dn).await?.expect("kept").members.len(), 2);
    env.dc.delete_tree(&shouting.dn).await?;

    // Its hard delete removes the real group only.
    env.sim.hard_delete_group(&child).unwrap();
    env.sync(&[]).await?;
    assert!(group_at(&env, &real.dn).await?.is_none(), "the real group is deleted");
    let copied = group_at(&env, &copy.dn).await?.expect("the look-alike is never deleted");
    assert!(copied.members.is_empty());
    Ok(())
}

#[tokio::test]
async fn two_anchored_objects_in_the_tenant_ou_without_a_record_are_a_conflict_and_foreign_anchors_are_ignored()
-> anyhow::Result<()> {
    let env = Env::new("trust-twins").await?;
    let (u1, _) = env.synced_user("twins-u1").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Twins", &[&u1])).unwrap();
    env.sync(&[]).await?;
    let real = env.group(&id).await?.expect("written");
    // Connect's own anchor value is not a writeback anchor: a full reconcile must not take it for an orphan.
    let connect = env.dc.create_group(&env.ou.groups_dn, "Connect owned", -2147483640).await?;
    env.dc.set_attribute(&connect.dn, "adminDescription", "Group_DoNotSync").await?;

    // With the state lost, a second object carrying the anchor inside the target OU makes it ambiguous.
    let twin = env.dc.create_group(&env.ou.groups_dn, "Twin", -2147483640).await?;
    env.dc.set_attribute(&twin.dn, "adminDescription", &format!("Group_{id}")).await?;
    let reset = env.run(&["reset-state", "--tenant", "contoso"]).await?;
    assert!(reset.status.success(), "{}", text(&reset.stderr));
    env.sim.remove_members(&id, &[&u1]).unwrap();
    let before = env.dc.subtree_usn(&env.ou.groups_dn).await?;
    env.sync(&[]).await?;
    assert_eq!(env.dc.subtree_usn(&env.ou.groups_dn).await?, before, "neither object is written");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(
        status.contains(&format!("group {id}: 2 objects inside the tenant's OUs carry this group's anchor")),
        "{status}"
    );
    assert!(group_at(&env, &connect.dn).await?.is_some(), "a group with a foreign anchor is not deleted");

    // Once an admin removes the twin, the group is written again.
    env.dc.delete_tree(&twin.dn).await?;
    env.sync(&[]).await?;
    let now = group_at(&env, &real.dn).await?.expect("kept");
    assert!(now.members.is_empty(), "{now:?}");
    assert!(group_at(&env, &connect.dn).await?.is_some());

    // Someone moves the anchor from the real group to a copy of theirs: the copy is not adopted.
    let copy = env.dc.create_group(&env.ou.groups_dn, "Impostor", -2147483640).await?;
    env.dc.set_attribute(&real.dn, "adminDescription", "moved away").await?;
    env.dc.set_attribute(&copy.dn, "adminDescription", &format!("Group_{id}")).await?;
    env.sim.add_members(&id, &[MemberRef::user(&u1)]).unwrap();
    env.sync(&[]).await?;
    assert!(group_at(&env, &copy.dn).await?.expect("kept").members.is_empty(), "the copy gained a member");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains("no longer carries its anchor"), "{status}");
    Ok(())
}

#[tokio::test]
async fn member_removals_and_deletes_count_over_a_rolling_window_and_are_held_until_allowed() -> anyhow::Result<()> {
    let mut env = Env::new("trust-window").await?;
    env.tenant_settings("member_removal_threshold = 2\ndelete_threshold = 1\nthreshold_window = \"1h\"")?;
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(env.synced_user(&format!("window-u{i}")).await?.0);
    }
    let ids: Vec<&str> = users.iter().map(String::as_str).collect();
    let (guarded, doomed, doomed_too) = (new_id(), new_id(), new_id());
    env.sim.add_group(enabled_group(&guarded, "File server", &ids)).unwrap();
    env.sim.add_group(enabled_group(&doomed, "Doomed", &[])).unwrap();
    env.sim.add_group(enabled_group(&doomed_too, "Doomed too", &[])).unwrap();
    env.sync(&[]).await?;

    // One removal and one delete: within the thresholds.
    env.sim.remove_members(&guarded, &[ids[0]]).unwrap();
    env.sim.hard_delete_group(&doomed).unwrap();
    env.sync(&[]).await?;
    assert_eq!(env.group(&guarded).await?.expect("kept").members.len(), 3);
    assert!(env.group(&doomed).await?.is_none());

    // Two more removals and one more delete: each cycle alone is within the thresholds, the hour is not.
    env.sim.remove_members(&guarded, &[ids[1], ids[2]]).unwrap();
    env.sim.hard_delete_group(&doomed_too).unwrap();
    let held = env.run(&["sync", "--once"]).await?;
    assert!(!held.status.success(), "held changes need attention");
    let why = text(&held.stderr);
    assert!(why.contains("deletes held") || why.contains("member removals of 1 groups held"), "{why}");
    assert_eq!(env.group(&guarded).await?.expect("kept").members.len(), 3, "the removals are held");
    assert!(env.group(&doomed_too).await?.is_some(), "the delete is held");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains(&format!("group {guarded}: 2 members not removed")), "{status}");
    assert!(status.contains("held deletes: 1"), "{status}");
    let plan = text(&env.run(&["plan"]).await?.stdout);
    assert!(plan.contains(&format!("held member removals of group {guarded}")), "{plan}");

    // An admin who has looked allows them.
    env.sync(&["--allow-member-removals", "--allow-deletes"]).await?;
    assert_eq!(env.group(&guarded).await?.expect("kept").members.len(), 1);
    assert!(env.group(&doomed_too).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn a_group_type_change_under_a_protected_group_is_refused_like_a_member_add() -> anyhow::Result<()> {
    let mut env = Env::new("trust-type").await?;
    let (u1, _) = env.synced_user("type-u1").await?;
    let id = new_id();
    let mut group = enabled_group(&id, "Mailing list", &[&u1]);
    group.writeback = Some(WritebackConfiguration {
        is_enabled: Some(true),
        on_premises_group_type: Some("universalDistributionGroup".into()),
    });
    env.sim.add_group(group).unwrap();
    env.sync(&[]).await?;
    let written = env.group(&id).await?.expect("written");
    assert_eq!(written.group_type, 8);

    // On-prem, the distribution group is nested in a protected group: as a security group, its members
    // would gain that group's rights.
    let vault = env.dc.create_group(&env.ou.users_dn, "Type Vault", -2147483640).await?;
    env.dc.add_member(&vault.dn, &written.dn).await?;
    env.tenant_settings(&format!("protected_groups = [\"{}\"]", writeback_tests::e2e::toml_escape(&vault.dn)))?;
    let security = WritebackConfiguration {
        is_enabled: Some(true),
        on_premises_group_type: Some("universalSecurityGroup".into()),
    };
    env.sim
        .update_group(
            &id,
            GroupPatch {
                writeback: Some(Some(security)),
                description: Some(Some("now security".into())),
                ..GroupPatch::default()
            },
        )
        .unwrap();
    env.sync(&[]).await?;
    let now = env.group(&id).await?.expect("kept");
    assert_eq!(now.group_type, 8, "the type change is refused");
    assert_eq!(now.description.as_deref(), Some("now security"), "the rest of the change is written");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(
        status.contains(&format!("group {id}: groupType change refused: the group is in protected group")),
        "{status}"
    );

    env.tenant_settings(&format!("allow_protected_groups = [\"{id}\"]"))?;
    env.sync(&["--full"]).await?;
    assert_eq!(env.group(&id).await?.expect("kept").group_type, -2147483640);
    Ok(())
}

#[tokio::test]
async fn a_user_whose_sid_names_a_foreign_security_principal_is_skipped_with_a_reason() -> anyhow::Result<()> {
    let env = Env::new("trust-fsp").await?;
    let (user, user_ad) = env.synced_user("fsp-u1").await?;
    // A cloud user claiming the SID of Authenticated Users: the DC resolves it to a foreign security principal,
    // and as a member it would give the group to everyone.
    let everyone = new_id();
    env.sim
        .add_user(writeback_tests::graphsim::User::synced(
            everyone.clone(),
            "everyone@contoso.com",
            "S-1-5-11",
            "fsp-everyone",
        ))
        .unwrap();
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Not everyone", &[&user, &everyone])).unwrap();
    env.sync(&[]).await?;
    let members = env.group(&id).await?.expect("written").members;
    assert!(members.len() == 1 && writeback::dn::same(&members[0], &user_ad.dn), "{members:?}");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains("SID S-1-5-11 names a foreignSecurityPrincipal object"), "{status}");
    Ok(())
}

#[tokio::test]
async fn the_tenant_m365_writeback_default_decides_when_the_config_does_not() -> anyhow::Result<()> {
    let env = Env::new("trust-m365-default").await?;
    let unified = new_id();
    env.sim.add_group(Group::unified(&unified, "M365 left to the default", "m365tenant")).unwrap();
    // The tenant turned automatic writeback of new Microsoft 365 groups off.
    env.sim.set_unified_writeback_default(Some(false));
    env.sync(&[]).await?;
    assert!(env.group(&unified).await?.is_none(), "the tenant's setting keeps it out");
    let doctor = text(&env.run(&["doctor"]).await?.stdout);
    assert!(
        doctor.contains(
            "Microsoft 365 writeback default: false, from the tenant setting NewUnifiedGroupWritebackDefault"
        ),
        "{doctor}"
    );

    // Turned back on: the next full cycle reads it and plans every group again.
    env.sim.set_unified_writeback_default(None);
    env.sync(&["--full"]).await?;
    assert!(env.group(&unified).await?.is_some(), "written once the tenant's default is true");
    Ok(())
}

#[tokio::test]
async fn a_delta_without_writeback_configuration_is_caught_by_doctor_and_read_in_batches() -> anyhow::Result<()> {
    // The world in which beta group delta does not return writebackConfiguration.
    let config = writeback_tests::graphsim::SimConfig { delta_omits_writeback: true, ..Default::default() };
    let mut env = Env::with_sim("trust-batch", config).await?;
    let (u1, _) = env.synced_user("batch-u1").await?;
    // More groups than one $batch request carries.
    let ids: Vec<String> = (0..23).map(|_| new_id()).collect();
    for (i, id) in ids.iter().enumerate() {
        env.sim.add_group(enabled_group(id, &format!("Batched {i:02}"), &[&u1])).unwrap();
    }
    let doctor = env.run(&["doctor"]).await?;
    assert!(!doctor.status.success());
    let said = text(&doctor.stdout);
    assert!(
        said.contains("FAIL  writebackConfiguration source") && said.contains("writeback_source = \"batch\""),
        "{said}"
    );
    // Reading delta alone, the agent sees no enabled group, and writes nothing.
    env.sync(&[]).await?;
    assert!(env.groups().await?.is_empty());

    // Switched to $batch reads, the next cycle reads every group again and writes them all.
    env.tenant_settings("writeback_source = \"batch\"")?;
    env.sync(&[]).await?;
    assert_eq!(env.groups().await?.len(), ids.len());
    assert!(env.sim.request_count("/beta/$batch") >= 2, "23 groups take two batches of at most 20");
    let said = text(&env.run(&["doctor"]).await?.stdout);
    assert!(said.contains("pass  writebackConfiguration source: read with GET in $batch requests"), "{said}");

    // A group added later arrives through a delta round, its setting read in a batch too.
    env.sim.add_group(enabled_group(&new_id(), "Batched later", &[&u1])).unwrap();
    env.sync(&[]).await?;
    assert_eq!(env.groups().await?.len(), ids.len() + 1);
    Ok(())
}
