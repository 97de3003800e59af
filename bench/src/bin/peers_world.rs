//! The outside world of `bench/peers.sh`'s correctness workloads: the end-to-end tests' fakes of
//! Claude's token endpoint and of the Messages API (`sidecred_tests::fakes`, not a second copy), plus a
//! control port the script reads counters from. The token endpoint rotates the single-use refresh token
//! on every refresh and answers after `--token-delay` (the real one takes a few hundred ms, which is the
//! window in which a proxy without a refresh lock sends a stampede); the API accepts only access tokens
//! the endpoint issued and has not revoked.
//!
//! Writes one login as Claude Code's credentials file (`--credentials`). With `--expired` its access token
//! is past its `expiresAt` and, as the real API would, no longer accepted upstream: only a refresh helps.
//!
//! Prints `token_url URL`, `api URL` and `control URL` on stdout, then serves until killed. Control:
//! `GET /counts` answers `{"refresh_requests":..,"rotations":..,"upstream_requests":..,"upstream_401":..}`;
//! `POST /revoke` makes every access token issued so far invalid upstream (refresh tokens stay live).

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use sidecred_tests::fakes::claude_oauth::FakeOAuth;
use sidecred_tests::fakes::server::FakeServer;
use sidecred_tests::fakes::upstream::FakeUpstream;
use sidecred_tests::harness::{now_ms, HOUR_MS};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Where to write the login, as Claude Code's credentials file (replaced, mode 0600).
    #[arg(long)]
    credentials: PathBuf,
    /// The login's access token has expired (and the API refuses it).
    #[arg(long)]
    expired: bool,
    /// How long the token endpoint takes to answer.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    token_delay: Duration,
}

struct World {
    oauth: FakeOAuth,
    api: FakeUpstream,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let oauth = FakeOAuth::bind(([127, 0, 0, 1], 0).into()).await.context("binding the token endpoint")?;
    oauth.set_delay(args.token_delay);
    let api = FakeUpstream::start(oauth.access_check()).await;
    let pair = oauth.issue_pair();
    let expires_at = if args.expired {
        oauth.revoke_access_tokens();
        now_ms().saturating_sub(60_000)
    } else {
        now_ms() + 8 * HOUR_MS
    };
    write_private(&args.credentials, &pair.credentials_file(expires_at))?;

    let token_url = oauth.token_url();
    let api_url = api.url();
    let world = Arc::new(World { oauth, api });
    let control = FakeServer::bind(([127, 0, 0, 1], 0).into(), move |req| {
        let world = world.clone();
        async move { Ok::<_, std::convert::Infallible>(control(&world, &req)) }
    })
    .await
    .context("binding the control port")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "token_url {token_url}")?;
    writeln!(out, "api {api_url}")?;
    writeln!(out, "control http://{}", control.addr)?;
    out.flush()?;
    drop(out);
    std::future::pending::<()>().await;
    Ok(())
}

fn control(world: &World, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/counts") => {
            let seen = world.api.seen();
            let counts = serde_json::json!({
                "refresh_requests": world.oauth.refresh_requests(),
                "rotations": world.oauth.rotations(),
                "upstream_requests": seen.len(),
                "upstream_401": seen.iter().filter(|s| s.status == 401).count(),
            });
            (StatusCode::OK, counts.to_string())
        }
        (&Method::POST, "/revoke") => {
            world.oauth.revoke_access_tokens();
            (StatusCode::OK, "{}".to_owned())
        }
        _ => (StatusCode::NOT_FOUND, "{}".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
