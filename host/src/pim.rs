//! Time-bound membership from PIM for Groups: what the agent knows of a group's assignment schedule
//! instances, which members have ended, and how a member is written as a TTL link where the forest can expire
//! it by itself.
//!
//! Graph drops an instance once it ends, and its group delta may go on listing the membership for minutes
//! after. So the agent remembers each time-bound member's end and keeps the member out of AD from then on,
//! whatever delta says, until a later instance (a new activation) or delta's own removal.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One assignment schedule instance of a group, as Graph gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub principal_id: String,
    /// `member` or `owner`; only members are written to AD.
    pub access_id: String,
    /// Seconds since the Unix epoch; `None` for a permanent assignment.
    pub end: Option<f64>,
}

/// A group's time-bound members: the latest end known for each, and which ends were applied already.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Seconds since the Unix epoch, by member (cloud id). Members with a permanent assignment are not here.
    pub ends: BTreeMap<String, f64>,
    /// Members whose end the agent has planned their removal for.
    #[serde(default)]
    pub applied: BTreeSet<String>,
}

impl Schedule {
    /// The schedule after a fresh read of the group's instances at `now`. A member whose instance vanished
    /// before its end was deactivated (or its assignment removed): it ended now. One that vanished after
    /// its end stays ended. A member with a permanent assignment is not time-bound.
    pub fn merged(&self, fresh: &[Instance], now: f64) -> Schedule {
        let members = fresh.iter().filter(|i| i.access_id.eq_ignore_ascii_case("member"));
        let permanent: BTreeSet<&str> =
            members.clone().filter(|i| i.end.is_none()).map(|i| i.principal_id.as_str()).collect();
        let mut ends: BTreeMap<String, f64> = BTreeMap::new();
        for instance in members {
            if let Some(end) = instance.end
                && !permanent.contains(instance.principal_id.as_str())
            {
                let slot = ends.entry(instance.principal_id.clone()).or_insert(end);
                *slot = slot.max(end);
            }
        }
        for (member, &end) in &self.ends {
            if !ends.contains_key(member) && !permanent.contains(member.as_str()) {
                ends.insert(member.clone(), end.min(now));
            }
        }
        // An end that moved (a new activation) is not applied yet.
        let applied = self.applied.iter().filter(|m| ends.get(*m) == self.ends.get(*m)).cloned().collect();
        Schedule { ends, applied }
    }

    /// The members whose membership has ended at `now`, with their ends.
    pub fn ended(&self, now: f64) -> BTreeMap<&str, f64> {
        self.ends.iter().filter(|&(_, &end)| end <= now).map(|(m, &end)| (m.as_str(), end)).collect()
    }

    /// The members whose end has come at `now` and whose removal was not planned yet.
    pub fn due(&self, now: f64) -> Vec<String> {
        self.ended(now).into_keys().filter(|m| !self.applied.contains(*m)).map(str::to_string).collect()
    }

    /// The first end after `now`.
    pub fn next_end(&self, now: f64) -> Option<f64> {
        self.ends.values().copied().filter(|&end| end > now).min_by(f64::total_cmp)
    }

    /// Forgets ended members that are no longer members in the cloud: delta has caught up with them.
    pub fn forget_gone(&mut self, now: f64, is_member: impl Fn(&str) -> bool) {
        self.ends.retain(|member, end| *end > now || is_member(member));
        let ends = &self.ends;
        self.applied.retain(|member| ends.contains_key(member));
    }
}

/// A `member` value that the forest removes by itself after the time left until `end`: `<TTL=seconds,DN>`,
/// rounded up, so that AD never removes a member before its end. `None` once the end has passed.
pub fn ttl_value(dn: &str, end: f64, now: f64) -> Option<String> {
    let left = (end - now).ceil();
    (left >= 1.0).then(|| format!("<TTL={},{dn}>", left as u64))
}

/// The cn of AD's Privileged Access Management optional feature, which makes TTL links possible.
pub const PAM_FEATURE: &str = "Privileged Access Management Feature";

/// Whether the Partitions container's `msDS-EnabledFeature` values name the Privileged Access Management
/// feature. The values are DNs of optional feature objects; only the first RDN is compared.
pub fn pam_enabled(enabled_features: &[String]) -> bool {
    enabled_features.iter().any(|dn| {
        let first = dn.split(',').next().unwrap_or_default().trim();
        first.split_once('=').is_some_and(|(kind, name)| {
            kind.trim().eq_ignore_ascii_case("cn") && name.trim().eq_ignore_ascii_case(PAM_FEATURE)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(principal: &str, end: Option<f64>) -> Instance {
        Instance { principal_id: principal.into(), access_id: "member".into(), end }
    }

    #[test]
    fn a_member_ends_at_its_latest_end_and_a_permanent_assignment_is_not_time_bound() {
        let fresh = [
            member("a", Some(100.0)),
            member("a", Some(200.0)),
            member("b", Some(100.0)),
            member("b", None),
            Instance { principal_id: "c".into(), access_id: "owner".into(), end: Some(50.0) },
        ];
        let s = Schedule::default().merged(&fresh, 10.0);
        assert_eq!(s.ends, BTreeMap::from([("a".to_string(), 200.0)]));
        assert!(s.ended(199.0).is_empty());
        assert_eq!(s.ended(200.0).into_keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(s.next_end(10.0), Some(200.0));
        assert_eq!(s.next_end(200.0), None);
    }

    #[test]
    fn an_instance_graph_dropped_ends_then_or_stays_ended() {
        let s = Schedule::default().merged(&[member("early", Some(500.0)), member("late", Some(100.0))], 50.0);
        // At 150 Graph lists neither: "late" ended at 100; "early" was deactivated before its end.
        let s = s.merged(&[], 150.0);
        assert_eq!(s.ends, BTreeMap::from([("early".to_string(), 150.0), ("late".to_string(), 100.0)]));
        assert_eq!(s.due(150.0), ["early", "late"]);
    }

    #[test]
    fn a_new_activation_undoes_an_applied_end_and_delta_catching_up_forgets_it() {
        let mut s = Schedule::default().merged(&[member("a", Some(100.0))], 50.0);
        s.applied.insert("a".into());
        assert!(s.due(120.0).is_empty(), "applied once");
        let again = s.merged(&[member("a", Some(300.0))], 120.0);
        assert!(again.ended(120.0).is_empty() && again.applied.is_empty());
        let mut gone = s.merged(&[], 120.0);
        gone.forget_gone(120.0, |_| true);
        assert_eq!(gone.ends.len(), 1, "still listed by delta: still kept out");
        gone.forget_gone(120.0, |_| false);
        assert!(gone.ends.is_empty() && gone.applied.is_empty());
    }

    #[test]
    fn a_ttl_link_never_outlives_its_end() {
        let dn = "CN=Ann,OU=Users,DC=corp,DC=example";
        assert_eq!(ttl_value(dn, 1000.0, 400.0).as_deref(), Some("<TTL=600,CN=Ann,OU=Users,DC=corp,DC=example>"));
        assert_eq!(ttl_value(dn, 1000.4, 400.0).as_deref(), Some("<TTL=601,CN=Ann,OU=Users,DC=corp,DC=example>"));
        assert_eq!(ttl_value(dn, 1000.0, 999.5).as_deref(), Some("<TTL=1,CN=Ann,OU=Users,DC=corp,DC=example>"));
        assert_eq!(ttl_value(dn, 1000.0, 1000.0), None);
    }

    #[test]
    fn the_pam_feature_is_found_by_its_name_only() {
        let pam = "CN=Privileged Access Management Feature,CN=Optional Features,CN=Directory Service,CN=Windows NT,CN=Services,CN=Configuration,DC=corp,DC=example";
        let bin = "CN=Recycle Bin Feature,CN=Optional Features,CN=Directory Service,CN=Windows NT,CN=Services,CN=Configuration,DC=corp,DC=example";
        assert!(pam_enabled(&[bin.into(), pam.into()]));
        assert!(pam_enabled(&[pam.to_lowercase()]));
        assert!(!pam_enabled(&[bin.into()]));
        assert!(!pam_enabled(&[]));
        assert!(!pam_enabled(&["OU=Privileged Access Management Feature,DC=x".into()]));
    }
}
