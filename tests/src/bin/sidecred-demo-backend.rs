//! `sidecred-demo-backend`: a stand-in for Claude's token endpoint and the Messages API on this machine,
//! for `scripts/run-local.sh --demo` and the Compose demo (`deploy/compose/compose.demo.yaml`). It runs the
//! end-to-end tests' fakes (`sidecred_tests::fakes`), not a second implementation of them: the token
//! endpoint rotates the refresh token on every refresh and issues access tokens that live a minute; the
//! API accepts only tokens the endpoint issued and streams its answers. Every answer says it comes from
//! this demo. Nothing here talks to Claude, and no account is involved.
//!
//! It issues one login and writes it as Claude Code's credentials file (`--credentials`), with an access
//! token that expires half a minute later; prints its addresses and that file on stdout; then logs on
//! stderr what each endpoint was asked, by token fingerprint, so a refresh shows as a new fingerprint.

use anyhow::Context;
use clap::Parser;
use sidecred_proto::fingerprint;
use sidecred_tests::fakes::claude_oauth::FakeOAuth;
use sidecred_tests::fakes::upstream::FakeUpstream;
use sidecred_tests::harness::now_ms;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The demo login's access token expires this soon after start, so the agent's first refresh is seen
/// within seconds (run-local.sh gives the agent `--refresh-margin 20s`: 10 s after start).
const SEED_EXPIRES_IN: Duration = Duration::from_secs(30);
/// The lifetime of the access tokens the stand-in issues (a real one lives hours): with a 20 s margin
/// the agent refreshes every 40 s.
const TOKEN_LIFETIME_S: u64 = 60;
/// What every answer says, streamed in [`ANSWER_DELTAS`] pieces [`ANSWER_GAP`] apart so that a client
/// shows it arriving.
const ANSWER: &str = "Hello from the sidecred demo. This is not Claude: a stand-in on your machine \
answered, through sidecred-forwarder, with the token that sidecred-agent keeps fresh.";
const ANSWER_DELTAS: usize = 12;
const ANSWER_GAP: Duration = Duration::from_millis(100);

#[derive(Parser)]
#[command(
    name = "sidecred-demo-backend",
    about = "A local stand-in for Claude's token endpoint and the Messages API, for sidecred's demo \
             (scripts/run-local.sh --demo). Not Claude: no account is involved and nothing leaves the machine."
)]
struct Args {
    /// Where to write the demo login, as Claude Code's credentials file (replaced, mode 0600).
    #[arg(long, required_unless_present = "probe")]
    credentials: Option<PathBuf>,
    /// The address of the stand-in token endpoint (`/v1/oauth/token`).
    #[arg(long, default_value = "127.0.0.1:0")]
    token_listen: SocketAddr,
    /// The address of the stand-in Messages API (`/v1/messages`, `/v1/models`, ...).
    #[arg(long, default_value = "127.0.0.1:0")]
    api_listen: SocketAddr,
    /// Only check that this address accepts connections, and exit 0 if it does: a healthcheck for an
    /// image without a shell.
    #[arg(long, exclusive = true)]
    probe: Option<SocketAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidecred-demo-backend: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(addr) = args.probe {
        let connect = tokio::net::TcpStream::connect(addr);
        tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .with_context(|| format!("{addr} did not answer within 2 s"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        return Ok(());
    }
    let Some(credentials) = args.credentials else { anyhow::bail!("--credentials is required") };

    let oauth = FakeOAuth::bind(args.token_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--token-listen)", args.token_listen))?;
    oauth.set_expires_in(TOKEN_LIFETIME_S);
    let api = FakeUpstream::bind(oauth.access_check(), args.api_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--api-listen)", args.api_listen))?;
    api.set_answer(ANSWER);
    api.set_sse(ANSWER_DELTAS, ANSWER_GAP);

    let login = oauth.issue_pair();
    let expires_at_ms = now_ms() + SEED_EXPIRES_IN.as_millis() as u64;
    write_credentials(&credentials, &login.credentials_file(expires_at_ms))?;

    // One write, so that a script waiting for the last line has them all.
    let banner = format!(
        "sidecred-demo-backend: a stand-in for Claude's endpoints on this machine (not Claude; no account involved)\n\
         \x20 token endpoint: {}   (issues access tokens that live {TOKEN_LIFETIME_S} s)\n\
         \x20 Messages API:   {}\n\
         \x20 credentials:    {}   (a demo login; its access token expires in {} s)\n",
        oauth.token_url(),
        api.url(),
        credentials.display(),
        SEED_EXPIRES_IN.as_secs(),
    );
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(banner.as_bytes())?;
    stdout.flush()?;
    drop(stdout);

    tokio::select! {
        () = report(&oauth, &api) => Ok(()),
        result = stop_signal() => result,
    }
}

/// Writes `bytes` to `path` by way of a temporary file beside it, so the agent never reads half a file.
fn write_credentials(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp-demo");
    let write = || -> std::io::Result<()> {
        let mut file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write the demo credentials to {}", path.display()))
}

/// Logs, as it happens, each refresh the token endpoint answers, each request it refuses, and each API
/// request with the fingerprint of the token it carried.
async fn report(oauth: &FakeOAuth, api: &FakeUpstream) {
    let (mut rotations, mut rejections, mut requests) = (0, 0, 0);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        if oauth.rotations() > rotations {
            rotations = oauth.rotations();
            let token = oauth.latest_access_token().map_or_else(|| "none".to_owned(), |t| fingerprint(&t));
            eprintln!(
                "stand-in token endpoint: refresh {rotations} answered: new access token {token} \
                 (lives {TOKEN_LIFETIME_S} s), refresh token rotated"
            );
        }
        let refused = oauth.rejections();
        for why in refused.iter().skip(rejections) {
            eprintln!("stand-in token endpoint: refused a request: {why}");
        }
        rejections = refused.len();
        let seen_so_far = api.seen();
        for seen in seen_so_far.iter().skip(requests) {
            let token = seen.bearer().map_or_else(|| "none".to_owned(), fingerprint);
            let streamed = seen.json().is_some_and(|body| body["stream"] == true);
            eprintln!(
                "stand-in Messages API: {} {} -> {}{} with access token {token}",
                seen.method,
                seen.path,
                seen.status,
                if streamed { " (streamed)" } else { "" },
            );
        }
        requests = seen_so_far.len();
    }
}

/// Waits for SIGINT or SIGTERM: a container's first process must handle SIGTERM itself to stop at once.
async fn stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("stand-in: stopped");
    Ok(())
}
