//! PIM for Groups: `GET /v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleInstances`. As in
//! Graph, the request must filter on `groupId` or `principalId`, only current instances are listed (an
//! instance is gone once it ends), and pages are the server's to cut. Ending an instance leaves the
//! membership in group delta until the test removes it, as Graph's removal may come later.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::model::MemberRef;
use super::wire::{UtcTime, graph_error, graph_json, new_guid};
use super::{GraphSim, Simulator};

/// Instances per page.
const PAGE_SIZE: usize = 2;

/// One assignment schedule instance.
#[derive(Debug, Clone, PartialEq)]
pub struct PimInstance {
    pub id: String,
    pub group_id: String,
    pub principal_id: String,
    /// `member` or `owner`.
    pub access_id: String,
    /// `assigned` or `activated`.
    pub assignment_type: String,
    pub start: SystemTime,
    /// `None`: permanent.
    pub end: Option<SystemTime>,
}

impl GraphSim {
    /// Activates `principal`'s eligible membership of `group` for `lasts`: the instance is listed until its
    /// end and the membership is added to the group (delta reports it). Returns the instance's end.
    pub fn activate_membership(&self, group_id: &str, principal: &MemberRef, lasts: Duration) -> SystemTime {
        let now = self.simulator().wall_now();
        let end = now + lasts;
        self.simulator().add_instance(PimInstance {
            id: new_guid(),
            group_id: group_id.to_string(),
            principal_id: principal.id.clone(),
            access_id: "member".into(),
            assignment_type: "activated".into(),
            start: now,
            end: Some(end),
        });
        self.add_members(group_id, std::slice::from_ref(principal)).expect("the group exists");
        end
    }

    /// A permanent (assigned) membership of `principal` in `group`, listed as an instance without an end.
    pub fn assign_membership(&self, group_id: &str, principal: &MemberRef) {
        self.simulator().add_instance(PimInstance {
            id: new_guid(),
            group_id: group_id.to_string(),
            principal_id: principal.id.clone(),
            access_id: "member".into(),
            assignment_type: "assigned".into(),
            start: self.simulator().wall_now(),
            end: None,
        });
        let _ = self.add_members(group_id, std::slice::from_ref(principal));
    }

    /// Ends `principal`'s instances in `group` now (a deactivation). The membership stays in group delta
    /// until the test removes it.
    pub fn deactivate_membership(&self, group_id: &str, principal_id: &str) {
        let now = self.simulator().wall_now();
        for instance in self.simulator().lock().pim.iter_mut() {
            if instance.group_id == group_id && instance.principal_id == principal_id {
                instance.end = Some(now);
            }
        }
    }

    /// Makes schedule requests fail with 403, as for an app without `PrivilegedAssignmentSchedule.Read.AzureADGroup`.
    pub fn deny_pim(&self, denied: bool) {
        self.simulator().lock().pim_denied = denied;
    }
}

impl Simulator {
    /// The simulator's wall clock (the real one, moved by `advance_clock`).
    pub(crate) fn wall_now(&self) -> SystemTime {
        SystemTime::now() + self.lock().clock_offset
    }

    fn add_instance(&self, instance: PimInstance) {
        self.lock().pim.push(instance);
    }
}

/// `GET /v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleInstances`.
pub(crate) async fn assignment_schedule_instances(
    State(sim): State<Arc<Simulator>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = sim.authorize(&headers) {
        return denied.into_response();
    }
    if sim.lock().pim_denied {
        return graph_error(StatusCode::FORBIDDEN, "Forbidden", "Insufficient privileges to complete the operation.");
    }
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let param = |name: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    let Some((field, value)) = param("$filter").as_deref().and_then(parse_filter) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The request requires a $filter on groupId or principalId (eq).",
        );
    };
    let skip: usize = param("$skiptoken").and_then(|t| t.parse().ok()).unwrap_or(0);
    let now = sim.wall_now();
    let listed: Vec<PimInstance> = sim
        .lock()
        .pim
        .iter()
        .filter(|i| i.end.is_none_or(|end| end > now))
        .filter(|i| if field == "groupId" { i.group_id == value } else { i.principal_id == value })
        .cloned()
        .collect();
    let page: Vec<Value> = listed.iter().skip(skip).take(PAGE_SIZE).map(instance_json).collect();
    let mut body = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#identityGovernance/privilegedAccess/group/assignmentScheduleInstances",
        "value": page,
    });
    if skip + PAGE_SIZE < listed.len() {
        let mut next = url::Url::parse(&format!("{}{}", sim.base_url(), uri.path())).expect("a URL");
        next.query_pairs_mut()
            .append_pair("$filter", &param("$filter").unwrap_or_default())
            .append_pair("$skiptoken", &(skip + PAGE_SIZE).to_string());
        body["@odata.nextLink"] = Value::String(next.to_string());
    }
    graph_json(StatusCode::OK, &body)
}

/// `groupId eq '…'` or `principalId eq '…'`, and nothing else.
fn parse_filter(filter: &str) -> Option<(&'static str, String)> {
    let (field, rest) = filter.trim().split_once(' ')?;
    let field = ["groupId", "principalId"].into_iter().find(|f| f.eq_ignore_ascii_case(field))?;
    let value = rest.trim().strip_prefix("eq")?.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    Some((field, value.to_string()))
}

fn instance_json(instance: &PimInstance) -> Value {
    let time = |t: SystemTime| {
        let at = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        // Graph writes fractions of a second; a client must read them.
        format!("{}.{:03}Z", UtcTime::from_unix(at.as_secs()).graph_date(), at.subsec_millis())
    };
    json!({
        "id": instance.id,
        "groupId": instance.group_id,
        "principalId": instance.principal_id,
        "accessId": instance.access_id,
        "assignmentType": if instance.assignment_type == "activated" { "Activated" } else { "Assigned" },
        "memberType": "Direct",
        "startDateTime": time(instance.start),
        "endDateTime": instance.end.map(time),
        "assignmentScheduleId": instance.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_eq_filter_on_group_or_principal_is_taken() {
        assert_eq!(parse_filter("groupId eq 'abc'"), Some(("groupId", "abc".into())));
        assert_eq!(parse_filter("principalid eq 'x'"), Some(("principalId", "x".into())));
        assert_eq!(parse_filter("groupId ne 'abc'"), None);
        assert_eq!(parse_filter("accessId eq 'member'"), None);
        assert_eq!(parse_filter(""), None);
    }
}
