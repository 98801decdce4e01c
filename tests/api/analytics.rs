//! Analytics equal an independent count of what was sent, for every
//! timeframe, and equal Postgres; reconcile rebuilds the same figures.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

const ADS: [&str; 4] = ["ad-alpha", "ad-beta", "ad-gamma", "ad-delta"];
const CAMPAIGNS: [&str; 3] = ["camp-north", "camp-south", "camp-east"];
const TIMEFRAMES: [&str; 4] = ["1h", "24h", "7d", "all"];

#[derive(Clone)]
struct Sent {
    kind: &'static str,
    ad: Option<&'static str>,
    campaign: Option<&'static str>,
    screen: Option<String>,
    ip: String,
    at: DateTime<Utc>,
    /// The VAST error code of an error event.
    code: Option<u16>,
}

/// The video kinds (VAST events) and the analytics figure of each.
const VIDEO: [(&str, &str); 7] = [
    ("start", "starts"),
    ("firstQuartile", "firstQuartiles"),
    ("midpoint", "midpoints"),
    ("thirdQuartile", "thirdQuartiles"),
    ("complete", "completes"),
    ("skip", "skips"),
    ("error", "errors"),
];

/// Event times well inside one window and outside the smaller ones, so the
/// test does not depend on when in the hour it runs.
fn time_in(rng: &mut impl Rng, now: DateTime<Utc>, window: &str) -> DateTime<Utc> {
    let (lo, hi) = match window {
        "1h" => (Duration::minutes(2), Duration::minutes(45)),
        "24h" => (Duration::hours(3), Duration::hours(20)),
        "7d" => (Duration::days(2), Duration::days(6)),
        _ => (Duration::days(20), Duration::days(300)),
    };
    let span = (hi - lo).num_seconds();
    now - lo - Duration::seconds(rng.random_range(0..span))
}

fn in_window(at: DateTime<Utc>, now: DateTime<Utc>, timeframe: &str) -> bool {
    match timeframe {
        "1h" => at > now - Duration::minutes(50),
        "24h" => at > now - Duration::hours(22),
        "7d" => at > now - Duration::days(6) - Duration::hours(12),
        _ => true,
    }
}

fn random_events(n: usize, seed: u64) -> Vec<Sent> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let now = Utc::now();
    (0..n)
        .map(|_| {
            let window = *["1h", "24h", "7d", "all"].choose(&mut rng).unwrap();
            let at = time_in(&mut rng, now, window);
            let ip = format!(
                "10.{}.{}.{}",
                rng.random_range(0..4),
                rng.random_range(0..8),
                rng.random_range(0..20)
            );
            match rng.random_range(0..12) {
                0..=4 => Sent {
                    kind: "impression",
                    ad: Some(*ADS.choose(&mut rng).unwrap()),
                    campaign: None,
                    screen: None,
                    ip,
                    at,
                    code: None,
                },
                5..=7 => Sent {
                    kind: "click",
                    ad: Some(*ADS.choose(&mut rng).unwrap()),
                    campaign: None,
                    screen: None,
                    ip,
                    at,
                    code: None,
                },
                8..=9 => {
                    let kind = VIDEO.choose(&mut rng).unwrap().0;
                    Sent {
                        kind,
                        ad: Some(*ADS.choose(&mut rng).unwrap()),
                        campaign: None,
                        screen: None,
                        ip,
                        at,
                        code: (kind == "error")
                            .then(|| *[303u16, 400, 405].choose(&mut rng).unwrap())
                            .filter(|_| rng.random_bool(0.7)),
                    }
                }
                _ => Sent {
                    kind: "play",
                    ad: if rng.random_bool(0.3) {
                        Some(*ADS.choose(&mut rng).unwrap())
                    } else {
                        None
                    },
                    campaign: Some(*CAMPAIGNS.choose(&mut rng).unwrap()),
                    screen: Some(format!("screen-{}", rng.random_range(0..6))),
                    ip,
                    at,
                    code: None,
                },
            }
        })
        .collect()
}

fn to_json(e: &Sent) -> Value {
    let mut v = json!({"type": e.kind, "ipAddress": e.ip, "timestamp": e.at.to_rfc3339()});
    if let Some(ad) = e.ad {
        v["adId"] = json!(ad);
    }
    if let Some(c) = e.campaign {
        v["campaignId"] = json!(c);
    }
    if let Some(s) = &e.screen {
        v["screenId"] = json!(s);
    }
    if let Some(code) = e.code {
        v["errorCode"] = json!(code);
    }
    v
}

async fn send_all(app: &TestApp, events: &[Sent]) {
    for chunk in events.chunks(1000) {
        let batch: Vec<Value> = chunk.iter().map(to_json).collect();
        let (status, body) = app.post("/events/batch", &json!({ "events": batch })).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["accepted"], chunk.len(), "{body}");
    }
}

/// What every analytics endpoint shows, as one comparable value.
async fn snapshot(app: &TestApp) -> Value {
    let mut out = serde_json::Map::new();
    for ad in ADS {
        for tf in TIMEFRAMES {
            let mut a = app.analytics(ad, tf).await;
            a.as_object_mut().unwrap().remove("hourlyClicks");
            out.insert(format!("{ad}/{tf}"), a);
        }
    }
    out.insert("campaigns".into(), app.get("/campaigns").await.1);
    for c in CAMPAIGNS {
        out.insert(
            format!("screens/{c}"),
            app.get(&format!("/campaigns/{c}/screens")).await.1,
        );
    }
    Value::Object(out)
}

fn assert_close(actual: u64, expected: usize, what: &str) {
    let tolerance = (expected as f64 * 0.02).ceil() as i64;
    let diff = (actual as i64 - expected as i64).abs();
    assert!(
        diff <= tolerance,
        "{what}: {actual} vs {expected} (±{tolerance})"
    );
}

#[tokio::test]
async fn figures_after_drain_equal_an_independent_count_and_postgres() {
    let app = spawn_app().await;
    let events = random_events(5000, 7);
    send_all(&app, &events).await;
    app.wait_drained().await;
    let now = Utc::now();
    assert_eq!(app.stored().await, 5000);

    for ad in ADS {
        for tf in TIMEFRAMES {
            let a = app.analytics(ad, tf).await;
            let mine: Vec<&Sent> = events
                .iter()
                .filter(|e| e.ad == Some(ad) && in_window(e.at, now, tf))
                .collect();
            let count = |k: &str| mine.iter().filter(|e| e.kind == k).count();
            assert_eq!(a["impressions"], count("impression"), "{ad} {tf}: {a}");
            assert_eq!(a["totalClicks"], count("click"), "{ad} {tf}: {a}");
            assert_eq!(a["plays"], count("play"), "{ad} {tf}: {a}");
            let ips: BTreeSet<&str> = mine
                .iter()
                .filter(|e| e.kind == "click")
                .map(|e| e.ip.as_str())
                .collect();
            assert_close(
                a["uniqueClicks"].as_u64().unwrap(),
                ips.len(),
                &format!("{ad} {tf} unique"),
            );
            let ctr = if count("impression") == 0 {
                0.0
            } else {
                count("click") as f64 / count("impression") as f64
            };
            assert!(
                (a["ctr"].as_f64().unwrap() - ctr).abs() < 1e-9,
                "{ad} {tf}: {a}"
            );
            // The video funnel, its completion rate and errors by code.
            for (kind, figure) in VIDEO {
                assert_eq!(a[figure], count(kind), "{ad} {tf} {figure}: {a}");
            }
            let rate = if count("impression") == 0 {
                0.0
            } else {
                count("complete") as f64 / count("impression") as f64
            };
            assert!(
                (a["completionRate"].as_f64().unwrap() - rate).abs() < 1e-9,
                "{ad} {tf}: {a}"
            );
            let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
            for e in mine.iter().filter(|e| e.kind == "error") {
                let code = e.code.map_or("unknown".to_owned(), |c| c.to_string());
                *by_code.entry(code).or_default() += 1;
            }
            let got: BTreeMap<String, usize> =
                serde_json::from_value(a["errorsByCode"].clone()).unwrap();
            assert_eq!(got, by_code, "{ad} {tf}: {a}");
            let hourly_total: u64 = a["hourlyClicks"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            assert_eq!(
                hourly_total as usize,
                count("click"),
                "{ad} {tf} hourly: {a}"
            );

            // Postgres agrees with both.
            let since = match tf {
                "1h" => now - Duration::minutes(50),
                "24h" => now - Duration::hours(22),
                "7d" => now - Duration::days(6) - Duration::hours(12),
                _ => now - Duration::days(10_000),
            };
            let pg: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE ad_id = $1 AND kind = 'click' AND event_time > $2")
                .bind(ad)
                .bind(since)
                .fetch_one(&app.pool)
                .await
                .unwrap();
            assert_eq!(pg as usize, count("click"));
        }
    }

    let mut plays: BTreeMap<&str, usize> = BTreeMap::new();
    let mut screens: HashMap<&str, BTreeMap<String, usize>> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == "play") {
        let c = e.campaign.unwrap();
        *plays.entry(c).or_default() += 1;
        *screens
            .entry(c)
            .or_default()
            .entry(e.screen.clone().unwrap())
            .or_default() += 1;
    }
    let (_, list) = app.get("/campaigns").await;
    for c in CAMPAIGNS {
        let row = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["campaignId"] == c)
            .unwrap();
        assert_eq!(row["plays"], plays[c], "{row}");
        assert_eq!(row["screens"], screens[c].len(), "{row}");
        let (_, per_screen) = app.get(&format!("/campaigns/{c}/screens")).await;
        let got: BTreeMap<String, usize> = per_screen
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["screenId"].as_str().unwrap().to_owned(),
                    r["plays"].as_u64().unwrap() as usize,
                )
            })
            .collect();
        assert_eq!(got, screens[c]);
    }
    app.stop().await;
}

#[tokio::test]
async fn reconcile_restores_wiped_and_corrupted_counters() {
    let app = spawn_app().await;
    let events = random_events(1500, 11);
    send_all(&app, &events).await;
    app.wait_drained().await;
    let before = snapshot(&app).await;

    // Wipe every counter, and plant a wrong one.
    let mut conn = app.redis.clone();
    let pattern = format!("{}*", app.keys.counters_root());
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
    let _: () = redis::cmd("HSET")
        .arg(format!("{}ad:ad-ghost", app.keys.counters_root()))
        .arg("c")
        .arg(99)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_ne!(snapshot(&app).await, before);

    let report = adtrack::counters::reconcile(&app.pool, &mut conn, &app.keys, Utc::now())
        .await
        .unwrap();
    assert!(report.keys_written > 0);
    assert_eq!(snapshot(&app).await, before);
    assert_eq!(app.analytics("ad-ghost", "all").await["totalClicks"], 0);

    // Running it again changes nothing, and new events still count once.
    adtrack::counters::reconcile(&app.pool, &mut conn, &app.keys, Utc::now())
        .await
        .unwrap();
    assert_eq!(snapshot(&app).await, before);
    let before_clicks = app.analytics("ad-alpha", "1h").await["totalClicks"]
        .as_u64()
        .unwrap();
    app.click(json!({"adId": "ad-alpha", "ipAddress": "192.0.2.1"}))
        .await;
    app.wait_drained().await;
    assert_eq!(
        app.analytics("ad-alpha", "1h").await["totalClicks"],
        before_clicks + 1
    );
    app.stop().await;
}

#[tokio::test]
async fn reconcile_while_events_flow_counts_each_event_once() {
    let app = spawn_app().await;
    let events = random_events(3000, 23);
    let sender = {
        let client = app.client.clone();
        let url = app.url("/events/batch");
        let events = events.clone();
        tokio::spawn(async move {
            for chunk in events.chunks(100) {
                let batch: Vec<Value> = chunk.iter().map(to_json).collect();
                let res = client
                    .post(&url)
                    .json(&json!({ "events": batch }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::ACCEPTED);
            }
        })
    };
    let mut conn = app.redis.clone();
    for _ in 0..3 {
        adtrack::counters::reconcile(&app.pool, &mut conn, &app.keys, Utc::now())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    sender.await.unwrap();
    app.wait_drained().await;
    // Recovery applies whatever a paused worker left in the outbox.
    adtrack::worker::recover_outbox(
        &app.pool,
        &mut conn,
        &adtrack::counters::Counters::new(app.keys.clone()),
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    let now = Utc::now();
    for ad in ADS {
        let a = app.analytics(ad, "all").await;
        let clicks = events
            .iter()
            .filter(|e| e.ad == Some(ad) && e.kind == "click")
            .count();
        let imps = events
            .iter()
            .filter(|e| e.ad == Some(ad) && e.kind == "impression")
            .count();
        assert_eq!(a["totalClicks"], clicks, "{ad}: {a}");
        assert_eq!(a["impressions"], imps, "{ad}: {a}");
        let recent = events
            .iter()
            .filter(|e| e.ad == Some(ad) && e.kind == "click" && in_window(e.at, now, "1h"))
            .count();
        assert_eq!(app.analytics(ad, "1h").await["totalClicks"], recent, "{ad}");
    }
    app.stop().await;
}

#[tokio::test]
async fn analytics_validate_their_query_and_answer_zeros_for_unknown_ads() {
    let app = spawn_app().await;
    let a = app.analytics("never-seen", "24h").await;
    assert_eq!(a["adId"], "never-seen");
    assert_eq!(a["timeframe"], "24h");
    assert_eq!(a["impressions"], 0);
    assert_eq!(a["totalClicks"], 0);
    assert_eq!(a["uniqueClicks"], 0);
    assert_eq!(a["ctr"], 0.0);
    assert_eq!(a["hourlyClicks"].as_object().unwrap().len(), 24);
    assert_eq!(
        app.analytics("never-seen", "7d").await["hourlyClicks"]
            .as_object()
            .unwrap()
            .len(),
        168
    );
    // The default timeframe is 24h.
    let (_, d) = app.get("/ads/analytics?adId=never-seen").await;
    assert_eq!(d["timeframe"], "24h");
    for query in [
        "",
        "?timeframe=1h",
        "?adId=bad%20id",
        "?adId=x&timeframe=2h",
        "?adId=%ZZ",
    ] {
        let (status, body) = app.get(&format!("/ads/analytics{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, _) = app.get("/campaigns/bad%20id/screens").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = app.get("/campaigns/unknown-campaign/screens").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn the_catalogue_is_seeded_with_the_seed_ad() {
    let app = spawn_app().await;
    let (status, ads) = app.get("/ads").await;
    assert_eq!(status, StatusCode::OK);
    let ads = ads.as_array().unwrap();
    assert!(ads.len() >= 3);
    assert!(ads
        .iter()
        .any(|a| a["id"] == "11111111-1111-1111-1111-111111111111"));
    for a in ads {
        for field in ["id", "title", "videoUrl", "targetUrl", "campaignId"] {
            assert!(a[field].is_string(), "{a} lacks {field}");
        }
    }
    let campaigns: BTreeSet<&str> = ads
        .iter()
        .map(|a| a["campaignId"].as_str().unwrap())
        .collect();
    assert!(campaigns.len() >= 2);
    // Catalogue campaigns are listed even before any play.
    let (_, list) = app.get("/campaigns").await;
    for c in campaigns {
        assert!(
            list.as_array()
                .unwrap()
                .iter()
                .any(|r| r["campaignId"] == c),
            "{c} missing from {list}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_reconcile_whose_swap_no_replica_confirms_fails_and_counting_stays_exact() {
    // One Redis without replicas: REDIS_MIN_REPLICAS=1 can never be met.
    let app = spawn_app().await;
    for i in 0..5 {
        app.click(json!({ "adId": "ad-wait", "ipAddress": format!("192.0.2.{i}") }))
            .await;
    }
    app.wait_drained().await;
    let mut conn = app.redis.clone();
    let unconfirmable = adtrack::redis_client::Replication {
        replicas: 1,
        timeout: std::time::Duration::from_millis(50),
    };
    let err = adtrack::counters::reconcile_confirmed(
        &app.pool,
        &mut conn,
        &app.keys,
        unconfirmable,
        Utc::now(),
    )
    .await
    .expect_err("no replica can confirm the swap");
    assert!(format!("{err:#}").contains("replica"), "{err:#}");
    // The workers are let go again, and counting goes on exactly.
    app.click(json!({ "adId": "ad-wait", "ipAddress": "192.0.2.9" }))
        .await;
    app.wait_drained().await;
    assert_eq!(app.analytics("ad-wait", "1h").await["totalClicks"], 6);
    adtrack::counters::reconcile(&app.pool, &mut conn, &app.keys, Utc::now())
        .await
        .unwrap();
    assert_eq!(app.analytics("ad-wait", "1h").await["totalClicks"], 6);
}

/// Once an ad's all-time figures are in Redis (its first all-time read
/// builds them from Postgres), each batch adds its clicks' IPs to the
/// all-time unique-click estimate, as to the windows'.
#[tokio::test]
async fn batches_add_their_clicks_to_an_existing_all_time_unique_estimate() {
    let app = spawn_app().await;
    let ad = "ad-unique-all";
    for ip in ["10.3.0.1", "10.3.0.2"] {
        app.click(json!({"adId": ad, "ipAddress": ip})).await;
    }
    app.wait_drained().await;
    let all = app.analytics(ad, "all").await;
    assert_eq!(all["uniqueClicks"], 2, "{all}");
    // One known IP, two new ones, one of them twice.
    for ip in ["10.3.0.1", "10.3.0.3", "10.3.0.4", "10.3.0.4"] {
        app.click(json!({"adId": ad, "ipAddress": ip})).await;
    }
    app.wait_drained().await;
    for timeframe in ["1h", "all"] {
        let a = app.analytics(ad, timeframe).await;
        assert_eq!(a["totalClicks"], 6, "{timeframe}: {a}");
        assert_eq!(a["uniqueClicks"], 4, "{timeframe}: {a}");
    }
    app.stop().await;
}
