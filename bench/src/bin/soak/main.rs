//! The soak: `--streams` concurrent SSE streams through the real forwarder (and agent) for
//! `--duration`, each client opening its next stream as the last one ends, with refreshes forced at
//! even intervals in the middle. Every stream's bytes are compared with what the API sent; the
//! forwarder's RSS and descriptors are sampled throughout, and its descriptors must come back to the
//! baseline once the clients leave. Exits non-zero on any dropped or corrupted stream, a failed
//! refresh, or descriptors that do not come back. Run by `bench/soak.sh`.

mod fakes;
mod procs;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    agent: PathBuf,
    #[arg(long)]
    forwarder: PathBuf,
    /// Concurrent streams (one client connection each).
    #[arg(long, default_value_t = 1000)]
    streams: u64,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Refreshes forced through the agent's socket, evenly spread over the middle of the run.
    #[arg(long, default_value_t = 3)]
    refreshes: u32,
    /// Gap between events; a stream has 10 to 40 of them (1 to 4 s at the default).
    #[arg(long, default_value_t = 100)]
    gap_ms: u64,
}

#[derive(Default)]
struct Stats {
    ok: AtomicU64,
    failed: AtomicU64,
    corrupted: AtomicU64,
    live: AtomicU64,
    bytes: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let work = std::env::temp_dir().join(format!("sidecred-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let _cleanup = RemoveOnDrop(work.clone());

    let world = fakes::World::new("soak-access-0");
    let token_url = format!("http://{}/v1/oauth/token", fakes::token_endpoint(world.clone()).await?);
    let api = format!("http://{}", fakes::api(world.clone()).await?);
    let expires = now_ms() + 8 * 3_600_000;
    let seed = format!(
        r#"{{"claudeAiOauth":{{"accessToken":"soak-access-0","refreshToken":"soak-refresh-0","expiresAt":{expires},"scopes":["user:inference"]}}}}"#
    );
    let (mut agent, socket) = procs::agent(&args.agent, &work, &seed, &token_url).await?;
    let (mut forwarder, addr) = procs::forwarder(&args.forwarder, &work, &socket, &api).await?;
    let pid = forwarder.pid();

    // Warm up every worker once, then let the API close the idle upstream connections: the baseline
    // is a forwarder that has served and is idle.
    let warm_stats = Arc::new(Stats::default());
    let warm: Vec<_> = (0..8)
        .map(|i| {
            let (addr, stats) = (addr.clone(), warm_stats.clone());
            let shape = Shape { end: Instant::now(), limit: 1, events: (1, 1), gap_ms: args.gap_ms };
            tokio::spawn(async move { one_connection(&addr, 1_000_000_000 + i, shape, &stats).await })
        })
        .collect();
    for w in warm {
        w.await?;
    }
    if warm_stats.ok.load(Ordering::SeqCst) != 8 {
        bail!("the warm-up streams failed; forwarder log: {}", forwarder.log.display());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (base_fds, base_rss) = (sidecred_bench::fds(pid)?, sidecred_bench::rss_kib(pid)?);

    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let end = started + args.duration;
    let clients: Vec<_> = (0..args.streams)
        .map(|c| {
            let (addr, stats) = (addr.clone(), stats.clone());
            let shape = Shape { end, limit: u64::MAX, events: (10, 40), gap_ms: args.gap_ms };
            tokio::spawn(async move { one_connection(&addr, c, shape, &stats).await })
        })
        .collect();

    let refresher = tokio::spawn(force_refreshes(socket.clone(), started, args.duration, args.refreshes));
    let (mut peak_rss, mut peak_fds, mut min_live) = (0u64, 0usize, u64::MAX);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        forwarder.ensure_running("the forwarder")?;
        agent.ensure_running("the agent")?;
        peak_rss = peak_rss.max(sidecred_bench::rss_kib(pid)?);
        peak_fds = peak_fds.max(sidecred_bench::fds(pid)?);
        // Past the ramp-up and before the end, every client should be inside a stream or between two.
        let elapsed = started.elapsed();
        if elapsed > args.duration / 10 && elapsed < args.duration * 9 / 10 {
            min_live = min_live.min(stats.live.load(Ordering::SeqCst));
        }
    }
    let refreshed = refresher.await?.context("a forced refresh failed")?;
    for c in clients {
        c.await?;
    }
    let drained = Instant::now();
    let fds_after = procs::wait_for(
        "the forwarder's descriptors to come back to the baseline",
        Duration::from_secs(30),
        || sidecred_bench::fds(pid).ok().filter(|n| *n <= base_fds),
    )
    .await;
    let back_after = drained.elapsed();
    let rss_after = sidecred_bench::rss_kib(pid)?;

    let (ok, failed, corrupted) = (
        stats.ok.load(Ordering::SeqCst),
        stats.failed.load(Ordering::SeqCst),
        stats.corrupted.load(Ordering::SeqCst),
    );
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    println!(
        "### sidecred-forwarder soak ({} streams, {:?}, {} forced refreshes)\n",
        args.streams, args.duration, refreshed
    );
    println!("| measure | value |\n|---|---:|");
    println!("| streams completed and byte-exact | {ok} |");
    println!("| streams dropped (error or short) | {failed} |");
    println!("| streams corrupted (bytes differ) | {corrupted} |");
    println!(
        "| concurrent streams, lowest in the middle 80 % | {} |",
        if min_live == u64::MAX { 0 } else { min_live }
    );
    println!("| SSE bytes delivered | {} |", stats.bytes.load(Ordering::SeqCst));
    println!(
        "| requests per token generation (seed, then each refresh) | {:?} |",
        world.requests_per_generation()
    );
    println!("| upstream 401s | {} |", world.unauthorized.load(Ordering::SeqCst));
    println!(
        "| upstream connections: opened, most open at once | {}, {} |",
        world.upstream_connections.load(Ordering::SeqCst),
        world.upstream_open_peak.load(Ordering::SeqCst)
    );
    println!(
        "| forwarder RSS: idle baseline, peak, after | {}, {}, {} |",
        mib(base_rss),
        mib(peak_rss),
        mib(rss_after)
    );
    match &fds_after {
        Ok(n) => println!("| forwarder descriptors: baseline, peak, after | {base_fds}, {peak_fds}, {n} ({back_after:.1?} after the clients left) |"),
        Err(_) => println!("| forwarder descriptors: baseline, peak, after | {base_fds}, {peak_fds}, {} (not back after 30 s) |", sidecred_bench::fds(pid)?),
    }
    if failed > 0 || corrupted > 0 || ok == 0 {
        bail!("{failed} streams dropped and {corrupted} corrupted; logs in {}", work.display());
    }
    fds_after.map(|_| ()).context("the forwarder kept descriptors after the clients left")
}

/// What one client asks for: streams of `events.0..=events.1` events `gap_ms` apart, one after the
/// other until `end` (at least one) or `limit` streams.
#[derive(Clone, Copy)]
struct Shape {
    end: Instant,
    limit: u64,
    events: (u64, u64),
    gap_ms: u64,
}

/// One client: streams on its own connection (reconnecting if it closes), comparing every stream
/// with what the API sent.
async fn one_connection(addr: &str, client: u64, shape: Shape, stats: &Stats) {
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    let mut rng = client.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut n = 0u64;
    while n < shape.limit && (n == 0 || Instant::now() < shape.end) {
        let id = client * 1_000_000 + n;
        n += 1;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let events = shape.events.0 + rng % (shape.events.1 - shape.events.0 + 1);
        match stream_once(addr, &mut sender, id, events, shape.gap_ms, stats).await {
            Ok(text) if text == fakes::expected_stream(id, events) => {
                stats.ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(text) => {
                stats.corrupted.fetch_add(1, Ordering::SeqCst);
                eprintln!("stream {id}: {} bytes differ from the {events} events sent", text.len());
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::SeqCst);
                eprintln!("stream {id}: {e:#}");
                sender = None;
            }
        }
    }
}

async fn stream_once(
    addr: &str,
    sender: &mut Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    id: u64,
    events: u64,
    gap_ms: u64,
    stats: &Stats,
) -> anyhow::Result<String> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        *sender = Some(s);
    }
    let s = sender.as_mut().context("no connection")?;
    s.ready().await?;
    let req = hyper::Request::post(format!("/v1/messages?stream={id}&events={events}&gap_ms={gap_ms}"))
        .header("host", addr)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"claude-soak","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )))?;
    let resp = s.send_request(req).await?;
    if resp.status() != 200 {
        bail!("status {}", resp.status());
    }
    stats.live.fetch_add(1, Ordering::SeqCst);
    let mut body = resp.into_body();
    let mut text = Vec::new();
    let read: anyhow::Result<()> = async {
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                text.extend_from_slice(data);
            }
        }
        Ok(())
    }
    .await;
    stats.live.fetch_sub(1, Ordering::SeqCst);
    stats.bytes.fetch_add(text.len() as u64, Ordering::SeqCst);
    read?;
    String::from_utf8(text).context("not UTF-8")
}

/// Forces `count` refreshes at even intervals over the run; answers how many succeeded.
async fn force_refreshes(
    socket: PathBuf,
    started: Instant,
    duration: Duration,
    count: u32,
) -> anyhow::Result<u32> {
    for k in 1..=count {
        let at = started + duration * k / (count + 1);
        tokio::time::sleep_until(at.into()).await;
        let mut client = sidecred_proto::client::Client::connect(&socket).await?;
        client.refresh().await.with_context(|| format!("forced refresh {k}"))?;
    }
    Ok(count)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
