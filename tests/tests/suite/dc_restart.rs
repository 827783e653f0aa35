//! The DC stops and starts again while agents run. These tests restart the shared DC, so `tests/run` runs
//! them on their own after the rest of the suite, which they would otherwise disturb.

use std::time::Duration;

use anyhow::Result;
use writeback::lease::Role;
use writeback_tests::agents::{Agent, TEST_TTL, USERS, add_groups, converged, shared_world, until, world};
use writeback_tests::e2e::Env;
use writeback_tests::graphsim::MemberRef;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dc_restart_mid_cycle_is_retried_and_the_directory_converges() -> Result<()> {
    let (mut env, users) = world(Env::new("restart-cycle").await?, "restart-cycle").await?;
    let ids = add_groups(&env, &users, "Restart", 150);
    let mut agent = Agent::for_env(&env, "solo")?;
    agent.start()?;
    until(&[&agent], Duration::from_secs(60), async || Ok(env.groups().await?.len() >= 10)).await?;
    tokio::task::block_in_place(|| env.dc.restart())?;
    // The cycle the restart broke fails with one line naming the cause, and a later cycle finishes the job.
    until(&[&agent], Duration::from_secs(180), async || converged(&env, &users).await).await?;
    let log = agent.log();
    assert!(log.contains("cycle failed"), "the broken cycle was reported:\n{log}");
    env.sim.add_members(&ids[0], &[MemberRef::user(&users[USERS - 1].0)]).unwrap();
    until(&[&agent], Duration::from_secs(60), async || converged(&env, &users).await).await?;
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_writer_holds_the_lease_across_a_dc_restart() -> Result<()> {
    let (mut env, users) = shared_world("restart-lease", TEST_TTL).await?;
    let ids = add_groups(&env, &users, "Lease", 10);
    let (mut a1, mut a2) = (Agent::for_env(&env, "a1")?, Agent::for_env(&env, "a2")?);
    a1.start()?;
    until(&[&a1], Duration::from_secs(30), async || Ok(a1.role("contoso") == Some(Role::Active))).await?;
    a2.start()?;
    until(&[&a1, &a2], Duration::from_secs(60), async || converged(&env, &users).await).await?;
    tokio::task::block_in_place(|| env.dc.restart())?;
    env.sim.add_members(&ids[0], &[MemberRef::user(&users[USERS - 1].0)]).unwrap();
    add_groups(&env, &users, "After", 3);
    until(&[&a1, &a2], Duration::from_secs(120), async || converged(&env, &users).await).await?;
    until(&[&a1, &a2], Duration::from_secs(60), async || {
        let roles = [a1.role("contoso"), a2.role("contoso")];
        Ok(roles.iter().filter(|r| **r == Some(Role::Active)).count() == 1 && roles.contains(&Some(Role::Standby)))
    })
    .await?;
    a1.stop().await?;
    a2.stop().await
}
