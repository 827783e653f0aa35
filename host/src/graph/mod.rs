//! Microsoft Graph: authentication, delta paging and the few lookups the agent needs.
//!
//! Every request goes through [`GraphClient::get`], which adds the bearer token, refreshes it once on a 401,
//! and retries throttling and transient failures with bounded, jittered back-off.

pub mod auth;
pub mod delta;
mod pim;

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use serde::Deserialize;
use url::Url;

use crate::config::{ClientCredential, TenantConfig};
use auth::{Credential, Credentials, TokenCache};
pub use delta::{NextLink, Page};

/// A Graph request that did not succeed. Messages name the request and the cause; they never carry tokens.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("token request failed with HTTP {status}: {code}: {description}")]
    Token { status: u16, code: String, description: String },
    #[error(transparent)]
    Credential(#[from] auth::CredentialError),
    #[error("cannot reach {url}: {cause}")]
    Network { url: String, cause: String },
    #[error("Graph answered HTTP {status} for {path}: {code}: {message}")]
    Http { status: u16, path: String, code: String, message: String },
    #[error("Graph asks for a full resync (the delta token expired or is unknown)")]
    ResyncRequired { location: Option<String> },
    #[error("Graph kept failing {path} after {attempts} attempts; the last attempt: {cause}")]
    GaveUp { path: String, cause: String, attempts: u32 },
    #[error("Graph returned a malformed page for {path}: {cause}")]
    MalformedPage { path: String, cause: delta::PageError },
    #[error(
        "Graph sent group settings that cannot be read ({path}): {cause}; set m365_default_writeback in the config to decide without them"
    )]
    MalformedSettings { path: String, cause: String },
    #[error(
        "Graph sent PIM schedule instances of group {group} that cannot be read ({path}): {cause}; the group's time-bound members stay as last read"
    )]
    MalformedSchedule { path: String, group: String, cause: String },
    #[error("reading writebackConfiguration in a $batch ({path}) failed: {cause}; the cursor stays where it was")]
    MalformedBatch { path: String, cause: String },
    #[error("refusing to follow a link to {link}: it is not on the configured graph_url")]
    ForeignLink { link: String },
    #[error(
        "{url} answered with a redirect (HTTP {status}) to {target}; redirects are never followed, so no token or secret is sent on; check graph_url and login_url"
    )]
    Redirect { url: String, status: u16, target: String },
    #[error("Graph's response to {path} is larger than {limit_mib} MiB; refusing to read it")]
    TooLarge { path: String, limit_mib: usize },
    #[error(
        "Graph sent a link this round has already read ({path}): the round would never end; the cursor stays where it was"
    )]
    LinkLoop { path: String },
    #[error(
        "the delta round for {path} went on for more than {pages} pages; stopping it, and the cursor stays where it was"
    )]
    EndlessRound { path: String, pages: usize },
    #[error(
        "Graph refused the stored delta link for {path} with HTTP {status}: {code}: {message}; the cursor stays where it was, and the next cycle starts a full round if Graph refuses the link again"
    )]
    StoredLinkRefused { status: u16, path: String, code: String, message: String },
}

/// The largest response body read. Delta pages are a few megabytes at most; a body past this is a fault
/// or an attack, and reading it whole would cost the agent its memory.
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// The longest `Retry-After` honoured. Graph documents waits of minutes under heavy throttling.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The most pages one delta round may have. A million pages is hundreds of millions of entries, far past
/// any tenant; a round longer than that is a Graph fault, not data.
pub const MAX_ROUND_PAGES: usize = 1_000_000;

/// Cycles in a row in which Graph must refuse a stored delta link before the round starts afresh. One
/// refusal may be a passing fault, and a full round is costly on a large tenant; a link refused for ever
/// would stop the tenant until `reset-state`.
pub const STORED_LINK_REFUSALS: u32 = 2;

impl GraphError {
    fn network(url: &str, error: &reqwest::Error) -> Self {
        GraphError::Network { url: path_of(url), cause: network_cause(error) }
    }
}

/// reqwest's own text nests causes; the innermost one is what an admin needs ("connection refused").
fn network_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if error.is_timeout() { "the request timed out".into() } else { cause.to_string() }
}

/// The scheme, host and path of a URL, without the query (delta and skip tokens are long and opaque).
pub(crate) fn path_of(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_query(None);
            parsed.to_string()
        }
        Err(_) => url.chars().take(80).collect(),
    }
}

/// What Graph says of an object that a delta round did not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Graph returns the object itself.
    Live,
    /// Only deleted items hold it: restorable.
    SoftDeleted,
    /// Both the object and deleted items answered `Request_ResourceNotFound`.
    Gone,
}

/// How persistent retries are.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 6, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(60) }
    }
}

/// A Graph client for one tenant.
pub struct GraphClient {
    /// The tenant's name, for metrics and logs.
    tenant: String,
    http: reqwest::Client,
    tokens: TokenCache,
    graph_base: String,
    retry: RetryPolicy,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
}

enum Outcome {
    Done(Vec<u8>),
    /// `status` 0: no answer; `cause` says what happened, for the error when retries run out.
    Retry {
        status: u16,
        wait: Option<Duration>,
        cause: String,
    },
    Unauthorized,
}

impl GraphClient {
    /// Builds a client for `tenant` with its client secret or certificate.
    pub fn new(tenant: &TenantConfig, credential: ClientCredential) -> Result<Self, GraphError> {
        let credential = Credential::load(credential)?;
        let http = reqwest::Client::builder()
            // A 307 would re-post the token form, client secret included, to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(tenant.graph_timeout)
            .connect_timeout(tenant.graph_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("writeback/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GraphError::Network { url: tenant.graph_base().into(), cause: network_cause(&e) })?;
        let credentials = Credentials {
            token_url: format!("{}/{}/oauth2/v2.0/token", tenant.login_base(), tenant.tenant_id),
            client_id: tenant.client_id.clone(),
            credential,
            scope: format!("{}/.default", tenant.graph_base()),
        };
        Ok(GraphClient {
            tenant: tenant.name.clone(),
            http,
            tokens: TokenCache::new(credentials),
            graph_base: tenant.graph_base().to_string(),
            retry: RetryPolicy::default(),
        })
    }

    /// Fetches a token now, to check credentials before any other work.
    pub async fn authenticate(&self) -> Result<(), GraphError> {
        self.token().await.map(|_| ())
    }

    /// A token, retrying the token endpoint's throttling and transient failures as Graph's own are.
    async fn token(&self) -> Result<crate::config::Secret, GraphError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.tokens.get(&self.http).await {
                Err(GraphError::Token { status, code, description }) if is_transient(status) => {
                    let cause = format!("token request: HTTP {status}: {code}: {description}");
                    if attempt >= self.retry.attempts {
                        return Err(GraphError::GaveUp { path: "the token endpoint".into(), cause, attempts: attempt });
                    }
                    let delay = self.backoff(attempt);
                    tracing::warn!(status, delay_ms = delay.as_millis() as u64, "the token endpoint asked us to wait");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// Whether `url` is on the configured Graph: the same scheme, host and port, under its path. A prefix
    /// test would let `https://graph.microsoft.com.evil/` through, with the bearer token.
    fn on_graph(&self, url: &str) -> bool {
        on_base(&self.graph_base, url)
    }

    /// The first request of a full group delta round.
    pub fn groups_delta_start(&self) -> String {
        // `writebackConfiguration` exists only on the beta endpoint.
        format!("{}/beta/groups/delta?$select={}", self.graph_base, crate::attributes::group_select())
    }

    /// The first request of a full user delta round.
    pub fn users_delta_start(&self) -> String {
        format!("{}/v1.0/users/delta?$select={}", self.graph_base, delta::USER_SELECT)
    }

    /// Fetches and parses one delta page.
    pub async fn delta_page(&self, url: &str) -> Result<Page, GraphError> {
        let body = self.get(url).await?;
        delta::parse_page(&body).map_err(|cause| GraphError::MalformedPage { path: path_of(url), cause })
    }

    /// Fetches the first page of a round from the link stored in the cursor. A refusal of the link itself (a
    /// 4xx other than a resync signal, 401, 403 or 429) becomes [`GraphError::StoredLinkRefused`], which the
    /// caller counts, to start a full round after [`STORED_LINK_REFUSALS`] cycles in a row.
    pub async fn stored_delta_page(&self, link: &str) -> Result<Page, GraphError> {
        match self.delta_page(link).await {
            Err(GraphError::Http { status, path, code, message }) if refuses_stored_link(status) => {
                Err(GraphError::StoredLinkRefused { status, path, code, message })
            }
            other => other,
        }
    }

    /// Where Graph has a group that a delta round did not list.
    pub async fn group_presence(&self, id: &str) -> Result<Presence, GraphError> {
        self.presence("groups", id).await
    }

    /// Where Graph has a user that a full delta round did not list.
    pub async fn user_presence(&self, id: &str) -> Result<Presence, GraphError> {
        self.presence("users", id).await
    }

    /// Asks the object itself, then deleted items. Only two clear "not found" answers make it gone: anything
    /// else fails the request, so that no delete ever rests on an answer we did not expect.
    async fn presence(&self, collection: &str, id: &str) -> Result<Presence, GraphError> {
        let live = format!("{}/v1.0/{collection}/{}?$select=id", self.graph_base, urlencode(id));
        if self.exists(&live).await? {
            return Ok(Presence::Live);
        }
        let deleted = format!("{}/beta/directory/deletedItems/{}?$select=id", self.graph_base, urlencode(id));
        if self.exists(&deleted).await? {
            return Ok(Presence::SoftDeleted);
        }
        Ok(Presence::Gone)
    }

    /// The tenant's `NewUnifiedGroupWritebackDefault`: whether Microsoft 365 groups without a writeback setting of
    /// their own are written back. It lives in the tenant-wide `Group.Unified` group setting; a tenant that
    /// never created that setting, or left the value out, has the documented default, true.
    pub async fn m365_writeback_default(&self) -> Result<bool, GraphError> {
        let url = format!("{}/v1.0/groupSettings", self.graph_base);
        let body = self.get(&url).await?;
        unified_writeback_default(&body).map_err(|cause| GraphError::MalformedSettings { path: path_of(&url), cause })
    }

    /// Each group's `writebackConfiguration` as `GET /beta/groups/{id}` gives it, read in `$batch` requests of
    /// 20: the fallback for a delta query that does not return it. A group Graph no longer has is left out.
    /// Items Graph throttles or fails are asked again, within the client's retry bounds.
    pub async fn writeback_configurations(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, serde_json::Value>, GraphError> {
        let url = format!("{}/beta/$batch", self.graph_base);
        let mut found = HashMap::new();
        for chunk in ids.chunks(BATCH_SIZE) {
            let mut pending: Vec<&String> = chunk.iter().collect();
            let mut attempt = 0;
            while !pending.is_empty() {
                attempt += 1;
                let requests: Vec<serde_json::Value> = pending
                    .iter()
                    .enumerate()
                    .map(|(n, id)| serde_json::json!({"id": n.to_string(), "method": "GET", "url": format!("/groups/{}?$select=id,writebackConfiguration", urlencode(id))}))
                    .collect();
                let body = self.send(&url, Some(&serde_json::json!({ "requests": requests }))).await?;
                let (done, again, wait) = batch_answers(&body, &pending)
                    .map_err(|cause| GraphError::MalformedBatch { path: path_of(&url), cause })?;
                found.extend(done);
                if again.is_empty() {
                    break;
                }
                if attempt >= self.retry.attempts {
                    return Err(GraphError::GaveUp {
                        path: path_of(&url),
                        cause: format!("{} groups were throttled or failed in every batch", again.len()),
                        attempts: attempt,
                    });
                }
                tokio::time::sleep(retry_delay(wait, || self.backoff(attempt))).await;
                pending = again;
            }
        }
        Ok(found)
    }

    /// True on success, false on a 404 with `Request_ResourceNotFound`, an error on anything else.
    async fn exists(&self, url: &str) -> Result<bool, GraphError> {
        match self.get(url).await {
            Ok(_) => Ok(true),
            Err(GraphError::Http { status: 404, code, .. })
                if code.eq_ignore_ascii_case("Request_ResourceNotFound") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// GET with the token, a refresh on 401, and bounded retries on throttling and transient errors.
    async fn get(&self, url: &str) -> Result<Vec<u8>, GraphError> {
        self.send(url, None).await
    }

    /// A GET, or a POST of `body` as JSON, with the token, a refresh on 401, and bounded retries.
    async fn send(&self, url: &str, body: Option<&serde_json::Value>) -> Result<Vec<u8>, GraphError> {
        if !self.on_graph(url) {
            return Err(GraphError::ForeignLink { link: path_of(url) });
        }
        let mut refreshed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_send(url, body).await? {
                Outcome::Done(body) => return Ok(body),
                Outcome::Unauthorized if !refreshed => {
                    refreshed = true;
                    self.tokens.invalidate().await;
                    attempt -= 1;
                }
                Outcome::Unauthorized => {
                    return Err(GraphError::Http {
                        status: 401,
                        path: path_of(url),
                        code: "InvalidAuthenticationToken".into(),
                        message: "Graph refused a freshly issued token; check the app's permissions".into(),
                    });
                }
                Outcome::Retry { status, wait, cause } => {
                    if attempt >= self.retry.attempts {
                        return Err(GraphError::GaveUp { path: path_of(url), cause, attempts: attempt });
                    }
                    let delay = retry_delay(wait, || self.backoff(attempt));
                    tracing::warn!(status, delay_ms = delay.as_millis() as u64, path = %path_of(url), "Graph asked us to wait");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn try_send(&self, url: &str, body: Option<&serde_json::Value>) -> Result<Outcome, GraphError> {
        let token = self.token().await?;
        let request = match body {
            Some(body) => self.http.post(url).json(body),
            None => self.http.get(url),
        };
        let sent = request.bearer_auth(token.expose()).send().await;
        let response = match sent {
            Ok(response) => response,
            Err(e) if e.is_timeout() || e.is_connect() || e.is_request() => {
                let cause = network_cause(&e);
                tracing::warn!(path = %path_of(url), %cause, "Graph request failed; will retry");
                return Ok(Outcome::Retry { status: 0, wait: None, cause });
            }
            Err(e) => return Err(GraphError::network(url, &e)),
        };
        let status = response.status();
        let retry_after = retry_after(&response);
        self.count(status.as_u16(), retry_after.is_some());
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
        if status.is_redirection() {
            return Err(GraphError::Redirect {
                url: path_of(url),
                status: status.as_u16(),
                target: location.as_deref().map(path_of).unwrap_or_default(),
            });
        }
        let body = match read_body(response).await {
            Ok(Some(body)) => body,
            Ok(None) => return Err(GraphError::TooLarge { path: path_of(url), limit_mib: MAX_BODY_BYTES >> 20 }),
            Err(e) => {
                let cause = format!("the response was cut off: {}", network_cause(&e));
                tracing::warn!(path = %path_of(url), %cause, "Graph response was cut off; will retry");
                return Ok(Outcome::Retry { status: status.as_u16(), wait: None, cause });
            }
        };
        classify(url, status, retry_after, location, body)
    }

    /// Counts a Graph answer; a 429, or any answer with Retry-After, is a throttle.
    fn count(&self, status: u16, retry_after: bool) {
        let metrics = crate::metrics::global();
        let labels = crate::metrics::GraphLabels { tenant: self.tenant.clone(), status: status.to_string() };
        metrics.graph_requests.get_or_create(&labels).inc();
        if status == 429 || retry_after {
            metrics.graph_throttled.get_or_create(&crate::metrics::TenantLabel { tenant: self.tenant.clone() }).inc();
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.retry.base_delay.saturating_mul(1 << attempt.min(10));
        let capped = exp.min(self.retry.max_delay);
        // Full jitter spreads retries of several agents and tenants apart.
        let millis = rand::rng().random_range(capped.as_millis() as u64 / 2..=capped.as_millis() as u64);
        Duration::from_millis(millis)
    }
}

/// Requests in one `$batch`: Graph's limit.
const BATCH_SIZE: usize = 20;

/// What one `$batch` answered for `asked` (request id n is `asked[n]`): the values found by group id, the
/// groups to ask again (throttled or failed for now), and the longest Retry-After among those.
#[allow(clippy::type_complexity)]
fn batch_answers<'a>(
    body: &[u8],
    asked: &[&'a String],
) -> Result<(HashMap<String, serde_json::Value>, Vec<&'a String>, Option<Duration>), String> {
    let body: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not a batch response: {e}"))?;
    let responses = body["responses"].as_array().ok_or("the batch response has no responses array")?;
    let mut found = HashMap::new();
    let mut again = Vec::new();
    let mut wait: Option<Duration> = None;
    let mut answered = vec![false; asked.len()];
    for response in responses {
        let Some(n) = response["id"].as_str().and_then(|n| n.parse::<usize>().ok()).filter(|&n| n < asked.len()) else {
            return Err(format!("the batch answered an id it was not asked: {}", response["id"]));
        };
        answered[n] = true;
        let status = response["status"].as_u64().unwrap_or(0);
        match status {
            200 => {
                let value = response["body"].get("writebackConfiguration").cloned().unwrap_or(serde_json::Value::Null);
                found.insert(asked[n].clone(), value);
            }
            404 => {}
            429 | 500 | 502 | 503 | 504 => {
                let after = response["headers"]
                    .as_object()
                    .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case("retry-after")));
                let after = after.and_then(|(_, v)| v.as_str()?.trim().parse::<u64>().ok()).map(Duration::from_secs);
                wait = wait.max(after.map(|a| a.min(MAX_RETRY_AFTER)));
                again.push(asked[n]);
            }
            other => {
                let code = response["body"]["error"]["code"].as_str().unwrap_or("");
                return Err(format!("reading group {} answered HTTP {other} {code}", asked[n]));
            }
        }
    }
    // An item the batch did not answer at all is asked again.
    again.extend(asked.iter().zip(answered).filter(|(_, a)| !a).map(|(id, _)| *id));
    Ok((found, again, wait))
}

/// The `Group.Unified` setting's template id, the same in every tenant.
const GROUP_UNIFIED_TEMPLATE: &str = "62375ab9-6b52-47ed-826b-58e47e0e304b";

/// Reads `NewUnifiedGroupWritebackDefault` from a `groupSettings` collection (true when absent).
fn unified_writeback_default(body: &[u8]) -> Result<bool, String> {
    #[derive(Deserialize)]
    struct Settings {
        value: Vec<Setting>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Setting {
        template_id: Option<String>,
        display_name: Option<String>,
        #[serde(default)]
        values: Vec<SettingValue>,
    }
    #[derive(Deserialize)]
    struct SettingValue {
        name: Option<String>,
        value: Option<String>,
    }
    let settings: Settings =
        serde_json::from_slice(body).map_err(|e| format!("not a groupSettings collection: {e}"))?;
    let unified = settings.value.iter().find(|s| {
        s.template_id.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(GROUP_UNIFIED_TEMPLATE))
            || s.display_name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case("Group.Unified"))
    });
    let value = unified
        .and_then(|s| {
            s.values
                .iter()
                .find(|v| v.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case("NewUnifiedGroupWritebackDefault")))
        })
        .and_then(|v| v.value.as_deref());
    match value.map(str::trim) {
        None | Some("") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(format!("NewUnifiedGroupWritebackDefault is {v:?}, neither true nor false")),
    }
}

/// A response body, or None when it is larger than [`MAX_BODY_BYTES`]. Read in chunks, so that a huge or
/// endless body is cut off at the limit instead of filling memory.
pub(crate) async fn read_body(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Whether `url` has the scheme, host and port of `base`, and a path under its path.
fn on_base(base: &str, url: &str) -> bool {
    let (Ok(base), Ok(url)) = (Url::parse(base), Url::parse(url)) else {
        return false;
    };
    let prefix = base.path().trim_end_matches('/');
    let path = url.path();
    let under = path == prefix || path.starts_with(&format!("{prefix}/"));
    url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username().is_empty()
        && under
}

/// How long to wait before the next attempt: Graph's `Retry-After` in full, up to [`MAX_RETRY_AFTER`]
/// (a shorter wait would only be throttled again and use up the attempts), else our own back-off.
fn retry_delay(retry_after: Option<Duration>, backoff: impl FnOnce() -> Duration) -> Duration {
    retry_after.map(|wait| wait.min(MAX_RETRY_AFTER)).unwrap_or_else(backoff)
}

/// Statuses that mean "try again": throttling and the server's transient failures.
fn is_transient(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

fn classify(
    url: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    location: Option<String>,
    body: Vec<u8>,
) -> Result<Outcome, GraphError> {
    if status.is_success() {
        return Ok(Outcome::Done(body));
    }
    let (code, message) = error_code(&body);
    match status.as_u16() {
        401 => Ok(Outcome::Unauthorized),
        410 => Err(GraphError::ResyncRequired { location }),
        400 if is_resync_code(&code) => Err(GraphError::ResyncRequired { location }),
        transient if is_transient(transient) => {
            Ok(Outcome::Retry { status: status.as_u16(), wait: retry_after, cause: format!("HTTP {status}") })
        }
        other => Err(GraphError::Http { status: other, path: path_of(url), code, message }),
    }
}

/// Whether a status refuses a stored link itself: a 4xx that is not a resync signal (those never get here),
/// not 401 or 403 (credentials and permissions, which a full round would not cure), and not 429 (throttling).
fn refuses_stored_link(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 403 | 429)
}

/// The error codes by which Graph asks for a fresh round, in any of the spellings it uses. An expired page
/// token (`Directory_ExpiredPageToken`) on a stored nextLink means the same.
fn is_resync_code(code: &str) -> bool {
    ["syncStateNotFound", "resyncRequired", "syncStateInvalid", "Directory_ExpiredPageToken"]
        .iter()
        .any(|c| c.eq_ignore_ascii_case(code))
}

fn error_code(body: &[u8]) -> (String, String) {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => (
            envelope.error.code.unwrap_or_else(|| "unknown".into()),
            envelope.error.message.unwrap_or_default().lines().next().unwrap_or_default().to_string(),
        ),
        Err(_) => ("unknown".into(), "the error body is not Graph's JSON error".into()),
    }
}

/// Retry-After in seconds (the form Graph uses); capped so that a hostile value cannot park the agent.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get("retry-after")?.to_str().ok()?;
    let secs: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

fn urlencode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: u16, body: &str) -> Result<Outcome, GraphError> {
        classify(
            "http://x/beta/groups/delta?$deltatoken=abc",
            StatusCode::from_u16(status).unwrap(),
            None,
            None,
            body.into(),
        )
    }

    #[test]
    fn resync_signals_are_recognised() {
        assert!(matches!(outcome(410, ""), Err(GraphError::ResyncRequired { .. })));
        let body = r#"{"error":{"code":"syncStateNotFound","message":"x"}}"#;
        assert!(matches!(outcome(400, body), Err(GraphError::ResyncRequired { .. })));
        for code in
            ["resyncRequired", "SyncStateNotFound", "syncStateInvalid", "Directory_ExpiredPageToken", "RESYNCREQUIRED"]
        {
            let body = format!(r#"{{"error":{{"code":"{code}","message":"x"}}}}"#);
            assert!(matches!(outcome(400, &body), Err(GraphError::ResyncRequired { .. })), "{code}");
        }
    }

    #[test]
    fn transient_statuses_retry_and_others_fail() {
        for status in [429, 500, 503, 504] {
            assert!(matches!(outcome(status, ""), Ok(Outcome::Retry { .. })), "{status}");
        }
        let err =
            outcome(403, r#"{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges"}}"#);
        let Err(err) = err else { panic!("403 must fail") };
        let text = err.to_string();
        assert!(text.contains("Authorization_RequestDenied") && !text.contains("abc"), "{text}");
    }

    #[test]
    fn only_a_refusal_of_the_link_itself_counts_towards_a_full_round() {
        for status in [400, 404, 405, 409, 422] {
            assert!(refuses_stored_link(status), "{status}");
        }
        for status in [200, 301, 401, 403, 429, 500, 503] {
            assert!(!refuses_stored_link(status), "{status}");
        }
    }

    #[test]
    fn only_links_on_the_configured_graph_are_followed() {
        let base = "https://graph.microsoft.com";
        assert!(on_base(base, "https://graph.microsoft.com/beta/groups/delta?$skiptoken=x"));
        assert!(on_base(base, "https://GRAPH.microsoft.com:443/v1.0/users/delta"));
        for foreign in [
            "https://graph.microsoft.com.evil/beta/groups/delta",
            "https://graph.microsoft.com@evil.example/beta/groups/delta",
            "https://user@graph.microsoft.com/beta/groups/delta",
            "http://graph.microsoft.com/beta/groups/delta",
            "https://graph.microsoft.com:8443/beta/groups/delta",
            "https://evil.example/https://graph.microsoft.com/beta",
            "not a url",
        ] {
            assert!(!on_base(base, foreign), "{foreign}");
        }
        let sim = "http://127.0.0.1:9000/graph";
        assert!(on_base(sim, "http://127.0.0.1:9000/graph/beta/groups/delta"));
        assert!(!on_base(sim, "http://127.0.0.1:9000/graphx/beta/groups/delta"));
        assert!(!on_base(sim, "http://127.0.0.1:9001/graph/beta/groups/delta"));
    }

    #[test]
    fn batch_answers_are_matched_by_id_in_any_order_and_throttled_items_come_again() {
        let (a, b, c, d) = ("a".to_string(), "b".to_string(), "c".to_string(), "d".to_string());
        let asked = [&a, &b, &c, &d];
        let body = br#"{"responses":[
            {"id":"2","status":404,"body":{"error":{"code":"Request_ResourceNotFound"}}},
            {"id":"1","status":429,"headers":{"Retry-After":"7"},"body":{}},
            {"id":"0","status":200,"body":{"id":"a","writebackConfiguration":{"isEnabled":true,"onPremisesGroupType":null}}}
        ]}"#;
        let (found, again, wait) = batch_answers(body, &asked).unwrap();
        assert_eq!(found["a"]["isEnabled"], true);
        assert_eq!(found.len(), 1, "a group Graph no longer has is left out");
        assert_eq!(again, [&b, &d], "throttled, and not answered at all");
        assert_eq!(wait, Some(Duration::from_secs(7)));
        assert!(batch_answers(br#"{"responses":[{"id":"9","status":200}]}"#, &asked).is_err(), "an id never asked");
        assert!(
            batch_answers(br#"{"responses":[{"id":"0","status":403,"body":{"error":{"code":"Forbidden"}}}]}"#, &asked)
                .is_err()
        );
    }

    #[test]
    fn the_m365_writeback_default_is_read_from_the_group_unified_setting() {
        let setting = |name: &str, value: &str| {
            format!(
                r#"{{"value":[{{"id":"x","displayName":"Group.Unified","templateId":"{GROUP_UNIFIED_TEMPLATE}","values":[{{"name":"EnableGroupCreation","value":"true"}},{{"name":"{name}","value":"{value}"}}]}}]}}"#
            )
        };
        assert_eq!(
            unified_writeback_default(setting("NewUnifiedGroupWritebackDefault", "False").as_bytes()),
            Ok(false)
        );
        assert_eq!(unified_writeback_default(setting("NewUnifiedGroupWritebackDefault", "true").as_bytes()), Ok(true));
        assert_eq!(
            unified_writeback_default(setting("SomethingElse", "false").as_bytes()),
            Ok(true),
            "absent: the documented default"
        );
        assert_eq!(unified_writeback_default(br#"{"value":[]}"#), Ok(true), "no Group.Unified setting at all");
        assert!(unified_writeback_default(setting("NewUnifiedGroupWritebackDefault", "maybe").as_bytes()).is_err());
        assert!(unified_writeback_default(b"[]").is_err());
    }

    #[test]
    fn retry_after_is_honoured_in_full_up_to_five_minutes() {
        for status in [429, 500, 502, 503, 504] {
            assert!(is_transient(status), "{status}");
        }
        assert!(!is_transient(400) && !is_transient(403));
        let backoff = || Duration::from_secs(1);
        assert_eq!(
            retry_delay(Some(Duration::from_secs(90)), backoff),
            Duration::from_secs(90),
            "not cut to the back-off cap"
        );
        assert_eq!(retry_delay(Some(Duration::from_secs(300)), backoff), Duration::from_secs(300));
        assert_eq!(retry_delay(Some(Duration::from_secs(86_400)), backoff), MAX_RETRY_AFTER);
        assert_eq!(retry_delay(None, backoff), Duration::from_secs(1));
    }
}
