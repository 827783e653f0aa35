//! The daemon: it follows cloud changes on its interval and stops cleanly on SIGTERM.

use std::time::Duration;

use rustix::process::Signal;
use writeback_tests::e2e::{Env, new_id};
use writeback_tests::graphsim::{Group, MemberRef, WritebackConfiguration};

#[tokio::test]
async fn the_daemon_follows_changes_and_stops_on_sigterm() -> anyhow::Result<()> {
    let env = Env::new("daemon").await?;
    let (u1, _) = env.synced_user("daemon-u1").await?;
    let id = new_id();
    let mut g = Group::security(&id, "Daemon");
    g.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
    env.sim.add_group(g).unwrap();
    let mut daemon = env.start_daemon()?;
    env.eventually(Duration::from_secs(20), || async { Ok(env.group(&id).await?.is_some()) }).await?;

    env.sim.add_members(&id, &[MemberRef::user(&u1)]).unwrap();
    env.eventually(Duration::from_secs(20), || async {
        Ok(env.group(&id).await?.is_some_and(|g| g.members.len() == 1))
    })
    .await?;

    daemon.signal(Signal::TERM)?;
    let status = daemon.wait(Duration::from_secs(20)).await?;
    assert!(status.success(), "exit status {status:?}; log:\n{}", env.daemon_log());
    assert!(env.daemon_log().contains("writeback stopped"));
    Ok(())
}

#[tokio::test]
async fn tokens_are_cached_and_refreshed_before_they_expire() -> anyhow::Result<()> {
    use writeback_tests::graphsim::{Endpoint, SimConfig};
    // Tokens live 3 s; the agent refreshes a fifth of the lifetime early, so never hits an expired one.
    let env = Env::with_sim("token-refresh", SimConfig { token_lifetime_secs: 3, ..SimConfig::default() }).await?;
    let _daemon = env.start_daemon()?;
    let count = |endpoint: Endpoint| env.sim.requests().iter().filter(|r| r.endpoint == endpoint).count();
    env.eventually(Duration::from_secs(30), || async { Ok(count(Endpoint::Token) >= 3) }).await?;
    let deltas = count(Endpoint::GroupsDelta);
    assert!(deltas > count(Endpoint::Token), "the token is reused across cycles: {deltas} delta requests");
    let refused = env.sim.requests().iter().filter(|r| r.status == Some(401)).count();
    assert_eq!(refused, 0, "no request was made with an expired token");
    Ok(())
}

#[tokio::test]
async fn the_daemons_reconcile_repairs_on_prem_edits_without_a_cloud_change() -> anyhow::Result<()> {
    use ldap3::Mod;
    use std::collections::HashSet;
    let mut env = Env::new("daemon-drift").await?;
    env.agent_settings("reconcile_interval = \"2s\"")?;
    let (u1, u1_ad) = env.synced_user("daemon-drift-u1").await?;
    let id = new_id();
    let mut g = Group::security(&id, "Reconciled");
    g.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
    g.description = Some("from the cloud".into());
    g.members = vec![MemberRef::user(&u1)];
    env.sim.add_group(g).unwrap();
    let _daemon = env.start_daemon()?;
    env.eventually(Duration::from_secs(20), || async {
        Ok(env.group(&id).await?.is_some_and(|g| g.members.len() == 1))
    })
    .await?;

    let written = env.group(&id).await?.unwrap();
    let mut ldap = env.dc.admin().await?;
    ldap.modify(
        &written.dn,
        vec![
            Mod::Replace("description", HashSet::from(["edited on-prem"])),
            Mod::Delete("member", HashSet::from([u1_ad.dn.as_str()])),
        ],
    )
    .await?
    .success()?;
    // Nothing changes in the cloud, so only the daemon's periodic full reconcile can repair this.
    env.eventually(Duration::from_secs(30), || async {
        let group = env.group(&id).await?.unwrap();
        Ok(group.description.as_deref() == Some("from the cloud") && group.members.len() == 1)
    })
    .await?;
    assert_eq!(env.group(&id).await?.unwrap().guid, written.guid);
    Ok(())
}

#[tokio::test]
async fn sigterm_in_the_middle_of_a_cycle_exits_0_and_loses_nothing() -> anyhow::Result<()> {
    use writeback_tests::graphsim::{Fault, FaultKind, FaultTarget};
    let env = Env::new("daemon-term").await?;
    let mut daemon = env.start_daemon()?;
    env.eventually(Duration::from_secs(20), || async { Ok(env.daemon_log().contains("cycle applied")) }).await?;

    // The next cycle's group page is slow to come, so the signal lands while the cycle runs.
    env.sim.inject(Fault::new(FaultTarget::GroupsDelta, FaultKind::Delay(Duration::from_secs(3))));
    let id = new_id();
    let mut g = Group::security(&id, "Arrives during shutdown");
    g.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
    env.sim.add_group(g).unwrap();
    env.eventually(Duration::from_secs(20), || async { Ok(env.sim.pending_faults() == 0) }).await?;
    daemon.signal(Signal::TERM)?;
    let status = daemon.wait(Duration::from_secs(20)).await?;
    assert!(status.success(), "exit status {status:?}; log:\n{}", env.daemon_log());
    assert!(env.daemon_log().contains("writeback stopped"), "{}", env.daemon_log());

    // Whatever the stopped cycle read is applied by the next run.
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_some());
    Ok(())
}
