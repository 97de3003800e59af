//! Request paths that could leave the `/v1` allow-list once something downstream normalises them. The
//! forwarder sends paths as they are, but the upstream (or a proxy in between) may resolve `..`, decode
//! `%2e`, or read a backslash or an encoded slash as a separator: `/v1/../admin` would then carry the
//! account's token somewhere that is not the API. Such paths are answered 400 here and never forwarded.

use crate::errors::ErrorReply;
use http::StatusCode;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
