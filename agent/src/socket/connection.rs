//! One connection on its own thread: reading frames under deadlines, polling a busy connection, and
//! refusing peers that may not ask.
//!
//! Waiting for the next request may take up to the idle timeout (`--idle-timeout`); once a frame has begun, all of it must
//! arrive within [`FRAME_DEADLINE`], so a peer that drips bytes cannot hold a thread. A refused peer
//! never holds one of the allowed peers' slots: it gets a small budget of its own.

use super::Context;
use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use sidecred_proto::blocking::{read_frame, write_frame};
use sidecred_proto::{
    ErrorCode, FrameError, ProtoError, Request, RequestFrame, Response, ResponseFrame, PROTOCOL_VERSION,
};
use std::io::{BufReader, ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Requests are a few dozen bytes; one read usually takes a whole frame.
const READ_BUFFER: usize = 2048;

/// How long a busy connection polls for its next request before parking in `read` (see [`Pacer`]).
const POLL_WINDOW: Duration = Duration::from_micros(50);

/// The longest one frame may take to arrive once its first byte has, and an answer to be written.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(1);

/// Reads that allow the idle timeout before a frame and [`FRAME_DEADLINE`] for the whole frame. The
/// deadline costs a system call only when a frame spans several reads, which a well-behaved client's
/// never does.
struct FrameReader<'a> {
    stream: &'a UnixStream,
    /// When the frame being read began; `None` while waiting for one.
    frame_began: Option<Instant>,
    idle: Option<Duration>,
}

impl Read for FrameReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(began) = self.frame_began else {
            let n = self.stream.read(buf)?;
            if n > 0 {
                self.frame_began = Some(Instant::now());
            }
            return Ok(n);
        };
        let left = FRAME_DEADLINE.saturating_sub(began.elapsed());
        if left.is_zero() {
            return Err(std::io::Error::new(ErrorKind::TimedOut, "the frame took too long to arrive"));
        }
        self.stream.set_read_timeout(Some(left))?;
        let result = self.stream.read(buf);
        self.stream.set_read_timeout(self.idle)?;
        result
    }
}

/// How serving a connection on its thread ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed,
    /// The peer subscribed: the connection is to be handed to a subscription task.
    Subscribed,
}

/// Serves an allowed peer until it closes, misbehaves, goes idle, subscribes, or the agent shuts down.
pub fn serve(stream: &UnixStream, uid: u32, ctx: &Context) -> Ended {
    // Zero would mean "no timeout" to the socket: the smallest timeout stands in for it.
    let idle = ctx.idle_timeout.max(Duration::from_millis(1));
    if stream.set_read_timeout(Some(idle)).is_err() || stream.set_write_timeout(Some(FRAME_DEADLINE)).is_err()
    {
        return Ended::Closed;
    }
    let source = FrameReader { stream, frame_began: None, idle: Some(idle) };
    let mut reader = BufReader::with_capacity(READ_BUFFER, source);
    let mut writer = stream;
    let mut buf = Vec::with_capacity(512);
    let mut pacer = Pacer::default();
    loop {
        if reader.buffer().is_empty() {
            reader.get_mut().frame_began = None;
            pacer.await_request(stream);
        } else {
            // The next frame began in the last read.
            reader.get_mut().frame_began = Some(Instant::now());
        }
        let response = match read_frame::<_, RequestFrame>(&mut reader, &mut buf) {
            Ok(None) => return Ended::Closed,
            Ok(Some(_)) if ctx.closing.load(Ordering::Acquire) => return Ended::Closed,
            Ok(Some(frame)) if frame.v != PROTOCOL_VERSION => {
                let e = FrameError::UnsupportedVersion { got: frame.v, supported: PROTOCOL_VERSION };
                refuse(&mut writer, uid, ErrorCode::UnsupportedVersion, &e.to_string());
                return Ended::Closed;
            }
            Ok(Some(frame)) if frame.request == Request::Subscribe => return Ended::Subscribed,
            Ok(Some(frame)) => {
                pacer.arrived();
                ctx.answers.answer(frame.request)
            }
            Err(FrameError::Io(_) | FrameError::Truncated) => return Ended::Closed,
            Err(e) => {
                let code = match e {
                    FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
                    _ => ErrorCode::BadRequest,
                };
                refuse(&mut writer, uid, code, &e.to_string());
                return Ended::Closed;
            }
        };
        if write_frame(&mut writer, &ResponseFrame::from(response)).is_err() {
            return Ended::Closed;
        }
        pacer.answered();
    }
}

/// Answers a peer that may not be served with `code` and why, then closes. Its request is read (within
/// one [`FRAME_DEADLINE`] for everything) so the peer is not writing into a closed socket when the
/// answer arrives, and sees the reason instead of a broken pipe.
pub fn turn_away(stream: &UnixStream, code: ErrorCode, why: &str) {
    if stream.set_read_timeout(Some(FRAME_DEADLINE)).is_err()
        || stream.set_write_timeout(Some(FRAME_DEADLINE)).is_err()
    {
        return;
    }
    let source = FrameReader { stream, frame_began: Some(Instant::now()), idle: Some(FRAME_DEADLINE) };
    let mut reader = BufReader::with_capacity(READ_BUFFER, source);
    let _ = read_frame::<_, RequestFrame>(&mut reader, &mut Vec::new());
    let mut writer = stream;
    let _ = write_frame(&mut writer, &ResponseFrame::from(Response::Error(ProtoError::new(code, why))));
}

fn refuse(writer: &mut &UnixStream, uid: u32, code: ErrorCode, why: &str) {
    debug!(uid, error = %why, "bad request; closing the connection");
    let answer = Response::Error(ProtoError::new(code, why));
    let _ = write_frame(writer, &ResponseFrame::from(answer));
}

/// Adaptive polling of a busy connection. A client asking back to back (a loaded forwarder) sends its
/// next request a few microseconds after our answer; parking the thread in `read` then costs a sleep
/// and a cross-CPU wake-up that take longer than the wait itself, so a connection whose last request
/// came within [`POLL_WINDOW`] of the answer before it polls for that long first, yielding the CPU
/// between polls. An idle connection goes straight to `read`: polling costs nothing when there is
/// nothing to poll for.
#[derive(Default)]
struct Pacer {
    answered_at: Option<Instant>,
    busy: bool,
}

impl Pacer {
    fn answered(&mut self) {
        self.answered_at = Some(Instant::now());
    }

    fn arrived(&mut self) {
        self.busy = self.answered_at.is_some_and(|t| t.elapsed() <= POLL_WINDOW);
    }

    fn await_request(&self, stream: &UnixStream) {
        let Some(answered_at) = self.answered_at.filter(|_| self.busy) else { return };
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        let mut probe = [0u8; 1];
        while answered_at.elapsed() < POLL_WINDOW {
            match nix::sys::socket::recv(stream.as_raw_fd(), &mut probe, flags) {
                Err(Errno::EAGAIN) => std::thread::yield_now(),
                // Data, end of stream or an error: the read that follows sees it.
                _ => return,
            }
        }
    }
}

/// Logs a refused peer once per connection.
pub fn log_refusal(uid: u32, pid: Option<i32>, why: &str) {
    warn!(uid, pid = ?pid, reason = why, "refusing a connection");
}
