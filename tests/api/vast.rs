//! Video-ad tracking: the VAST event kinds on the JSON endpoints, the VAST
//! document, its tracking pixels and the click redirect.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::spawn_app;

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
