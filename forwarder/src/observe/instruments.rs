//! The building blocks of the forwarder's metrics, made for the request path: nothing here takes a
//! lock, hashes or allocates once a label set has been seen.
//!
//! - [`Histogram`]: a duration histogram of atomic buckets (prometheus-client's takes a lock per
//!   observation), exposed exactly as prometheus-client's own: same buckets, same lines.
//! - [`Slots`]: a labelled family whose label sets are a fixed set of enum values, each resolved once
//!   into a slot by its index; afterwards a request touches only its metric's atomics.
//! - [`label_values!`]: gives a label enum its values as the metric shows them.
//!
//! A new labelled counter is a label set deriving `EncodeLabelSet`, an index for it, and a `Slots`:
//! see `Metrics::request` for one with three labels.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Gives a label enum its values (and `as_str`): each variant's name as the metric shows it.
macro_rules! label_values {
    ($ty:ident { $($variant:ident => $name:literal,)* }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)*
                }
            }
        }

        impl prometheus_client::encoding::EncodeLabelValue for $ty {
            fn encode(
                &self,
                encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}
pub(crate) use label_values;

/// A histogram of durations in seconds. Observing costs two relaxed atomic adds (the bucket and the
/// sum, kept in nanoseconds so it needs no compare-and-swap loop) on the observing thread's own stripe
/// of cache lines: the workers observe every request, and on one shared set of atomics each add would
/// first have to take the line from the other core. The count is the buckets' total and the stripes
/// are added up at scrape time. A scrape racing an observation may see the bucket before the sum: one
/// observation's worth, never a torn value.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<Buckets>);

/// How many threads observe without sharing a cache line (threads past that share stripes).
const STRIPES: usize = 8;

/// One cache line of counters.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Line([AtomicU64; 8]);

#[derive(Debug)]
struct Buckets {
    /// Upper bounds in seconds, as exposed (the last is +Inf).
    bounds: Box<[f64]>,
    /// The same bounds in nanoseconds, for comparing without floats.
    bounds_ns: Box<[u64]>,
    /// `STRIPES` stripes of `per_stripe` lines: each stripe's counters for every bucket, then its sum.
    lines: Box<[Line]>,
    per_stripe: usize,
}

impl Buckets {
    /// Counter `i` of `stripe` (`i == bounds.len()` is the sum).
    fn counter(&self, stripe: usize, i: usize) -> Option<&AtomicU64> {
        self.lines.get(stripe * self.per_stripe + i / 8).map(|line| &line.0[i % 8])
    }

    /// Counter `i` added up over the stripes.
    fn total(&self, i: usize) -> u64 {
        (0..STRIPES)
            .filter_map(|s| self.counter(s, i))
            .fold(0u64, |t, c| t.wrapping_add(c.load(Ordering::Relaxed)))
    }
}

/// The calling thread's stripe, handed out in turn to threads as they first observe.
fn stripe() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) });
    STRIPE.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        s.get()
    })
}

impl Histogram {
    /// Buckets with these upper bounds in seconds, and one for everything above.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = bounds.into_iter().chain(std::iter::once(f64::MAX)).collect();
        // Float to integer casts saturate: f64::MAX becomes u64::MAX.
        let bounds_ns = bounds.iter().map(|b| (b * 1e9).round() as u64).collect();
        let per_stripe = (bounds.len() + 1).div_ceil(8);
        let lines = (0..STRIPES * per_stripe).map(|_| Line::default()).collect();
        Histogram(Arc::new(Buckets { bounds, bounds_ns, lines, per_stripe }))
    }

    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let b = &self.0;
        let stripe = stripe();
        let i = b.bounds_ns.partition_point(|bound| *bound < ns).min(b.bounds.len() - 1);
        if let (Some(bucket), Some(sum)) = (b.counter(stripe, i), b.counter(stripe, b.bounds.len())) {
            bucket.fetch_add(1, Ordering::Relaxed);
            sum.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Sum in seconds, count, and each bucket's own count (not cumulative), as prometheus-client's
    /// encoder takes them.
    fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let b = &self.0;
        let buckets: Vec<(f64, u64)> = b.bounds.iter().enumerate().map(|(i, le)| (*le, b.total(i))).collect();
        let count = buckets.iter().fold(0u64, |total, (_, n)| total.saturating_add(*n));
        let sum = b.total(b.bounds.len()) as f64 / 1e9;
        (sum, count, buckets)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.read();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Makes a family's histograms, all with the same buckets.
#[derive(Clone, Debug)]
pub struct HistogramOf(pub fn() -> Histogram);

impl MetricConstructor<Histogram> for HistogramOf {
    fn new_metric(&self) -> Histogram {
        (self.0)()
    }
}

/// A family registered once, whose members are reached by index without the family's lock: slot `i`
/// holds a handle to the member for label set `i`, created the first time it is used. Metrics here are
/// handles (an `Arc` inside), so the slot and the family share one set of atomics.
pub struct Slots<L, M, C = fn() -> M> {
    family: Family<L, M, C>,
    slots: Box<[OnceLock<M>]>,
}

impl<L, M, C> Slots<L, M, C>
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    /// `count` slots over `family` (register a clone of the family).
    pub fn new(family: Family<L, M, C>, count: usize) -> Self {
        Slots { family, slots: (0..count).map(|_| OnceLock::new()).collect() }
    }

    /// Does `f` with the metric of slot `index`, whose label set `labels` makes (called only the first
    /// time). An index past the end (a bug) reaches the family through its lock rather than panicking.
    pub fn with(&self, index: usize, labels: impl FnOnce() -> L, f: impl FnOnce(&M)) {
        match self.slots.get(index) {
            Some(slot) => f(slot.get_or_init(|| self.family.get_or_create(&labels()).clone())),
            None => f(&self.family.get_or_create(&labels())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::exponential_buckets;
    use prometheus_client::registry::Registry;

    fn page(registry: &Registry) -> String {
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, registry).expect("encode");
        page
    }

    /// The exposition is prometheus-client's own histogram's, line for line.
    #[test]
    fn exposed_as_prometheus_clients_histogram() {
        let ours = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        let theirs =
            prometheus_client::metrics::histogram::Histogram::new(exponential_buckets(0.005, 2.0, 15));
        // Durations whose seconds are exact binary fractions, so both sums are exact.
        for ns in [0, 7_812_500, 125_000_000, 500_000_000, 1_000_000_000, 100_000_000_000_000] {
            ours.observe(Duration::from_nanos(ns));
            theirs.observe(Duration::from_nanos(ns).as_secs_f64());
        }
        let (mut a, mut b) = (Registry::default(), Registry::default());
        a.register("took_seconds", "Time", ours);
        b.register("took_seconds", "Time", theirs);
        assert_eq!(page(&a), page(&b));
    }

    #[test]
    fn observations_from_many_threads_add_up() {
        let h = Histogram::new([0.001, 0.01]);
        // More threads than stripes, so some share one.
        std::thread::scope(|scope| {
            for _ in 0..STRIPES + 3 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        h.observe(Duration::from_micros(500));
                        h.observe(Duration::from_millis(5));
                    }
                });
            }
        });
        let (sum, count, buckets) = h.read();
        let n = (STRIPES as u64 + 3) * 1000;
        assert_eq!(count, 2 * n);
        assert_eq!(buckets.iter().map(|(_, c)| *c).collect::<Vec<_>>(), [n, n, 0]);
        assert!((sum - n as f64 * 0.0055).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new([0.001, 0.01]);
        h.observe(Duration::from_micros(1000));
        h.observe(Duration::from_micros(1001));
        h.observe(Duration::from_secs(5));
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 3);
        assert_eq!(buckets.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1, 1, 1]);
        assert!((sum - 5.002_001).abs() < 1e-9, "{sum}");
    }
}
