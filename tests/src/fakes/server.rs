//! The HTTP/1.1 server the fakes of outside services run on.

/// An HTTP/1.1 server for the fakes (on a loopback port in the tests); stopped when dropped.
pub struct FakeServer {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Serves every connection with `handler` (a `service_fn` body), on a free loopback port.
    pub async fn start<F, Fut, B, E>(handler: F) -> FakeServer
    where
        F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<hyper::Response<B>, E>> + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        FakeServer::bind(loopback, handler).await.expect("bind a fake server")
    }

    /// [`FakeServer::start`] on `addr`: the demo stand-in takes its address from the user, so a busy
    /// port is an error to report, not a panic.
    pub async fn bind<F, Fut, B, E>(addr: std::net::SocketAddr, handler: F) -> std::io::Result<FakeServer>
    where
        F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<hyper::Response<B>, E>> + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper::service::service_fn(handler),
                        )
                        .await;
                });
            }
        });
        Ok(FakeServer { addr, task })
    }
}
