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
#[derive(Clone, Debug, PartialEq)]
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

/// The values the VAST 4.2 schema enumerates for `Tracking@event` in a
/// `Linear` (`TrackingEvents_type`).
const SCHEMA_TRACKING_EVENTS: [&str; 26] = [
    "mute",
    "unmute",
    "pause",
    "resume",
    "rewind",
    "skip",
    "playerExpand",
    "playerCollapse",
    "loaded",
    "start",
    "firstQuartile",
    "midpoint",
    "thirdQuartile",
    "complete",
    "progress",
    "closeLinear",
    "creativeView",
    "acceptInvitation",
    "adExpand",
    "adCollapse",
    "minimize",
    "close",
    "overlayViewDuration",
    "otherAdInteraction",
    "interactiveStart",
    "interactiveEnd",
];

const VAST_NS: &str = "http://www.iab.com/VAST";

/// The element children of `node`, by local name, in document order.
fn children<'a, 'i>(node: roxmltree::Node<'a, 'i>) -> Vec<roxmltree::Node<'a, 'i>> {
    node.children().filter(|c| c.is_element()).collect()
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> roxmltree::Node<'a, 'i> {
    let found: Vec<_> = children(node)
        .into_iter()
        .filter(|c| c.tag_name().name() == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one <{name}> in <{}>",
        node.tag_name().name()
    );
    found[0]
}

/// An absolute http(s) URL, as the schema's `anyURI` values must be for a
/// player to fire them (trimmed, as the schema's whitespace rule allows).
fn url_text(node: roxmltree::Node<'_, '_>) -> String {
    let text = node.text().unwrap_or_default().trim().to_owned();
    assert!(
        text.starts_with("http://") || text.starts_with("https://"),
        "<{}> holds {text:?}",
        node.tag_name().name()
    );
    assert!(!text.contains(char::is_whitespace), "{text:?}");
    text
}

/// What the VAST 4.2 schema requires of the document adtrack emits, checked
/// without the schema (its licence keeps it out of the repository; see
/// `scripts/validate-vast-xsd` for the check against the real XSD): a
/// well-formed document in the VAST namespace, version 4.x, with the
/// InLine elements the schema makes required in its order, a `Linear`
/// whose `Duration` is `HH:MM:SS.mmm`, a `MediaFile` with every required
/// attribute, `Tracking` events from the schema's enumeration, and
/// `UniversalAdId` with its `idRegistry`. Returns the parsed view.
fn assert_vast_4_structure(xml: &str, title: &str) -> Served {
    let doc = roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("not XML: {e}\n{xml}"));
    let vast = doc.root_element();
    assert_eq!(vast.tag_name().name(), "VAST");
    assert_eq!(vast.tag_name().namespace(), Some(VAST_NS), "{xml}");
    assert!(
        vast.attribute("version")
            .is_some_and(|v| v.starts_with("4.")),
        "{xml}"
    );
    for node in doc.descendants().filter(|n| n.is_element()) {
        assert_eq!(
            node.tag_name().namespace(),
            Some(VAST_NS),
            "<{}> outside the VAST namespace",
            node.tag_name().name()
        );
    }
    let ad = child(vast, "Ad");
    assert!(ad.attribute("id").is_some_and(|id| !id.is_empty()));
    let inline = child(ad, "InLine");
    // InLine is a sequence: required elements, in the schema's order.
    let order: Vec<&str> = children(inline)
        .iter()
        .map(|c| c.tag_name().name())
        .collect();
    assert_eq!(
        order,
        [
            "AdSystem",
            "Error",
            "Impression",
            "AdServingId",
            "AdTitle",
            "Creatives"
        ],
        "{xml}"
    );
    assert_eq!(child(inline, "AdSystem").text(), Some("adtrack"));
    assert_eq!(child(inline, "AdTitle").text().unwrap_or_default(), title);
    let view: Uuid = child(inline, "AdServingId")
        .text()
        .unwrap_or_default()
        .parse()
        .unwrap();
    let impression = url_text(child(inline, "Impression"));
    let error = url_text(child(inline, "Error"));
    assert!(error.contains("[ERRORCODE]"), "{error}");
    let creatives = children(child(inline, "Creatives"));
    assert_eq!(creatives.len(), 1);
    let creative = creatives[0];
    assert_eq!(creative.tag_name().name(), "Creative");
    // Creative_Inline_type: Linear, then UniversalAdId (required, with
    // its required idRegistry).
    let order: Vec<&str> = children(creative)
        .iter()
        .map(|c| c.tag_name().name())
        .collect();
    assert_eq!(order, ["Linear", "UniversalAdId"], "{xml}");
    let universal = child(creative, "UniversalAdId");
    assert!(universal
        .attribute("idRegistry")
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(universal.text(), ad.attribute("id"));
    let linear = child(creative, "Linear");
    let order: Vec<&str> = children(linear)
        .iter()
        .map(|c| c.tag_name().name())
        .collect();
    assert_eq!(
        order,
        ["TrackingEvents", "Duration", "MediaFiles", "VideoClicks"],
        "{xml}"
    );
    let duration = child(linear, "Duration").text().unwrap_or_default();
    let d = duration.as_bytes();
    assert!(
        d.len() == 12
            && d[2] == b':'
            && d[5] == b':'
            && d[8] == b'.'
            && [0, 1, 3, 4, 6, 7, 9, 10, 11]
                .iter()
                .all(|&i| d[i].is_ascii_digit())
            && duration[3..5] < *"60"
            && duration[6..8] < *"60",
        "Duration {duration:?} is not HH:MM:SS.mmm"
    );
    let files = children(child(linear, "MediaFiles"));
    assert_eq!(files.len(), 1);
    let file = files[0];
    assert_eq!(file.tag_name().name(), "MediaFile");
    assert!(matches!(
        file.attribute("delivery"),
        Some("progressive" | "streaming")
    ));
    assert!(file.attribute("type").is_some_and(|t| t.contains('/')));
    for size in ["width", "height"] {
        let v: u32 = file.attribute(size).unwrap_or_default().parse().unwrap();
        assert!(v > 0, "{size}");
    }
    url_text(file);
    let mut pixels = vec![("impression".to_owned(), impression)];
    for tracking in children(child(linear, "TrackingEvents")) {
        assert_eq!(tracking.tag_name().name(), "Tracking");
        let event = tracking.attribute("event").unwrap_or_default();
        assert!(
            SCHEMA_TRACKING_EVENTS.contains(&event),
            "{event} is not in the schema's enumeration"
        );
        pixels.push((event.to_owned(), url_text(tracking)));
    }
    pixels.push(("error".to_owned(), error));
    let clicks = children(child(linear, "VideoClicks"));
    assert_eq!(clicks.len(), 1);
    assert_eq!(clicks[0].tag_name().name(), "ClickThrough");
    let click = url_text(clicks[0]);
    Served {
        view,
        pixels,
        click,
    }
}

/// The view token in a pixel or click URL of a document.
fn token_of(url: &str) -> &str {
    let path = url.split('?').next().unwrap_or_default();
    let rest = path
        .split_once("/t/")
        .or_else(|| path.split_once("/c/"))
        .unwrap_or_else(|| panic!("{url} is no pixel or click URL"))
        .1;
    rest.split('/').next().unwrap_or_default()
}

#[tokio::test]
async fn every_catalogue_ads_document_has_the_vast_4_structure() {
    let app = spawn_app().await;
    // An ad whose catalogue text needs escaping, beside the demo ads.
    let hostile = "Fish & <Chips> \"quoted\" 'single' ]]> \u{1}\u{fffe}";
    sqlx::query(
        "INSERT INTO ads (id, title, video_url, target_url, campaign_id) VALUES ('hostile', $1, '/v.mp4?a=1&b=<2>', 'https://example.com/?a=1&b=2', 'c')",
    )
    .bind(hostile)
    .execute(&app.pool)
    .await
    .unwrap();
    let (_, ads) = app.get("/ads").await;
    let ads = ads.as_array().unwrap();
    assert_eq!(ads.len(), 5);
    for ad in ads {
        let id = ad["id"].as_str().unwrap();
        let (_, xml) = serve(&app, id).await;
        // The XML writer drops what XML 1.0 cannot carry.
        let title: String = ad["title"]
            .as_str()
            .unwrap()
            .chars()
            .filter(|c| !c.is_control() && *c != '\u{fffe}' && *c != '\u{ffff}')
            .collect();
        let served = assert_vast_4_structure(&xml, &title);
        assert_eq!(served, parse_document(&xml), "{xml}");
        // What players get keeps the raw macros they substitute.
        assert!(
            xml.contains("[ERRORCODE]") && xml.contains("[ADPLAYHEAD]"),
            "{xml}"
        );
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
        // Every URL carries the same view token, and it is the served view
        // (signed, not encrypted: its bytes 1..17 are the view id).
        let tokens: HashSet<&str> = served
            .pixels
            .iter()
            .map(|(_, u)| token_of(u))
            .chain([token_of(&served.click)])
            .collect();
        assert_eq!(tokens.len(), 1, "{tokens:?}");
        let token = tokens.into_iter().next().unwrap();
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token)
                .unwrap();
        assert_eq!(Uuid::from_slice(&bytes[1..17]).unwrap(), served.view);
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
    // Within the window a pixel's time is believed in: from 5 minutes
    // before its view was issued (to the minute) to 5 minutes ahead.
    let at = Utc::now() - chrono::Duration::minutes(4);
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
    // A link scanner's HEAD gets the redirect and records no click.
    for _ in 0..3 {
        let res = client.head(&served.click).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FOUND);
        assert_eq!(res.headers()["location"], TARGET);
    }
    app.wait_drained().await;
    assert_eq!(
        app.metric_where("adtrack_vast_pixels_total", &[("event", "click")])
            .await,
        0.0
    );
    assert!(stored_events(&app, AD).await.is_empty());
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
    let token = token_of(&served.click);
    let mut edited = token.to_owned().into_bytes();
    edited[10] = if edited[10] == b'A' { b'B' } else { b'A' };
    let other = adtrack::vast::ViewSigner::new(b"someone else's key, 32 characters");
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
    // An ad added to the catalogue after the start is served at once (an
    // unknown id reloads the in-memory catalogue).
    sqlx::query(
        "INSERT INTO ads (id, title, video_url, target_url, campaign_id) VALUES ('added', 'Added', '/v.mp4', 'https://example.com/added', 'c')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let (added, _) = serve(&app, "added").await;
    let res = client.get(&added.click).send().await.unwrap();
    assert_eq!(res.headers()["location"], "https://example.com/added");
    // A signed view of an ad no longer in the catalogue: 404, not a
    // redirect, once the catalogue is reloaded (within its REFRESH).
    sqlx::query("DELETE FROM ads WHERE id = $1")
        .bind(AD)
        .execute(&app.pool)
        .await
        .unwrap();
    wait_until(
        "the deleted ad's click is a 404",
        adtrack::vast::catalogue::REFRESH * 3,
        || async {
            let res = client.get(&served.click).send().await.unwrap();
            res.status() == StatusCode::NOT_FOUND && res.headers().get("location").is_none()
        },
    )
    .await;
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

    // A player cannot send X-API-Key: the document URL carries the key's
    // publishable tag instead, obtained with the key.
    let (status, body) = app.get("/tenant/vast-tag").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let tagged: Value = app
        .client
        .get(app.url("/tenant/vast-tag"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tagged["tenant"], "acme", "{tagged}");
    let tag = tagged["tag"].as_str().unwrap().to_owned();
    assert!(!tag.contains(&key[4..12]) && tag.len() < 40, "{tag}");
    let res = client
        .get(app.url(&format!("/vast/{AD}?tag={tag}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let by_tag = parse_document(&res.text().await.unwrap());
    assert_eq!(fire(&client, &by_tag.pixels[0].1).await, StatusCode::OK);
    // The tag reads nothing, is no API key, and a forged one mints nothing.
    for path in [
        format!("/ads/analytics?adId={AD}&tag={tag}"),
        format!("/events?tag={tag}"),
        "/ads".to_owned(),
    ] {
        let res = client
            .get(app.url(&path))
            .header("x-api-key", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // Another first character: another tag (the last one holds padding bits).
    let first = if tag.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{first}{}", &tag[1..]);
    assert_ne!(forged, tag);
    for bad in [forged.as_str(), "", "x", &key] {
        let res = client
            .get(app.url(&format!("/vast/{AD}?tag={bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }
    app.wait_drained().await;
    let by_tenant: Vec<(String, i64)> =
        sqlx::query_as("SELECT tenant_id, count(*) FROM events GROUP BY 1")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(by_tenant, [("acme".to_owned(), STORED.len() as i64 + 1)]);

    // Revoked: the tag mints nothing, and the tenant's open views count no
    // more (the pixels of its last document are refused).
    adtrack::tenants::revoke(&app.pool, "acme", None)
        .await
        .unwrap();
    let res = client
        .get(app.url(&format!("/vast/{AD}?tag={tag}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    for (event, url) in by_tag.pixels.iter().skip(1) {
        assert_eq!(fire(&client, url).await, StatusCode::NOT_FOUND, "{event}");
    }
    let res = client.get(&by_tag.click).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.headers().get("location").is_none());
    app.wait_drained().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, STORED.len() as i64 + 1);
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
    // Documents are served before the cut; `during` is fired only while
    // Postgres is cut.
    let views = serve_many(&app, 200).await;
    let during = serve_many(&app, 20).await;
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
    // Pixels and click redirects answer while Postgres is cut: nothing on
    // their path reads it (the catalogue is in memory).
    let client = no_redirects();
    let mut during_cut = HashSet::new();
    for served in &during {
        for (event, url) in &served.pixels {
            assert_eq!(
                fire(&client, url).await,
                StatusCode::OK,
                "{event} during the cut"
            );
            if let Some(kind) = kind_of(event) {
                during_cut.insert(adtrack::vast::event_id(served.view, kind));
            }
        }
        let res = client.get(&served.click).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FOUND, "a click during the cut");
        assert_eq!(res.headers()["location"], TARGET);
        during_cut.insert(adtrack::vast::event_id(served.view, Kind::Click));
    }
    proxy.restore();
    let (mut answered, refused) = sender.await.unwrap();
    assert_eq!(refused, 0, "a Postgres outage must not affect pixels");
    assert_eq!(answered.len(), 200 * STORED.len());
    assert_eq!(during_cut.len(), 20 * (STORED.len() + 1));
    answered.extend(during_cut);
    app.wait_drained().await;
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
    // Clicks and documents are charged before the catalogue is looked up
    // (an unknown id would reload it from Postgres): over the limit, even
    // an unknown ad is a 429, and a click is refused, not recorded.
    for url in [
        app.url("/vast/no-such-ad"),
        app.url(&format!("/vast/{AD}")),
        served.click.clone(),
    ] {
        let res = client.get(&url).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "{url}");
        assert!(res.headers().get("retry-after").is_some());
        assert!(res.headers().get("location").is_none());
    }
    app.wait_drained().await;
    let stored = stored_events(&app, AD).await;
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(!stored
        .iter()
        .any(|e| e.0 == adtrack::vast::event_id(served.view, Kind::Start)));
    app.stop().await;
}

#[tokio::test]
async fn a_view_counts_in_every_process_of_the_database_and_after_a_restart() {
    // No VAST_SIGNING_KEY: the processes share the key stored in Postgres.
    let mut first = spawn_app().await;
    let client = no_redirects();
    let (served, _) = serve(&first, AD).await;
    let mut settings = first.settings.clone();
    settings.spool_dir =
        std::env::temp_dir().join(format!("adtrack-spool-{}", Uuid::new_v4().simple()));
    let mut second = start(settings, adtrack::app::Role::Api).await;
    let first_address = first.address.clone();
    let on = |app: &TestApp, url: &str| url.replacen(&first_address, &app.address, 1);
    // A view served by the first process counts on the second …
    assert_eq!(
        fire(&client, &on(&second, &served.pixels[0].1)).await,
        StatusCode::OK
    );
    // … and one served by the second counts on the first.
    let (other, _) = serve(&second, AD).await;
    let other_start = other.pixels[1]
        .1
        .replacen(&second.address, &first.address, 1);
    assert_eq!(fire(&client, &other_start).await, StatusCode::OK);
    second.shut_down().await;
    std::fs::remove_dir_all(&second.settings.spool_dir).ok();
    // After a restart, the first view's pixels and click still count.
    first.shut_down().await;
    let restarted = start(first.settings.clone(), adtrack::app::Role::All).await;
    assert_eq!(
        fire(&client, &on(&restarted, &served.pixels[1].1)).await,
        StatusCode::OK
    );
    let res = client
        .get(on(&restarted, &served.click))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    restarted.wait_drained().await;
    let mut ids: Vec<Uuid> = stored_events(&restarted, AD)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    ids.sort();
    let mut expected = vec![
        adtrack::vast::event_id(served.view, Kind::Impression),
        adtrack::vast::event_id(served.view, Kind::Start),
        adtrack::vast::event_id(served.view, Kind::Click),
        adtrack::vast::event_id(other.view, Kind::Start),
    ];
    expected.sort();
    assert_eq!(ids, expected);
    restarted.stop().await;
}

#[tokio::test]
async fn vast_signing_key_overrides_the_stored_key_and_the_previous_key_still_verifies() {
    let old = "an old signing key of 32 characters";
    let new = "a new signing key of 32 characters.";
    let mut first = spawn_app_with(|s| s.vast_signing_key = Some(old.into())).await;
    let client = no_redirects();
    let (served, _) = serve(&first, AD).await;
    // Signed with VAST_SIGNING_KEY, not the stored key.
    let token = token_of(&served.click);
    assert!(adtrack::vast::ViewSigner::new(old.as_bytes())
        .verify(token, Utc::now())
        .is_ok());
    first.shut_down().await;
    let mut settings = first.settings.clone();
    settings.vast_signing_key = Some(new.into());
    let rotated = start(settings.clone(), adtrack::app::Role::All).await;
    let on_rotated = served.pixels[0]
        .1
        .replacen(&first.address, &rotated.address, 1);
    // Without the old key as VAST_SIGNING_KEY_PREVIOUS, its views are refused.
    assert_eq!(fire(&client, &on_rotated).await, StatusCode::NOT_FOUND);
    let mut rotated = rotated;
    rotated.shut_down().await;
    settings.vast_signing_key_previous = Some(old.into());
    let with_previous = start(settings, adtrack::app::Role::All).await;
    let url = served.pixels[0]
        .1
        .replacen(&first.address, &with_previous.address, 1);
    assert_eq!(fire(&client, &url).await, StatusCode::OK);
    let (fresh, _) = serve(&with_previous, AD).await;
    let token = token_of(&fresh.click);
    assert!(adtrack::vast::ViewSigner::new(new.as_bytes())
        .verify(token, Utc::now())
        .is_ok());
    with_previous.stop().await;
}

#[tokio::test]
async fn analytics_and_live_answer_without_errors_by_code_while_postgres_is_cut() {
    let proxy = PgProxy::start().await;
    let mut settings = test_settings();
    let db = settings.database_url.rsplit('/').next().unwrap().to_owned();
    settings.database_url = proxy.url(&db);
    settings.report_timeout = Duration::from_secs(1);
    let app = start(settings, adtrack::app::Role::All).await;
    for event in [
        json!({"type": "impression", "adId": AD}),
        json!({"type": "error", "adId": AD, "errorCode": 405}),
    ] {
        let (status, body) = app.post("/events", &event).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    app.wait_drained().await;
    let a = app.analytics(AD, "24h").await;
    assert_eq!(a["errorsByCode"], json!({"405": 1}), "{a}");
    proxy.cut();
    // The Redis figures are answered; errorsByCode, from Postgres, is left
    // out and counted.
    let (status, a) = app
        .get(&format!("/ads/analytics?adId={AD}&timeframe=24h"))
        .await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["impressions"], 1, "{a}");
    assert_eq!(a["errors"], 1, "{a}");
    assert!(a.get("errorsByCode").is_none(), "{a}");
    assert!(
        app.metric_where(
            "adtrack_analytics_parts_missing_total",
            &[("part", "errorsByCode")]
        )
        .await
            >= 1.0
    );
    // /live streams the same figures.
    let mut live = app
        .client
        .get(app.url(&format!("/live?adId={AD}&timeframe=24h")))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !text.contains("event: analytics") {
        let chunk = tokio::time::timeout_at(deadline, live.chunk())
            .await
            .expect("an analytics event on /live while Postgres is cut")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(live);
    assert!(text.contains("\"errors\":1"), "{text}");
    assert!(!text.contains("errorsByCode"), "{text}");
    proxy.restore();
    wait_until("errorsByCode is back", Duration::from_secs(30), || async {
        app.analytics(AD, "24h").await["errorsByCode"] == json!({"405": 1})
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_pixel_time_is_believed_only_from_its_views_issue_to_five_minutes_ahead() {
    let app = spawn_app().await;
    let client = no_redirects();
    let (served, _) = serve(&app, AD).await;
    let now = Utc::now();
    let url = |event: &str, at: DateTime<Utc>| {
        let (_, url) = served.pixels.iter().find(|(e, _)| e == event).unwrap();
        url.replace(
            "[TIMESTAMP]",
            &at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
    };
    let believed = now - chrono::Duration::minutes(2);
    for (event, at) in [
        // Long before the view was issued (yet within the day's buckets).
        ("impression", now - chrono::Duration::minutes(30)),
        ("start", now - chrono::Duration::hours(20)),
        // Too far ahead.
        ("firstQuartile", now + chrono::Duration::minutes(10)),
        // Within the window.
        ("midpoint", believed),
    ] {
        assert_eq!(
            fire(&client, &url(event, at)).await,
            StatusCode::OK,
            "{event}"
        );
    }
    app.wait_drained().await;
    let stored = stored_events(&app, AD).await;
    assert_eq!(stored.len(), 4);
    for (_, kind, _, _, time, _) in &stored {
        if kind == "midpoint" {
            assert_eq!(time.timestamp_millis(), believed.timestamp_millis());
        } else {
            assert!(
                (*time - now).num_seconds().abs() < 60,
                "{kind} at {time}: the server's time, not the pixel's"
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn catalogue_targets_are_http_urls_without_line_breaks() {
    let app = spawn_app().await;
    let insert = |id: &'static str, target: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO ads (id, title, video_url, target_url, campaign_id) VALUES ($1, 't', '/v.mp4', $2, 'c')",
            )
            .bind(id)
            .bind(target)
            .execute(&pool)
            .await
        }
    };
    // Checked when written (migration 0012).
    for (id, bad) in [
        ("js", "javascript:alert(1)"),
        ("crlf", "https://example.com/\r\nSet-Cookie: a=b"),
        ("lf", "https://example.com/\n"),
        ("relative", "/somewhere"),
        ("empty", "https://"),
    ] {
        let err = insert(id, bad).await.unwrap_err().to_string();
        assert!(err.contains("ads_target_url_check"), "{bad:?}: {err}");
    }
    insert("upper", "HTTPS://example.com/ok").await.unwrap();
    // A row written before the check (NOT VALID leaves old rows alone) is
    // never a redirect: the click refuses it.
    sqlx::query("ALTER TABLE ads DROP CONSTRAINT ads_target_url_check")
        .execute(&app.pool)
        .await
        .unwrap();
    insert("old", "javascript:alert(1)").await.unwrap();
    let client = no_redirects();
    let (served, _) = serve(&app, "old").await;
    let res = client.get(&served.click).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.headers().get("location").is_none());
    let (served, _) = serve(&app, "upper").await;
    let res = client.get(&served.click).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(res.headers()["location"], "HTTPS://example.com/ok");
    app.stop().await;
}
