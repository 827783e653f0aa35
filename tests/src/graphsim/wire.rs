//! Wire-level helpers shared by the handlers: identifiers, timestamps, an
//! encoding for opaque tokens, and Graph- and Entra-shaped responses.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Content type Microsoft Graph puts on its JSON responses.
pub(crate) const GRAPH_CONTENT_TYPE: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// Content type the Entra token endpoint puts on its responses.
pub(crate) const TOKEN_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Identifiers of the request being served, kept in a task-local so that error
/// bodies can carry them (Graph repeats them in `innerError`) without every
/// handler passing them around.
#[derive(Clone, Debug)]
pub(crate) struct RequestIds {
    pub(crate) request_id: String,
    pub(crate) client_request_id: String,
}

tokio::task_local! {
    pub(crate) static REQUEST_IDS: RequestIds;
}

/// The ids of the request being served, or fresh ones outside a request.
pub(crate) fn current_request_ids() -> RequestIds {
    REQUEST_IDS.try_with(Clone::clone).unwrap_or_else(|_| {
        let id = new_guid();
        RequestIds { request_id: id.clone(), client_request_id: id }
    })
}

/// A random version-4 GUID in its usual textual form.
pub(crate) fn new_guid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// `len` random bytes, base64url-encoded: an unguessable opaque string.
pub(crate) fn random_token(len: usize) -> String {
    let bytes: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    base64url(&bytes)
}

/// Unpadded base64url, so tokens can sit in a query string unescaped.
pub(crate) fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let word = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            let index = (word >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[index as usize]));
        }
    }
    out
}

/// A UTC wall-clock time split into calendar fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UtcTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
}

impl UtcTime {
    /// The current time.
    pub(crate) fn now() -> Self {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self::from_unix(secs)
    }

    /// The time `secs` seconds after the Unix epoch.
    pub(crate) fn from_unix(secs: u64) -> Self {
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let rest = secs % 86_400;
        Self { year, month, day, hour: rest / 3600, minute: rest % 3600 / 60, second: rest % 60 }
    }

    /// `2024-05-01T12:00:00`, the form Graph uses in `innerError.date`.
    pub(crate) fn graph_date(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `2024-05-01T12:00:00Z`, the form of Graph's DateTimeOffset properties.
    pub(crate) fn iso8601(&self) -> String {
        format!("{}Z", self.graph_date())
    }

    /// `2024-05-01 12:00:00Z`, the form Entra uses in token errors.
    pub(crate) fn entra_timestamp(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar, counting in 400-year eras that start on 1 March so that leap
/// days fall at the end of each year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A JSON response with Graph's content type.
pub(crate) fn graph_json(status: StatusCode, body: &Value) -> Response {
    with_content_type(status, body.to_string(), GRAPH_CONTENT_TYPE)
}

/// A raw body with the given status and content type.
pub(crate) fn with_content_type(status: StatusCode, body: String, content_type: &'static str) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Graph's error body: `{"error":{"code","message","innerError":{...}}}`.
pub(crate) fn graph_error_body(code: &str, message: &str) -> Value {
    let ids = current_request_ids();
    json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": UtcTime::now().graph_date(),
                "request-id": ids.request_id,
                "client-request-id": ids.client_request_id,
            }
        }
    })
}

/// A Graph error response.
pub(crate) fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    graph_json(status, &graph_error_body(code, message))
}

/// The 401 Graph sends for a missing, expired or revoked access token. Real
/// Graph also names the authority in `WWW-Authenticate`.
pub(crate) fn invalid_token(message: &str) -> Response {
    let mut response = graph_error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\""),
    );
    response
}

/// An Entra (AADSTS) error from the token endpoint.
#[derive(Clone, Debug)]
pub(crate) struct EntraError {
    pub(crate) status: StatusCode,
    pub(crate) error: &'static str,
    pub(crate) code: u32,
    pub(crate) description: String,
}

impl EntraError {
    /// Builds an error; `description` is the text after `AADSTS<code>: `.
    pub(crate) fn new(status: StatusCode, error: &'static str, code: u32, description: impl Into<String>) -> Self {
        Self { status, error, code, description: description.into() }
    }
}

impl IntoResponse for EntraError {
    fn into_response(self) -> Response {
        let ids = current_request_ids();
        let now = UtcTime::now().entra_timestamp();
        // Entra appends the trace and correlation ids to the description too.
        let description = format!(
            "AADSTS{}: {}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
            self.code, self.description, ids.request_id, ids.client_request_id, now
        );
        let body = json!({
            "error": self.error,
            "error_description": description,
            "error_codes": [self.code],
            "timestamp": now,
            "trace_id": ids.request_id,
            "correlation_id": ids.client_request_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        with_content_type(self.status, body.to_string(), TOKEN_CONTENT_TYPE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_known_vectors() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn calendar_conversion_handles_epoch_and_leap_days() {
        assert_eq!(UtcTime::from_unix(0).iso8601(), "1970-01-01T00:00:00Z");
        assert_eq!(UtcTime::from_unix(951_782_400).iso8601(), "2000-02-29T00:00:00Z");
        assert_eq!(UtcTime::from_unix(1_709_251_199).entra_timestamp(), "2024-02-29 23:59:59Z");
    }

    #[test]
    fn guids_are_version_4() {
        let guid = new_guid();
        assert_eq!(guid.len(), 36);
        assert_eq!(&guid[14..15], "4");
    }
}
