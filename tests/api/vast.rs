//! Video-ad tracking: the VAST event kinds on the JSON endpoints, the VAST
//! document, its tracking pixels and the click redirect.

use std::collections::HashSet;
use std::time::Duration;

use adtrack::domain::Kind;
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    private_redis, spawn_app, spawn_app_with, start, test_settings, wait_until, Backends, PgProxy,
    TestApp,
};

#[tokio::test]
async fn video_kinds_are_accepted_stored_listed_and_filtered() {
    let app = spawn_app().await;
    let ad = "ad-video";
    let kinds = [
        "start",
        "firstQuartile",
        "midpoint",
        "thirdQuartile",
        "complete",
        "skip",
        "error",
    ];
    for kind in kinds {
        let (status, body) = app
            .post("/events", &json!({"type": kind, "adId": ad}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{kind}: {body}");
    }
    let (status, body) = app
        .post(
            "/events/batch",
            &json!({"events": [{"type": "error", "adId": ad, "errorCode": 405}]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");

    // An error code is for error events only, and is a VAST code.
    for bad in [
        json!({"type": "complete", "adId": ad, "errorCode": 405}),
        json!({"type": "error", "adId": ad, "errorCode": 99}),
        json!({"type": "error", "adId": ad, "errorCode": 1000}),
        json!({"type": "error", "adId": ad, "errorCode": "405"}),
    ] {
        let (status, body) = app.post("/events", &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("errorCode"),
            "{body}"
        );
    }
    // A video kind needs an adId like every kind but play.
    let (status, body) = app.post("/events", &json!({"type": "midpoint"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    app.wait_drained().await;
    assert_eq!(app.stored().await, 8);

    // /events lists them with their code and filters on each kind.
    let (status, listed) = app.get("/events?type=error").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let codes: Vec<Value> = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["errorCode"].clone())
        .collect();
    assert_eq!(codes.len(), 2, "{listed}");
    assert!(
        codes.contains(&json!(405)) && codes.contains(&Value::Null),
        "{listed}"
    );
    for kind in kinds {
        let (_, listed) = app.get(&format!("/events?type={kind}&adId={ad}")).await;
        let n = if kind == "error" { 2 } else { 1 };
        assert_eq!(
            listed["events"].as_array().unwrap().len(),
            n,
            "{kind}: {listed}"
        );
        assert_eq!(listed["events"][0]["type"], kind, "{listed}");
        let (status, agg) = app
            .get(&format!("/aggregates?adId={ad}&type={kind}&groupBy=day"))
            .await;
        assert_eq!(status, StatusCode::OK, "{agg}");
        assert_eq!(agg["count"], n, "{kind}: {agg}");
    }
    let a = app.analytics(ad, "1h").await;
    assert_eq!(a["errors"], 2, "{a}");
    assert_eq!(a["errorsByCode"], json!({"405": 1, "unknown": 1}), "{a}");
    assert_eq!(a["completes"], 1, "{a}");
    // No impressions: the completion rate is 0, like the CTR.
    assert_eq!(a["completionRate"], 0.0, "{a}");
    app.stop().await;
}

/// A catalogue ad of the demo seed.
pub(crate) const AD: &str = "11111111-1111-1111-1111-111111111111";
/// Its catalogue targetUrl.
const TARGET: &str = "https://example.com/aurora";
/// The pixels that store an event, and their kinds.
const STORED: [&str; 8] = [
    "impression",
    "start",
    "firstQuartile",
    "midpoint",
    "thirdQuartile",
    "complete",
    "skip",
    "error",
];

/// One served document: its view id and the URLs it lists.
#[derive(Clone, Debug)]
pub(crate) struct Served {
    pub(crate) view: Uuid,
    /// (event, URL) for the impression, every tracking event and the error.
    pub(crate) pixels: Vec<(String, String)>,
    pub(crate) click: String,
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The text of every `<tag …>text</tag>` in `xml`, with its start tag.
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<(&'a str, String)> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i..];
        let Some(gt) = after.find('>') else { break };
        let head = &after[..gt];
        // `<Tracking` must not match `<TrackingEvents`.
        if !head[open.len()..].starts_with([' ', '>']) && !head[open.len()..].is_empty() {
            rest = &after[open.len()..];
            continue;
        }
        let Some(end) = after.find(&close) else { break };
        out.push((head, unescape(&after[gt + 1..end])));
        rest = &after[end + close.len()..];
    }
    out
}

fn parse_document(xml: &str) -> Served {
    let view = elements(xml, "AdServingId")[0].1.parse().unwrap();
    let mut pixels = vec![(
        "impression".to_owned(),
        elements(xml, "Impression")[0].1.clone(),
    )];
    for (head, url) in elements(xml, "Tracking") {
        let event = head
            .split("event=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        pixels.push((event.to_owned(), url));
    }
    pixels.push(("error".to_owned(), elements(xml, "Error")[0].1.clone()));
    let click = elements(xml, "ClickThrough")[0].1.clone();
    Served {
        view,
        pixels,
        click,
    }
}

pub(crate) async fn serve(app: &TestApp, ad: &str) -> (Served, String) {
    let res = app
        .client
        .get(app.url(&format!("/vast/{ad}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["content-type"],
        "application/xml; charset=utf-8"
    );
    assert_eq!(res.headers()["cache-control"], "no-store");
    let xml = res.text().await.unwrap();
    (parse_document(&xml), xml)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Fires `url` as a player does; asserts the pixel answer when it is 200.
async fn fire(client: &reqwest::Client, url: &str) -> StatusCode {
    let res = client.get(url).send().await.unwrap();
    let status = res.status();
    if status == StatusCode::OK {
        assert_eq!(res.headers()["content-type"], "image/gif");
        assert_eq!(res.headers()["cache-control"], "no-store");
        assert_eq!(res.bytes().await.unwrap().len(), 43, "a 1x1 GIF");
    }
    status
}

fn kind_of(event: &str) -> Option<Kind> {
    STORED.contains(&event).then(|| Kind::parse(event).unwrap())
}

/// (eventId, kind, errorCode, videoPlaybackTime, event time, properties)
/// of the stored events of `ad`.
async fn stored_events(
    app: &TestApp,
    ad: &str,
) -> Vec<(Uuid, String, Option<i16>, Option<f64>, DateTime<Utc>, Value)> {
    sqlx::query_as(
        "SELECT event_id, kind, error_code, playback_time, event_time, coalesce(properties, '{}') FROM events WHERE ad_id = $1",
    )
    .bind(ad)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

fn xmllint() -> std::process::Command {
    std::process::Command::new("xmllint")
}

/// The IAB's VAST 4.2 schema. Its licence grants no right to redistribute
/// it, so the repository does not ship it: `.ci/vast-xsd.sh` downloads the
/// pinned file and checks its digest.
fn vast_xsd() -> std::path::PathBuf {
    let path = std::env::var_os("VAST_XSD").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/vast/vast_4.2.xsd"),
        std::path::PathBuf::from,
    );
    assert!(
        path.is_file(),
        "the VAST 4.2 XSD is missing at {}: run `bash .ci/vast-xsd.sh` (or set VAST_XSD)",
        path.display()
    );
    path
}

#[tokio::test]
async fn every_catalogue_ads_document_validates_against_the_vast_4_xsd() {
    let xsd = vast_xsd();
    let version = xmllint()
        .arg("--version")
        .output()
        .expect("xmllint is required (apt-get install libxml2-utils)");
    assert!(version.status.success());
    let app = spawn_app().await;
    let (_, ads) = app.get("/ads").await;
    let ads = ads.as_array().unwrap();
    assert_eq!(ads.len(), 4);
    let dir = tempfile::tempdir().unwrap();
    for ad in ads {
        let id = ad["id"].as_str().unwrap();
        let (served, xml) = serve(&app, id).await;
        // What players get keeps the raw macros they substitute, and names
        // every event the document must track.
        assert!(
            xml.contains("<VAST version=\"4.2\" xmlns=\"http://www.iab.com/VAST\">"),
            "{xml}"
        );
        assert!(
            xml.contains("[ERRORCODE]") && xml.contains("[ADPLAYHEAD]"),
            "{xml}"
        );
        assert!(xml.contains(&format!(
            "<UniversalAdId idRegistry=\"adtrack\">{id}</UniversalAdId>"
        )));
        assert!(xml.contains(&format!(
            "<AdTitle>{}</AdTitle>",
            ad["title"].as_str().unwrap()
        )));
        let events: Vec<&str> = served.pixels.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(
            events,
            [
                "impression",
                "start",
                "firstQuartile",
                "midpoint",
                "thirdQuartile",
                "complete",
                "pause",
                "resume",
                "mute",
                "unmute",
                "skip",
                "closeLinear",
                "error"
            ]
        );
        assert!(served
            .pixels
            .iter()
            .all(|(_, u)| u.contains(&served.view.to_string()) || u.contains("/t/")));
        // XSD validators refuse raw brackets in anyURI: validate a copy
        // with them percent-encoded.
        let encoded = xml.replace('[', "%5B").replace(']', "%5D");
        let file = dir.path().join(format!("{id}.xml"));
        std::fs::write(&file, &encoded).unwrap();
        let out = xmllint()
            .arg("--noout")
            .arg("--schema")
            .arg(&xsd)
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{id} does not validate:\n{}\n{xml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // HEAD answers the same headers; an unknown ad is a JSON 404.
    let head = app
        .client
        .head(app.url(&format!("/vast/{AD}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-type"],
        "application/xml; charset=utf-8"
    );
    for unknown in ["no-such-ad", "%00", "a%2Fb"] {
        let (status, body) = app.get(&format!("/vast/{unknown}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}: {body}");
        assert_eq!(body["error"], "not_found", "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn pixels_with_unsubstituted_macros_and_sentinels_are_200_and_stored_as_unknown() {
    let app = spawn_app().await;
    let client = no_redirects();
    // Raw macros, as a player that fills none sends them; percent-encoded
    // brackets, as a browser may; and VAST's sentinels -1 (unknown) and -2
    // (hidden).
    let mut views = Vec::new();
    for variant in ["raw", "encoded", "-1", "-2"] {
        let (served, _) = serve(&app, AD).await;
        for (event, url) in &served.pixels {
            let url = match variant {
                "raw" => url.clone(),
                "encoded" => url.replace('[', "%5B").replace(']', "%5D"),
                sentinel => {
                    let (path, query) = url.split_once('?').unwrap();
                    let query: Vec<String> = query
                        .split('&')
                        .map(|p| format!("{}={sentinel}", p.split('=').next().unwrap()))
                        .collect();
                    format!("{path}?{}", query.join("&"))
                }
            };
            assert_eq!(
                fire(&client, &url).await,
                StatusCode::OK,
                "{variant} {event}: {url}"
            );
        }
        // HEAD fires too.
        let head = client.head(&served.pixels[1].1).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        views.push(served.view);
    }
    app.wait_drained().await;
    let stored = stored_events(&app, AD).await;
    assert_eq!(stored.len(), 4 * STORED.len(), "{stored:?}");
    for (id, kind, code, playhead, at, properties) in &stored {
        // Unknown everywhere: no code, no playhead, the server's time, and
        // only the view in properties.
        assert_eq!(*code, None, "{kind}");
        assert_eq!(*playhead, None, "{kind}");
        assert!(
            (Utc::now() - *at) < chrono::Duration::minutes(2),
            "{kind} {at}"
        );
        let view: Uuid = properties["viewId"].as_str().unwrap().parse().unwrap();
        assert!(views.contains(&view));
        assert_eq!(properties.as_object().unwrap().len(), 1, "{properties}");
        assert_eq!(
            *id,
            adtrack::vast::event_id(view, Kind::parse(kind).unwrap())
        );
    }
    // The player-state pixels are counted, not stored.
    assert_eq!(
        app.metric_where("adtrack_vast_player_events_total", &[("event", "pause")])
            .await,
        4.0
    );
    let a = app.analytics(AD, "1h").await;
    assert_eq!(a["impressions"], 4, "{a}");
    assert_eq!(a["completes"], 4, "{a}");
    assert_eq!(a["errorsByCode"], json!({"unknown": 4}), "{a}");
    assert_eq!(a["completionRate"], 1.0, "{a}");
    app.stop().await;
}

#[tokio::test]
async fn substituted_macros_are_stored_on_the_event() {
    let app = spawn_app().await;
    let client = no_redirects();
    let (served, _) = serve(&app, AD).await;
    let at = Utc::now() - chrono::Duration::minutes(7);
    let ts = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for (event, url) in &served.pixels {
        let url = url
            .replace("[TIMESTAMP]", &ts)
            .replace("[ADPLAYHEAD]", "00:00:03.500")
            .replace("[ERRORCODE]", "405")
            .replace("[CONTENTPLAYHEAD]", "00:10:00")
            .replace("[ASSETURI]", "https%3A%2F%2Fcdn.example%2Fa.mp4");
        assert_eq!(fire(&client, &url).await, StatusCode::OK, "{event}");
    }
    app.wait_drained().await;
    let stored = stored_events(&app, AD).await;
    assert_eq!(stored.len(), STORED.len());
    for (_, kind, code, playhead, time, properties) in &stored {
        assert_eq!(*code, (kind == "error").then_some(405), "{kind}");
        assert_eq!(*playhead, Some(3.5), "{kind}");
        assert_eq!(time.timestamp_millis(), at.timestamp_millis(), "{kind}");
        assert_eq!(properties["contentPlayhead"], 600.0, "{properties}");
        assert_eq!(
            properties["assetUri"], "https://cdn.example/a.mp4",
            "{properties}"
        );
    }
    let a = app.analytics(AD, "1h").await;
    assert_eq!(a["errorsByCode"], json!({"405": 1}), "{a}");
    app.stop().await;
}

#[tokio::test]
async fn a_pixel_fired_twice_counts_once_and_each_view_once() {
    let app = spawn_app().await;
    let client = no_redirects();
    let (first, _) = serve(&app, AD).await;
    let (second, _) = serve(&app, AD).await;
    assert_ne!(first.view, second.view, "every document is a new view");
    for served in [&first, &first, &second, &second, &first] {
        for (event, url) in &served.pixels {
            assert_eq!(fire(&client, url).await, StatusCode::OK, "{event}");
        }
        assert_eq!(
            client.get(&served.click).send().await.unwrap().status(),
            StatusCode::FOUND
        );
    }
    app.wait_drained().await;
    let stored = stored_events(&app, AD).await;
    assert_eq!(stored.len(), 2 * (STORED.len() + 1), "{stored:?}");
    let a = app.analytics(AD, "all").await;
    for figure in [
        "impressions",
        "starts",
        "firstQuartiles",
        "midpoints",
        "thirdQuartiles",
        "completes",
        "skips",
        "errors",
        "totalClicks",
    ] {
        assert_eq!(a[figure], 2, "{figure}: {a}");
    }
    // One view, one click: the CTR of two views each clicked three times.
    assert_eq!(a["ctr"], 1.0, "{a}");
    assert_eq!(
        app.metric_where("adtrack_events_enqueued_total", &[("type", "start")])
            .await,
        5.0,
        "every firing went through ingest"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_click_redirect_goes_only_to_the_catalogue_target() {
    let app = spawn_app().await;
    let client = no_redirects();
    let (served, _) = serve(&app, AD).await;
    let forged = [
        "&target=https://evil.example",
        "&url=https%3A%2F%2Fevil.example",
        "&redirect=//evil.example&next=https://evil.example&targetUrl=https://evil.example",
    ];
    for extra in forged {
        let res = client
            .get(format!("{}{extra}", served.click))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FOUND, "{extra}");
        assert_eq!(res.headers()["location"], TARGET, "{extra}");
    }
    // A view adtrack did not sign, a token edited by one character, and a
    // view signed by another deployment's key: 404, no Location, nothing
    // stored.
    let token = served
        .click
        .split("/c/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let mut edited = token.to_owned().into_bytes();
    edited[10] = if edited[10] == b'A' { b'B' } else { b'A' };
    let other = adtrack::vast::ViewSigner::new(Some("someone else's key, 32 characters"));
    let (_, foreign) = other.mint(&adtrack::domain::Ident::parse(AD).unwrap(), "", Utc::now());
    for bad in [
        "not-a-view".to_owned(),
        String::from_utf8(edited).unwrap(),
        foreign,
    ] {
        let res = client
            .get(app.url(&format!("/c/{bad}?target=https://evil.example")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{bad}");
        assert!(res.headers().get("location").is_none());
        assert_eq!(
            fire(&client, &app.url(&format!("/t/{bad}/start"))).await,
            StatusCode::NOT_FOUND
        );
    }
    // A signed view of an ad no longer in the catalogue: 404, not a redirect.
    sqlx::query("DELETE FROM ads WHERE id = $1")
        .bind(AD)
        .execute(&app.pool)
        .await
        .unwrap();
    let res = client.get(&served.click).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.headers().get("location").is_none());
    app.wait_drained().await;
    let stored = stored_events(&app, AD).await;
    assert_eq!(stored.len(), 1, "the view's one click: {stored:?}");
    assert_eq!(stored[0].1, "click");
    assert_eq!(
        stored[0].0,
        adtrack::vast::event_id(served.view, Kind::Click)
    );
    app.stop().await;
}

#[tokio::test]
async fn tenant_documents_carry_an_opaque_view_never_the_api_key() {
    let app = spawn_app_with(|s| s.tenants = true).await;
    let key = adtrack::tenants::create(&app.pool, "acme", "Acme")
        .await
        .unwrap();
    let (status, _) = app.get(&format!("/vast/{AD}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let xml = app
        .client
        .get(app.url(&format!("/vast/{AD}")))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!xml.contains(&key) && !xml.contains(&key[..12]), "{xml}");
    let served = parse_document(&xml);
    let client = no_redirects();
    for (event, url) in &served.pixels {
        assert_eq!(fire(&client, url).await, StatusCode::OK, "{event}");
    }
    app.wait_drained().await;
    let tenants: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM events")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(tenants, ["acme"]);
    let res = app
        .client
        .get(app.url(&format!("/ads/analytics?adId={AD}&timeframe=1h")))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    let a: Value = res.json().await.unwrap();
    assert_eq!(a["completes"], 1, "{a}");
    app.stop().await;
}

/// Fires every pixel of `views` twice from `concurrency` tasks; returns the
/// eventIds of the stored kinds that were answered 200, and how many
/// answers were anything else.
async fn fire_views(
    base_client: reqwest::Client,
    views: Vec<Served>,
    concurrency: usize,
) -> (HashSet<Uuid>, usize) {
    let chunks: Vec<Vec<Served>> = views
        .chunks(views.len().div_ceil(concurrency))
        .map(<[Served]>::to_vec)
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let client = base_client.clone();
        tasks.push(tokio::spawn(async move {
            let mut answered = HashSet::new();
            let mut refused = 0;
            for _ in 0..2 {
                for served in &chunk {
                    for (event, url) in &served.pixels {
                        match client.get(url).send().await.map(|r| r.status()) {
                            Ok(StatusCode::OK) => {
                                if let Some(kind) = kind_of(event) {
                                    answered.insert(adtrack::vast::event_id(served.view, kind));
                                }
                            }
                            _ => refused += 1,
                        }
                    }
                }
            }
            (answered, refused)
        }));
    }
    let mut answered = HashSet::new();
    let mut refused = 0;
    for t in tasks {
        let (a, r) = t.await.unwrap();
        answered.extend(a);
        refused += r;
    }
    (answered, refused)
}

/// Every answered pixel stored once, its rollups and counters equal.
async fn assert_pixels_counted_once(app: &TestApp, answered: &HashSet<Uuid>) {
    let stored: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT event_id, kind FROM events WHERE ad_id = $1")
            .bind(AD)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let ids: HashSet<Uuid> = stored.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), stored.len(), "an event stored twice");
    assert_eq!(&ids, answered, "stored events differ from answered pixels");
    let rolled: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(events), 0)::bigint FROM rollup_minute WHERE ad_id = $1",
    )
    .bind(AD)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(rolled as usize, answered.len(), "rollups differ");
    let a = app.analytics(AD, "all").await;
    for (kind, figure) in [
        ("impression", "impressions"),
        ("start", "starts"),
        ("complete", "completes"),
        ("error", "errors"),
    ] {
        let n = stored.iter().filter(|(_, k)| k == kind).count();
        assert_eq!(a[figure], n, "{figure}: {a}");
    }
}

async fn serve_many(app: &TestApp, n: usize) -> Vec<Served> {
    let mut views = Vec::with_capacity(n);
    for _ in 0..n {
        views.push(serve(app, AD).await.0);
    }
    views
}

#[tokio::test]
async fn pixels_survive_redis_killed_mid_stream_and_count_once() {
    let mut redis = private_redis().await;
    let url = redis.url();
    let app = spawn_app_with(|s| s.redis_url = url.clone()).await;
    let views = serve_many(&app, 200).await;
    let sender = tokio::spawn(fire_views(no_redirects(), views, 8));
    wait_until("pixels are stored", Duration::from_secs(30), || async {
        app.stored().await > 0
    })
    .await;
    redis.kill();
    wait_until("pixels are spooled", Duration::from_secs(30), || async {
        app.metric("adtrack_events_spooled_total").await > 0.0
    })
    .await;
    redis.restart().await;
    let (answered, refused) = sender.await.unwrap();
    assert_eq!(refused, 0, "pixels must keep answering 200");
    // The test's own Redis connection broke with the kill: a new one.
    Backends::connect(&app.settings).await.wait_drained().await;
    assert!(app.metric("adtrack_events_spooled_total").await > 0.0);
    assert_eq!(answered.len(), 200 * STORED.len());
    assert_pixels_counted_once(&app, &answered).await;
    app.stop().await;
}

#[tokio::test]
async fn pixels_survive_a_postgres_cut_and_count_once() {
    let proxy = PgProxy::start().await;
    let mut settings = test_settings();
    let db = settings.database_url.rsplit('/').next().unwrap().to_owned();
    settings.database_url = proxy.url(&db);
    let app = start(settings, adtrack::app::Role::All).await;
    // Documents need the catalogue: serve them before the cut.
    let views = serve_many(&app, 200).await;
    let sender = tokio::spawn(fire_views(no_redirects(), views, 8));
    wait_until("pixels are queued", Duration::from_secs(30), || async {
        app.metric_where("adtrack_vast_pixels_total", &[("event", "impression")])
            .await
            > 0.0
    })
    .await;
    proxy.cut();
    let enough = (app.settings.worker_count * (app.settings.max_attempts as usize + 1)) as f64;
    wait_until(
        "the workers fail more rounds than MAX_ATTEMPTS",
        Duration::from_secs(60),
        || async { app.metric("adtrack_outages_total").await >= enough },
    )
    .await;
    proxy.restore();
    let (answered, refused) = sender.await.unwrap();
    assert_eq!(refused, 0, "a Postgres outage must not affect pixels");
    app.wait_drained().await;
    assert_eq!(answered.len(), 200 * STORED.len());
    assert_pixels_counted_once(&app, &answered).await;
    app.stop().await;
}

#[tokio::test]
async fn pixels_and_posts_share_the_rate_limits() {
    // Three events at once per client: two POSTs and one pixel take them,
    // the next pixel is refused with Retry-After and stores nothing.
    let app = spawn_app_with(|s| {
        s.rate_limit_per_ip = 1;
        s.rate_limit_burst = Some(4);
    })
    .await;
    let client = no_redirects();
    // The document itself costs one event.
    let (served, _) = serve(&app, AD).await;
    for _ in 0..2 {
        let (status, body) = app
            .post("/events", &json!({"type": "start", "adId": AD}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    assert_eq!(fire(&client, &served.pixels[0].1).await, StatusCode::OK);
    let res = client.get(&served.pixels[1].1).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().get("retry-after").is_some());
    app.wait_drained().await;
    let stored = stored_events(&app, AD).await;
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(!stored
        .iter()
        .any(|e| e.0 == adtrack::vast::event_id(served.view, Kind::Start)));
    app.stop().await;
}
