//! The soak's outside world, in process: a token endpoint that rotates on every refresh, and an API
//! that accepts only tokens the endpoint issued and streams SSE events a client can check byte for byte.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;

/// Like the real API, the fake closes connections that stay idle, also those that never carried a
/// request (hyper-util's client opens one for a request and keeps it in the pool when an idle one came
/// free first), so the forwarder's upstream pool gives its descriptors back after the run.
const SERVER_IDLE: Duration = Duration::from_secs(2);

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

#[derive(Default)]
pub struct World {
    /// Access token → its generation (0 is the seed's); only these are accepted.
    issued: Mutex<HashMap<String, u64>>,
    /// Requests per token generation.
    per_generation: Mutex<Vec<u64>>,
    pub refreshes: AtomicU64,
    pub unauthorized: AtomicU64,
    pub upstream_connections: AtomicU64,
    pub upstream_open: AtomicU64,
    pub upstream_open_peak: AtomicU64,
}

impl World {
    pub fn new(seed_access: &str) -> Arc<World> {
        let world = World::default();
        world.issued.lock().unwrap_or_else(PoisonError::into_inner).insert(seed_access.to_owned(), 0);
        Arc::new(world)
    }

    pub fn requests_per_generation(&self) -> Vec<u64> {
        self.per_generation.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn generation_of(&self, token: &str) -> Option<u64> {
        self.issued.lock().unwrap_or_else(PoisonError::into_inner).get(token).copied()
    }
}

/// The SSE text of one stream, which the client compares with what arrives: a `message_start`, `events`
/// deltas that name the stream and their index, and a `message_stop`.
pub fn expected_stream(id: u64, events: u64) -> String {
    let mut out = format!("event: message_start\ndata: {{\"type\":\"message_start\",\"stream\":{id}}}\n\n");
    for i in 0..events {
        out.push_str(&delta(id, i));
    }
    out.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    out
}

fn delta(id: u64, i: u64) -> String {
    format!(
        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"s{id}-e{i}\"}}}}\n\n"
    )
}

/// Serves `handler` on a new port; answers the address.
async fn serve<F, Fut>(world: Arc<World>, count_connections: bool, handler: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(Request<Incoming>, Arc<World>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        // HTTP/1 alone (both clients speak it to a plain-http address): hyper-util's protocol sniff
        // would wait for a first byte before hyper's header timer starts, and hold a silent
        // connection for good.
        let mut server = hyper::server::conn::http1::Builder::new();
        server.timer(TokioTimer::new()).header_read_timeout(SERVER_IDLE);
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (for_requests, handler) = (world.clone(), handler.clone());
            let service = hyper::service::service_fn(move |req| {
                let (world, handler) = (for_requests.clone(), handler.clone());
                async move { Ok::<_, Infallible>(handler(req, world).await) }
            });
            let conn = server.serve_connection(TokioIo::new(stream), service);
            let world = world.clone();
            tokio::spawn(async move {
                if count_connections {
                    world.upstream_connections.fetch_add(1, Ordering::Relaxed);
                    let open = world.upstream_open.fetch_add(1, Ordering::Relaxed) + 1;
                    world.upstream_open_peak.fetch_max(open, Ordering::Relaxed);
                }
                let _ = conn.await;
                if count_connections {
                    world.upstream_open.fetch_sub(1, Ordering::Relaxed);
                }
            });
        }
    });
    Ok(addr)
}

/// The token endpoint: every refresh issues a new pair (the next generation).
pub async fn token_endpoint(world: Arc<World>) -> anyhow::Result<SocketAddr> {
    serve(world, false, |req: Request<Incoming>, world: Arc<World>| async move {
        let _ = req.into_body().collect().await;
        let generation = world.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
        let access = format!("soak-access-{generation}");
        world.issued.lock().unwrap_or_else(PoisonError::into_inner).insert(access.clone(), generation);
        let body = serde_json::json!({
            "access_token": access,
            "refresh_token": format!("soak-refresh-{generation}"),
            "expires_in": 28_800,
            "token_type": "Bearer",
        });
        json(StatusCode::OK, body.to_string())
    })
    .await
}

/// The API: `POST /v1/messages?stream=ID&events=N&gap_ms=M` streams [`expected_stream`] for ID.
pub async fn api(world: Arc<World>) -> anyhow::Result<SocketAddr> {
    serve(world, true, |req: Request<Incoming>, world: Arc<World>| async move {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let query = req.uri().query().unwrap_or_default().to_owned();
        let _ = req.into_body().collect().await;
        let Some(generation) = token.as_deref().and_then(|t| world.generation_of(t)) else {
            world.unauthorized.fetch_add(1, Ordering::Relaxed);
            let error =
                r#"{"type":"error","error":{"type":"authentication_error","message":"invalid token"}}"#;
            return json(StatusCode::UNAUTHORIZED, error.to_owned());
        };
        {
            let mut per = world.per_generation.lock().unwrap_or_else(PoisonError::into_inner);
            let g = usize::try_from(generation).unwrap_or(usize::MAX);
            if per.len() <= g {
                per.resize(g + 1, 0);
            }
            per[g] += 1;
        }
        let param = |name: &str| {
            query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        let (id, events, gap) =
            (param("stream").unwrap_or(0), param("events").unwrap_or(1), param("gap_ms").unwrap_or(100));
        let chunks = futures_util::stream::unfold(0u64, move |i| async move {
            let chunk = match i {
                0 => {
                    format!("event: message_start\ndata: {{\"type\":\"message_start\",\"stream\":{id}}}\n\n")
                }
                i if i <= events => {
                    tokio::time::sleep(Duration::from_millis(gap)).await;
                    delta(id, i - 1)
                }
                i if i == events + 1 => {
                    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned()
                }
                _ => return None,
            };
            Some((Ok(Frame::data(Bytes::from(chunk))), i + 1))
        });
        let mut resp = Response::new(StreamBody::new(chunks).boxed_unsync());
        resp.headers_mut()
            .insert("content-type", hyper::header::HeaderValue::from_static("text/event-stream"));
        resp
    })
    .await
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    resp
}
