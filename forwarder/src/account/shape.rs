//! Which kind of client sent a request, from its headers alone (the body streams on unread). Observed,
//! never changed: sidecred forwards what the client sent. Any client can send these headers, so this
//! is a guard for the operator's own traffic, not a security boundary.

use http::HeaderMap;
use sidecred_proto::anthropic::{CLAUDE_CODE_USER_AGENT_PREFIX, CLAUDE_CODE_X_APP, X_APP_HEADER};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// Claude Code itself: its `user-agent` and its `x-app`, as it sends them.
    ClaudeCode,
    /// Anything else: an SDK, another tool, a script.
    Other,
}

crate::observe::instruments::label_values!(Shape {
    ClaudeCode => "claude_code",
    Other => "other",
});

pub const SHAPES: [Shape; 2] = [Shape::ClaudeCode, Shape::Other];

impl Shape {
    pub fn of(headers: &HeaderMap) -> Shape {
        let ua = headers.get(http::header::USER_AGENT).map(|v| v.as_bytes());
        let app = headers.get(X_APP_HEADER).map(|v| v.as_bytes());
        let claude_ua = ua.is_some_and(|ua| ua.starts_with(CLAUDE_CODE_USER_AGENT_PREFIX.as_bytes()));
        if claude_ua && app == Some(CLAUDE_CODE_X_APP.as_bytes()) {
            Shape::ClaudeCode
        } else {
            Shape::Other
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap()))
            .collect()
    }

    /// The headers of a real request of Claude Code 2.1.332 in print mode (`claude -p`), captured
    /// against a local server; the key and session id left out.
    const CAPTURED: &[(&str, &str)] = &[
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("user-agent", "claude-cli/2.1.332 (external, sdk-cli)"),
        ("x-stainless-lang", "js"),
        ("x-stainless-package-version", "0.128.0"),
        ("x-stainless-retry-count", "0"),
        ("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14"),
        ("anthropic-version", "2023-06-01"),
        ("x-app", "cli"),
    ];

    #[test]
    fn claude_code_as_it_really_sends() {
        assert_eq!(Shape::of(&headers(CAPTURED)), Shape::ClaudeCode);
        let interactive = [("user-agent", "claude-cli/2.1.332 (external, cli)"), ("x-app", "cli")];
        assert_eq!(Shape::of(&headers(&interactive)), Shape::ClaudeCode);
    }

    #[test]
    fn everything_else_is_another_client() {
        for case in [
            &[][..],
            &[("user-agent", "Anthropic/Python 0.72.0")][..],
            &[("user-agent", "claude-cli/2.1.332 (external, cli)")][..],
            &[("x-app", "cli")][..],
            &[("user-agent", "claude-cli/2.1.332"), ("x-app", "CLI")][..],
            &[("user-agent", "Claude-CLI/2.1.332"), ("x-app", "cli")][..],
            &[("user-agent", "my-tool claude-cli/2.1.332"), ("x-app", "cli")][..],
            &[("user-agent", "claude-cli/2.1.332"), ("x-app", "cli-but-not")][..],
        ] {
            assert_eq!(Shape::of(&headers(case)), Shape::Other, "{case:?}");
        }
        let mut h = headers(&[("x-app", "cli")]);
        h.insert("user-agent", http::HeaderValue::from_bytes(b"claude-cli/\xff").unwrap());
        assert_eq!(Shape::of(&h), Shape::ClaudeCode, "the prefix decides; the rest is the client's");
    }
}
