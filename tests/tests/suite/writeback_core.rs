//! The core writeback behaviour, end to end: the real binary against the Graph simulator and the shared
//! Samba DC.

use writeback_tests::dc::GroupEntry;
use writeback_tests::e2e::{Env, enabled_group, new_id, text};
use writeback_tests::graphsim::{Group, MemberRef, WritebackConfiguration};

fn writeback(enabled: Option<bool>, kind: Option<&str>) -> Option<WritebackConfiguration> {
    Some(WritebackConfiguration { is_enabled: enabled, on_premises_group_type: kind.map(str::to_string) })
}

fn last12(id: &str) -> &str {
    &id[id.len() - 12..]
}

fn find<'a>(groups: &'a [GroupEntry], id: &str) -> Option<&'a GroupEntry> {
    groups.iter().find(|g| g.admin_description.as_deref() == Some(&format!("Group_{id}")))
}

#[tokio::test]
async fn scope_types_names_and_members_are_written() -> anyhow::Result<()> {
    let env = Env::new("scope").await?;
    let (alice, alice_ad) = env.synced_user("scope-alice").await?;
    let bob = new_id();
    env.sim.add_user(writeback_tests::graphsim::User::cloud(bob.clone(), "bob@contoso.com")).unwrap();

    let security = new_id();
    let mut g = Group::security(&security, r#"Ops, "Tier 0" + #Admins\"#);
    g.writeback = writeback(Some(true), None);
    g.description = Some("tier zero".into());
    g.members = vec![MemberRef::user(&alice), MemberRef::user(&bob)];
    env.sim.add_group(g).unwrap();

    let m365 = new_id();
    let mut g = Group::unified(&m365, "Marketing", "marketing");
    g.proxy_addresses = vec!["SMTP:marketing@contoso.com".into()];
    g.members = vec![MemberRef::user(&alice)];
    env.sim.add_group(g).unwrap();

    let mail_security = new_id();
    let mut g = Group::security(&mail_security, "Mail Sec");
    g.writeback = writeback(Some(true), Some("universalMailEnabledSecurityGroup"));
    g.mail = Some("mailsec@contoso.com".into());
    env.sim.add_group(g).unwrap();

    let plain_security = new_id();
    env.sim.add_group(Group::security(&plain_security, "No writeback setting")).unwrap();
    let m365_off = new_id();
    let mut g = Group::unified(&m365_off, "Opted out", "optout");
    g.writeback = writeback(Some(false), None);
    env.sim.add_group(g).unwrap();
    let mastered = new_id();
    let mut g = Group::security(&mastered, "From AD");
    g.writeback = writeback(Some(true), None);
    g.on_premises_sync_enabled = Some(true);
    g.on_premises_security_identifier = Some("S-1-5-21-1-2-3-4444".into());
    env.sim.add_group(g).unwrap();

    env.sync(&[]).await?;
    let groups = env.groups().await?;
    assert_eq!(groups.len(), 3, "{groups:#?}");

    let sec = find(&groups, &security).expect("security group written");
    assert_eq!(sec.cn, format!(r#"Ops, "Tier 0" + #Admins\_{}"#, last12(&security)));
    assert_eq!(sec.display_name.as_deref(), Some(r#"Ops, "Tier 0" + #Admins\"#));
    assert_eq!(sec.description.as_deref(), Some("tier zero"));
    assert_eq!(sec.group_type, -2147483640);
    assert!(sec.sam.len() <= 20);
    assert_eq!(sec.members.len(), 1);
    assert!(writeback::dn::same(&sec.members[0], &alice_ad.dn));
    assert!(writeback::dn::same(&sec.dn, &format!("CN={},{}", writeback::dn::escape_value(&sec.cn), env.ou.groups_dn)));

    let dist = find(&groups, &m365).expect("M365 group written by default");
    assert_eq!(dist.group_type, 8);
    assert_eq!(dist.mail.as_deref(), Some("marketing@contoso.com"));
    assert_eq!(dist.proxy_addresses, ["SMTP:marketing@contoso.com"]);

    let mes = find(&groups, &mail_security).expect("mail-enabled security group written");
    assert_eq!(mes.group_type, -2147483640);
    assert_eq!(mes.mail.as_deref(), Some("mailsec@contoso.com"));

    // A later cycle that plans nothing still reports every group's skipped members.
    env.sync(&[]).await?;
    let status = env.run(&["status"]).await?;
    let status = text(&status.stdout);
    assert!(status.contains("1 × cloud-only user (no on-premises SID)"), "{status}");
    assert!(status.contains(&format!("group {security} member {bob}")), "{status}");
    let last = status.lines().find(|l| l.trim_start().starts_with("last cycle:")).unwrap_or_default();
    assert!(last.contains("(delta) outcome: ok") && !last.contains("never"), "{status}");
    assert!(status.contains("managed groups: 3 "), "{status}");
    Ok(())
}

#[tokio::test]
async fn group_types_descriptions_and_the_m365_default_follow_the_cloud_and_the_tenant() -> anyhow::Result<()> {
    let mut env = Env::new("types").await?;
    env.tenant_settings("m365_default_writeback = false")?;
    let unified_default = new_id();
    env.sim.add_group(Group::unified(&unified_default, "M365 left to the default", "m365default")).unwrap();
    let unified_on = new_id();
    let mut g = Group::unified(&unified_on, "M365 turned on", "m365on");
    g.writeback = writeback(Some(true), None);
    env.sim.add_group(g).unwrap();
    let distribution = new_id();
    let mut g = Group::security(&distribution, "As distribution");
    g.writeback = writeback(Some(true), Some("universalDistributionGroup"));
    env.sim.add_group(g).unwrap();
    let security = new_id();
    let mut g = Group::unified(&security, "M365 as security", "m365sec");
    g.writeback = writeback(Some(true), Some("universalSecurityGroup"));
    g.description = Some("é".repeat(300) + &"x".repeat(300));
    env.sim.add_group(g).unwrap();

    env.sync(&[]).await?;
    let groups = env.groups().await?;
    assert!(find(&groups, &unified_default).is_none(), "m365_default_writeback = false leaves it out");
    assert_eq!(find(&groups, &unified_on).expect("explicitly enabled").group_type, 8);
    assert_eq!(find(&groups, &distribution).expect("written").group_type, 8);
    let sec = find(&groups, &security).expect("written");
    assert_eq!(sec.group_type, -2147483640);
    let description = sec.description.as_deref().unwrap_or_default();
    assert_eq!(description.chars().count(), 448, "cut to 448 characters, not bytes");
    assert!(("é".repeat(300) + &"x".repeat(300)).starts_with(description));
    Ok(())
}

#[tokio::test]
async fn tenant_limits_a_one_shot_sync_to_the_named_tenant() -> anyhow::Result<()> {
    let env = Env::new("tenant-a").await?;
    let other = Env::new("tenant-b").await?;
    let mut config = std::fs::read_to_string(&env.config_path)?;
    config.push_str(&other.tenant_block("fabrikam")?);
    std::fs::write(&env.config_path, config)?;
    let (mine, theirs) = (new_id(), new_id());
    env.sim.add_group(enabled_group(&mine, "Contoso only", &[])).unwrap();
    other.sim.add_group(enabled_group(&theirs, "Fabrikam only", &[])).unwrap();

    env.sync(&["--tenant", "fabrikam"]).await?;
    assert!(other.group(&theirs).await?.is_some());
    assert!(env.group(&mine).await?.is_none(), "contoso was not synced");
    assert_eq!(env.sim.requests().len(), 0, "contoso's Graph was not asked");
    env.sync(&["--tenant", "contoso"]).await?;
    assert!(env.group(&mine).await?.is_some());
    let unknown = env.run(&["sync", "--once", "--tenant", "nobody"]).await?;
    assert!(!unknown.status.success());
    assert!(text(&unknown.stderr).contains("nobody"), "{}", text(&unknown.stderr));
    Ok(())
}

#[tokio::test]
async fn renames_member_changes_and_deletes_follow_the_cloud() -> anyhow::Result<()> {
    let env = Env::new("lifecycle").await?;
    let (u1, u1_ad) = env.synced_user("life-u1").await?;
    let (u2, u2_ad) = env.synced_user("life-u2").await?;
    let (u3, u3_ad) = env.synced_user("life-u3").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Finance", &[&u1, &u2])).unwrap();
    env.sync(&[]).await?;
    let before = env.group(&id).await?.expect("created");

    // Rename plus one add and one remove: same object, incremental members.
    let patch =
        writeback_tests::graphsim::GroupPatch { display_name: Some("Finance EMEA".into()), ..Default::default() };
    env.sim.update_group(&id, patch).unwrap();
    env.sim.add_members(&id, &[MemberRef::user(&u3)]).unwrap();
    env.sim.remove_members(&id, &[&u1]).unwrap();
    let audited = env.state_audit().await?.len();
    env.sync(&[]).await?;
    let after = env.group(&id).await?.expect("still there");
    assert_eq!(after.guid, before.guid, "a rename is a modrdn, not a new object");
    assert_eq!(after.cn, format!("Finance EMEA_{}", last12(&id)));
    assert_eq!(after.display_name.as_deref(), Some("Finance EMEA"));
    let mut members = after.members.clone();
    members.sort();
    let mut want = vec![u2_ad.dn.clone(), u3_ad.dn.clone()];
    want.sort();
    assert!(members.iter().zip(&want).all(|(a, b)| writeback::dn::same(a, b)) && members.len() == 2, "{members:?}");
    assert!(!members.iter().any(|m| writeback::dn::same(m, &u1_ad.dn)));
    // Exactly a displayName modify, one member added and one removed, and a rename (renames go last, once
    // the whole cycle's count is known).
    let audit = env.state_audit().await?.split_off(audited);
    let ops: Vec<_> = audit.iter().map(|r| (r.operation.as_str(), r.outcome.as_str())).collect();
    assert_eq!(ops, [("modify", "ok"), ("add-members", "ok"), ("remove-members", "ok"), ("rename", "ok")]);
    assert!(audit[0].detail == "displayName=Finance EMEA", "{audit:?}");
    assert!(audit[1].detail.starts_with("+1:") && audit[2].detail.starts_with("-1:"), "{audit:?}");

    // A cycle with nothing new writes nothing.
    let usn = env.dc.subtree_usn(&env.ou.dn).await?;
    env.sync(&[]).await?;
    assert_eq!(env.dc.subtree_usn(&env.ou.dn).await?, usn);

    // Soft delete keeps the AD group; a restore resumes management.
    let mut m365 = Group::unified(new_id(), "Team", "team");
    m365.members = vec![MemberRef::user(&u2)];
    let m365_id = m365.id.clone();
    env.sim.add_group(m365).unwrap();
    env.sync(&[]).await?;
    env.sim.soft_delete_group(&m365_id).unwrap();
    env.sync(&[]).await?;
    assert!(env.group(&m365_id).await?.is_some(), "soft-deleted groups are kept");
    env.sim.restore_group(&m365_id).unwrap();
    env.sim
        .update_group(
            &m365_id,
            writeback_tests::graphsim::GroupPatch { display_name: Some("Team restored".into()), ..Default::default() },
        )
        .unwrap();
    env.sync(&[]).await?;
    assert_eq!(env.group(&m365_id).await?.unwrap().display_name.as_deref(), Some("Team restored"));

    // Hard delete removes the AD group.
    env.sim.hard_delete_group(&id).unwrap();
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_none());
    let _ = u2;
    Ok(())
}

#[tokio::test]
async fn writeback_turned_off_keeps_the_group_and_stops_changing_it() -> anyhow::Result<()> {
    let env = Env::new("turnoff").await?;
    let (u1, _) = env.synced_user("off-u1").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Keep me", &[&u1])).unwrap();
    env.sync(&[]).await?;
    let patch = writeback_tests::graphsim::GroupPatch {
        writeback: Some(writeback(Some(false), None)),
        display_name: Some("Renamed after writeback was turned off".into()),
        ..Default::default()
    };
    env.sim.update_group(&id, patch).unwrap();
    env.sim.remove_members(&id, &[&u1]).unwrap();
    env.sync(&["--full"]).await?;
    let group = env.group(&id).await?.expect("kept");
    assert_eq!(group.display_name.as_deref(), Some("Keep me"));
    assert_eq!(group.members.len(), 1);
    Ok(())
}

#[tokio::test]
async fn nested_groups_resolve_in_any_order_and_local_groups_are_refused() -> anyhow::Result<()> {
    use writeback_tests::dc::{DOMAIN_LOCAL_SECURITY, GLOBAL_SECURITY};
    let env = Env::new("nested").await?;
    let (u1, _) = env.synced_user("nest-u1").await?;
    // Groups mastered in AD, as Graph shows them after sync from AD.
    let global = env.dc.create_group(&env.ou.users_dn, "AD Global", GLOBAL_SECURITY).await?;
    let local = env.dc.create_group(&env.ou.users_dn, "AD Local", DOMAIN_LOCAL_SECURITY).await?;
    let mastered = |ad: &writeback_tests::dc::AdObject, name: &str| {
        let mut g = Group::security(new_id(), name);
        g.on_premises_sync_enabled = Some(true);
        g.on_premises_security_identifier = Some(ad.sid.clone());
        g
    };
    let global_cloud = mastered(&global, "AD Global");
    let local_cloud = mastered(&local, "AD Local");
    let not_written = Group::security(new_id(), "Cloud only, not written");
    let (child, parent) = (new_id(), new_id());
    // The parent sorts before the child and arrives first; the child is created in the same cycle.
    let mut p = enabled_group(&parent, "Parent", &[&u1]);
    p.members.extend([
        MemberRef::group(&child),
        MemberRef::group(&global_cloud.id),
        MemberRef::group(&local_cloud.id),
        MemberRef::group(&not_written.id),
        MemberRef::device(new_id()),
    ]);
    env.sim.add_group(p).unwrap();
    for g in [enabled_group(&child, "Child", &[&u1]), global_cloud.clone(), local_cloud.clone(), not_written.clone()] {
        env.sim.add_group(g).unwrap();
    }
    env.sync(&[]).await?;
    let child_ad = env.group(&child).await?.expect("child written");
    let parent_ad = env.group(&parent).await?.expect("parent written");
    let has = |dn: &str| parent_ad.members.iter().any(|m| writeback::dn::same(m, dn));
    assert!(has(&child_ad.dn), "the written-back child is a member: {:?}", parent_ad.members);
    assert!(has(&global.dn), "an AD-mastered group is a member by its SID");
    assert!(!has(&local.dn), "a domain-local group is never a member of a universal group");
    assert_eq!(parent_ad.members.len(), 3);

    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(
        status.contains(&format!("member {}: A universal group cannot have a local group as a member", local_cloud.id)),
        "{status}"
    );
    assert!(
        status.contains(&format!("member {}: nested cloud group that is not written back", not_written.id)),
        "{status}"
    );
    assert!(status.contains("a device cannot be a member"), "{status}");

    // The child stops being written back: a delta cycle takes it out of the parent and keeps it in AD.
    let patch =
        writeback_tests::graphsim::GroupPatch { writeback: Some(writeback(Some(false), None)), ..Default::default() };
    env.sim.update_group(&child, patch).unwrap();
    env.sync(&[]).await?;
    let parent_ad = env.group(&parent).await?.unwrap();
    assert!(!parent_ad.members.iter().any(|m| writeback::dn::same(m, &child_ad.dn)), "{:?}", parent_ad.members);
    assert_eq!(parent_ad.members.len(), 2);
    assert!(env.group(&child).await?.is_some());
    Ok(())
}

#[tokio::test]
async fn a_domain_local_group_put_back_on_prem_is_taken_out_again() -> anyhow::Result<()> {
    use writeback_tests::dc::DOMAIN_LOCAL_SECURITY;
    let env = Env::new("localback").await?;
    let (u1, _) = env.synced_user("localback-u1").await?;
    let local = env.dc.create_group(&env.ou.users_dn, "AD Local Back", DOMAIN_LOCAL_SECURITY).await?;
    let mut local_cloud = Group::security(new_id(), "AD Local Back");
    local_cloud.on_premises_sync_enabled = Some(true);
    local_cloud.on_premises_security_identifier = Some(local.sid.clone());
    let id = new_id();
    let mut g = enabled_group(&id, "Holds a local group", &[&u1]);
    g.members.push(MemberRef::group(&local_cloud.id));
    env.sim.add_group(g).unwrap();
    env.sim.add_group(local_cloud).unwrap();
    env.sync(&[]).await?;
    let written = env.group(&id).await?.expect("written");
    assert_eq!(written.members.len(), 1, "{:?}", written.members);

    // An admin adds it on-prem. It is already a member, so its type comes from the search for the groups
    // among the members, not from a SID lookup; the repair still takes it out.
    env.dc.add_member(&written.dn, &local.dn).await?;
    env.sync(&["--full"]).await?;
    let repaired = env.group(&id).await?.unwrap();
    assert!(!repaired.members.iter().any(|m| writeback::dn::same(m, &local.dn)), "{:?}", repaired.members);
    assert_eq!(repaired.members.len(), 1);
    Ok(())
}

#[tokio::test]
async fn small_batches_nest_groups_created_later_and_count_deletes_over_the_whole_cycle() -> anyhow::Result<()> {
    let mut env = Env::new("batches").await?;
    env.tenant_settings("reconcile_batch = 1\ndelete_threshold = 2")?;
    let (u1, _) = env.synced_user("batches-u1").await?;
    // Each group is its own batch, and the parent's id sorts first: its child does not exist when it is
    // planned, and is created by a later batch of the same cycle.
    let parent = format!("0{}", &new_id()[1..]);
    let child = format!("f{}", &new_id()[1..]);
    let mut p = enabled_group(&parent, "Batch Parent", &[&u1]);
    p.members.push(MemberRef::group(&child));
    env.sim.add_group(p).unwrap();
    env.sim.add_group(enabled_group(&child, "Batch Child", &[&u1])).unwrap();
    let doomed: Vec<String> = (0..3).map(|_| new_id()).collect();
    for (i, id) in doomed.iter().enumerate() {
        env.sim.add_group(enabled_group(id, &format!("Batch Doomed {i}"), &[])).unwrap();
    }
    env.sync(&[]).await?;
    let child_ad = env.group(&child).await?.expect("child written");
    let parent_ad = env.group(&parent).await?.expect("parent written");
    assert!(
        parent_ad.members.iter().any(|m| writeback::dn::same(m, &child_ad.dn)),
        "nested in the same cycle: {:?}",
        parent_ad.members
    );
    assert_eq!(parent_ad.members.len(), 2);
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(!status.contains("nested group is not in AD"), "{status}");
    assert!(status.contains("pending: 0"), "{status}");

    // Three deletes, one in each batch: more than the threshold of two for the cycle, so all are held.
    for id in &doomed {
        env.sim.hard_delete_group(id).unwrap();
    }
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("3 deletes held"), "{}", text(&output.stderr));
    assert_eq!(env.groups().await?.len(), 5);
    env.sync(&["--allow-deletes"]).await?;
    assert_eq!(env.groups().await?.len(), 2);
    Ok(())
}

/// `adminDescription` has no index, so listing the domain's anchored groups tests every group of the domain: a
/// cycle lists them once, however many batches it plans, and then asks only for those changed since, which
/// include the groups it created itself in an earlier batch. Here more than a hundred parents wait for children that a later batch creates, and are planned
/// again at the end of the cycle; planned against a listing without them, they would be created a second time.
#[tokio::test]
async fn a_cycle_lists_the_anchored_groups_once_and_finds_there_those_it_created() -> anyhow::Result<()> {
    let mut env = Env::new("listed-once").await?;
    let proxy = writeback_tests::ldap_proxy::FaultProxy::start(&env.dc)?;
    env.reach_directory_at(proxy.url())?;
    env.tenant_settings("reconcile_batch = 120")?;
    let (user, _) = env.synced_user("listed-once-u1").await?;
    // Parents sort first, so the first batch holds every parent and the second every child.
    for i in 0..120 {
        let (parent, child) = (format!("0{}", &new_id()[1..]), format!("f{}", &new_id()[1..]));
        let mut p = enabled_group(&parent, &format!("Listed Parent {i:03}"), &[&user]);
        p.members.push(MemberRef::group(&child));
        env.sim.add_group(p).unwrap();
        env.sim.add_group(enabled_group(&child, &format!("Listed Child {i:03}"), &[])).unwrap();
    }
    env.sync(&[]).await?;
    // The substring filter `(adminDescription=Group_*)`: its initial part, context tag 0, six bytes. Each plan
    // after the first lists only the anchored groups changed since, on uSNChanged.
    let (listings, updates) = (proxy.searches_with(b"\x80\x06Group_"), proxy.searches_with(b"uSNChanged"));
    assert_eq!((listings - updates, updates), (1, 3), "one whole listing for the index and three plans of 120");
    let groups = env.groups().await?;
    assert_eq!(groups.len(), 240, "each group written once");
    let name = |g: &GroupEntry| g.display_name.clone().unwrap_or_default();
    for parent in groups.iter().filter(|g| name(g).starts_with("Listed Parent")) {
        let child = name(parent).replace("Parent", "Child");
        let child = groups.iter().find(|g| name(g) == child).expect("child written");
        assert!(parent.members.iter().any(|m| writeback::dn::same(m, &child.dn)), "{} holds its child", parent.cn);
    }
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains("pending: 0"), "{status}");
    Ok(())
}

#[tokio::test]
async fn a_name_taken_by_a_foreign_object_is_a_conflict_for_that_group_only() -> anyhow::Result<()> {
    let env = Env::new("conflict").await?;
    let (taken, free) = (new_id(), new_id());
    let squatter_cn = format!("Taken_{}", last12(&taken));
    let squatter =
        env.dc.create_group(&env.ou.groups_dn, &squatter_cn, writeback_tests::dc::UNIVERSAL_SECURITY).await?;
    env.sim.add_group(enabled_group(&taken, "Taken", &[])).unwrap();
    env.sim.add_group(enabled_group(&free, "Free", &[])).unwrap();
    let output = env.run(&["sync", "--once"]).await?;
    let stdout = text(&output.stdout);
    assert!(stdout.contains("1 conflicts"), "{stdout}");
    assert!(env.group(&free).await?.is_some(), "the other group is written");
    assert!(env.group(&taken).await?.is_none());
    let foreign =
        env.groups().await?.into_iter().find(|g| g.guid == squatter.guid).expect("the foreign group is left alone");
    assert_eq!(foreign.admin_description, None);
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains(&format!("group {taken}:")) && status.contains("not manage"), "{status}");
    Ok(())
}

#[tokio::test]
async fn a_sam_account_name_taken_by_a_foreign_object_is_a_conflict_for_that_group_only() -> anyhow::Result<()> {
    let env = Env::new("sam-conflict").await?;
    let (taken, free) = (new_id(), new_id());
    let sam = writeback::naming::default_placement(&taken, Some("Sam taken"))?.sam_account_name;
    // Elsewhere in the domain, under another name: only the sAMAccountName collides.
    let squatter = env.dc.create_group(&env.ou.users_dn, &sam, writeback_tests::dc::GLOBAL_SECURITY).await?;
    let usn = env.dc.subtree_usn(&squatter.dn).await?;
    env.sim.add_group(enabled_group(&taken, "Sam taken", &[])).unwrap();
    env.sim.add_group(enabled_group(&free, "Sam free", &[])).unwrap();
    let output = env.run(&["sync", "--once"]).await?;
    assert!(text(&output.stdout).contains("1 conflicts"), "{}\n{}", text(&output.stdout), text(&output.stderr));
    assert!(env.group(&free).await?.is_some(), "the other group is written");
    assert!(env.group(&taken).await?.is_none());
    assert_eq!(env.dc.subtree_usn(&squatter.dn).await?, usn, "the foreign object is left alone");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains(&format!("group {taken}:")), "{status}");
    Ok(())
}

#[tokio::test]
async fn full_sync_repairs_drift_in_attributes_members_and_ou() -> anyhow::Result<()> {
    use ldap3::Mod;
    use std::collections::HashSet;
    let env = Env::new("drift").await?;
    let (u1, u1_ad) = env.synced_user("drift-u1").await?;
    let (_, u2_ad) = env.synced_user("drift-u2").await?;
    let id = new_id();
    let mut g = enabled_group(&id, "Drifty", &[&u1]);
    g.description = Some("from the cloud".into());
    env.sim.add_group(g).unwrap();
    env.sync(&[]).await?;
    let original = env.group(&id).await?.unwrap();

    // An admin edits the group on-prem and moves it to another OU.
    let elsewhere = env.dc.create_ou(&env.ou.dn, "Elsewhere").await?;
    let mut ldap = env.dc.admin().await?;
    let dn = original.dn.clone();
    ldap.modify(
        &dn,
        vec![
            Mod::Replace("description", HashSet::from(["edited on-prem"])),
            Mod::Delete("member", HashSet::from([u1_ad.dn.as_str()])),
            Mod::Add("member", HashSet::from([u2_ad.dn.as_str()])),
        ],
    )
    .await?
    .success()?;
    let rdn = format!("CN={}", writeback::dn::escape_value(&original.cn));
    ldap.modifydn(&dn, &rdn, true, Some(&elsewhere)).await?.success()?;

    // A delta cycle with no cloud change leaves it; a full cycle repairs it.
    env.sync(&[]).await?;
    assert_eq!(env.group(&id).await?.unwrap().description.as_deref(), Some("edited on-prem"));
    env.sync(&["--full"]).await?;
    let repaired = env.group(&id).await?.unwrap();
    assert_eq!(repaired.guid, original.guid);
    assert!(writeback::dn::same(&repaired.dn, &original.dn), "moved back: {}", repaired.dn);
    assert_eq!(repaired.description.as_deref(), Some("from the cloud"));
    assert_eq!(repaired.members.len(), 1);
    assert!(writeback::dn::same(&repaired.members[0], &u1_ad.dn));
    Ok(())
}

#[tokio::test]
async fn deletes_over_the_threshold_are_held_until_allowed() -> anyhow::Result<()> {
    let mut env = Env::new("threshold").await?;
    env.tenant_settings("delete_threshold = 2")?;
    let ids: Vec<String> = (0..3).map(|_| new_id()).collect();
    for (i, id) in ids.iter().enumerate() {
        env.sim.add_group(enabled_group(id, &format!("Doomed {i}"), &[])).unwrap();
    }
    env.sync(&[]).await?;
    for id in &ids {
        env.sim.hard_delete_group(id).unwrap();
    }
    let survivor = new_id();
    env.sim.add_group(enabled_group(&survivor, "Survivor", &[])).unwrap();
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("3 deletes held"), "{stderr}");
    assert_eq!(stderr.trim().lines().filter(|l| l.starts_with("error:")).count(), 1, "{stderr}");
    assert!(env.group(&survivor).await?.is_some(), "everything else is applied");
    assert_eq!(env.groups().await?.len(), 4);
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains("held deletes: 3"), "{status}");

    // Still held on the next cycle, then applied on request.
    assert!(!env.run(&["sync", "--once"]).await?.status.success());
    assert_eq!(env.groups().await?.len(), 4);
    env.sync(&["--allow-deletes"]).await?;
    let left = env.groups().await?;
    assert_eq!(left.len(), 1, "{left:?}");
    Ok(())
}

#[tokio::test]
async fn plan_prints_changes_and_writes_nothing() -> anyhow::Result<()> {
    let env = Env::new("plan").await?;
    let (u1, _) = env.synced_user("plan-u1").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Planned", &[&u1])).unwrap();
    let usn = env.dc.subtree_usn(&env.ou.dn).await?;
    let output = env.run(&["plan"]).await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains(&format!("create CN=Planned_{}", last12(&id))), "{stdout}");
    assert!(stdout.contains("member=CN=plan-u1,"), "the create carries the member: {stdout}");
    assert_eq!(env.dc.subtree_usn(&env.ou.dn).await?, usn, "plan wrote to the directory");
    assert!(env.group(&id).await?.is_none());
    // The cursor did not move: the next sync still sees the group.
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_some());
    let again = text(&env.run(&["plan"]).await?.stdout);
    assert!(again.contains("0 changes"), "{again}");
    Ok(())
}

#[tokio::test]
async fn a_lost_state_directory_costs_a_resync_not_duplicates() -> anyhow::Result<()> {
    let env = Env::new("lost-state").await?;
    let (u1, _) = env.synced_user("lost-u1").await?;
    let ids: Vec<String> = (0..3).map(|_| new_id()).collect();
    for id in &ids {
        env.sim.add_group(enabled_group(id, "Kept", &[&u1])).unwrap();
    }
    env.sync(&[]).await?;
    let survivors: Vec<_> =
        env.groups().await?.into_iter().filter(|g| g.admin_description != Some(format!("Group_{}", ids[0]))).collect();
    let before: Vec<String> = env.groups().await?.into_iter().map(|g| g.guid).collect();
    let mut usns = Vec::new();
    for g in &survivors {
        usns.push(env.dc.subtree_usn(&g.dn).await?);
    }
    // While the state is gone, one group is hard-deleted in the cloud.
    std::fs::remove_dir_all(env.state_dir())?;
    env.sim.hard_delete_group(&ids[0]).unwrap();
    // A plain sync: an empty state makes the first cycle a full reconcile by itself.
    env.sync(&[]).await?;
    let after = env.groups().await?;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|g| before.contains(&g.guid)), "nothing was recreated");
    assert!(env.group(&ids[0]).await?.is_none(), "the orphan whose cloud group is gone was deleted");
    for (g, usn) in survivors.iter().zip(usns) {
        assert_eq!(env.dc.subtree_usn(&g.dn).await?, usn, "{} was rewritten", g.dn);
    }
    Ok(())
}

/// `[tenant.scope]` writes security groups by rule: with `security_groups = "all"`, a group whose `isEnabled` is
/// null is written when its name passes `include` and `exclude`, and an explicit `isEnabled = false` always wins.
/// `plan` shows what a wider rule would create before it is applied, and a group a narrower rule leaves out is
/// kept in AD and no longer changed, as when writeback is turned off.
#[tokio::test]
async fn security_groups_are_written_by_rule_and_an_explicit_no_wins() -> anyhow::Result<()> {
    let mut env = Env::new("scope-rules").await?;
    env.append_config(
        "[tenant.scope]\nsecurity_groups = \"all\"\ninclude = [\"SG-*\", \"DSG-*\"]\nexclude = [\"*-test\"]\n",
    )?;
    let group = |name: &str, enabled: Option<bool>| {
        let mut g = Group::security(new_id(), name);
        g.writeback = Some(WritebackConfiguration { is_enabled: enabled, on_premises_group_type: None });
        g
    };
    let (finance, finance_test, other, off, mail) = (
        group("SG-Finance", None),
        group("SG-Finance-test", None),
        group("Other", None),
        group("SG-Off", Some(false)),
        group("DSG-Mail", Some(true)),
    );
    for g in [&finance, &finance_test, &other, &off, &mail] {
        env.sim.add_group(g.clone()).unwrap();
    }
    env.sync(&[]).await?;
    async fn written(env: &Env, g: &Group) -> anyhow::Result<bool> {
        Ok(env.group(&g.id).await?.is_some())
    }
    assert!(written(&env, &finance).await? && written(&env, &mail).await?);
    for left_out in [&finance_test, &other, &off] {
        assert!(!written(&env, left_out).await?, "{} is left out", left_out.display_name);
    }

    // A wider rule: plan shows the one group it adds, before anything is written.
    env.edit_config(|text| text.replace("include = [\"SG-*\", \"DSG-*\"]\n", ""))?;
    let plan = text(&env.run(&["plan"]).await?.stdout);
    let creates: Vec<&str> = plan.lines().filter(|l| l.trim_start().starts_with("create ")).collect();
    assert_eq!(creates.len(), 1, "{plan}");
    assert!(creates[0].contains("Other"), "{plan}");
    assert!(!written(&env, &other).await?, "plan writes nothing");
    env.sync(&[]).await?;
    assert!(written(&env, &other).await?);
    assert!(
        !written(&env, &off).await? && !written(&env, &finance_test).await?,
        "isEnabled = false and exclude still win"
    );

    // A narrower rule: the group is kept in AD, and a later cloud change no longer reaches it.
    env.edit_config(|text| text.replace("exclude = [\"*-test\"]", "exclude = [\"*-test\", \"SG-Finance*\"]"))?;
    let patch =
        writeback_tests::graphsim::GroupPatch { display_name: Some("SG-Finance renamed".into()), ..Default::default() };
    env.sim.update_group(&finance.id, patch).unwrap();
    env.sync(&["--full"]).await?;
    let kept = env.group(&finance.id).await?.expect("kept in AD");
    assert_eq!(kept.display_name.as_deref(), Some("SG-Finance"), "no longer managed");
    // It says so in status; groups the rules never took do not.
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(
        status.contains(&format!("group {}: left out: its name matches the exclude pattern", finance.id)),
        "{status}"
    );
    assert!(status.contains("no longer changed"), "{status}");
    assert!(!status.contains(&format!("group {}:", finance_test.id)), "{status}");
    Ok(())
}

/// `group_scope` writes global and domain-local groups with their groupType, and enforces the nesting rules of
/// Windows AD that Samba does not: a global group takes no universal or domain-local group, a domain-local
/// group takes both. A refused member is reported in AD's own words and is never written.
#[tokio::test]
async fn global_and_domain_local_groups_are_written_with_windows_nesting_rules() -> anyhow::Result<()> {
    use writeback_tests::dc::{DOMAIN_LOCAL_SECURITY, GLOBAL_SECURITY, UNIVERSAL_SECURITY};
    for (scope, group_type, distribution_type) in
        [("global", GLOBAL_SECURITY, 2), ("domain-local", DOMAIN_LOCAL_SECURITY, 4)]
    {
        let mut env = Env::new(&format!("scope-{scope}")).await?;
        env.tenant_settings(&format!("group_scope = \"{scope}\""))?;
        let (u1, _) = env.synced_user(&format!("{scope}-u1")).await?;
        // Groups mastered in AD, of each scope, as Graph shows them after sync from AD.
        let mut mastered = Vec::new();
        for (name, ad_type) in
            [("Global", GLOBAL_SECURITY), ("Universal", UNIVERSAL_SECURITY), ("Local", DOMAIN_LOCAL_SECURITY)]
        {
            let ad = env.dc.create_group(&env.ou.users_dn, &format!("AD {scope} {name}"), ad_type).await?;
            let mut cloud = Group::security(new_id(), format!("AD {name}"));
            cloud.on_premises_sync_enabled = Some(true);
            cloud.on_premises_security_identifier = Some(ad.sid.clone());
            env.sim.add_group(cloud.clone()).unwrap();
            mastered.push((name, ad, cloud));
        }
        let parent = new_id();
        let mut p = enabled_group(&parent, "Scoped", &[&u1]);
        p.members.extend(mastered.iter().map(|(_, _, cloud)| MemberRef::group(&cloud.id)));
        env.sim.add_group(p).unwrap();
        let mailed = new_id();
        let mut m = Group::unified(mailed.clone(), "Scoped mail", &format!("scoped-{scope}"));
        m.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
        env.sim.add_group(m).unwrap();
        env.sync(&[]).await?;

        let written = env.group(&parent).await?.expect("written");
        assert_eq!(written.group_type, group_type, "{scope}");
        assert_eq!(env.group(&mailed).await?.expect("written").group_type, distribution_type, "{scope}");
        let has = |name: &str| {
            let (_, ad, _) = mastered.iter().find(|(n, _, _)| *n == name).unwrap();
            written.members.iter().any(|m| writeback::dn::same(m, &ad.dn))
        };
        let status = text(&env.run(&["status"]).await?.stdout);
        let refused = |name: &str, message: &str| {
            let (_, _, cloud) = mastered.iter().find(|(n, _, _)| *n == name).unwrap();
            status.contains(&format!("member {}: {message}", cloud.id))
        };
        assert!(has("Global"), "{scope}: a global group of the domain is a member");
        match scope {
            "global" => {
                assert!(!has("Universal") && !has("Local"), "{:?}", written.members);
                assert!(refused("Universal", "A global group cannot have a universal group as a member."), "{status}");
                assert!(refused("Local", "A global group cannot have a local group as a member."), "{status}");
                assert_eq!(written.members.len(), 2, "the user and the global group");
            }
            _ => {
                assert!(has("Universal") && has("Local"), "a domain-local group takes both: {:?}", written.members);
                assert_eq!(written.members.len(), 4);
            }
        }
    }
    Ok(())
}

/// A new `group_scope` converts existing groups as AD allows: global to domain-local through universal, one
/// step each, and a change AD would refuse (a universal group inside another universal group cannot become
/// domain-local) is held with AD's message, with nothing of it written.
#[tokio::test]
async fn a_new_group_scope_converts_existing_groups_as_ad_allows() -> anyhow::Result<()> {
    use writeback_tests::dc::{DOMAIN_LOCAL_SECURITY, GLOBAL_SECURITY, UNIVERSAL_SECURITY};
    // Refused: the universal group is a member of another universal group.
    let mut env = Env::new("scope-refused").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Nested universal", &[])).unwrap();
    env.sync(&[]).await?;
    let written = env.group(&id).await?.expect("written");
    let outer = env.dc.create_group(&env.ou.users_dn, "Outer universal", UNIVERSAL_SECURITY).await?;
    env.dc.add_member(&outer.dn, &written.dn).await?;
    env.tenant_settings("group_scope = \"domain-local\"")?;
    env.sync(&[]).await?;
    assert_eq!(env.group(&id).await?.expect("kept").group_type, UNIVERSAL_SECURITY, "nothing of it is written");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(
        status.contains(&format!(
            "group {id}: scope change from universal to domain-local refused, as AD would refuse it: A universal group cannot have a local group as a member."
        )),
        "{status}"
    );

    // Allowed: global to domain-local, through universal.
    let mut env = Env::new("scope-converted").await?;
    env.tenant_settings("group_scope = \"global\"")?;
    let (u1, _) = env.synced_user("scope-conv-u1").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Converted", &[&u1])).unwrap();
    env.sync(&[]).await?;
    assert_eq!(env.group(&id).await?.expect("written").group_type, GLOBAL_SECURITY);
    env.edit_config(|text| text.replace("group_scope = \"global\"", "group_scope = \"domain-local\""))?;
    env.sync(&[]).await?;
    let converted = env.group(&id).await?.expect("kept");
    assert_eq!(converted.group_type, DOMAIN_LOCAL_SECURITY);
    assert_eq!(converted.members.len(), 1, "members stay");
    let steps: Vec<String> = env
        .state_audit()
        .await?
        .into_iter()
        .filter(|r| r.group_id == id && r.operation == "modify" && r.detail.starts_with("groupType="))
        .map(|r| r.detail)
        .collect();
    assert_eq!(steps, ["groupType=-2147483640", "groupType=-2147483644"], "through universal, one step each");
    Ok(())
}

/// A converted group, as Graph shows it after Microsoft's source-of-authority conversion of an AD group.
fn converted(id: &str, name: &str, ad: &writeback_tests::dc::AdObject, members: &[&str]) -> Group {
    let mut group = Group::converted(id, name, &ad.sid);
    group.writeback = writeback(Some(true), None);
    group.members = members.iter().map(|m| MemberRef::user(*m)).collect();
    group
}

/// An AD group whose source of authority moved to the cloud comes back onto the same object: same objectGUID,
/// objectSid, DN, sAMAccountName and scope, the anchor stamped, its members then following the cloud group. While
/// it was still synced from AD, nothing of it was written.
#[tokio::test]
async fn a_converted_group_is_taken_over_in_place_and_its_members_follow_the_cloud() -> anyhow::Result<()> {
    use writeback_tests::dc::GLOBAL_SECURITY;
    use writeback_tests::graphsim::GroupPatch;
    let mut env = Env::new("adopt").await?;
    let legacy = env.dc.create_ou(&env.ou.dn, "Legacy").await?;
    env.append_config(&format!("[tenant.adopt]\nous = [\"{legacy}\"]"))?;
    let (alice, alice_ad) = env.synced_user("adopt-alice").await?;
    let bob = env.dc.create_user(&env.ou.users_dn, "adopt-bob").await?;
    let original = env.dc.create_group(&legacy, "Legacy Finance", GLOBAL_SECURITY).await?;
    env.dc.add_member(&original.dn, &bob.dn).await?;
    let id = new_id();
    let mut synced = converted(&id, "Finance", &original, &[&alice]);
    synced.on_premises_sync_enabled = Some(true);
    env.sim.add_group(synced).unwrap();
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_none(), "mastered in AD: nothing written");

    // The conversion: no longer synced, the SID kept.
    env.sim.update_group(&id, GroupPatch { on_premises_sync_enabled: Some(None), ..Default::default() }).unwrap();
    let plan = text(&env.run(&["plan"]).await?.stdout);
    assert!(plan.contains(&format!("take-over {}", original.dn)) && plan.contains(&original.sid), "{plan}");
    assert!(env.group(&id).await?.is_none(), "plan writes nothing");
    env.sync(&[]).await?;

    let taken = env.group(&id).await?.expect("the anchor is on the original group");
    assert_eq!((taken.guid.as_str(), taken.sid.as_str()), (original.guid.as_str(), original.sid.as_str()));
    assert!(writeback::dn::same(&taken.dn, &original.dn), "{}", taken.dn);
    assert_eq!((taken.sam.as_str(), taken.group_type), ("Legacy Finance", GLOBAL_SECURITY), "name and scope kept");
    assert_eq!(taken.display_name.as_deref(), Some("Finance"));
    assert_eq!(taken.members.len(), 1, "{:?}", taken.members);
    assert!(writeback::dn::same(&taken.members[0], &alice_ad.dn), "bob, whom the cloud group lacks, is removed");
    assert_eq!(env.groups().await?.iter().filter(|g| g.admin_description.is_some()).count(), 1, "no second group");
    let audit = env.state_audit().await?;
    let operations: Vec<&str> =
        audit.iter().filter(|r| r.group_id == id).map(|r| r.operation.as_str()).collect::<Vec<_>>();
    assert_eq!(operations, ["take-over", "add-members", "remove-members"], "{audit:?}");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains("taken over") && status.contains(&format!("group {id}: {}", original.dn)), "{status}");

    // From now on it is managed as any other group, except that the cloud does not name it.
    env.sim.update_group(&id, GroupPatch { display_name: Some("Finance EMEA".into()), ..Default::default() }).unwrap();
    env.sim.remove_members(&id, &[&alice]).unwrap();
    env.sync(&[]).await?;
    let managed = env.group(&id).await?.expect("still ours");
    assert!(writeback::dn::same(&managed.dn, &original.dn) && managed.sam == "Legacy Finance");
    assert_eq!(managed.display_name.as_deref(), Some("Finance EMEA"));
    assert!(managed.members.is_empty(), "{:?}", managed.members);

    // A lost state finds it again by its SID (its anchor, outside the tenant's OUs, proves nothing alone), and it
    // is neither a look-alike nor written twice.
    let reset = env.run(&["reset-state", "--tenant", "contoso"]).await?;
    assert!(reset.status.success(), "{}", text(&reset.stderr));
    env.sync(&[]).await?;
    let found = env.group(&id).await?.expect("still ours");
    assert_eq!((found.guid.as_str(), found.members.len()), (original.guid.as_str(), 0));
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains("look-alikes: 0") && status.contains(&format!("group {id}: {}", original.dn)), "{status}");

    // Deleted in the cloud, it is handed back to AD with its SID: never deleted.
    env.dc.add_member(&original.dn, &bob.dn).await?;
    env.sim.hard_delete_group(&id).unwrap();
    env.sync(&[]).await?;
    let kept = env.dc.groups_under(&legacy).await?.into_iter().find(|g| g.guid == original.guid).expect("kept");
    assert_eq!((kept.admin_description.as_deref(), kept.sid.as_str()), (None, original.sid.as_str()));
    assert_eq!(kept.members.len(), 1, "members as they were: {:?}", kept.members);
    Ok(())
}

/// A converted group is not taken over outside `[tenant.adopt] ous`, when its AD group is protected, or when
/// that group's adminDescription belongs to something else; each is a conflict that writes nothing, and no second
/// group is written beside it.
#[tokio::test]
async fn converted_groups_outside_ous_protected_or_anchored_by_others_are_not_taken_over() -> anyhow::Result<()> {
    use writeback_tests::dc::GLOBAL_SECURITY;
    let mut env = Env::new("adopt-refused").await?;
    let legacy = env.dc.create_ou(&env.ou.dn, "Legacy").await?;
    env.append_config(&format!("[tenant.adopt]\nous = [\"{legacy}\"]"))?;
    let (alice, _) = env.synced_user("adopt-r-alice").await?;
    let outside = env.dc.create_group(&env.ou.users_dn, "Outside", GLOBAL_SECURITY).await?;
    let protected = env.dc.create_group(&legacy, "Protected", GLOBAL_SECURITY).await?;
    env.dc.set_attribute(&protected.dn, "adminCount", "1").await?;
    let foreign = env.dc.create_group(&legacy, "Foreign", GLOBAL_SECURITY).await?;
    env.dc.set_attribute(&foreign.dn, "adminDescription", "Group_DoNotSync").await?;
    let mut ids = Vec::new();
    for ad in [&outside, &protected, &foreign] {
        let id = new_id();
        env.sim.add_group(converted(&id, &format!("Cloud {}", ad.sid), ad, &[&alice])).unwrap();
        ids.push(id);
    }
    let before = env.groups().await?;
    env.sync(&[]).await?;
    assert_eq!(env.groups().await?, before, "nothing is written, and no second group");
    let status = text(&env.run(&["status"]).await?.stdout);
    for (id, cause) in ids.iter().zip([
        "is outside every [tenant.adopt] ous entry".to_string(),
        "is protected (adminCount=1 or protected_groups".to_string(),
        "has adminDescription \"Group_DoNotSync\", which is not this group's anchor".to_string(),
    ]) {
        assert!(status.contains(&format!("group {id}: not taken over: ")), "{status}");
        let line = status.lines().find(|l| l.contains(&format!("group {id}: not taken over"))).unwrap();
        assert!(line.contains(&cause), "{line}");
    }
    Ok(())
}

/// A group taken over keeps its scope, so a parent and a child of different scopes meet: the nesting rules are
/// checked with the scope each has in AD, with AD's message.
#[tokio::test]
async fn a_group_taken_over_is_nested_by_the_scope_it_kept() -> anyhow::Result<()> {
    use writeback_tests::dc::DOMAIN_LOCAL_SECURITY;
    let mut env = Env::new("adopt-nesting").await?;
    let legacy = env.dc.create_ou(&env.ou.dn, "Legacy").await?;
    env.append_config(&format!("[tenant.adopt]\nous = [\"{legacy}\"]"))?;
    let (alice, _) = env.synced_user("adopt-n-alice").await?;
    let original = env.dc.create_group(&legacy, "Legacy Local", DOMAIN_LOCAL_SECURITY).await?;
    let child = new_id();
    env.sim.add_group(converted(&child, "Local", &original, &[&alice])).unwrap();
    let parent = new_id();
    let mut p = enabled_group(&parent, "Universal parent", &[&alice]);
    p.members.push(MemberRef::group(&child));
    env.sim.add_group(p).unwrap();
    env.sync(&[]).await?;
    assert_eq!(env.group(&child).await?.expect("taken over").group_type, DOMAIN_LOCAL_SECURITY);
    let written = env.group(&parent).await?.expect("written");
    assert_eq!(written.members.len(), 1, "only alice: {:?}", written.members);
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(
        status.contains(&format!("member {child}: A universal group cannot have a local group as a member")),
        "{status}"
    );
    Ok(())
}
