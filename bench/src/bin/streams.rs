//! Holds many SSE streams open through the forwarder at once and reports the forwarder's resident
//! memory (VmRSS from /proc/<pid>/status) while they are all live.
//!
//! Each stream is its own client connection, as separate SDK clients would be. Exits non-zero when a
//! stream could not be opened or died before the measurement ended.

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// The forwarder's address, e.g. 127.0.0.1:8000.
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// Streams to hold open.
    #[arg(long, default_value_t = 256)]
    count: usize,
    /// Process whose memory to read.
    #[arg(long)]
    pid: u32,
    /// Gap between upstream events; the streams must outlive the measurement.
    #[arg(long, default_value_t = 200)]
    gap_ms: u64,
    /// How long to keep measuring once every stream is live.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    hold: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let live = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    // Enough events to outlast opening every stream and the hold, whatever the machine's pace.
    let events = 10 + (args.hold.as_millis() as u64 + 60_000) / args.gap_ms.max(1);
    let mut tasks = Vec::with_capacity(args.count);
    for _ in 0..args.count {
        let (live, failed, addr, gap) = (live.clone(), failed.clone(), args.addr, args.gap_ms);
        tasks.push(tokio::spawn(async move {
            match hold_stream(addr, events, gap, &live).await {
                Ok(()) => {}
                Err(e) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    eprintln!("stream failed: {e:#}");
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while live.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < args.count {
        if Instant::now() > deadline {
            anyhow::bail!("only {} of {} streams opened within 60s", live.load(Ordering::SeqCst), args.count);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if failed.load(Ordering::SeqCst) > 0 {
        anyhow::bail!("{} of {} streams failed to open", failed.load(Ordering::SeqCst), args.count);
    }
    let mut max_kib = 0;
    let until = Instant::now() + args.hold;
    while Instant::now() < until {
        max_kib = max_kib.max(sidecred_bench::rss_kib(args.pid)?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let still_live = live.load(Ordering::SeqCst);
    if still_live != args.count || failed.load(Ordering::SeqCst) > 0 {
        anyhow::bail!("streams ended during the measurement: {still_live} of {} live", args.count);
    }
    println!("streams={} rss_kib={max_kib}", args.count);
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// Opens one stream and reads it; counts it live from its first event until it ends.
async fn hold_stream(
    addr: std::net::SocketAddr,
    events: u64,
    gap_ms: u64,
    live: &AtomicUsize,
) -> anyhow::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::post(format!("/v1/messages?sse={events}&gap_ms={gap_ms}"))
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"claude-bench","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )))?;
    let resp = sender.send_request(req).await?;
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    let mut body = resp.into_body();
    let mut counted = false;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if frame.is_data() && !counted {
            counted = true;
            live.fetch_add(1, Ordering::SeqCst);
        }
    }
    if counted {
        live.fetch_sub(1, Ordering::SeqCst);
    }
    anyhow::bail!("the stream ended")
}
