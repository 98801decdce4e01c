//! Invariant 8 for the dimensions clients invent: adIds and campaign ids
//! leave no Redis state that lives forever, listings and live streams stay
//! bounded however many ids exist, and figures stay exact with Postgres.

use std::collections::BTreeSet;
use std::time::Duration;

use adtrack::redis_client::RedisConn;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, wait_until, TestApp};

/// Sends `events` in batches of 1,000 and waits until they are stored.
async fn send_batches(app: &TestApp, events: Vec<Value>) {
    for chunk in events.chunks(1000) {
        let (status, body) = app.post("/events/batch", &json!({ "events": chunk })).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["accepted"], chunk.len(), "{body}");
    }
    app.wait_drained().await;
}

/// Every key of the app's prefix with its TTL (-1: never expires).
async fn keys_and_ttls(app: &TestApp) -> Vec<(String, i64)> {
    let mut conn = app.redis.clone();
    let pattern = format!("{{{}}}*", app.settings.redis_prefix);
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        for key in batch {
            let ttl: i64 = redis::cmd("TTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            out.push((key, ttl));
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out
}

/// What a never-expiring key holds, as text: hash fields, set and sorted
/// set members, a string's value.
async fn contents(conn: &mut RedisConn, key: &str) -> Vec<String> {
    let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await.unwrap();
    let cmd = match kind.as_str() {
        "hash" => redis::cmd("HKEYS").arg(key).clone(),
        "set" => redis::cmd("SMEMBERS").arg(key).clone(),
        "zset" => redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).clone(),
        "list" => redis::cmd("LRANGE").arg(key).arg(0).arg(-1).clone(),
        "string" => return vec![redis::cmd("GET").arg(key).query_async(conn).await.unwrap()],
        _ => return Vec::new(),
    };
    cmd.query_async(conn).await.unwrap()
}

/// Asserts that no key naming `marker` and no key holding it in a field or
/// member lives forever.
async fn assert_nothing_forever(app: &TestApp, marker: &str) {
    let mut conn = app.redis.clone();
    let keys = keys_and_ttls(app).await;
    let mut per_id = 0;
    for (key, ttl) in &keys {
        if key.contains(marker) {
            per_id += 1;
            assert_ne!(*ttl, -1, "{key} never expires");
        } else if *ttl == -1 {
            let held = contents(&mut conn, key).await;
            let leaked: Vec<&String> = held.iter().filter(|v| v.contains(marker)).take(3).collect();
            assert!(
                leaked.is_empty(),
                "{key} never expires and holds per-id data such as {leaked:?}"
            );
        }
    }
    assert!(per_id > 0, "the ids left no keys at all: the scan is wrong");
}

async fn pg_count(app: &TestApp, ad: &str, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE ad_id = $1 AND kind = $2")
        .bind(ad)
        .bind(kind)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn pg_unique_clicks(app: &TestApp, ad: &str) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT ip) FROM events WHERE ad_id = $1 AND kind = 'click'")
        .bind(ad)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// `timeframe=all` of `ad` equals Postgres (unique clicks within the
/// HyperLogLog's 2 %).
async fn assert_all_time_equals_postgres(app: &TestApp, ad: &str) {
    let a = app.analytics(ad, "all").await;
    assert_eq!(
        a["impressions"],
        pg_count(app, ad, "impression").await,
        "{ad}: {a}"
    );
    assert_eq!(
        a["totalClicks"],
        pg_count(app, ad, "click").await,
        "{ad}: {a}"
    );
    let exact = pg_unique_clicks(app, ad).await as f64;
    let got = a["uniqueClicks"].as_f64().unwrap();
    assert!(
        (got - exact).abs() <= (exact * 0.02).max(1.0),
        "{ad}: unique {got} vs {exact}"
    );
    let hourly: u64 = a["hourlyClicks"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(hourly, a["totalClicks"].as_u64().unwrap(), "{ad}: {a}");
}

fn hot_events(n: usize, from: usize) -> Vec<Value> {
    (from..from + n)
        .map(|i| {
            let kind = if i % 3 == 0 { "impression" } else { "click" };
            let days_ago = (i % 4) as i64 * 60;
            let at = chrono::Utc::now() - chrono::Duration::days(days_ago);
            json!({"type": kind, "adId": "hot-ad", "ipAddress": format!("10.9.{}.{}", i / 250 % 250, i % 250),
                   "timestamp": at.to_rfc3339()})
        })
        .collect()
}

#[tokio::test]
async fn twenty_thousand_unknown_ad_ids_leave_nothing_that_never_expires() {
    let app = spawn_app().await;
    // 20,000 invented ids, one event each; a fifth of them back-dated.
    let mut events: Vec<Value> = (0..20_000)
        .map(|i| {
            let kind = if i % 2 == 0 { "impression" } else { "click" };
            let days_ago = if i % 5 == 0 { 200 } else { 0 };
            let at = chrono::Utc::now() - chrono::Duration::days(days_ago);
            json!({"type": kind, "adId": format!("rnd-{i}"), "ipAddress": format!("10.1.{}.{}", i / 250 % 250, i % 250),
                   "timestamp": at.to_rfc3339()})
        })
        .collect();
    events.extend(hot_events(600, 0));
    send_batches(&app, events).await;

    assert_nothing_forever(&app, "rnd-").await;
    // No all-time key was made for ids nobody asked about.
    let all_time: Vec<(String, i64)> = keys_and_ttls(&app)
        .await
        .into_iter()
        .filter(|(k, _)| k.contains(":c:ad:rnd-") || k.contains(":c:ua:rnd-"))
        .collect();
    assert!(
        all_time.is_empty(),
        "{:?}",
        &all_time[..all_time.len().min(3)]
    );

    // Asked for, the all-time figures equal Postgres, for a hot ad and for
    // invented ids (back-dated ones too), and an unknown ad is zeros
    // without any state.
    assert_all_time_equals_postgres(&app, "hot-ad").await;
    for ad in ["rnd-0", "rnd-1", "rnd-7", "rnd-15"] {
        assert_all_time_equals_postgres(&app, ad).await;
    }
    let before = keys_and_ttls(&app).await.len();
    let zero = app.analytics("never-sent-anything", "all").await;
    assert_eq!(zero["totalClicks"], 0);
    assert_eq!(zero["impressions"], 0);
    assert_eq!(keys_and_ttls(&app).await.len(), before);

    // The rebuilt keys expire too.
    let root = app.keys.counters_root();
    let mut conn = app.redis.clone();
    for key in [format!("{root}ad:hot-ad"), format!("{root}ua:hot-ad")] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 30 * 86_400, "{key}: TTL {ttl}");
    }

    // Expire the hot ad's all-time keys by hand, then read them back while
    // more of its events are committed: the rebuild races the workers and
    // still counts each event once.
    let _: () = redis::cmd("DEL")
        .arg(format!("{root}ad:hot-ad"))
        .arg(format!("{root}ua:hot-ad"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_all_time_equals_postgres(&app, "hot-ad").await;
    let more = hot_events(3000, 600);
    let sender = async {
        for chunk in more.chunks(100) {
            let (status, _) = app.post("/events/batch", &json!({ "events": chunk })).await;
            assert_eq!(status, StatusCode::ACCEPTED);
        }
    };
    let reader = async {
        for _ in 0..20 {
            let _: () = redis::cmd("DEL")
                .arg(format!("{root}ad:hot-ad"))
                .query_async(&mut app.redis.clone())
                .await
                .unwrap();
            app.analytics("hot-ad", "all").await;
        }
    };
    tokio::join!(sender, reader);
    app.wait_drained().await;
    assert_eq!(pg_count(&app, "hot-ad", "click").await, 2400);
    assert_all_time_equals_postgres(&app, "hot-ad").await;
    assert_nothing_forever(&app, "rnd-").await;
    assert_nothing_forever(&app, "hot-ad").await;

    // reconcile rebuilds the same layout: still nothing forever, and equal.
    adtrack::counters::reconcile(&app.pool, &mut conn, &app.keys, chrono::Utc::now())
        .await
        .unwrap();
    assert_nothing_forever(&app, "rnd-").await;
    assert_all_time_equals_postgres(&app, "hot-ad").await;
    assert_all_time_equals_postgres(&app, "rnd-15").await;
    app.stop().await;
}

/// Reads `/campaigns`-like pages from `path` until the cursor runs out;
/// returns the ids in order and the total of the first page.
async fn page_through(app: &TestApp, path: &str, key: &str, limit: u64) -> (Vec<String>, u64) {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    let mut total = None;
    loop {
        let mut url = format!("{path}?limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let res = app.client.get(app.url(&url)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let t: u64 = res.headers()["x-total-count"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(*total.get_or_insert(t), t, "the total moved while paging");
        cursor = res
            .headers()
            .get("x-next-cursor")
            .map(|v| v.to_str().unwrap().to_owned());
        let page: Vec<Value> = res.json().await.unwrap();
        assert!(page.len() as u64 <= limit);
        ids.extend(page.iter().map(|r| r[key].as_str().unwrap().to_owned()));
        if cursor.is_none() {
            break;
        }
    }
    (ids, total.unwrap_or(0))
}

/// The campaigns of the catalogue.
async fn catalogue_campaigns(app: &TestApp) -> BTreeSet<String> {
    let (_, ads) = app.get("/ads").await;
    ads.as_array()
        .unwrap()
        .iter()
        .map(|a| a["campaignId"].as_str().unwrap().to_owned())
        .collect()
}

/// Bytes of each tick of an SSE body: a tick starts with its `pipeline`
/// event.
fn ticks(text: &str) -> Vec<&str> {
    text.split("event: pipeline")
        .filter(|t| !t.is_empty())
        .collect()
}

/// The most a `/live` tick may weigh: one pipeline and one analytics event
/// (under 1 KiB each) and 100 campaign entries of at most 64-character ids
/// (under 110 bytes each).
const TICK_BOUND: usize = 2 * 1024 + 100 * 110;

#[tokio::test]
async fn twenty_thousand_campaigns_keep_listings_and_live_streams_bounded() {
    let app = spawn_app_with(|s| s.live_max_streams = 50).await;
    let known = catalogue_campaigns(&app).await;
    // 20,000 invented campaigns with one play each, "big-<n>" with more,
    // and one campaign on 250 screens.
    let mut events: Vec<Value> = (0..20_000)
        .map(|i| json!({"type": "play", "campaignId": format!("cmp-{i}"), "screenId": format!("s-{}", i % 3)}))
        .collect();
    for n in 1..=5 {
        for _ in 0..(n * 10) {
            events
                .push(json!({"type": "play", "campaignId": format!("big-{n}"), "screenId": "s-0"}));
        }
    }
    for s in 0..250 {
        events.push(json!({"type": "play", "campaignId": "wide", "screenId": format!("w-{s}")}));
    }
    send_batches(&app, events).await;
    let expected = 20_000 + 5 + 1 + known.len() as u64;

    // The default page: 100 entries, most plays first, the total in a header.
    // Campaigns new to the ranking are ranked by reads (polled here).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (page, bytes) = loop {
        let res = app.client.get(app.url("/campaigns")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let total: u64 = res.headers()["x-total-count"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(res.headers().contains_key("x-next-cursor"));
        let body = res.bytes().await.unwrap();
        let page: Vec<Value> = serde_json::from_slice(&body).unwrap();
        if total == expected {
            break (page, body.len());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {total} of {expected} campaigns ranked after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(page.len(), 100);
    assert!(bytes < 100 * 110, "/campaigns answered {bytes} bytes");
    let top: Vec<&str> = page[..6]
        .iter()
        .map(|r| r["campaignId"].as_str().unwrap())
        .collect();
    assert_eq!(top, ["wide", "big-5", "big-4", "big-3", "big-2", "big-1"]);
    assert_eq!(page[0]["plays"], 250);
    assert_eq!(page[0]["screens"], 250);
    assert_eq!(page[1]["plays"], 50);

    // The cursor visits every campaign exactly once, catalogue ones too.
    let (ids, total) = page_through(&app, "/campaigns", "campaignId", 1000).await;
    assert_eq!(total, expected);
    assert_eq!(ids.len() as u64, expected);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len() as u64, expected);
    for c in &known {
        assert!(unique.contains(c), "catalogue campaign {c} missing");
    }
    // Screens page the same way.
    let (screens, total) = page_through(&app, "/campaigns/wide/screens", "screenId", 100).await;
    assert_eq!((screens.len(), total), (250, 250));
    assert_eq!(screens.iter().collect::<BTreeSet<_>>().len(), 250);
    for bad in [
        "limit=0",
        "limit=1001",
        "cursor=abc",
        "cursor=-1",
        "limit=x",
    ] {
        let (status, body) = app.get(&format!("/campaigns?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        let (status, _) = app.get(&format!("/campaigns/wide/screens?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_nothing_forever(&app, "cmp-").await;

    // 50 live streams (the cap here): each tick stays small however many
    // campaigns exist, and a tick without news carries no campaigns.
    let mut streams = Vec::new();
    for _ in 0..50 {
        let res = app.client.get(app.url("/live")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        streams.push(res);
    }
    // Past the cap: 503 JSON with Retry-After (the status is read before
    // the body, so a stream wrongly opened cannot hang the test).
    let res = app.client.get(app.url("/live")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");

    let read_ticks = |mut res: reqwest::Response, n: usize| async move {
        let mut text = String::new();
        while ticks(&text).len() <= n {
            let chunk = tokio::time::timeout(Duration::from_secs(10), res.chunk())
                .await
                .expect("a tick within 10 s")
                .unwrap()
                .expect("the stream goes on");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        (res, text)
    };
    let reads = futures_util::future::join_all(streams.into_iter().map(|r| read_ticks(r, 3))).await;
    let mut streams = Vec::new();
    for (res, text) in reads {
        let all = ticks(&text);
        for t in &all {
            assert!(t.len() < TICK_BOUND, "a tick of {} bytes", t.len());
        }
        // First tick: the top 100; the ones after: nothing changed.
        let first = all[0];
        assert_eq!(first.matches("\"campaignId\"").count(), 100);
        for t in &all[1..3] {
            assert!(!t.contains("\"campaignId\""), "an unchanged tick: {t}");
        }
        streams.push(res);
    }
    // New plays reach the streams as the changed entries only.
    let (status, _) = app
        .post(
            "/events/batch",
            &json!({"events": [
                {"type": "play", "campaignId": "big-1", "screenId": "s-9"}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let stream = streams.pop().unwrap();
    let mut res = stream;
    let mut text = String::new();
    while !text.contains("\"big-1\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), res.chunk())
            .await
            .expect("the change within 10 s")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let tick = ticks(&text)
        .into_iter()
        .find(|t| t.contains("\"big-1\""))
        .unwrap();
    assert_eq!(tick.matches("\"campaignId\"").count(), 1, "{tick}");
    assert!(tick.contains("\"plays\":11"), "{tick}");

    // A closed stream frees its place.
    drop(res);
    drop(streams);
    wait_until(
        "a stream is accepted again",
        Duration::from_secs(10),
        || async {
            let res = app.client.get(app.url("/live")).send().await.unwrap();
            res.status() == StatusCode::OK
        },
    )
    .await;
    app.stop().await;
}
