//! The core writeback behaviour, end to end: the real binary against the Graph simulator and the shared
//! Samba DC.

use writeback_tests::dc::GroupEntry;
use writeback_tests::e2e::{Env, new_id, text};
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

    let status = env.run(&["status"]).await?;
    let status = text(&status.stdout);
    assert!(status.contains("cloud-only user (no on-premises SID)"), "{status}");
    assert!(status.contains(&bob), "{status}");
    Ok(())
}

fn enabled_group(id: &str, name: &str, members: &[&str]) -> Group {
    let mut g = Group::security(id, name);
    g.writeback = writeback(Some(true), None);
    g.members = members.iter().map(|m| MemberRef::user(*m)).collect();
    g
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
    let patch = writeback_tests::graphsim::GroupPatch { display_name: Some("Finance EMEA".into()), ..Default::default() };
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
    // Exactly a rename, a displayName modify, one member added and one removed.
    let audit = env.state_audit().await?.split_off(audited);
    let ops: Vec<_> = audit.iter().map(|r| (r.operation.as_str(), r.outcome.as_str())).collect();
    assert_eq!(ops, [("rename", "ok"), ("modify", "ok"), ("add-members", "ok"), ("remove-members", "ok")]);
    assert!(audit[1].detail == "displayName=Finance EMEA", "{audit:?}");
    assert!(audit[2].detail.starts_with("+1:") && audit[3].detail.starts_with("-1:"), "{audit:?}");

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
    env.sim.update_group(&m365_id, writeback_tests::graphsim::GroupPatch { display_name: Some("Team restored".into()), ..Default::default() }).unwrap();
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
