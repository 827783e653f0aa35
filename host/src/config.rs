//! Agent configuration: the TOML file, its defaults and its validation.
//!
//! Secrets never live in the file itself: each one is named by a `*_file` path or a `*_env` variable and is
//! read once at start-up into a [`Secret`], whose `Debug` and `Display` never show the value.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// Why the configuration could not be used. Each message names the file or field and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
    #[error("cannot read {what} from {path}: {cause}")]
    SecretFile { what: String, path: PathBuf, cause: std::io::Error },
    #[error("{what}: environment variable {var} is not set")]
    SecretEnv { what: String, var: String },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub agent: AgentConfig,
    #[serde(rename = "tenant", default)]
    pub tenants: Vec<TenantConfig>,
}

/// `[agent]`: settings shared by every tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where sled keeps cursors, cloud state and the audit log.
    pub state_dir: PathBuf,
    /// Time between delta cycles in `run`.
    #[serde(with = "humantime_serde", default = "defaults::interval")]
    pub interval: Duration,
    /// Time between full reconciles (drift repair) in `run`.
    #[serde(with = "humantime_serde", default = "defaults::reconcile_interval")]
    pub reconcile_interval: Duration,
    /// How often `run` looks for on-premises edits of managed groups between reconciles (one indexed
    /// search on `uSNChanged`); `"0s"` turns the watch off.
    #[serde(with = "humantime_serde", default = "defaults::drift_watch")]
    pub drift_watch: Duration,
    /// Where `run` serves `/metrics` and `/healthz`; off when absent.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// This agent's name in writer leases; the host name when absent. Agents sharing a tenant need distinct ids.
    pub id: Option<String>,
}

/// `[tenant.lease]`: several agents share the tenant and only the lease holder writes. Without this table
/// the agent writes unconditionally, so exactly one agent may serve the tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// How long a lease lasts without renewal; a dead holder's tenant moves after this.
    #[serde(with = "humantime_serde", default = "defaults::lease_ttl")]
    pub ttl: Duration,
    /// How often the holder renews (and standbys look for a free lease).
    #[serde(with = "humantime_serde", default = "defaults::lease_renew_every")]
    pub renew_every: Duration,
    /// The lease object's DN; `CN=writeback-lease,<target_ou>` when absent.
    pub dn: Option<String>,
}

/// `[[tenant]]`: one Entra ID tenant and the AD domain it writes to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    /// Name of an environment variable holding the client secret, as an alternative to the file.
    pub client_secret_env: Option<String>,
    /// PEM certificate registered on the app: certificate authentication instead of a secret, with
    /// `client_key_file`.
    pub client_certificate_file: Option<PathBuf>,
    /// PEM private key of `client_certificate_file` (PKCS#8, or PKCS#1 RSA).
    pub client_key_file: Option<PathBuf>,
    #[serde(default = "defaults::login_url")]
    pub login_url: String,
    #[serde(default = "defaults::graph_url")]
    pub graph_url: String,
    /// Whether Microsoft 365 groups with no writeback setting of their own are written. When absent, the
    /// tenant's own setting `NewUnifiedGroupWritebackDefault` decides, read from Graph.
    #[serde(default)]
    pub m365_default_writeback: Option<bool>,
    /// Where each group's `writebackConfiguration` is read: from the delta query itself, or, for a tenant
    /// whose delta leaves it out (`doctor` tells), from `GET /beta/groups/{id}` in `$batch` requests.
    #[serde(default)]
    pub writeback_source: WritebackSource,
    /// More deletes than this within `threshold_window` are held until `sync --once --allow-deletes`.
    #[serde(default = "defaults::delete_threshold")]
    pub delete_threshold: usize,
    /// More renames, moves and sAMAccountName changes than this within `threshold_window` are held until
    /// `sync --once --allow-renames`.
    #[serde(default = "defaults::rename_threshold")]
    pub rename_threshold: usize,
    /// More member removals than this within `threshold_window` are held until
    /// `sync --once --allow-member-removals`: a broken dynamic-group rule must not empty the groups that guard
    /// a file server.
    #[serde(default = "defaults::member_removal_threshold")]
    pub member_removal_threshold: usize,
    /// The rolling window the thresholds count over, so that many small cycles cannot walk around them.
    #[serde(with = "humantime_serde", default = "defaults::threshold_window")]
    pub threshold_window: Duration,
    /// Groups planned, read and written together. A full reconcile holds this many groups at a time, so it
    /// bounds memory; fewer means more directory searches.
    #[serde(default = "defaults::reconcile_batch")]
    pub reconcile_batch: usize,
    /// Timeout for one Graph or token request.
    #[serde(with = "humantime_serde", default = "defaults::graph_timeout")]
    pub graph_timeout: Duration,
    /// Groups (DNs) treated as protected besides those carrying adminCount=1: no member is added to a
    /// managed group nested in one of them.
    #[serde(default)]
    pub protected_groups: Vec<String>,
    /// Cloud ids of managed groups that may gain members although they are nested in a protected group.
    #[serde(default)]
    pub allow_protected_groups: Vec<String>,
    pub directory: DirectoryConfig,
    #[serde(default)]
    pub plugins: PluginsConfig,
    pub lease: Option<LeaseConfig>,
    /// Time-bound membership from PIM for Groups.
    #[serde(default)]
    pub pim: PimConfig,
    /// Which groups are written back, by rule.
    #[serde(default)]
    pub scope: ScopeConfig,
    /// The scope of the groups written: `universal` (as Microsoft's tools), `global` or `domain-local`.
    #[serde(default)]
    pub group_scope: crate::model::GroupScope,
    /// Where AD groups converted to cloud management may be taken over.
    #[serde(default)]
    pub adopt: AdoptConfig,
}

/// `[tenant.adopt]`: where an AD group whose source of authority moved to the cloud may be taken over in place
/// (found by the SID its cloud group carries) instead of written as a second group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptConfig {
    /// OUs (with their subtrees) whose groups may be taken over; none when empty.
    #[serde(default)]
    pub ous: Vec<String>,
}

/// `[tenant.pim]`: members whose PIM for Groups assignment ends leave the AD group at the end, even while
/// group delta still lists them. Needs the application permission `PrivilegedAssignmentSchedule.Read.AzureADGroup`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PimConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Every written group's schedule is read at least this often; groups with time-bound members are read
    /// every cycle, and groups with cloud changes in the cycle that has them.
    #[serde(with = "humantime_serde", default = "defaults::pim_sweep")]
    pub sweep: Duration,
}

impl Default for PimConfig {
    fn default() -> Self {
        PimConfig { enabled: false, sweep: defaults::pim_sweep() }
    }
}

/// `[tenant.scope]`: which groups are written back, by rule rather than one group at a time. A group whose
/// `writebackConfiguration.isEnabled` is false is never written, whatever the rules say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    /// Which security groups are written: those switched on one by one, or also every one left unset.
    #[serde(default)]
    pub security_groups: SecurityGroups,
    /// Globs on displayName (`*`, `?`, `[…]`, case-insensitive); when given, only matching groups are written.
    #[serde(default)]
    pub include: Option<Vec<String>>,
    /// Globs on displayName, applied after `include`: matching groups are not written.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl ScopeConfig {
    /// The rules as the model applies them. Patterns were checked when the config was loaded.
    pub fn rules(&self) -> crate::model::WritebackRules {
        // Lower case here and in the name, so that case folds beyond ASCII too.
        let patterns =
            |list: &[String]| list.iter().filter_map(|p| glob::Pattern::new(&p.to_lowercase()).ok()).collect();
        crate::model::WritebackRules {
            all_security_groups: self.security_groups == SecurityGroups::All,
            include: patterns(self.include.as_deref().unwrap_or_default()),
            exclude: patterns(&self.exclude),
        }
    }
}

/// Which security groups `[tenant.scope]` writes back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityGroups {
    /// Only those whose `writebackConfiguration.isEnabled` is true, as Microsoft's tools do.
    #[default]
    OptedIn,
    /// Also those whose `isEnabled` is null.
    All,
}

/// `[tenant.plugins]`: the tenant's WebAssembly naming policy and transforms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// A component of the `naming-policy` world; the built-in naming applies when absent.
    pub naming: Option<PathBuf>,
    /// Components of the `transformer` world, applied in order.
    #[serde(default)]
    pub transforms: Vec<PathBuf>,
    /// What `host.config(key)` answers.
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, String>,
    /// Wall-clock limit of one plugin call.
    #[serde(with = "humantime_serde", default = "defaults::plugin_timeout")]
    pub timeout: Duration,
    /// Linear-memory limit of one plugin instance, in MiB.
    #[serde(default = "defaults::plugin_memory_limit_mib")]
    pub memory_limit_mib: usize,
    /// OUs besides `target_ou` where a naming plugin may place groups (their subtrees included).
    #[serde(default)]
    pub allowed_ous: Vec<String>,
    /// Attributes a transform may write; replaces the default list when set.
    pub transform_attributes: Option<Vec<String>>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            naming: None,
            transforms: Vec::new(),
            config: Default::default(),
            timeout: defaults::plugin_timeout(),
            memory_limit_mib: defaults::plugin_memory_limit_mib(),
            allowed_ous: Vec::new(),
            transform_attributes: None,
        }
    }
}

/// Where a group's `writebackConfiguration` is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WritebackSource {
    /// From the group delta query's entries.
    #[default]
    Delta,
    /// From `GET /beta/groups/{id}?$select=writebackConfiguration`, 20 groups to a `$batch` request, for the
    /// groups of each delta page.
    Batch,
}

/// `[tenant.directory]`: the AD domain controller and where groups go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// `ldaps://host:636`, or `ldap://host:389` which is always upgraded with StartTLS.
    pub url: String,
    pub bind_dn: String,
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable holding the bind password, as an alternative to the file.
    pub password_env: Option<String>,
    /// PEM bundle of the CA that signed the DC's certificate; the system roots are used when absent.
    pub ca_file: Option<PathBuf>,
    pub target_ou: String,
    #[serde(with = "humantime_serde", default = "defaults::ldap_timeout")]
    pub timeout: Duration,
    /// Accept any DC certificate. For a lab only: anyone on the path can then impersonate the DC.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Every default in one place, so the README and the code cannot drift apart.
pub mod defaults {
    use std::time::Duration;

    pub fn interval() -> Duration {
        Duration::from_secs(30)
    }
    pub fn reconcile_interval() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn drift_watch() -> Duration {
        Duration::from_secs(5)
    }
    pub fn pim_sweep() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn login_url() -> String {
        "https://login.microsoftonline.com".into()
    }
    pub fn graph_url() -> String {
        "https://graph.microsoft.com".into()
    }
    pub fn delete_threshold() -> usize {
        500
    }
    pub fn rename_threshold() -> usize {
        500
    }
    pub fn member_removal_threshold() -> usize {
        1000
    }
    pub fn threshold_window() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn reconcile_batch() -> usize {
        1000
    }
    pub fn plugin_timeout() -> Duration {
        Duration::from_millis(100)
    }
    pub fn plugin_memory_limit_mib() -> usize {
        64
    }
    pub fn graph_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn ldap_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn lease_ttl() -> Duration {
        Duration::from_secs(60)
    }
    pub fn lease_renew_every() -> Duration {
        Duration::from_secs(15)
    }
}

/// A secret value that never shows itself in logs, errors or debug output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value read from a secret source.
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How the tenant's app proves its identity to Entra ID, as read from the configured sources.
#[derive(Debug, Clone)]
pub enum ClientCredential {
    /// A client secret.
    Secret(Secret),
    /// A certificate registered on the app and its private key, both still PEM.
    Certificate(CertificateFiles),
}

/// The files of a certificate credential and what they hold; the key is a [`Secret`].
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub certificate_file: PathBuf,
    pub certificate_pem: Vec<u8>,
    pub key_file: PathBuf,
    pub key_pem: Secret,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: path.to_path_buf(), cause })?;
        warn_if_world_readable(path, "the config file");
        Self::parse(&text, path)
    }

    /// Parses and validates config text. Relative plugin paths are taken from the directory of `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: one_line(&e.to_string()) })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for tenant in &mut config.tenants {
            tenant.plugins.resolve_paths(base);
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.tenants.is_empty() {
            return Err(ConfigError::Invalid("no [[tenant]] is configured".into()));
        }
        if self.agent.interval.is_zero() {
            return Err(ConfigError::Invalid("[agent] interval must be more than 0s".into()));
        }
        let mut names = std::collections::HashSet::new();
        for tenant in &self.tenants {
            if !names.insert(tenant.name.as_str()) {
                return Err(ConfigError::Invalid(format!("tenant name {:?} is used twice", tenant.name)));
            }
            tenant.validate()?;
        }
        self.agent.validate()?;
        self.check_target_ous_apart()
    }

    /// Each tenant owns the anchored groups inside its OUs (`target_ou` and `allowed_ous`), so no OU of one
    /// tenant may equal, contain or lie inside an OU of another: an anchored group there would be both's. Nor
    /// may a tenant take groups over inside another's OUs: that tenant would find them anchored by a cloud group
    /// it does not know, and delete them.
    fn check_target_ous_apart(&self) -> Result<(), ConfigError> {
        for (i, a) in self.tenants.iter().enumerate() {
            for b in &self.tenants[i + 1..] {
                for (first, second) in [(a, b), (b, a)] {
                    for x in first.ous().chain(&first.adopt.ous) {
                        if let Some(y) = second.ous().find(|y| crate::dn::is_within(x, y) || crate::dn::is_within(y, x))
                        {
                            return Err(ConfigError::Invalid(format!(
                                "tenants {} and {} have overlapping OUs ({x} and {y}); each tenant's target_ou, allowed_ous and adopt ous must be apart from every other tenant's target_ou and allowed_ous",
                                first.name, second.name
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The tenant called `name`.
    pub fn tenant(&self, name: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.name == name)
    }
}

impl AgentConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.id
            && !valid_agent_id(id)
        {
            return Err(ConfigError::Invalid(format!(
                "[agent] id {id:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        Ok(())
    }

    /// This agent's id: the configured one, or the host name.
    pub fn agent_id(&self) -> String {
        if let Some(id) = &self.id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(64)
            .collect();
        if host.is_empty() { "writeback".into() } else { host }
    }
}

fn valid_agent_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LeaseConfig {
    fn validate(&self, tenant: &str) -> Result<(), ConfigError> {
        // The DC's clock has one-second steps and a standby takes over only after the expiry it reads, so the
        // holder stops writing a margin before its ttl ends; the ttl must leave room for that and for renewals.
        if self.ttl < Duration::from_secs(6) {
            return Err(ConfigError::Invalid(format!("tenant {tenant}: lease ttl must be at least 6s")));
        }
        if self.renew_every.is_zero() || self.renew_every * 2 > self.ttl {
            return Err(ConfigError::Invalid(format!(
                "tenant {tenant}: lease renew_every must be more than 0s and at most half the ttl"
            )));
        }
        if let Some(dn) = &self.dn
            && !crate::dn::is_dn(dn)
        {
            return Err(ConfigError::Invalid(format!("tenant {tenant}: lease dn {dn:?} is not a distinguished name")));
        }
        Ok(())
    }
}

impl TenantConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.name;
        let valid_name =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !valid_name {
            return Err(ConfigError::Invalid(format!(
                "tenant name {name:?} must be non-empty and use only letters, digits, '-', '_' or '.'"
            )));
        }
        for (field, value) in [("tenant_id", &self.tenant_id), ("client_id", &self.client_id)] {
            if value.trim().is_empty() {
                return Err(ConfigError::Invalid(format!("tenant {name}: {field} is empty")));
            }
        }
        check_http_url(name, "login_url", &self.login_url)?;
        check_http_url(name, "graph_url", &self.graph_url)?;
        if self.reconcile_batch == 0 {
            return Err(ConfigError::Invalid(format!("tenant {name}: reconcile_batch must be at least 1")));
        }
        if self.pim.sweep < Duration::from_secs(60) {
            return Err(ConfigError::Invalid(format!("tenant {name}: pim sweep must be at least 1m")));
        }
        self.one_client_credential()?;
        for dn in &self.protected_groups {
            if !crate::dn::is_dn(dn) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {name}: protected_groups entry {dn:?} is not a distinguished name"
                )));
            }
        }
        if self.scope.include.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::Invalid(format!(
                "tenant {name}: scope include is empty, which would match no group; leave it out to include every group"
            )));
        }
        for pattern in self.scope.include.iter().flatten().chain(&self.scope.exclude) {
            if let Err(e) = glob::Pattern::new(pattern) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {name}: scope pattern {pattern:?} is not a glob: {}",
                    e.msg
                )));
            }
        }
        for ou in &self.adopt.ous {
            // A domain root would offer every group of the domain, the built-in ones too.
            if crate::dn::is_domain_root(ou) || !crate::dn::is_dn(ou) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {name}: adopt ous entry {ou:?} is not the distinguished name of an OU or container below the domain root; name the OUs whose groups may be taken over"
                )));
            }
        }
        self.directory.validate(name)?;
        if let Some(lease) = &self.lease {
            lease.validate(name)?;
        }
        self.plugins.validate(name)
    }

    /// The OUs whose anchored groups belong to this tenant: `target_ou` and every `allowed_ous` entry.
    pub fn ous(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.directory.target_ou).chain(&self.plugins.allowed_ous)
    }

    /// The DN of the tenant's lease object.
    pub fn lease_dn(&self) -> Option<String> {
        let lease = self.lease.as_ref()?;
        Some(lease.dn.clone().unwrap_or_else(|| format!("CN=writeback-lease,{}", self.directory.target_ou)))
    }

    /// Exactly one way for the app to prove itself: a secret (file or variable) or a certificate with its key.
    fn one_client_credential(&self) -> Result<(), ConfigError> {
        let name = &self.name;
        match (&self.client_certificate_file, &self.client_key_file) {
            (Some(_), None) => Err(ConfigError::Invalid(format!(
                "tenant {name}: client_certificate_file is set but client_key_file is not; certificate authentication needs both"
            ))),
            (None, Some(_)) => Err(ConfigError::Invalid(format!(
                "tenant {name}: client_key_file is set but client_certificate_file is not; certificate authentication needs both"
            ))),
            (Some(_), Some(_)) => {
                let secrets: Vec<&str> = [
                    ("client_secret_file", self.client_secret_file.is_some()),
                    ("client_secret_env", self.client_secret_env.is_some()),
                ]
                .into_iter()
                .filter_map(|(field, set)| set.then_some(field))
                .collect();
                if secrets.is_empty() {
                    return Ok(());
                }
                Err(ConfigError::Invalid(format!(
                    "tenant {name}: set either client_certificate_file with client_key_file or {}, not both",
                    secrets.join(" and ")
                )))
            }
            (None, None) if self.client_secret_file.is_none() && self.client_secret_env.is_none() => {
                Err(ConfigError::Invalid(format!(
                    "tenant {name}: the client credential is missing; set client_secret_file (or client_secret_env), \
                     or client_certificate_file and client_key_file"
                )))
            }
            (None, None) => one_secret_source(name, "client_secret", &self.client_secret_file, &self.client_secret_env),
        }
    }

    /// Reads the configured client credential: the secret, or the certificate and its private key.
    pub fn client_credential(&self) -> Result<ClientCredential, ConfigError> {
        let (Some(certificate_file), Some(key_file)) = (&self.client_certificate_file, &self.client_key_file) else {
            return self.client_secret().map(ClientCredential::Secret);
        };
        let what = format!("tenant {} client certificate", self.name);
        let certificate_pem = std::fs::read(certificate_file).map_err(|cause| ConfigError::SecretFile {
            what,
            path: certificate_file.clone(),
            cause,
        })?;
        let key_pem = read_secret(&format!("tenant {} client key", self.name), &Some(key_file.clone()), &None)?;
        Ok(ClientCredential::Certificate(CertificateFiles {
            certificate_file: certificate_file.clone(),
            certificate_pem,
            key_file: key_file.clone(),
            key_pem,
        }))
    }

    /// Reads the client secret from its file or environment variable.
    pub fn client_secret(&self) -> Result<Secret, ConfigError> {
        read_secret(&format!("tenant {} client secret", self.name), &self.client_secret_file, &self.client_secret_env)
    }

    /// `login_url` without a trailing slash.
    pub fn login_base(&self) -> &str {
        self.login_url.trim_end_matches('/')
    }

    /// `graph_url` without a trailing slash.
    pub fn graph_base(&self) -> &str {
        self.graph_url.trim_end_matches('/')
    }
}

impl DirectoryConfig {
    fn validate(&self, tenant: &str) -> Result<(), ConfigError> {
        let url = Url::parse(&self.url).map_err(|e| {
            ConfigError::Invalid(format!("tenant {tenant}: directory url {:?} is not a URL: {e}", self.url))
        })?;
        if !matches!(url.scheme(), "ldaps" | "ldap") {
            return Err(ConfigError::Invalid(format!(
                "tenant {tenant}: directory url must start with ldaps:// (or ldap:// for StartTLS), not {}://",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::Invalid(format!("tenant {tenant}: directory url has no host")));
        }
        if self.bind_dn.trim().is_empty() {
            return Err(ConfigError::Invalid(format!("tenant {tenant}: directory bind_dn is empty")));
        }
        if !crate::dn::is_dn(&self.target_ou) {
            return Err(ConfigError::Invalid(format!(
                "tenant {tenant}: directory target_ou {:?} is not a distinguished name",
                self.target_ou
            )));
        }
        one_secret_source(tenant, "directory password", &self.password_file, &self.password_env)
    }

    /// Reads the bind password from its file or environment variable.
    pub fn password(&self, tenant: &str) -> Result<Secret, ConfigError> {
        read_secret(&format!("tenant {tenant} directory password"), &self.password_file, &self.password_env)
    }
}

impl PluginsConfig {
    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.naming.iter_mut().for_each(resolve);
        self.transforms.iter_mut().for_each(resolve);
    }

    fn validate(&self, tenant: &str) -> Result<(), ConfigError> {
        if self.timeout.is_zero() || self.memory_limit_mib == 0 {
            return Err(ConfigError::Invalid(format!(
                "tenant {tenant}: plugin timeout and memory_limit_mib must be more than 0"
            )));
        }
        for ou in &self.allowed_ous {
            // A domain root would make every anchored group in the domain a candidate of this tenant.
            if crate::dn::is_domain_root(ou) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {tenant}: allowed_ous entry {ou:?} is a domain root; name an OU"
                )));
            }
            if !crate::dn::is_dn(ou) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {tenant}: allowed_ous entry {ou:?} is not a distinguished name"
                )));
            }
        }
        for name in self.transform_attributes.iter().flatten() {
            if !crate::attributes::is_attribute_name(name) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {tenant}: transform_attributes entry {name:?} is not an attribute name; give names such as \"info\", not OIDs or options"
                )));
            }
            if crate::attributes::forbidden_to_transforms(name) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {tenant}: transform_attributes may not include {name}: it carries identity, membership, type or security"
                )));
            }
        }
        Ok(())
    }

    /// Whether the tenant uses any plugin.
    pub fn any(&self) -> bool {
        self.naming.is_some() || !self.transforms.is_empty()
    }
}

/// Graph and login URLs must be https, except on loopback where a test simulator listens on plain http.
fn check_http_url(tenant: &str, field: &str, value: &str) -> Result<(), ConfigError> {
    let url = Url::parse(value)
        .map_err(|e| ConfigError::Invalid(format!("tenant {tenant}: {field} {value:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err(ConfigError::Invalid(format!(
            "tenant {tenant}: {field} must use https (plain http is accepted only for loopback addresses)"
        ))),
        other => Err(ConfigError::Invalid(format!("tenant {tenant}: {field} must use https, not {other}://"))),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn one_secret_source(
    tenant: &str,
    what: &str,
    file: &Option<PathBuf>,
    env: &Option<String>,
) -> Result<(), ConfigError> {
    let field = what.replace(' ', "_").replace("directory_", "");
    match (file, env) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
            "tenant {tenant}: set either {field}_file or {field}_env for the {what}, not both"
        ))),
        (None, None) => Err(ConfigError::Invalid(format!(
            "tenant {tenant}: the {what} is missing; set {field}_file (or {field}_env)"
        ))),
        _ => Ok(()),
    }
}

/// Other users of the machine should not read the agent's settings or secrets; say so once per read.
fn warn_if_world_readable(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(path = %path.display(), "{what} is readable by every user of this machine; run chmod o-rwx on it");
    }
}

fn read_secret(what: &str, file: &Option<PathBuf>, env: &Option<String>) -> Result<Secret, ConfigError> {
    let value = match (file, env) {
        (Some(path), _) => {
            warn_if_world_readable(path, what);
            std::fs::read_to_string(path).map_err(|cause| ConfigError::SecretFile {
                what: what.into(),
                path: path.clone(),
                cause,
            })?
        }
        (None, Some(var)) => {
            std::env::var(var).map_err(|_| ConfigError::SecretEnv { what: what.into(), var: var.clone() })?
        }
        (None, None) => return Err(ConfigError::Invalid(format!("{what} is not configured"))),
    };
    // Files written by editors and `echo` end with a newline that is not part of the secret.
    let value = value.trim_end_matches(['\r', '\n']).to_string();
    if value.is_empty() {
        return Err(ConfigError::Invalid(format!("{what} is empty")));
    }
    Ok(Secret::new(value))
}

/// Collapses a multi-line parser message to one line.
fn one_line(text: &str) -> String {
    text.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[agent]
state_dir = "/tmp/wb"
interval = "5s"

[[tenant]]
name = "contoso"
tenant_id = "t"
client_id = "c"
client_secret_file = "/tmp/secret"
graph_url = "http://127.0.0.1:9000"
login_url = "http://localhost:9000/"

[tenant.directory]
url = "ldaps://127.0.0.1:636"
bind_dn = "CN=Administrator,CN=Users,DC=corp,DC=example,DC=test"
password_env = "WB_PW"
target_ou = "OU=Writeback,DC=corp,DC=example,DC=test"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn scope_rules_parse_and_a_bad_glob_is_named() {
        let with = |table: &str| parse(&format!("{GOOD}\n[tenant.scope]\n{table}\n"));
        let config = with("security_groups = \"all\"\ninclude = [\"SG-*\"]\nexclude = [\"*-test\"]").unwrap();
        let rules = config.tenants[0].scope.rules();
        assert!(rules.all_security_groups);
        assert_eq!((rules.include.len(), rules.exclude.len()), (1, 1));
        assert_eq!(parse(GOOD).unwrap().tenants[0].scope, ScopeConfig::default(), "opted-in, every name, by default");
        let err = with("include = [\"SG-[\"]").unwrap_err().to_string();
        assert!(err.contains("scope pattern \"SG-[\" is not a glob"), "{err}");
        assert!(with("security_groups = \"some\"").is_err());
        let err = with("include = []").unwrap_err().to_string();
        assert!(err.contains("scope include is empty"), "{err}");
        // Case folds beyond ASCII, and the spaces around a name do not count, as the CN drops them.
        let config = with("security_groups = \"all\"\nexclude = [\"*-ТЕСТ\"]").unwrap();
        let rules = config.tenants[0].scope.rules();
        let group = crate::cloud::CloudGroup {
            id: "2f8a3c1e-5b7d-4e9f-a1b2-c3d4e5f60718".into(),
            display_name: Some("Проект-тест ".into()),
            ..Default::default()
        };
        assert!(matches!(crate::model::scope(&group, true, &rules), Err(crate::model::Intent::LeftOut(_))));
        assert!(with("includes = []").is_err(), "unknown fields are refused");
    }

    #[test]
    fn pim_is_off_by_default_and_its_sweep_is_bounded() {
        let with = |table: &str| parse(&format!("{GOOD}\n[tenant.pim]\n{table}\n"));
        assert!(!parse(GOOD).unwrap().tenants[0].pim.enabled);
        let pim = with("enabled = true").unwrap().tenants[0].pim.clone();
        assert_eq!(pim, PimConfig { enabled: true, sweep: Duration::from_secs(3600) });
        let err = with("enabled = true\nsweep = \"5s\"").unwrap_err().to_string();
        assert!(err.contains("pim sweep must be at least 1m"), "{err}");
        assert!(with("enable = true").is_err(), "unknown fields are refused");
    }

    #[test]
    fn adopt_ous_must_be_ous() {
        let with = |table: &str| parse(&format!("{GOOD}\n[tenant.adopt]\n{table}\n"));
        assert!(parse(GOOD).unwrap().tenants[0].adopt.ous.is_empty(), "no takeover unless asked for");
        let config = with("ous = [\"OU=Groups,DC=corp,DC=example,DC=test\"]").unwrap();
        assert_eq!(config.tenants[0].adopt.ous, ["OU=Groups,DC=corp,DC=example,DC=test"]);
        for bad in ["DC=corp,DC=example,DC=test", "Groups"] {
            let err = with(&format!("ous = [\"{bad}\"]")).unwrap_err().to_string();
            assert!(err.contains(&format!("adopt ous entry {bad:?} is not the distinguished name of an OU")), "{err}");
        }
        assert!(with("ou = []").is_err(), "unknown fields are refused");
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.agent.interval, Duration::from_secs(5));
        assert_eq!(config.agent.reconcile_interval, Duration::from_secs(3600));
        assert_eq!(config.agent.drift_watch, Duration::from_secs(5));
        let tenant = &config.tenants[0];
        assert_eq!(tenant.delete_threshold, 500);
        assert_eq!(tenant.reconcile_batch, 1000);
        assert_eq!(tenant.m365_default_writeback, None, "the tenant's own setting decides");
        assert_eq!(tenant.login_base(), "http://localhost:9000");
    }

    #[test]
    fn unknown_field_is_refused_naming_it() {
        let text = GOOD.replace("interval = \"5s\"", "interval = \"5s\"\nintervall = \"1s\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("intervall"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn plain_http_graph_is_refused_off_loopback() {
        let text = GOOD.replace("http://127.0.0.1:9000", "http://graph.example.com");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("graph_url must use https"), "{err}");
    }

    /// `GOOD` with a second tenant whose target OU is `ou_b`, and `plugins` appended to the first tenant.
    fn two_tenants(ou_b: &str, plugins: &str) -> String {
        let (head, first) = GOOD.split_once("[[tenant]]").unwrap();
        let second = first.replace("name = \"contoso\"", "name = \"fabrikam\"").replace("OU=Writeback,DC=corp", ou_b);
        format!("{head}[[tenant]]{first}{plugins}\n[[tenant]]{second}")
    }

    #[test]
    fn a_domain_root_is_not_an_allowed_ou() {
        let text = format!("{GOOD}[tenant.plugins]\nallowed_ous = [\"DC=corp,DC=example,DC=test\"]\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("is a domain root"), "{err}");
    }

    #[test]
    fn tenants_whose_ous_overlap_are_refused() {
        assert!(parse(&two_tenants("OU=Other,DC=corp", "")).is_ok());
        let err = parse(&two_tenants("OU=Inner,OU=Writeback,DC=corp", "")).unwrap_err().to_string();
        assert!(err.contains("tenants contoso and fabrikam have overlapping OUs"), "{err}");
        // An allowed OU of one tenant inside another tenant's target OU would make that tenant's groups its own.
        let plugins = "[tenant.plugins]\nallowed_ous = [\"OU=Shared,OU=Other,DC=corp,DC=example,DC=test\"]\n";
        let err = parse(&two_tenants("OU=Other,DC=corp", plugins)).unwrap_err().to_string();
        assert!(
            err.contains("(OU=Shared,OU=Other,DC=corp,DC=example,DC=test and OU=Other,DC=corp,DC=example,DC=test)"),
            "{err}"
        );
        let plugins = "[tenant.plugins]\nallowed_ous = [\"OU=Elsewhere,DC=corp,DC=example,DC=test\"]\n";
        assert!(parse(&two_tenants("OU=Other,DC=corp", plugins)).is_ok());
        // Groups one tenant takes over inside another's target OU would be that tenant's orphans to delete.
        let adopt = "[tenant.adopt]\nous = [\"OU=Other,DC=corp,DC=example,DC=test\"]\n";
        let err = parse(&two_tenants("OU=Inner,OU=Other,DC=corp", adopt)).unwrap_err().to_string();
        assert!(err.contains("tenants contoso and fabrikam have overlapping OUs"), "{err}");
        let adopt = "[tenant.adopt]\nous = [\"OU=Legacy,DC=corp,DC=example,DC=test\"]\n";
        assert!(parse(&two_tenants("OU=Other,DC=corp", adopt)).is_ok());
    }

    #[test]
    fn an_empty_reconcile_batch_is_refused() {
        let text = GOOD.replace(
            "client_secret_file = \"/tmp/secret\"",
            "client_secret_file = \"/tmp/secret\"\nreconcile_batch = 0",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("tenant contoso: reconcile_batch must be at least 1"), "{err}");
    }

    #[test]
    fn both_secret_sources_are_refused() {
        let text = GOOD
            .replace("client_secret_file = \"/tmp/secret\"", "client_secret_file = \"/a\"\nclient_secret_env = \"X\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("either client_secret_file or client_secret_env"), "{err}");
    }

    fn with_client_credential(lines: &str) -> String {
        GOOD.replace("client_secret_file = \"/tmp/secret\"\n", lines)
    }

    #[test]
    fn a_certificate_with_its_key_is_a_credential() {
        let text = with_client_credential("client_certificate_file = \"/c.pem\"\nclient_key_file = \"/k.pem\"\n");
        let tenant = &parse(&text).unwrap().tenants[0];
        assert_eq!(tenant.client_certificate_file.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(tenant.client_key_file.as_deref(), Some(Path::new("/k.pem")));
    }

    #[test]
    fn a_certificate_needs_its_key_and_the_other_way_round() {
        let err = parse(&with_client_credential("client_certificate_file = \"/c.pem\"\n")).unwrap_err().to_string();
        assert!(err.contains("client_certificate_file is set but client_key_file is not"), "{err}");
        let err = parse(&with_client_credential("client_key_file = \"/k.pem\"\n")).unwrap_err().to_string();
        assert!(err.contains("client_key_file is set but client_certificate_file is not"), "{err}");
    }

    #[test]
    fn a_certificate_and_a_secret_are_refused_together() {
        let text = GOOD.replace(
            "client_secret_file = \"/tmp/secret\"\n",
            "client_secret_file = \"/s\"\nclient_secret_env = \"S\"\nclient_certificate_file = \"/c.pem\"\nclient_key_file = \"/k.pem\"\n",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("set either client_certificate_file with client_key_file or client_secret_file and client_secret_env, not both"),
            "{err}"
        );
        let text = with_client_credential(
            "client_secret_env = \"S\"\nclient_certificate_file = \"/c.pem\"\nclient_key_file = \"/k.pem\"\n",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("or client_secret_env, not both"), "{err}");
    }

    #[test]
    fn a_missing_client_credential_names_every_field() {
        let err = parse(&with_client_credential("")).unwrap_err().to_string();
        for field in ["client_secret_file", "client_secret_env", "client_certificate_file", "client_key_file"] {
            assert!(err.contains(field), "{field}: {err}");
        }
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn the_certificate_credential_is_read_and_its_key_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let (certificate, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&certificate, "CERTIFICATE TEXT\n").unwrap();
        std::fs::write(&key, "KEY TEXT\n").unwrap();
        let text = with_client_credential(&format!(
            "client_certificate_file = \"{}\"\nclient_key_file = \"{}\"\n",
            certificate.display(),
            key.display()
        ));
        let config = parse(&text).unwrap();
        let ClientCredential::Certificate(files) = config.tenants[0].client_credential().unwrap() else {
            panic!("a certificate credential was expected");
        };
        assert_eq!(files.certificate_pem, b"CERTIFICATE TEXT\n");
        assert_eq!(files.key_pem.expose(), "KEY TEXT");
        assert!(!format!("{files:?}").contains("KEY TEXT"));
        std::fs::remove_file(&key).unwrap();
        let err = config.tenants[0].client_credential().unwrap_err().to_string();
        assert!(err.contains("client key") && err.contains(&key.display().to_string()), "{err}");
    }

    #[test]
    fn a_secret_is_still_a_credential() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "hunter2\n").unwrap();
        let text = with_client_credential(&format!("client_secret_file = \"{}\"\n", path.display()));
        let credential = parse(&text).unwrap().tenants[0].client_credential().unwrap();
        assert!(matches!(credential, ClientCredential::Secret(s) if s.expose() == "hunter2"));
    }

    #[test]
    fn missing_password_names_the_fields() {
        let text = GOOD.replace("password_env = \"WB_PW\"\n", "");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("password_file"), "{err}");
    }

    #[test]
    fn bad_durations_and_urls_are_refused() {
        assert!(parse(&GOOD.replace("\"5s\"", "\"5 parsecs\"")).is_err());
        let err = parse(&GOOD.replace("ldaps://127.0.0.1:636", "http://127.0.0.1")).unwrap_err().to_string();
        assert!(err.contains("ldaps://"), "{err}");
    }

    #[test]
    fn plugin_paths_resolve_against_the_config_directory() {
        let text = format!("{GOOD}\n[tenant.plugins]\nnaming = \"naming.wasm\"\ntransforms = [\"/abs/t.wasm\"]\n");
        let config = Config::parse(&text, Path::new("/etc/writeback/writeback.toml")).unwrap();
        let plugins = &config.tenants[0].plugins;
        assert_eq!(plugins.naming.as_deref(), Some(Path::new("/etc/writeback/naming.wasm")));
        assert_eq!(plugins.transforms, [PathBuf::from("/abs/t.wasm")]);
        assert_eq!(plugins.timeout, Duration::from_millis(100));
    }

    #[test]
    fn forbidden_transform_attributes_are_refused() {
        let text = format!("{GOOD}\n[tenant.plugins]\ntransform_attributes = [\"info\", \"Member\"]\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("may not include Member"), "{err}");
        for name in
            ["adminCount", "managedBy", "memberUid", "gidNumber", "memberOf", "msDS-KeyCredentialLink", "sIDHistory"]
        {
            let text = format!("{GOOD}\n[tenant.plugins]\ntransform_attributes = [\"{name}\"]\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(&format!("may not include {name}")), "{err}");
        }
        for name in ["2.5.4.31", "member;range=0-9", "info ", "", "-info", "inf\\u00f6"] {
            let text = format!("{GOOD}\n[tenant.plugins]\ntransform_attributes = [\"{name}\"]\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("is not an attribute name"), "{name:?}: {err}");
        }
    }

    #[test]
    fn secret_is_read_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "hunter2\n").unwrap();
        let secret = read_secret("x", &Some(path), &None).unwrap();
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
    }

    #[test]
    fn missing_secret_file_names_the_path() {
        let err = read_secret("tenant a client secret", &Some("/nonexistent/s".into()), &None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/s"), "{err}");
    }
}
