//! Request paths: where a client's path goes upstream ([`upstream_path`]), and the paths that could
//! leave the `/v1` allow-list once something downstream normalises them ([`check`]). The forwarder sends
//! paths as they are, but the upstream (or a proxy in between) may resolve `..`, decode `%2e`, or read a
//! backslash or an encoded slash as a separator: `/v1/../admin` would then carry the account's token
//! somewhere that is not the API. Such paths are answered 400 here and never forwarded.

use crate::errors::ErrorReply;
use http::uri::PathAndQuery;
use http::{StatusCode, Uri};

/// Refuses a path with a dot-segment (`.` or `..`, in any mix of `.`, `%2e` and `%2E`, also before a
/// `;` parameter), a backslash, or a percent-encoded slash or backslash.
pub fn check(path: &str) -> Result<(), ErrorReply> {
    // Almost every path has none of these bytes: one pass and done.
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return Ok(());
    }
    if path.contains('\\') || contains_ignore_case(path, "%5c") || contains_ignore_case(path, "%2f") {
        return Err(refused("a backslash or an encoded slash"));
    }
    if path.split('/').any(is_dot_segment) {
        return Err(refused("a `.` or `..` segment"));
    }
    Ok(())
}

/// Final: the same path meets the same answer.
fn refused(what: &str) -> ErrorReply {
    ErrorReply::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        format!(
            "the request path holds {what} (percent-encoded or not); such paths are refused rather than \
             forwarded: send the path without it"
        ),
    )
    .final_answer()
}

/// Whether a segment means "this directory" or "the parent" once decoded: `.`, `..`, `%2e`, `.%2E`,
/// and the same followed by `;...` (which some servers drop before resolving).
fn is_dot_segment(segment: &str) -> bool {
    let name = segment.split(';').next().unwrap_or(segment);
    let mut dots = 0;
    let mut rest = name.as_bytes();
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return false,
        };
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Where a client path goes upstream, query kept: `/v1/...` as it is; `/api/v1/...` without `/api` (the
/// base URL the deployment guide gives clients); and either with its `/v1` doubled (`/v1/v1/...`,
/// `/api/v1/v1/...`) with one `/v1` fewer, since clients append `/v1/...` to their base URL themselves
/// (One-Hub, the SDKs, Claude Code) and a base URL copied with `/v1` or `/api/v1` at its end doubles it.
/// Anything else is not ours to forward.
pub fn upstream_path(uri: &Uri) -> Option<PathAndQuery> {
    let pq = uri.path_and_query()?;
    match client_prefix(pq.path())? {
        0 => Some(pq.clone()),
        skip => PathAndQuery::try_from(&pq.as_str()[skip..]).ok(),
    }
}

/// How many leading bytes of `path` are the client's base path, not the API's; `None` when what
/// follows is not an API path either.
fn client_prefix(path: &str) -> Option<usize> {
    let is_v1 = |p: &str| p == "/v1" || p.starts_with("/v1/");
    let api = match path.strip_prefix("/api") {
        Some(rest) if is_v1(rest) => "/api".len(),
        _ => 0,
    };
    let rest = &path[api..];
    if !is_v1(rest) {
        return None;
    }
    let doubled = is_v1(&rest["/v1".len()..]);
    Some(api + if doubled { "/v1".len() } else { 0 })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn path(s: &str) -> Option<String> {
        upstream_path(&s.parse::<Uri>().unwrap()).map(|p| p.as_str().to_owned())
    }

    #[test]
    fn paths() {
        assert_eq!(path("/v1/messages").as_deref(), Some("/v1/messages"));
        assert_eq!(path("/v1/messages?beta=true").as_deref(), Some("/v1/messages?beta=true"));
        assert_eq!(path("/api/v1/messages").as_deref(), Some("/v1/messages"));
        assert_eq!(path("/api/v1/models?limit=5").as_deref(), Some("/v1/models?limit=5"));
        assert_eq!(path("/v1").as_deref(), Some("/v1"));
        assert_eq!(path("http://h:1/v1/models").as_deref(), Some("/v1/models"));
        assert_eq!(path("/"), None);
        assert_eq!(path("/v2/messages"), None);
        assert_eq!(path("/v1x"), None);
        assert_eq!(path("/api/v2/messages"), None);
        assert_eq!(path("/api"), None);
        assert_eq!(path("/apiv1/messages"), None);
        assert_eq!(path("/health/v1"), None);
    }

    #[test]
    fn a_doubled_v1_is_served_once() {
        assert_eq!(path("/v1/v1/messages").as_deref(), Some("/v1/messages"));
        assert_eq!(path("/v1/v1/messages?beta=true").as_deref(), Some("/v1/messages?beta=true"));
        assert_eq!(path("/api/v1/v1/messages?beta=true").as_deref(), Some("/v1/messages?beta=true"));
        assert_eq!(path("/api/v1/v1/models").as_deref(), Some("/v1/models"));
        assert_eq!(path("/api/v1/v1/messages/count_tokens").as_deref(), Some("/v1/messages/count_tokens"));
        assert_eq!(path("/v1/v1").as_deref(), Some("/v1"));
        assert_eq!(path("/api/v1/v1").as_deref(), Some("/v1"));
        // Only a whole `/v1` segment counts, and only one of them is the client's.
        assert_eq!(path("/v1/v1x").as_deref(), Some("/v1/v1x"));
        assert_eq!(path("/v1/v1/v1/models").as_deref(), Some("/v1/v1/models"));
        assert_eq!(path("/api/api/v1/messages"), None);
        assert_eq!(path("/v1/api/v1/messages").as_deref(), Some("/v1/api/v1/messages"));
    }

    #[test]
    fn dot_segments_in_every_spelling_are_refused() {
        for path in [
            "/v1/../x",
            "/v1/..",
            "/v1/./messages",
            "/v1/.",
            "/v1/%2e%2e/x",
            "/v1/%2E%2E/x",
            "/v1/%2e./x",
            "/v1/.%2E/x",
            "/v1/%2e/messages",
            "/api/v1/../../x",
            "/v1/..;/x",
            "/v1/messages/..",
        ] {
            let e = check(path).expect_err(path);
            assert_eq!((e.status, e.kind), (StatusCode::BAD_REQUEST, "invalid_request_error"), "{path}");
            assert_eq!(e.retry, Some(false), "{path}");
            assert!(e.message.contains("`..`"), "{path}: {}", e.message);
        }
    }

    #[test]
    fn separators_in_disguise_are_refused() {
        for path in ["/v1\\..\\x", "/v1/%5c../x", "/v1/%5C", "/v1/..%2fx", "/v1/a%2Fb"] {
            let e = check(path).expect_err(path);
            assert!(e.message.contains("backslash"), "{path}: {}", e.message);
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/v1/messages",
            "/v1/messages/count_tokens",
            "/v1/models/claude-3.5-sonnet",
            "/v1/files/file.txt",
            "/v1/...",
            "/v1/.well-known",
            "/v1/a..b",
            "/v1/%41",
            "/v1/%2e%2e%2e",
            "/",
        ] {
            assert!(check(path).is_ok(), "{path}");
        }
    }
}
