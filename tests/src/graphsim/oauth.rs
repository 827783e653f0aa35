//! The Entra token endpoint (client credentials grant) and the bearer tokens
//! it issues, which the Graph endpoints then check.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::wire::{EntraError, TOKEN_CONTENT_TYPE, invalid_token, random_token, with_content_type};
use super::{SimConfig, Simulator};

/// `client_assertion_type` for a certificate credential.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Message of the 401 for a token that is unknown, expired or revoked.
const INVALID_TOKEN_MESSAGE: &str = "Access token has expired or is not yet valid.";

#[derive(Debug)]
struct IssuedToken {
    expires_at: Instant,
    revoked: bool,
}

/// Access tokens issued so far.
#[derive(Debug, Default)]
pub(crate) struct AccessTokens {
    issued: HashMap<String, IssuedToken>,
}

impl AccessTokens {
    /// Issues an opaque token valid for `lifetime` from `now`.
    pub(crate) fn issue(&mut self, now: Instant, lifetime: Duration) -> String {
        let token = random_token(48);
        self.issued.insert(
            token.clone(),
            IssuedToken {
                expires_at: now + lifetime,
                revoked: false,
            },
        );
        token
    }

    /// Whether `token` is usable at `now`.
    pub(crate) fn is_valid(&self, token: &str, now: Instant) -> bool {
        self.issued
            .get(token)
            .is_some_and(|t| !t.revoked && now < t.expires_at)
    }

    /// Invalidates every token issued so far.
    pub(crate) fn revoke_all(&mut self) {
        self.issued.values_mut().for_each(|t| t.revoked = true);
    }
}

/// Why a Graph request was refused: answered with a 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No bearer token at all.
    NoToken,
    /// A token that is unknown, expired or revoked.
    BadToken,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Self::NoToken => invalid_token("Access token is empty."),
            Self::BadToken => invalid_token(INVALID_TOKEN_MESSAGE),
        }
    }
}

impl Simulator {
    /// Checks the request's bearer token.
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let token = bearer_token(headers).ok_or(Denied::NoToken)?;
        let state = self.lock();
        if state.access_tokens.is_valid(token, state.now()) {
            Ok(())
        } else {
            Err(Denied::BadToken)
        }
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn token(
    State(sim): State<Arc<Simulator>>,
    tenant: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let tenant = tenant.map(|Path(t)| t).unwrap_or_default();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    match check_request(sim.config(), sim.base_url(), &tenant, &form) {
        Ok(()) => issue(&sim),
        Err(error) => error.into_response(),
    }
}

fn issue(sim: &Simulator) -> Response {
    let lifetime = sim.config().token_lifetime_secs;
    let token = {
        let mut state = sim.lock();
        let now = state.now();
        state
            .access_tokens
            .issue(now, Duration::from_secs(lifetime))
    };
    let body = json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    });
    with_content_type(StatusCode::OK, body.to_string(), TOKEN_CONTENT_TYPE)
}

/// Validates a client-credentials request in the order Entra reports
/// problems: tenant, grant, client, scope, then the credential itself.
fn check_request(
    config: &SimConfig,
    base_url: &str,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Result<(), EntraError> {
    check_tenant(config, tenant)?;
    check_grant_type(form)?;
    check_client_id(config, form)?;
    check_scope(base_url, form)?;
    authenticate_client(config, form)
}

fn missing(parameter: &str) -> EntraError {
    EntraError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900_144,
        format!("The request body must contain the following parameter: '{parameter}'."),
    )
}

fn check_tenant(config: &SimConfig, tenant: &str) -> Result<(), EntraError> {
    if tenant.eq_ignore_ascii_case(&config.tenant_id) {
        return Ok(());
    }
    Err(EntraError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        90_002,
        format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID."),
    ))
}

fn check_grant_type(form: &HashMap<String, String>) -> Result<(), EntraError> {
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => Ok(()),
        Some(other) => Err(EntraError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70_003,
            format!("The app requested an unsupported grant type '{other}'."),
        )),
        None => Err(missing("grant_type")),
    }
}

fn check_client_id(config: &SimConfig, form: &HashMap<String, String>) -> Result<(), EntraError> {
    let client_id = form.get("client_id").ok_or_else(|| missing("client_id"))?;
    if client_id.eq_ignore_ascii_case(&config.client_id) {
        return Ok(());
    }
    Err(EntraError::new(
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        700_016,
        format!(
            "Application with identifier '{client_id}' was not found in the directory '{}'.",
            config.tenant_id
        ),
    ))
}

/// The agent asks for `{graph_url}/.default`; here the Graph URL is ours.
fn check_scope(base_url: &str, form: &HashMap<String, String>) -> Result<(), EntraError> {
    let scope = form.get("scope").ok_or_else(|| missing("scope"))?;
    let expected = format!("{base_url}/.default");
    if scope.split(' ').any(|s| s == expected) {
        return Ok(());
    }
    Err(EntraError::new(
        StatusCode::BAD_REQUEST,
        "invalid_scope",
        70_011,
        format!(
            "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid; expected {expected}."
        ),
    ))
}

fn authenticate_client(
    config: &SimConfig,
    form: &HashMap<String, String>,
) -> Result<(), EntraError> {
    if let Some(assertion_type) = form.get("client_assertion_type") {
        return authenticate_assertion(config, assertion_type, form.get("client_assertion"));
    }
    let Some(secret) = form.get("client_secret") else {
        return Err(EntraError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };
    if *secret == config.client_secret {
        return Ok(());
    }
    Err(EntraError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        7_000_215,
        format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
            config.client_id
        ),
    ))
}

fn authenticate_assertion(
    config: &SimConfig,
    assertion_type: &str,
    assertion: Option<&String>,
) -> Result<(), EntraError> {
    if assertion_type != JWT_BEARER {
        return Err(EntraError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90_014,
            format!("The client_assertion_type '{assertion_type}' is not supported."),
        ));
    }
    let assertion = assertion.ok_or_else(|| missing("client_assertion"))?;
    let Some(certificate_pem) = config.client_cert_pem.as_deref() else {
        return Err(assertion_rejected(
            "No certificate is registered for this application.",
        ));
    };
    verify_client_assertion(certificate_pem, assertion, config)
}

fn assertion_rejected(detail: &str) -> EntraError {
    EntraError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        700_027,
        format!("Client assertion failed signature validation. {detail}"),
    )
}

/// Verifies a certificate credential.
///
/// TODO: decode the JWT, check the `x5t#S256` (or `x5t`) header against the
/// certificate's thumbprint, verify the RS256 signature with its public key,
/// and check `aud` (this token endpoint), `iss` = `sub` = client id, `exp`,
/// `nbf` and `jti`. Until then every assertion is refused, so a test that
/// uses certificate auth fails loudly instead of passing unverified.
fn verify_client_assertion(
    _certificate_pem: &str,
    _assertion: &str,
    _config: &SimConfig,
) -> Result<(), EntraError> {
    Err(assertion_rejected(
        "The simulator does not verify client assertions yet.",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_tokens_are_parsed_leniently_but_not_blindly() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&headers), None);
    }

    #[test]
    fn tokens_expire_and_can_be_revoked() {
        let mut tokens = AccessTokens::default();
        let start = Instant::now();
        let token = tokens.issue(start, Duration::from_secs(60));
        assert!(tokens.is_valid(&token, start));
        assert!(!tokens.is_valid(&token, start + Duration::from_secs(60)));
        tokens.revoke_all();
        assert!(!tokens.is_valid(&token, start));
        assert!(!tokens.is_valid("never-issued", start));
    }
}
