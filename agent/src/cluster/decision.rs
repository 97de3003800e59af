//! The election's decision, with no I/O: what a round read from the Lease, our identity, the time and
//! the lease's timing go in; whether to take the lease over, renew it, follow its holder or stop
//! refreshing comes out. `election.rs` reads and writes the Lease and performs what this returns.
//!
//! client-go's `tryAcquireOrRenew`: a record naming us is renewed; one naming nobody is taken; one naming
//! another agent is taken only once it has not changed for a whole lease duration *by our own clock*
//! (the `renewTime` another machine wrote is never compared with ours, so clock skew does not matter).

use std::time::Duration;
use tokio::time::Instant;

/// What the election needs of a Lease's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `spec.holderIdentity`; empty counts as none (a released lease).
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds` as its holder wrote it.
    pub duration_s: Option<i32>,
    /// `spec.renewTime`, compared only for change, never as a time.
    pub renew_time: Option<String>,
    /// `metadata.resourceVersion`: any write changes it.
    pub version: Option<String>,
}

impl Record {
    fn holder(&self) -> Option<&str> {
        self.holder.as_deref().filter(|h| !h.is_empty())
    }

    /// The holder's own duration, clamped: a record saying 0 or a year is not believed.
    fn duration(&self, ours: Duration) -> Duration {
        self.duration_s
            .and_then(|s| u64::try_from(s).ok())
            .map_or(ours, |s| Duration::from_secs(s.clamp(1, 3600)))
    }
}

/// A record and when this agent first read it unchanged: it expires a lease duration after that.
#[derive(Debug, Clone)]
pub struct Observed {
    pub record: Record,
    pub since: Instant,
}

impl Observed {
    /// What the election knows after reading `record` at `at`: a record seen before keeps its `since`.
    pub fn update(previous: Option<Observed>, record: Record, at: Instant) -> Observed {
        match previous {
            Some(seen) if seen.record == record => seen,
            _ => Observed { record, since: at },
        }
    }
}

/// The lease's timing, from `--lease-duration` and `--request-timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub duration: Duration,
    /// The longest one request to the token endpoint may take (`--request-timeout`).
    pub request_timeout: Duration,
}

/// Less than this before the fence and a refresh could not reach the token endpoint and back.
pub const LEAST_REFRESH: Duration = Duration::from_secs(1);

impl Timing {
    /// How often the Lease is read and renewed (2 s for a 15 s lease).
    pub fn retry(&self) -> Duration {
        self.duration.mul_f64(2.0 / 15.0).max(Duration::from_millis(100))
    }

    /// The instant another agent could take over a lease whose renewal was sent at `sent`: nobody can
    /// have read the renewed record before it was sent, and each waits a whole duration after reading.
    /// A thirtieth of the duration (0.5 s of 15 s) is kept back for clock rates and for a cancelled
    /// request's connection to close.
    pub fn fence(&self, sent: Instant) -> Option<Instant> {
        sent.checked_add(self.duration.saturating_sub(self.duration / 30))
    }

    /// A refresh starts only with at least this long left before the fence, and its request must end by
    /// the fence: a third of the lease (5 s of 15 s), or the request timeout if that is shorter.
    pub fn least_window(&self) -> Duration {
        (self.duration / 3).min(self.request_timeout)
    }

    /// After taking over a lease its holder did not release, how long a refusal of our first refresh is
    /// blamed on that holder's last refresh having won, while its pair may still reach the Secret: two
    /// lease durations, at least a minute (its writer retries with a growing pause).
    pub fn race_wait(&self) -> Duration {
        (self.duration * 2).max(Duration::from_secs(60))
    }

    /// After taking over a lease its holder did not release, how long a refresh that falls due for the
    /// pair held at the takeover waits for that holder's late write before spending the pair: the first
    /// half of [`Timing::race_wait`], so a refusal after it still leaves the other half to wait in.
    pub fn late_write_wait(&self) -> Duration {
        self.race_wait() / 2
    }

    /// Whether any refresh can fit between a renewal and the fence; if not, which flags to change.
    pub fn check(&self) -> Result<(), String> {
        if self.least_window() < LEAST_REFRESH {
            return Err(format!(
                "with --lease-duration {:?} and --request-timeout {:?}, a refresh gets at most {:?} before the \
                 lease could pass to another agent, less than the {LEAST_REFRESH:?} a refresh needs: no refresh \
                 could ever run. Raise --lease-duration to at least {:?} and --request-timeout to at least \
                 {LEAST_REFRESH:?}",
                self.duration,
                self.request_timeout,
                self.least_window(),
                LEAST_REFRESH * 3,
            ));
        }
        Ok(())
    }
}

/// What to do after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds the lease (`released`: its holder gave it up), or its holder stopped renewing it a
    /// whole duration ago: write our identity. If the write lands, nobody else can take it before
    /// `fence`.
    TakeOver { fence: Instant, released: bool },
    /// The record names us: write a new renewTime; if it lands, the lease is ours until `fence`.
    Renew { fence: Instant },
    /// Another agent holds it; by our clock it expires at `expires` unless renewed.
    Follow { holder: String, expires: Instant },
    /// The Lease could not be read: no renewal, so no refresh may start after the last renewal's
    /// `fence` (none if it has passed or there was none).
    StopRefreshing { fence: Option<Instant> },
}

/// The decision after a round that started at `sent` and read `seen` (none: the read failed), at
/// `now`. `last_fence` is the fence of this agent's last renewal that landed.
pub fn decide(
    seen: Option<&Observed>,
    identity: &str,
    sent: Instant,
    now: Instant,
    last_fence: Option<Instant>,
    timing: Timing,
) -> Decision {
    let Some(seen) = seen else {
        return Decision::StopRefreshing { fence: last_fence.filter(|f| now < *f) };
    };
    let Some(fence) = timing.fence(sent) else {
        return Decision::StopRefreshing { fence: None };
    };
    let record = &seen.record;
    match record.holder() {
        None => Decision::TakeOver { fence, released: true },
        Some(holder) if holder == identity => Decision::Renew { fence },
        Some(holder) => match seen.since.checked_add(record.duration(timing.duration)) {
            Some(expires) if now < expires => Decision::Follow { holder: holder.to_owned(), expires },
            _ => Decision::TakeOver { fence, released: false },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const ME: &str = "db-0_uid-new";
    const SECS: fn(u64) -> Duration = Duration::from_secs;
    const TIMING: Timing =
        Timing { duration: Duration::from_secs(15), request_timeout: Duration::from_secs(30) };

    /// A 15 s lease's fence: 14.5 s after the renewal was sent.
    fn fence(sent: Instant) -> Instant {
        sent + Duration::from_millis(14_500)
    }

    fn record(holder: Option<&str>, duration_s: Option<i32>, version: &str) -> Record {
        Record {
            holder: holder.map(str::to_owned),
            duration_s,
            renew_time: Some(format!("renewed at {version}")),
            version: Some(version.to_owned()),
        }
    }

    /// One case: the record, how long ago it was first seen unchanged, what must come out.
    struct Case {
        name: &'static str,
        record: Record,
        seen_ago: Duration,
        expect: fn(Instant) -> Decision,
    }

    #[tokio::test(start_paused = true)]
    async fn what_a_round_decides_from_the_record_and_our_clock() {
        let timing = TIMING;
        let cases = [
            Case {
                name: "a lease nobody ever held is taken",
                record: record(None, None, "1"),
                seen_ago: SECS(0),
                expect: |now| Decision::TakeOver { fence: fence(now), released: true },
            },
            Case {
                name: "a released lease (empty holder) is taken at once",
                record: record(Some(""), Some(15), "2"),
                seen_ago: SECS(0),
                expect: |now| Decision::TakeOver { fence: fence(now), released: true },
            },
            Case {
                name: "a record naming us is renewed",
                record: record(Some(ME), Some(15), "3"),
                seen_ago: SECS(14),
                expect: |now| Decision::Renew { fence: fence(now) },
            },
            Case {
                name: "a record naming us is renewed even past its expiry (nobody took it meanwhile)",
                record: record(Some(ME), Some(15), "3"),
                seen_ago: SECS(600),
                expect: |now| Decision::Renew { fence: fence(now) },
            },
            Case {
                name: "a record just seen, held by another, is followed",
                record: record(Some("db-1_uid-1"), Some(15), "4"),
                seen_ago: SECS(0),
                expect: |now| Decision::Follow { holder: "db-1_uid-1".into(), expires: now + SECS(15) },
            },
            Case {
                name: "one moment before the other holder's lease expires by our clock, still followed",
                record: record(Some("db-1_uid-1"), Some(15), "4"),
                seen_ago: SECS(15) - Duration::from_millis(1),
                expect: |now| Decision::Follow {
                    holder: "db-1_uid-1".into(),
                    expires: now + Duration::from_millis(1),
                },
            },
            Case {
                name: "unchanged for a whole duration: taken over, not released",
                record: record(Some("db-1_uid-1"), Some(15), "4"),
                seen_ago: SECS(15),
                expect: |now| Decision::TakeOver { fence: fence(now), released: false },
            },
            Case {
                name: "the same pod name with another UID is another agent (a reused StatefulSet name)",
                record: record(Some("db-0_uid-old"), Some(15), "5"),
                seen_ago: SECS(1),
                expect: |now| Decision::Follow { holder: "db-0_uid-old".into(), expires: now + SECS(14) },
            },
            Case {
                name: "the holder's own duration counts (longer than ours)",
                record: record(Some("db-1_uid-1"), Some(60), "6"),
                seen_ago: SECS(30),
                expect: |now| Decision::Follow { holder: "db-1_uid-1".into(), expires: now + SECS(30) },
            },
            Case {
                name: "a duration of 0 is read as 1 s",
                record: record(Some("db-1_uid-1"), Some(0), "7"),
                seen_ago: SECS(1),
                expect: |now| Decision::TakeOver { fence: fence(now), released: false },
            },
            Case {
                name: "a negative duration is not believed: ours counts",
                record: record(Some("db-1_uid-1"), Some(-5), "8"),
                seen_ago: SECS(10),
                expect: |now| Decision::Follow { holder: "db-1_uid-1".into(), expires: now + SECS(5) },
            },
            Case {
                name: "a duration of a year is read as an hour",
                record: record(Some("db-1_uid-1"), Some(31_536_000), "9"),
                seen_ago: SECS(3600),
                expect: |now| Decision::TakeOver { fence: fence(now), released: false },
            },
            Case {
                name: "no duration on record: ours counts",
                record: record(Some("db-1_uid-1"), None, "10"),
                seen_ago: SECS(15),
                expect: |now| Decision::TakeOver { fence: fence(now), released: false },
            },
        ];
        for case in cases {
            let first_seen = Instant::now();
            let seen = Observed::update(None, case.record.clone(), first_seen);
            advance(case.seen_ago).await;
            // Read again, unchanged: the first sighting is what counts.
            let now = Instant::now();
            let seen = Observed::update(Some(seen), case.record, now);
            assert_eq!(seen.since, first_seen, "{}", case.name);
            let got = decide(Some(&seen), ME, now, now, None, timing);
            assert_eq!(got, (case.expect)(now), "{}", case.name);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_by_the_holder_restarts_our_count() {
        let timing = TIMING;
        let mut seen = Observed::update(None, record(Some("db-1_uid-1"), Some(15), "1"), Instant::now());
        advance(SECS(14)).await;
        // Renewed: another renewTime and resourceVersion.
        seen = Observed::update(Some(seen), record(Some("db-1_uid-1"), Some(15), "2"), Instant::now());
        advance(SECS(14)).await;
        let now = Instant::now();
        let got = decide(Some(&seen), ME, now, now, None, timing);
        assert_eq!(got, Decision::Follow { holder: "db-1_uid-1".into(), expires: now + SECS(1) });
        advance(SECS(1)).await;
        let now = Instant::now();
        let got = decide(Some(&seen), ME, now, now, None, timing);
        assert_eq!(got, Decision::TakeOver { fence: fence(now), released: false });
    }

    #[tokio::test(start_paused = true)]
    async fn the_fence_counts_from_when_the_round_was_sent_not_when_it_answered() {
        let timing = TIMING;
        let sent = Instant::now();
        advance(SECS(4)).await;
        let now = Instant::now();
        let seen = Observed::update(None, record(Some(ME), Some(15), "1"), now);
        assert_eq!(decide(Some(&seen), ME, sent, now, None, timing), Decision::Renew { fence: fence(sent) });
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_read_stops_refreshes_at_the_last_renewals_fence() {
        let timing = TIMING;
        let now = Instant::now();
        let fence = now + SECS(5);
        assert_eq!(
            decide(None, ME, now, now, Some(fence), timing),
            Decision::StopRefreshing { fence: Some(fence) }
        );
        advance(SECS(5)).await;
        let now = Instant::now();
        assert_eq!(decide(None, ME, now, now, Some(fence), timing), Decision::StopRefreshing { fence: None });
        assert_eq!(decide(None, ME, now, now, None, timing), Decision::StopRefreshing { fence: None });
    }
}

#[cfg(test)]
mod timing_tests {
    use super::*;

    #[test]
    fn a_refresh_gets_a_third_of_the_lease_or_the_request_timeout() {
        let secs = Duration::from_secs;
        let timing = |d, t| Timing { duration: secs(d), request_timeout: secs(t) };
        assert_eq!(timing(15, 30).least_window(), secs(5));
        assert_eq!(timing(15, 2).least_window(), secs(2));
        assert_eq!(timing(15, 30).retry(), secs(2));
        assert!(timing(15, 30).check().is_ok());
        assert!(timing(3, 30).check().is_ok(), "the tests' 3 s lease leaves 1 s");
        for (d, t) in [(2, 30), (15, 0)] {
            let err = timing(d, t).check().unwrap_err();
            assert!(err.contains("--lease-duration") && err.contains("--request-timeout"), "{err}");
        }
        assert_eq!(timing(15, 30).race_wait(), secs(60));
        assert_eq!(timing(60, 30).race_wait(), secs(120));
        assert_eq!(timing(15, 30).late_write_wait(), secs(30));
        assert_eq!(timing(3, 30).late_write_wait(), secs(30));
    }
}
