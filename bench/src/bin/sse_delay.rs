//! How late SSE events arrive through a proxy: opens `--streams` streams at once, each of `--events`
//! deltas `--gap-ms` apart from `upstream` (which writes into each delta the time it left, `t=<µs>`),
//! and reports, over every delta, the time from leaving the upstream to arriving here: p50, p99, max in
//! µs. Run against the upstream directly too, the difference is what the proxy adds. Both ends read the
//! same clock on the same machine. Exits non-zero when a stream fails or a delta is missing.

use anyhow::Context;
use clap::Parser;
use http_body_util::BodyExt;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Parser)]
struct Args {
    /// The proxy's (or the upstream's) address.
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// The Messages path there.
    #[arg(long, default_value = "/v1/messages")]
    path: String,
    #[arg(long, default_value_t = 8)]
    streams: usize,
    #[arg(long, default_value_t = 50)]
    events: u64,
    #[arg(long, default_value_t = 20)]
    gap_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut tasks = Vec::with_capacity(args.streams);
    for _ in 0..args.streams {
        let (addr, path, events, gap) = (args.addr, args.path.clone(), args.events, args.gap_ms);
        tasks.push(tokio::spawn(async move { one_stream(addr, &path, events, gap).await }));
    }
    let mut delays = Vec::new();
    for task in tasks {
        let got = task.await.context("a stream's task")??;
        anyhow::ensure!(
            got.len() as u64 == args.events,
            "a stream delivered {} of {} deltas",
            got.len(),
            args.events
        );
        delays.extend(got);
    }
    delays.sort_unstable();
    let at = |q: f64| sidecred_bench::percentile(&delays, q);
    println!("events={} p50_us={} p99_us={} max_us={}", delays.len(), at(0.5), at(0.99), at(1.0));
    Ok(())
}

/// One stream's delays, one per delta, in µs (an event that seems to arrive before it left counts 0).
async fn one_stream(
    addr: std::net::SocketAddr,
    path: &str,
    events: u64,
    gap_ms: u64,
) -> anyhow::Result<Vec<u64>> {
    let mut body = sidecred_bench::open_sse(addr, path, events, gap_ms).await?;
    let mut pending = Vec::new();
    let mut delays = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        let now = now_us();
        pending.extend_from_slice(&data);
        // Only whole events count: one ends at a blank line.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            if let Some(sent) = sent_at(&event) {
                delays.push(u64::try_from(now.saturating_sub(sent)).unwrap_or(u64::MAX));
            }
        }
    }
    Ok(delays)
}

/// The `t=<µs>` a delta carries, however a proxy re-serialised the JSON around it.
fn sent_at(event: &[u8]) -> Option<u128> {
    let text = std::str::from_utf8(event).ok()?;
    let start = text.find("\"t=")? + 3;
    let digits: String = text[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn now_us() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_time_is_found_however_the_json_was_rewritten() {
        let compact =
            br#"data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"t=1234"}}"#;
        let spaced =
            br#"data: {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "t=987"}}"#;
        assert_eq!(sent_at(compact), Some(1234));
        assert_eq!(sent_at(spaced), Some(987));
        assert_eq!(sent_at(br#"data: {"type":"message_stop"}"#), None);
    }
}
