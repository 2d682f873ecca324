//! Durable storage. Everything sled lives here; for now the broker keeps its state in memory and
//! this module only owns the data directory, so the boundary stands where the design puts it.

use std::path::{Path, PathBuf};

/// The broker's data directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Creates the data directory if needed.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Where the store keeps its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
