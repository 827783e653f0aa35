//! Phase 4: write minimality. Rounds of random adds, removes, renames and deletes over a working set of
//! groups, each followed by one `sync --once`; the directory operations the agent issued (its audit log) are
//! counted against the minimum the changes need. Then a very large group and single changes to it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::Rng;
use rand::seq::IndexedRandom;
use writeback::state::AuditRecord;
use writeback_tests::graphsim::{DeleteOutcome, GroupPatch, MemberRef};

use crate::Sizes;
use crate::measure::human;
use crate::world::World;

/// Member values one modify carries (the agent's chunk size, `MEMBER_CHUNK` in `directory/write.rs`).
const MEMBER_CHUNK: usize = 500;

/// How many changes of each kind one round makes.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub adds: usize,
    pub removes: usize,
    pub renames: usize,
    pub deletes: usize,
}

/// The mix every round uses.
pub const MIX: Mix = Mix { adds: 30, removes: 30, renames: 5, deletes: 2 };

/// What happened to one group in one round.
#[derive(Debug, Default, Clone, Copy)]
struct Touch {
    added: bool,
    removed: bool,
    renamed: bool,
    deleted: bool,
}

impl Touch {
    /// Operations the change needs, counted per kind: one modify for the group's adds, one for its removes, a
    /// rename is a modrdn plus the modify of `displayName` (a modrdn cannot change other attributes), and a
    /// delete is one delete.
    fn minimum(self) -> usize {
        if self.deleted {
            return 1;
        }
        usize::from(self.added) + usize::from(self.removed) + 2 * usize::from(self.renamed)
    }

    /// The strict LDAP floor: one modify can carry a group's adds, removes and `displayName` together.
    fn floor(self) -> usize {
        if self.deleted {
            return 1;
        }
        usize::from(self.renamed) + usize::from(self.added || self.removed || self.renamed)
    }
}

/// One round's count.
#[derive(Debug, Clone)]
pub struct Round {
    pub mix: Mix,
    pub minimum: usize,
    pub floor: usize,
    /// Operations in the audit log.
    pub operations: usize,
    /// LDAP requests those operations take (member changes go in chunks of 500 values).
    pub requests: usize,
    pub by_kind: BTreeMap<String, usize>,
    /// Audit records whose outcome is not `ok`.
    pub failed: usize,
    pub usn_global: u64,
}

/// A single change to the large group.
#[derive(Debug, Clone)]
pub struct OneChange {
    pub wall: Duration,
    /// `operation detail-prefix` of each audit record the cycle wrote.
    pub records: Vec<String>,
    pub exact: bool,
}

/// The large-group part.
#[derive(Debug, Clone)]
pub struct BigGroup {
    pub members: usize,
    pub initial: Duration,
    pub add: OneChange,
    pub remove: OneChange,
}

/// What phase 4 measured.
#[derive(Debug, Clone)]
pub struct Minimality {
    pub rounds: Vec<Round>,
    pub big: BigGroup,
}

impl Minimality {
    pub fn operations(&self) -> usize {
        self.rounds.iter().map(|r| r.operations).sum()
    }
    pub fn minimum(&self) -> usize {
        self.rounds.iter().map(|r| r.minimum).sum()
    }
    pub fn floor(&self) -> usize {
        self.rounds.iter().map(|r| r.floor).sum()
    }
    pub fn requests(&self) -> usize {
        self.rounds.iter().map(|r| r.requests).sum()
    }
}

/// Runs the mixed rounds over the first `sizes.mix_groups` groups, checks AD against the simulator, then the
/// large group.
pub async fn run(world: &mut World, sizes: &Sizes) -> Result<Minimality> {
    let mut working: Vec<String> = world.groups.iter().take(sizes.mix_groups).map(|g| g.id.clone()).collect();
    let working_set: Vec<String> = working.clone();
    let mut rounds = Vec::new();
    for index in 1..=sizes.mix_rounds {
        let round = round(world, &mut working, MIX, index).await?;
        println!(
            "  round {index}: {} adds, {} removes, {} renames, {} deletes → {} operations ({}), minimum {}, strict floor {}, {} LDAP requests, {} failed, highestCommittedUSN +{}",
            round.mix.adds,
            round.mix.removes,
            round.mix.renames,
            round.mix.deletes,
            round.operations,
            kinds(&round.by_kind),
            round.minimum,
            round.floor,
            round.requests,
            round.failed,
            round.usn_global
        );
        rounds.push(round);
    }
    verify(world, &working_set, &working).await?;
    let big = big_group(world, sizes.big_group).await?;
    Ok(Minimality { rounds, big })
}

/// One round of random changes in the simulator, one sync, and the count.
async fn round(world: &mut World, working: &mut Vec<String>, mix: Mix, index: usize) -> Result<Round> {
    let mut touched: BTreeMap<String, Touch> = BTreeMap::new();
    let mut added: HashSet<(String, String)> = HashSet::new();
    for _ in 0..mix.adds {
        let group = working.choose(&mut world.rng).context("no groups left to change")?.clone();
        let user = new_member(world, &group)?;
        world.env.sim.add_members(&group, &[MemberRef::user(user.clone())])?;
        added.insert((group.clone(), user));
        touched.entry(group).or_default().added = true;
    }
    for _ in 0..mix.removes {
        let group = working.choose(&mut world.rng).context("no groups left to change")?.clone();
        let cloud = world.env.sim.group(&group).with_context(|| format!("group {group} vanished"))?;
        let old: Vec<&MemberRef> =
            cloud.members.iter().filter(|m| !added.contains(&(group.clone(), m.id.clone()))).collect();
        let Some(member) = old.choose(&mut world.rng) else { continue };
        world.env.sim.remove_members(&group, &[member.id.as_str()])?;
        touched.entry(group).or_default().removed = true;
    }
    for _ in 0..mix.renames {
        let group = working.choose(&mut world.rng).context("no groups left to change")?.clone();
        if touched.get(&group).is_some_and(|t| t.renamed) {
            continue;
        }
        let name = format!("Bench Group renamed {index}-{}", &group[..8]);
        world.env.sim.update_group(&group, GroupPatch { display_name: Some(name), ..GroupPatch::default() })?;
        touched.entry(group).or_default().renamed = true;
    }
    for _ in 0..mix.deletes {
        let Some(position) = (0..working.len()).find(|&i| !touched.contains_key(&working[i])) else { break };
        let group = working.remove(position);
        if world.env.sim.soft_delete_group(&group)? != DeleteOutcome::HardDeleted {
            bail!("the simulator kept security group {group} in deleted items");
        }
        touched.entry(group).or_default().deleted = true;
    }
    count(world, mix, &touched).await
}

/// A user (cloud id) not yet in `group`.
fn new_member(world: &mut World, group: &str) -> Result<String> {
    let cloud = world.env.sim.group(group).with_context(|| format!("group {group} vanished"))?;
    for _ in 0..1000 {
        let user = &world.users[world.rng.random_range(0..world.users.len())];
        if !cloud.has_member(&user.id) {
            return Ok(user.id.clone());
        }
    }
    bail!("group {group} has no room for another member")
}

/// Syncs once and compares the operations in the audit log with the minimum of `touched`.
async fn count(world: &World, mix: Mix, touched: &BTreeMap<String, Touch>) -> Result<Round> {
    let before = world.audit().await?.len();
    let usn = world.global_usn().await?;
    world.sync().await?;
    let usn_global = world.global_usn().await?.saturating_sub(usn);
    let records: Vec<AuditRecord> = world.audit().await?.into_iter().skip(before).collect();
    let mut by_kind = BTreeMap::new();
    for record in &records {
        *by_kind.entry(record.operation.clone()).or_insert(0) += 1;
    }
    Ok(Round {
        mix,
        minimum: touched.values().map(|t| t.minimum()).sum(),
        floor: touched.values().map(|t| t.floor()).sum(),
        operations: records.len(),
        requests: records.iter().map(requests).sum(),
        failed: records.iter().filter(|r| r.outcome != "ok").count(),
        by_kind,
        usn_global,
    })
}

/// LDAP requests behind one audit record: member changes go in chunks of [`MEMBER_CHUNK`] values.
fn requests(record: &AuditRecord) -> usize {
    match value_count(record) {
        Some(values) => values.div_ceil(MEMBER_CHUNK).max(1),
        None => 1,
    }
}

/// The value count of a member operation's detail (`+3: …` or `-1: …`).
fn value_count(record: &AuditRecord) -> Option<usize> {
    let (count, _) = record.detail.split_once(':')?;
    count.trim_start_matches(['+', '-']).parse().ok()
}

/// `modify 3, rename 1, …`.
fn kinds(by_kind: &BTreeMap<String, usize>) -> String {
    let list: Vec<String> = by_kind.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
    if list.is_empty() { "none".into() } else { list.join(", ") }
}

/// After the rounds, AD holds exactly what the simulator holds for the working set: the same members, the new
/// names, and no deleted group.
async fn verify(world: &World, working_set: &[String], alive: &[String]) -> Result<()> {
    let ad = world.ad_groups().await?;
    let user_dns: HashMap<&str, String> = world.users.iter().map(|u| (u.id.as_str(), u.dn.to_lowercase())).collect();
    for id in working_set {
        let entry = ad.get(id);
        if !alive.contains(id) {
            if let Some(entry) = entry {
                bail!("deleted group {id} is still in AD at {}", entry.dn);
            }
            continue;
        }
        let entry = entry.with_context(|| format!("group {id} is missing from AD"))?;
        let cloud = world.env.sim.group(id).with_context(|| format!("group {id} vanished"))?;
        let want: HashSet<&str> =
            cloud.members.iter().filter_map(|m| user_dns.get(m.id.as_str()).map(String::as_str)).collect();
        let have: Vec<String> = entry.members.iter().map(|m| m.to_lowercase()).collect();
        let have: HashSet<&str> = have.iter().map(String::as_str).collect();
        if want != have || entry.display_name.as_deref() != Some(cloud.display_name.as_str()) {
            bail!("group {id} differs between AD and the simulator after the rounds");
        }
    }
    println!("  verified: the {} working groups match the simulator (members, names, deletes)", working_set.len());
    Ok(())
}

/// A group of `size` members, written once, then one member added and one removed, each in its own cycle.
pub async fn big_group(world: &mut World, size: usize) -> Result<BigGroup> {
    let missing = (size + 1).saturating_sub(world.users.len());
    println!("creating {missing} more users for a {size}-member group …");
    let users_setup = world.add_users(missing).await?;
    println!("  users created in {}", human(users_setup));
    let members: Vec<usize> = (0..size).collect();
    let group = world.add_group("Bench Big Group", &members)?;
    let initial = world.sync().await.context("writing the large group")?.wall;
    println!("  initial write of the {size}-member group: {}", human(initial));

    let spare = world.users[size].id.clone();
    let add = one_change(world, "add-members", "+1:", || {
        world.env.sim.add_members(&group.id, &[MemberRef::user(spare.clone())])
    })
    .await?;
    let first = world.users[0].id.clone();
    let remove =
        one_change(world, "remove-members", "-1:", || world.env.sim.remove_members(&group.id, &[first.as_str()]))
            .await?;
    for (what, change) in [("add one member", &add), ("remove one member", &remove)] {
        println!(
            "  {what}: {} → {} ({}; cycle {})",
            if change.exact { "exactly one modify carrying one value" } else { "NOT one modify with one value" },
            change.records.join(" | "),
            change.records.len(),
            human(change.wall)
        );
    }
    Ok(BigGroup { members: size, initial, add, remove })
}

/// Makes one change in the simulator, syncs, and checks that the cycle wrote exactly one `operation` record
/// whose detail starts with `prefix`.
async fn one_change<T>(
    world: &World,
    operation: &str,
    prefix: &str,
    change: impl FnOnce() -> Result<T, writeback_tests::graphsim::TenantError>,
) -> Result<OneChange> {
    let before = world.audit().await?.len();
    change().map_err(|e| anyhow::anyhow!("changing the large group: {e}"))?;
    let run = world.sync().await?;
    let records: Vec<AuditRecord> = world.audit().await?.into_iter().skip(before).collect();
    let exact = records.len() == 1
        && records[0].operation == operation
        && records[0].detail.starts_with(prefix)
        && records[0].outcome == "ok";
    let records =
        records.iter().map(|r| format!("{} {}", r.operation, r.detail.split(' ').next().unwrap_or_default())).collect();
    Ok(OneChange { wall: run.wall, records, exact })
}
