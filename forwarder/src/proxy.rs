//! The request path: route, check the client's key, get the token, rewrite headers, send upstream,
//! retry once on 401, stream the answer back.

use crate::access::AccessLog;
use crate::agent::{AgentError, Token, TokenSource};
use crate::body::{discard, ResponseBody, Tee, UpstreamBody};
use crate::errors::ErrorReply;
use crate::headers;
use crate::health;
use crate::keys::InboundKeys;
use crate::limiter::Slot;
use crate::metrics::{KeyLabels, Outcome, Route, METRICS};
use crate::rejected::RejectedToken;
use crate::upstream::Upstream;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use sidecred_proto::{ErrorCode, Secret};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, error, warn};

pub struct Proxy {
    pub upstream: Upstream,
    pub tokens: TokenSource,
    pub keys: Option<Arc<InboundKeys>>,
    pub max_request_body: u64,
    pub retry_body_limit: u64,
    /// Shared by all workers, so `/health` on any of them knows.
    pub rejected: Arc<RejectedToken>,
}

impl Proxy {
    /// The hyper service: every request gets an answer, errors included, so the error type is empty.
    pub async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        // The probes' futures (a whole agent exchange) are boxed so they do not make every request's
        // future larger: hyper moves that future around, so its size is paid on each request.
        let resp = match req.uri().path() {
            "/livez" => health::livez(),
            "/readyz" => Box::pin(health::readyz(&self.tokens)).await,
            "/health" => Box::pin(health::health(&self.tokens, &self.rejected)).await,
            "/metrics" => crate::exposition::page(req.headers()),
            _ => return Ok(self.forward(req).await),
        };
        // Probes come every few seconds; they go to debug so the access log stays about traffic.
        debug!(path = req.uri().path(), status = resp.status().as_u16(), "probe");
        Ok(resp)
    }

    async fn forward(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let (mut parts, body) = req.into_parts();
        let request_id = headers::request_id(&mut parts.headers);
        let mut log = AccessLog::start(&parts.method, &parts.uri, &request_id);
        let route = Route::of(parts.uri.path());
        let arrived = Instant::now();
        // Boxed: hyper keeps the service future in a per-connection slot and moves it there for every
        // request, and the slot lives as long as the connection (a whole stream). A pointer is cheaper
        // to move and to keep than the 2 KiB this future holds while it waits.
        let mut resp = match Box::pin(self.forward_inner(parts, body, &mut log, route)).await {
            Ok((rparts, incoming, slot)) => {
                METRICS.request(route, rparts.status, Outcome::of_upstream(rparts.status));
                Response::from_parts(rparts, ResponseBody::upstream(incoming, route, arrived, slot))
            }
            Err(e) => {
                METRICS.request(route, e.status, e.outcome);
                e.into_response()
            }
        };
        resp.headers_mut().entry(&headers::X_REQUEST_ID).or_insert(request_id);
        match log {
            Some(mut log) => {
                log.status = resp.status().as_u16();
                resp.map(|body| body.with_log(log))
            }
            None => resp,
        }
    }

    async fn forward_inner(
        &self,
        mut parts: Parts,
        body: Incoming,
        log: &mut Option<AccessLog>,
        route: Route,
    ) -> Result<(http::response::Parts, Incoming, Option<Slot>), ErrorReply> {
        let (path, declared, token, slot) = match self.admit(&mut parts).await {
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
        let retry_headers = may_retry.then(|| parts.headers.clone());
        let (body, tee) = if body.is_end_stream() {
            (UpstreamBody::Empty, None)
        } else {
            let keep = if may_retry { self.retry_body_limit } else { 0 };
            let (body, tee) = UpstreamBody::streaming(body, self.max_request_body, keep);
            (body, Some(tee))
        };

        let sent = Instant::now();
        let headers = std::mem::take(&mut parts.headers);
        let first = self.send(&parts, uri.clone(), headers, body, tee.as_ref()).await;
        let resp = match first {
            Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                // Rare, and its future (an agent exchange and a second upstream request) is large: boxed,
                // so the common path's future stays small.
                let rejection = Rejection {
                    response: resp,
                    token: &token,
                    parts: &parts,
                    uri,
                    headers: retry_headers,
                    tee: tee.as_ref(),
                    log,
                };
                Box::pin(self.after_rejection(rejection)).await?
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

        let (mut rparts, incoming) = resp.into_parts();
        METRICS.usage.observe(&rparts.headers);
        headers::to_client(&mut rparts.headers);
        // The client's protocol is not the upstream's; the server picks the right framing.
        rparts.version = Version::default();
        Ok((rparts, incoming, slot))
    }

    /// Everything that can refuse a request before its body is touched: the client's key, the path,
    /// the declared size, the token. On success the headers are ready for the upstream.
    async fn admit(&self, parts: &mut Parts) -> Result<Admitted, ErrorReply> {
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
        let declared = declared_length(&parts.headers);
        if declared.is_some_and(|n| n > self.max_request_body) {
            return Err(ErrorReply::too_large(self.max_request_body));
        }
        let token = self.tokens.token().await.map_err(|e| agent_failure(&e))?;
        let authorization = token.authorization().map_err(ErrorReply::agent_unavailable)?;
        headers::to_upstream(&mut parts.headers, authorization, &self.upstream.host);
        Ok((path, declared, token, slot))
    }

    async fn send(
        &self,
        parts: &Parts,
        uri: Uri,
        headers: HeaderMap,
        body: UpstreamBody,
        tee: Option<&Tee>,
    ) -> Result<Response<Incoming>, ErrorReply> {
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        self.upstream.client.request(req).await.map_err(|e| {
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
    async fn after_rejection(&self, rejection: Rejection<'_>) -> Result<Response<Incoming>, ErrorReply> {
        let Rejection { mut response, token, parts, uri, headers, tee, log } = rejection;
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
        let (Some(body), Some(mut headers)) = (replay, headers) else {
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
        drop(response);
        headers.insert(
            http::header::AUTHORIZATION,
            fresh.authorization().map_err(ErrorReply::agent_unavailable)?,
        );
        if let Some(log) = log {
            log.retried = true;
        }
        METRICS.token_retries.inc();
        debug!(old = %token.access_token, new = %fresh.access_token, "retrying with the refreshed token");
        let retried = self.send(parts, uri, headers, body, None).await?;
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

/// What admission settles: the upstream path, the declared body size, the token, and the key's place
/// under its concurrency cap (held until the response ends).
type Admitted = (PathAndQuery, Option<u64>, Arc<Token>, Option<Slot>);

/// A request the upstream answered 401, with what sending it again needs.
struct Rejection<'a> {
    /// The 401, passed on to the client when no retry is possible.
    response: Response<Incoming>,
    /// The token the upstream rejected, reported to the agent.
    token: &'a Token,
    /// The method is taken from here; the headers were moved out for the first attempt.
    parts: &'a Parts,
    uri: Uri,
    /// The upstream-ready headers, kept only when the body was small enough to keep too.
    headers: Option<HeaderMap>,
    /// The first attempt's body, which can replay what it kept; `None` for a request without a body.
    tee: Option<&'a Tee>,
    log: &'a mut Option<AccessLog>,
}

/// Where a client path goes upstream, query kept: `/v1/...` as it is; `/api/v1/...` without `/api` (the
/// base URL the deployment guide gives clients); and either with its `/v1` doubled (`/v1/v1/...`,
/// `/api/v1/v1/...`) with one `/v1` fewer, since clients append `/v1/...` to their base URL themselves
/// (One-Hub, the SDKs, Claude Code) and a base URL copied with `/v1` or `/api/v1` at its end doubles it.
/// Anything else is not ours to forward.
pub fn upstream_path(uri: &Uri) -> Option<PathAndQuery> {
    let pq = uri.path_and_query()?;
    match client_prefix(pq.path())? {
        0 => Some(pq.clone()),
        skip => PathAndQuery::try_from(&pq.as_str()[skip..]).ok(),
    }
}

/// How many leading bytes of `path` are the client's base path, not the API's; `None` when what
/// follows is not an API path either.
fn client_prefix(path: &str) -> Option<usize> {
    let is_v1 = |p: &str| p == "/v1" || p.starts_with("/v1/");
    let api = match path.strip_prefix("/api") {
        Some(rest) if is_v1(rest) => "/api".len(),
        _ => 0,
    };
    let rest = &path[api..];
    if !is_v1(rest) {
        return None;
    }
    let doubled = is_v1(&rest["/v1".len()..]);
    Some(api + if doubled { "/v1".len() } else { 0 })
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn agent_failure(e: &AgentError) -> ErrorReply {
    match e {
        AgentError::ReauthRequired(m) => reauth(m),
        AgentError::Refused(p) if p.code == ErrorCode::StaticTokenRejected => {
            static_token_rejected(&p.message)
        }
        AgentError::Refused(p) => {
            warn!(code = %p.code, error = %p.message, "the agent has no token to serve");
            let e = ErrorReply::agent_unavailable(format_args!(
                "it has no valid token ({}): {}",
                p.code, p.message
            ));
            // These last until an operator changes the agent's configuration or the forwarder's.
            match p.code {
                ErrorCode::PermissionDenied | ErrorCode::UnsupportedVersion | ErrorCode::BadRequest => {
                    e.final_answer()
                }
                _ => e,
            }
        }
        AgentError::Unreachable { .. } | AgentError::Timeout(_) => {
            warn!(error = %e, "the agent is not answering");
            ErrorReply::agent_unavailable(e)
        }
        AgentError::Impostor { .. } => {
            error!(error = %e, "not the agent: nothing was sent to it and nothing forwarded");
            // Until someone removes that socket or corrects --agent-uid.
            ErrorReply::agent_unavailable(e).final_answer()
        }
    }
}

fn reauth(agent_message: &str) -> ErrorReply {
    warn!("the agent's refresh token was rejected: someone must log in again");
    ErrorReply::unauthorized(format!(
        "the Claude login behind this forwarder has expired or was revoked; an operator must log in again \
         (sidecred-agent login) and update the agent's credentials. Agent says: {agent_message}"
    ))
    .counted_as(Outcome::ReauthRequired)
}

fn static_token_rejected(agent_message: &str) -> ErrorReply {
    warn!("the upstream rejected the agent's static token, which cannot be refreshed");
    ErrorReply::unauthorized(format!(
        "the static token behind this forwarder was rejected, and a static token cannot be refreshed; an \
         operator must replace it (sidecred-agent run --static-token-env) or run the agent on a login. Agent \
         says: {agent_message}"
    ))
    .counted_as(Outcome::ReauthRequired)
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

    fn path(s: &str) -> Option<String> {
        upstream_path(&s.parse::<Uri>().unwrap()).map(|p| p.as_str().to_owned())
    }

    #[test]
    fn paths() {
        assert_eq!(path("/v1/messages").as_deref(), Some("/v1/messages"));
        assert_eq!(path("/v1/messages?beta=true").as_deref(), Some("/v1/messages?beta=true"));
        assert_eq!(path("/api/v1/messages").as_deref(), Some("/v1/messages"));
        assert_eq!(path("/api/v1/models?limit=5").as_deref(), Some("/v1/models?limit=5"));
        assert_eq!(path("/v1").as_deref(), Some("/v1"));
        assert_eq!(path("http://h:1/v1/models").as_deref(), Some("/v1/models"));
        assert_eq!(path("/"), None);
        assert_eq!(path("/v2/messages"), None);
        assert_eq!(path("/v1x"), None);
        assert_eq!(path("/api/v2/messages"), None);
        assert_eq!(path("/api"), None);
        assert_eq!(path("/apiv1/messages"), None);
        assert_eq!(path("/health/v1"), None);
    }

    #[test]
    fn a_doubled_v1_is_served_once() {
        assert_eq!(path("/v1/v1/messages").as_deref(), Some("/v1/messages"));
        assert_eq!(path("/v1/v1/messages?beta=true").as_deref(), Some("/v1/messages?beta=true"));
        assert_eq!(path("/api/v1/v1/messages?beta=true").as_deref(), Some("/v1/messages?beta=true"));
        assert_eq!(path("/api/v1/v1/models").as_deref(), Some("/v1/models"));
        assert_eq!(path("/api/v1/v1/messages/count_tokens").as_deref(), Some("/v1/messages/count_tokens"));
        assert_eq!(path("/v1/v1").as_deref(), Some("/v1"));
        assert_eq!(path("/api/v1/v1").as_deref(), Some("/v1"));
        // Only a whole `/v1` segment counts, and only one of them is the client's.
        assert_eq!(path("/v1/v1x").as_deref(), Some("/v1/v1x"));
        assert_eq!(path("/v1/v1/v1/models").as_deref(), Some("/v1/v1/models"));
        assert_eq!(path("/api/api/v1/messages"), None);
        assert_eq!(path("/v1/api/v1/messages").as_deref(), Some("/v1/api/v1/messages"));
    }

    #[test]
    fn declared_lengths() {
        let mut h = HeaderMap::new();
        assert_eq!(declared_length(&h), None);
        h.insert(CONTENT_LENGTH, "42".parse().unwrap());
        assert_eq!(declared_length(&h), Some(42));
        h.insert(CONTENT_LENGTH, "nope".parse().unwrap());
        assert_eq!(declared_length(&h), None);
    }

    #[test]
    fn a_rejected_static_token_is_a_401_that_says_it_cannot_be_refreshed() {
        let refused = AgentError::Refused(sidecred_proto::ProtoError::new(
            ErrorCode::StaticTokenRejected,
            "replace $T",
        ));
        let e = agent_failure(&refused);
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert_eq!(e.kind, "authentication_error");
        assert!(e.message.contains("a static token cannot be refreshed"), "{}", e.message);
        assert!(e.message.contains("replace $T"), "{}", e.message);
    }

    #[test]
    fn reauth_message_says_to_log_in_again() {
        let e = reauth("invalid_grant");
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert_eq!(e.kind, "authentication_error");
        assert!(e.message.contains("log in again"));
        assert_eq!(e.retry, Some(false), "Claude Code would retry it for minutes");
    }
}
