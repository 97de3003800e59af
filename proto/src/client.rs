//! A minimal client for the agent's socket, used by the forwarder and by the agent's own CLI commands.

use crate::{
    read_frame, write_frame, FrameError, ProtoError, Request, RequestFrame, Response, ResponseFrame,
    StatusReport, TokenGrant, PROTOCOL_VERSION,
};
use std::path::Path;
use tokio::io::BufReader;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the agent at {path}: {cause}")]
    Connect { path: String, cause: std::io::Error },
    #[error("talking to the agent: {0}")]
    Frame(FrameError),
    #[error("the agent closed the connection without answering")]
    Closed,
    #[error("the agent answered with protocol version {0}, this side speaks {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("the agent answered {got} to a {asked} request")]
    UnexpectedAnswer { asked: &'static str, got: &'static str },
    #[error("{0}")]
    Agent(#[from] ProtoError),
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        ClientError::Frame(e)
    }
}

impl ClientError {
    /// Whether the failure is about reaching the agent (worth retrying on a new connection) rather than
    /// an answer from it.
    pub fn is_connection_failure(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::Frame(_) | ClientError::Closed)
    }
}

/// One connection to the agent; reusable for any number of requests, one at a time.
pub struct Client {
    stream: BufReader<UnixStream>,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|cause| ClientError::Connect { path: path.display().to_string(), cause })?;
        Ok(Client { stream: BufReader::new(stream), buf: Vec::with_capacity(512) })
    }

    /// The uid of the process at the other end, by the kernel's word (SO_PEERCRED, as it was when that
    /// process created the socket), so a caller can refuse an impostor before sending anything.
    pub fn peer_uid(&self) -> std::io::Result<u32> {
        Ok(self.stream.get_ref().peer_cred()?.uid())
    }

    /// Sends one request and returns the agent's answer, errors included as `Response::Error`.
    pub async fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        write_frame(self.stream.get_mut(), &RequestFrame::from(request)).await?;
        self.read_response().await
    }

    pub async fn get_token(&mut self) -> Result<TokenGrant, ClientError> {
        self.call_for_token(Request::GetToken, "get_token").await
    }

    pub async fn report_rejected(&mut self, token: crate::Secret) -> Result<TokenGrant, ClientError> {
        self.call_for_token(Request::ReportRejected { token }, "report_rejected").await
    }

    pub async fn refresh(&mut self) -> Result<TokenGrant, ClientError> {
        self.call_for_token(Request::Refresh, "refresh").await
    }

    pub async fn status(&mut self) -> Result<StatusReport, ClientError> {
        match self.call(Request::Status).await? {
            Response::Status(report) => Ok(*report),
            Response::Error(e) => Err(e.into()),
            Response::Token(_) => Err(ClientError::UnexpectedAnswer { asked: "status", got: "a token" }),
        }
    }

    /// Turns this connection into a subscription ([`Request::Subscribe`]); read its answers with
    /// [`Subscription::next`]. The first one is what a token request would get now.
    pub async fn subscribe(mut self) -> Result<Subscription, ClientError> {
        write_frame(self.stream.get_mut(), &RequestFrame::from(Request::Subscribe)).await?;
        Ok(Subscription { client: self })
    }

    async fn read_response(&mut self) -> Result<Response, ClientError> {
        let frame: ResponseFrame =
            read_frame(&mut self.stream, &mut self.buf).await?.ok_or(ClientError::Closed)?;
        if frame.v != PROTOCOL_VERSION {
            return Err(ClientError::Version(frame.v));
        }
        Ok(frame.response)
    }

    async fn call_for_token(
        &mut self,
        request: Request,
        asked: &'static str,
    ) -> Result<TokenGrant, ClientError> {
        match self.call(request).await? {
            Response::Token(grant) => Ok(grant),
            Response::Error(e) => Err(e.into()),
            Response::Status(_) => Err(ClientError::UnexpectedAnswer { asked, got: "a status" }),
        }
    }
}

/// A connection on which the agent pushes what a token request would get, each time it changes.
pub struct Subscription {
    client: Client,
}

impl Subscription {
    /// The next answer the agent pushes: a token, or the error a token request would get now. Waits
    /// as long as the agent has nothing new to say; the caller bounds the wait if it must.
    pub async fn next(&mut self) -> Result<Result<TokenGrant, ProtoError>, ClientError> {
        match self.client.read_response().await? {
            Response::Token(grant) => Ok(Ok(grant)),
            Response::Error(e) => Ok(Err(e)),
            Response::Status(_) => Err(ClientError::UnexpectedAnswer { asked: "subscribe", got: "a status" }),
        }
    }
}
