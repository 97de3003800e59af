//! The fake's HTTP side: what each endpoint checks and answers, the way the real one does.

use super::book::{CodeRefusal, Grant};
use super::pkce::{is_s256_shaped, s256};
use super::{Fault, Pair, State, EMAIL, ORG_UUID};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use sidecred_proto::anthropic::{
    CLAUDE_CODE_CLIENT_ID, DEFAULT_AUTHORIZE_URL, DEFAULT_MANUAL_REDIRECT_URI, DEFAULT_SCOPES,
    LONG_LIVED_EXPIRES_IN_SECS, LONG_LIVED_SCOPES, OAUTH_BETA,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Answer = Response<Full<Bytes>>;
type HandlerResult = Result<Answer, std::io::Error>;

const REFRESH_TOKEN_UNKNOWN: &str = "Refresh token not found or invalid";

/// The authorize page's path: the one Claude Code opens today.
pub fn authorize_path() -> String {
    reqwest::Url::parse(DEFAULT_AUTHORIZE_URL).expect("DEFAULT_AUTHORIZE_URL is a URL").path().to_owned()
}

/// Whether `scope` is what Claude Code asks for: its full list, or `user:inference` alone for a
/// long-lived login.
fn is_claude_codes_scope(scope: &str) -> bool {
    scope == DEFAULT_SCOPES || scope == LONG_LIVED_SCOPES
}

pub(super) async fn handle(req: Request<Incoming>, st: Arc<Mutex<State>>) -> HandlerResult {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (content_type, user_agent, authorization, beta, version) = (
        header("content-type"),
        header("user-agent"),
        header("authorization"),
        header("anthropic-beta"),
        header("anthropic-version"),
    );
    let body = req.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
    if (method.as_str(), path.as_str()) == ("POST", "/v1/oauth/token") {
        return token_endpoint(st, content_type, user_agent, body).await;
    }
    let mut s = st.lock().unwrap();
    let resp = match (method.as_str(), path.as_str()) {
        ("GET", p) if p == authorize_path() => authorize(&mut s, &query),
        ("GET", "/v1/models") => {
            s.counters.models += 1;
            api_call(&mut s, &authorization, &beta, &version, "user:inference").unwrap_or_else(|| {
                json_response(
                    StatusCode::OK,
                    json!({"data": [{"type": "model", "id": "claude-sonnet-4-5", "display_name": "Claude Sonnet 4.5"}],
                           "has_more": false, "first_id": "claude-sonnet-4-5", "last_id": "claude-sonnet-4-5"}),
                )
            })
        }
        ("GET", "/api/oauth/profile") => {
            s.counters.profile += 1;
            api_call(&mut s, &authorization, &beta, &version, "user:profile")
                .unwrap_or_else(|| json_response(StatusCode::OK, s.profile.clone()))
        }
        ("GET", sidecred_proto::anthropic::OAUTH_USAGE_PATH) => {
            s.counters.usage += 1;
            api_call(&mut s, &authorization, &beta, &version, "user:inference")
                .unwrap_or_else(|| json_response(StatusCode::OK, s.usage.clone()))
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    };
    Ok(resp)
}

/// What `GET /api/oauth/usage` answers: the account's windows, utilization in percent; a window the plan
/// lacks is null.
pub fn usage() -> Value {
    json!({
        "five_hour": {"utilization": 82.0, "resets_at": "2026-11-30T14:00:00.123456+00:00"},
        "seven_day": {"utilization": 41.5, "resets_at": "2026-12-04T09:00:00+00:00"},
        "seven_day_opus": null,
        "extra_usage": {"is_enabled": true, "monthly_limit": 5000, "used_credits": 1234.5, "utilization": 24.69},
    })
}

fn json_response(status: StatusCode, body: Value) -> Answer {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    resp
}

/// A refusal in the OAuth shape, recorded with its reason.
fn oauth_error(s: &mut State, status: StatusCode, error: &str, why: &str) -> Answer {
    s.rejections.push(why.to_owned());
    if error == "invalid_grant" {
        s.counters.invalid_grants += 1;
    }
    json_response(status, json!({"error": error, "error_description": why}))
}

/// A refusal in the API's shape, recorded with its status and message.
fn api_error(s: &mut State, status: StatusCode, kind: &str, message: &str) -> Answer {
    s.rejections.push(format!("{}: {message}", status.as_u16()));
    json_response(status, json!({"type": "error", "error": {"type": kind, "message": message}}))
}

/// `None` when the request may proceed; otherwise the refusal the real API gives.
fn api_call(s: &mut State, authorization: &str, beta: &str, version: &str, scope: &str) -> Option<Answer> {
    let unauthorized = StatusCode::UNAUTHORIZED;
    let Some(token) = authorization.strip_prefix("Bearer ") else {
        return Some(api_error(s, unauthorized, "authentication_error", "missing bearer token"));
    };
    if !beta.split(',').any(|b| b.trim() == OAUTH_BETA) {
        let message = "OAuth authentication is currently not supported.";
        return Some(api_error(s, unauthorized, "authentication_error", message));
    }
    if version.is_empty() {
        let message = "anthropic-version header is required";
        return Some(api_error(s, StatusCode::BAD_REQUEST, "invalid_request_error", message));
    }
    let Some(scopes) = s.book.access_scopes(token) else {
        return Some(api_error(s, unauthorized, "authentication_error", "Invalid bearer token"));
    };
    if !scopes.iter().any(|x| x == scope) {
        let message = format!("OAuth token does not meet scope requirement {scope}");
        return Some(api_error(s, StatusCode::FORBIDDEN, "permission_error", &message));
    }
    None
}

fn authorize(s: &mut State, query: &str) -> Answer {
    s.counters.authorize += 1;
    let q: HashMap<String, String> = reqwest::Url::parse(&format!("http://x/?{query}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default();
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let redirect_uri = get("redirect_uri");
    let loopback = redirect_uri.starts_with("http://localhost:") && redirect_uri.ends_with("/callback");
    let scope = get("scope");
    let scopes: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
    let challenge = get("code_challenge");
    let problem = if get("code") != "true" {
        Some("code=true is missing")
    } else if get("client_id") != CLAUDE_CODE_CLIENT_ID {
        Some("unknown client_id")
    } else if get("response_type") != "code" {
        Some("response_type must be code")
    } else if get("code_challenge_method") != "S256" {
        Some("code_challenge_method must be S256")
    } else if !is_s256_shaped(&challenge) {
        Some("code_challenge must be a base64url SHA-256")
    } else if redirect_uri != DEFAULT_MANUAL_REDIRECT_URI && !loopback {
        Some("redirect_uri is not registered for this client")
    } else if !is_claude_codes_scope(&scope) {
        Some("scope is not Claude Code's (its full list, or user:inference alone)")
    } else if get("state").is_empty() {
        Some("state is missing")
    } else {
        None
    };
    if let Some(why) = problem {
        return oauth_error(s, StatusCode::BAD_REQUEST, "invalid_request", why);
    }
    let challenge = if std::mem::take(&mut s.swap_next_challenge) {
        s256("a different verifier entirely")
    } else {
        challenge
    };
    let grant = Grant { challenge, redirect_uri: redirect_uri.clone(), state: get("state"), scopes };
    let code = s.book.bind_code(grant);
    let mut location = reqwest::Url::parse(&redirect_uri).expect("checked above");
    location.query_pairs_mut().append_pair("code", &code).append_pair("state", &get("state"));
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut().insert("location", location.as_str().parse().unwrap());
    resp
}

async fn token_endpoint(
    st: Arc<Mutex<State>>,
    content_type: String,
    user_agent: String,
    body: Bytes,
) -> HandlerResult {
    let presented = serde_json::from_slice::<Value>(&body)
        .ok()
        .filter(|doc| doc["grant_type"] == "refresh_token")
        .and_then(|doc| doc["refresh_token"].as_str().map(str::to_owned));
    let in_flight = presented.map(|token| InFlight::start(&st, token));
    let hold = in_flight.as_ref().and_then(|_| st.lock().unwrap().holds.pop_front());
    if let Some(hold) = hold {
        // Dropped here if the client goes away first: hyper drops the future of a closed connection.
        let mut held = Held { st: st.clone(), over: false };
        tokio::time::sleep(hold).await;
        held.over = true;
    }
    // The request is carried out in its own task: a client that dies mid-request does not stop it, as
    // with the real server.
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let answer = token_request(&st, &content_type, user_agent, &body).await;
        drop(in_flight);
        let _ = tx.send(answer);
    });
    match rx.await {
        Ok(Some(resp)) => Ok(resp),
        // Reset: fail the connection without an answer.
        _ => Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fault: reset")),
    }
}

/// A refresh request being worked on, counted by the refresh token it presents until dropped.
struct InFlight {
    st: Arc<Mutex<State>>,
    token: String,
}

impl InFlight {
    fn start(st: &Arc<Mutex<State>>, token: String) -> InFlight {
        let mut s = st.lock().unwrap();
        let n = s.in_flight.entry(token.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            s.overlapping += 1;
        }
        InFlight { st: st.clone(), token }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.st.lock().unwrap();
        if let Some(n) = s.in_flight.get_mut(&self.token) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A held request; counted as abandoned when dropped before its hold is over.
struct Held {
    st: Arc<Mutex<State>>,
    over: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.over {
            self.st.lock().unwrap().abandoned += 1;
        }
    }
}

/// The answer to a token request; `None` to close the connection without one.
async fn token_request(
    st: &Mutex<State>,
    content_type: &str,
    user_agent: String,
    body: &[u8],
) -> Option<Answer> {
    let doc = serde_json::from_slice::<Value>(body).ok();
    let (delay, fault) = {
        let mut s = st.lock().unwrap();
        match doc.as_ref().map(|d| &d["grant_type"]) {
            Some(grant) if grant == "authorization_code" => s.counters.exchange_requests += 1,
            _ => s.counters.refresh_requests += 1,
        }
        s.user_agents.push(user_agent);
        let fault = s.queued.pop_front().or_else(|| s.sticky.clone());
        (s.delay, fault)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match fault {
        Some(fault) => fault_answer(fault).await,
        None => Some(grant(&mut st.lock().unwrap(), content_type, doc)),
    }
}

async fn fault_answer(fault: Fault) -> Option<Answer> {
    match fault {
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            None
        }
        Fault::Reset => None,
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(json_response(status, json!({"error": {"type": "api_error", "message": "fault injected"}})))
        }
        Fault::Malformed => {
            let mut resp = json_response(StatusCode::OK, json!({}));
            *resp.body_mut() = Full::new(Bytes::from_static(b"{\"access_token\": \"trunc"));
            Some(resp)
        }
        Fault::InvalidGrant => Some(json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_grant", "error_description": REFRESH_TOKEN_UNKNOWN}),
        )),
        Fault::TooMany { retry_after_s } => {
            let mut resp = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {"type": "rate_limit_error", "message": "slow down"}}),
            );
            resp.headers_mut().insert("retry-after", retry_after_s.to_string().parse().unwrap());
            Some(resp)
        }
    }
}

fn grant(s: &mut State, content_type: &str, doc: Option<Value>) -> Answer {
    let bad_request = StatusCode::BAD_REQUEST;
    if !content_type.starts_with("application/json") {
        let why = format!("body must be JSON, not content-type {content_type:?}");
        return oauth_error(s, bad_request, "invalid_request", &why);
    }
    let Some(doc) = doc else {
        return oauth_error(s, bad_request, "invalid_request", "body is not valid JSON");
    };
    if doc["client_id"] != CLAUDE_CODE_CLIENT_ID {
        return oauth_error(s, bad_request, "invalid_client", "unknown client_id");
    }
    match doc["grant_type"].as_str() {
        Some("authorization_code") => exchange(s, &doc),
        Some("refresh_token") => refresh(s, &doc),
        _ => oauth_error(s, bad_request, "unsupported_grant_type", "unsupported grant_type"),
    }
}

fn exchange(s: &mut State, doc: &Value) -> Answer {
    s.last_exchange_keys = doc.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    s.last_exchange_expires_in = doc.get("expires_in").cloned();
    // A lifetime asked for is granted, up to a year; without one the usual 8 hours.
    let lifetime = match doc.get("expires_in") {
        None => s.expires_in,
        Some(v) => match v.as_u64().filter(|n| *n > 0) {
            Some(n) => n.min(LONG_LIVED_EXPIRES_IN_SECS),
            None => {
                let why = "expires_in must be a positive number of seconds";
                return oauth_error(s, StatusCode::BAD_REQUEST, "invalid_request", why);
            }
        },
    };
    let text = |k: &str| doc[k].as_str().unwrap_or("").to_owned();
    let grant = match s.book.spend_code(&text("code")) {
        Ok(grant) => grant,
        Err(CodeRefusal::Unknown) => {
            return oauth_error(s, StatusCode::BAD_REQUEST, "invalid_grant", "unknown authorization code")
        }
        Err(CodeRefusal::AlreadyUsed) => {
            return oauth_error(
                s,
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "authorization code already used",
            )
        }
    };
    let why = if text("redirect_uri") != grant.redirect_uri {
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
    s.counters.exchanges += 1;
    let pair = s.book.issue(&grant.scopes);
    let inference_only = grant.scopes == [LONG_LIVED_SCOPES];
    let with_refresh_token = !inference_only || s.long_lived_refresh_token;
    token_answer(&pair, with_refresh_token, &grant.scopes, lifetime)
}

fn refresh(s: &mut State, doc: &Value) -> Answer {
    let Some(presented) = doc["refresh_token"].as_str() else {
        return oauth_error(s, StatusCode::BAD_REQUEST, "invalid_request", "refresh_token is missing");
    };
    let asked: Option<Vec<String>> = match doc.get("scope") {
        None => None,
        Some(Value::String(list)) => Some(list.split(' ').map(str::to_owned).collect()),
        Some(_) => {
            return oauth_error(s, StatusCode::BAD_REQUEST, "invalid_request", "scope must be a string")
        }
    };
    s.refresh_scopes.push(asked.as_ref().map(|a| a.join(" ")));
    // OAuth lets a refresh narrow the grant, never widen it (RFC 6749 section 6).
    if let (Some(asked), Some(granted)) = (&asked, s.book.refresh_scopes(presented)) {
        if let Some(extra) = asked.iter().find(|a| !granted.contains(a)) {
            let why = format!("scope {extra:?} was not granted to this login");
            return oauth_error(s, StatusCode::BAD_REQUEST, "invalid_scope", &why);
        }
    }
    let rotate = !s.omit_refresh_token;
    let Some((pair, scopes)) = s.book.redeem_refresh(presented, rotate, asked.as_deref()) else {
        return oauth_error(s, StatusCode::BAD_REQUEST, "invalid_grant", REFRESH_TOKEN_UNKNOWN);
    };
    token_answer(&pair, rotate, &scopes, s.expires_in)
}

fn token_answer(pair: &Pair, with_refresh_token: bool, scopes: &[String], expires_in: u64) -> Answer {
    let mut answer = json!({
        "token_type": "Bearer",
        "access_token": pair.access_token,
        "expires_in": expires_in,
        "scope": scopes.join(" "),
        "account": {"uuid": "acct-1111-fake", "email_address": EMAIL},
        "organization": {"uuid": ORG_UUID, "name": "Some One's Organization"}
    });
    if with_refresh_token {
        answer["refresh_token"] = Value::String(pair.refresh_token.clone());
    }
    json_response(StatusCode::OK, answer)
}
