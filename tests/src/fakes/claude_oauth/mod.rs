//! A fake of Claude's OAuth and account endpoints: one server plays the authorize page, the token
//! endpoint and the two API calls the account commands make, so a login, a refresh, a validation and
//! the agent's refresh loop all see one consistent set of live tokens.
//!
//! - `GET /cai/oauth/authorize` (the path Claude Code opens today; any other is a 404) checks the query
//!   the way the real page does, scopes included (Claude Code's full list, or `user:inference` alone for
//!   a long-lived login), then mints a single-use code
//!   bound to the PKCE challenge, the redirect URI, the state and the scopes, and answers
//!   `302 Location: <redirect_uri>?code=..&state=..` (the paste flow's page shows the same pair as
//!   `CODE#STATE`; tests read it from the Location header).
//! - `POST /v1/oauth/token` accepts only JSON bodies with Claude Code's client id; `authorization_code`
//!   checks the redirect URI, the state, the verifier against the challenge (S256) and single use, and
//!   grants the lifetime its `expires_in` asks for (up to a year); an inference-only grant comes with a
//!   refresh token or without one, as the test chooses (the real endpoint does not document which);
//!   `refresh_token` rotates the single-use refresh token and may narrow its scopes, never widen them
//!   (`invalid_scope`). Faults can be injected here.
//! - `GET /v1/models`: 200 for a live token with the OAuth beta, 401 for an unknown one, 403 for one
//!   minted without `user:inference`.
//! - `GET /api/oauth/usage`: the account's usage windows ([`usage`]).
//! - `GET /api/oauth/profile`: the account and organization of a live token; 403 for one minted without
//!   `user:profile` (an inference-only token).
//!
//! Like the real server, a token request is carried out once it has arrived, whether or not the client
//! is still there to read the answer: that is the window the kill tests measure. Every refusal is
//! recorded with its reason, so a test can assert what the fake saw.

mod book;
mod endpoints;
pub mod pkce;
pub use endpoints::usage;

use crate::fakes::server::FakeServer;
use crate::fakes::upstream::TokenCheck;
use book::Book;
use serde_json::{json, Value};
use sidecred_proto::anthropic::DEFAULT_SCOPES;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub const EMAIL: &str = "someone@example.com";
pub const ORG_UUID: &str = "org-2222-fake";

/// An access token and the refresh token that renews it (its file form is in [`crate::harness`]).
#[derive(Debug, Clone)]
pub struct Pair {
    pub access_token: String,
    pub refresh_token: String,
}

/// What the next token request(s) get instead of an answer.
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

/// Requests received, by endpoint, whatever their fate.
#[derive(Default)]
struct Counters {
    authorize: u64,
    /// `authorization_code` requests to the token endpoint.
    exchange_requests: u64,
    /// Codes exchanged with every check passed.
    exchanges: u64,
    /// Every other request to the token endpoint: refreshes, and whatever is malformed.
    refresh_requests: u64,
    /// `invalid_grant` answers, to refreshes and code exchanges alike.
    invalid_grants: u64,
    models: u64,
    profile: u64,
    usage: u64,
}

struct State {
    book: Book,
    expires_in: u64,
    delay: Duration,
    omit_refresh_token: bool,
    sticky: Option<Fault>,
    queued: VecDeque<Fault>,
    /// The next code is bound to a different challenge than the client sent (a verifier mismatch).
    swap_next_challenge: bool,
    profile: Value,
    /// What `GET /api/oauth/usage` answers: [`usage`] unless a test sets another.
    usage: Value,
    counters: Counters,
    rejections: Vec<String>,
    user_agents: Vec<String>,
    /// Key names of the last authorization_code body (never the values).
    last_exchange_keys: Vec<String>,
    /// The `expires_in` of the last authorization_code body, if it had one.
    last_exchange_expires_in: Option<Value>,
    /// Whether an inference-only (long-lived) grant comes with a refresh token.
    long_lived_refresh_token: bool,
    /// The `scope` of every refresh request, in order (`None`: the request had none).
    refresh_scopes: Vec<Option<String>>,
    /// Refresh requests being worked on, by the refresh token they present.
    in_flight: std::collections::HashMap<String, u32>,
    /// Refresh requests that arrived while another with the same refresh token was being worked on.
    overlapping: u64,
    /// How long the next refresh requests are held before the server takes them on.
    holds: VecDeque<Duration>,
    /// Held requests whose client went away before the server took them on.
    abandoned: u64,
}

/// The fake; clones share one server and one book.
#[derive(Clone)]
pub struct FakeOAuth {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _server: Arc<FakeServer>,
}

impl FakeOAuth {
    /// On a free loopback port.
    pub async fn start() -> FakeOAuth {
        FakeOAuth::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind the fake OAuth server")
    }

    /// On `addr` (the demo stand-in's, given by its user).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<FakeOAuth> {
        let state = Arc::new(Mutex::new(State {
            book: Book::default(),
            expires_in: 8 * 3600,
            delay: Duration::ZERO,
            omit_refresh_token: false,
            sticky: None,
            queued: VecDeque::new(),
            swap_next_challenge: false,
            profile: default_profile(),
            usage: usage(),
            counters: Counters::default(),
            rejections: Vec::new(),
            user_agents: Vec::new(),
            last_exchange_keys: Vec::new(),
            last_exchange_expires_in: None,
            refresh_scopes: Vec::new(),
            long_lived_refresh_token: true,
            in_flight: Default::default(),
            overlapping: 0,
            holds: VecDeque::new(),
            abandoned: 0,
        }));
        let st = state.clone();
        let server = FakeServer::bind(addr, move |req| endpoints::handle(req, st.clone())).await?;
        Ok(FakeOAuth { addr: server.addr, state, _server: Arc::new(server) })
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn authorize_url(&self) -> String {
        format!("{}{}", self.base(), endpoints::authorize_path())
    }
    pub fn token_url(&self) -> String {
        format!("{}/v1/oauth/token", self.base())
    }
    /// The API base (`/v1/models`, `/api/oauth/profile`).
    pub fn api_base(&self) -> String {
        self.base()
    }

    /// A new live pair with the scopes a login asks for. Earlier pairs stay live too (another login).
    pub fn issue_pair(&self) -> Pair {
        let scopes: Vec<&str> = DEFAULT_SCOPES.split(' ').collect();
        self.issue_pair_with_scopes(&scopes)
    }
    /// A new live pair with these scopes.
    pub fn issue_pair_with_scopes(&self, scopes: &[&str]) -> Pair {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        self.st().book.issue(&scopes)
    }
    /// A pair the server never issued (its refresh token gets `invalid_grant`, its access token 401).
    pub fn unknown_pair(&self) -> Pair {
        self.st().book.mint()
    }

    /// Another client of the same login (a laptop's Claude Code, another deployment) refreshes with
    /// `refresh_token`, as if through this endpoint: the token rotates, so whoever else holds it is
    /// refused next. Not counted among [`FakeOAuth::refresh_requests`]; counted among the rotations.
    /// `None` when `refresh_token` is not live.
    pub fn refresh_from_outside(&self, refresh_token: &str) -> Option<Pair> {
        self.st().book.redeem_refresh(refresh_token, true, None).map(|(pair, _)| pair)
    }

    pub fn set_expires_in(&self, secs: u64) {
        self.st().expires_in = secs;
    }
    /// Every token request waits this long before anything is decided.
    pub fn set_delay(&self, delay: Duration) {
        self.st().delay = delay;
    }
    /// Refreshes stop rotating: the answer carries no refresh token and the presented one stays live.
    pub fn set_omit_refresh_token(&self, omit: bool) {
        self.st().omit_refresh_token = omit;
    }
    /// The next refresh request is held this long before the server takes it on (a slow path to the
    /// endpoint); a client that gives up meanwhile leaves nothing behind, as with a server that drops the
    /// work of a closed connection. [`FakeOAuth::set_delay`], by contrast, delays work already taken on.
    pub fn hold_next_refresh(&self, hold: Duration) {
        self.st().holds.push_back(hold);
    }
    /// Refresh requests that arrived while another presenting the same refresh token was still being
    /// worked on (held or taken on): two refreshers racing for one refresh token.
    pub fn overlapping_refreshes(&self) -> u64 {
        self.st().overlapping
    }
    /// Held refresh requests whose client gave up before the server took them on.
    pub fn abandoned_refreshes(&self) -> u64 {
        self.st().abandoned
    }
    /// Every token request gets `fault` until cleared with `None`.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.st().sticky = fault;
    }
    /// The next token requests get these faults, one each.
    pub fn queue_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.st().queued.extend(faults);
    }
    /// The next code is bound to another challenge than the one in the authorize request, so the
    /// client's (correct) verifier will not match it.
    pub fn swap_next_challenge(&self) {
        self.st().swap_next_challenge = true;
    }
    /// Whether an inference-only (long-lived) grant comes with a refresh token (it does until told).
    pub fn set_long_lived_refresh_token(&self, with: bool) {
        self.st().long_lived_refresh_token = with;
    }
    pub fn set_profile(&self, profile: Value) {
        self.st().profile = profile;
    }
    /// What the usage endpoint answers from now on: any JSON, hostile ones included.
    pub fn set_usage(&self, usage: Value) {
        self.st().usage = usage;
    }
    /// The access tokens issued so far stop being accepted (a revocation upstream); refresh tokens
    /// stay live.
    pub fn revoke_access_tokens(&self) {
        self.st().book.revoke_access_tokens();
    }

    /// A check for [`crate::fakes::upstream::FakeUpstream`]: every access token issued and not revoked.
    pub fn access_check(&self) -> TokenCheck {
        let fake = self.clone();
        Arc::new(move |t: &str| fake.is_valid_access_token(t))
    }
    /// A strict check: only the newest access token, so every rotation invalidates those in flight.
    pub fn latest_access_check(&self) -> TokenCheck {
        let fake = self.clone();
        Arc::new(move |t: &str| fake.latest_access_token().as_deref() == Some(t))
    }

    pub fn is_valid_access_token(&self, token: &str) -> bool {
        self.st().book.access_scopes(token).is_some()
    }
    pub fn latest_access_token(&self) -> Option<String> {
        self.st().book.latest_access_token()
    }
    pub fn is_live_refresh_token(&self, token: &str) -> bool {
        self.st().book.is_live_refresh_token(token)
    }
    pub fn live_refresh_tokens(&self) -> Vec<String> {
        self.st().book.live_refresh_tokens()
    }
    /// Whether `refresh_token` was live once and then spent by a rotation.
    pub fn was_rotated(&self, refresh_token: &str) -> bool {
        self.st().book.was_rotated(refresh_token)
    }
    /// Successful refreshes.
    pub fn rotations(&self) -> u64 {
        self.st().book.rotations()
    }
    /// Requests to the token endpoint other than code exchanges (refreshes, and anything malformed),
    /// counted on arrival, before any delay or fault.
    pub fn refresh_requests(&self) -> u64 {
        self.st().counters.refresh_requests
    }
    /// The `scope` each refresh request asked for, in order (`None` when it asked for none).
    pub fn refresh_scopes(&self) -> Vec<Option<String>> {
        self.st().refresh_scopes.clone()
    }
    /// `authorization_code` requests received, whatever their fate.
    pub fn exchange_requests(&self) -> u64 {
        self.st().counters.exchange_requests
    }
    /// Codes exchanged successfully (every check passed).
    pub fn exchanges(&self) -> u64 {
        self.st().counters.exchanges
    }
    pub fn authorize_requests(&self) -> u64 {
        self.st().counters.authorize
    }
    pub fn models_requests(&self) -> u64 {
        self.st().counters.models
    }
    pub fn profile_requests(&self) -> u64 {
        self.st().counters.profile
    }

    pub fn usage_requests(&self) -> u64 {
        self.st().counters.usage
    }
    /// Why requests were refused, in order: malformed requests as much as dead grants. Injected
    /// faults are not refusals and are not listed.
    pub fn invalid_grants(&self) -> u64 {
        self.st().counters.invalid_grants
    }
    pub fn rejections(&self) -> Vec<String> {
        self.st().rejections.clone()
    }
    /// The User-Agent of every token request.
    pub fn user_agents(&self) -> Vec<String> {
        self.st().user_agents.clone()
    }
    /// The key names of the last `authorization_code` body.
    pub fn last_exchange_keys(&self) -> Vec<String> {
        self.st().last_exchange_keys.clone()
    }
    /// The `expires_in` the last `authorization_code` body asked for.
    pub fn last_exchange_expires_in(&self) -> Option<Value> {
        self.st().last_exchange_expires_in.clone()
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

#[cfg(test)]
mod tests {
    use super::*;
    use sidecred_proto::anthropic::CLAUDE_CODE_CLIENT_ID as CLIENT_ID;

    async fn refresh(fake: &FakeOAuth, refresh_token: &str, scope: &str) -> (u16, Value) {
        let body = json!({
            "grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLIENT_ID, "scope": scope,
        });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let resp = client.post(fake.token_url()).json(&body).send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    #[tokio::test]
    async fn a_refresh_may_narrow_the_scopes_but_never_widen_them() {
        let fake = FakeOAuth::start().await;
        let pair = fake.issue_pair_with_scopes(&["user:inference", "user:profile"]);
        let (status, body) = refresh(&fake, &pair.refresh_token, "user:inference user:file_upload").await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")), "{body}");
        assert!(fake.is_live_refresh_token(&pair.refresh_token), "a refused refresh spends nothing");

        let (status, body) = refresh(&fake, &pair.refresh_token, "user:inference").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["scope"], "user:inference");
        assert_eq!(
            fake.refresh_scopes(),
            [Some("user:inference user:file_upload".to_owned()), Some("user:inference".to_owned())]
        );
    }
}
