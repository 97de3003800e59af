//! The Secret watch: a chunked stream of JSON events, one per line, as the real API server sends them.
//! Resuming from a resource version replays what changed since; one older than the last compaction gets
//! an ERROR event with `410 Gone` (the client must list again); BOOKMARK events carry the current version
//! when asked for; the stream ends at `timeoutSeconds`, or when the server goes down.

use super::misbehave::{self, WatchMode};
use super::{secret_object, status_object, Body, State};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

struct Stream {
    pending: VecDeque<Value>,
    /// End once `pending` is sent (after a 410).
    finish: bool,
    events: broadcast::Receiver<(u64, Value)>,
    down: tokio::sync::watch::Receiver<bool>,
    bookmarks: Option<tokio::time::Interval>,
    /// Never send an event but bookmarks (a broken server).
    bookmarks_only: bool,
    deadline: Instant,
    last_rv: u64,
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

pub(super) fn start(s: &mut State, params: &BTreeMap<String, String>) -> Response<Body> {
    let from = params.get("resourceVersion").and_then(|v| v.parse::<u64>().ok()).filter(|v| *v > 0);
    let timeout = params.get("timeoutSeconds").and_then(|v| v.parse::<u64>().ok()).unwrap_or(300).min(3600);
    let mut pending = VecDeque::new();
    let mut finish = false;
    let mode = s.switches.watch;
    pending.extend(misbehave::other_object_event(s));
    match from {
        _ if mode == WatchMode::Gone => {
            let gone = status_object(StatusCode::GONE, "Expired", "too old resource version (always, fake)");
            pending.push_back(event("ERROR", gone));
            finish = true;
        }
        None => pending.push_back(event("ADDED", secret_object(s))),
        Some(rv) if rv < s.oldest_rv => {
            let msg = format!("too old resource version: {rv} ({})", s.oldest_rv);
            pending.push_back(event("ERROR", status_object(StatusCode::GONE, "Expired", &msg)));
            finish = true;
        }
        Some(rv) => {
            for (_, object) in s.history.iter().filter(|(h, _)| *h > rv) {
                pending.push_back(event("MODIFIED", object.clone()));
            }
        }
    }
    let bookmarks = (params.get("allowWatchBookmarks").map(String::as_str) == Some("true")).then(|| {
        let every = s.bookmark_every.max(Duration::from_millis(10));
        tokio::time::interval_at(Instant::now() + every, every)
    });
    let bookmarks_only = mode == WatchMode::BookmarksOnly;
    if bookmarks_only {
        pending.retain(|e| e["type"] == "BOOKMARK");
    }
    let stream = Stream {
        pending,
        finish,
        events: s.events.subscribe(),
        down: s.down_tx.subscribe(),
        bookmarks,
        bookmarks_only,
        deadline: Instant::now() + Duration::from_secs(timeout),
        last_rv: s.secret_rv,
    };
    misbehave::watch_answer(mode, move || {
        let lines = futures_util::stream::unfold(stream, next_line)
            .map(|line| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{line}\n")))));
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(lines)));
        resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
        resp
    })
}

async fn next_line(mut st: Stream) -> Option<(Value, Stream)> {
    if let Some(ev) = st.pending.pop_front() {
        return Some((ev, st));
    }
    if st.finish || *st.down.borrow() {
        return None;
    }
    loop {
        let bookmark = async {
            match st.bookmarks.as_mut() {
                Some(i) => {
                    i.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = st.events.recv() => match ev {
                Ok((rv, _)) if st.bookmarks_only => st.last_rv = rv,
                Ok((rv, object)) => {
                    st.last_rv = rv;
                    return Some((event("MODIFIED", object), st));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    st.finish = true;
                    let gone = status_object(StatusCode::GONE, "Expired", "the watch fell behind");
                    return Some((event("ERROR", gone), st));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            () = bookmark => {
                let rv = st.last_rv.to_string();
                let object = json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"resourceVersion": rv}});
                return Some((event("BOOKMARK", object), st));
            }
            () = tokio::time::sleep_until(st.deadline) => return None,
            changed = st.down.changed() => {
                if changed.is_err() || *st.down.borrow() {
                    return None;
                }
            }
        }
    }
}
