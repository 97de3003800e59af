//! The floor for `bench/forwarder.sh`: the least a proxy built on sidecred's stack (a hyper 1 HTTP/1
//! server and hyper-util's pooled client, one current-thread runtime per worker like the forwarder's)
//! can do per request. It sets the same headers as the nginx setup, from constants: no agent, no
//! checks, no access log, no retry, no HTTP/2. What sidecred measures above this is sidecred's own
//! cost; what this measures against nginx is the cost of the stack itself on this machine.
//!
//! Prints `listening <addr>` on stdout once bound.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sidecred_proto::anthropic;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

#[derive(clap::Parser)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The upstream's host:port (plain HTTP).
    #[arg(long)]
    upstream: String,
    /// Worker threads, each with its own runtime and client pool, all accepting on the one listener.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

/// What every request gets, built once.
struct Fixed {
    client: Client<HttpConnector, Incoming>,
    authority: hyper::http::uri::Authority,
    host: HeaderValue,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let listener = TcpListener::bind(args.listen).with_context(|| format!("bind {}", args.listen))?;
    listener.set_nonblocking(true).context("set the listener non-blocking")?;
    println!("listening {}", listener.local_addr().context("local address")?);
    let authority: hyper::http::uri::Authority =
        args.upstream.parse().context("--upstream must be host:port")?;
    let host = HeaderValue::from_str(authority.as_str()).context("--upstream is not a header value")?;
    let workers = (0..args.workers.max(1))
        .map(|_| {
            let listener = listener.try_clone().context("clone the listener")?;
            let (authority, host) = (authority.clone(), host.clone());
            Ok(std::thread::spawn(move || worker(listener, authority, host)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

fn worker(
    listener: TcpListener,
    authority: hyper::http::uri::Authority,
    host: HeaderValue,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).set_host(false).build(http);
        let fixed = Arc::new(Fixed { client, authority, host });
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let fixed = fixed.clone();
            let service = hyper::service::service_fn(move |req| forward(fixed.clone(), req));
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

type Body = Either<Incoming, Empty<Bytes>>;

async fn forward(fixed: Arc<Fixed>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let headers = &mut parts.headers;
    headers.remove("x-api-key");
    headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer bench-access-token"));
    headers.insert("anthropic-beta", HeaderValue::from_static(anthropic::OAUTH_BETA));
    headers.insert("anthropic-version", HeaderValue::from_static(anthropic::ANTHROPIC_VERSION));
    headers.insert(HOST, fixed.host.clone());
    let mut uri = hyper::http::uri::Parts::default();
    uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
    uri.authority = Some(fixed.authority.clone());
    uri.path_and_query = parts.uri.path_and_query().cloned();
    parts.uri = Uri::from_parts(uri).unwrap_or_default();
    match fixed.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => Ok(resp.map(Either::Left)),
        // The benchmark counts non-2xx answers as failures; a 502 with an empty body says enough.
        Err(_) => {
            let mut resp = Response::new(Either::Right(Empty::new()));
            *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            Ok(resp)
        }
    }
}
