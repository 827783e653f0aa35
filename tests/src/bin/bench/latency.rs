//! Phase 3: latency of single membership changes through the daemon. Each change is made in the simulator
//! after a random pause of up to one interval (so that changes land at every point of the daemon's cycle, as
//! real ones do), then the DC is polled until the member is visible in the group's `member` attribute.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::Rng;
use writeback_tests::graphsim::MemberRef;

use crate::directory;
use crate::measure::{human, mean, percentile};
use crate::world::{DAEMON_INTERVAL, Daemon, World};

/// How often the DC is asked whether the member arrived.
const POLL: Duration = Duration::from_millis(20);
/// How long one change may take before the phase fails.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Change-to-visible times.
#[derive(Debug, Clone)]
pub struct Latency {
    pub samples: Vec<Duration>,
}

impl Latency {
    pub fn p50(&self) -> Duration {
        percentile(&self.samples, 50.0)
    }
    pub fn p99(&self) -> Duration {
        percentile(&self.samples, 99.0)
    }
    pub fn max(&self) -> Duration {
        self.samples.iter().max().copied().unwrap_or_default()
    }
}

/// Makes `changes` single membership adds, one at a time, and times each until the DC shows it.
pub async fn run(world: &mut World, daemon: &mut Daemon, changes: usize) -> Result<Latency> {
    let group_dns: HashMap<String, String> = world.ad_groups().await?.into_iter().map(|(id, g)| (id, g.dn)).collect();
    let mut ldap = world.env.dc.admin().await?;
    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        let (group, user) = pick_new_membership(world)?;
        let group_dn = group_dns.get(&group).with_context(|| format!("group {group} is not in AD"))?;
        let user_dn = world.users[user].dn.clone();
        let pause = world.rng.random_range(0..DAEMON_INTERVAL.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        daemon.check_alive()?;
        let started = std::time::Instant::now();
        world.env.sim.add_members(&group, &[MemberRef::user(world.users[user].id.clone())])?;
        directory::wait_for_member(&mut ldap, group_dn, &user_dn, POLL, TIMEOUT)
            .await
            .with_context(|| format!("change {} of {changes}; the daemon's log ends: {}", i + 1, daemon.log_tail()))?;
        samples.push(started.elapsed());
    }
    directory::close(ldap).await;
    let latency = Latency { samples };
    println!(
        "  {changes} single membership adds: p50 {}, p99 {}, max {}, mean {} (target p99 ≤ 3 s; poll every {} ms)",
        human(latency.p50()),
        human(latency.p99()),
        human(latency.max()),
        human(mean(&latency.samples)),
        POLL.as_millis()
    );
    Ok(latency)
}

/// A random group and a random user (by index) not yet in it.
fn pick_new_membership(world: &mut World) -> Result<(String, usize)> {
    for _ in 0..1000 {
        let group = world.groups[world.rng.random_range(0..world.groups.len())].id.clone();
        let user = world.rng.random_range(0..world.users.len());
        let cloud =
            world.env.sim.group(&group).with_context(|| format!("group {group} vanished from the simulator"))?;
        if !cloud.has_member(&world.users[user].id) {
            return Ok((group, user));
        }
    }
    bail!("found no group with room for another member in 1000 tries")
}
