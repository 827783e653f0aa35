//! Client-credentials tokens for Graph: requested, cached, and refreshed before they expire.
//!
//! The app proves itself with a client secret or with a certificate. A certificate credential is a short-lived
//! JWT client assertion signed with the certificate's RSA key (RS256), carrying the certificate's thumbprints
//! in its header, built afresh for every token request as the Microsoft identity platform documents it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use super::GraphError;
use crate::config::{CertificateFiles, ClientCredential, Secret};

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a client assertion is valid; it is used once, right away.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

/// What the token request needs.
pub struct Credentials {
    pub token_url: String,
    pub client_id: String,
    pub credential: Credential,
    pub scope: String,
}

/// How the token request proves the app's identity.
#[derive(Debug)]
pub enum Credential {
    Secret(Secret),
    Certificate(CertificateCredential),
}

impl Credential {
    /// Turns the configured credential into one the token request can use: a certificate and key are parsed
    /// and checked against each other here, so that a bad file is reported before any request.
    pub fn load(credential: ClientCredential) -> Result<Self, CredentialError> {
        match credential {
            ClientCredential::Secret(secret) => Ok(Credential::Secret(secret)),
            ClientCredential::Certificate(files) => CertificateCredential::load(&files).map(Credential::Certificate),
        }
    }
}

/// A certificate file or key file that cannot be used. The message names the setting, the file and the
/// cause; it never quotes the file's contents.
#[derive(Debug, thiserror::Error)]
#[error("{field} {}: {cause}", path.display())]
pub struct CredentialError {
    pub field: &'static str,
    pub path: PathBuf,
    pub cause: String,
}

impl CredentialError {
    fn certificate(path: &Path, cause: impl Into<String>) -> Self {
        CredentialError { field: "client_certificate_file", path: path.to_path_buf(), cause: cause.into() }
    }
    fn key(path: &Path, cause: impl Into<String>) -> Self {
        CredentialError { field: "client_key_file", path: path.to_path_buf(), cause: cause.into() }
    }
}

/// A certificate registered on the app and its RSA private key. `Debug` shows the thumbprint only.
pub struct CertificateCredential {
    key: RsaKeyPair,
    key_file: PathBuf,
    /// Base64url SHA-1 thumbprint of the certificate's DER (`x5t`).
    x5t: String,
    /// Base64url SHA-256 thumbprint of the certificate's DER (`x5t#S256`).
    x5t_s256: String,
}

impl std::fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateCredential").field("x5t#S256", &self.x5t_s256).finish_non_exhaustive()
    }
}

impl CertificateCredential {
    fn load(files: &CertificateFiles) -> Result<Self, CredentialError> {
        let cert_path = &files.certificate_file;
        let key_path = &files.key_file;
        let certificate = CertificateDer::from_pem_slice(&files.certificate_pem).map_err(|e| {
            CredentialError::certificate(cert_path, pem_cause(&e, "PEM certificate (BEGIN CERTIFICATE)"))
        })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&certificate)
            .map_err(|e| CredentialError::certificate(cert_path, format!("the certificate does not parse: {e}")))?;
        warn_if_outside_validity(cert_path, &parsed);

        let key_text = files.key_pem.expose();
        if key_text.contains("ENCRYPTED PRIVATE KEY") {
            return Err(CredentialError::key(
                key_path,
                "the key is encrypted with a passphrase; give an unencrypted key and protect the file with its permissions",
            ));
        }
        let key_der = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).map_err(|e| {
            CredentialError::key(
                key_path,
                pem_cause(&e, "PEM private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)"),
            )
        })?;
        let key = match &key_der {
            PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            _ => {
                return Err(CredentialError::key(
                    key_path,
                    "not an RSA key; Entra ID certificate credentials are signed with RSA",
                ));
            }
        }
        .map_err(|e| CredentialError::key(key_path, format!("not an RSA private key that can sign ({e})")))?;
        drop(key_der);

        if key.public_key().as_ref() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err(CredentialError::key(
                key_path,
                format!("this key does not belong to the certificate in {}", cert_path.display()),
            ));
        }
        Ok(CertificateCredential {
            key,
            key_file: key_path.clone(),
            x5t: thumbprint(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &certificate),
            x5t_s256: thumbprint(&aws_lc_rs::digest::SHA256, &certificate),
        })
    }

    /// The signed client assertion for `token_url`, issued at `now` (seconds since the epoch) with id `jti`.
    fn assertion(&self, token_url: &str, client_id: &str, now: u64, jti: &str) -> Result<String, CredentialError> {
        let header = json!({ "alg": "RS256", "typ": "JWT", "x5t": self.x5t, "x5t#S256": self.x5t_s256 });
        let claims = json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": jti,
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &aws_lc_rs::rand::SystemRandom::new(), signing_input.as_bytes(), &mut signature)
            .map_err(|_| CredentialError::key(&self.key_file, "signing the client assertion failed"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

fn thumbprint(algorithm: &'static aws_lc_rs::digest::Algorithm, der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(algorithm, der))
}

/// Why PEM text could not be read, in words that never quote the text.
fn pem_cause(error: &pem::Error, expected: &str) -> String {
    match error {
        pem::Error::NoItemsFound => format!("the file holds no {expected}"),
        pem::Error::MissingSectionEnd { .. } => "a PEM block has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => "a PEM block is not valid base64".into(),
        pem::Error::SectionTooLarge => "a PEM block is too large".into(),
        pem::Error::Io(e) => format!("cannot read it: {e}"),
        _ => format!("the file is not valid PEM; expected a {expected}"),
    }
}

/// Entra ID refuses an expired certificate; say so locally, where the admin looks first.
fn warn_if_outside_validity(path: &Path, certificate: &x509_parser::certificate::X509Certificate<'_>) {
    let validity = certificate.validity();
    let now = unix_now() as i64;
    if validity.not_after.timestamp() < now {
        tracing::warn!(path = %path.display(), not_after = %validity.not_after, "the client certificate has expired; Entra ID will refuse it");
    } else if validity.not_before.timestamp() > now {
        tracing::warn!(path = %path.display(), not_before = %validity.not_before, "the client certificate is not valid yet");
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A random version-4 GUID, the `jti` of an assertion.
fn new_guid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

struct Token {
    value: Secret,
    refresh_at: Instant,
}

/// A cached bearer token for one tenant.
pub struct TokenCache {
    credentials: Credentials,
    current: Mutex<Option<Token>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    error: Option<String>,
    error_description: Option<String>,
}

impl TokenCache {
    /// A cache that holds no token yet.
    pub fn new(credentials: Credentials) -> Self {
        TokenCache { credentials, current: Mutex::new(None) }
    }

    /// A valid token, fetching a new one when none is cached or the cached one is near expiry.
    pub async fn get(&self, http: &reqwest::Client) -> Result<Secret, GraphError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.value.clone());
        }
        let token = self.request(http).await?;
        let value = token.value.clone();
        *current = Some(token);
        Ok(value)
    }

    /// Forgets the cached token, after Graph refused it with 401.
    pub async fn invalidate(&self) {
        *self.current.lock().await = None;
    }

    /// The token request's form; a certificate credential signs a fresh assertion each time.
    fn form(&self) -> Result<Vec<(&'static str, String)>, GraphError> {
        let c = &self.credentials;
        let mut form = vec![("grant_type", "client_credentials".to_string()), ("client_id", c.client_id.clone())];
        match &c.credential {
            Credential::Secret(secret) => form.push(("client_secret", secret.expose().to_string())),
            Credential::Certificate(certificate) => {
                let assertion = certificate.assertion(&c.token_url, &c.client_id, unix_now(), &new_guid())?;
                form.push(("client_assertion_type", JWT_BEARER.to_string()));
                form.push(("client_assertion", assertion));
            }
        }
        form.push(("scope", c.scope.clone()));
        Ok(form)
    }

    async fn request(&self, http: &reqwest::Client) -> Result<Token, GraphError> {
        let c = &self.credentials;
        let form = self.form()?;
        let started = Instant::now();
        let response =
            http.post(&c.token_url).form(&form).send().await.map_err(|e| GraphError::network(&c.token_url, &e))?;
        let status = response.status();
        if status.is_redirection() {
            let target = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(super::path_of)
                .unwrap_or_default();
            return Err(GraphError::Redirect { url: super::path_of(&c.token_url), status: status.as_u16(), target });
        }
        let body =
            super::read_body(response).await.map_err(|e| GraphError::network(&c.token_url, &e))?.ok_or_else(|| {
                GraphError::TooLarge { path: super::path_of(&c.token_url), limit_mib: super::MAX_BODY_BYTES >> 20 }
            })?;
        if !status.is_success() {
            let err: TokenErrorBody = serde_json::from_slice(&body).unwrap_or_default();
            return Err(GraphError::Token {
                status: status.as_u16(),
                code: err.error.unwrap_or_else(|| "no error code".into()),
                description: first_line(err.error_description.as_deref().unwrap_or("no description")),
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| GraphError::Token {
            status: status.as_u16(),
            code: "malformed_response".into(),
            description: format!("the token response is not the expected JSON: {e}"),
        })?;
        Ok(Token { value: Secret::new(parsed.access_token), refresh_at: refresh_at(started, parsed.expires_in) })
    }
}

/// The longest token lifetime believed. Entra issues tokens for 60 to 90 minutes; a larger `expires_in`
/// is not trusted, and a huge one must not overflow the clock.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// When to fetch a new token for one issued at `started` that lives `expires_in` seconds.
fn refresh_at(started: Instant, expires_in: Option<u64>) -> Instant {
    let lifetime = Duration::from_secs(expires_in.unwrap_or(3599)).min(MAX_TOKEN_LIFETIME);
    started + (lifetime - refresh_margin(lifetime))
}

/// How long before expiry to refresh: five minutes, or a fifth of a short lifetime.
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(Duration::from_secs(300))
}

/// AADSTS descriptions carry a trace id and timestamp on later lines; the first line is the cause.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_or_zero_expires_in_neither_panics_nor_is_believed() {
        let now = Instant::now();
        assert_eq!(refresh_at(now, Some(u64::MAX)), refresh_at(now, Some(24 * 3600)));
        assert!(refresh_at(now, Some(u64::MAX)) <= now + MAX_TOKEN_LIFETIME);
        assert_eq!(refresh_at(now, Some(0)), now);
        assert!(refresh_at(now, None) > now + Duration::from_secs(3000));
    }

    #[test]
    fn refresh_margin_is_bounded() {
        assert_eq!(refresh_margin(Duration::from_secs(3599)), Duration::from_secs(300));
        assert_eq!(refresh_margin(Duration::from_secs(10)), Duration::from_secs(2));
    }

    /// A self-signed RSA certificate and its key, made with the `openssl` CLI; the key file in `key_format`
    /// ("pkcs8" or "pkcs1").
    fn openssl_certificate(dir: &Path, name: &str, key_format: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=writeback test"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl CLI runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        if key_format == "pkcs1" {
            let out = std::process::Command::new("openssl")
                .args(["rsa", "-traditional", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(&key)
                .output()
                .expect("the openssl CLI runs");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        (cert, key)
    }

    fn files(cert: &Path, key: &Path) -> CertificateFiles {
        CertificateFiles {
            certificate_file: cert.to_path_buf(),
            certificate_pem: std::fs::read(cert).unwrap(),
            key_file: key.to_path_buf(),
            key_pem: Secret::new(std::fs::read_to_string(key).unwrap()),
        }
    }

    /// The thumbprint `openssl x509 -fingerprint` prints, base64url-encoded as in `x5t`.
    fn openssl_thumbprint(cert: &Path, digest: &str) -> String {
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", digest, "-in"])
            .arg(cert)
            .output()
            .expect("the openssl CLI runs");
        let text = String::from_utf8(out.stdout).unwrap();
        let hex = text.trim().split_once('=').expect("a fingerprint line").1.replace(':', "");
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn decode_json(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn the_assertion_has_the_documented_header_claims_and_signature() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = openssl_certificate(dir.path(), "app", "pkcs8");
        let credential = CertificateCredential::load(&files(&cert, &key)).unwrap();
        let url = "https://login.example.test/tenant/oauth2/v2.0/token";
        let jwt = credential.assertion(url, "client-1", 1_700_000_000, "3f1c1a52-0000-4000-8000-000000000001").unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);

        let header = decode_json(parts[0]);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["x5t#S256"], openssl_thumbprint(&cert, "-sha256"));
        assert_eq!(header["x5t"], openssl_thumbprint(&cert, "-sha1"));

        let claims = decode_json(parts[1]);
        assert_eq!(claims["aud"], url);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["jti"], "3f1c1a52-0000-4000-8000-000000000001");
        assert_eq!(claims["nbf"], 1_700_000_000u64);
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_000_600u64);

        let der = std::fs::read(&cert).unwrap();
        let der = CertificateDer::from_pem_slice(&der).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let public_key = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            parsed.public_key().subject_public_key.data.to_vec(),
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        public_key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature).expect("the signature verifies");
        assert!(!format!("{credential:?}").contains("BEGIN"));
    }

    #[test]
    fn every_token_request_signs_a_fresh_assertion_and_sends_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = openssl_certificate(dir.path(), "app", "pkcs1");
        let credential = Credential::load(ClientCredential::Certificate(files(&cert, &key))).unwrap();
        let cache = TokenCache::new(Credentials {
            token_url: "http://127.0.0.1:1/t/oauth2/v2.0/token".into(),
            client_id: "client-1".into(),
            credential,
            scope: "http://127.0.0.1:1/.default".into(),
        });
        let (first, second) = (cache.form().unwrap(), cache.form().unwrap());
        let field = |form: &[(&str, String)], name: &str| form.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        assert_eq!(field(&first, "client_assertion_type").as_deref(), Some(JWT_BEARER));
        assert!(field(&first, "client_secret").is_none());
        let (a, b) = (field(&first, "client_assertion").unwrap(), field(&second, "client_assertion").unwrap());
        let jti = |jwt: &str| decode_json(jwt.split('.').nth(1).unwrap())["jti"].as_str().unwrap().to_string();
        assert_ne!(jti(&a), jti(&b));
        assert_eq!(jti(&a).len(), 36);
    }

    #[test]
    fn a_secret_credential_sends_the_secret() {
        let cache = TokenCache::new(Credentials {
            token_url: "http://127.0.0.1:1/t/oauth2/v2.0/token".into(),
            client_id: "client-1".into(),
            credential: Credential::Secret(Secret::new("hunter2".into())),
            scope: "s".into(),
        });
        let form = cache.form().unwrap();
        assert!(form.contains(&("client_secret", "hunter2".to_string())));
        assert!(!form.iter().any(|(k, _)| k.starts_with("client_assertion")));
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = openssl_certificate(dir.path(), "app", "pkcs8");
        let (_, other_key) = openssl_certificate(dir.path(), "other", "pkcs8");
        let err = CertificateCredential::load(&files(&cert, &other_key)).unwrap_err().to_string();
        assert!(err.starts_with(&format!("client_key_file {}: ", other_key.display())), "{err}");
        assert!(err.contains(&format!("does not belong to the certificate in {}", cert.display())), "{err}");
    }

    #[test]
    fn bad_files_are_named_without_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = openssl_certificate(dir.path(), "app", "pkcs8");
        let key_text = std::fs::read_to_string(&key).unwrap();
        let body_line = key_text.lines().nth(1).unwrap().to_string();

        let mut bad = files(&cert, &key);
        bad.key_pem = Secret::new(key_text.replace(&body_line, &format!("{body_line}!!")));
        let err = CertificateCredential::load(&bad).unwrap_err().to_string();
        assert!(err.starts_with(&format!("client_key_file {}: ", key.display())) && err.contains("base64"), "{err}");
        assert!(!err.contains(&body_line[..20]), "{err}");

        let mut swapped = files(&cert, &key);
        swapped.key_pem = Secret::new(String::from_utf8(swapped.certificate_pem.clone()).unwrap());
        let err = CertificateCredential::load(&swapped).unwrap_err().to_string();
        assert!(err.contains("holds no PEM private key"), "{err}");

        let mut no_cert = files(&cert, &key);
        no_cert.certificate_pem = b"not a certificate".to_vec();
        let err = CertificateCredential::load(&no_cert).unwrap_err().to_string();
        assert!(err.starts_with(&format!("client_certificate_file {}: ", cert.display())), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn ec_and_encrypted_keys_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = openssl_certificate(dir.path(), "app", "pkcs8");
        let ec_key = dir.path().join("ec.key");
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"])
            .arg(&ec_key)
            .output()
            .unwrap();
        assert!(out.status.success());
        let err = CertificateCredential::load(&files(&cert, &ec_key)).unwrap_err().to_string();
        assert!(err.contains("not an RSA private key"), "{err}");

        let encrypted = dir.path().join("encrypted.key");
        let out = std::process::Command::new("openssl")
            .args(["pkcs8", "-topk8", "-passout", "pass:pw", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&encrypted)
            .output()
            .unwrap();
        assert!(out.status.success());
        let err = CertificateCredential::load(&files(&cert, &encrypted)).unwrap_err().to_string();
        assert!(err.contains("encrypted"), "{err}");
    }

    #[test]
    fn aadsts_description_is_cut_to_its_cause() {
        let text = "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1\r\nTimestamp: 2";
        assert_eq!(first_line(text), "AADSTS7000215: Invalid client secret provided.");
    }
}
