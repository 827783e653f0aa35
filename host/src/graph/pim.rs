//! PIM for Groups: the assignment schedule instances of a group, which say who is a member until when.

use serde::Deserialize;

use super::{GraphClient, GraphError, path_of, urlencode};
use crate::pim::Instance;

/// Pages one group's instances may take before the answer counts as a Graph fault.
const MAX_PAGES: usize = 1000;

impl GraphClient {
    /// Every assignment schedule instance of group `group_id`, all pages. Graph requires the `groupId` filter
    /// (or `principalId`); the permission is `PrivilegedAssignmentSchedule.Read.AzureADGroup`.
    pub async fn schedule_instances(&self, group_id: &str) -> Result<Vec<Instance>, GraphError> {
        let filter = format!("groupId eq '{}'", group_id.replace('\'', "''"));
        let mut url = format!(
            "{}/v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleInstances?$filter={}",
            self.graph_base,
            urlencode(&filter)
        );
        let mut instances = Vec::new();
        for _ in 0..MAX_PAGES {
            let body = self.get(&url).await?;
            let (page, next) = parse_instances(&body).map_err(|cause| GraphError::MalformedSchedule {
                path: path_of(&url),
                group: group_id.to_string(),
                cause,
            })?;
            instances.extend(page);
            match next {
                Some(next) => url = next,
                None => return Ok(instances),
            }
        }
        Err(GraphError::EndlessRound { path: path_of(&url), pages: MAX_PAGES })
    }
}

#[derive(Deserialize)]
struct RawPage {
    value: Vec<RawInstance>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawInstance {
    principal_id: String,
    access_id: String,
    end_date_time: Option<String>,
}

/// One page of instances and the link to the next. A time Graph writes in a form that cannot be read fails
/// the page: an end read wrongly would end a membership at the wrong time.
pub(crate) fn parse_instances(body: &[u8]) -> Result<(Vec<Instance>, Option<String>), String> {
    let page: RawPage = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let instances = page
        .value
        .into_iter()
        .map(|raw| {
            let end = raw.end_date_time.map(|text| seconds(&text)).transpose()?;
            Ok(Instance { principal_id: raw.principal_id.to_ascii_lowercase(), access_id: raw.access_id, end })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((instances, page.next_link))
}

/// Seconds since the Unix epoch of an RFC 3339 time in UTC, as Graph writes them (`2026-12-07T21:00:00.653Z`).
/// A time with another offset is refused rather than read as UTC: an end read hours off keeps a privilege.
fn seconds(text: &str) -> Result<f64, String> {
    let utc = text.strip_suffix(['Z', 'z']).or_else(|| text.strip_suffix("+00:00"));
    let local = utc.filter(|t| !t.contains('+') && t.matches('-').count() == 2);
    let local = local.ok_or_else(|| format!("endDateTime {text:?} is not a UTC time"))?;
    let at =
        humantime::parse_rfc3339_weak(local).map_err(|e| format!("endDateTime {text:?} is not a UTC time ({e})"))?;
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("endDateTime {text:?} is before 1970"))?
        .as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_read_with_their_ends_and_a_bad_time_fails_the_page() {
        let body = br#"{"value":[
            {"principalId":"AAA","groupId":"g","accessId":"member","assignmentType":"Activated","memberType":"Direct","startDateTime":"2026-12-07T20:00:00Z","endDateTime":"2026-12-07T21:00:00.5Z"},
            {"principalId":"bbb","groupId":"g","accessId":"owner","assignmentType":"Assigned","memberType":"Direct","startDateTime":null,"endDateTime":null}
        ],"@odata.nextLink":"https://graph.microsoft.com/v1.0/next"}"#;
        let (instances, next) = parse_instances(body).unwrap();
        assert_eq!(next.as_deref(), Some("https://graph.microsoft.com/v1.0/next"));
        assert_eq!(instances[0].principal_id, "aaa");
        assert_eq!(instances[0].end, Some(1_796_677_200.5));
        assert_eq!(instances[1].end, None);
        let bad = br#"{"value":[{"principalId":"a","accessId":"member","endDateTime":"tomorrow"}]}"#;
        let err = parse_instances(bad).unwrap_err();
        assert!(err.contains("endDateTime \"tomorrow\""), "{err}");
        assert!(parse_instances(br#"{"value":[{"accessId":"member"}]}"#).is_err(), "no principal");
        let seven =
            br#"{"value":[{"principalId":"a","accessId":"member","endDateTime":"2026-12-07T21:00:00.1234567Z"}]}"#;
        assert_eq!(parse_instances(seven).unwrap().0[0].end, Some(1_796_677_200.1234567));
        for offset in ["2026-12-07T21:00:00+02:00", "2026-12-07T21:00:00-05:00", "2026-12-07T21:00:00"] {
            let body = format!(r#"{{"value":[{{"principalId":"a","accessId":"member","endDateTime":"{offset}"}}]}}"#);
            assert!(parse_instances(body.as_bytes()).is_err(), "{offset} is not read as UTC");
        }
    }
}
