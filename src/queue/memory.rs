//! The memory alarm: every byte the broker holds for a message, wherever it is, against one limit.
//!
//! Queues report the messages they hold ready (through their [`Charge`](super::paging::Charge));
//! channels report what they hold outside any ready list: deliveries on their way to a consumer
//! (in the connection's inbox), deliveries awaiting an ack, and bodies being assembled. Past the
//! paging point (half the limit at most, as RabbitMQ pages at half its watermark, and by default
//! no more than 64 MiB, so that a backlog's memory does not grow with the machine), new ready
//! messages are paged out; past the limit, publishing connections are blocked
//! (`connection.blocked`) until the total falls back under it. Paging alone keeps ready messages
//! under the alarm: it goes off when what consumers and publishers hold pushes the total past the
//! limit.
//!
//! Both kinds of reporters update the shared counters in steps of [`GRANULE`], so the hot path does
//! not touch a shared cache line per message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::{info, warn};

use super::alarms::{Alarm, Alarms};
use crate::protocol::Message;

/// How far a reporter's own count may drift from what it reported before it reports again.
pub const GRANULE: u64 = 8 * 1024;

/// The broker-wide count of message bytes in memory, and the alarm it raises past its limit.
#[derive(Debug)]
pub struct MemoryGauge {
    limit: u64,
    /// Past this, new ready messages are paged out.
    page_at: u64,
    /// Ready messages held by queues.
    ready: AtomicU64,
    /// Messages held outside ready lists: in inboxes, unacked, being assembled.
    held: AtomicU64,
    /// The alarm as last published, so a report only touches the alarms when it changes.
    raised: AtomicBool,
    alarms: Arc<Alarms>,
}

impl MemoryGauge {
    /// A gauge whose alarm goes off at `limit` bytes and that pages at half of it, alone in its
    /// own [`Alarms`].
    pub fn new(limit: u64) -> Self {
        Self::with_alarms(limit, limit / 2, Arc::new(Alarms::new(0)))
    }

    /// A gauge whose alarm goes off at `limit` bytes, raised in the broker's `alarms`, and that
    /// pages past `page_at` bytes.
    pub fn with_alarms(limit: u64, page_at: u64, alarms: Arc<Alarms>) -> Self {
        Self {
            limit,
            page_at,
            ready: AtomicU64::new(0),
            held: AtomicU64::new(0),
            raised: AtomicBool::new(false),
            alarms,
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes of ready messages held in memory, as queues last reported them.
    pub fn ready_bytes(&self) -> u64 {
        self.ready.load(Ordering::Relaxed)
    }

    /// Bytes of messages held outside ready lists, as channels last reported them.
    pub fn held_bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Every message byte the broker holds in memory.
    pub fn total(&self) -> u64 {
        self.ready_bytes().saturating_add(self.held_bytes())
    }

    /// Whether a new ready message may stay in memory: under the paging point.
    pub fn has_room(&self) -> bool {
        self.total() < self.page_at
    }

    /// Whether the memory alarm is on.
    pub fn alarmed(&self) -> bool {
        self.raised.load(Ordering::Relaxed)
    }

    /// The alarms this gauge raises its own in.
    pub fn alarms(&self) -> &Arc<Alarms> {
        &self.alarms
    }

    /// A queue's report of a change in the ready bytes it holds.
    pub fn report_ready(&self, delta: i64) {
        apply(&self.ready, delta);
        self.check();
    }

    fn report_held(&self, delta: i64) {
        apply(&self.held, delta);
        self.check();
    }

    fn check(&self) {
        let total = self.total();
        let over = total >= self.limit;
        if self.raised.swap(over, Ordering::Relaxed) != over {
            if over {
                warn!(
                    used = total,
                    limit = self.limit,
                    "memory alarm set: blocking publishers"
                );
            } else {
                info!(used = total, limit = self.limit, "memory alarm cleared");
            }
            self.alarms.set(Alarm::Memory, over);
        }
    }
}

/// The bytes a message in memory is charged: its parts and its own allocation.
pub fn footprint(m: &Message) -> u64 {
    let parts = m.body.len() + m.properties.len() + m.exchange.len() + m.routing_key.len();
    u64::try_from(parts + std::mem::size_of::<Message>()).unwrap_or(u64::MAX)
}

fn apply(counter: &AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
    } else {
        // Never below zero, even if reports race.
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
            Some(r.saturating_sub(delta.unsigned_abs()))
        });
    }
}

/// Bytes one channel holds for messages outside any ready list. Queues add to it as they hand a
/// delivery to the channel's inbox and the channel takes away as it lets go, from two tasks at
/// once: each change reports the granules it crosses, so what the gauge has been told always sums
/// to this count rounded down to a granule, whatever the interleaving.
#[derive(Debug, Default)]
pub struct Holding {
    bytes: AtomicU64,
}

impl Holding {
    /// Counts `n` more bytes held.
    pub fn add(&self, gauge: &MemoryGauge, n: u64) {
        let before = self.bytes.fetch_add(n, Ordering::Relaxed);
        report_crossed(gauge, before, before.saturating_add(n));
    }

    /// Counts `n` bytes let go.
    pub fn sub(&self, gauge: &MemoryGauge, n: u64) {
        let before = self.bytes.fetch_sub(n, Ordering::Relaxed);
        report_crossed(gauge, before, before.saturating_sub(n));
    }

    /// Lets go of everything still counted (a channel that closes).
    pub fn clear(&self, gauge: &MemoryGauge) {
        let before = self.bytes.swap(0, Ordering::Relaxed);
        report_crossed(gauge, before, 0);
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

fn report_crossed(gauge: &MemoryGauge, before: u64, after: u64) {
    let (from, to) = (before / GRANULE, after / GRANULE);
    if from != to {
        let granules = i64::try_from(to).unwrap_or(i64::MAX) - i64::try_from(from).unwrap_or(0);
        gauge.report_held(granules.saturating_mul(i64::try_from(GRANULE).unwrap_or(i64::MAX)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdings_report_whole_granules_and_return_to_zero() {
        let gauge = MemoryGauge::new(4 * GRANULE);
        let h = Holding::default();
        h.add(&gauge, GRANULE - 1);
        assert_eq!(gauge.held_bytes(), 0);
        h.add(&gauge, 2);
        assert_eq!(gauge.held_bytes(), GRANULE);
        h.add(&gauge, 3 * GRANULE);
        assert_eq!(gauge.held_bytes(), 4 * GRANULE);
        assert!(gauge.alarmed() && gauge.alarms().raised().has(Alarm::Memory));
        h.sub(&gauge, 3 * GRANULE + 2);
        assert_eq!((h.bytes(), gauge.held_bytes()), (GRANULE - 1, 0));
        assert!(!gauge.alarmed() && !gauge.alarms().raised().has(Alarm::Memory));
        h.add(&gauge, 1);
        h.clear(&gauge);
        assert_eq!((h.bytes(), gauge.held_bytes()), (0, 0));
    }

    #[test]
    fn ready_and_held_bytes_share_the_limit() {
        let gauge = MemoryGauge::new(4 * GRANULE);
        gauge.report_ready(i64::try_from(GRANULE).unwrap_or(0));
        assert!(gauge.has_room() && !gauge.alarmed());
        let held = Holding::default();
        held.add(&gauge, GRANULE);
        assert!(!gauge.has_room() && !gauge.alarmed());
        held.add(&gauge, 2 * GRANULE);
        assert!(gauge.alarmed());
    }
}
