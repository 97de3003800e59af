//! The token endpoint's answers: a success must give a pair that is kept whatever its lifetime says,
//! a failure must be sorted and described without quoting a token or forging a log line.

use super::assert_no_token;
use crate::credentials::{Credentials, TokenUpdate};
use crate::oauth::{self, TokenError, TokenResponse, FALLBACK_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME};
use std::path::Path;
use std::time::Duration;

const URL: &str = "https://token.fuzz.test/v1/oauth/token";

/// A login in each shape, for the answer's pair to be merged into.
const FILES: [&str; 2] = [
    r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-sctest-a","refreshToken":"sk-ant-ort01-sctest-r","expiresAt":1800000000000},"mcpOAuth":{}}"#,
    r#"{"access_token":"sk-ant-oat01-sctest-a","refresh_token":"sk-ant-ort01-sctest-r","expires_at":"2027-01-15T08:00:00Z"}"#,
];

/// `data` is an answer: a first line with the HTTP status and, after a space, a `Retry-After` value;
/// then the body. Without a status line the whole input is the body of a 400.
pub fn token_response(data: &[u8]) {
    let (status, retry_after, body) = split(data);
    match oauth::parse_success(body, URL) {
        Ok(response) => check_success(response),
        Err(e) => check_error(&e),
    }
    let failure = oauth::classify_failure(status, body, retry_after, URL);
    check_error(&failure);
    assert!(failure.to_string().contains(&status.to_string()), "the status is named: {failure}");
    match (&failure, status) {
        (TokenError::Rejected { .. }, _) => {}
        (_, 401 | 403) => panic!("{status} must stop the refreshes: {failure}"),
        (TokenError::Transient { retry_after: honoured, .. }, _) => {
            assert_eq!(*honoured, retry_after, "Retry-After is passed on")
        }
    }
}

fn split(data: &[u8]) -> (u16, Option<Duration>, &[u8]) {
    let (line, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let (code, retry) = match line.iter().position(|b| *b == b' ') {
        Some(at) => (&line[..at], Some(&line[at + 1..])),
        None => (line, None),
    };
    let Some(status) = std::str::from_utf8(code).ok().and_then(|s| s.parse::<u16>().ok()) else {
        return (400, None, data);
    };
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(value) = retry.and_then(|r| reqwest::header::HeaderValue::from_bytes(r).ok()) {
        headers.insert(reqwest::header::RETRY_AFTER, value);
    }
    let retry_after = oauth::retry_after(&headers);
    assert!(retry_after.is_none_or(|d| d <= oauth::MAX_RETRY_AFTER), "Retry-After is bounded");
    (status, retry_after, body)
}

/// The pair is usable and its lifetime plausible, and the update built from it, counted from any
/// clock, is written to a file of either shape that reads back with the same pair.
fn check_success(response: TokenResponse) {
    assert!(!response.access_token.is_empty());
    assert!(response.refresh_token.as_ref().is_none_or(|r| !r.is_empty()));
    let lifetime = response.expires_in;
    assert!(
        lifetime == FALLBACK_TOKEN_LIFETIME
            || (Duration::from_secs(1)..=MAX_TOKEN_LIFETIME).contains(&lifetime),
        "lifetime {lifetime:?}"
    );
    let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
    for arrived_ms in [0, 1_800_000_000_000, u64::MAX - 1] {
        let update = response.clone().into_update(arrived_ms);
        assert_eq!(update.expires_at_ms, arrived_ms.saturating_add(lifetime_ms));
        // A login keeps the answer's pair as it came, with a refresh token or (long-lived) without.
        let first = Credentials::new_claude_code(update.clone());
        let back = Credentials::parse(&first.to_bytes(), Path::new("/fuzz/new.json"));
        assert!(back.is_ok_and(|b| b.same_tokens(&first)), "a first login is written and read back");
        for file in FILES {
            keeps_the_pair(file, &update, false);
            keeps_the_pair(file, &update, true);
        }
    }
}

/// The answer merged into a file as a refresh (a refresh token left out keeps the old one) or as a new
/// login (it replaces the whole pair) is what the written file holds.
fn keeps_the_pair(file: &str, update: &TokenUpdate, login: bool) {
    let path = Path::new("/fuzz/.credentials.json");
    let Ok(before) = Credentials::parse(file.as_bytes(), path) else { unreachable!("a valid file") };
    let after = if login { before.with_login(update.clone()) } else { before.with_update(update.clone()) };
    let refresh = match (&update.refresh_token, login) {
        (Some(new), _) => Some(new),
        (None, false) => before.refresh_token.as_ref(),
        (None, true) => None,
    };
    assert!(
        after.refresh_token.as_ref() == refresh,
        "the refresh token is the answer's, or kept by a refresh"
    );
    let back = Credentials::parse(&after.to_bytes(), path).unwrap_or_else(|e| panic!("{e}"));
    assert!(back.same_tokens(&after), "the new pair is what the file holds");
}

/// A failure never quotes a token, and is one line: it is logged and shown in `status`.
fn check_error(e: &TokenError) {
    let text = e.to_string();
    assert_no_token(&text);
    assert!(!text.contains(char::is_control), "a control character could forge a log line: {text:?}");
}
