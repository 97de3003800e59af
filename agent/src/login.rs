//! `sidecred-agent login`: the OAuth 2.0 authorization-code flow with PKCE (S256) against Claude's
//! authorize and token endpoints.
//!
//! Two ways for the code to come back:
//! - **paste** (headless): the redirect URI is Claude's own callback page, which shows `CODE#STATE`;
//!   the person copies it into the terminal.
//! - **browser**: the redirect URI is `http://localhost:<port>/callback`, served here for one request.
//!
//! The `oauth2` crate builds the authorize URL, the PKCE pair and the CSRF state; the code exchange is
//! a JSON request sent by [`OAuthClient::exchange_code`]. The verifier, the code, the state and the
//! tokens live in [`Secret`]s and never reach a log, an error or a panic message. Nothing is written
//! unless the whole flow succeeded.

use crate::api::{Api, Profile};
use crate::atomic::{check_replaceable, resolve_symlinks, write_atomic, WriteError};
use crate::cli::{LoginArgs, LoginMode, Output};
use crate::credentials::{json_fault, now_ms, Credentials};
use crate::oauth::{OAuthClient, OAuthConfig, TokenError};
use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};
use serde_json::{Map, Value};
use sidecred_proto::Secret;
use std::io::{BufRead, IsTerminal, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long one browser connection may take to send its request line and headers.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_HEAD_MAX: usize = 16 * 1024;

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
    #[error("the login succeeded but could not be saved ({0}); run login again with a writable --credentials, or with --output -")]
    Save(WriteError),
}

fn human_duration(d: &Duration) -> String {
    humantime::format_duration(*d).to_string()
}

fn in_parens(text: &Option<String>) -> String {
    text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default()
}

/// Where the new credentials go.
enum Destination {
    File(PathBuf),
    Stdout,
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
        let scopes: Vec<Scope> = args.scopes.split_whitespace().map(|s| Scope::new(s.to_owned())).collect();
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

/// What the authorization server sent back through the redirect (or the pasted text).
#[derive(Debug)]
enum Callback {
    Code { code: Secret, state: Secret },
    Denied { error: String, description: Option<String> },
    Incomplete,
}

impl Callback {
    /// Reads `code`/`state` (or `error`) from a redirect's query string.
    fn from_query(query: &str) -> Callback {
        let mut code = None;
        let mut state = None;
        let mut error = None;
        let mut description = None;
        for (k, v) in oauth2::url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "code" if !v.is_empty() => code = Some(Secret::new(v.into_owned())),
                "state" if !v.is_empty() => state = Some(Secret::new(v.into_owned())),
                "error" => error = Some(printable(&v)),
                "error_description" => description = Some(printable(&v)),
                _ => {}
            }
        }
        match (code, state, error) {
            (_, _, Some(error)) => Callback::Denied { error, description },
            (Some(code), Some(state), None) => Callback::Code { code, state },
            _ => Callback::Incomplete,
        }
    }

    /// Reads what a person pasted: `CODE#STATE` as Claude's callback page shows it, or the whole
    /// callback URL. `None` when it is neither.
    fn from_pasted(text: &str) -> Option<Callback> {
        let text = text.trim();
        if text.starts_with("http://") || text.starts_with("https://") {
            let url = oauth2::url::Url::parse(text).ok()?;
            return url.query().map(Callback::from_query).filter(|c| !matches!(c, Callback::Incomplete));
        }
        let (code, state) = text.split_once('#')?;
        let valid = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace) && !s.contains('#');
        if valid(code) && valid(state) {
            Some(Callback::Code { code: Secret::new(code), state: Secret::new(state) })
        } else {
            None
        }
    }

    fn into_code(self, expected_state: &Secret) -> Result<Secret, LoginError> {
        match self {
            // Secret's equality is constant-time.
            Callback::Code { code, state } if state == *expected_state => Ok(code),
            Callback::Code { .. } => Err(LoginError::StateMismatch),
            Callback::Denied { error, description } => Err(LoginError::Denied { error, description }),
            Callback::Incomplete => Err(LoginError::Incomplete),
        }
    }
}

/// An error text from the other side, kept short and printable.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

pub async fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let destination = match args.output {
        Some(Output::Stdout) => Destination::Stdout,
        None => Destination::File(resolve_symlinks(&args.credentials)),
    };
    // Fail before the person signs in, not after: a code cannot be exchanged twice.
    if let Destination::File(path) = &destination {
        prepare_destination(path)?;
    }
    let oauth = OAuthClient::new(OAuthConfig {
        token_url: args.endpoint.token_url.clone(),
        client_id: args.endpoint.client_id.clone(),
        user_agent: args.endpoint.user_agent.clone(),
        timeout: args.endpoint.request_timeout,
    })?;
    let mode = args.mode.unwrap_or_else(default_mode);
    let deadline = Instant::now() + args.timeout;

    let (attempt, callback, browser) = match mode {
        LoginMode::Paste => {
            let attempt = Attempt::new(&args, &args.redirect_uri)?;
            let callback = read_pasted_code(&attempt, deadline, args.timeout).await?;
            (attempt, callback, None)
        }
        LoginMode::Browser => {
            let loopback = Loopback::bind(args.port).await?;
            let attempt = Attempt::new(&args, &loopback.redirect_uri())?;
            announce_browser(&attempt, args.timeout, !args.no_open);
            let waited = tokio::time::timeout_at(deadline, loopback.wait_for_callback()).await;
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
            Ok(done) => Page::success(done),
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
        match destination {
            Destination::File(path) => format!(
                "Logged in as {}. Credentials saved to {} (mode 0600).\n\
                 Check them with: sidecred-agent status --credentials {}",
                self.who(),
                path.display(),
                path.display()
            ),
            Destination::Stdout => format!("Logged in as {}. Credentials written to stdout.", self.who()),
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
    let code = callback.into_code(&attempt.state)?;
    let response = oauth
        .exchange_code(&code, &attempt.verifier, &attempt.redirect_uri, &attempt.state)
        .await
        .map_err(|e| match e {
            TokenError::Rejected { reason } => LoginError::CodeRejected(reason),
            TokenError::Transient { reason, .. } => LoginError::Exchange(reason),
        })?;
    let arrived_ms = now_ms();
    if response.refresh_token.is_none() {
        return Err(LoginError::NoRefreshToken { url: args.endpoint.token_url.clone() });
    }
    let token_email = response.account_email.clone();
    let update = response.into_update(arrived_ms);

    // The plan is a nicety: a login without it is still a login.
    let api = Api::new(oauth.http().clone(), &args.endpoint.api_base);
    let profile = match api.profile(&update.access_token).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("note: could not read the account profile ({e}); subscriptionType is left out");
            Profile::default()
        }
    };
    let subscription = profile.subscription_type();
    let tier = profile.rate_limit_tier.clone();

    match destination {
        Destination::Stdout => {
            let creds =
                Credentials::new_claude_code(update).with_plan(subscription.as_deref(), tier.as_deref());
            let mut out = std::io::stdout().lock();
            out.write_all(&creds.to_bytes()).and_then(|()| out.flush()).map_err(|source| {
                LoginError::Save(WriteError::Io { path: PathBuf::from("<stdout>"), source })
            })?;
        }
        Destination::File(path) => {
            // Read again: the file may have changed while the person was signing in.
            let creds = match read_existing(path)? {
                Existing::Absent => Credentials::new_claude_code(update),
                Existing::Credentials(c) => c.with_update(update),
                Existing::Other(doc) => Credentials::claude_code_in(doc, update),
            }
            .with_plan(subscription.as_deref(), tier.as_deref());
            write_atomic(path, &creds.to_bytes()).map_err(LoginError::Save)?;
        }
    }
    Ok(Done { email: profile.email.clone().or(token_email), plan: profile.plan() })
}

/// The paste mode: print the URL, then read `CODE#STATE` lines from stdin until one parses.
async fn read_pasted_code(
    attempt: &Attempt,
    deadline: Instant,
    timeout: Duration,
) -> Result<Callback, LoginError> {
    eprintln!("To log in, open this URL in a browser (on any machine) and sign in with your Claude account:");
    eprintln!();
    eprintln!("{}", attempt.url);
    eprintln!();
    eprintln!("After you authorize, the page shows a code of the form CODE#STATE.");
    let mut lines = spawn_stdin_reader();
    loop {
        eprint!("Paste the code here and press Enter: ");
        let _ = std::io::stderr().flush();
        let line = match tokio::time::timeout_at(deadline, lines.recv()).await {
            Err(_) => {
                eprintln!();
                return Err(LoginError::Timeout { after: timeout, hint: "" });
            }
            Ok(None) => {
                eprintln!();
                return Err(LoginError::StdinClosed);
            }
            Ok(Some(Err(e))) => return Err(LoginError::Stdin(e)),
            Ok(Some(Ok(line))) => line,
        };
        if !stdin_is_terminal() {
            // Nothing echoed the piped line: end the prompt's line ourselves.
            eprintln!();
        }
        if line.expose().trim().is_empty() {
            continue;
        }
        match Callback::from_pasted(line.expose()) {
            Some(callback) => return Ok(callback),
            None => eprintln!(
                "That is not a code of the form CODE#STATE (copy the whole code from the page, including the `#`)."
            ),
        }
    }
}

/// Reads stdin lines on a plain thread: tokio's stdin cannot be cancelled, and a timed-out login must
/// be able to exit while a read is pending.
fn spawn_stdin_reader() -> mpsc::Receiver<std::io::Result<Secret>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line.map(Secret::new)).is_err() {
                break;
            }
        }
    });
    rx
}

fn announce_browser(attempt: &Attempt, timeout: Duration, open: bool) {
    let opened = open && open_browser(&attempt.url);
    if opened {
        eprintln!("Opening a browser to log in. If it does not open, visit this URL on this machine:");
    } else {
        eprintln!("To log in, visit this URL in a browser on this machine:");
    }
    eprintln!();
    eprintln!("{}", attempt.url);
    eprintln!();
    eprintln!(
        "Waiting up to {} for the browser to come back to {} ...",
        humantime::format_duration(timeout),
        attempt.redirect_uri
    );
}

/// Starts the desktop's browser on `url`; a failure (no `xdg-open`, no desktop) only means the person
/// opens the printed URL by hand.
fn open_browser(url: &str) -> bool {
    let program = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    match std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            // Reap it whenever it exits; the login does not wait for it.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            true
        }
        Err(_) => false,
    }
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

/// The loopback listener of the browser mode: `localhost` may resolve to either address family, so
/// both are served on one port.
struct Loopback {
    v4: TcpListener,
    v6: Option<TcpListener>,
    port: u16,
}

impl Loopback {
    async fn bind(port: u16) -> Result<Loopback, LoginError> {
        let v4_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let v4 = TcpListener::bind(v4_addr)
            .await
            .map_err(|source| LoginError::Listen { addr: v4_addr.to_string(), source })?;
        let port = v4
            .local_addr()
            .map_err(|source| LoginError::Listen { addr: v4_addr.to_string(), source })?
            .port();
        // Hosts without IPv6 simply get no second listener.
        let v6 = TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await.ok();
        Ok(Loopback { v4, v6, port })
    }

    fn redirect_uri(&self) -> String {
        format!("http://localhost:{}/callback", self.port)
    }

    async fn accept(&self) -> std::io::Result<TcpStream> {
        let (stream, _) = match &self.v6 {
            Some(v6) => tokio::select! {
                r = self.v4.accept() => r?,
                r = v6.accept() => r?,
            },
            None => self.v4.accept().await?,
        };
        Ok(stream)
    }

    /// Serves requests until one reaches `/callback`; returns what it carried and its connection, to
    /// be answered once the login has finished. Other requests (a favicon) get a 404.
    async fn wait_for_callback(&self) -> Result<(Callback, TcpStream), LoginError> {
        let (tx, mut rx) = mpsc::channel::<(String, TcpStream)>(8);
        loop {
            tokio::select! {
                accepted = self.accept() => {
                    let mut stream = accepted
                        .map_err(|source| LoginError::Listen { addr: self.redirect_uri(), source })?;
                    let tx = tx.clone();
                    // Each connection reads its request on its own, so a browser's idle pre-connection
                    // cannot hold up the one that carries the code.
                    tokio::spawn(async move {
                        if let Some(target) = read_request_target(&mut stream).await {
                            let _ = tx.send((target, stream)).await;
                        }
                    });
                }
                Some((target, stream)) = rx.recv() => {
                    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
                    if path == "/callback" {
                        return Ok((Callback::from_query(query), stream));
                    }
                    tokio::spawn(Page::not_found().send(stream));
                }
            }
        }
    }
}

/// Reads one request head and returns its target (`/callback?code=..`) when it is a GET; answers
/// anything else itself.
async fn read_request_target(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(REQUEST_HEAD_TIMEOUT, async {
        let mut buf = [0u8; 2048];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_HEAD_MAX {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Some(())
    })
    .await;
    if !matches!(read, Ok(Some(()))) {
        return None;
    }
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    if method != "GET" {
        let _ = stream
            .write_all(
                Page::response("405 Method Not Allowed", "Not allowed", "Only GET is served here.")
                    .as_bytes(),
            )
            .await;
        return None;
    }
    Some(target.to_owned())
}

/// The small page the browser shows once the redirect reached us.
struct Page {
    status: &'static str,
    title: &'static str,
    message: String,
}

impl Page {
    fn success(done: &Done) -> Page {
        Page {
            status: "200 OK",
            title: "sidecred: logged in",
            message: format!(
                "Logged in as {}. You can close this tab and return to the terminal.",
                done.who()
            ),
        }
    }

    fn failure(reason: &str) -> Page {
        Page {
            status: "400 Bad Request",
            title: "sidecred: login failed",
            message: format!("The login failed: {reason}. You can close this tab; the terminal says more."),
        }
    }

    fn not_found() -> Page {
        Page { status: "404 Not Found", title: "Not found", message: "Nothing here.".into() }
    }

    fn response(status: &str, title: &str, message: &str) -> String {
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body style=\"font-family: sans-serif; margin: 3em\"><h1>{t}</h1><p>{m}</p></body></html>\n",
            t = html_escape(title),
            m = html_escape(message)
        );
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    async fn send(self, mut stream: TcpStream) {
        let bytes = Page::response(self.status, self.title, &self.message);
        let _ = tokio::time::timeout(REQUEST_HEAD_TIMEOUT, async {
            let _ = stream.write_all(bytes.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// What is at the destination now.
enum Existing {
    Absent,
    Credentials(Credentials),
    /// A JSON object without usable credentials (only `mcpOAuth`, a damaged block): kept around the
    /// new login.
    Other(Map<String, Value>),
}

fn read_existing(path: &Path) -> Result<Existing, LoginError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Absent),
        Err(e) => {
            return Err(LoginError::Existing {
                path: path.to_owned(),
                problem: format!("cannot be read ({e})"),
            })
        }
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| LoginError::Existing {
        path: path.to_owned(),
        problem: format!("is not valid JSON ({})", json_fault(&e)),
    })?;
    let Value::Object(doc) = value else {
        return Err(LoginError::Existing { path: path.to_owned(), problem: "is not a JSON object".into() });
    };
    Ok(match Credentials::from_value(Value::Object(doc.clone()), path) {
        Ok(c) => Existing::Credentials(c),
        Err(_) => Existing::Other(doc),
    })
}

/// Creates the directory (0700, like Claude Code's ~/.claude), checks that the file can be replaced
/// and that an existing file is one we can merge into.
fn prepare_destination(path: &Path) -> Result<(), LoginError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| LoginError::CreateDir { dir: dir.to_owned(), source })?;
    }
    check_replaceable(path).map_err(LoginError::NotWritable)?;
    read_existing(path).map(|_| ())
}

/// Whether stdin is a terminal a person can answer on.
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use sidecred_proto::anthropic::{DEFAULT_MANUAL_REDIRECT_URI, DEFAULT_SCOPES};

    fn args(extra: &[&str]) -> LoginArgs {
        let mut argv = vec!["sidecred-agent", "login"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Login(a) => a,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn authorize_url_carries_pkce_s256_state_scopes_and_code_true() {
        let a = Attempt::new(&args(&[]), DEFAULT_MANUAL_REDIRECT_URI).expect("attempt");
        let url = oauth2::url::Url::parse(&a.url).expect("url");
        assert_eq!(url.host_str(), Some("claude.ai"));
        assert_eq!(url.path(), "/oauth/authorize");
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
    fn pasted_text_forms() {
        let state = Secret::new("st");
        let ok = |s: &str| Callback::from_pasted(s).expect(s).into_code(&state).expect(s);
        assert_eq!(ok("abc#st").expose(), "abc");
        assert_eq!(ok("  abc#st \n").expose(), "abc");
        assert_eq!(ok("https://platform.claude.com/oauth/code/callback?code=abc&state=st").expose(), "abc");
        assert!(Callback::from_pasted("abc").is_none());
        assert!(Callback::from_pasted("#st").is_none());
        assert!(Callback::from_pasted("abc#").is_none());
        assert!(Callback::from_pasted("a b#st").is_none());
        assert!(Callback::from_pasted("https://x.test/cb?foo=1").is_none());
        let wrong = Callback::from_pasted("abc#other").expect("parses");
        assert!(matches!(wrong.into_code(&state), Err(LoginError::StateMismatch)));
    }

    #[test]
    fn redirect_query_forms() {
        let state = Secret::new("st");
        assert_eq!(
            Callback::from_query("code=c%2B1&state=st").into_code(&state).expect("code").expose(),
            "c+1"
        );
        let denied = Callback::from_query("error=access_denied&error_description=User%20said%20no&state=st");
        let err = denied.into_code(&state).expect_err("denied").to_string();
        assert!(err.contains("access_denied") && err.contains("User said no"), "{err}");
        assert!(matches!(Callback::from_query("state=st").into_code(&state), Err(LoginError::Incomplete)));
    }

    #[test]
    fn errors_never_show_the_code_or_state() {
        let c = Callback::from_pasted("sctest-code#sctest-state").expect("parses");
        let err = c.into_code(&Secret::new("x")).expect_err("mismatch");
        assert!(!err.to_string().contains("sctest"));
        assert!(!format!("{err:?}").contains("sctest"));
    }

    #[test]
    fn pages_escape_html() {
        let r = Page::response("400 Bad Request", "t", "<script>");
        assert!(r.contains("&lt;script&gt;"));
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    }

    #[tokio::test]
    async fn loopback_serves_one_callback_and_404s_the_rest() {
        let lb = Loopback::bind(0).await.expect("bind");
        assert!(lb.redirect_uri().starts_with("http://localhost:"));
        let port = lb.port;
        let client = tokio::spawn(async move {
            let mut favicon = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            favicon.write_all(b"GET /favicon.ico HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
            let mut answer = String::new();
            favicon.read_to_string(&mut answer).await.expect("read");
            assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
            // An idle connection must not block the real one.
            let _idle = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            let mut cb = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            cb.write_all(b"GET /callback?code=c&state=s HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .expect("write");
            let mut answer = String::new();
            cb.read_to_string(&mut answer).await.expect("read");
            answer
        });
        let (callback, stream) = lb.wait_for_callback().await.expect("callback");
        let code = callback.into_code(&Secret::new("s")).expect("code");
        assert_eq!(code.expose(), "c");
        Page::success(&Done { email: Some("me@example.com".into()), plan: None }).send(stream).await;
        let answer = client.await.expect("client");
        assert!(answer.contains("You can close this tab"), "{answer}");
    }
}
