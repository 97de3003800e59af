//! The header rules between client and upstream: what is dropped, what is set, how betas merge.
//! Pure functions over `HeaderMap`, so every rule is tested here without a network.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use sidecred_proto::{anthropic, Secret};

pub static ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");
pub static ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_SHOULD_RETRY: HeaderName = HeaderName::from_static(anthropic::SHOULD_RETRY_HEADER);

/// The methods the API serves (`GET` for models and batches, `POST` for messages, `DELETE` for batches
/// and files), as an `Allow` value. Anything else is refused before a token is put on it: `TRACE` to an
/// upstream or proxy that echoes requests would hand the account's token back to the client.
pub const API_METHODS: &str = "GET, POST, DELETE";

/// Whether a request of this method is forwarded (see [`API_METHODS`]).
pub fn is_api_method(method: &http::Method) -> bool {
    matches!(*method, http::Method::GET | http::Method::POST | http::Method::DELETE)
}

/// Tells Anthropic's clients whether sending the request again can help, overriding what they would do
/// by the status alone (they retry 408/409/429/5xx, not 401; Claude Code retries a 401 for minutes).
pub fn advise_retry(headers: &mut HeaderMap, retry: bool) {
    let value = HeaderValue::from_static(if retry { "true" } else { "false" });
    headers.insert(X_SHOULD_RETRY.clone(), value);
}

/// Whether `name` describes one connection, not the message (RFC 9110 §7.6.1), or is one of those the
/// old `Proxy-Connection` convention and hyper's HTTP/2 encoder also refuse to carry across. A match on
/// the name's text: every request and response asks this of each of its headers.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// The token holds bytes a header cannot carry. Never quotes the token.
    #[error("the agent served a token that is not a valid header value (fingerprint {0})")]
    Token(String),
}

/// Turns the client's request headers into the upstream's, in place: drops the client's credentials and
/// everything hop-by-hop, sets the agent's token (`authorization`, from [`authorization`]), merges the
/// OAuth beta, defaults the API version and points `Host` at the upstream. Everything else passes
/// unchanged.
///
/// One look at every name first: a typical request carries none of the headers to drop, and asking the
/// map for each of them by name would cost a hash and a probe apiece, on every request.
pub fn to_upstream(headers: &mut HeaderMap, authorization: HeaderValue, host: &HeaderValue) {
    let mut found = Found::scan(headers);
    if found.hop_by_hop {
        // `Connection` may name a header this sets or keeps: the request's id, which the client gets
        // back and the upstream must see too, survives; a version named there is gone, so the default
        // goes in.
        let request_id = headers.get(&X_REQUEST_ID).cloned();
        strip_hop_by_hop(headers);
        if let Some(id) = request_id {
            headers.entry(&X_REQUEST_ID).or_insert(id);
        }
        found.version = headers.contains_key(&ANTHROPIC_VERSION);
    }
    if found.api_key {
        headers.remove(&X_API_KEY);
    }
    // The interim 100 was already answered to the client by our server; the upstream need not repeat it.
    if found.expect {
        headers.remove(header::EXPECT);
    }
    // Meant for the proxies along the way (TRACE and OPTIONS), not for the API.
    if found.max_forwards {
        headers.remove(header::MAX_FORWARDS);
    }
    headers.insert(header::AUTHORIZATION, authorization);
    merge_beta(headers);
    if !found.version {
        headers.insert(ANTHROPIC_VERSION.clone(), HeaderValue::from_static(anthropic::ANTHROPIC_VERSION));
    }
    headers.insert(header::HOST, host.clone());
}

/// Which of the headers `to_upstream` treats specially a request carries.
#[derive(Default)]
struct Found {
    hop_by_hop: bool,
    api_key: bool,
    expect: bool,
    version: bool,
    max_forwards: bool,
}

impl Found {
    fn scan(headers: &HeaderMap) -> Found {
        let mut found = Found::default();
        for name in headers.keys() {
            match name.as_str() {
                "x-api-key" => found.api_key = true,
                "expect" => found.expect = true,
                "anthropic-version" => found.version = true,
                "max-forwards" => found.max_forwards = true,
                _ => found.hop_by_hop |= is_hop_by_hop(name),
            }
        }
        found
    }
}

/// The `Authorization` value for a token, marked sensitive so HTTP/2 never indexes it. Built once per
/// token the agent serves and shared (a reference count) by the requests that use it.
pub fn authorization(token: &Secret) -> Result<HeaderValue, HeaderError> {
    let t = token.expose().as_bytes();
    let mut buf = Vec::with_capacity(7 + t.len());
    buf.extend_from_slice(b"Bearer ");
    buf.extend_from_slice(t);
    let mut value = HeaderValue::from_maybe_shared(bytes::Bytes::from(buf))
        .map_err(|_| HeaderError::Token(token.fingerprint()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// A request's upstream headers kept for sending it again after a 401, as one block of bytes.
///
/// Every request keeps them and almost none is sent again: a copy of the map would cost two
/// allocations (a kilobyte for a typical request) and a reference taken and dropped on every value,
/// where this is one allocation and a copy of the bytes. `Authorization` is left out (the retry
/// carries the new token), so the old token is not copied.
pub struct KeptHeaders(Vec<u8>);

impl KeptHeaders {
    pub fn of(headers: &HeaderMap) -> KeptHeaders {
        const LENGTHS: usize = 2 * std::mem::size_of::<usize>() + 1;
        let size = headers.iter().map(|(n, v)| LENGTHS + n.as_str().len() + v.len()).sum();
        let mut out = Vec::with_capacity(size);
        for (name, value) in headers {
            if name == header::AUTHORIZATION {
                continue;
            }
            out.extend_from_slice(&name.as_str().len().to_le_bytes());
            out.extend_from_slice(&value.len().to_le_bytes());
            out.push(u8::from(value.is_sensitive()));
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        KeptHeaders(out)
    }

    /// The headers as they were, with `authorization` set; `None` only if the bytes were not made by
    /// [`KeptHeaders::of`] (which cannot happen; no retry then, rather than a panic).
    pub fn restore(&self, authorization: HeaderValue) -> Option<HeaderMap> {
        fn length(bytes: &[u8]) -> Option<(usize, &[u8])> {
            let (n, rest) = bytes.split_first_chunk::<{ std::mem::size_of::<usize>() }>()?;
            Some((usize::from_le_bytes(*n), rest))
        }
        let mut headers = HeaderMap::new();
        let mut rest = self.0.as_slice();
        while !rest.is_empty() {
            let (name_len, tail) = length(rest)?;
            let (value_len, tail) = length(tail)?;
            let (&sensitive, tail) = tail.split_first()?;
            let (name, tail) = tail.split_at_checked(name_len)?;
            let (value, tail) = tail.split_at_checked(value_len)?;
            let mut value = HeaderValue::from_bytes(value).ok()?;
            value.set_sensitive(sensitive == 1);
            headers.append(HeaderName::from_bytes(name).ok()?, value);
            rest = tail;
        }
        headers.insert(header::AUTHORIZATION, authorization);
        Some(headers)
    }
}

/// Cleans the upstream's response headers for the client.
pub fn to_client(headers: &mut HeaderMap) {
    if headers.keys().any(is_hop_by_hop) {
        strip_hop_by_hop(headers);
    }
}

/// Removes the hop-by-hop headers and every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok());
    let drop: Vec<HeaderName> = headers.keys().filter(|n| is_hop_by_hop(n)).cloned().chain(named).collect();
    for name in drop {
        headers.remove(name);
    }
}

/// Makes `anthropic-beta` one value that holds the client's betas (from any number of header values,
/// comma-separated) and the OAuth beta, each once, in the client's order with the OAuth beta first.
pub fn merge_beta(headers: &mut HeaderMap) {
    let mut values = headers.get_all(&ANTHROPIC_BETA).iter();
    let Some(first) = values.next() else {
        headers.insert(ANTHROPIC_BETA.clone(), HeaderValue::from_static(anthropic::OAUTH_BETA));
        return;
    };
    let single = values.next().is_none();
    // The common case: one value that already lists the OAuth beta and nothing twice. Leave it alone.
    if single && is_merged(first.as_bytes()) {
        return;
    }
    let mut seen: Vec<&[u8]> = Vec::with_capacity(8);
    seen.push(anthropic::OAUTH_BETA.as_bytes());
    for value in headers.get_all(&ANTHROPIC_BETA) {
        for beta in value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if !beta.is_empty() && !seen.contains(&beta) {
                seen.push(beta);
            }
        }
    }
    let mut merged = Vec::with_capacity(seen.iter().map(|b| b.len() + 1).sum());
    for (i, beta) in seen.iter().enumerate() {
        if i > 0 {
            merged.push(b',');
        }
        merged.extend_from_slice(beta);
    }
    // Built only from pieces of valid header values and commas, so it is valid too.
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(merged)) {
        Ok(v) => {
            headers.insert(ANTHROPIC_BETA.clone(), v);
        }
        Err(_) => {
            headers.insert(ANTHROPIC_BETA.clone(), HeaderValue::from_static(anthropic::OAUTH_BETA));
        }
    }
}

/// Whether a single beta value already lists the OAuth beta, has no empty items, and repeats nothing.
fn is_merged(value: &[u8]) -> bool {
    let mut has_oauth = false;
    let mut items = 0usize;
    for beta in value.split(|b| *b == b',') {
        if beta.is_empty() || beta != beta.trim_ascii() {
            return false;
        }
        items += 1;
        if items > 16 {
            return false;
        }
        has_oauth |= beta == anthropic::OAUTH_BETA.as_bytes();
        let occurrences = value.split(|b| *b == b',').filter(|other| *other == beta).count();
        if occurrences > 1 {
            return false;
        }
    }
    has_oauth
}

/// The request's id: the client's `x-request-id` when it sent a usable one, else a new one, which is
/// then set on the request so the upstream sees it too.
pub fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    match headers.entry(&X_REQUEST_ID) {
        header::Entry::Occupied(e) if is_usable_request_id(e.get().as_bytes()) => e.get().clone(),
        header::Entry::Occupied(mut e) => {
            let id = new_request_id();
            e.insert(id.clone());
            id
        }
        header::Entry::Vacant(e) => e.insert(new_request_id()).clone(),
    }
}

/// Visible ASCII of sensible length: it ends up in logs, so nothing that could forge a log line.
fn is_usable_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len()) && v.iter().all(|b| b.is_ascii_graphic())
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::random();
    let mut buf = [0u8; 35];
    buf[..3].copy_from_slice(b"sc-");
    for (i, slot) in buf[3..].iter_mut().enumerate() {
        *slot = HEX[((n >> (i * 4)) & 0xf) as usize];
    }
    // Owned as one shared block from the start: the id goes into the request, the response and the
    // retry's copy of the headers, and a `Bytes` made from a `Vec` allocates again at its first clone.
    // Hex digits and a prefix are always a valid header value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("sc-unknown"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn beta_of(h: &HeaderMap) -> Vec<&str> {
        h.get_all(&ANTHROPIC_BETA).iter().map(|v| v.to_str().unwrap()).collect()
    }

    fn host() -> HeaderValue {
        HeaderValue::from_static("api.anthropic.com")
    }

    #[test]
    fn client_credentials_are_replaced_by_the_agents_token() {
        let mut h = map(&[
            ("authorization", "Bearer client-key"),
            ("x-api-key", "sk-client"),
            ("proxy-authorization", "Basic abc"),
            ("content-type", "application/json"),
        ]);
        to_upstream(&mut h, authorization(&Secret::new("tok-1")).unwrap(), &host());
        assert_eq!(h.get_all(header::AUTHORIZATION).iter().count(), 1);
        assert_eq!(h["authorization"], "Bearer tok-1");
        assert!(h["authorization"].is_sensitive());
        assert!(!h.contains_key("x-api-key"));
        assert!(!h.contains_key("proxy-authorization"));
        assert_eq!(h["content-type"], "application/json");
    }

    #[test]
    fn only_the_apis_methods_are_forwarded_and_max_forwards_stays_here() {
        for m in ["GET", "POST", "DELETE"] {
            assert!(is_api_method(&m.parse().unwrap()), "{m}");
        }
        for m in ["TRACE", "OPTIONS", "PUT", "PATCH", "HEAD", "CONNECT", "PROPFIND"] {
            assert!(!is_api_method(&m.parse().unwrap()), "{m}");
        }
        let mut h = map(&[("max-forwards", "0"), ("x-kept", "yes")]);
        to_upstream(&mut h, authorization(&Secret::new("t")).unwrap(), &host());
        assert!(!h.contains_key("max-forwards"));
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Custom-Hop"),
            ("connection", "upgrade"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-foo"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("expect", "100-continue"),
            ("x-kept", "yes"),
        ]);
        to_upstream(&mut h, authorization(&Secret::new("t")).unwrap(), &host());
        for gone in [
            "connection",
            "x-custom-hop",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "expect",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be dropped");
        }
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn hop_by_hop_names() {
        // The specification the fuzz target checks the rules against.
        for name in crate::fuzzing::HOP_BY_HOP {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["x-api-key", "content-type", "host", "anthropic-beta", "connections", "t"] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn a_connection_header_cannot_remove_what_the_forwarder_sets() {
        let mut h = map(&[
            ("connection", "anthropic-version, anthropic-beta, authorization, host, x-request-id"),
            ("anthropic-version", "2099-01-01"),
            ("anthropic-beta", "a-1"),
            ("authorization", "Bearer client"),
            ("x-request-id", "req-42"),
            ("host", "127.0.0.1:8000"),
        ]);
        to_upstream(&mut h, authorization(&Secret::new("tok")).unwrap(), &host());
        assert_eq!(
            h["anthropic-version"],
            anthropic::ANTHROPIC_VERSION,
            "the default replaces the named one"
        );
        assert_eq!(beta_of(&h), [anthropic::OAUTH_BETA]);
        assert_eq!(h["authorization"], "Bearer tok");
        assert_eq!(h["host"], "api.anthropic.com");
        assert_eq!(h["x-request-id"], "req-42");
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn host_is_rewritten_and_version_defaulted() {
        let mut h = map(&[("host", "127.0.0.1:8000")]);
        to_upstream(&mut h, authorization(&Secret::new("t")).unwrap(), &host());
        assert_eq!(h["host"], "api.anthropic.com");
        assert_eq!(h["anthropic-version"], anthropic::ANTHROPIC_VERSION);

        let mut h = map(&[("anthropic-version", "2099-01-01")]);
        to_upstream(&mut h, authorization(&Secret::new("t")).unwrap(), &host());
        assert_eq!(h["anthropic-version"], "2099-01-01");
    }

    #[test]
    fn beta_is_added_when_absent() {
        let mut h = HeaderMap::new();
        merge_beta(&mut h);
        assert_eq!(beta_of(&h), [anthropic::OAUTH_BETA]);
    }

    #[test]
    fn betas_merge_across_values_without_duplicates() {
        // These tables spell the OAuth beta out: how its text is split, trimmed and joined is the point.
        assert_eq!(anthropic::OAUTH_BETA, "oauth-2025-04-20");
        let cases: &[(&[&str], &str)] = &[
            (&["a-1"], "oauth-2025-04-20,a-1"),
            (&["a-1,b-2"], "oauth-2025-04-20,a-1,b-2"),
            (&["a-1 , b-2", "c-3"], "oauth-2025-04-20,a-1,b-2,c-3"),
            (&["a-1", "a-1,oauth-2025-04-20"], "oauth-2025-04-20,a-1"),
            (&["oauth-2025-04-20,oauth-2025-04-20"], "oauth-2025-04-20"),
            (&["a-1,,", " "], "oauth-2025-04-20,a-1"),
            (&["a-1,oauth-2025-04-20 "], "oauth-2025-04-20,a-1"),
            (&[""], "oauth-2025-04-20"),
        ];
        for (values, want) in cases {
            let mut h = HeaderMap::new();
            for v in *values {
                h.append(ANTHROPIC_BETA.clone(), HeaderValue::from_str(v).unwrap());
            }
            merge_beta(&mut h);
            assert_eq!(beta_of(&h), [*want], "from {values:?}");
        }
    }

    #[test]
    fn an_already_merged_beta_is_left_untouched() {
        for v in ["a-1,oauth-2025-04-20", "oauth-2025-04-20", "oauth-2025-04-20,z-9,a-1"] {
            let mut h = map(&[("anthropic-beta", v)]);
            merge_beta(&mut h);
            assert_eq!(beta_of(&h), [v]);
        }
    }

    #[test]
    fn is_merged_rejects_duplicates_and_blanks() {
        assert!(is_merged(b"oauth-2025-04-20"));
        assert!(!is_merged(b"a,oauth-2025-04-20,a"));
        assert!(!is_merged(b"a, oauth-2025-04-20"));
        assert!(!is_merged(b"oauth-2025-04-20,"));
        assert!(!is_merged(b"a"));
    }

    #[test]
    fn tokens_that_cannot_be_headers_are_errors_that_hide_the_token() {
        let err = authorization(&Secret::new("bad\ntoken-sctest")).unwrap_err();
        assert!(!err.to_string().contains("sctest"));
    }

    #[test]
    fn retry_advice_replaces_the_upstreams() {
        let mut h = map(&[("x-should-retry", "false")]);
        advise_retry(&mut h, true);
        assert_eq!(h.get_all("x-should-retry").iter().collect::<Vec<_>>(), ["true"]);
        advise_retry(&mut h, false);
        assert_eq!(h.get_all("x-should-retry").iter().collect::<Vec<_>>(), ["false"]);
    }

    #[test]
    fn response_headers_lose_hop_by_hop() {
        let mut h = map(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/event-stream"),
            ("request-id", "req_1"),
        ]);
        to_client(&mut h);
        assert!(!h.contains_key("connection"));
        assert!(!h.contains_key("transfer-encoding"));
        assert_eq!(h["content-type"], "text/event-stream");
        assert_eq!(h["request-id"], "req_1");
    }

    #[test]
    fn kept_headers_come_back_as_they_were_with_the_new_token_and_never_hold_the_old_one() {
        let mut h = map(&[
            ("content-type", "application/json"),
            ("anthropic-beta", "a"),
            ("anthropic-beta", "b"),
            ("x-custom", ""),
            ("authorization", "Bearer old-token"),
        ]);
        let mut secret = HeaderValue::from_static("s3cr3t");
        secret.set_sensitive(true);
        h.insert("cookie", secret);
        let kept = KeptHeaders::of(&h);
        assert!(!kept.0.windows(9).any(|w| w == b"old-token"), "the old token was copied");

        let mut restored = kept.restore(HeaderValue::from_static("Bearer new-token")).unwrap();
        assert_eq!(restored.remove("authorization").unwrap(), "Bearer new-token");
        h.remove("authorization");
        let pairs = |m: &HeaderMap| m.iter().map(|(n, v)| (n.clone(), v.clone())).collect::<Vec<_>>();
        assert_eq!(pairs(&restored), pairs(&h));
        assert!(restored["cookie"].is_sensitive());
        assert!(!restored["content-type"].is_sensitive());
        // Anything else is no retry, not a panic.
        assert!(KeptHeaders(vec![1, 2, 3]).restore(HeaderValue::from_static("x")).is_none());
        assert!(KeptHeaders(Vec::new()).restore(HeaderValue::from_static("x")).is_some());
    }

    #[test]
    fn request_ids_pass_through_or_are_generated() {
        let mut h = map(&[("x-request-id", "abc-123")]);
        assert_eq!(request_id(&mut h), "abc-123");

        let mut h = HeaderMap::new();
        let id = request_id(&mut h);
        assert_eq!(h["x-request-id"], id);
        assert!(id.to_str().unwrap().starts_with("sc-"));
        assert_eq!(id.len(), 35);
        assert_ne!(request_id(&mut HeaderMap::new()), id);

        for bad in ["has space", &"x".repeat(200)] {
            let mut h = map(&[("x-request-id", bad)]);
            let id = request_id(&mut h);
            assert!(id.to_str().unwrap().starts_with("sc-"), "{bad:?} should be replaced");
            assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        }
    }
}
