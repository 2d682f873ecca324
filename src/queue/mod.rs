//! One queue: its ready messages (in priority order in an `x-max-priority` queue), the publish,
//! settle and requeue flow, and what its arguments ask for: TTLs, queue expiry and the timer
//! ([`expiry`]), length limits (`limits.rs`), quorum delivery limits, and dead-lettering
//! ([`dead_letter`]). Its consumers (highest `x-priority` first, round robin among equals within
//! prefetch credit; only the first in a single-active-consumer queue) live in `consumers.rs`,
//! and what it sends their connections in `events.rs`.
//!
//! A queue's state sits behind one short-held lock, never held across an `.await`; deliveries leave
//! through the consumer's connection inbox, an unbounded channel whose volume credit bounds: the
//! prefetch, or for a consumer without one the broker's cap on unacked deliveries, or for a no-ack
//! consumer [`NO_ACK_WINDOW`].
//! Dead letters are collected under the lock and routed once it is released: routing takes the
//! vhost's topology lock and other queues' locks, which must never nest inside a queue's.

pub mod alarms;
pub mod args;
mod consumers;
pub mod dead_letter;
mod events;
pub mod expiry;
mod limits;
pub mod log;
pub mod memory;
pub mod paging;
pub mod stream;

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::warn;

use crate::protocol::Message;
use crate::stats::{Counters, Gauge, History, Sample, Stat};
use args::{Declared, Overflow, QueueArgs, QueueType};
pub use dead_letter::DeadLettered;
use dead_letter::{DeadLetter, Reason};
use log::{QueueLog, RecordId, SharedRecord};
use paging::{Admit, Charge, Pager, Slot, Unwritten, WINDOW};

pub use consumers::{Consumer, ConsumerView, Credit, FLOW_HIGH, NO_ACK_WINDOW};
pub use events::{EventSender, InFlight, QueueEvent};
use expiry::Clock;

/// A message in a queue, with its position so a requeue puts it back where it was.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue, increasing in publish order.
    pub seq: u64,
    /// The shared message.
    pub msg: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// Its record in the queue's log, when the log keeps it (a persistent message in a durable
    /// queue, or any message in a quorum queue).
    pub record: Option<RecordId>,
}

/// A deadline that never comes.
const NEVER: u64 = u64::MAX;

/// A message as its queue hands it out and takes it back: the message and its position, plus the
/// deadline its TTL set when it was queued (a requeue keeps it, as in RabbitMQ).
#[derive(Debug, Clone)]
pub struct Entry {
    /// The message and its position.
    pub message: QueuedMessage,
    /// When its TTL runs out, in µs on the queue clock (`NEVER` without one).
    expires: u64,
    /// Its priority in a priority queue, capped at the queue's maximum (0 elsewhere).
    priority: u8,
    /// In a quorum queue, how many times it came back (requeued by its consumer or with its
    /// channel); `None` elsewhere.
    delivery_count: Option<u32>,
}

impl Deref for Entry {
    type Target = QueuedMessage;

    fn deref(&self) -> &QueuedMessage {
        &self.message
    }
}

impl Entry {
    /// Its body's length.
    pub fn body_len(&self) -> u64 {
        self.message.msg.body.len() as u64
    }

    /// The message as a quorum queue hands it out, with its `x-delivery-count` header: as in
    /// RabbitMQ 3.10, on every `basic.get` (0 the first time) and on a consumer's redeliveries;
    /// `None` when the message goes as it was published.
    pub fn counted_message(&self, get: bool) -> Option<Message> {
        match self.delivery_count {
            Some(n) if get || n > 0 => dead_letter::with_delivery_count(&self.message.msg, n),
            _ => None,
        }
    }
}

/// What became of a published message in one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Queued or delivered; `persisted` when the store keeps it (its confirm waits for the flush).
    Accepted {
        /// The store was asked to keep it.
        persisted: bool,
    },
    /// Refused by a full queue (`reject-publish`, `reject-publish-dlx`): its publisher gets a
    /// `basic.nack`.
    Rejected,
}

/// How a message enters a queue.
#[derive(Debug, Clone, Copy)]
enum Enqueue<'a> {
    /// A fresh publish, appended to the queue's log (if it keeps the message) with the record
    /// it shares with the other queues it was routed to.
    Fresh(&'a SharedRecord),
    /// A dead letter at its reserved position, its log entry (if any) already written.
    Reserved { seq: u64, record: Option<RecordId> },
}

/// How a queue reaches the rest of its vhost (which this module cannot name): the router its
/// dead letters go through, and the registry an expired queue leaves.
pub trait Router: Send + Sync + std::fmt::Debug {
    /// Routes `msg` (whose stored record is `shared`) through the exchange named `exchange`,
    /// appending the queues it reaches to `out`; false when there is no such exchange.
    fn route(
        &self,
        exchange: &str,
        msg: &Message,
        shared: &SharedRecord,
        out: &mut Vec<Arc<Queue>>,
    ) -> bool;
    /// Deletes `queue`, unused for its `x-expires` time.
    fn expire(&self, queue: &Arc<Queue>);
}

#[derive(Debug, Default)]
struct State {
    /// The arguments in force: the declared ones with the vhost's policies applied.
    args: QueueArgs,
    ready: VecDeque<Slot>,
    /// Messages just appended to the log, held in memory until the append is on disk.
    unwritten: VecDeque<Unwritten>,
    /// Body bytes of the ready messages (`x-max-length-bytes`).
    ready_bytes: u64,
    /// What the ready messages held in memory cost the broker's budget.
    charge: Charge,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    next_seq: u64,
    deleted: bool,
    /// An auto-delete queue goes when its last consumer leaves, never before its first.
    had_consumer: bool,
    /// When the queue was last used (declared, read with `basic.get`, left by its last
    /// consumer), in µs, for `x-expires`.
    last_used: u64,
    /// The deadline the timer task sleeps toward, if any.
    timer_at: Option<u64>,
}

impl State {
    /// Makes `e` a slot (paged out if the budget says so) and counts its bytes.
    fn slot(&mut self, e: Entry, admit: Admit) -> Slot {
        let s = self.charge.admit(e, admit, self.ready.len() >= WINDOW);
        self.ready_bytes = self.ready_bytes.saturating_add(s.body_len());
        s
    }

    /// Puts a slot in its place: by priority, then sequence order.
    fn place(&mut self, s: Slot) {
        let at = self.ready.partition_point(|r| r.before(&s));
        self.ready.insert(at, s);
    }

    fn push_back(&mut self, e: Entry, admit: Admit) {
        let s = self.slot(e, admit);
        // Only a priority queue can have a back that belongs after a new message.
        if self.ready.back().is_some_and(|b| s.before(b)) {
            self.place(s);
        } else {
            self.ready.push_back(s);
        }
    }

    fn push_front(&mut self, e: Entry) {
        let s = self.slot(e, Admit::Resident);
        self.ready.push_front(s);
    }

    /// Puts a message back in its place: by priority, then sequence order.
    fn insert(&mut self, e: Entry, admit: Admit) {
        let s = self.slot(e, admit);
        self.place(s);
    }

    /// Notes a message just appended to the log at `seq`, to be dropped to its record once the
    /// append is on disk if it is past the window or the budget by then.
    fn note_unwritten(&mut self, seq: u64, priority: u8, log: &QueueLog) {
        if self.ready.len() > WINDOW || !self.charge.has_room() {
            self.unwritten
                .push_back(Unwritten::new(seq, priority, log.failures()));
        }
    }

    /// Drops the messages whose appends are on disk now to their records.
    fn drop_written(&mut self, log: &QueueLog) {
        if !self.unwritten.is_empty() {
            self.charge.drop_written(
                &mut self.ready,
                &mut self.unwritten,
                log.written(),
                log.failures(),
            );
        }
    }

    /// The head, read back from disk if it was paged out (a page that cannot be read is logged
    /// and skipped).
    fn pop_front(&mut self) -> Option<Entry> {
        loop {
            let s = self.ready.pop_front()?;
            self.ready_bytes = self.ready_bytes.saturating_sub(s.body_len());
            if let Some(e) = self.charge.release(s) {
                return Some(e);
            }
        }
    }

    /// Empties the ready list, each message read back (and handed to `each`) only if `read`.
    fn clear(&mut self, read: bool, mut each: impl FnMut(Entry)) -> u32 {
        let mut n = 0u32;
        while let Some(s) = self.ready.pop_front() {
            n = n.saturating_add(1);
            if read {
                if let Some(e) = self.charge.release(s) {
                    each(e);
                }
            } else {
                self.charge.drop_slot(s);
            }
        }
        self.ready_bytes = 0;
        n
    }
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
    pub log: Option<QueueLog>,
    /// The broker's memory budget, and where messages past it are paged (none: all in memory).
    pub pager: Option<Arc<Pager>>,
    /// A stream's files (a stream queue's only storage: its `log` only names it).
    pub stream: Option<log::StreamFiles>,
}

/// A queue's counts at one moment, as listings show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Ready messages.
    pub ready: u64,
    /// Their body bytes.
    pub ready_bytes: u64,
    /// Messages delivered and not yet acknowledged.
    pub unacked: u64,
    /// Their body bytes.
    pub unacked_bytes: u64,
    /// Consumers.
    pub consumers: u32,
}

/// A queue.
#[derive(Debug)]
pub struct Queue {
    /// Its name.
    pub name: Arc<str>,
    /// Its vhost's name.
    pub vhost: Arc<str>,
    /// How it was declared.
    pub options: QueueOptions,
    /// The arguments that change its behaviour, read once when it was declared.
    pub args: QueueArgs,
    state: Mutex<State>,
    /// Ready messages while consumers are attached, readable without the lock.
    backlog: std::sync::atomic::AtomicUsize,
    /// Wakes publishers held back by `FLOW_HIGH` once consumers have caught up.
    caught_up: tokio::sync::Notify,
    /// Its vhost, for dead letters and expiry; set once it is registered there.
    router: OnceLock<Weak<dyn Router>>,
    /// Wakes its timer task, started by the first TTL or `x-expires` it has to keep.
    timer: OnceLock<Arc<Notify>>,
    /// The policies in force, for listings.
    applied: parking_lot::Mutex<crate::broker::policy::Applied>,
    /// What it did: publishes in, deliveries, gets and acks.
    pub counters: Counters,
    /// What it dead-lettered, or dropped for want of a dead-letter exchange.
    pub dead_lettered: DeadLettered,
    /// Deliveries its consumers' channels hold unacknowledged, and their body bytes.
    unacked: AtomicU64,
    unacked_bytes: AtomicU64,
    /// Its recent samples.
    pub history: History,
    /// A stream queue's log and readers.
    stream: Option<stream::Stream>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        // The timer task holds only a weak reference: wake it so it sees the queue is gone.
        if let Some(timer) = self.timer.get() {
            timer.notify_one();
        }
    }
}

impl Queue {
    /// A new empty queue, its arguments read from `options` (arguments that do not parse, which
    /// `queue.declare` refuses before getting here, count as absent).
    pub fn new(name: Arc<str>, vhost: Arc<str>, options: QueueOptions) -> Arc<Self> {
        let declared = Declared {
            name: &name,
            vhost: &vhost,
            durable: options.durable,
            exclusive: options.exclusive_owner.is_some(),
            auto_delete: options.auto_delete,
        };
        let args = QueueArgs::parse(&options.arguments, declared).unwrap_or_else(|e| {
            warn!(queue = %name, cause = %e, "ignoring invalid queue arguments");
            QueueArgs::default()
        });
        Self::with_args(name, vhost, options, args)
    }

    /// A new empty queue with arguments already read.
    pub fn with_args(
        name: Arc<str>,
        vhost: Arc<str>,
        options: QueueOptions,
        args: QueueArgs,
    ) -> Arc<Self> {
        let stream = options.stream.clone().map(stream::Stream::new);
        let queue = Arc::new(Self {
            name,
            vhost,
            state: Mutex::new(State {
                args: args.clone(),
                charge: Charge::new(options.pager.clone()),
                ..State::default()
            }),
            options,
            args,
            backlog: std::sync::atomic::AtomicUsize::new(0),
            caught_up: tokio::sync::Notify::new(),
            router: OnceLock::new(),
            timer: OnceLock::new(),
            applied: parking_lot::Mutex::new(crate::broker::policy::Applied::default()),
            counters: Counters::default(),
            dead_lettered: DeadLettered::default(),
            unacked: AtomicU64::new(0),
            unacked_bytes: AtomicU64::new(0),
            history: History::default(),
            stream,
        });
        if let Some(log) = &queue.options.log {
            // Not only on the next publish: a publisher blocked by the memory alarm may be
            // waiting for exactly this memory.
            let weak = Arc::downgrade(&queue);
            log.on_written(Box::new(move || {
                if let Some(q) = weak.upgrade() {
                    q.drop_written();
                }
            }));
        }
        queue
    }

    /// Drops the messages whose appends are on disk now to their records.
    fn drop_written(&self) {
        if let Some(log) = &self.options.log {
            self.state.lock().drop_written(log);
        }
    }

    /// Connects the queue to its vhost once registered there, and starts its timer if its
    /// arguments or restored messages need one.
    pub fn attach(self: &Arc<Self>, router: Weak<dyn Router>) {
        let _ = self.router.set(router);
        let timed = {
            let mut st = self.state.lock();
            st.last_used = expiry::now_us();
            st.args.message_ttl.is_some()
                || st.args.expires.is_some()
                || st.ready.iter().any(|e| e.expires != NEVER)
        };
        if timed {
            self.ensure_timer();
            let mut st = self.state.lock();
            self.arm(&mut st);
        }
    }

    fn router(&self) -> Option<Arc<dyn Router>> {
        self.router.get().and_then(Weak::upgrade)
    }

    /// Appends a routed message and hands it to a consumer if one has credit, unless a length
    /// limit refuses it. `shared` is the message's stored record, shared by every queue it was
    /// routed to.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>, shared: &SharedRecord) -> Published {
        if let Some(s) = &self.stream {
            s.files().append(&msg, shared);
            self.counters.add(Stat::Publish, 1);
            return Published::Accepted { persisted: true };
        }
        let mut dead = Vec::new();
        let published = self.enqueue(msg, Enqueue::Fresh(shared), &mut dead);
        dead_letter::process(dead);
        published
    }

    /// Whether the store keeps `msg` here: a persistent message, or any message in a quorum
    /// queue (which RabbitMQ writes to its log whatever the delivery mode).
    fn keeps(&self, msg: &Message) -> bool {
        msg.persistent() || self.args.queue_type == QueueType::Quorum
    }

    /// A fresh entry's delivery count: 0 in a quorum queue, none elsewhere.
    fn counts_deliveries(&self) -> Option<u32> {
        (self.args.queue_type == QueueType::Quorum).then_some(0)
    }

    /// A message's place among priorities: its own, capped at the queue's `x-max-priority` as
    /// RabbitMQ caps it; 0 in a queue without one.
    fn priority_of(&self, msg: &Message) -> u8 {
        self.args
            .max_priority
            .map_or(0, |max| msg.info.priority.min(max))
    }

    /// A message's TTL under `args`: the queue's and the message's, whichever is shorter.
    fn ttl_of(args: &QueueArgs, msg: &Message) -> Option<u64> {
        let own = msg.expiration().and_then(expiry::ttl_ms);
        match (args.message_ttl, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes a message in: a fresh publish, or a dead letter whose sequence number was reserved
    /// and whose log entry, if any, was already written.
    fn enqueue(
        self: &Arc<Self>,
        msg: Arc<Message>,
        how: Enqueue,
        dead: &mut Vec<DeadLetter>,
    ) -> Published {
        let mut st = self.state.lock();
        let ttl = Self::ttl_of(&st.args, &msg);
        if ttl.is_some() {
            // Only spawns the timer task the first time; the task takes the lock later.
            self.ensure_timer();
        }
        let now = ttl.map(|_| expiry::now_us());
        if st.deleted {
            drop(st);
            if let Enqueue::Reserved {
                seq,
                record: Some(record),
            } = how
            {
                self.forget(seq, record);
            }
            return Published::Accepted { persisted: false };
        }
        if st.args.overflow != Overflow::DropHead && self.would_overflow(&st, &msg) {
            let to_dlx = st.args.overflow == Overflow::RejectPublishDlx
                && st.args.dead_letter_exchange.is_some();
            drop(st);
            let (seq, record) = match how {
                Enqueue::Reserved { seq, record } => (seq, record),
                Enqueue::Fresh(_) => (0, None),
            };
            let message = QueuedMessage {
                seq,
                msg,
                redelivered: false,
                record,
            };
            if to_dlx {
                dead.push(DeadLetter {
                    queue: self.clone(),
                    message,
                    reason: Reason::Maxlen,
                });
            } else {
                self.settle(&message);
            }
            return Published::Rejected;
        }
        let (seq, record) = match how {
            Enqueue::Reserved { seq, record } => (seq, record),
            Enqueue::Fresh(shared) => {
                let seq = st.next_seq;
                st.next_seq += 1;
                let record = match &self.options.log {
                    Some(log) if self.keeps(&msg) => log.append(seq, &msg, shared),
                    _ => None,
                };
                (seq, record)
            }
        };
        let priority = self.priority_of(&msg);
        let entry = Entry {
            message: QueuedMessage {
                seq,
                msg,
                redelivered: false,
                record,
            },
            expires: match (ttl, now) {
                (Some(ttl), Some(now)) => expiry::after(now, ttl),
                _ => NEVER,
            },
            priority,
            delivery_count: self.counts_deliveries(),
        };
        match (&how, &self.options.log) {
            (Enqueue::Reserved { .. }, _) => st.insert(entry, Admit::Pageable),
            (Enqueue::Fresh(_), Some(log)) if record.is_some() => {
                st.drop_written(log);
                st.push_back(entry, Admit::Logged);
                st.note_unwritten(seq, priority, log);
            }
            (Enqueue::Fresh(_), _) => st.push_back(entry, Admit::Pageable),
        }
        let mut clock = match now {
            Some(now) => Clock {
                now: Some(now),
                strict: true,
            },
            None => Clock::lazy(),
        };
        self.counters.add(Stat::Publish, 1);
        self.drain_locked(&mut st, &mut clock, dead);
        // What no consumer took is now subject to the limits and to its TTL (even one of 0).
        self.trim(&mut st, &mut Clock::lazy(), dead);
        self.arm(&mut st);
        Published::Accepted {
            persisted: record.is_some(),
        }
    }

    /// Reserves a position for a dead letter on its way in; `None` if the queue was deleted.
    fn reserve(&self) -> Option<u64> {
        let mut st = self.state.lock();
        if st.deleted {
            return None;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        Some(seq)
    }

    /// Removes a logged message this queue never kept after all.
    fn forget(&self, seq: u64, record: RecordId) {
        if let Some(log) = &self.options.log {
            log.settle(seq, record);
        }
    }

    /// Where this queue's log keeps a message, if it does.
    fn logged(&self, m: &QueuedMessage) -> Option<(&QueueLog, u64, RecordId)> {
        Some((self.options.log.as_ref()?, m.seq, m.record?))
    }

    /// Drops messages from the head: those past a `drop-head` length limit, then expired ones.
    fn trim(self: &Arc<Self>, st: &mut State, clock: &mut Clock, dead: &mut Vec<DeadLetter>) {
        if st.args.overflow == Overflow::DropHead {
            while self.over_limit(st) {
                let Some(e) = st.pop_front() else { break };
                self.discard(st, e.message, Reason::Maxlen, dead);
            }
        }
        while st.ready.front().is_some_and(|e| clock.expired(e.expires)) {
            let Some(e) = st.pop_front() else { break };
            self.discard(st, e.message, Reason::Expired, dead);
        }
    }

    /// A message leaves the queue unconsumed: dead-lettered if there is somewhere to send it.
    fn discard(
        self: &Arc<Self>,
        st: &State,
        message: QueuedMessage,
        reason: Reason,
        dead: &mut Vec<DeadLetter>,
    ) {
        if st.args.dead_letter_exchange.is_some() {
            dead.push(DeadLetter {
                queue: self.clone(),
                message,
                reason,
            });
        } else {
            self.dead_lettered.count(reason, false);
            self.settle(&message);
        }
    }

    /// Puts back messages read from the store, in order, after a restart. A TTL keeps counting
    /// from when the message was stored (ms since the Unix epoch), downtime included, so a
    /// message that expired while the broker was down is never delivered.
    pub fn restore(&self, messages: impl IntoIterator<Item = (QueuedMessage, Option<u64>, u32)>) {
        let now = expiry::now_us();
        let now_ms = crate::stats::now_ms();
        let mut st = self.state.lock();
        for (m, stored_at, count) in messages {
            st.next_seq = st.next_seq.max(m.seq + 1);
            let waited = stored_at.map_or(0, |t| now_ms.saturating_sub(t));
            let expires = Self::ttl_of(&st.args, &m.msg)
                .map_or(NEVER, |ttl| expiry::after(now, ttl.saturating_sub(waited)));
            let priority = self.priority_of(&m.msg);
            st.push_back(
                Entry {
                    message: m,
                    expires,
                    priority,
                    delivery_count: self.counts_deliveries().map(|_| count),
                },
                Admit::Stored,
            );
        }
    }

    /// Records a delivery, so a crash brings the message back redelivered.
    fn mark_delivered(&self, m: &QueuedMessage) {
        if let Some((log, seq, _)) = self.logged(m) {
            log.delivered(seq);
        }
    }

    /// Forgets a message for good (acked, or rejected without requeue).
    pub fn settle(&self, m: &QueuedMessage) {
        if let Some((log, seq, record)) = self.logged(m) {
            log.settle(seq, record);
        }
    }

    /// Settles messages a client rejected without requeue: dead-lettered if the queue has a
    /// dead-letter exchange (and still exists), else forgotten.
    pub fn reject(self: &Arc<Self>, messages: impl IntoIterator<Item = Entry>) {
        let dead_letters = {
            let st = self.state.lock();
            st.args.dead_letter_exchange.is_some() && !st.deleted
        };
        if !dead_letters {
            for m in messages {
                self.dead_lettered.count(Reason::Rejected, false);
                self.settle(&m);
            }
            return;
        }
        let dead = messages
            .into_iter()
            .map(|e| DeadLetter {
                queue: self.clone(),
                message: e.message,
                reason: Reason::Rejected,
            })
            .collect();
        dead_letter::process(dead);
    }

    /// Puts messages back at their original positions, marked redelivered.
    pub fn requeue(self: &Arc<Self>, messages: impl IntoIterator<Item = Entry>) {
        self.put_back_all(messages, true);
    }

    /// Takes back a message its consumer never saw, keeping its redelivered flag.
    pub fn return_undelivered(self: &Arc<Self>, message: InFlight) {
        if let Some(message) = message.take() {
            self.put_back(message);
        }
    }

    fn put_back(self: &Arc<Self>, message: Entry) {
        self.put_back_all([message], false);
    }

    fn put_back_all(
        self: &Arc<Self>,
        messages: impl IntoIterator<Item = Entry>,
        redelivered: bool,
    ) {
        // A stream keeps every message: nothing leaves it, so nothing comes back.
        if self.stream.is_some() {
            return;
        }
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return;
            }
            for mut m in messages {
                m.message.redelivered |= redelivered;
                if redelivered && let Some(n) = &mut m.delivery_count {
                    *n = n.saturating_add(1);
                    if let Some((log, seq, _)) = self.logged(&m.message) {
                        log.returned(seq, *n);
                    }
                    if st.args.delivery_limit.is_some_and(|l| u64::from(*n) > l) {
                        self.discard(&st, m.message, Reason::DeliveryLimit, &mut dead);
                        continue;
                    }
                }
                st.insert(m, Admit::Resident);
            }
            // As RabbitMQ's requeue: length limits, then expiry, then deliveries.
            let mut clock = Clock::lazy();
            self.trim(&mut st, &mut clock, &mut dead);
            self.drain_locked(&mut st, &mut clock, &mut dead);
            self.arm(&mut st);
        }
        dead_letter::process(dead);
    }

    /// Takes the next ready message for `basic.get`, with the count left behind it; expired
    /// messages at the head go first.
    pub fn get(self: &Arc<Self>) -> Option<(Entry, u32)> {
        let mut dead = Vec::new();
        let got = {
            let mut st = self.state.lock();
            if st.args.expires.is_some() {
                st.last_used = expiry::now_us();
            }
            let mut clock = Clock::lazy();
            self.trim(&mut st, &mut clock, &mut dead);
            let got = st.pop_front().map(|m| {
                self.mark_delivered(&m);
                // The count left behind is taken after the new head's expiry, as in RabbitMQ.
                self.trim(&mut st, &mut clock, &mut dead);
                (m, u32::try_from(st.ready.len()).unwrap_or(u32::MAX))
            });
            self.arm(&mut st);
            got
        };
        dead_letter::process(dead);
        got
    }

    /// Number of ready messages.
    pub fn message_count(&self) -> u32 {
        if let Some(s) = &self.stream {
            return u32::try_from(s.files().log().size().0).unwrap_or(u32::MAX);
        }
        u32::try_from(self.state.lock().ready.len()).unwrap_or(u32::MAX)
    }

    /// What listings show of it now: ready messages, their body bytes, and consumers.
    pub fn stats(&self) -> QueueStats {
        // A stream's messages are all there for any consumer: they count as ready.
        let stream = self.stream.as_ref().map(|s| s.files().log().size());
        let st = self.state.lock();
        QueueStats {
            ready: stream.map_or(st.ready.len() as u64, |s| s.0),
            ready_bytes: stream.map_or(st.ready_bytes, |s| s.1),
            unacked: self.unacked.load(Ordering::Relaxed),
            unacked_bytes: self.unacked_bytes.load(Ordering::Relaxed),
            consumers: u32::try_from(st.consumers.len()).unwrap_or(u32::MAX),
        }
    }

    /// Counts a delivery of `bytes` body bytes that a channel now holds unacknowledged.
    pub fn hold(&self, bytes: u64) {
        self.unacked.fetch_add(1, Ordering::Relaxed);
        self.unacked_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `n` deliveries (`bytes` body bytes) acknowledged, and lets waiting messages go to
    /// consumers whose credit the acks freed.
    pub fn acked(self: &Arc<Self>, n: u64, bytes: u64) {
        self.counters.add(Stat::Ack, n);
        self.release(n, bytes);
        self.drain();
    }

    /// Counts `n` held deliveries (`bytes` body bytes) that left their channel (acked, rejected
    /// or requeued).
    pub fn release(&self, n: u64, bytes: u64) {
        self.unacked.fetch_sub(n, Ordering::Relaxed);
        self.unacked_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Takes a sample of its counters and levels.
    pub fn sample(&self, at_ms: u64) -> Sample {
        // Age retention needs a clock as well as rolls: the statistics ticker is one.
        if let Some(s) = &self.stream {
            s.files().log().retain(crate::stats::now_ms());
        }
        let s = self.stats();
        let mut gauges = [0; crate::stats::GAUGES];
        gauges[Gauge::Messages as usize] = s.ready + s.unacked;
        gauges[Gauge::Ready as usize] = s.ready;
        gauges[Gauge::Unacked as usize] = s.unacked;
        self.history.record(at_ms, self.counters.totals(), gauges)
    }

    /// The policies in force on it.
    pub fn applied(&self) -> crate::broker::policy::Applied {
        self.applied.lock().clone()
    }

    /// Puts policies in force: `args` are its arguments with them applied. A lower length
    /// limit drops (or dead-letters) the head at once, as RabbitMQ does; a new TTL applies to
    /// messages queued from now on.
    pub fn apply_policy(
        self: &Arc<Self>,
        args: QueueArgs,
        applied: crate::broker::policy::Applied,
    ) {
        *self.applied.lock() = applied;
        if let Some(s) = &self.stream {
            s.files()
                .log()
                .set_retention(stream::retention(&args), crate::stats::now_ms());
        }
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            if st.args == args {
                return;
            }
            let timed = args.message_ttl.is_some() || args.expires.is_some();
            st.args = args;
            if timed {
                self.ensure_timer();
            }
            self.trim(&mut st, &mut Clock::lazy(), &mut dead);
            self.arm(&mut st);
        }
        dead_letter::process(dead);
    }

    /// Drops every ready message and returns how many there were.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        st.clear(self.options.log.is_some(), |m| self.settle(&m))
    }

    /// Marks the queue deleted, telling its consumers; returns the ready count it had.
    pub fn delete(&self) -> u32 {
        let mut st = self.state.lock();
        st.deleted = true;
        // The log drops the queue's messages below, all at once.
        let n = st.clear(false, |_| {});
        if let Some(timer) = self.timer.get() {
            timer.notify_one();
        }
        if let Some(log) = &self.options.log {
            log.drop_all();
        }
        self.drop_stream();
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
    use crate::store::Store;
    use bytes::Bytes;
    use memory::MemoryGauge;

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
            q.publish(msg(b), &SharedRecord::default());
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

    fn bodies(q: &Arc<Queue>) -> Vec<Bytes> {
        std::iter::from_fn(|| q.get())
            .map(|(m, _)| m.msg.body.clone())
            .collect()
    }

    #[test]
    fn past_the_budget_messages_are_paged_and_read_back_in_priority_order() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), 1 << 20).expect("store");
        // No budget at all: every message is paged.
        let pager = Pager::new(
            log::Pages::new(store.clone()),
            Arc::new(memory::MemoryGauge::new(0)),
        );
        let args = QueueArgs {
            max_priority: Some(9),
            ..QueueArgs::default()
        };
        let options = QueueOptions {
            pager: Some(pager.clone()),
            ..QueueOptions::default()
        };
        let q = Queue::with_args("q".into(), "/".into(), options, args);
        let with_priority = |body: &'static [u8], p: u8| {
            let props = Bytes::from(vec![0x08, 0, p]);
            let info = crate::protocol::PropertiesInfo::scan(&props).expect("props");
            Arc::new(Message::new(
                Bytes::from_static(b"x"),
                Bytes::from_static(b"k"),
                props,
                info,
                Bytes::from_static(body),
            ))
        };
        for (b, p) in [(&b"low"[..], 1), (b"high", 8), (b"mid", 5), (b"high2", 8)] {
            q.publish(with_priority(b, p), &SharedRecord::default());
        }
        assert_eq!(pager.paged_out(), 4);
        assert_eq!(pager.resident_bytes(), 0);
        let (m, _) = q.get().expect("first");
        assert_eq!(
            &m.msg.routing_key[..],
            b"k",
            "a paged message keeps its routing key"
        );
        assert_eq!(m.msg.info.priority, 8, "and its properties");
        q.requeue([m]);
        assert_eq!(bodies(&q), [&b"high"[..], b"high2", b"mid", b"low"]);
        for b in [&b"a"[..], b"b"] {
            q.publish(msg(b), &SharedRecord::default());
        }
        assert_eq!(q.purge(), 2, "paged messages count in a purge");
        assert!(q.get().is_none());
    }

    #[test]
    fn length_limits_drop_the_head_or_refuse_the_publish() {
        let limited = |overflow| {
            let args = QueueArgs {
                max_length: Some(2),
                overflow,
                ..QueueArgs::default()
            };
            Queue::with_args("q".into(), "/".into(), QueueOptions::default(), args)
        };
        let q = limited(Overflow::DropHead);
        for b in [&b"a"[..], b"b", b"c"] {
            assert_eq!(
                q.publish(msg(b), &SharedRecord::default()),
                Published::Accepted { persisted: false }
            );
        }
        assert_eq!(bodies(&q), [&b"b"[..], b"c"]);
        let q = limited(Overflow::RejectPublish);
        let published: Vec<_> = [&b"a"[..], b"b", b"c"]
            .into_iter()
            .map(|b| q.publish(msg(b), &SharedRecord::default()))
            .collect();
        assert_eq!(published[2], Published::Rejected);
        assert_eq!(bodies(&q), [&b"a"[..], b"b"]);
    }

    #[test]
    fn a_ttl_of_zero_keeps_nothing_nobody_takes_at_once() {
        let args = QueueArgs {
            message_ttl: Some(0),
            ..QueueArgs::default()
        };
        let q = Queue::with_args("q".into(), "/".into(), QueueOptions::default(), args);
        q.publish(msg(b"gone"), &SharedRecord::default());
        assert_eq!(q.message_count(), 0);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let consumer = Consumer {
            tag: "c".into(),
            channel: 1,
            conn_id: 1,
            tx,
            no_ack: true,
            exclusive: false,
            credit: Credit::new(0),
            channel_credit: Credit::new(0),
            priority: 0,
            memory: Arc::new(MemoryGauge::new(u64::MAX)),
            arguments: FieldTable::default(),
        };
        assert!(q.add_consumer(consumer).is_ok());
        q.publish(msg(b"taken"), &SharedRecord::default());
        assert!(matches!(rx.try_recv(), Ok(QueueEvent::Deliver { .. })));
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
                priority: 0,
                memory: Arc::new(MemoryGauge::new(u64::MAX)),
                arguments: FieldTable::default(),
            };
            assert!(q.add_consumer(c).is_ok());
        }
        for _ in 0..10 {
            q.publish(msg(b"x"), &SharedRecord::default());
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
