//! A fast stand-in for the Anthropic API, for benchmarks: answers every request with a small JSON
//! message, or with N SSE deltas M ms apart: asked by `?sse=N&gap_ms=M` in the query, or, for proxies
//! that rebuild the request and drop the query, by a body with `"stream": true`, whose `max_tokens` is N
//! and whose `metadata.user_id` reads `gap_ms=M` (fields every proxy passes on). Each delta's text is
//! `t=<microseconds since the Unix epoch when it left>`, so a client on the same machine measures what
//! a proxy adds to each event. Prints `listening <addr>` on stdout once bound.

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Parser)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

const MESSAGE: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-bench","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":1}}"#;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening {}", listener.local_addr()?);
    let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let conn =
            server.serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle)).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// Streams longer than this are cut short: the count comes from a client.
const MAX_EVENTS: usize = 100_000;

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let from_query = req.uri().query().and_then(parse_sse);
    // Read the request body, as a real server must before answering.
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let sse = from_query.or_else(|| sse_from_body(&body)).map(|(n, gap)| (n.min(MAX_EVENTS), gap));
    let resp = match sse {
        None => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(MESSAGE.as_bytes())).boxed_unsync()),
        Some((events, gap)) => {
            let stream = futures_util::stream::unfold(0usize, move |i| async move {
                if i >= events {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                let mut event = String::new();
                if i == 0 {
                    event.push_str(OPENING);
                }
                event.push_str(&format!(
                    "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"t={}\"}}}}\n\n",
                    unix_micros()
                ));
                if i + 1 == events {
                    event.push_str(CLOSING);
                }
                Some((Ok(Frame::data(Bytes::from(event))), i + 1))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(stream).boxed_unsync())
        }
    };
    Ok(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync())))
}

/// The events before the first delta and after the last, in the API's order, so that proxies that parse
/// the stream (for usage accounting) see a well-formed one.
const OPENING: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-bench\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
const CLOSING: &str = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

fn unix_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
}

/// A body with `"stream": true` → (`max_tokens`, `gap_ms=M` from `metadata.user_id`, else 20 ms).
fn sse_from_body(body: &[u8]) -> Option<(usize, Duration)> {
    // Most requests of a throughput run are not streams: skip the parse for them.
    if !body.windows(8).any(|w| w == b"\"stream\"") {
        return None;
    }
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    if doc["stream"] != true {
        return None;
    }
    let events = usize::try_from(doc["max_tokens"].as_u64()?).ok()?;
    let gap = doc["metadata"]["user_id"]
        .as_str()
        .and_then(|u| u.strip_prefix("gap_ms="))
        .and_then(|m| m.parse().ok())
        .map_or(Duration::from_millis(20), Duration::from_millis);
    Some((events, gap))
}

/// `sse=N&gap_ms=M` → (N, M ms).
fn parse_sse(query: &str) -> Option<(usize, Duration)> {
    let mut events = None;
    let mut gap = Duration::from_millis(100);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sse", n)) => events = n.parse().ok(),
            Some(("gap_ms", m)) => gap = Duration::from_millis(m.parse().ok()?),
            _ => {}
        }
    }
    events.map(|n| (n, gap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_shaped_by_the_body_when_the_query_is_gone() {
        let body =
            br#"{"model": "m", "max_tokens": 50, "stream": true, "metadata": {"user_id": "gap_ms=7"}}"#;
        assert_eq!(sse_from_body(body), Some((50, Duration::from_millis(7))));
        let no_gap = br#"{"max_tokens":3,"stream":true}"#;
        assert_eq!(sse_from_body(no_gap), Some((3, Duration::from_millis(20))));
        assert_eq!(sse_from_body(br#"{"max_tokens":3,"stream":false}"#), None);
        assert_eq!(sse_from_body(br#"{"max_tokens":3}"#), None);
        assert_eq!(sse_from_body(b"not json \"stream\""), None);
    }
}
