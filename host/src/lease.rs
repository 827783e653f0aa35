//! The writer lease: when several agents serve a tenant, only the holder of the tenant's lease writes to the
//! directory; the others follow Graph and plan, like staging servers.
//!
//! The lease is one directory object per tenant. Its single-valued `adminDisplayName` holds
//! `holder=<agent>;epoch=<n>;expires=<DC seconds>;token=<random>;released=<agent>`, and every take, renewal
//! and release is one modify that deletes the old value and adds the new one, so it fails when another agent
//! changed the value first (a compare-and-swap). Expiry is in the DC's clock, so agents on different hosts
//! compare one clock. The holder fences itself on its own monotonic clock: it writes only until
//! `renewal start + ttl − margin`, checked before every directory write, and it re-reads the lease before
//! every batch of writes. Agents also keep a presence value in the object; from those each agent knows how
//! many agents are alive and takes at most its fair share of tenants.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{DirectoryConfig, TenantConfig};
use crate::directory::{Directory, DirectoryError, GroupDirectory, LeaseObject, WriteGate};

/// The lease value as stored in the lease object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseValue {
    /// The agent that holds the lease; empty when it is free.
    pub holder: String,
    /// Grows by one at every change of holder.
    pub epoch: u64,
    /// When the lease ends, in the DC's seconds since the Unix epoch.
    pub expires: u64,
    /// Random, so that no two values ever compare equal on the DC, which ignores case and spacing.
    pub token: String,
    /// The agent that released the lease, which lets others take it first.
    pub released_by: String,
    /// The process that wrote the value (a random value per process), so that two processes with one agent
    /// id are never taken for one holder.
    pub nonce: String,
    /// A release made by the holding process itself after it stopped writing: free at once.
    pub clean: bool,
    /// Another process (`lease release`) asked the holder to release the lease at its next renewal.
    pub requested: bool,
}

impl LeaseValue {
    /// Parses a stored value; `None` when it is not one of ours.
    pub fn parse(text: &str) -> Option<LeaseValue> {
        let mut value = LeaseValue::default();
        for field in text.split(';') {
            let (key, v) = field.split_once('=')?;
            match key {
                "holder" => value.holder = v.to_string(),
                "epoch" => value.epoch = v.parse().ok()?,
                "expires" => value.expires = v.parse().ok()?,
                "token" => value.token = v.to_string(),
                "released" => value.released_by = v.to_string(),
                "nonce" => value.nonce = v.to_string(),
                "clean" => value.clean = flag(v)?,
                "requested" => value.requested = flag(v)?,
                _ => return None,
            }
        }
        Some(value)
    }

    /// The stored form.
    pub fn render(&self) -> String {
        format!(
            "holder={};epoch={};expires={};token={};released={};nonce={};clean={};requested={}",
            self.holder,
            self.epoch,
            self.expires,
            self.token,
            self.released_by,
            self.nonce,
            u8::from(self.clean),
            u8::from(self.requested)
        )
    }

    /// Whether the process `nonce` of agent `agent` wrote this value as the holder.
    pub fn held_by(&self, agent: &str, nonce: &str) -> bool {
        !self.holder.is_empty() && self.holder == agent && self.nonce == nonce
    }

    /// Whether no agent holds the lease at DC time `now`.
    pub fn is_free(&self, now: u64) -> bool {
        self.holder.is_empty() || self.expires <= now
    }
}

fn flag(text: &str) -> Option<bool> {
    match text {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// Whether this agent writes for a tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Follows Graph and plans, writes nothing.
    #[default]
    Standby,
    /// Holds the lease and writes.
    Active,
}

/// What `status` shows about a tenant's lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    pub role: Role,
    /// Who held the lease at the last look; empty when free.
    pub holder: String,
    pub epoch: u64,
    /// DC seconds since the Unix epoch.
    pub expires: u64,
    /// Set while another running process uses this agent's id: this agent then writes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<String>,
}

/// The holder's permission to write: until a monotonic deadline, for one epoch.
#[derive(Debug, Clone)]
pub struct Fence {
    tenant: Arc<str>,
    agent: Arc<str>,
    nonce: Arc<str>,
    dn: Arc<str>,
    held: Arc<Mutex<Option<Held>>>,
    /// Read-held by each write from its fence check until the DC answers it; a release takes it for writing,
    /// so that no write checked before the release lands after it.
    writes: Arc<tokio::sync::RwLock<()>>,
}

impl WriteGate for Fence {
    /// Fails unless this agent may write now. Called before every directory write.
    fn check(&self) -> Result<(), DirectoryError> {
        if self.permits() { Ok(()) } else { Err(DirectoryError::LeaseLost { tenant: self.tenant.to_string() }) }
    }

    fn writes(&self) -> Arc<tokio::sync::RwLock<()>> {
        self.writes.clone()
    }
}

#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: u64,
    deadline: Instant,
}

impl Fence {
    fn new(tenant: &str, agent: &str, nonce: &str, dn: &str) -> Fence {
        Fence {
            tenant: tenant.into(),
            agent: agent.into(),
            nonce: nonce.into(),
            dn: dn.into(),
            held: Arc::new(Mutex::new(None)),
            writes: Arc::new(tokio::sync::RwLock::new(())),
        }
    }

    /// Waits until no write that passed its fence check is still waiting for the DC.
    async fn drain(&self) {
        let _quiet = self.writes.write().await;
    }

    fn held(&self) -> Option<Held> {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this agent may write now.
    pub fn permits(&self) -> bool {
        self.held().is_some_and(|h| Instant::now() < h.deadline)
    }

    /// Re-reads the lease and fails (revoking the fence) unless this process still holds it in the same epoch.
    /// Called before every batch of writes, so that a release or a takeover is seen within one batch.
    pub async fn confirm<D: GroupDirectory>(&self, directory: &mut D) -> Result<(), DirectoryError> {
        self.check()?;
        let object = directory.read_lease(&self.dn).await?;
        let current = object.value.as_deref().and_then(LeaseValue::parse);
        let ours = match (current, self.held()) {
            (Some(value), Some(held)) => {
                value.held_by(&self.agent, &self.nonce) && value.epoch == held.epoch && !value.is_free(object.dc_time)
            }
            _ => false,
        };
        if !ours {
            self.revoke();
            return Err(DirectoryError::LeaseLost { tenant: self.tenant.to_string() });
        }
        Ok(())
    }

    fn hold(&self, epoch: u64, deadline: Instant) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(Held { epoch, deadline });
    }

    /// Stops writing at once. Returns whether this agent held the lease until now, even past its deadline
    /// (a loss, unless it released the lease itself).
    fn revoke(&self) -> bool {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).take().is_some()
    }
}

/// How an agent decides which free leases to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The daemon: take at most a fair share of the tenants, hand surplus leases to agents that have fewer.
    Share,
    /// A one-shot sync: take every free lease it needs.
    Claim,
}

/// One tenant's lease, as this agent sees and holds it.
pub struct TenantLease {
    tenant: String,
    agent: String,
    /// This process's random value: another process with the same agent id has another.
    nonce: String,
    /// Whether this process keeps a presence value (the daemon), which counts it in the fair share and lets
    /// it see another process running with its id. A one-shot run or `lease release` keeps none.
    announce: bool,
    dn: String,
    directory: DirectoryConfig,
    ttl: Duration,
    /// The holder stops writing this long before its lease ends: the DC's clock has one-second steps, and a
    /// request takes time to arrive.
    margin: Duration,
    pub renew_every: Duration,
    fence: Fence,
    connection: tokio::sync::Mutex<Option<Directory>>,
    /// This agent's presence value as last written.
    presence: Mutex<Option<String>>,
    view: Mutex<LeaseView>,
    /// How many times this agent took the lease from another holder or from free.
    takes: AtomicU64,
    /// Set when this agent gave the lease up on purpose, so its end is not reported as a loss.
    releasing: AtomicBool,
    /// Why the last look or change failed, until one succeeds.
    last_error: Mutex<Option<String>>,
    /// The lease value as first seen unchanged, and when: a lease that looks free is taken only after it
    /// has stayed unchanged for a full ttl on this process's monotonic clock.
    watch: Mutex<Option<(Option<String>, Instant)>>,
    /// The DC's time at this process's first look: a presence with this agent's id refreshed after it is
    /// another running process.
    first_look: std::sync::OnceLock<u64>,
    /// Why this process writes nothing because another running process uses its agent id.
    duplicate: Mutex<Option<String>>,
}

/// What one look at a lease object found.
struct Observation {
    started: Instant,
    object: LeaseObject,
    value: Option<LeaseValue>,
    /// Agents whose presence is fresh.
    live: BTreeSet<String>,
    /// How long this process has seen the lease value unchanged.
    unchanged_for: Duration,
    /// Another running process with this agent's id, when one refreshed its presence since this one started.
    rival: Option<String>,
}

/// What to do with one lease after a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Take,
    Renew,
    Release,
    /// Ask the holder, another process of this agent, to release at its next renewal (`lease release`).
    Request,
    Wait,
}

impl TenantLease {
    fn new(agent: &str, nonce: &str, announce: bool, tenant: &TenantConfig) -> Option<TenantLease> {
        let config = tenant.lease.as_ref()?;
        let dn = tenant.lease_dn()?;
        Some(TenantLease {
            tenant: tenant.name.clone(),
            agent: agent.to_string(),
            nonce: nonce.to_string(),
            announce,
            fence: Fence::new(&tenant.name, agent, nonce, &dn),
            dn,
            directory: tenant.directory.clone(),
            ttl: config.ttl,
            margin: (config.ttl / 5).max(Duration::from_secs(2)),
            renew_every: config.renew_every,
            connection: tokio::sync::Mutex::new(None),
            presence: Mutex::new(None),
            view: Mutex::new(LeaseView::default()),
            takes: AtomicU64::new(0),
            releasing: AtomicBool::new(false),
            last_error: Mutex::new(None),
            watch: Mutex::new(None),
            first_look: std::sync::OnceLock::new(),
            duplicate: Mutex::new(None),
        })
    }

    /// The tenant's name.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The fence the tenant's writes check.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// This agent's role now.
    pub fn role(&self) -> Role {
        if self.fence.permits() { Role::Active } else { Role::Standby }
    }

    /// The lease as last seen, with this agent's role now.
    pub fn view(&self) -> LeaseView {
        let duplicate = self.duplicate.lock().unwrap_or_else(PoisonError::into_inner).clone();
        LeaseView { role: self.role(), duplicate, ..self.view.lock().unwrap_or_else(PoisonError::into_inner).clone() }
    }

    /// Another running process uses this agent's id: write nothing, and say why until it is gone.
    fn set_duplicate(&self, rival: Option<String>) {
        if rival.is_some() {
            self.fence.revoke();
        }
        let mut duplicate = self.duplicate.lock().unwrap_or_else(PoisonError::into_inner);
        match (&*duplicate, &rival) {
            (None, Some(why)) => tracing::error!(tenant = %self.tenant, "{why}"),
            (Some(_), None) => tracing::info!(tenant = %self.tenant, "no other process uses this agent's id any more"),
            _ => {}
        }
        crate::metrics::global().record_duplicate(&self.tenant, rival.is_some());
        *duplicate = rival;
    }

    /// Why the last look at the lease or change to it failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn note(&self, result: Result<(), &DirectoryError>) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = result.err().map(ToString::to_string);
    }

    /// How many times this agent has taken the lease.
    pub fn takes(&self) -> u64 {
        self.takes.load(Ordering::SeqCst)
    }

    fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs().max(1)
    }

    async fn with_directory<T>(
        &self,
        work: impl AsyncFnOnce(&mut Directory) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        let mut connection = self.connection.lock().await;
        let not_connected =
            || DirectoryError::Connect { url: self.directory.url.clone(), cause: "not connected".into() };
        if connection.is_none() {
            let password = self
                .directory
                .password(&self.tenant)
                .map_err(|e| DirectoryError::Connect { url: self.directory.url.clone(), cause: e.to_string() })?;
            *connection = Some(Directory::connect(&self.directory, &password).await?);
        }
        let directory = connection.as_mut().ok_or_else(not_connected)?;
        let result = work(directory).await;
        if result.as_ref().is_err_and(DirectoryError::is_transient) {
            // A dropped or restarted DC: connect afresh next time.
            *connection = None;
        }
        result
    }

    /// Reads the lease object and refreshes this agent's presence in it.
    /// `announce`: refresh this process's presence and look for rivals (a daemon's rounds). A release does
    /// not: a process on its way out must not look like a rival to the one replacing it.
    async fn observe(&self, announce: bool) -> Result<Observation, DirectoryError> {
        // Connected first: the fence counts from the read, not from a TLS handshake and bind that a loaded DC
        // can make take seconds, which would leave a fresh holder a lapsed fence. (A connection found dead by
        // the read is made again inside it, after `started`: the fence only gets shorter, never longer.)
        self.with_directory(async |_| Ok(())).await?;
        let started = Instant::now();
        let object = self.with_directory(async |d| d.read_lease(&self.dn).await).await?;
        // The value was written before this read ended, so a holder's deadline ends within one ttl of now.
        let unchanged_for = self.unchanged_for(&object.value, Instant::now());
        let mut rival = None;
        if announce && self.announce {
            self.refresh_presence(&object).await?;
            let since = *self.first_look.get_or_init(|| object.dc_time);
            rival = rival_process(&object.presence, &self.agent, &self.nonce, since, object.dc_time, self.ttl_secs());
        }
        let value = object.value.as_deref().and_then(LeaseValue::parse);
        if object.value.is_some() && value.is_none() {
            tracing::warn!(tenant = %self.tenant, dn = %self.dn, "the lease object holds a value writeback cannot read; treating the lease as free");
        }
        let live = live_agents(&object.presence, object.dc_time, self.ttl_secs());
        if let Some(value) = &value {
            let mut view = self.view.lock().unwrap_or_else(PoisonError::into_inner);
            let holder = if value.is_free(object.dc_time) { String::new() } else { value.holder.clone() };
            *view = LeaseView { role: view.role, holder, epoch: value.epoch, expires: value.expires, duplicate: None };
        }
        Ok(Observation { started, object, value, live, unchanged_for, rival })
    }

    /// How long `value` has been the lease value, as this process has watched it.
    fn unchanged_for(&self, value: &Option<String>, now: Instant) -> Duration {
        let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        match &*watch {
            Some((seen, since)) if seen == value => now.saturating_duration_since(*since),
            _ => {
                *watch = Some((value.clone(), now));
                Duration::ZERO
            }
        }
    }

    /// Replaces this agent's presence value, and drops presence values that have been stale for long.
    async fn refresh_presence(&self, object: &LeaseObject) -> Result<(), DirectoryError> {
        let own_id = |p: &str| presence_agent(p) == Some(self.agent.as_str());
        let mine: Vec<&String> =
            object.presence.iter().filter(|p| own_id(p) && presence_nonce(p) == self.nonce).collect();
        let old = self
            .presence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|o| mine.contains(&o))
            .or_else(|| mine.first().map(|p| (*p).clone()));
        let new = format!("{} {} {}", self.agent, object.dc_time, self.nonce);
        // Extra values of this process go at once; a dead earlier process of this agent after one ttl (a
        // live one is a rival, and must stay visible); other agents' values after ten.
        let stale: Vec<String> = object
            .presence
            .iter()
            .filter(|p| Some(*p) != old.as_ref())
            .filter(|p| {
                let limit = if own_id(p) { self.ttl_secs() } else { 10 * self.ttl_secs() };
                mine.contains(p) || presence_time(p).is_none_or(|t| t.saturating_add(limit) < object.dc_time)
            })
            .cloned()
            .collect();
        self.with_directory(async |d| {
            if d.swap_presence(&self.dn, old.as_deref(), &new).await? {
                *self.presence.lock().unwrap_or_else(PoisonError::into_inner) = Some(new.clone());
            }
            for value in &stale {
                // Best effort: another agent may have removed it first.
                let _ = d.remove_presence(&self.dn, value).await;
            }
            Ok(())
        })
        .await
    }

    /// Removes this process's presence value on the way out, so that the others count one agent fewer at once
    /// and a process replacing this one does not take it for a rival. Best effort: it ages out anyway.
    async fn withdraw_presence(&self) {
        let Some(value) = self.presence.lock().unwrap_or_else(PoisonError::into_inner).take() else { return };
        if let Err(e) = self.with_directory(async |d| d.remove_presence(&self.dn, &value).await).await {
            tracing::debug!(tenant = %self.tenant, "cannot remove this agent's presence: {e}");
        }
    }

    /// Carries out `action` after the look `seen`. Returns whether the lease value was changed.
    async fn act(&self, action: Action, seen: &Observation) -> Result<bool, DirectoryError> {
        let now = seen.object.dc_time;
        let old = seen.value.clone().unwrap_or_default();
        let new = match action {
            Action::Wait => {
                if seen.value.as_ref().is_some_and(|v| !v.held_by(&self.agent, &self.nonce) || v.is_free(now)) {
                    self.lost("another agent holds the lease, or it expired", seen.value.as_ref());
                }
                return Ok(false);
            }
            Action::Take | Action::Renew => LeaseValue {
                holder: self.agent.clone(),
                epoch: if action == Action::Take { old.epoch.saturating_add(1) } else { old.epoch },
                expires: now.saturating_add(self.ttl_secs()),
                token: token(),
                nonce: self.nonce.clone(),
                ..LeaseValue::default()
            },
            Action::Release => {
                // Stop writing, and let the writes already checked land, before anyone else may start: then the
                // release is clean, and free at once.
                self.releasing.store(true, Ordering::SeqCst);
                self.fence.revoke();
                self.fence.drain().await;
                LeaseValue {
                    epoch: old.epoch,
                    expires: now.saturating_add(self.ttl_secs()),
                    token: token(),
                    released_by: self.agent.clone(),
                    nonce: self.nonce.clone(),
                    clean: old.held_by(&self.agent, &self.nonce),
                    ..LeaseValue::default()
                }
            }
            // The holder keeps writing until its next renewal; it then releases cleanly.
            Action::Request => LeaseValue { token: token(), requested: true, ..old.clone() },
        };
        let rendered = new.render();
        let swapped = match self
            .with_directory(async |d| d.swap_lease(&self.dn, seen.object.value.as_deref(), &rendered).await)
            .await
        {
            Ok(swapped) => swapped,
            // The modify may have been applied before the connection dropped: look again.
            Err(e) if e.is_transient() => {
                let current = self.with_directory(async |d| d.read_lease(&self.dn).await).await?;
                current.value.as_deref() == Some(rendered.as_str())
            }
            Err(e) => return Err(e),
        };
        match (action, swapped) {
            (Action::Release, true) => {
                tracing::info!(tenant = %self.tenant, epoch = new.epoch, "released the writer lease");
            }
            (Action::Release | Action::Request, false) => {}
            (Action::Request, true) => {
                tracing::info!(tenant = %self.tenant, epoch = new.epoch, "asked the holder of the writer lease to release it");
            }
            (_, true) => {
                if action == Action::Take {
                    self.takes.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(tenant = %self.tenant, epoch = new.epoch, "took the writer lease; this agent now writes");
                }
                self.releasing.store(false, Ordering::SeqCst);
                self.fence.hold(new.epoch, seen.started + self.ttl - self.margin);
                let mut view = self.view.lock().unwrap_or_else(PoisonError::into_inner);
                *view = LeaseView {
                    role: Role::Active,
                    holder: self.agent.clone(),
                    epoch: new.epoch,
                    expires: new.expires,
                    duplicate: None,
                };
            }
            (_, false) => {
                // Look at what won, so that a `lease release` run for this agent is not reported as a loss.
                let current = self.with_directory(async |d| d.read_lease(&self.dn).await).await;
                let current = current.ok().and_then(|o| o.value.as_deref().and_then(LeaseValue::parse));
                self.lost("another agent changed the lease first", current.as_ref());
            }
        }
        Ok(swapped)
    }

    /// This agent no longer holds the lease; report it when it was not given up on purpose.
    fn lost(&self, why: &str, current: Option<&LeaseValue>) {
        let was_active = self.fence.revoke();
        let released_here = current.is_some_and(|v| v.holder.is_empty() && v.released_by == self.agent);
        let released = self.releasing.load(Ordering::SeqCst) || released_here;
        if was_active && !released {
            tracing::warn!(tenant = %self.tenant, "lost the writer lease: {why}; this agent stopped writing");
            crate::metrics::global().record_lease_lost(&self.tenant, why);
        }
    }

    /// Gives the lease up if a process of this agent holds it. This process releases it itself; another
    /// (a running daemon) is asked to, because only the holder knows when it has stopped writing. The
    /// holder may renew between the look and the swap, so the release looks again a few times.
    async fn release(&self) -> Result<Released, DirectoryError> {
        for _ in 0..5 {
            let seen = self.observe(false).await?;
            let Some(value) = seen.value.as_ref().filter(|v| v.holder == self.agent && !v.is_free(seen.object.dc_time))
            else {
                return Ok(Released::NotHeld);
            };
            let action = if value.held_by(&self.agent, &self.nonce) { Action::Release } else { Action::Request };
            // A request already pending need not be made again; a release is always made.
            if (action == Action::Request && value.requested) || self.act(action, &seen).await? {
                return Ok(if action == Action::Release { Released::Done } else { self.await_release().await? });
            }
        }
        Err(DirectoryError::LeaseBusy { tenant: self.tenant.clone() })
    }

    /// Waits up to one ttl for the holder to release the lease it was asked to release.
    async fn await_release(&self) -> Result<Released, DirectoryError> {
        let deadline = Instant::now() + self.ttl;
        loop {
            let object = self.with_directory(async |d| d.read_lease(&self.dn).await).await?;
            let value = object.value.as_deref().and_then(LeaseValue::parse);
            // Released, and perhaps taken by a standby already.
            if value.is_some_and(|v| v.holder != self.agent) {
                return Ok(Released::Done);
            }
            if Instant::now() >= deadline {
                return Ok(Released::Asked);
            }
            tokio::time::sleep(self.renew_every.min(Duration::from_secs(1))).await;
        }
    }
}

/// The agent's leases, one per tenant that has `[tenant.lease]`.
pub struct Leases {
    agent: String,
    /// This process's random value, in every lease value and presence it writes.
    nonce: String,
    mode: Mode,
    tenants: Vec<Arc<TenantLease>>,
    /// Woken when this agent's role changes for some tenant, so the daemon does not wait out its interval.
    changed: Arc<tokio::sync::Notify>,
    shutdown: Arc<tokio::sync::Notify>,
    stopping: AtomicBool,
    /// One round at a time: a release on shutdown must not race a renewal.
    round: tokio::sync::Mutex<()>,
}

impl Leases {
    /// The leases of `tenants` for agent `agent`, taken as `mode` says. Only the daemon ([`Mode::Share`])
    /// keeps a presence in the lease objects.
    pub fn new<'a>(agent: &str, tenants: impl IntoIterator<Item = &'a TenantConfig>, mode: Mode) -> Leases {
        let nonce = token();
        let announce = mode == Mode::Share;
        Leases {
            agent: agent.to_string(),
            nonce: nonce.clone(),
            mode,
            tenants: tenants
                .into_iter()
                .filter_map(|t| TenantLease::new(agent, &nonce, announce, t))
                .map(Arc::new)
                .collect(),
            changed: Arc::new(tokio::sync::Notify::new()),
            shutdown: Arc::new(tokio::sync::Notify::new()),
            stopping: AtomicBool::new(false),
            round: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether no tenant uses a lease.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The lease of `tenant`, if it has one.
    pub fn tenant(&self, tenant: &str) -> Option<Arc<TenantLease>> {
        self.tenants.iter().find(|t| t.tenant == tenant).cloned()
    }

    /// Resolves when a role changed since the last call.
    pub async fn changed(&self) {
        if self.is_empty() {
            std::future::pending::<()>().await;
        }
        self.changed.notified().await;
    }

    /// One look at every lease, then takes, renews, releases or waits on each. Returns whether a lease
    /// that looks free is still being watched before it may be taken.
    pub async fn round(&self) -> bool {
        let _round = self.round.lock().await;
        if self.stopping.load(Ordering::SeqCst) {
            return false;
        }
        let before: Vec<Role> = self.tenants.iter().map(|t| t.role()).collect();
        let mut seen = Vec::with_capacity(self.tenants.len());
        for lease in &self.tenants {
            match lease.observe(true).await {
                Ok(observation) => seen.push(Some(observation)),
                Err(e) => {
                    lease.note(Err(&e));
                    tracing::warn!(tenant = %lease.tenant, "cannot read the writer lease: {e}; this agent keeps writing only until its lease deadline");
                    seen.push(None);
                }
            }
        }
        let mut plan = Share::new(&self.agent, &self.nonce, &seen, self.mode, self.tenants.len());
        for (lease, observation) in self.tenants.iter().zip(&seen) {
            let Some(observation) = observation else { continue };
            lease.set_duplicate(observation.rival.clone());
            let action = plan.decide(observation, lease.ttl);
            let result = lease.act(action, observation).await;
            lease.note(result.as_ref().map(|_| ()));
            if let Err(e) = result {
                tracing::warn!(tenant = %lease.tenant, "writer lease {action:?} failed: {e}");
            }
        }
        for (lease, before) in self.tenants.iter().zip(before) {
            let role = lease.role();
            crate::metrics::global().record_lease_role(&lease.tenant, role == Role::Active);
            if role != before {
                self.changed.notify_one();
            }
        }
        plan.watching
    }

    /// Rounds until no lease that looks free is still being watched, for at most two ttls plus one renewal: a
    /// one-shot run takes a dead holder's lease only once it has stayed unchanged for a ttl.
    pub async fn claim(&self) {
        // A ttl from the first look, which a slow DC connection can make late, plus room for the last rounds.
        let longest = self.tenants.iter().map(|t| 2 * t.ttl + t.renew_every).max().unwrap_or_default();
        let deadline = Instant::now() + longest;
        while (self.round().await || self.lapsed()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Whether a lease this process holds has a lapsed fence: the round that took it took longer than the fence
    /// allows (a DC slowed by other work), so it must be renewed before the run may write.
    fn lapsed(&self) -> bool {
        self.tenants.iter().any(|lease| {
            let duplicate = lease.duplicate.lock().unwrap_or_else(PoisonError::into_inner).is_some();
            !duplicate && lease.role() != Role::Active && lease.view().holder == self.agent
        })
    }

    /// Runs rounds every `renew_every` (the shortest of the tenants') until [`Leases::shutdown`].
    pub async fn run(self: Arc<Self>) {
        let every = self.tenants.iter().map(|t| t.renew_every).min().unwrap_or(Duration::from_secs(15));
        while !self.stopping.load(Ordering::SeqCst) {
            tokio::select! {
                _ = tokio::time::sleep(every) => {
                    self.round().await;
                }
                _ = self.shutdown.notified() => {}
            }
        }
    }

    /// Stops the rounds and releases every lease this agent holds, so that a standby takes over at once.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.shutdown.notify_waiters();
        let _round = self.round.lock().await;
        for lease in &self.tenants {
            if lease.role() == Role::Active
                && let Err(e) = lease.release().await
            {
                tracing::warn!(tenant = %lease.tenant, "cannot release the writer lease: {e}; a standby takes over when it expires");
            }
            lease.withdraw_presence().await;
        }
    }

    /// Releases the leases this agent holds (`lease release`), returning one line per tenant.
    pub async fn release_all(&self) -> Vec<Result<String, String>> {
        let mut lines = Vec::new();
        for lease in &self.tenants {
            lines.push(match lease.release().await {
                Ok(Released::Done) => Ok(format!("tenant {}: released the writer lease; a standby takes over", lease.tenant)),
                Ok(Released::Asked) => Ok(format!(
                    "tenant {}: asked the process of this agent that holds the writer lease to release it, and it has not within one ttl; a standby takes over once the lease has stayed unchanged for a ttl",
                    lease.tenant
                )),
                Ok(Released::NotHeld) => {
                    let view = lease.view();
                    let holder = if view.holder.is_empty() { "nobody".to_string() } else { format!("agent {}", view.holder) };
                    Ok(format!("tenant {}: this agent ({}) does not hold the writer lease; {holder} does", lease.tenant, self.agent))
                }
                Err(e) => Err(format!("tenant {}: cannot release the writer lease: {e}", lease.tenant)),
            });
        }
        lines
    }
}

/// The fair-share bookkeeping of one round.
struct Share<'a> {
    agent: &'a str,
    nonce: &'a str,
    mode: Mode,
    /// Leases this agent holds (or is about to).
    mine: usize,
    /// The most leases one agent should hold.
    cap: usize,
    /// Unexpired leases per holder.
    holders: BTreeMap<String, usize>,
    live: BTreeSet<String>,
    released: bool,
    /// A lease that looks free was left for now, until it has stayed unchanged for a ttl.
    watching: bool,
}

impl<'a> Share<'a> {
    fn new(agent: &'a str, nonce: &'a str, seen: &[Option<Observation>], mode: Mode, tenants: usize) -> Share<'a> {
        let mut live: BTreeSet<String> = seen.iter().flatten().flat_map(|o| o.live.iter().cloned()).collect();
        live.insert(agent.to_string());
        let mut holders: BTreeMap<String, usize> = BTreeMap::new();
        for observation in seen.iter().flatten() {
            if let Some(value) = &observation.value
                && !value.is_free(observation.object.dc_time)
            {
                *holders.entry(value.holder.clone()).or_default() += 1;
            }
        }
        let mine = holders.get(agent).copied().unwrap_or(0);
        Share {
            agent,
            nonce,
            mode,
            mine,
            cap: tenants.div_ceil(live.len()),
            holders,
            live,
            released: false,
            watching: false,
        }
    }

    fn decide(&mut self, seen: &Observation, ttl: Duration) -> Action {
        let now = seen.object.dc_time;
        let value = seen.value.clone().unwrap_or_default();
        if seen.rival.is_some() {
            return Action::Wait;
        }
        if value.held_by(self.agent, self.nonce) && !value.is_free(now) {
            return if value.requested || self.should_hand_over() {
                self.released = true;
                self.mine = self.mine.saturating_sub(1);
                Action::Release
            } else {
                Action::Renew
            };
        }
        if !value.is_free(now) {
            return Action::Wait;
        }
        // Expired, released by another process, missing or unreadable: the last holder may still write until
        // its own deadline, which ends within one ttl of its last renewal, whatever the DC's clock says. Only
        // a clean release (the holder stopped writing first) or this process's own value is free at once. A
        // lease object that a look had to create counts as missing too: it may have been deleted under a
        // holder, and agents on two DCs may each create one.
        let own = seen.value.is_some() && value.nonce == self.nonce;
        if !(value.clean || own || seen.unchanged_for >= ttl) {
            self.watching = true;
            return Action::Wait;
        }
        // A daemon leaves a lease it released to the others for one ttl; a one-shot run takes it at once.
        if self.mode == Mode::Share && value.released_by == self.agent && now < value.expires {
            return Action::Wait;
        }
        // A lease nobody else took for a whole ttl after it ended is taken even beyond the fair share.
        let unwanted = now >= value.expires.saturating_add(ttl.as_secs().max(1));
        if self.mode == Mode::Claim || self.mine < self.cap || unwanted {
            self.mine += 1;
            Action::Take
        } else {
            Action::Wait
        }
    }

    /// A holder above its fair share hands one lease per round to a live agent below it.
    fn should_hand_over(&self) -> bool {
        self.mode == Mode::Share
            && !self.released
            && self.mine > self.cap
            && self.live.iter().any(|a| a != self.agent && self.holders.get(a).copied().unwrap_or(0) < self.cap)
    }
}

fn presence_agent(value: &str) -> Option<&str> {
    value.split_once(' ').map(|(agent, _)| agent)
}

fn presence_time(value: &str) -> Option<u64> {
    value.split(' ').nth(1).and_then(|t| t.parse().ok())
}

/// The process nonce of a presence value; empty for values written before nonces existed.
fn presence_nonce(value: &str) -> &str {
    value.split(' ').nth(2).unwrap_or("")
}

/// Another running process with agent id `agent`: a presence of that id with another nonce, refreshed after
/// this process's first look (`since`) and within one ttl of `now`. A process that died before this one
/// started refreshed nothing since, so a restart is not taken for a rival.
fn rival_process(presence: &[String], agent: &str, nonce: &str, since: u64, now: u64, ttl: u64) -> Option<String> {
    presence
        .iter()
        .find(|p| {
            presence_agent(p) == Some(agent)
                && presence_nonce(p) != nonce
                && presence_time(p).is_some_and(|t| t > since && t.saturating_add(ttl) >= now)
        })
        .map(|_| {
            format!(
                "another running process uses agent id {agent} (two servers with one config, or one host name), so this one writes nothing; stop one of them or give each its own [agent] id"
            )
        })
}

/// What `lease release` achieved for one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Released {
    /// The lease is released; a standby takes it at once.
    Done,
    /// The holding process was asked to release and has not yet.
    Asked,
    /// No process of this agent holds it.
    NotHeld,
}

/// Agents whose presence was refreshed within one ttl of `now`.
fn live_agents(presence: &[String], now: u64, ttl: u64) -> BTreeSet<String> {
    presence
        .iter()
        .filter(|p| presence_time(p).is_some_and(|t| t.saturating_add(ttl) >= now))
        .filter_map(|p| presence_agent(p).map(str::to_string))
        .collect()
}

fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    /// A look at `value` that has stayed unchanged for a whole ttl.
    fn observation(value: Option<LeaseValue>, live: &[&str], now: u64) -> Observation {
        watched(value, live, now, TTL)
    }

    fn watched(value: Option<LeaseValue>, live: &[&str], now: u64, unchanged_for: Duration) -> Observation {
        Observation {
            started: Instant::now(),
            object: LeaseObject { value: value.as_ref().map(LeaseValue::render), presence: Vec::new(), dc_time: now },
            value,
            live: live.iter().map(|s| s.to_string()).collect(),
            unchanged_for,
            rival: None,
        }
    }

    /// A lease held by `holder`'s process `n-<holder>`.
    fn held(holder: &str, expires: u64) -> Option<LeaseValue> {
        Some(LeaseValue {
            holder: holder.into(),
            epoch: 1,
            expires,
            token: "t".into(),
            nonce: format!("n-{holder}"),
            ..LeaseValue::default()
        })
    }

    fn share<'a>(
        agent: &'a str,
        nonce: &'a str,
        seen: &[Option<Observation>],
        mode: Mode,
        tenants: usize,
    ) -> Share<'a> {
        Share::new(agent, nonce, seen, mode, tenants)
    }

    #[test]
    fn values_round_trip_and_foreign_values_are_refused() {
        let value = LeaseValue {
            holder: "a1".into(),
            epoch: 7,
            expires: 100,
            token: "ff".into(),
            released_by: "a2".into(),
            nonce: "n1".into(),
            clean: true,
            requested: true,
        };
        assert_eq!(LeaseValue::parse(&value.render()), Some(value));
        assert_eq!(LeaseValue::parse("holder=a;epoch=x"), None);
        assert_eq!(LeaseValue::parse("something else"), None);
        assert_eq!(LeaseValue::parse("holder=a;colour=blue"), None);
        assert_eq!(LeaseValue::parse("holder=a;clean=yes"), None);
        // A value written before nonces existed is read, and held by no process of this version.
        let old = LeaseValue::parse("holder=a1;epoch=3;expires=9;token=f;released=").unwrap();
        assert!(!old.held_by("a1", "n1"));
    }

    #[test]
    fn a_lease_is_free_when_empty_or_expired() {
        assert!(LeaseValue::default().is_free(0));
        assert!(!held("a", 10).unwrap().is_free(9));
        assert!(held("a", 10).unwrap().is_free(10));
    }

    #[test]
    fn two_agents_split_four_tenants_two_and_two() {
        // Agent a holds all four; b is alive and holds none: a hands over exactly one per round.
        let seen: Vec<Option<Observation>> =
            (0..4).map(|_| Some(observation(held("a", 100), &["a", "b"], 50))).collect();
        let mut plan = share("a", "n-a", &seen, Mode::Share, 4);
        let actions: Vec<Action> = seen.iter().flatten().map(|o| plan.decide(o, TTL)).collect();
        assert_eq!(actions, [Action::Release, Action::Renew, Action::Renew, Action::Renew]);
        // b sees one lease that a released cleanly, just now, and three held by a: b takes it at once.
        let released = LeaseValue { expires: 60, released_by: "a".into(), clean: true, ..LeaseValue::default() };
        let seen = vec![
            Some(watched(Some(released.clone()), &["a", "b"], 50, Duration::ZERO)),
            Some(observation(held("a", 100), &["a", "b"], 50)),
        ];
        let mut plan = share("b", "n-b", &seen, Mode::Share, 4);
        assert_eq!(plan.decide(seen[0].as_ref().unwrap(), TTL), Action::Take);
        // a does not take back the lease it released while others may take it, unless it runs one-shot.
        let mut plan = share("a", "n-a2", &seen, Mode::Share, 4);
        assert_eq!(plan.decide(seen[0].as_ref().unwrap(), TTL), Action::Wait);
        let mut plan = share("a", "n-a2", &seen, Mode::Claim, 4);
        assert_eq!(plan.decide(seen[0].as_ref().unwrap(), TTL), Action::Take);
    }

    #[test]
    fn a_lone_survivor_takes_every_expired_lease() {
        let seen: Vec<Option<Observation>> = (0..4).map(|_| Some(observation(held("dead", 40), &["b"], 50))).collect();
        let mut plan = share("b", "n-b", &seen, Mode::Share, 4);
        let actions: Vec<Action> = seen.iter().flatten().map(|o| plan.decide(o, TTL)).collect();
        assert_eq!(actions, [Action::Take; 4]);
    }

    #[test]
    fn a_held_lease_is_left_alone_and_a_full_share_waits() {
        let seen = vec![Some(observation(held("b", 100), &["a", "b"], 50)), Some(observation(None, &["a", "b"], 50))];
        let mut plan = share("a", "n-a", &seen, Mode::Share, 2);
        assert_eq!(plan.decide(seen[0].as_ref().unwrap(), TTL), Action::Wait);
        assert_eq!(plan.decide(seen[1].as_ref().unwrap(), TTL), Action::Take);
        // With its one share taken, a leaves the next free lease to b, unless nobody took it for a ttl.
        let fresh = observation(held("", 45), &["a", "b"], 50);
        assert_eq!(plan.decide(&fresh, TTL), Action::Wait);
        let unwanted = observation(held("", 30), &["a", "b"], 50);
        assert_eq!(plan.decide(&unwanted, TTL), Action::Take);
    }

    #[test]
    fn a_lease_that_looks_free_is_taken_only_after_a_full_ttl_unchanged_on_the_monotonic_clock() {
        let unreadable = LeaseObject { value: Some("garbage".into()), presence: Vec::new(), dc_time: 50 };
        let released_elsewhere =
            LeaseValue { expires: 60, released_by: "a".into(), nonce: "n-cli".into(), ..LeaseValue::default() };
        // Expired by the DC's clock (which may have stepped), missing, unreadable, or released by a process
        // that is not the holder: the holder may still write until its own deadline.
        let cases =
            [(held("dead", 40), None), (None, None), (None, Some(unreadable)), (Some(released_elsewhere), None)];
        for (value, object) in cases {
            for mode in [Mode::Share, Mode::Claim] {
                let mut seen = watched(value.clone(), &["b"], 50, TTL - Duration::from_millis(1));
                if let Some(object) = &object {
                    seen.object = object.clone();
                }
                let mut plan = share("b", "n-b", &[], mode, 1);
                assert_eq!(plan.decide(&seen, TTL), Action::Wait, "{value:?} {mode:?}");
                assert!(plan.watching);
                seen.unchanged_for = TTL;
                let mut plan = share("b", "n-b", &[], mode, 1);
                assert_eq!(plan.decide(&seen, TTL), Action::Take, "{value:?} {mode:?}");
                assert!(!plan.watching);
            }
        }
        // This process's own expired value is free at once: its fence ended before the lease did.
        let own = watched(held("b", 40), &["b"], 50, Duration::ZERO);
        assert_eq!(share("b", "n-b", &[], Mode::Share, 1).decide(&own, TTL), Action::Take);
    }

    #[test]
    fn a_process_with_the_same_id_is_not_the_holder_and_a_rival_stops_everything() {
        // Another process of agent b holds the lease: this one neither renews nor takes it.
        let seen = observation(held("b", 100), &["b"], 50);
        let mut plan = share("b", "n-other", &[], Mode::Share, 1);
        assert_eq!(plan.decide(&seen, TTL), Action::Wait);
        // A rival process seen: nothing is renewed or taken, even a lease this process holds.
        let mut rival = observation(held("b", 100), &["b"], 50);
        rival.rival = Some("another running process uses agent id b".into());
        assert_eq!(share("b", "n-b", &[], Mode::Share, 1).decide(&rival, TTL), Action::Wait);
        // A release requested by `lease release` is carried out by the holder at its next renewal.
        let mut requested = held("b", 100).unwrap();
        requested.requested = true;
        let seen = observation(Some(requested), &["b"], 50);
        assert_eq!(share("b", "n-b", &[], Mode::Share, 1).decide(&seen, TTL), Action::Release);
        // A requested lease is still held: nobody else takes it before the holder releases it or it dies.
        assert_eq!(share("c", "n-c", &[], Mode::Claim, 1).decide(&seen, TTL), Action::Wait);
    }

    #[test]
    fn a_rival_is_a_presence_of_this_id_refreshed_after_this_process_started() {
        let presence = |values: &[&str]| values.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // A process that died before this one started refreshed nothing since: a restart is no rival.
        assert_eq!(rival_process(&presence(&["b 100 n-old", "b 101 n-me"]), "b", "n-me", 101, 101, 10), None);
        assert!(rival_process(&presence(&["b 102 n-twin", "b 102 n-me"]), "b", "n-me", 101, 102, 10).is_some());
        // A value without a nonce (an older version) refreshed since counts too; other agents never do.
        assert!(rival_process(&presence(&["b 102"]), "b", "n-me", 101, 102, 10).is_some());
        assert_eq!(rival_process(&presence(&["c 102 n-c"]), "b", "n-me", 101, 102, 10), None);
        // Once the rival stops refreshing, it ages out after a ttl.
        assert_eq!(rival_process(&presence(&["b 102 n-twin"]), "b", "n-me", 101, 113, 10), None);
    }

    #[test]
    fn presence_ages_out_after_one_ttl() {
        let presence = vec!["a 100 n1".to_string(), "b 85".to_string(), "garbage".to_string()];
        assert_eq!(live_agents(&presence, 100, 10), BTreeSet::from(["a".to_string()]));
        assert_eq!(live_agents(&presence, 95, 10), BTreeSet::from(["a".to_string(), "b".to_string()]));
    }

    #[test]
    fn a_fence_permits_until_its_deadline_only() {
        let fence = Fence::new("t", "a", "n", "CN=l");
        assert!(fence.check().is_err());
        fence.hold(1, Instant::now() + Duration::from_secs(60));
        assert!(fence.check().is_ok());
        fence.hold(1, Instant::now());
        assert!(fence.check().is_err());
    }
}
