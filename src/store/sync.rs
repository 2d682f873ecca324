//! What sled does not promise: that a flushed write survives a power cut.
//!
//! sled 0.34's `flush()` ends in `sync_file_range`, which syncs neither the file's size nor the
//! device's cache, so the store makes every write durable itself after each flush: the log file
//! with `fdatasync`, every blob file sled created since (values over a quarter of a segment are
//! written as files of their own, never synced by sled) and the directories whose entries changed
//! (new blobs, snapshots renamed into place). A directory is rescanned when its mtime moves, and
//! for a while after: mtimes are kept at the kernel's coarse clock tick, so two changes within
//! one tick leave the same mtime.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::StoreStats;

/// How long after a directory's last change it is rescanned at every sync, whatever its mtime.
const RECENT: Duration = Duration::from_secs(1);

/// A directory whose entries must be durable, and its files when they need syncing too.
struct Watched {
    path: PathBuf,
    /// Whether each new file in it is synced (sled syncs its snapshots itself, not its blobs).
    sync_files: bool,
    seen_mtime: Option<SystemTime>,
    synced: HashSet<OsString>,
}

impl Watched {
    fn new(path: PathBuf, sync_files: bool) -> Self {
        Self {
            path,
            sync_files,
            seen_mtime: None,
            synced: HashSet::new(),
        }
    }

    /// Syncs the directory (and its new files) if its entries may have changed since last time.
    fn sync(&mut self, stats: &StoreStats) -> io::Result<()> {
        let mtime = match std::fs::metadata(&self.path) {
            Ok(m) => m.modified()?,
            // sled creates its blob directory lazily.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let recent = SystemTime::now()
            .duration_since(mtime)
            .map_or(true, |age| age < RECENT);
        if self.seen_mtime == Some(mtime) && !recent {
            return Ok(());
        }
        if self.sync_files {
            let mut present = HashSet::with_capacity(self.synced.len());
            for entry in std::fs::read_dir(&self.path)? {
                let entry = entry?;
                let name = entry.file_name();
                if !self.synced.contains(&name) {
                    match File::open(entry.path()) {
                        Ok(f) => f.sync_all()?,
                        // Removed since the listing: nothing of it is needed.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                    stats.file_syncs.fetch_add(1, Ordering::Relaxed);
                }
                present.insert(name);
            }
            self.synced = present;
        }
        sync_dir(&self.path)?;
        stats.dir_syncs.fetch_add(1, Ordering::Relaxed);
        self.seen_mtime = Some(mtime);
        Ok(())
    }
}

/// Makes a directory's entries (files created, renamed or removed in it) durable.
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// The files and directories behind one sled database, synced after each flush.
pub(super) struct Durability {
    log: File,
    blobs: Watched,
    sled_dir: Watched,
}

impl Durability {
    /// Opens sled's log file in `sled_dir` (sled must have created it already).
    pub(super) fn open(sled_dir: &Path) -> io::Result<Self> {
        Ok(Self {
            log: File::open(sled_dir.join("db"))?,
            blobs: Watched::new(sled_dir.join("blobs"), true),
            sled_dir: Watched::new(sled_dir.to_path_buf(), false),
        })
    }

    /// Makes everything sled has flushed durable. Blobs go first: a log record that points to a
    /// blob must not outlive it.
    pub(super) fn sync(&mut self, stats: &StoreStats) -> io::Result<()> {
        self.blobs.sync(stats)?;
        self.log.sync_data()?;
        self.sled_dir.sync(stats)?;
        stats.syncs.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_removals_and_their_directory_are_synced_each_file_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let stats = StoreStats::default();
        let mut w = Watched::new(dir.path().to_path_buf(), true);
        std::fs::write(dir.path().join("1"), b"blob").expect("write");
        w.sync(&stats).expect("sync");
        assert_eq!(stats.file_syncs.load(Ordering::Relaxed), 1);
        assert_eq!(stats.dir_syncs.load(Ordering::Relaxed), 1);
        // A second file created within the same clock tick leaves the mtime as it was.
        std::fs::write(dir.path().join("2"), b"blob").expect("write");
        w.sync(&stats).expect("sync");
        assert_eq!(
            stats.file_syncs.load(Ordering::Relaxed),
            2,
            "the file created since is synced, the first one is not synced again"
        );
        assert_eq!(stats.dir_syncs.load(Ordering::Relaxed), 2);
        std::fs::remove_file(dir.path().join("1")).expect("remove");
        w.sync(&stats).expect("sync");
        assert_eq!(stats.file_syncs.load(Ordering::Relaxed), 2);
        assert_eq!(
            stats.dir_syncs.load(Ordering::Relaxed),
            3,
            "the removal is synced"
        );
        assert_eq!(w.synced.len(), 1);
    }
}
