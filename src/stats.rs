//! Statistics: relaxed counters kept where the work happens, and the samples a ticker takes of
//! them for rates and charts.
//!
//! Counting costs one uncontended relaxed add; nothing on the message path takes a lock or
//! touches a line another core writes for every message. A ticker (every 5 s by default, as
//! RabbitMQ's `collect_statistics_interval`) copies the counters and a few gauges into a short
//! ring per object, from which the API reports totals, rates and samples.

use std::collections::VecDeque;
use std::ops::AddAssign;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// What is counted, by name; the discriminant is the slot in [`Counters`] and [`Totals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// Messages published (by a channel, or into a queue).
    Publish,
    /// Messages published into an exchange.
    PublishIn,
    /// Messages an exchange routed to at least one queue.
    PublishOut,
    /// Publisher confirms sent.
    Confirm,
    /// Deliveries to consumers that ack.
    Deliver,
    /// Deliveries to consumers that do not ack.
    DeliverNoAck,
    /// `basic.get`s answered with a message to ack.
    Get,
    /// `basic.get`s answered with a message needing no ack.
    GetNoAck,
    /// `basic.get`s answered `get-empty`.
    GetEmpty,
    /// Deliveries acknowledged.
    Ack,
    /// Deliveries of messages delivered before.
    Redeliver,
    /// Mandatory messages returned unroutable.
    ReturnUnroutable,
    /// Messages dropped unroutable.
    DropUnroutable,
    /// Bytes received from a connection's socket.
    RecvOct,
    /// Bytes sent to a connection's socket.
    SendOct,
    /// Socket reads that returned data.
    RecvCnt,
    /// Socket writes.
    SendCnt,
    /// Messages published on a channel in confirm mode.
    ReceivedConfirm,
}

/// How many counters there are.
pub const COUNTERS: usize = 18;

/// Each counter's name in RabbitMQ's JSON, in slot order.
pub const NAMES: [&str; COUNTERS] = [
    "publish",
    "publish_in",
    "publish_out",
    "confirm",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "get_empty",
    "ack",
    "redeliver",
    "return_unroutable",
    "drop_unroutable",
    "recv_oct",
    "send_oct",
    "recv_cnt",
    "send_cnt",
    "received_confirm",
];

/// One object's counters, added to by whoever does the work, read by the ticker.
#[derive(Debug, Default)]
pub struct Counters([AtomicU64; COUNTERS]);

impl Counters {
    /// Counts `n` more of `stat`.
    #[inline]
    pub fn add(&self, stat: Stat, n: u64) {
        self.0[stat as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// The count of `stat` so far.
    pub fn get(&self, stat: Stat) -> u64 {
        self.0[stat as usize].load(Ordering::Relaxed)
    }

    /// Every count, as of now.
    pub fn totals(&self) -> Totals {
        Totals(std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)))
    }

    /// Adds another object's totals (a channel that closed, into its vhost's).
    pub fn absorb(&self, t: &Totals) {
        for (c, v) in self.0.iter().zip(t.0) {
            if v != 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        }
    }
}

/// A copy of counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals(pub [u64; COUNTERS]);

impl Totals {
    /// The count of `stat`.
    pub fn get(&self, stat: Stat) -> u64 {
        self.0[stat as usize]
    }

    /// Whether nothing was ever counted.
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&v| v == 0)
    }
}

impl AddAssign<&Totals> for Totals {
    fn add_assign(&mut self, other: &Totals) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.wrapping_add(b);
        }
    }
}

/// The levels sampled beside the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// Ready plus unacknowledged messages.
    Messages,
    /// Messages ready for delivery.
    Ready,
    /// Messages delivered and not yet acknowledged.
    Unacked,
}

/// How many gauges there are.
pub const GAUGES: usize = 3;

/// Each gauge's name in RabbitMQ's JSON, in slot order.
pub const GAUGE_NAMES: [&str; GAUGES] = ["messages", "messages_ready", "messages_unacknowledged"];

/// One sample: when, the counters, and the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// When it was taken, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The counters then.
    pub totals: Totals,
    /// The gauges then.
    pub gauges: [u64; GAUGES],
}

impl Sample {
    /// A gauge's level.
    pub fn gauge(&self, g: Gauge) -> u64 {
        self.gauges[g as usize]
    }
}

/// How many samples an object keeps: a minute at the default 5 s, enough for the rate and for
/// a chart of the last minute.
pub const HISTORY: usize = 13;

/// How many samples a vhost and the broker keep: ten minutes at the default 5 s, for the
/// overview's charts.
pub const LONG_HISTORY: usize = 121;

/// The last samples of one object, oldest first. An object that never counted anything keeps
/// no ring at all, so ten thousand idle queues cost nothing here.
#[derive(Debug, Default)]
pub struct History(Mutex<Ring>);

/// The samples, and when the object was last seen idle before its first.
#[derive(Debug, Default)]
struct Ring {
    samples: VecDeque<Sample>,
    idle_at: u64,
    /// How many it keeps, [`HISTORY`] when 0.
    keep: usize,
}

impl History {
    /// A history that keeps [`LONG_HISTORY`] samples.
    pub fn long() -> Self {
        Self(Mutex::new(Ring {
            keep: LONG_HISTORY,
            ..Ring::default()
        }))
    }

    /// Records a sample, forgetting the oldest past what it keeps.
    pub fn push(&self, s: Sample) {
        let mut r = self.0.lock();
        let ring = &mut *r;
        if ring.samples.is_empty() {
            if s.totals.is_zero() && s.gauges.iter().all(|&g| g == 0) {
                ring.idle_at = s.at_ms;
                return;
            }
            // Its first busy sample: the idle one before it is where its first rate starts.
            if ring.idle_at != 0 {
                ring.samples.push_back(Sample {
                    at_ms: ring.idle_at,
                    ..Sample::default()
                });
            }
        }
        let keep = if ring.keep == 0 { HISTORY } else { ring.keep };
        if ring.samples.len() >= keep {
            ring.samples.pop_front();
        }
        ring.samples.push_back(s);
    }

    /// Records a sample of totals gathered from objects that come and go (a vhost's channels):
    /// no count goes below the one before, so a channel closing between two reads never
    /// shows as a negative rate.
    pub fn push_monotonic(&self, mut s: Sample) {
        if let Some(prev) = self.0.lock().samples.back() {
            for (v, p) in s.totals.0.iter_mut().zip(prev.totals.0) {
                *v = (*v).max(p);
            }
        }
        self.push(s);
    }

    /// Records a sample of `totals` and `gauges` taken now.
    pub fn record(&self, at_ms: u64, totals: Totals, gauges: [u64; GAUGES]) -> Sample {
        let s = Sample {
            at_ms,
            totals,
            gauges,
        };
        self.push(s);
        s
    }

    /// The samples of the last `age_ms`, oldest first; without an age, the last two (what a
    /// rate needs).
    pub fn window(&self, age_ms: Option<u64>) -> Vec<Sample> {
        let ring = &self.0.lock().samples;
        let Some(newest) = ring.back().map(|s| s.at_ms) else {
            return Vec::new();
        };
        match age_ms {
            Some(age) => ring
                .iter()
                .filter(|s| newest - s.at_ms <= age)
                .copied()
                .collect(),
            None => ring
                .iter()
                .skip(ring.len().saturating_sub(2))
                .copied()
                .collect(),
        }
    }

    /// The newest sample, or an empty one.
    pub fn last(&self) -> Sample {
        self.0.lock().samples.back().copied().unwrap_or_default()
    }
}

/// Per second between two readings `dt_ms` apart (0 when no time passed or the value fell
/// because its object was replaced).
pub fn rate(before: u64, after: u64, dt_ms: u64) -> f64 {
    if dt_ms == 0 {
        return 0.0;
    }
    (after as f64 - before as f64) * 1000.0 / dt_ms as f64
}

/// An object's counters with their samples, where the object is shared (an exchange).
#[derive(Debug, Default)]
pub struct Tracked {
    /// What it did.
    pub counters: Counters,
    /// Its recent samples.
    pub history: History,
}

impl Tracked {
    /// Takes a sample of its counters.
    pub fn sample(&self, at_ms: u64) -> Sample {
        self.history
            .record(at_ms, self.counters.totals(), [0; GAUGES])
    }
}

/// Publishes counted per exchange by one channel, added to the exchange's counters when the
/// channel's batch ends or it switches exchange, so publishers on many cores do not fight over
/// one exchange's counters for every message.
#[derive(Debug, Default)]
pub struct Tally {
    target: Option<Arc<Tracked>>,
    published: u64,
    routed: u64,
}

impl Tally {
    /// Counts one message published into the exchange counted by `counters`, `routed` if it
    /// reached a queue.
    #[inline]
    pub fn count(&mut self, exchange: &Arc<Tracked>, routed: bool) {
        if !self
            .target
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(t, exchange))
        {
            self.flush();
            self.target = Some(Arc::clone(exchange));
        }
        self.published += 1;
        self.routed += u64::from(routed);
    }

    /// Adds what was counted to the exchange.
    pub fn flush(&mut self) {
        if let Some(t) = &self.target
            && self.published > 0
        {
            t.counters.add(Stat::PublishIn, self.published);
            t.counters.add(Stat::PublishOut, self.routed);
            self.published = 0;
            self.routed = 0;
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Upper bounds of the message-size buckets, RabbitMQ's (64 B, then ×4 up to 256 MiB); one
/// more bucket takes what is larger.
pub const SIZE_BOUNDS: [u64; 12] = [
    64,
    256,
    1024,
    4 * 1024,
    16 * 1024,
    64 * 1024,
    256 * 1024,
    1024 * 1024,
    4 * 1024 * 1024,
    16 * 1024 * 1024,
    64 * 1024 * 1024,
    256 * 1024 * 1024,
];

/// How many messages of each size were published (a bucket per [`SIZE_BOUNDS`] and one past
/// them), and their bytes.
#[derive(Debug, Default)]
pub struct SizeHistogram {
    buckets: [AtomicU64; 13],
    sum: AtomicU64,
}

impl SizeHistogram {
    /// Counts one message of `size` bytes: two relaxed adds, the bucket found without a loop.
    #[inline]
    pub fn observe(&self, size: u64) {
        self.buckets[size_bucket(size)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(size, Ordering::Relaxed);
    }

    /// The count in each bucket (not cumulative), and the bytes.
    pub fn read(&self) -> ([u64; 13], u64) {
        (
            std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            self.sum.load(Ordering::Relaxed),
        )
    }

    /// Adds another histogram's counts (a channel that closed, into its vhost's).
    pub fn absorb(&self, other: &Self) {
        let (buckets, sum) = other.read();
        for (b, n) in self.buckets.iter().zip(buckets) {
            b.fetch_add(n, Ordering::Relaxed);
        }
        self.sum.fetch_add(sum, Ordering::Relaxed);
    }
}

/// The bucket a message of `size` bytes falls in: the first whose bound is at least `size`.
fn size_bucket(size: u64) -> usize {
    if size <= SIZE_BOUNDS[0] {
        return 0;
    }
    // Bounds are 64·4^k: k is half the bits of (size - 1) beyond 64's six, rounded up.
    let bits = 64 - (size - 1).leading_zeros() as usize;
    ((bits - 5) / 2).min(SIZE_BOUNDS.len())
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_counter() {
        assert_eq!(NAMES[Stat::SendCnt as usize], "send_cnt");
        assert_eq!(NAMES[Stat::Publish as usize], "publish");
        assert_eq!(NAMES[Stat::Ack as usize], "ack");
    }

    #[test]
    fn idle_objects_keep_no_history_and_busy_ones_keep_a_minute() {
        let h = History::default();
        h.push(Sample::default());
        assert!(h.window(None).is_empty());
        for i in 0..20u64 {
            let mut s = Sample {
                at_ms: i * 5000,
                ..Sample::default()
            };
            s.totals.0[Stat::Publish as usize] = i * 10;
            h.push(s);
        }
        let kept = h.window(Some(u64::MAX));
        assert_eq!(kept.len(), HISTORY);
        assert_eq!(kept[0].at_ms, 7 * 5000);
        let [a, b] = h.window(None)[..] else {
            panic!("two samples for a rate")
        };
        let r = rate(
            a.totals.get(Stat::Publish),
            b.totals.get(Stat::Publish),
            b.at_ms - a.at_ms,
        );
        assert!((r - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_tally_adds_to_its_exchange_when_it_switches_and_when_dropped() {
        let a = Arc::new(Tracked::default());
        let b = Arc::new(Tracked::default());
        {
            let mut t = Tally::default();
            t.count(&a, true);
            t.count(&a, false);
            assert_eq!(
                a.counters.get(Stat::PublishIn),
                0,
                "held until the batch ends"
            );
            t.count(&b, true);
            assert_eq!(a.counters.get(Stat::PublishIn), 2);
            assert_eq!(a.counters.get(Stat::PublishOut), 1);
        }
        assert_eq!(b.counters.get(Stat::PublishIn), 1);
        assert_eq!(b.counters.get(Stat::PublishOut), 1);
    }

    #[test]
    fn sizes_fall_in_the_first_bucket_whose_bound_holds_them() {
        for (size, bucket) in [
            (0, 0),
            (64, 0),
            (65, 1),
            (256, 1),
            (257, 2),
            (1024, 2),
            (1025, 3),
            (256 * 1024 * 1024, 11),
            (256 * 1024 * 1024 + 1, 12),
            (u64::MAX, 12),
        ] {
            assert_eq!(size_bucket(size), bucket, "{size} bytes");
        }
        for (i, bound) in SIZE_BOUNDS.iter().enumerate() {
            assert_eq!(size_bucket(*bound), i);
            assert_eq!(size_bucket(bound + 1), i + 1);
        }
    }

    #[test]
    fn absorbed_totals_add_up() {
        let c = Counters::default();
        c.add(Stat::Ack, 3);
        let mut t = Totals::default();
        t.0[Stat::Ack as usize] = 4;
        c.absorb(&t);
        assert_eq!(c.get(Stat::Ack), 7);
        let mut sum = c.totals();
        sum += &t;
        assert_eq!(sum.get(Stat::Ack), 11);
    }
}
