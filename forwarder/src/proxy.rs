//! The request path: route, check the client's key, get the token, rewrite headers, send upstream,
//! retry once on 401, stream the answer back.

use crate::account::{self, Account};
use crate::agent::{AgentError, Token, TokenSource};
use crate::body::{discard, AnswerBody, ResponseBody, Tee, UpstreamBody};
use crate::errors::{agent_failure, reauth, static_token_rejected, ErrorReply};
use crate::headers;
use crate::health;
use crate::keys::quota::Slot;
use crate::keys::InboundKeys;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{KeyLabels, RequestOutcome, Route, METRICS};
use crate::path::upstream_path;
use crate::rejected::RejectedToken;
use crate::upstream::Upstream;
use futures_util::future::Either;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use sidecred_proto::{ErrorCode, Secret};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

pub struct Proxy {
    pub upstream: Upstream,
    pub tokens: TokenSource,
    pub keys: Option<Arc<InboundKeys>>,
    pub max_request_body: u64,
    pub retry_body_limit: u64,
    /// Shared by all workers, so `/health` on any of them knows.
    pub rejected: Arc<RejectedToken>,
    /// What the answers say of the account, and the guard that keeps it on its plan; shared by all workers.
    pub account: Arc<Account>,
    /// Set on SIGTERM, for `/readyz`.
    pub leaving: Arc<health::Leaving>,
}

impl Proxy {
    /// The hyper service: every request gets an answer, errors included, so the error type is empty.
    ///
    /// hyper keeps each connection's request future in a slot of that future's size for the
    /// connection's life, and moves every new request's future into it, so this future is kept small
    /// (`tests::a_requests_future_stays_small`): the rare probes are boxed, and the request is held
    /// once. An `async fn` holds an argument it uses after an await twice (the argument, and the local
    /// it is moved into), which is why the functions on this path return `async move` blocks instead.
    pub fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send {
        match req.uri().path() {
            health::LIVEZ_PATH | "/readyz" | "/health" | "/metrics" => {
                Either::Left(Box::pin(self.probe(req)))
            }
            _ => Either::Right(self.forward(req)),
        }
    }

    async fn probe(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
        let resp = match req.uri().path() {
            "/readyz" => health::readyz(&self.tokens, &self.leaving).await,
            "/health" => health::health(&self.tokens, &self.rejected, &self.account).await,
            "/metrics" => crate::observe::exposition::page(req.headers(), &self.account),
            _ => health::livez(),
        };
        // Probes come every few seconds; they go to debug so the access log stays about traffic.
        debug!(path = req.uri().path(), status = resp.status().as_u16(), "probe");
        Ok(resp)
    }

    // Not an `async fn`: it would hold the request twice (see `serve`).
    #[allow(clippy::manual_async_fn)]
    fn forward(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send {
        async move {
            // Read through the request itself: a local that is ever borrowed is kept in the future
            // for good, and the parts are a quarter of a kilobyte.
            let request_id = headers::request_id(req.headers_mut());
            let mut log = AccessLog::start(req.method(), req.uri(), &request_id);
            let route = Route::of(req.uri().path());
            let arrived = Instant::now();
            let (parts, body) = req.into_parts();
            // Boxed: the slot hyper keeps per connection would otherwise hold this while a stream
            // goes on, and a pointer is cheaper to move. It is 960 bytes: glibc serves blocks up to
            // 1,032 bytes from a per-thread cache, and a larger one costs several times more.
            let inner = Box::pin(self.forward_inner(parts, body, &mut log, route));
            let mut resp = match inner.await {
                Ok((rparts, answer, slot)) => {
                    METRICS.request(route, rparts.status, RequestOutcome::of_upstream(rparts.status));
                    Response::from_parts(rparts, ResponseBody::answer(answer, route, arrived, slot))
                }
                Err(e) => {
                    METRICS.request(route, e.status, e.outcome);
                    e.into_response()
                }
            };
            resp.headers_mut().entry(&headers::X_REQUEST_ID).or_insert(request_id);
            Ok(match log {
                Some(mut log) => {
                    log.status = resp.status().as_u16();
                    resp.map(|body| body.with_log(log))
                }
                None => resp,
            })
        }
    }

    // Not an `async fn`: it would hold the request's parts twice (see `serve`).
    #[allow(clippy::manual_async_fn)]
    fn forward_inner<'a>(
        &'a self,
        mut parts: Parts,
        body: Incoming,
        log: &'a mut Option<Box<AccessLog>>,
        route: Route,
    ) -> impl Future<Output = Result<(http::response::Parts, AnswerBody, Option<Slot>), ErrorReply>> + Send + 'a
    {
        async move {
            // hyper has read the `Content-Length` already (and refused one that is not a number).
            let declared = body.size_hint().exact();
            let (path, token, slot, admitted) = match self.admit(&mut parts, declared).await {
                Ok(admitted) => admitted,
                Err(e) => {
                    // Answered without reading the body: read it away in the background so the client,
                    // still sending, gets our answer instead of a connection reset.
                    discard(body, self.max_request_body);
                    return Err(e);
                }
            };
            let uri = self.upstream.uri(path);

            // Keep what a retry needs only when a retry is possible at all.
            let may_retry = body.is_end_stream() || declared.is_none_or(|n| n <= self.retry_body_limit);
            let retry_headers = may_retry.then(|| headers::KeptHeaders::of(&parts.headers));
            let (body, tee) = if body.is_end_stream() {
                (UpstreamBody::Empty, None)
            } else {
                let keep = if may_retry { self.retry_body_limit } else { 0 };
                let (body, tee) = UpstreamBody::streaming(body, self.max_request_body, keep);
                (body, Some(tee))
            };

            let sent = Instant::now();
            // Of the request's parts only the method is needed from here on.
            let Parts { method, headers, .. } = parts;
            let first = self.send(&method, uri.clone(), headers, body, tee.as_ref()).await;
            let resp = match first {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                    // Rare, and its future (an agent exchange and a second upstream request) is large: boxed,
                    // so the common path's future stays small.
                    let unauthorized = Unauthorized {
                        response: resp,
                        token: &token,
                        method: &method,
                        uri,
                        headers: retry_headers,
                        tee: tee.as_ref(),
                        log,
                    };
                    Box::pin(self.after_401(unauthorized)).await?
                }
                Ok(resp) => {
                    self.rejected.accepted(&token.access_token);
                    resp
                }
                Err(e) => return Err(e),
            };
            let took = sent.elapsed();
            METRICS.upstream_response(route, took);
            if let Some(log) = log.as_mut() {
                log.upstream = Some(took);
            }

            let (mut rparts, answer, outcome) = self.account.answered(admitted, resp).await?;
            if let Some(log) = log.as_mut() {
                (log.account, log.client) = (outcome.as_str(), admitted.shape.as_str());
            }
            METRICS.usage.observe(&rparts.headers);
            headers::to_client(&mut rparts.headers);
            // The client's protocol is not the upstream's; the server picks the right framing.
            rparts.version = Version::default();
            Ok((rparts, answer, slot))
        }
    }

    /// Everything that can refuse a request before its body is touched: the method, the client's key,
    /// the path, the declared size, the token. On success the headers are ready for the upstream.
    async fn admit(&self, parts: &mut Parts, declared: Option<u64>) -> Result<Admitted, ErrorReply> {
        if !headers::is_api_method(&parts.method) {
            return Err(ErrorReply::method_not_allowed(&parts.method));
        }
        let slot = match &self.keys {
            Some(keys) => {
                let key = keys.check(&parts.headers).map_err(|r| ErrorReply::unauthorized(r.to_string()))?;
                key.limiter.admit(std::time::Instant::now()).map_err(|refusal| {
                    METRICS.key_rate_limited.get_or_create(&KeyLabels { key: key.name.clone() }).inc();
                    ErrorReply::rate_limited(refusal, &key.name)
                })?
            }
            None => None,
        };
        crate::path::check(parts.uri.path())?;
        let path = upstream_path(&parts.uri).ok_or_else(ErrorReply::not_found)?;
        if declared.is_some_and(|n| n > self.max_request_body) {
            return Err(ErrorReply::too_large(self.max_request_body));
        }
        let admitted = self.account.admit(&parts.headers, Route::of(parts.uri.path()))?;
        let token = self.tokens.token().await.map_err(|e| agent_failure(&e))?;
        let authorization = token.authorization().map_err(ErrorReply::agent_unavailable)?;
        headers::to_upstream(&mut parts.headers, authorization, &self.upstream.host);
        Ok((path, token, slot, admitted))
    }

    async fn send(
        &self,
        method: &Method,
        uri: Uri,
        headers: HeaderMap,
        body: UpstreamBody,
        tee: Option<&Tee>,
    ) -> Result<Response<Incoming>, ErrorReply> {
        // The request is built in a function of its own: a local this future borrows (as setting a
        // request's parts does) keeps its room here through the await, even once moved out.
        let sending = self.upstream.client.request(upstream_request(method, uri, headers, body));
        sending.await.map_err(|e| {
            if tee.is_some_and(Tee::was_too_large) {
                ErrorReply::too_large(self.max_request_body)
            } else {
                let detail = error_chain(&e);
                warn!(error = %detail, "upstream request failed");
                ErrorReply::bad_gateway(detail)
            }
        })
    }

    /// The upstream said 401: the token was revoked or expired early. Tell the agent (which refreshes
    /// once however many requests report the same token), then send the request again with the new
    /// token if its body was small enough to keep; otherwise the client gets the 401, told by
    /// `x-should-retry` whether its own retry would carry a newer token.
    async fn after_401(&self, unauthorized: Unauthorized<'_>) -> Result<Response<Incoming>, ErrorReply> {
        let Unauthorized { mut response, token, method, uri, headers, tee, log } = unauthorized;
        let fresh = match self.tokens.report_rejected(&token.access_token).await {
            Ok(fresh) => fresh,
            Err(AgentError::ReauthRequired(m)) => return Err(reauth(&m)),
            Err(AgentError::Refused(p)) if p.code == ErrorCode::StaticTokenRejected => {
                return Err(static_token_rejected(&p.message))
            }
            Err(AgentError::Refused(p)) => {
                // Most often the agent's cooldown: it refreshed moments ago, and that token is refused too.
                warn!(token = %token.access_token, code = %p.code, error = %p.message, "the upstream rejected the token and the agent offers no other; passing the 401 on");
                return Ok(self.rejected_for_now(response, &token.access_token));
            }
            Err(e) => {
                warn!(token = %token.access_token, error = %e, "the upstream rejected the token and the agent did not answer; passing the 401 on");
                return Ok(response);
            }
        };
        if fresh.access_token == token.access_token {
            warn!(token = %token.access_token, "the upstream rejected the token and the agent still serves it; passing the 401 on");
            return Ok(self.rejected_for_now(response, &token.access_token));
        }
        let replay = match tee {
            None => Some(UpstreamBody::Empty),
            Some(tee) => tee.replay(),
        };
        let (Some(body), Some(kept)) = (replay, headers) else {
            debug!(
                token = %token.access_token,
                body_bytes = tee.map_or(0, Tee::bytes_seen),
                "upstream 401 on a body too large to keep for a retry (--retry-body-limit); passing it on"
            );
            // The agent already serves a newer token, so the client's own retry will carry it; the SDKs
            // do not retry a 401 unless told.
            headers::advise_retry(response.headers_mut(), true);
            return Ok(response);
        };
        // Dropping the 401 before reading it costs that connection its reuse, which is cheaper than
        // making the client wait for an error body nobody reads.
        let authorization = fresh.authorization().map_err(ErrorReply::agent_unavailable)?;
        let Some(headers) = kept.restore(authorization) else {
            headers::advise_retry(response.headers_mut(), true);
            return Ok(response);
        };
        drop(response);
        if let Some(log) = log {
            log.retried = true;
        }
        METRICS.token_retries.inc();
        debug!(old = %token.access_token, new = %fresh.access_token, "retrying with the refreshed token");
        let retried = self.send(method, uri, headers, body, None).await?;
        if retried.status() == StatusCode::UNAUTHORIZED {
            warn!(token = %fresh.access_token, "the upstream rejected the refreshed token too; passing the 401 on");
            return Ok(self.rejected_for_now(retried, &fresh.access_token));
        }
        Ok(retried)
    }

    /// A 401 that no retry can mend until the agent has another token: marked so for the client, and
    /// remembered for `/health`, where the agent alone would still report a valid token.
    fn rejected_for_now(&self, mut response: Response<Incoming>, token: &Secret) -> Response<Incoming> {
        self.rejected.rejected(token);
        headers::advise_retry(response.headers_mut(), false);
        response
    }
}

/// What admission settles: the upstream path, the token, the key's place under its concurrency cap
/// (held until the response ends), and the account guard's admission.
type Admitted = (PathAndQuery, Arc<Token>, Option<Slot>, account::Admitted);

/// A request the upstream answered 401, with what sending it again needs.
struct Unauthorized<'a> {
    /// The 401, passed on to the client when no retry is possible.
    response: Response<Incoming>,
    /// The token the upstream rejected, reported to the agent.
    token: &'a Token,
    method: &'a Method,
    uri: Uri,
    /// The upstream-ready headers, kept only when the body was small enough to keep too.
    headers: Option<headers::KeptHeaders>,
    /// The first attempt's body, which can replay what it kept; `None` for a request without a body.
    tee: Option<&'a Tee>,
    log: &'a mut Option<Box<AccessLog>>,
}

fn upstream_request(
    method: &Method,
    uri: Uri,
    headers: HeaderMap,
    body: UpstreamBody,
) -> Request<UpstreamBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    req
}

/// The error and its causes on one line: hyper's top-level messages ("client error (Connect)") say
/// little on their own.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, F: Future>(_f: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// See `Proxy::serve`: 1,128 bytes when the request was held three times over, 360 now.
    #[test]
    fn a_requests_future_stays_small() {
        let size = future_size(Proxy::serve);
        assert!(size <= 512, "Proxy::serve's future is {size} bytes");
    }
}
