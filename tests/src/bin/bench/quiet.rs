//! Phase 2: cycles with nothing to do. The one-shot `sync --once` (which always connects to the DC: one bind,
//! the rootDSE and the schema searches) and the daemon's quiet cycles (which skip the DC entirely).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use writeback_tests::graphsim::Endpoint;

use crate::directory;
use crate::measure::{self, human, ms};
use crate::world::{Daemon, World};

/// Path of the groups delta query; one request of it starts every cycle's group round.
const GROUPS_DELTA: &str = "/beta/groups/delta";

/// One quiet `sync --once`.
#[derive(Debug, Clone)]
pub struct OneShot {
    pub wall: Duration,
    pub cpu: Duration,
    /// Graph requests, the token request excluded.
    pub graph_requests: usize,
    /// highestCommittedUSN delta of the whole (shared) DC.
    pub usn_global: u64,
    /// Objects in the bench's OU whose uSNChanged moved.
    pub changed_objects: usize,
}

/// The daemon over a window of quiet cycles.
#[derive(Debug, Clone)]
pub struct DaemonQuiet {
    pub cycles: usize,
    pub window: Duration,
    pub cpu_per_cycle: Duration,
    pub graph_requests_per_cycle: f64,
    pub usn_global: u64,
    pub changed_objects: usize,
}

/// Runs `sync --once` `cycles` times on an unchanged tenant.
pub async fn one_shot(world: &World, cycles: usize) -> Result<Vec<OneShot>> {
    let mut results = Vec::new();
    for i in 1..=cycles {
        world.env.sim.clear_requests();
        let usn = world.global_usn().await?;
        let run = world.sync().await?;
        let usn_after = world.global_usn().await?;
        let cycle = OneShot {
            wall: run.wall,
            cpu: run.cpu,
            graph_requests: graph_requests(world),
            usn_global: usn_after.saturating_sub(usn),
            changed_objects: directory::changed_since(&world.env.dc, &world.env.ou.dn, usn).await?,
        };
        println!(
            "  quiet sync --once #{i}: {} wall, {} CPU, {} Graph requests, {} objects changed in the bench OU, highestCommittedUSN +{}",
            human(cycle.wall),
            ms(cycle.cpu),
            cycle.graph_requests,
            cycle.changed_objects,
            cycle.usn_global
        );
        results.push(cycle);
    }
    Ok(results)
}

/// Graph requests in the simulator's log, the token request excluded.
pub fn graph_requests(world: &World) -> usize {
    world.env.sim.requests().iter().filter(|r| r.endpoint != Endpoint::Token).count()
}

/// How many group delta rounds the daemon has started: one per cycle.
fn cycles_started(world: &World) -> usize {
    world.env.sim.request_count(GROUPS_DELTA)
}

/// Waits until the daemon has finished its start-up cycle (a full reconcile) and started another, so that what
/// follows is quiet.
pub async fn wait_until_settled(world: &World, daemon: &mut Daemon, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let start = cycles_started(world);
    while cycles_started(world) < start + 2 {
        daemon.check_alive()?;
        if Instant::now() > deadline {
            bail!("the daemon did not finish its first cycles within {timeout:?}; its log ends: {}", daemon.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Watches the settled daemon for `window` and divides its CPU time and Graph requests by the cycles it ran.
pub async fn daemon(world: &World, daemon: &mut Daemon, window: Duration) -> Result<DaemonQuiet> {
    world.env.sim.clear_requests();
    let usn = world.global_usn().await?;
    let cpu = daemon.cpu()?;
    tokio::time::sleep(window).await;
    daemon.check_alive()?;
    let cpu = daemon.cpu()?.saturating_sub(cpu);
    let cycles = cycles_started(world);
    if cycles == 0 {
        bail!("the daemon ran no cycle in {window:?}; its log ends: {}", daemon.log_tail());
    }
    let usn_after = world.global_usn().await?;
    let quiet = DaemonQuiet {
        cycles,
        window,
        cpu_per_cycle: cpu / cycles as u32,
        graph_requests_per_cycle: graph_requests(world) as f64 / cycles as f64,
        usn_global: usn_after.saturating_sub(usn),
        changed_objects: directory::changed_since(&world.env.dc, &world.env.ou.dn, usn).await?,
    };
    println!(
        "  daemon, {} quiet cycles in {}: {} CPU per cycle ({} in all, /proc/<pid>/stat, {} resolution), {:.1} Graph requests per cycle, {} objects changed in the bench OU, highestCommittedUSN +{}",
        quiet.cycles,
        human(window),
        ms(quiet.cpu_per_cycle),
        ms(cpu),
        ms(measure::clock_tick()?),
        quiet.graph_requests_per_cycle,
        quiet.changed_objects,
        quiet.usn_global
    );
    Ok(quiet)
}
