//! The on-disk spool: where accepted events go while Redis cannot take them.
//!
//! Invariants:
//! - An append is answered only after its lines are written and the file is
//!   `fdatasync`ed, so a 202 backed by the spool survives `kill -9` and power
//!   loss. Appends are group-committed: one thread takes every append
//!   waiting, writes them, syncs once, and answers them all.
//! - The spool never drops: past `SPOOL_MAX_BYTES` an append is refused
//!   (the handler answers 503) and nothing is written.
//! - Segments are JSON Lines, one queue envelope per line. The segment being
//!   written ends in `.open`; rotation syncs it and renames it to `.jsonl`
//!   (then syncs the directory). Only `.jsonl` segments are replayed, and a
//!   segment is deleted only after every line of it is in Redis. A crash
//!   mid-replay replays the segment again, which is harmless: eventIds dedup.
//! - At start-up, `.open` segments left by a crash are closed. A torn last
//!   line (a crash mid-write, never acknowledged) is skipped with a warning
//!   and counted.

mod replay;

pub use replay::{RedisDown, Replayer};

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};

/// Segments are rotated past this size so replay works in bounded pieces.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({0} bytes)")]
    Full(u64),
    #[error("writing the spool failed: {0}")]
    Io(String),
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
    /// Opens `dir` (creating it), closes segments a crash left open, and
    /// starts the writer thread.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<(Self, std::thread::JoinHandle<()>)> {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating the spool directory {}", dir.display()))?;
        let stats = Arc::new(SpoolStats::default());
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "open") {
                let closed = path.with_extension("jsonl");
                fs::rename(&path, &closed)
                    .with_context(|| format!("closing {}", path.display()))?;
                tracing::warn!(segment = %closed.display(), "closed a spool segment left open by a crash");
            }
        }
        sync_dir(dir)?;
        for seg in segments(dir)? {
            let (bytes, lines) = measure(&seg)?;
            stats.bytes.fetch_add(bytes, Ordering::Relaxed);
            stats.events.fetch_add(lines, Ordering::Relaxed);
        }
        let (tx, rx) = mpsc::channel(65_536);
        let writer = Writer {
            dir: dir.to_owned(),
            max_bytes,
            stats: stats.clone(),
            active: None,
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

    /// Appends envelopes; returns once they are on disk and synced.
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
    file: File,
    path: PathBuf,
    bytes: u64,
}

struct Writer {
    dir: PathBuf,
    max_bytes: u64,
    stats: Arc<SpoolStats>,
    active: Option<Active>,
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
                        let _ = done.send(self.close_active());
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
        let result = self
            .write_synced(&buf)
            .map_err(|e| SpoolError::Io(e.to_string()));
        if result.is_ok() {
            self.stats
                .bytes
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            self.stats.events.fetch_add(events, Ordering::Relaxed);
        } else if let Err(e) = &result {
            tracing::error!(error = %e, "spool write failed");
        }
        for done in accepted {
            let _ = done.send(result.clone());
        }
    }

    fn write_synced(&mut self, buf: &[u8]) -> io::Result<()> {
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.bytes >= SEGMENT_BYTES)
        {
            self.close_active()?;
        }
        if self.active.is_none() {
            let name = format!(
                "spool-{}-{}.open",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.6f"),
                uuid::Uuid::new_v4().simple()
            );
            let path = self.dir.join(name);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            sync_dir(&self.dir).map_err(io::Error::other)?;
            self.active = Some(Active {
                file,
                path,
                bytes: 0,
            });
        }
        let Some(active) = self.active.as_mut() else {
            return Err(io::Error::other("no active spool segment"));
        };
        active.file.write_all(buf)?;
        active.file.sync_data()?;
        active.bytes += buf.len() as u64;
        Ok(())
    }

    fn close_active(&mut self) -> io::Result<()> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        active.file.sync_all()?;
        drop(active.file);
        fs::rename(&active.path, active.path.with_extension("jsonl"))?;
        sync_dir(&self.dir).map_err(io::Error::other)
    }
}

/// Closed segments, oldest first.
pub fn segments(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    out.sort();
    Ok(out)
}

fn measure(path: &Path) -> anyhow::Result<(u64, u64)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let bytes = file.metadata()?.len();
    let lines = BufReader::new(file).split(b'\n').count() as u64;
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
        let text = fs::read_to_string(&segs[0]).unwrap();
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
        fs::write(dir.path().join("spool-1.open"), &text).unwrap();
        let (spool, _h) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        assert_eq!(
            spool.stats().bytes.load(Ordering::Relaxed),
            text.len() as u64
        );
    }

    #[test]
    fn decode_line_rejects_what_is_not_an_envelope() {
        assert!(decode_line(envelope().as_bytes()).is_ok());
        for bad in [&b""[..], b"{", b"[]", b"{\"eventId\":\"x\"}", b"\xff\xfe"] {
            assert!(decode_line(bad).is_err());
        }
    }
}
