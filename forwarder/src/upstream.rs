//! The upstream client: one pooled hyper client for the one upstream, TLS by rustls with the webpki
//! roots, HTTP/2 when the server offers it by ALPN, through an HTTP CONNECT proxy when `HTTPS_PROXY`
//! (or `HTTP_PROXY` for a plain-http upstream) says so and `NO_PROXY` does not exempt the host.

use crate::body::UpstreamBody;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// A TCP connect that takes longer than this is a network problem, not a slow API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle upstream connections are kept this long: below the API's own idle timeout, so the pool rarely
/// hands out a connection the server is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the TLS configuration could not be built: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the upstream {0} has no host")]
    NoHost(String),
    #[error("the proxy {proxy} for {upstream} is not usable: {reason}")]
    Proxy { proxy: String, upstream: String, reason: String },
    #[error("--upstream-ca-file {path}: {reason}")]
    CaFile { path: String, reason: String },
}

/// The CAs trusted for the upstream: the built-in web roots, plus the PEM certificates of
/// `--upstream-ca-file` when given. Built once at start, so a wrong file is refused there, with its name,
/// instead of failing every request.
pub fn trust_roots(ca_file: Option<&Path>) -> Result<RootCertStore, UpstreamError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let Some(path) = ca_file else { return Ok(roots) };
    let fail = |reason: String| UpstreamError::CaFile { path: path.display().to_string(), reason };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(fail("holds no `BEGIN CERTIFICATE` block".to_owned()));
    }
    let count = certs.len();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| fail(format!("certificate {} of {count} is not usable as a CA: {e}", i + 1)))?;
    }
    Ok(roots)
}

pub type HttpClient = Client<Shared, UpstreamBody>;

pub struct Upstream {
    pub client: HttpClient,
    scheme: Scheme,
    authority: Authority,
    /// The `Host` header every upstream request carries.
    pub host: HeaderValue,
    /// The proxy in use, for the start-up log (without credentials).
    pub via: Option<String>,
}

impl Upstream {
    /// Builds the client for `upstream`, consulting `proxies` (usually [`Matcher::from_env`]) once:
    /// there is only one destination, so the decision cannot change per request.
    pub fn new(upstream: &Uri, proxies: &Matcher, roots: &RootCertStore) -> Result<Self, UpstreamError> {
        let (scheme, authority) = match (upstream.scheme(), upstream.authority()) {
            (Some(s), Some(a)) => (s.clone(), a.clone()),
            _ => return Err(UpstreamError::NoHost(upstream.to_string())),
        };
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| UpstreamError::NoHost(upstream.to_string()))?;

        let mut http = HttpConnector::new();
        // The HTTPS layer decides about the scheme; this one only makes TCP connections.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));

        let (connector, via) = match proxies.intercept(upstream) {
            None => (Connector::Direct(http), None),
            Some(intercept) => {
                let proxy = intercept.uri().clone();
                let shown = match (proxy.host(), proxy.port_u16()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_owned(),
                    _ => {
                        return Err(UpstreamError::Proxy {
                            proxy: "(no host)".into(),
                            upstream: upstream.to_string(),
                            reason: "the proxy URL has no host".into(),
                        })
                    }
                };
                if proxy.scheme_str() != Some("http") {
                    return Err(UpstreamError::Proxy {
                        proxy: shown,
                        upstream: upstream.to_string(),
                        reason: "only http:// proxies (HTTP CONNECT) are supported".into(),
                    });
                }
                let mut tunnel = Tunnel::new(proxy, http);
                if let Some(auth) = intercept.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                (Connector::Tunnel(tunnel), Some(shown))
            }
        };

        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
        // ALPN (h2, then http/1.1) is set by the builder: HTTP/2 whenever the upstream offers it.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);

        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // We set Host ourselves, once, from the configured upstream.
            .set_host(false)
            .build(Shared(Arc::new(https)));
        Ok(Upstream { client, scheme, authority, host, via })
    }

    /// The upstream URL for a request path (with its query).
    pub fn uri(&self, path_and_query: PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        // Scheme, authority and path each parsed already; together they always form a valid URI.
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }
}

/// TCP to the upstream, directly or through a CONNECT tunnel. One type for both, so the client type
/// does not depend on the environment.
#[derive(Clone)]
pub enum Connector {
    Direct(HttpConnector),
    Tunnel(Tunnel<HttpConnector>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Connector::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Connector::Tunnel(c) => c.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        match self {
            Connector::Direct(c) => {
                let fut = c.call(dst);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
            Connector::Tunnel(c) => {
                let fut = c.call(dst);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
        }
    }
}

/// The TLS connector behind one `Arc`. hyper-util's client clones its connector for every request, in
/// case the pool has no idle connection for it; the TLS connector's clone is four reference counts
/// taken and dropped, this one's is one.
#[derive(Clone)]
pub struct Shared(Arc<HttpsConnector<Connector>>);

impl tower_service::Service<Uri> for Shared {
    type Response = <HttpsConnector<Connector> as tower_service::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = <HttpsConnector<Connector> as tower_service::Service<Uri>>::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Every connector here is always ready (`Connector::poll_ready` asks hyper-util's, which are).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        // A connection is being made: the one place the connector itself is cloned.
        let mut connector = HttpsConnector::clone(&self.0);
        connector.call(dst)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn roots() -> RootCertStore {
        trust_roots(None).unwrap()
    }

    #[test]
    fn direct_when_no_proxy_applies() {
        let m = Matcher::builder().build();
        let up = Upstream::new(&Uri::from_static("https://api.anthropic.com"), &m, &roots()).unwrap();
        assert!(up.via.is_none());
        assert_eq!(up.host, "api.anthropic.com");
        let uri = up.uri(PathAndQuery::from_static("/v1/messages?beta=true"));
        assert_eq!(uri, "https://api.anthropic.com/v1/messages?beta=true");
    }

    #[test]
    fn https_proxy_is_used_unless_no_proxy_exempts() {
        let upstream = Uri::from_static("https://api.anthropic.com");
        let m = Matcher::builder().https("http://user:pw@proxy.internal:3128").build();
        let up = Upstream::new(&upstream, &m, &roots()).unwrap();
        assert_eq!(up.via.as_deref(), Some("proxy.internal:3128"));

        let m = Matcher::builder().https("http://proxy.internal:3128").no("api.anthropic.com").build();
        assert!(Upstream::new(&upstream, &m, &roots()).unwrap().via.is_none());

        // A plain-http upstream follows HTTP_PROXY, not HTTPS_PROXY.
        let m = Matcher::builder().https("http://proxy.internal:3128").build();
        assert!(Upstream::new(&Uri::from_static("http://127.0.0.1:9"), &m, &roots()).unwrap().via.is_none());
    }

    #[test]
    fn port_is_kept_in_host() {
        let m = Matcher::builder().build();
        let up = Upstream::new(&Uri::from_static("http://127.0.0.1:8123"), &m, &roots()).unwrap();
        assert_eq!(up.host, "127.0.0.1:8123");
    }
}
