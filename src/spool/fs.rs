//! The filesystem calls the spool writer makes, and nothing else, behind a
//! trait so tests can make any one of them fail the way a full or failing
//! disk does (a short write, ENOSPC, EIO, a failed fsync). Production uses
//! [`RealFs`]; reading segments at start-up and during replay stays on
//! `std::fs`, since no acknowledgement depends on those calls.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

pub(crate) trait SpoolFs: Send + Sync {
    /// Creates a new segment for appending; fails if the path exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (created and renamed segments) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open segment. Writes append at the end (`O_APPEND`), so after
/// `set_len` the next write lands exactly at the new end.
pub(crate) trait SegmentFile: Send {
    /// One `write(2)`: may take only part of `buf`.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// `fdatasync(2)`.
    fn sync_data(&mut self) -> io::Result<()>;
    /// `ftruncate(2)`.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// The real filesystem.
pub(crate) struct RealFs;

impl SpoolFs for RealFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        Ok(Box::new(file))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl SegmentFile for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}
