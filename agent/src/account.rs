//! The account commands that also work without a running agent: `status` read from the credentials
//! file, `validate` and `info` (which ask the API), and `logout`.
//!
//! `validate` and `info` take their token from the agent when one answers on the socket (it owns the
//! refresh token there, so nobody else may spend it), and from the credentials file otherwise; an
//! expired token in the file is refreshed first and the rotated pair written back before it is used.

use crate::api::{Api, ApiError, Profile};
use crate::atomic::resolve_symlinks;
use crate::atomic::{check_replaceable, write_atomic, WriteError};
use crate::cli::{AccountArgs, LogoutArgs, Source, TokenEndpointArgs};
use crate::credentials::{now_ms, to_pretty_bytes, Credentials, CredentialsError, CLAUDE_KEY};
use crate::login::stdin_is_terminal;
use crate::oauth::{OAuthClient, OAuthConfig, TokenError};
use serde::Serialize;
use serde_json::Value;
use sidecred_proto::client::{Client, ClientError};
use sidecred_proto::{Secret, TokenGrant};
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

/// A token this close to its expiry is refreshed before use, so the check does not race the clock.
const REFRESH_WITHIN_MS: u64 = 60_000;

// ---------------------------------------------------------------------------------------------
// status, from the file

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    Valid,
    Expired,
    /// No file, or a file without a login in it (only `mcpOAuth` after a logout).
    Missing,
    /// A file that cannot be read or parsed; `field` names the part at fault.
    Unreadable,
}

impl FileState {
    fn as_str(self) -> &'static str {
        match self {
            FileState::Valid => "valid",
            FileState::Expired => "expired",
            FileState::Missing => "missing",
            FileState::Unreadable => "unreadable",
        }
    }
}

/// What `status` says when the file answered.
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    pub source: &'static str,
    pub credentials: String,
    pub state: FileState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Negative once expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<i64>,
    pub scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Why no agent answered, when the file stood in for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// Reads `path` and judges the login in it at `now_ms`.
pub fn file_status(path: &Path, now_ms: u64) -> FileStatus {
    let mut status = FileStatus {
        source: "file",
        credentials: path.display().to_string(),
        state: FileState::Missing,
        problem: None,
        field: None,
        token_fingerprint: None,
        expires_at_ms: None,
        expires_in_s: None,
        scopes: Vec::new(),
        subscription_type: None,
        account: None,
        agent: None,
    };
    match Credentials::read(path) {
        Ok(c) => {
            status.state = if c.expires_at_ms > now_ms { FileState::Valid } else { FileState::Expired };
            status.token_fingerprint = Some(c.access_token.fingerprint());
            status.expires_at_ms = Some(c.expires_at_ms);
            status.expires_in_s = Some((c.expires_at_ms as i64 - now_ms as i64) / 1000);
            status.scopes = c.scopes;
            status.subscription_type = c.subscription_type;
            status.account = c.account;
        }
        Err(e) => {
            status.state = match &e {
                CredentialsError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    FileState::Missing
                }
                CredentialsError::UnknownShape { .. } => FileState::Missing,
                _ => FileState::Unreadable,
            };
            status.field = e.field().map(str::to_owned);
            status.problem = Some(e.to_string());
        }
    }
    status
}

pub fn render_file_status(s: &FileStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    match &s.agent {
        Some(why) => writeln!(out, "source:        file ({why})"),
        None => writeln!(out, "source:        file"),
    }
    .ok();
    let _ = writeln!(out, "credentials:   {}", s.credentials);
    let _ = writeln!(out, "state:         {}", s.state.as_str());
    if let Some(p) = &s.problem {
        let _ = writeln!(out, "problem:       {p}");
    }
    if let Some(f) = &s.field {
        let _ = writeln!(out, "field:         {f}");
    }
    if let Some(a) = &s.account {
        let _ = writeln!(out, "account:       {a}");
    }
    if let Some(sub) = &s.subscription_type {
        let _ = writeln!(out, "subscription:  {sub}");
    }
    if let Some(fp) = &s.token_fingerprint {
        let _ = writeln!(out, "token:         {fp}");
    }
    if let Some(secs) = s.expires_in_s {
        if secs > 0 {
            let _ = writeln!(out, "expires in:    {}", human_secs(secs));
        } else {
            let _ = writeln!(out, "expired:       {} ago", human_secs(-secs));
        }
    }
    if let Some(ms) = s.expires_at_ms {
        let _ = writeln!(out, "expires at:    {}", rfc3339(ms));
    }
    if !s.scopes.is_empty() {
        let _ = writeln!(out, "scopes:        {}", s.scopes.join(" "));
    }
    match s.state {
        FileState::Missing => {
            let _ = writeln!(out, "next step:     sidecred-agent login --credentials {}", s.credentials);
        }
        FileState::Expired => {
            let _ = writeln!(
                out,
                "next step:     sidecred-agent validate --credentials {} (refreshes it), or start the agent",
                s.credentials
            );
        }
        _ => {}
    }
    out
}

/// Prints the file's status and returns the exit code: success only for a valid token.
pub fn print_file_status(path: &Path, json: bool, agent: Option<String>) -> anyhow::Result<ExitCode> {
    let mut status = file_status(path, now_ms());
    status.agent = agent;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render_file_status(&status));
    }
    Ok(if status.state == FileState::Valid { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

// ---------------------------------------------------------------------------------------------
// getting a usable token

/// Where a token came from.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum TokenSource {
    Agent { socket: String },
    File { credentials: String },
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Agent { socket } => write!(f, "agent ({socket})"),
            TokenSource::File { credentials } => write!(f, "file ({credentials})"),
        }
    }
}

/// A token to call the API with.
struct Obtained {
    token: Secret,
    source: TokenSource,
    expires_at_ms: u64,
    /// The file's token had expired and was refreshed (and the rotated pair saved).
    refreshed: bool,
}

#[derive(Debug, thiserror::Error)]
enum ObtainError {
    #[error("no agent answered on {socket} ({detail}); drop --source agent to use the credentials file")]
    NoAgent { socket: String, detail: String },
    #[error("the agent on {socket} has no usable token: {detail}")]
    Agent { socket: String, detail: String },
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
    #[error("the token in {path} has expired and refreshing it failed: {reason}")]
    RefreshFailed { path: String, reason: String, rejected: bool },
    #[error(
        "the token in {path} has expired and the file cannot be written ({source}); refreshing now would \
         lose the rotated refresh token, so nothing was done. Make the file writable, or start the agent"
    )]
    CannotSave { path: String, source: WriteError },
    #[error(
        "the token was refreshed but the rotated credentials could not be saved to {path} ({source}); the \
         old refresh token is now spent: log in again with `sidecred-agent login`"
    )]
    SaveFailed { path: String, source: WriteError },
}

impl ObtainError {
    /// A short machine-readable name for `--json`.
    fn kind(&self) -> &'static str {
        match self {
            ObtainError::NoAgent { .. } => "no_agent",
            ObtainError::Agent { .. } => "agent",
            ObtainError::Credentials(CredentialsError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                "missing"
            }
            ObtainError::Credentials(CredentialsError::UnknownShape { .. }) => "missing",
            ObtainError::Credentials(_) => "unreadable",
            ObtainError::RefreshFailed { rejected: true, .. } => "expired_refresh_rejected",
            ObtainError::RefreshFailed { .. } => "expired_refresh_failed",
            ObtainError::CannotSave { .. } | ObtainError::SaveFailed { .. } => "cannot_save",
        }
    }

    fn source(&self, args: &AccountArgs) -> TokenSource {
        match self {
            ObtainError::NoAgent { socket, .. } | ObtainError::Agent { socket, .. } => {
                TokenSource::Agent { socket: socket.clone() }
            }
            _ => TokenSource::File { credentials: args.credentials.display().to_string() },
        }
    }
}

fn oauth_client(endpoint: &TokenEndpointArgs) -> anyhow::Result<OAuthClient> {
    Ok(OAuthClient::new(OAuthConfig {
        token_url: endpoint.token_url.clone(),
        client_id: endpoint.client_id.clone(),
        user_agent: endpoint.user_agent.clone(),
        timeout: endpoint.request_timeout,
    })?)
}

async fn agent_token(socket: &Path) -> Result<TokenGrant, ClientError> {
    Client::connect(socket).await?.get_token().await
}

async fn obtain_token(args: &AccountArgs, oauth: &OAuthClient) -> Result<Obtained, ObtainError> {
    let socket = args.socket.socket.display().to_string();
    if args.source != Source::File {
        match agent_token(&args.socket.socket).await {
            Ok(grant) => {
                return Ok(Obtained {
                    token: grant.access_token,
                    source: TokenSource::Agent { socket },
                    expires_at_ms: grant.expires_at_ms,
                    refreshed: false,
                })
            }
            Err(e) if e.is_connection_failure() && args.source == Source::Auto => {}
            Err(e) if e.is_connection_failure() => {
                return Err(ObtainError::NoAgent { socket, detail: e.to_string() })
            }
            Err(e) => return Err(ObtainError::Agent { socket, detail: e.to_string() }),
        }
    }
    token_from_file(&args.credentials, oauth).await
}

/// The file's token, refreshed first when it has expired. The rotated pair is on disk before the new
/// token is used: a refresh token that is spent but not saved is a login lost.
async fn token_from_file(path: &Path, oauth: &OAuthClient) -> Result<Obtained, ObtainError> {
    let source = TokenSource::File { credentials: path.display().to_string() };
    let creds = Credentials::read(path)?;
    if creds.remaining_ms(now_ms()) > REFRESH_WITHIN_MS {
        return Ok(Obtained {
            token: creds.access_token.clone(),
            source,
            expires_at_ms: creds.expires_at_ms,
            refreshed: false,
        });
    }
    let target = resolve_symlinks(path);
    let shown = path.display().to_string();
    check_replaceable(&target).map_err(|source| ObtainError::CannotSave { path: shown.clone(), source })?;
    let response = oauth.refresh(&creds.refresh_token).await.map_err(|e| {
        let rejected = matches!(e, TokenError::Rejected { .. });
        let mut reason = e.to_string();
        if rejected {
            reason.push_str(
                " (the refresh token is spent or revoked: another holder may have rotated it; \
                 log in again with `sidecred-agent login`)",
            );
        }
        ObtainError::RefreshFailed { path: shown.clone(), reason, rejected }
    })?;
    let next = creds.with_update(response.into_update(now_ms()));
    write_atomic(&target, &next.to_bytes())
        .map_err(|source| ObtainError::SaveFailed { path: shown, source })?;
    Ok(Obtained {
        token: next.access_token.clone(),
        source,
        expires_at_ms: next.expires_at_ms,
        refreshed: true,
    })
}

// ---------------------------------------------------------------------------------------------
// validate

#[derive(Debug, Serialize)]
struct ValidateReport {
    valid: bool,
    #[serde(flatten)]
    source: TokenSource,
    /// Why not, in one machine-readable word: `revoked`, `scope_missing`, `network`, `missing`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_status: Option<u16>,
    refreshed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_s: Option<i64>,
}

/// The API's refusal in words, with what to do about it.
fn explain_api_error(e: &ApiError) -> (&'static str, String) {
    match e.status() {
        Some(401) => ("revoked", format!("the API rejected the token as revoked or invalid ({e}); log in again with `sidecred-agent login`")),
        Some(403) => (
            "scope_missing",
            format!(
                "the API refused the token ({e}): it lacks a scope it needs (user:inference); log in again \
                 with the default --scopes"
            ),
        ),
        Some(_) => ("api_error", format!("the API answered an error ({e})")),
        None if matches!(e, ApiError::Transport { .. }) => ("network", format!("could not reach the API: {e}")),
        None => ("api_error", e.to_string()),
    }
}

pub async fn validate(args: AccountArgs) -> anyhow::Result<ExitCode> {
    let oauth = oauth_client(&args.endpoint)?;
    let api = Api::new(oauth.http().clone(), &args.endpoint.api_base);
    let endpoint = api.models_url();
    let report = match obtain_token(&args, &oauth).await {
        Err(e) => ValidateReport {
            valid: false,
            source: e.source(&args),
            problem: Some(e.kind()),
            reason: Some(e.to_string()),
            endpoint: None,
            http_status: None,
            refreshed: false,
            token_fingerprint: None,
            expires_in_s: None,
        },
        Ok(got) => {
            let checked = api.check_models(&got.token).await;
            let (problem, reason) = match &checked {
                Ok(()) => (None, None),
                Err(e) => {
                    let (p, r) = explain_api_error(e);
                    (Some(p), Some(r))
                }
            };
            ValidateReport {
                valid: checked.is_ok(),
                source: got.source,
                problem,
                reason,
                http_status: match &checked {
                    Ok(()) => Some(200),
                    Err(e) => e.status(),
                },
                endpoint: Some(endpoint),
                refreshed: got.refreshed,
                token_fingerprint: Some(got.token.fingerprint()),
                expires_in_s: Some((got.expires_at_ms as i64 - now_ms() as i64) / 1000),
            }
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_validate(&report));
    }
    Ok(if report.valid { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn render_validate(r: &ValidateReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if r.valid {
        let endpoint = r.endpoint.as_deref().unwrap_or("the API");
        let _ = writeln!(out, "valid:         yes (GET {endpoint} accepted the token)");
    } else {
        let _ = writeln!(out, "valid:         no");
        if let Some(reason) = &r.reason {
            let _ = writeln!(out, "reason:        {reason}");
        }
    }
    let _ = writeln!(out, "source:        {}", r.source);
    if r.refreshed {
        let _ = writeln!(out, "refreshed:     yes (the token had expired; the rotated pair was saved)");
    }
    if let Some(fp) = &r.token_fingerprint {
        let _ = writeln!(out, "token:         {fp}");
    }
    if let Some(s) = r.expires_in_s {
        let _ = writeln!(out, "expires in:    {}", human_secs(s));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// info

#[derive(Debug, Serialize)]
struct InfoReport {
    #[serde(flatten)]
    source: TokenSource,
    #[serde(flatten)]
    profile: Profile,
    plan: Option<String>,
    subscription_type: Option<String>,
}

pub async fn info(args: AccountArgs) -> anyhow::Result<ExitCode> {
    let oauth = oauth_client(&args.endpoint)?;
    let api = Api::new(oauth.http().clone(), &args.endpoint.api_base);
    let got = match obtain_token(&args, &oauth).await {
        Ok(got) => got,
        Err(e) => {
            eprintln!("sidecred-agent: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let profile = match api.profile(&got.token).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sidecred-agent: {}", explain_api_error(&e).1);
            return Ok(ExitCode::FAILURE);
        }
    };
    let report = InfoReport {
        source: got.source,
        plan: profile.plan(),
        subscription_type: profile.subscription_type(),
        profile,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_info(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn render_info(r: &InfoReport) -> String {
    use std::fmt::Write;
    let p = &r.profile;
    let unknown = || "(unknown)".to_owned();
    let mut out = String::new();
    let _ = writeln!(out, "email:         {}", p.email.clone().unwrap_or_else(unknown));
    if let Some(name) = &p.display_name {
        let _ = writeln!(out, "name:          {name}");
    }
    if let Some(uuid) = &p.account_uuid {
        let _ = writeln!(out, "account uuid:  {uuid}");
    }
    let _ = writeln!(out, "organization:  {}", p.organization_name.clone().unwrap_or_else(unknown));
    if let Some(uuid) = &p.organization_uuid {
        let _ = writeln!(out, "org uuid:      {uuid}");
    }
    let _ = writeln!(out, "plan:          {}", r.plan.clone().unwrap_or_else(unknown));
    if let Some(t) = &p.organization_type {
        let _ = writeln!(out, "org type:      {t}");
    }
    if let Some(t) = &p.rate_limit_tier {
        let _ = writeln!(out, "rate limits:   {t}");
    }
    if let Some(b) = &p.billing_type {
        let _ = writeln!(out, "billing:       {b}");
    }
    let _ = writeln!(out, "source:        {}", r.source);
    out
}

// ---------------------------------------------------------------------------------------------
// logout

/// What logging out of a file means, decided from its content before anything is changed.
#[derive(Debug, PartialEq)]
enum LogoutPlan {
    /// Remove `claudeAiOauth` and keep these other top-level keys.
    RemoveBlock { kept: Vec<String> },
    /// The file holds nothing but the login (or cannot be parsed): remove it.
    RemoveFile,
    /// The file holds other things but no login.
    NothingToDo,
}

fn plan_logout(bytes: &[u8]) -> LogoutPlan {
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(bytes) else {
        return LogoutPlan::RemoveFile;
    };
    let kept: Vec<String> = doc.keys().filter(|k| *k != CLAUDE_KEY).cloned().collect();
    let flat = doc.contains_key("access_token") || doc.contains_key("refresh_token");
    if doc.contains_key(CLAUDE_KEY) && !kept.is_empty() && !flat {
        LogoutPlan::RemoveBlock { kept }
    } else if doc.contains_key(CLAUDE_KEY) || flat || doc.is_empty() {
        LogoutPlan::RemoveFile
    } else {
        LogoutPlan::NothingToDo
    }
}

pub fn logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let shown = args.credentials.display().to_string();
    let path = resolve_symlinks(&args.credentials);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("Nothing to do: there are no credentials at {shown}.");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => anyhow::bail!("cannot read {shown}: {e}"),
    };
    let plan = plan_logout(&bytes);
    let question = match &plan {
        LogoutPlan::NothingToDo => {
            println!("Nothing to do: {shown} holds no Claude login (no `{CLAUDE_KEY}`).");
            return Ok(ExitCode::SUCCESS);
        }
        LogoutPlan::RemoveBlock { kept } => {
            format!("Remove the Claude login from {shown}? ({} kept) [y/N] ", kept.join(", "))
        }
        LogoutPlan::RemoveFile => format!("Remove {shown} and the Claude login in it? [y/N] "),
    };
    if !args.yes {
        if !stdin_is_terminal() {
            anyhow::bail!(
                "refusing to remove the login from {shown} without confirmation: stdin is not a terminal \
                 to ask on; pass --yes"
            );
        }
        eprint!("{question}");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            eprintln!("Not logged out; {shown} is unchanged.");
            return Ok(ExitCode::FAILURE);
        }
    }
    match &plan {
        LogoutPlan::RemoveBlock { kept } => {
            let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(&bytes) else {
                anyhow::bail!("{shown} changed while logging out; nothing was done")
            };
            doc.remove(CLAUDE_KEY);
            write_atomic(&path, &to_pretty_bytes(&Value::Object(doc)))?;
            println!("Logged out: removed the Claude login from {shown} (kept {}).", kept.join(", "));
        }
        LogoutPlan::RemoveFile => {
            std::fs::remove_file(&path).map_err(|e| anyhow::anyhow!("cannot remove {shown}: {e}"))?;
            println!("Logged out: removed {shown}.");
        }
        LogoutPlan::NothingToDo => {}
    }
    println!(
        "Copies of these credentials elsewhere (pods, Kubernetes Secrets, other machines) keep working: their\n\
         access token stays valid until it expires (hours), and their refresh token keeps renewing it.\n\
         Logout only deletes this local copy; the refresh token is not revoked at Anthropic. To cut every\n\
         copy off, delete those copies too (for example `kubectl delete secret sidecred-credentials`) or\n\
         sign out of the session in your Claude account settings. A running sidecred-agent keeps the\n\
         token it holds in memory (and in its --state-dir) until it is stopped."
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------

pub fn human_secs(s: i64) -> String {
    let d = humantime::format_duration(std::time::Duration::from_secs(s.unsigned_abs()));
    if s < 0 {
        format!("-{d}")
    } else {
        d.to_string()
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join(".credentials.json");
        std::fs::write(&p, body).expect("write");
        p
    }

    #[test]
    fn file_status_states() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_800_000_000_000u64;
        let missing = file_status(&dir.path().join("nope.json"), now);
        assert_eq!(missing.state, FileState::Missing);

        let p = write(
            dir.path(),
            r#"{"claudeAiOauth":{"accessToken":"sk-secret-a","refreshToken":"sk-secret-r","expiresAt":1800000600000,"scopes":["user:inference"],"subscriptionType":"max"}}"#,
        );
        let valid = file_status(&p, now);
        assert_eq!(valid.state, FileState::Valid);
        assert_eq!(valid.expires_in_s, Some(600));
        assert_eq!(valid.subscription_type.as_deref(), Some("max"));
        let text = render_file_status(&valid) + &serde_json::to_string(&valid).expect("json");
        assert!(!text.contains("sk-secret"), "{text}");

        let expired = file_status(&p, now + 3_600_000);
        assert_eq!(expired.state, FileState::Expired);
        assert!(render_file_status(&expired).contains("expired:       50m ago"));

        let p = write(
            dir.path(),
            r#"{"claudeAiOauth":{"accessToken":"sk-secret-a","refreshToken":"r","expiresAt":"soon"}}"#,
        );
        let bad = file_status(&p, now);
        assert_eq!(bad.state, FileState::Unreadable);
        assert_eq!(bad.field.as_deref(), Some("claudeAiOauth.expiresAt"));

        let p = write(dir.path(), r#"{"mcpOAuth":{}}"#);
        assert_eq!(file_status(&p, now).state, FileState::Missing);

        let p = write(dir.path(), "garbage sk-secret");
        let garbage = file_status(&p, now);
        assert_eq!(garbage.state, FileState::Unreadable);
        assert!(!garbage.problem.unwrap_or_default().contains("sk-secret"));
    }

    #[test]
    fn file_status_text_is_aligned_and_says_what_to_do_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_800_000_000_000u64;
        let p = write(
            dir.path(),
            r#"{"claudeAiOauth":{"accessToken":"sk-secret-a","refreshToken":"sk-secret-r","expiresAt":1800000600000,"scopes":["user:inference"],"subscriptionType":"max","emailAddress":"me@example.com"}}"#,
        );
        let shown = p.display().to_string();
        let mut valid = file_status(&p, now);
        valid.agent = Some("no agent answered on /run/s.sock".into());
        let fp = valid.token_fingerprint.clone().expect("fingerprint");
        assert_eq!(
            render_file_status(&valid),
            format!(
                "source:        file (no agent answered on /run/s.sock)\n\
                 credentials:   {shown}\n\
                 state:         valid\n\
                 account:       me@example.com\n\
                 subscription:  max\n\
                 token:         {fp}\n\
                 expires in:    10m\n\
                 expires at:    2027-01-15T08:10:00Z\n\
                 scopes:        user:inference\n"
            )
        );
        let expired = file_status(&p, now + 3_600_000);
        assert_eq!(
            render_file_status(&expired),
            format!(
                "source:        file\n\
                 credentials:   {shown}\n\
                 state:         expired\n\
                 account:       me@example.com\n\
                 subscription:  max\n\
                 token:         {fp}\n\
                 expired:       50m ago\n\
                 expires at:    2027-01-15T08:10:00Z\n\
                 scopes:        user:inference\n\
                 next step:     sidecred-agent validate --credentials {shown} (refreshes it), or start the agent\n"
            )
        );
        let p = write(
            dir.path(),
            r#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":"soon"}}"#,
        );
        let bad = file_status(&p, now);
        let problem = bad.problem.clone().expect("problem");
        assert_eq!(
            render_file_status(&bad),
            format!(
                "source:        file\n\
                 credentials:   {shown}\n\
                 state:         unreadable\n\
                 problem:       {problem}\n\
                 field:         claudeAiOauth.expiresAt\n"
            )
        );
        let gone = dir.path().join("gone.json");
        let gone_shown = gone.display().to_string();
        let missing = file_status(&gone, now);
        let problem = missing.problem.clone().expect("problem");
        assert_eq!(
            render_file_status(&missing),
            format!(
                "source:        file\n\
                 credentials:   {gone_shown}\n\
                 state:         missing\n\
                 problem:       {problem}\n\
                 next step:     sidecred-agent login --credentials {gone_shown}\n"
            )
        );
    }

    #[test]
    fn validate_text_is_aligned() {
        let valid = ValidateReport {
            valid: true,
            source: TokenSource::File { credentials: "/c.json".into() },
            problem: None,
            reason: None,
            endpoint: Some("https://api.test/v1/models".into()),
            http_status: Some(200),
            refreshed: true,
            token_fingerprint: Some("sha256:abcd".into()),
            expires_in_s: Some(28_800),
        };
        assert_eq!(
            render_validate(&valid),
            "valid:         yes (GET https://api.test/v1/models accepted the token)\n\
             source:        file (/c.json)\n\
             refreshed:     yes (the token had expired; the rotated pair was saved)\n\
             token:         sha256:abcd\n\
             expires in:    8h\n"
        );
        let invalid = ValidateReport {
            valid: false,
            source: TokenSource::Agent { socket: "/run/s.sock".into() },
            problem: Some("revoked"),
            reason: Some("the API rejected the token".into()),
            endpoint: None,
            http_status: Some(401),
            refreshed: false,
            token_fingerprint: None,
            expires_in_s: None,
        };
        assert_eq!(
            render_validate(&invalid),
            "valid:         no\n\
             reason:        the API rejected the token\n\
             source:        agent (/run/s.sock)\n"
        );
    }

    #[test]
    fn info_text_is_aligned_and_names_unknowns() {
        let full = InfoReport {
            source: TokenSource::File { credentials: "/c.json".into() },
            profile: Profile {
                email: Some("me@example.com".into()),
                display_name: Some("Me".into()),
                account_uuid: Some("acc-1".into()),
                organization_name: Some("Org".into()),
                organization_uuid: Some("org-1".into()),
                organization_type: Some("claude_max".into()),
                billing_type: Some("stripe".into()),
                rate_limit_tier: Some("tier-20x".into()),
                has_claude_max: Some(true),
                has_claude_pro: None,
            },
            plan: Some("Claude Max".into()),
            subscription_type: Some("max".into()),
        };
        assert_eq!(
            render_info(&full),
            "email:         me@example.com\n\
             name:          Me\n\
             account uuid:  acc-1\n\
             organization:  Org\n\
             org uuid:      org-1\n\
             plan:          Claude Max\n\
             org type:      claude_max\n\
             rate limits:   tier-20x\n\
             billing:       stripe\n\
             source:        file (/c.json)\n"
        );
        let bare = InfoReport {
            source: TokenSource::Agent { socket: "/s".into() },
            profile: Profile::default(),
            plan: None,
            subscription_type: None,
        };
        assert_eq!(
            render_info(&bare),
            "email:         (unknown)\n\
             organization:  (unknown)\n\
             plan:          (unknown)\n\
             source:        agent (/s)\n"
        );
    }

    #[test]
    fn logout_plans() {
        assert_eq!(
            plan_logout(br#"{"claudeAiOauth":{},"mcpOAuth":{}}"#),
            LogoutPlan::RemoveBlock { kept: vec!["mcpOAuth".into()] }
        );
        assert_eq!(plan_logout(br#"{"claudeAiOauth":{}}"#), LogoutPlan::RemoveFile);
        assert_eq!(
            plan_logout(br#"{"access_token":"a","refresh_token":"r","email":"x"}"#),
            LogoutPlan::RemoveFile
        );
        assert_eq!(plan_logout(b"not json"), LogoutPlan::RemoveFile);
        assert_eq!(plan_logout(br#"{"mcpOAuth":{}}"#), LogoutPlan::NothingToDo);
    }

    #[test]
    fn api_errors_are_explained() {
        let status = |s: u16| ApiError::Status {
            endpoint: "https://api.test/v1/models".into(),
            status: s,
            error_type: None,
            message: None,
        };
        assert_eq!(explain_api_error(&status(401)).0, "revoked");
        assert_eq!(explain_api_error(&status(403)).0, "scope_missing");
        assert_eq!(explain_api_error(&status(500)).0, "api_error");
        let net = ApiError::Transport { endpoint: "x".into(), detail: "connection refused".into() };
        assert_eq!(explain_api_error(&net).0, "network");
    }
}
