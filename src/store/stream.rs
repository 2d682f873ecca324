//! Streams on disk: one directory per stream (`streams/<id>/`), its messages in segment files
//! named by the offset of their first message, written by the store's writer in chunks.
//!
//! A chunk is one group commit's messages for one stream (split at [`CHUNK_MAX`] bytes):
//! `[magic][crc32][length][count][first offset][timestamp]`, then `count` records, each a
//! length and the message as the stream's [`RecordEncoder`] wrote it. Appends are sequential and
//! end with one `fdatasync` per stream per batch; only then does [`StreamLog::committed`] move
//! and wake the readers at the tail. A segment is rolled once the next chunk would take it past
//! the stream's segment size, and retention removes whole segments, oldest first, never the one
//! being written. Readers read whole chunks with positional reads, so memory stays bounded by
//! what a reader asks for, whatever the stream's length.
//!
//! Sealed segments were synced before the next was created, so a torn write can only be at the
//! end of the last one: opening checks that segment's chunks and cuts it at the first bad one.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{info, warn};

use super::codec::StoredMessage;
use super::sync::sync_dir;

const MAGIC: u32 = 0x5753_4331;
/// A chunk's header: magic, crc32 of the rest, payload length, count, first offset, timestamp.
const HEADER: usize = 32;
/// A chunk's payload stops growing past this: it bounds what a reader holds at once.
pub const CHUNK_MAX: usize = 64 << 10;
/// The in-memory index keeps one chunk in every this many bytes of a segment.
const INDEX_EVERY: u64 = 256 << 10;
/// RabbitMQ's default `x-stream-max-segment-size-bytes`.
pub const DEFAULT_SEGMENT_BYTES: u64 = 500_000_000;

/// Writes one message's record into a chunk, given its offset (the stream's owner decides what a
/// record holds; [`StoredMessage::decode`] must read it back).
pub type RecordEncoder = fn(&mut Vec<u8>, &StoredMessage, u64);

/// What a stream keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `x-max-length-bytes`: oldest segments go while the stream is larger.
    pub max_bytes: Option<u64>,
    /// `x-max-age`: a segment goes once its newest message is older.
    pub max_age_ms: Option<u64>,
    /// `x-stream-max-segment-size-bytes`.
    pub segment_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_bytes: None,
            max_age_ms: None,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest message kept.
    First,
    /// The first message of the newest chunk.
    Last,
    /// The next message to be written.
    Next,
    /// This offset (the oldest kept if it is older; waited for if it is not written yet).
    Offset(u64),
    /// The first chunk written at or after this time (ms since the epoch).
    Time(u64),
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    offset: u64,
    pos: u64,
    ts: u64,
}

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    bytes: u64,
    last_ts: u64,
    /// Some of its chunks (always its first), to start reading near an offset or a time.
    marks: Vec<Mark>,
}

#[derive(Debug, Default)]
struct Inner {
    segments: VecDeque<Segment>,
    /// The offset the next message gets.
    next: u64,
    /// The first offset of the newest chunk.
    last_chunk: u64,
    last_ts: u64,
    total_bytes: u64,
    /// The last segment, open for writing (the writer's only).
    active: Option<File>,
    retention: Retention,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Messages.
    pub messages: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Segments.
    pub segments: u64,
}

/// Removes the files of streams that no queue names any more: deleted while their removal was
/// still to be written.
pub(super) fn remove_orphans(dir: &Path, queues: &[u64]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let id: Option<u64> = e.file_name().to_str().and_then(|n| n.parse().ok());
        if id.is_some_and(|id| !queues.contains(&id)) {
            info!(stream = ?id, "removing the files of a deleted stream");
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                warn!(stream = ?id, cause = %err, "could not remove a deleted stream's files");
            }
        }
    }
}

/// One stream's files.
#[derive(Debug)]
pub struct StreamLog {
    id: u64,
    dir: PathBuf,
    inner: Mutex<Inner>,
    committed: watch::Sender<u64>,
    encode: RecordEncoder,
    removed_messages: AtomicU64,
    removed_bytes: AtomicU64,
    dropped: AtomicBool,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A chunk header as read.
#[derive(Debug, Clone, Copy)]
struct Header {
    crc: u32,
    len: u32,
    count: u32,
    first: u64,
    ts: u64,
}

impl Header {
    fn parse(b: &[u8; HEADER]) -> Option<Self> {
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        (u32_at(0) == MAGIC).then(|| Self {
            crc: u32_at(4),
            len: u32_at(8),
            count: u32_at(12),
            first: u64_at(16),
            ts: u64_at(24),
        })
    }
}

/// The crc a chunk carries: over its header past the crc, then its payload.
fn chunk_crc(header_rest: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header_rest);
    h.update(payload);
    h.finalize()
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// Reads exactly `buf.len()` bytes at `pos`, or fewer at the end of the file. With `nowait`
/// it fails with `WouldBlock` instead of waiting for the disk (what is not in the page cache,
/// or a filesystem that cannot tell), so that the caller can read cached data where it runs.
fn read_full(file: &File, buf: &mut [u8], pos: u64, nowait: bool) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let at = pos + done as u64;
        let read = if nowait {
            let mut slices = [std::io::IoSliceMut::new(&mut buf[done..])];
            rustix::io::preadv2(file, &mut slices, at, rustix::io::ReadWriteFlags::NOWAIT).map_err(
                |e| match e {
                    rustix::io::Errno::INTR => io::Error::from(io::ErrorKind::Interrupted),
                    _ => io::Error::from(io::ErrorKind::WouldBlock),
                },
            )
        } else {
            file.read_at(&mut buf[done..], at)
        };
        match read {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads the chunk header at `pos`: `None` at the end of what is there.
fn read_header(file: &File, pos: u64, nowait: bool) -> io::Result<Option<([u8; HEADER], Header)>> {
    let mut hb = [0u8; HEADER];
    if read_full(file, &mut hb, pos, nowait)? < HEADER {
        return Ok(None);
    }
    Ok(Header::parse(&hb).map(|h| (hb, h)))
}

/// Reads the chunk at `pos` and checks it: `None` at the end of what is there or at a torn
/// chunk.
fn read_checked(file: &File, pos: u64) -> io::Result<Option<Header>> {
    let Some((hb, h)) = read_header(file, pos, false)? else {
        return Ok(None);
    };
    let mut payload = vec![0u8; h.len as usize];
    if read_full(file, &mut payload, pos + HEADER as u64, false)? < payload.len() {
        return Ok(None);
    }
    Ok((chunk_crc(&hb[8..], &payload) == h.crc).then_some(h))
}

impl StreamLog {
    /// Opens (or creates) the stream in `dir`, cutting a torn chunk off its last segment.
    pub fn open(
        dir: PathBuf,
        id: u64,
        retention: Retention,
        encode: RecordEncoder,
    ) -> io::Result<Arc<Self>> {
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            // The new directory's entry, and its parent's in the data dir, survive a power cut.
            for d in dir.ancestors().skip(1).take(2) {
                sync_dir(d)?;
            }
        }
        let mut firsts: Vec<u64> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                name.to_str()?.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut inner = Inner {
            retention,
            ..Inner::default()
        };
        let last_index = firsts.len().saturating_sub(1);
        for (i, first) in firsts.into_iter().enumerate() {
            let path = segment_path(&dir, first);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let last = i == last_index;
            let (mut pos, mut next) = (0u64, first);
            let mut seg = Segment {
                first,
                path,
                bytes: 0,
                last_ts: 0,
                marks: Vec::new(),
            };
            let len = file.metadata()?.len();
            // Sealed segments were synced whole: their headers are enough. The last one's chunks
            // are checked, since a torn write can only be there.
            while let Some(h) = if last {
                read_checked(&file, pos)?
            } else {
                read_header(&file, pos, false)?.map(|(_, h)| h)
            } {
                if h.first != next || pos + HEADER as u64 + u64::from(h.len) > len {
                    warn!(
                        stream = id,
                        segment = first,
                        at = pos,
                        "a stream chunk is out of order or cut short; reading stops there"
                    );
                    break;
                }
                if seg.marks.last().is_none_or(|m| pos - m.pos >= INDEX_EVERY) {
                    seg.marks.push(Mark {
                        offset: h.first,
                        pos,
                        ts: h.ts,
                    });
                }
                seg.last_ts = h.ts;
                inner.last_chunk = h.first;
                inner.last_ts = inner.last_ts.max(h.ts);
                next = h.first + u64::from(h.count);
                pos += HEADER as u64 + u64::from(h.len);
            }
            if pos < len {
                if last {
                    warn!(
                        stream = id,
                        segment = first,
                        kept = pos,
                        dropped = len - pos,
                        "cutting a torn chunk off a stream's last segment"
                    );
                    file.set_len(pos)?;
                    file.sync_all()?;
                } else {
                    warn!(
                        stream = id,
                        segment = first,
                        kept = pos,
                        "a sealed stream segment ends in data that does not read"
                    );
                }
            }
            seg.bytes = pos;
            inner.total_bytes += pos;
            inner.next = next;
            if last {
                inner.active = Some(file);
            }
            inner.segments.push_back(seg);
        }
        let committed = inner.next;
        Ok(Arc::new(Self {
            id,
            dir,
            inner: Mutex::new(inner),
            committed: watch::Sender::new(committed),
            encode,
            removed_messages: AtomicU64::new(0),
            removed_bytes: AtomicU64::new(0),
            dropped: AtomicBool::new(false),
        }))
    }

    /// The id the store knows it by.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The offset past the last message on disk: readers read below it.
    pub fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Wakes whenever [`StreamLog::committed`] moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// The oldest offset kept.
    pub fn first_offset(&self) -> u64 {
        let inner = self.inner.lock();
        inner.segments.front().map_or(inner.next, |s| s.first)
    }

    /// Messages kept (committed ones), and their bytes on disk.
    pub fn size(&self) -> (u64, u64) {
        let committed = self.committed();
        let inner = self.inner.lock();
        let first = inner.segments.front().map_or(inner.next, |s| s.first);
        (committed.saturating_sub(first), inner.total_bytes)
    }

    /// Segments on disk.
    pub fn segments(&self) -> usize {
        self.inner.lock().segments.len()
    }

    /// What retention removed since the broker started: messages and bytes.
    pub fn removed(&self) -> (u64, u64) {
        (
            self.removed_messages.load(Ordering::Relaxed),
            self.removed_bytes.load(Ordering::Relaxed),
        )
    }

    /// Changes what it keeps (a policy), applied at once.
    pub fn set_retention(&self, retention: Retention, now_ms: u64) {
        self.inner.lock().retention = retention;
        self.retain(now_ms);
    }

    /// Appends `messages` in order, syncs, and moves [`StreamLog::committed`] past them (the
    /// store's writer calls it, once per batch; `buf` is its scratch buffer).
    pub(super) fn append(
        &self,
        messages: &[Arc<StoredMessage>],
        now_ms: u64,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        if self.dropped.load(Ordering::Acquire) || messages.is_empty() {
            return Ok(());
        }
        let rolled = {
            let mut inner = self.inner.lock();
            let ts = now_ms.max(inner.last_ts);
            let mut rolled = false;
            let mut rest = messages;
            while !rest.is_empty() {
                buf.clear();
                buf.resize(HEADER, 0);
                let first = inner.next;
                let mut count = 0u32;
                while let Some((m, tail)) = rest.split_first() {
                    if count > 0 && buf.len() >= CHUNK_MAX {
                        break;
                    }
                    let at = buf.len();
                    buf.extend_from_slice(&[0; 4]);
                    (self.encode)(buf, m, first + u64::from(count));
                    let len = u32::try_from(buf.len() - at - 4)
                        .map_err(|_| bad("a stream record over 4 GiB"))?;
                    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
                    count += 1;
                    rest = tail;
                }
                let len = u32::try_from(buf.len() - HEADER)
                    .map_err(|_| bad("a stream chunk over 4 GiB"))?;
                buf[0..4].copy_from_slice(&MAGIC.to_be_bytes());
                buf[8..12].copy_from_slice(&len.to_be_bytes());
                buf[12..16].copy_from_slice(&count.to_be_bytes());
                buf[16..24].copy_from_slice(&first.to_be_bytes());
                buf[24..32].copy_from_slice(&ts.to_be_bytes());
                let crc = chunk_crc(&buf[8..HEADER], &buf[HEADER..]);
                buf[4..8].copy_from_slice(&crc.to_be_bytes());
                rolled |= self.write_chunk(&mut inner, buf, first, count, ts)?;
            }
            if let Some(f) = &inner.active {
                f.sync_data()?;
            }
            self.committed.send_replace(inner.next);
            rolled
        };
        if rolled {
            self.retain(now_ms);
        }
        Ok(())
    }

    /// Writes one chunk at the end of the last segment, rolling first if it would overfill it;
    /// true if it rolled.
    fn write_chunk(
        &self,
        inner: &mut Inner,
        chunk: &[u8],
        first: u64,
        count: u32,
        ts: u64,
    ) -> io::Result<bool> {
        let len = chunk.len() as u64;
        let roll = match (inner.segments.back(), &inner.active) {
            (Some(s), Some(_)) => s.bytes > 0 && s.bytes + len > inner.retention.segment_bytes,
            _ => true,
        };
        if roll {
            if let Some(f) = &inner.active {
                f.sync_data()?;
            }
            let path = segment_path(&self.dir, first);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            sync_dir(&self.dir)?;
            inner.active = Some(file);
            inner.segments.push_back(Segment {
                first,
                path,
                bytes: 0,
                last_ts: ts,
                marks: Vec::new(),
            });
        }
        let (Some(seg), Some(file)) = (inner.segments.back_mut(), &inner.active) else {
            return Err(bad("a stream has no segment to write to"));
        };
        let pos = seg.bytes;
        file.write_all_at(chunk, pos)?;
        seg.bytes += len;
        seg.last_ts = ts;
        if seg.marks.last().is_none_or(|m| pos - m.pos >= INDEX_EVERY) {
            seg.marks.push(Mark {
                offset: first,
                pos,
                ts,
            });
        }
        inner.total_bytes += len;
        inner.next = first + u64::from(count);
        inner.last_chunk = first;
        inner.last_ts = ts;
        Ok(roll)
    }

    /// Removes the oldest segments retention no longer keeps (never the last one) and reports
    /// what went.
    pub fn retain(&self, now_ms: u64) -> Removed {
        let mut removed = Removed::default();
        let mut inner = self.inner.lock();
        while inner.segments.len() > 1 {
            let r = inner.retention;
            let over = r.max_bytes.is_some_and(|m| inner.total_bytes > m);
            let old = r
                .max_age_ms
                .is_some_and(|a| inner.segments[0].last_ts.saturating_add(a) < now_ms);
            if !over && !old {
                break;
            }
            let Some(seg) = inner.segments.pop_front() else {
                break;
            };
            let next_first = inner.segments.front().map_or(inner.next, |s| s.first);
            if let Err(e) = std::fs::remove_file(&seg.path)
                && e.kind() != io::ErrorKind::NotFound
            {
                warn!(stream = self.id, segment = seg.first, cause = %e, "could not remove a stream segment");
            }
            inner.total_bytes -= seg.bytes;
            removed.messages += next_first - seg.first;
            removed.bytes += seg.bytes;
            removed.segments += 1;
        }
        let first = inner.segments.front().map_or(inner.next, |s| s.first);
        drop(inner);
        if removed.segments > 0 {
            self.removed_messages
                .fetch_add(removed.messages, Ordering::Relaxed);
            self.removed_bytes
                .fetch_add(removed.bytes, Ordering::Relaxed);
            info!(
                stream = self.id,
                segments = removed.segments,
                messages = removed.messages,
                bytes = removed.bytes,
                first_offset = first,
                "stream retention removed its oldest segments"
            );
        }
        removed
    }

    /// Removes the stream's files (it was deleted); later appends are ignored.
    pub(super) fn remove_files(&self) {
        self.dropped.store(true, Ordering::Release);
        let mut inner = self.inner.lock();
        inner.active = None;
        inner.segments.clear();
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(stream = self.id, cause = %e, "could not remove a deleted stream's files");
        }
    }

    /// A reader from `start`.
    pub fn reader(self: &Arc<Self>, start: Start) -> StreamReader {
        let committed = self.committed();
        let inner = self.inner.lock();
        let first = inner.segments.front().map_or(inner.next, |s| s.first);
        let (offset, min_ts) = match start {
            Start::First => (first, 0),
            Start::Next => (committed, 0),
            Start::Last if inner.last_chunk < committed => (inner.last_chunk.max(first), 0),
            Start::Last => (committed, 0),
            // Past the end, it waits for that offset, as RabbitMQ's readers do.
            Start::Offset(n) => (n.max(first), 0),
            Start::Time(ms) => {
                // The newest indexed chunk older than `ms` in the first segment that reaches
                // it: reading from there skips the chunks still older.
                let found = inner.segments.iter().find(|s| s.last_ts >= ms).map(|s| {
                    s.marks
                        .iter()
                        .take_while(|m| m.ts < ms)
                        .last()
                        .or(s.marks.first())
                        .map_or(s.first, |m| m.offset)
                });
                match found {
                    Some(o) => (o.max(first), ms),
                    None => (committed, 0),
                }
            }
        };
        drop(inner);
        StreamReader {
            log: self.clone(),
            file: None,
            pos: 0,
            chunk: offset,
            skip_before: offset,
            min_ts,
        }
    }

    /// Where the chunk holding `offset` can be read from: its segment's file, and the position
    /// and first offset of the nearest indexed chunk at or before it; `None` if no segment holds
    /// it.
    fn locate(&self, offset: u64) -> io::Result<Option<(File, u64, u64)>> {
        let inner = self.inner.lock();
        let Some(seg) = inner.segments.iter().rev().find(|s| s.first <= offset) else {
            return Ok(None);
        };
        let (pos, at) = seg
            .marks
            .iter()
            .take_while(|m| m.offset <= offset)
            .last()
            .map_or((0, seg.first), |m| (m.pos, m.offset));
        let file = File::open(&seg.path)?;
        Ok(Some((file, pos, at)))
    }
}

/// A reader of one stream, at its own offset.
#[derive(Debug)]
pub struct StreamReader {
    log: Arc<StreamLog>,
    file: Option<File>,
    pos: u64,
    /// The first offset of the chunk at `pos`.
    chunk: u64,
    /// Messages before this offset are skipped (a start inside a chunk).
    skip_before: u64,
    /// Chunks written before this time are skipped (a start by time).
    min_ts: u64,
}

impl StreamReader {
    /// The stream it reads.
    pub fn log(&self) -> &Arc<StreamLog> {
        &self.log
    }

    /// Whether it has read everything on disk so far.
    pub fn at_tail(&self) -> bool {
        self.chunk >= self.log.committed()
    }

    /// Reads whole chunks into `buf` (empty, its capacity what to read at most, though at least
    /// one chunk) and returns their messages with their offsets, slices of that one buffer;
    /// empty only at the tail. The caller allocates `buf`, so that it comes from the caller's
    /// thread's arena rather than a blocking thread's. With `nowait`, it reads only what the
    /// page cache holds: `WouldBlock` if that is nothing.
    pub fn read(
        &mut self,
        mut buf: BytesMut,
        nowait: bool,
    ) -> io::Result<Vec<(u64, StoredMessage)>> {
        let committed = self.log.committed();
        // Where each chunk kept lies in `buf`, with its header and the first offset to deliver
        // from it (a later segment's opening moves `skip_before` on).
        let mut kept: Vec<(usize, Header, u64)> = Vec::new();
        while self.chunk < committed {
            let Some(file) = &self.file else {
                self.open_at_chunk()?;
                continue;
            };
            let header = match read_header(file, self.pos, nowait) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !kept.is_empty() => break,
                other => other?,
            };
            let Some((_, h)) = header else {
                // The end of this segment: the next one starts at the next chunk.
                self.file = None;
                let first = self.log.first_offset();
                match self.log.locate(self.chunk)? {
                    Some((_, 0, at)) if at == self.chunk => continue,
                    _ if self.chunk < first => continue,
                    _ => {
                        return Err(bad(format!(
                            "stream {}: offset {} is missing",
                            self.log.id, self.chunk
                        )));
                    }
                }
            };
            if h.first != self.chunk {
                return Err(bad(format!(
                    "stream {}: chunk {} found where {} was expected",
                    self.log.id, h.first, self.chunk
                )));
            }
            let len = h.len as usize;
            if !kept.is_empty() && buf.len() + len > buf.capacity() {
                break;
            }
            let at = buf.len();
            buf.resize(at + len, 0);
            let got = match read_full(file, &mut buf[at..], self.pos + HEADER as u64, nowait) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !kept.is_empty() => {
                    buf.truncate(at);
                    break;
                }
                other => other?,
            };
            if got < len {
                return Err(bad(format!(
                    "stream {}: chunk {} is cut short",
                    self.log.id, h.first
                )));
            }
            self.pos += HEADER as u64 + u64::from(h.len);
            self.chunk = h.first + u64::from(h.count);
            // Chunks before a start by time, or wholly before a start offset, are read only to
            // be skipped: their space is used again.
            if h.ts < self.min_ts || self.chunk <= self.skip_before {
                buf.truncate(at);
                continue;
            }
            self.min_ts = 0;
            kept.push((at, h, self.skip_before));
        }
        let all = buf.freeze();
        let mut out = Vec::new();
        for (start, h, skip_before) in kept {
            let mut at = start;
            for i in 0..u64::from(h.count) {
                let len = all
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .ok_or_else(|| bad("a stream chunk ends inside a record"))?;
                if at + 4 + len > start + h.len as usize {
                    return Err(bad("a stream chunk ends inside a record"));
                }
                let record = all.slice(at + 4..at + 4 + len);
                at += 4 + len;
                let offset = h.first + i;
                if offset < skip_before {
                    continue;
                }
                let m = StoredMessage::decode(offset, record)
                    .ok_or_else(|| bad("a stream record does not decode"))?;
                out.push((offset, m));
            }
        }
        Ok(out)
    }

    /// Opens the segment holding the next chunk, or the oldest one if retention removed it.
    fn open_at_chunk(&mut self) -> io::Result<()> {
        let first = self.log.first_offset();
        self.chunk = self.chunk.max(first);
        // Opening rewinds to an indexed chunk: what comes before the next offset was read.
        self.skip_before = self.skip_before.max(self.chunk);
        let Some((file, pos, at)) = self.log.locate(self.chunk)? else {
            return Err(bad(format!(
                "stream {}: no segment holds offset {}",
                self.log.id, self.chunk
            )));
        };
        self.file = Some(file);
        self.pos = pos;
        self.chunk = at;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::put_message;
    use bytes::Bytes;

    fn plain(out: &mut Vec<u8>, m: &StoredMessage, _offset: u64) {
        put_message(out, [&m.exchange, &m.routing_key, &m.properties, &m.body]);
    }

    fn message(i: u64) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            id: i + 1,
            exchange: Bytes::new(),
            routing_key: Bytes::from_static(b"k"),
            properties: Bytes::from_static(&[0, 0]),
            body: Bytes::from(format!("{i:08}").repeat(12)),
        })
    }

    fn retention(segment_bytes: u64) -> Retention {
        Retention {
            segment_bytes,
            ..Retention::default()
        }
    }

    /// Appends messages `from..to`, `per` to a batch.
    fn append(log: &StreamLog, from: u64, to: u64, per: u64, now_ms: u64) {
        let mut buf = Vec::new();
        let all: Vec<_> = (from..to).map(message).collect();
        for batch in all.chunks(per as usize) {
            log.append(batch, now_ms, &mut buf).expect("append");
        }
    }

    /// Everything a reader from `start` reads now: (offset, the number in the body).
    fn read_all(log: &Arc<StreamLog>, start: Start) -> Vec<(u64, u64)> {
        let mut r = log.reader(start);
        let mut out = Vec::new();
        loop {
            let got = r.read(BytesMut::with_capacity(1000), false).expect("read");
            if got.is_empty() {
                return out;
            }
            out.extend(got.into_iter().map(|(o, m)| {
                let n = std::str::from_utf8(&m.body[..8]).expect("utf8");
                (o, n.parse().expect("number"))
            }));
        }
    }

    fn numbered(range: std::ops::Range<u64>) -> Vec<(u64, u64)> {
        range.map(|i| (i, i)).collect()
    }

    #[test]
    fn readers_start_where_asked_and_cross_segments_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let log = StreamLog::open(dir.path().join("s"), 1, retention(2000), plain).expect("open");
        append(&log, 0, 100, 7, 1_000);
        append(&log, 100, 130, 10, 5_000);
        assert!(
            log.segments() > 5,
            "small segments roll: {}",
            log.segments()
        );
        assert_eq!(log.committed(), 130);
        assert_eq!(read_all(&log, Start::First), numbered(0..130));
        assert_eq!(read_all(&log, Start::Offset(57)), numbered(57..130));
        assert_eq!(read_all(&log, Start::Offset(500)), vec![]);
        assert_eq!(read_all(&log, Start::Next), vec![]);
        assert_eq!(
            read_all(&log, Start::Last),
            numbered(120..130),
            "the newest chunk"
        );
        assert_eq!(read_all(&log, Start::Time(4_000)), numbered(100..130));
        assert_eq!(read_all(&log, Start::Time(9_000)), vec![]);

        let mut tail = log.reader(Start::Next);
        append(&log, 130, 135, 5, 6_000);
        let got: Vec<u64> = tail
            .read(BytesMut::with_capacity(1000), false)
            .expect("read")
            .iter()
            .map(|(o, _)| *o)
            .collect();
        assert_eq!(
            got,
            vec![130, 131, 132, 133, 134],
            "a tail reader sees new chunks"
        );
    }

    #[test]
    fn reopening_cuts_a_torn_chunk_and_carries_on_from_there() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s");
        let log = StreamLog::open(path.clone(), 1, retention(1 << 20), plain).expect("open");
        append(&log, 0, 20, 5, 1_000);
        drop(log);
        let segment = segment_path(&path, 0);
        let len = std::fs::metadata(&segment).expect("segment").len();
        // Half of the last chunk reached the disk.
        let f = OpenOptions::new().write(true).open(&segment).expect("open");
        f.set_len(len - 100).expect("cut");
        drop(f);
        let log = StreamLog::open(path, 1, retention(1 << 20), plain).expect("reopen");
        assert_eq!(log.committed(), 15);
        assert_eq!(read_all(&log, Start::First), numbered(0..15));
        append(&log, 15, 20, 5, 2_000);
        assert_eq!(read_all(&log, Start::First), numbered(0..20));
    }

    #[test]
    fn retention_removes_whole_old_segments_and_readers_skip_ahead() {
        let dir = tempfile::tempdir().expect("dir");
        let log = StreamLog::open(dir.path().join("s"), 1, retention(1500), plain).expect("open");
        let mut early = log.reader(Start::First);
        append(&log, 0, 100, 5, 1_000);
        let segments = log.segments();
        log.set_retention(
            Retention {
                max_bytes: Some(5_000),
                ..retention(1500)
            },
            1_000,
        );
        let (kept, bytes) = log.size();
        assert!(
            bytes <= 5_000 && log.segments() < segments,
            "{bytes} bytes kept"
        );
        let first = log.first_offset();
        assert_eq!(kept, 100 - first);
        assert_eq!(log.removed().0, first);
        assert_eq!(read_all(&log, Start::First), numbered(first..100));
        let got = early
            .read(BytesMut::with_capacity(1 << 20), false)
            .expect("read");
        assert_eq!(
            got.first().map(|(o, _)| *o),
            Some(first),
            "a reader behind skips to the first kept"
        );

        append(&log, 100, 110, 5, 2_000);
        log.set_retention(
            Retention {
                max_age_ms: Some(500),
                ..retention(1500)
            },
            2_200,
        );
        let first = log.first_offset();
        assert!(first >= 100, "everything older than 500 ms went: {first}");
        assert_eq!(read_all(&log, Start::First), numbered(first..110));
    }
}
