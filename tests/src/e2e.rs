//! End-to-end fixtures: one test's world, made of the shared Samba DC (with an OU of the test's own), a
//! Graph simulator, a config file and a state directory, plus a way to run the real `writeback` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};
use rand::Rng;

use crate::dc::{AdObject, GroupEntry, TestDc, TestOu};
use crate::graphsim::{GraphSim, Group, MemberRef, SimConfig, User, WritebackConfiguration};

/// A fresh cloud object id in Graph's GUID form.
pub fn new_id() -> String {
    let mut rng = rand::rng();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        rng.random::<u32>(),
        rng.random::<u16>(),
        rng.random::<u16>() & 0xfff,
        rng.random::<u16>() & 0xfff,
        rng.random::<u64>() & 0xffff_ffff_ffff
    )
}

/// A security group with writeback enabled and these users (by cloud id) as members, as most tests need.
pub fn enabled_group(id: &str, name: &str, members: &[&str]) -> Group {
    let mut group = Group::security(id, name);
    group.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
    group.members = members.iter().map(|m| MemberRef::user(*m)).collect();
    group
}

/// The value of the sample line of `metrics` (Prometheus text) that starts with `line_start`, if present.
pub fn metric_sample(metrics: &str, line_start: &str) -> Option<f64> {
    metrics.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A loopback port free at the time of asking, for a daemon's `metrics_addr`.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The `writeback` binary built next to this test executable (`target/<profile>/writeback`).
pub fn writeback_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WRITEBACK_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe.parent().and_then(Path::parent).context("test executable has no profile directory")?;
    let bin = profile_dir.join("writeback");
    if !bin.exists() {
        bail!("{} is missing; build it first with `cargo build -p writeback`", bin.display());
    }
    Ok(bin)
}

/// One test's world.
pub struct Env {
    pub dc: TestDc,
    pub ou: TestOu,
    pub sim: GraphSim,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// Extra lines appended to the `[agent]` table.
    agent_extra: String,
    /// Extra lines appended to the `[[tenant]]` table (before `[tenant.directory]`).
    tenant_extra: String,
    /// Extra text at the end of the config (for example a `[tenant.plugins]` table).
    tail: String,
    /// Where the agent reaches the DC, when not directly (a fault proxy).
    directory_url: Option<String>,
}

impl Env {
    /// A world with the simulator's defaults.
    pub async fn new(name: &str) -> Result<Env> {
        Env::with_sim(name, SimConfig::default()).await
    }

    /// A world with a tuned simulator.
    pub async fn with_sim(name: &str, sim_config: SimConfig) -> Result<Env> {
        let dc = tokio::task::spawn_blocking(TestDc::shared).await??;
        let ou = dc.test_ou(name).await?;
        let sim = GraphSim::start(sim_config)?;
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("writeback.toml");
        let env = Env {
            dc,
            ou,
            sim,
            dir,
            config_path,
            agent_extra: String::new(),
            tenant_extra: String::new(),
            tail: String::new(),
            directory_url: None,
        };
        env.write_config()?;
        Ok(env)
    }

    /// Adds lines to the agent table (for example `reconcile_interval = "2s"`) and rewrites the config.
    pub fn agent_settings(&mut self, lines: &str) -> Result<()> {
        self.agent_extra.push_str(lines);
        self.agent_extra.push('\n');
        self.write_config()
    }

    /// Adds lines to the tenant table (for example `delete_threshold = 2`) and rewrites the config.
    pub fn tenant_settings(&mut self, lines: &str) -> Result<()> {
        self.tenant_extra.push_str(lines);
        self.tenant_extra.push('\n');
        self.write_config()
    }

    /// Points the agent at the DC through `url` (which must present the DC's certificate) and rewrites the config.
    pub fn reach_directory_at(&mut self, url: &str) -> Result<()> {
        self.directory_url = Some(url.to_string());
        self.write_config()
    }

    /// Appends text to the end of the config (after `[tenant.directory]`) and rewrites it.
    pub fn append_config(&mut self, text: &str) -> Result<()> {
        self.tail.push_str(text);
        self.tail.push('\n');
        self.write_config()
    }

    /// The `[[tenant]]` block of this world's config, for combining several worlds into one agent.
    pub fn tenant_block(&self, name: &str) -> Result<String> {
        let text = std::fs::read_to_string(&self.config_path)?;
        let block = text.split_once("[[tenant]]").context("config has no tenant")?.1;
        Ok(format!("[[tenant]]{}", block.replacen("name = \"contoso\"", &format!("name = \"{name}\""), 1)))
    }

    /// The state directory the config names.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn write_config(&self) -> Result<()> {
        let secret = self.dir.path().join("client.secret");
        std::fs::write(&secret, format!("{}\n", self.sim.config().client_secret))?;
        let info = self.dc.info();
        let text = format!(
            r#"[agent]
state_dir = "{state}"
interval = "1s"
{agent_extra}
[[tenant]]
name = "contoso"
tenant_id = "{tenant_id}"
client_id = "{client_id}"
client_secret_file = "{secret}"
login_url = "{base}"
graph_url = "{base}"
{extra}
[tenant.directory]
url = "{url}"
bind_dn = "{bind_dn}"
password_file = "{password}"
ca_file = "{ca}"
target_ou = "{ou}"
{tail}"#,
            state = self.state_dir().display(),
            tenant_id = self.sim.config().tenant_id,
            client_id = self.sim.config().client_id,
            secret = secret.display(),
            base = self.sim.base_url(),
            agent_extra = self.agent_extra,
            extra = self.tenant_extra,
            url = self.directory_url.as_deref().unwrap_or(&info.url),
            bind_dn = info.admin_dn,
            password = info.admin_password_file.display(),
            ca = info.ca_file.display(),
            ou = toml_escape(&self.ou.groups_dn),
            tail = self.tail,
        );
        std::fs::write(&self.config_path, text)?;
        // As an admin would: settings and secrets readable by their owner only.
        for path in [&self.config_path, &secret] {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        Ok(())
    }

    /// Runs `writeback --config <this config> ARGS…` to completion, off the async runtime.
    pub async fn run(&self, args: &[&str]) -> Result<Output> {
        let bin = writeback_bin()?;
        let mut command = Command::new(bin);
        command.arg("--config").arg(&self.config_path).args(args).env("WRITEBACK_LOG", "info");
        Ok(tokio::task::spawn_blocking(move || command.output()).await??)
    }

    /// `sync --once ARGS…`, which must succeed.
    pub async fn sync(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec!["sync", "--once"];
        all.extend_from_slice(args);
        let output = self.run(&all).await?;
        if !output.status.success() {
            bail!("sync failed: {}\nstdout: {}", text(&output.stderr), text(&output.stdout));
        }
        Ok(output)
    }

    /// Every group in this test's OU tree.
    pub async fn groups(&self) -> Result<Vec<GroupEntry>> {
        self.dc.groups_under(&self.ou.dn).await
    }

    /// The one group carrying the anchor of cloud group `id`.
    pub async fn group(&self, id: &str) -> Result<Option<GroupEntry>> {
        let anchor = format!("Group_{id}");
        let mut found: Vec<GroupEntry> =
            self.groups().await?.into_iter().filter(|g| g.admin_description.as_deref() == Some(&anchor)).collect();
        if found.len() > 1 {
            bail!("{} groups carry the anchor {anchor}", found.len());
        }
        Ok(found.pop())
    }

    /// An AD user in this test's OU, and the same user in the cloud as synced from AD.
    pub async fn synced_user(&self, sam: &str) -> Result<(String, AdObject)> {
        let ad = self.dc.create_user(&self.ou.users_dn, sam).await?;
        let id = new_id();
        self.sim
            .add_user(User::synced(id.clone(), format!("{sam}@contoso.com"), &ad.sid, sam))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok((id, ad))
    }
}

/// Output bytes as text, for messages and assertions.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A TOML basic-string body for `value`.
pub fn toml_escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Env {
    /// The tenant's audit log, read from the state directory (the agent must not be running).
    pub async fn state_audit(&self) -> Result<Vec<writeback::state::AuditRecord>> {
        let store = writeback::state::Store::open(&self.state_dir())?;
        Ok(store.tenant("contoso")?.audit_log()?)
    }
}

impl Env {
    /// Rewrites the config file through `edit` (for tests of bad settings).
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) -> Result<()> {
        let text = std::fs::read_to_string(&self.config_path)?;
        std::fs::write(&self.config_path, edit(text))?;
        Ok(())
    }

    /// The secrets this world uses; no output may contain them.
    pub fn secrets(&self) -> Vec<String> {
        vec![self.sim.config().client_secret.clone(), self.dc.admin_password().to_string()]
    }
}

/// Starts `writeback --config CONFIG run` with its output in the file `log`.
pub fn spawn_daemon(config: &Path, log: &Path) -> Result<std::process::Child> {
    let log = std::fs::File::create(log)?;
    Ok(Command::new(writeback_bin()?)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("WRITEBACK_LOG", "info")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

/// A `writeback run` daemon, killed when dropped.
pub struct Daemon {
    child: std::process::Child,
}

impl Env {
    /// Starts `writeback run` in the background; its log goes to `daemon.log` in the test directory.
    pub fn start_daemon(&self) -> Result<Daemon> {
        Ok(Daemon { child: spawn_daemon(&self.config_path, &self.dir.path().join("daemon.log"))? })
    }

    /// The daemon's log so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Polls `check` until it holds or `timeout` passes; the condition, not the delay, is what counts.
    pub async fn eventually<F, Fut>(&self, timeout: std::time::Duration, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if check().await? {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("condition not met within {timeout:?}; daemon log:\n{}", self.daemon_log());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

impl Daemon {
    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<()> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).context("daemon has no pid")?;
        rustix::process::kill_process(pid, signal)?;
        Ok(())
    }

    /// Waits for the daemon to exit, at most `timeout`.
    pub async fn wait(&mut self, timeout: std::time::Duration) -> Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("the daemon did not exit within {timeout:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plugin component built by `plugins/build.sh`, by crate name (`cloud_sync_naming`, `spin`, …).
pub fn plugin_wasm(name: &str) -> Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("tests crate has no parent")?;
    let path = workspace.join("target/wasm/wasm32-wasip2/release").join(format!("{name}.wasm"));
    if !path.exists() {
        bail!("{} is missing; build the plugins with plugins/build.sh", path.display());
    }
    Ok(path)
}

impl Env {
    /// Points the config at a CA that did not sign the DC's certificate (a fresh self-signed one).
    pub fn trust_another_ca(&self) -> Result<()> {
        let dir = self.dir.path();
        let other = dir.join("other-ca.pem");
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=Some Other CA", "-keyout"])
            .arg(dir.join("other.key"))
            .arg("-out")
            .arg(&other)
            .output()?;
        if !made.status.success() {
            bail!("openssl could not make a CA: {}", text(&made.stderr));
        }
        let original = self.dc.info().ca_file.display().to_string();
        self.edit_config(|t| t.replace(&original, &other.display().to_string()))
    }
}
