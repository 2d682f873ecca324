//! Free space on the filesystem that holds the store: the disk alarm watches it, and a store
//! that failed to write waits for it before writing again.

use std::io;
use std::path::Path;

/// What statvfs says of a filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Available to an unprivileged writer (what `df` shows as available).
    pub free: u64,
    /// The filesystem's size; zero where it does not say (LazyFS, some FUSE filesystems).
    pub total: u64,
}

/// Free and total space of the filesystem holding `path`.
pub fn space(path: &Path) -> io::Result<Space> {
    let s = rustix::fs::statvfs(path)?;
    Ok(Space {
        free: s.f_bavail.saturating_mul(s.f_frsize),
        total: s.f_blocks.saturating_mul(s.f_frsize),
    })
}
