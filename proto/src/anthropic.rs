//! Facts about Claude's endpoints that more than one part of sidecred relies on: header values the API
//! requires, the defaults of the OAuth flow, and which text from them may be quoted back. Defined once
//! here and imported by the agent, the forwarder, the tests and the benchmarks; every default is
//! overridable where it is used, because these endpoints have moved before.

/// The beta flag the API requires on requests authorised with an OAuth access token.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";

/// The API version sent when the client names none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The response header Anthropic's clients (the SDKs, Claude Code) obey over their own retry rules: `true`
/// makes them retry a status they would not (a 401), `false` stops them retrying one they would.
pub const SHOULD_RETRY_HEADER: &str = "x-should-retry";

/// The API's origin.
pub const DEFAULT_API_BASE: &str = "https://api.anthropic.com";

/// Claude Code's public OAuth client.
pub const CLAUDE_CODE_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";

/// The OAuth token endpoint (refresh and code exchange).
pub const DEFAULT_TOKEN_URL: &str = "https://platform.claude.com/v1/oauth/token";

/// The authorization page a Pro/Max login starts at.
pub const DEFAULT_AUTHORIZE_URL: &str = "https://claude.ai/oauth/authorize";

/// The paste flow's redirect URI: Claude's page that shows `CODE#STATE` after sign-in.
pub const DEFAULT_MANUAL_REDIRECT_URI: &str = "https://platform.claude.com/oauth/code/callback";

/// The scopes a login asks for, space-separated.
pub const DEFAULT_SCOPES: &str = "org:create_api_key user:profile user:inference";

/// The prefix every Anthropic token and key carries (`sk-ant-oat01-`, `sk-ant-ort01-`, `sk-ant-api03-`).
pub const TOKEN_PREFIX: &str = "sk-ant-";

/// The longest free text from an endpoint's error body that is quoted back in our own messages.
pub const MAX_QUOTED_TEXT: usize = 200;

/// Whether free text from an endpoint's answer (an `error_description`, an error `message`) may be
/// quoted in a log line or an error: short, on one line (a newline in it could forge a log line), and
/// not carrying anything that looks like a token, since an answer we do not understand could echo what
/// we sent.
pub fn is_quotable(text: &str) -> bool {
    text.len() <= MAX_QUOTED_TEXT && !text.contains(TOKEN_PREFIX) && !text.contains(char::is_control)
}

/// Whether an error code from an endpoint (`invalid_grant`, `authentication_error`) may be quoted: a
/// short identifier, never free text.
pub fn is_error_code(text: &str) -> bool {
    text.len() <= 64 && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotable_text_is_short_and_token_free() {
        assert!(is_quotable("Refresh token not found"));
        assert!(!is_quotable("invalid bearer token sk-ant-oat01-x"));
        assert!(!is_quotable(&"x".repeat(MAX_QUOTED_TEXT + 1)));
        assert!(is_quotable(&"x".repeat(MAX_QUOTED_TEXT)));
        // Found by the token_response fuzz target: a description could start a forged log line.
        assert!(!is_quotable("bad request\n2026-11-23T20:00:00Z  INFO sidecred: forged"));
        assert!(!is_quotable("a\rb") && !is_quotable("\u{1b}[31mred"));
    }

    #[test]
    fn error_codes_are_identifiers() {
        assert!(is_error_code("invalid_grant"));
        assert!(!is_error_code("sk-ant-ort01-leak"));
        assert!(!is_error_code("has space"));
        assert!(!is_error_code(&"a".repeat(65)));
    }
}
