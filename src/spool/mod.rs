//! The on-disk spool: where accepted events go while Redis cannot take them.
//!
//! Record layout: `SPOOL_DIR` holds segments named
//! `spool-<UTC time>-<uuid>.open` (the one being written) or `….jsonl`
//! (closed), or `…-upto<N>.jsonl` (closed after a failed append: only its
//! first N bytes, all acknowledged, are replayed). A segment is JSON Lines:
//! one queue envelope (the same JSON the Redis queue holds) per line, each
//! line ended by `\n`; nothing else, no header. The directory itself
//! carries an exclusive `flock` held by the one process that owns it.
//!
//! Invariants:
//! - One process per `SPOOL_DIR`. [`Spool::open`] takes the directory's
//!   lock before touching any segment and keeps it for the writer's life;
//!   a second process is refused at start. The kernel drops the lock when
//!   its holder dies, so `kill -9` never leaves a stale one.
//! - An append is answered only after its lines are written and the file is
//!   `fdatasync`ed, so a 202 backed by the spool survives `kill -9` and power
//!   loss. Appends are group-committed: one thread takes every append
//!   waiting, writes them, syncs once, and answers them all.
//! - A group that fails (ENOSPC, EIO, a write that stops short, a failed
//!   fsync) is refused whole (the handler answers 503), and the segment is
//!   left exactly as it was before that group: it is truncated back to the
//!   group's start offset, so no later acknowledged line is ever glued to
//!   torn bytes. If the truncation fails, or after any failed fsync (the
//!   kernel may have dropped the dirty pages and a second fsync would lie),
//!   the segment is closed under its `-upto<N>` name, never written again,
//!   and appends continue in a new one. Appends resume by themselves once
//!   the disk takes writes again.
//! - The spool never drops: past `SPOOL_MAX_BYTES` an append is refused
//!   (the handler answers 503) and nothing is written.
//! - The segment being written ends in `.open`; rotation renames it to
//!   `.jsonl` (then syncs the directory). Only `.jsonl` segments are
//!   replayed, and a segment is deleted only after every line of it is in
//!   Redis. A crash mid-replay replays the segment again, which is harmless:
//!   eventIds dedup.
//! - At start-up, `.open` segments left by a crash are closed. A torn last
//!   line (a crash mid-write, never acknowledged) is skipped with a warning
//!   and counted.

mod fs;
mod replay;

#[cfg(test)]
mod fault_tests;

pub use replay::{RedisDown, Replayer};

pub(crate) use fs::{RealFs, SegmentFile, SpoolFs};

use std::fs::{File, TryLockError};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};

/// Segments are rotated past this size so replay works in bounded pieces.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Why an append group could not be written. Every cause is retryable: the
/// group was rolled back and nothing of it will be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// ENOSPC or EDQUOT: retrying helps once the disk has room.
    NoSpace,
    /// Another I/O error while creating or writing a segment.
    Io,
    /// `fdatasync` failed; the segment was closed and a new one is used.
    Fsync,
    /// A write made no progress (returned 0) before the group was complete.
    ShortWrite,
}

impl FailureCause {
    pub const ALL: [FailureCause; 4] = [
        FailureCause::NoSpace,
        FailureCause::Io,
        FailureCause::Fsync,
        FailureCause::ShortWrite,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::NoSpace => "no_space",
            FailureCause::Io => "io",
            FailureCause::Fsync => "fsync",
            FailureCause::ShortWrite => "short_write",
        }
    }

    fn of(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => FailureCause::NoSpace,
            io::ErrorKind::WriteZero => FailureCause::ShortWrite,
            _ => FailureCause::Io,
        }
    }
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({0} bytes)")]
    Full(u64),
    /// Nothing of the append was kept; retrying later can succeed.
    #[error("writing the spool failed ({cause}): {message}")]
    Write {
        cause: FailureCause,
        message: String,
    },
    #[error("the spool is closed")]
    Closed,
}

/// Sizes shared with metrics and `/admin/queue`.
#[derive(Debug, Default)]
pub struct SpoolStats {
    pub bytes: AtomicU64,
    pub events: AtomicU64,
}

type AppendDone = oneshot::Sender<Result<(), SpoolError>>;

enum Cmd {
    Append {
        lines: Vec<String>,
        done: AppendDone,
    },
    Rotate {
        done: oneshot::Sender<io::Result<()>>,
    },
}

#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Cmd>,
    dir: PathBuf,
    stats: Arc<SpoolStats>,
}

/// The exclusive `flock` on a spool directory, released when dropped or
/// when the process dies.
struct DirLock {
    _dir: File,
}

/// Takes the lock on `dir` itself rather than on a file in it, so the
/// directory holds segments only (an empty directory means nothing is
/// waiting).
fn lock_dir(dir: &Path) -> anyhow::Result<DirLock> {
    let handle = File::open(dir)
        .with_context(|| format!("opening the spool directory {} to lock it", dir.display()))?;
    match handle.try_lock() {
        Ok(()) => Ok(DirLock { _dir: handle }),
        Err(TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "the spool directory {} (SPOOL_DIR) is locked by another running process; \
             adtrack allows one process per SPOOL_DIR, so give each its own \
             (retrying helps only once that process has exited)",
            dir.display()
        )),
        Err(TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e)
                .context(format!("locking the spool directory {}", dir.display())))
        }
    }
}

/// One decoded line: the envelope text, or why it was skipped.
pub fn decode_line(line: &[u8]) -> Result<&str, &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8")?;
    let text = text.trim_end_matches('\r');
    if text.is_empty() {
        return Err("empty");
    }
    match serde_json::from_str::<crate::domain::Event>(text) {
        Ok(_) => Ok(text),
        Err(_) => Err("not an event envelope"),
    }
}

/// A segment's content split into the envelopes to replay and the lines to
/// skip.
#[derive(Debug, Default, PartialEq)]
pub struct Lines<'a> {
    pub good: Vec<&'a str>,
    /// (1-based line number, why, whether it is the torn last line).
    pub skipped: Vec<(usize, &'static str, bool)>,
    /// Lines in the segment, a torn last one included.
    pub count: usize,
}

/// Splits a segment into lines. Every complete line ends in `\n`; an
/// unterminated tail is the torn last line of a write a crash cut short.
pub fn split_segment(data: &[u8]) -> Lines<'_> {
    let pieces: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let complete = data.last() == Some(&b'\n');
    // `split` yields one empty piece after a final newline (and for no data).
    let count = pieces.len() - usize::from(complete || data.is_empty());
    let mut lines = Lines {
        count,
        ..Lines::default()
    };
    for (i, piece) in pieces.iter().take(count).enumerate() {
        match decode_line(piece) {
            Ok(line) => lines.good.push(line),
            Err(reason) => {
                let torn = i + 1 == count && !complete;
                lines.skipped.push((i + 1, reason, torn));
            }
        }
    }
    lines
}

impl Spool {
    /// Locks `dir` (creating it) for this process, closes segments a crash
    /// left open, and starts the writer thread, which holds the lock until
    /// it ends.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<(Self, std::thread::JoinHandle<()>)> {
        Self::open_with(dir, max_bytes, Arc::new(RealFs))
    }

    pub(crate) fn open_with(
        dir: &Path,
        max_bytes: u64,
        fs: Arc<dyn SpoolFs>,
    ) -> anyhow::Result<(Self, std::thread::JoinHandle<()>)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the spool directory {}", dir.display()))?;
        let lock = lock_dir(dir)?;
        let stats = Arc::new(SpoolStats::default());
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "open") {
                let closed = path.with_extension("jsonl");
                fs.rename(&path, &closed)
                    .with_context(|| format!("closing {}", path.display()))?;
                tracing::warn!(segment = %closed.display(), "closed a spool segment left open by a crash");
            }
        }
        fs.sync_dir(dir)
            .with_context(|| format!("syncing the directory {}", dir.display()))?;
        for seg in segments(dir)? {
            let (bytes, lines) = measure(&seg)?;
            stats.bytes.fetch_add(bytes, Ordering::Relaxed);
            stats.events.fetch_add(lines, Ordering::Relaxed);
        }
        let (tx, rx) = mpsc::channel(65_536);
        let writer = Writer {
            fs,
            dir: dir.to_owned(),
            max_bytes,
            stats: stats.clone(),
            active: None,
            stranded: Vec::new(),
            _lock: lock,
        };
        let handle = std::thread::Builder::new()
            .name("adtrack-spool".into())
            .spawn(move || writer.run(rx))
            .context("starting the spool writer")?;
        Ok((
            Self {
                tx,
                dir: dir.to_owned(),
                stats,
            },
            handle,
        ))
    }

    pub fn stats(&self) -> &SpoolStats {
        &self.stats
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends envelopes; returns once they are on disk and synced. On an
    /// error nothing of them was kept.
    pub async fn append(&self, lines: Vec<String>) -> Result<(), SpoolError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Cmd::Append { lines, done })
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Closes the segment being written (if any), making it replayable.
    pub async fn rotate(&self) -> io::Result<()> {
        let (done, answer) = oneshot::channel();
        if self.tx.send(Cmd::Rotate { done }).await.is_err() {
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))
    }
}

struct Active {
    file: Box<dyn SegmentFile>,
    path: PathBuf,
    /// Bytes acknowledged: everything before this offset was synced and
    /// answered, and nothing after it is.
    bytes: u64,
}

/// A group that could not be written, and what the writer was doing.
struct Failure {
    cause: FailureCause,
    stage: &'static str,
    error: io::Error,
}

impl Failure {
    fn new(stage: &'static str, error: io::Error) -> Self {
        Self {
            cause: FailureCause::of(&error),
            stage,
            error,
        }
    }
}

struct Writer {
    fs: Arc<dyn SpoolFs>,
    dir: PathBuf,
    max_bytes: u64,
    stats: Arc<SpoolStats>,
    active: Option<Active>,
    /// Closed segments whose rename to `.jsonl` failed; retried at every
    /// rotation (and done at the next start-up otherwise).
    stranded: Vec<(PathBuf, PathBuf)>,
    _lock: DirLock,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < 4096 {
                match rx.try_recv() {
                    Ok(cmd) => group.push(cmd),
                    Err(_) => break,
                }
            }
            let mut appends = Vec::new();
            for cmd in group {
                match cmd {
                    Cmd::Append { lines, done } => appends.push((lines, done)),
                    Cmd::Rotate { done } => {
                        // Appends received before the rotation go first.
                        self.commit(std::mem::take(&mut appends));
                        let _ = done.send(self.rotate());
                    }
                }
            }
            self.commit(appends);
        }
        if let Err(e) = self.close_active() {
            tracing::error!(error = %e, "closing the spool segment failed");
        }
    }

    /// Writes every append that fits, syncs once, answers all.
    fn commit(&mut self, appends: Vec<(Vec<String>, AppendDone)>) {
        if appends.is_empty() {
            return;
        }
        let mut accepted = Vec::with_capacity(appends.len());
        let mut buf = Vec::new();
        let mut events = 0u64;
        let mut total = self.stats.bytes.load(Ordering::Relaxed);
        for (lines, done) in appends {
            let size: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
            if total + size > self.max_bytes {
                let _ = done.send(Err(SpoolError::Full(total)));
                continue;
            }
            total += size;
            events += lines.len() as u64;
            for l in &lines {
                buf.extend_from_slice(l.as_bytes());
                buf.push(b'\n');
            }
            accepted.push(done);
        }
        if accepted.is_empty() {
            return;
        }
        let result = match self.write_synced(&buf) {
            Ok(()) => {
                self.stats
                    .bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                self.stats.events.fetch_add(events, Ordering::Relaxed);
                Ok(())
            }
            Err(f) => {
                tracing::error!(
                    cause = f.cause.as_str(),
                    stage = f.stage,
                    error = %f.error,
                    bytes = buf.len(),
                    appends = accepted.len(),
                    "a spool append group failed; it was rolled back and refused"
                );
                Err(SpoolError::Write {
                    cause: f.cause,
                    message: format!("{}: {}", f.stage, f.error),
                })
            }
        };
        for done in accepted {
            let _ = done.send(result.clone());
        }
    }

    /// Writes one group at the end of the active segment and syncs it. On
    /// failure the segment is as it was before the group, or closed.
    fn write_synced(&mut self, buf: &[u8]) -> Result<(), Failure> {
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.bytes >= SEGMENT_BYTES)
        {
            // Everything in it is synced: a failed close only delays its
            // replay, and the group goes to a new segment either way.
            if let Err(e) = self.close_active() {
                tracing::warn!(error = %e, "closing a full spool segment failed; retried at the next rotation");
            }
        }
        if self.active.is_none() {
            self.start_segment()?;
        }
        let Some(active) = self.active.as_mut() else {
            return Err(Failure::new(
                "starting a segment",
                io::Error::other("no active spool segment"),
            ));
        };
        let start = active.bytes;
        if let Err(error) = write_all(active.file.as_mut(), buf) {
            let failure = Failure::new("writing", error);
            self.roll_back(start);
            return Err(failure);
        }
        if let Err(error) = active.file.sync_data() {
            // The kernel may have dropped the group's pages and cleared the
            // error: a later fsync of this file would succeed and prove
            // nothing. Take the group out and never write here again.
            let failure = Failure {
                cause: FailureCause::Fsync,
                stage: "syncing",
                error,
            };
            if let Err(e) = active.file.set_len(start) {
                tracing::warn!(error = %e, "truncating after a failed fsync failed; replay skips the group as a torn line");
            }
            self.abandon_active("fsync failed");
            return Err(failure);
        }
        active.bytes += buf.len() as u64;
        Ok(())
    }

    fn start_segment(&mut self) -> Result<(), Failure> {
        let name = format!(
            "spool-{}-{}.open",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.6f"),
            uuid::Uuid::new_v4().simple()
        );
        let path = self.dir.join(name);
        let file = self
            .fs
            .create(&path)
            .map_err(|e| Failure::new("creating a segment", e))?;
        self.active = Some(Active {
            file,
            path,
            bytes: 0,
        });
        if let Err(error) = self.fs.sync_dir(&self.dir) {
            // Its directory entry may not survive a crash: do not use it.
            self.abandon_active("syncing the directory failed");
            return Err(Failure {
                cause: FailureCause::Fsync,
                stage: "syncing the directory",
                error,
            });
        }
        Ok(())
    }

    /// Truncates the active segment back to `start` after a failed write,
    /// so the torn bytes are gone before the next group. If that cannot be
    /// done and made durable, the segment is closed instead, named with
    /// its acknowledged length so replay never reads the torn bytes, and the
    /// next group starts a new one.
    fn roll_back(&mut self, start: u64) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let undone = active
            .file
            .set_len(start)
            .and_then(|()| active.file.sync_data());
        if let Err(e) = undone {
            tracing::warn!(error = %e, offset = start, segment = %active.path.display(), "rolling a spool segment back failed");
            self.abandon_active("rolling back failed");
        }
    }

    /// Closes the active segment after a fault, without syncing it again
    /// (its acknowledged bytes were synced when they were answered). Its
    /// closed name carries the acknowledged length: whatever a failed group
    /// left past it, whether or not a truncation reached the disk, is never
    /// replayed.
    fn abandon_active(&mut self, why: &'static str) {
        let Some(active) = self.active.take() else {
            return;
        };
        tracing::warn!(segment = %active.path.display(), acknowledged_bytes = active.bytes, why, "closing the spool segment; appends continue in a new one");
        let closed = closed_name(&active.path, Some(active.bytes));
        if let Err(e) = self.close(active, closed) {
            tracing::warn!(error = %e, "closing the spool segment failed; retried at the next rotation");
        }
    }

    /// Closes the active segment and any stranded earlier: the replayer's
    /// rotation.
    fn rotate(&mut self) -> io::Result<()> {
        let closed = self.close_active();
        let mut left = Vec::new();
        let mut first_error = None;
        for (open, closed) in std::mem::take(&mut self.stranded) {
            if let Err(e) = self.fs.rename(&open, &closed) {
                left.push((open, closed));
                first_error.get_or_insert(e);
            }
        }
        self.stranded = left;
        closed?;
        match first_error {
            Some(e) => Err(e),
            None => self.fs.sync_dir(&self.dir),
        }
    }

    /// Renames the active segment to `.jsonl`. Every byte it holds that
    /// matters was synced when it was acknowledged, so no further sync of
    /// the file is needed; a failed rename strands it until the next
    /// rotation.
    fn close_active(&mut self) -> io::Result<()> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        let closed = closed_name(&active.path, None);
        self.close(active, closed)
    }

    fn close(&mut self, active: Active, closed: PathBuf) -> io::Result<()> {
        drop(active.file);
        if let Err(e) = self.fs.rename(&active.path, &closed) {
            self.stranded.push((active.path, closed));
            return Err(e);
        }
        self.fs.sync_dir(&self.dir)
    }
}

/// Writes all of `buf` with as many `write` calls as the file needs. A
/// write that makes no progress is an error (`WriteZero`).
fn write_all(file: &mut dyn SegmentFile, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write(buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the segment took no more bytes",
                ))
            }
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Closed segments, oldest first.
pub fn segments(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    out.sort();
    Ok(out)
}

/// The closed name of an `.open` segment: `….jsonl`, or, for a segment
/// closed after a fault, `…-upto<acknowledged bytes>.jsonl`.
fn closed_name(open: &Path, acknowledged: Option<u64>) -> PathBuf {
    match acknowledged {
        None => open.with_extension("jsonl"),
        Some(len) => {
            let stem = open
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            open.with_file_name(format!("{stem}{UPTO}{len}.jsonl"))
        }
    }
}

/// Marks the acknowledged length in the name of a segment closed after a
/// fault.
const UPTO: &str = "-upto";

/// How much of a closed segment replay reads: the length its name records
/// (a segment closed after a fault), else all of it.
pub fn replayable_len(path: &Path, file_len: u64) -> u64 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.rsplit_once(UPTO))
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .map_or(file_len, |n| n.min(file_len))
}

fn measure(path: &Path) -> anyhow::Result<(u64, u64)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let bytes = replayable_len(path, file.metadata()?.len());
    let lines = BufReader::new(io::Read::take(file, bytes))
        .split(b'\n')
        .count() as u64;
    Ok((bytes, lines))
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> String {
        let ctx = crate::domain::ParseContext::new(chrono::Utc::now());
        let e = crate::domain::parse_event(br#"{"campaignId":"c"}"#, &ctx).unwrap();
        serde_json::to_string(&e).unwrap()
    }

    #[tokio::test]
    async fn appends_are_durable_and_rotated_segments_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _h) = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(vec![envelope(), envelope()]).await.unwrap();
        spool.append(vec![envelope()]).await.unwrap();
        assert_eq!(spool.stats().events.load(Ordering::Relaxed), 3);
        assert!(segments(dir.path()).unwrap().is_empty());
        spool.rotate().await.unwrap();
        let segs = segments(dir.path()).unwrap();
        assert_eq!(segs.len(), 1);
        let text = std::fs::read_to_string(&segs[0]).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().all(|l| decode_line(l.as_bytes()).is_ok()));
    }

    #[tokio::test]
    async fn a_full_spool_refuses_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let one = envelope();
        let (spool, _h) = Spool::open(dir.path(), (one.len() as u64 + 1) * 2).unwrap();
        spool.append(vec![one.clone(), one.clone()]).await.unwrap();
        let err = spool.append(vec![one.clone()]).await.unwrap_err();
        assert!(matches!(err, SpoolError::Full(_)));
        assert_eq!(spool.stats().events.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn segments_left_open_by_a_crash_are_closed_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!("{}\n{}\n", envelope(), envelope());
        text.push_str("{\"eventId\":\"torn");
        std::fs::write(dir.path().join("spool-1.open"), &text).unwrap();
        let (spool, _h) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        assert_eq!(
            spool.stats().bytes.load(Ordering::Relaxed),
            text.len() as u64
        );
    }

    #[test]
    fn a_segment_closed_after_a_fault_is_replayed_up_to_its_recorded_length() {
        let open = Path::new("/s/spool-20260101T000000.000000-ab12.open");
        let plain = closed_name(open, None);
        assert_eq!(
            plain,
            Path::new("/s/spool-20260101T000000.000000-ab12.jsonl")
        );
        assert_eq!(replayable_len(&plain, 500), 500);
        let cut = closed_name(open, Some(406));
        assert_eq!(
            cut,
            Path::new("/s/spool-20260101T000000.000000-ab12-upto406.jsonl")
        );
        assert_eq!(replayable_len(&cut, 500), 406);
        // A file shorter than its name says (never written that far) is
        // read whole.
        assert_eq!(replayable_len(&cut, 100), 100);
    }

    #[test]
    fn decode_line_rejects_what_is_not_an_envelope() {
        assert!(decode_line(envelope().as_bytes()).is_ok());
        for bad in [&b""[..], b"{", b"[]", b"{\"eventId\":\"x\"}", b"\xff\xfe"] {
            assert!(decode_line(bad).is_err());
        }
    }
}
