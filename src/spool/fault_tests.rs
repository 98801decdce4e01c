//! The writer against a filesystem that fails on purpose: a short write,
//! ENOSPC mid-group, a failed fsync, a failed truncation, each on the first
//! group of a segment and on a later one. After each, what replay would read
//! must be every acknowledged line exactly once and nothing else: no refused
//! line, no line merged from torn bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// The file takes half the group, then a write returns 0.
    ShortWrite,
    /// The file takes half the group, then a write fails with ENOSPC.
    NoSpace,
    /// The group is written, then `fdatasync` fails with EIO.
    Fsync,
    /// ENOSPC mid-group as above, and truncating back fails with EIO.
    NoSpaceTruncateFails,
    /// Creating the segment fails with ENOSPC.
    CreateNoSpace,
}

impl Fault {
    fn cause(self) -> FailureCause {
        match self {
            Fault::ShortWrite => FailureCause::ShortWrite,
            Fault::NoSpace | Fault::NoSpaceTruncateFails | Fault::CreateNoSpace => {
                FailureCause::NoSpace
            }
            Fault::Fsync => FailureCause::Fsync,
        }
    }
}

#[derive(Default)]
struct Plan {
    /// The fault the next group meets.
    armed: Option<Fault>,
    /// Writes to a segment after its fsync failed (must stay 0).
    writes_after_failed_sync: usize,
}

/// The real filesystem with faults injected from a shared [`Plan`].
struct FaultyFs {
    plan: Arc<Mutex<Plan>>,
}

struct FaultyFile {
    file: File,
    plan: Arc<Mutex<Plan>>,
    /// The next write fails this way (a fault is half done).
    next_write: Option<Fault>,
    fail_set_len: bool,
    sync_failed: bool,
}

fn enospc() -> io::Error {
    io::Error::from(io::ErrorKind::StorageFull)
}

impl SpoolFs for FaultyFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        {
            let mut plan = self.plan.lock().unwrap();
            if plan.armed == Some(Fault::CreateNoSpace) {
                plan.armed = None;
                return Err(enospc());
            }
        }
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        Ok(Box::new(FaultyFile {
            file,
            plan: self.plan.clone(),
            next_write: None,
            fail_set_len: false,
            sync_failed: false,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.sync_dir(dir)
    }
}

impl SegmentFile for FaultyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut plan = self.plan.lock().unwrap();
        if self.sync_failed {
            plan.writes_after_failed_sync += 1;
        }
        match self.next_write.take() {
            Some(Fault::ShortWrite) => return Ok(0),
            Some(_) => return Err(enospc()),
            None => {}
        }
        match plan.armed {
            Some(f @ (Fault::ShortWrite | Fault::NoSpace | Fault::NoSpaceTruncateFails)) => {
                plan.armed = None;
                self.next_write = Some(f);
                self.fail_set_len = f == Fault::NoSpaceTruncateFails;
                // Torn bytes: half the group reaches the file.
                let half = buf.len() / 2;
                SegmentFile::write(&mut self.file, &buf[..half])
            }
            _ => SegmentFile::write(&mut self.file, buf),
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut plan = self.plan.lock().unwrap();
        if plan.armed == Some(Fault::Fsync) {
            plan.armed = None;
            self.sync_failed = true;
            return Err(io::Error::other("EIO on fdatasync"));
        }
        self.file.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        if std::mem::take(&mut self.fail_set_len) {
            return Err(io::Error::other("EIO on ftruncate"));
        }
        self.file.set_len(len)
    }
}

struct Rig {
    dir: tempfile::TempDir,
    plan: Arc<Mutex<Plan>>,
    spool: Spool,
    /// Every line answered Ok, in order.
    acked: Vec<String>,
    /// Every line answered with an error.
    refused: Vec<String>,
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let plan = Arc::new(Mutex::new(Plan::default()));
        let fs = Arc::new(FaultyFs { plan: plan.clone() });
        let (spool, _writer) = Spool::open_with(dir.path(), 1 << 30, fs).unwrap();
        Self {
            dir,
            plan,
            spool,
            acked: Vec::new(),
            refused: Vec::new(),
        }
    }

    fn arm(&self, fault: Fault) {
        self.plan.lock().unwrap().armed = Some(fault);
    }

    async fn append_ok(&mut self, n: usize) {
        let lines = envelopes(n);
        self.spool.append(lines.clone()).await.unwrap();
        self.acked.extend(lines);
    }

    async fn append_refused(&mut self, n: usize) -> FailureCause {
        let lines = envelopes(n);
        let err = self.spool.append(lines.clone()).await.unwrap_err();
        self.refused.extend(lines);
        match err {
            SpoolError::Write { cause, .. } => cause,
            other => panic!("expected a write failure, got {other:?}"),
        }
    }

    /// Segment files in the directory: (name, content).
    fn files(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).unwrap())
            })
            .collect();
        out.sort();
        out
    }

    fn open_segment(&self) -> Option<Vec<u8>> {
        self.files()
            .into_iter()
            .find(|(n, _)| n.ends_with(".open"))
            .map(|(_, data)| data)
    }

    fn acked_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for l in &self.acked {
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// Closes the active segment and reads every segment as replay does;
    /// asserts that exactly the acknowledged lines come out, once each, and
    /// that no line is skipped: neither a corrupt one (torn bytes glued to
    /// a later line) nor a torn one (bytes of a refused group).
    async fn assert_replay_is_exactly_the_acknowledged(&self) {
        self.spool.rotate().await.unwrap();
        let mut replayed: HashMap<String, usize> = HashMap::new();
        for seg in segments(self.dir.path()).unwrap() {
            let mut data = std::fs::read(&seg).unwrap();
            data.truncate(replayable_len(&seg, data.len() as u64) as usize);
            let lines = split_segment(&data);
            if let Some((line, reason, torn)) = lines.skipped.first() {
                let what = if *torn {
                    "a refused group's torn bytes would be replayed"
                } else {
                    "torn bytes were glued to a later line"
                };
                panic!("{}: line {line} ({reason}): {what}", seg.display());
            }
            for l in lines.good {
                *replayed.entry(l.to_owned()).or_default() += 1;
            }
        }
        for l in &self.refused {
            assert!(
                !replayed.contains_key(l),
                "a refused line would be replayed"
            );
        }
        for l in &self.acked {
            assert_eq!(
                replayed.remove(l),
                Some(1),
                "an acknowledged line is not replayed exactly once"
            );
        }
        assert!(replayed.is_empty(), "lines replayed that were never sent");
        assert_eq!(self.plan.lock().unwrap().writes_after_failed_sync, 0);
    }
}

fn envelopes(n: usize) -> Vec<String> {
    let ctx = crate::domain::ParseContext::new(chrono::Utc::now());
    (0..n)
        .map(|_| {
            let e = crate::domain::parse_event(br#"{"type":"click","adId":"ad-1"}"#, &ctx).unwrap();
            serde_json::to_string(&e).unwrap()
        })
        .collect()
}

/// A write that fails mid-group (short write or ENOSPC) leaves the open
/// segment byte for byte as it was before the group, and the next groups
/// continue in it.
async fn torn_write(fault: Fault, later: bool) {
    let mut rig = Rig::new();
    if later {
        rig.append_ok(2).await;
    }
    rig.arm(fault);
    assert_eq!(rig.append_refused(3).await, fault.cause());
    assert_eq!(
        rig.open_segment().unwrap(),
        rig.acked_bytes(),
        "the failed group left bytes in the segment"
    );
    for _ in 0..3 {
        rig.append_ok(2).await;
    }
    assert_eq!(rig.open_segment().unwrap(), rig.acked_bytes());
    assert_eq!(
        rig.spool.stats().events.load(Ordering::Relaxed),
        rig.acked.len() as u64
    );
    rig.assert_replay_is_exactly_the_acknowledged().await;
}

#[tokio::test]
async fn a_short_write_on_the_first_group_of_a_segment_leaves_it_as_it_was() {
    torn_write(Fault::ShortWrite, false).await;
}

#[tokio::test]
async fn a_short_write_on_a_later_group_leaves_the_segment_as_it_was() {
    torn_write(Fault::ShortWrite, true).await;
}

#[tokio::test]
async fn enospc_on_the_first_group_of_a_segment_leaves_it_as_it_was() {
    torn_write(Fault::NoSpace, false).await;
}

#[tokio::test]
async fn enospc_on_a_later_group_leaves_the_segment_as_it_was() {
    torn_write(Fault::NoSpace, true).await;
}

/// A failed fsync closes the segment, truncated back to what was
/// acknowledged, and the next groups go to a new segment; the old one is
/// never written again.
async fn failed_fsync(later: bool) {
    let mut rig = Rig::new();
    if later {
        rig.append_ok(2).await;
    }
    let before = rig.acked_bytes();
    rig.arm(Fault::Fsync);
    assert_eq!(rig.append_refused(3).await, FailureCause::Fsync);
    assert!(rig.open_segment().is_none(), "the segment was not closed");
    let closed = rig.files();
    assert_eq!(closed.len(), 1);
    assert!(closed[0].0.ends_with(".jsonl"));
    assert_eq!(
        closed[0].1, before,
        "the refused group is still in the segment"
    );
    let first_acked = rig.acked.len();
    for _ in 0..3 {
        rig.append_ok(2).await;
    }
    let mut after = Vec::new();
    for l in &rig.acked[first_acked..] {
        after.extend_from_slice(l.as_bytes());
        after.push(b'\n');
    }
    assert_eq!(rig.open_segment().unwrap(), after);
    assert_eq!(rig.files()[0], closed[0], "the closed segment changed");
    rig.assert_replay_is_exactly_the_acknowledged().await;
}

#[tokio::test]
async fn a_failed_fsync_on_the_first_group_of_a_segment_closes_it() {
    failed_fsync(false).await;
}

#[tokio::test]
async fn a_failed_fsync_on_a_later_group_closes_the_segment() {
    failed_fsync(true).await;
}

/// When the truncation back fails too, the segment is closed with its torn
/// tail under a name that records the acknowledged length, so replay reads
/// none of the refused group, and appends continue in a new segment: nothing
/// acknowledged is glued to the torn bytes.
async fn failed_truncation(later: bool) {
    let mut rig = Rig::new();
    if later {
        rig.append_ok(2).await;
    }
    rig.arm(Fault::NoSpaceTruncateFails);
    assert_eq!(rig.append_refused(3).await, FailureCause::NoSpace);
    assert!(rig.open_segment().is_none(), "the segment was not closed");
    let closed = rig.files();
    assert_eq!(closed.len(), 1);
    let acknowledged = rig.acked_bytes();
    assert!(
        closed[0]
            .0
            .ends_with(&format!("-upto{}.jsonl", acknowledged.len())),
        "{}",
        closed[0].0
    );
    assert!(closed[0].1.starts_with(&acknowledged));
    assert!(
        closed[0].1.len() > acknowledged.len(),
        "no torn bytes to skip"
    );
    for _ in 0..3 {
        rig.append_ok(2).await;
    }
    rig.assert_replay_is_exactly_the_acknowledged().await;
}

#[tokio::test]
async fn a_failed_truncation_on_the_first_group_closes_the_segment() {
    failed_truncation(false).await;
}

#[tokio::test]
async fn a_failed_truncation_on_a_later_group_closes_the_segment() {
    failed_truncation(true).await;
}

#[tokio::test]
async fn enospc_creating_a_segment_refuses_the_group_and_the_next_one_creates_it() {
    let mut rig = Rig::new();
    rig.arm(Fault::CreateNoSpace);
    assert_eq!(rig.append_refused(2).await, FailureCause::NoSpace);
    assert!(rig.files().is_empty());
    rig.append_ok(2).await;
    rig.assert_replay_is_exactly_the_acknowledged().await;
}

/// Faults of every kind at random points between appends and rotations,
/// checked against the model: replay yields the acknowledged lines, once.
#[tokio::test]
async fn random_faults_never_lose_or_merge_an_acknowledged_line() {
    let faults = [
        Fault::ShortWrite,
        Fault::NoSpace,
        Fault::Fsync,
        Fault::NoSpaceTruncateFails,
        Fault::CreateNoSpace,
    ];
    for seed in 0..8u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut rig = Rig::new();
        for _ in 0..60 {
            match rng.random_range(0..10) {
                0..=5 => rig.append_ok(rng.random_range(1..4)).await,
                6 => rig.spool.rotate().await.unwrap(),
                _ => {
                    let fault = faults[rng.random_range(0..faults.len())];
                    if fault == Fault::CreateNoSpace {
                        // Only a group that starts a segment creates one.
                        rig.spool.rotate().await.unwrap();
                    }
                    rig.arm(fault);
                    let cause = rig.append_refused(rng.random_range(1..4)).await;
                    assert_eq!(cause, fault.cause(), "seed {seed}");
                }
            }
        }
        rig.assert_replay_is_exactly_the_acknowledged().await;
    }
}

#[tokio::test]
async fn a_second_spool_on_the_same_directory_is_refused_until_the_first_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (first, writer) = Spool::open(dir.path(), 1 << 20).unwrap();
    let err = match Spool::open(dir.path(), 1 << 20) {
        Ok(_) => panic!("two spools opened one directory"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(err.contains("SPOOL_DIR"), "{err}");
    // The writer holds the lock until it ends.
    drop(first);
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let (_again, _w) = Spool::open(dir.path(), 1 << 20).unwrap();
}
