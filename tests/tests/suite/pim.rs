//! PIM for Groups: a time-bound member leaves the AD group at its end while group delta still lists it,
//! an end missed while the agent was down is applied first at start, and on a forest without AD's
//! Privileged Access Management feature (Samba has none) the agent does the expiry itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::process::Signal;
use writeback::status::StatusFile;
use writeback_tests::e2e::{Env, enabled_group, new_id, text};
use writeback_tests::graphsim::MemberRef;

/// A world whose tenant reads PIM for Groups.
async fn pim_world(name: &str) -> anyhow::Result<Env> {
    let mut env = Env::new(name).await?;
    env.append_config("[tenant.pim]\nenabled = true")?;
    Ok(env)
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn has_member(members: &[String], dn: &str) -> bool {
    members.iter().any(|m| m.eq_ignore_ascii_case(dn))
}

#[tokio::test]
async fn a_member_leaves_at_its_end_while_group_delta_still_lists_it() -> anyhow::Result<()> {
    let env = pim_world("pim-end").await?;
    // Cycles an hour apart: only the end itself can wake the daemon in time.
    env.edit_config(|t| t.replace("interval = \"1s\"", "interval = \"1h\""))?;
    let (u1, u1_ad) = env.synced_user("pim-end-u1").await?;
    let (u2, u2_ad) = env.synced_user("pim-end-u2").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Tier0 JIT", &[&u1])).unwrap();
    let end = env.sim.activate_membership(&id, &MemberRef::user(&u2), Duration::from_secs(8));
    let mut daemon = env.start_daemon()?;
    // The status file is written when the cycle ends, after its writes: wait for both.
    let time_bound = || StatusFile::load(&env.state_dir()).ok().and_then(|s| s.tenants.get("contoso").cloned());
    env.eventually(Duration::from_secs(20), || async {
        let written = env.group(&id).await?.is_some_and(|g| has_member(&g.members, &u2_ad.dn));
        Ok(written && time_bound().is_some_and(|t| !t.time_bound.is_empty()))
    })
    .await?;
    let listed = time_bound().map(|t| t.time_bound).unwrap_or_default();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].member_id.as_str(), listed[0].ends), (u2.as_str(), unix(end)));

    env.eventually(Duration::from_secs(30), || async {
        Ok(env.group(&id).await?.is_some_and(|g| !has_member(&g.members, &u2_ad.dn)))
    })
    .await?;
    assert!(SystemTime::now() >= end, "the member left no earlier than its end");
    assert!(env.sim.group(&id).unwrap().members.iter().any(|m| m.id == u2), "group delta still lists it");
    daemon.signal(Signal::TERM)?;
    daemon.wait(Duration::from_secs(20)).await?;

    let audit = env.state_audit().await?;
    let expiry = audit.iter().find(|r| r.cause.as_deref() == Some("pim-expiry")).expect("an expiry record");
    assert_eq!(expiry.operation, "remove-members");
    assert!(expiry.detail.to_lowercase().contains(&u2_ad.dn.to_lowercase()), "{expiry:?}");
    // The next cycle does not put it back, though delta lists it.
    env.sync(&[]).await?;
    let members = env.group(&id).await?.unwrap().members;
    assert!(has_member(&members, &u1_ad.dn) && !has_member(&members, &u2_ad.dn), "{members:?}");
    Ok(())
}

#[tokio::test]
async fn an_end_missed_while_the_agent_was_down_is_applied_first_even_when_graph_is_unreachable() -> anyhow::Result<()>
{
    let env = pim_world("pim-down").await?;
    let (u1, _) = env.synced_user("pim-down-u1").await?;
    let (u2, u2_ad) = env.synced_user("pim-down-u2").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Tier0 JIT down", &[&u1])).unwrap();
    let end = env.sim.activate_membership(&id, &MemberRef::user(&u2), Duration::from_secs(3));
    env.sync(&[]).await?;
    assert!(has_member(&env.group(&id).await?.unwrap().members, &u2_ad.dn));

    // The agent is down at the end; when it starts, Graph cannot be reached at all.
    env.eventually(Duration::from_secs(20), || async { Ok(SystemTime::now() > end) }).await?;
    env.edit_config(|t| t.replace(env.sim.base_url(), "http://127.0.0.1:9"))?;
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success(), "Graph is unreachable: {}", text(&output.stderr));
    let members = env.group(&id).await?.unwrap().members;
    assert!(!has_member(&members, &u2_ad.dn), "the expiry came before Graph: {members:?}");
    let audit = env.state_audit().await?;
    assert!(audit.iter().any(|r| r.cause.as_deref() == Some("pim-expiry") && r.outcome == "ok"), "{audit:#?}");
    Ok(())
}

#[tokio::test]
async fn without_the_forests_pam_feature_the_agent_expires_members_itself() -> anyhow::Result<()> {
    let env = pim_world("pim-samba").await?;
    let (u1, _) = env.synced_user("pim-samba-u1").await?;
    let (u2, u2_ad) = env.synced_user("pim-samba-u2").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Tier0 JIT samba", &[&u1])).unwrap();
    env.sim.activate_membership(&id, &MemberRef::user(&u2), Duration::from_secs(3600));
    let doctor = text(&env.run(&["doctor"]).await?.stdout);
    assert!(
        doctor.contains("time-bound members: removed by the agent at their end: the forest has no Privileged Access Management feature"),
        "{doctor}"
    );
    assert!(doctor.contains("pass  PIM for Groups schedule read"), "{doctor}");
    env.sync(&[]).await?;
    assert!(has_member(&env.group(&id).await?.unwrap().members, &u2_ad.dn));
    let audit = env.state_audit().await?;
    assert!(!audit.iter().any(|r| r.detail.contains("<TTL=")), "no TTL link on a forest without the feature");

    // Deactivated early: Graph drops the instance, delta still lists the member, and it leaves.
    env.sim.deactivate_membership(&id, &u2);
    env.sync(&[]).await?;
    assert!(!has_member(&env.group(&id).await?.unwrap().members, &u2_ad.dn));

    // Without the permission, doctor names it and status says why time-bound members are not read.
    env.sim.deny_pim(true);
    let doctor = env.run(&["doctor"]).await?;
    assert!(!doctor.status.success());
    assert!(
        text(&doctor.stdout)
            .contains("grant the application permission PrivilegedAssignmentSchedule.Read.AzureADGroup")
    );
    env.sim.activate_membership(&id, &MemberRef::user(&u1), Duration::from_secs(3600));
    let sync = env.run(&["sync", "--once"]).await?;
    assert!(!sync.status.success(), "a tenant whose schedules cannot be read needs attention");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains("PrivilegedAssignmentSchedule.Read.AzureADGroup"), "{status}");
    Ok(())
}

#[tokio::test]
async fn the_simulator_requires_the_filter_and_pages_the_instances() -> anyhow::Result<()> {
    let env = Env::new("pim-sim").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Paged", &[])).unwrap();
    for _ in 0..3 {
        env.sim.activate_membership(&id, &MemberRef::user(new_id()), Duration::from_secs(600));
    }
    let http = reqwest::Client::new();
    let token = env.sim.issue_token();
    let url =
        format!("{}/v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleInstances", env.sim.base_url());
    let unfiltered = http.get(&url).bearer_auth(&token).send().await?;
    assert_eq!(unfiltered.status(), 400);
    let mut next = Some(format!("{url}?$filter=groupId eq '{id}'"));
    let mut seen = 0;
    while let Some(link) = next {
        let page: serde_json::Value = http.get(&link).bearer_auth(&token).send().await?.json().await?;
        seen += page["value"].as_array().map_or(0, Vec::len);
        next = page["@odata.nextLink"].as_str().map(str::to_string);
    }
    assert_eq!(seen, 3);
    Ok(())
}
