//! Per-key quota: a token bucket for requests per minute (with a burst), and a cap on the requests a
//! key has in flight at once (a stream counts until its body ends). Time comes in as an argument, so
//! the bucket is tested with chosen instants instead of sleeps.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What the keys file says of one key's limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Requests per minute, refilled continuously.
    pub per_minute: Option<u32>,
    /// How many requests may come at once after a quiet spell (default: one minute's worth).
    pub burst: Option<u32>,
    /// Requests in flight at once (a stream until its last byte).
    pub concurrent: Option<u32>,
}

/// Why a key's request is refused, and when trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverQuota {
    Rate { retry_after: Duration },
    Concurrency { limit: u32 },
}

/// A token bucket: holds up to `capacity` requests, refilled at `per_second`.
#[derive(Debug)]
pub struct Bucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Full at `now`. `per_minute` must be above 0 (the keys file refuses 0).
    pub fn new(per_minute: u32, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Bucket { capacity, per_second: f64::from(per_minute) / 60.0, tokens: capacity, last: now }
    }

    /// Takes one request's token at `now`, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        // An instant before the last one (threads racing to the lock) refills nothing.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        let wait = if self.per_second > 0.0 { missing / self.per_second } else { 60.0 };
        Err(Duration::from_secs_f64(wait.clamp(0.0, 86_400.0)))
    }
}

/// One key's limits as they stand.
#[derive(Debug)]
pub struct Limiter {
    bucket: Option<Mutex<Bucket>>,
    concurrent: Option<(u32, Arc<AtomicU32>)>,
}

/// A request's place under its key's concurrency cap, given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limiter {
    pub fn new(limits: Quota, now: Instant) -> Self {
        let bucket =
            limits.per_minute.map(|rpm| Mutex::new(Bucket::new(rpm, limits.burst.unwrap_or(rpm), now)));
        let concurrent = limits.concurrent.map(|n| (n, Arc::new(AtomicU32::new(0))));
        Limiter { bucket, concurrent }
    }

    /// Admits a request at `now`: its slot (held until its response ends) when the key has a cap.
    /// The concurrency check comes first, so a request refused for it does not spend a token.
    pub fn admit(&self, now: Instant) -> Result<Option<Slot>, OverQuota> {
        let slot = match &self.concurrent {
            None => None,
            Some((limit, in_flight)) => {
                let taken = in_flight
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < *limit).then(|| n + 1));
                if taken.is_err() {
                    return Err(OverQuota::Concurrency { limit: *limit });
                }
                Some(Slot(in_flight.clone()))
            }
        };
        if let Some(bucket) = &self.bucket {
            // `slot` is dropped with the refusal, giving its place back.
            bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(now)
                .map_err(|retry_after| OverQuota::Rate { retry_after })?;
        }
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_then_the_refill_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(60, 3, t0);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Ok(()));
        }
        let wait = b.take(t0).expect_err("the burst is spent");
        assert!(wait > Duration::from_millis(990) && wait <= SEC, "{wait:?}");
        // One token a second comes back.
        assert!(b.take(t0 + Duration::from_millis(500)).is_err());
        assert_eq!(b.take(t0 + SEC), Ok(()));
        assert!(b.take(t0 + SEC).is_err());
        // A long quiet spell refills no more than the burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn a_slow_rate_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2, 1, t0);
        assert_eq!(b.take(t0), Ok(()));
        let wait = b.take(t0).expect_err("spent");
        assert!(wait > Duration::from_secs(29) && wait <= Duration::from_secs(30), "{wait:?}");
        assert_eq!(b.take(t0 + Duration::from_secs(30)), Ok(()));
    }

    #[test]
    fn an_earlier_instant_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = Bucket::new(60, 1, t0);
        assert_eq!(b.take(t0), Ok(()));
        assert!(b.take(t0 - SEC).is_err());
        assert!(b.take(t0 + Duration::from_millis(999)).is_err(), "the clock did not move back");
        assert_eq!(b.take(t0 + SEC), Ok(()));
    }

    #[test]
    fn concurrency_is_capped_until_slots_are_given_back() {
        let t0 = Instant::now();
        let l = Limiter::new(Quota { concurrent: Some(2), ..Quota::default() }, t0);
        let a = l.admit(t0).unwrap().unwrap();
        let _b = l.admit(t0).unwrap().unwrap();
        assert_eq!(l.admit(t0).unwrap_err(), OverQuota::Concurrency { limit: 2 });
        drop(a);
        assert!(l.admit(t0).is_ok());
    }

    #[test]
    fn a_rate_refusal_gives_its_slot_back_and_a_concurrency_refusal_spends_no_token() {
        let t0 = Instant::now();
        let limits = Quota { per_minute: Some(60), burst: Some(1), concurrent: Some(1) };
        let l = Limiter::new(limits, t0);
        let held = l.admit(t0).unwrap();
        assert_eq!(l.admit(t0 + SEC).unwrap_err(), OverQuota::Concurrency { limit: 1 });
        drop(held);
        assert!(l.admit(t0 + SEC).is_ok(), "the refused request took no token");
        assert!(matches!(l.admit(t0 + SEC), Err(OverQuota::Rate { .. })));
        assert!(l.admit(t0 + 2 * SEC).is_ok(), "the rate refusal gave its slot back");
    }

    #[test]
    fn no_limits_admit_everything() {
        let t0 = Instant::now();
        let l = Limiter::new(Quota::default(), t0);
        for _ in 0..10_000 {
            assert!(l.admit(t0).unwrap().is_none());
        }
    }
}
