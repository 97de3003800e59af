//! What the benchmark programs share: a process's resources as `/proc` reports them, opening an SSE
//! stream of a given shape through a proxy, and reading a percentile off sorted samples.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Open file descriptors of `pid`.
pub fn fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Resident memory of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The nearest-rank `q` quantile (0 to 1) of `sorted`; the default value when there is no sample.
pub fn percentile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    let last = sorted.len().saturating_sub(1);
    let i = (last as f64 * q).round() as usize;
    sorted.get(i.min(last)).copied().unwrap_or_default()
}

/// Opens a Messages stream of `events` deltas `gap_ms` apart from the bench upstream at `addr` (directly or
/// through a proxy) and answers its body once the status is 200. The shape is asked twice: in the query,
/// and in the body for proxies that drop the query (see upstream.rs).
pub async fn open_sse(
    addr: std::net::SocketAddr,
    path: &str,
    events: u64,
    gap_ms: u64,
) -> anyhow::Result<Incoming> {
    let stream = TcpStream::connect(addr).await?;
    // Should hyper split the request, Nagle must not hold its second part back.
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": events,
        "stream": true,
        "metadata": {"user_id": format!("gap_ms={gap_ms}")},
        "messages": [{"role": "user", "content": "hi"}],
    });
    let req = Request::post(format!("{path}?sse={events}&gap_ms={gap_ms}"))
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = sender.send_request(req).await?;
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    Ok(resp.into_body())
}
