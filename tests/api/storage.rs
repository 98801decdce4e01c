//! The raw events table is partitioned by event day: maintenance makes the
//! day partitions ahead of time, late events land in the default partition
//! (no input creates a table), dedup holds across days, and retention drops
//! old days while the rollups (and every figure derived from them) stay.

use std::time::Duration;

use adtrack::app::Role;
use chrono::{SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, start};

fn days_ago(days: i64) -> String {
    (Utc::now() - chrono::Duration::days(days)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn partition_of(days: i64) -> String {
    let day = (Utc::now() - chrono::Duration::days(days)).date_naive();
    format!("events_p{}", day.format("%Y%m%d"))
}

async fn rows_per_partition(pool: &sqlx::PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT tableoid::regclass::text, count(*) FROM events GROUP BY 1 ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn rollup_total(pool: &sqlx::PgPool, ad: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(events), 0)::bigint FROM rollup_minute WHERE ad_id = $1",
    )
    .bind(ad)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn late_events_land_in_the_default_partition_and_create_no_table() {
    let app = spawn_app().await;
    let ad = "ad-partitions";
    // Days without a partition: their events go to the default partition.
    for (days, n) in [(40, 2), (12, 3), (0, 1)] {
        for _ in 0..n {
            app.click(json!({ "adId": ad, "timestamp": days_ago(days) }))
                .await;
        }
    }
    app.wait_drained().await;

    let rows = rows_per_partition(&app.pool).await;
    assert_eq!(
        rows,
        vec![("events_default".to_string(), 5), (partition_of(0), 1)]
    );
    // Making a day partition later moves that day's rows out of the default.
    let day = (Utc::now() - chrono::Duration::days(12)).date_naive();
    assert_eq!(
        adtrack::store::ensure_partitions(&app.pool, &[day])
            .await
            .unwrap(),
        1
    );
    let rows = rows_per_partition(&app.pool).await;
    assert_eq!(
        rows,
        vec![
            ("events_default".to_string(), 2),
            (partition_of(12), 3),
            (partition_of(0), 1)
        ]
    );
    assert_eq!(rollup_total(&app.pool, ad).await, 6);
    assert_eq!(app.analytics(ad, "all").await["totalClicks"], 6);
    assert_eq!(app.metric("adtrack_dead_lettered_total").await, 0.0);
    assert_eq!(app.metric("adtrack_retried_total").await, 0.0);
    app.stop().await;
}

/// Events on 3,000 distinct days (what once made 3,000 partitions and
/// exhausted the server's lock table): the partition count stays put, and
/// listings, analytics and reconcile keep working.
#[tokio::test]
async fn events_on_3000_distinct_days_create_no_partitions() {
    let app = spawn_app().await;
    let ad = "ad-many-days";
    let first = chrono::DateTime::parse_from_rfc3339("2000-01-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    for batch in 0..3 {
        let events: Vec<_> = (0..1000)
            .map(|i| {
                let at = first + chrono::Duration::days(3 * (batch * 1000 + i));
                json!({"type": "click", "adId": ad,
                       "timestamp": at.to_rfc3339_opts(SecondsFormat::Secs, true)})
            })
            .collect();
        let (status, body) = app
            .post("/events/batch", &json!({ "events": events }))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["accepted"], 1000, "{body}");
    }
    app.wait_drained().await;
    assert_eq!(app.stored().await, 3000);
    let partitions = adtrack::store::count_partitions(&app.pool).await.unwrap();
    // Today, yesterday's migration-made day, the days ahead, the default.
    assert!(partitions <= 5, "{partitions} partitions");
    let (status, body) = app.get("/events?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 1000);
    let mut conn = app.redis.clone();
    adtrack::counters::reconcile(&app.pool, &mut conn, &app.keys, Utc::now())
        .await
        .expect("reconcile works");
    assert_eq!(app.analytics(ad, "all").await["totalClicks"], 3000);
    app.stop().await;
}

#[tokio::test]
async fn an_event_id_sent_again_with_another_day_is_still_one_event() {
    let app = spawn_app().await;
    let ad = "ad-dedup-days";
    let id = Uuid::new_v4();
    app.click(json!({ "eventId": id, "adId": ad, "timestamp": days_ago(3) }))
        .await;
    app.wait_drained().await;
    // The same idempotency key, another day: a retry whose body changed.
    app.click(json!({ "eventId": id, "adId": ad, "timestamp": days_ago(1) }))
        .await;
    app.click(json!({ "eventId": id, "adId": ad })).await;
    app.wait_drained().await;

    assert_eq!(app.stored().await, 1);
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM event_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(keys, 1);
    assert_eq!(rollup_total(&app.pool, ad).await, 1);
    assert_eq!(app.analytics(ad, "all").await["totalClicks"], 1);
    assert_eq!(app.metric("adtrack_events_duplicate_total").await, 2.0);
    app.stop().await;
}

#[tokio::test]
async fn retention_drops_old_days_and_keeps_rollups_and_analytics() {
    let app = spawn_app().await;
    let ad = "ad-retention";
    // Day 30 has a partition of its own (dropped whole); day 10 has none
    // (its row is deleted from the default partition).
    let day30 = (Utc::now() - chrono::Duration::days(30)).date_naive();
    adtrack::store::ensure_partitions(&app.pool, &[day30])
        .await
        .unwrap();
    for days in [30, 30, 10, 1, 0] {
        app.click(json!({ "adId": ad, "timestamp": days_ago(days) }))
            .await;
    }
    app.wait_drained().await;
    assert_eq!(app.stored().await, 5);
    let before = app.analytics(ad, "all").await;
    // Another tenant's recent event that happens to carry the same eventId
    // as an expired one: its key must outlive the purge of the other.
    let shared_id: Uuid =
        sqlx::query_scalar("SELECT event_id FROM event_keys ORDER BY event_time LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO event_keys (tenant_id, event_id, event_time) VALUES ('other', $1, now())",
    )
    .bind(shared_id)
    .execute(&app.pool)
    .await
    .unwrap();

    // A second process over the same database with a 7-day retention: its
    // maintenance runs at start.
    let mut settings = app.settings.clone();
    settings.event_retention = Some(Duration::from_secs(7 * 86_400));
    settings.spool_dir = settings.spool_dir.join("second");
    let second = start(settings, Role::Worker).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while second
        .metric("adtrack_event_partitions_dropped_total")
        .await
        < 1.0
        || second.metric("adtrack_events_purged_total").await < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let rows = rows_per_partition(&app.pool).await;
    let names: Vec<&str> = rows.iter().map(|(p, _)| p.as_str()).collect();
    assert!(!names.contains(&partition_of(30).as_str()), "{rows:?}");
    assert!(!names.contains(&partition_of(10).as_str()), "{rows:?}");
    assert_eq!(app.stored().await, 2, "{rows:?}");
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM event_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(keys, 3, "the dropped days' keys are purged");
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_keys WHERE tenant_id = 'other' AND event_id = $1",
    )
    .bind(shared_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        kept, 1,
        "a purge takes only expired keys, not another tenant's with the same id"
    );
    assert_eq!(second.metric("adtrack_event_keys_purged_total").await, 3.0);
    // Rollups are the long-term record: untouched.
    assert_eq!(rollup_total(&app.pool, ad).await, 5);
    assert_eq!(app.analytics(ad, "all").await, before);
    assert_eq!(
        second
            .metric("adtrack_partition_maintenance_errors_total")
            .await,
        0.0
    );
    assert!(second.metric("adtrack_event_partitions").await >= 4.0);
    second.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn timestamps_older_than_the_retention_are_refused() {
    let app = spawn_app_with(|s| s.event_retention = Some(Duration::from_secs(7 * 86_400))).await;
    let (status, body) = app
        .post(
            "/ads/click",
            &json!({ "adId": "ad-old", "timestamp": days_ago(9) }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_field");
    assert!(
        body["message"].as_str().unwrap().contains("timestamp"),
        "{body}"
    );
    // Six days back is still kept, so still accepted.
    app.click(json!({ "adId": "ad-old", "timestamp": days_ago(6) }))
        .await;
    app.wait_drained().await;
    assert_eq!(app.stored().await, 1);
    assert_eq!(app.analytics("ad-old", "all").await["totalClicks"], 1);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_creators_of_the_same_partitions_all_succeed() {
    let app = spawn_app().await;
    let days: Vec<chrono::NaiveDate> = (100..106)
        .map(|d| (Utc::now() - chrono::Duration::days(d)).date_naive())
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pool = app.pool.clone();
        let days = days.clone();
        tasks.push(tokio::spawn(async move {
            adtrack::store::ensure_partitions(&pool, &days).await
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += t.await.unwrap().expect("creating partitions never fails");
    }
    assert_eq!(created, 6, "each day is created exactly once");
    app.stop().await;
}

/// `MAX_EVENT_AGE` refuses older event times with a 400 naming
/// `timestamp`; younger ones, even without a partition of their day, are
/// stored.
#[tokio::test]
async fn max_event_age_refuses_older_timestamps() {
    let app = spawn_app_with(|s| s.max_event_age = Some(Duration::from_secs(30 * 86_400))).await;
    let (status, body) = app
        .post(
            "/ads/click",
            &json!({ "adId": "ad-age", "timestamp": days_ago(31) }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_field");
    assert!(
        body["message"].as_str().unwrap().contains("timestamp"),
        "{body}"
    );
    app.click(json!({ "adId": "ad-age", "timestamp": days_ago(29) }))
        .await;
    app.wait_drained().await;
    assert_eq!(app.stored().await, 1);
    app.stop().await;
}
