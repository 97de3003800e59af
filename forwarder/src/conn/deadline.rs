//! What a connection's state and the clock say should happen to it, as a pure function: wait until a
//! moment, or close it and why. Under pressure (the connection cap is reached and others wait in the
//! backlog) a connection that has asked nothing, or sits idle, gets [`CROWDED_GRACE`] instead of its
//! usual timeout: otherwise a few hundred connections that never ask would lock every client out for
//! rounds of `--first-request-timeout` each.

use super::Timeouts;
use std::time::Duration;
use tokio::time::Instant;

/// Under pressure, how long a connection may go without asking, or sit idle, before it makes room.
pub const CROWDED_GRACE: Duration = Duration::from_secs(1);

/// A connection as its watcher sees it.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub opened: Instant,
    pub asked: bool,
    pub in_flight: bool,
    /// When the last request ended (meaningful once `asked` and not `in_flight`).
    pub idle_since: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No request within `--first-request-timeout`.
    NoRequest,
    /// No request yet while others wait for a slot.
    NoRequestCrowded,
    /// No request in flight for `--idle-timeout`.
    Idle,
    /// Idle while others wait for a slot.
    IdleCrowded,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::NoRequest => "no request within --first-request-timeout",
            Reason::NoRequestCrowded => {
                "no request yet, and the connection cap (--max-connections) is reached"
            }
            Reason::Idle => "idle for --idle-timeout",
            Reason::IdleCrowded => "idle, and the connection cap (--max-connections) is reached",
        }
    }

    /// Whether the connection has served nobody: it is dropped if it does not finish shutting down.
    pub fn never_asked(self) -> bool {
        matches!(self, Reason::NoRequest | Reason::NoRequestCrowded)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do before this moment (then judge again).
    Wait(Instant),
    Close(Reason),
}

pub fn judge(seen: &Seen, timeouts: &Timeouts, crowded: bool, now: Instant) -> Verdict {
    let (since, usual, reasons) = if !seen.asked {
        (seen.opened, timeouts.first_request, (Reason::NoRequest, Reason::NoRequestCrowded))
    } else if seen.in_flight {
        // A request in flight is never cut; look again once it may have ended.
        let again = if crowded { CROWDED_GRACE.min(timeouts.idle) } else { timeouts.idle };
        return Verdict::Wait(now + again);
    } else {
        (seen.idle_since, timeouts.idle, (Reason::Idle, Reason::IdleCrowded))
    };
    let crowded_at = since + CROWDED_GRACE.min(usual);
    if crowded && now >= crowded_at {
        return Verdict::Close(reasons.1);
    }
    let at = since + usual;
    if now >= at {
        return Verdict::Close(reasons.0);
    }
    Verdict::Wait(if crowded { crowded_at } else { at })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        first_request: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        drain_linger: Duration::from_secs(1),
    };

    fn at(t0: Instant, secs: f64) -> Instant {
        t0 + Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_connection_that_never_asks_gets_its_timeout_or_one_second_when_crowded() {
        let t0 = Instant::now();
        let seen = Seen { opened: t0, asked: false, in_flight: false, idle_since: t0 };
        assert_eq!(judge(&seen, &TIMEOUTS, false, at(t0, 0.5)), Verdict::Wait(at(t0, 10.0)));
        assert_eq!(judge(&seen, &TIMEOUTS, false, at(t0, 10.0)), Verdict::Close(Reason::NoRequest));
        assert_eq!(judge(&seen, &TIMEOUTS, true, at(t0, 0.5)), Verdict::Wait(at(t0, 1.0)));
        assert_eq!(judge(&seen, &TIMEOUTS, true, at(t0, 1.0)), Verdict::Close(Reason::NoRequestCrowded));
        let short = Timeouts { first_request: Duration::from_millis(300), ..TIMEOUTS };
        assert_eq!(judge(&seen, &short, true, at(t0, 0.3)), Verdict::Close(Reason::NoRequestCrowded));
    }

    #[test]
    fn a_request_in_flight_is_never_closed() {
        let t0 = Instant::now();
        let seen = Seen { opened: t0, asked: true, in_flight: true, idle_since: t0 };
        for crowded in [false, true] {
            let now = at(t0, 3600.0);
            assert!(matches!(judge(&seen, &TIMEOUTS, crowded, now), Verdict::Wait(w) if w > now));
        }
    }

    #[test]
    fn idle_connections_close_after_the_idle_timeout_or_one_second_when_crowded() {
        let t0 = Instant::now();
        let seen = Seen { opened: t0, asked: true, in_flight: false, idle_since: at(t0, 5.0) };
        assert_eq!(judge(&seen, &TIMEOUTS, false, at(t0, 6.0)), Verdict::Wait(at(t0, 65.0)));
        assert_eq!(judge(&seen, &TIMEOUTS, false, at(t0, 65.0)), Verdict::Close(Reason::Idle));
        assert_eq!(judge(&seen, &TIMEOUTS, true, at(t0, 5.5)), Verdict::Wait(at(t0, 6.0)));
        assert_eq!(judge(&seen, &TIMEOUTS, true, at(t0, 6.0)), Verdict::Close(Reason::IdleCrowded));
        assert!(Reason::NoRequestCrowded.never_asked() && !Reason::IdleCrowded.never_asked());
        assert!(Reason::NoRequest.describe().contains("--first-request-timeout"));
    }
}
