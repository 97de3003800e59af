//! When the login was made, kept in the credentials document itself so that it travels wherever the
//! pair goes: through every rotation (a refresh keeps the document), the state file, the Secret the
//! write-back fills and every pod that adopts the pair from it.
//!
//! A refresh token that no person renews has been reported to stop working after about 55 days
//! (claude-code#65761), so the agent shows the login's age and an alert fires before that.
//!
//! The record is a top-level object of its own, `"sidecred": {"loginStartedAt": <epoch ms>,
//! "loginClock": "login" | "firstSeen"}`, beside `claudeAiOauth` like `mcpOAuth` is: Claude Code reads
//! only the keys it knows, and a refresh by Claude Code rewrites `claudeAiOauth` but keeps the others.
//! A record that cannot be read is treated as absent, never as a damaged login.

use serde_json::{Map, Value};
use std::time::Duration;

/// The top-level key of sidecred's own notes about the login.
pub const RECORD_KEY: &str = "sidecred";
const STARTED_AT: &str = "loginStartedAt";
const CLOCK: &str = "loginClock";

/// What the start of the clock is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockStart {
    /// The login was made then (`sidecred-agent login`, or a record carried from it).
    Login,
    /// The login predates the record (an older file, a login made by Claude Code): the clock started
    /// when an agent first saw it, so the login is at least this old.
    FirstSeen,
}

impl ClockStart {
    pub fn as_str(self) -> &'static str {
        match self {
            ClockStart::Login => "login",
            ClockStart::FirstSeen => "first_seen",
        }
    }

    fn stored(self) -> &'static str {
        match self {
            ClockStart::Login => "login",
            ClockStart::FirstSeen => "firstSeen",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginClock {
    /// Epoch milliseconds.
    pub started_at_ms: u64,
    pub start: ClockStart,
}

impl LoginClock {
    pub fn login(now_ms: u64) -> LoginClock {
        LoginClock { started_at_ms: now_ms, start: ClockStart::Login }
    }

    pub fn first_seen(now_ms: u64) -> LoginClock {
        LoginClock { started_at_ms: now_ms, start: ClockStart::FirstSeen }
    }

    /// The login's age at `now_ms`; zero for a start in the future (a clock set back, a forged record).
    pub fn age(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.started_at_ms))
    }

    /// Which of two records of the same pair to keep: a record of the login itself beats a first
    /// sighting, and of two sightings the earlier one is closer to the truth.
    pub fn merge(self, other: LoginClock) -> LoginClock {
        match (self.start, other.start) {
            (ClockStart::Login, ClockStart::FirstSeen) => self,
            (ClockStart::FirstSeen, ClockStart::Login) => other,
            _ if other.started_at_ms < self.started_at_ms => other,
            _ => self,
        }
    }

    /// The record as read from a document; `None` when there is none or it is not one we wrote.
    pub fn read(doc: &Map<String, Value>) -> Option<LoginClock> {
        let record = doc.get(RECORD_KEY)?.as_object()?;
        let started_at_ms = record.get(STARTED_AT)?.as_u64()?;
        let start = match record.get(CLOCK).and_then(Value::as_str) {
            Some("login") => ClockStart::Login,
            Some("firstSeen") => ClockStart::FirstSeen,
            _ => return None,
        };
        Some(LoginClock { started_at_ms, start })
    }

    /// Writes the record into `doc`, keeping any other field of sidecred's object.
    pub fn write(self, doc: &mut Map<String, Value>) {
        let record = doc.entry(RECORD_KEY).or_insert_with(|| Value::Object(Map::new()));
        if !record.is_object() {
            *record = Value::Object(Map::new());
        }
        if let Value::Object(record) = record {
            record.insert(STARTED_AT.into(), self.started_at_ms.into());
            record.insert(CLOCK.into(), self.start.stored().into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_age_never_overflows_nor_goes_negative() {
        let day = 86_400_000;
        let c = LoginClock::login(1_800_000_000_000);
        assert_eq!(c.age(1_800_000_000_000 + 3 * day), Duration::from_secs(3 * 86_400));
        // A start in the future (the clock was set back): no age yet, not a wrap-around.
        assert_eq!(c.age(0), Duration::ZERO);
        assert_eq!(LoginClock::login(u64::MAX).age(0), Duration::ZERO);
        assert_eq!(LoginClock::login(0).age(u64::MAX), Duration::from_millis(u64::MAX));
        assert_eq!(LoginClock::login(u64::MAX).age(u64::MAX), Duration::ZERO);
    }

    #[test]
    fn the_record_round_trips_and_a_foreign_one_is_ignored() {
        let mut d = doc(json!({"claudeAiOauth": {}, "sidecred": {"other": 1}}));
        LoginClock::first_seen(42).write(&mut d);
        assert_eq!(LoginClock::read(&d), Some(LoginClock::first_seen(42)));
        assert_eq!(d["sidecred"]["other"], 1, "other fields of the record survive");
        assert_eq!(d["sidecred"]["loginClock"], "firstSeen");
        for bad in [
            json!({}),
            json!({"sidecred": "x"}),
            json!({"sidecred": {"loginStartedAt": -1, "loginClock": "login"}}),
            json!({"sidecred": {"loginStartedAt": 1.5, "loginClock": "login"}}),
            json!({"sidecred": {"loginStartedAt": 1, "loginClock": "yesterday"}}),
            json!({"sidecred": {"loginClock": "login"}}),
        ] {
            assert_eq!(LoginClock::read(&doc(bad.clone())), None, "{bad}");
        }
        let mut d = doc(json!({"sidecred": 7}));
        LoginClock::login(9).write(&mut d);
        assert_eq!(LoginClock::read(&d), Some(LoginClock::login(9)));
    }

    #[test]
    fn a_record_of_the_login_beats_a_sighting_and_the_earlier_sighting_wins() {
        let (login, early, late) =
            (LoginClock::login(500), LoginClock::first_seen(100), LoginClock::first_seen(900));
        assert_eq!(early.merge(login), login);
        assert_eq!(login.merge(early), login);
        assert_eq!(late.merge(early), early);
        assert_eq!(early.merge(late), early);
        assert_eq!(LoginClock::login(1).merge(LoginClock::login(2)), LoginClock::login(1));
    }
}
