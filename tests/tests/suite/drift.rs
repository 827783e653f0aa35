//! Live drift enforcement: the daemon repairs on-premises edits of its groups within `drift_watch`, long
//! before the next full reconcile (an hour away in these tests), audits and counts each repair, never takes
//! its own writes for edits, and leaves the repairs of a shared tenant to the lease holder.

use std::collections::HashSet;
use std::time::Duration;

use ldap3::Mod;
use rustix::process::Signal;
use writeback::status::StatusFile;
use writeback_tests::agents::{self, Agent, TEST_TTL};
use writeback_tests::e2e::{Env, enabled_group, free_port, metric_sample, new_id};
use writeback_tests::graphsim::{GroupPatch, MemberRef};

/// Enough for a repair within a 1 s watch on a loaded machine; the full reconcile is an hour away.
const REPAIRED_WITHIN: Duration = Duration::from_secs(30);

async fn scrape(port: u16) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?.text().await?)
}

#[tokio::test]
async fn the_daemon_repairs_member_attribute_rename_move_and_delete_edits_within_drift_watch() -> anyhow::Result<()> {
    let mut env = Env::new("drift-live").await?;
    let port = free_port()?;
    env.agent_settings(&format!(
        "reconcile_interval = \"1h\"\ndrift_watch = \"1s\"\nmetrics_addr = \"127.0.0.1:{port}\""
    ))?;
    let (u1, u1_ad) = env.synced_user("drift-live-u1").await?;
    let (_, intruder) = env.synced_user("drift-live-u2").await?;
    let id = new_id();
    let mut group = enabled_group(&id, "Tier0 Operators", &[&u1]);
    group.description = Some("from the cloud".into());
    env.sim.add_group(group).unwrap();
    let elsewhere = env.dc.create_ou(&env.dc.info().base_dn, &format!("drift-elsewhere-{}", &new_id()[..8])).await?;
    let mut daemon = env.start_daemon()?;
    env.eventually(REPAIRED_WITHIN, || async { Ok(env.group(&id).await?.is_some_and(|g| g.members.len() == 1)) })
        .await?;
    let written = env.group(&id).await?.unwrap();
    let mut ldap = env.dc.admin().await?;

    // Someone adds himself and edits the description: both are undone without a cloud change.
    ldap.modify(
        &written.dn,
        vec![
            Mod::Add("member", HashSet::from([intruder.dn.as_str()])),
            Mod::Replace("description", HashSet::from(["edited on-prem"])),
        ],
    )
    .await?
    .success()?;
    env.eventually(REPAIRED_WITHIN, || async {
        let g = env.group(&id).await?.unwrap();
        Ok(g.members.len() == 1 && g.description.as_deref() == Some("from the cloud"))
    })
    .await?;
    assert_eq!(env.group(&id).await?.unwrap().members[0].to_lowercase(), u1_ad.dn.to_lowercase());

    // A rename, then a move out of the managed OU, are put back.
    ldap.modifydn(&written.dn, "CN=Renamed on-prem", true, None).await?.success()?;
    env.eventually(REPAIRED_WITHIN, || async { Ok(env.group(&id).await?.is_some_and(|g| g.cn == written.cn)) }).await?;
    let current = env.group(&id).await?.unwrap().dn;
    ldap.modifydn(&current, &format!("CN={}", written.cn), true, Some(&elsewhere)).await?.success()?;
    env.eventually(REPAIRED_WITHIN, || async {
        Ok(env.group(&id).await?.is_some_and(|g| g.dn.eq_ignore_ascii_case(&written.dn)))
    })
    .await?;

    // Deleted on-premises: its tombstone is seen, and it is written again with its members.
    ldap.delete(&written.dn).await?.success()?;
    env.eventually(REPAIRED_WITHIN, || async {
        Ok(env.group(&id).await?.is_some_and(|g| g.guid != written.guid && g.members.len() == 1))
    })
    .await?;

    let metrics = scrape(port).await?;
    for kind in ["member", "attribute", "rename", "move", "recreate"] {
        let line = format!(r#"writeback_drift_repairs_total{{tenant="contoso",kind="{kind}"}}"#);
        assert_eq!(metric_sample(&metrics, &line), Some(1.0), "{line} in\n{metrics}");
    }
    assert!(env.daemon_log().contains("repaired an on-premises edit (member)"), "{}", env.daemon_log());
    daemon.signal(Signal::TERM)?;
    daemon.wait(Duration::from_secs(20)).await?;

    let repairs: Vec<_> =
        env.state_audit().await?.into_iter().filter(|r| r.cause.as_deref() == Some("drift-repair")).collect();
    let shown: Vec<String> =
        repairs.iter().map(|r| format!("{} {} found {:?}", r.operation, r.detail, r.found)).collect();
    let find = |operation: &str| repairs.iter().find(|r| r.operation == operation && r.outcome == "ok");
    let removal = find("remove-members").unwrap_or_else(|| panic!("{shown:#?}"));
    assert!(removal.detail.to_lowercase().contains(&intruder.dn.to_lowercase()), "{shown:#?}");
    let modify = find("modify").unwrap_or_else(|| panic!("{shown:#?}"));
    assert_eq!(modify.found.as_deref(), Some("description=edited on-prem"), "{shown:#?}");
    assert!(modify.detail.contains("description=from the cloud"), "{shown:#?}");
    let renames: Vec<_> = repairs.iter().filter(|r| r.operation == "rename").collect();
    assert_eq!(renames.len(), 2, "{shown:#?}");
    assert!(renames[0].found.as_deref().is_some_and(|f| f.contains("Renamed on-prem")), "{shown:#?}");
    assert!(
        renames[1].found.as_deref().is_some_and(|f| f.to_lowercase().contains(&elsewhere.to_lowercase())),
        "{shown:#?}"
    );
    let recreated = find("create").unwrap_or_else(|| panic!("{shown:#?}"));
    assert_eq!(recreated.found.as_deref(), Some("no object: the group was deleted on-premises"), "{shown:#?}");
    assert_eq!(repairs.len(), 5, "nothing else was taken for drift: {shown:#?}");
    Ok(())
}

#[tokio::test]
async fn the_agents_own_writes_are_never_taken_for_drift() -> anyhow::Result<()> {
    let mut env = Env::new("drift-own").await?;
    env.agent_settings("reconcile_interval = \"1h\"\ndrift_watch = \"1s\"")?;
    let (u1, _) = env.synced_user("drift-own-u1").await?;
    let (u2, _) = env.synced_user("drift-own-u2").await?;
    let (watched, marker) = (new_id(), new_id());
    env.sim.add_group(enabled_group(&watched, "Cloud changes", &[&u1])).unwrap();
    env.sim.add_group(enabled_group(&marker, "Marker", &[&u1])).unwrap();
    let mut daemon = env.start_daemon()?;
    env.eventually(REPAIRED_WITHIN, || async { Ok(env.group(&marker).await?.is_some()) }).await?;

    // Cloud changes the agent writes: a member, a description, a rename.
    env.sim.add_members(&watched, &[MemberRef::user(&u2)]).unwrap();
    let patch = GroupPatch {
        display_name: Some("Cloud changes renamed".into()),
        description: Some(Some("changed in the cloud".into())),
        ..GroupPatch::default()
    };
    env.sim.update_group(&watched, patch).unwrap();
    env.eventually(REPAIRED_WITHIN, || async {
        Ok(env
            .group(&watched)
            .await?
            .is_some_and(|g| g.members.len() == 2 && g.cn.starts_with("Cloud changes renamed")))
    })
    .await?;
    // An edit of another group after them: once it is repaired, the watch has looked past the agent's writes.
    let marker_dn = env.group(&marker).await?.unwrap().dn;
    env.dc.set_attribute(&marker_dn, "description", "edited on-prem").await?;
    env.eventually(REPAIRED_WITHIN, || async { Ok(env.group(&marker).await?.unwrap().description.is_none()) }).await?;
    daemon.signal(Signal::TERM)?;
    daemon.wait(Duration::from_secs(20)).await?;

    let audit = env.state_audit().await?;
    let repaired: Vec<&str> =
        audit.iter().filter(|r| r.cause.as_deref() == Some("drift-repair")).map(|r| r.group_id.as_str()).collect();
    assert_eq!(repaired, vec![marker.as_str()], "only the on-prem edit is drift");
    // The USNs of its writes tell the watch that they are the agent's: it does not even read those groups.
    let log = env.daemon_log();
    let looked_at: Vec<&str> = log.lines().filter(|l| l.contains("changed on-premises")).collect();
    assert_eq!(looked_at.len(), 1, "{looked_at:#?}");
    assert!(looked_at[0].contains(&marker), "{looked_at:#?}");
    assert!(audit.iter().any(|r| r.group_id == watched && r.operation == "add-members" && r.cause.is_none()));
    Ok(())
}

#[tokio::test]
async fn an_edit_that_keeps_coming_back_is_repaired_with_back_off_and_shown_in_status() -> anyhow::Result<()> {
    let mut env = Env::new("drift-fight").await?;
    env.agent_settings("reconcile_interval = \"1h\"\ndrift_watch = \"1s\"")?;
    let (u1, _) = env.synced_user("drift-fight-u1").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Fought over", &[&u1])).unwrap();
    let _daemon = env.start_daemon()?;
    env.eventually(REPAIRED_WITHIN, || async { Ok(env.group(&id).await?.is_some()) }).await?;
    let dn = env.group(&id).await?.unwrap().dn;
    // A script puts its value back after every repair.
    for round in 0..3 {
        env.dc.set_attribute(&dn, "description", &format!("script round {round}")).await?;
        env.eventually(Duration::from_secs(60), || async { Ok(env.group(&id).await?.unwrap().description.is_none()) })
            .await?;
    }
    let fights = || {
        StatusFile::load(&env.state_dir())
            .map(|f| f.tenants.get("contoso").map(|t| t.drift_fights.clone()).unwrap_or_default())
    };
    env.eventually(REPAIRED_WITHIN, || async { Ok(!fights()?.is_empty()) }).await?;
    let fight = fights()?.remove(0);
    assert_eq!(fight.group_id, id);
    assert_eq!(fight.repairs, 3);
    assert!(fight.next_repair_in_secs <= 5, "the third repair in a row waits 5 s for the next: {fight:?}");
    // The fourth edit waits out its back-off, and is still repaired.
    env.dc.set_attribute(&dn, "description", "script round 3").await?;
    env.eventually(Duration::from_secs(60), || async { Ok(env.group(&id).await?.unwrap().description.is_none()) })
        .await?;
    env.eventually(REPAIRED_WITHIN, || async { Ok(fights()?.first().is_some_and(|f| f.repairs == 4)) }).await?;
    assert!(env.daemon_log().contains("keeps coming back"), "{}", env.daemon_log());
    Ok(())
}

#[tokio::test]
async fn a_standby_sees_on_prem_edits_but_only_the_lease_holder_repairs_them() -> anyhow::Result<()> {
    let (env, users) = agents::shared_world("drift-standby", TEST_TTL).await?;
    let ids = agents::add_groups(&env, &users, "Drift standby", 2);
    let mut a = Agent::for_env(&env, "drift-a")?;
    let mut b = Agent::for_env(&env, "drift-b")?;
    for agent in [&a, &b] {
        let config = std::fs::read_to_string(&agent.config_path)?;
        std::fs::write(
            &agent.config_path,
            config.replacen("[agent]\n", "[agent]\nreconcile_interval = \"1h\"\ndrift_watch = \"1s\"\n", 1),
        )?;
    }
    a.start()?;
    agents::until(&[&a], Duration::from_secs(60), async || Ok(agents::converged(&env, &users).await?)).await?;
    b.start()?;
    agents::until(&[&a, &b], Duration::from_secs(60), async || {
        Ok(a.active_tenants() == ["contoso"] && b.role("contoso") == Some(writeback::lease::Role::Standby))
    })
    .await?;
    // Both watches took their mark before their agent's first cycle, which the role in `status` follows.

    let dn = env.group(&ids[0]).await?.unwrap().dn;
    env.dc.set_attribute(&dn, "description", "edited on-prem").await?;
    agents::until(&[&a, &b], REPAIRED_WITHIN, async || {
        Ok(env.group(&ids[0]).await?.unwrap().description.is_none()
            && b.log().contains("group edited on-premises; the lease holder repairs it"))
    })
    .await?;
    a.stop().await?;
    b.stop().await?;
    let drift = |agent: &Agent| -> anyhow::Result<usize> {
        Ok(agent.audit("contoso")?.iter().filter(|r| r.cause.as_deref() == Some("drift-repair")).count())
    };
    assert_eq!(drift(&a)?, 1, "the holder repaired the edit");
    assert_eq!(drift(&b)?, 0, "the standby wrote nothing");
    Ok(())
}

#[tokio::test]
async fn an_edit_in_the_tenants_ou_is_repaired_as_the_dc_notifies_it_without_waiting_for_a_look() -> anyhow::Result<()>
{
    let mut env = Env::new("drift-notify").await?;
    // Looks an hour apart: only the DC's change notification can bring the watch back in time.
    env.agent_settings("reconcile_interval = \"1h\"\ndrift_watch = \"1h\"")?;
    let (u1, _) = env.synced_user("drift-notify-u1").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Notified", &[&u1])).unwrap();
    let _daemon = env.start_daemon()?;
    env.eventually(REPAIRED_WITHIN, || async { Ok(env.group(&id).await?.is_some()) }).await?;
    let dn = env.group(&id).await?.unwrap().dn;
    env.dc.set_attribute(&dn, "description", "edited on-prem").await?;
    env.eventually(REPAIRED_WITHIN, || async { Ok(env.group(&id).await?.unwrap().description.is_none()) }).await?;
    assert!(env.daemon_log().contains("repaired an on-premises edit (attribute)"), "{}", env.daemon_log());
    Ok(())
}

#[tokio::test]
async fn a_group_given_another_groups_anchor_is_still_looked_at_as_itself() -> anyhow::Result<()> {
    let mut env = Env::new("drift-anchor").await?;
    env.agent_settings("reconcile_interval = \"1h\"\ndrift_watch = \"1s\"")?;
    let (u1, _) = env.synced_user("drift-anchor-u1").await?;
    let (edited, other) = (new_id(), new_id());
    env.sim.add_group(enabled_group(&edited, "Edited", &[&u1])).unwrap();
    env.sim.add_group(enabled_group(&other, "Other", &[&u1])).unwrap();
    let _daemon = env.start_daemon()?;
    env.eventually(REPAIRED_WITHIN, || async { Ok(env.group(&other).await?.is_some()) }).await?;
    env.eventually(REPAIRED_WITHIN, || async { Ok(env.group(&edited).await?.is_some()) }).await?;
    let dn = env.group(&edited).await?.unwrap().dn;
    // The edit names the other group's anchor; the object's recorded objectGUID still says which group it is.
    env.dc.set_attribute(&dn, "adminDescription", &format!("Group_{other}")).await?;
    env.eventually(REPAIRED_WITHIN, || async {
        let log = env.daemon_log();
        let looked = |id: &str| log.lines().any(|l| l.contains("changed on-premises") && l.contains(id));
        Ok(looked(&edited) && looked(&other))
    })
    .await?;
    Ok(())
}
