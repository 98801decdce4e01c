//! Publisher pages on other origins: preflights and `Access-Control-*`
//! headers (`CORS_ORIGINS`), and gzip/deflate request bodies whose size
//! limits apply after decoding.

use std::io::Write;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const PAGE: &str = "https://news.example";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn preflight(app: &TestApp, path: &str, origin: &str, method: &str) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, app.url(path))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method)
        .header(
            "Access-Control-Request-Headers",
            "content-type, idempotency-key, x-api-key",
        )
        .send()
        .await
        .unwrap()
}

fn allowed_origin(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn any_page_may_send_events_but_reads_stay_same_origin() {
    let app = spawn_app().await;
    for path in ["/ads/click", "/ads/impression", "/events", "/events/batch"] {
        let res = preflight(&app, path, PAGE, "POST").await;
        assert!(res.status().is_success(), "{path}: {}", res.status());
        assert_eq!(allowed_origin(&res).as_deref(), Some(PAGE), "{path}");
        let headers = res
            .headers()
            .get("access-control-allow-headers")
            .unwrap()
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        for h in ["content-type", "idempotency-key", "x-api-key"] {
            assert!(headers.contains(h), "{path}: {headers}");
        }
        assert!(res
            .headers()
            .get("access-control-allow-credentials")
            .is_none());
    }
    let res = app
        .client
        .post(app.url("/ads/click"))
        .header("Origin", PAGE)
        .json(&json!({"adId": "ad-cors"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(allowed_origin(&res).as_deref(), Some(PAGE));
    let exposed = res
        .headers()
        .get("access-control-expose-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("retry-after"), "{exposed}");

    // Reads and admin: served, but without CORS headers, so a page on
    // another origin cannot read them.
    for path in ["/ads", "/ads/analytics?adId=ad-cors", "/admin/queue"] {
        let res = app
            .client
            .get(app.url(path))
            .header("Origin", PAGE)
            .send()
            .await
            .unwrap();
        assert_eq!(allowed_origin(&res), None, "{path}");
        let res = preflight(&app, path, PAGE, "GET").await;
        assert_eq!(allowed_origin(&res), None, "{path}");
    }
    app.stop().await;
}

/// A request without an `Origin` is not a cross-origin request: it gets no
/// `Access-Control-*` header, and an answer a cache may keep (a GET's)
/// says that it would differ for a request with an `Origin`.
#[tokio::test]
async fn requests_without_an_origin_get_no_cors_headers() {
    let app = spawn_app().await;
    let access_control = |res: &reqwest::Response| {
        res.headers()
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .map(|k| k.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    let vary = |res: &reqwest::Response| {
        res.headers()
            .get("vary")
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
    };
    for path in ["/ads", "/vast/ad-none", "/sdk.js", "/health"] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert!(
            access_control(&res).is_empty(),
            "{path}: {:?}",
            res.headers()
        );
        let vary = vary(&res).unwrap_or_default();
        assert!(vary.contains("origin"), "{path}: Vary {vary:?}");
    }
    let res = app
        .client
        .post(app.url("/ads/click"))
        .json(&json!({"adId": "ad-no-origin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert!(access_control(&res).is_empty(), "{:?}", res.headers());
    // The same GET from a page on another origin still gets CORS's answer.
    let res = app
        .client
        .get(app.url("/vast/ad-none"))
        .header("Origin", PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed_origin(&res).as_deref(), Some(PAGE));
    assert!(vary(&res).unwrap_or_default().contains("origin"));
    app.stop().await;
}

#[tokio::test]
async fn listed_origins_may_use_every_route_and_no_other_origin_may() {
    let app = spawn_app_with(|s| s.cors_origins = Some(vec![PAGE.to_owned()])).await;
    let res = preflight(&app, "/ads/click", PAGE, "POST").await;
    assert_eq!(allowed_origin(&res).as_deref(), Some(PAGE));
    let res = app
        .client
        .get(app.url("/ads"))
        .header("Origin", PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed_origin(&res).as_deref(), Some(PAGE));
    let other = "https://elsewhere.example";
    let res = preflight(&app, "/ads/click", other, "POST").await;
    assert_eq!(allowed_origin(&res), None);
    // Served all the same (curl and servers are not browsers), without the
    // header a browser needs to hand the answer to the page.
    let res = app
        .client
        .post(app.url("/ads/click"))
        .header("Origin", other)
        .json(&json!({"adId": "ad-cors"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(allowed_origin(&res), None);
    app.stop().await;
}

#[tokio::test]
async fn any_page_may_load_the_sdk_and_send_compressed_batches() {
    let other = "https://elsewhere.example";
    for listed in [None, Some(vec![PAGE.to_owned()])] {
        let app = spawn_app_with(|s| s.cors_origins = listed.clone()).await;
        // A module script is fetched in CORS mode: the SDK is public,
        // whatever CORS_ORIGINS lists.
        for path in ["/sdk.js", "/sdk.mjs"] {
            let res = app
                .client
                .get(app.url(path))
                .header("Origin", other)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            assert_eq!(allowed_origin(&res).as_deref(), Some(other), "{path}");
            let mime = res.headers()["content-type"].to_str().unwrap().to_owned();
            assert!(mime.contains("javascript"), "{path}: {mime}");
        }
        // A page that gzips its batch names Content-Encoding in the preflight.
        let res = app
            .client
            .request(reqwest::Method::OPTIONS, app.url("/events/batch"))
            .header("Origin", PAGE)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "content-type, content-encoding",
            )
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
        assert_eq!(allowed_origin(&res).as_deref(), Some(PAGE));
        app.stop().await;
    }
}

async fn post_encoded(
    app: &TestApp,
    path: &str,
    encoding: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let res = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .header("content-encoding", encoding)
        .body(body)
        .send()
        .await
        .unwrap();
    decode(res).await
}

#[tokio::test]
async fn compressed_batches_are_accepted_and_bombs_cost_nothing() {
    let app = spawn_app().await;
    let events: Vec<Value> = (0..200)
        .map(|i| json!({"type": "click", "adId": "ad-gzip", "ipAddress": format!("10.3.0.{i}")}))
        .collect();
    let batch = serde_json::to_vec(&json!({ "events": events })).unwrap();
    let (status, body) = post_encoded(&app, "/events/batch", "gzip", gzip(&batch)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 200);
    let click = serde_json::to_vec(&json!({"adId": "ad-gzip"})).unwrap();
    let (status, body) = post_encoded(&app, "/ads/click", "deflate", deflate(&click)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // A JSON body of zeros padding: a few KiB on the wire, far past each
    // route's limit once decoded.
    let bomb = |size: usize| {
        let mut json = b"{\"adId\":\"ad-gzip\",\"pad\":\"".to_vec();
        json.resize(size, b'0');
        json.extend_from_slice(b"\"}");
        gzip(&json)
    };
    let small = bomb(64 * 1024 * 1024);
    assert!(small.len() < 100 * 1024, "{} bytes", small.len());
    let (status, body) = post_encoded(&app, "/ads/click", "gzip", bomb(64 * 1024)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (status, body) = post_encoded(&app, "/events/batch", "gzip", small).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "payload_too_large");

    let (status, body) = post_encoded(&app, "/ads/click", "br", click.clone()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(body["message"].as_str().unwrap().contains("br"), "{body}");
    let (status, body) = post_encoded(&app, "/ads/click", "gzip", click).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_body");

    app.wait_drained().await;
    assert_eq!(app.stored().await, 201, "only the good bodies were queued");
    app.stop().await;
}

/// Reads, the UI and the API document are gzip-compressed when the client
/// asks; ingest answers and the event stream never are.
#[tokio::test]
async fn answers_are_compressed_where_it_pays() {
    let app = spawn_app().await;
    let encoding = |res: &reqwest::Response| {
        res.headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    for path in ["/", "/app.js", "/openapi.json", "/ads"] {
        let res = app
            .client
            .get(app.url(path))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(encoding(&res).as_deref(), Some("gzip"), "{path}");
        let raw = res.bytes().await.unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&raw[..]), &mut text)
            .unwrap();
        assert!(!text.is_empty(), "{path}");
    }
    let res = app
        .client
        .post(app.url("/ads/click"))
        .header("accept-encoding", "gzip")
        .json(&json!({"adId": "ad-gzip"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_ne!(encoding(&res).as_deref(), Some("gzip"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    // The stream's first event arrives as plain text, at once.
    let mut res = app
        .client
        .get(app.url("/live"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_ne!(encoding(&res).as_deref(), Some("gzip"));
    let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), res.chunk())
        .await
        .expect("the stream sends at once")
        .unwrap()
        .unwrap();
    assert!(
        std::str::from_utf8(&chunk).unwrap().contains("event: "),
        "{chunk:?}"
    );
    drop(res);
    app.stop().await;
}
