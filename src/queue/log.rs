//! The boundary between a queue and its storage: queue code reaches the store only through
//! [`QueueLog`] (a durable queue's log of messages), [`DeadLetterMove`] (a message leaving one
//! log for others) and [`Pages`] (where every queue spills messages past the memory budget).
//! The conversion between a [`Message`] and its stored form lives here too, so that neither
//! `protocol` nor `store` knows the other.
//!
//! A queue names each message in its log by its sequence number and the id of its record (the
//! stored body, [`RecordId`]), which the queue keeps beside the message in its entry. The sled
//! store stands behind these types today. Streams and a replicated log will stand behind the same
//! operations; they will also need to read a log from an offset and truncate it up to one, which
//! nothing here does yet: recovery reads every queue in one pass ([`Store::recover`]) and a purge
//! settles message by message.

use std::num::NonZeroU64;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tracing::error;

use crate::protocol::{Message, PropertiesInfo};
pub use crate::store::stream::{Retention, Start, StreamLog, StreamReader};
use crate::store::{Store, StoredMessage, WrittenMark, put_field, put_field_with};

/// The id of a message's stored record: every log that keeps the message references it.
pub type RecordId = NonZeroU64;

/// The stored form of one published message, made by the first log that keeps it and shared by
/// every other: a message routed to several durable queues (or held by a durable delayed
/// exchange) is encoded once and written as one record that each of them references.
#[derive(Debug, Default)]
pub struct SharedRecord(OnceLock<Arc<StoredMessage>>);

impl SharedRecord {
    /// The stored form of `msg`, made with a fresh id from `store` on first use.
    pub fn stored_form(&self, store: &Store, msg: &Message) -> &Arc<StoredMessage> {
        self.0.get_or_init(|| {
            Arc::new(StoredMessage {
                id: store.next_message_id(),
                exchange: msg.exchange.clone(),
                routing_key: msg.routing_key.clone(),
                properties: msg.properties.clone(),
                body: msg.body.clone(),
            })
        })
    }
}

fn record_id(stored: &StoredMessage) -> Option<RecordId> {
    let id = NonZeroU64::new(stored.id);
    if id.is_none() {
        error!("a stored message has id 0");
    }
    id
}

/// A message as the store gave it back.
pub fn message_of(stored: &StoredMessage) -> Message {
    let info = PropertiesInfo::scan(&stored.properties).unwrap_or_default();
    Message::new(
        stored.exchange.clone(),
        stored.routing_key.clone(),
        stored.properties.clone(),
        info,
        stored.body.clone(),
    )
}

/// Reads a stored record back; `None` (logged) if it is missing or damaged.
fn read(store: &Store, record: RecordId) -> Option<Message> {
    let m = store.load_message(record.get());
    if m.is_none() {
        error!(message = record.get(), "a stored message is missing");
    }
    m.map(|m| message_of(&m))
}

/// A durable queue's log of messages. Every write goes through the store's single writer, so
/// they reach the disk in the order the queue made them, in the writer's group commits.
///
/// A concrete type rather than a trait: it has one implementation today, and a type without
/// dynamic dispatch keeps publish and ack at one channel send each. A second implementation
/// (a replicated log) turns this into an enum here, and the queue code stays as it is.
#[derive(Debug, Clone)]
pub struct QueueLog {
    store: Arc<Store>,
    id: u64,
    written: WrittenMark,
}

impl QueueLog {
    /// The log of the queue the store knows as `id`.
    pub fn new(store: Arc<Store>, id: u64) -> Self {
        let written = store.written_mark(id);
        Self { store, id, written }
    }

    /// A new queue's log, under a fresh id.
    pub fn create(store: Arc<Store>) -> Self {
        let id = store.next_message_id();
        Self::new(store, id)
    }

    /// How far this log's appends are on disk: every [`QueueLog::append`] below this sequence
    /// was written and synced, unless [`QueueLog::failures`] moved since it was made.
    pub fn written(&self) -> u64 {
        self.written.written()
    }

    /// Calls `f` (on the store's writer thread) whenever [`QueueLog::written`] moves.
    pub fn on_written(&self, f: Box<dyn Fn() + Send + Sync>) {
        self.written.on_written(f);
    }

    /// Whether the store's writer is so far behind that publishers should wait for it.
    pub fn backlogged(&self) -> bool {
        self.store.backlogged()
    }

    /// Waits (bounded) for the store's writer to catch up.
    pub async fn written_out(&self) {
        self.store.written_out().await;
    }

    /// The store's failed batches so far: a message appended before a failure may not be on
    /// disk, whatever [`QueueLog::written`] says.
    pub fn failures(&self) -> u64 {
        self.store.failures()
    }

    /// The id the store knows the queue by.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Appends `msg` at `seq`, writing its shared record if no other log has yet. Appends reach
    /// the store in sequence order (the queue makes them under its lock), which
    /// [`QueueLog::written`] relies on.
    pub fn append(&self, seq: u64, msg: &Message, shared: &SharedRecord) -> Option<RecordId> {
        let stored = shared.stored_form(&self.store, msg);
        let id = record_id(stored)?;
        self.store.enqueue(self.id, seq, stored.clone());
        Some(id)
    }

    /// Removes a message for good (acked, rejected, dropped, or dead-lettered elsewhere).
    pub fn settle(&self, seq: u64, record: RecordId) {
        self.store.remove(self.id, seq, record.get());
    }

    /// Records a delivery, so that after a crash the message comes back redelivered.
    pub fn delivered(&self, seq: u64) {
        self.store.delivered(self.id, seq);
    }

    /// Records a message's return to the queue with its new delivery count (quorum queues),
    /// so that the delivery limit holds across a restart.
    pub fn returned(&self, seq: u64, delivery_count: u32) {
        self.store.set_delivery_count(self.id, seq, delivery_count);
    }

    /// Reads a message of this log back (recovery reads bodies one at a time).
    pub fn read(&self, record: RecordId) -> Option<Message> {
        read(&self.store, record)
    }

    /// Truncates the whole log: the queue was deleted.
    pub fn drop_all(&self) {
        self.store.drop_queue(self.id);
    }
}

/// A stream's log: appends go through the store's writer (its group commits), reads come from
/// the stream's files.
#[derive(Debug, Clone)]
pub struct StreamFiles {
    store: Arc<Store>,
    log: Arc<StreamLog>,
}

/// A stream record: the message as stored, its properties carrying the `x-stream-offset` header
/// that every delivery of it shows (a signed 64-bit integer, as RabbitMQ sends it).
fn stream_record(out: &mut Vec<u8>, m: &StoredMessage, offset: u64) {
    put_field(out, &m.exchange);
    put_field(out, &m.routing_key);
    put_field_with(out, |o| {
        let value = i64::try_from(offset).unwrap_or(i64::MAX).to_be_bytes();
        super::dead_letter::put_with_header(o, &m.properties, "x-stream-offset", b'l', &value);
    });
    put_field(out, &m.body);
}

impl StreamFiles {
    /// Opens the files of the stream whose queue `log` names (a durable queue's log).
    pub fn open(log: &QueueLog, retention: Retention) -> std::io::Result<Self> {
        let stream = log.store.open_stream(log.id, retention, stream_record)?;
        Ok(Self {
            store: log.store.clone(),
            log: stream,
        })
    }

    /// The stream's files.
    pub fn log(&self) -> &Arc<StreamLog> {
        &self.log
    }

    /// Appends `msg` in the store's next group commit (sharing the stored form of a message
    /// routed to several places).
    pub fn append(&self, msg: &Message, shared: &SharedRecord) {
        let stored = shared.stored_form(&self.store, msg);
        self.store.stream_append(&self.log, stored.clone());
    }

    /// Whether the store's writer is so far behind that publishers should wait for it.
    pub fn backlogged(&self) -> bool {
        self.store.backlogged()
    }

    /// Waits (bounded) for the store's writer to catch up.
    pub async fn written_out(&self) {
        self.store.written_out().await;
    }

    /// Removes the stream's files, after every append sent before: it was deleted.
    pub fn drop_all(&self) {
        self.store.drop_stream(&self.log);
    }
}

/// A dead letter's move between logs, written as one atomic batch: out of the log it leaves,
/// and into each log that keeps it, so that after a crash it is in exactly one place.
#[derive(Debug, Default)]
pub struct DeadLetterMove {
    store: Option<Arc<Store>>,
    to: Vec<(u64, u64, Arc<StoredMessage>)>,
}

impl DeadLetterMove {
    /// Adds `msg` at `seq` of `log`, sharing its record with the other logs of the move.
    pub fn add(
        &mut self,
        log: &QueueLog,
        seq: u64,
        msg: &Message,
        shared: &SharedRecord,
    ) -> Option<RecordId> {
        let stored = shared.stored_form(&log.store, msg);
        let id = record_id(stored)?;
        self.to.push((log.id, seq, stored.clone()));
        self.store.get_or_insert_with(|| log.store.clone());
        Some(id)
    }

    /// Writes the move, taking the message out of `from` (its log, sequence and record) when
    /// that log kept it.
    pub fn commit(self, from: Option<(&QueueLog, u64, RecordId)>) {
        let from_ref = from.map(|(log, seq, record)| (log.id, seq, record.get()));
        let store = self
            .store
            .or_else(|| from.map(|(log, ..)| log.store.clone()));
        if let Some(store) = store {
            store.move_message(from_ref, self.to);
        }
    }
}

/// Where queues page out messages past the broker's memory budget (a copy in the store's
/// `pages` tree, emptied at start), and read back the stored record of one that is on disk
/// already.
#[derive(Debug)]
pub struct Pages {
    store: Arc<Store>,
}

impl Pages {
    /// Pages to `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Writes a copy of `msg` and returns its page id; `None` if the store refused it.
    pub fn page_out(&self, msg: &Message) -> Option<u64> {
        self.store
            .page_out([&msg.exchange, &msg.routing_key, &msg.properties, &msg.body])
    }

    /// Reads a page back and forgets it; `None` (logged) if it is gone or damaged.
    pub fn page_in(&self, id: u64) -> Option<Message> {
        let raw: Bytes = self.store.page_in(id)?;
        let m = StoredMessage::decode(0, raw);
        if m.is_none() {
            error!(page = id, "a paged message is damaged");
        }
        m.map(|m| message_of(&m))
    }

    /// Reads a stored record back, for a message paged out by leaving it on disk.
    pub fn read(&self, record: RecordId) -> Option<Message> {
        read(&self.store, record)
    }

    /// Forgets a page without reading it.
    pub fn drop_page(&self, id: u64) {
        self.store.drop_page(id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::queue::memory::MemoryGauge;
    use crate::queue::paging::Pager;
    use crate::queue::{Published, Queue, QueueOptions};
    use crate::store::QueueRecord;

    fn flushed(store: &Store) {
        let (tx, rx) = std::sync::mpsc::channel();
        store.after_flush(
            0,
            Box::new(move |written| {
                let _ = tx.send(written);
            }),
        );
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
    }

    fn durable_queue(store: &Arc<Store>, name: &str, pager: Option<Arc<Pager>>) -> Arc<Queue> {
        let log = QueueLog::create(store.clone());
        let record = QueueRecord {
            id: log.id(),
            vhost: "/".into(),
            name: name.into(),
            auto_delete: false,
            arguments: vec![0, 0, 0, 0],
        };
        store.put_meta(QueueRecord::key("/", name), Some(record.encode()));
        Queue::new(
            name.into(),
            "/".into(),
            QueueOptions {
                durable: true,
                log: Some(log),
                pager,
                ..QueueOptions::default()
            },
        )
    }

    fn persistent(body: &'static [u8]) -> Arc<Message> {
        persistent_message(Bytes::from_static(body))
    }

    /// A persistent message with `body`.
    fn persistent_message(body: Bytes) -> Arc<Message> {
        let properties = Bytes::from_static(&[0x10, 0, 2]);
        let info = PropertiesInfo::scan(&properties).expect("properties");
        Arc::new(Message::new(
            Bytes::from_static(b"x"),
            Bytes::from_static(b"rk"),
            properties,
            info,
            body,
        ))
    }

    /// The ids of the records each recovered queue references, by queue name.
    fn recovered_records(store: &Store) -> Vec<(String, Vec<u64>)> {
        let mut out: Vec<_> = store
            .recover()
            .expect("recover")
            .queues
            .into_iter()
            .map(|(r, q)| (r.name, q.messages.iter().map(|m| m.message_id).collect()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_message_kept_by_two_queues_is_one_record_that_goes_with_its_last_reference() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), 1 << 20).expect("store");
        // No memory budget for the second queue: its copy is paged out and read back.
        let pager = Pager::new(Pages::new(store.clone()), Arc::new(MemoryGauge::new(0)));
        let (a, b) = (
            durable_queue(&store, "a", None),
            durable_queue(&store, "b", Some(pager)),
        );
        let msg = persistent(b"once");
        let shared = SharedRecord::default();
        for q in [&a, &b] {
            assert_eq!(
                q.publish(msg.clone(), &shared),
                Published::Accepted { persisted: true }
            );
        }
        flushed(&store);
        let records = recovered_records(&store);
        let id = records[0].1[0];
        assert_eq!(
            records,
            vec![("a".to_string(), vec![id]), ("b".to_string(), vec![id])]
        );

        let (from_a, _) = a.get().expect("a's message");
        let (from_b, _) = b.get().expect("b's message, paged in");
        assert_eq!(from_b.msg.body, msg.body);
        assert_eq!(from_a.record.map(RecordId::get), Some(id));
        assert_eq!(from_b.record.map(RecordId::get), Some(id));
        a.settle(&from_a);
        flushed(&store);
        assert!(store.load_message(id).is_some(), "b still references it");
        b.settle(&from_b);
        flushed(&store);
        assert!(
            store.load_message(id).is_none(),
            "gone with its last reference"
        );
        assert_eq!(
            recovered_records(&store),
            vec![("a".to_string(), vec![]), ("b".to_string(), vec![])]
        );
    }

    fn numbered(i: usize) -> Arc<Message> {
        persistent_message(Bytes::from(format!("{i:06}").repeat(100)))
    }

    /// Publishes `n` numbered persistent messages from `from`.
    fn publish_numbered(q: &Arc<Queue>, from: usize, n: usize) {
        for i in from..from + n {
            let published = q.publish(numbered(i), &SharedRecord::default());
            assert_eq!(published, Published::Accepted { persisted: true });
        }
    }

    /// Takes `n` messages and checks they are the numbered ones from `from`, in order.
    fn get_numbered(q: &Arc<Queue>, from: usize, n: usize) {
        for i in from..from + n {
            let (e, _) = q.get().unwrap_or_else(|| panic!("message {i} is missing"));
            assert_eq!(e.msg.body, numbered(i).body, "message {i}");
            q.settle(&e);
        }
        assert!(q.get().is_none(), "more messages than were published");
    }

    #[test]
    fn past_the_window_a_durable_queue_keeps_only_records_and_only_once_they_are_written() {
        use crate::queue::paging::WINDOW;
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), 1 << 20).expect("store");
        // The budget has room: only the window sends messages to their records.
        let gauge = Arc::new(MemoryGauge::new(u64::MAX));
        let pager = Pager::new(Pages::new(store.clone()), gauge.clone());
        let q = durable_queue(&store, "q", Some(pager.clone()));
        let n = WINDOW + 500;
        // Read back at once, before the store can have written them: every one is still there.
        for round in 0..3 {
            publish_numbered(&q, round * n, n);
            get_numbered(&q, round * n, n);
        }
        assert_eq!(pager.paged_out(), 0, "nothing was written yet");

        publish_numbered(&q, 0, n);
        let held = gauge.ready_bytes();
        // The writer tells the queue once the appends are on disk.
        flushed(&store);
        assert!(
            pager.paged_out() >= 499,
            "past the window, written messages are dropped to their records: {}",
            pager.paged_out()
        );
        assert!(
            gauge.ready_bytes() + 400 * 600 < held,
            "and no longer held: {} then {}",
            held,
            gauge.ready_bytes()
        );
        publish_numbered(&q, n, 1);
        get_numbered(&q, 0, n + 1);
    }
}
