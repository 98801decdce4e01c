//! Invariants 1 and 4–7 under real faults: Redis killed, Postgres cut by a
//! proxy, the binary killed with -9, poison events, the spool, shutdown.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

fn log_fault(name: &str, outcome: &Outcome, recovery: Duration) {
    eprintln!(
        "[{name}] sent {} accepted {} refused {} failed {}; recovered in {:.1} s",
        outcome.sent.len(),
        outcome.accepted.len(),
        outcome.refused,
        outcome.failed,
        recovery.as_secs_f64()
    );
}

#[tokio::test]
async fn redis_killed_mid_stream_loses_nothing_and_counts_once() {
    let mut redis = private_redis().await;
    let url = redis.url();
    let app = spawn_app_with(|s| s.redis_url = url.clone()).await;
    let b = Backends::connect(&app.settings).await;
    let base = app.address.clone();
    let sender = tokio::spawn({
        let base = base.clone();
        async move { send_clicks(&base, "ad-redis-kill", 3000, 8).await }
    });
    let b_ref = &b;
    wait_until(
        "events are stored",
        Duration::from_secs(30),
        || async move { b_ref.stored().await > 0 },
    )
    .await;
    redis.kill();
    // Down until ingestion has had to spool.
    let app_ref = &app;
    wait_until("ingestion spools", Duration::from_secs(30), || async move {
        app_ref.metric("adtrack_events_spooled_total").await > 0.0
    })
    .await;
    redis.restart().await;
    let restarted = Instant::now();
    let outcome = sender.await.unwrap();
    assert_eq!(
        outcome.refused + outcome.failed,
        0,
        "ingestion must keep answering 202"
    );
    b.wait_drained().await;
    let recovery = restarted.elapsed();
    assert!(
        app.metric("adtrack_events_spooled_total").await > 0.0,
        "the fault never reached ingestion"
    );
    assert_exactly_once(&b, "ad-redis-kill", &outcome, &base).await;
    assert_eq!(b.llen(&b.keys.dlq()).await, 0);
    log_fault("redis kill -9", &outcome, recovery);
    app.stop().await;
}

#[tokio::test]
async fn postgres_cut_mid_load_dead_letters_nothing() {
    let proxy = PgProxy::start().await;
    let mut settings = test_settings();
    let db = settings.database_url.rsplit('/').next().unwrap().to_owned();
    settings.database_url = proxy.url(&db);
    let app = start(settings, adtrack::app::Role::All).await;
    let direct = {
        let mut s = app.settings.clone();
        s.database_url = format!("{}/{db}", postgres_base());
        s
    };
    let b = Backends::connect(&direct).await;
    let base = app.address.clone();
    let sender = tokio::spawn({
        let base = base.clone();
        async move { send_clicks(&base, "ad-pg-cut", 3000, 8).await }
    });
    let b_ref = &b;
    wait_until(
        "events are stored",
        Duration::from_secs(30),
        || async move { b_ref.stored().await > 0 },
    )
    .await;
    proxy.cut();
    // Down until each worker has failed more rounds than MAX_ATTEMPTS: were
    // an outage counted as an attempt, its batch would be dead-lettered.
    let enough = (app.settings.worker_count * (app.settings.max_attempts as usize + 1)) as f64;
    let app_ref = &app;
    wait_until(
        "the workers fail more rounds than MAX_ATTEMPTS",
        Duration::from_secs(60),
        || async move { app_ref.metric("adtrack_outages_total").await >= enough },
    )
    .await;
    proxy.restore();
    let restored = Instant::now();
    let outcome = sender.await.unwrap();
    assert_eq!(
        outcome.refused + outcome.failed,
        0,
        "a Postgres outage must not affect ingestion"
    );
    b.wait_drained().await;
    let recovery = restored.elapsed();
    assert!(
        app.metric("adtrack_outages_total").await > 0.0,
        "the outage never reached the workers"
    );
    assert_eq!(
        b.llen(&b.keys.dlq()).await,
        0,
        "an outage dead-lettered events"
    );
    let mut conn = b.redis.clone();
    let retrying: i64 = redis::cmd("ZCARD")
        .arg(b.keys.retry())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(retrying, 0, "an outage counted as a failed attempt");
    assert_exactly_once(&b, "ad-pg-cut", &outcome, &base).await;
    log_fault("postgres cut", &outcome, recovery);
    b.pool.close().await;
    app.stop().await;
}

#[tokio::test]
async fn the_binary_killed_mid_batch_and_restarted_counts_exactly() {
    let mut settings = test_settings();
    settings.port = free_port();
    settings.heartbeat_ttl = Duration::from_secs(2);
    settings.batch_size = 200;
    let b = Backends::connect(&settings).await;
    let mut server = Binary::start(&settings).await;
    wait_for_epoch(&b.redis, &b.keys).await;
    let base = server.address.clone();
    let sender = tokio::spawn({
        let base = base.clone();
        async move { send_clicks(&base, "ad-kill9", 4000, 8).await }
    });
    // Workers stop in the statement that would delete the outbox rows of
    // the batches they counted, so at the kill a counted batch's row is
    // still there and the next batch's items, not committed, are in a
    // processing list.
    let stall = CountStall::start(&b.pool).await;
    let b_ref = &b;
    wait_until(
        "a counted batch's outbox row waits to be deleted",
        Duration::from_secs(30),
        || async move { b_ref.outbox_len().await > 0 && b_ref.processing_len().await > 0 },
    )
    .await;
    server.kill9();
    let held = b.processing_len().await;
    let pending = b.outbox_len().await;
    assert!(held > 0 && pending > 0, "held {held}, outbox {pending}");
    stall.release(&b.pool).await;
    let mut outcome = sender.await.unwrap();
    let killed = Instant::now();
    let server = Binary::start(&settings).await;
    let more = send_clicks(&server.address, "ad-kill9", 500, 4).await;
    outcome.accepted.extend(more.accepted);
    outcome.sent.extend(more.sent);
    b.wait_drained().await;
    let recovery = killed.elapsed();
    assert_exactly_once(&b, "ad-kill9", &outcome, &server.address).await;
    assert!(
        metric_at(&server.address, "adtrack_counter_outbox_recovered_total").await >= 1.0,
        "recovery did not settle the killed process's outbox rows"
    );
    eprintln!("[kill -9] the killed process held {held} items and {pending} outbox rows");
    log_fault("binary kill -9", &outcome, recovery);
    drop(server);
    b.cleanup().await;
}

#[tokio::test]
async fn poison_events_reach_the_dead_letter_list_and_the_rest_commit() {
    let app = spawn_app_with(|s| {
        s.simulate_failures = true;
        s.max_attempts = 3;
        s.worker_count = 1;
    })
    .await;
    // Postgres itself refuses one ad's events: a real data failure.
    sqlx::query(
        "ALTER TABLE events ADD CONSTRAINT refuse_ad CHECK (ad_id IS DISTINCT FROM 'ad-refused')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let mut items = Vec::new();
    let mut poison = std::collections::HashSet::new();
    for i in 0..30 {
        let id = uuid::Uuid::new_v4();
        let item = match i % 10 {
            3 => {
                poison.insert(id);
                json!({"type": "click", "adId": "ad-poison", "eventId": id, "simulateFailure": true})
            }
            7 => {
                poison.insert(id);
                json!({"type": "click", "adId": "ad-refused", "eventId": id})
            }
            _ => {
                json!({"type": "click", "adId": "ad-good", "eventId": id, "ipAddress": format!("10.3.0.{i}")})
            }
        };
        items.push(item);
    }
    let (status, body) = app.post("/events/batch", &json!({ "events": items })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // The good events commit at once, not after the poison's retries.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.analytics("ad-good", "all").await["totalClicks"] != 24 {
        assert!(
            Instant::now() < deadline,
            "good events were held up by poison ones"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut conn = app.redis.clone();
    loop {
        let dead: i64 = redis::cmd("LLEN")
            .arg(app.keys.dlq())
            .query_async(&mut conn)
            .await
            .unwrap();
        let retrying: i64 = redis::cmd("ZCARD")
            .arg(app.keys.retry())
            .query_async(&mut conn)
            .await
            .unwrap();
        if dead == 6 && retrying == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "dlq {dead}, retrying {retrying}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.wait_drained().await;
    let letters: Vec<String> = redis::cmd("LRANGE")
        .arg(app.keys.dlq())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut dead_ids = std::collections::HashSet::new();
    for l in &letters {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["attempts"], 3, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        assert!(chrono::DateTime::parse_from_rfc3339(v["failedAt"].as_str().unwrap()).is_ok());
        dead_ids.insert(uuid::Uuid::parse_str(v["event"]["eventId"].as_str().unwrap()).unwrap());
        if v["event"]["adId"] == "ad-refused" {
            assert!(v["error"].as_str().unwrap().contains("refuse_ad"), "{v}");
        }
    }
    assert_eq!(dead_ids, poison);
    assert_eq!(app.stored().await, 24);
    assert_eq!(app.analytics("ad-good", "all").await["totalClicks"], 24);
    assert_eq!(app.analytics("ad-poison", "all").await["totalClicks"], 0);
    app.stop().await;
}

fn envelope_line(ad: &str) -> (uuid::Uuid, String) {
    let e = adtrack::domain::parse_event(
        json!({"type": "click", "adId": ad}).to_string().as_bytes(),
        &adtrack::domain::ParseContext::new(chrono::Utc::now()),
    )
    .unwrap();
    (e.event_id, serde_json::to_string(&e).unwrap())
}

#[tokio::test]
async fn a_spool_left_by_a_crash_replays_and_skips_its_torn_last_line() {
    let mut settings = test_settings();
    std::fs::create_dir_all(&settings.spool_dir).unwrap();
    let mut text = String::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, line) = envelope_line("ad-spooled");
        ids.push(id);
        text.push_str(&line);
        text.push('\n');
    }
    // The same event twice (a replay that was interrupted) and a torn tail.
    text.push_str(&envelope_line("ad-spooled").1[..40]);
    std::fs::write(
        settings
            .spool_dir
            .join("spool-20260101T000000.000000-a.open"),
        &text,
    )
    .unwrap();
    let (_, dup) = envelope_line("ad-spooled");
    std::fs::write(
        settings
            .spool_dir
            .join("spool-20260101T000001.000000-b.jsonl"),
        format!("{dup}\n{dup}\n"),
    )
    .unwrap();
    settings.worker_count = 1;
    let app = start(settings, adtrack::app::Role::All).await;
    let b = Backends::connect(&app.settings).await;
    b.wait_drained().await;
    assert_eq!(app.stored().await, 4);
    assert_eq!(app.analytics("ad-spooled", "all").await["totalClicks"], 4);
    assert_eq!(app.metric("adtrack_spool_skipped_lines_total").await, 1.0);
    assert!(std::fs::read_dir(&app.settings.spool_dir)
        .unwrap()
        .next()
        .is_none());
    app.stop().await;
}

#[tokio::test]
async fn a_full_spool_answers_503_and_drops_nothing() {
    let mut redis = private_redis().await;
    let url = redis.url();
    let app = spawn_app_with(|s| {
        s.redis_url = url.clone();
        s.spool_max_bytes = 4096;
    })
    .await;
    let b = Backends::connect(&app.settings).await;
    redis.kill();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let id = uuid::Uuid::new_v4();
        let res = app
            .client
            .post(app.url("/ads/click"))
            .json(&json!({"adId": "ad-full", "eventId": id, "ipAddress": format!("10.4.0.{i}")}))
            .send()
            .await
            .unwrap();
        match res.status() {
            StatusCode::ACCEPTED => accepted.push(id),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(res.headers().contains_key("retry-after"));
                let body: Value = res.json().await.unwrap();
                assert_eq!(body["error"], "unavailable");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        !accepted.is_empty() && refused > 0,
        "accepted {} refused {refused}",
        accepted.len()
    );
    assert!(app.metric("adtrack_spool_full_total").await >= refused as f64);
    redis.restart().await;
    b.wait_drained().await;
    let stored = b.stored_ids().await;
    assert_eq!(stored, accepted.into_iter().collect());
    app.stop().await;
}

#[tokio::test]
async fn sigterm_under_load_finishes_in_flight_work_and_exits_0() {
    let mut settings = test_settings();
    settings.port = free_port();
    let b = Backends::connect(&settings).await;
    let server = Binary::start(&settings).await;
    let base = server.address.clone();
    let sender = tokio::spawn(async move { send_clicks(&base, "ad-sigterm", 6000, 8).await });
    // Under load (batches already flow), and a batch is in flight at the
    // signal: commits wait until just after it.
    let b_ref = &b;
    wait_until("batches flow", Duration::from_secs(30), || async move {
        b_ref.stored().await >= 500
    })
    .await;
    let stall = block_commits(&b.pool).await;
    wait_until(
        "workers hold a batch",
        Duration::from_secs(30),
        || async move { b_ref.processing_len().await > 0 },
    )
    .await;
    let signalled = Instant::now();
    server.signal("TERM");
    // The batch is still held when the server has stopped accepting and
    // shutdown reaches the workers; they must finish it before exiting.
    let health = format!("{}/health", server.address);
    let health = &health;
    wait_until(
        "the server stops accepting",
        Duration::from_secs(30),
        || async move { reqwest::get(health).await.is_err() },
    )
    .await;
    assert!(
        b.processing_len().await > 0,
        "no batch in flight at shutdown"
    );
    stall.rollback().await.unwrap();
    let mut server = server;
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(30),
            "no exit within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    let outcome = sender.await.unwrap();
    // Every worker finished and acknowledged its round before exiting.
    assert_eq!(b.processing_len().await, 0);
    // What was accepted is in Postgres or still safely queued; a new
    // process drains the rest.
    let next = {
        let mut s = settings.clone();
        s.port = free_port();
        Binary::start(&s).await
    };
    b.wait_drained().await;
    assert_exactly_once(&b, "ad-sigterm", &outcome, &next.address).await;
    eprintln!(
        "[sigterm] exited 0 in {:.2} s with {} events accepted",
        took.as_secs_f64(),
        outcome.accepted.len()
    );
    drop(next);
    b.cleanup().await;
}
