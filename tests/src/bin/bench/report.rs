//! Printing: the run's header, section titles, phase 5's figures and the final summary table (markdown), each
//! figure next to its target and the anchors (Connect's 30-minute cycle, Cloud Sync's ~20 minutes, raw
//! `ldapadd`, the lease's ttl).

use std::time::Duration;

use crate::Sizes;
use crate::enforcement::{self, Enforcement};
use crate::failover::{self, Failover};
use crate::initial::Initial;
use crate::latency::Latency;
use crate::measure::{human, mb, mean, ms};
use crate::minimal::Minimality;
use crate::quiet::{DaemonQuiet, OneShot};
use crate::ratios::Row;
use crate::scale::Scale;

/// The target peak RSS of phase 5.
const RSS_TARGET: u64 = 300_000_000;
/// The target agent / raw floor ratio of phase 1.
const RATIO_TARGET: f64 = 1.1;
/// The target p99 latency of phase 3.
const P99_TARGET: Duration = Duration::from_secs(3);

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Figures {
    pub initial: Initial,
    pub one_shot: Vec<OneShot>,
    pub daemon: DaemonQuiet,
    pub latency: Latency,
    pub minimality: Minimality,
    pub scale: Option<Scale>,
    pub failover: Option<Failover>,
    pub enforcement: Option<Enforcement>,
}

/// What the run is, on what, with which caveats.
pub fn header(sizes: &Sizes, quick: bool, failover_only: bool, seed: u64) {
    let mode = match (quick, failover_only) {
        (false, false) => "full size",
        (true, false) => "--quick",
        (false, true) => "--failover-only",
        (true, true) => "--quick --failover-only",
    };
    println!("writeback bench ({mode}), seed {seed}");
    println!(
        "machine: {} CPUs, {} memory; DC: the shared Samba test DC with ldb:nosync = true (no fsync: writes are faster than on a production DC)",
        std::thread::available_parallelism().map_or(0, usize::from),
        mem_total().map_or_else(|| "unknown".into(), mb)
    );
    if failover_only {
        println!(
            "sizes: failover {} groups / {} users, {} rounds of each takeover",
            failover::GROUPS,
            failover::USERS,
            sizes.failover_rounds
        );
        return;
    }
    println!(
        "sizes: {} groups / {} memberships / {} users; {} latency changes; {}-member large group; scale {} groups / {} memberships; failover {} rounds",
        sizes.groups,
        sizes.memberships,
        sizes.users,
        sizes.latency_changes,
        sizes.big_group,
        sizes.scale_groups,
        sizes.scale_memberships,
        sizes.failover_rounds
    );
}

fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// A section title.
pub fn section(title: &str) {
    println!("\n==> {title}");
}

/// Phase 5's figures, as they come from the child process.
pub fn scale(s: &Scale) {
    println!(
        "  fed as delta pages parsed with parse_page/parse_group (not through HTTP): {} ({} group pages)",
        human(s.feed),
        s.group_pages
    );
    if let Some(sim) = s.simulator_feed {
        println!("  the same feed through the real HTTP simulator (for comparison): {}", human(sim));
    }
    println!("  state on disk after the feed: {}", mb(s.state_bytes));
    println!(
        "  RSS after the feed {} (peak {}), after the first batch of {} groups {} (peak {}), at the end {} (peak {})",
        mb(s.memory_after_feed.current),
        mb(s.memory_after_feed.peak),
        writeback::config::defaults::reconcile_batch(),
        mb(s.memory_after_first_batch.current),
        mb(s.memory_after_first_batch.peak),
        mb(s.memory_end.current),
        mb(s.memory_end.peak)
    );
    println!(
        "  no-op full reconcile: intents {} + plan {} = {}; {} operations planned (expected 0), {} members skipped",
        human(s.intents),
        human(s.plan),
        human(s.reconcile()),
        s.planned_ops,
        s.skipped_members
    );
}

/// `yes`, `NO`, or `—` when there is no target.
fn meets(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "—",
    }
}

/// One table row.
fn row(figure: &str, measured: String, target: &str, ok: Option<bool>, anchor: &str) {
    println!("| {figure} | {measured} | {target} | {} | {anchor} |", meets(ok));
}

/// The final markdown table.
pub fn summary(f: &Figures, quick: bool) {
    table(if quick { " --quick" } else { "" });
    initial_rows(&f.initial);
    quiet_rows(&f.one_shot, &f.daemon);
    latency_rows(&f.latency);
    minimality_rows(&f.minimality);
    if let Some(scale) = &f.scale {
        scale_rows(scale);
    }
    if let Some(failover) = &f.failover {
        failover_rows(failover);
    }
    if let Some(enforcement) = &f.enforcement {
        enforcement_rows(enforcement);
    }
}

/// The final markdown table of an `--enforcement-only` run: phase 7's rows alone.
pub fn enforcement_summary(f: &Enforcement, quick: bool) {
    table(if quick { " --quick --enforcement-only" } else { " --enforcement-only" });
    enforcement_rows(f);
}

fn enforcement_rows(f: &Enforcement) {
    let settings = format!(
        "interval {}, drift_watch {}, pim sweep {}",
        enforcement::INTERVAL,
        enforcement::DRIFT_WATCH,
        enforcement::SWEEP
    );
    let p99 = |samples: &[Duration]| crate::measure::percentile(samples, 99.0);
    row(
        &format!(
            "on-prem edit → repaired in AD by the daemon's drift watch, all ({} edits; {settings})",
            f.drift.len()
        ),
        Enforcement::spread(&f.drift),
        "p99 ≤ 5 s",
        Some(p99(&f.drift) <= Duration::from_secs(5)),
        "Connect: next 30-minute cycle; Cloud Sync: the next cloud change",
    );
    row(
        &format!(
            "… a member added or the description edited, told by the DC's change notification ({})",
            f.notified.len()
        ),
        Enforcement::spread(&f.notified),
        "—",
        None,
        "",
    );
    row(
        &format!("… a group moved out of its OU, found by the next look ({})", f.moved.len()),
        Enforcement::spread(&f.moved),
        "—",
        None,
        "a look every drift_watch",
    );
    row(
        &format!("PIM expiry lateness: removed from AD − endDateTime ({} ends)", f.lateness.len()),
        Enforcement::spread(&f.lateness),
        "within one interval",
        Some(p99(&f.lateness) <= Duration::from_secs(30)),
        "Connect and Cloud Sync: Graph's removal, then their next cycle (20–30 min); never while they are down",
    );
    row(
        &format!(
            "PIM polling cost, {} groups ({} with time-bound members): schedule requests per settled cycle; per hour",
            f.groups, f.time_bound
        ),
        format!("{:?}; {:.0} per hour", f.requests_per_cycle, f.requests_per_hour()),
        "well inside Graph's limits",
        None,
        "Graph: about 3,500 resource units per 10 s for a small tenant",
    );
}

/// The final markdown table of a `--failover-only` run: phase 6's rows alone.
pub fn failover_summary(f: &Failover, quick: bool) {
    table(if quick { " --quick --failover-only" } else { " --failover-only" });
    failover_rows(f);
}

/// The summary's title, the line saying what ran where, and the table's head.
fn table(arguments: &str) {
    section("summary");
    println!();
    println!(
        "`bench/run{arguments}` — Samba AD DC with `ldb:nosync = true`, loopback, {} CPUs.",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!();
    println!("| figure | measured | target | met | anchor |");
    println!("|---|---|---|---|---|");
}

fn initial_rows(i: &Initial) {
    row(
        &format!(
            "initial sync, {} groups / {} memberships / {} users (`sync --once`)",
            i.groups, i.memberships, i.users
        ),
        format!(
            "{} (agent CPU {}; a dry-run `plan` of it: {})",
            human(i.sync_wall),
            human(i.sync_cpu),
            human(i.plan_wall)
        ),
        "—",
        None,
        &format!(
            "raw `ldapadd -f` of the same groups and members: {} before the agent, {} after (as adds, then one member modify per group: {})",
            human(i.raw_before),
            human(i.raw_after),
            i.raw_split.map_or_else(|| "not measured".into(), human)
        ),
    );
    row(
        "initial sync / raw ldapadd (mean of before and after)",
        format!("{:.2}×", i.ratio()),
        "≤ 1.1×",
        Some(i.ratio() <= RATIO_TARGET),
        "raw `ldapadd`",
    );
}

fn quiet_rows(one_shot: &[OneShot], d: &DaemonQuiet) {
    let requests: Vec<String> = one_shot.iter().map(|c| c.graph_requests.to_string()).collect();
    let writes: Vec<String> = one_shot.iter().map(|c| c.changed_objects.to_string()).collect();
    let usn: Vec<String> = one_shot.iter().map(|c| format!("+{}", c.usn_global)).collect();
    let cpu: Vec<Duration> = one_shot.iter().map(|c| c.cpu).collect();
    let wall: Vec<Duration> = one_shot.iter().map(|c| c.wall).collect();
    row("no-change `sync --once`: Graph requests per cycle (token excluded)", requests.join(", "), "—", None, "");
    row(
        "no-change `sync --once`: directory writes (objects changed in the OU; highestCommittedUSN)",
        format!("{} ({})", writes.join(", "), usn.join(", ")),
        "0",
        Some(one_shot.iter().all(|c| c.changed_objects == 0)),
        "",
    );
    row(
        "no-change `sync --once`: CPU per cycle (process start, bind, rootDSE, schema)",
        format!("{} (wall {})", ms(mean(&cpu)), human(mean(&wall))),
        "—",
        None,
        "",
    );
    row(
        &format!("daemon quiet cycle: CPU ({} cycles in {}, /proc/pid/stat)", d.cycles, human(d.window)),
        ms(d.cpu_per_cycle),
        "—",
        None,
        "Connect: one cycle per 30 min; Cloud Sync: ~20 min",
    );
    row(
        "daemon quiet cycle: Graph requests; directory writes",
        format!("{:.1}; {}", d.graph_requests_per_cycle, d.changed_objects),
        "—; 0",
        Some(d.changed_objects == 0),
        "",
    );
}

fn latency_rows(l: &Latency) {
    row(
        &format!("membership change → visible in AD, p50 / p99 ({} changes, 2 s interval)", l.samples.len()),
        format!("{} / {}", human(l.p50()), human(l.p99())),
        "p99 ≤ 3 s",
        Some(l.p99() <= P99_TARGET),
        "Connect: 30-min cycle; Cloud Sync: ~20 min",
    );
}

fn minimality_rows(m: &Minimality) {
    let ratio = m.operations() as f64 / m.minimum().max(1) as f64;
    let floor = m.operations() as f64 / m.floor().max(1) as f64;
    row(
        &format!("write minimality, {} random rounds (operations / minimum)", m.rounds.len()),
        format!("{:.2} ({} / {}; {} LDAP requests)", ratio, m.operations(), m.minimum(), m.requests()),
        "1.0",
        Some(m.operations() == m.minimum()),
        &format!(
            "strict LDAP floor (adds, removes and displayName in one modify): {:.2} ({} / {})",
            floor,
            m.operations(),
            m.floor()
        ),
    );
    let big = &m.big;
    row(
        &format!("one member added to / removed from a {}-member group", big.members),
        format!(
            "{} / {} (cycles {} / {})",
            big.add.records.join(" "),
            big.remove.records.join(" "),
            human(big.add.wall),
            human(big.remove.wall)
        ),
        "one modify with one value each",
        Some(big.add.exact && big.remove.exact),
        &format!("initial write of that group: {}", human(big.initial)),
    );
}

fn scale_rows(s: &Scale) {
    row(
        &format!("peak RSS, state + planner, {} groups / {} memberships", s.groups, s.memberships),
        format!("{} (after the feed: {})", mb(s.memory_end.peak), mb(s.memory_after_feed.peak)),
        "≤ 300 MB",
        Some(s.memory_end.peak <= RSS_TARGET),
        "",
    );
    row(
        "no-op full reconcile without the directory (intents + plan)",
        format!("{} ({} + {}; {} ops)", human(s.reconcile()), human(s.intents), human(s.plan), s.planned_ops),
        "0 ops",
        Some(s.planned_ops == 0),
        "",
    );
    row(
        "feeding the delta pages into the state",
        human(s.feed),
        "—",
        None,
        &s.simulator_feed.map_or(String::new(), |d| format!("through the HTTP simulator: {}", human(d))),
    );
}

fn failover_rows(f: &Failover) {
    let settings =
        format!("ttl {}, renew_every {}, interval {}", failover::TTL, failover::RENEW_EVERY, failover::INTERVAL);
    row(
        &format!(
            "writer SIGKILLed → standby took the lease, min / median / max ({} rounds; {settings})",
            f.kills.len()
        ),
        f.lease_taken().show(),
        "—",
        None,
        "a dead holder's lease ends one ttl after its last renewal, up to renew_every before the kill",
    );
    row(
        "writer SIGKILLed → a change made right after it is in AD (the new holder's first write)",
        f.first_write().show(),
        "—",
        None,
        "the ttl plus the takeover's full reconcile",
    );
    let clean = f.releases.iter().all(|r| r.usn_delta == 0 && r.audit_writes == 0);
    let usn: Vec<String> = f.releases.iter().map(|r| format!("+{}", r.usn_delta)).collect();
    let audit: Vec<String> = f.releases.iter().map(|r| format!("+{}", r.audit_writes)).collect();
    row(
        &format!(
            "`lease release` with nothing changing: writes by the new holder's takeover cycle ({} rounds; groups OU USN; audit)",
            f.releases.len()
        ),
        format!("{}; {}", usn.join(", "), audit.join(", ")),
        "0",
        Some(clean),
        "",
    );
    row(
        "`lease release` finished → a change made right after it is in AD, min / median / max",
        f.gap().show(),
        "—",
        None,
        "without a release the standby waits out the ttl",
    );
}

/// Phase 1 in every setting, side by side, as a markdown table.
pub fn ratios(rows: &[Row], quick: bool) {
    section(&format!(
        "summary{}: initial sync against raw ldapadd, every setting",
        if quick { " (--quick)" } else { "" }
    ));
    println!(
        "| tenant | DC | objects at start | link | agent `sync --once` | agent CPU | `ldapadd` before / after | ratio | ≤ 1.1× |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let i = &r.initial;
        println!(
            "| {} groups × {} members, {} users | {} | {} | {} | {} | {} | {} / {} | {:.2}× | {} |",
            i.groups,
            i.memberships / i.groups.max(1),
            i.users,
            if r.growth == 0 { "fresh".to_string() } else { format!("grown by {} groups", r.growth) },
            r.objects,
            r.latency.map_or_else(|| "direct".to_string(), |l| format!("+{} ms each way", l.as_millis())),
            human(i.sync_wall),
            human(i.sync_cpu),
            human(i.raw_before),
            human(i.raw_after),
            i.ratio(),
            if i.ratio() <= RATIO_TARGET { "yes" } else { "no" }
        );
    }
}
