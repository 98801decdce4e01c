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
