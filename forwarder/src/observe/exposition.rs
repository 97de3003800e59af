//! `GET /metrics`: on the main listener, like the probes (an operator's endpoint, not the API, so no
//! inbound key), and on `--metrics-listen` when the operator wants it on a port clients cannot reach.

use super::metrics::METRICS;
use crate::account::Account;
use crate::body::ResponseBody;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{debug, info, warn};

/// The metrics page in the format the scraper asks for (Prometheus: OpenMetrics; others: classic text),
/// with the account's state as it stands at the scrape.
pub fn page(headers: &HeaderMap, account: &Account) -> Response<ResponseBody> {
    account.publish_state();
    let accept = headers.get(ACCEPT).map(HeaderValue::as_bytes);
    let (page, content_type) = sidecred_proto::exposition::negotiate(METRICS.encode(), accept);
    let mut resp = Response::new(ResponseBody::full(page.into()));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Serves `/metrics` (and nothing else) on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, account: Arc<Account>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(serve_one(stream, peer, account.clone()));
    }
}

async fn serve_one(stream: tokio::net::TcpStream, peer: SocketAddr, account: Arc<Account>) {
    let account = &account;
    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
        Ok::<_, Infallible>(match req.uri().path() {
            "/metrics" => page(req.headers(), account),
            _ => {
                let mut resp = Response::new(ResponseBody::full("only /metrics here\n".into()));
                *resp.status_mut() = StatusCode::NOT_FOUND;
                resp
            }
        })
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        debug!(peer = %peer, error = %e, "metrics connection ended");
    }
}

/// Binds `--metrics-listen` at start, so a taken port stops the start with its name.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use anyhow::Context;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
    listener.set_nonblocking(true).context("cannot make the metrics listener non-blocking")?;
    info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics (--metrics-listen)");
    Ok(listener)
}
