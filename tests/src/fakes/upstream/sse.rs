//! A streamed message, sent event by event with a gap between the deltas, noting when each delta left
//! and whether the client stayed to the end.

use super::{Counters, State};
use bytes::Bytes;
use http_body::{Body, Frame};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The opening events at once, then the deltas `gap` apart (the first at once), then the closing events
/// right after the last delta.
pub struct SseBody {
    /// What is left to send: each event, and whether it is a delta (which waits its gap and is timed).
    events: VecDeque<(String, bool)>,
    gap: Duration,
    deltas_sent: usize,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The stream's number, for [`super::FakeUpstream::sent_at`].
    index: usize,
    st: Arc<Mutex<State>>,
    counters: Arc<Counters>,
}

impl SseBody {
    pub(super) fn new(
        [opening, deltas, closing]: [Vec<String>; 3],
        gap: Duration,
        index: usize,
        st: Arc<Mutex<State>>,
        counters: Arc<Counters>,
    ) -> Self {
        let events = opening
            .into_iter()
            .map(|e| (e, false))
            .chain(deltas.into_iter().map(|e| (e, true)))
            .chain(closing.into_iter().map(|e| (e, false)))
            .collect();
        SseBody { events, gap, deltas_sent: 0, sleep: None, index, st, counters }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(&(_, is_delta)) = this.events.front() else { return Poll::Ready(None) };
        if is_delta && this.deltas_sent > 0 {
            let gap = this.gap;
            let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let Some((event, _)) = this.events.pop_front() else { return Poll::Ready(None) };
        if is_delta {
            this.deltas_sent += 1;
            if let Some(times) = this.st.lock().unwrap().sent_at.get_mut(this.index) {
                times.push(Instant::now());
            }
        }
        if this.events.is_empty() {
            this.counters.streams_completed.fetch_add(1, Ordering::SeqCst);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }

    fn is_end_stream(&self) -> bool {
        self.events.is_empty()
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        if !self.events.is_empty() {
            self.counters.streams_cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}
