//! Phase 1 in every setting the performance target names: the initial sync against the raw floor for two
//! tenant shapes, each on a freshly provisioned DC and on a DC grown by thousands of other groups, each over the
//! DC's own LDAPS and over a link that hands every message on 2 ms late each way (a DC in another site). Each
//! setting has a world of its own, so each ratio compares the agent and `ldapadd` on one DC at one size.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::initial::{self, Initial};
use crate::measure::human;
use crate::world::World;
use crate::{Sizes, directory, report};

/// How late the slow link hands on each message, each way.
pub const LINK_LATENCY: Duration = Duration::from_millis(2);

/// One tenant shape: its groups, memberships spread over them, and synced users.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub groups: usize,
    pub memberships: usize,
    pub users: usize,
}

/// The shapes and the growth of a full run: small groups (the common case) and the README's tenant.
const FULL: ([Shape; 2], usize) = (
    [
        Shape { groups: 1_000, memberships: 3_000, users: 1_000 },
        Shape { groups: 2_000, memberships: 40_000, users: 5_000 },
    ],
    20_000,
);

/// A tenth of it.
const QUICK: ([Shape; 2], usize) = (
    [Shape { groups: 100, memberships: 300, users: 100 }, Shape { groups: 200, memberships: 4_000, users: 500 }],
    2_000,
);

/// One measured setting.
#[derive(Debug, Clone)]
pub struct Row {
    /// Other groups added to the DC before the first grown setting; 0 on a fresh DC.
    pub growth: usize,
    /// The slow link's latency, each way; `None` over the DC's own LDAPS.
    pub latency: Option<Duration>,
    /// Live objects in the domain when the setting started.
    pub objects: usize,
    pub initial: Initial,
}

/// Measures every setting: each fresh-DC setting on a DC provisioned for it, then the grown ones one after
/// another on one DC grown first (it keeps growing by what each setting writes; each row tells its size).
pub async fn run(quick: bool, seed: u64) -> Result<Vec<Row>> {
    let (shapes, growth) = if quick { QUICK } else { FULL };
    let links = [None, Some(LINK_LATENCY)];
    let mut rows = Vec::new();
    for shape in shapes {
        for latency in links {
            fresh_dc().await?;
            rows.push(row(shape, 0, latency, seed).await?);
        }
    }
    fresh_dc().await?;
    grow(growth).await?;
    for shape in shapes {
        for latency in links {
            rows.push(row(shape, growth, latency, seed).await?);
        }
    }
    Ok(rows)
}

async fn row(shape: Shape, growth: usize, latency: Option<Duration>, seed: u64) -> Result<Row> {
    let link = latency.map_or_else(|| "direct".to_string(), |l| format!("{}ms", l.as_millis()));
    let dc = if growth == 0 { "fresh DC".to_string() } else { format!("DC grown by {growth} groups") };
    report::section(&format!(
        "1. initial sync: {} groups, {} memberships, {} users; {dc}; {}",
        shape.groups,
        shape.memberships,
        shape.users,
        latency
            .map_or_else(|| "the DC's own LDAPS".to_string(), |l| format!("a link {} ms late each way", l.as_millis()))
    ));
    // Worlds of one DC stay side by side: each takes its own name, so none deletes another's OU.
    let mut world = World::named(&format!("ratio-{}-{link}", shape.groups), seed).await?;
    if let Some(latency) = latency {
        world.slow_link(latency)?;
    }
    let objects = directory::count_objects(&world.env.dc).await?;
    println!("the DC holds {objects} live objects");
    let sizes = Sizes { groups: shape.groups, memberships: shape.memberships, users: shape.users, ..Sizes::FULL };
    let initial = initial::run(&mut world, &sizes, false).await?;
    Ok(Row { growth, latency, objects, initial })
}

/// Replaces the test DC with a freshly provisioned one, in the same directory and on the same ports.
async fn fresh_dc() -> Result<()> {
    let dir = writeback_tests::dc::default_dir();
    // The directory is removed whole, so make sure it is a test DC's before touching it.
    if dir.exists() && !(dir.join("admin.password").exists() && dir.join("dc").is_dir()) {
        bail!("{} does not look like a test DC's directory; not replacing it", dir.display());
    }
    println!("provisioning a fresh test DC in {} …", dir.display());
    tokio::task::spawn_blocking(move || -> Result<()> {
        writeback_tests::dc::stop(&dir)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
        writeback_tests::dc::ensure(&dir).map(|_| ())
    })
    .await
    .context("provisioning the DC")?
}

/// Adds `count` groups without members to a DC OU of their own.
pub async fn grow(count: usize) -> Result<()> {
    let dc = tokio::task::spawn_blocking(writeback_tests::dc::TestDc::shared).await??;
    let ou = dc.test_ou("growth").await?;
    let scratch = tempfile::tempdir()?;
    let took = directory::add_filler_groups(&dc, &ou.groups_dn, count, scratch.path()).await?;
    println!("grew the DC by {count} groups in {}", human(took));
    Ok(())
}
