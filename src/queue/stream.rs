//! A stream queue (`x-queue-type: stream`): an append-only log kept on disk, which every consumer
//! reads from its own offset at its own pace. Publishes append through the store's group commit
//! (their confirms wait for its fsync, as for any durable queue); acks only give credit back.
//!
//! Each consumer has a reader task: it reads whole chunks from the stream's files (at most
//! [`READ_AHEAD`] bytes at a time, off the async workers), hands as many messages as the
//! consumer's prefetch allows to its connection's inbox, and sleeps until an ack frees credit or
//! the stream's committed offset moves. Memory is bounded by prefetch and the read-ahead,
//! whatever the stream's length.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use amq_protocol::types::AMQPValue;
use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::error;

use super::Consumer;
use super::events::{InFlight, QueueEvent};
use super::log::{Retention, Start, StreamFiles, StreamReader, message_of};
use super::memory::footprint;
use super::{Entry, NEVER, Queue, QueuedMessage, args};
use crate::protocol::{ChannelError, ConnectionError};
use crate::stats::Stat;

/// What a stream consumer reads ahead of its credit, at most (unless one chunk is larger): two
/// chunks, and under the allocator's threshold for a block of its own.
pub const READ_AHEAD: usize = 120 << 10;

/// A consumer's reader task, as its stream knows it.
#[derive(Debug)]
struct Reading {
    conn_id: u64,
    channel: u16,
    tag: Arc<str>,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
}

impl Reading {
    fn halt(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// A stream queue's log and its consumers' reader tasks.
#[derive(Debug)]
pub struct Stream {
    files: StreamFiles,
    readers: Mutex<Vec<Reading>>,
}

impl Stream {
    /// A stream over `files`.
    pub fn new(files: StreamFiles) -> Self {
        Self {
            files,
            readers: Mutex::new(Vec::new()),
        }
    }

    /// Its log.
    pub fn files(&self) -> &StreamFiles {
        &self.files
    }

    /// Wakes every reader: some credit may be free.
    fn wake_all(&self) {
        for r in self.readers.lock().iter() {
            r.wake.notify_one();
        }
    }

    /// Stops the reader of one consumer.
    fn stop(&self, conn_id: u64, channel: u16, tag: &str) {
        self.readers.lock().retain(|r| {
            let it = r.conn_id == conn_id && r.channel == channel && &*r.tag == tag;
            if it {
                r.halt();
            }
            !it
        });
    }

    /// Stops every reader (the stream was deleted).
    fn stop_all(&self) {
        for r in self.readers.lock().drain(..) {
            r.halt();
        }
    }
}

/// What a stream keeps, by its arguments (with policies applied).
pub fn retention(a: &args::QueueArgs) -> Retention {
    let d = Retention::default();
    Retention {
        max_bytes: a.max_length_bytes,
        max_age_ms: a.max_age_ms,
        segment_bytes: a.segment_bytes.unwrap_or(d.segment_bytes).max(1),
    }
}

/// The text of a stream refusal: RabbitMQ names the queue this way.
fn named(q: &Queue) -> String {
    format!("queue '{}' in vhost '{}'", q.name, q.vhost)
}

/// 540 for what a stream does not do, with RabbitMQ's text (`what` is the operation).
pub fn unsupported(q: &Queue, what: &str) -> ConnectionError {
    ConnectionError::not_implemented(format_args!(
        "{what} not supported by stream queues {}",
        named(q)
    ))
}

/// The checks RabbitMQ makes before a stream consumer starts: acks required (540), a
/// per-consumer prefetch set (406).
pub fn check_consumer(
    q: &Queue,
    no_ack: bool,
    prefetch: u16,
) -> Result<(), crate::protocol::AmqpError> {
    if no_ack {
        return Err(unsupported(q, "automatic acknowledgement").into());
    }
    if prefetch == 0 {
        return Err(ChannelError::precondition(format_args!(
            "consumer prefetch count is not set for '{}'",
            named(q)
        ))
        .into());
    }
    Ok(())
}

/// Reads `x-stream-offset` as RabbitMQ does: `first`, `last`, `next` (the default), an offset
/// (a negative one is the first), a timestamp (seconds), or an interval back from now (`"1h"`).
/// RabbitMQ's channel crashes on anything else; Warren refuses it with 406.
pub fn start_of(q: &Queue, value: Option<&AMQPValue>) -> Result<Start, ChannelError> {
    let Some(v) = value else {
        return Ok(Start::Next);
    };
    if let Some(n) = args::int_value(v) {
        return Ok(Start::Offset(u64::try_from(n).unwrap_or(0)));
    }
    if let AMQPValue::Timestamp(t) = v {
        return Ok(Start::Time(t.saturating_mul(1000)));
    }
    let text = args::str_value(v);
    match text.as_deref() {
        Some("first") => Ok(Start::First),
        Some("last") => Ok(Start::Last),
        Some("next") => Ok(Start::Next),
        Some(s) if args::max_age_ms(s).is_some() => {
            let back = args::max_age_ms(s).unwrap_or(0);
            Ok(Start::Time(crate::stats::now_ms().saturating_sub(back)))
        }
        _ => Err(ChannelError::precondition(format_args!(
            "invalid arg 'x-stream-offset' for {}: expected first, last, next, an offset, a \
             timestamp or an interval such as \"1h\", got {}",
            named(q),
            match &text {
                Some(s) => format!("\"{s}\""),
                None => args::type_name(v).to_string(),
            }
        ))),
    }
}

/// A stream as listings show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// The oldest offset kept.
    pub first_offset: u64,
    /// The newest offset on disk, if any.
    pub last_offset: Option<u64>,
    /// Segment files.
    pub segments: usize,
    /// Bytes on disk.
    pub bytes: u64,
    /// Consumers reading it.
    pub readers: usize,
    /// Messages retention removed since the broker started.
    pub removed_messages: u64,
    /// Bytes retention removed since the broker started.
    pub removed_bytes: u64,
}

impl Queue {
    /// What a stream holds, for listings; `None` if it is not a stream.
    pub fn stream_info(&self) -> Option<StreamInfo> {
        let s = self.stream.as_ref()?;
        let log = s.files.log();
        let committed = log.committed();
        let (_, bytes) = log.size();
        let (removed_messages, removed_bytes) = log.removed();
        Some(StreamInfo {
            first_offset: log.first_offset(),
            last_offset: committed.checked_sub(1),
            segments: log.segments(),
            bytes,
            readers: s.readers.lock().len(),
            removed_messages,
            removed_bytes,
        })
    }

    /// Whether it is a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.is_some()
    }

    /// Starts the reader of a stream consumer just registered, from the offset its arguments
    /// ask for.
    pub(super) fn start_reader(
        self: &Arc<Self>,
        stream: &Stream,
        consumer: &Consumer,
    ) -> Result<(), ChannelError> {
        let start = start_of(self, consumer.arguments.inner().get("x-stream-offset"))?;
        let reader = stream.files.log().reader(start);
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        stream.readers.lock().push(Reading {
            conn_id: consumer.conn_id,
            channel: consumer.channel,
            tag: consumer.tag.clone(),
            wake: wake.clone(),
            stop: stop.clone(),
        });
        tokio::spawn(read_to_consumer(
            self.clone(),
            consumer.clone(),
            reader,
            wake,
            stop,
        ));
        Ok(())
    }

    /// Wakes a stream's readers (credit was freed); false if it is not a stream.
    pub(super) fn wake_readers(&self) -> bool {
        self.stream.as_ref().map(Stream::wake_all).is_some()
    }

    /// Stops a stream consumer's reader.
    pub(super) fn stop_reader(&self, conn_id: u64, channel: u16, tag: &str) {
        if let Some(s) = &self.stream {
            s.stop(conn_id, channel, tag);
        }
    }

    /// Stops every reader and removes the stream's files: it was deleted.
    pub(super) fn drop_stream(&self) {
        if let Some(s) = &self.stream {
            s.stop_all();
            s.files.drop_all();
        }
    }
}

/// A consumer's reader task: reads the stream from its start and delivers within the consumer's
/// credit, until the consumer or its connection goes.
async fn read_to_consumer(
    queue: Arc<Queue>,
    consumer: Consumer,
    reader: StreamReader,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
) {
    let mut committed = reader.log().subscribe();
    let mut reader = Some(reader);
    let mut ready = std::collections::VecDeque::new();
    while !stop.load(Ordering::Acquire) {
        if ready.is_empty() {
            let Some(mut r) = reader.take() else { return };
            if r.at_tail() {
                reader = Some(r);
                tokio::select! {
                    changed = committed.changed() => if changed.is_err() { return },
                    () = wake.notified() => {}
                }
                continue;
            }
            // Cached data is read here, without a hop to a blocking thread; the rest there.
            let read = match r.read(BytesMut::with_capacity(READ_AHEAD), true) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let buf = BytesMut::with_capacity(READ_AHEAD);
                    let Ok((back, read)) = tokio::task::spawn_blocking(move || {
                        let read = r.read(buf, false);
                        (r, read)
                    })
                    .await
                    else {
                        return;
                    };
                    r = back;
                    read
                }
                read => read,
            };
            match read {
                Ok(messages) => ready.extend(messages),
                Err(e) => {
                    error!(queue = %queue.name, vhost = %queue.vhost, consumer = %consumer.tag, cause = %e, "a stream consumer cannot read on; it gets nothing more");
                    return;
                }
            }
            reader = Some(r);
            continue;
        }
        let mut delivered = 0;
        while !ready.is_empty() && consumer.try_acquire() {
            let Some((offset, stored)) = ready.pop_front() else {
                break;
            };
            let msg = Arc::new(message_of(&stored));
            let bytes = footprint(&msg);
            consumer.channel_credit.holding.add(&consumer.memory, bytes);
            let entry = Entry {
                message: QueuedMessage {
                    seq: offset,
                    msg,
                    redelivered: false,
                    record: None,
                },
                expires: NEVER,
                priority: 0,
                delivery_count: None,
            };
            let event = QueueEvent::Deliver {
                channel: consumer.channel,
                consumer_tag: consumer.tag.clone(),
                queue: queue.clone(),
                message: InFlight::new(queue.clone(), entry),
            };
            if consumer.tx.send(event).is_err() {
                consumer.release();
                consumer.channel_credit.holding.sub(&consumer.memory, bytes);
                return;
            }
            delivered += 1;
        }
        queue.counters.add(Stat::Deliver, delivered);
        if !ready.is_empty() {
            // Out of credit: an ack (or the consumer's end) wakes it.
            wake.notified().await;
        }
    }
}
