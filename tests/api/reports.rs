//! Postgres-backed reports: `/aggregates`, `/events` (stored and failed)
//! and `/experiments/{id}/summary`.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{decode, spawn_app, spawn_app_with, TestApp};

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The start of the hour three hours ago: a fixed, past, whole hour.
fn base_hour() -> DateTime<Utc> {
    let t = Utc::now() - chrono::Duration::hours(3);
    t.with_minute(0)
        .unwrap()
        .with_second(0)
        .unwrap()
        .with_nanosecond(0)
        .unwrap()
}

async fn send(app: &TestApp, body: Value) {
    let (status, json) = app.post("/events", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
}

const ADMIN_TOKEN: &str = "reports-admin-token-0123456789";

/// A read with the admin bearer token, answered 200.
async fn admin_get_ok(app: &TestApp, path: &str) -> Value {
    let res = app
        .client
        .get(app.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (status, json) = decode(res).await;
    assert_eq!(status, StatusCode::OK, "{path}: {json}");
    json
}

async fn get_ok(app: &TestApp, path: &str) -> Value {
    let (status, json) = app.get(path).await;
    assert_eq!(status, StatusCode::OK, "{path}: {json}");
    json
}

#[tokio::test]
async fn aggregates_sum_rollups_per_bucket_with_filters_and_edges() {
    let app = spawn_app().await;
    let h = base_hour();
    let at = |min: i64, sec: i64| rfc(h + chrono::Duration::seconds(min * 60 + sec));
    let dup = Uuid::new_v4();
    // ad-a: clicks at minutes 0 (×2), 1, 61 (next hour); an impression at 0.
    for (min, sec, amount) in [(0, 5, 100), (0, 50, 200), (1, 0, 300), (61, 30, 400)] {
        send(&app, json!({"type": "click", "adId": "ad-a", "campaignId": "camp-1", "timestamp": at(min, sec), "amount": amount})).await;
    }
    send(&app, json!({"type": "impression", "adId": "ad-a", "campaignId": "camp-1", "timestamp": at(0, 10)})).await;
    // The same eventId three times: one event.
    for _ in 0..3 {
        send(&app, json!({"type": "click", "adId": "ad-a", "campaignId": "camp-1", "eventId": dup, "timestamp": at(2, 0), "amount": 1000})).await;
    }
    // Another ad of another campaign, same minutes.
    send(&app, json!({"type": "click", "adId": "ad-b", "campaignId": "camp-2", "timestamp": at(0, 0), "amount": 7})).await;
    app.wait_drained().await;

    let from = rfc(h);
    let to = rfc(h + chrono::Duration::hours(2));
    let all = get_ok(
        &app,
        &format!("/aggregates?adId=ad-a&from={from}&to={to}&groupBy=hour"),
    )
    .await;
    assert_eq!(all["count"], 6, "{all}");
    assert_eq!(all["totalAmount"], 2000, "{all}");
    let buckets = all["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 2, "{all}");
    assert_eq!(buckets[0]["start"], rfc(h), "{all}");
    assert_eq!(buckets[0]["count"], 5);
    assert_eq!(buckets[0]["totalAmount"], 1600);
    assert_eq!(buckets[1]["count"], 1);
    assert_eq!(buckets[1]["totalAmount"], 400);

    // By minute, clicks only: zeros fill the empty minutes.
    let by_min = get_ok(
        &app,
        &format!(
            "/aggregates?adId=ad-a&type=click&from={from}&to={}&groupBy=minute",
            at(3, 0)
        ),
    )
    .await;
    let counts: Vec<i64> = by_min["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, vec![2, 1, 1], "{by_min}");

    // `to` is exclusive at minute granularity, `from` inclusive.
    let edge = get_ok(
        &app,
        &format!(
            "/aggregates?adId=ad-a&type=click&from={}&to={}&groupBy=minute",
            at(1, 0),
            at(2, 0)
        ),
    )
    .await;
    assert_eq!(edge["count"], 1, "{edge}");

    // By campaign and by day.
    let camp = get_ok(
        &app,
        &format!("/aggregates?campaignId=camp-2&from={from}&to={to}&groupBy=day"),
    )
    .await;
    assert_eq!(camp["count"], 1, "{camp}");
    assert_eq!(camp["totalAmount"], 7, "{camp}");
    let everything = get_ok(&app, &format!("/aggregates?from={from}&to={to}")).await;
    assert_eq!(everything["count"], 7, "{everything}");
    assert_eq!(everything["buckets"].as_array().unwrap().len(), 2);
    // The default window is the last 24 hours, by hour.
    let default = get_ok(&app, "/aggregates?adId=ad-a").await;
    assert_eq!(default["count"], 6, "{default}");
    assert_eq!(default["groupBy"], "hour");
    app.stop().await;
}

/// Hour and day buckets read whole hours from `rollup_hour` and the partial
/// hours at the ends from `rollup_minute`: for ranges cut anywhere, every
/// bucket must equal an independent count of the events sent, and the sums
/// by hour must equal the sums by minute.
#[tokio::test]
async fn hour_and_day_buckets_agree_with_minutes_for_ranges_cut_anywhere() {
    let app = spawn_app().await;
    let h = base_hour() - chrono::Duration::hours(2);
    // 90 events every 3 min 7 s over about 4.7 hours, two ads, two types.
    let mut sent = Vec::new();
    let mut events = Vec::new();
    for i in 0..90i64 {
        let t = h + chrono::Duration::seconds(i * 187);
        let ad = if i % 3 == 0 { "ad-x" } else { "ad-y" };
        let kind = if i % 4 == 0 { "impression" } else { "click" };
        events.push(json!({"type": kind, "adId": ad, "campaignId": "camp-h", "timestamp": rfc(t), "amount": i}));
        sent.push((t, ad, kind, i));
    }
    let (status, body) = app
        .post("/events/batch", &json!({ "events": events }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.wait_drained().await;

    let minute = |t: DateTime<Utc>| t.with_second(0).unwrap().with_nanosecond(0).unwrap();
    let cuts = [
        (h, h + chrono::Duration::hours(5)),
        (
            h + chrono::Duration::seconds(17 * 60 + 20),
            h + chrono::Duration::seconds(2 * 3600 + 41 * 60),
        ),
        (
            h + chrono::Duration::seconds(30),
            h + chrono::Duration::seconds(3600 + 59 * 60 + 30),
        ),
        (
            h + chrono::Duration::minutes(70),
            h + chrono::Duration::minutes(110),
        ),
    ];
    for (from, to) in cuts {
        for (filter, keep) in [
            ("", None),
            ("&adId=ad-x", Some(("ad-x", None))),
            ("&type=click", Some(("", Some("click")))),
        ] {
            let wanted = |t: DateTime<Utc>, ad: &str, kind: &str| {
                let m = minute(t);
                m >= from
                    && m < to
                    && keep.is_none_or(|(a, k): (&str, Option<&str>)| {
                        (a.is_empty() || a == ad) && k.is_none_or(|k| k == kind)
                    })
            };
            let by_minute = get_ok(
                &app,
                &format!(
                    "/aggregates?from={}&to={}&groupBy=minute{filter}",
                    rfc(from),
                    rfc(to)
                ),
            )
            .await;
            for group in ["hour", "day"] {
                let grouped = get_ok(
                    &app,
                    &format!(
                        "/aggregates?from={}&to={}&groupBy={group}{filter}",
                        rfc(from),
                        rfc(to)
                    ),
                )
                .await;
                let width = if group == "hour" { 3600 } else { 86_400 };
                for b in grouped["buckets"].as_array().unwrap() {
                    let start: DateTime<Utc> = b["start"].as_str().unwrap().parse().unwrap();
                    let end = start + chrono::Duration::seconds(width);
                    let (mut count, mut amount) = (0i64, 0i64);
                    for (t, ad, kind, a) in &sent {
                        if wanted(*t, ad, kind) && minute(*t) >= start && minute(*t) < end {
                            count += 1;
                            amount += a;
                        }
                    }
                    let (mut mcount, mut mamount) = (0i64, 0i64);
                    for m in by_minute["buckets"].as_array().unwrap() {
                        let s: DateTime<Utc> = m["start"].as_str().unwrap().parse().unwrap();
                        if s >= start && s < end {
                            mcount += m["count"].as_i64().unwrap();
                            mamount += m["totalAmount"].as_i64().unwrap();
                        }
                    }
                    let what = format!(
                        "{group} bucket {start} of {} .. {}{filter}",
                        rfc(from),
                        rfc(to)
                    );
                    assert_eq!(b["count"].as_i64().unwrap(), count, "{what}: {grouped}");
                    assert_eq!(b["totalAmount"].as_i64().unwrap(), amount, "{what}");
                    assert_eq!(
                        (mcount, mamount),
                        (count, amount),
                        "{what}: minutes disagree"
                    );
                }
                assert_eq!(grouped["count"], by_minute["count"], "{group} {filter}");
            }
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_report_parameters_get_json_400s_and_change_nothing() {
    // The admin token lets the failed-events cases reach their parameters.
    let app = spawn_app_with(|s| s.admin_token = Some(ADMIN_TOKEN.into())).await;
    let far = rfc(Utc::now() - chrono::Duration::days(30));
    for path in [
        "/aggregates?groupBy=week".to_owned(),
        "/aggregates?type=purchase".to_owned(),
        "/aggregates?from=yesterday".to_owned(),
        "/aggregates?to=2026-13-01T00:00:00Z".to_owned(),
        format!("/aggregates?from={}&to={}", rfc(Utc::now()), far),
        format!("/aggregates?from={far}&groupBy=minute"),
        "/aggregates?adId=bad%20id".to_owned(),
        "/aggregates?campaignId=%00".to_owned(),
        "/events?limit=0".to_owned(),
        "/events?limit=1001".to_owned(),
        "/events?limit=ten".to_owned(),
        "/events?before=12345~not-a-uuid".to_owned(),
        "/events?before=garbage".to_owned(),
        "/events?type=view".to_owned(),
        "/events?status=lost".to_owned(),
        "/events?status=failed&before=7".to_owned(),
        "/events?adId=%F0%9F%92%A9".to_owned(),
    ] {
        let res = app
            .client
            .get(app.url(&path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let (status, body) = decode(res).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"], "invalid_field", "{path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let long = "x".repeat(65);
    let (status, body) = app.get(&format!("/experiments/{long}/summary")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(app.stored().await, 0);
    assert_eq!(app.queue_len().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn event_pages_are_newest_first_without_gaps_or_repeats() {
    let app = spawn_app().await;
    let h = base_hour();
    let mut sent = Vec::new();
    for i in 0..25 {
        let id = Uuid::new_v4();
        let kind = if i % 5 == 0 { "impression" } else { "click" };
        send(&app, json!({"type": kind, "adId": "ad-list", "eventId": id, "timestamp": rfc(h + chrono::Duration::seconds(i)), "userId": format!("u{i}")})).await;
        sent.push((i, id, kind));
    }
    send(
        &app,
        json!({"type": "click", "adId": "ad-other", "timestamp": rfc(h)}),
    )
    .await;
    app.wait_drained().await;

    let mut seen = Vec::new();
    let mut path = "/events?adId=ad-list&limit=10".to_owned();
    let mut pages = 0;
    loop {
        let page = get_ok(&app, &path).await;
        pages += 1;
        for e in page["events"].as_array().unwrap() {
            assert_eq!(e["adId"], "ad-list");
            assert!(
                e["processedAt"].is_string() && e["receivedAt"].is_string(),
                "{e}"
            );
            seen.push(e["eventId"].as_str().unwrap().parse::<Uuid>().unwrap());
        }
        match page["nextCursor"].as_str() {
            Some(c) => path = format!("/events?adId=ad-list&limit=10&before={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<Uuid> = sent.iter().rev().map(|(_, id, _)| *id).collect();
    assert_eq!(seen, expected, "newest first, every event once");

    let impressions = get_ok(&app, "/events?adId=ad-list&type=impression&limit=100").await;
    assert_eq!(impressions["events"].as_array().unwrap().len(), 5);
    assert!(impressions["nextCursor"].is_null());
    let everything = get_ok(&app, "/events?limit=1000").await;
    assert_eq!(everything["events"].as_array().unwrap().len(), 26);
    let first = &everything["events"][0];
    assert_eq!(first["type"], "click");
    assert!(first.get("event_id").is_none(), "camelCase only: {first}");
    app.stop().await;
}

#[tokio::test]
async fn dead_letters_are_listed_as_failed_events() {
    let app = spawn_app_with(|s| {
        s.simulate_failures = true;
        s.max_attempts = 1;
        // Dead letters carry error text: operator data.
        s.admin_token = Some(ADMIN_TOKEN.into());
    })
    .await;
    for i in 0..3 {
        send(
            &app,
            json!({"type": "click", "adId": format!("ad-fail-{i}"), "simulateFailure": true}),
        )
        .await;
    }
    send(&app, json!({"type": "click", "adId": "ad-fine"})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.metric("adtrack_dead_lettered_total").await < 3.0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = admin_get_ok(&app, "/events?status=failed&limit=2").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{page}");
    for e in events {
        assert_eq!(e["status"], "failed");
        assert_eq!(e["type"], "click");
        assert_eq!(e["attempts"], 1);
        assert!(e["error"].as_str().unwrap().contains("simulated"), "{e}");
        assert!(e["failedAt"].is_string() && e["eventId"].is_string(), "{e}");
    }
    let cursor = page["nextCursor"].as_str().unwrap();
    let rest = admin_get_ok(
        &app,
        &format!("/events?status=failed&limit=2&before={cursor}"),
    )
    .await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 1, "{rest}");
    assert!(rest["nextCursor"].is_null());
    let one = admin_get_ok(&app, "/events?status=failed&adId=ad-fail-1").await;
    assert_eq!(one["events"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["events"][0]["adId"], "ad-fail-1");
    app.stop().await;
}

#[tokio::test]
async fn experiment_summary_counts_users_conversions_and_tests_the_difference() {
    let app = spawn_app().await;
    let exp = "exp-checkout";
    let ev = |kind: &str, user: String, variant: &str| json!({"type": kind, "adId": "ad-exp", "userId": user, "variant": variant, "experimentId": exp});
    for i in 0..10 {
        send(&app, ev("impression", format!("c{i}"), "control")).await;
        send(&app, ev("impression", format!("b{i}"), "b")).await;
    }
    // control: two users convert, one of them twice.
    for user in ["c0", "c1", "c1"] {
        send(&app, ev("conversion", user.into(), "control")).await;
    }
    // b: five users convert.
    for i in 0..5 {
        send(&app, ev("conversion", format!("b{i}"), "b")).await;
    }
    // Another experiment and an event with no experiment do not count.
    send(&app, json!({"type": "conversion", "adId": "ad-exp", "userId": "c5", "variant": "control", "experimentId": "exp-other"})).await;
    send(
        &app,
        json!({"type": "conversion", "adId": "ad-exp", "userId": "c6"}),
    )
    .await;
    app.wait_drained().await;

    let s = get_ok(&app, &format!("/experiments/{exp}/summary")).await;
    assert_eq!(s["experimentId"], exp);
    assert_eq!(s["control"], "control", "{s}");
    let v = s["variants"].as_array().unwrap();
    assert_eq!(v.len(), 2, "{s}");
    let (b, control) = (&v[0], &v[1]);
    assert_eq!(b["variant"], "b");
    assert_eq!(control["variant"], "control");
    assert_eq!(control["events"], 13);
    assert_eq!(control["uniqueUsers"], 10);
    assert_eq!(control["conversions"], 3);
    assert_eq!(control["convertedUsers"], 2);
    assert_eq!(control["conversionRate"], 0.2);
    assert!(control.get("pValue").is_none(), "{control}");
    assert_eq!(b["events"], 15);
    assert_eq!(b["uniqueUsers"], 10);
    assert_eq!(b["conversions"], 5);
    assert_eq!(b["conversionRate"], 0.5);
    // By hand: pooled 7/20, se = sqrt(0.35·0.65·0.2), z = 0.3/se = 1.40642,
    // p = erfc(z/√2) = 0.159599.
    let p = b["pValue"].as_f64().unwrap();
    assert!((p - 0.159_599).abs() < 1e-5, "{b}");
    assert!(
        (b["zScore"].as_f64().unwrap() - 1.406_422).abs() < 1e-5,
        "{b}"
    );

    let none = get_ok(&app, "/experiments/exp-nobody/summary").await;
    assert_eq!(none["variants"], json!([]));
    assert!(none["control"].is_null());
    app.stop().await;
}

/// `from`/`to` is half-open, so exactly a week by minute (10,080 buckets)
/// or 10,080 hours by hour is the most allowed, and one bucket more is 400.
#[tokio::test]
async fn the_bucket_limit_counts_a_half_open_range() {
    let app = spawn_app().await;
    let to = "2026-03-08T00:00:00Z";
    for (group, from, status) in [
        ("minute", "2026-03-01T00:00:00Z", StatusCode::OK),
        ("minute", "2026-02-28T23:59:00Z", StatusCode::BAD_REQUEST),
        ("minute", "2026-02-28T23:59:59Z", StatusCode::BAD_REQUEST),
        ("hour", "2025-01-12T00:00:00Z", StatusCode::OK),
        ("hour", "2025-01-11T23:00:00Z", StatusCode::BAD_REQUEST),
    ] {
        let (got, body) = app
            .get(&format!("/aggregates?groupBy={group}&from={from}&to={to}"))
            .await;
        assert_eq!(got, status, "{group} from {from}: {body}");
    }
    // A `to` inside a bucket adds that bucket.
    let (got, body) = app
        .get("/aggregates?groupBy=minute&from=2026-03-01T00:00:00Z&to=2026-03-08T00:00:00.5Z")
        .await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{body}");
    app.stop().await;
}
