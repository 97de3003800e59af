//! The Unix socket server: binding safely, checking who is asking (by the kernel's word, SO_PEERCRED),
//! and answering protocol requests from the published snapshot.

use crate::refresh::{Command, Snapshot};
use sidecred_proto::{
    read_frame, write_frame, ErrorCode, FrameError, ProtoError, Request, RequestFrame, Response,
    ResponseFrame, StatusReport, TokenGrant,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Connections served at once; beyond this, new ones wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another agent is already serving on {0}; stop it first or choose another --socket")]
    InUse(PathBuf),
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot create the socket directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
}

pub struct Config {
    pub path: PathBuf,
    pub mode: u32,
    pub allowed_uids: Vec<u32>,
    /// How long a token request may wait for a refresh when the token has expired.
    pub expired_wait: Duration,
    /// Upper bound on waiting for a refresh the client asked for.
    pub refresh_wait: Duration,
    pub seed_path: String,
    pub persist_path: String,
}

/// Binds the socket. A leftover socket file is replaced only when nothing answers on it.
pub async fn bind(path: &Path, mode: u32) -> Result<UnixListener, BindError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|source| BindError::Dir { path: dir.to_owned(), source })?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(BindError::NotASocket { path: path.to_owned() });
            }
            if UnixStream::connect(path).await.is_ok() {
                return Err(BindError::InUse(path.to_owned()));
            }
            info!(socket = %path.display(), "removing a stale socket nothing answers on");
            let _ = std::fs::remove_file(path);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(BindError::Bind { path: path.to_owned(), source }),
    }
    let listener =
        UnixListener::bind(path).map_err(|source| BindError::Bind { path: path.to_owned(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| BindError::Bind { path: path.to_owned(), source })?;
    Ok(listener)
}

struct Context {
    config: Config,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    commands: mpsc::Sender<Command>,
    started: Instant,
}

/// Accepts connections until `shutdown` fires.
pub async fn serve(
    listener: UnixListener,
    config: Config,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    commands: mpsc::Sender<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Arc::new(Context { config, snapshot, commands, started: Instant::now() });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    serve_connection(stream, ctx).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(stream: UnixStream, ctx: Arc<Context>) {
    let peer = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            warn!(error = %e, "cannot read the peer's credentials; closing");
            return;
        }
    };
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::with_capacity(512);
    if !ctx.config.allowed_uids.contains(&peer.uid()) {
        // Read (and discard) the request first, so the peer is not writing into a closed socket when the
        // answer arrives and sees the reason instead of a broken pipe.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            read_frame::<_, RequestFrame>(&mut reader, &mut buf),
        )
        .await;
        warn!(uid = peer.uid(), pid = ?peer.pid(), "refusing a peer whose uid is not allowed (see --allow-uid)");
        let denied = ProtoError::new(
            ErrorCode::PermissionDenied,
            format!("uid {} is not allowed to use this agent (see --allow-uid)", peer.uid()),
        );
        let _ = write_frame(&mut writer, &ResponseFrame::from(Response::Error(denied))).await;
        return;
    }
    loop {
        let response = match read_frame::<_, RequestFrame>(&mut reader, &mut buf).await {
            Ok(None) => return,
            Ok(Some(frame)) => handle(frame.request, &ctx).await,
            Err(FrameError::Io(_) | FrameError::Truncated) => return,
            Err(e) => {
                let code = match e {
                    FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
                    _ => ErrorCode::BadRequest,
                };
                debug!(uid = peer.uid(), error = %e, "bad request; closing the connection");
                let answer = Response::Error(ProtoError::new(code, e.to_string()));
                let _ = write_frame(&mut writer, &ResponseFrame::from(answer)).await;
                return;
            }
        };
        if write_frame(&mut writer, &ResponseFrame::from(response)).await.is_err() {
            return;
        }
    }
}

async fn handle(request: Request, ctx: &Context) -> Response {
    let result = match request {
        Request::GetToken => get_token(ctx).await,
        Request::Status => return Response::Status(Box::new(status(ctx))),
        Request::ReportRejected { token } => {
            ask_manager(ctx, |reply| Command::Rejected { token, reply }).await
        }
        Request::Refresh => ask_manager(ctx, |reply| Command::Refresh { reply }).await,
    };
    match result {
        Ok(grant) => Response::Token(grant),
        Err(e) => Response::Error(e),
    }
}

/// Answers from memory. Only an expired token makes it wait, and only briefly, for a refresh.
async fn get_token(ctx: &Context) -> Result<TokenGrant, ProtoError> {
    let mut rx = ctx.snapshot.clone();
    let deadline = Instant::now() + ctx.config.expired_wait;
    loop {
        {
            let snap = rx.borrow_and_update();
            let now = Instant::now();
            if let Some(token) = snap.servable(now) {
                return Ok(token.grant(now));
            }
            if let Some(e) = snap.terminal_error() {
                return Err(e);
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => {
                let snap = rx.borrow();
                let detail = snap.last_error.clone().unwrap_or_else(|| "refresh in progress".to_owned());
                return Err(ProtoError::new(
                    ErrorCode::Unavailable,
                    format!("the access token has expired and no new one is available yet ({detail})"),
                ));
            }
        }
    }
}

async fn ask_manager(
    ctx: &Context,
    make: impl FnOnce(oneshot::Sender<Result<TokenGrant, ProtoError>>) -> Command,
) -> Result<TokenGrant, ProtoError> {
    let (tx, rx) = oneshot::channel();
    if ctx.commands.send(make(tx)).await.is_err() {
        return Err(ProtoError::new(ErrorCode::Unavailable, "the agent is shutting down"));
    }
    match tokio::time::timeout(ctx.config.refresh_wait, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(ProtoError::new(ErrorCode::Unavailable, "the agent is shutting down")),
        Err(_) => Err(ProtoError::new(ErrorCode::Unavailable, "the refresh is taking too long; try again")),
    }
}

fn status(ctx: &Context) -> StatusReport {
    let snap = ctx.snapshot.borrow().clone();
    let now = Instant::now();
    let signed_secs = |t: Instant| -> i64 {
        if t >= now {
            t.duration_since(now).as_secs() as i64
        } else {
            -(now.duration_since(t).as_secs() as i64)
        }
    };
    StatusReport {
        state: Some(snap.state),
        message: snap.message.clone(),
        token_fingerprint: snap.token.as_ref().map(|t| t.access_token.fingerprint()),
        expires_at_ms: snap.token.as_ref().map(|t| t.expires_at_ms),
        expires_in_s: snap.token.as_ref().map(|t| signed_secs(t.deadline)),
        next_refresh_in_s: snap.next_refresh.map(signed_secs),
        last_refresh_at_ms: snap.last_refresh_at_ms,
        last_error: snap.last_error.clone(),
        last_error_at_ms: snap.last_error_at_ms,
        refresh_count: snap.refresh_count,
        subscription_type: snap.subscription_type.clone(),
        scopes: snap.scopes.clone(),
        account: snap.account.clone(),
        seed_path: Some(ctx.config.seed_path.clone()),
        persist_path: Some(ctx.config.persist_path.clone()),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_s: ctx.started.elapsed().as_secs(),
    }
}
