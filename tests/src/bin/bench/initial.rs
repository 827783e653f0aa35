//! Phase 1: the initial sync of a tenant against the raw floor, `ldapadd` of the same groups with the same
//! members into another fresh OU of the same DC, over the same LDAPS, as the same account.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use writeback::dn;
use writeback::naming::default_placement;

use crate::Sizes;
use crate::directory;
use crate::measure::human;
use crate::world::{World, last_line};
use writeback_tests::e2e::text;

/// What phase 1 measured.
#[derive(Debug, Clone)]
pub struct Initial {
    pub groups: usize,
    pub memberships: usize,
    pub users: usize,
    /// `writeback plan` before the sync: the same Graph reads, state merges and directory reads, no writes.
    pub plan_wall: Duration,
    /// `writeback sync --once` into the empty OU.
    pub sync_wall: Duration,
    pub sync_cpu: Duration,
    /// `ldapadd -f` of the same groups, each one add carrying its members, just before the agent's sync and
    /// just after it: the DC grows with every write, so their mean is the floor at the agent's DC size.
    pub raw_before: Duration,
    pub raw_after: Duration,
    /// The same, written as adds without members and then one modify per group adding them (after the sync);
    /// measured in the single setting of a full run only.
    pub raw_split: Option<Duration>,
}

impl Initial {
    /// The raw floor at the agent's DC size: the mean of the `ldapadd` runs before and after it.
    pub fn raw(&self) -> Duration {
        (self.raw_before + self.raw_after) / 2
    }

    /// Agent time over raw floor.
    pub fn ratio(&self) -> f64 {
        self.sync_wall.as_secs_f64() / self.raw().as_secs_f64().max(f64::EPSILON)
    }
}

/// Builds the tenant, then measures its initial sync between two raw floors (and, with `split`, the floor
/// written as adds and then member modifies).
pub async fn run(world: &mut World, sizes: &Sizes, split: bool) -> Result<Initial> {
    println!("creating {} users in AD (ldapadd) and in the simulator …", sizes.users);
    let users_setup = world.add_users(sizes.users).await?;
    println!("  users created in {}", human(users_setup));
    world.add_groups(sizes.groups, sizes.memberships)?;
    println!("tenant: {} groups, {} memberships over {} synced users", sizes.groups, sizes.memberships, sizes.users);
    measure(world, sizes, split).await
}

/// Times the raw floor, a dry-run plan, the agent's initial sync (checked), the raw floor again, and (with
/// `split`) the floor written as the agent once planned it.
async fn measure(world: &mut World, sizes: &Sizes, split: bool) -> Result<Initial> {
    let raw_before = raw_floor(world, Shape::OneAdd, 'R').await?;
    println!("ldapadd -f (raw floor, same groups and members, one add each), before the agent: {}", human(raw_before));
    let plan = world.writeback(&["plan"]).await?;
    if !plan.output.status.success() {
        bail!("writeback plan failed: {}", last_line(&text(&plan.output.stderr)));
    }
    println!(
        "writeback plan (dry run of the same cycle: Graph, state and directory reads, no writes): {} wall",
        human(plan.wall)
    );
    let sync = world.sync().await.context("initial sync")?;
    println!("writeback sync --once (initial): {} wall, {} CPU", human(sync.wall), human(sync.cpu));
    verify(world, sizes).await?;

    let raw_after = raw_floor(world, Shape::OneAdd, 'T').await?;
    println!("ldapadd -f (the raw floor again), after the agent: {}", human(raw_after));
    let raw_split = if split { Some(raw_floor(world, Shape::AddThenModify, 'S').await?) } else { None };
    if let Some(raw_split) = raw_split {
        println!(
            "ldapadd -f (the same as adds without members, then one modify per group adding them): {}",
            human(raw_split)
        );
    }
    let figures = Initial {
        groups: sizes.groups,
        memberships: sizes.memberships,
        users: sizes.users,
        plan_wall: plan.wall,
        sync_wall: sync.wall,
        sync_cpu: sync.cpu,
        raw_before,
        raw_after,
        raw_split,
    };
    println!(
        "ratio agent / raw floor (mean of before and after, {}): {:.2}× (target ≤ 1.1×)",
        human(figures.raw()),
        figures.ratio()
    );
    Ok(figures)
}

/// Every group is in AD with exactly its members.
async fn verify(world: &World, sizes: &Sizes) -> Result<()> {
    let ad = world.ad_groups().await?;
    let members: usize = ad.values().map(|g| g.members.len()).sum();
    if ad.len() != sizes.groups || members != sizes.memberships {
        bail!(
            "the initial sync wrote {} groups with {members} member values; expected {} groups with {} values",
            ad.len(),
            sizes.groups,
            sizes.memberships
        );
    }
    println!("  verified: {} groups with {members} member values in AD", ad.len());
    Ok(())
}

/// How the raw floor writes a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One add carrying the members: the fewest operations that write the groups.
    OneAdd,
    /// An add without members, then (after every add) one modify per group adding them, as the agent plans.
    AddThenModify,
}

/// Writes the same groups (same CNs, attributes and members; a different anchor and a sAMAccountName that
/// starts with `prefix`, since those must stay unique) as one LDIF into a fresh OU and times `ldapadd -f` of
/// it, over the world's LDAP path (the proxy's, when the agent goes through one).
async fn raw_floor(world: &mut World, shape: Shape, prefix: char) -> Result<Duration> {
    let ou = world.new_ou(&format!("bench-raw-{}", prefix.to_ascii_lowercase())).await?;
    let user_dns: HashMap<&str, &str> = world.users.iter().map(|u| (u.id.as_str(), u.dn.as_str())).collect();
    let mut adds = String::new();
    let mut modifies = String::new();
    for group in &world.groups {
        let placement =
            default_placement(&group.id, Some(&group.name)).with_context(|| format!("naming {}", group.name))?;
        // sAMAccountName is unique in the domain: R_…, T_… and S_… instead of the agent's G_….
        let sam = format!("{prefix}{}", &placement.sam_account_name[1..]);
        let group_dn = dn::child(&placement.cn, &ou.groups_dn);
        adds.push_str(&format!(
            "dn: {group_dn}\nchangetype: add\nobjectClass: group\nsAMAccountName: {sam}\ngroupType: -2147483640\nadminDescription: RawFloor_{}\ndisplayName: {}\n",
            group.id, group.name
        ));
        let cloud = world
            .env
            .sim
            .group(&group.id)
            .with_context(|| format!("group {} vanished from the simulator", group.id))?;
        let mut members = String::new();
        for member in &cloud.members {
            let user_dn = user_dns
                .get(member.id.as_str())
                .with_context(|| format!("member {} is not a bench user", member.id))?;
            members.push_str(&format!("member: {user_dn}\n"));
        }
        match shape {
            Shape::OneAdd => adds.push_str(&members),
            Shape::AddThenModify if !members.is_empty() => {
                modifies.push_str(&format!("dn: {group_dn}\nchangetype: modify\nadd: member\n{members}-\n\n"));
            }
            Shape::AddThenModify => {}
        }
        adds.push('\n');
    }
    let path = world.scratch().join("raw-floor.ldif");
    std::fs::write(&path, adds + &modifies).with_context(|| format!("writing {}", path.display()))?;
    directory::ldapadd(&world.env.dc, world.ldap_url(), &path).await.context("the raw floor")
}
