//! Every way a login can fail, each saying what was (not) written and what to do next.

use crate::atomic::WriteError;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("invalid --authorize-url `{url}`: {detail}")]
    AuthorizeUrl { url: String, detail: String },
    #[error("invalid redirect URI `{url}`: {detail}")]
    RedirectUri { url: String, detail: String },
    #[error("--scopes is empty: ask for at least `user:inference`")]
    NoScopes,
    #[error("{path} exists but {problem}; move it aside or pass --credentials with another file (nothing was changed)")]
    Existing { path: PathBuf, problem: String },
    #[error("cannot create the directory {dir}: {source}")]
    CreateDir { dir: PathBuf, source: std::io::Error },
    #[error("cannot save credentials there: {0}")]
    NotWritable(WriteError),
    #[error("cannot listen on {addr} for the browser's redirect: {source}; pass another --port, or use --mode paste")]
    Listen { addr: String, source: std::io::Error },
    #[error("no authorization code arrived within {} (--timeout); nothing was written. Run login again{hint}", human_duration(.after))]
    Timeout { after: Duration, hint: &'static str },
    #[error(
        "stdin was closed before a code was pasted; nothing was written. Run login in a terminal, \
         or pipe `CODE#STATE` into it"
    )]
    StdinClosed,
    #[error("reading the code from stdin: {0}")]
    Stdin(std::io::Error),
    #[error("the authorization server answered `{error}`{}; nothing was written", in_parens(.description))]
    Denied { error: String, description: Option<String> },
    #[error("the redirect came back without a `code` and a `state`; nothing was written. Run login again")]
    Incomplete,
    #[error(
        "the state that came back does not match this login's (a code from another login attempt, or a \
         forged redirect); nothing was written. Run login again and use the URL it prints"
    )]
    StateMismatch,
    #[error(
        "the token endpoint refused the authorization code ({0}); nothing was written. Codes are \
         single-use and expire within minutes: run login again"
    )]
    CodeRejected(String),
    #[error("exchanging the authorization code failed ({0}); nothing was written. Run login again")]
    Exchange(String),
    #[error("the token endpoint {url} answered without a `refresh_token`; nothing was written")]
    NoRefreshToken { url: String },
    #[error(
        "asked for a long-lived token, the token endpoint granted one that lives only {} (it ignored \
         `expires_in`); nothing was written. Log in without --long-lived instead", human_duration(.lifetime)
    )]
    NotLongLived { lifetime: Duration },
    #[error(
        "{path} holds a login that refreshes (Claude Code's own, or another agent's); a long-lived login \
         would replace it, and whoever uses it would have to log in again. Nothing was changed: pass \
         --credentials with another file, or --output -"
    )]
    WouldReplaceRefreshable { path: PathBuf },
    #[error("the login succeeded but could not be saved ({0}); run login again with a writable --credentials, or with --output -")]
    Save(WriteError),
}

fn human_duration(d: &Duration) -> String {
    humantime::format_duration(*d).to_string()
}

fn in_parens(text: &Option<String>) -> String {
    text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default()
}
