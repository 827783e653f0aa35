//! Faults on the directory side: one bad group never blocks the others, a group that keeps failing is
//! quarantined with its reason, and busy, unavailable or vanished DCs (injected by a proxy) cost a retry,
//! never a lost or doubled write.

use writeback_tests::agents::{add_groups, converged, world};
use writeback_tests::e2e::{Env, enabled_group, new_id, text};
use writeback_tests::graphsim::{Group, GroupPatch};
use writeback_tests::ldap_proxy::{BUSY, Fault, FaultProxy, UNAVAILABLE};

#[tokio::test]
async fn a_group_that_keeps_failing_is_quarantined_and_the_others_go_on() -> anyhow::Result<()> {
    let env = Env::new("quarantine").await?;
    // The DC refuses this group every time: a proxy address longer than AD allows (rangeUpper 1123).
    let bad = new_id();
    let mut g = Group::unified(&bad, "Oversized", "oversized");
    g.proxy_addresses = vec![format!("smtp:{}@contoso.com", "x".repeat(2000))];
    env.sim.add_group(g).unwrap();
    let good = new_id();
    env.sim.add_group(enabled_group(&good, "Healthy", &[])).unwrap();

    let attempts = |audit: &[writeback::state::AuditRecord]| audit.iter().filter(|r| r.group_id == bad).count();
    for round in 1..=3 {
        let output = env.run(&["sync", "--once"]).await?;
        assert!(!output.status.success(), "round {round}: a failing group needs attention");
        assert!(text(&output.stderr).contains("groups failed to apply"), "{}", text(&output.stderr));
        assert!(env.group(&good).await?.is_some(), "the healthy group is written from the first cycle");
    }
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains(&format!("group {bad}: quarantined after 3 failed attempts")), "{status}");
    let audit = env.state_audit().await?;
    assert_eq!(attempts(&audit), 3, "one attempt per cycle");

    // Quarantined: the next quiet cycle does not try again.
    let _ = env.run(&["sync", "--once"]).await?;
    assert_eq!(attempts(&env.state_audit().await?), 3);

    // Fixed in the cloud: the change lifts the quarantine and the group is written.
    let patch = GroupPatch { proxy_addresses: Some(vec!["SMTP:oversized@contoso.com".into()]), ..Default::default() };
    env.sim.update_group(&bad, patch).unwrap();
    env.sync(&[]).await?;
    assert!(env.group(&bad).await?.is_some());
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(!status.contains("quarantined"), "{status}");
    Ok(())
}

/// A world whose agent reaches the DC through a fault proxy, with `groups` groups waiting to be written.
async fn proxied_world(name: &str, groups: usize) -> anyhow::Result<(Env, FaultProxy, Vec<(String, String)>)> {
    let (mut env, users) = world(Env::new(name).await?, name).await?;
    let proxy = FaultProxy::start(&env.dc)?;
    env.reach_directory_at(proxy.url())?;
    add_groups(&env, &users, name, groups);
    Ok((env, proxy, users))
}

#[tokio::test]
async fn a_busy_dc_is_asked_again_and_the_cycle_completes() -> anyhow::Result<()> {
    let (env, proxy, users) = proxied_world("busy", 6).await?;
    proxy.inject(2, 2, BUSY);
    let output = env.sync(&[]).await?;
    assert_eq!(proxy.injected(), 2);
    assert!(text(&output.stderr).contains("the DC answered busy"), "{}", text(&output.stderr));
    assert!(converged(&env, &users).await?);
    Ok(())
}

#[tokio::test]
async fn a_dc_that_stays_unavailable_ends_the_cycle_after_bounded_retries_and_nothing_is_lost() -> anyhow::Result<()> {
    let (env, proxy, users) = proxied_world("unavailable", 16).await?;
    proxy.inject(2, usize::MAX, UNAVAILABLE);
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    let cause = stderr.lines().last().unwrap_or_default();
    assert!(cause.contains("unavailable") && cause.contains("LDAP result 52"), "one line naming the cause:\n{stderr}");
    // Eight writes are in flight at a time: the two that landed made room for two more, so eight creates were
    // each sent once and retried three times. Once one gave up, the six never started were not sent at all.
    assert_eq!(proxy.injected(), 8 * 4, "each write was sent once and retried three times, then the cycle ended");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains("unavailable"), "{status}");
    assert_eq!(env.groups().await?.len(), 2, "the writes before the fault landed, none after it");
    let audit = env.state_audit().await?;
    assert!(audit.iter().any(|r| r.outcome.contains("unavailable")), "the failed write is audited");
    let creates: Vec<&str> = audit.iter().filter(|r| r.operation == "create").map(|r| r.outcome.as_str()).collect();
    assert_eq!(creates.len(), 2 + 8, "two landed, eight failed, six never sent (and not audited): {creates:?}");

    // The fault clears: a delta cycle (the cursor did not move past the unwritten groups) finishes the job.
    proxy.heal();
    env.sync(&[]).await?;
    assert!(converged(&env, &users).await?);
    Ok(())
}

#[tokio::test]
async fn a_connection_dropped_before_or_after_a_write_loses_nothing_and_duplicates_nothing() -> anyhow::Result<()> {
    let (env, proxy, users) = proxied_world("dropped", 6).await?;
    // The third write never reaches the DC.
    proxy.inject(2, 1, Fault::Drop);
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success(), "a dropped connection ends the cycle");
    assert_eq!(env.groups().await?.len(), 2);
    // The DC performs the next write, but its answer is lost with the connection.
    proxy.inject(0, 1, Fault::LoseAnswer);
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success(), "a lost answer ends the cycle");
    let stderr = text(&output.stderr);
    assert!(stderr.lines().last().unwrap_or_default().contains("LDAP add failed"), "{stderr}");
    // The writes sent behind it, in flight together, may have reached the DC too before the connection closed.
    let written = env.groups().await?.len();
    assert!(written >= 3, "the write whose answer was lost happened: {written} groups");
    let audit = env.state_audit().await?;
    let lost = audit.iter().filter(|r| r.operation == "create" && r.outcome.contains("LDAP add failed")).count();
    assert!(lost >= 1, "the write whose answer was lost is audited as failed: {audit:?}");
    // The next cycle finds that group by its anchor instead of creating it again (`converged` fails on a
    // duplicate), and writes the rest.
    env.sync(&[]).await?;
    assert!(converged(&env, &users).await?);
    assert_eq!(proxy.injected(), 2);
    Ok(())
}

#[tokio::test]
async fn members_answered_in_ranges_as_windows_ad_does_are_read_whole() -> anyhow::Result<()> {
    let mut env = Env::new("ranged").await?;
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(env.synced_user(&format!("ranged-u{i}")).await?.0);
    }
    let id = new_id();
    let mut g = enabled_group(&id, "Ranged", &[]);
    g.members = users[..5].iter().map(writeback_tests::graphsim::MemberRef::user).collect();
    env.sim.add_group(g).unwrap();
    env.sync(&[]).await?;
    assert_eq!(env.group(&id).await?.unwrap().members.len(), 5);

    // The agent must see all five members it wrote, to add exactly the sixth; seeing only the first range
    // it would add members the group already has.
    let proxy = FaultProxy::start(&env.dc)?;
    env.reach_directory_at(proxy.url())?;
    proxy.split_members(2);
    env.sim.add_members(&id, &[writeback_tests::graphsim::MemberRef::user(&users[5])]).unwrap();
    let before = env.state_audit().await?.len();
    env.sync(&[]).await?;

    assert_eq!(proxy.ranged(), 1, "the group was answered in ranges");
    let audit = env.state_audit().await?;
    let writes: Vec<_> = audit[before..].iter().filter(|r| r.group_id == id).collect();
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!(writes[0].operation, "add-members");
    assert!(writes[0].detail.starts_with("+1: "), "{writes:#?}");
    assert_eq!(writes[0].outcome, "ok");
    assert_eq!(env.group(&id).await?.unwrap().members.len(), 6);
    Ok(())
}

#[tokio::test]
async fn over_a_slow_link_several_writes_are_in_flight_at_once_and_all_land() -> anyhow::Result<()> {
    let (env, proxy, users) = proxied_world("in-flight", 24).await?;
    // A DC in another site: 20 ms each way, so no answer can come back before the next writes are sent.
    proxy.set_latency(std::time::Duration::from_millis(20));
    env.sync(&[]).await?;
    assert!(converged(&env, &users).await?);
    let most = proxy.most_writes_in_flight();
    assert!((2..=8).contains(&most), "writes in flight at once: {most}; expected several, at most 8");
    let audit = env.state_audit().await?;
    assert_eq!(audit.iter().filter(|r| r.operation == "create" && r.outcome == "ok").count(), 24, "{audit:?}");
    Ok(())
}
