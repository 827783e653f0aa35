//! The Entra token endpoint (client credentials grant) and the bearer tokens
//! it issues, which the Graph endpoints then check.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::wire::{EntraError, TOKEN_CONTENT_TYPE, UtcTime, invalid_token, random_token, with_content_type};
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

/// One request to the token endpoint: how the client tried to authenticate
/// and what it got. Credentials themselves are not kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `client_id` parameter, if sent.
    pub client_id: Option<String>,
    /// Whether the form carried `client_secret`.
    pub client_secret: bool,
    /// Whether the form carried `client_assertion`.
    pub client_assertion: bool,
    /// The AADSTS code it was refused with; None when a token was issued.
    pub error_code: Option<u32>,
}

/// The token endpoint's state: access tokens issued so far, the `jti` of
/// every accepted client assertion, and the log of token requests.
#[derive(Debug, Default)]
pub(crate) struct AccessTokens {
    issued: HashMap<String, IssuedToken>,
    assertion_ids: HashSet<String>,
    requests: Vec<TokenRequest>,
}

impl AccessTokens {
    /// Issues an opaque token valid for `lifetime` from `now`.
    pub(crate) fn issue(&mut self, now: Instant, lifetime: Duration) -> String {
        let token = random_token(48);
        self.issued.insert(token.clone(), IssuedToken { expires_at: now + lifetime, revoked: false });
        token
    }

    /// Whether `token` is usable at `now`.
    pub(crate) fn is_valid(&self, token: &str, now: Instant) -> bool {
        self.issued.get(token).is_some_and(|t| !t.revoked && now < t.expires_at)
    }

    /// Invalidates every token issued so far.
    pub(crate) fn revoke_all(&mut self) {
        self.issued.values_mut().for_each(|t| t.revoked = true);
    }

    /// Accepts an assertion id once. The simulator refuses a replayed
    /// assertion, so a client that reuses one fails here.
    fn first_use_of(&mut self, jti: &str) -> Result<(), EntraError> {
        if self.assertion_ids.insert(jti.to_owned()) {
            return Ok(());
        }
        Err(assertion_rejected(&format!("The assertion with jti '{jti}' was already used.")))
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
    /// Every request to the token endpoint so far, oldest first.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.lock().access_tokens.requests.clone()
    }

    /// The simulator's wall clock in seconds since the epoch (the real one
    /// moved by [`Simulator::advance_clock`]), against which client
    /// assertions' `nbf` and `exp` are checked.
    fn unix_now(&self) -> u64 {
        let offset = self.lock().clock_offset;
        (SystemTime::now() + offset).duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    /// Checks the request's bearer token.
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let token = bearer_token(headers).ok_or(Denied::NoToken)?;
        let state = self.lock();
        if state.access_tokens.is_valid(token, state.now()) { Ok(()) } else { Err(Denied::BadToken) }
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
    let now = sim.unix_now();
    let outcome = check_request(sim.config(), sim.base_url(), &tenant, &form, now)
        .and_then(|jti| jti.map_or(Ok(()), |jti| sim.lock().access_tokens.first_use_of(&jti)));
    let record = TokenRequest {
        client_id: form.get("client_id").cloned(),
        client_secret: form.contains_key("client_secret"),
        client_assertion: form.contains_key("client_assertion"),
        error_code: outcome.as_ref().err().map(|e| e.code),
    };
    sim.lock().access_tokens.requests.push(record);
    match outcome {
        Ok(()) => issue(&sim),
        Err(error) => error.into_response(),
    }
}

fn issue(sim: &Simulator) -> Response {
    let lifetime = sim.config().token_lifetime_secs;
    let token = {
        let mut state = sim.lock();
        let now = state.now();
        state.access_tokens.issue(now, Duration::from_secs(lifetime))
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
/// Returns the `jti` of a valid client assertion, which may be used once.
fn check_request(
    config: &SimConfig,
    base_url: &str,
    tenant: &str,
    form: &HashMap<String, String>,
    now: u64,
) -> Result<Option<String>, EntraError> {
    check_tenant(config, tenant)?;
    check_grant_type(form)?;
    check_client_id(config, form)?;
    check_scope(base_url, form)?;
    let token_url = format!("{base_url}/{tenant}/oauth2/v2.0/token");
    authenticate_client(config, form, &token_url, now)
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
        format!("Application with identifier '{client_id}' was not found in the directory '{}'.", config.tenant_id),
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
    token_url: &str,
    now: u64,
) -> Result<Option<String>, EntraError> {
    if let Some(assertion_type) = form.get("client_assertion_type") {
        let expected = Expected { token_url, client_id: form.get("client_id").map_or("", String::as_str), now };
        return authenticate_assertion(config, assertion_type, form.get("client_assertion"), &expected).map(Some);
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
        return Ok(None);
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

/// What a client assertion must say to be accepted.
struct Expected<'a> {
    /// This token endpoint's URL, the assertion's `aud`.
    token_url: &'a str,
    /// The `client_id` parameter, the assertion's `iss` and `sub`.
    client_id: &'a str,
    /// Seconds since the epoch, for `nbf` and `exp`.
    now: u64,
}

fn authenticate_assertion(
    config: &SimConfig,
    assertion_type: &str,
    assertion: Option<&String>,
    expected: &Expected<'_>,
) -> Result<String, EntraError> {
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
        return Err(assertion_rejected("No certificate is registered for this application."));
    };
    let certificate = RegisteredCertificate::from_pem(certificate_pem)?;
    verify_client_assertion(&certificate, assertion, expected)
}

fn assertion_rejected(detail: &str) -> EntraError {
    EntraError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        700_027,
        format!("Client assertion failed signature validation. {detail}"),
    )
}

/// The certificate registered on the app: its thumbprints and public key.
struct RegisteredCertificate {
    sha1: Vec<u8>,
    sha256: Vec<u8>,
    /// DER `RSAPublicKey`.
    public_key: Vec<u8>,
}

impl RegisteredCertificate {
    fn from_pem(pem: &str) -> Result<Self, EntraError> {
        let unusable = || assertion_rejected("The registered certificate is not a PEM X.509 certificate.");
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| unusable())?;
        let certificate = pem.parse_x509().map_err(|_| unusable())?;
        let digest = |algorithm| aws_lc_rs::digest::digest(algorithm, &pem.contents).as_ref().to_vec();
        Ok(Self {
            sha1: digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY),
            sha256: digest(&aws_lc_rs::digest::SHA256),
            public_key: certificate.public_key().subject_public_key.data.to_vec(),
        })
    }
}

/// Verifies a certificate credential as Entra does: a JWT signed with RS256
/// whose `x5t#S256` (or else `x5t`) header names the registered certificate,
/// whose signature that certificate's key verifies, addressed (`aud`) to this
/// token endpoint, issued by and about the client (`iss` = `sub` =
/// `client_id`), carrying a `jti`, and valid now (`nbf` not in the future,
/// `exp` in the future). Returns the `jti`.
fn verify_client_assertion(
    certificate: &RegisteredCertificate,
    assertion: &str,
    expected: &Expected<'_>,
) -> Result<String, EntraError> {
    let malformed = || assertion_rejected("The assertion is not a well-formed JWT.");
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = parts[..] else {
        return Err(malformed());
    };
    let header = decode_object(header_b64).ok_or_else(malformed)?;
    let claims = decode_object(claims_b64).ok_or_else(malformed)?;
    let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| malformed())?;

    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("none");
    if alg != "RS256" {
        return Err(assertion_rejected(&format!(
            "[Reason - The algorithm '{alg}' is not supported; sign with RS256.]"
        )));
    }
    let (thumbprint, registered) = match (header.get("x5t#S256"), header.get("x5t")) {
        (Some(t), _) => (t, &certificate.sha256),
        (None, Some(t)) => (t, &certificate.sha1),
        (None, None) => {
            return Err(assertion_rejected(
                "[Reason - The assertion names no key: its header has neither x5t#S256 nor x5t.]",
            ));
        }
    };
    let thumbprint = thumbprint.as_str().and_then(|t| URL_SAFE_NO_PAD.decode(t).ok()).unwrap_or_default();
    if thumbprint != *registered {
        let hex: String = thumbprint.iter().map(|b| format!("{b:02X}")).collect();
        return Err(assertion_rejected(&format!(
            "[Reason - The key was not found., Thumbprint of key used by client: '{hex}']"
        )));
    }
    let signing_input = &assertion[..header_b64.len() + 1 + claims_b64.len()];
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &certificate.public_key)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| {
            assertion_rejected("[Reason - The signature does not verify with the registered certificate's key.]")
        })?;

    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("iss") != Some(expected.client_id) || text("sub") != Some(expected.client_id) {
        return Err(EntraError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_021,
            "Client assertion application identifier doesn't match 'client_id' parameter: iss and sub must both be the client id.",
        ));
    }
    if text("aud") != Some(expected.token_url) {
        return Err(EntraError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_023,
            format!(
                "Client assertion audience claim does not match Realm issuer. Expected audience: {}",
                expected.token_url
            ),
        ));
    }
    let jti = text("jti")
        .filter(|j| !j.is_empty())
        .ok_or_else(|| assertion_rejected("[Reason - The assertion has no jti claim.]"))?;
    let time = |name: &str| claims.get(name).and_then(Value::as_f64).map(|t| t.max(0.0) as u64);
    let (nbf, exp) = (time("nbf"), time("exp"));
    let now = expected.now;
    if exp.is_none_or(|exp| exp <= now) || nbf.is_some_and(|nbf| nbf > now) {
        let at = |t: Option<u64>| t.map_or_else(|| "(none)".to_owned(), |t| UtcTime::from_unix(t).entra_timestamp());
        return Err(EntraError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}.",
                at(Some(now)),
                at(nbf),
                at(exp)
            ),
        ));
    }
    Ok(jti.to_owned())
}

/// A base64url JSON object, as in a JWT's header and claims.
fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_tokens_are_parsed_leniently_but_not_blindly() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&headers), None);
    }

    const URL: &str = "http://127.0.0.1:1/tenant/oauth2/v2.0/token";
    const CLIENT: &str = "00000000-0000-4000-8000-00000000c001";
    const NOW: u64 = 1_700_000_000;

    /// A self-signed RSA certificate (PEM) and its PKCS#8 key (DER), made with
    /// the `openssl` CLI.
    fn certificate_and_key(dir: &std::path::Path, name: &str) -> (String, Vec<u8>) {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=graphsim test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl CLI runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let key_pem = std::fs::read(&key).expect("key written");
        let (_, key_der) = x509_parser::pem::parse_x509_pem(&key_pem).expect("PEM key");
        (std::fs::read_to_string(&cert).expect("certificate written"), key_der.contents)
    }

    fn sign(key_der: &[u8], header: &Value, claims: &Value) -> String {
        let key = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(key_der).expect("RSA key");
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; key.public_modulus_len()];
        key.sign(
            &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut signature,
        )
        .expect("signed");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn claims() -> Value {
        json!({ "aud": URL, "iss": CLIENT, "sub": CLIENT, "jti": "j-1", "nbf": NOW, "iat": NOW, "exp": NOW + 600 })
    }

    fn code(result: Result<String, EntraError>) -> u32 {
        result.expect_err("the assertion must be refused").code
    }

    #[test]
    fn client_assertions_are_verified_like_entra() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (pem, key) = certificate_and_key(dir.path(), "app");
        let (_, other_key) = certificate_and_key(dir.path(), "other");
        let certificate = RegisteredCertificate::from_pem(&pem).expect("certificate");
        let expected = Expected { token_url: URL, client_id: CLIENT, now: NOW + 1 };
        let verify = |jwt: &str| verify_client_assertion(&certificate, jwt, &expected);
        let s256 = URL_SAFE_NO_PAD.encode(&certificate.sha256);
        let sha1 = URL_SAFE_NO_PAD.encode(&certificate.sha1);
        let header = json!({ "alg": "RS256", "typ": "JWT", "x5t#S256": s256 });

        assert_eq!(verify(&sign(&key, &header, &claims())).expect("accepted"), "j-1");
        let legacy = json!({ "alg": "RS256", "typ": "JWT", "x5t": sha1 });
        assert!(verify(&sign(&key, &legacy, &claims())).is_ok());

        // The key that signed is not the registered certificate's.
        assert_eq!(code(verify(&sign(&other_key, &header, &claims()))), 700_027);
        // A thumbprint of no registered certificate.
        let unknown = json!({ "alg": "RS256", "x5t#S256": URL_SAFE_NO_PAD.encode([7u8; 32]) });
        let refused = verify(&sign(&key, &unknown, &claims())).expect_err("unknown key");
        assert_eq!(refused.code, 700_027);
        assert!(refused.description.contains("The key was not found"), "{}", refused.description);
        // No thumbprint, another algorithm, or not a JWT at all.
        assert_eq!(code(verify(&sign(&key, &json!({ "alg": "RS256" }), &claims()))), 700_027);
        let hs256 = json!({ "alg": "HS256", "x5t#S256": s256 });
        assert_eq!(code(verify(&sign(&key, &hs256, &claims()))), 700_027);
        assert_eq!(code(verify("a.b.c")), 700_027);
        let jwt = sign(&key, &header, &claims());
        assert_eq!(code(verify(&jwt[..jwt.len() - 4])), 700_027);

        let mut wrong = claims();
        wrong["aud"] = json!("http://127.0.0.1:1/other/oauth2/v2.0/token");
        assert_eq!(code(verify(&sign(&key, &header, &wrong))), 700_023);
        for claim in ["iss", "sub"] {
            let mut wrong = claims();
            wrong[claim] = json!("someone-else");
            assert_eq!(code(verify(&sign(&key, &header, &wrong))), 700_021, "{claim}");
        }
        let mut expired = claims();
        expired["exp"] = json!(NOW);
        assert_eq!(code(verify(&sign(&key, &header, &expired))), 700_024);
        let mut early = claims();
        early["nbf"] = json!(NOW + 60);
        assert_eq!(code(verify(&sign(&key, &header, &early))), 700_024);
        let mut no_jti = claims();
        no_jti.as_object_mut().expect("object").remove("jti");
        assert_eq!(code(verify(&sign(&key, &header, &no_jti))), 700_027);
    }

    #[test]
    fn an_assertion_is_accepted_once() {
        let mut tokens = AccessTokens::default();
        assert!(tokens.first_use_of("j-1").is_ok());
        assert_eq!(tokens.first_use_of("j-1").map_err(|e| e.code), Err(700_027));
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
