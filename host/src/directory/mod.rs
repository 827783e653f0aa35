//! Active Directory over LDAPS (or StartTLS): the connection, reads of managed groups and principals, and
//! the application of planned operations.
//!
//! Plain-text binds are impossible by construction: `ldaps://` is TLS from the first byte and `ldap://` is
//! always upgraded with StartTLS before the bind. The server certificate and host name are verified.

mod lease;
mod read;
pub mod sid;
mod watch;
mod write;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry, ldap_escape};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::attributes::{self, SchemaSupport};
use crate::config::{DirectoryConfig, Secret};
use crate::plan::{DirectoryGroup, Op, Principal};
pub use lease::LeaseObject;
pub use read::{ChangedGroup, ManagedGroups};
pub use write::{Applied, ApplyError};

/// A directory failure that stops the whole tenant's cycle (per-group failures are [`ApplyError`]s).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirectoryError {
    #[error("cannot read ca_file {path}: {cause}")]
    CaFile { path: String, cause: String },
    #[error("cannot connect to {url}: {cause}")]
    Connect { url: String, cause: String },
    #[error(
        "the DC at {url} refused StartTLS ({cause}); writeback never binds without TLS: enable TLS on the DC or use an ldaps:// URL"
    )]
    StartTls { url: String, cause: String },
    #[error(
        "the connection to {url} is not encrypted, so the password was not sent; use an ldaps:// URL or a DC with StartTLS"
    )]
    NoTls { url: String },
    #[error("TLS with {url} failed: {cause}; check ca_file and that the URL's host name is in the DC's certificate")]
    Tls { url: String, cause: String },
    #[error("bind as {dn} failed: {message} (LDAP result {code}); check bind_dn and the password")]
    Bind { dn: String, code: u32, message: String },
    #[error("LDAP {operation} failed: {message} (LDAP result {code})")]
    Ldap { operation: String, code: u32, message: String },
    #[error("LDAP {operation} failed: {cause}")]
    Transport { operation: String, cause: String },
    #[error("the DC's rootDSE has no {0}")]
    RootDse(&'static str),
    #[error(
        "tenant {tenant}: this agent no longer holds the writer lease (expired or taken over), so it stopped writing; the lease holder carries on"
    )]
    LeaseLost { tenant: String },
    #[error("tenant {tenant}: the writer lease kept changing while it was being released; try again")]
    LeaseBusy { tenant: String },
}

impl DirectoryError {
    fn from_ldap(operation: &str, error: LdapError) -> Self {
        match error {
            LdapError::LdapResult { result } => DirectoryError::Ldap {
                operation: operation.to_string(),
                code: result.rc,
                message: describe_rc(result.rc, &result.text),
            },
            other => DirectoryError::Transport { operation: operation.to_string(), cause: innermost(&other) },
        }
    }

    /// Whether retrying later may succeed (the DC was busy, unavailable or unreachable).
    pub fn is_transient(&self) -> bool {
        match self {
            DirectoryError::Ldap { code, .. } => matches!(code, 51 | 52),
            DirectoryError::Transport { .. } | DirectoryError::Connect { .. } => true,
            _ => false,
        }
    }
}

/// The innermost cause of an error chain: the part an admin can act on.
fn innermost(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// A readable name for an LDAP result code, with the server's text when it has one.
fn describe_rc(rc: u32, text: &str) -> String {
    let name = match rc {
        16 => "no such attribute",
        19 => "constraint violation",
        20 => "value already exists",
        21 => "invalid attribute syntax",
        32 => "no such object",
        34 => "invalid DN syntax",
        49 => "invalid credentials",
        50 => "insufficient access rights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwilling to perform",
        64 => "naming violation",
        65 => "object class violation",
        68 => "entry already exists",
        _ => "error",
    };
    let text = text.trim().trim_end_matches('\0');
    if text.is_empty() { name.to_string() } else { format!("{name}: {}", text.lines().next().unwrap_or(text)) }
}

/// What every write passes first when several agents share a tenant: the writer lease implements it, so that
/// the directory needs to know nothing of leases.
pub trait WriteGate: Send + Sync {
    /// Fails when this agent may no longer write.
    fn check(&self) -> Result<(), DirectoryError>;
    /// Read-held by each write from its check until the DC answers it, so that a release, which takes it for
    /// writing, waits for every write that passed its check.
    fn writes(&self) -> Arc<tokio::sync::RwLock<()>>;
}

/// What an operation sent with others came to; `None` when it was never sent.
pub type Sent = Option<Result<Applied, ApplyError>>;

/// Asked before each operation of a batch is sent: whether to send it.
pub type GoOn<'a> = &'a (dyn Fn() -> bool + Sync);

/// What a sync cycle asks of the directory. [`Directory`] is the real one, over LDAPS; a test can give sync an
/// in-memory one, so that batching, checkpoints and quarantine are tested without a DC.
#[allow(async_fn_in_trait, reason = "sync runs on the caller's task; it is never spawned through the trait")]
pub trait GroupDirectory {
    /// Which optional attributes the schema has.
    fn schema(&self) -> SchemaSupport;
    /// The domain's SID, when it can be read: a member SID outside it belongs to another domain.
    async fn domain_sid(&mut self) -> Option<String>;
    /// The cloud id and DN of every managed group inside `ous`.
    async fn managed_index(&mut self, ous: &[String]) -> Result<Vec<(String, String)>, DirectoryError>;
    /// The managed groups of `ids`, found by the recorded objectGUID or by anchor inside `ous`.
    async fn managed_groups(
        &mut self,
        ids: &[String],
        recorded: &HashMap<String, String>,
        ous: &[String],
    ) -> Result<ManagedGroups, DirectoryError>;
    /// The groups with the given SIDs, read whole, by upper-case SID; SIDs that name no group are left out.
    async fn groups_by_sid(&mut self, sids: &[String]) -> Result<HashMap<String, DirectoryGroup>, DirectoryError>;
    /// What each SID names, by upper-case SID; SIDs that name nothing are left out.
    async fn principals(&mut self, sids: &[String]) -> Result<HashMap<String, Principal>, DirectoryError>;
    /// The groups among the members of `group_dns`, by upper-case SID, with their groupType.
    async fn member_groups(&mut self, group_dns: &[String]) -> Result<HashMap<String, Principal>, DirectoryError>;
    /// The groups `dn` is a direct member of, by upper-case SID, with their groupType.
    async fn containing_groups(&mut self, dn: &str) -> Result<HashMap<String, Principal>, DirectoryError>;
    /// The group of `deny`, or one marked adminCount=1, that `group_dn` is in, directly or nested.
    async fn protecting_group(&mut self, group_dn: &str, deny: &[String]) -> Result<Option<String>, DirectoryError>;
    /// Applies one operation; `created` maps the cloud ids of groups created earlier in this apply to their DNs.
    async fn apply(&mut self, op: &Op, created: &HashMap<String, String>) -> Result<Applied, ApplyError>;
    /// Applies operations that do not depend on each other, possibly several at once. `go_on` is asked before
    /// each is sent; once it says no, or once one fails for the whole directory ([`ApplyError::Directory`]),
    /// the rest are not sent. The results come in the order of `ops`, `None` for one never sent. The caller
    /// makes sure that no two of them touch or name the same group.
    async fn apply_all(&mut self, ops: &[&Op], created: &HashMap<String, String>, go_on: GoOn<'_>) -> Vec<Sent> {
        let mut results = Vec::with_capacity(ops.len());
        let mut broken = false;
        for op in ops {
            if broken || !go_on() {
                results.push(None);
                continue;
            }
            let result = self.apply(op, created).await;
            broken = matches!(result, Err(ApplyError::Directory(_)));
            results.push(Some(result));
        }
        results
    }
    /// Keeps what the directory lists of the whole domain (its anchored groups) from one read to the next, until
    /// called with `false`: for one reconcile, whose batches would otherwise each list the domain again.
    fn hold_listing(&mut self, _hold: bool) {}
    /// Reads the writer lease object at `dn`.
    async fn read_lease(&mut self, dn: &str) -> Result<LeaseObject, DirectoryError>;
    /// The DC's highestCommittedUSN, when it can be read; directories without USNs give `None`.
    async fn highest_usn(&mut self) -> Option<u64> {
        None
    }
    /// Whether the forest removes `<TTL=…,DN>` member links by itself at their end (AD's Privileged Access
    /// Management feature).
    async fn time_to_live_links(&mut self) -> bool {
        false
    }
}

impl GroupDirectory for Directory {
    fn schema(&self) -> SchemaSupport {
        self.schema.clone()
    }
    async fn domain_sid(&mut self) -> Option<String> {
        if self.domain_sid.is_none() {
            // Read once, when a plan first needs it, so that connections which never plan (the lease's) do
            // not pay for it. Without it the cross-domain checks are off, which is no reason to stop.
            let base = self.base_dn.clone();
            let domain = self.search_one(&base, Scope::Base, "(objectClass=*)", &["objectSid"]).await;
            let sid = match domain {
                Ok(entry) => entry.as_ref().and_then(read::object_sid),
                Err(e) => {
                    tracing::warn!(
                        "cannot read the domain's objectSid ({e}); members of other domains are not recognised"
                    );
                    None
                }
            };
            self.domain_sid = Some(sid);
        }
        self.domain_sid.clone().flatten()
    }
    async fn managed_index(&mut self, ous: &[String]) -> Result<Vec<(String, String)>, DirectoryError> {
        Directory::managed_index(self, ous).await
    }
    fn hold_listing(&mut self, hold: bool) {
        Directory::hold_listing(self, hold);
    }
    async fn managed_groups(
        &mut self,
        ids: &[String],
        recorded: &HashMap<String, String>,
        ous: &[String],
    ) -> Result<ManagedGroups, DirectoryError> {
        Directory::managed_groups(self, ids, recorded, ous).await
    }
    async fn groups_by_sid(&mut self, sids: &[String]) -> Result<HashMap<String, DirectoryGroup>, DirectoryError> {
        Directory::groups_by_sid(self, sids).await
    }
    async fn principals(&mut self, sids: &[String]) -> Result<HashMap<String, Principal>, DirectoryError> {
        Directory::principals(self, sids).await
    }
    async fn member_groups(&mut self, group_dns: &[String]) -> Result<HashMap<String, Principal>, DirectoryError> {
        Directory::member_groups(self, group_dns).await
    }
    async fn protecting_group(&mut self, group_dn: &str, deny: &[String]) -> Result<Option<String>, DirectoryError> {
        Directory::protecting_group(self, group_dn, deny).await
    }
    async fn containing_groups(&mut self, dn: &str) -> Result<HashMap<String, Principal>, DirectoryError> {
        Directory::containing_groups(self, dn).await
    }
    async fn apply(&mut self, op: &Op, created: &HashMap<String, String>) -> Result<Applied, ApplyError> {
        Directory::apply(self, op, created).await
    }
    async fn apply_all(&mut self, ops: &[&Op], created: &HashMap<String, String>, go_on: GoOn<'_>) -> Vec<Sent> {
        Directory::apply_all(self, ops, created, go_on).await
    }
    async fn highest_usn(&mut self) -> Option<u64> {
        self.highest_committed_usn().await.ok()
    }
    async fn time_to_live_links(&mut self) -> bool {
        if self.ttl_links.is_none() {
            // Read once per connection, when a time-bound member is first written. A forest whose answer
            // cannot be read is taken to have no such feature: the agent's own expiry then holds.
            let enabled = match self.enabled_features().await {
                Ok(features) => crate::pim::pam_enabled(&features),
                Err(e) => {
                    tracing::warn!(
                        "cannot read the forest's optional features ({e}); time-bound members are expired by the agent"
                    );
                    false
                }
            };
            self.ttl_links = Some(enabled);
        }
        self.ttl_links.unwrap_or(false)
    }
    async fn read_lease(&mut self, dn: &str) -> Result<LeaseObject, DirectoryError> {
        Directory::read_lease(self, dn).await
    }
}

/// An open, bound directory connection.
pub struct Directory {
    ldap: Ldap,
    timeout: Duration,
    /// The domain's naming context: managed groups are looked up by anchor anywhere below it.
    pub base_dn: String,
    /// Which optional attributes the schema has.
    pub schema: SchemaSupport,
    /// The domain's objectSid once read (see [`GroupDirectory::domain_sid`]).
    domain_sid: Option<Option<String>>,
    /// When set, every write first checks that this agent still holds the tenant's writer lease.
    gate: Option<Arc<dyn WriteGate>>,
    /// What is read from each managed group (see [`read::group_attributes`]).
    group_attrs: Vec<String>,
    /// The configuration naming context (the schema's parent).
    config_nc: String,
    /// Whether the forest expires TTL links by itself, once read.
    ttl_links: Option<bool>,
    /// Every anchored group of the domain, as last listed, and whether a reconcile holds that listing (see
    /// [`Directory::hold_listing`]).
    anchored: Option<read::Listing>,
    listing_held: bool,
}

impl Directory {
    /// Connects, upgrades to TLS, binds and reads the rootDSE and schema facts.
    pub async fn connect(config: &DirectoryConfig, password: &Secret) -> Result<Directory, DirectoryError> {
        // The scheme comes from the parsed URL, never from the raw text: `LDAP://` or a leading space must not
        // read as "no StartTLS".
        let parsed = url::Url::parse(&config.url)
            .map_err(|e| DirectoryError::Connect { url: config.url.clone(), cause: format!("not a URL: {e}") })?;
        let starttls = match parsed.scheme() {
            "ldap" => true,
            "ldaps" => false,
            other => {
                return Err(DirectoryError::Connect {
                    url: config.url.clone(),
                    cause: format!("scheme {other}:// is neither ldaps nor ldap"),
                });
            }
        };
        let url = parsed.to_string();
        // A bad ca_file is named before any traffic, whether or not the DC can be reached.
        let tls = Arc::new(tls_config(config)?);
        let started = tokio::time::Instant::now();
        let socket = open_socket(&parsed, starttls, config.timeout)
            .await
            .map_err(|cause| DirectoryError::Connect { url: url.clone(), cause })?;
        // One timeout for the whole connect: TCP, then StartTLS and the TLS handshake in what is left of it.
        let left = config.timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
        let settings = LdapConnSettings::new()
            .set_std_stream(ldap3::StdStream::Tcp(socket))
            .set_conn_timeout(left)
            .set_config(tls)
            .set_starttls(starttls);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &url).await.map_err(|e| match e {
            // On an ldap:// URL, the only operation before the bind is the StartTLS request.
            LdapError::LdapResult { .. } if starttls => {
                DirectoryError::StartTls { url: url.clone(), cause: innermost(&e) }
            }
            e => connect_error(&url, e),
        })?;
        ldap3::drive!(conn);
        ldap.with_timeout(config.timeout);
        // The last line of defence for the password: whatever the URL said, no bind leaves without TLS.
        match ldap.get_peer_certificate().await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                return Err(DirectoryError::NoTls { url });
            }
        }
        let bind = ldap.simple_bind(&config.bind_dn, password.expose()).await.map_err(|e| connect_error(&url, e))?;
        if bind.rc != 0 {
            return Err(DirectoryError::Bind {
                dn: config.bind_dn.clone(),
                code: bind.rc,
                message: describe_rc(bind.rc, &bind.text),
            });
        }
        let mut directory = Directory {
            ldap,
            timeout: config.timeout,
            base_dn: String::new(),
            schema: SchemaSupport::default(),
            domain_sid: None,
            gate: None,
            group_attrs: read::group_attributes(&[]),
            config_nc: String::new(),
            ttl_links: None,
            anchored: None,
            listing_held: false,
        };
        let (base_dn, schema_dn) = directory.root_dse().await?;
        directory.schema = directory.schema_support(&schema_dn).await?;
        directory.config_nc = crate::dn::parent(&schema_dn).unwrap_or_default();
        directory.base_dn = base_dn;
        Ok(directory)
    }

    /// Reads these attributes of every managed group too: those the tenant's transforms may write, so that
    /// what they wrote is compared rather than written again, and a value they clear is cleared.
    pub fn also_read(&mut self, attributes: &[String]) {
        self.group_attrs = read::group_attributes(attributes);
    }

    /// Makes every later write pass `gate` first.
    pub fn set_gate(&mut self, gate: Arc<dyn WriteGate>) {
        self.gate = Some(gate);
    }

    /// While held, the holder cannot release the lease: taken before a write's fence check, given back once
    /// the DC has answered it.
    async fn write_permit(&self) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
        match &self.gate {
            Some(gate) => Some(gate.writes().read_owned().await),
            None => None,
        }
    }

    /// Fails when a fence is set and no longer permits writes.
    fn check_fence(&self) -> Result<(), DirectoryError> {
        self.gate.as_ref().map_or(Ok(()), |gate| gate.check())
    }

    /// Ends the session politely.
    pub async fn close(mut self) {
        let _ = self.ldap.unbind().await;
    }

    async fn root_dse(&mut self) -> Result<(String, String), DirectoryError> {
        let entry = self
            .search_one("", Scope::Base, "(objectClass=*)", &["defaultNamingContext", "schemaNamingContext"])
            .await?
            .ok_or(DirectoryError::RootDse("entry"))?;
        let get = |name: &'static str| {
            entry.attrs.get(name).and_then(|v| v.first()).cloned().ok_or(DirectoryError::RootDse(name))
        };
        Ok((get("defaultNamingContext")?, get("schemaNamingContext")?))
    }

    async fn schema_support(&mut self, schema_dn: &str) -> Result<SchemaSupport, DirectoryError> {
        let names: String =
            attributes::schema_optional().map(|name| format!("(lDAPDisplayName={})", ldap_escape(name))).collect();
        let filter = format!("(|{names})");
        let entries = self.search(schema_dn, Scope::OneLevel, &filter, &["lDAPDisplayName"]).await?;
        let found = entries.iter().filter_map(|e| e.attrs.get("lDAPDisplayName")).flatten();
        Ok(SchemaSupport::with(found.map(String::as_str)))
    }

    /// The DC this connection reached (its rootDSE `dsServiceName`) and its highestCommittedUSN. USNs are
    /// the DC's own: they compare only with USNs of the same DC.
    pub async fn usn_mark(&mut self) -> Result<(String, u64), DirectoryError> {
        let entry =
            self.search_one("", Scope::Base, "(objectClass=*)", &["dsServiceName", "highestCommittedUSN"]).await?;
        let value = |name: &str| entry.as_ref().and_then(|e| e.attrs.get(name)?.first().cloned());
        let server = value("dsServiceName").ok_or(DirectoryError::RootDse("dsServiceName"))?;
        let usn = value("highestCommittedUSN")
            .and_then(|v| v.parse().ok())
            .ok_or(DirectoryError::RootDse("highestCommittedUSN"))?;
        Ok((server, usn))
    }

    /// The optional features enabled forest-wide: the Partitions container's `msDS-EnabledFeature` DNs.
    pub async fn enabled_features(&mut self) -> Result<Vec<String>, DirectoryError> {
        let partitions = format!("CN=Partitions,{}", self.config_nc);
        let entry = self.search_one(&partitions, Scope::Base, "(objectClass=*)", &["msDS-EnabledFeature"]).await?;
        Ok(entry.and_then(|mut e| e.attrs.remove("msDS-EnabledFeature")).unwrap_or_default())
    }

    /// The rootDSE's highestCommittedUSN: every real write moves it.
    pub async fn highest_committed_usn(&mut self) -> Result<u64, DirectoryError> {
        let entry = self.search_one("", Scope::Base, "(objectClass=*)", &["highestCommittedUSN"]).await?;
        entry
            .and_then(|e| e.attrs.get("highestCommittedUSN")?.first()?.parse().ok())
            .ok_or(DirectoryError::RootDse("highestCommittedUSN"))
    }

    async fn search(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<SearchEntry>, DirectoryError> {
        let (entries, result) = self
            .ldap
            .with_timeout(self.timeout)
            .search(base, scope, filter, attrs.to_vec())
            .await
            .map_err(|e| DirectoryError::from_ldap("search", e))?
            .success()
            .map_err(|e| DirectoryError::from_ldap("search", e))?;
        let _ = result;
        Ok(entries.into_iter().map(SearchEntry::construct).collect())
    }

    async fn search_one(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Option<SearchEntry>, DirectoryError> {
        Ok(self.search(base, scope, filter, attrs).await?.into_iter().next())
    }
}

fn tls_config(config: &DirectoryConfig) -> Result<rustls::ClientConfig, DirectoryError> {
    let mut roots = RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let ca_err = |cause: String| DirectoryError::CaFile { path: path.display().to_string(), cause };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_err(format!("not a PEM certificate bundle: {e}")))?;
            if certs.is_empty() {
                return Err(ca_err("it holds no certificate".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_err(format!("unusable certificate: {e}")))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DirectoryError::Tls { url: config.url.clone(), cause: e.to_string() })?;
    let mut tls = builder.with_root_certificates(roots).with_no_client_auth();
    if config.insecure_skip_verify {
        tracing::warn!(
            url = %config.url,
            "INSECURE: insecure_skip_verify is set, so the DC's certificate is NOT verified; anyone on the network path can impersonate the DC and read the bind password. Use it in a lab only."
        );
        tls.dangerous().set_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)));
    }
    Ok(tls)
}

/// The verifier behind `insecure_skip_verify`: accepts any certificate, but still checks that the handshake
/// is signed by the key in it, so the session keys are not trivially forged.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens the TCP connection to the DC with Nagle's algorithm off. Several requests are in flight at once, and
/// with it on, each small request waits for the acknowledgement of the one before it, which a DC may delay by
/// up to 40 ms. OpenLDAP's tools and Samba turn it off too.
async fn open_socket(url: &url::Url, starttls: bool, timeout: Duration) -> Result<std::net::TcpStream, String> {
    let host = url.host_str().filter(|h| !h.is_empty()).unwrap_or("localhost");
    let port = url.port().unwrap_or(if starttls { 389 } else { 636 });
    let address = format!("{host}:{port}");
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address))
        .await
        .map_err(|_| format!("no connection within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| format!("cannot turn off Nagle's algorithm: {e}"))?;
    stream.into_std().map_err(|e| e.to_string())
}

/// Sorts a connection failure into "cannot reach" and "TLS refused", with the innermost cause.
fn connect_error(url: &str, error: LdapError) -> DirectoryError {
    let cause = innermost(&error);
    let tls = matches!(&error, LdapError::Io { source } if source.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()))
        || cause.contains("certificate")
        || cause.contains("handshake")
        || cause.contains("Tls");
    if tls {
        DirectoryError::Tls { url: url.to_string(), cause }
    } else {
        DirectoryError::Connect { url: url.to_string(), cause }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_connection_to_the_dc_has_nagles_algorithm_off() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = url::Url::parse(&format!("ldaps://127.0.0.1:{}", listener.local_addr().unwrap().port())).unwrap();
        let socket = open_socket(&url, false, Duration::from_secs(5)).await.unwrap();
        assert!(socket.nodelay().unwrap(), "several requests in flight must not wait on each other's acknowledgements");
    }
}
