//! Holds many SSE streams open through a proxy at once and reports its resident memory (VmRSS from
//! /proc/<pid>/status, summed over every `--pid`: nginx's master and workers) while they are all live.
//!
//! Each stream is its own client connection, as separate SDK clients would be. Exits non-zero when a
//! stream could not be opened or died before the measurement ended; with `--partial`, a proxy that
//! cannot hold them all is measured with those it opened (`opened=` in the output says how many).

use clap::Parser;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// The proxy's address, e.g. 127.0.0.1:8000.
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// The Messages path on that proxy.
    #[arg(long, default_value = "/v1/messages")]
    path: String,
    /// Streams to hold open.
    #[arg(long, default_value_t = 256)]
    count: usize,
    /// Processes whose memory to read (repeatable; their RSS is summed).
    #[arg(long, required = true)]
    pid: Vec<u32>,
    /// Gap between upstream events; the streams must outlive the measurement.
    #[arg(long, default_value_t = 200)]
    gap_ms: u64,
    /// How long to keep measuring once every stream is live.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// How long the streams may take to open.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    open_within: Duration,
    /// Measure with the streams that opened in time instead of failing.
    #[arg(long)]
    partial: bool,
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
        let (live, failed, addr, gap, path) =
            (live.clone(), failed.clone(), args.addr, args.gap_ms, args.path.clone());
        tasks.push(tokio::spawn(async move {
            match hold_stream(addr, &path, events, gap, &live).await {
                Ok(()) => {}
                Err(e) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    eprintln!("stream failed: {e:#}");
                }
            }
        }));
    }
    let deadline = Instant::now() + args.open_within;
    while live.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < args.count {
        if Instant::now() > deadline {
            if args.partial {
                break;
            }
            anyhow::bail!(
                "only {} of {} streams opened within {:?}",
                live.load(Ordering::SeqCst),
                args.count,
                args.open_within
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if failed.load(Ordering::SeqCst) > 0 && !args.partial {
        anyhow::bail!("{} of {} streams failed to open", failed.load(Ordering::SeqCst), args.count);
    }
    let opened = live.load(Ordering::SeqCst);
    let mut max_kib = 0;
    let until = Instant::now() + args.hold;
    while Instant::now() < until {
        let mut kib = 0;
        for pid in &args.pid {
            kib += sidecred_bench::rss_kib(*pid)?;
        }
        max_kib = max_kib.max(kib);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let still_live = live.load(Ordering::SeqCst);
    if !args.partial && (still_live != args.count || failed.load(Ordering::SeqCst) > 0) {
        anyhow::bail!("streams ended during the measurement: {still_live} of {} live", args.count);
    }
    println!("streams={} opened={} rss_kib={max_kib}", args.count, opened.min(still_live));
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// Opens one stream and reads it; counts it live from its first event until it ends.
async fn hold_stream(
    addr: std::net::SocketAddr,
    path: &str,
    events: u64,
    gap_ms: u64,
    live: &AtomicUsize,
) -> anyhow::Result<()> {
    let mut body = sidecred_bench::open_sse(addr, path, events, gap_ms).await?;
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
