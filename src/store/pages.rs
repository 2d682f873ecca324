//! Paged-out messages: append-only segment files under `pages/`, never synced and emptied at
//! start (a paged message is a copy of one a queue holds; a transient message does not outlive a
//! restart, and a persistent one is in the log as well).
//!
//! Paging must keep up with publishers, so a page costs a copy into a write buffer under one
//! short lock, and reading it back one positioned read. Unlike a sled tree, this holds nothing
//! in memory per page beyond the live count of its segment: a segment file goes once every page
//! in it was read back or dropped, and the active segment starts over when it empties.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::{error, warn};

/// A segment is sealed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Pages are gathered into writes of about this size.
const BUFFER_BYTES: usize = 256 << 10;
/// What a read asks for at first: most pages fit, so most take one read.
const FIRST_READ: usize = 4096;
/// A page id: the segment number above this many bits, the offset below.
const OFFSET_BITS: u32 = 40;
/// The record header: the page's length.
const HEADER: usize = 4;

/// The page files of one store.
#[derive(Debug)]
pub struct PageFiles {
    dir: PathBuf,
    /// Past this size the active segment is sealed.
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The segment pages are appended to.
    active: u64,
    file: Option<Arc<File>>,
    /// Bytes in the active segment, written or buffered.
    len: u64,
    /// Where the buffer starts in the active segment.
    buffered_from: u64,
    buffer: Vec<u8>,
    /// Sealed segments still holding live pages.
    sealed: HashMap<u64, Arc<File>>,
    /// Live pages per segment.
    live: HashMap<u64, u64>,
    /// The last write failed (logged once until one succeeds).
    failing: bool,
}

fn split(id: u64) -> (u64, u64) {
    (id >> OFFSET_BITS, id & ((1 << OFFSET_BITS) - 1))
}

impl PageFiles {
    /// Empties (or creates) `dir` and pages there.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        Self::with_segments(dir, SEGMENT_BYTES)
    }

    /// As [`PageFiles::open`], sealing segments past `segment_bytes`.
    fn with_segments(dir: &Path, segment_bytes: u64) -> std::io::Result<Self> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            inner: Mutex::new(Inner {
                active: 0,
                file: None,
                len: 0,
                buffered_from: 0,
                buffer: Vec::with_capacity(BUFFER_BYTES),
                sealed: HashMap::new(),
                live: HashMap::new(),
                failing: false,
            }),
        })
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{segment:08}.pages"))
    }

    /// Appends a page that `fill` writes and returns its id; `None` if it cannot be written (the
    /// message stays in memory).
    pub fn write(&self, fill: impl FnOnce(&mut Vec<u8>)) -> Option<u64> {
        let mut inner = self.inner.lock();
        if inner.buffer.len() >= BUFFER_BYTES {
            // A buffer that cannot be written stays readable; the page stays in memory.
            self.write_out(&mut inner).ok()?;
        }
        if inner.len >= self.segment_bytes {
            self.seal(&mut inner).ok()?;
        }
        if inner.file.is_none() {
            let path = self.path(inner.active);
            match File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
            {
                Ok(f) => inner.file = Some(Arc::new(f)),
                Err(e) => {
                    self.failed(&mut inner, &e);
                    return None;
                }
            }
        }
        let id = (inner.active << OFFSET_BITS) | inner.len;
        let start = inner.buffer.len();
        inner.buffer.extend_from_slice(&[0; HEADER]);
        fill(&mut inner.buffer);
        let written = inner.buffer.len() - start;
        let Ok(header) = u32::try_from(written - HEADER) else {
            inner.buffer.truncate(start);
            return None;
        };
        inner.buffer[start..start + HEADER].copy_from_slice(&header.to_be_bytes());
        inner.len += u64::try_from(written).ok()?;
        let active = inner.active;
        *inner.live.entry(active).or_insert(0) += 1;
        Some(id)
    }

    /// Logs the first of a run of failed writes.
    fn failed(&self, inner: &mut Inner, e: &std::io::Error) {
        if !std::mem::replace(&mut inner.failing, true) {
            error!(cause = %e, dir = %self.dir.display(), "cannot page messages out; keeping them in memory");
        }
    }

    /// Writes the buffer to the active segment.
    fn write_out(&self, inner: &mut Inner) -> std::io::Result<()> {
        if inner.buffer.is_empty() {
            return Ok(());
        }
        let Some(file) = inner.file.clone() else {
            return Err(std::io::Error::other("no active page file"));
        };
        if let Err(e) = file.write_all_at(&inner.buffer, inner.buffered_from) {
            self.failed(inner, &e);
            return Err(e);
        }
        if std::mem::replace(&mut inner.failing, false) {
            warn!(dir = %self.dir.display(), "paging messages out again");
        }
        inner.buffer.clear();
        inner.buffered_from = inner.len;
        Ok(())
    }

    /// Seals the active segment and starts the next.
    fn seal(&self, inner: &mut Inner) -> std::io::Result<()> {
        self.write_out(inner)?;
        if let Some(file) = inner.file.take() {
            if inner.live.get(&inner.active).copied().unwrap_or(0) > 0 {
                inner.sealed.insert(inner.active, file);
            } else {
                let _ = std::fs::remove_file(self.path(inner.active));
            }
        }
        inner.active += 1;
        inner.len = 0;
        inner.buffered_from = 0;
        Ok(())
    }

    /// Reads a page back and forgets it; `None` (logged) if it cannot be read.
    pub fn read(&self, id: u64) -> Option<Bytes> {
        let (segment, offset) = split(id);
        let file = {
            let mut inner = self.inner.lock();
            if segment == inner.active && offset >= inner.buffered_from {
                let page = usize::try_from(offset - inner.buffered_from)
                    .ok()
                    .and_then(|at| read_record(&inner.buffer[at..]));
                self.release(&mut inner, segment);
                return page;
            }
            let file = if segment == inner.active {
                inner.file.clone()
            } else {
                inner.sealed.get(&segment).cloned()
            };
            self.release(&mut inner, segment);
            file
        };
        let page = file.and_then(|f| read_at(&f, offset));
        if page.is_none() {
            error!(page = id, "a paged message cannot be read back");
        }
        page
    }

    /// Forgets a page without reading it.
    pub fn drop_page(&self, id: u64) {
        let (segment, _) = split(id);
        let mut inner = self.inner.lock();
        self.release(&mut inner, segment);
    }

    /// One page of `segment` is gone: the segment goes with its last one (the active one starts
    /// over instead).
    fn release(&self, inner: &mut Inner, segment: u64) {
        let Some(live) = inner.live.get_mut(&segment) else {
            return;
        };
        *live = live.saturating_sub(1);
        if *live > 0 {
            return;
        }
        inner.live.remove(&segment);
        if segment == inner.active {
            // Nothing buffered or written is live: start over at the front of the same file.
            inner.buffer.clear();
            inner.len = 0;
            inner.buffered_from = 0;
            if let Some(f) = &inner.file
                && let Err(e) = f.set_len(0)
            {
                warn!(cause = %e, "cannot empty the page file");
            }
        } else if inner.sealed.remove(&segment).is_some() {
            let _ = std::fs::remove_file(self.path(segment));
        }
    }
}

/// The page at the front of `buf`, if it is all there.
fn read_record(buf: &[u8]) -> Option<Bytes> {
    let len = u32::from_be_bytes(buf.get(..HEADER)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    buf.get(HEADER..HEADER + len).map(Bytes::copy_from_slice)
}

/// Reads the page at `offset` of `file`: one read for most pages, two for big ones.
fn read_at(file: &File, offset: u64) -> Option<Bytes> {
    let mut buf = vec![0u8; FIRST_READ];
    let n = read_full(file, &mut buf, offset)?;
    let len = usize::try_from(u32::from_be_bytes(buf.get(..HEADER)?.try_into().ok()?)).ok()?;
    let want = HEADER + len;
    if want <= n {
        // Copied out rather than kept, so a small page does not pin the whole read.
        return Some(Bytes::copy_from_slice(&buf[HEADER..want]));
    }
    buf.resize(want, 0);
    let got = read_full(file, &mut buf[n..], offset + u64::try_from(n).ok()?)?;
    (n + got == want).then(|| {
        buf.drain(..HEADER);
        Bytes::from(buf)
    })
}

/// Reads into `buf` from `offset` until it is full or the file ends; the bytes read.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> Option<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + u64::try_from(n).ok()?) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                error!(cause = %e, "cannot read a paged message");
                return None;
            }
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn page(pages: &PageFiles, body: &[u8]) -> u64 {
        pages
            .write(|out| out.extend_from_slice(body))
            .expect("page")
    }

    #[test]
    fn pages_come_back_from_the_buffer_and_the_file_and_segments_go_when_emptied() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().join("pages");
        std::fs::create_dir_all(&root).expect("dir");
        std::fs::write(root.join("00000007.pages"), b"left by a crash").expect("old");
        let pages = PageFiles::with_segments(&root, 128 << 10).expect("open");
        assert!(files(&root).is_empty(), "emptied at start");
        let big = vec![7u8; 3 * FIRST_READ];
        // Enough pages to fill more than one buffer and seal two segments.
        let ids: Vec<(u64, Vec<u8>)> = (0..3000u32)
            .map(|i| {
                let body = if i % 100 == 0 {
                    big.clone()
                } else {
                    format!("page {i}").into_bytes()
                };
                (page(&pages, &body), body)
            })
            .collect();
        assert!(
            files(&root).len() >= 2,
            "sealed segments: {:?}",
            files(&root)
        );
        for (id, body) in &ids {
            assert_eq!(pages.read(*id).as_deref(), Some(&body[..]));
        }
        assert_eq!(
            files(&root),
            vec![format!("{:08}.pages", split(ids[ids.len() - 1].0).0)],
            "every sealed segment went with its last page"
        );
        let active = root.join(&files(&root)[0]);
        assert_eq!(std::fs::metadata(&active).expect("active").len(), 0);
        // The emptied active segment starts over, and a dropped page counts as gone.
        let a = page(&pages, b"a");
        let b = page(&pages, b"b");
        assert_eq!(split(a).1, 0, "written from the front again");
        pages.drop_page(a);
        assert_eq!(pages.read(b).as_deref(), Some(&b"b"[..]));
    }
}
