//! Redis that comes back empty mid-load: noticed, counted, reported by
//! `/admin/queue`, and the counters rebuilt from Postgres without anyone
//! running `adtrack reconcile`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const TOKEN: &str = "recovery-admin-token-0123";

async fn admin_queue(app: &TestApp) -> Value {
    let res = app
        .client
        .get(app.url("/admin/queue"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

fn reset_at(queue: &Value) -> Option<DateTime<Utc>> {
    let at = queue["redisResetAt"].as_str()?;
    Some(
        DateTime::parse_from_rfc3339(at)
            .unwrap_or_else(|e| panic!("redisResetAt {at:?}: {e}"))
            .with_timezone(&Utc),
    )
}

async fn impressions(app: &TestApp, ad: &str, n: usize) {
    for _ in 0..n {
        let (status, body) = app.post("/ads/impression", &json!({ "adId": ad })).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
}

/// The analytics figures of `ad` as Postgres holds them: clicks,
/// impressions, distinct click IPs and clicks per hour (the test's events
/// all fall inside every window).
#[derive(Debug, PartialEq)]
struct Figures {
    clicks: i64,
    impressions: i64,
    unique_clicks: i64,
    hourly: BTreeMap<i64, i64>,
}

async fn postgres_figures(b: &Backends, ad: &str) -> Figures {
    let (clicks, impressions, unique_clicks): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE kind = 'click'),
                count(*) FILTER (WHERE kind = 'impression'),
                count(DISTINCT ip) FILTER (WHERE kind = 'click')
         FROM events WHERE ad_id = $1",
    )
    .bind(ad)
    .fetch_one(&b.pool)
    .await
    .unwrap();
    let hourly: Vec<(DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT date_trunc('hour', event_time), count(*) FROM events
         WHERE ad_id = $1 AND kind = 'click' GROUP BY 1",
    )
    .bind(ad)
    .fetch_all(&b.pool)
    .await
    .unwrap();
    Figures {
        clicks,
        impressions,
        unique_clicks,
        hourly: hourly
            .into_iter()
            .map(|(h, n)| (h.timestamp(), n))
            .collect(),
    }
}

fn served_figures(a: &Value) -> Figures {
    let hourly = a["hourlyClicks"]
        .as_object()
        .unwrap_or_else(|| panic!("no hourlyClicks: {a}"))
        .iter()
        .map(|(h, n)| {
            let h = DateTime::parse_from_rfc3339(h).unwrap().timestamp();
            (h, n.as_i64().unwrap())
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    Figures {
        clicks: a["totalClicks"].as_i64().unwrap(),
        impressions: a["impressions"].as_i64().unwrap(),
        unique_clicks: a["uniqueClicks"].as_i64().unwrap(),
        hourly,
    }
}

/// Whether the counters agree with Postgres for `timeframe`: every count
/// exactly; distinct IPs within 3 % (a HyperLogLog's standard error is
/// 0.81 %; a counter that missed the rebuild is off by most of them).
async fn counters_match(app: &TestApp, b: &Backends, ad: &str, timeframe: &str) -> bool {
    let truth = postgres_figures(b, ad).await;
    let served = served_figures(&app.analytics(ad, timeframe).await);
    let uniques_close = (served.unique_clicks - truth.unique_clicks).abs() as f64
        <= 0.03 * truth.unique_clicks as f64;
    let matches = served.clicks == truth.clicks
        && served.impressions == truth.impressions
        && served.hourly == truth.hourly
        && uniques_close;
    if !matches {
        eprintln!("[redis empty] {timeframe}: counters {served:?}, Postgres {truth:?}");
    }
    matches
}

#[tokio::test]
async fn redis_restarted_empty_mid_load_is_noticed_and_the_counters_rebuilt() {
    let mut redis = private_redis_without_persistence().await;
    let url = redis.url();
    let app = spawn_app_with(|s| {
        s.redis_url = url.clone();
        s.admin_token = Some(TOKEN.into());
    })
    .await;
    let b = Backends::connect(&app.settings).await;
    restart_empty_mid_load(&app, &b, &mut redis).await;
    app.stop().await;
}

async fn restart_empty_mid_load(app: &TestApp, b: &Backends, redis: &mut PrivateRedis) {
    let ad = "ad-redis-empty";
    // The first start finds no epoch either: it is recorded, and counted
    // once, before any event exists.
    wait_until(
        "the first start records an epoch",
        Duration::from_secs(10),
        || async move { reset_at(&admin_queue(app).await).is_some() },
    )
    .await;
    let first_reset = reset_at(&admin_queue(app).await).unwrap();
    assert_eq!(app.metric("adtrack_redis_resets_total").await, 1.0);

    let sender = tokio::spawn({
        let base = app.address.clone();
        async move { send_clicks(&base, ad, 4000, 4).await }
    });
    impressions(app, ad, 20).await;
    // Counts exist before the reset: they are what an empty Redis forgets.
    wait_until(
        "clicks are stored and counted",
        Duration::from_secs(30),
        || async move {
            app.analytics(ad, "all").await["totalClicks"]
                .as_i64()
                .unwrap()
                >= 300
        },
    )
    .await;
    assert!(
        !sender.is_finished(),
        "the load ended before Redis was restarted"
    );

    // kill -9, then start again with nothing: no AOF, no snapshot.
    let killed_at = Utc::now();
    redis.restart().await;
    // Events keep coming after the restart.
    let after = send_clicks(&app.address, ad, 500, 4).await;
    impressions(app, ad, 10).await;
    let during = sender.await.unwrap();
    for o in [&during, &after] {
        assert_eq!(o.refused + o.failed, 0, "ingestion must keep answering 202");
    }

    wait_until(
        "the reset is counted",
        Duration::from_secs(30),
        || async move { app.metric("adtrack_redis_resets_total").await >= 2.0 },
    )
    .await;
    b.wait_drained().await;
    // Less than the rebuild lease (30 s): the process that noticed the reset
    // must rebuild, not leave it to a takeover once its lease expires.
    for timeframe in ["all", "24h"] {
        wait_until(
            &format!("the {timeframe} counters equal Postgres"),
            Duration::from_secs(15),
            || async move { counters_match(app, b, ad, timeframe).await },
        )
        .await;
    }
    assert_eq!(
        app.metric("adtrack_redis_resets_total").await,
        2.0,
        "one restart, one reset"
    );
    let reset = reset_at(&admin_queue(app).await).expect("redisResetAt after the reset");
    assert!(
        reset > first_reset && reset >= killed_at - chrono::Duration::milliseconds(1),
        "redisResetAt {reset} is not the restart at {killed_at}"
    );

    // Nothing appears that was not sent, and everything accepted after the
    // restart is stored; what Redis held unstored at the restart is gone.
    let stored = b.stored_ids().await;
    let mut sent = during.sent.clone();
    sent.extend(after.sent.iter().copied());
    let clicks: std::collections::HashSet<_> = stored.intersection(&sent).copied().collect();
    assert!(
        after.accepted.is_subset(&clicks),
        "events accepted after the restart were lost"
    );
    let impressions_stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE ad_id = $1 AND kind = 'impression'")
            .bind(ad)
            .fetch_one(&b.pool)
            .await
            .unwrap();
    assert_eq!(
        stored.len() as i64,
        clicks.len() as i64 + impressions_stored,
        "stored events that were never sent"
    );
    let accepted = during.accepted.len() + after.accepted.len() + 30;
    eprintln!(
        "[redis empty] accepted {accepted}, stored {}: {} lost with the queue",
        stored.len(),
        accepted - stored.len()
    );
    assert_eq!(b.llen(&b.keys.dlq()).await, 0);
}

/// Two processes on one Redis, database and prefix: when Redis comes back
/// empty, exactly one of them reports the reset and takes on the rebuild,
/// the other adopts the new epoch, and the counters end equal to Postgres.
#[tokio::test]
async fn of_two_processes_one_reports_the_reset_and_rebuilds() {
    let mut redis = private_redis_without_persistence().await;
    let url = redis.url();
    let first = spawn_app_with(|s| {
        s.redis_url = url.clone();
        s.admin_token = Some(TOKEN.into());
    })
    .await;
    let mut settings = first.settings.clone();
    settings.spool_dir = settings.spool_dir.with_extension("second");
    let mut second = start(settings, adtrack::app::Role::All).await;
    let b = Backends::connect(&first.settings).await;
    two_processes(&first, &second, &b, &mut redis).await;
    second.shut_down().await;
    let _ = std::fs::remove_dir_all(&second.settings.spool_dir);
    first.stop().await;
}

async fn two_processes(first: &TestApp, second: &TestApp, b: &Backends, redis: &mut PrivateRedis) {
    let ad = "ad-redis-empty-two";
    let resets = || async move {
        first.metric("adtrack_redis_resets_total").await
            + second.metric("adtrack_redis_resets_total").await
    };
    wait_until(
        "the first start records an epoch",
        Duration::from_secs(10),
        || async move { reset_at(&admin_queue(first).await).is_some() },
    )
    .await;
    assert_eq!(resets().await, 1.0, "one process reports a new Redis");

    let senders = [first, second].map(|app| {
        let base = app.address.clone();
        tokio::spawn(async move { send_clicks(&base, ad, 2000, 2).await })
    });
    wait_until(
        "clicks are stored and counted",
        Duration::from_secs(30),
        || async move {
            first.analytics(ad, "all").await["totalClicks"]
                .as_i64()
                .unwrap()
                >= 300
        },
    )
    .await;
    redis.restart().await;
    for sender in senders {
        let o = sender.await.unwrap();
        assert_eq!(o.refused + o.failed, 0, "ingestion must keep answering 202");
    }
    wait_until(
        "the reset is counted",
        Duration::from_secs(30),
        || async move { resets().await >= 2.0 },
    )
    .await;
    b.wait_drained().await;
    for app in [first, second] {
        wait_until(
            "both processes serve counters equal to Postgres",
            Duration::from_secs(15),
            || async move { counters_match(app, b, ad, "all").await },
        )
        .await;
    }
    // Each process has checked the epoch since it was recreated: the drain
    // alone needs three calm readings 200 ms apart, longer than the 500 ms
    // between checks, and it began after the reset was counted.
    assert_eq!(resets().await, 2.0, "one restart, reported by one process");
    assert_eq!(
        admin_queue(first).await["redisResetAt"],
        admin_queue(second).await["redisResetAt"]
    );
}

/// Two rebuilds at once while events flow (two processes noticing the same
/// reset after a lease expired, or an operator's reconcile during an
/// automatic one): they take turns on the outbox lock, so every event is
/// still counted once.
#[tokio::test]
async fn concurrent_rebuilds_while_events_flow_count_each_event_once() {
    let app = spawn_app().await;
    let b = Backends::connect(&app.settings).await;
    let ad = "ad-two-rebuilds";
    let sender = tokio::spawn({
        let base = app.address.clone();
        async move { send_clicks(&base, ad, 3000, 4).await }
    });
    let mut rounds = 0;
    while !sender.is_finished() || rounds < 3 {
        let (mut one, mut two) = (app.redis.clone(), b.redis.clone());
        let (r1, r2) = tokio::join!(
            adtrack::counters::reconcile(&app.pool, &mut one, &app.keys, Utc::now()),
            adtrack::counters::reconcile(&b.pool, &mut two, &b.keys, Utc::now()),
        );
        r1.unwrap();
        r2.unwrap();
        rounds += 1;
    }
    let outcome = sender.await.unwrap();
    assert_eq!(outcome.refused + outcome.failed, 0);
    b.wait_drained().await;
    let (app_ref, b_ref) = (&app, &b);
    for timeframe in ["all", "24h"] {
        wait_until(
            &format!("the {timeframe} counters equal Postgres"),
            Duration::from_secs(15),
            || async move { counters_match(app_ref, b_ref, ad, timeframe).await },
        )
        .await;
    }
    assert_eq!(b.stored().await, 3000);
    eprintln!("[two rebuilds] {rounds} rounds of two concurrent rebuilds");
    app.stop().await;
}

/// A rebuild's snapshot starts once it holds the outbox lock, so it holds
/// every batch the lock waited for. Taken before the lock, it would miss a
/// batch that committed while the rebuild waited, and that batch's counter
/// update would skip the all-time key the rebuild had not written yet: a
/// count lost.
#[tokio::test]
async fn a_rebuild_snapshot_holds_the_batches_its_lock_waited_for() {
    let app = start(test_settings(), adtrack::app::Role::Api).await;
    // A batch statement in flight: it has written its outbox row.
    let mut batch = app.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO counter_outbox (batch_id, event_ids) VALUES ($1, '{}')")
        .bind(uuid::Uuid::now_v7())
        .execute(&mut *batch)
        .await
        .unwrap();
    let pool = app.pool.clone();
    let rebuild = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        adtrack::store::counters::begin_snapshot(&mut tx, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert!(adtrack::exactly_once::lock_outbox(&mut tx).await.unwrap());
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM counter_outbox")
            .fetch_one(&mut *tx)
            .await
            .unwrap()
    });
    let pool = app.pool.clone();
    wait_until(
        "the rebuild waits for the outbox lock",
        Duration::from_secs(10),
        || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'
                       AND query LIKE 'LOCK TABLE counter_outbox%')",
                )
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        },
    )
    .await;
    batch.commit().await.unwrap();
    assert_eq!(
        rebuild.await.unwrap(),
        1,
        "the snapshot missed the batch its lock waited for"
    );
    app.stop().await;
}
