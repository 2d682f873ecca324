//! A queue's consumers: prefetch [`Credit`], the [`Consumer`] registry (highest `x-priority`
//! first, round robin among equals; only the first in a single-active-consumer queue), and the
//! scheduling that hands ready messages to them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::dead_letter::{self, DeadLetter, Reason};
use super::events::{EventSender, InFlight, QueueEvent};
use super::expiry::{self, Clock};
use super::memory::{Holding, MemoryGauge, footprint};
use super::{Queue, State};
use crate::protocol::{ChannelError, code};
use crate::stats::Stat;
use amq_protocol::types::FieldTable;

/// Deliveries a no-ack consumer may have waiting in its connection's inbox: past it, further ones
/// wait in the queue, so a consumer that stops reading its socket cannot pile messages up in
/// the broker's memory.
pub const NO_ACK_WINDOW: u32 = 2048;

/// Prefetch accounting shared by a consumer's queue and its channel.
#[derive(Debug, Default)]
pub struct Credit {
    /// The limit, 0 for none.
    pub prefetch: AtomicU32,
    /// Deliveries not yet acknowledged (for a no-ack consumer: not yet written).
    pub unacked: AtomicU32,
    /// Bytes held for the channel's deliveries, on their way or unacked (a channel's credit).
    pub holding: Holding,
}

impl Credit {
    /// A credit with this limit.
    pub fn new(prefetch: u16) -> Arc<Self> {
        Self::with_limit(u32::from(prefetch))
    }

    /// A credit with this limit, 0 for none.
    pub fn with_limit(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            prefetch: AtomicU32::new(limit),
            unacked: AtomicU32::new(0),
            holding: Holding::default(),
        })
    }

    fn try_acquire(&self) -> bool {
        let limit = self.prefetch.load(Ordering::Relaxed);
        self.unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether its limit is reached: consumers sharing it get nothing more until some is released.
    pub fn is_full(&self) -> bool {
        let limit = self.prefetch.load(Ordering::Relaxed);
        limit != 0 && self.unacked.load(Ordering::Relaxed) >= limit
    }

    /// Gives back one delivery's worth of credit.
    pub fn release(&self, n: u32) {
        let _ = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Gives back one delivery's credit; true when that brings it down to half its limit, the
    /// point at which a consumer the limit held back asks its queue for more (asking at every
    /// release would take the queue's lock per message).
    pub fn release_one(&self) -> bool {
        let before = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(1))
            })
            .unwrap_or(0);
        let limit = self.prefetch.load(Ordering::Relaxed);
        limit != 0 && before == limit / 2 + 1
    }
}

/// A consumer attached to a queue.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// Consumer tag.
    pub tag: Arc<str>,
    /// Channel number on its connection.
    pub channel: u16,
    /// The connection's id.
    pub conn_id: u64,
    /// The connection's inbox.
    pub tx: EventSender,
    /// Deliveries need no ack.
    pub no_ack: bool,
    /// Whether it asked for exclusive use of the queue.
    pub exclusive: bool,
    /// Per-consumer prefetch (for a no-ack consumer, its inbox window).
    pub credit: Arc<Credit>,
    /// Per-channel (global) prefetch, and what the channel holds.
    pub channel_credit: Arc<Credit>,
    /// Its `x-priority`: deliveries go to the highest that has credit.
    pub priority: i64,
    /// The broker's memory gauge, which the channel's holding reports to.
    pub memory: Arc<MemoryGauge>,
    /// The arguments of its `basic.consume`, for listings.
    pub arguments: FieldTable,
}

/// A consumer as listings show it.
#[derive(Debug, Clone)]
pub struct ConsumerView {
    /// Consumer tag.
    pub tag: Arc<str>,
    /// Channel number on its connection.
    pub channel: u16,
    /// The connection's id.
    pub conn_id: u64,
    /// Whether its deliveries need an ack.
    pub ack_required: bool,
    /// Whether it has exclusive use of the queue.
    pub exclusive: bool,
    /// Its prefetch limit, 0 for none.
    pub prefetch: u32,
    /// The arguments of its `basic.consume`.
    pub arguments: FieldTable,
}

impl Consumer {
    /// Takes one delivery's credit, per consumer and (acked) per channel; false if none is left.
    pub(super) fn try_acquire(&self) -> bool {
        if !self.credit.try_acquire() {
            return false;
        }
        if !self.no_ack && !self.channel_credit.try_acquire() {
            self.credit.release(1);
            return false;
        }
        true
    }

    /// Gives back what [`Consumer::try_acquire`] took.
    pub(super) fn release(&self) {
        self.credit.release(1);
        if !self.no_ack {
            self.channel_credit.release(1);
        }
    }
}

/// Ready messages past which a queue with consumers slows its publishers (credit flow).
pub const FLOW_HIGH: usize = 20_000;

impl Queue {
    /// Delivers ready messages to consumers that have credit.
    pub fn drain(self: &Arc<Self>) {
        if self.wake_readers() {
            return;
        }
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            self.drain_locked(&mut st, &mut Clock::lazy(), &mut dead);
            self.arm(&mut st);
        }
        dead_letter::process(dead);
    }

    /// Whether publishers should wait for this queue's consumers to catch up, or for the store
    /// to write what this queue keeps.
    pub fn backlogged(&self) -> bool {
        self.consumers_behind()
            || self.options.log.as_ref().is_some_and(|l| l.backlogged())
            || self.stream.as_ref().is_some_and(|s| s.files().backlogged())
    }

    fn consumers_behind(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) > FLOW_HIGH
    }

    /// Waits (bounded) until the store has caught up, and the backlog is back under half the
    /// limit.
    pub async fn caught_up(&self) {
        if let Some(log) = self.options.log.as_ref().filter(|l| l.backlogged()) {
            log.written_out().await;
        }
        if let Some(s) = self.stream.as_ref().filter(|s| s.files().backlogged()) {
            s.files().written_out().await;
        }
        let notified = self.caught_up.notified();
        if self.consumers_behind() {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), notified).await;
        }
    }

    pub(super) fn drain_locked(
        self: &Arc<Self>,
        st: &mut State,
        clock: &mut Clock,
        dead: &mut Vec<DeadLetter>,
    ) {
        self.drain_consumers(st, clock, dead);
        let backlog = if st.consumers.is_empty() {
            0
        } else {
            st.ready.len()
        };
        let before = self.backlog.swap(backlog, Ordering::Relaxed);
        if before > FLOW_HIGH / 2 && backlog <= FLOW_HIGH / 2 {
            self.caught_up.notify_waiters();
        }
    }

    fn drain_consumers(
        self: &Arc<Self>,
        st: &mut State,
        clock: &mut Clock,
        dead: &mut Vec<DeadLetter>,
    ) {
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            // An expired message is never delivered.
            if st.ready.front().is_some_and(|e| clock.expired(e.expires)) {
                if let Some(e) = st.pop_front() {
                    self.discard(st, e.message, Reason::Expired, dead);
                }
                continue;
            }
            let n = st.consumers.len();
            let Some(i) = self.pick_consumer(st) else {
                return;
            };
            st.next_consumer = (i + 1) % n;
            let Some(message) = st.pop_front() else {
                st.consumers[i].release();
                return;
            };
            // A no-ack delivery is settled as it leaves, as RabbitMQ's autoack does.
            if st.consumers[i].no_ack {
                self.settle(&message.message);
                self.counters.add(Stat::DeliverNoAck, 1);
            } else {
                self.mark_delivered(&message.message);
                self.counters.add(Stat::Deliver, 1);
            }
            if message.redelivered {
                self.counters.add(Stat::Redeliver, 1);
            }
            let c = &st.consumers[i];
            let bytes = footprint(&message.message.msg);
            c.channel_credit.holding.add(&c.memory, bytes);
            let event = QueueEvent::Deliver {
                channel: c.channel,
                consumer_tag: c.tag.clone(),
                queue: self.clone(),
                message: InFlight::new(self.clone(), message),
            };
            if let Err(tokio::sync::mpsc::error::SendError(event)) = c.tx.send(event) {
                // The connection is gone; its cleanup will remove the consumer, but not before we
                // stop offering it messages.
                c.release();
                c.channel_credit.holding.sub(&c.memory, bytes);
                st.consumers.remove(i);
                if st.next_consumer >= st.consumers.len() {
                    st.next_consumer = 0;
                }
                // Disarmed here: its drop must not take the lock this function holds.
                if let QueueEvent::Deliver { message, .. } = event
                    && let Some(message) = message.take()
                {
                    st.push_front(message);
                }
            }
        }
    }

    /// The consumer the next delivery goes to, its credit taken: a single-active-consumer queue's
    /// first; else the first with credit among the highest `x-priority` (consumers are kept in
    /// descending priority), round robin among equals.
    fn pick_consumer(&self, st: &State) -> Option<usize> {
        if self.args.single_active_consumer {
            return st.consumers.first()?.try_acquire().then_some(0);
        }
        let n = st.consumers.len();
        let mut start = 0;
        while start < n {
            let p = st.consumers[start].priority;
            let len = st.consumers[start..].partition_point(|c| c.priority == p);
            let end = start + len;
            let first = if (start..end).contains(&st.next_consumer) {
                st.next_consumer - start
            } else {
                0
            };
            if let Some(i) = (0..len)
                .map(|k| start + (first + k) % len)
                .find(|&i| st.consumers[i].try_acquire())
            {
                return Some(i);
            }
            start = end;
        }
        None
    }

    /// Its consumers, in the order they take deliveries.
    pub fn consumer_views(&self) -> Vec<ConsumerView> {
        self.state
            .lock()
            .consumers
            .iter()
            .map(|c| ConsumerView {
                tag: c.tag.clone(),
                channel: c.channel,
                conn_id: c.conn_id,
                ack_required: !c.no_ack,
                exclusive: c.exclusive,
                prefetch: c.credit.prefetch.load(Ordering::Relaxed),
                arguments: c.arguments.clone(),
            })
            .collect()
    }

    /// Attaches a consumer, enforcing exclusive use.
    pub fn add_consumer(self: &Arc<Self>, consumer: Consumer) -> Result<(), ChannelError> {
        let mut st = self.state.lock();
        if st.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !st.consumers.is_empty())
        {
            return Err(ChannelError::new(
                code::ACCESS_REFUSED,
                format_args!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.vhost
                ),
            ));
        }
        if let Some(s) = &self.stream {
            self.start_reader(s, &consumer)?;
        }
        if self.args.single_active_consumer {
            // Registration order decides who is active next.
            st.consumers.push(consumer);
        } else {
            let at = st
                .consumers
                .partition_point(|c| c.priority >= consumer.priority);
            st.consumers.insert(at, consumer);
        }
        st.had_consumer = true;
        let mut dead = Vec::new();
        self.drain_locked(&mut st, &mut Clock::lazy(), &mut dead);
        drop(st);
        dead_letter::process(dead);
        Ok(())
    }

    /// Detaches a consumer; returns true when the queue is auto-delete and has none left (the
    /// consumer may already be gone, dropped when its connection stopped taking deliveries).
    /// In a single-active-consumer queue the next consumer in registration order takes over.
    pub fn remove_consumer(self: &Arc<Self>, conn_id: u64, channel: u16, tag: &str) -> bool {
        self.stop_reader(conn_id, channel, tag);
        let mut st = self.state.lock();
        let was_active = st
            .consumers
            .first()
            .is_some_and(|c| c.conn_id == conn_id && c.channel == channel && &*c.tag == tag);
        st.consumers
            .retain(|c| !(c.conn_id == conn_id && c.channel == channel && &*c.tag == tag));
        if st.next_consumer >= st.consumers.len() {
            st.next_consumer = 0;
        }
        if st.consumers.is_empty() && st.args.expires.is_some() {
            st.last_used = expiry::now_us();
            self.arm(&mut st);
        }
        let mut dead = Vec::new();
        if self.args.single_active_consumer && was_active {
            self.drain_locked(&mut st, &mut Clock::lazy(), &mut dead);
        }
        let gone =
            self.options.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted;
        drop(st);
        dead_letter::process(dead);
        gone
    }

    /// Number of consumers.
    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.state.lock().consumers.len()).unwrap_or(u32::MAX)
    }
}
