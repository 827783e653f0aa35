//! What real Graph does that a kind simulator would not: entries that cannot be parsed in a resync,
//! properties left out because they are unset, and soft-deleted users that keep their memberships. Each
//! test drives the real binary against the Samba DC.

use serde_json::json;
use writeback_tests::e2e::{Env, new_id, text};
use writeback_tests::graphsim::{Fault, FaultKind, FaultTarget, Group, GroupPatch, MemberRef, WritebackConfiguration};

fn enabled_group(id: &str, name: &str, members: &[&str]) -> Group {
    let mut g = Group::security(id, name);
    g.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
    g.members = members.iter().map(|m| MemberRef::user(*m)).collect();
    g
}

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
    assert!(kept.members.iter().any(|m| writeback::dn::same(m, &user_ad.dn)), "the user keeps its memberships: {kept:?}");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains(&format!("group {group}: Graph sent an entry for this group that cannot be read")), "{status}");

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
    assert!(is_member(&env.group(&id).await?.expect("kept").members), "Entra ID keeps a soft-deleted user's memberships");
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
