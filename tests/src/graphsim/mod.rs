//! An in-process Microsoft Graph simulator for the writeback agent's tests.
//!
//! It serves, on a loopback port, the parts of Entra ID and Graph the agent
//! uses: the client-credentials token endpoint, `groups/delta` and
//! `users/delta` (with paging, state tokens, `$select`, split member lists and
//! `@removed` entries) and `directory/deletedItems/{id}`. Tests change the
//! tenant through [`Simulator`]'s methods (reachable from a [`GraphSim`]),
//! queue [`Fault`]s, and read back the request log. The same operations are
//! exposed over HTTP under `/_sim/` for the `graph-sim` binary.

mod control;
mod delta;
mod faults;
mod graph;
mod model;
mod oauth;
mod pim;
mod rounds;
mod routes;
mod tenant;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::oneshot;

pub use faults::{Endpoint, Fault, FaultKind, FaultTarget};
pub use model::{
    DEVICE_TYPE, Fixture, GROUP_TYPE, Group, GroupPatch, MEMBER_TYPES, MemberRef, ORG_CONTACT_TYPE,
    SERVICE_PRINCIPAL_TYPE, USER_TYPE, User, UserPatch, WritebackConfiguration,
};
pub use oauth::TokenRequest;
pub use pim::PimInstance;
pub use routes::RequestRecord;
pub use tenant::{DeleteOutcome, TenantError};

use oauth::AccessTokens;
use rounds::Rounds;
use tenant::Tenant;

/// How the simulated tenant and its Graph behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Directory (tenant) id the token endpoint accepts.
    pub tenant_id: String,
    /// Application (client) id the token endpoint accepts.
    pub client_id: String,
    /// Client secret the token endpoint accepts.
    pub client_secret: String,
    /// PEM certificate registered on the app for `client_assertion` logins
    /// (RS256 JWTs naming it by `x5t#S256` or `x5t`); None refuses them.
    pub client_cert_pem: Option<String>,
    /// `expires_in` of issued tokens.
    pub token_lifetime_secs: u64,
    /// Entries per delta page.
    pub page_size: usize,
    /// Member changes one group entry carries before the group is repeated.
    pub members_per_entry: usize,
    /// Shuffle each round's entries with this seed (mixed with the round
    /// number), so that a group's entries land on different pages.
    pub shuffle_seed: Option<u64>,
    /// Later rounds carry only changed properties, as if every request
    /// said `Prefer: return=minimal`. Off by default: as in Graph, an updated
    /// object then comes with every selected property that is set, unless
    /// the request itself prefers `return=minimal`.
    pub changed_only: bool,
    /// Initial rounds also list soft-deleted objects as `@removed`, which the
    /// delta overview says can happen.
    pub initial_round_reports_deleted: bool,
    /// Let security groups go to deleted items. Entra deletes them for good;
    /// only Microsoft 365 groups are restorable.
    pub security_groups_restorable: bool,
    /// Group delta leaves `writebackConfiguration` out of its entries even when it is selected. No published
    /// source says that beta delta returns it; this is the world in which it does not, where only a GET of
    /// the group (or a `$batch` of them) tells.
    pub delta_omits_writeback: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            tenant_id: "00000000-0000-4000-8000-00000000a001".to_owned(),
            client_id: "00000000-0000-4000-8000-00000000c001".to_owned(),
            client_secret: "sim-client-secret".to_owned(),
            client_cert_pem: None,
            token_lifetime_secs: 3599,
            page_size: 4,
            members_per_entry: 3,
            shuffle_seed: None,
            changed_only: false,
            initial_round_reports_deleted: false,
            security_groups_restorable: false,
            delta_omits_writeback: false,
        }
    }
}

/// Mutable state behind the simulator's lock.
#[derive(Debug)]
pub(crate) struct SimState {
    pub(crate) tenant: Tenant,
    pub(crate) rounds: Rounds,
    pub(crate) access_tokens: AccessTokens,
    faults: VecDeque<Fault>,
    requests: Vec<RequestRecord>,
    /// Added to the real clock, so tests can expire tokens without sleeping.
    clock_offset: Duration,
    /// Raw JSON that replaces properties in every delta entry of an object, by id: how a test makes Graph
    /// send an entry the agent cannot parse.
    pub(crate) garbled: HashMap<String, serde_json::Map<String, serde_json::Value>>,
    /// The tenant's `NewUnifiedGroupWritebackDefault`; `None`: the tenant never created a `Group.Unified`
    /// setting, as a new tenant has none.
    pub(crate) unified_writeback_default: Option<bool>,
    /// PIM for Groups assignment schedule instances, ended ones too (they are not listed).
    pub(crate) pim: Vec<pim::PimInstance>,
    /// Schedule requests fail with 403.
    pub(crate) pim_denied: bool,
}

impl SimState {
    /// The simulator's notion of now.
    pub(crate) fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }
}

/// The simulated tenant and its protocol state. Every method is safe to call
/// while the server is answering requests.
#[derive(Debug)]
pub struct Simulator {
    config: SimConfig,
    base_url: String,
    state: Mutex<SimState>,
    started: Instant,
}

impl Simulator {
    /// Real milliseconds since the simulator started (the request log's clock).
    pub(crate) fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn new(config: SimConfig, base_url: String) -> Self {
        let state = SimState {
            tenant: Tenant::new(config.security_groups_restorable),
            rounds: Rounds::default(),
            access_tokens: AccessTokens::default(),
            faults: VecDeque::new(),
            requests: Vec::new(),
            clock_offset: Duration::ZERO,
            garbled: HashMap::new(),
            unified_writeback_default: None,
            pim: Vec::new(),
            pim_denied: false,
        };
        Self { started: Instant::now(), config, base_url, state: Mutex::new(state) }
    }

    // A panicking test must not wedge every later request, so a poisoned
    // lock is taken over rather than propagated.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// `http://127.0.0.1:PORT`: both the login URL and the Graph URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Creates a group (with its `members`). Returns the change sequence number.
    pub fn add_group(&self, group: Group) -> Result<u64, TenantError> {
        self.lock().tenant.add_group(group)
    }

    /// Sets some properties of a group.
    pub fn update_group(&self, id: &str, patch: GroupPatch) -> Result<u64, TenantError> {
        self.lock().tenant.update_group(id, patch)
    }

    /// Adds members to a group; existing members are skipped.
    pub fn add_members(&self, group_id: &str, members: &[MemberRef]) -> Result<u64, TenantError> {
        self.lock().tenant.add_members(group_id, members)
    }

    /// Removes members from a group; fails if one is not a member.
    pub fn remove_members<S: AsRef<str>>(&self, group_id: &str, member_ids: &[S]) -> Result<u64, TenantError> {
        let ids: Vec<&str> = member_ids.iter().map(AsRef::as_ref).collect();
        self.lock().tenant.remove_members(group_id, &ids)
    }

    /// Deletes a group the way Entra does: Microsoft 365 groups go to deleted
    /// items (delta says `changed`); security groups are gone for good (delta
    /// says `deleted`) unless `security_groups_restorable` is set.
    pub fn soft_delete_group(&self, id: &str) -> Result<DeleteOutcome, TenantError> {
        self.lock().tenant.soft_delete_group(id)
    }

    /// Restores a group from deleted items, members included.
    pub fn restore_group(&self, id: &str) -> Result<u64, TenantError> {
        self.lock().tenant.restore_group(id)
    }

    /// Deletes a live or soft-deleted group permanently.
    pub fn hard_delete_group(&self, id: &str) -> Result<u64, TenantError> {
        self.lock().tenant.hard_delete_group(id)
    }

    /// Creates a user.
    pub fn add_user(&self, user: User) -> Result<u64, TenantError> {
        self.lock().tenant.add_user(user)
    }

    /// Sets some properties of a user.
    pub fn update_user(&self, id: &str, patch: UserPatch) -> Result<u64, TenantError> {
        self.lock().tenant.update_user(id, patch)
    }

    /// Deletes a user (to deleted items, or for good when `hard`). As in
    /// Entra ID, a soft-deleted user keeps its memberships, and group delta
    /// says nothing of them; a hard delete removes the user from every group.
    pub fn delete_user(&self, id: &str, hard: bool) -> Result<u64, TenantError> {
        self.lock().tenant.delete_user(id, hard)
    }

    /// Restores a user from deleted items, with the memberships it kept.
    pub fn restore_user(&self, id: &str) -> Result<u64, TenantError> {
        self.lock().tenant.restore_user(id)
    }

    /// Adds a fixture's users, then its groups.
    pub fn load_fixture(&self, fixture: Fixture) -> Result<(), TenantError> {
        let mut state = self.lock();
        for user in fixture.users {
            state.tenant.add_user(user)?;
        }
        for group in fixture.groups {
            state.tenant.add_group(group)?;
        }
        Ok(())
    }

    /// A live group.
    pub fn group(&self, id: &str) -> Option<Group> {
        self.lock().tenant.group(id).cloned()
    }

    /// A group in deleted items.
    pub fn deleted_group(&self, id: &str) -> Option<Group> {
        self.lock().tenant.deleted_group(id).map(|d| d.object.clone())
    }

    /// Every live group.
    pub fn groups(&self) -> Vec<Group> {
        self.lock().tenant.groups().cloned().collect()
    }

    /// A live user.
    pub fn user(&self, id: &str) -> Option<User> {
        self.lock().tenant.user(id).cloned()
    }

    /// Every live user.
    pub fn users(&self) -> Vec<User> {
        self.lock().tenant.users().cloned().collect()
    }

    /// Sequence number of the latest tenant change.
    pub fn seq(&self) -> u64 {
        self.lock().tenant.seq()
    }

    /// From now on, every delta entry of object `id` carries `property` as this raw JSON value (for example
    /// `proxyAddresses: [42]`), whatever the object holds. `None` stops it.
    pub fn garble(&self, id: &str, property: &str, value: Option<serde_json::Value>) {
        let mut state = self.lock();
        let properties = state.garbled.entry(id.to_string()).or_default();
        match value {
            Some(value) => properties.insert(property.to_string(), value),
            None => properties.remove(property),
        };
    }

    /// Sets the tenant's `NewUnifiedGroupWritebackDefault` in its `Group.Unified` setting; `None` removes the
    /// setting object, leaving Microsoft's default (true).
    pub fn set_unified_writeback_default(&self, value: Option<bool>) {
        self.lock().unified_writeback_default = value;
    }

    /// Queues a fault for the next request it targets. Faults apply in the
    /// order queued, one request each.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    /// Faults still waiting for a request.
    pub fn pending_faults(&self) -> usize {
        self.lock().faults.len()
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Takes the first queued fault that applies to a request to `endpoint`, which follows a deltaLink
    /// when `by_delta_link`.
    pub(crate) fn take_fault(&self, endpoint: Endpoint, by_delta_link: bool) -> Option<Fault> {
        let mut state = self.lock();
        let index = state.faults.iter().position(|f| f.hits(endpoint, by_delta_link))?;
        state.faults.remove(index)
    }

    /// Every access token issued so far is now rejected with 401.
    pub fn revoke_tokens(&self) {
        self.lock().access_tokens.revoke_all();
    }

    /// Every deltaLink and nextLink issued so far now answers 410 Gone.
    pub fn expire_delta_tokens(&self) {
        self.lock().rounds.expire_all();
    }

    /// Moves the simulator's clock forward, e.g. past token expiry.
    pub fn advance_clock(&self, by: Duration) {
        self.lock().clock_offset += by;
    }

    /// Issues an access token directly, as the token endpoint would.
    pub fn issue_token(&self) -> String {
        let lifetime = Duration::from_secs(self.config.token_lifetime_secs);
        let mut state = self.lock();
        let now = state.now();
        state.access_tokens.issue(now, lifetime)
    }

    /// Every request served so far (except `/_sim/` ones), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    /// How many logged requests have a path starting with `path_prefix`.
    pub fn request_count(&self, path_prefix: &str) -> usize {
        self.lock().requests.iter().filter(|r| r.path.starts_with(path_prefix)).count()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    pub(crate) fn log_request(&self, record: RequestRecord) {
        self.lock().requests.push(record);
    }
}

/// A running simulator: serves HTTP on a loopback port until dropped.
/// Dereferences to [`Simulator`] for tenant changes, faults and the log.
#[derive(Debug)]
pub struct GraphSim {
    simulator: Arc<Simulator>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl GraphSim {
    /// Starts on `127.0.0.1` with an ephemeral port. Must be called inside a
    /// tokio runtime; the server runs as a task of that runtime.
    pub fn start(config: SimConfig) -> anyhow::Result<Self> {
        Self::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// Starts on the given loopback address; any other address is refused,
    /// since the simulator accepts a fixed secret and must not be reachable.
    pub fn start_on(config: SimConfig, addr: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(addr.ip().is_loopback(), "graph simulator must listen on loopback, not {addr}");
        let runtime = tokio::runtime::Handle::try_current().context("GraphSim::start needs a tokio runtime")?;
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let addr = listener.local_addr()?;
        let simulator = Arc::new(Simulator::new(config, format!("http://{addr}")));
        let app = routes::router(Arc::clone(&simulator));
        let (shutdown, stopped) = oneshot::channel::<()>();
        runtime.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                // Either an explicit stop or the handle being dropped ends it.
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::warn!(%error, "graph simulator stopped with an error");
            }
        });
        Ok(Self { simulator, addr, shutdown: Some(shutdown) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A shared handle to the simulator, e.g. to move into another task.
    pub fn simulator(&self) -> Arc<Simulator> {
        Arc::clone(&self.simulator)
    }
}

impl Deref for GraphSim {
    type Target = Simulator;

    fn deref(&self) -> &Simulator {
        &self.simulator
    }
}

impl Drop for GraphSim {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
