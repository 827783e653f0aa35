//! Phase 5: scale without a directory. The state and the planner alone (library API) with a synthetic tenant
//! of many groups and memberships, fed as delta pages: JSON text shaped as the simulator pages it (100 entries a
//! page, at most 20 member changes an entry, every group property), split with `parse_page`, parsed with
//! `parse_group`/`parse_user`, merged with `merge_group_page`/`merge_user_page` and flushed after each page, as
//! the agent's read loop does. Then a no-op full reconcile, in batches of the default `reconcile_batch` as the agent
//! plans one: each batch's intents, diffed by `plan_batch` against a Snapshot built to match them.
//!
//! It runs in a child process of the bench (`bench --scale-only`), so that the peak RSS (VmHWM) is this phase's
//! alone. The real HTTP simulator is timed over the same tenant afterwards, for comparison only: in-process it
//! would hold the whole round in the measured process and spoil the memory figure.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use writeback::attributes::SchemaSupport;
use writeback::config::defaults::reconcile_batch;
use writeback::dn;
use writeback::graph::delta::{NextLink, USER_SELECT, parse_group, parse_page, parse_user};
use writeback::model::{self, BuiltinPolicy, DesiredMember, Intent, ModelSettings};
use writeback::plan::{self, DirectoryGroup, DirectoryMember, Principal, Snapshot};
use writeback::state::{Cursor, Resource, Store, TenantState};
use writeback_tests::graphsim::{GraphSim, Group, MemberRef, SimConfig, User, WritebackConfiguration};

use crate::Sizes;
use crate::measure::{self, Memory, human, mb};

/// Entries per page, as the simulator is configured in the other phases.
const PAGE_SIZE: usize = 100;
/// Member changes per entry.
const MEMBERS_PER_ENTRY: usize = 20;
/// The target OU of the synthetic tenant.
const TARGET_OU: &str = "OU=Groups,OU=Scale,DC=corp,DC=example,DC=test";

/// What phase 5 measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scale {
    pub groups: usize,
    pub memberships: usize,
    pub users: usize,
    /// Group pages fed (user pages not counted).
    pub group_pages: usize,
    /// Feeding every user and group page into the state.
    pub feed: Duration,
    /// `model::intent` for every group.
    pub intents: Duration,
    /// `plan::plan_batch` of every batch of intents against its matching Snapshot.
    pub plan: Duration,
    /// Operations that plan produced (a no-op must produce none).
    pub planned_ops: usize,
    pub skipped_members: usize,
    pub memory_after_feed: Memory,
    pub memory_after_first_batch: Memory,
    pub memory_end: Memory,
    /// Size of the sled directory on disk after the feed.
    pub state_bytes: u64,
    /// The same feed through the real HTTP simulator (in process, after the memory figures were taken).
    pub simulator_feed: Option<Duration>,
}

impl Scale {
    /// Intents plus plan: the no-op full reconcile without its directory reads.
    pub fn reconcile(&self) -> Duration {
        self.intents + self.plan
    }
}

/// Runs phase 5 in this process. `with_simulator` also times the HTTP simulator over the same tenant.
pub async fn run(sizes: &Sizes, seed: u64, with_simulator: bool) -> Result<Scale> {
    let tenant =
        Synthetic { groups: sizes.scale_groups, memberships: sizes.scale_memberships, users: sizes.scale_users, seed };
    let dir = tempfile::tempdir().context("creating a state directory")?;
    let store = Store::open(&dir.path().join("state"))?;
    let state = store.tenant("scale")?;

    eprintln!(
        "scale: feeding {} users and {} groups with {} memberships …",
        tenant.users, tenant.groups, tenant.memberships
    );
    let started = Instant::now();
    feed_users(&store, &state, &tenant).await?;
    let group_pages = feed_groups(&store, &state, &tenant).await?;
    let feed = started.elapsed();
    let memory_after_feed = measure::memory()?;
    let state_bytes = dir_size(dir.path())?;
    eprintln!("scale: fed in {} ({} group pages), peak RSS {}", human(feed), group_pages, mb(memory_after_feed.peak));

    let settings = ModelSettings {
        m365_default_writeback: true,
        target_ou: TARGET_OU.into(),
        allowed_ous: Vec::new(),
        schema: SchemaSupport::default(),
        rules: Default::default(),
        group_scope: Default::default(),
    };
    let planned = plan_in_batches(&state, &settings)?;
    eprintln!(
        "scale: intents {}, plan {}, {} ops, peak RSS {}",
        human(planned.intents),
        human(planned.plan),
        planned.ops,
        mb(planned.memory_end.peak)
    );
    drop((state, store));

    let simulator_feed = if with_simulator { Some(feed_via_simulator(&tenant).await?) } else { None };
    Ok(Scale {
        groups: tenant.groups,
        memberships: tenant.memberships,
        users: tenant.users,
        group_pages,
        feed,
        intents: planned.intents,
        plan: planned.plan,
        planned_ops: planned.ops,
        skipped_members: planned.skipped,
        memory_after_feed,
        memory_after_first_batch: planned.memory_after_first_batch,
        memory_end: planned.memory_end,
        state_bytes,
        simulator_feed,
    })
}

/// Runs phase 5 in a child process (`bench --scale-only`) and reads its figures from the child's stdout.
pub async fn in_child(quick: bool, seed: u64) -> Result<Scale> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let mut command = tokio::process::Command::new(exe);
    command.arg("--scale-only").arg("--seed").arg(seed.to_string());
    if quick {
        command.arg("--quick");
    }
    let output = command
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context("running bench --scale-only")?;
    if !output.status.success() {
        bail!("bench --scale-only failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).context("bench --scale-only printed no figures")?;
    serde_json::from_str(line).context("parsing the figures of bench --scale-only")
}

/// A deterministic synthetic tenant: users synced from AD, security groups with writeback enabled, and each
/// group's members drawn at random (seeded per group) from the users.
struct Synthetic {
    groups: usize,
    memberships: usize,
    users: usize,
    seed: u64,
}

impl Synthetic {
    fn user_id(i: usize) -> String {
        format!("00000000-0000-4000-8000-{i:012x}")
    }

    fn group_id(i: usize) -> String {
        format!("00000000-0000-4000-9000-{i:012x}")
    }

    fn user_sid(i: usize) -> String {
        format!("S-1-5-21-1000-2000-3000-{}", 1000 + i)
    }

    /// The DN of the user whose SID is `sid` (see [`Synthetic::user_sid`]).
    fn user_dn_of(sid: &str) -> String {
        let rid: usize = sid.rsplit('-').next().and_then(|r| r.parse().ok()).unwrap_or_default();
        format!("CN=su{:07},OU=Users,OU=Scale,DC=corp,DC=example,DC=test", rid.saturating_sub(1000))
    }

    /// The member indices of group `g`: the memberships spread evenly, drawn without repeats.
    fn members(&self, g: usize) -> Vec<usize> {
        let size = (self.memberships / self.groups + usize::from(g < self.memberships % self.groups)).min(self.users);
        let mut rng = StdRng::seed_from_u64(self.seed ^ (g as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rand::seq::index::sample(&mut rng, self.users, size).into_vec()
    }

    /// User `i` as a users delta entry.
    fn user_entry(i: usize) -> Value {
        json!({
            "id": Self::user_id(i),
            "displayName": format!("su{i:07}"),
            "userPrincipalName": format!("su{i:07}@contoso.com"),
            "onPremisesSyncEnabled": true,
            "onPremisesSecurityIdentifier": Self::user_sid(i),
        })
    }

    /// Group `g` as the entries of an initial round: every property, members split across entries.
    fn group_entries(&self, g: usize) -> Vec<Value> {
        let base = json!({
            "id": Self::group_id(g),
            "displayName": format!("Scale Group {g:06}"),
            "description": null,
            "mailNickname": null,
            "mail": null,
            "mailEnabled": false,
            "securityEnabled": true,
            "groupTypes": [],
            "proxyAddresses": [],
            "onPremisesSyncEnabled": null,
            "onPremisesSecurityIdentifier": null,
            "writebackConfiguration": { "isEnabled": true, "onPremisesGroupType": "universalSecurityGroup" },
        });
        let members: Vec<Value> = self
            .members(g)
            .into_iter()
            .map(|u| json!({ "@odata.type": "#microsoft.graph.user", "id": Self::user_id(u) }))
            .collect();
        if members.is_empty() {
            return vec![base];
        }
        members
            .chunks(MEMBERS_PER_ENTRY)
            .map(|chunk| {
                let mut entry = base.clone();
                entry["members@delta"] = Value::Array(chunk.to_vec());
                entry
            })
            .collect()
    }
}

/// A page body as Graph sends it: `value` and a next or delta link.
fn page_body(entries: &[Value], number: usize, last: bool) -> Result<Vec<u8>> {
    let link_name = if last { "@odata.deltaLink" } else { "@odata.nextLink" };
    let body = json!({
        "@odata.context": "https://graph.microsoft.com/beta/$metadata#groups",
        "value": entries,
        link_name: format!("https://graph.microsoft.com/beta/groups/delta?$skiptoken=page{number}"),
    });
    serde_json::to_vec(&body).context("serialising a page")
}

/// Splits, parses and merges one page body, then flushes, as the agent's read loop does. Returns the next
/// page's link, or `None` when the round is complete.
async fn merge_page(store: &Store, state: &TenantState, resource: Resource, body: &[u8]) -> Result<Option<String>> {
    let page = parse_page(body).context("parsing a page")?;
    let (link, complete) = match page.link {
        NextLink::Next(link) => (link, false),
        NextLink::Delta(link) => (link, true),
    };
    let cursor =
        Cursor { link: link.clone(), full: true, complete, select: Some(writeback::attributes::group_select()) };
    match resource {
        Resource::Groups => {
            let entries =
                page.entries.iter().map(parse_group).collect::<Result<Vec<_>, _>>().context("a group entry")?;
            state.merge_group_page(&entries, &[], &cursor)?;
        }
        Resource::Users => {
            let entries = page.entries.iter().map(parse_user).collect::<Result<Vec<_>, _>>().context("a user entry")?;
            state.merge_user_page(&entries, &[], &cursor)?;
        }
    }
    store.flush().await?;
    if complete {
        finish_round(store, state, resource, &cursor).await?;
        return Ok(None);
    }
    Ok(Some(link))
}

/// Ends a full round as the agent does: drops what the round did not list, then stores the delta link.
async fn finish_round(store: &Store, state: &TenantState, resource: Resource, cursor: &Cursor) -> Result<()> {
    let done = Cursor { full: false, ..cursor.clone() };
    match resource {
        Resource::Users => {
            let missing = state.users_missing_from_full_round()?;
            state.drop_users(&missing)?;
            state.clear_user_round_marks()?;
            state.merge_user_page(&[], &[], &done)?;
        }
        Resource::Groups => {
            let missing = state.groups_missing_from_full_round()?;
            if !missing.is_empty() {
                bail!("{} groups went missing from the synthetic full round", missing.len());
            }
            state.clear_group_round_marks()?;
            state.merge_group_page(&[], &[], &done)?;
        }
    }
    store.flush().await?;
    Ok(())
}

/// Feeds every user, a page at a time.
async fn feed_users(store: &Store, state: &TenantState, tenant: &Synthetic) -> Result<()> {
    let pages = tenant.users.div_ceil(PAGE_SIZE).max(1);
    for page in 0..pages {
        let entries: Vec<Value> =
            (page * PAGE_SIZE..((page + 1) * PAGE_SIZE).min(tenant.users)).map(Synthetic::user_entry).collect();
        merge_page(store, state, Resource::Users, &page_body(&entries, page, page + 1 == pages)?).await?;
    }
    Ok(())
}

/// Feeds every group, a page at a time; returns the number of pages.
async fn feed_groups(store: &Store, state: &TenantState, tenant: &Synthetic) -> Result<usize> {
    let mut page = Vec::with_capacity(PAGE_SIZE);
    let mut pages = 0;
    for g in 0..tenant.groups {
        for entry in tenant.group_entries(g) {
            if page.len() == PAGE_SIZE {
                merge_page(store, state, Resource::Groups, &page_body(&page, pages, false)?).await?;
                pages += 1;
                page.clear();
            }
            page.push(entry);
        }
        if g > 0 && g % 20_000 == 0 {
            eprintln!("scale: {g} groups fed");
        }
    }
    merge_page(store, state, Resource::Groups, &page_body(&page, pages, true)?).await?;
    Ok(pages + 1)
}

/// What the batched no-op reconcile took.
struct Planned {
    intents: Duration,
    plan: Duration,
    ops: usize,
    skipped: usize,
    memory_after_first_batch: Memory,
    memory_end: Memory,
}

/// Plans every group the state holds as a full reconcile does, a batch at a time: the intents through the
/// built-in policy, then `plan_batch` against a Snapshot that matches them.
fn plan_in_batches(state: &TenantState, settings: &ModelSettings) -> Result<Planned> {
    let ids = state.group_ids()?;
    let mut policy = BuiltinPolicy;
    let mut planned = Planned {
        intents: Duration::ZERO,
        plan: Duration::ZERO,
        ops: 0,
        skipped: 0,
        memory_after_first_batch: Memory::default(),
        memory_end: Memory::default(),
    };
    for (n, (batch, later)) in plan::batches(&ids, reconcile_batch()).enumerate() {
        let started = Instant::now();
        let mut intents = BTreeMap::new();
        for id in batch {
            let Some(group) = state.group(id)? else { continue };
            let (intent, _skipped) = model::intent(state, &group, settings, &mut policy)?;
            intents.insert(id.clone(), intent);
        }
        planned.intents += started.elapsed();
        let snapshot = matching_snapshot(&intents);
        let started = Instant::now();
        let plan = plan::plan_batch(&intents, &snapshot, &later);
        planned.plan += started.elapsed();
        planned.ops += plan.ops.len();
        planned.skipped += plan.skipped.len();
        if n == 0 {
            planned.memory_after_first_batch = measure::memory()?;
        }
    }
    planned.memory_end = measure::memory()?;
    Ok(planned)
}

/// A Snapshot in which every written group already exists exactly as intended, and every member SID resolves.
fn matching_snapshot(intents: &BTreeMap<String, Intent>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for intent in intents.values() {
        let Intent::Write(desired) = intent else { continue };
        let mut members = Vec::with_capacity(desired.members.len());
        for member in &desired.members {
            let DesiredMember::Sid { sid, .. } = member else { continue };
            let principal = Principal { dn: Synthetic::user_dn_of(sid), group_type: None, classes: Vec::new() };
            members.push(DirectoryMember { dn: principal.dn.clone(), sid: Some(sid.clone()) });
            snapshot.principals.insert(sid.clone(), principal);
        }
        let n = snapshot.managed.len();
        let group = DirectoryGroup {
            guid: format!("{n:08x}-0000-4000-a000-000000000000"),
            sid: Some(format!("S-1-5-21-1000-2000-3000-{}", 100_000_000 + n)),
            dn: dn::child(&desired.cn, &desired.parent_dn),
            attributes: desired.attributes.iter().map(|(k, v)| (k.to_lowercase(), v.clone())).collect(),
            members,
        };
        snapshot.managed.insert(desired.id.clone(), group);
    }
    snapshot
}

/// Total size of the files under `dir`.
fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

/// Times the same feed through the real HTTP simulator: the tenant loaded into a [`GraphSim`], both delta
/// rounds read over loopback HTTP and merged into a fresh state.
async fn feed_via_simulator(tenant: &Synthetic) -> Result<Duration> {
    eprintln!("scale: loading the same tenant into the HTTP simulator, for comparison …");
    let sim = GraphSim::start(SimConfig {
        page_size: PAGE_SIZE,
        members_per_entry: MEMBERS_PER_ENTRY,
        ..SimConfig::default()
    })?;
    for i in 0..tenant.users {
        let sam = format!("su{i:07}");
        sim.add_user(User::synced(Synthetic::user_id(i), format!("{sam}@contoso.com"), &Synthetic::user_sid(i), &sam))?;
    }
    for g in 0..tenant.groups {
        let group = Group {
            members: tenant.members(g).into_iter().map(|u| MemberRef::user(Synthetic::user_id(u))).collect(),
            writeback: Some(WritebackConfiguration {
                is_enabled: Some(true),
                on_premises_group_type: Some("universalSecurityGroup".into()),
            }),
            ..Group::security(Synthetic::group_id(g), format!("Scale Group {g:06}"))
        };
        sim.add_group(group)?;
    }
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("state"))?;
    let state = store.tenant("scale")?;
    let client = reqwest::Client::builder().build().context("building an HTTP client")?;
    let token = sim.issue_token();
    let started = Instant::now();
    let users = format!("{}/v1.0/users/delta?$select={USER_SELECT}", sim.base_url());
    read_round(&client, &token, &store, &state, Resource::Users, users).await?;
    let groups = format!("{}/beta/groups/delta?$select={}", sim.base_url(), writeback::attributes::group_select());
    read_round(&client, &token, &store, &state, Resource::Groups, groups).await?;
    let elapsed = started.elapsed();
    eprintln!("scale: fed through the HTTP simulator in {}", human(elapsed));
    Ok(elapsed)
}

/// Reads one delta round from the simulator, page by page, into the state.
async fn read_round(
    client: &reqwest::Client,
    token: &str,
    store: &Store,
    state: &TenantState,
    resource: Resource,
    mut url: String,
) -> Result<()> {
    loop {
        let response = client.get(&url).bearer_auth(token).send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response.bytes().await.with_context(|| format!("reading {url}"))?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&body));
        }
        match merge_page(store, state, resource, &body).await? {
            Some(next) => url = next,
            None => return Ok(()),
        }
    }
}
