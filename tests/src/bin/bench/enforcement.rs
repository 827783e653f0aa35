//! Phase 7: live enforcement, in a world of its own (an OU, a simulator and one daemon with the defaults:
//! `interval = "30s"`, `drift_watch = "5s"`, `[tenant.pim] enabled = true` with `sweep = "1h"`). Measured:
//! a. the PIM polling cost: schedule requests per cycle once the daemon has settled, for the tenant's groups,
//!    some of which have time-bound members, and what that makes per hour;
//! b. drift repair latency: an on-premises edit (a member added, the description, a move out of the OU), made
//!    at a random moment → the DC shows the cloud's value again, polled every 20 ms over one LDAP connection;
//! c. PIM expiry lateness: activations with ends spread over a minute; the moment the DC no longer lists the
//!    member, minus the instance's `endDateTime`.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use ldap3::{Ldap, Mod, Scope, SearchEntry};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use writeback_tests::e2e::{Env, enabled_group};
use writeback_tests::graphsim::MemberRef;

use crate::measure::{human, percentile};

/// The daemon's settings in this phase: the defaults.
pub const INTERVAL: &str = "30s";
pub const DRIFT_WATCH: &str = "5s";
pub const SWEEP: &str = "1h";
/// Synced users.
const USERS: usize = 50;
/// Groups with a long activation each, read every cycle.
const TIME_BOUND: usize = 10;
/// Cycles the polling cost is counted over.
const COST_CYCLES: usize = 4;
/// How often the DC is polled while a time runs.
const POLL: Duration = Duration::from_millis(20);
/// How long one wait may take before the phase fails.
const TIMEOUT: Duration = Duration::from_secs(120);
/// The path of the schedule instances, as the simulator logs it.
const SCHEDULES: &str = "/v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleInstances";

/// How big the phase is.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub groups: usize,
    pub drift_edits: usize,
    pub expiries: usize,
}

/// One on-premises edit.
enum Edit {
    /// This member (a lower-case DN) added.
    Member(String),
    Description,
    /// Moved into an OU outside the tenant's.
    Move,
}

/// Everything phase 7 measured.
#[derive(Debug, Clone, Default)]
pub struct Enforcement {
    pub groups: usize,
    pub time_bound: usize,
    /// Schedule requests in each settled cycle.
    pub requests_per_cycle: Vec<usize>,
    /// Every repair; those of edits the DC's change notification told; those of moves out of the OU.
    pub drift: Vec<Duration>,
    pub notified: Vec<Duration>,
    pub moved: Vec<Duration>,
    pub lateness: Vec<Duration>,
}

impl Enforcement {
    /// Schedule requests per hour at the measured rate per cycle.
    pub fn requests_per_hour(&self) -> f64 {
        let cycles = self.requests_per_cycle.len().max(1) as f64;
        let per_cycle = self.requests_per_cycle.iter().sum::<usize>() as f64 / cycles;
        per_cycle * 3600.0 / 30.0
    }

    /// `p50 x, p99 y` of some times.
    pub fn spread(samples: &[Duration]) -> String {
        format!("p50 {}, p99 {}", human(percentile(samples, 50.0)), human(percentile(samples, 99.0)))
    }
}

/// Builds the phase's world, measures, and deletes its OU again, also when a measurement failed.
pub async fn run(size: Size, seed: u64) -> Result<Enforcement> {
    let mut env = Env::new("bench-enforce").await.context("setting up the enforcement OU and Graph simulator")?;
    env.append_config("[tenant.pim]\nenabled = true")?;
    env.edit_config(|t| t.replace("interval = \"1s\"", &format!("interval = \"{INTERVAL}\"")))?;
    let measured = measure(&env, size, seed).await;
    let cleaned = crate::failover::delete_ou(&env).await;
    let figures = measured?;
    cleaned?;
    Ok(figures)
}

async fn measure(env: &Env, size: Size, seed: u64) -> Result<Enforcement> {
    let started = Instant::now();
    let mut users = Vec::with_capacity(USERS);
    for i in 0..USERS {
        users.push(env.synced_user(&format!("benf-u{i:02}")).await.context("creating the users")?);
    }
    let mut groups = Vec::with_capacity(size.groups);
    for g in 0..size.groups {
        let members: Vec<&str> = (0..3).map(|k| users[(g * 7 + k * 11) % USERS].0.as_str()).collect();
        let id = writeback_tests::e2e::new_id();
        env.sim.add_group(enabled_group(&id, &format!("Enforced {g:04}"), &members)).expect("a new group");
        groups.push(id);
    }
    // Long activations by users that are not members yet: these groups are read every cycle.
    for (g, id) in groups.iter().enumerate().take(TIME_BOUND) {
        let user = &users[(g * 7 + 40) % USERS].0;
        env.sim.activate_membership(id, &MemberRef::user(user), Duration::from_secs(3600));
    }
    let mut daemon = env.start_daemon()?;
    let mut ldap = env.dc.admin().await?;
    env.eventually(TIMEOUT * 5, || async { Ok(env.groups().await?.len() == size.groups) })
        .await
        .context("initial sync")?;
    println!(
        "  ({} groups written, {} with a time-bound member; set up and initial sync: {})",
        size.groups,
        TIME_BOUND,
        human(started.elapsed())
    );

    // a. The polling cost. A first cycle has every group changed, and reads their schedules 200 a cycle;
    // the steady state starts when a cycle reads only the time-bound groups and the sweep's share.
    let finished = |log: &str| log.matches("cycle finished").count();
    let backlog = Instant::now();
    let mut first_cycles = Vec::new();
    loop {
        env.sim.clear_requests();
        let next = finished(&env.daemon_log()) + 1;
        env.eventually(TIMEOUT, || async { Ok(finished(&env.daemon_log()) >= next) }).await.context("a cycle")?;
        first_cycles.push(env.sim.requests().iter().filter(|r| r.path == SCHEDULES).count());
        if last_read(&env.daemon_log()).is_some_and(|(read, steady)| read == steady) {
            break;
        }
        if backlog.elapsed() > TIMEOUT * 5 {
            bail!("the schedule reads never settled: {first_cycles:?}");
        }
    }
    println!("  a. schedule requests while the new groups' schedules are read: {first_cycles:?}");
    let mut requests_per_cycle = Vec::with_capacity(COST_CYCLES);
    let counted = Instant::now();
    for _ in 0..COST_CYCLES {
        env.sim.clear_requests();
        let next = finished(&env.daemon_log()) + 1;
        env.eventually(TIMEOUT, || async { Ok(finished(&env.daemon_log()) >= next) }).await.context("a cycle")?;
        requests_per_cycle.push(env.sim.requests().iter().filter(|r| r.path == SCHEDULES).count());
    }
    println!("     then in {COST_CYCLES} settled cycles ({}): {requests_per_cycle:?}", human(counted.elapsed()));

    // b. Drift repairs on groups without time-bound members, in turn: a member added and the description
    // edited (which the DC's change notification tells at once), and a move out of the tenant's OU (which
    // only the next look finds). Each edit comes at a random moment, so that it falls anywhere between looks.
    let dns = group_dns(env).await?;
    let elsewhere = env.dc.create_ou(&env.ou.dn, "elsewhere").await?;
    let mut random = StdRng::seed_from_u64(seed);
    let (mut notified, mut moved) = (Vec::new(), Vec::new());
    for i in 0..size.drift_edits {
        tokio::time::sleep(Duration::from_millis(random.random_range(0..5_000))).await;
        let id = &groups[TIME_BOUND + (i * 13) % (size.groups - TIME_BOUND)];
        let dn = dns.iter().find(|(g, _)| g == id).map(|(_, dn)| dn.clone()).context("a written group")?;
        let members = read_members(&mut ldap, &dn).await?;
        let intruder = users.iter().map(|(_, ad)| ad.dn.to_lowercase()).find(|u| !members.contains(u));
        let edit = match (i % 3, intruder) {
            (0, Some(user)) => Edit::Member(user),
            (1, _) | (0, None) => Edit::Description,
            _ => Edit::Move,
        };
        match &edit {
            Edit::Member(user) => ldap
                .modify(&dn, vec![Mod::Add(String::from("member"), HashSet::from([user.clone()]))])
                .await?
                .success()?,
            Edit::Description => {
                let value = HashSet::from([String::from("edited on-prem")]);
                ldap.modify(&dn, vec![Mod::Replace(String::from("description"), value)]).await?.success()?
            }
            Edit::Move => {
                let rdn = dn.split_once(",OU=").map(|(rdn, _)| rdn.to_string()).context("a group DN")?;
                ldap.modifydn(&dn, &rdn, true, Some(&elsewhere)).await?.success()?
            }
        };
        let edited = Instant::now();
        loop {
            let repaired = match (&edit, read(&mut ldap, &dn).await) {
                (Edit::Member(user), Ok(entry)) => !values(&entry, "member").contains(user),
                (Edit::Description, Ok(entry)) => values(&entry, "description").is_empty(),
                (Edit::Move, found) => found.is_ok(),
                (_, Err(e)) => return Err(e),
            };
            if repaired {
                break;
            }
            if edited.elapsed() > TIMEOUT {
                bail!("the edit of {dn} was not repaired within {}", human(TIMEOUT));
            }
            tokio::time::sleep(POLL).await;
        }
        if matches!(edit, Edit::Move) { &mut moved } else { &mut notified }.push(edited.elapsed());
    }
    println!("  b. drift repair, {} edits told by notification: {}", notified.len(), Enforcement::spread(&notified));
    println!("     {} moves out of the OU, found by the looks: {}", moved.len(), Enforcement::spread(&moved));

    // c. Expiries, spread over a minute, each written by the next cycle first.
    let mut pending = Vec::with_capacity(size.expiries);
    for k in 0..size.expiries {
        let id = &groups[size.groups - 1 - k];
        let dn = dns.iter().find(|(g, _)| g == id).map(|(_, dn)| dn.clone()).context("a written group")?;
        let members = read_members(&mut ldap, &dn).await?;
        let (user, ad) =
            users.iter().find(|(_, ad)| !members.contains(&ad.dn.to_lowercase())).context("a non-member")?;
        let lasts = Duration::from_secs(45) + Duration::from_millis(60_000 * k as u64 / size.expiries as u64);
        let end = env.sim.activate_membership(id, &MemberRef::user(user), lasts);
        pending.push((dn, ad.dn.to_lowercase(), end, false));
    }
    let mut lateness = Vec::with_capacity(size.expiries);
    let deadline = Instant::now() + Duration::from_secs(45 + 60) + TIMEOUT;
    while !pending.is_empty() {
        if Instant::now() > deadline {
            bail!("{} time-bound members were not removed in time", pending.len());
        }
        let mut left = Vec::with_capacity(pending.len());
        for (dn, member, end, seen) in pending {
            let present = read_members(&mut ldap, &dn).await?.contains(&member);
            let now = SystemTime::now();
            match (present, seen) {
                (true, _) => left.push((dn, member, end, true)),
                (false, true) => lateness.push(now.duration_since(end).unwrap_or(Duration::ZERO)),
                (false, false) if now > end => bail!("{member} was never written to {dn} before its end"),
                (false, false) => left.push((dn, member, end, false)),
            }
        }
        pending = left;
        tokio::time::sleep(POLL).await;
    }
    println!("  c. PIM expiry lateness, {} ends: {}", lateness.len(), Enforcement::spread(&lateness));
    daemon.signal(rustix::process::Signal::TERM)?;
    daemon.wait(Duration::from_secs(30)).await?;
    ldap.unbind().await.ok();
    let drift = notified.iter().chain(&moved).copied().collect();
    Ok(Enforcement {
        groups: size.groups,
        time_bound: TIME_BOUND,
        requests_per_cycle,
        drift,
        notified,
        moved,
        lateness,
    })
}

/// The daemon's last schedule read: how many it read, and how many the time-bound groups and the sweep's
/// share make.
fn last_read(log: &str) -> Option<(usize, usize)> {
    let line = log.lines().rev().find(|l| l.contains("reading PIM schedule instances"))?;
    let field = |name: &str| -> Option<usize> {
        line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))?.parse().ok())
    };
    Some((field("read")?, field("time_bound")? + field("share")?))
}

/// Each written group's cloud id and DN.
async fn group_dns(env: &Env) -> Result<Vec<(String, String)>> {
    Ok(env
        .groups()
        .await?
        .into_iter()
        .filter_map(|g| Some((g.admin_description?.strip_prefix("Group_")?.to_owned(), g.dn)))
        .collect())
}

async fn read(ldap: &mut Ldap, dn: &str) -> Result<SearchEntry> {
    let (entries, _) =
        ldap.search(dn, Scope::Base, "(objectClass=*)", vec!["member", "description"]).await?.success()?;
    entries.into_iter().next().map(SearchEntry::construct).context("the group is gone")
}

async fn read_members(ldap: &mut Ldap, dn: &str) -> Result<Vec<String>> {
    Ok(values(&read(ldap, dn).await?, "member"))
}

fn values(entry: &SearchEntry, name: &str) -> Vec<String> {
    entry.attrs.get(name).map(|v| v.iter().map(|s| s.to_lowercase()).collect()).unwrap_or_default()
}
