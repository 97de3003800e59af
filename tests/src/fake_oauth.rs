//! A fake of Claude's OAuth token endpoint for refresh requests: JSON bodies, rotating single-use
//! refresh tokens, and faults on demand.
//!
//! Like the real server, a rotation happens when the request is processed, whether or not the client is
//! still there to read the answer: that is the window the kill tests measure.

use crate::harness::FakeServer;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";

/// What the next refresh request(s) get instead of a rotation.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer with this status and a JSON error body.
    Status(u16),
    /// Never answer (the client times out).
    Hang,
    /// 200 with a body that is not JSON.
    Malformed,
    /// 400 `invalid_grant`, as for a dead refresh token.
    InvalidGrant,
    /// 429 with `Retry-After: <secs>`.
    TooMany { retry_after_s: u64 },
    /// Close the connection without an answer.
    Reset,
}

#[derive(Debug, Clone)]
pub struct Pair {
    pub access_token: String,
    pub refresh_token: String,
}

#[derive(Default)]
struct State {
    live_refresh: HashSet<String>,
    valid_access: HashSet<String>,
    latest_access: Option<String>,
    seq: u64,
    expires_in: u64,
    delay: Duration,
    omit_refresh_token: bool,
    sticky: Option<Fault>,
    queued: VecDeque<Fault>,
    /// Refresh requests received (whatever their fate).
    received: u64,
    /// Successful rotations.
    rotations: u64,
    rotated_from: Vec<String>,
    user_agents: Vec<String>,
    /// Requests whose body was not what the real endpoint accepts.
    bad_requests: Vec<String>,
}

pub struct FakeOAuth {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _server: FakeServer,
}

impl FakeOAuth {
    pub async fn start() -> FakeOAuth {
        let state = Arc::new(Mutex::new(State { expires_in: 8 * 3600, ..State::default() }));
        let st = state.clone();
        let server = FakeServer::start(move |req| handle(req, st.clone())).await;
        let addr = server.addr;
        FakeOAuth { addr, state, _server: server }
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/v1/oauth/token", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new live pair, as a fresh login would create. Earlier pairs stay live too (another login).
    pub fn issue_pair(&self) -> Pair {
        let mut st = self.state.lock().unwrap();
        let pair = mint(&mut st);
        st.live_refresh.insert(pair.refresh_token.clone());
        st.valid_access.insert(pair.access_token.clone());
        st.latest_access = Some(pair.access_token.clone());
        pair
    }

    /// A pair the server has never heard of (its refresh token gets `invalid_grant`).
    pub fn unknown_pair(&self) -> Pair {
        let mut st = self.state.lock().unwrap();
        mint(&mut st)
    }

    pub fn set_expires_in(&self, secs: u64) {
        self.state.lock().unwrap().expires_in = secs;
    }
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }
    pub fn set_omit_refresh_token(&self, omit: bool) {
        self.state.lock().unwrap().omit_refresh_token = omit;
    }
    /// Every refresh request gets `fault` until cleared with `None`.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.state.lock().unwrap().sticky = fault;
    }
    /// The next refresh requests get these faults, one each.
    pub fn queue_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().unwrap().queued.extend(faults);
    }

    pub fn received(&self) -> u64 {
        self.state.lock().unwrap().received
    }
    pub fn rotations(&self) -> u64 {
        self.state.lock().unwrap().rotations
    }
    pub fn live_refresh_tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().live_refresh.iter().cloned().collect()
    }
    pub fn is_live(&self, refresh_token: &str) -> bool {
        self.state.lock().unwrap().live_refresh.contains(refresh_token)
    }
    /// Whether `refresh_token` was live once and then killed by a rotation.
    pub fn was_rotated(&self, refresh_token: &str) -> bool {
        self.state.lock().unwrap().rotated_from.iter().any(|t| t == refresh_token)
    }
    pub fn latest_access_token(&self) -> Option<String> {
        self.state.lock().unwrap().latest_access.clone()
    }
    pub fn is_valid_access_token(&self, token: &str) -> bool {
        self.state.lock().unwrap().valid_access.contains(token)
    }
    /// The access tokens issued so far stop being accepted (a revocation upstream).
    pub fn revoke_access_tokens(&self) {
        self.state.lock().unwrap().valid_access.clear();
    }
    pub fn user_agents(&self) -> Vec<String> {
        self.state.lock().unwrap().user_agents.clone()
    }
    /// Requests the real endpoint would have refused as malformed (wrong content type, body shape).
    pub fn bad_requests(&self) -> Vec<String> {
        self.state.lock().unwrap().bad_requests.clone()
    }
}

fn mint(st: &mut State) -> Pair {
    st.seq += 1;
    let salt: u64 = rand::rng().random();
    Pair {
        access_token: format!("sctest-at-{}-{salt:016x}", st.seq),
        refresh_token: format!("sctest-rt-{}-{salt:016x}", st.seq),
    }
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    resp
}

type HandlerResult = Result<Response<Full<Bytes>>, std::io::Error>;

async fn handle(req: Request<Incoming>, st: Arc<Mutex<State>>) -> HandlerResult {
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/oauth/token" {
        return Ok(json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})));
    }
    let content_type =
        req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let user_agent = req.headers().get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = req.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();

    // The rotation runs in its own task: a client that dies mid-request does not stop it, as with the
    // real server.
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let answer = process(&st, &content_type, &user_agent, &body).await;
        let _ = tx.send(answer);
    });
    match rx.await {
        Ok(Some(resp)) => Ok(resp),
        // Reset: fail the connection without an answer.
        _ => Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fault: reset")),
    }
}

async fn process(
    st: &Mutex<State>,
    content_type: &str,
    user_agent: &str,
    body: &[u8],
) -> Option<Response<Full<Bytes>>> {
    let (delay, fault) = {
        let mut s = st.lock().unwrap();
        s.received += 1;
        s.user_agents.push(user_agent.to_owned());
        let fault = s.queued.pop_front().or_else(|| s.sticky.clone());
        (s.delay, fault)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match fault {
        Some(Fault::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return None;
        }
        Some(Fault::Reset) => return None,
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Some(json_response(
                status,
                json!({"error": {"type": "api_error", "message": "fault injected"}}),
            ));
        }
        Some(Fault::Malformed) => {
            let mut resp = json_response(StatusCode::OK, json!({}));
            *resp.body_mut() = Full::new(Bytes::from_static(b"{\"access_token\": \"trunc"));
            return Some(resp);
        }
        Some(Fault::InvalidGrant) => return Some(invalid_grant()),
        Some(Fault::TooMany { retry_after_s }) => {
            let mut resp = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {"type": "rate_limit_error", "message": "slow down"}}),
            );
            resp.headers_mut().insert("retry-after", retry_after_s.to_string().parse().unwrap());
            return Some(resp);
        }
        None => {}
    }

    let mut s = st.lock().unwrap();
    if !content_type.starts_with("application/json") {
        s.bad_requests.push(format!("content-type {content_type:?}"));
        return Some(json_response(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"})));
    }
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        s.bad_requests.push("body is not JSON".into());
        return Some(json_response(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"})));
    };
    if doc["grant_type"] != "refresh_token" || doc["client_id"] != CLIENT_ID {
        s.bad_requests.push(format!("grant_type {} client_id {}", doc["grant_type"], doc["client_id"]));
        return Some(json_response(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"})));
    }
    let Some(presented) = doc["refresh_token"].as_str() else {
        s.bad_requests.push("no refresh_token".into());
        return Some(json_response(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"})));
    };
    if !s.live_refresh.contains(presented) {
        return Some(invalid_grant());
    }
    let pair = mint(&mut s);
    s.valid_access.insert(pair.access_token.clone());
    s.latest_access = Some(pair.access_token.clone());
    s.rotations += 1;
    let mut answer = json!({
        "token_type": "Bearer",
        "access_token": pair.access_token,
        "expires_in": s.expires_in,
        "scope": "user:inference user:profile",
        "account": {"uuid": "acct-0000", "email_address": "someone@example.com"},
    });
    if !s.omit_refresh_token {
        s.live_refresh.remove(presented);
        s.rotated_from.push(presented.to_owned());
        s.live_refresh.insert(pair.refresh_token.clone());
        answer["refresh_token"] = Value::String(pair.refresh_token);
    }
    Some(json_response(StatusCode::OK, answer))
}

fn invalid_grant() -> Response<Full<Bytes>> {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": "invalid_grant", "error_description": "Refresh token not found or invalid"}),
    )
}
