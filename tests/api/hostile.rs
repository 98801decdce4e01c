//! Hostile input at the ingest edge: each case gets the SPEC's JSON error
//! with the right status, and none of them changes any count.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

const JSON: &str = "application/json";
const AD: &str = "ad-hostile";

struct Case {
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, Vec<u8>)>,
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
        method: "POST",
        path,
        content_type: Some(JSON),
        headers: Vec::new(),
        body: body.into(),
        status,
        error,
    }
}

/// A request without a body: `method path`.
fn bare(method: &'static str, path: &'static str, status: StatusCode, error: &'static str) -> Case {
    Case {
        method,
        content_type: None,
        ..case(path, "", status, error)
    }
}

/// A valid click with one extra header.
fn click_with_header(
    name: &'static str,
    value: &[u8],
    status: StatusCode,
    error: &'static str,
) -> Case {
    let c = click(r#"{"adId":"a"}"#, status, error);
    Case {
        // The header given here replaces the table's usual Content-Type.
        content_type: c.content_type.filter(|_| name != "content-type"),
        headers: vec![(name, value.to_vec())],
        ..c
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
            content_type: Some(ct),
            ..click(
                r#"{"adId":"a"}"#,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            )
        });
    }
    v.push(Case {
        content_type: Some("application/x-ndjson"),
        ..case(
            "/events",
            r#"{"campaignId":"c"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
    });
    v.push(click_with_header(
        "content-type",
        b"application/json\xff",
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    ));
    v.push(click_with_header(
        "content-type",
        "application/j\u{e9}son".as_bytes(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    ));
    // serde_json's private member names would smuggle JSON inside a string.
    v.push(click(
        r#"{"adId":"a","properties":{"$serde_json::private::RawValue":"{\"k\":1,\"k\":2}"}}"#,
        bad,
        "reserved_key",
    ));
    v.push(click(
        r#"{"adId":"a","x":{"$serde_json::private::Number":"1e999"}}"#,
        bad,
        "reserved_key",
    ));
    // Headers.
    v.push(click_with_header(
        "idempotency-key",
        "k".repeat(129).as_bytes(),
        bad,
        field,
    ));
    v.push(click_with_header("idempotency-key", b"  ", bad, field));
    v.push(click_with_header("idempotency-key", b"k\xff", bad, field));
    // Batches too large as a whole.
    let many = format!(
        r#"{{"events":[{}]}}"#,
        vec![r#"{"type":"click","adId":"a"}"#; 1001].join(",")
    );
    v.push(case(
        "/events/batch",
        many,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    ));
    v.push(case(
        "/events/batch",
        format!(
            r#"{{"events":[{{"type":"click","adId":"a","userId":"{}"}}]}}"#,
            "u".repeat(1 << 20)
        ),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    ));
    v.push(Case {
        content_type: Some("application/x-ndjson"),
        ..case("/events/batch", "\n \n\r\n", bad, "invalid_body")
    });
    // Wrong methods, unknown paths, bad paths and queries: the answers actix
    // or a read handler gives carry the JSON shape too.
    let not_found = StatusCode::NOT_FOUND;
    let method = StatusCode::METHOD_NOT_ALLOWED;
    v.extend([
        bare("GET", "/ads/click", method, "method_not_allowed"),
        bare("PUT", "/ads/click", method, "method_not_allowed"),
        bare("DELETE", "/events", method, "method_not_allowed"),
        bare("PATCH", "/events/batch", method, "method_not_allowed"),
        bare("POST", "/ads/analytics", method, "method_not_allowed"),
        bare("GET", "/nope", not_found, "not_found"),
        bare("POST", "/nope", not_found, "not_found"),
        bare("GET", "/ads/click/extra", not_found, "not_found"),
        bare("GET", "/admin/queue", not_found, "not_found"),
        bare("GET", "/campaigns/%FF/screens", bad, field),
        bare("GET", "/campaigns/a%20b/screens", bad, field),
        bare("GET", "/ads/analytics?adId=%FF", bad, field),
        bare("GET", "/ads/analytics?adId=a&adId=b", bad, "invalid_query"),
        bare("GET", "/ads/analytics?adId=a%00b", bad, field),
        bare("GET", "/ads/analytics?adId=a&timeframe=1y", bad, field),
        bare("GET", "/ads/analytics", bad, field),
        bare("GET", "/aggregates?from=yesterday", bad, field),
        bare("GET", "/aggregates?groupBy=week", bad, field),
        bare("GET", "/events?limit=-1", bad, field),
        bare("GET", "/events?type=purchase", bad, field),
    ]);
    v
}

#[tokio::test]
async fn hostile_inputs_get_json_errors_and_change_nothing() {
    let app = spawn_app().await;
    let table = cases();
    assert!(table.len() >= 50, "{} cases", table.len());
    let mut wrong = Vec::new();
    for c in &table {
        let mut req = app
            .client
            .request(c.method.parse().unwrap(), app.url(c.path))
            .body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        for (name, value) in &c.headers {
            req = req.header(
                *name,
                reqwest::header::HeaderValue::from_bytes(value).unwrap(),
            );
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
            let headers: Vec<String> = c
                .headers
                .iter()
                .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
                .collect();
            wrong.push(format!(
                "{} {} {headers:?} {preview:?}: {status} {text}",
                c.method, c.path
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases answered wrongly:\n{}",
        wrong.len(),
        table.len(),
        wrong.join("\n")
    );

    // None of them left a trace: no queued, spooled, stored or counted event.
    assert_eq!(app.queue_len().await, 0);
    assert_eq!(app.processing_len().await, 0);
    assert_eq!(app.stored().await, 0);
    assert_eq!(app.metric("adtrack_events_enqueued_total").await, 0.0);
    assert_eq!(app.metric("adtrack_events_spooled_total").await, 0.0);
    assert_eq!(app.analytics("a", "all").await["totalClicks"], 0);
    assert_eq!(app.analytics("a", "all").await["impressions"], 0);

    // An NDJSON batch with garbage lines: the good line goes in.
    let ndjson = format!(
        "{{\"type\":\"click\",\"adId\":\"{AD}\"}}\nnot json\n{{\"adId\":\"\\u0001\"}}\n\x7f\n"
    );
    let (status, body) = app
        .post_raw("/events/batch", Some("application/x-ndjson"), ndjson)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    let rejected: Vec<i64> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_i64().unwrap())
        .collect();
    assert_eq!(rejected, vec![1, 2, 3], "{body}");

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

    // Only the batches' three good events exist anywhere.
    assert_eq!(app.stored().await, 3);
    let a = app.analytics(AD, "all").await;
    assert_eq!(a["totalClicks"], 3, "{a}");
    assert_eq!(app.analytics("a", "all").await["totalClicks"], 0);
    assert_eq!(app.metric("adtrack_events_enqueued_total").await, 3.0);
    app.stop().await;
}
