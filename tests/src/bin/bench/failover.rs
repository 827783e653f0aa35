//! Phase 6: failover between two agents that share one tenant through the writer lease, as real processes
//! against the DC. The phase has a world of its own (an OU, a simulator, and agents `a1` and `a2`, each with
//! its own config, state directory and log) and measures, over a number of rounds:
//! a. kill takeover: the active agent is SIGKILLed. Timed are kill → the standby logs that it took the lease,
//!    and kill → a membership change made right after the kill is visible in AD (the new holder's first
//!    write, which waits for the dead holder's lease to expire and for the takeover's full reconcile);
//! b. clean takeover: `lease release` on the active agent while nothing changes. Counted are the directory
//!    writes of the new holder's takeover cycle (a full reconcile of a converged directory, so 0 is expected),
//!    by the groups OU's highest uSNChanged and by the new holder's audit log. Timed is the handover gap:
//!    `lease release` finished → a change made right after it is visible in AD.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use writeback::lease::{LeaseValue, Role};
use writeback_tests::agents::{Agent, add_groups, converged, output_text, share_tenant, until};
use writeback_tests::dc::first_value;
use writeback_tests::e2e::Env;
use writeback_tests::graphsim::MemberRef;

use crate::directory;
use crate::measure::{human, percentile};

/// The lease's ttl: a killed holder's lease is taken this long after its last renewal, at the latest.
pub const TTL: &str = "6s";
/// How often each agent looks at the lease (`share_tenant` sets it).
pub const RENEW_EVERY: &str = "1s";
/// The agents' daemon interval (`Agent` sets it).
pub const INTERVAL: &str = "1s";
/// Synced users of the phase's tenant.
pub const USERS: usize = 50;
/// Written-back groups, with `agents::MEMBERS` members each.
pub const GROUPS: usize = 100;
/// The tenant's name in the agents' configs.
const TENANT: &str = "contoso";
/// How often the DC and the logs are polled while a time runs.
const POLL: Duration = Duration::from_millis(20);
/// How long one wait may take before the phase fails.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agents may take to start, settle or converge.
const SETTLE: Duration = Duration::from_secs(120);
/// The daemon's log line when it takes the lease.
const TOOK: &str = "took the writer lease";

/// One kill takeover.
#[derive(Debug, Clone)]
pub struct Kill {
    /// Kill → the standby's log says it took the lease.
    pub lease_taken: Duration,
    /// Kill → a change made right after the kill is in AD.
    pub first_write: Duration,
}

/// One clean takeover by `lease release`.
#[derive(Debug, Clone)]
pub struct Release {
    /// Growth of the groups OU's highest uSNChanged over the takeover cycle.
    pub usn_delta: u64,
    /// Writes the new holder's audit log gained over the takeover cycle.
    pub audit_writes: usize,
    /// `lease release` finished → a change made right after it is in AD.
    pub gap: Duration,
    /// The most `lease release` runs one handover of the round took (more than 1: a renewal won the race).
    pub release_attempts: usize,
}

/// Everything phase 6 measured.
#[derive(Debug, Clone)]
pub struct Failover {
    pub kills: Vec<Kill>,
    pub releases: Vec<Release>,
}

impl Failover {
    pub fn lease_taken(&self) -> Spread {
        Spread::of(self.kills.iter().map(|k| k.lease_taken).collect())
    }
    pub fn first_write(&self) -> Spread {
        Spread::of(self.kills.iter().map(|k| k.first_write).collect())
    }
    pub fn gap(&self) -> Spread {
        Spread::of(self.releases.iter().map(|r| r.gap).collect())
    }
}

/// Min, median (nearest rank) and max of some times.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub min: Duration,
    pub median: Duration,
    pub max: Duration,
}

impl Spread {
    fn of(samples: Vec<Duration>) -> Spread {
        Spread {
            min: samples.iter().min().copied().unwrap_or_default(),
            median: percentile(&samples, 50.0),
            max: samples.iter().max().copied().unwrap_or_default(),
        }
    }

    /// `min / median / max`.
    pub fn show(&self) -> String {
        format!("{} / {} / {}", human(self.min), human(self.median), human(self.max))
    }
}

/// The settings the figures depend on, for the output.
pub fn settings() -> String {
    format!(
        "ttl {TTL}, renew_every {RENEW_EVERY}, daemon interval {INTERVAL}; DC and logs polled every {} ms",
        POLL.as_millis()
    )
}

/// Builds the phase's world, runs `rounds` kill takeovers and `rounds` clean takeovers, and deletes the world's
/// OU again, also when a measurement failed.
pub async fn run(rounds: usize) -> Result<Failover> {
    let mut env = Env::new("bench-failover").await.context("setting up the failover OU and Graph simulator")?;
    share_tenant(&mut env, TTL)?;
    let measured = measure(&env, rounds).await;
    let cleaned = delete_ou(&env).await;
    let figures = measured?;
    cleaned?;
    Ok(figures)
}

/// The phase's tenant and its two agents. Dropping it kills the agents.
struct Pair<'a> {
    env: &'a Env,
    /// Cloud ids and AD DNs.
    users: Vec<(String, String)>,
    /// Cloud ids.
    groups: Vec<String>,
    /// AD DN by cloud id.
    group_dns: HashMap<String, String>,
    agents: [Agent; 2],
    /// Where the search for a membership that does not exist yet goes on.
    cursor: usize,
}

async fn measure(env: &Env, rounds: usize) -> Result<Failover> {
    let mut pair = Pair::create(env).await?;
    println!("  {} groups, {} users; agents a1 and a2 on one tenant ({}); a1 started first", GROUPS, USERS, settings());
    println!("  a. kill takeover: SIGKILL the active agent, then one membership change");
    let mut kills = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        kills.push(pair.kill_round(round).await.with_context(|| format!("kill round {round}"))?);
    }
    println!(
        "  b. clean takeover: `lease release` on the active agent with nothing changing; then one more release and a change"
    );
    let mut releases = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        releases.push(pair.release_round(round).await.with_context(|| format!("release round {round}"))?);
    }
    let figures = Failover { kills, releases };
    print_summary(&figures);
    Ok(figures)
}

impl<'a> Pair<'a> {
    /// Users and groups in the simulator, a1 as the writer and a2 as its standby, and the initial sync done.
    async fn create(env: &'a Env) -> Result<Pair<'a>> {
        let started = Instant::now();
        let mut users = Vec::with_capacity(USERS);
        for i in 0..USERS {
            let (id, ad) = env.synced_user(&format!("bfail-u{i:02}")).await.context("creating the users")?;
            users.push((id, ad.dn));
        }
        let groups = add_groups(env, &users, "Failover", GROUPS);
        let mut pair = Pair {
            env,
            users,
            groups,
            group_dns: HashMap::new(),
            agents: [Agent::for_env(env, "a1")?, Agent::for_env(env, "a2")?],
            cursor: 0,
        };
        // a1 first, so that the figures start from a known writer.
        pair.agents[0].start()?;
        let a1 = &pair.agents[0];
        until(&[a1], SETTLE, async || Ok(a1.role(TENANT) == Some(Role::Active))).await?;
        pair.agents[1].start()?;
        pair.settle().await?;
        pair.group_dns = env
            .groups()
            .await?
            .into_iter()
            .filter_map(|g| Some((g.admin_description?.strip_prefix("Group_")?.to_owned(), g.dn)))
            .collect();
        println!("  (set up and initial sync by a1: {})", human(started.elapsed()));
        Ok(pair)
    }

    /// Waits until one agent is active and the other standby, both have finished a cycle since they started,
    /// and AD holds exactly the cloud's groups and members.
    async fn settle(&self) -> Result<()> {
        let [a, b] = &self.agents;
        until(&[a, b], SETTLE, async || {
            let roles = [a.role(TENANT), b.role(TENANT)];
            let started = [a, b].iter().all(|agent| agent.log().contains("cycle finished"));
            Ok(roles.contains(&Some(Role::Active))
                && roles.contains(&Some(Role::Standby))
                && started
                && converged(self.env, &self.users).await?)
        })
        .await
    }

    /// Indices of the active agent and of the standby, by their status files.
    fn roles(&self) -> Result<(usize, usize)> {
        match (self.agents[0].role(TENANT), self.agents[1].role(TENANT)) {
            (Some(Role::Active), Some(Role::Standby)) => Ok((0, 1)),
            (Some(Role::Standby), Some(Role::Active)) => Ok((1, 0)),
            roles => bail!("expected one active agent and one standby, found {roles:?}"),
        }
    }

    /// Adds a user to a group in the simulator, where it was no member yet; returns the group's and the
    /// user's AD DNs.
    fn add_membership(&mut self) -> Result<(String, String)> {
        let tries = self.groups.len() * self.users.len();
        for _ in 0..tries {
            self.cursor += 1;
            let group = &self.groups[self.cursor % self.groups.len()];
            // A step coprime with the user count walks through every user of a group over the rounds.
            let (user_id, user_dn) = &self.users[(self.cursor * 7) % self.users.len()];
            let cloud =
                self.env.sim.group(group).with_context(|| format!("group {group} vanished from the simulator"))?;
            if cloud.has_member(user_id) {
                continue;
            }
            let group_dn = self.group_dns.get(group).with_context(|| format!("group {group} is not in AD"))?.clone();
            self.env.sim.add_members(group, &[MemberRef::user(user_id)])?;
            return Ok((group_dn, user_dn.clone()));
        }
        bail!("every user is already in every group")
    }

    /// a. Kills the active agent right after it wrote, and times the standby's takeover; the killed agent
    /// then comes back as the standby.
    async fn kill_round(&mut self, round: usize) -> Result<Kill> {
        self.settle().await?;
        let (active, standby) = self.roles()?;
        let mut ldap = self.env.dc.admin().await?;
        // Work for the writer just before it dies, as in production, where a writer is killed while it works.
        let (group_dn, user_dn) = self.add_membership()?;
        directory::wait_for_member(&mut ldap, &group_dn, &user_dn, POLL, TIMEOUT).await?;
        let took_before = self.agents[standby].log().matches(TOOK).count();
        self.agents[active].kill()?;
        let killed = Instant::now();
        let (group_dn, user_dn) = self.add_membership()?;
        let new_holder = &self.agents[standby];
        // Both clocks run at once: the lease is taken before the first write, which follows the takeover cycle.
        let taken = async { wait_for_log(new_holder, took_before).await.map(|()| killed.elapsed()) };
        let written = async {
            directory::wait_for_member(&mut ldap, &group_dn, &user_dn, POLL, TIMEOUT).await?;
            Ok::<_, anyhow::Error>(killed.elapsed())
        };
        let (taken, written) = tokio::join!(taken, written);
        directory::close(ldap).await;
        let kill = Kill {
            lease_taken: taken?,
            first_write: written.with_context(|| format!("{}'s log:\n{}", new_holder.id, new_holder.log()))?,
        };
        println!(
            "  round {round}: killed {} (active): {} took the lease after {}, first write after {}",
            self.agents[active].id,
            new_holder.id,
            human(kill.lease_taken),
            human(kill.first_write)
        );
        // The killed agent comes back with a fresh log; its stale status says active until its first round.
        self.agents[active].start()?;
        let back = &self.agents[active];
        until(&[back], SETTLE, async || Ok(back.role(TENANT) == Some(Role::Standby))).await?;
        Ok(kill)
    }

    /// b. A clean handover with nothing to do, whose writes are counted, then a second handover with a change
    /// right after it, whose gap is timed.
    async fn release_round(&mut self, round: usize) -> Result<Release> {
        self.settle().await?;
        let (active, standby) = self.roles()?;
        // sled holds the state open while the daemon runs, so the new holder's audit log is read stopped.
        let writes_before = self.restart_for_audit(standby).await?;
        self.settle().await?;
        let took_before = self.agents[standby].log().matches(TOOK).count();
        let usn_before = self.env.dc.subtree_usn(&self.env.ou.groups_dn).await?;
        let (mut attempts, _) = self.release(active).await?;
        self.wait_for_takeover(standby, took_before).await?;
        let usn_after = self.env.dc.subtree_usn(&self.env.ou.groups_dn).await?;
        // Stopping the new holder also releases its lease, so `active` takes it back and reconciles in full.
        let took_back = self.agents[active].log().matches(TOOK).count();
        let writes_after = self.restart_for_audit(standby).await?;
        self.wait_for_takeover(active, took_back).await?;
        self.settle().await?;

        let mut ldap = self.env.dc.admin().await?;
        let (again, released) = self.release(active).await?;
        attempts = attempts.max(again);
        // The change follows the release by the one lease read that confirmed it (tens of milliseconds).
        let (group_dn, user_dn) = self.add_membership()?;
        let waited = directory::wait_for_member(&mut ldap, &group_dn, &user_dn, POLL, TIMEOUT).await;
        let gap = released.elapsed();
        directory::close(ldap).await;
        waited.with_context(|| format!("{}'s log:\n{}", self.agents[standby].id, self.agents[standby].log()))?;

        let release = Release {
            usn_delta: usn_after.saturating_sub(usn_before),
            audit_writes: writes_after.saturating_sub(writes_before),
            gap,
            release_attempts: attempts,
        };
        let (from, to) = (&self.agents[active].id, &self.agents[standby].id);
        println!(
            "  round {round}: {from} released to {to}: takeover cycle wrote groups OU USN +{}, {to}'s audit +{}; \
             released again: change in AD {} after the release{}",
            release.usn_delta,
            release.audit_writes,
            human(release.gap),
            match release.release_attempts {
                1 => String::new(),
                runs => format!(" ({runs} `lease release` runs were needed)"),
            }
        );
        Ok(release)
    }

    /// Stops agent `index`, counts the writes in its audit log, and starts it again. It comes back as the
    /// standby: a stop releases the lease, and an agent leaves a lease it released to the others for one ttl.
    async fn restart_for_audit(&mut self, index: usize) -> Result<usize> {
        let agent = &mut self.agents[index];
        agent.stop().await?;
        let writes = agent.writes(TENANT).with_context(|| format!("reading {}'s audit log", agent.id))?.len();
        agent.start()?;
        Ok(writes)
    }

    /// Runs `lease release` for agent `index` until the lease object no longer names it as the holder.
    /// `lease release` is a compare-and-swap against the value it read; when the running daemon renews in
    /// between, the swap fails, yet the command still reports the release, so the bench checks the lease
    /// itself. Returns how many runs it took, and when the last one finished.
    async fn release(&self, index: usize) -> Result<(usize, Instant)> {
        let agent = &self.agents[index];
        for attempt in 1..=3 {
            let output = agent.run(&["lease", "release"]).await?;
            let finished = Instant::now();
            if !output.status.success() {
                bail!("`lease release` for {} failed: {}", agent.id, output_text(&output));
            }
            if self.lease_holder().await? != agent.id {
                return Ok((attempt, finished));
            }
        }
        bail!("{} still holds the lease after 3 runs of `lease release`", agent.id)
    }

    /// The lease's holder as the lease object says, empty when it is free.
    async fn lease_holder(&self) -> Result<String> {
        // Where `share_tenant` puts it: one level above the groups OU.
        let dn = format!("CN=writeback-lease,{}", self.env.ou.dn);
        let entry =
            self.env.dc.entry(&dn, &["adminDisplayName"]).await?.with_context(|| format!("no lease object at {dn}"))?;
        let value = first_value(&entry, "adminDisplayName").context("the lease object holds no lease value")?;
        Ok(LeaseValue::parse(value).with_context(|| format!("unreadable lease value {value:?}"))?.holder)
    }

    /// Waits until agent `index` took the lease (once more than `took_before` times in its log) and its
    /// takeover cycle finished.
    ///
    /// The log is what shows it: the first cycle after a take runs in a `cycle{… full=true}` span and ends
    /// with `cycle applied`. status.json is not enough: the role in it changes before the cycle starts, while
    /// its `full` and `last_cycle` (whole seconds) still describe the cycle before.
    async fn wait_for_takeover(&self, index: usize, took_before: usize) -> Result<()> {
        let agent = &self.agents[index];
        let [a, b] = &self.agents;
        until(&[a, b], TIMEOUT, async || Ok(takeover_cycle_done(&agent.log(), took_before))).await
    }
}

/// Whether `log` shows more than `took_before` takes of the lease, and a full cycle finished after the last.
fn takeover_cycle_done(log: &str, took_before: usize) -> bool {
    let Some(last) = log.rfind(TOOK) else { return false };
    log.matches(TOOK).count() > took_before
        && log[last..].lines().any(|line| line.contains("full=true") && line.contains("cycle applied"))
}

/// Waits until `agent`'s log says it took the lease more than `took_before` times, polling every [`POLL`].
async fn wait_for_log(agent: &Agent, took_before: usize) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    while agent.log().matches(TOOK).count() <= took_before {
        if Instant::now() > deadline {
            bail!("{} did not take the lease within {TIMEOUT:?}; its log:\n{}", agent.id, agent.log());
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

fn print_summary(f: &Failover) {
    println!("  summary ({}):", settings());
    println!(
        "    kill → lease taken (standby's log), min / median / max of {}: {}",
        f.kills.len(),
        f.lease_taken().show()
    );
    println!(
        "    kill → first write by the new holder (a change made right after the kill is in AD): {}",
        f.first_write().show()
    );
    let usn: Vec<String> = f.releases.iter().map(|r| format!("+{}", r.usn_delta)).collect();
    let audit: Vec<String> = f.releases.iter().map(|r| format!("+{}", r.audit_writes)).collect();
    println!(
        "    clean takeover (`lease release`, nothing changing), writes by the new holder: groups OU USN {}; audit {} (expected 0)",
        usn.join(", "),
        audit.join(", ")
    );
    println!(
        "    handover gap (`lease release` finished → a change made right after it is in AD), min / median / max of {}: {}",
        f.releases.len(),
        f.gap().show()
    );
}

/// Deletes the phase's OU with everything in it. The DC is shared, and another user may restart it meanwhile,
/// so a failed delete is tried again a few times (as `World::cleanup` does). An OU left behind is removed by
/// the next run, whose `Env::new` deletes stale `bench-failover-*` OUs first.
/// Deletes the phase's OU, trying again when the DC is busy.
pub async fn delete_ou(env: &Env) -> Result<()> {
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        match env.dc.delete_tree(&env.ou.dn).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < ATTEMPTS => {
                eprintln!("bench: deleting {} failed ({e:#}); trying again", env.ou.dn);
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("deleting {}", env.ou.dn)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_cycle_is_the_full_cycle_after_the_last_take() {
        let took = "INFO writeback::lease: took the writer lease; this agent now writes tenant=contoso epoch=2";
        let standby = "INFO cycle{tenant=contoso full=false}: writeback::sync: cycle applied writes=0";
        let takeover = "INFO cycle{tenant=contoso full=true}: writeback::sync: cycle applied writes=0";
        assert!(!takeover_cycle_done(&format!("{takeover}\n{took}\n{standby}\n"), 0));
        assert!(takeover_cycle_done(&format!("{took}\n{standby}\n{takeover}\n"), 0));
        assert!(!takeover_cycle_done(&format!("{took}\n{takeover}\n"), 1));
    }
}
