//! The per-tenant status report that `status` prints: kept as a JSON file beside the state, so that it can
//! be read while a daemon holds the state database open.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::metrics::GroupCounts;
use crate::model::SkippedMember;
use crate::plan::HeldDelete;
use crate::reasons::{HeldReason, SkipReason};

/// A group the agent did not write, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupProblem {
    pub group_id: String,
    pub reason: String,
}

/// A group of which nothing is written, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldGroup {
    pub group_id: String,
    pub reason: HeldReason,
}

/// An AD group taken over for the cloud group converted from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenOver {
    pub group_id: String,
    /// Its DN when it was taken over.
    pub dn: String,
    pub sid: String,
    /// Seconds since the Unix epoch.
    pub time: u64,
}

/// A managed group whose on-premises edits keep coming back: a script or an admin fighting the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftFight {
    pub group_id: String,
    /// Repairs in a row, each within ten minutes of the one before.
    pub repairs: u32,
    /// Seconds since the Unix epoch.
    pub last_repair: u64,
    /// How long the next repair waits.
    pub next_repair_in_secs: u64,
}

/// A member whose PIM for Groups assignment ends: it leaves the AD group then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeBoundMember {
    pub group_id: String,
    pub member_id: String,
    /// Seconds since the Unix epoch.
    pub ends: u64,
}

/// What the last cycle of one tenant did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantStatus {
    /// Seconds since the Unix epoch when the last cycle ended.
    pub last_cycle: u64,
    /// `ok`, or the one-line cause of the failure.
    pub outcome: String,
    pub full: bool,
    pub managed_groups: usize,
    pub writes: usize,
    pub skipped_members: Vec<SkippedMember>,
    pub conflicts: Vec<GroupProblem>,
    /// Groups held back: refused by naming, or failed to apply.
    pub held_groups: Vec<HeldGroup>,
    pub held_deletes: Vec<HeldDelete>,
    /// Renames and moves held back (more than rename_threshold), as `plan` prints them.
    #[serde(default)]
    pub held_renames: Vec<String>,
    /// Groups whose member removals are held back (more than member_removal_threshold in the window).
    #[serde(default)]
    pub held_member_removals: Vec<GroupProblem>,
    /// Groups a transform keeps out of AD.
    #[serde(default)]
    pub excluded: Vec<GroupProblem>,
    /// Objects carrying a group's anchor that are not its own, which the agent never touches.
    #[serde(default)]
    pub lookalikes: Vec<GroupProblem>,
    /// AD groups taken over for the cloud groups converted from them.
    #[serde(default)]
    pub taken_over: Vec<TakenOver>,
    /// Graph entries that were skipped for their shape.
    pub bad_entries: Vec<String>,
    /// Groups whose changes still await a directory apply.
    pub pending_groups: usize,
    /// The tenant's writer lease, when several agents share the tenant.
    #[serde(default)]
    pub lease: Option<crate::lease::LeaseView>,
    /// Members whose PIM for Groups assignment ends, with their ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub time_bound: Vec<TimeBoundMember>,
    /// Why PIM schedule instances could not be read in the last cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pim_error: Option<String>,
    /// Groups whose on-premises edits keep coming back, as the drift watch last saw them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift_fights: Vec<DriftFight>,
}

/// Every tenant's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusFile {
    pub tenants: BTreeMap<String, TenantStatus>,
}

/// Where the status file lives in the state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

impl StatusFile {
    /// Reads the status file; an absent file is an empty status. A tenant whose entry this version cannot read
    /// (one an earlier version wrote) is shown as such until its next cycle records it again, and the others are
    /// read as they are.
    pub fn load(state_dir: &Path) -> std::io::Result<StatusFile> {
        let bytes = match std::fs::read(path(state_dir)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StatusFile::default()),
            Err(e) => return Err(e),
        };
        #[derive(Deserialize)]
        struct Raw {
            tenants: BTreeMap<String, serde_json::Value>,
        }
        let raw: Raw = serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("status.json: {e}")))?;
        let tenants = raw
            .tenants
            .into_iter()
            .map(|(name, value)| {
                let status = serde_json::from_value(value).unwrap_or_else(|e| TenantStatus {
                    outcome: format!("unknown: status.json holds an entry this version cannot read ({e}); the next cycle records it again"),
                    ..TenantStatus::default()
                });
                (name, status)
            })
            .collect();
        Ok(StatusFile { tenants })
    }

    /// Records one tenant's status, replacing the file atomically.
    pub fn record(state_dir: &Path, tenant: &str, status: TenantStatus) -> std::io::Result<()> {
        let mut file = StatusFile::load(state_dir).unwrap_or_default();
        file.tenants.insert(tenant.to_string(), status);
        let tmp = state_dir.join("status.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&file)?)?;
        std::fs::rename(tmp, path(state_dir))
    }
}

impl StatusFile {
    /// Changes one tenant's recorded status in place; `edit` says whether it changed anything, and the file
    /// is written only then.
    pub fn update(state_dir: &Path, tenant: &str, edit: impl FnOnce(&mut TenantStatus) -> bool) -> std::io::Result<()> {
        let mut status = StatusFile::load(state_dir).unwrap_or_default().tenants.remove(tenant).unwrap_or_default();
        if edit(&mut status) { StatusFile::record(state_dir, tenant, status) } else { Ok(()) }
    }
}

impl TenantStatus {
    /// The counts the metrics export.
    pub(crate) fn counts(&self) -> GroupCounts {
        let quarantined =
            self.held_groups.iter().filter(|h| matches!(h.reason, HeldReason::Quarantined { .. })).count();
        let mut skipped: BTreeMap<&'static str, usize> = SkipReason::LABELS.iter().map(|label| (*label, 0)).collect();
        for member in &self.skipped_members {
            *skipped.entry(member.reason.label()).or_default() += 1;
        }
        GroupCounts {
            managed: self.managed_groups,
            held: self.held_groups.len() - quarantined,
            quarantined,
            excluded: self.excluded.len(),
            conflict: self.conflicts.len(),
            lookalike: self.lookalikes.len(),
            pending: self.pending_groups,
            held_delete: self.held_deletes.len(),
            held_rename: self.held_renames.len(),
            held_member_removals: self.held_member_removals.len(),
            skipped,
        }
    }

    /// The human-readable report for one tenant.
    pub fn render(&self, tenant: &str) -> String {
        let mut out = String::new();
        let when = if self.last_cycle == 0 {
            "never".to_string()
        } else {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.last_cycle))
                .to_string()
        };
        let _ = writeln!(out, "tenant {tenant}");
        let _ = writeln!(
            out,
            "  last cycle: {when} ({}) outcome: {}",
            if self.full { "full" } else { "delta" },
            self.outcome
        );
        let _ = writeln!(
            out,
            "  managed groups: {}  writes: {}  pending: {}",
            self.managed_groups, self.writes, self.pending_groups
        );
        if let Some(lease) = &self.lease {
            let _ = writeln!(out, "  lease: {}", render_lease(lease));
        }
        let _ = writeln!(out, "  members skipped: {}", self.skipped_members.len());
        let reasons: Vec<String> = self.skipped_members.iter().map(|s| s.reason.to_string()).collect();
        for (reason, count) in count_by(&reasons, String::as_str) {
            let _ = writeln!(out, "    {count} × {reason}");
        }
        for s in &self.skipped_members {
            let _ = writeln!(out, "    group {} member {}: {}", s.group_id, s.member_id, s.reason);
        }
        list(&mut out, "look-alikes", self.lookalikes.iter().map(|p| format!("group {}: {}", p.group_id, p.reason)));
        list(&mut out, "conflicts", self.conflicts.iter().map(|p| format!("group {}: {}", p.group_id, p.reason)));
        list(&mut out, "held groups", self.held_groups.iter().map(|p| format!("group {}: {}", p.group_id, p.reason)));
        list(&mut out, "held deletes", self.held_deletes.iter().map(|d| format!("group {} at {}", d.group_id, d.dn)));
        list(&mut out, "held renames", self.held_renames.iter().cloned());
        list(
            &mut out,
            "held member removals",
            self.held_member_removals.iter().map(|p| format!("group {}: {}", p.group_id, p.reason)),
        );
        list(&mut out, "excluded groups", self.excluded.iter().map(|p| format!("group {}: {}", p.group_id, p.reason)));
        list(
            &mut out,
            "taken over",
            self.taken_over.iter().map(|t| format!("group {}: {} (objectSid {})", t.group_id, t.dn, t.sid)),
        );
        list(&mut out, "skipped Graph entries", self.bad_entries.iter().cloned());
        let time = |secs: u64| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
        };
        if !self.time_bound.is_empty() || self.pim_error.is_some() {
            let members = self
                .time_bound
                .iter()
                .map(|t| format!("group {} member {} until {}", t.group_id, t.member_id, time(t.ends)));
            list(&mut out, "time-bound members", members);
        }
        if let Some(e) = &self.pim_error {
            let _ = writeln!(out, "    cannot read PIM schedule instances: {e}");
        }
        if !self.drift_fights.is_empty() {
            let fights = self.drift_fights.iter().map(|f| {
                format!(
                    "group {}: an on-premises edit came back {} times in a row; last repaired {}, the next repair waits {}s",
                    f.group_id,
                    f.repairs,
                    time(f.last_repair),
                    f.next_repair_in_secs
                )
            });
            list(&mut out, "edits fighting the agent", fights);
        }
        out
    }
}

fn render_lease(lease: &crate::lease::LeaseView) -> String {
    let role = match lease.role {
        crate::lease::Role::Active => "active (this agent writes)",
        crate::lease::Role::Standby => "standby (this agent plans and writes nothing)",
    };
    let expires =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(lease.expires));
    let held = if lease.holder.is_empty() {
        format!("{role}; free, epoch {}", lease.epoch)
    } else {
        format!("{role}; held by {}, epoch {}, expires {expires}", lease.holder, lease.epoch)
    };
    match &lease.duplicate {
        Some(why) => format!("{held}; DUPLICATE AGENT ID: {why}"),
        None => held,
    }
}

fn list(out: &mut String, title: &str, items: impl Iterator<Item = String>) {
    let items: Vec<String> = items.collect();
    let _ = writeln!(out, "  {title}: {}", items.len());
    for item in items {
        let _ = writeln!(out, "    {item}");
    }
}

fn count_by<'a, T>(items: &'a [T], key: impl Fn(&'a T) -> &'a str) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(key(item)).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_renders() {
        let dir = tempfile::tempdir().unwrap();
        let status = TenantStatus {
            last_cycle: 1,
            outcome: "ok".into(),
            skipped_members: vec![SkippedMember {
                group_id: "g".into(),
                member_id: "u".into(),
                reason: SkipReason::CloudOnlyUser,
            }],
            held_deletes: vec![HeldDelete { group_id: "d".into(), dn: "CN=d,DC=x".into() }],
            ..Default::default()
        };
        StatusFile::record(dir.path(), "a", status.clone()).unwrap();
        let loaded = StatusFile::load(dir.path()).unwrap();
        assert_eq!(loaded.tenants["a"], status);
        let text = status.render("a");
        assert!(text.contains("1 × cloud-only user"), "{text}");
        assert!(text.contains("held deletes: 1"), "{text}");
        assert!(!text.contains("lease:"), "{text}");
        let lease = crate::lease::LeaseView {
            role: crate::lease::Role::Standby,
            holder: "agent-b".into(),
            epoch: 4,
            expires: 60,
            duplicate: None,
        };
        let text = TenantStatus { lease: Some(lease), ..status }.render("a");
        assert!(text.contains("lease: standby (this agent plans and writes nothing); held by agent-b, epoch 4, expires 1970-01-01T00:01:00Z"), "{text}");
    }

    #[test]
    fn an_entry_an_earlier_version_wrote_is_named_and_the_others_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let current = TenantStatus { outcome: "ok".into(), managed_groups: 2, ..Default::default() };
        let mut file = serde_json::json!({ "tenants": { "new": serde_json::to_value(&current).unwrap() } });
        file["tenants"]["old"] = serde_json::json!({
            "last_cycle": 1, "outcome": "ok", "full": false, "managed_groups": 1, "writes": 0,
            "skipped_members": [{"group_id": "g", "member_id": "u", "reason": "cloud-only user (no on-premises SID)"}],
            "conflicts": [], "held_groups": [], "held_deletes": [], "bad_entries": [], "pending_groups": 0
        });
        std::fs::write(path(dir.path()), serde_json::to_vec(&file).unwrap()).unwrap();
        let loaded = StatusFile::load(dir.path()).unwrap();
        assert_eq!(loaded.tenants["new"], current);
        assert!(loaded.tenants["old"].outcome.starts_with("unknown: status.json holds an entry"), "{:?}", loaded);
    }

    #[test]
    fn counts_follow_the_reason_types() {
        let held = |reason| HeldGroup { group_id: "g".into(), reason };
        let skipped = |reason| SkippedMember { group_id: "g".into(), member_id: "m".into(), reason };
        let status = TenantStatus {
            held_groups: vec![
                held(HeldReason::ApplyFailed { cause: "busy".into() }),
                held(HeldReason::Quarantined { attempts: 3, cause: "busy".into() }),
                // A refusal whose text looks like a quarantine is still a refusal.
                held(HeldReason::Refused { cause: "quarantined after 9 failed attempts".into() }),
            ],
            skipped_members: vec![skipped(SkipReason::SyncedGroupWithoutSid), skipped(SkipReason::CloudOnlyUser)],
            ..Default::default()
        };
        let counts = status.counts();
        assert_eq!((counts.held, counts.quarantined), (2, 1));
        assert_eq!(counts.skipped["synced_group_without_sid"], 1);
        assert_eq!(counts.skipped["cloud_only_user"], 1);
        assert_eq!(counts.skipped["unresolved_sid"], 0, "every label is reported, 0 too");
    }
}
