//! The ways a real API server (or what stands in front of it) misbehaves, each one switch: a call
//! accepted and never answered, a watch that stalls, drips, sends only BOOKMARKs, garbage or one
//! endless line, a watch answered 410 every time, an event for another object, a Secret of 100 MiB.

use super::{secret_object, Body, State};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::Value;
use std::convert::Infallible;
use std::time::{Duration, Instant};

/// What every watch request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchMode {
    /// The real thing.
    #[default]
    Normal,
    /// The answer's head, then nothing ever (a half-open connection).
    Silent,
    /// The events, one byte a second.
    Drip,
    /// BOOKMARKs and never an event.
    BookmarksOnly,
    /// A line that is not JSON, every second.
    Garbage,
    /// `410 Gone` at once, every time.
    Gone,
    /// One line without end (up to `ENDLESS_LIMIT`, so a broken client does not take the machine).
    EndlessLine,
}

/// The switches, kept in the fake's state.
#[derive(Debug, Default)]
pub(super) struct Switches {
    pub watch: WatchMode,
    /// Secret GETs arriving before this are accepted and never answered.
    pub hang_gets_until: Option<Instant>,
    /// GETs of the Secret answer a Secret this many bytes long.
    pub huge_secret: Option<usize>,
    /// Each watch starts with a MODIFIED event for another Secret holding this value.
    pub other_object: Option<(String, Vec<u8>)>,
}

/// How much of the endless line is sent before the stream goes quiet.
const ENDLESS_LIMIT: usize = 600 * 1024 * 1024;

impl super::FakeKube {
    /// Every Secret GET that arrives in the next `window` is accepted and never answered.
    pub fn hang_secret_gets_for(&self, window: Duration) {
        self.st().switches.hang_gets_until = Some(Instant::now() + window);
    }

    pub fn set_watch_mode(&self, mode: WatchMode) {
        self.st().switches.watch = mode;
    }

    /// GETs of the Secret answer a valid Secret of about `bytes` bytes (an extra key).
    pub fn serve_huge_secret(&self, bytes: usize) {
        self.st().switches.huge_secret = Some(bytes);
    }

    /// Each watch starts with an event for the Secret `name` (another one) holding `key` = `value`: a
    /// server that ignores the field selector.
    pub fn send_other_object_on_watch(&self, name: &str, value: &[u8]) {
        self.st().switches.other_object = Some((name.to_owned(), value.to_vec()));
    }

    /// Watch requests seen so far.
    pub fn watch_requests(&self) -> usize {
        self.st().seen.iter().filter(|s| s.verb == "watch").count()
    }
}

/// Whether this Secret GET is one to hang.
pub(super) fn hangs(s: &State) -> bool {
    s.switches.hang_gets_until.is_some_and(|until| Instant::now() < until)
}

/// The Secret with an extra key of `bytes` base64 characters, streamed.
pub(super) fn huge_secret(s: &State, bytes: usize) -> Response<Body> {
    let object = secret_object(s).to_string();
    // Open the object again after `"data":{`, put the big key first.
    let (head, tail) = object.split_once("\"data\":{").unwrap_or((&object, ""));
    let head = format!("{head}\"data\":{{\"padding\":\"");
    let tail = format!("\",{tail}");
    let chunk = Bytes::from(vec![b'A'; 64 * 1024]);
    let chunks = bytes / chunk.len();
    let body = futures_util::stream::iter(
        std::iter::once(Bytes::from(head))
            .chain(std::iter::repeat_n(chunk, chunks))
            .chain(std::iter::once(Bytes::from(tail))),
    );
    stream_response(body)
}

/// The answer to a watch in `mode`: `normal` is what watch.rs built (it plays `Gone` and
/// `BookmarksOnly` itself).
pub(super) fn watch_answer(mode: WatchMode, normal: impl FnOnce() -> Response<Body>) -> Response<Body> {
    match mode {
        WatchMode::Normal | WatchMode::Gone | WatchMode::BookmarksOnly => normal(),
        WatchMode::Silent => stream_response(futures_util::stream::pending()),
        WatchMode::Drip => drip(normal()),
        WatchMode::Garbage => {
            let every = tokio_stream_interval(Duration::from_secs(1));
            stream_response(every.map(|_| Bytes::from_static(b"this is not { a watch event\n")))
        }
        WatchMode::EndlessLine => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let n = ENDLESS_LIMIT / chunk.len();
            let endless = futures_util::stream::iter(std::iter::repeat_n(chunk, n))
                .chain(futures_util::stream::pending());
            stream_response(endless)
        }
    }
}

/// The other Secret's event, first in a watch.
pub(super) fn other_object_event(s: &State) -> Option<Value> {
    let (name, value) = s.switches.other_object.as_ref()?;
    let mut object = secret_object(s);
    object["metadata"]["name"] = Value::from(name.clone());
    object["metadata"]["uid"] = Value::from("00000000-0000-0000-0000-000000000002");
    let key = object["data"].as_object().and_then(|d| d.keys().next().cloned())?;
    object["data"][key] = Value::from(super::b64(value));
    Some(serde_json::json!({"type": "MODIFIED", "object": object}))
}

/// `resp`'s body, a byte a second.
fn drip(resp: Response<Body>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let bytes = body.into_data_stream().flat_map(|chunk| {
        let chunk = chunk.unwrap_or_default();
        futures_util::stream::iter((0..chunk.len()).map(move |i| chunk.slice(i..i + 1)))
    });
    let slow = bytes.then(|b| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        b
    });
    let body = BodyExt::boxed(StreamBody::new(slow.map(|b| Ok::<_, Infallible>(Frame::data(b)))));
    Response::from_parts(parts, body)
}

fn tokio_stream_interval(every: Duration) -> impl futures_util::Stream<Item = ()> {
    futures_util::stream::unfold((), move |()| async move {
        tokio::time::sleep(every).await;
        Some(((), ()))
    })
}

fn stream_response(body: impl futures_util::Stream<Item = Bytes> + Send + Sync + 'static) -> Response<Body> {
    let body = BodyExt::boxed(StreamBody::new(body.map(|b| Ok::<_, Infallible>(Frame::data(b)))));
    let mut resp = Response::new(body);
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    resp
}
