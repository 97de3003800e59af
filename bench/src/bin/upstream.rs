//! A fast stand-in for the Anthropic API, for benchmarks: answers every request with a small JSON
//! message, or, with `?sse=N&gap_ms=M` in the query, with N SSE events M ms apart (slow streams for the
//! memory measurement). Prints `listening <addr>` on stdout once bound.

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

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let sse = req.uri().query().and_then(parse_sse);
    // Read the request body, as a real server must before answering.
    let _ = req.into_body().collect().await;
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
                let event = format!(
                    "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{i}\"}}}}\n\n"
                );
                Some((Ok(Frame::data(Bytes::from(event))), i + 1))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(stream).boxed_unsync())
        }
    };
    Ok(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync())))
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
