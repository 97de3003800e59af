//! Requests to the OAuth token endpoint: the refresh grant and the authorization-code exchange. Claude's
//! endpoint wants JSON bodies, so both are sent here with one HTTP client, shared by refresh and login.

use crate::credentials::{is_storable_token, json_fault, TokenUpdate};
use serde::Deserialize;
use serde_json::json;
use sidecred_proto::{anthropic, Secret};
use std::time::Duration;

/// The longest `Retry-After` honoured; a larger value is treated as this.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The longest token lifetime believed: a long-lived token lives a year. A larger `expires_in` is
/// clamped to this, never refused: by the time we read it the refresh token may already have rotated,
/// and the new pair must be kept.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(400 * 86_400);

/// The lifetime assumed when a successful answer has no usable `expires_in`: short, so the pair is kept
/// and refreshed again soon.
pub const FALLBACK_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// The largest answer read from the token endpoint. A real one is well under 2 KiB.
const MAX_RESPONSE_LEN: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub token_url: String,
    pub client_id: String,
    pub user_agent: String,
    pub timeout: Duration,
}

#[derive(Clone)]
pub struct OAuthClient {
    http: reqwest::Client,
    config: OAuthConfig,
}

/// A successful token response.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub access_token: Secret,
    /// `None` when the endpoint did not rotate it: the old one stays valid.
    pub refresh_token: Option<Secret>,
    pub expires_in: Duration,
    pub scopes: Option<Vec<String>>,
    pub account_email: Option<String>,
}

impl TokenResponse {
    /// The update to merge into the credentials, with the expiry counted from `arrived_ms` (the local
    /// clock when the answer arrived).
    pub fn into_update(self, arrived_ms: u64) -> TokenUpdate {
        TokenUpdate {
            access_token: self.access_token,
            refresh_token: self.refresh_token,
            expires_at_ms: arrived_ms
                .saturating_add(u64::try_from(self.expires_in.as_millis()).unwrap_or(u64::MAX)),
            scopes: self.scopes,
        }
    }
}

/// Why a token request failed, split the way the caller must act on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// Worth retrying later: network trouble, timeouts, 5xx, 429, a garbled answer.
    #[error("{reason}")]
    Transient { reason: String, retry_after: Option<Duration> },
    /// The grant is dead (`invalid_grant`, or 401/403): retrying cannot help, a person must log in.
    #[error("{reason}")]
    Rejected { reason: String },
}

impl TokenError {
    fn transient(reason: impl Into<String>) -> Self {
        TokenError::Transient { reason: reason.into(), retry_after: None }
    }
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
    account: Option<RawAccount>,
}

#[derive(Deserialize)]
struct RawAccount {
    email_address: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawError {
    error: Option<serde_json::Value>,
    error_description: Option<String>,
}

fn refresh_body(refresh_token: &Secret, client_id: &str, scopes: &[String]) -> serde_json::Value {
    let mut body = json!({
        "grant_type": "refresh_token",
        "refresh_token": refresh_token.expose(),
        "client_id": client_id,
    });
    if !scopes.is_empty() {
        body["scope"] = scopes.join(" ").into();
    }
    body
}

impl OAuthClient {
    pub fn new(config: OAuthConfig) -> Result<Self, reqwest::Error> {
        // reqwest reads HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment by default.
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(OAuthClient { http, config })
    }

    /// The shared HTTP client, for the few other calls the account commands make.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `scopes` are the login's, sent back as Claude Code does so the new token carries the same ones;
    /// a file that records none sends none and the endpoint keeps what it granted.
    pub async fn refresh(
        &self,
        refresh_token: &Secret,
        scopes: &[String],
    ) -> Result<TokenResponse, TokenError> {
        self.token_request(refresh_body(refresh_token, &self.config.client_id, scopes)).await
    }

    /// Exchanges an authorization code. `lifetime` asks for a token that lives that long (a long-lived
    /// login); without it the endpoint picks (about 8 hours).
    pub async fn exchange_code(
        &self,
        code: &Secret,
        verifier: &Secret,
        redirect_uri: &str,
        state: &Secret,
        lifetime: Option<Duration>,
    ) -> Result<TokenResponse, TokenError> {
        let mut body = json!({
            "grant_type": "authorization_code",
            "code": code.expose(),
            "redirect_uri": redirect_uri,
            "client_id": self.config.client_id,
            "code_verifier": verifier.expose(),
            "state": state.expose(),
        });
        if let Some(lifetime) = lifetime {
            body["expires_in"] = lifetime.as_secs().into();
        }
        self.token_request(body).await
    }

    async fn token_request(&self, body: serde_json::Value) -> Result<TokenResponse, TokenError> {
        let url = &self.config.token_url;
        let response = self
            .http
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&body)
            .send()
            .await
            .map_err(|e| TokenError::transient(describe_reqwest(&e, url)))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let bytes = read_bounded(response, url).await?;
        if status.is_success() {
            parse_success(&bytes, url)
        } else {
            Err(classify_failure(status.as_u16(), &bytes, retry_after, url))
        }
    }
}

pub(crate) fn parse_success(bytes: &[u8], url: &str) -> Result<TokenResponse, TokenError> {
    let raw: RawTokenResponse = serde_json::from_slice(bytes).map_err(|e| {
        TokenError::transient(format!("token endpoint {url} sent malformed JSON ({})", json_fault(&e)))
    })?;
    // A blank token is no token: saved, it would make the file unreadable at the next start.
    let access_token = raw.access_token.filter(|t| is_storable_token(t)).ok_or_else(|| {
        TokenError::transient(format!("token endpoint {url} answered without `access_token`"))
    })?;
    let expires_in = lifetime(raw.expires_in.as_ref(), url);
    Ok(TokenResponse {
        access_token: Secret::new(access_token),
        refresh_token: raw.refresh_token.filter(|t| is_storable_token(t)).map(Secret::new),
        expires_in,
        scopes: raw.scope.map(|s| s.split_whitespace().map(str::to_owned).collect()),
        account_email: raw.account.and_then(|a| a.email_address),
    })
}

/// The token's lifetime from `expires_in` (seconds, as a number or a string), clamped to
/// [`MAX_TOKEN_LIFETIME`]; [`FALLBACK_TOKEN_LIFETIME`] when it is missing, not a number or not positive.
/// Never an error: the answer carries a pair that must be kept whatever its lifetime says.
fn lifetime(value: Option<&serde_json::Value>, url: &str) -> Duration {
    let secs =
        value.and_then(|v| v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse::<f64>().ok())));
    match secs {
        Some(s) if s.is_finite() && s >= 1.0 => {
            let max = MAX_TOKEN_LIFETIME.as_secs_f64();
            if s > max {
                tracing::warn!(endpoint = %url, expires_in = s, "the token endpoint gave an implausible lifetime; assuming {} days", MAX_TOKEN_LIFETIME.as_secs() / 86_400);
            }
            Duration::from_secs_f64(s.min(max))
        }
        _ => {
            tracing::warn!(endpoint = %url, "the token endpoint answered without a usable `expires_in`; assuming {FALLBACK_TOKEN_LIFETIME:?} so the new pair is kept and refreshed again soon");
            FALLBACK_TOKEN_LIFETIME
        }
    }
}

/// Reads an answer's body, at most [`MAX_RESPONSE_LEN`] bytes.
async fn read_bounded(mut response: reqwest::Response, url: &str) -> Result<Vec<u8>, TokenError> {
    let mut bytes = Vec::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|e| TokenError::transient(describe_reqwest(&e, url)))?
    {
        if bytes.len().saturating_add(chunk.len()) > MAX_RESPONSE_LEN {
            return Err(TokenError::transient(format!(
                "token endpoint {url} sent an answer larger than {MAX_RESPONSE_LEN} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Sorts a non-2xx answer into "retry later" and "log in again".
pub fn classify_failure(status: u16, body: &[u8], retry_after: Option<Duration>, url: &str) -> TokenError {
    let raw: RawError = serde_json::from_slice(body).unwrap_or_default();
    // `error` is a string in OAuth; some gateways nest an object. Only short codes are quoted back,
    // since a body we do not understand could echo what we sent.
    let code = match &raw.error {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(o)) => o.get("type").and_then(|t| t.as_str()).map(str::to_owned),
        _ => None,
    }
    .filter(|c| anthropic::is_error_code(c));
    let description = raw
        .error_description
        .filter(|d| anthropic::is_quotable(d))
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    let code_text = code.as_deref().map(|c| format!(" {c}")).unwrap_or_default();
    let reason = format!("token endpoint {url} answered {status}{code_text}{description}");
    match (status, code.as_deref()) {
        (_, Some("invalid_grant")) | (401 | 403, _) => TokenError::Rejected { reason },
        (429, _) => TokenError::Transient { reason, retry_after },
        (s, _) if s >= 500 => TokenError::Transient { reason, retry_after },
        // Other 4xx (invalid_request, invalid_client, a proxy's 407...) point at configuration; retrying
        // with backoff keeps the agent alive while someone fixes it, and status shows the reason.
        _ => TokenError::Transient { reason, retry_after },
    }
}

pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate_parse(value)?;
            at.duration_since(std::time::SystemTime::now()).unwrap_or_default()
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// `Retry-After` may be an HTTP date (IMF-fixdate).
fn httpdate_parse(value: &str) -> Option<std::time::SystemTime> {
    // "Sun, 06 Nov 1994 08:49:37 GMT" -> "1994-11-06T08:49:37Z"
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let m = months.iter().position(|x| x == month)? + 1;
    humantime::parse_rfc3339(&format!("{year}-{m:02}-{day:0>2}T{time}Z")).ok()
}

/// A transport error in words, without the request (whose body holds a token).
fn describe_reqwest(e: &reqwest::Error, url: &str) -> String {
    describe_request_error(e, "token endpoint", url)
}

/// A transport error in words, naming `what` was asked at `url`. Never includes a request's headers or
/// body, so it is safe for requests that carry a token.
pub fn describe_request_error(e: &reqwest::Error, what: &str, url: &str) -> String {
    let failure = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body failed"
    } else {
        "request failed"
    };
    // The source chain names the OS error (refused, unreachable, TLS) and never includes the body.
    let mut detail = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        format!("{what} {url}: {failure}")
    } else {
        format!("{what} {url}: {failure} ({detail})")
    }
}

#[cfg(test)]
mod tests;
