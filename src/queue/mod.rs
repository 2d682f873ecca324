//! One queue: its ready messages, its consumers (round robin within prefetch credit) and requeueing.
//!
//! A queue's state sits behind one short-held lock, never held across an `.await`; deliveries leave
//! through the consumer's connection inbox, an unbounded channel whose volume prefetch bounds.

pub mod args;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use tokio::sync::mpsc::UnboundedSender;

use crate::protocol::{ChannelError, Message, code};
use crate::store::Store;

/// A message in a queue, with its position so a requeue puts it back where it was.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue, increasing in publish order.
    pub seq: u64,
    /// The shared message.
    pub msg: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// Whether the store holds it (a persistent message in a durable queue).
    pub persisted: bool,
}

/// A message on its way from its queue to a consumer's channel. Dropped before the channel takes
/// it (a connection that goes away with deliveries still in its inbox), it returns to its queue:
/// no path can lose it.
#[derive(Debug)]
pub struct InFlight {
    queue: Arc<Queue>,
    message: Option<QueuedMessage>,
}

impl InFlight {
    fn new(queue: Arc<Queue>, message: QueuedMessage) -> Self {
        Self {
            queue,
            message: Some(message),
        }
    }

    /// The message, which is now the taker's responsibility.
    pub fn take(mut self) -> Option<QueuedMessage> {
        self.message.take()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Never dropped armed under the queue's lock: `drain_locked` disarms what it takes back.
        if let Some(message) = self.message.take() {
            self.queue.put_back(message);
        }
    }
}

/// What a queue tells a consumer's connection.
#[derive(Debug)]
pub enum QueueEvent {
    /// A message for a consumer.
    Deliver {
        /// Channel of the consumer.
        channel: u16,
        /// Consumer tag.
        consumer_tag: Arc<str>,
        /// The queue it came from, for acks and requeues.
        queue: Arc<Queue>,
        /// The message, returned to the queue if nobody takes it.
        message: InFlight,
    },
    /// A direct reply-to message for a channel's reply consumer.
    Reply {
        /// The channel.
        channel: u16,
        /// The message.
        msg: Arc<Message>,
    },
    /// The store flushed what a channel was waiting for.
    Flushed {
        /// The channel.
        channel: u16,
        /// Publishes up to this confirm sequence number are on disk.
        upto: u64,
        /// A `tx.commit` waits for this flush.
        commit: bool,
    },
    /// The queue went away: the broker cancels the consumer.
    Cancelled {
        /// Channel of the consumer.
        channel: u16,
        /// Consumer tag.
        consumer_tag: Arc<str>,
    },
}

/// Where a connection receives queue events.
pub type EventSender = UnboundedSender<QueueEvent>;

/// Prefetch accounting shared by a consumer's queue and its channel.
#[derive(Debug, Default)]
pub struct Credit {
    /// The limit, 0 for none.
    pub prefetch: AtomicU32,
    /// Deliveries not yet acknowledged.
    pub unacked: AtomicU32,
}

impl Credit {
    /// A credit with this limit.
    pub fn new(prefetch: u16) -> Arc<Self> {
        Arc::new(Self {
            prefetch: AtomicU32::new(u32::from(prefetch)),
            unacked: AtomicU32::new(0),
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

    /// Gives back one delivery's worth of credit.
    pub fn release(&self, n: u32) {
        let _ = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
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
    /// Per-consumer prefetch.
    pub credit: Arc<Credit>,
    /// Per-channel (global) prefetch.
    pub channel_credit: Arc<Credit>,
}

impl Consumer {
    fn try_acquire(&self) -> bool {
        if self.no_ack {
            return true;
        }
        if !self.credit.try_acquire() {
            return false;
        }
        if !self.channel_credit.try_acquire() {
            self.credit.release(1);
            return false;
        }
        true
    }

    fn release(&self) {
        if !self.no_ack {
            self.credit.release(1);
            self.channel_credit.release(1);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<QueuedMessage>,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    next_seq: u64,
    deleted: bool,
    /// An auto-delete queue goes when its last consumer leaves, never before its first.
    had_consumer: bool,
}

/// A queue's declared properties.
#[derive(Debug, Clone, Default)]
pub struct QueueOptions {
    /// Survives a restart.
    pub durable: bool,
    /// Owning connection of an exclusive queue.
    pub exclusive_owner: Option<u64>,
    /// Deleted when its last consumer leaves.
    pub auto_delete: bool,
    /// Declared arguments.
    pub arguments: FieldTable,
    /// Where a durable queue keeps its persistent messages.
    pub store: Option<QueueStore>,
}

/// A durable queue's place in the store.
#[derive(Debug, Clone)]
pub struct QueueStore {
    /// The store.
    pub store: Arc<Store>,
    /// The id its messages are indexed under.
    pub id: u64,
}

/// Ready messages past which a queue with consumers slows its publishers (credit flow).
pub const FLOW_HIGH: usize = 20_000;

/// A queue.
#[derive(Debug)]
pub struct Queue {
    /// Its name.
    pub name: Arc<str>,
    /// Its vhost's name.
    pub vhost: Arc<str>,
    /// How it was declared.
    pub options: QueueOptions,
    state: Mutex<State>,
    /// Ready messages while consumers are attached, readable without the lock.
    backlog: std::sync::atomic::AtomicUsize,
    /// Wakes publishers held back by `FLOW_HIGH` once consumers have caught up.
    caught_up: tokio::sync::Notify,
}

impl Queue {
    /// A new empty queue.
    pub fn new(name: Arc<str>, vhost: Arc<str>, options: QueueOptions) -> Arc<Self> {
        Arc::new(Self {
            name,
            vhost,
            options,
            state: Mutex::new(State::default()),
            backlog: std::sync::atomic::AtomicUsize::new(0),
            caught_up: tokio::sync::Notify::new(),
        })
    }

    /// Appends a routed message and hands it to a consumer if one has credit; true when the
    /// store was asked to keep it (its confirm then waits for the flush).
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> bool {
        let mut st = self.state.lock();
        if st.deleted {
            return false;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let persisted = match &self.options.store {
            Some(qs) if msg.persistent() => {
                let stored = msg.stored(|| qs.store.next_message_id());
                qs.store.enqueue(qs.id, seq, stored.clone());
                true
            }
            _ => false,
        };
        st.ready.push_back(QueuedMessage {
            seq,
            msg,
            redelivered: false,
            persisted,
        });
        self.drain_locked(&mut st);
        persisted
    }

    /// Puts back messages read from the store, in order, after a restart.
    pub fn restore(&self, messages: impl IntoIterator<Item = QueuedMessage>) {
        let mut st = self.state.lock();
        for m in messages {
            st.next_seq = st.next_seq.max(m.seq + 1);
            st.ready.push_back(m);
        }
    }

    /// Records a delivery, so a crash brings the message back redelivered.
    fn mark_delivered(&self, m: &QueuedMessage) {
        if let (true, Some(qs)) = (m.persisted, &self.options.store)
            && let Some(stored) = m.msg.stored.get()
        {
            qs.store.delivered(qs.id, m.seq, stored.id);
        }
    }

    /// Forgets a message for good (acked, or rejected without requeue).
    pub fn settle(&self, m: &QueuedMessage) {
        if let (true, Some(qs)) = (m.persisted, &self.options.store)
            && let Some(stored) = m.msg.stored.get()
        {
            qs.store.remove(qs.id, m.seq, stored.id);
        }
    }

    /// Puts messages back at their original positions, marked redelivered.
    pub fn requeue(self: &Arc<Self>, messages: impl IntoIterator<Item = QueuedMessage>) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        for mut m in messages {
            m.redelivered = true;
            let at = st.ready.partition_point(|r| r.seq < m.seq);
            st.ready.insert(at, m);
        }
        self.drain_locked(&mut st);
    }

    /// Takes back a message its consumer never saw, keeping its redelivered flag.
    pub fn return_undelivered(self: &Arc<Self>, message: InFlight) {
        if let Some(message) = message.take() {
            self.put_back(message);
        }
    }

    fn put_back(self: &Arc<Self>, message: QueuedMessage) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        let at = st.ready.partition_point(|r| r.seq < message.seq);
        st.ready.insert(at, message);
        self.drain_locked(&mut st);
    }

    /// Delivers ready messages to consumers that have credit.
    pub fn drain(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.drain_locked(&mut st);
    }

    /// Whether publishers should wait for this queue's consumers to catch up.
    pub fn backlogged(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) > FLOW_HIGH
    }

    /// Waits (bounded) until the backlog is back under half the limit.
    pub async fn caught_up(&self) {
        let notified = self.caught_up.notified();
        if self.backlogged() {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), notified).await;
        }
    }

    fn drain_locked(self: &Arc<Self>, st: &mut State) {
        self.drain_consumers(st);
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

    fn drain_consumers(self: &Arc<Self>, st: &mut State) {
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let n = st.consumers.len();
            let Some(i) = (0..n)
                .map(|k| (st.next_consumer + k) % n)
                .find(|&i| st.consumers[i].try_acquire())
            else {
                return;
            };
            st.next_consumer = (i + 1) % n;
            let Some(message) = st.ready.pop_front() else {
                st.consumers[i].release();
                return;
            };
            self.mark_delivered(&message);
            let c = &st.consumers[i];
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
                st.consumers.remove(i);
                if st.next_consumer >= st.consumers.len() {
                    st.next_consumer = 0;
                }
                // Disarmed here: its drop must not take the lock this function holds.
                if let QueueEvent::Deliver { message, .. } = event
                    && let Some(message) = message.take()
                {
                    st.ready.push_front(message);
                }
            }
        }
    }

    /// Takes the next ready message for `basic.get`, with the count left behind it.
    pub fn get(&self) -> Option<(QueuedMessage, u32)> {
        let mut st = self.state.lock();
        let m = st.ready.pop_front()?;
        self.mark_delivered(&m);
        let left = u32::try_from(st.ready.len()).unwrap_or(u32::MAX);
        Some((m, left))
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
        st.consumers.push(consumer);
        st.had_consumer = true;
        self.drain_locked(&mut st);
        Ok(())
    }

    /// Detaches a consumer; returns true when the queue is auto-delete and has none left (the
    /// consumer may already be gone, dropped when its connection stopped taking deliveries).
    pub fn remove_consumer(&self, conn_id: u64, channel: u16, tag: &str) -> bool {
        let mut st = self.state.lock();
        st.consumers
            .retain(|c| !(c.conn_id == conn_id && c.channel == channel && &*c.tag == tag));
        if st.next_consumer >= st.consumers.len() {
            st.next_consumer = 0;
        }
        self.options.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    /// Number of ready messages.
    pub fn message_count(&self) -> u32 {
        u32::try_from(self.state.lock().ready.len()).unwrap_or(u32::MAX)
    }

    /// Number of consumers.
    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.state.lock().consumers.len()).unwrap_or(u32::MAX)
    }

    /// Drops every ready message and returns how many there were.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        let n = st.ready.len();
        for m in st.ready.drain(..) {
            self.settle(&m);
        }
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Marks the queue deleted, telling its consumers; returns the ready count it had.
    pub fn delete(&self) -> u32 {
        let mut st = self.state.lock();
        st.deleted = true;
        let n = u32::try_from(st.ready.len()).unwrap_or(u32::MAX);
        st.ready.clear();
        if let Some(qs) = &self.options.store {
            qs.store.drop_queue(qs.id);
        }
        for c in st.consumers.drain(..) {
            let _ = c.tx.send(QueueEvent::Cancelled {
                channel: c.channel,
                consumer_tag: c.tag.clone(),
            });
        }
        n
    }

    /// Whether the queue was deleted.
    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Whether `conn_id` may use this queue (exclusive queues belong to one connection).
    pub fn accessible_by(&self, conn_id: u64) -> bool {
        self.options.exclusive_owner.is_none_or(|o| o == conn_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(body: &'static [u8]) -> Arc<Message> {
        Arc::new(Message::new(
            Bytes::new(),
            Bytes::new(),
            Bytes::from_static(&[0, 0]),
            Default::default(),
            Bytes::from_static(body),
        ))
    }

    #[test]
    fn requeued_messages_return_to_their_position() {
        let q = Queue::new("q".into(), "/".into(), QueueOptions::default());
        for b in [&b"a"[..], b"b", b"c"] {
            q.publish(msg(b));
        }
        let (a, _) = q.get().expect("a");
        let (b, left) = q.get().expect("b");
        assert_eq!(left, 1);
        q.requeue([b, a]);
        let bodies: Vec<_> = std::iter::from_fn(|| q.get())
            .map(|(m, _)| (m.msg.body.clone(), m.redelivered))
            .collect();
        assert_eq!(
            bodies,
            vec![
                (Bytes::from_static(b"a"), true),
                (Bytes::from_static(b"b"), true),
                (Bytes::from_static(b"c"), false)
            ]
        );
    }

    #[test]
    fn prefetch_bounds_deliveries_and_round_robin_alternates() {
        let q = Queue::new("q".into(), "/".into(), QueueOptions::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let channel_credit = Credit::new(0);
        for tag in ["c1", "c2"] {
            let c = Consumer {
                tag: tag.into(),
                channel: 1,
                conn_id: 1,
                tx: tx.clone(),
                no_ack: false,
                exclusive: false,
                credit: Credit::new(2),
                channel_credit: channel_credit.clone(),
            };
            assert!(q.add_consumer(c).is_ok());
        }
        for _ in 0..10 {
            q.publish(msg(b"x"));
        }
        let mut tags = Vec::new();
        let mut held = Vec::new();
        while let Ok(QueueEvent::Deliver {
            consumer_tag,
            message,
            ..
        }) = rx.try_recv()
        {
            tags.push(consumer_tag.to_string());
            held.push(message);
        }
        assert_eq!(tags, ["c1", "c2", "c1", "c2"]);
        assert_eq!(q.message_count(), 6);
        // Deliveries nobody took go back to the queue, in their places.
        drop(rx);
        drop(held);
        assert_eq!(q.message_count(), 10);
        let seqs: Vec<u64> = std::iter::from_fn(|| q.get()).map(|(m, _)| m.seq).collect();
        assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    }
}
