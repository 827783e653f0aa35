//! Client-credentials tokens for Graph: requested, cached, and refreshed before they expire.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use super::GraphError;
use crate::config::Secret;

/// What the token request needs.
pub struct Credentials {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: String,
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

    async fn request(&self, http: &reqwest::Client) -> Result<Token, GraphError> {
        let c = &self.credentials;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", c.client_id.as_str()),
            ("client_secret", c.client_secret.expose()),
            ("scope", c.scope.as_str()),
        ];
        let started = Instant::now();
        let response = http
            .post(&c.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| GraphError::network(&c.token_url, &e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| GraphError::network(&c.token_url, &e))?;
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
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3599));
        Ok(Token { value: Secret::new(parsed.access_token), refresh_at: started + lifetime - refresh_margin(lifetime) })
    }
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
    fn refresh_margin_is_bounded() {
        assert_eq!(refresh_margin(Duration::from_secs(3599)), Duration::from_secs(300));
        assert_eq!(refresh_margin(Duration::from_secs(10)), Duration::from_secs(2));
    }

    #[test]
    fn aadsts_description_is_cut_to_its_cause() {
        let text = "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1\r\nTimestamp: 2";
        assert_eq!(first_line(text), "AADSTS7000215: Invalid client secret provided.");
    }
}
