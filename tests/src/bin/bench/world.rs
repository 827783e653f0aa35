//! The bench's world: the shared test DC with OUs of its own, the in-process Graph simulator, a config whose
//! daemon interval is 2 s, the tenant's users and groups, and ways to run and measure the real `writeback`
//! binary (the release build next to this one).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use writeback::state::AuditRecord;
use writeback_tests::dc::{GroupEntry, TestOu};
use writeback_tests::e2e::{Env, new_id, text, writeback_bin};
use writeback_tests::graphsim::{Group, MemberRef, SimConfig, User, WritebackConfiguration};
use writeback_tests::ldap_proxy::FaultProxy;

use crate::directory;
use crate::measure;

/// The daemon's delta interval during the bench.
pub const DAEMON_INTERVAL: Duration = Duration::from_secs(2);

/// A user in AD that the simulated tenant knows as synced from AD.
#[derive(Debug, Clone)]
pub struct BenchUser {
    /// Cloud object id.
    pub id: String,
    /// AD DN, as the server spells it.
    pub dn: String,
}

/// A cloud group the bench created.
#[derive(Debug, Clone)]
pub struct BenchGroup {
    pub id: String,
    pub name: String,
}

/// One finished `writeback` command: its output, wall time and CPU time (user + system).
#[derive(Debug)]
pub struct Run {
    pub output: Output,
    pub wall: Duration,
    pub cpu: Duration,
}

/// The whole setup the phases share.
pub struct World {
    pub env: Env,
    pub users: Vec<BenchUser>,
    pub groups: Vec<BenchGroup>,
    pub rng: StdRng,
    /// OUs created besides the world's own, deleted at the end.
    extra_ous: Vec<String>,
    /// The proxy the agent and the raw floor reach the DC through, when the link is slowed.
    link: Option<FaultProxy>,
}

impl World {
    /// A fresh OU on the shared DC, a simulator paging like Graph (100 entries a page, 20 member changes an
    /// entry) and a config whose daemon interval is [`DAEMON_INTERVAL`].
    pub async fn create(seed: u64) -> Result<World> {
        World::named("bench", seed).await
    }

    /// Like [`World::create`], with its OU named `<name>-<6 hex digits>`. A new world deletes OUs left over
    /// from earlier worlds of the same name, so worlds meant to stay side by side take different names.
    pub async fn named(name: &str, seed: u64) -> Result<World> {
        let sim = SimConfig { page_size: 100, members_per_entry: 20, ..SimConfig::default() };
        let env = Env::with_sim(name, sim).await.context("setting up the DC OU and the Graph simulator")?;
        let interval = format!("interval = \"{}s\"", DAEMON_INTERVAL.as_secs());
        env.edit_config(|text| text.replacen("interval = \"1s\"", &interval, 1))?;
        Ok(World {
            env,
            users: Vec::new(),
            groups: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            extra_ous: Vec::new(),
            link: None,
        })
    }

    /// From now on the agent and the raw floor reach the DC through a proxy that hands every message on
    /// `latency` after it arrived, each way, as a link to a DC in another site.
    pub fn slow_link(&mut self, latency: Duration) -> Result<()> {
        let proxy = FaultProxy::start(&self.env.dc).context("starting the LDAPS proxy")?;
        proxy.set_latency(latency);
        self.env.reach_directory_at(proxy.url())?;
        self.link = Some(proxy);
        Ok(())
    }

    /// The LDAPS URL to reach the DC at: the slow link's, when there is one.
    pub fn ldap_url(&self) -> Option<&str> {
        self.link.as_ref().map(FaultProxy::url)
    }

    /// A directory for the bench's own files (LDIF and the like).
    pub fn scratch(&self) -> &Path {
        self.env.dir.path()
    }

    /// Creates `count` more users in AD (by LDIF) and registers each in the simulator as synced from AD with
    /// its SID. Returns how long the AD part took.
    pub async fn add_users(&mut self, count: usize) -> Result<Duration> {
        let first = self.users.len();
        // sAMAccountName is unique in the domain, and worlds share the DC: the OU's own suffix tells them apart.
        let rdn = writeback::dn::leaf_value(&self.env.ou.dn).unwrap_or_default();
        let suffix = &rdn[rdn.len().saturating_sub(6)..];
        let sams: Vec<String> = (first..first + count).map(|i| format!("b{suffix}{i:06}")).collect();
        let started = Instant::now();
        let ad = directory::create_users(&self.env.dc, &self.env.ou.users_dn, &sams, self.scratch()).await?;
        let elapsed = started.elapsed();
        for user in ad {
            let id = new_id();
            let cloud = User::synced(id.clone(), format!("{}@contoso.com", user.sam), &user.sid, &user.sam);
            self.env.sim.add_user(cloud).with_context(|| format!("adding user {} to the simulator", user.sam))?;
            self.users.push(BenchUser { id, dn: user.dn });
        }
        Ok(elapsed)
    }

    /// Adds `count` security groups with writeback enabled, `memberships` member links spread evenly over them,
    /// each group's members drawn at random (without repeats) from the users.
    pub fn add_groups(&mut self, count: usize, memberships: usize) -> Result<()> {
        for i in 0..count {
            let size = (memberships / count + usize::from(i < memberships % count)).min(self.users.len());
            let members = rand::seq::index::sample(&mut self.rng, self.users.len(), size).into_vec();
            self.add_group(&format!("Bench Group {i:05}"), &members)?;
        }
        Ok(())
    }

    /// Adds one security group with writeback enabled whose members are the users at `members` (indices).
    pub fn add_group(&mut self, name: &str, members: &[usize]) -> Result<BenchGroup> {
        let id = new_id();
        let group = Group {
            members: members.iter().map(|&i| MemberRef::user(self.users[i].id.clone())).collect(),
            writeback: Some(WritebackConfiguration {
                is_enabled: Some(true),
                on_premises_group_type: Some("universalSecurityGroup".into()),
            }),
            ..Group::security(id.clone(), name)
        };
        self.env.sim.add_group(group).with_context(|| format!("adding group {name} to the simulator"))?;
        let group = BenchGroup { id, name: name.to_owned() };
        self.groups.push(group.clone());
        Ok(group)
    }

    /// Runs `writeback --config <config> ARGS…` to completion and measures it.
    pub async fn writeback(&self, args: &[&str]) -> Result<Run> {
        let cpu_before = measure::children_cpu()?;
        let started = Instant::now();
        let output = self.env.run(args).await.with_context(|| format!("running writeback {}", args.join(" ")))?;
        let wall = started.elapsed();
        let cpu = measure::children_cpu()?.saturating_sub(cpu_before);
        Ok(Run { output, wall, cpu })
    }

    /// `writeback sync --once`, which must succeed.
    pub async fn sync(&self) -> Result<Run> {
        let run = self.writeback(&["sync", "--once"]).await?;
        if !run.output.status.success() {
            bail!("writeback sync --once failed: {}", last_line(&text(&run.output.stderr)));
        }
        Ok(run)
    }

    /// The audit log, read with `writeback audit` (JSON lines). The agent must not be running.
    pub async fn audit(&self) -> Result<Vec<AuditRecord>> {
        let run = self.writeback(&["audit"]).await?;
        if !run.output.status.success() {
            bail!("writeback audit failed: {}", last_line(&text(&run.output.stderr)));
        }
        text(&run.output.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).with_context(|| format!("parsing audit line {line:?}")))
            .collect()
    }

    /// The managed groups in the world's OU, by cloud id, with all their members.
    pub async fn ad_groups(&self) -> Result<HashMap<String, GroupEntry>> {
        let groups = self.env.groups().await.context("reading the groups back")?;
        Ok(groups
            .into_iter()
            .filter_map(|g| {
                let id = g.admin_description.as_deref()?.strip_prefix("Group_")?.to_owned();
                Some((id, g))
            })
            .collect())
    }

    /// The DC's highestCommittedUSN: it moves on every write anywhere on the (shared) DC.
    pub async fn global_usn(&self) -> Result<u64> {
        self.env.dc.highest_committed_usn().await
    }

    /// One more fresh OU (with `Users` and `Groups` below it), deleted by [`World::cleanup`].
    pub async fn new_ou(&mut self, name: &str) -> Result<TestOu> {
        let ou = self.env.dc.test_ou(name).await.with_context(|| format!("creating OU {name}"))?;
        self.extra_ous.push(ou.dn.clone());
        Ok(ou)
    }

    /// Deletes every OU the bench created, with everything in it. The DC is shared, and another user may
    /// restart it meanwhile, so a failed delete is tried again a few times. (An OU left behind is removed by
    /// the next run, which deletes stale `bench-*` OUs first.)
    pub async fn cleanup(&self) -> Result<()> {
        const ATTEMPTS: usize = 3;
        for dn in std::iter::once(&self.env.ou.dn).chain(&self.extra_ous) {
            for attempt in 1..=ATTEMPTS {
                match self.env.dc.delete_tree(dn).await {
                    Ok(()) => break,
                    Err(e) if attempt < ATTEMPTS => {
                        eprintln!("bench: deleting {dn} failed ({e:#}); trying again");
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    Err(e) => return Err(e).with_context(|| format!("deleting {dn}")),
                }
            }
        }
        Ok(())
    }

    /// Starts `writeback run`, logging to `daemon.log` in the world's directory.
    pub fn start_daemon(&self) -> Result<Daemon> {
        let log = self.scratch().join("daemon.log");
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(writeback_bin()?)
            .arg("--config")
            .arg(&self.env.config_path)
            .arg("run")
            .env("WRITEBACK_LOG", "info")
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting writeback run")?;
        Ok(Daemon { child, log })
    }
}

/// A running `writeback run`; killed when dropped.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// CPU time (user + system) the daemon has used so far.
    pub fn cpu(&self) -> Result<Duration> {
        measure::process_cpu(self.child.id())
    }

    /// Fails, with the end of the daemon's log, when it is no longer running.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the daemon exited ({status}); its log ends: {}", self.log_tail());
        }
        Ok(())
    }

    /// The last lines of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Asks the daemon to stop (SIGTERM) and waits for it, at most a minute.
    pub async fn stop(mut self) -> Result<()> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).context("the daemon has no pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).context("signalling the daemon")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the daemon exited with {status}; its log ends: {}", self.log_tail());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the daemon did not stop within a minute of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last non-empty line of a tool's output: where its one-line error is.
pub fn last_line(text: &str) -> String {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)").to_owned()
}
