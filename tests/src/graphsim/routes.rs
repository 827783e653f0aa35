//! The HTTP surface: routes, and the middleware every Graph and token
//! request passes through (request ids, common headers, faults, logging).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;

use super::faults::{self, Endpoint, FaultAction};
use super::wire::{REQUEST_IDS, RequestIds, new_guid};
use super::{Simulator, control, graph, oauth};

/// One request the simulator answered, for tests to assert on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Which endpoint it was addressed to.
    pub endpoint: Endpoint,
    /// Status sent; None when the connection was dropped instead.
    pub status: Option<u16>,
    /// The injected fault that shaped the answer, if any.
    pub fault: Option<String>,
    /// Milliseconds since the simulator started, when the request arrived.
    pub at_ms: u64,
}

/// All routes, with Graph's behaviour on everything outside `/_sim/`.
pub(crate) fn router(sim: Arc<Simulator>) -> Router {
    // In Azure the login and Graph hosts differ; serving the token endpoint under `/login` as well lets a
    // test give `login_url` and `graph_url` different values.
    let mut graph_routes = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(oauth::token))
        .route("/login/{tenant}/oauth2/v2.0/token", post(oauth::token));
    for version in ["beta", "v1.0"] {
        graph_routes = graph_routes
            .route(&format!("/{version}/groups/delta"), get(graph::groups_delta))
            .route(&format!("/{version}/groups/microsoft.graph.delta"), get(graph::groups_delta))
            .route(&format!("/{version}/users/delta"), get(graph::users_delta))
            .route(&format!("/{version}/users/microsoft.graph.delta"), get(graph::users_delta))
            .route(&format!("/{version}/groups/{{id}}"), get(graph::entity))
            .route(&format!("/{version}/users/{{id}}"), get(graph::entity))
            .route(&format!("/{version}/directory/deletedItems/{{id}}"), get(graph::deleted_item))
            .route(&format!("/{version}/directory/deleteditems/{{id}}"), get(graph::deleted_item));
    }
    // Tenant-wide group settings are a v1.0 collection (beta calls them directory settings).
    graph_routes = graph_routes.route("/v1.0/groupSettings", get(graph::group_settings));
    graph_routes = graph_routes.route(
        "/v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleInstances",
        get(super::pim::assignment_schedule_instances),
    );
    for version in ["beta", "v1.0"] {
        graph_routes = graph_routes.route(&format!("/{version}/$batch"), post(graph::batch));
    }
    let graph_routes = graph_routes
        .fallback(graph::unknown_resource)
        .layer(middleware::from_fn_with_state(Arc::clone(&sim), graph_middleware));
    graph_routes.merge(control::router()).with_state(sim)
}

/// Graph echoes `client-request-id`, or reuses its own id when none is sent.
fn request_ids(headers: &HeaderMap) -> RequestIds {
    let request_id = new_guid();
    let client_request_id = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| request_id.clone(), str::to_owned);
    RequestIds { request_id, client_request_id }
}

async fn graph_middleware(State(sim): State<Arc<Simulator>>, request: Request, next: Next) -> Response {
    let ids = request_ids(request.headers());
    let mut response = REQUEST_IDS.scope(ids.clone(), serve(sim, request, next)).await;
    let headers = response.headers_mut();
    for (name, value) in [("request-id", ids.request_id), ("client-request-id", ids.client_request_id)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    headers.insert(HeaderName::from_static("x-ms-resource-unit"), HeaderValue::from_static("1"));
    response
}

/// Applies a queued fault, if one targets this request, and logs the outcome.
async fn serve(sim: Arc<Simulator>, request: Request, next: Next) -> Response {
    let endpoint = Endpoint::classify(request.uri().path());
    let mut record = RequestRecord {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        query: request.uri().query().map(str::to_owned),
        endpoint,
        status: None,
        fault: None,
        at_ms: sim.uptime_ms(),
    };
    let fault = sim.take_fault(endpoint, faults::by_delta_link(request.uri().query()));
    record.fault = fault.as_ref().map(|f| f.kind.label());
    let action = fault.map(|f| {
        faults::action(
            &f.kind,
            endpoint,
            || sim.fresh_start_url(request.uri()),
            || format!("{}{}", sim.base_url(), request.uri()),
        )
    });
    let response = match action {
        None => next.run(request).await,
        Some(FaultAction::Respond(response)) => response,
        Some(FaultAction::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            next.run(request).await
        }
        Some(FaultAction::Reset) => {
            sim.log_request(record);
            drop_connection()
        }
    };
    record.status = Some(response.status().as_u16());
    sim.log_request(record);
    response
}

/// Ends the connection without a response. axum gives handlers no way to
/// close the socket, but it serves each connection in its own task: unwinding
/// that task drops the socket. `resume_unwind` skips the panic hook, so
/// nothing is printed, and the server's accept loop is unaffected.
fn drop_connection() -> ! {
    std::panic::resume_unwind(Box::new("graph simulator: injected connection reset"))
}
