//! Durable storage on sled: topology records, persistent messages, and the group-commit writer.
//!
//! One tree, `messages`, holds both message bodies (`m` + message id) and per-queue index entries
//! (`i` + queue id + sequence), so that a batch that adds or removes a message and its index is
//! atomic (sled batches are atomic within one tree). Messages that delayed exchanges hold live in
//! the same tree (`d` + hold id) and reference their body as an index entry does, so routing a
//! held message and forgetting it can share one batch. A single writer thread applies everything
//! that arrived while the previous flush ran as one batch, flushes once, makes the flush durable
//! with fdatasync and fsync (`sync.rs`: sled alone does not), and only then runs the
//! batch's completions (publisher confirms, `tx.commit-ok`).
//!
//! A failed write (a full disk) leaves sled refusing every later write until it is reopened, so the
//! writer stops writing at the first failure and tells each completion that its writes are not on
//! disk (publishers get `basic.nack`). Opening writes too, so a reserve file kept beside the store
//! is given up when the disk is full at start: the store opens, serves what it holds and refuses
//! new writes. While it refuses, the writer looks every [`RETRY`] for room on the disk (backing
//! off to [`MAX_RETRY`] while writes keep failing soon after resuming, as on a disk that returns
//! EIO with room to spare) and, once
//! there is, drops every sled handle (sled locks its directory until the last one goes), reopens
//! sled in place, keeping the paged messages, and writes again with fsync before confirm as
//! before. What it refused is not replayed, as none of it was confirmed: acks made meanwhile are
//! not on disk (those messages come back redelivered after a restart), and messages nacked
//! meanwhile, and declares and deletes that failed, are not on disk either.

mod codec;
pub mod space;
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
    BindingRecord, DelayRecord, ExchangeRecord, QueueRecord, StoredMessage, encode_message,
};

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
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
        message_id: u64,
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
    Stop,
}

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
}

/// sled's handles read outside the writer; `None` only while the writer reopens sled.
#[derive(Debug)]
struct Readers {
    db: sled::Db,
    /// Copies of queued messages paged out under memory pressure, keyed by page id; never flushed
    /// for their own sake and emptied at start (a transient message does not outlive a restart).
    pages: sled::Tree,
    /// The `messages` tree, read by recovery and by paging.
    messages: sled::Tree,
}

/// The store: a handle to the writer thread and the sled database.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Swapped by the writer when it reopens sled after a failure.
    readers: Arc<RwLock<Option<Readers>>>,
    writer: mpsc::Sender<Op>,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
    next_id: AtomicU64,
    /// Topology records written and durable queues dropped so far: a reply to a queue or
    /// exchange method waits for the store only if this moved.
    topology_writes: AtomicU64,
    /// Counters.
    pub stats: Arc<StoreStats>,
}

fn index_key(queue: u64, seq: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'i';
    k[1..9].copy_from_slice(&queue.to_be_bytes());
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn body_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'm';
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn delay_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'd';
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The id in the last key under `prefix` (keys are a prefix byte and a big-endian id).
fn last_id(tree: &sled::Tree, prefix: &[u8]) -> u64 {
    tree.scan_prefix(prefix)
        .keys()
        .next_back()
        .and_then(|k| k.ok())
        .and_then(|k| k.get(1..9).and_then(|b| b.try_into().ok()))
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// A stored body by id, read once however many entries reference it; `None` if missing or damaged.
fn load_body(
    messages: &sled::Tree,
    bodies: &mut HashMap<u64, Arc<StoredMessage>>,
    id: u64,
) -> Result<Option<Arc<StoredMessage>>, sled::Error> {
    if let Some(m) = bodies.get(&id) {
        return Ok(Some(m.clone()));
    }
    let Some(raw) = messages.get(body_key(id))? else {
        return Ok(None);
    };
    let Some(m) = StoredMessage::decode(id, Bytes::from(raw.to_vec())) else {
        return Ok(None);
    };
    let m = Arc::new(m);
    bodies.insert(id, m.clone());
    Ok(Some(m))
}

/// sled's handles, as the store opens them.
struct Trees {
    db: sled::Db,
    meta: sled::Tree,
    messages: sled::Tree,
    pages: sled::Tree,
}

/// Opens sled in `dir` and its trees; opening writes (sled's own recovery, the dropped pages).
/// Pages are dropped at start (`keep_pages` false), not when the writer reopens sled in place:
/// queues still reference them.
fn open_trees(dir: &Path, cache_bytes: u64, keep_pages: bool) -> Result<Trees, StoreError> {
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
    match db.get(VERSION_KEY).map_err(sled_err)? {
        Some(v) if v.as_ref() != [FORMAT_VERSION] => {
            return Err(StoreError::UnknownFormat(
                dir.to_path_buf(),
                v.first().copied().unwrap_or(0),
            ));
        }
        Some(_) => {}
        None => {
            db.insert(VERSION_KEY, &[FORMAT_VERSION])
                .map_err(sled_err)?;
            db.flush().map_err(sled_err)?;
        }
    }
    let meta = db.open_tree("meta").map_err(sled_err)?;
    let messages = db.open_tree("messages").map_err(sled_err)?;
    if !keep_pages {
        // Dropped whole (node by node, not key by key): a crash can leave millions of pages.
        db.drop_tree("pages").map_err(sled_err)?;
    }
    let pages = db.open_tree("pages").map_err(sled_err)?;
    Ok(Trees {
        db,
        meta,
        messages,
        pages,
    })
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
        let (trees, full) = match open_trees(dir, cache_bytes, false) {
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
                (open_trees(dir, cache_bytes, false)?, true)
            }
            opened => (opened?, false),
        };
        let Trees {
            db,
            meta,
            messages,
            pages,
        } = trees;
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
        let max_queue = meta
            .scan_prefix(b"q")
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| QueueRecord::decode(&v))
            .map(|r| r.id)
            .max()
            .unwrap_or(0);
        let max_id = last_id(&messages, b"m")
            .max(last_id(&messages, b"d"))
            .max(max_queue);
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(StoreStats::default());
        if full {
            stats.failed.store(1, Ordering::SeqCst);
            stats.failing.store(true, Ordering::SeqCst);
        }
        let readers = Arc::new(RwLock::new(Some(Readers {
            db: db.clone(),
            pages,
            messages: messages.clone(),
        })));
        let writer = Writer {
            handles: Some(Handles { db, meta, messages }),
            durability: Some(durability),
            readers: readers.clone(),
            dir: dir.to_path_buf(),
            cache_bytes,
            rx,
            refs: HashMap::new(),
            stats: stats.clone(),
            failing_since: full.then(Instant::now),
            next_try: Instant::now(),
            retry: RETRY,
            resumed_at: None,
            warned: false,
        };
        let thread = std::thread::Builder::new()
            .name("warren-store".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Sled(dir.to_path_buf(), sled::Error::Io(e)))?;
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            readers,
            writer: tx,
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

    /// Appends a persistent message to a durable queue's index (the body is stored once).
    pub fn enqueue(&self, queue: u64, seq: u64, message: Arc<StoredMessage>) {
        self.send(Op::Enqueue {
            queue,
            seq,
            message,
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
    pub fn delivered(&self, queue: u64, seq: u64, message_id: u64) {
        self.send(Op::Delivered {
            queue,
            seq,
            message_id,
        });
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

    /// Whether the store writes now (it is not refusing writes after a failure).
    fn writable(&self) -> bool {
        !self.stats.failing.load(Ordering::Relaxed)
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
        let messages = &readers.messages;
        let mut out = Recovered::default();
        for item in meta.iter() {
            let (k, v) = item.map_err(sled_err)?;
            let ok = match k.first() {
                Some(b'x') => ExchangeRecord::decode(&v).map(|r| out.exchanges.push(r)),
                Some(b'q') => {
                    QueueRecord::decode(&v).map(|r| out.queues.push((r, RecoveredQueue::default())))
                }
                Some(b'b') => BindingRecord::decode(&v).map(|r| out.bindings.push(r)),
                _ => None,
            };
            if ok.is_none() {
                out.damaged += 1;
            }
        }
        let mut bodies: HashMap<u64, Arc<StoredMessage>> = HashMap::new();
        let mut total = 0usize;
        for (record, recovered) in &mut out.queues {
            for item in messages.scan_prefix(&index_key(record.id, 0)[..9]) {
                let (k, v) = item.map_err(sled_err)?;
                let (Some(seq), Some(message_id), delivered) = (
                    k.get(9..17)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes),
                    v.get(0..8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes),
                    v.get(8) == Some(&1),
                ) else {
                    out.damaged += 1;
                    continue;
                };
                let stored_at = v
                    .get(9..17)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                let delivery_count = v
                    .get(17..21)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_be_bytes);
                recovered.messages.push(RecoveredMessage {
                    seq,
                    message_id,
                    delivered,
                    stored_at,
                    delivery_count,
                });
                total += 1;
            }
        }
        for item in messages.scan_prefix(b"d") {
            let (k, v) = item.map_err(sled_err)?;
            let (Some(id), Some(record)) = (
                k.get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
                DelayRecord::decode(&v),
            ) else {
                out.damaged += 1;
                continue;
            };
            let Some(message) =
                load_body(messages, &mut bodies, record.message_id).map_err(sled_err)?
            else {
                out.damaged += 1;
                continue;
            };
            out.delayed.push(RecoveredDelay {
                id,
                record,
                message,
            });
        }
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
        let readers = self.readers.read();
        let Some(readers) = readers.as_ref() else {
            error!(
                id,
                "cannot read a stored message: the store could not be reopened"
            );
            return None;
        };
        match readers.messages.get(body_key(id)) {
            Ok(Some(raw)) => StoredMessage::decode(id, Bytes::from(raw.to_vec())).map(Arc::new),
            Ok(None) => None,
            Err(e) => {
                error!(cause = %e, id, "cannot read a stored message");
                None
            }
        }
    }

    /// Writes a page (a queued message's copy) and returns its id; `None` if sled refused it or
    /// the store no longer writes.
    pub fn page_out(&self, record: &[u8]) -> Option<u64> {
        if !self.writable() {
            return None;
        }
        let id = self.next_message_id();
        let readers = self.readers.read();
        match readers.as_ref()?.pages.insert(id.to_be_bytes(), record) {
            Ok(_) => Some(id),
            Err(e) => {
                error!(cause = %e, "cannot page a message out; keeping it in memory");
                None
            }
        }
    }

    /// Reads a page back and forgets it.
    pub fn page_in(&self, id: u64) -> Option<Bytes> {
        let key = id.to_be_bytes();
        let readers = self.readers.read();
        let Some(pages) = readers.as_ref().map(|r| &r.pages) else {
            error!(
                id,
                "cannot read a paged message: the store could not be reopened"
            );
            return None;
        };
        // A store that stopped writing cannot remove the page, but can still read it.
        match pages.remove(key).or_else(|_| pages.get(key)) {
            Ok(raw) => raw.map(|r| Bytes::from(r.to_vec())),
            Err(e) => {
                error!(cause = %e, id, "cannot read a paged message");
                None
            }
        }
    }

    /// Forgets a page without reading it.
    pub fn drop_page(&self, id: u64) {
        // Pages are dropped at start anyway: a store that stopped writing leaves them there.
        if self.writable()
            && let Some(readers) = self.readers.read().as_ref()
            && let Err(e) = readers.pages.remove(id.to_be_bytes())
        {
            warn!(cause = %e, id, "cannot remove a paged message");
        }
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
    messages: sled::Tree,
}

struct Writer {
    /// `None` only after a reopen failed.
    handles: Option<Handles>,
    /// sled's files, synced after each flush and before any completion runs.
    durability: Option<sync::Durability>,
    /// The store's own handles, dropped and replaced when sled is reopened.
    readers: Arc<RwLock<Option<Readers>>>,
    dir: PathBuf,
    cache_bytes: u64,
    rx: mpsc::Receiver<Op>,
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
            let (Some(h), None) = (self.handles.clone(), self.failing_since) else {
                stop = self.refuse(ops);
                continue;
            };
            let mut completions = Vec::new();
            let mut meta = sled::Batch::default();
            let mut batch = sled::Batch::default();
            // Index entries written in this batch, so an ack in the same batch cancels the write.
            let mut fresh: HashMap<[u8; 17], u64> = HashMap::new();
            // Delivery counts for entries first written in this batch.
            let mut counts: HashMap<[u8; 17], u32> = HashMap::new();
            let mut new_bodies: HashMap<u64, Arc<StoredMessage>> = HashMap::new();
            for op in ops {
                match op {
                    Op::Meta { key, value } => match value {
                        Some(v) => meta.insert(key, v),
                        None => meta.remove(key),
                    },
                    Op::Enqueue {
                        queue,
                        seq,
                        message,
                    } => self.add(queue, seq, message, &mut fresh, &mut new_bodies),
                    Op::Remove {
                        queue,
                        seq,
                        message_id,
                    } => self.take(
                        (queue, seq, message_id),
                        &mut fresh,
                        &mut batch,
                        &mut new_bodies,
                    ),
                    Op::Move { from, to } => {
                        // Added before the removal, so a body shared by both never drops to zero refs.
                        for (queue, seq, message) in to {
                            self.add(queue, seq, message, &mut fresh, &mut new_bodies);
                        }
                        if let Some(from) = from {
                            self.take(from, &mut fresh, &mut batch, &mut new_bodies);
                        }
                    }
                    Op::Delivered {
                        queue,
                        seq,
                        message_id,
                    } => {
                        let key = index_key(queue, seq);
                        if let Some(tagged) = fresh.get_mut(&key) {
                            // Written with the marker below, in this same batch.
                            *tagged = message_id | (1 << 63);
                        } else {
                            // Keep the stored time that follows the flag. An entry that is not
                            // stored (its write was refused while the disk was full) stays so.
                            if let Ok(Some(old)) = h.messages.get(key) {
                                let mut v = old.to_vec();
                                v.resize(v.len().max(9), 0);
                                v[8] = 1;
                                batch.insert(&key[..], v);
                            }
                        }
                    }
                    Op::DropQueue { queue } => {
                        fresh.retain(|k, _| k[1..9] != queue.to_be_bytes());
                        let prefix = index_key(queue, 0);
                        for item in h.messages.scan_prefix(&prefix[..9]) {
                            let Ok((k, v)) = item else { continue };
                            batch.remove(k);
                            if let Some(id) = v.get(0..8).and_then(|b| b.try_into().ok()) {
                                self.release(u64::from_be_bytes(id), &mut batch, &mut new_bodies);
                            }
                        }
                    }
                    Op::Delay {
                        id,
                        record,
                        message,
                    } => {
                        let refs = self.refs.entry(message.id).or_insert(0);
                        if *refs == 0 {
                            new_bodies.insert(message.id, message);
                        }
                        *refs += 1;
                        batch.insert(&delay_key(id)[..], record);
                    }
                    Op::Undelay { id, message_id } => {
                        // A batch keeps the last write per key: this cancels a hold written in it.
                        batch.remove(&delay_key(id)[..]);
                        self.release(message_id, &mut batch, &mut new_bodies);
                    }
                    Op::Count { queue, seq, count } => {
                        let key = index_key(queue, seq);
                        if fresh.contains_key(&key) {
                            counts.insert(key, count);
                        } else if let Ok(Some(old)) = h.messages.get(key) {
                            let mut v = old.to_vec();
                            v.resize(v.len().max(21), 0);
                            v[17..21].copy_from_slice(&count.to_be_bytes());
                            batch.insert(&key[..], v);
                        }
                    }
                    Op::Barrier { since, done } => completions.push((since, done)),
                    Op::Stop => stop = true,
                }
            }
            for (id, m) in new_bodies {
                batch.insert(&body_key(id)[..], m.encode());
            }
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            for (key, tagged) in fresh {
                let delivered = tagged >> 63 == 1;
                let mut v = (tagged & !(1 << 63)).to_be_bytes().to_vec();
                v.push(u8::from(delivered));
                v.extend_from_slice(&now_ms.to_be_bytes());
                if let Some(count) = counts.get(&key) {
                    v.extend_from_slice(&count.to_be_bytes());
                }
                batch.insert(&key[..], v);
                self.stats.enqueued.fetch_add(1, Ordering::Relaxed);
            }
            let result = h
                .meta
                .apply_batch(meta)
                .and_then(|()| h.messages.apply_batch(batch))
                .and_then(|()| h.db.flush().map(|_| ()))
                .and_then(|()| {
                    // Opened and dropped with the handles: never missing while they are there.
                    let durability = self.durability.as_mut().ok_or_else(|| {
                        std::io::Error::other("the store's files are not open for syncing")
                    });
                    durability
                        .and_then(|d| d.sync(&self.stats))
                        .map_err(sled::Error::Io)
                });
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
        }
    }

    /// Drops a batch the store cannot write and fails its completions; true on `Stop`.
    fn refuse(&mut self, ops: Vec<Op>) -> bool {
        let failed = self.stats.failed.fetch_add(1, Ordering::SeqCst) + 1;
        let mut stop = false;
        for op in ops {
            match op {
                Op::Barrier { done, .. } => done(false),
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

    fn add(
        &mut self,
        queue: u64,
        seq: u64,
        message: Arc<StoredMessage>,
        fresh: &mut HashMap<[u8; 17], u64>,
        new_bodies: &mut HashMap<u64, Arc<StoredMessage>>,
    ) {
        let id = message.id;
        let refs = self.refs.entry(id).or_insert(0);
        if *refs == 0 {
            new_bodies.insert(id, message);
        }
        *refs += 1;
        fresh.insert(index_key(queue, seq), id);
    }

    fn take(
        &mut self,
        (queue, seq, message_id): StoredRef,
        fresh: &mut HashMap<[u8; 17], u64>,
        batch: &mut sled::Batch,
        new_bodies: &mut HashMap<u64, Arc<StoredMessage>>,
    ) {
        let key = index_key(queue, seq);
        if fresh.remove(&key).is_some() {
            self.stats.elided.fetch_add(1, Ordering::Relaxed);
        } else {
            batch.remove(&key[..]);
        }
        self.release(message_id, batch, new_bodies);
    }

    fn release(
        &mut self,
        id: u64,
        batch: &mut sled::Batch,
        new_bodies: &mut HashMap<u64, Arc<StoredMessage>>,
    ) {
        if let Some(refs) = self.refs.get_mut(&id) {
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                self.refs.remove(&id);
                if new_bodies.remove(&id).is_none() {
                    batch.remove(&body_key(id)[..]);
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
        let reopened = open_trees(&self.dir, self.cache_bytes, true).and_then(|t| {
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
            pages: trees.pages,
            messages: trees.messages.clone(),
        });
        drop(readers);
        self.handles = Some(Handles {
            db: trees.db,
            meta: trees.meta,
            messages: trees.messages,
        });
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

    fn rebuild_refs(&mut self) {
        let Some(h) = self.handles.clone() else {
            return;
        };
        for item in h.messages.scan_prefix(b"i") {
            let Ok((_, v)) = item else { continue };
            if let Some(id) = v.get(0..8).and_then(|b| b.try_into().ok()) {
                *self.refs.entry(u64::from_be_bytes(id)).or_insert(0) += 1;
            }
        }
        for item in h.messages.scan_prefix(b"d") {
            let Ok((_, v)) = item else { continue };
            if let Some(r) = DelayRecord::decode(&v) {
                *self.refs.entry(r.message_id).or_insert(0) += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
