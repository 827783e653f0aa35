//! `bench`: the writeback benchmark harness.
//!
//! ```sh
//! bench/run [--quick]          # installs prerequisites, builds release, ensures the test DC, runs this
//! bench/run --failover-only    # phase 6 alone, a couple of minutes
//! bench/run --enforcement-only # phase 7 alone, about five minutes
//! bench/run --initial-only [--groups N --memberships M --users U --link-ms L --grow G] # phase 1 alone, any size
//! bench/run --ratios [--quick] # phase 1 in every setting (fresh and grown DC, direct and a slow link)
//! cargo run --release -p writeback-tests --bin bench -- [--quick] [--failover-only]
//! ```
//!
//! One run measures, against the shared Samba test DC (which runs with `ldb:nosync = true`) and the in-process
//! Graph simulator, with the real release `writeback` binary:
//! 1. the initial sync of a tenant against the raw floor (`ldapadd -f` of the same groups and members);
//! 2. quiet cycles: Graph requests, directory writes and CPU of `sync --once` and of the daemon;
//! 3. the latency of single membership changes through the daemon (2 s interval);
//! 4. write minimality: operations issued against the minimum the changes need, and one change on a very
//!    large group;
//! 5. scale without a directory: the state and the planner alone (in a child process, `--scale-only`);
//! 6. failover between two agents sharing the tenant through the writer lease (a world of its own): kill of
//!    the writer → the standby takes the lease and writes, and the writes and the gap of a `lease release`;
//! 7. live enforcement (a world of its own): the PIM polling cost, drift repair latency and PIM expiry lateness.
//!
//! It prints figures, not verdicts: nothing here asserts a timing. The OUs it creates are deleted at the end.

// The crate root is this file, so its modules are named by path: they live in `bench/`.
#[path = "bench/directory.rs"]
mod directory;
#[path = "bench/enforcement.rs"]
mod enforcement;
#[path = "bench/failover.rs"]
mod failover;
#[path = "bench/initial.rs"]
mod initial;
#[path = "bench/latency.rs"]
mod latency;
#[path = "bench/measure.rs"]
mod measure;
#[path = "bench/minimal.rs"]
mod minimal;
#[path = "bench/quiet.rs"]
mod quiet;
#[path = "bench/ratios.rs"]
mod ratios;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/scale.rs"]
mod scale;
#[path = "bench/world.rs"]
mod world;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use crate::report::Figures;
use crate::world::World;

/// Benchmark the writeback agent against the test DC and the Graph simulator.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Small sizes (200 groups, 4,000 memberships, 500 users, …): a run of a few minutes.
    #[arg(long)]
    quick: bool,
    /// Seed of the random tenant and of the change mixes.
    #[arg(long, default_value_t = 20_260_101)]
    seed: u64,
    /// Skip timing the HTTP simulator over the scale tenant (phase 5's comparison figure).
    #[arg(long)]
    no_simulator_feed: bool,
    /// Run only phase 6 (failover between agents), skipping phases 1 to 5: a couple of minutes.
    #[arg(long)]
    failover_only: bool,
    /// Run only phase 7 (drift repair latency, PIM expiry lateness and PIM polling cost): about five minutes.
    #[arg(long)]
    enforcement_only: bool,
    /// Run only phase 1 in every setting: 1,000 × 3 and 2,000 × 20, each on a fresh DC and on a grown one,
    /// each direct and over a link 2 ms late each way. It replaces the test DC with freshly provisioned ones.
    #[arg(long)]
    ratios: bool,
    /// Run only phase 1 (the initial sync against raw ldapadd), with the sizes below when given.
    #[arg(long)]
    initial_only: bool,
    /// Groups of phase 1.
    #[arg(long, requires = "initial_only")]
    groups: Option<usize>,
    /// Memberships of phase 1, spread evenly over its groups.
    #[arg(long, requires = "initial_only")]
    memberships: Option<usize>,
    /// Synced users of phase 1.
    #[arg(long, requires = "initial_only")]
    users: Option<usize>,
    /// Phase 1 over a link that hands every LDAP message on this many milliseconds late, each way.
    #[arg(long, requires = "initial_only")]
    link_ms: Option<u64>,
    /// Phase 1 on a DC first grown by this many other groups (they stay: the DC keeps them until replaced).
    #[arg(long, requires = "initial_only")]
    grow: Option<usize>,
    /// Run only the large-group part of phase 4 (a 50,000-member group, one change each way). Creating its
    /// users takes most of the time.
    #[arg(long)]
    big_group_only: bool,
    /// Internal: run only phase 5 in this process and print its figures as one JSON line.
    #[arg(long, hide = true)]
    scale_only: bool,
}

/// How big each phase is.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub groups: usize,
    pub memberships: usize,
    pub users: usize,
    /// Quiet `sync --once` runs.
    pub quiet_cycles: usize,
    /// How long the settled daemon is watched.
    pub daemon_window: Duration,
    pub latency_changes: usize,
    /// Groups the change mixes of phase 4 work on.
    pub mix_groups: usize,
    pub mix_rounds: usize,
    /// Members of the large group of phase 4.
    pub big_group: usize,
    pub scale_groups: usize,
    pub scale_memberships: usize,
    pub scale_users: usize,
    /// Kill takeovers and clean takeovers each, in phase 6.
    pub failover_rounds: usize,
    /// Phase 7's groups, on-premises edits and PIM ends.
    pub enforcement: enforcement::Size,
}

impl Sizes {
    /// The sizes the performance issue asks for.
    const FULL: Sizes = Sizes {
        groups: 2_000,
        memberships: 40_000,
        users: 5_000,
        quiet_cycles: 3,
        daemon_window: Duration::from_secs(20),
        latency_changes: 50,
        mix_groups: 100,
        mix_rounds: 5,
        big_group: 50_000,
        scale_groups: 100_000,
        scale_memberships: 1_000_000,
        scale_users: 100_000,
        failover_rounds: 5,
        enforcement: enforcement::Size { groups: 1_000, drift_edits: 45, expiries: 20 },
    };

    /// A tenth of it, for a run of a few minutes.
    const QUICK: Sizes = Sizes {
        groups: 200,
        memberships: 4_000,
        users: 500,
        quiet_cycles: 3,
        daemon_window: Duration::from_secs(10),
        latency_changes: 10,
        mix_groups: 50,
        mix_rounds: 5,
        big_group: 5_000,
        scale_groups: 10_000,
        scale_memberships: 100_000,
        scale_users: 10_000,
        failover_rounds: 2,
        enforcement: enforcement::Size { groups: 100, drift_edits: 12, expiries: 6 },
    };

    fn new(quick: bool) -> Sizes {
        if quick { Sizes::QUICK } else { Sizes::FULL }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = locate_writeback() {
        eprintln!("bench: error: {e:#}");
        return ExitCode::FAILURE;
    }
    // reqwest's rustls and ldap3's both link aws-lc-rs; name the process default so neither has to guess.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Points the e2e helpers at the `writeback` binary next to this one (`target/release/writeback` for a release
/// bench), unless `WRITEBACK_BIN` already names one. They look one directory higher by default, where test
/// executables (`target/<profile>/deps/…`) live.
fn locate_writeback() -> Result<()> {
    if std::env::var_os("WRITEBACK_BIN").is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let bin = exe.with_file_name("writeback");
    if !bin.exists() {
        anyhow::bail!("{} is missing; build it with `cargo build --release -p writeback`", bin.display());
    }
    // SAFETY: called first thing in main, before the async runtime or any other thread exists.
    unsafe { std::env::set_var("WRITEBACK_BIN", &bin) };
    Ok(())
}

async fn run(args: &Args) -> Result<()> {
    let sizes = Sizes::new(args.quick);
    if args.scale_only {
        let figures = scale::run(&sizes, args.seed, !args.no_simulator_feed).await?;
        println!("{}", serde_json::to_string(&figures).context("serialising the scale figures")?);
        return Ok(());
    }
    report::header(&sizes, args.quick, args.failover_only, args.seed);
    if args.failover_only {
        let failover = failover_phase(&sizes).await?;
        report::failover_summary(&failover, args.quick);
        return Ok(());
    }
    if args.enforcement_only {
        let enforcement = enforcement_phase(&sizes, args.seed).await?;
        report::enforcement_summary(&enforcement, args.quick);
        return Ok(());
    }
    if args.ratios {
        let rows = ratios::run(args.quick, args.seed).await?;
        report::ratios(&rows, args.quick);
        return Ok(());
    }
    if let Some(count) = args.grow {
        ratios::grow(count).await?;
    }
    let mut world = World::create(args.seed).await?;
    if args.initial_only {
        let sizes = Sizes {
            groups: args.groups.unwrap_or(sizes.groups),
            memberships: args.memberships.unwrap_or(sizes.memberships),
            users: args.users.unwrap_or(sizes.users),
            ..sizes
        };
        report::section(&format!(
            "1. initial sync: {} groups, {} memberships, {} users, against raw ldapadd",
            sizes.groups, sizes.memberships, sizes.users
        ));
        if let Some(ms) = args.link_ms {
            world.slow_link(Duration::from_millis(ms))?;
        }
        let measured = initial::run(&mut world, &sizes, true).await;
        report::section("cleaning up the bench OUs");
        let cleaned = world.cleanup().await;
        measured?;
        return cleaned;
    }
    if args.big_group_only {
        report::section(&format!("4. write minimality: a {}-member group", sizes.big_group));
        let measured = minimal::big_group(&mut world, sizes.big_group).await;
        report::section("cleaning up the bench OUs");
        let cleaned = world.cleanup().await;
        measured?;
        return cleaned;
    }
    let measured = with_directory(&mut world, &sizes).await;
    report::section("cleaning up the bench OUs");
    let cleaned = world.cleanup().await;
    let figures = measured?;
    cleaned?;

    report::section(&format!(
        "5. scale without a directory: {} groups, {} memberships, {} users (state + planner, child process)",
        sizes.scale_groups, sizes.scale_memberships, sizes.scale_users
    ));
    let scale = scale::in_child(args.quick, args.seed).await?;
    report::scale(&scale);
    let failover = failover_phase(&sizes).await?;
    let enforcement = enforcement_phase(&sizes, args.seed).await?;
    report::summary(
        &Figures { scale: Some(scale), failover: Some(failover), enforcement: Some(enforcement), ..figures },
        args.quick,
    );
    Ok(())
}

/// Phase 6, which makes and deletes its own OU.
async fn failover_phase(sizes: &Sizes) -> Result<failover::Failover> {
    report::section(&format!(
        "6. failover: {} kill takeovers and {} clean takeovers between two agents (ttl {}, renew_every {}, interval {})",
        sizes.failover_rounds,
        sizes.failover_rounds,
        failover::TTL,
        failover::RENEW_EVERY,
        failover::INTERVAL
    ));
    failover::run(sizes.failover_rounds).await
}

/// Phase 7, which makes and deletes its own OU.
async fn enforcement_phase(sizes: &Sizes, seed: u64) -> Result<enforcement::Enforcement> {
    let size = sizes.enforcement;
    report::section(&format!(
        "7. live enforcement: {} groups; PIM polling cost, {} on-premises edits, {} PIM ends (interval {}, drift_watch {}, pim sweep {})",
        size.groups,
        size.drift_edits,
        size.expiries,
        enforcement::INTERVAL,
        enforcement::DRIFT_WATCH,
        enforcement::SWEEP
    ));
    enforcement::run(size, seed).await
}

/// Phases 1 to 4, which need the DC and share the world. The scale and failover figures are filled in later.
async fn with_directory(world: &mut World, sizes: &Sizes) -> Result<Figures> {
    report::section(&format!(
        "1. initial sync: {} groups, {} memberships, {} users, against raw ldapadd",
        sizes.groups, sizes.memberships, sizes.users
    ));
    let initial = initial::run(world, sizes, true).await?;

    report::section("2. no-change cycles");
    println!("  (a one-shot sync always connects to the DC: 1 bind, the rootDSE and the schema searches)");
    let one_shot = quiet::one_shot(world, sizes.quiet_cycles).await?;
    let mut daemon = world.start_daemon()?;
    quiet::wait_until_settled(world, &mut daemon, Duration::from_secs(600)).await?;
    println!(
        "  (the daemon skips the DC connection on quiet cycles; its interval is {} s)",
        world::DAEMON_INTERVAL.as_secs()
    );
    let daemon_quiet = quiet::daemon(world, &mut daemon, sizes.daemon_window).await?;

    report::section(&format!("3. latency: {} single membership changes through the daemon", sizes.latency_changes));
    let latency = latency::run(world, &mut daemon, sizes.latency_changes).await?;
    daemon.stop().await?;

    report::section(&format!(
        "4. write minimality: {} rounds of random changes over {} groups, then a {}-member group",
        sizes.mix_rounds, sizes.mix_groups, sizes.big_group
    ));
    let minimality = minimal::run(world, sizes).await?;
    Ok(Figures {
        initial,
        one_shot,
        daemon: daemon_quiet,
        latency,
        minimality,
        scale: None,
        failover: None,
        enforcement: None,
    })
}
