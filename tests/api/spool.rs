//! The spool against the real binary (SPEC invariant 6): a disk that fills
//! up mid-line while Redis is down, and one process per `SPOOL_DIR`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// Every click posted to the real binary, by how it was answered.
#[derive(Default)]
struct Tally {
    outcome: Outcome,
    refused: HashSet<Uuid>,
}

impl Tally {
    /// Posts one click and records its answer; any status other than 202
    /// and 503 fails the test, and a 503 must carry `Retry-After` and the
    /// SPEC's JSON error.
    async fn click(&mut self, client: &reqwest::Client, base: &str, ad: &str) -> StatusCode {
        let id = Uuid::now_v7();
        self.outcome.sent.insert(id);
        let n = self.outcome.sent.len();
        let res = client
            .post(format!("{base}/ads/click"))
            .json(&json!({
                "adId": ad,
                "eventId": id,
                "ipAddress": format!("10.7.{}.{}", n / 250 % 250, n % 250),
            }))
            .send()
            .await
            .expect("the server answers");
        let status = res.status();
        match status {
            StatusCode::ACCEPTED => {
                self.outcome.accepted.insert(id);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(
                    res.headers().contains_key("retry-after"),
                    "a 503 without Retry-After"
                );
                let body: Value = res.json().await.expect("a JSON error body");
                assert_eq!(body["error"], "unavailable", "{body}");
                assert!(body["message"].is_string(), "{body}");
                self.refused.insert(id);
                self.outcome.refused += 1;
            }
            other => panic!(
                "click {n} answered {other}: {}",
                res.text().await.unwrap_or_default()
            ),
        }
        status
    }
}

/// One sample of a Prometheus text exposition, by its full name with
/// labels (e.g. `adtrack_x_total{cause="io"}`); 0 when absent.
async fn metric(base: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(" ")?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

/// The segment being written, if any: its length.
fn open_segment_len(dir: &std::path::Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "open"))
        .map(|p| std::fs::metadata(p).unwrap().len())
}

/// Redis is killed, so ingest spools to a 256 KiB tmpfs that a filler file
/// mostly takes. Clicks are posted until an append fails part-way through a
/// line (ENOSPC after a short write); the next ones keep failing while the
/// disk is full. Then the filler is deleted and ingest resumes with no
/// restart, Redis comes back, the spool drains, and every 202 is counted
/// exactly once in Postgres and in `/ads/analytics` while no 503 is.
#[tokio::test]
async fn a_disk_full_mid_line_answers_503_and_every_acknowledged_click_counts_once() {
    let mut redis = private_redis().await;
    let disk = Tmpfs::mount(256 * 1024);
    // 50 of the 64 pages: the spool has 56 KiB, a few hundred clicks.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; 200 * 1024]).unwrap();
    let mut settings = test_settings();
    settings.port = free_port();
    settings.redis_url = redis.url();
    settings.spool_dir = disk.path().join("spool");
    let b = Backends::connect(&settings).await;
    let server = Binary::start(&settings).await;
    let base = server.address.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let ad = "ad-disk-full";
    let mut tally = Tally::default();

    assert_eq!(
        tally.click(&client, &base, ad).await,
        StatusCode::ACCEPTED,
        "a click through Redis"
    );
    redis.kill();

    // Into the spool until the disk refuses an append; `len` is what the
    // acknowledged clicks take.
    let mut len = 0;
    loop {
        assert!(
            tally.outcome.sent.len() < 5_000,
            "the spool never filled the disk"
        );
        if tally.click(&client, &base, ad).await == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        len = open_segment_len(&settings.spool_dir).expect("an open segment");
    }
    let spooled = tally.outcome.accepted.len() - 1;
    assert!(spooled > 10, "only {spooled} clicks were spooled");
    // tmpfs hands out whole pages and the disk had none left: a segment
    // that did not end on a page boundary had room for part of the refused
    // line, so its write was torn mid-line.
    assert_ne!(len % 4096, 0, "the refused append was not torn mid-line");
    assert_eq!(
        open_segment_len(&settings.spool_dir),
        Some(len),
        "the refused append left bytes behind"
    );
    for _ in 0..5 {
        assert_eq!(
            tally.click(&client, &base, ad).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "the disk is still full"
        );
        assert_eq!(
            open_segment_len(&settings.spool_dir),
            Some(len),
            "a refused append left bytes behind"
        );
    }

    // Room again: appends resume by themselves, after the acknowledged
    // bytes and nothing else.
    std::fs::remove_file(&filler).unwrap();
    for _ in 0..100 {
        assert_eq!(
            tally.click(&client, &base, ad).await,
            StatusCode::ACCEPTED,
            "the spool did not resume once the disk had room"
        );
    }
    let refused = tally.refused.len() as f64;
    assert_eq!(
        metric(
            &base,
            r#"adtrack_spool_append_failures_total{cause="no_space"}"#
        )
        .await,
        refused
    );

    redis.restart().await;
    // Replay closes and deletes every segment: the spool directory empties.
    b.wait_drained().await;
    let stored = b.stored_ids().await;
    assert_eq!(
        stored.len(),
        tally.outcome.accepted.len(),
        "stored events differ from the acknowledged clicks"
    );
    assert!(
        stored.is_disjoint(&tally.refused),
        "a refused click was stored"
    );
    assert_exactly_once(&b, ad, &tally.outcome, &base).await;
    assert_eq!(
        metric(&base, "adtrack_spool_skipped_lines_total{kind=\"corrupt\"}").await,
        0.0
    );
    assert_eq!(
        metric(&base, "adtrack_spool_skipped_lines_total{kind=\"torn\"}").await,
        0.0
    );
    eprintln!(
        "[disk full] {spooled} clicks spooled before the disk filled, {} refused, {} acknowledged in all",
        tally.refused.len(),
        tally.outcome.accepted.len()
    );
    drop(server);
    b.cleanup().await;
    drop(disk);
}

/// A second `adtrack serve` on a `SPOOL_DIR` in use exits non-zero naming
/// the directory; once the first is killed with -9 (no clean-up at all), a
/// new process starts on it.
#[tokio::test]
async fn a_second_process_on_one_spool_dir_is_refused_until_the_first_dies() {
    let mut settings = test_settings();
    settings.port = free_port();
    let b = Backends::connect(&settings).await;
    let mut first = Binary::start(&settings).await;

    let mut second_settings = settings.clone();
    second_settings.port = free_port();
    // Killed on drop, should it not exit by itself.
    let mut second = Binary {
        child: std::process::Command::new(env!("CARGO_BIN_EXE_adtrack"))
            .arg("serve")
            .envs(env_of(&second_settings))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start a second adtrack"),
        address: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the second process on one SPOOL_DIR is still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        !status.success(),
        "exit status {status:?}; stderr: {stderr}"
    );
    let dir = settings.spool_dir.display().to_string();
    assert!(
        stderr.contains(&dir),
        "stderr does not name {dir}: {stderr}"
    );
    // The first process was not disturbed.
    let res = reqwest::get(format!("{}/health", first.address))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    first.kill9();
    let mut third_settings = settings.clone();
    third_settings.port = free_port();
    let third = Binary::start(&third_settings).await;
    let res = reqwest::Client::new()
        .post(format!("{}/ads/click", third.address))
        .json(&json!({"adId": "ad-lock"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    drop(third);
    b.cleanup().await;
}
