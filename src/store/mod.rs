//! Durable storage: topology records in sled, persistent messages in the store's own journal,
//! and the group-commit writer.
//!
//! Message bodies, queue index entries (queue id + sequence) and the messages that delayed
//! exchanges hold live in the journal (`journal.rs`): append-only segments that the writer
//! extends by one checksummed batch per group commit, so that everything in a batch (a dead
//! letter's move between queues, a message and its index entries) is on disk together or not at
//! all. Topology (the `meta` tree) stays in sled. A single writer thread applies everything that
//! arrived while the previous batch was written: the `meta` changes as one sled batch, flushed
//! and made durable with fdatasync and fsync (`sync.rs`: sled alone does not), and the messages as
//! one journal batch with its own fdatasync; only then does it run the batch's completions
//! (publisher confirms, `tx.commit-ok`).
//!
//! A failed write (a full disk) leaves sled refusing every later write until it is reopened, so the
//! writer stops writing at the first failure and tells each completion that its writes are not on
//! disk (publishers get `basic.nack`). Opening writes too, so a reserve file kept beside the store
//! is given up when the disk is full at start: the store opens, serves what it holds and refuses
//! new writes. While it refuses, the writer looks every [`RETRY`] for room on the disk (backing
//! off to [`MAX_RETRY`] while writes keep failing soon after resuming, as on a disk that returns
//! EIO with room to spare) and, once there is, drops every sled handle (sled locks its directory
//! until the last one goes), reopens sled in place, cuts the journal back to its last whole
//! batch, and writes again with fsync before confirm as before. What it refused is not replayed,
//! as none of it was confirmed: acks made meanwhile are not on disk (those messages come back
//! redelivered after a restart), and messages nacked meanwhile, and declares and deletes that
//! failed, are not on disk either.

mod codec;
mod journal;
mod pages;
pub mod space;
pub mod stream;
mod sync;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use bytes::Bytes;
use tracing::{error, info, warn};

pub use codec::{
    BindingRecord, DelayRecord, ExchangeRecord, QueueRecord, StoredMessage, put_field,
    put_field_with,
};
use journal::{EntryState, HoldState, Journal};
use stream::{Retention, StreamLog};

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u8 = 2;
/// The format that kept messages in sled's `messages` tree, which a start moves to the journal.
const SLED_MESSAGES_FORMAT: u8 = 1;
const VERSION_KEY: &[u8] = b"format-version";
/// The reserve file, and its size: room for what sled writes while it opens (the tail of its last
/// segment and a snapshot), given up when the disk is full at start.
const RESERVE_FILE: &str = "reserve";
const RESERVE_BYTES: usize = 4 << 20;
/// How often a store that refuses writes looks for room to write again.
const RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two looks, reached by doubling while each resume soon fails again.
const MAX_RETRY: Duration = Duration::from_secs(64);
/// Free bytes, on top of the reserve, that a store that refuses writes waits for before it
/// reopens: room for sled's recovery and more than one batch.
const ROOM_TO_RESUME: u64 = 8 << 20;

/// A queue id the store never hands out (ids start at 1): the delayed-message sink's, whose index
/// entries only live until the scheduler purges them and are dropped at start.
pub const DELAY_SINK_QUEUE: u64 = 0;

/// Why the store could not be used.
#[derive(Debug)]
pub enum StoreError {
    /// Another process holds the data directory.
    Locked(PathBuf),
    /// The directory was written by a format this build does not know.
    UnknownFormat(PathBuf, u8),
    /// sled could not open or write the directory.
    Sled(PathBuf, sled::Error),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Locked(p) => write!(
                f,
                "data dir {} is in use by another warren process",
                p.display()
            ),
            Self::UnknownFormat(p, v) => write!(
                f,
                "data dir {} was written in store format {v}; this build reads format {FORMAT_VERSION}",
                p.display()
            ),
            Self::Sled(p, e) => write!(f, "cannot open the store in {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for StoreError {}

/// Runs once the batch holding an operation was written; `true` if everything it waited for is
/// on disk, `false` if a write failed.
pub type Completion = Box<dyn FnOnce(bool) + Send>;

enum Op {
    Meta {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    Enqueue {
        queue: u64,
        seq: u64,
        message: Arc<StoredMessage>,
    },
    Remove {
        queue: u64,
        seq: u64,
        message_id: u64,
    },
    Delivered {
        queue: u64,
        seq: u64,
    },
    DropQueue {
        queue: u64,
    },
    Delay {
        id: u64,
        record: Vec<u8>,
        message: Arc<StoredMessage>,
    },
    Undelay {
        id: u64,
        message_id: u64,
    },
    /// A dead-letter move: one batch takes the message out of its queue and adds it to others.
    Move {
        from: Option<StoredRef>,
        to: Vec<(u64, u64, Arc<StoredMessage>)>,
    },
    Count {
        queue: u64,
        seq: u64,
        count: u32,
    },
    Barrier {
        since: u64,
        done: Completion,
    },
    /// A message appended to a stream, at the offset the writer gives it.
    StreamAppend {
        stream: Arc<StreamLog>,
        message: Arc<StoredMessage>,
    },
    /// A deleted stream's files go, after every append sent before.
    DropStream {
        stream: Arc<StreamLog>,
    },
    Stop,
}

/// How far a queue's appends are on disk: every [`Store::enqueue`] of the queue with a lower
/// sequence number was written and synced (unless the store failed since: see
/// [`Store::failures`]). A queue may then drop its own copy of those messages and read them back
/// from the store.
pub type WrittenMark = Arc<Mark>;

/// A queue's [`WrittenMark`]: the sequence it has reached, and whom to tell when it moves.
#[derive(Default)]
pub struct Mark {
    written: AtomicU64,
    on_written: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mark")
            .field("written", &self.written())
            .finish_non_exhaustive()
    }
}

impl Mark {
    /// Every append below this sequence is on disk.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Calls `f` on the writer's thread each time the mark moves (once per batch at most); the
    /// first call of this sets it for good.
    pub fn on_written(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_written.set(f);
    }
}

/// The marks the writer moves, by queue id.
type Marks = Arc<parking_lot::Mutex<HashMap<u64, WrittenMark>>>;

/// A stored message's place in a queue: (queue id, sequence, message id).
pub type StoredRef = (u64, u64, u64);

/// A recovered durable queue's messages, in queue order.
#[derive(Debug, Default)]
pub struct RecoveredQueue {
    /// The messages, in queue order.
    pub messages: Vec<RecoveredMessage>,
}

/// One message of a recovered queue; its body stays on disk until [`Store::load_message`] reads
/// it, so recovery never holds more bodies than the queues keep in memory.
#[derive(Debug)]
pub struct RecoveredMessage {
    /// Its position in the queue.
    pub seq: u64,
    /// The stored message's id.
    pub message_id: u64,
    /// Whether it was delivered before.
    pub delivered: bool,
    /// When it was stored, in ms since the Unix epoch: TTLs keep counting across a restart.
    pub stored_at: Option<u64>,
    /// Its quorum-queue delivery count.
    pub delivery_count: u32,
}

/// A held message of a delayed exchange, read back at start.
#[derive(Debug)]
pub struct RecoveredDelay {
    /// The hold's id (its key).
    pub id: u64,
    /// Where and when it goes.
    pub record: DelayRecord,
    /// The message.
    pub message: Arc<StoredMessage>,
}

/// Everything the store held at start.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Durable exchanges.
    pub exchanges: Vec<ExchangeRecord>,
    /// Durable queues with their messages.
    pub queues: Vec<(QueueRecord, RecoveredQueue)>,
    /// Bindings between durable entities.
    pub bindings: Vec<BindingRecord>,
    /// Messages durable delayed exchanges hold, in the order they were held.
    pub delayed: Vec<RecoveredDelay>,
    /// Users, vhost settings, permissions and limits (key and value, for the broker to read).
    pub admin: Vec<(Vec<u8>, Vec<u8>)>,
    /// Records that could not be decoded and were skipped.
    pub damaged: usize,
}

/// Counters that tests and logs read.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Flushes completed.
    pub flushes: AtomicU64,
    /// Message index entries written.
    pub enqueued: AtomicU64,
    /// Index entries never written because their ack arrived in the same batch.
    pub elided: AtomicU64,
    /// Batches that could not be written (or were refused because the store cannot write).
    pub failed: AtomicU64,
    /// Flushes made durable (sled's log fdatasynced, with its new blobs and directories).
    pub syncs: AtomicU64,
    /// Files sled created that the store synced (blobs).
    pub file_syncs: AtomicU64,
    /// Directory syncs, after entries were created, renamed or removed in them.
    pub dir_syncs: AtomicU64,
    /// Whether the store refuses writes now (a write failed and it has not reopened since).
    pub failing: AtomicBool,
    /// Times the store reopened itself after a failure and wrote again.
    pub resumed: AtomicU64,
    /// Time spent writing and syncing batches, in µs.
    pub write_micros: AtomicU64,
    /// Batches written (each with its sync).
    pub batches: AtomicU64,
}

/// sled's handles read outside the writer; `None` only while the writer reopens sled.
#[derive(Debug)]
struct Readers {
    db: sled::Db,
}

/// The store: a handle to the writer thread and the sled database.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Swapped by the writer when it reopens sled after a failure.
    readers: Arc<RwLock<Option<Readers>>>,
    writer: mpsc::Sender<Op>,
    /// Copies of queued messages paged out under memory pressure, emptied at start.
    pages: pages::PageFiles,
    /// Each queue's [`WrittenMark`], shared with the writer.
    marks: Marks,
    /// What the writer has yet to write.
    backlog: Arc<Backlog>,
    /// The message journal, which the writer holds while it writes a batch.
    journal: Arc<parking_lot::Mutex<Journal>>,
    /// Where each stored body is, for reads outside the writer.
    bodies: journal::Readers,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
    next_id: AtomicU64,
    /// Topology records written and durable queues dropped so far: a reply to a queue or
    /// exchange method waits for the store only if this moved.
    topology_writes: AtomicU64,
    /// Counters.
    pub stats: Arc<StoreStats>,
}

/// A message's share of the writer's backlog.
fn body_bytes(m: &StoredMessage) -> u64 {
    u64::try_from(m.body.len()).unwrap_or(u64::MAX)
}

/// Bytes of persistent bodies sent to the writer and not yet written past which publishers wait
/// ([`Store::backlogged`]): they wait for the disk rather than pile up in memory.
const WRITE_BACKLOG: u64 = 4 << 20;

/// What the writer has yet to write, and the wake-up for publishers waiting on it.
#[derive(Debug, Default)]
struct Backlog {
    /// Bytes of enqueued bodies sent and not yet written (or refused).
    bytes: AtomicU64,
    /// Notified when `bytes` falls under half of [`WRITE_BACKLOG`].
    drained: tokio::sync::Notify,
}

/// sled's handles, as the store opens them.
struct Trees {
    db: sled::Db,
    meta: sled::Tree,
    /// The format the directory was written in.
    format: u8,
}

/// Opens sled in `dir` and its trees; opening writes (sled's own recovery).
fn open_trees(dir: &Path, cache_bytes: u64) -> Result<Trees, StoreError> {
    let sled_err = |e| StoreError::Sled(dir.to_path_buf(), e);
    let db = sled::Config::new()
        .path(dir.join("sled"))
        .cache_capacity(cache_bytes)
        // The writer flushes once per batch; sled's own timed flusher would only add fsyncs.
        .flush_every_ms(None)
        .open()
        .map_err(|e| match e {
            sled::Error::Io(ref io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                StoreError::Locked(dir.to_path_buf())
            }
            e => sled_err(e),
        })?;
    let format = match db.get(VERSION_KEY).map_err(sled_err)? {
        Some(v) if v.as_ref() == [FORMAT_VERSION] => FORMAT_VERSION,
        Some(v) if v.as_ref() == [SLED_MESSAGES_FORMAT] => SLED_MESSAGES_FORMAT,
        Some(v) => {
            return Err(StoreError::UnknownFormat(
                dir.to_path_buf(),
                v.first().copied().unwrap_or(0),
            ));
        }
        None => {
            db.insert(VERSION_KEY, &[FORMAT_VERSION])
                .map_err(sled_err)?;
            db.flush().map_err(sled_err)?;
            FORMAT_VERSION
        }
    };
    let meta = db.open_tree("meta").map_err(sled_err)?;
    // Earlier builds paged into this tree; pages now live in their own files.
    db.drop_tree("pages").map_err(sled_err)?;
    Ok(Trees { db, meta, format })
}

/// Whether a write failed for want of room.
fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull
            | std::io::ErrorKind::QuotaExceeded
            | std::io::ErrorKind::FileTooLarge
    )
}

/// Whether the filesystem holding `dir` has room for the reserve and some writes; a filesystem
/// that does not tell its size (LazyFS) is assumed to.
fn has_room(dir: &Path) -> bool {
    let want = u64::try_from(RESERVE_BYTES).map_or(u64::MAX, |r| r.saturating_add(ROOM_TO_RESUME));
    space::space(dir).is_ok_and(|s| s.total == 0 || s.free >= want)
}

/// Makes sure the reserve file holds its bytes (written, not sparse: a hole reserves nothing).
fn keep_reserve(path: &Path) {
    if std::fs::metadata(path)
        .is_ok_and(|m| u64::try_from(RESERVE_BYTES).is_ok_and(|want| m.len() >= want))
    {
        return;
    }
    let written = std::fs::write(path, vec![0u8; RESERVE_BYTES]);
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        warn!(cause = %e, path = %path.display(), "cannot keep the store's reserve: a full disk would stop the next start");
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` with `cache_bytes` of sled page cache. On a full
    /// disk it gives up its reserve to open, and then refuses every write until there is room.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Sled(dir.to_path_buf(), sled::Error::Io(e)))?;
        let reserve = dir.join(RESERVE_FILE);
        let (trees, full) = match open_trees(dir, cache_bytes) {
            Err(StoreError::Sled(_, sled::Error::Io(e)))
                if is_full(&e) && std::fs::remove_file(&reserve).is_ok() =>
            {
                error!(
                    cause = %e,
                    dir = %dir.display(),
                    "the disk is full: gave up the store's reserve to open it; serving what it \
                     holds and refusing persistent writes (publishes are nacked) until the disk \
                     has room again"
                );
                (open_trees(dir, cache_bytes)?, true)
            }
            opened => (opened?, false),
        };
        let Trees { db, meta, format } = trees;
        if !full {
            keep_reserve(&reserve);
        }
        let io_err = |e| StoreError::Sled(dir.to_path_buf(), sled::Error::Io(e));
        let durability = sync::Durability::open(&dir.join("sled")).map_err(io_err)?;
        // The store's own entries (sled's directory, the reserve) and the data dir's own entry.
        sync::sync_dir(dir).map_err(io_err)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync::sync_dir(parent).map_err(io_err)?;
        }
        // Queue ids, hold ids and message ids come from one counter: none may be handed out twice,
        // even when no message with a higher id is left.
        let queue_ids: Vec<u64> = meta
            .scan_prefix(b"q")
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| QueueRecord::decode(&v))
            .map(|r| r.id)
            .collect();
        stream::remove_orphans(&dir.join("streams"), &queue_ids);
        let mut journal = Journal::open(&dir.join("journal")).map_err(io_err)?;
        if format == SLED_MESSAGES_FORMAT {
            migrate(dir, &db, &mut journal)?;
        }
        // Before settling: an id that only a record of a deleted queue names is not handed out
        // again either.
        let max_id = journal
            .max_id()
            .max(queue_ids.iter().copied().max().unwrap_or(0));
        let refs = journal.settle_after_replay(&queue_ids);
        let bodies = journal.readers();
        let journal = Arc::new(parking_lot::Mutex::new(journal));
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(StoreStats::default());
        if full {
            stats.failed.store(1, Ordering::SeqCst);
            stats.failing.store(true, Ordering::SeqCst);
        }
        let readers = Arc::new(RwLock::new(Some(Readers { db: db.clone() })));
        let pages = pages::PageFiles::open(&dir.join("pages")).map_err(io_err)?;
        let marks = Marks::default();
        let backlog = Arc::new(Backlog::default());
        let writer = Writer {
            handles: Some(Handles { db, meta }),
            journal: journal.clone(),
            durability: Some(durability),
            readers: readers.clone(),
            dir: dir.to_path_buf(),
            cache_bytes,
            rx,
            marks: marks.clone(),
            backlog: backlog.clone(),
            refs,
            stats: stats.clone(),
            failing_since: full.then(Instant::now),
            next_try: Instant::now(),
            retry: RETRY,
            resumed_at: None,
            warned: false,
            chunk: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("warren-store".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Sled(dir.to_path_buf(), sled::Error::Io(e)))?;
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            readers,
            writer: tx,
            pages,
            marks,
            backlog,
            journal,
            bodies,
            thread: parking_lot::Mutex::new(Some(thread)),
            next_id: AtomicU64::new(max_id + 1),
            topology_writes: AtomicU64::new(0),
            stats,
        }))
    }

    /// Where the store keeps its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh message id.
    pub fn next_message_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn send(&self, op: Op) {
        if self.writer.send(op).is_err() {
            error!("store writer has stopped; a durable write was lost");
        }
    }

    /// Stores (or removes, with `None`) a topology record.
    pub fn put_meta(&self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.topology_writes.fetch_add(1, Ordering::Relaxed);
        self.send(Op::Meta { key, value });
    }

    /// The mark of how far `queue`'s appends are on disk, made on first use. A queue's appends
    /// must reach [`Store::enqueue`] in sequence order for the mark to mean anything.
    pub fn written_mark(&self, queue: u64) -> WrittenMark {
        self.marks.lock().entry(queue).or_default().clone()
    }

    /// Whether the writer is so far behind that publishers should wait ([`Store::written_out`]).
    pub fn backlogged(&self) -> bool {
        self.backlog.bytes.load(Ordering::Relaxed) > WRITE_BACKLOG
    }

    /// Waits (bounded) until the writer has caught up to half its backlog limit.
    pub async fn written_out(&self) {
        let drained = self.backlog.drained.notified();
        if self.backlogged() {
            let _ = tokio::time::timeout(Duration::from_millis(50), drained).await;
        }
    }

    /// Appends a persistent message to a durable queue's index (the body is stored once).
    pub fn enqueue(&self, queue: u64, seq: u64, message: Arc<StoredMessage>) {
        self.backlog
            .bytes
            .fetch_add(body_bytes(&message), Ordering::Relaxed);
        self.send(Op::Enqueue {
            queue,
            seq,
            message,
        });
    }

    /// Opens the files of the stream the store knows as `id` (creating them for a new one).
    pub fn open_stream(
        &self,
        id: u64,
        retention: Retention,
        encode: stream::RecordEncoder,
    ) -> std::io::Result<Arc<StreamLog>> {
        StreamLog::open(
            self.dir.join("streams").join(id.to_string()),
            id,
            retention,
            encode,
        )
    }

    /// Appends a message to a stream in the next group commit; the stream's committed offset
    /// moves once it is on disk.
    pub fn stream_append(&self, stream: &Arc<StreamLog>, message: Arc<StoredMessage>) {
        self.backlog
            .bytes
            .fetch_add(body_bytes(&message), Ordering::Relaxed);
        self.send(Op::StreamAppend {
            stream: stream.clone(),
            message,
        });
    }

    /// Removes a deleted stream's files once what was sent before is written.
    pub fn drop_stream(&self, stream: &Arc<StreamLog>) {
        self.send(Op::DropStream {
            stream: stream.clone(),
        });
    }

    /// Removes an acked (or dead-lettered) message from a queue.
    pub fn remove(&self, queue: u64, seq: u64, message_id: u64) {
        self.send(Op::Remove {
            queue,
            seq,
            message_id,
        });
    }

    /// Records that a message was delivered, so it comes back redelivered after a crash.
    pub fn delivered(&self, queue: u64, seq: u64) {
        self.send(Op::Delivered { queue, seq });
    }

    /// Moves a dead-lettered message in one atomic batch: out of its queue (`from`, when it was
    /// stored there) and into each `(queue, seq, message)` of `to`, so that after a crash it is
    /// in exactly one place.
    pub fn move_message(&self, from: Option<StoredRef>, to: Vec<(u64, u64, Arc<StoredMessage>)>) {
        if from.is_none() && to.is_empty() {
            return;
        }
        self.send(Op::Move { from, to });
    }

    /// Records a quorum-queue message's delivery count, so poison detection survives a restart.
    pub fn set_delivery_count(&self, queue: u64, seq: u64, count: u32) {
        self.send(Op::Count { queue, seq, count });
    }

    /// Removes every message of a deleted queue.
    pub fn drop_queue(&self, queue: u64) {
        self.topology_writes.fetch_add(1, Ordering::Relaxed);
        self.send(Op::DropQueue { queue });
    }

    /// Keeps a message a durable delayed exchange holds, under the hold's own `id` (a fresh
    /// [`Store::next_message_id`]); the body is shared with any queue that stores the same message.
    pub fn delay(&self, id: u64, record: &DelayRecord, message: Arc<StoredMessage>) {
        self.send(Op::Delay {
            id,
            record: record.encode(),
            message,
        });
    }

    /// Forgets a held message once it was routed (or could no longer be).
    pub fn undelay(&self, id: u64, message_id: u64) {
        self.send(Op::Undelay { id, message_id });
    }

    /// Batches that could not be written so far. A caller notes it before its writes and hands
    /// it to [`Store::after_flush`], which reports whether any write failed since.
    pub fn failures(&self) -> u64 {
        self.stats.failed.load(Ordering::SeqCst)
    }

    /// Runs `done` once everything sent before it was written: `done(true)` if it is on disk and
    /// no write failed since [`Store::failures`] was `since`, `done(false)` otherwise.
    pub fn after_flush(&self, since: u64, done: Completion) {
        if let Err(mpsc::SendError(Op::Barrier { done, .. })) =
            self.writer.send(Op::Barrier { since, done })
        {
            error!("store writer has stopped; what it was sent is not on disk");
            done(false);
        }
    }

    /// Waits until everything sent before the call is on disk; false if a write failed since
    /// [`Store::failures`] was `since`.
    pub async fn flushed(&self, since: u64) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.after_flush(
            since,
            Box::new(move |ok| {
                let _ = tx.send(ok);
            }),
        );
        rx.await.unwrap_or(false)
    }

    /// Reads everything back, in order.
    pub fn recover(&self) -> Result<Recovered, StoreError> {
        let started = Instant::now();
        let sled_err = |e| StoreError::Sled(self.dir.clone(), e);
        let readers = self.readers.read();
        let Some(readers) = readers.as_ref() else {
            return Err(sled_err(sled::Error::Io(std::io::Error::other(
                "the store could not be reopened after a failed write",
            ))));
        };
        let meta = readers.db.open_tree("meta").map_err(sled_err)?;
        let mut out = Recovered::default();
        for item in meta.iter() {
            let (k, v) = item.map_err(sled_err)?;
            let ok = match k.first() {
                Some(b'x') => ExchangeRecord::decode(&v).map(|r| out.exchanges.push(r)),
                Some(b'q') => {
                    QueueRecord::decode(&v).map(|r| out.queues.push((r, RecoveredQueue::default())))
                }
                Some(b'b') => BindingRecord::decode(&v).map(|r| out.bindings.push(r)),
                Some(&crate::broker::admin::KEY_PREFIX) => {
                    out.admin.push((k.to_vec(), v.to_vec()));
                    Some(())
                }
                _ => None,
            };
            if ok.is_none() {
                out.damaged += 1;
            }
        }
        let journal = self.journal.lock();
        out.damaged += journal.damaged;
        let mut total = 0usize;
        for (record, recovered) in &mut out.queues {
            for (seq, e) in journal.queue_entries(record.id) {
                recovered.messages.push(RecoveredMessage {
                    seq,
                    message_id: e.message,
                    delivered: e.delivered,
                    stored_at: Some(e.stored_at),
                    delivery_count: e.count,
                });
                total += 1;
            }
        }
        for (id, hold) in journal.holds() {
            let (Some(record), Some(message)) = (
                DelayRecord::decode(&hold.record),
                journal::read_message(&self.bodies, hold.message),
            ) else {
                out.damaged += 1;
                continue;
            };
            out.delayed.push(RecoveredDelay {
                id,
                record,
                message: Arc::new(message),
            });
        }
        drop(journal);
        if out.damaged > 0 {
            warn!(damaged = out.damaged, "skipped damaged store records");
        }
        info!(
            exchanges = out.exchanges.len(),
            queues = out.queues.len(),
            messages = total,
            delayed = out.delayed.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "read the store's index"
        );
        Ok(out)
    }

    /// A stored message's body and properties, read from disk; `None` if missing or damaged.
    pub fn load_message(&self, id: u64) -> Option<Arc<StoredMessage>> {
        journal::read_message(&self.bodies, id).map(Arc::new)
    }

    /// Writes a page (a queued message's exchange, routing key, properties and body) and
    /// returns its id; `None` if it could not be written.
    pub fn page_out(&self, parts: [&[u8]; 4]) -> Option<u64> {
        self.pages.write(|out| codec::put_message(out, parts))
    }

    /// Reads a page back (as [`StoredMessage::decode`] reads it) and forgets it.
    pub fn page_in(&self, id: u64) -> Option<Bytes> {
        self.pages.read(id)
    }

    /// Forgets a page without reading it.
    pub fn drop_page(&self, id: u64) {
        self.pages.drop_page(id);
    }

    /// How many topology writes (records put or removed, durable queues dropped) were sent so far.
    pub fn topology_writes(&self) -> u64 {
        self.topology_writes.load(Ordering::Relaxed)
    }

    /// Flushes what is pending and stops the writer.
    pub fn close(&self) {
        let _ = self.writer.send(Op::Stop);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer's sled handles.
#[derive(Clone)]
struct Handles {
    db: sled::Db,
    meta: sled::Tree,
}

/// Takes a batch's enqueued bytes off the backlog when the batch is done (written or refused),
/// waking publishers that wait once it is back under half its limit.
struct WrittenOut(Arc<Backlog>, u64);

impl Drop for WrittenOut {
    fn drop(&mut self) {
        let before = self.0.bytes.fetch_sub(self.1, Ordering::Relaxed);
        if before > WRITE_BACKLOG / 2 && before.saturating_sub(self.1) <= WRITE_BACKLOG / 2 {
            self.0.drained.notify_waiters();
        }
    }
}

struct Writer {
    /// `None` only after a reopen failed.
    handles: Option<Handles>,
    /// The message journal.
    journal: Arc<parking_lot::Mutex<Journal>>,
    /// sled's files, synced after each flush and before any completion runs.
    durability: Option<sync::Durability>,
    /// The store's own handles, dropped and replaced when sled is reopened.
    readers: Arc<RwLock<Option<Readers>>>,
    dir: PathBuf,
    cache_bytes: u64,
    rx: mpsc::Receiver<Op>,
    /// Moved after each batch that was made durable.
    marks: Marks,
    /// Taken down as enqueues are written or refused.
    backlog: Arc<Backlog>,
    /// Index entries referencing each stored body: a body goes with its last reference.
    refs: HashMap<u64, u32>,
    stats: Arc<StoreStats>,
    /// Since when a write has failed (or since the store opened on a full disk): sled refuses
    /// every later write until it is reopened, so nothing is written and every completion hears
    /// of the failure until [`Writer::try_resume`] reopens it.
    failing_since: Option<Instant>,
    /// When a failing writer next looks for room.
    next_try: Instant,
    /// The wait between two looks for room in this failure.
    retry: Duration,
    /// When writes last resumed.
    resumed_at: Option<Instant>,
    /// A failed reopen was logged in this failure.
    warned: bool,
    /// Scratch space for stream chunks.
    chunk: Vec<u8>,
}

impl Writer {
    fn run(mut self) {
        if self.failing_since.is_none() {
            self.rebuild_refs();
        }
        let mut stop = false;
        while !stop {
            let received = if self.failing_since.is_some() {
                if Instant::now() >= self.next_try {
                    self.try_resume();
                }
                self.rx
                    .recv_timeout(self.next_try.saturating_duration_since(Instant::now()))
            } else {
                self.rx.recv().map_err(mpsc::RecvTimeoutError::from)
            };
            let first = match received {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut ops = vec![first];
            while let Ok(op) = self.rx.try_recv() {
                ops.push(op);
            }
            let taken: u64 = ops
                .iter()
                .map(|op| match op {
                    Op::Enqueue { message, .. } | Op::StreamAppend { message, .. } => {
                        body_bytes(message)
                    }
                    _ => 0,
                })
                .sum();
            let _written_out = WrittenOut(self.backlog.clone(), taken);
            let (Some(h), None) = (self.handles.clone(), self.failing_since) else {
                stop = self.refuse(ops);
                continue;
            };
            let mut completions = Vec::new();
            let mut meta = sled::Batch::default();
            let mut wrote_meta = false;
            let journal = self.journal.clone();
            let mut journal = journal.lock();
            let mut b = Pending::default();
            // The sequence past each queue's last append in this batch, for its mark.
            let mut appended: HashMap<u64, u64> = HashMap::new();
            // Each stream's appends in this batch, in order; and the streams deleted after them.
            let mut streams: Vec<(Arc<StreamLog>, Vec<Arc<StoredMessage>>)> = Vec::new();
            let mut dropped_streams = Vec::new();
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            for op in ops {
                match op {
                    Op::Meta { key, value } => {
                        wrote_meta = true;
                        match value {
                            Some(v) => meta.insert(key, v),
                            None => meta.remove(key),
                        }
                    }
                    Op::Enqueue {
                        queue,
                        seq,
                        message,
                    } => {
                        let past = appended.entry(queue).or_default();
                        *past = (*past).max(seq + 1);
                        self.add(queue, seq, message, now_ms, &mut b);
                    }
                    Op::Remove {
                        queue,
                        seq,
                        message_id,
                    } => self.take((queue, seq, message_id), &mut journal, &mut b),
                    Op::Move { from, to } => {
                        // Added before the removal, so a body shared by both never drops to zero refs.
                        for (queue, seq, message) in to {
                            self.add(queue, seq, message, now_ms, &mut b);
                        }
                        if let Some(from) = from {
                            self.take(from, &mut journal, &mut b);
                        }
                    }
                    Op::Delivered { queue, seq, .. } => {
                        b.update(&journal, (queue, seq), |e| e.delivered = true);
                    }
                    Op::Count { queue, seq, count } => {
                        b.update(&journal, (queue, seq), |e| e.count = count);
                    }
                    Op::DropQueue { queue } => {
                        wrote_meta = true;
                        self.marks.lock().remove(&queue);
                        let fresh: Vec<u64> = b
                            .fresh
                            .iter()
                            .filter(|((q, _), _)| *q == queue)
                            .map(|(_, e)| e.message)
                            .collect();
                        b.fresh.retain(|(q, _), _| *q != queue);
                        b.rewrites.retain(|(q, _), _| *q != queue);
                        let stored = journal.drop_queue(queue);
                        b.batch.drop_queue(queue);
                        for id in fresh.into_iter().chain(stored) {
                            self.release(id, &mut journal, &mut b);
                        }
                    }
                    Op::Delay {
                        id,
                        record,
                        message,
                    } => {
                        let message_id = message.id;
                        self.reference(message, &mut b);
                        b.holds.insert(
                            id,
                            HoldState {
                                message: message_id,
                                record,
                            },
                        );
                    }
                    Op::Undelay { id, message_id } => {
                        if b.holds.remove(&id).is_none() && journal.unhold(id) {
                            b.batch.unhold(id);
                        }
                        self.release(message_id, &mut journal, &mut b);
                    }
                    Op::Barrier { since, done } => completions.push((since, done)),
                    Op::StreamAppend { stream, message } => {
                        match streams.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &stream)) {
                            Some((_, messages)) => messages.push(message),
                            None => streams.push((stream, vec![message])),
                        }
                    }
                    Op::DropStream { stream } => dropped_streams.push(stream),
                    Op::Stop => stop = true,
                }
            }
            let enqueued = u64::try_from(b.fresh.len()).unwrap_or(u64::MAX);
            let batch = b.finish();
            let started = std::time::Instant::now();
            let result = (|| -> Result<(), sled::Error> {
                if wrote_meta {
                    h.meta.apply_batch(meta)?;
                    h.db.flush()?;
                    // Opened and dropped with the handles: never missing while they are there.
                    let durability = self.durability.as_mut().ok_or_else(|| {
                        std::io::Error::other("the store's files are not open for syncing")
                    })?;
                    durability.sync(&self.stats)?;
                }
                for (stream, messages) in &streams {
                    stream.append(messages, now_ms, &mut self.chunk)?;
                    self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                }
                if !batch.is_empty() {
                    journal.write(batch)?;
                    self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })();
            let written = result.is_ok();
            for stream in dropped_streams {
                stream.remove_files();
            }
            if written {
                self.stats.enqueued.fetch_add(enqueued, Ordering::Relaxed);
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.stats.write_micros.fetch_add(micros, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
            }
            if written && !appended.is_empty() {
                let moved: Vec<WrittenMark> = {
                    let marks = self.marks.lock();
                    appended
                        .into_iter()
                        .filter_map(|(queue, past)| {
                            let mark = marks.get(&queue)?;
                            mark.written.fetch_max(past, Ordering::Release);
                            Some(mark.clone())
                        })
                        .collect()
                };
                // Outside the lock: a queue told here takes its own lock.
                for mark in moved {
                    if let Some(f) = mark.on_written.get() {
                        f();
                    }
                }
            }
            if let Err(e) = result {
                // Said once: every later batch is refused without a word until writes resume.
                error!(
                    cause = %e,
                    "store write failed: the store refuses writes (persistent publishes are \
                     nacked) until there is room on disk again"
                );
                self.failing_since = Some(Instant::now());
                let now = Instant::now();
                // Failing again soon after resuming: the disk has room but does not write.
                self.retry = if self
                    .resumed_at
                    .is_some_and(|t| now.duration_since(t) < MAX_RETRY)
                {
                    (self.retry * 2).min(MAX_RETRY)
                } else {
                    RETRY
                };
                self.next_try = now + self.retry;
                self.warned = false;
                self.stats.failing.store(true, Ordering::SeqCst);
                self.stats.failed.fetch_add(1, Ordering::SeqCst);
            }
            self.stats.flushes.fetch_add(1, Ordering::Release);
            let failed = self.stats.failed.load(Ordering::SeqCst);
            for (since, done) in completions {
                done(since == failed);
            }
            if written {
                compact(&mut journal);
            }
        }
    }

    /// Drops a batch the store cannot write and fails its completions; true on `Stop`.
    fn refuse(&mut self, ops: Vec<Op>) -> bool {
        let failed = self.stats.failed.fetch_add(1, Ordering::SeqCst) + 1;
        let mut stop = false;
        for op in ops {
            match op {
                Op::Barrier { done, .. } => done(false),
                Op::DropStream { stream } => stream.remove_files(),
                Op::Stop => stop = true,
                _ => {}
            }
        }
        if stop {
            warn!(
                failed_batches = failed,
                "store closed; it refused every write since the first failure"
            );
        }
        stop
    }

    /// Counts a reference to `message`'s body, to be written with this batch if it is new.
    fn reference(&mut self, message: Arc<StoredMessage>, b: &mut Pending) {
        let refs = self.refs.entry(message.id).or_insert(0);
        if *refs == 0 {
            b.bodies.insert(message.id, message);
        }
        *refs += 1;
    }

    fn add(
        &mut self,
        queue: u64,
        seq: u64,
        message: Arc<StoredMessage>,
        now_ms: u64,
        b: &mut Pending,
    ) {
        let id = message.id;
        self.reference(message, b);
        b.fresh.insert(
            (queue, seq),
            EntryState {
                message: id,
                stored_at: now_ms,
                delivered: false,
                count: 0,
            },
        );
    }

    fn take(
        &mut self,
        (queue, seq, message_id): StoredRef,
        journal: &mut Journal,
        b: &mut Pending,
    ) {
        if b.fresh.remove(&(queue, seq)).is_some() {
            self.stats.elided.fetch_add(1, Ordering::Relaxed);
        } else {
            b.rewrites.remove(&(queue, seq));
            if journal.gone(queue, seq) {
                b.batch.gone(queue, seq);
            }
        }
        self.release(message_id, journal, b);
    }

    fn release(&mut self, id: u64, journal: &mut Journal, b: &mut Pending) {
        if let Some(refs) = self.refs.get_mut(&id) {
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                self.refs.remove(&id);
                if b.bodies.remove(&id).is_none() {
                    journal.forget_body(id);
                }
            }
        }
    }

    /// Reopens sled in place if the disk has room again: every handle is dropped first (sled
    /// locks its directory until the last one goes), the readers wait meanwhile.
    fn try_resume(&mut self) {
        self.next_try = Instant::now() + self.retry;
        if !has_room(&self.dir) {
            return;
        }
        let mut readers = self.readers.write();
        self.handles = None;
        self.durability = None;
        *readers = None;
        let reopened = open_trees(&self.dir, self.cache_bytes).and_then(|t| {
            let durability = sync::Durability::open(&self.dir.join("sled"))
                .map_err(|e| StoreError::Sled(self.dir.clone(), sled::Error::Io(e)))?;
            Ok((t, durability))
        });
        let (trees, durability) = match reopened {
            Ok(opened) => opened,
            Err(e) => {
                if !std::mem::replace(&mut self.warned, true) {
                    warn!(cause = %e, "cannot reopen the store yet; trying again later");
                }
                return;
            }
        };
        *readers = Some(Readers {
            db: trees.db.clone(),
        });
        drop(readers);
        self.handles = Some(Handles {
            db: trees.db,
            meta: trees.meta,
        });
        if let Err(e) = self.journal.lock().recover_tail() {
            if !std::mem::replace(&mut self.warned, true) {
                warn!(cause = %e, "cannot cut the journal back to its last whole batch yet; trying again later");
            }
            return;
        }
        self.durability = Some(durability);
        self.refs.clear();
        self.rebuild_refs();
        keep_reserve(&self.dir.join(RESERVE_FILE));
        if let Err(e) = sync::sync_dir(&self.dir) {
            warn!(cause = %e, "cannot sync the store's directory after restoring its reserve");
        }
        let failed_for = self.failing_since.take().map(|t| t.elapsed());
        self.stats.failing.store(false, Ordering::SeqCst);
        self.stats.resumed.fetch_add(1, Ordering::SeqCst);
        self.resumed_at = Some(Instant::now());
        warn!(
            failing_ms = failed_for.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            "store writes resumed: there is room on disk again; writes refused meanwhile were \
             never confirmed and are not replayed"
        );
    }

    /// Counts each body's references again from the journal's entries and holds.
    fn rebuild_refs(&mut self) {
        self.refs = self.journal.lock().refs();
    }
}

/// Writes the oldest segment's current records again if the journal holds too much garbage,
/// then deletes it: one segment per batch at most, after the batch's completions.
fn compact(journal: &mut Journal) {
    let Some((segment, batch)) = journal.compaction() else {
        return;
    };
    if let Err(e) = journal.write(batch).and_then(|()| journal.delete(segment)) {
        warn!(cause = %e, segment, "cannot compact the journal; trying again later");
    }
}

/// One batch's journal records as the writer gathers them: removals go straight into `batch`, in
/// the order they come; what is new or changed is written after them, once the batch is known
/// (an entry added and acked within it is never written).
#[derive(Default)]
struct Pending {
    batch: journal::Batch,
    fresh: HashMap<(u64, u64), EntryState>,
    /// Entries written before whose flags change.
    rewrites: HashMap<(u64, u64), EntryState>,
    bodies: HashMap<u64, Arc<StoredMessage>>,
    holds: HashMap<u64, HoldState>,
}

impl Pending {
    /// Changes an entry's flags, whether it is new in this batch or written before; an entry that
    /// is not stored (its write was refused while the disk was full) stays so.
    fn update(&mut self, journal: &Journal, key: (u64, u64), change: impl FnOnce(&mut EntryState)) {
        if let Some(e) = self.fresh.get_mut(&key) {
            change(e);
        } else if let Some(mut e) = self
            .rewrites
            .get(&key)
            .copied()
            .or_else(|| journal.entry(key.0, key.1))
        {
            change(&mut e);
            self.rewrites.insert(key, e);
        }
    }

    /// The batch, with what is new or changed after the removals.
    fn finish(mut self) -> journal::Batch {
        for ((queue, seq), e) in self.rewrites {
            self.batch.entry(queue, seq, e);
        }
        for m in self.bodies.values() {
            self.batch.body(m);
        }
        let mut fresh: Vec<_> = self.fresh.into_iter().collect();
        fresh.sort_unstable_by_key(|(k, _)| *k);
        for ((queue, seq), e) in fresh {
            self.batch.entry(queue, seq, e);
        }
        for (id, hold) in self.holds {
            self.batch.hold(id, hold);
        }
        self.batch
    }
}

/// Moves the messages an earlier build kept in sled's `messages` tree into the journal, then
/// empties the tree and marks the directory as this format. A crash halfway leaves the tree as
/// it was, and the next start moves it again (the journal keeps the last copy of each record).
fn migrate(dir: &Path, db: &sled::Db, journal: &mut Journal) -> Result<(), StoreError> {
    let sled_err = |e| StoreError::Sled(dir.to_path_buf(), e);
    let io_err = |e| StoreError::Sled(dir.to_path_buf(), sled::Error::Io(e));
    let messages = db.open_tree("messages").map_err(sled_err)?;
    let mut batch = journal::Batch::default();
    let mut moved = 0usize;
    for item in messages.iter() {
        let (k, v) = item.map_err(sled_err)?;
        let u64_at = |b: &[u8], at: usize| {
            b.get(at..at + 8)
                .and_then(|x| x.try_into().ok())
                .map(u64::from_be_bytes)
        };
        match (k.first(), u64_at(&k, 1)) {
            (Some(b'm'), Some(id)) => {
                if let Some(m) = StoredMessage::decode(id, Bytes::from(v.to_vec())) {
                    batch.body(&m);
                }
            }
            (Some(b'i'), Some(queue)) => {
                let (Some(seq), Some(message)) = (u64_at(&k, 9), u64_at(&v, 0)) else {
                    continue;
                };
                let count = v
                    .get(17..21)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_be_bytes);
                batch.entry(
                    queue,
                    seq,
                    EntryState {
                        message,
                        stored_at: u64_at(&v, 9).unwrap_or(0),
                        delivered: v.get(8) == Some(&1),
                        count,
                    },
                );
                moved += 1;
            }
            (Some(b'd'), Some(id)) => {
                if let Some(r) = DelayRecord::decode(&v) {
                    batch.hold(
                        id,
                        HoldState {
                            message: r.message_id,
                            record: v.to_vec(),
                        },
                    );
                }
            }
            _ => {}
        }
        if batch.len() >= MIGRATE_BATCH {
            journal.write(std::mem::take(&mut batch)).map_err(io_err)?;
        }
    }
    journal.write(batch).map_err(io_err)?;
    db.drop_tree("messages").map_err(sled_err)?;
    db.insert(VERSION_KEY, &[FORMAT_VERSION])
        .map_err(sled_err)?;
    db.flush().map_err(sled_err)?;
    sync::Durability::open(&dir.join("sled"))
        .and_then(|mut d| d.sync(&StoreStats::default()))
        .map_err(io_err)?;
    info!(
        messages = moved,
        "moved stored messages from sled to the journal"
    );
    Ok(())
}

/// Bytes of records per journal batch while migrating.
const MIGRATE_BATCH: usize = 8 << 20;

#[cfg(test)]
mod tests;
