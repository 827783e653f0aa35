//! `/_sim/`: a thin HTTP front on [`Simulator`]'s own methods, for the
//! `graph-sim` binary and shell scripts. Not part of Graph; needs no token.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    DeleteOutcome, Fault, FaultKind, FaultTarget, Group, GroupPatch, MemberRef, Simulator, TenantError, User, UserPatch,
};

/// Routes under `/_sim/`.
pub(crate) fn router() -> Router<Arc<Simulator>> {
    Router::new()
        .route("/_sim/groups", get(list_groups).post(add_group))
        .route("/_sim/groups/{id}", get(get_group).patch(update_group).delete(delete_group))
        .route("/_sim/groups/{id}/restore", post(restore_group))
        .route("/_sim/groups/{id}/members", post(add_members))
        .route("/_sim/groups/{id}/members/{member_id}", delete(remove_member))
        .route("/_sim/users", get(list_users).post(add_user))
        .route("/_sim/users/{id}", get(get_user).patch(update_user).delete(delete_user))
        .route("/_sim/users/{id}/restore", post(restore_user))
        .route("/_sim/faults", post(add_fault).delete(clear_faults))
        .route("/_sim/revoke-tokens", post(revoke_tokens))
        .route("/_sim/expire-delta-tokens", post(expire_delta_tokens))
        .route("/_sim/requests", get(list_requests).delete(clear_requests))
}

/// A control-API failure, as `{"error":{"code","message"}}`.
struct ControlError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ControlError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: "badRequest", message: message.into() }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": { "code": self.code, "message": self.message } }))).into_response()
    }
}

impl From<TenantError> for ControlError {
    fn from(error: TenantError) -> Self {
        let (status, code) = match &error {
            TenantError::NotFound(_) => (StatusCode::NOT_FOUND, "notFound"),
            TenantError::AlreadyExists(_) => (StatusCode::CONFLICT, "alreadyExists"),
            TenantError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        };
        Self { status, code, message: error.to_string() }
    }
}

impl From<JsonRejection> for ControlError {
    fn from(rejection: JsonRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

impl From<QueryRejection> for ControlError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

type Reply = Result<Json<Value>, ControlError>;

fn seq_reply(seq: Result<u64, TenantError>) -> Reply {
    Ok(Json(json!({ "seq": seq? })))
}

fn found<T: serde::Serialize>(object: Option<T>, what: &str, id: &str) -> Reply {
    let object = object.ok_or_else(|| TenantError::NotFound(format!("{what} {id}")))?;
    Ok(Json(json!(object)))
}

async fn list_groups(State(sim): State<Arc<Simulator>>) -> Json<Vec<Group>> {
    Json(sim.groups())
}

async fn add_group(State(sim): State<Arc<Simulator>>, body: Result<Json<Group>, JsonRejection>) -> Reply {
    seq_reply(sim.add_group(body?.0))
}

async fn get_group(State(sim): State<Arc<Simulator>>, Path(id): Path<String>) -> Reply {
    found(sim.group(&id), "group", &id)
}

async fn update_group(
    State(sim): State<Arc<Simulator>>,
    Path(id): Path<String>,
    body: Result<Json<GroupPatch>, JsonRejection>,
) -> Reply {
    seq_reply(sim.update_group(&id, body?.0))
}

#[derive(Debug, Default, Deserialize)]
struct DeleteParams {
    #[serde(default)]
    hard: bool,
}

async fn delete_group(
    State(sim): State<Arc<Simulator>>,
    Path(id): Path<String>,
    params: Result<Query<DeleteParams>, QueryRejection>,
) -> Reply {
    if params?.hard {
        return seq_reply(sim.hard_delete_group(&id));
    }
    let outcome = match sim.soft_delete_group(&id)? {
        DeleteOutcome::SoftDeleted => "softDeleted",
        DeleteOutcome::HardDeleted => "hardDeleted",
    };
    Ok(Json(json!({ "outcome": outcome, "seq": sim.seq() })))
}

async fn restore_group(State(sim): State<Arc<Simulator>>, Path(id): Path<String>) -> Reply {
    seq_reply(sim.restore_group(&id))
}

async fn add_members(
    State(sim): State<Arc<Simulator>>,
    Path(id): Path<String>,
    body: Result<Json<Vec<MemberRef>>, JsonRejection>,
) -> Reply {
    seq_reply(sim.add_members(&id, &body?.0))
}

async fn remove_member(State(sim): State<Arc<Simulator>>, Path((id, member_id)): Path<(String, String)>) -> Reply {
    seq_reply(sim.remove_members(&id, &[member_id]))
}

async fn list_users(State(sim): State<Arc<Simulator>>) -> Json<Vec<User>> {
    Json(sim.users())
}

async fn add_user(State(sim): State<Arc<Simulator>>, body: Result<Json<User>, JsonRejection>) -> Reply {
    seq_reply(sim.add_user(body?.0))
}

async fn get_user(State(sim): State<Arc<Simulator>>, Path(id): Path<String>) -> Reply {
    found(sim.user(&id), "user", &id)
}

async fn update_user(
    State(sim): State<Arc<Simulator>>,
    Path(id): Path<String>,
    body: Result<Json<UserPatch>, JsonRejection>,
) -> Reply {
    seq_reply(sim.update_user(&id, body?.0))
}

async fn delete_user(
    State(sim): State<Arc<Simulator>>,
    Path(id): Path<String>,
    params: Result<Query<DeleteParams>, QueryRejection>,
) -> Reply {
    seq_reply(sim.delete_user(&id, params?.hard))
}

async fn restore_user(State(sim): State<Arc<Simulator>>, Path(id): Path<String>) -> Reply {
    seq_reply(sim.restore_user(&id))
}

/// `POST /_sim/faults` body, e.g.
/// `{"target":"groupsDelta","kind":"throttle429","retryAfterSecs":2,"times":3}`,
/// `{"target":"groupsDelta","kind":"status400","code":"syncStateInvalid"}`,
/// `{"target":"groupsDeltaLink","kind":"clientError","status":404,"code":"UnknownError"}` or
/// `{"target":"groupsDelta","kind":"hugeBody","bytes":68157440,"contentLength":false}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultSpec {
    #[serde(alias = "endpoint")]
    target: FaultTarget,
    kind: String,
    retry_after_secs: Option<u64>,
    delay_ms: Option<u64>,
    /// `error.code` of a `status400` or `clientError` answer.
    code: Option<String>,
    /// HTTP status of a `clientError` answer (400 when absent).
    status: Option<u16>,
    /// Size of a `hugeBody` answer.
    bytes: Option<usize>,
    /// Whether a `hugeBody` answer announces its size (chunked when absent).
    content_length: Option<bool>,
    times: Option<usize>,
}

impl FaultSpec {
    fn kind(&self) -> Result<FaultKind, ControlError> {
        let kind = match self.kind.to_ascii_lowercase().as_str() {
            "status401" => FaultKind::Status401,
            "gone410" => FaultKind::Gone410,
            "syncstatenotfound" => FaultKind::SyncStateNotFound,
            "resyncrequired" => FaultKind::ResyncRequired,
            "throttle429" => FaultKind::Throttle429 { retry_after_secs: self.retry_after_secs.unwrap_or(1) },
            "unavailable503" => FaultKind::Unavailable503 { retry_after_secs: self.retry_after_secs },
            "gatewaytimeout504" => FaultKind::GatewayTimeout504,
            "status500" => FaultKind::Status500,
            "malformedbody" => FaultKind::MalformedBody,
            "resetconnection" => FaultKind::ResetConnection,
            "nextlinkloop" => FaultKind::NextLinkLoop,
            "status400" => FaultKind::Status400(
                self.code.clone().ok_or_else(|| ControlError::bad_request("a status400 fault needs code"))?,
            ),
            "clienterror" => FaultKind::ClientError {
                status: self.status.unwrap_or(400),
                code: self.code.clone().unwrap_or_else(|| "BadRequest".to_owned()),
            },
            "hugebody" => FaultKind::HugeBody {
                bytes: self.bytes.ok_or_else(|| ControlError::bad_request("a hugeBody fault needs bytes"))?,
                content_length: self.content_length.unwrap_or(false),
            },
            "delay" => {
                let ms = self.delay_ms.ok_or_else(|| ControlError::bad_request("a delay fault needs delayMs"))?;
                FaultKind::Delay(Duration::from_millis(ms))
            }
            other => {
                return Err(ControlError::bad_request(format!("unknown fault kind '{other}'")));
            }
        };
        Ok(kind)
    }
}

async fn add_fault(State(sim): State<Arc<Simulator>>, body: Result<Json<FaultSpec>, JsonRejection>) -> Reply {
    let spec = body?.0;
    let kind = spec.kind()?;
    for _ in 0..spec.times.unwrap_or(1) {
        sim.inject(Fault::new(spec.target, kind.clone()));
    }
    Ok(Json(json!({ "pending": sim.pending_faults() })))
}

async fn clear_faults(State(sim): State<Arc<Simulator>>) -> StatusCode {
    sim.clear_faults();
    StatusCode::NO_CONTENT
}

async fn revoke_tokens(State(sim): State<Arc<Simulator>>) -> StatusCode {
    sim.revoke_tokens();
    StatusCode::NO_CONTENT
}

async fn expire_delta_tokens(State(sim): State<Arc<Simulator>>) -> StatusCode {
    sim.expire_delta_tokens();
    StatusCode::NO_CONTENT
}

async fn list_requests(State(sim): State<Arc<Simulator>>) -> Json<Value> {
    Json(json!(sim.requests()))
}

async fn clear_requests(State(sim): State<Arc<Simulator>>) -> StatusCode {
    sim.clear_requests();
    StatusCode::NO_CONTENT
}
