//! Invalid traffic (`IVT_FILTER`): with `flag`, bot user agents and clicks
//! repeated from one IP on one ad are stored with their reason and counted
//! in the `invalid*` figures, never in totals or CTR; with `off` (the
//! default) nothing is flagged.

use std::time::Duration;

use adtrack::config::IvtFilter;
use chrono::Utc;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const BOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";

async fn send(app: &TestApp, path: &str, body: Value, user_agent: &str) -> String {
    let res = app
        .client
        .post(app.url(path))
        .header("User-Agent", user_agent)
        .json(&body)
        .send()
        .await
        .expect("request sent");
    let (status, json) = decode(res).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    json["eventId"].as_str().expect("eventId").to_owned()
}

/// Stored events by invalid reason (`None` for valid ones).
async fn stored_by_reason(app: &TestApp) -> Vec<(Option<String>, i64)> {
    sqlx::query_as("SELECT invalid_reason, count(*) FROM events GROUP BY 1 ORDER BY 1 NULLS FIRST")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn rolled_up(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT coalesce(sum(events), 0)::bigint FROM rollup_minute")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn flagging(s: &mut adtrack::config::Settings) {
    s.ivt_filter = IvtFilter::Flag;
    s.ivt_click_window = Duration::from_secs(60);
}

#[tokio::test]
async fn bot_user_agents_are_stored_flagged_and_left_out_of_totals_and_ctr() {
    let app = spawn_app_with(flagging).await;
    let ad = "ad-ivt-bot";
    for i in 0..3 {
        let ip = format!("198.51.100.{i}");
        send(
            &app,
            "/ads/click",
            json!({ "adId": ad, "ipAddress": ip }),
            BOT,
        )
        .await;
    }
    for _ in 0..2 {
        send(&app, "/ads/impression", json!({ "adId": ad }), BOT).await;
        send(&app, "/ads/impression", json!({ "adId": ad }), BROWSER).await;
    }
    send(
        &app,
        "/ads/click",
        json!({ "adId": ad, "ipAddress": "203.0.113.7" }),
        BROWSER,
    )
    .await;
    app.wait_drained().await;

    assert_eq!(
        stored_by_reason(&app).await,
        vec![(None, 3), (Some("bot-user-agent".into()), 5)]
    );
    assert_eq!(rolled_up(&app).await, 3, "only valid events are rolled up");
    for timeframe in ["1h", "all"] {
        let a = app.analytics(ad, timeframe).await;
        assert_eq!(a["impressions"], 2, "{timeframe}: {a}");
        assert_eq!(a["totalClicks"], 1, "{timeframe}: {a}");
        assert_eq!(a["ctr"], 0.5, "{timeframe}: {a}");
        assert_eq!(a["invalidImpressions"], 2, "{timeframe}: {a}");
        assert_eq!(a["invalidClicks"], 3, "{timeframe}: {a}");
        assert_eq!(a["invalidEvents"], 5, "{timeframe}: {a}");
    }
    assert_eq!(
        app.metric_where("adtrack_ivt_flagged_total", &[("reason", "bot-user-agent")])
            .await,
        5.0
    );
    // The listing of stored events names each flagged event's reason.
    let (status, list) = app.get(&format!("/events?adId={ad}&limit=100")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let reasons: Vec<&str> = list["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["invalidReason"].as_str())
        .collect();
    assert_eq!(reasons, vec!["bot-user-agent"; 5], "{list}");
}

#[tokio::test]
async fn a_click_repeated_from_one_ip_on_one_ad_is_flagged_but_its_own_retry_is_not() {
    let app = spawn_app_with(flagging).await;
    let click = |ad: &str, ip: &str| json!({ "adId": ad, "ipAddress": ip });
    let first = send(&app, "/ads/click", click("ad-rep", "192.0.2.1"), BROWSER).await;
    // The same event again (a client retry): the same eventId, not a repeat.
    let retry = send(
        &app,
        "/ads/click",
        json!({ "adId": "ad-rep", "ipAddress": "192.0.2.1", "eventId": first }),
        BROWSER,
    )
    .await;
    assert_eq!(retry, first);
    // A second click from that IP on that ad: flagged.
    send(&app, "/ads/click", click("ad-rep", "192.0.2.1"), BROWSER).await;
    // Another IP on that ad, and that IP on another ad: valid.
    send(&app, "/ads/click", click("ad-rep", "192.0.2.2"), BROWSER).await;
    send(&app, "/ads/click", click("ad-other", "192.0.2.1"), BROWSER).await;
    // Impressions are never repeats.
    for _ in 0..2 {
        let body = json!({ "adId": "ad-rep", "ipAddress": "192.0.2.1" });
        send(&app, "/ads/impression", body, BROWSER).await;
    }
    // Within one batch, the second click of a pair is the repeat.
    let (status, body) = app
        .post(
            "/events/batch",
            &json!({ "events": [
                { "type": "click", "adId": "ad-batch", "ipAddress": "192.0.2.9" },
                { "type": "click", "adId": "ad-batch", "ipAddress": "192.0.2.9" },
            ] }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.wait_drained().await;

    assert_eq!(
        stored_by_reason(&app).await,
        vec![(None, 6), (Some("repeated-click".into()), 2)]
    );
    let a = app.analytics("ad-rep", "all").await;
    assert_eq!(a["totalClicks"], 2, "{a}");
    assert_eq!(a["invalidClicks"], 1, "{a}");
    assert_eq!(a["impressions"], 2, "{a}");
    assert_eq!(a["ctr"], 1.0, "{a}");
    assert_eq!(app.analytics("ad-other", "all").await["totalClicks"], 1);
    let b = app.analytics("ad-batch", "all").await;
    assert_eq!(
        (b["totalClicks"].clone(), b["invalidClicks"].clone()),
        (json!(1), json!(1)),
        "{b}"
    );
    assert_eq!(
        app.metric_where("adtrack_ivt_flagged_total", &[("reason", "repeated-click")])
            .await,
        2.0
    );
    // The windows are bounded: each key expires with IVT_CLICK_WINDOW.
    let mut conn = app.redis.clone();
    let pattern = format!("{{{}}}:ivt:click:*", app.settings.redis_prefix);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 4, "{keys:?}");
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=60_000).contains(&ttl), "{key} expires in {ttl} ms");
    }
}

#[tokio::test]
async fn with_the_filter_off_bots_and_repeats_count_as_before() {
    let app = spawn_app().await;
    let ad = "ad-ivt-off";
    for _ in 0..2 {
        send(
            &app,
            "/ads/click",
            json!({ "adId": ad, "ipAddress": "192.0.2.1" }),
            BOT,
        )
        .await;
        send(&app, "/ads/impression", json!({ "adId": ad }), BOT).await;
    }
    app.wait_drained().await;
    assert_eq!(stored_by_reason(&app).await, vec![(None, 4)]);
    let a = app.analytics(ad, "all").await;
    assert_eq!(a["totalClicks"], 2, "{a}");
    assert_eq!(a["impressions"], 2, "{a}");
    assert_eq!(a["invalidEvents"], 0, "{a}");
    assert_eq!(app.metric("adtrack_ivt_flagged_total").await, 0.0);
}

#[tokio::test]
async fn invalid_figures_are_rebuilt_from_postgres_like_the_others() {
    let app = spawn_app_with(flagging).await;
    let ad = "ad-ivt-rebuild";
    for i in 0..4 {
        let ip = format!("198.51.100.{i}");
        send(
            &app,
            "/ads/click",
            json!({ "adId": ad, "ipAddress": ip }),
            BOT,
        )
        .await;
    }
    send(
        &app,
        "/ads/click",
        json!({ "adId": ad, "ipAddress": "192.0.2.50" }),
        BROWSER,
    )
    .await;
    app.wait_drained().await;
    let before = app.analytics(ad, "all").await;
    assert_eq!(before["invalidClicks"], 4, "{before}");

    // Wipe every counter of the prefix, then rebuild them with reconcile.
    let mut conn = app.redis.clone();
    let pattern = format!("{{{}}}:c:*", app.settings.redis_prefix);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    // A read of the all-time figures rebuilds them from Postgres.
    let rebuilt = app.analytics(ad, "all").await;
    assert_eq!(rebuilt["invalidClicks"], 4, "{rebuilt}");
    assert_eq!(rebuilt["totalClicks"], 1, "{rebuilt}");
    // …and caches them: the next read answers from the rebuilt key.
    let cached = app.analytics(ad, "all").await;
    assert_eq!(cached, rebuilt);
    // reconcile rebuilds the windows too.
    adtrack::counters::reconcile(&app.pool, &mut conn, &app.keys, Utc::now())
        .await
        .unwrap();
    for timeframe in ["1h", "24h", "all"] {
        let a = app.analytics(ad, timeframe).await;
        assert_eq!(a["invalidClicks"], 4, "{timeframe}: {a}");
        assert_eq!(a["totalClicks"], 1, "{timeframe}: {a}");
    }
}

#[tokio::test]
async fn with_redis_down_clicks_pass_unflagged_into_the_spool() {
    let mut redis = private_redis().await;
    let url = redis.url();
    let app = spawn_app_with(|s| {
        s.redis_url = url.clone();
        flagging(s);
    })
    .await;
    let ad = "ad-ivt-down";
    let click = json!({ "adId": ad, "ipAddress": "192.0.2.1" });
    send(&app, "/ads/click", click.clone(), BROWSER).await;
    redis.kill();
    for _ in 0..4 {
        send(&app, "/ads/click", click.clone(), BROWSER).await;
    }
    assert!(app.metric("adtrack_ivt_checks_skipped_total").await >= 3.0);
    assert!(app.metric("adtrack_events_spooled_total").await >= 3.0);
    redis.restart().await;
    let b = Backends::connect(&app.settings).await;
    b.wait_drained().await;
    // The first click after the cut may have been checked (and flagged)
    // before ingest saw Redis refuse; every later one passed unchecked.
    let by_reason = stored_by_reason(&app).await;
    let total: i64 = by_reason.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 5, "{by_reason:?}");
    let valid = by_reason
        .iter()
        .find(|(r, _)| r.is_none())
        .map_or(0, |(_, n)| *n);
    assert!(valid >= 4, "{by_reason:?}");
}

#[tokio::test]
async fn pixels_and_click_redirects_from_a_bot_are_flagged_like_posts() {
    use crate::vast::{serve, AD};
    let app = spawn_app_with(flagging).await;
    let client = |user_agent: &str| {
        reqwest::Client::builder()
            .user_agent(user_agent)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    let impression = |served: &crate::vast::Served| {
        served
            .pixels
            .iter()
            .find(|(event, _)| event == "impression")
            .map(|(_, url)| url.clone())
            .unwrap()
    };
    let (crawled, _) = serve(&app, AD).await;
    let bot = client(BOT);
    let res = bot.get(impression(&crawled)).send().await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "a flagged pixel is still answered"
    );
    let res = bot.get(&crawled.click).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    let (watched, _) = serve(&app, AD).await;
    let browser = client(BROWSER);
    let res = browser.get(impression(&watched)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    app.wait_drained().await;

    assert_eq!(
        stored_by_reason(&app).await,
        vec![(None, 1), (Some("bot-user-agent".into()), 2)]
    );
    let a = app.analytics(AD, "all").await;
    assert_eq!(a["impressions"], 1, "{a}");
    assert_eq!(a["totalClicks"], 0, "{a}");
    assert_eq!(a["invalidImpressions"], 1, "{a}");
    assert_eq!(a["invalidClicks"], 1, "{a}");
}
