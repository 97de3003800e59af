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

/// The prefix of the subscription's usage-window headers on API responses
/// (`anthropic-ratelimit-unified-5h-utilization`, `...-7d-reset`, `...-status`, ...).
pub const RATELIMIT_UNIFIED_PREFIX: &str = "anthropic-ratelimit-unified-";

/// What follows [`RATELIMIT_UNIFIED_PREFIX`] in the headers that say how an answer was paid for and why
/// a window refused it (`../shared/reference/account-signals.md` in the project's notes lists them with
/// sources; none is a documented contract, so every value may be missing or malformed).
pub mod unified {
    /// `allowed`, `allowed_warning`, `rejected`: the account as a whole (`status`) or one window
    /// (`5h-status`, `7d-status`, `7d_oi-status`).
    pub const STATUS: &str = "status";
    /// When the account-wide decision clears; windows have `<window>-reset`.
    pub const RESET: &str = "reset";
    /// `true` when this answer was billed to the account's extra usage instead of its plan.
    pub const OVERAGE_IN_USE: &str = "overage-in-use";
    /// `allowed` or `rejected`: whether extra usage may be spent at all.
    pub const OVERAGE_STATUS: &str = "overage-status";
    pub const OVERAGE_RESET: &str = "overage-reset";
    /// Which window decided `status`: `five_hour`, `seven_day`, `seven_day_overage_included`.
    pub const REPRESENTATIVE_CLAIM: &str = "representative-claim";
    /// The windows every plan has, account-wide; the rest (`7d_oi`, ...) are per model.
    pub const FIVE_HOUR: &str = "5h";
    pub const SEVEN_DAY: &str = "7d";
}

/// The start of the `400 invalid_request_error` message of a request judged not to come from Claude
/// Code, on an account that does not allow extra usage (since April 2026).
pub const THIRD_PARTY_REFUSAL: &str = "Third-party apps now draw from your extra usage";

/// In the message of the `429` that the 1M-context beta gets without extra usage: about the request,
/// not the account's windows.
pub const LONG_CONTEXT_EXTRA_USAGE: &str = "Extra usage is required for long context requests";

/// In the message of the `400` the long-context beta gets on a subscription without it.
pub const LONG_CONTEXT_UNAVAILABLE: &str = "long context beta is not yet available for this subscription";

/// How Claude Code names itself, as a real request of Claude Code 2.1.332 showed (print mode sends
/// `user-agent: claude-cli/2.1.332 (external, sdk-cli)`, interactive `(external, cli)`; both send
/// `x-app: cli`).
pub const CLAUDE_CODE_USER_AGENT_PREFIX: &str = "claude-cli/";
pub const X_APP_HEADER: &str = "x-app";
pub const CLAUDE_CODE_X_APP: &str = "cli";

/// The subscription's usage windows without a message (Bearer token and [`OAUTH_BETA`]).
pub const OAUTH_USAGE_PATH: &str = "/api/oauth/usage";

/// Claude Code's public OAuth client.
pub const CLAUDE_CODE_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";

/// The OAuth token endpoint (refresh and code exchange).
pub const DEFAULT_TOKEN_URL: &str = "https://platform.claude.com/v1/oauth/token";

/// The authorization page a Pro/Max (claude.ai) login starts at, as Claude Code sends it.
pub const DEFAULT_AUTHORIZE_URL: &str = "https://claude.com/cai/oauth/authorize";

/// The authorization page of a Console (API billing) login; not sidecred's default, recorded so the
/// drift guard notices when it moves.
pub const CONSOLE_AUTHORIZE_URL: &str = "https://platform.claude.com/oauth/authorize";

/// The paste flow's redirect URI: Claude's page that shows `CODE#STATE` after sign-in.
pub const DEFAULT_MANUAL_REDIRECT_URI: &str = "https://platform.claude.com/oauth/code/callback";

/// The scopes a login asks for, space-separated: what Claude Code asks for when it logs in.
pub const DEFAULT_SCOPES: &str = "org:create_api_key user:profile user:inference user:sessions:claude_code \
                                  user:mcp_servers user:file_upload user:plugins user:privacy_consents:write";

/// The scope the profile endpoint (`/api/oauth/profile`) requires.
pub const PROFILE_SCOPE: &str = "user:profile";

/// The one scope of a long-lived, inference-only login (Claude Code's `claude setup-token`). Such a
/// token can call the API but not the profile endpoint.
pub const LONG_LIVED_SCOPES: &str = "user:inference";

/// The lifetime a long-lived login asks for in the code exchange (`expires_in`, seconds): one year,
/// as `claude setup-token` asks.
pub const LONG_LIVED_EXPIRES_IN_SECS: u64 = 31_536_000;

/// The variable Claude Code reads a long-lived token from, and the one `sidecred-agent run
/// --static-token-env` reads when it names none.
pub const OAUTH_TOKEN_ENV: &str = "CLAUDE_CODE_OAUTH_TOKEN";

/// The prefix of an OAuth access token (`sk-ant-oat01-...`), the only kind the API takes as a Bearer
/// token with the OAuth beta.
pub const ACCESS_TOKEN_PREFIX: &str = "sk-ant-oat";

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

    /// What Claude Code itself uses, as `scripts/claude-code-oauth-facts.sh` last read it from the
    /// program npm ships.
    const CLAUDE_CODE_RECORD: &str = include_str!("../../docs/claude-code-oauth.json");

    /// The drift guard: sidecred logs in as Claude Code does, so its defaults are Claude Code's. When the
    /// script brings a new record, this names every constant to update.
    #[test]
    fn drift_the_defaults_are_claude_codes() {
        let record: serde_json::Value =
            serde_json::from_str(CLAUDE_CODE_RECORD).expect("docs/claude-code-oauth.json is JSON");
        let version = record["claude_code_version"].as_str().expect("claude_code_version");
        let expected: &[(&str, serde_json::Value)] = &[
            ("client_id", CLAUDE_CODE_CLIENT_ID.into()),
            ("authorize_url", DEFAULT_AUTHORIZE_URL.into()),
            ("console_authorize_url", CONSOLE_AUTHORIZE_URL.into()),
            ("token_url", DEFAULT_TOKEN_URL.into()),
            ("manual_redirect_uri", DEFAULT_MANUAL_REDIRECT_URI.into()),
            ("api_base", DEFAULT_API_BASE.into()),
            ("scopes", DEFAULT_SCOPES.into()),
            ("long_lived_scopes", LONG_LIVED_SCOPES.into()),
            ("long_lived_expires_in", LONG_LIVED_EXPIRES_IN_SECS.into()),
            ("oauth_beta", OAUTH_BETA.into()),
        ];
        let drift: Vec<String> = expected
            .iter()
            .filter(|(key, ours)| record[key] != *ours)
            .map(|(key, ours)| format!("  {key}: Claude Code {}, sidecred {ours}", record[key]))
            .collect();
        assert!(
            drift.is_empty(),
            "Claude Code {version} (docs/claude-code-oauth.json) and proto/src/anthropic.rs disagree:\n{}\n\
             update the constants, or the record with scripts/claude-code-oauth-facts.sh",
            drift.join("\n")
        );
        let recorded: Vec<&str> = record.as_object().expect("an object").keys().map(String::as_str).collect();
        for key in recorded {
            assert!(
                key == "claude_code_version" || expected.iter().any(|(k, _)| *k == key),
                "docs/claude-code-oauth.json records `{key}`, which nothing here checks"
            );
        }
        assert!(
            PROFILE_SCOPE.len() < DEFAULT_SCOPES.len()
                && DEFAULT_SCOPES.split(' ').any(|s| s == PROFILE_SCOPE)
        );
        assert!(DEFAULT_SCOPES.split(' ').any(|s| s == LONG_LIVED_SCOPES), "a full login can infer too");
    }

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
