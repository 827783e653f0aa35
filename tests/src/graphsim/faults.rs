//! Injected faults: which requests they hit and the response each produces.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::wire::{
    EntraError, GRAPH_CONTENT_TYPE, TOKEN_CONTENT_TYPE, UtcTime, current_request_ids, graph_error, graph_json,
    invalid_token, with_content_type,
};

/// The endpoint a request was addressed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Endpoint {
    /// `POST /{tenant}/oauth2/v2.0/token`.
    Token,
    /// `GET /{version}/groups/delta`.
    GroupsDelta,
    /// `GET /{version}/users/delta`.
    UsersDelta,
    /// `GET /{version}/directory/deletedItems/{id}`.
    DeletedItems,
    /// Anything else outside `/_sim/`.
    Other,
}

impl Endpoint {
    /// Classifies a request path. Graph paths are case-insensitive.
    pub(crate) fn classify(path: &str) -> Self {
        let path = path.to_ascii_lowercase();
        if path.ends_with("/oauth2/v2.0/token") {
            return Self::Token;
        }
        let rest = path.strip_prefix("/beta/").or_else(|| path.strip_prefix("/v1.0/")).unwrap_or_default();
        match rest {
            "groups/delta" | "groups/microsoft.graph.delta" => Self::GroupsDelta,
            "users/delta" | "users/microsoft.graph.delta" => Self::UsersDelta,
            _ if rest.starts_with("directory/deleteditems/") => Self::DeletedItems,
            _ => Self::Other,
        }
    }
}

/// Which requests a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FaultTarget {
    /// The token endpoint.
    Token,
    /// Group delta pages.
    GroupsDelta,
    /// User delta pages.
    UsersDelta,
    /// Group delta requests by a deltaLink (a `$deltatoken` other than empty or `latest`): how a client
    /// resumes from the cursor it stored at the end of its last round.
    GroupsDeltaLink,
    /// User delta requests by a deltaLink.
    UsersDeltaLink,
    /// Deleted-item lookups.
    DeletedItems,
    /// Whatever request comes next (not `/_sim/`).
    Any,
}

impl FaultTarget {
    fn matches(self, endpoint: Endpoint, by_delta_link: bool) -> bool {
        match self {
            Self::Token => endpoint == Endpoint::Token,
            Self::GroupsDelta => endpoint == Endpoint::GroupsDelta,
            Self::UsersDelta => endpoint == Endpoint::UsersDelta,
            Self::GroupsDeltaLink => endpoint == Endpoint::GroupsDelta && by_delta_link,
            Self::UsersDeltaLink => endpoint == Endpoint::UsersDelta && by_delta_link,
            Self::DeletedItems => endpoint == Endpoint::DeletedItems,
            Self::Any => true,
        }
    }
}

/// Whether a delta request follows a deltaLink: its `$deltatoken` is neither empty (a fresh start, where a
/// 410 sends the client) nor `latest`. A client sends one only from the cursor of its last round.
pub(crate) fn by_delta_link(query: Option<&str>) -> bool {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).any(|(name, value)| {
        name.trim_start_matches('$').eq_ignore_ascii_case("deltatoken")
            && !value.is_empty()
            && !value.eq_ignore_ascii_case("latest")
    })
}

/// What an injected fault does to the request it hits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// 401 `InvalidAuthenticationToken` (at the token endpoint: 401
    /// `invalid_client`, as for a rotated secret).
    Status401,
    /// 410 Gone with a `Location` that restarts the same query.
    Gone410,
    /// 400 `syncStateNotFound`.
    SyncStateNotFound,
    /// 400 `resyncRequired`.
    ResyncRequired,
    /// 400 with this error code: Graph spells its resync codes several ways (`SyncStateNotFound`,
    /// `syncStateInvalid`), and an expired stored nextLink answers `Directory_ExpiredPageToken`.
    Status400(String),
    /// 429 `TooManyRequests` with `Retry-After`.
    Throttle429 {
        /// Seconds in `Retry-After`.
        retry_after_secs: u64,
    },
    /// 503 `serviceNotAvailable`, with `Retry-After` if given.
    Unavailable503 {
        /// Seconds in `Retry-After`, if any.
        retry_after_secs: Option<u64>,
    },
    /// 504 Gateway Timeout.
    GatewayTimeout504,
    /// 500 `generalException`.
    Status500,
    /// 200 with a JSON body cut off mid-way.
    MalformedBody,
    /// The normal response, after this delay.
    Delay(Duration),
    /// The connection is closed without any response.
    ResetConnection,
    /// 307 Temporary Redirect to this URL: what a hijacked proxy or endpoint would answer.
    Redirect307(String),
    /// An empty page whose nextLink is the request's own URL: a round that never ends.
    NextLinkLoop,
    /// This 4xx (400 if `status` is not one) with this error code, which asks for nothing: a link Graph
    /// refuses for a reason of its own, not a resync signal.
    ClientError {
        /// The HTTP status.
        status: u16,
        /// `error.code` of the body.
        code: String,
    },
    /// 200 with a body of `bytes` bytes, the start of a page and then padding: a response too big to read.
    /// It is sent chunked, without Content-Length, unless `content_length`.
    HugeBody {
        /// The body's size.
        bytes: usize,
        /// Whether `Content-Length` announces the size.
        content_length: bool,
    },
}

impl FaultKind {
    /// Short name for the request log.
    pub(crate) fn label(&self) -> String {
        match self {
            Self::Throttle429 { retry_after_secs } => format!("throttle429({retry_after_secs}s)"),
            Self::Delay(delay) => format!("delay({}ms)", delay.as_millis()),
            other => format!("{other:?}"),
        }
    }
}

/// A fault queued for the next request that matches `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Which requests it applies to.
    pub target: FaultTarget,
    /// What it does.
    pub kind: FaultKind,
}

impl Fault {
    /// A fault for the next request to `target`.
    pub fn new(target: FaultTarget, kind: FaultKind) -> Self {
        Self { target, kind }
    }

    /// Whether this fault applies to a request to `endpoint`; `by_delta_link` tells whether it follows a
    /// deltaLink (see [`by_delta_link`]).
    pub(crate) fn hits(&self, endpoint: Endpoint, by_delta_link: bool) -> bool {
        self.target.matches(endpoint, by_delta_link)
    }
}

/// How the middleware carries a fault out.
pub(crate) enum FaultAction {
    /// Send this instead of the real response.
    Respond(Response),
    /// Wait, then serve normally.
    Delay(Duration),
    /// Drop the connection.
    Reset,
}

/// The action for `kind` on a request to `endpoint`. `location` is where a
/// 410 sends the client; it is only computed when needed.
pub(crate) fn action(
    kind: &FaultKind,
    endpoint: Endpoint,
    location: impl FnOnce() -> String,
    own_url: impl FnOnce() -> String,
) -> FaultAction {
    match kind {
        FaultKind::Delay(delay) => FaultAction::Delay(*delay),
        FaultKind::ResetConnection => FaultAction::Reset,
        FaultKind::Redirect307(target) => FaultAction::Respond(redirect(target)),
        FaultKind::NextLinkLoop => {
            FaultAction::Respond(graph_json(StatusCode::OK, &json!({ "value": [], "@odata.nextLink": own_url() })))
        }
        FaultKind::HugeBody { bytes, content_length } => FaultAction::Respond(huge_body(*bytes, *content_length)),
        _ if endpoint == Endpoint::Token => FaultAction::Respond(token_fault(kind)),
        _ => FaultAction::Respond(graph_fault(kind, location)),
    }
}

fn graph_fault(kind: &FaultKind, location: impl FnOnce() -> String) -> Response {
    match kind {
        FaultKind::Status401 => invalid_token("Access token has expired or is not yet valid."),
        FaultKind::Gone410 => gone(&location()),
        FaultKind::SyncStateNotFound => graph_error(
            StatusCode::BAD_REQUEST,
            "syncStateNotFound",
            "The sync state for this token is not found; start a new round.",
        ),
        FaultKind::ResyncRequired => graph_error(
            StatusCode::BAD_REQUEST,
            "resyncRequired",
            "The delta token is no longer valid; the client must resynchronize.",
        ),
        FaultKind::Status400(code) => graph_error(
            StatusCode::BAD_REQUEST,
            code,
            "The request cannot be served with this token; start a new round.",
        ),
        FaultKind::ClientError { status, code } => {
            graph_error(client_status(*status), code, "The request cannot be served.")
        }
        FaultKind::Throttle429 { retry_after_secs } => throttled(*retry_after_secs),
        FaultKind::Unavailable503 { retry_after_secs } => with_retry_after(
            graph_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceNotAvailable",
                "The service is temporarily unavailable.",
            ),
            *retry_after_secs,
        ),
        FaultKind::GatewayTimeout504 => graph_error(StatusCode::GATEWAY_TIMEOUT, "UnknownError", ""),
        FaultKind::Status500 => {
            graph_error(StatusCode::INTERNAL_SERVER_ERROR, "generalException", "An unspecified error has occurred.")
        }
        FaultKind::MalformedBody => truncated(GRAPH_CONTENT_TYPE, r#"{"@odata.context":"x","value":[{"id":"#),
        FaultKind::Delay(_)
        | FaultKind::ResetConnection
        | FaultKind::Redirect307(_)
        | FaultKind::NextLinkLoop
        | FaultKind::HugeBody { .. } => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `status` if it is a client error, else 400.
fn client_status(status: u16) -> StatusCode {
    StatusCode::from_u16(status).ok().filter(StatusCode::is_client_error).unwrap_or(StatusCode::BAD_REQUEST)
}

/// 200 with a body of `bytes` bytes: a page's start, padding, and its end. A whole buffer goes out with
/// Content-Length; the same bytes as a stream have no known length, so they go out chunked.
fn huge_body(bytes: usize, content_length: bool) -> Response {
    const START: &[u8] = br#"{"value":["#;
    const END: &[u8] = b"]}";
    let mut page = Vec::with_capacity(bytes.max(START.len() + END.len()));
    page.extend_from_slice(START);
    page.resize(bytes.saturating_sub(END.len()).max(START.len()), b' ');
    page.extend_from_slice(END);
    let body = if content_length { Body::from(page) } else { Body::from_stream(Body::from(page).into_data_stream()) };
    let mut response = Response::new(body);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(GRAPH_CONTENT_TYPE));
    response
}

/// 307 with `Location`: a client that follows it sends the same request, body included, to `target`.
fn redirect(target: &str) -> Response {
    let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
    if let Ok(value) = HeaderValue::from_str(target) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// 410 Gone: the client's sync state is lost; `Location` restarts the query.
pub(crate) fn gone(location: &str) -> Response {
    let mut response = graph_error(
        StatusCode::GONE,
        "resyncRequired",
        "The delta token has expired; restart the round from the Location header.",
    );
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// 429 as Graph's identity services send it.
fn throttled(retry_after_secs: u64) -> Response {
    let ids = current_request_ids();
    let body = json!({
        "error": {
            "code": "TooManyRequests",
            "message": format!("Too many requests; retry after {retry_after_secs} seconds."),
            "innerError": {
                "code": "429",
                "status": "429",
                "message": "Please retry after the delay in Retry-After.",
                "date": UtcTime::now().graph_date(),
                "request-id": ids.request_id,
                "client-request-id": ids.client_request_id,
            }
        }
    });
    let mut response = with_retry_after(graph_json(StatusCode::TOO_MANY_REQUESTS, &body), Some(retry_after_secs));
    response.headers_mut().insert(
        HeaderName::from_static("x-ms-throttle-information"),
        HeaderValue::from_static("ResourceUnitLimitExceeded"),
    );
    response
}

fn with_retry_after(mut response: Response, secs: Option<u64>) -> Response {
    if let Some(secs) = secs {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn truncated(content_type: &'static str, body: &str) -> Response {
    with_content_type(StatusCode::OK, body.to_owned(), content_type)
}

/// Faults at the token endpoint answer in Entra's error shape.
fn token_fault(kind: &FaultKind) -> Response {
    let (status, error, code, description) = match kind {
        FaultKind::Status401 => {
            (StatusCode::UNAUTHORIZED, "invalid_client", 7_000_215, "Invalid client secret provided.")
        }
        FaultKind::Throttle429 { retry_after_secs } => {
            let error =
                EntraError::new(StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable", 90_033, "Too many requests.");
            return with_retry_after(error.into_response(), Some(*retry_after_secs));
        }
        FaultKind::Unavailable503 { retry_after_secs } => {
            let error = EntraError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                90_033,
                "Service unavailable.",
            );
            return with_retry_after(error.into_response(), *retry_after_secs);
        }
        FaultKind::GatewayTimeout504 => {
            (StatusCode::GATEWAY_TIMEOUT, "temporarily_unavailable", 90_033, "Gateway timeout.")
        }
        FaultKind::MalformedBody => {
            return truncated(TOKEN_CONTENT_TYPE, r#"{"token_type":"Bearer","expires_in":35"#);
        }
        FaultKind::Gone410 | FaultKind::SyncStateNotFound | FaultKind::ResyncRequired | FaultKind::Status400(_) => {
            (StatusCode::BAD_REQUEST, "invalid_request", 90_000, "The request is not valid.")
        }
        FaultKind::ClientError { status, .. } => {
            (client_status(*status), "invalid_request", 90_000, "The request is not valid.")
        }
        FaultKind::Status500
        | FaultKind::Delay(_)
        | FaultKind::ResetConnection
        | FaultKind::Redirect307(_)
        | FaultKind::NextLinkLoop
        | FaultKind::HugeBody { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, "server_error", 50_000, "There was an error issuing a token.")
        }
    };
    EntraError::new(status, error, code, description).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_classified_case_insensitively() {
        assert_eq!(Endpoint::classify("/t/oauth2/v2.0/token"), Endpoint::Token);
        assert_eq!(Endpoint::classify("/beta/groups/delta"), Endpoint::GroupsDelta);
        assert_eq!(Endpoint::classify("/v1.0/users/delta"), Endpoint::UsersDelta);
        assert_eq!(Endpoint::classify("/beta/directory/deleteditems/abc"), Endpoint::DeletedItems);
        assert_eq!(Endpoint::classify("/beta/directory/deletedItems/abc"), Endpoint::DeletedItems);
        assert_eq!(Endpoint::classify("/beta/groups"), Endpoint::Other);
    }

    #[test]
    fn targets_match_their_endpoints_only() {
        let fault = Fault::new(FaultTarget::UsersDelta, FaultKind::Status500);
        assert!(fault.hits(Endpoint::UsersDelta, false));
        assert!(fault.hits(Endpoint::UsersDelta, true));
        assert!(!fault.hits(Endpoint::GroupsDelta, false));
        assert!(Fault::new(FaultTarget::Any, FaultKind::Status500).hits(Endpoint::Token, false));
        let link = Fault::new(FaultTarget::GroupsDeltaLink, FaultKind::Status500);
        assert!(link.hits(Endpoint::GroupsDelta, true));
        assert!(!link.hits(Endpoint::GroupsDelta, false), "a start or a nextLink is not a deltaLink");
        assert!(!link.hits(Endpoint::UsersDelta, true));
    }

    #[test]
    fn only_a_non_empty_delta_token_other_than_latest_is_a_delta_link() {
        assert!(by_delta_link(Some("$deltatoken=abc")));
        assert!(by_delta_link(Some("$select=displayName&deltaToken=abc")));
        let starts = [
            None,
            Some("$select=displayName"),
            Some("$select=x&$deltatoken="),
            Some("$deltatoken=latest"),
            Some("$skiptoken=abc"),
        ];
        for start in starts {
            assert!(!by_delta_link(start), "{start:?}");
        }
    }
}
