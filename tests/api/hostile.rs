//! Hostile input at the ingest edge: each case gets the SPEC's JSON error
//! with the right status, and none of them changes any count.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

const JSON: &str = "application/json";
const AD: &str = "ad-hostile";

struct Case {
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: StatusCode,
    error: &'static str,
}

fn case(
    path: &'static str,
    body: impl Into<Vec<u8>>,
    status: StatusCode,
    error: &'static str,
) -> Case {
    Case {
        path,
        content_type: Some(JSON),
        body: body.into(),
        status,
        error,
    }
}

fn click(body: impl Into<Vec<u8>>, status: StatusCode, error: &'static str) -> Case {
    case("/ads/click", body, status, error)
}

fn cases() -> Vec<Case> {
    let bad = StatusCode::BAD_REQUEST;
    let field = "invalid_field";
    let mut v = vec![
        // Not JSON, not an object.
        click("", bad, "invalid_json"),
        click("   ", bad, "invalid_json"),
        click("null", bad, "invalid_json"),
        click("true", bad, "invalid_json"),
        click("42", bad, "invalid_json"),
        click("\"adId\"", bad, "invalid_json"),
        click("[]", bad, "invalid_json"),
        click(r#"[{"adId":"a"}]"#, bad, "invalid_json"),
        click("{", bad, "invalid_json"),
        click(r#"{"adId":"a",}"#, bad, "invalid_json"),
        click(r#"{'adId':'a'}"#, bad, "invalid_json"),
        click(r#"{"adId":"a"} {"adId":"b"}"#, bad, "invalid_json"),
        click(r#"{"adId":"a"}garbage"#, bad, "invalid_json"),
        click("{\"adId\":\"a\u{0}\"}", bad, "invalid_json"),
        // Invalid UTF-8 inside and outside strings.
        click(b"{\"adId\":\"\xff\xfe\"}".to_vec(), bad, "invalid_json"),
        click(
            b"\xef\xbb\xbf{\"adId\":\"a\"}".to_vec(),
            bad,
            "invalid_json",
        ),
        click(
            b"{\"adId\":\"a\",\"userId\":\"\xc3\x28\"}".to_vec(),
            bad,
            "invalid_json",
        ),
        // Duplicate keys, anywhere.
        click(r#"{"adId":"a","adId":"a"}"#, bad, "duplicate_field"),
        click(r#"{"adId":"a","ad_id":"b"}"#, bad, "duplicate_field"),
        click(
            r#"{"adId":"a","timestamp":"2026-01-01T00:00:00Z","ts":"2026-01-01T00:00:00Z"}"#,
            bad,
            "duplicate_field",
        ),
        click(
            r#"{"adId":"a","properties":{"k":1,"k":2}}"#,
            bad,
            "duplicate_field",
        ),
        // Wrong types.
        click(r#"{"adId":null}"#, bad, field),
        click(r#"{"adId":["a"]}"#, bad, field),
        click(r#"{"adId":{"id":"a"}}"#, bad, field),
        click(r#"{"adId":true}"#, bad, field),
        click(r#"{"adId":"a","videoPlaybackTime":true}"#, bad, field),
        click(r#"{"adId":"a","amount":"5"}"#, bad, field),
        click(r#"{"adId":"a","userId":7}"#, bad, field),
        click(r#"{"adId":"a","properties":[1,2]}"#, bad, field),
        click(r#"{"adId":"a","simulateFailure":"yes"}"#, bad, field),
        click(r#"{"adId":"a","eventId":12345}"#, bad, field),
        // Control characters and odd ids.
        click("{\"adId\":\"a\\u0000b\"}", bad, field),
        click("{\"adId\":\"a\\nb\"}", bad, field),
        click("{\"adId\":\"a\",\"userId\":\"u\\u0007\"}", bad, field),
        click(r#"{"adId":"../../etc/passwd"}"#, bad, field),
        click(r#"{"adId":"<script>"}"#, bad, field),
        click(r#"{"adId":"a b"}"#, bad, field),
        click("{\"adId\":\"\u{1F4A9}\"}", bad, field),
        click(r#"{"adId":"a*"}"#, bad, field),
        // Absurd numbers.
        click(
            r#"{"adId":"a","videoPlaybackTime":1e400}"#,
            bad,
            "invalid_json",
        ),
        click(r#"{"adId":"a","videoPlaybackTime":-1e-300}"#, bad, field),
        click(r#"{"adId":"a","videoPlaybackTime":86400.0001}"#, bad, field),
        click(r#"{"adId":"a","amount":1e30}"#, bad, field),
        click(
            r#"{"adId":"a","amount":99999999999999999999999}"#,
            bad,
            field,
        ),
        click(r#"{"adId":"a","amount":-0.0}"#, bad, field),
        click(r#"{"adId":"a","amount":NaN}"#, bad, "invalid_json"),
        click(
            r#"{"adId":"a","videoPlaybackTime":Infinity}"#,
            bad,
            "invalid_json",
        ),
        // Invalid IPs.
        click(r#"{"adId":"a","ipAddress":"256.0.0.1"}"#, bad, field),
        click(r#"{"adId":"a","ipAddress":"1.2.3"}"#, bad, field),
        click(r#"{"adId":"a","ipAddress":"::g"}"#, bad, field),
        click(r#"{"adId":"a","ipAddress":"1.2.3.4:80"}"#, bad, field),
        click(r#"{"adId":"a","ipAddress":""}"#, bad, field),
        click(r#"{"adId":"a","ipAddress":"example.com"}"#, bad, field),
        // Timestamps out of range or malformed.
        click(
            r#"{"adId":"a","timestamp":"1970-01-01T00:00:00Z"}"#,
            bad,
            field,
        ),
        click(
            r#"{"adId":"a","timestamp":"9999-12-31T23:59:59Z"}"#,
            bad,
            field,
        ),
        click(
            r#"{"adId":"a","timestamp":"2026-02-30T00:00:00Z"}"#,
            bad,
            field,
        ),
        click(r#"{"adId":"a","timestamp":"2026-01-01"}"#, bad, field),
        click(r#"{"adId":"a","timestamp":1767225600}"#, bad, field),
        click(
            r#"{"adId":"a","timestamp":"+275760-09-13T00:00:00Z"}"#,
            bad,
            field,
        ),
        // Unknown or mismatched types.
        case("/events", r#"{"type":"purchase","adId":"a"}"#, bad, field),
        case("/events", r#"{"type":"CLICK","adId":"a"}"#, bad, field),
        case("/events", r#"{"type":"","adId":"a"}"#, bad, field),
        click(r#"{"adId":"a","type":"play"}"#, bad, field),
        case(
            "/ads/impression",
            r#"{"adId":"a","type":"click"}"#,
            bad,
            field,
        ),
        // Missing required fields.
        case("/events", r#"{"screenId":"s"}"#, bad, field),
        case("/events", r#"{"type":"click"}"#, bad, field),
        case("/ads/impression", "{}", bad, field),
        // Sizes.
        click(
            format!(r#"{{"adId":"a","userId":"{}"}}"#, "u".repeat(20_000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        click(
            format!(
                r#"{{"adId":"a","properties":{{"k":"{}"}}}}"#,
                "p".repeat(4_100)
            ),
            bad,
            "properties_too_large",
        ),
        click(format!(r#"{{"adId":"{}"}}"#, "a".repeat(65)), bad, field),
        // Batches that are wrong as a whole.
        case("/events/batch", r#"{"events":{}}"#, bad, "invalid_body"),
        case("/events/batch", r#"{"event":[]}"#, bad, "invalid_body"),
        case("/events/batch", "[]", bad, "invalid_body"),
        case("/events/batch", r#"{"events":[1]"#, bad, "invalid_body"),
    ];
    // Nesting deeper than 32, at the top level and inside properties.
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    v.push(click(
        format!(r#"{{"adId":"a","properties":{{"x":{}}}}}"#, deep(40)),
        bad,
        "too_deep",
    ));
    v.push(click(
        format!(r#"{{"adId":"a","extra":{}}}"#, deep(40)),
        bad,
        "too_deep",
    ));
    v.push(click(
        format!(r#"{{"adId":"a","extra":{}}}"#, deep(5_000)),
        bad,
        "too_deep",
    ));
    // Content types.
    // (text/plain is accepted as JSON on purpose: navigator.sendBeacon sends it.)
    for ct in [
        "image/png",
        "application/xml",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    ] {
        v.push(Case {
            path: "/ads/click",
            content_type: Some(ct),
            body: br#"{"adId":"a"}"#.to_vec(),
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            error: "unsupported_media_type",
        });
    }
    v
}

/// A Content-Type that is not printable ASCII.
async fn garbage_content_type(app: &crate::helpers::TestApp) -> (StatusCode, Value) {
    let value = reqwest::header::HeaderValue::from_bytes(b"application/json\xff").unwrap();
    let res = app
        .client
        .post(app.url("/ads/click"))
        .header("content-type", value)
        .body(r#"{"adId":"a"}"#)
        .send()
        .await
        .unwrap();
    crate::helpers::decode(res).await
}

#[tokio::test]
async fn hostile_inputs_get_json_errors_and_change_nothing() {
    let app = spawn_app().await;
    let table = cases();
    assert!(table.len() >= 50, "{} cases", table.len());
    let mut wrong = Vec::new();
    for c in &table {
        let mut req = app.client.post(app.url(c.path)).body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let preview: String = String::from_utf8_lossy(&c.body).chars().take(80).collect();
        if status.is_server_error()
            || status != c.status
            || json["error"] != c.error
            || !json["message"].is_string()
        {
            wrong.push(format!("{} {preview:?}: {status} {text}", c.path));
        }
    }
    let (status, body) = garbage_content_type(&app).await;
    if status != StatusCode::UNSUPPORTED_MEDIA_TYPE || body["error"] != "unsupported_media_type" {
        wrong.push(format!("non-ASCII content type: {status} {body}"));
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases answered wrongly:\n{}",
        wrong.len(),
        table.len(),
        wrong.join("\n")
    );

    // A batch of hostile items: the good ones go in, the bad ones are listed.
    let (status, body) = app
        .post_raw(
            "/events/batch",
            Some(JSON),
            format!(r#"{{"events":[{{"type":"click","adId":"{AD}"}},{{"adId":"a b"}},7,{{"type":"click","adId":"{AD}","amount":-1}},{{"type":"click","adId":"{AD}"}}]}}"#),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 2, "{body}");
    let rejected: Vec<i64> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_i64().unwrap())
        .collect();
    assert_eq!(rejected, vec![1, 2, 3], "{body}");
    app.wait_drained().await;

    // Only the batch's two good events exist anywhere.
    assert_eq!(app.stored().await, 2);
    let a = app.analytics(AD, "all").await;
    assert_eq!(a["totalClicks"], 2, "{a}");
    assert_eq!(app.analytics("a", "all").await["totalClicks"], 0);
    assert_eq!(app.metric("adtrack_events_enqueued_total").await, 2.0);
    app.stop().await;
}
