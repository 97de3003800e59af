//! `sidecred-agent login`: the OAuth 2.0 authorization-code flow with PKCE (S256) against Claude's
//! authorize and token endpoints, as Claude Code runs it.
//!
//! Two kinds of login ([`LoginKind`]):
//! - **full** (the default, as `claude` logs in): Claude Code's scopes, a token of about 8 hours and a
//!   refresh token that rotates on every refresh, so exactly one agent may hold it.
//! - **long-lived** (`--long-lived`, as `claude setup-token`): the one scope `user:inference`, a token
//!   that lives a year and is never refreshed. No refresh token is kept, so any number of agents can
//!   share it; it cannot read the account profile.
//!
//! Two ways for the code to come back ([`callback`] reads it either way):
//! - **paste** (headless, [`paste`]): the redirect URI is Claude's own callback page, which shows
//!   `CODE#STATE`; the person copies it into the terminal.
//! - **browser** ([`loopback`]): the redirect URI is `http://localhost:<port>/callback`, served here for
//!   one request.
//!
//! The `oauth2` crate builds the authorize URL, the PKCE pair and the CSRF state; the code exchange is
//! a JSON request sent by [`OAuthClient::exchange_code`]. The verifier, the code, the state and the
//! tokens live in [`Secret`]s and never reach a log, an error or a panic message. Nothing is written
//! unless the whole flow succeeded ([`destination`]).

mod callback;
mod destination;
mod error;
mod kind;
mod loopback;
mod paste;

use crate::api::{Api, Profile};
use crate::atomic::resolve_symlinks;
use crate::cmd::args::{ApiArgs, CredentialsArgs, TokenEndpointArgs};
use crate::cmd::fields::rfc3339;
use crate::credentials::now_ms;
use crate::oauth::{OAuthClient, OAuthConfig, TokenError};
use callback::Callback;
use clap::{Args, ValueEnum};
use destination::Destination;
use error::LoginError;
pub use kind::LoginKind;
use kind::SHORTEST_LONG_LIVED;
use loopback::{Loopback, Page};
use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};
use sidecred_proto::anthropic;
use sidecred_proto::Secret;
use std::process::ExitCode;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Args)]
#[command(mut_arg("credentials", |a| a.help(
    "The credentials file to write (mode 0600; other fields of an existing file are kept)"
)))]
pub struct LoginArgs {
    #[command(flatten)]
    pub credentials: CredentialsArgs,
    /// `-` prints the credentials JSON on stdout instead of writing the file (messages go to stderr).
    #[arg(long, env = "SIDECRED_OUTPUT", value_parser = parse_output)]
    pub output: Option<Output>,
    /// `paste` (headless) or `browser` (loopback redirect). Default: `browser` when a display is
    /// available (macOS, or DISPLAY / WAYLAND_DISPLAY set), `paste` otherwise.
    #[arg(long, env = "SIDECRED_MODE", value_enum)]
    pub mode: Option<LoginMode>,
    /// OAuth authorization endpoint.
    #[arg(long, env = "SIDECRED_AUTHORIZE_URL", default_value = anthropic::DEFAULT_AUTHORIZE_URL)]
    pub authorize_url: String,
    /// Redirect URI of the paste mode: the page that shows `CODE#STATE` after sign-in.
    #[arg(long, env = "SIDECRED_REDIRECT_URI", default_value = anthropic::DEFAULT_MANUAL_REDIRECT_URI)]
    pub redirect_uri: String,
    /// Space-separated scopes to ask for (a full login).
    #[arg(long, env = "SIDECRED_SCOPES", default_value = anthropic::DEFAULT_SCOPES)]
    pub scopes: String,
    /// A long-lived, inference-only login, as `claude setup-token`: scope `user:inference` alone, a token
    /// that lives a year and is never refreshed (no refresh token is kept), so any number of agents can
    /// share it. Without it, a full login: refreshed every few hours by the one agent that holds it.
    #[arg(long, env = "SIDECRED_LONG_LIVED", conflicts_with = "scopes")]
    pub long_lived: bool,
    /// Port of the browser mode's loopback listener (0: any free port).
    #[arg(long, env = "SIDECRED_PORT", default_value_t = 0)]
    pub port: u16,
    /// Give up when no code arrived within this time.
    #[arg(long, env = "SIDECRED_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Browser mode: do not try to open a browser; only print the URL.
    #[arg(long, env = "SIDECRED_NO_OPEN")]
    pub no_open: bool,
    #[command(flatten)]
    pub endpoint: TokenEndpointArgs,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoginMode {
    /// Print the URL, then read the `CODE#STATE` shown after sign-in from the terminal (headless).
    Paste,
    /// Receive the code on a loopback listener the browser is redirected to.
    Browser,
}

/// Where `login` puts the credentials besides the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
}

fn parse_output(s: &str) -> Result<Output, String> {
    match s {
        "-" => Ok(Output::Stdout),
        _ => Err(format!("`{s}`: only `-` (stdout) is accepted; use --credentials PATH to write a file")),
    }
}

/// One authorization attempt: the values that must come back, or be sent back, to finish it.
struct Attempt {
    url: String,
    redirect_uri: String,
    verifier: Secret,
    state: Secret,
}

impl Attempt {
    fn new(args: &LoginArgs, redirect_uri: &str) -> Result<Attempt, LoginError> {
        let scopes: Vec<Scope> =
            LoginKind::of(args).scopes(args).split_whitespace().map(|s| Scope::new(s.to_owned())).collect();
        if scopes.is_empty() {
            return Err(LoginError::NoScopes);
        }
        let auth_url = AuthUrl::new(args.authorize_url.clone()).map_err(|e| LoginError::AuthorizeUrl {
            url: args.authorize_url.clone(),
            detail: e.to_string(),
        })?;
        let redirect = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| LoginError::RedirectUri { url: redirect_uri.to_owned(), detail: e.to_string() })?;
        let client = BasicClient::new(ClientId::new(args.endpoint.client_id.clone()))
            .set_auth_uri(auth_url)
            .set_redirect_uri(redirect);
        // 32 random bytes each, base64url without padding (43 characters).
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = client
            .authorize_url(|| CsrfToken::new_random_len(32))
            .add_extra_param("code", "true")
            .add_scopes(scopes)
            .set_pkce_challenge(challenge)
            .url();
        Ok(Attempt {
            url: url.to_string(),
            redirect_uri: redirect_uri.to_owned(),
            verifier: Secret::new(verifier.secret().as_str()),
            state: Secret::new(state.secret().as_str()),
        })
    }
}

pub async fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let destination = match args.output {
        Some(Output::Stdout) => Destination::Stdout,
        None => Destination::File(resolve_symlinks(&args.credentials.path)),
    };
    destination.prepare(LoginKind::of(&args))?;
    let oauth = OAuthClient::new(OAuthConfig::from(&args.endpoint))?;
    let mode = args.mode.unwrap_or_else(default_mode);
    let deadline = Instant::now() + args.timeout;

    let (attempt, callback, browser) = match mode {
        LoginMode::Paste => {
            let attempt = Attempt::new(&args, &args.redirect_uri)?;
            let callback = paste::read_pasted_code(&attempt.url, deadline, args.timeout).await?;
            (attempt, callback, None)
        }
        LoginMode::Browser => {
            let loopback = Loopback::bind(args.port).await?;
            let attempt = Attempt::new(&args, &loopback.redirect_uri())?;
            loopback::announce_browser(&attempt.url, &attempt.redirect_uri, args.timeout, !args.no_open);
            let waited = tokio::time::timeout_at(deadline, loopback.wait_for_callback(&attempt.state)).await;
            let (callback, stream) =
                match waited {
                    Ok(result) => result?,
                    Err(_) => return Err(LoginError::Timeout {
                        after: args.timeout,
                        hint:
                            " (or use --mode paste when the browser cannot reach localhost on this machine)",
                    }
                    .into()),
                };
            (attempt, callback, Some(stream))
        }
    };

    let result = finish(&args, &oauth, &attempt, callback, &destination).await;
    if let Some(stream) = browser {
        let page = match &result {
            Ok(done) => Page::success(&done.who()),
            Err(e) => Page::failure(&e.to_string()),
        };
        page.send(stream).await;
    }
    let done = result?;
    eprintln!("{}", done.summary(&destination));
    Ok(ExitCode::SUCCESS)
}

/// What a finished login reports.
struct Done {
    email: Option<String>,
    plan: Option<String>,
    /// When a long-lived login's token expires (epoch ms); `None` for a full login.
    long_lived_until: Option<u64>,
}

impl Done {
    fn who(&self) -> String {
        let mut who = self.email.clone().unwrap_or_else(|| "your Claude account".into());
        if let Some(plan) = &self.plan {
            who.push_str(&format!(" ({plan})"));
        }
        who
    }

    fn summary(&self, destination: &Destination) -> String {
        let kind = match self.long_lived_until {
            Some(until) => format!(
                " with a long-lived, inference-only token, valid until {}. It is never refreshed, so any \
                 number of agents may share it: log in again before then",
                rfc3339(until)
            ),
            None => String::new(),
        };
        match destination {
            Destination::File(path) => format!(
                "Logged in as {}{kind}. Credentials saved to {} (mode 0600).\n\
                 Check them with: sidecred-agent status --credentials {}",
                self.who(),
                path.display(),
                path.display()
            ),
            Destination::Stdout => {
                format!("Logged in as {}{kind}. Credentials written to stdout.", self.who())
            }
        }
    }
}

/// Checks the code's state, exchanges the code once, learns the plan, saves the credentials.
async fn finish(
    args: &LoginArgs,
    oauth: &OAuthClient,
    attempt: &Attempt,
    callback: Callback,
    destination: &Destination,
) -> Result<Done, LoginError> {
    let kind = LoginKind::of(args);
    let code = callback.into_code(&attempt.state)?;
    let response = oauth
        .exchange_code(&code, &attempt.verifier, &attempt.redirect_uri, &attempt.state, kind.lifetime())
        .await
        .map_err(|e| match e {
            TokenError::Rejected { reason } => LoginError::CodeRejected(reason),
            TokenError::Transient { reason, .. } => LoginError::Exchange(reason),
        })?;
    let arrived_ms = now_ms();
    let token_email = response.account_email.clone();
    let lifetime = response.expires_in;
    let mut update = response.into_update(arrived_ms);
    update.scopes =
        update.scopes.or_else(|| Some(kind.scopes(args).split_whitespace().map(str::to_owned).collect()));
    match kind {
        LoginKind::Full if update.refresh_token.is_none() => {
            return Err(LoginError::NoRefreshToken { url: args.endpoint.token_url.clone() })
        }
        LoginKind::Full => {}
        LoginKind::LongLived => {
            if lifetime <= SHORTEST_LONG_LIVED {
                return Err(LoginError::NotLongLived { lifetime });
            }
            // Not kept, whether or not one came: a long-lived login is made to be shared, and any holder
            // that refreshed with it would rotate it under the others. The token outlives the need.
            update.refresh_token = None;
            destination.save(update, None, None)?;
            return Ok(Done {
                email: token_email,
                plan: None,
                long_lived_until: Some(arrived_ms.saturating_add(lifetime.as_millis() as u64)),
            });
        }
    }

    // The plan is a nicety: a login without it is still a login.
    let api = Api::new(oauth.http().clone(), &args.api.api_base);
    let profile = match api.profile(&update.access_token).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("note: could not read the account profile ({e}); subscriptionType is left out");
            Profile::default()
        }
    };
    let subscription = profile.subscription_type();
    let tier = profile.rate_limit_tier.clone();

    destination.save(update, subscription.as_deref(), tier.as_deref())?;
    Ok(Done { email: profile.email.clone().or(token_email), plan: profile.plan(), long_lived_until: None })
}

/// `browser` where a person can see one: a desktop session (DISPLAY / WAYLAND_DISPLAY), or macOS
/// outside SSH. `paste` otherwise (containers, SSH sessions, CI).
fn default_mode() -> LoginMode {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let desktop = set("DISPLAY") || set("WAYLAND_DISPLAY");
    let local_mac = cfg!(target_os = "macos") && !set("SSH_CONNECTION") && !set("SSH_TTY");
    if desktop || local_mac {
        LoginMode::Browser
    } else {
        LoginMode::Paste
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use sidecred_proto::anthropic::{DEFAULT_MANUAL_REDIRECT_URI, DEFAULT_SCOPES};

    #[derive(Parser)]
    struct LoginCli {
        #[command(flatten)]
        login: LoginArgs,
    }

    fn args(extra: &[&str]) -> LoginArgs {
        let mut argv = vec!["sidecred-agent-login"];
        argv.extend_from_slice(extra);
        LoginCli::parse_from(argv).login
    }

    #[test]
    fn authorize_url_carries_pkce_s256_state_scopes_and_code_true() {
        let a = Attempt::new(&args(&[]), DEFAULT_MANUAL_REDIRECT_URI).expect("attempt");
        let url = oauth2::url::Url::parse(&a.url).expect("url");
        let default = oauth2::url::Url::parse(sidecred_proto::anthropic::DEFAULT_AUTHORIZE_URL).expect("url");
        assert_eq!(url.host_str(), Some("claude.com"));
        assert_eq!(url.path(), "/cai/oauth/authorize");
        assert_eq!(url.path(), default.path());
        let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["code"], "true");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], sidecred_proto::anthropic::CLAUDE_CODE_CLIENT_ID);
        assert_eq!(q["redirect_uri"], DEFAULT_MANUAL_REDIRECT_URI);
        assert_eq!(q["scope"], DEFAULT_SCOPES);
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["state"], a.state.expose());
        // The challenge is the S256 of the verifier, base64url without padding.
        use base64::Engine;
        use sha2::Digest;
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(a.verifier.expose()));
        assert_eq!(q["code_challenge"], expected);
        assert_eq!(a.verifier.expose().len(), 43);
        assert!(!q.values().any(|v| v == a.verifier.expose()), "the verifier must not be in the URL");
        // Two attempts share nothing.
        let b = Attempt::new(&args(&[]), DEFAULT_MANUAL_REDIRECT_URI).expect("attempt");
        assert_ne!(a.state, b.state);
        assert_ne!(a.verifier, b.verifier);
    }

    #[test]
    fn a_long_lived_login_asks_for_inference_only_and_a_year() {
        let long = args(&["--long-lived"]);
        let a = Attempt::new(&long, DEFAULT_MANUAL_REDIRECT_URI).expect("attempt");
        let url = oauth2::url::Url::parse(&a.url).expect("url");
        let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["scope"], "user:inference");
        assert_eq!(q["code"], "true");
        assert_eq!(LoginKind::of(&long).lifetime(), Some(Duration::from_secs(365 * 86_400)));
        assert_eq!(LoginKind::of(&args(&[])).lifetime(), None);
        // The scopes of a long-lived login are not a choice.
        assert!(LoginCli::try_parse_from(["x", "--long-lived", "--scopes", "user:profile"]).is_err());
    }

    #[test]
    fn bad_urls_and_empty_scopes_are_reported() {
        assert!(matches!(
            Attempt::new(&args(&["--authorize-url", "not a url"]), DEFAULT_MANUAL_REDIRECT_URI),
            Err(LoginError::AuthorizeUrl { .. })
        ));
        assert!(matches!(
            Attempt::new(&args(&["--scopes", " "]), DEFAULT_MANUAL_REDIRECT_URI),
            Err(LoginError::NoScopes)
        ));
    }

    #[test]
    fn output_accepts_only_stdout() {
        assert_eq!(parse_output("-"), Ok(Output::Stdout));
        assert!(parse_output("/tmp/x").is_err());
    }
}
