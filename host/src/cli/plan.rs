//! `writeback plan`: every directory change the next cycle would make, as text or as JSON; nothing is written.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use super::setup::{open_store, plugin_engine, policy, selected, tenant_sync};
use crate::config::Config;
use crate::model::SkippedMember;
use crate::plan::HeldDelete;
use crate::progress::Progress;
use crate::state::Store;
use crate::status::{GroupProblem, HeldGroup};
use crate::sync::{CycleOptions, CycleReport, StopFlag};

/// Arguments of `plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Plan a full reconcile instead of a delta cycle.
    #[arg(long)]
    pub full: bool,
    /// Print one JSON document, `{"tenants": {NAME: PLAN}}`, in the shape the README documents.
    #[arg(long)]
    pub json: bool,
}

/// One tenant's plan as `plan --json` prints it.
#[derive(Debug, Serialize)]
struct TenantPlan {
    changes: Vec<Change>,
    held_groups: Vec<HeldGroup>,
    held_deletes: Vec<HeldDelete>,
    held_renames: Vec<String>,
    held_member_removals: Vec<GroupProblem>,
    excluded: Vec<GroupProblem>,
    skipped_members: Vec<SkippedMember>,
    bad_entries: Vec<String>,
    lookalikes: Vec<GroupProblem>,
    conflicts: Vec<GroupProblem>,
}

/// One planned directory change.
#[derive(Debug, Serialize)]
struct Change {
    /// The operation as the audit log names it: `create`, `modify`, `rename`, `delete`, or a member change.
    operation: &'static str,
    group_id: String,
    dn: String,
    detail: String,
}

impl TenantPlan {
    fn of(report: &CycleReport) -> TenantPlan {
        let changes = report
            .plan
            .iter()
            .map(|op| {
                let (operation, dn, detail) = crate::plan::describe(op);
                Change { operation, group_id: op.group_id().to_string(), dn, detail }
            })
            .collect();
        let s = report.status.clone();
        TenantPlan {
            changes,
            held_groups: s.held_groups,
            held_deletes: s.held_deletes,
            held_renames: s.held_renames,
            held_member_removals: s.held_member_removals,
            excluded: s.excluded,
            skipped_members: s.skipped_members,
            bad_entries: s.bad_entries,
            lookalikes: s.lookalikes,
            conflicts: s.conflicts,
        }
    }
}

/// Runs `plan`.
pub async fn run(config: &Config, args: PlanArgs) -> Result<()> {
    let PlanArgs { tenant, full, json } = args;
    let tenant = tenant.as_deref();
    let mut plans = BTreeMap::new();
    let store = open_store(config)?;
    let stop = StopFlag::default();
    let engine = plugin_engine(config)?;
    for tenant in selected(config, tenant)? {
        // The dry run reads Graph into a scratch copy, so the real cursor does not move.
        let scratch = Store::temporary()?;
        store.copy_tenant_to(&tenant.name, &scratch)?;
        let sync = tenant_sync(tenant, &scratch, &stop, policy(tenant, engine.as_ref())?, None, Progress::hidden())?;
        let options = CycleOptions { full, dry_run: true, ..Default::default() };
        let report = sync.cycle(options).await.with_context(|| format!("tenant {}", tenant.name))?;
        if json {
            plans.insert(tenant.name.clone(), TenantPlan::of(&report));
            continue;
        }
        println!("tenant {}: {} changes", tenant.name, report.plan.len());
        for op in &report.plan {
            println!("  {op}");
        }
        for held in &report.status.held_groups {
            println!("  held group {}: {}", held.group_id, held.reason);
        }
        for held in &report.status.held_deletes {
            println!("  held delete {} (more deletes than delete_threshold): {}", held.group_id, held.dn);
        }
        for held in &report.status.held_renames {
            println!("  held (more renames than rename_threshold): {held}");
        }
        for held in &report.status.held_member_removals {
            println!("  held member removals of group {}: {}", held.group_id, held.reason);
        }
        for excluded in &report.status.excluded {
            println!("  excluded group {}: {}", excluded.group_id, excluded.reason);
        }
        for skipped in &report.status.skipped_members {
            println!("  skipped member {} of group {}: {}", skipped.member_id, skipped.group_id, skipped.reason);
        }
        for entry in &report.status.bad_entries {
            println!("  skipped Graph entry: {entry}");
        }
        for lookalike in &report.status.lookalikes {
            println!("  group {}: {}", lookalike.group_id, lookalike.reason);
        }
        for conflict in &report.status.conflicts {
            println!("  conflict for group {}: {}", conflict.group_id, conflict.reason);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "tenants": plans }))?);
    }
    Ok(())
}
