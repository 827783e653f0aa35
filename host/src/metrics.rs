//! Prometheus metrics and the health check, served on `[agent] metrics_addr` when it is set.
//!
//! The metrics live in one process-wide registry, so that every layer can count what it does without a
//! handle being threaded through it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock, PoisonError};

use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming a tenant.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

/// Labels of a finished cycle.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CycleLabels {
    pub tenant: String,
    pub outcome: String,
}

/// Labels of a directory operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectoryLabels {
    pub tenant: String,
    pub kind: String,
    pub outcome: String,
}

/// Labels of a count of groups in one state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupStateLabels {
    pub tenant: String,
    pub state: String,
}

/// Labels of skipped members.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub tenant: String,
    pub reason: String,
}

/// Labels of a plugin call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
    pub outcome: String,
}

/// Labels of a Graph request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GraphLabels {
    pub tenant: String,
    pub status: String,
}

/// Labels of a drift repair: `member`, `attribute`, `rename`, `move` or `recreate`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    pub tenant: String,
    pub kind: String,
}

/// A tenant's groups by state after a cycle, and its skipped members by reason label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupCounts {
    pub managed: usize,
    pub held: usize,
    pub quarantined: usize,
    pub excluded: usize,
    pub conflict: usize,
    pub lookalike: usize,
    pub pending: usize,
    /// Groups whose delete, rename or member removals a threshold holds.
    pub held_delete: usize,
    pub held_rename: usize,
    pub held_member_removals: usize,
    /// Every label, those with no member too, so that a reason that no longer occurs is reported as 0.
    pub skipped: BTreeMap<&'static str, usize>,
}

/// Builds the cycle-duration histograms: 10 ms to about 40 minutes.
#[derive(Clone)]
pub struct CycleBuckets;

impl MetricConstructor<Histogram> for CycleBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.01, 2.0, 18))
    }
}

/// Builds the PIM expiry lateness histograms: 0.25 s to about 17 minutes.
#[derive(Clone)]
pub struct LatenessBuckets;

impl MetricConstructor<Histogram> for LatenessBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.25, 2.0, 13))
    }
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub cycles: Family<CycleLabels, Counter>,
    pub cycle_seconds: Family<TenantLabel, Histogram, CycleBuckets>,
    pub graph_requests: Family<GraphLabels, Counter>,
    pub graph_throttled: Family<TenantLabel, Counter>,
    pub directory_operations: Family<DirectoryLabels, Counter>,
    pub directory_connections: Family<TenantLabel, Counter>,
    pub groups: Family<GroupStateLabels, Gauge>,
    pub members_skipped: Family<SkipLabels, Gauge>,
    pub plugin_calls: Family<PluginLabels, Counter>,
    pub lease_active: Family<TenantLabel, Gauge>,
    pub lease_lost: Family<TenantLabel, Counter>,
    pub drift_repairs: Family<DriftLabels, Counter>,
    /// Groups whose on-premises edits keep coming back, repaired with back-off.
    pub drift_fights: Family<TenantLabel, Gauge>,
    pub pim_expiries: Family<TenantLabel, Counter>,
    pub pim_expiry_lateness: Family<TenantLabel, Histogram, LatenessBuckets>,
    /// Seconds since the oldest end of a time-bound member whose removal has not been applied yet.
    pub pim_overdue: Family<TenantLabel, Gauge>,
    /// Tenants whose last cycle failed, with the cause.
    failing: Mutex<BTreeMap<String, String>>,
    /// Tenants whose writer lease this agent lost without giving it up, until it holds one again.
    lost_leases: Mutex<BTreeMap<String, String>>,
    /// Tenants for which another running process uses this agent's id.
    duplicates: Mutex<BTreeSet<String>>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("writeback");
        let metrics = Metrics {
            cycles: Family::default(),
            cycle_seconds: Family::new_with_constructor(CycleBuckets),
            graph_requests: Family::default(),
            graph_throttled: Family::default(),
            directory_operations: Family::default(),
            directory_connections: Family::default(),
            groups: Family::default(),
            members_skipped: Family::default(),
            plugin_calls: Family::default(),
            lease_active: Family::default(),
            lease_lost: Family::default(),
            drift_repairs: Family::default(),
            drift_fights: Family::default(),
            pim_expiries: Family::default(),
            pim_expiry_lateness: Family::new_with_constructor(LatenessBuckets),
            pim_overdue: Family::default(),
            failing: Mutex::new(BTreeMap::new()),
            lost_leases: Mutex::new(BTreeMap::new()),
            duplicates: Mutex::new(BTreeSet::new()),
            registry: Registry::default(),
        };
        registry.register("cycles", "Sync cycles by outcome", metrics.cycles.clone());
        registry.register("cycle_duration_seconds", "Duration of sync cycles", metrics.cycle_seconds.clone());
        registry.register(
            "graph_requests",
            "Graph and token requests by HTTP status (0: no answer)",
            metrics.graph_requests.clone(),
        );
        registry.register(
            "graph_throttled",
            "Graph answers asking the agent to wait (429, 503 with Retry-After)",
            metrics.graph_throttled.clone(),
        );
        registry.register(
            "directory_operations",
            "Directory writes by kind and outcome",
            metrics.directory_operations.clone(),
        );
        registry.register(
            "directory_connections",
            "LDAP connections opened (quiet cycles open none)",
            metrics.directory_connections.clone(),
        );
        registry.register(
            "groups",
            "Groups by state: managed, held, quarantined, excluded, conflict, pending, look-alike objects, and groups whose delete, rename or member removals a threshold holds",
            metrics.groups.clone(),
        );
        registry.register("members_skipped", "Members not written, by reason", metrics.members_skipped.clone());
        registry.register("plugin_calls", "Plugin calls by plugin and outcome", metrics.plugin_calls.clone());
        registry.register(
            "lease_active",
            "1 when this agent holds the tenant's writer lease (active), 0 when standby",
            metrics.lease_active.clone(),
        );
        registry.register(
            "lease_lost",
            "Writer leases lost without being released (expired or taken over)",
            metrics.lease_lost.clone(),
        );
        registry.register(
            "drift_repairs",
            "On-premises edits of managed groups repaired between reconciles, by kind",
            metrics.drift_repairs.clone(),
        );
        registry.register(
            "drift_fights",
            "Managed groups whose on-premises edits keep coming back (repaired with back-off)",
            metrics.drift_fights.clone(),
        );
        registry.register(
            "pim_expiries",
            "Time-bound (PIM) memberships removed from AD at their end",
            metrics.pim_expiries.clone(),
        );
        registry.register(
            "pim_expiry_lateness_seconds",
            "How long after its end a time-bound membership left the AD group",
            metrics.pim_expiry_lateness.clone(),
        );
        registry.register(
            "pim_overdue_seconds",
            "How long ago the oldest end of a time-bound member passed whose removal is not applied yet (0: none)",
            metrics.pim_overdue.clone(),
        );
        Metrics { registry, ..metrics }
    }

    /// Creates `tenant`'s counters at 0, so that they are exported from the start and an alert on their
    /// increase sees the first one.
    pub fn start_tenant(&self, tenant: &str) {
        let label = TenantLabel { tenant: tenant.into() };
        for outcome in ["ok", "failed"] {
            let _ = self.cycles.get_or_create(&CycleLabels { tenant: tenant.into(), outcome: outcome.into() });
        }
        for kind in ["member", "attribute", "rename", "move", "recreate", "delete"] {
            let _ = self.drift_repairs.get_or_create(&DriftLabels { tenant: tenant.into(), kind: kind.into() });
        }
        let _ = self.lease_lost.get_or_create(&label);
        let _ = self.graph_throttled.get_or_create(&label);
        let _ = self.directory_connections.get_or_create(&label);
        let _ = self.drift_fights.get_or_create(&label);
        let _ = self.pim_expiries.get_or_create(&label);
        let _ = self.pim_expiry_lateness.get_or_create(&label);
        let _ = self.pim_overdue.get_or_create(&label);
    }

    /// Records a finished cycle of `tenant`: its outcome, duration and the group and member counts.
    pub fn record_cycle(&self, tenant: &str, status: Result<GroupCounts, String>, seconds: f64) {
        let outcome = if status.is_ok() { "ok" } else { "failed" };
        self.cycles.get_or_create(&CycleLabels { tenant: tenant.into(), outcome: outcome.into() }).inc();
        self.cycle_seconds.get_or_create(&TenantLabel { tenant: tenant.into() }).observe(seconds);
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        match status {
            Ok(status) => {
                failing.remove(tenant);
                self.record_groups(tenant, &status);
            }
            Err(cause) => {
                failing.insert(tenant.to_string(), cause);
            }
        }
    }

    fn record_groups(&self, tenant: &str, counts: &GroupCounts) {
        let set = |state: &str, value: usize| {
            self.groups
                .get_or_create(&GroupStateLabels { tenant: tenant.into(), state: state.into() })
                .set(value as i64);
        };
        set("managed", counts.managed);
        set("held", counts.held);
        set("quarantined", counts.quarantined);
        set("excluded", counts.excluded);
        set("conflict", counts.conflict);
        set("lookalike", counts.lookalike);
        set("pending", counts.pending);
        set("held_delete", counts.held_delete);
        set("held_rename", counts.held_rename);
        set("held_member_removals", counts.held_member_removals);
        for (reason, count) in &counts.skipped {
            self.members_skipped
                .get_or_create(&SkipLabels { tenant: tenant.into(), reason: reason.to_string() })
                .set(*count as i64);
        }
    }

    /// Records this agent's role for `tenant`; holding the lease again clears an earlier loss.
    pub fn record_lease_role(&self, tenant: &str, active: bool) {
        self.lease_active.get_or_create(&TenantLabel { tenant: tenant.into() }).set(i64::from(active));
        if active {
            self.lost_leases.lock().unwrap_or_else(PoisonError::into_inner).remove(tenant);
        }
    }

    /// Records that this agent lost `tenant`'s lease without releasing it.
    pub fn record_lease_lost(&self, tenant: &str, why: &str) {
        self.lease_lost.get_or_create(&TenantLabel { tenant: tenant.into() }).inc();
        self.lease_active.get_or_create(&TenantLabel { tenant: tenant.into() }).set(0);
        self.lost_leases.lock().unwrap_or_else(PoisonError::into_inner).insert(tenant.to_string(), why.to_string());
    }

    /// Records whether another running process uses this agent's id for `tenant`.
    pub fn record_duplicate(&self, tenant: &str, duplicate: bool) {
        let mut duplicates = self.duplicates.lock().unwrap_or_else(PoisonError::into_inner);
        if duplicate {
            duplicates.insert(tenant.to_string());
        } else {
            duplicates.remove(tenant);
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// `None` when healthy, else which tenants are not, and how (a cycle failed, the lease was lost). The
    /// causes carry DNs and host names, and `/healthz` needs no login, so they stay in the log and `status`.
    pub fn unhealthy(&self) -> Option<String> {
        let failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        let lost = self.lost_leases.lock().unwrap_or_else(PoisonError::into_inner);
        let duplicates = self.duplicates.lock().unwrap_or_else(PoisonError::into_inner);
        if failing.is_empty() && lost.is_empty() && duplicates.is_empty() {
            return None;
        }
        let failed = failing.keys().map(|tenant| format!("tenant {tenant}: last cycle failed\n"));
        let lost = lost.keys().map(|tenant| format!("tenant {tenant}: writer lease lost\n"));
        let twins =
            duplicates.iter().map(|tenant| format!("tenant {tenant}: agent id used by another running process\n"));
        Some(failed.chain(lost).chain(twins).collect())
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Serves `/metrics` and `/healthz` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async { ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], global().encode()) }),
        )
        .route(
            "/healthz",
            get(|| async {
                match global().unhealthy() {
                    None => (StatusCode::OK, "ok\n".to_string()),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics server stopped: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_and_health_are_recorded() {
        let metrics = Metrics::new();
        let counts = GroupCounts { managed: 3, skipped: [("unresolved_sid", 2)].into(), ..Default::default() };
        metrics.record_cycle("a", Ok(counts.clone()), 0.5);
        assert_eq!(metrics.unhealthy(), None);
        metrics.record_cycle("b", Err("cannot reach ldaps://dc1.corp.example:636".into()), 1.0);
        let why = metrics.unhealthy().unwrap();
        assert!(why.contains("tenant b: last cycle failed") && !why.contains("dc1"), "no host names: {why}");
        let text = metrics.encode();
        assert!(text.contains(r#"writeback_cycles_total{tenant="a",outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"writeback_groups{tenant="a",state="managed"} 3"#), "{text}");
        assert!(text.contains(r#"writeback_members_skipped{tenant="a",reason="unresolved_sid"} 2"#), "{text}");
        metrics.record_cycle("b", Ok(counts), 0.1);
        assert_eq!(metrics.unhealthy(), None);
    }

    #[test]
    fn a_lost_lease_is_unhealthy_until_the_lease_is_held_again() {
        let metrics = Metrics::new();
        metrics.record_lease_role("a", true);
        assert!(metrics.encode().contains(r#"writeback_lease_active{tenant="a"} 1"#));
        metrics.record_lease_lost("a", "another agent changed the lease first");
        let why = metrics.unhealthy().unwrap();
        assert!(why.contains("tenant a: writer lease lost") && !why.contains("another agent"), "{why}");
        assert!(metrics.encode().contains(r#"writeback_lease_active{tenant="a"} 0"#));
        metrics.record_lease_role("a", false);
        assert!(metrics.unhealthy().is_some());
        metrics.record_lease_role("a", true);
        assert_eq!(metrics.unhealthy(), None);
    }
}
