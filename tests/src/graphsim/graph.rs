//! Graph endpoints: `groups/delta`, `users/delta` and
//! `directory/deletedItems/{id}`.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::{Map, Value, json};

use super::Simulator;
use super::delta::{self, ApiVersion, EntryOptions, Query, Resource};
use super::faults::gone;
use super::rounds::{TokenProblem, TokenTarget, latest_body};
use super::wire::{graph_error, graph_json};

/// Why a delta request fails.
#[derive(Debug)]
enum DeltaError {
    /// 400 for a malformed or unsupported query.
    BadRequest(String),
    /// 400 `syncStateNotFound` for a token that was never issued.
    SyncStateNotFound,
    /// 410 for an expired token; the client restarts at `location`.
    Gone { location: String },
}

impl IntoResponse for DeltaError {
    fn into_response(self) -> Response {
        match self {
            Self::BadRequest(message) => graph_error(StatusCode::BAD_REQUEST, "Request_BadRequest", &message),
            Self::SyncStateNotFound => graph_error(
                StatusCode::BAD_REQUEST,
                "syncStateNotFound",
                "The state token is not recognised; start a new round without a token.",
            ),
            Self::Gone { location } => gone(&location),
        }
    }
}

/// Query options of a delta request. Graph accepts option names in any case
/// and without the `$`.
#[derive(Debug, Default)]
struct DeltaParams {
    select: Option<String>,
    expand_members: bool,
    skip_token: Option<String>,
    delta_token: Option<String>,
}

impl DeltaParams {
    fn parse(query: Option<&str>) -> Result<Self, DeltaError> {
        let mut params = Self::default();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let dollar = name.starts_with('$');
            match name.trim_start_matches('$').to_ascii_lowercase().as_str() {
                "select" => params.select = Some(value.into_owned()),
                "skiptoken" => params.skip_token = Some(value.into_owned()),
                "deltatoken" => params.delta_token = Some(value.into_owned()),
                "expand" if value.eq_ignore_ascii_case("members") => params.expand_members = true,
                "expand" | "top" | "orderby" | "filter" | "search" | "count" | "skip" => {
                    return Err(unsupported_option(&name));
                }
                _ if dollar => {
                    return Err(DeltaError::BadRequest(format!("Query option '{name}' is not allowed.")));
                }
                _ => {}
            }
        }
        Ok(params)
    }
}

// `$filter=id eq '...'` is documented for delta but not simulated.
fn unsupported_option(name: &str) -> DeltaError {
    DeltaError::BadRequest(format!("The query option '{name}' is not supported with delta queries on this simulator."))
}

/// `Prefer: return=minimal` asks for changed properties only.
fn prefers_minimal(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("return=minimal"))
}

/// `GET /{version}/groups/delta`.
pub(crate) async fn groups_delta(State(sim): State<Arc<Simulator>>, uri: Uri, headers: HeaderMap) -> Response {
    delta_endpoint(&sim, Resource::Groups, &uri, &headers)
}

/// `GET /{version}/users/delta`.
pub(crate) async fn users_delta(State(sim): State<Arc<Simulator>>, uri: Uri, headers: HeaderMap) -> Response {
    delta_endpoint(&sim, Resource::Users, &uri, &headers)
}

fn delta_endpoint(sim: &Simulator, resource: Resource, uri: &Uri, headers: &HeaderMap) -> Response {
    if let Err(denied) = sim.authorize(headers) {
        return denied.into_response();
    }
    let version = ApiVersion::from_path(uri.path()).unwrap_or(ApiVersion::V1);
    let minimal = sim.config().changed_only || prefers_minimal(headers);
    let result = DeltaParams::parse(uri.query()).and_then(|p| sim.serve_delta(resource, version, &p, minimal));
    match result {
        Ok(mut body) => {
            if resource == Resource::Groups && sim.config().delta_omits_writeback {
                for entry in body["value"].as_array_mut().into_iter().flatten() {
                    entry.as_object_mut().map(|e| e.remove("writebackConfiguration"));
                }
            }
            graph_json(StatusCode::OK, &body)
        }
        Err(error) => error.into_response(),
    }
}

impl Simulator {
    /// The body answering one delta request.
    fn serve_delta(
        &self,
        resource: Resource,
        version: ApiVersion,
        params: &DeltaParams,
        minimal: bool,
    ) -> Result<Value, DeltaError> {
        if let Some(token) = &params.skip_token {
            if params.select.is_some() {
                return Err(DeltaError::BadRequest("$select cannot be combined with $skiptoken.".into()));
            }
            return self.serve_page(resource, token);
        }
        let requested = Query::new(resource, version, params.select.as_deref(), params.expand_members)
            .map_err(DeltaError::BadRequest)?;
        match params.delta_token.as_deref() {
            None | Some("") => Ok(self.start_round(requested, None, minimal)),
            Some(token) if token.eq_ignore_ascii_case("latest") => Ok(self.latest(&requested)),
            Some(token) => {
                let (query, seq) = self.resolve_delta_token(resource, token)?;
                // A `$select` on a deltaLink re-scopes what is tracked, which
                // the delta overview announces for directory objects.
                let query = if params.select.is_some() { requested } else { query };
                Ok(self.start_round(query, Some(seq), minimal))
            }
        }
    }

    fn resolve_delta_token(&self, resource: Resource, token: &str) -> Result<(Query, u64), DeltaError> {
        match self.lock().rounds.resolve(token) {
            Ok(TokenTarget::Delta { query, seq }) if query.resource == resource => Ok((query, seq)),
            Ok(_) | Err(TokenProblem::Unknown) => Err(DeltaError::SyncStateNotFound),
            Err(TokenProblem::Expired(query)) => {
                Err(DeltaError::Gone { location: query.fresh_start_url(self.base_url()) })
            }
        }
    }

    fn serve_page(&self, resource: Resource, token: &str) -> Result<Value, DeltaError> {
        let state = self.lock();
        match state.rounds.resolve(token) {
            Ok(TokenTarget::Page { round, page }) => state
                .rounds
                .page(round, page)
                .filter(|view| view.resource() == resource)
                .map(|view| view.body(self.base_url()))
                .ok_or(DeltaError::SyncStateNotFound),
            Ok(TokenTarget::Delta { .. }) | Err(TokenProblem::Unknown) => Err(DeltaError::SyncStateNotFound),
            Err(TokenProblem::Expired(query)) => {
                Err(DeltaError::Gone { location: query.fresh_start_url(self.base_url()) })
            }
        }
    }

    /// `$deltatoken=latest`: a deltaLink for "now" and no data.
    fn latest(&self, query: &Query) -> Value {
        let mut state = self.lock();
        let seq = state.tenant.seq();
        let token = state.rounds.issue_delta_token(query, seq);
        latest_body(self.base_url(), query, &token)
    }

    /// Snapshots a round (initial when `since` is None) and returns page 0.
    fn start_round(&self, query: Query, since: Option<u64>, minimal: bool) -> Value {
        let options = EntryOptions {
            members_per_entry: self.config().members_per_entry,
            minimal,
            report_deleted_initially: self.config().initial_round_reports_deleted,
        };
        let mut state = self.lock();
        let mut entries = match since {
            None => delta::initial_entries(&state.tenant, &query, options),
            Some(seq) => delta::change_entries(&state.tenant, &query, seq, options),
        };
        for entry in &mut entries {
            let garbled = entry.get("id").and_then(Value::as_str).and_then(|id| state.garbled.get(id));
            if let (Some(raw), Some(object)) = (garbled.cloned(), entry.as_object_mut()) {
                object.extend(raw);
            }
        }
        if let Some(seed) = self.config().shuffle_seed {
            let mut rng = StdRng::seed_from_u64(seed ^ state.rounds.started() as u64);
            entries.shuffle(&mut rng);
        }
        let seq = state.tenant.seq();
        let round = state.rounds.start(query, seq, entries, self.config().page_size);
        state.rounds.page(round, 0).map_or(Value::Null, |view| view.body(self.base_url()))
    }

    /// Where a 410 for this request sends the client: the same query with an
    /// empty `$deltatoken`.
    pub(crate) fn fresh_start_url(&self, uri: &Uri) -> String {
        let Some(resource) = resource_of(uri.path()) else {
            return format!("{}{}", self.base_url(), uri);
        };
        let version = ApiVersion::from_path(uri.path()).unwrap_or(ApiVersion::V1);
        let params = DeltaParams::parse(uri.query()).unwrap_or_default();
        let token = params.skip_token.as_deref().or(params.delta_token.as_deref());
        let from_token = token.and_then(|t| self.lock().rounds.query_for_token(t));
        let query = from_token
            .or_else(|| Query::new(resource, version, params.select.as_deref(), params.expand_members).ok())
            .unwrap_or(Query { resource, version, select: None });
        query.fresh_start_url(self.base_url())
    }
}

fn resource_of(path: &str) -> Option<Resource> {
    let path = path.to_ascii_lowercase();
    if path.contains("/groups/") {
        Some(Resource::Groups)
    } else if path.contains("/users/") {
        Some(Resource::Users)
    } else {
        None
    }
}

/// `GET /{version}/directory/deletedItems/{id}`.
pub(crate) async fn deleted_item(
    State(sim): State<Arc<Simulator>>,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = sim.authorize(&headers) {
        return denied.into_response();
    }
    let id = id.map(|Path(id)| id).unwrap_or_default();
    let version = ApiVersion::from_path(uri.path()).unwrap_or(ApiVersion::V1);
    let select = DeltaParams::parse(uri.query()).ok().and_then(|p| p.select);
    match sim.deleted_item_body(&id, version, select.as_deref()) {
        Some(body) => graph_json(StatusCode::OK, &body),
        None => graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!(
                "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
            ),
        ),
    }
}

/// `GET /v1.0/groupSettings`: the tenant-wide group settings. A tenant that never created the `Group.Unified`
/// setting has none, and Graph answers an empty collection.
pub(crate) async fn group_settings(State(sim): State<Arc<Simulator>>, headers: HeaderMap) -> Response {
    if let Err(denied) = sim.authorize(&headers) {
        return denied.into_response();
    }
    let value = sim.lock().unified_writeback_default;
    let settings: Vec<Value> = value
        .map(|default| {
            json!({
                "id": "9f6e1b2c-3d4e-4f50-8a61-7b8c9d0e1f2a",
                "displayName": "Group.Unified",
                "templateId": "62375ab9-6b52-47ed-826b-58e47e0e304b",
                "values": [
                    {"name": "EnableGroupCreation", "value": "true"},
                    {"name": "NewUnifiedGroupWritebackDefault", "value": if default { "true" } else { "false" }},
                ],
            })
        })
        .into_iter()
        .collect();
    graph_json(
        StatusCode::OK,
        &json!({ "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#groupSettings", "value": settings }),
    )
}

/// `POST /{version}/$batch`: up to 20 requests in one, answered one by one and not in the order sent, as
/// Graph's JSON batching does. Only GETs of a group or user are understood; anything else is answered 400.
pub(crate) async fn batch(State(sim): State<Arc<Simulator>>, uri: Uri, headers: HeaderMap, body: String) -> Response {
    if let Err(denied) = sim.authorize(&headers) {
        return denied.into_response();
    }
    let version = ApiVersion::from_path(uri.path()).unwrap_or(ApiVersion::V1);
    let requests = serde_json::from_str::<Value>(&body).ok().and_then(|b| b["requests"].as_array().cloned());
    let Some(requests) = requests else {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid batch payload format.");
    };
    if requests.len() > 20 {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Number of batch requests exceeds the maximum of 20.",
        );
    }
    let mut responses: Vec<Value> = requests.iter().map(|request| sim.batch_item(version, request)).collect();
    responses.reverse();
    graph_json(StatusCode::OK, &json!({ "responses": responses }))
}

impl Simulator {
    /// One object as a GET of it answers, or None when there is no live object with that id.
    fn entity_body(&self, resource: Resource, version: ApiVersion, id: &str, select: Option<&str>) -> Option<Value> {
        let state = self.lock();
        let properties = match resource {
            Resource::Groups => {
                state.tenant.group(id).map(|g| entity_properties(resource, version, select, |n| g.property(n)))
            }
            Resource::Users => {
                state.tenant.user(id).map(|u| entity_properties(resource, version, select, |n| u.property(n)))
            }
        };
        properties.map(|mut properties| {
            properties.insert("id".into(), json!(id));
            Value::Object(properties)
        })
    }

    /// The answer to one request of a batch.
    fn batch_item(&self, version: ApiVersion, request: &Value) -> Value {
        let id = request["id"].clone();
        let url = request["url"].as_str().unwrap_or_default();
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let target = path.trim_start_matches('/').split_once('/');
        let resource = match target.map(|(collection, _)| collection.to_ascii_lowercase()) {
            Some(c) if c == "groups" => Some(Resource::Groups),
            Some(c) if c == "users" => Some(Resource::Users),
            _ => None,
        };
        let answer = |status: u16, body: Value| json!({ "id": id, "status": status, "headers": {"Content-Type": "application/json"}, "body": body });
        let (Some(resource), Some((_, object)), true) =
            (resource, target, request["method"].as_str().is_some_and(|m| m.eq_ignore_ascii_case("GET")))
        else {
            return answer(
                400,
                super::wire::graph_error_body("BadRequest", "Only GET requests of a group or user are supported here."),
            );
        };
        let select = DeltaParams::parse(Some(query)).ok().and_then(|p| p.select);
        match self.entity_body(resource, version, object, select.as_deref()) {
            Some(body) => answer(200, body),
            None => answer(
                404,
                super::wire::graph_error_body(
                    "Request_ResourceNotFound",
                    &format!(
                        "Resource '{object}' does not exist or one of its queried reference-property objects are not present."
                    ),
                ),
            ),
        }
    }
}

/// `GET /{version}/groups/{id}` and `/users/{id}`: a live object, or 404
/// `Request_ResourceNotFound` (a soft-deleted object is found only in deleted items).
pub(crate) async fn entity(
    State(sim): State<Arc<Simulator>>,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = sim.authorize(&headers) {
        return denied.into_response();
    }
    let id = id.map(|Path(id)| id).unwrap_or_default();
    let version = ApiVersion::from_path(uri.path()).unwrap_or(ApiVersion::V1);
    let select = DeltaParams::parse(uri.query()).ok().and_then(|p| p.select);
    let resource = resource_of(uri.path()).unwrap_or(Resource::Groups);
    match sim.entity_body(resource, version, &id, select.as_deref()) {
        Some(body) => graph_json(StatusCode::OK, &body),
        None => graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!(
                "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
            ),
        ),
    }
}

impl Simulator {
    /// A soft-deleted group or user as `deletedItems/{id}` returns it.
    fn deleted_item_body(&self, id: &str, version: ApiVersion, select: Option<&str>) -> Option<Value> {
        let state = self.lock();
        let (odata_type, mut properties, deleted_at) = if let Some(d) = state.tenant.deleted_group(id) {
            let properties = entity_properties(Resource::Groups, version, select, |n| d.object.property(n));
            ("#microsoft.graph.group", properties, d.deleted_date_time.clone())
        } else {
            let d = state.tenant.deleted_user(id)?;
            let properties = entity_properties(Resource::Users, version, select, |n| d.object.property(n));
            ("#microsoft.graph.user", properties, d.deleted_date_time.clone())
        };
        properties.insert("id".into(), json!(id));
        properties.insert("deletedDateTime".into(), json!(deleted_at));
        properties.insert("@odata.type".into(), json!(odata_type));
        properties.insert(
            "@odata.context".into(),
            json!(format!("{}/{}/$metadata#directoryObjects/$entity", self.base_url(), version.segment())),
        );
        Some(Value::Object(properties))
    }
}

/// The properties an entity GET returns: the selected ones (unknown names
/// are skipped, since the entity set is the untyped directoryObjects), or all.
fn entity_properties(
    resource: Resource,
    version: ApiVersion,
    select: Option<&str>,
    property: impl Fn(&str) -> Option<Value>,
) -> Map<String, Value> {
    let query = Query { resource, version, select: None };
    let wanted = |name: &&str| select.is_none_or(|s| s.split(',').any(|raw| raw.trim().eq_ignore_ascii_case(name)));
    query.properties().into_iter().filter(wanted).filter_map(|n| property(n).map(|v| (n.to_owned(), v))).collect()
}

/// Any other path: Graph's answer for a segment it does not know.
pub(crate) async fn unknown_resource(State(sim): State<Arc<Simulator>>, uri: Uri, headers: HeaderMap) -> Response {
    if ApiVersion::from_path(uri.path()).is_none() {
        return graph_error(StatusCode::NOT_FOUND, "UnknownError", "No such endpoint.");
    }
    if let Err(denied) = sim.authorize(&headers) {
        return denied.into_response();
    }
    let segment = uri.path().trim_start_matches('/').split('/').nth(1).unwrap_or_default();
    graph_error(StatusCode::BAD_REQUEST, "BadRequest", &format!("Resource not found for the segment '{segment}'."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_options_are_parsed_like_graph_does() {
        let params = DeltaParams::parse(Some("$Select=displayName,members&$deltaToken=abc")).expect("valid");
        assert_eq!(params.select.as_deref(), Some("displayName,members"));
        assert_eq!(params.delta_token.as_deref(), Some("abc"));
        assert!(matches!(DeltaParams::parse(Some("$top=5")), Err(DeltaError::BadRequest(_))));
        assert!(matches!(DeltaParams::parse(Some("$bogus=1")), Err(DeltaError::BadRequest(_))));
        assert!(DeltaParams::parse(Some("$expand=members")).is_ok_and(|p| p.expand_members));
    }

    #[test]
    fn prefer_minimal_is_found_among_other_preferences() {
        let mut headers = HeaderMap::new();
        headers.insert("prefer", "odata.maxpagesize=5, return=minimal".parse().expect("header"));
        assert!(prefers_minimal(&headers));
        assert!(!prefers_minimal(&HeaderMap::new()));
    }
}
