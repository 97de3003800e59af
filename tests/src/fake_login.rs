//! Fake of the OAuth authorize/token (authorization_code), profile and models endpoints for the login tests.
//!
//! One server plays Claude's authorize page, its token endpoint and the two API endpoints the account
//! commands call, so a login, a refresh and a validation all see one consistent set of live tokens:
//! - `GET /oauth/authorize` checks the query the way the real page does, then mints a single-use code
//!   bound to the PKCE challenge, the redirect URI, the state and the scopes, and answers
//!   `302 Location: <redirect_uri>?code=..&state=..` (the paste flow's page shows the same pair as
//!   `CODE#STATE`; tests read it from the Location header).
//! - `POST /v1/oauth/token` accepts only JSON bodies; `authorization_code` checks client id, redirect
//!   URI, state, the verifier against the challenge (S256) and single use; `refresh_token` rotates.
//! - `GET /v1/models`: 200 for a live token with the OAuth beta, 401 for an unknown one, 403 for one
//!   minted without `user:inference`.
//! - `GET /api/oauth/profile`: the account and organization of a live token.
//!
//! Every refusal is recorded with its reason, so a test can assert what the fake saw.

use crate::harness::FakeServer;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub const CLIENT_ID: &str = crate::fake_oauth::CLIENT_ID;
/// The paste flow's redirect URI (Claude's page that shows `CODE#STATE`).
pub const MANUAL_REDIRECT_URI: &str = "https://platform.claude.com/oauth/code/callback";
pub const OAUTH_BETA: &str = "oauth-2025-04-20";
pub const DEFAULT_SCOPES: &[&str] = &["org:create_api_key", "user:profile", "user:inference"];
const KNOWN_SCOPES: &[&str] =
    &["org:create_api_key", "user:profile", "user:inference", "user:sessions:claude_code"];
pub const EMAIL: &str = "someone@example.com";
pub const ORG_UUID: &str = "org-2222-fake";

#[derive(Debug, Clone)]
pub struct Pair {
    pub access_token: String,
    pub refresh_token: String,
}

/// What a minted code is bound to.
#[derive(Debug, Clone)]
struct Grant {
    challenge: String,
    redirect_uri: String,
    state: String,
    scopes: Vec<String>,
    used: bool,
}

#[derive(Default)]
struct State {
    seq: u64,
    expires_in: u64,
    codes: HashMap<String, Grant>,
    /// Live access tokens and the scopes they were minted with.
    access: HashMap<String, Vec<String>>,
    /// Live refresh tokens and their scopes.
    refresh: HashMap<String, Vec<String>>,
    rotated_from: Vec<String>,
    /// The next code is bound to a different challenge than the client sent (a verifier mismatch).
    swap_next_challenge: bool,
    profile: Value,
    authorize_requests: u64,
    exchange_requests: u64,
    exchanges: u64,
    refresh_requests: u64,
    rotations: u64,
    models_requests: u64,
    profile_requests: u64,
    rejections: Vec<String>,
    /// Key names of the last authorization_code body (never the values).
    last_exchange_keys: Vec<String>,
}

pub struct FakeLogin {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _server: FakeServer,
}

impl FakeLogin {
    pub async fn start() -> FakeLogin {
        let state = Arc::new(Mutex::new(State {
            expires_in: 8 * 3600,
            profile: default_profile(),
            ..State::default()
        }));
        let st = state.clone();
        let server = FakeServer::start(move |req| handle(req, st.clone())).await;
        let addr = server.addr;
        FakeLogin { addr, state, _server: server }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn authorize_url(&self) -> String {
        format!("{}/oauth/authorize", self.base())
    }
    pub fn token_url(&self) -> String {
        format!("{}/v1/oauth/token", self.base())
    }
    /// The API base (`/v1/models`, `/api/oauth/profile`).
    pub fn api_base(&self) -> String {
        self.base()
    }

    /// A live pair with these scopes, as an earlier login would have left.
    pub fn issue_pair(&self, scopes: &[&str]) -> Pair {
        let mut st = self.state.lock().unwrap();
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        mint(&mut st, &scopes)
    }

    /// A pair the server never issued.
    pub fn unknown_pair(&self) -> Pair {
        let mut st = self.state.lock().unwrap();
        let pair = mint(&mut st, &[]);
        st.access.remove(&pair.access_token);
        st.refresh.remove(&pair.refresh_token);
        pair
    }

    /// The next code is bound to another challenge than the one in the authorize request, so the
    /// client's (correct) verifier will not match it.
    pub fn swap_next_challenge(&self) {
        self.state.lock().unwrap().swap_next_challenge = true;
    }
    pub fn set_expires_in(&self, secs: u64) {
        self.state.lock().unwrap().expires_in = secs;
    }
    pub fn set_profile(&self, profile: Value) {
        self.state.lock().unwrap().profile = profile;
    }
    /// Access tokens stop being accepted (revoked upstream); refresh tokens stay live.
    pub fn revoke_access_tokens(&self) {
        self.state.lock().unwrap().access.clear();
    }

    pub fn is_valid_access_token(&self, token: &str) -> bool {
        self.state.lock().unwrap().access.contains_key(token)
    }
    pub fn is_live_refresh_token(&self, token: &str) -> bool {
        self.state.lock().unwrap().refresh.contains_key(token)
    }
    pub fn was_rotated(&self, refresh_token: &str) -> bool {
        self.state.lock().unwrap().rotated_from.iter().any(|t| t == refresh_token)
    }
    pub fn authorize_requests(&self) -> u64 {
        self.state.lock().unwrap().authorize_requests
    }
    /// `authorization_code` requests received, whatever their fate.
    pub fn exchange_requests(&self) -> u64 {
        self.state.lock().unwrap().exchange_requests
    }
    /// Codes exchanged successfully (every check passed).
    pub fn exchanges(&self) -> u64 {
        self.state.lock().unwrap().exchanges
    }
    pub fn refresh_requests(&self) -> u64 {
        self.state.lock().unwrap().refresh_requests
    }
    pub fn rotations(&self) -> u64 {
        self.state.lock().unwrap().rotations
    }
    pub fn models_requests(&self) -> u64 {
        self.state.lock().unwrap().models_requests
    }
    pub fn profile_requests(&self) -> u64 {
        self.state.lock().unwrap().profile_requests
    }
    /// Why requests were refused, in order.
    pub fn rejections(&self) -> Vec<String> {
        self.state.lock().unwrap().rejections.clone()
    }
    /// The key names of the last `authorization_code` body.
    pub fn last_exchange_keys(&self) -> Vec<String> {
        self.state.lock().unwrap().last_exchange_keys.clone()
    }
}

pub fn default_profile() -> Value {
    json!({
        "account": {
            "uuid": "acct-1111-fake",
            "email": EMAIL,
            "full_name": "Some One",
            "display_name": "Some",
            "has_claude_max": true,
            "has_claude_pro": false
        },
        "organization": {
            "uuid": ORG_UUID,
            "name": "Some One's Organization",
            "organization_type": "claude_max",
            "billing_type": "stripe_subscription",
            "rate_limit_tier": "default_claude_max_20x"
        }
    })
}

/// base64url without padding, written out here so the fake shares no code with the client it checks.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

pub fn s256(verifier: &str) -> String {
    base64url(&Sha256::digest(verifier.as_bytes()))
}

fn mint(st: &mut State, scopes: &[String]) -> Pair {
    st.seq += 1;
    let salt: u64 = rand::rng().random();
    let pair = Pair {
        access_token: format!("sctest-at-login-{}-{salt:016x}", st.seq),
        refresh_token: format!("sctest-rt-login-{}-{salt:016x}", st.seq),
    };
    st.access.insert(pair.access_token.clone(), scopes.to_vec());
    st.refresh.insert(pair.refresh_token.clone(), scopes.to_vec());
    pair
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    resp
}

fn oauth_error(st: &mut State, status: StatusCode, error: &str, why: &str) -> Response<Full<Bytes>> {
    st.rejections.push(why.to_owned());
    json_response(status, json!({"error": error, "error_description": why}))
}

fn api_error(st: &mut State, status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    st.rejections.push(format!("{}: {message}", status.as_u16()));
    json_response(status, json!({"type": "error", "error": {"type": kind, "message": message}}))
}

type HandlerResult = Result<Response<Full<Bytes>>, std::io::Error>;

async fn handle(req: Request<Incoming>, st: Arc<Mutex<State>>) -> HandlerResult {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (content_type, authorization, beta, version) = (
        header("content-type"),
        header("authorization"),
        header("anthropic-beta"),
        header("anthropic-version"),
    );
    let body = req.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
    let mut s = st.lock().unwrap();
    let resp = match (method.as_str(), path.as_str()) {
        ("GET", "/oauth/authorize") => authorize(&mut s, &query),
        ("POST", "/v1/oauth/token") => token(&mut s, &content_type, &body),
        ("GET", "/v1/models") => {
            s.models_requests += 1;
            api_call(&mut s, &authorization, &beta, &version, "user:inference").unwrap_or_else(|| {
                json_response(
                    StatusCode::OK,
                    json!({"data": [{"type": "model", "id": "claude-sonnet-4-5", "display_name": "Claude Sonnet 4.5"}],
                           "has_more": false, "first_id": "claude-sonnet-4-5", "last_id": "claude-sonnet-4-5"}),
                )
            })
        }
        ("GET", "/api/oauth/profile") => {
            s.profile_requests += 1;
            api_call(&mut s, &authorization, &beta, &version, "user:profile")
                .unwrap_or_else(|| json_response(StatusCode::OK, s.profile.clone()))
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    };
    Ok(resp)
}

/// `None` when the request may proceed; otherwise the refusal the real API gives.
fn api_call(
    s: &mut State,
    authorization: &str,
    beta: &str,
    version: &str,
    scope: &str,
) -> Option<Response<Full<Bytes>>> {
    let Some(token) = authorization.strip_prefix("Bearer ") else {
        return Some(api_error(s, StatusCode::UNAUTHORIZED, "authentication_error", "missing bearer token"));
    };
    if !beta.split(',').any(|b| b.trim() == OAUTH_BETA) {
        return Some(api_error(
            s,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "OAuth authentication is currently not supported.",
        ));
    }
    if version.is_empty() {
        return Some(api_error(
            s,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version header is required",
        ));
    }
    let Some(scopes) = s.access.get(token) else {
        return Some(api_error(s, StatusCode::UNAUTHORIZED, "authentication_error", "Invalid bearer token"));
    };
    if !scopes.iter().any(|x| x == scope) {
        let message = format!("OAuth token does not meet scope requirement {scope}");
        return Some(api_error(s, StatusCode::FORBIDDEN, "permission_error", &message));
    }
    None
}

fn authorize(s: &mut State, query: &str) -> Response<Full<Bytes>> {
    s.authorize_requests += 1;
    let q: HashMap<String, String> = reqwest::Url::parse(&format!("http://x/?{query}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default();
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let redirect_uri = get("redirect_uri");
    let loopback = redirect_uri.starts_with("http://localhost:") && redirect_uri.ends_with("/callback");
    let scopes: Vec<String> = get("scope").split_whitespace().map(str::to_owned).collect();
    let challenge = get("code_challenge");
    let problem = if get("code") != "true" {
        Some("code=true is missing")
    } else if get("client_id") != CLIENT_ID {
        Some("unknown client_id")
    } else if get("response_type") != "code" {
        Some("response_type must be code")
    } else if get("code_challenge_method") != "S256" {
        Some("code_challenge_method must be S256")
    } else if challenge.len() != 43
        || !challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Some("code_challenge must be a base64url SHA-256")
    } else if redirect_uri != MANUAL_REDIRECT_URI && !loopback {
        Some("redirect_uri is not registered for this client")
    } else if scopes.is_empty() || !scopes.iter().all(|x| KNOWN_SCOPES.contains(&x.as_str())) {
        Some("scope is empty or unknown")
    } else if get("state").is_empty() {
        Some("state is missing")
    } else {
        None
    };
    if let Some(why) = problem {
        return oauth_error(s, StatusCode::BAD_REQUEST, "invalid_request", why);
    }
    s.seq += 1;
    let salt: u64 = rand::rng().random();
    let code = format!("sctest-code-{}-{salt:016x}", s.seq);
    let bound_challenge = if std::mem::take(&mut s.swap_next_challenge) {
        s256("a different verifier entirely")
    } else {
        challenge
    };
    s.codes.insert(
        code.clone(),
        Grant {
            challenge: bound_challenge,
            redirect_uri: redirect_uri.clone(),
            state: get("state"),
            scopes,
            used: false,
        },
    );
    let mut location = reqwest::Url::parse(&redirect_uri).expect("checked above");
    location.query_pairs_mut().append_pair("code", &code).append_pair("state", &get("state"));
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut().insert("location", location.as_str().parse().unwrap());
    resp
}

fn token(s: &mut State, content_type: &str, body: &[u8]) -> Response<Full<Bytes>> {
    if !content_type.starts_with("application/json") {
        return oauth_error(s, StatusCode::BAD_REQUEST, "invalid_request", "body must be JSON");
    }
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return oauth_error(s, StatusCode::BAD_REQUEST, "invalid_request", "body is not valid JSON");
    };
    if doc["client_id"] != CLIENT_ID {
        return oauth_error(s, StatusCode::BAD_REQUEST, "invalid_client", "unknown client_id");
    }
    match doc["grant_type"].as_str() {
        Some("authorization_code") => exchange(s, &doc),
        Some("refresh_token") => refresh(s, &doc),
        _ => oauth_error(s, StatusCode::BAD_REQUEST, "unsupported_grant_type", "unsupported grant_type"),
    }
}

fn exchange(s: &mut State, doc: &Value) -> Response<Full<Bytes>> {
    s.exchange_requests += 1;
    s.last_exchange_keys = doc.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    let text = |k: &str| doc[k].as_str().unwrap_or("").to_owned();
    let Some(grant) = s.codes.get_mut(&text("code")) else {
        return oauth_error(s, StatusCode::BAD_REQUEST, "invalid_grant", "unknown authorization code");
    };
    // Single use: the first presentation spends the code, whatever else is wrong with the request.
    let reused = std::mem::replace(&mut grant.used, true);
    let grant = grant.clone();
    let why = if reused {
        Some("authorization code already used")
    } else if text("redirect_uri") != grant.redirect_uri {
        Some("redirect_uri does not match the authorize request")
    } else if text("state") != grant.state {
        Some("state does not match the authorize request")
    } else if s256(&text("code_verifier")) != grant.challenge {
        Some("code_verifier does not match the code_challenge")
    } else {
        None
    };
    if let Some(why) = why {
        return oauth_error(s, StatusCode::BAD_REQUEST, "invalid_grant", why);
    }
    s.exchanges += 1;
    let pair = mint(s, &grant.scopes);
    token_answer(s, &pair, &grant.scopes)
}

fn refresh(s: &mut State, doc: &Value) -> Response<Full<Bytes>> {
    s.refresh_requests += 1;
    let presented = doc["refresh_token"].as_str().unwrap_or("").to_owned();
    let Some(scopes) = s.refresh.remove(&presented) else {
        return oauth_error(
            s,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "refresh token not found or invalid",
        );
    };
    s.rotated_from.push(presented);
    s.rotations += 1;
    let pair = mint(s, &scopes);
    token_answer(s, &pair, &scopes)
}

fn token_answer(s: &State, pair: &Pair, scopes: &[String]) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        json!({
            "token_type": "Bearer",
            "access_token": pair.access_token,
            "refresh_token": pair.refresh_token,
            "expires_in": s.expires_in,
            "scope": scopes.join(" "),
            "account": {"uuid": "acct-1111-fake", "email_address": EMAIL},
            "organization": {"uuid": ORG_UUID, "name": "Some One's Organization"}
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
