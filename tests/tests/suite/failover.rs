//! Several agents on one tenant, as real processes against the real DC: exactly one writes, a standby takes
//! over after a crash or a pause without a stale write, `lease release` hands over cleanly, leases spread
//! across agents, and writers that overlap still converge.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use rustix::process::Signal;
use writeback::lease::Role;
use writeback_tests::agents::{
    Agent, TEST_TTL, USERS, add_groups, converged, output_text, share_tenant, shared_world, until, world,
};
use writeback_tests::e2e::Env;
use writeback_tests::graphsim::MemberRef;
use writeback_tests::ldap_proxy::FaultProxy;

fn roles(agents: &[&Agent]) -> Vec<Option<Role>> {
    agents.iter().map(|a| a.role("contoso")).collect()
}

/// Ids of the groups an agent's audit log shows it created.
fn created(agent: &Agent) -> Result<BTreeSet<String>> {
    Ok(agent.writes("contoso")?.into_iter().filter(|r| r.operation == "create").map(|r| r.group_id).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_share_a_tenant_and_exactly_one_writes() -> Result<()> {
    let (env, users) = shared_world("ha-three", TEST_TTL).await?;
    let ids = add_groups(&env, &users, "Three", 20);
    let mut agents = vec![Agent::for_env(&env, "a1")?, Agent::for_env(&env, "a2")?, Agent::for_env(&env, "a3")?];
    for agent in &mut agents {
        agent.start()?;
    }
    let all: Vec<&Agent> = agents.iter().collect();
    until(&all, Duration::from_secs(120), async || converged(&env, &users).await).await?;
    until(&all, Duration::from_secs(30), async || {
        let roles = roles(&all);
        Ok(roles.iter().filter(|r| **r == Some(Role::Active)).count() == 1
            && roles.iter().filter(|r| **r == Some(Role::Standby)).count() == 2)
    })
    .await?;
    // A later change is written too, still by one agent.
    env.sim.add_members(&ids[0], &[MemberRef::user(&users[USERS - 1].0)]).unwrap();
    until(&all, Duration::from_secs(30), async || converged(&env, &users).await).await?;

    for agent in &mut agents {
        agent.stop().await?;
    }
    let writes: Vec<usize> = agents.iter().map(|a| a.writes("contoso").map(|w| w.len())).collect::<Result<_>>()?;
    let writers: Vec<&Agent> = agents.iter().zip(&writes).filter(|(_, w)| **w > 0).map(|(a, _)| a).collect();
    assert_eq!(writers.len(), 1, "exactly one agent writes; writes per agent: {writes:?}");
    let creates = created(writers[0])?;
    assert_eq!(creates, ids.iter().cloned().collect(), "the writer created each group once");
    for agent in &agents {
        if agent.id != writers[0].id {
            assert!(agent.audit("contoso")?.is_empty(), "standby {} attempted no write", agent.id);
        }
    }
    Ok(())
}

/// Starts `first` and waits until it is the writer, then starts `second` and waits until it is a standby.
async fn writer_and_standby(first: &mut Agent, second: &mut Agent) -> Result<()> {
    first.start()?;
    until(&[first], Duration::from_secs(90), async || Ok(first.role("contoso") == Some(Role::Active))).await?;
    second.start()?;
    until(&[first, second], Duration::from_secs(30), async || Ok(second.role("contoso") == Some(Role::Standby))).await
}

async fn groups_in_ad(env: &Env) -> Result<usize> {
    Ok(env.groups().await?.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_writer_killed_mid_cycle() -> Result<()> {
    let (env, users) = shared_world("ha-kill", TEST_TTL).await?;
    // The writer reaches the DC over a slow link (50 ms each way), so that it is still writing when it is killed.
    let link = FaultProxy::start(&env.dc)?;
    link.set_latency(Duration::from_millis(50));
    let direct = format!("url = \"{}\"", env.dc.info().url);
    let slow = env.tenant_block("contoso")?.replacen(&direct, &format!("url = \"{}\"", link.url()), 1);
    let (mut a1, mut a2) = (Agent::new(env.dir.path(), "a1", &slow)?, Agent::for_env(&env, "a2")?);
    writer_and_standby(&mut a1, &mut a2).await?;
    let ids = add_groups(&env, &users, "Kill", 150);
    // Writes are filed in the audit log a wave at a time, and a wave is at most the 64 writes journaled together:
    // a group past the 64th is written only after the first 64 are filed and flushed.
    until(&[&a1], Duration::from_secs(60), async || Ok(groups_in_ad(&env).await? > 64)).await?;
    a1.kill()?;
    let killed = Instant::now();
    assert!(groups_in_ad(&env).await? < ids.len(), "the writer was killed before it finished");
    until(&[&a1, &a2], Duration::from_secs(30), async || Ok(a2.role("contoso") == Some(Role::Active))).await?;
    let takeover = killed.elapsed();
    until(&[&a1, &a2], Duration::from_secs(120), async || converged(&env, &users).await).await?;
    a2.stop().await?;
    // The ttl plus one interval, with room for a loaded machine.
    assert!(takeover < Duration::from_secs(6 + 1 + 10), "takeover took {takeover:?}");
    let (by_a1, by_a2) = (created(&a1)?, created(&a2)?);
    assert!(by_a1.is_disjoint(&by_a2), "no group was created by both agents");
    assert!(!by_a1.is_empty() && !by_a2.is_empty(), "both agents wrote: {} and {} creates", by_a1.len(), by_a2.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_writer_resumes_without_writing_on_a_stale_lease() -> Result<()> {
    let (env, users) = shared_world("ha-pause", TEST_TTL).await?;
    let (mut a1, mut a2) = (Agent::for_env(&env, "a1")?, Agent::for_env(&env, "a2")?);
    writer_and_standby(&mut a1, &mut a2).await?;
    let ids = add_groups(&env, &users, "Pause", 200);
    until(&[&a1], Duration::from_secs(60), async || Ok(groups_in_ad(&env).await? >= 10)).await?;
    a1.signal(Signal::STOP)?;
    assert!(groups_in_ad(&env).await? < ids.len(), "the writer was paused before it finished");
    until(&[&a1, &a2], Duration::from_secs(60), async || Ok(a2.role("contoso") == Some(Role::Active))).await?;
    until(&[&a1, &a2], Duration::from_secs(120), async || converged(&env, &users).await).await?;
    // The groups OU holds only groups (the lease lives one level up), so its USN counts group writes only.
    let before = env.dc.subtree_usn(&env.ou.groups_dn).await?;
    a1.signal(Signal::CONT)?;
    until(&[&a1, &a2], Duration::from_secs(30), async || Ok(a1.log().contains("lost the writer lease"))).await?;
    // One more look after a full interval of the resumed agent: still nothing written.
    until(&[&a1, &a2], Duration::from_secs(30), async || Ok(a1.role("contoso") == Some(Role::Standby))).await?;
    assert_eq!(env.dc.subtree_usn(&env.ou.groups_dn).await?, before, "the resumed agent wrote to the groups");
    a1.stop().await?;
    a2.stop().await?;
    // The resumed cycle stops at the fence; or, when the pause caught a write in flight (sent, and applied by the
    // DC before the standby took over), that write's answer comes past its deadline and the cycle ends there. The
    // USN above shows that neither path wrote after the resume.
    let log = a1.log();
    assert!(
        log.contains("no longer holds the writer lease") || log.contains("failed: deadline has elapsed"),
        "the resumed cycle stopped at the fence or at its write in flight:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_release_hands_over_before_the_lease_would_expire() -> Result<()> {
    // A long ttl: a handover that waited for expiry would take 30 s.
    let (env, users) = shared_world("ha-release", "30s").await?;
    let ids = add_groups(&env, &users, "Release", 5);
    let (mut a1, mut a2) = (Agent::for_env(&env, "a1")?, Agent::for_env(&env, "a2")?);
    writer_and_standby(&mut a1, &mut a2).await?;
    until(&[&a1, &a2], Duration::from_secs(60), async || converged(&env, &users).await).await?;

    let output = a1.run(&["lease", "release"]).await?;
    assert!(output.status.success(), "{}", output_text(&output));
    assert!(output_text(&output).contains("tenant contoso: released the writer lease"), "{}", output_text(&output));
    let released = Instant::now();
    env.sim.add_members(&ids[0], &[MemberRef::user(&users[USERS - 1].0)]).unwrap();
    until(&[&a1, &a2], Duration::from_secs(20), async || converged(&env, &users).await).await?;
    let gap = released.elapsed();
    until(&[&a1, &a2], Duration::from_secs(20), async || {
        Ok(a2.role("contoso") == Some(Role::Active) && a1.role("contoso") == Some(Role::Standby))
    })
    .await?;
    a1.stop().await?;
    a2.stop().await?;
    assert!(gap < Duration::from_secs(15), "the change waited {gap:?} after the release");
    let late: Vec<_> = a2.writes("contoso")?;
    assert_eq!(late.len(), 1, "the new writer's takeover reconcile wrote only the new member: {late:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_split_four_tenants_and_a_survivor_takes_all() -> Result<()> {
    let mut worlds = Vec::new();
    let mut blocks = String::new();
    for i in 0..4 {
        let mut env = Env::new(&format!("ha-spread{i}")).await?;
        share_tenant(&mut env, TEST_TTL)?;
        blocks.push_str(&env.tenant_block(&format!("t{i}"))?);
        blocks.push('\n');
        worlds.push(env);
    }
    let base = worlds[0].dir.path();
    let (mut a, mut b) = (Agent::new(base, "agent-a", &blocks)?, Agent::new(base, "agent-b", &blocks)?);
    a.start()?;
    b.start()?;
    until(&[&a, &b], Duration::from_secs(60), async || {
        Ok(a.active_tenants().len() == 2 && b.active_tenants().len() == 2)
    })
    .await?;
    let (held_a, held_b) = (a.active_tenants(), b.active_tenants());
    assert!(held_a.iter().all(|t| !held_b.contains(t)), "{held_a:?} and {held_b:?} overlap");
    a.kill()?;
    until(&[&a, &b], Duration::from_secs(60), async || Ok(b.active_tenants().len() == 4)).await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_that_overlap_converge_to_one_copy_of_each_group() -> Result<()> {
    // No lease: two agents write the same tenant at once, as in the moment before a fence takes effect.
    let (env, users) = world(Env::new("ha-overlap").await?, "ha-overlap").await?;
    add_groups(&env, &users, "Overlap", 40);
    let (a1, a2) = (Agent::for_env(&env, "a1")?, Agent::for_env(&env, "a2")?);
    let (first, second) = tokio::join!(a1.run(&["sync", "--once"]), a2.run(&["sync", "--once"]));
    let (first, second) = (first?, second?);
    for agent in [&a1, &a2] {
        let output = agent.run(&["sync", "--once", "--full"]).await?;
        assert!(output.status.success(), "{}", output_text(&output));
    }
    assert!(converged(&env, &users).await?, "concurrent runs:\n{}\n{}", output_text(&first), output_text(&second));
    // Both agents now agree with the directory: another full reconcile writes nothing.
    for agent in [&a1, &a2] {
        let output = agent.run(&["sync", "--once", "--full"]).await?;
        assert!(output_text(&output).contains(": 0 writes"), "{}", output_text(&output));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_sync_refuses_a_tenant_whose_lease_another_agent_holds() -> Result<()> {
    let (env, users) = shared_world("ha-oneshot", TEST_TTL).await?;
    add_groups(&env, &users, "Oneshot", 3);
    let (mut a1, a2) = (Agent::for_env(&env, "a1")?, Agent::for_env(&env, "a2")?);
    a1.start()?;
    until(&[&a1], Duration::from_secs(30), async || Ok(a1.role("contoso") == Some(Role::Active))).await?;
    let output = a2.run(&["sync", "--once"]).await?;
    assert!(!output.status.success());
    let text = output_text(&output);
    assert!(text.contains("agent a1 holds the writer lease"), "{text}");
    assert!(a2.audit("contoso")?.is_empty(), "the refused sync wrote nothing");
    // Once the writer stops (releasing its lease), the one-shot sync runs.
    a1.stop().await?;
    let output = a2.run(&["sync", "--once"]).await?;
    assert!(output.status.success(), "{}", output_text(&output));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_one_agent_id_write_nothing_and_say_why() -> Result<()> {
    let (env, users) = shared_world("ha-twins", TEST_TTL).await?;
    let ids = add_groups(&env, &users, "Twins", 3);
    let mut first = Agent::for_env(&env, "wb1")?;
    first.start()?;
    until(&[&first], Duration::from_secs(60), async || converged(&env, &users).await).await?;

    // The same config copied to a second server: the same agent id, another state directory and process.
    let mut second = Agent::new(&env.dir.path().join("server2"), "wb1", &env.tenant_block("contoso")?)?;
    let health = second.serve_metrics()?;
    second.start()?;
    let twin =
        |agent: &Agent| agent.lease_view("contoso").is_some_and(|l| l.duplicate.is_some() && l.role == Role::Standby);
    until(&[&first, &second], Duration::from_secs(60), async || Ok(twin(&first) && twin(&second))).await?;

    // Neither writes a cloud change while both run: each cycles twice after it, and the groups stay as they were.
    let before = env.dc.subtree_usn(&env.ou.groups_dn).await?;
    env.sim.add_members(&ids[0], &[MemberRef::user(&users[USERS - 1].0)]).unwrap();
    let changed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    until(&[&first, &second], Duration::from_secs(60), async || {
        Ok(first.last_cycle("contoso") > changed + 2 && second.last_cycle("contoso") > changed + 2)
    })
    .await?;
    assert_eq!(env.dc.subtree_usn(&env.ou.groups_dn).await?, before, "a process with a duplicate id wrote");
    let answer = reqwest::get(format!("{health}/healthz")).await?;
    assert_eq!(answer.status(), 503);
    let why = answer.text().await?;
    assert!(why.contains("tenant contoso: agent id used by another running process"), "{why}");
    let shown = output_text(&first.run(&["status"]).await?);
    assert!(shown.contains("DUPLICATE AGENT ID: another running process uses agent id wb1"), "{shown}");

    // Once one stops, the other carries on and writes the change.
    second.stop().await?;
    until(&[&first], Duration::from_secs(60), async || converged(&env, &users).await).await?;
    assert!(first.lease_view("contoso").is_some_and(|l| l.duplicate.is_none()));
    first.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_value_that_looks_free_is_taken_only_after_a_full_ttl_unchanged() -> Result<()> {
    let (env, users) = shared_world("ha-garbled-lease", TEST_TTL).await?;
    add_groups(&env, &users, "Garbled", 3);
    let (mut a1, mut a2) = (Agent::for_env(&env, "a1")?, Agent::for_env(&env, "a2")?);
    writer_and_standby(&mut a1, &mut a2).await?;
    until(&[&a1, &a2], Duration::from_secs(60), async || converged(&env, &users).await).await?;

    // The writer freezes, and the lease value is overwritten with something no agent can read. The writer
    // could still write until its own deadline, so the standby must not count the lease free at once.
    a1.signal(Signal::STOP)?;
    let lease = format!("CN=writeback-lease,{}", env.ou.dn);
    env.dc.set_attribute(&lease, "adminDisplayName", "not a lease value").await?;
    let overwritten = Instant::now();
    until(&[&a1, &a2], Duration::from_secs(60), async || Ok(a2.role("contoso") == Some(Role::Active))).await?;
    let waited = overwritten.elapsed();
    a1.signal(Signal::CONT)?;
    a1.stop().await?;
    a2.stop().await?;
    assert!(waited >= Duration::from_secs(6), "the standby took a garbled lease after {waited:?}, before a full ttl");
    Ok(())
}

/// A one-shot run whose round that takes the lease outlasts its fence (the DC answered slowly: ttl 6 s − margin
/// 2 s leaves 4 s) renews the lease before it writes, rather than refusing to write for "another agent" that is
/// itself.
#[tokio::test]
async fn a_one_shot_run_whose_take_was_slow_renews_the_lease_and_writes() -> Result<()> {
    use writeback_tests::e2e::{enabled_group, new_id};
    use writeback_tests::ldap_proxy::{Fault, FaultProxy};
    let mut env = Env::new("slow-take").await?;
    share_tenant(&mut env, "6s")?;
    let proxy = FaultProxy::start(&env.dc)?;
    env.reach_directory_at(proxy.url())?;
    // A first run makes the lease object and hands the lease back cleanly, so the next run takes it at once.
    env.sync(&[]).await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Slow take", &[])).unwrap();
    // That round's first write is 4.5 s late, so the round outlasts the fence.
    proxy.inject(0, 1, Fault::Delay(Duration::from_millis(4500)));
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_some(), "the run wrote");
    assert_eq!(proxy.injected(), 1);
    Ok(())
}
