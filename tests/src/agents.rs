//! Several agents sharing tenants, as separate real processes: each has its own id, config, state directory
//! and log, and they coordinate only through the writer lease in the directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use writeback::lease::{LeaseView, Role};
use writeback::state::AuditRecord;
use writeback::status::StatusFile;

use crate::e2e::{Env, new_id, spawn_daemon, text, toml_escape, writeback_bin};
use crate::graphsim::{Group, MemberRef, WritebackConfiguration};

/// Users per test world.
pub const USERS: usize = 24;
/// Members per group.
pub const MEMBERS: usize = 4;

/// A tenant shared through a lease, with synced users; returns the users' cloud ids and DNs.
pub async fn shared_world(name: &str, ttl: &str) -> Result<(Env, Vec<(String, String)>)> {
    let mut env = Env::new(name).await?;
    share_tenant(&mut env, ttl)?;
    world(env, name).await
}

/// `env` with `USERS` synced users; returns the users' cloud ids and DNs.
pub async fn world(env: Env, name: &str) -> Result<(Env, Vec<(String, String)>)> {
    let mut users = Vec::new();
    for i in 0..USERS {
        let (id, ad) = env.synced_user(&format!("{name}-u{i:02}")).await?;
        users.push((id, ad.dn));
    }
    Ok((env, users))
}

/// Adds `count` written-back groups with a few members each; returns their ids.
pub fn add_groups(env: &Env, users: &[(String, String)], prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|g| {
            let id = new_id();
            let mut group = Group::security(&id, format!("{prefix} {g:03}"));
            group.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
            group.members = (0..MEMBERS).map(|k| MemberRef::user(&users[(g * 5 + k * 7) % users.len()].0)).collect();
            env.sim.add_group(group).expect("the simulator takes a new group");
            id
        })
        .collect()
}

/// Whether AD holds exactly the cloud's groups with exactly their members. A group found twice fails at once.
pub async fn converged(env: &Env, users: &[(String, String)]) -> Result<bool> {
    let dn_of: BTreeMap<&str, String> = users.iter().map(|(id, dn)| (id.as_str(), dn.to_lowercase())).collect();
    let mut by_anchor: BTreeMap<String, Vec<BTreeSet<String>>> = BTreeMap::new();
    for group in env.groups().await? {
        let anchor = group.admin_description.clone().context("a group without an anchor in the test OU")?;
        by_anchor.entry(anchor).or_default().push(group.members.iter().map(|m| m.to_lowercase()).collect());
    }
    if let Some((anchor, copies)) = by_anchor.iter().find(|(_, copies)| copies.len() > 1) {
        bail!("{anchor} exists {} times", copies.len());
    }
    let cloud = env.sim.groups();
    if by_anchor.len() != cloud.len() {
        return Ok(false);
    }
    for group in cloud {
        let want: BTreeSet<String> = group.members.iter().filter_map(|m| dn_of.get(m.id.as_str()).cloned()).collect();
        if by_anchor.get(&format!("Group_{}", group.id)).and_then(|c| c.first()) != Some(&want) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Lease settings short enough for tests: a dead holder's tenant moves within seconds.
pub const TEST_TTL: &str = "6s";

/// Adds a `[tenant.lease]` table to `env`'s tenant, with the lease object at `lease_parent`, so that the
/// group OU's own USN counts group writes only.
pub fn share_tenant(env: &mut Env, ttl: &str) -> Result<()> {
    let dn = format!("CN=writeback-lease,{}", env.ou.dn);
    env.append_config(&format!("[tenant.lease]\nttl = \"{ttl}\"\nrenew_every = \"1s\"\ndn = \"{}\"", toml_escape(&dn)))
}

/// One agent: a config naming its id and state, and its daemon while it runs.
pub struct Agent {
    pub id: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// An agent with id `id` under `base`, serving the given `[[tenant]]` blocks.
    pub fn new(base: &Path, id: &str, tenant_blocks: &str) -> Result<Agent> {
        let dir = base.join(id);
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("writeback.toml");
        let config = format!(
            "[agent]\nid = \"{id}\"\nstate_dir = \"{}\"\ninterval = \"1s\"\n\n{tenant_blocks}\n",
            toml_escape(&dir.join("state").display().to_string())
        );
        std::fs::write(&config_path, config)?;
        std::fs::set_permissions(&config_path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(Agent { id: id.to_string(), dir, config_path, child: None })
    }

    /// An agent serving `env`'s tenant (named `contoso`).
    pub fn for_env(env: &Env, id: &str) -> Result<Agent> {
        Agent::new(env.dir.path(), id, &env.tenant_block("contoso")?)
    }

    /// Starts `writeback run`; its log goes to `agent.log`.
    pub fn start(&mut self) -> Result<()> {
        self.child = Some(spawn_daemon(&self.config_path, &self.dir.join("agent.log"))?);
        Ok(())
    }

    /// Runs `writeback --config <this agent's config> ARGS…` to completion.
    pub async fn run(&self, args: &[&str]) -> Result<Output> {
        let mut command = Command::new(writeback_bin()?);
        command.arg("--config").arg(&self.config_path).args(args).env("WRITEBACK_LOG", "info");
        Ok(tokio::task::spawn_blocking(move || command.output()).await??)
    }

    /// Sends `signal` to the running daemon.
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<()> {
        let child = self.child.as_ref().context("the agent is not running")?;
        let pid = rustix::process::Pid::from_raw(child.id() as i32).context("the agent has no pid")?;
        rustix::process::kill_process(pid, signal)?;
        Ok(())
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, and wait for a clean exit.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).context("the agent has no pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("agent {} exited with {status}; log:\n{}", self.id, self.log());
                }
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!("agent {} did not stop within 60s; log:\n{}", self.id, self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// This agent's role for `tenant` as its last cycle recorded it.
    pub fn role(&self, tenant: &str) -> Option<Role> {
        let status = StatusFile::load(&self.dir.join("state")).ok()?;
        status.tenants.get(tenant)?.lease.as_ref().map(|l| l.role)
    }

    /// The lease as this agent's last cycle of `tenant` recorded it.
    pub fn lease_view(&self, tenant: &str) -> Option<LeaseView> {
        let status = StatusFile::load(&self.dir.join("state")).ok()?;
        status.tenants.get(tenant)?.lease.clone()
    }

    /// When this agent's last cycle of `tenant` ended, in seconds since the Unix epoch (0: never).
    pub fn last_cycle(&self, tenant: &str) -> u64 {
        StatusFile::load(&self.dir.join("state"))
            .ok()
            .and_then(|s| s.tenants.get(tenant).map(|t| t.last_cycle))
            .unwrap_or(0)
    }

    /// Makes the daemon serve `/metrics` and `/healthz` on a free loopback port (from its next start); returns
    /// the base URL.
    pub fn serve_metrics(&self) -> Result<String> {
        let port = crate::e2e::free_port()?;
        let config = std::fs::read_to_string(&self.config_path)?;
        std::fs::write(
            &self.config_path,
            config.replacen("[agent]\n", &format!("[agent]\nmetrics_addr = \"127.0.0.1:{port}\"\n"), 1),
        )?;
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// The tenants this agent was active for at its last cycle of each.
    pub fn active_tenants(&self) -> Vec<String> {
        let Ok(status) = StatusFile::load(&self.dir.join("state")) else { return Vec::new() };
        status
            .tenants
            .iter()
            .filter(|(_, s)| s.lease.as_ref().is_some_and(|l| l.role == Role::Active))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// The audit log of `tenant` (the agent must not be running).
    pub fn audit(&self, tenant: &str) -> Result<Vec<AuditRecord>> {
        let store = writeback::state::Store::open(&self.dir.join("state"))?;
        Ok(store.tenant(tenant)?.audit_log()?)
    }

    /// Writes that reached the directory, from this agent's audit log.
    pub fn writes(&self, tenant: &str) -> Result<Vec<AuditRecord>> {
        Ok(self.audit(tenant)?.into_iter().filter(|r| r.outcome == "ok").collect())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Fails with every agent's log when `agents` do not reach `check` within `timeout`.
pub async fn until(agents: &[&Agent], timeout: Duration, mut check: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let logs: String = agents.iter().map(|a| format!("--- agent {} ---\n{}\n", a.id, a.log())).collect();
            bail!("condition not met within {timeout:?}\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Output as one text, for assertions.
pub fn output_text(output: &Output) -> String {
    format!("{}{}", text(&output.stdout), text(&output.stderr))
}
