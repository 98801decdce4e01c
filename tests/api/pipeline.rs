//! The worker pipeline: dead workers' items come back, interrupted counter
//! updates are applied exactly once, health and metrics, the CLI.

use std::time::Duration;

use adtrack::counters::{Applied, CountedEvent, Counters};
use adtrack::domain::{parse_event, ParseContext};
use adtrack::exactly_once;
use chrono::Utc;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, wait_until};

fn envelope(body: serde_json::Value) -> adtrack::domain::Event {
    parse_event(body.to_string().as_bytes(), &ParseContext::new(Utc::now())).unwrap()
}

#[tokio::test]
async fn items_of_a_worker_whose_heartbeat_expired_return_to_the_queue() {
    let app = spawn_app().await;
    let mut conn = app.redis.clone();
    // A worker that took three events and died: registered, holding items,
    // no heartbeat. One of the events was already stored before it died.
    let events: Vec<_> = (0..3)
        .map(|i| {
            envelope(
                json!({"type": "click", "adId": "ad-reaped", "ipAddress": format!("10.9.0.{i}")}),
            )
        })
        .collect();
    let payloads: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let _: () = redis::cmd("SADD")
        .arg(app.keys.workers())
        .arg("dead-worker")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(app.keys.processing("dead-worker"))
        .arg(&payloads)
        .query_async(&mut conn)
        .await
        .unwrap();
    app.click(json!({"adId": "ad-reaped", "eventId": events[0].event_id, "ipAddress": "10.9.0.0"}))
        .await;

    app.wait_drained().await;
    let len: i64 = redis::cmd("LLEN")
        .arg(app.keys.processing("dead-worker"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 0);
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(app.keys.workers())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!members.contains(&"dead-worker".to_string()));
    assert_eq!(app.stored().await, 3);
    assert_eq!(app.analytics("ad-reaped", "all").await["totalClicks"], 3);
    assert!(app.metric("adtrack_requeued_items_total").await >= 3.0);
    app.stop().await;
}

#[tokio::test]
async fn a_live_workers_items_are_left_alone() {
    let app = spawn_app().await;
    let mut conn = app.redis.clone();
    let event = envelope(json!({"type": "click", "adId": "ad-held"}));
    let _: () = redis::cmd("SADD")
        .arg(app.keys.workers())
        .arg("busy-worker")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(app.keys.heartbeat("busy-worker"))
        .arg("{}")
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(app.keys.processing("busy-worker"))
        .arg(serde_json::to_string(&event).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    // Proof that the reaper looked at the busy worker: it returns the items
    // of a dead worker planted beside it, and each pass covers every
    // registered worker before the requeue metric moves. Two passes, each
    // after its own dead worker, so the busy worker's list survives several
    // reaper periods.
    let mut decoys = std::collections::HashSet::new();
    for pass in 1..=2 {
        let decoy = envelope(json!({"type": "click", "adId": "ad-decoy"}));
        decoys.insert(decoy.event_id);
        let dead = format!("dead-worker-{pass}");
        let _: () = redis::cmd("SADD")
            .arg(app.keys.workers())
            .arg(&dead)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("LPUSH")
            .arg(app.keys.processing(&dead))
            .arg(serde_json::to_string(&decoy).unwrap())
            .query_async(&mut conn)
            .await
            .unwrap();
        let app = &app;
        wait_until(
            &format!("reaper pass {pass} returns the dead worker's item"),
            Duration::from_secs(30),
            || async move { app.metric("adtrack_requeued_items_total").await >= pass as f64 },
        )
        .await;
    }
    let len: i64 = redis::cmd("LLEN")
        .arg(app.keys.processing("busy-worker"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 1);
    let app_ref = &app;
    wait_until(
        "the decoys are stored",
        Duration::from_secs(30),
        || async move { app_ref.stored().await >= 2 },
    )
    .await;
    // Only the decoys were stored, never the busy worker's event.
    let stored: std::collections::HashSet<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM events")
            .fetch_all(&app.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(stored, decoys);
    assert!(!stored.contains(&event.event_id));
    app.stop().await;
}

#[tokio::test]
async fn counters_of_a_batch_committed_before_a_crash_are_applied_once() {
    let app = spawn_app_with(|s| s.worker_count = 1).await;
    let counters = Counters::new(app.keys.clone());
    let mut conn = app.redis.clone();
    // A worker committed this batch to Postgres, then died before touching
    // the counters: the outbox row is all that remembers it.
    let events: Vec<_> = (0..4)
        .map(|i| envelope(json!({"type": "impression", "adId": "ad-outbox", "ipAddress": format!("10.8.0.{i}")})))
        .collect();
    let refs: Vec<&_> = events.iter().collect();
    let batch = uuid::Uuid::now_v7();
    let inserted = adtrack::store::insert_batch(&app.pool, &refs, batch, &[])
        .await
        .unwrap();
    assert_eq!(inserted.len(), 4);
    // The window counters move only when the batch is applied; the
    // all-time figure is read from Postgres, which has the batch already,
    // and must not count it a second time when the batch is applied.
    assert_eq!(app.analytics("ad-outbox", "1h").await["impressions"], 0);
    assert_eq!(app.analytics("ad-outbox", "all").await["impressions"], 4);

    // Re-processing the same items (the reaper put them back) adds nothing.
    let again = adtrack::store::insert_batch(&app.pool, &refs, uuid::Uuid::now_v7(), &[])
        .await
        .unwrap();
    assert!(again.is_empty());

    let applied = adtrack::worker::recover_outbox(&app.pool, &mut conn, &counters, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(applied, 1);
    assert_eq!(app.analytics("ad-outbox", "1h").await["impressions"], 4);
    assert_eq!(app.analytics("ad-outbox", "all").await["impressions"], 4);
    let applied = adtrack::worker::recover_outbox(&app.pool, &mut conn, &counters, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(applied, 0);
    assert_eq!(app.analytics("ad-outbox", "1h").await["impressions"], 4);
    assert_eq!(app.analytics("ad-outbox", "all").await["impressions"], 4);
    assert_eq!(app.outbox_len().await, 0);
    app.stop().await;
}

/// A worker that committed a batch and stalled before its APPLY ran may
/// still send that APPLY after recovery or reconcile took the batch's
/// outbox row: the marker they leave to its TTL answers `seen`, and the
/// batch is counted once.
#[tokio::test]
async fn an_apply_sent_after_recovery_or_reconcile_took_its_batch_counts_nothing() {
    let app = spawn_app_with(|s| s.worker_count = 1).await;
    let counters = Counters::new(app.keys.clone());
    let mut conn = app.redis.clone();
    for (round, ad) in ["ad-late-recovered", "ad-late-reconciled"]
        .into_iter()
        .enumerate()
    {
        let events: Vec<_> = (0..3)
            .map(|i| {
                envelope(
                    json!({"type": "click", "adId": ad, "ipAddress": format!("10.9.{round}.{i}")}),
                )
            })
            .collect();
        let refs: Vec<&_> = events.iter().collect();
        let batch = uuid::Uuid::now_v7();
        exactly_once::commit(&app.pool, &refs, batch, &[])
            .await
            .unwrap();
        if round == 0 {
            let recovered =
                adtrack::worker::recover_outbox(&app.pool, &mut conn, &counters, Duration::ZERO)
                    .await
                    .unwrap();
            assert_eq!(recovered, 1);
        } else {
            adtrack::counters::reconcile(&app.pool, &mut conn, &app.keys, Utc::now())
                .await
                .unwrap();
        }
        assert_eq!(app.outbox_len().await, 0);
        assert_eq!(app.analytics(ad, "1h").await["totalClicks"], 3, "{ad}");

        let views: Vec<CountedEvent> = events.iter().map(CountedEvent::from).collect();
        let counted: Vec<_> = views.iter().map(|c| c.view()).collect();
        let late = exactly_once::apply_committed(&mut conn, &counters, &batch, &counted, None)
            .await
            .unwrap();
        assert_eq!(late, Applied::AlreadyApplied, "{ad}");
        assert_eq!(app.analytics(ad, "1h").await["totalClicks"], 3, "{ad}");
    }
    app.stop().await;
}

/// The outbox row of a batch the worker counted goes with its next batch
/// statement or, when the queue is empty, on its own: well before
/// recovery's grace, and without recovery.
#[tokio::test]
async fn a_worker_deletes_the_outbox_rows_of_the_batches_it_counted() {
    let app = spawn_app_with(|s| s.worker_count = 1).await;
    for i in 0..3 {
        let body =
            json!({"type": "click", "adId": "ad-settle", "ipAddress": format!("10.9.9.{i}")});
        let (status, _) = app.post("/events", &body).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    wait_until(
        "the clicks are counted",
        Duration::from_secs(10),
        || async { app.analytics("ad-settle", "1h").await["totalClicks"] == 3 },
    )
    .await;
    wait_until(
        "the counted batch's outbox row is gone",
        Duration::from_secs(5),
        || async { app.outbox_len().await == 0 },
    )
    .await;
    assert_eq!(
        app.metric("adtrack_counter_outbox_recovered_total").await,
        0.0,
        "recovery, not the worker, deleted the row"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_marker_makes_a_second_apply_a_no_op() {
    let app = spawn_app().await;
    let counters = Counters::new(app.keys.clone());
    let mut conn = app.redis.clone();
    let event = envelope(json!({"type": "click", "adId": "ad-marker", "ipAddress": "10.7.0.1"}));
    let counted = CountedEvent::from(&event);
    let ops = counters.ops_for(&[counted.view()], Utc::now());
    let batch = uuid::Uuid::now_v7();
    assert_eq!(
        exactly_once::apply_batch(&mut conn, &counters, &batch, &ops, None)
            .await
            .unwrap(),
        Applied::Applied
    );
    assert_eq!(
        exactly_once::apply_batch(&mut conn, &counters, &batch, &ops, None)
            .await
            .unwrap(),
        Applied::AlreadyApplied
    );
    assert_eq!(app.analytics("ad-marker", "1h").await["totalClicks"], 1);
    // While reconcile holds the pause flag, nothing is applied.
    let _: () = redis::cmd("SET")
        .arg(app.keys.counters_paused())
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let other = uuid::Uuid::now_v7();
    assert_eq!(
        exactly_once::apply_batch(&mut conn, &counters, &other, &ops, None)
            .await
            .unwrap(),
        Applied::Paused
    );
    assert_eq!(app.analytics("ad-marker", "1h").await["totalClicks"], 1);
    app.stop().await;
}

#[tokio::test]
async fn health_ready_and_metrics_answer() {
    let app = spawn_app().await;
    let (status, body) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"status": "ready", "postgres": "ok", "redis": "ok"})
    );

    app.click(json!({"adId": "ad-metrics"})).await;
    app.wait_drained().await;
    let text = app.metrics_text().await;
    for name in [
        "adtrack_http_request_duration_seconds_bucket{method=\"POST\",route=\"/ads/click\",status=\"202\"",
        "adtrack_events_enqueued_total{type=\"click\"} 1",
        "adtrack_events_processed_total{type=\"click\"} 1",
        "adtrack_events_duplicate_total",
        "adtrack_queue_depth",
        "adtrack_processing_depth",
        "adtrack_batch_size_bucket",
        "adtrack_batch_duration_seconds_bucket",
        "adtrack_ingest_to_commit_seconds_bucket",
        "adtrack_push_group_size_bucket",
    ] {
        assert!(text.contains(name), "metrics lack {name}");
    }
    app.stop().await;
}

#[tokio::test]
async fn ready_reports_a_dead_redis() {
    // Point the app's reads at a port where nothing listens after start-up
    // is impossible with one URL, so check the body shape via a second app
    // whose Redis is stopped: start a private redis-server and kill it.
    let mut redis = crate::helpers::private_redis().await;
    let url = redis.url();
    let app = spawn_app_with(|s| s.redis_url = url.clone()).await;
    assert_eq!(app.get("/ready").await.0, StatusCode::OK);
    redis.kill();
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"status": "degraded", "postgres": "ok", "redis": "down"})
    );
    let (status, body) = app.get("/ads/analytics?adId=x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "unavailable");
    app.stop().await;
}

#[tokio::test]
async fn the_cli_helps_migrates_and_reconciles() {
    let bin = env!("CARGO_BIN_EXE_adtrack");
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for word in ["serve", "migrate", "reconcile"] {
        assert!(text.contains(word), "{text}");
    }
    let serve_help = std::process::Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&serve_help.stdout).contains("--role"));

    let settings = crate::helpers::test_settings();
    let migrate = std::process::Command::new(bin)
        .arg("migrate")
        .env("DATABASE_URL", &settings.database_url)
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let reconcile = std::process::Command::new(bin)
        .arg("reconcile")
        .env("DATABASE_URL", &settings.database_url)
        .env("REDIS_PREFIX", &settings.redis_prefix)
        .output()
        .unwrap();
    assert!(
        reconcile.status.success(),
        "{}",
        String::from_utf8_lossy(&reconcile.stderr)
    );
    assert!(String::from_utf8_lossy(&reconcile.stdout).contains("keysWritten"));

    let bad = std::process::Command::new(bin)
        .arg("migrate")
        .env("WORKER_COUNT", "lots")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("WORKER_COUNT"));

    let pool = sqlx::PgPool::connect(&settings.database_url).await.unwrap();
    let redis = adtrack::app::redis_connection(&settings.redis_url, Duration::from_secs(5))
        .await
        .unwrap();
    crate::helpers::cleanup(&settings, &pool, &redis).await;
}

/// The README's configuration table and `adtrack --help` name the same
/// variables (`adtrack::config::VARIABLES`, which a unit test holds to what
/// the settings read).
#[test]
fn the_readme_lists_every_variable_and_no_other() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Configuration")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Configuration section");
    let mut listed = std::collections::BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap_or_default();
        for name in first.split('`').skip(1).step_by(2) {
            listed.insert(name.to_owned());
        }
    }
    let known: std::collections::BTreeSet<String> = adtrack::config::VARIABLES
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(listed, known);
}

/// A process that stops cleanly takes its workers out of `{P}:workers`, so
/// the set lists only live workers.
#[tokio::test]
async fn workers_that_stop_cleanly_are_no_longer_listed() {
    let mut app = spawn_app().await;
    app.click(json!({"adId": "ad-retire"})).await;
    app.wait_drained().await;
    let (conn, key) = (app.redis.clone(), app.keys.workers());
    let workers = || {
        let (mut conn, key) = (conn.clone(), key.clone());
        async move {
            redis::cmd("SMEMBERS")
                .arg(key)
                .query_async::<Vec<String>>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert_eq!(workers().await.len(), app.settings.worker_count);
    app.halt().await;
    assert_eq!(workers().await, Vec::<String>::new());
    crate::helpers::cleanup(&app.settings, &app.pool, &app.redis).await;
}

/// The rollups a batch writes equal the rows it stored, whether the
/// worker's own grouping served (every event of the batch new) or the
/// statement grouped what it stored (some events already known): per
/// tenant, kind, minute, hour, dimension and amount, error code and
/// experiment, with invalid traffic in none of them.
#[tokio::test]
async fn the_rollups_equal_the_stored_rows_whether_or_not_every_event_was_new() {
    let app = spawn_app().await;
    let kinds = [
        "impression",
        "click",
        "conversion",
        "play",
        "error",
        "complete",
    ];
    let now = Utc::now();
    let events: Vec<_> = (0..90)
        .map(|i: i64| {
            let at = now - chrono::Duration::seconds(i * 53);
            let kind = kinds[i as usize % kinds.len()];
            let mut body = json!({
                "type": kind,
                "adId": format!("ad-roll-{}", i % 3),
                "timestamp": at.to_rfc3339(),
                "ipAddress": format!("10.7.0.{i}"),
            });
            // Plays name their campaign.
            if i % 2 == 0 || kind == "play" {
                body["campaignId"] = json!(format!("camp-{}", i % 4));
            }
            if i % 5 == 0 {
                body["screenId"] = json!("screen-1");
            }
            if kind == "conversion" {
                body["amount"] = json!(i * 1000 + 7);
            }
            if kind == "error" && i % 4 != 0 {
                body["errorCode"] = json!(400 + i % 3);
            }
            if i % 4 == 0 {
                body["experimentId"] = json!("exp-roll");
                body["variant"] = json!(if i % 8 == 0 { "A" } else { "B" });
                body["userId"] = json!(format!("user-{}", i % 6));
            }
            let mut event = envelope(body);
            if i % 3 == 0 {
                event.tenant_id = "tenant-roll".into();
            }
            if i % 7 == 0 {
                event.invalid = Some(adtrack::domain::InvalidReason::BotUserAgent);
            }
            event
        })
        .collect();
    let refs: Vec<&_> = events.iter().collect();
    // Every event new, then a batch that overlaps it by 20 events.
    let first = adtrack::store::insert_batch(&app.pool, &refs[..60], uuid::Uuid::now_v7(), &[])
        .await
        .unwrap();
    assert_eq!(first.len(), 60);
    let second = adtrack::store::insert_batch(&app.pool, &refs[40..], uuid::Uuid::now_v7(), &[])
        .await
        .unwrap();
    assert_eq!(second.len(), 30);

    let pairs = [
        (
            "SELECT tenant_id, bucket::text, kind, ad_id, campaign_id, screen_id, events, amount
             FROM rollup_minute",
            "SELECT tenant_id, date_trunc('minute', event_time, 'UTC')::text, kind, ad_id,
                    coalesce(campaign_id, ''), coalesce(screen_id, ''), count(*),
                    coalesce(sum(amount), 0)::int8
             FROM events WHERE invalid_reason IS NULL GROUP BY 1, 2, 3, 4, 5, 6",
        ),
        (
            "SELECT tenant_id, bucket::text, kind, ad_id, campaign_id, '', events, amount
             FROM rollup_hour",
            "SELECT tenant_id, date_trunc('hour', event_time, 'UTC')::text, kind, ad_id,
                    coalesce(campaign_id, ''), '', count(*), coalesce(sum(amount), 0)::int8
             FROM events WHERE invalid_reason IS NULL GROUP BY 1, 2, 3, 4, 5",
        ),
        (
            "SELECT tenant_id, bucket::text, error_code::text, ad_id, '', '', events, 0::int8
             FROM rollup_error_minute",
            "SELECT tenant_id, date_trunc('minute', event_time, 'UTC')::text,
                    coalesce(error_code, 0)::text, ad_id, '', '', count(*), 0::int8
             FROM events WHERE invalid_reason IS NULL AND kind = 'error' GROUP BY 1, 2, 3, 4",
        ),
        (
            "SELECT tenant_id, experiment_id, variant, '', '', '', events, conversions
             FROM rollup_experiment",
            "SELECT tenant_id, experiment_id, variant, '', '', '', count(*),
                    count(*) FILTER (WHERE kind = 'conversion')
             FROM events WHERE invalid_reason IS NULL AND experiment_id IS NOT NULL
             GROUP BY 1, 2, 3",
        ),
    ];
    type Row = (String, String, String, String, String, String, i64, i64);
    for (rolled, stored) in pairs {
        let mut a: Vec<Row> = sqlx::query_as(rolled).fetch_all(&app.pool).await.unwrap();
        let mut b: Vec<Row> = sqlx::query_as(stored).fetch_all(&app.pool).await.unwrap();
        a.sort();
        b.sort();
        assert!(b.len() > 1, "{stored} found too little to compare");
        assert_eq!(a, b, "{rolled}");
    }
    app.stop().await;
}
