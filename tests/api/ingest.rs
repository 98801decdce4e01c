//! Ingestion endpoints: happy paths, every validation rule, error shapes,
//! and idempotency.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

const AD: &str = "11111111-1111-1111-1111-111111111111";

/// Asserts that the refused requests sent so far queued nothing: a valid
/// sentinel event sent after their answers goes all the way into Postgres,
/// so anything they had pushed would be stored or failed by then, and the
/// sentinel is the only event anywhere.
async fn assert_nothing_else_queued(app: &TestApp) {
    let sentinel = uuid::Uuid::new_v4();
    app.click(json!({"adId": "ad-sentinel", "eventId": sentinel}))
        .await;
    app.wait_drained().await;
    let stored: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM events")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![sentinel]);
    assert_eq!(app.queue_len().await, 0);
    let mut conn = app.redis.clone();
    let (retrying, dead): (i64, i64) = redis::pipe()
        .cmd("ZCARD")
        .arg(app.keys.retry())
        .cmd("LLEN")
        .arg(app.keys.dlq())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((retrying, dead), (0, 0));
}

#[tokio::test]
async fn every_ingest_endpoint_accepts_its_seed_body() {
    let app = spawn_app().await;

    let (status, body) = app
        .post(
            "/ads/click",
            &json!({"adId": AD, "timestamp": "2025-07-02T18:30:00Z", "ipAddress": "1.2.3.4", "videoPlaybackTime": 10.5}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["status"], "accepted");
    assert!(uuid::Uuid::parse_str(body["eventId"].as_str().unwrap()).is_ok());

    let (status, _) = app.post("/ads/impression", &json!({"ad_id": AD})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = app.post("/ads/impression", &json!({"adId": AD})).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let (status, _) = app
        .post("/events", &json!({"screen_id": "scr-1", "campaign_id": "camp-1", "timestamp": chrono::Utc::now().to_rfc3339()}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = app
        .post("/events", &json!({"type": "conversion", "adId": AD, "amount": 1500, "variant": "B", "experimentId": "exp-1"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let (status, body) = app
        .post(
            "/events/batch",
            &json!({"events": [{"type": "impression", "adId": AD}, {"type": "click", "adId": AD}]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["eventIds"].as_array().unwrap().len(), 2);
    assert_eq!(body["rejected"], json!([]));

    let ndjson =
        format!("{{\"type\":\"impression\",\"adId\":\"{AD}\"}}\n\n{{\"campaignId\":\"camp-1\"}}\n");
    let (status, body) = app
        .post_raw("/events/batch", Some("application/x-ndjson"), ndjson)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 2);

    app.wait_drained().await;
    assert_eq!(app.stored().await, 9);
    let kinds: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        kinds,
        vec![
            ("click".into(), 2),
            ("conversion".into(), 1),
            ("impression".into(), 4),
            ("play".into(), 2)
        ]
    );
    // The server fills in the peer address and the receive time.
    let (ip, playback): (Option<String>, Option<f64>) = sqlx::query_as(
        "SELECT host(ip), playback_time FROM events WHERE event_time = '2025-07-02T18:30:00Z'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(ip.as_deref(), Some("1.2.3.4"));
    assert_eq!(playback, Some(10.5));
    let peer: Option<String> =
        sqlx::query_scalar("SELECT host(ip) FROM events WHERE kind = 'play' LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(peer.as_deref(), Some("127.0.0.1"));
    app.stop().await;
}

/// Bodies that must be refused, with the field the message must name.
fn invalid_clicks() -> Vec<(Value, &'static str)> {
    let future = (chrono::Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
    vec![
        (json!({}), "adId"),
        (json!({"adId": ""}), "adId"),
        (json!({"adId": "x".repeat(65)}), "adId"),
        (json!({"adId": "has space"}), "adId"),
        (json!({"adId": "a{b}"}), "adId"),
        (json!({"adId": 42}), "adId"),
        (json!({"adId": AD, "ipAddress": "300.1.1.1"}), "ipAddress"),
        (json!({"adId": AD, "ip": "not-an-ip"}), "ipAddress"),
        (json!({"adId": AD, "timestamp": "02/07/2025"}), "timestamp"),
        (json!({"adId": AD, "timestamp": future}), "timestamp"),
        (
            json!({"adId": AD, "ts": "1999-12-31T23:59:59Z"}),
            "timestamp",
        ),
        (
            json!({"adId": AD, "videoPlaybackTime": -0.5}),
            "videoPlaybackTime",
        ),
        (
            json!({"adId": AD, "videoPlaybackTime": 86400.5}),
            "videoPlaybackTime",
        ),
        (
            json!({"adId": AD, "videoPlaybackTime": "10"}),
            "videoPlaybackTime",
        ),
        (json!({"adId": AD, "amount": -1}), "amount"),
        (json!({"adId": AD, "amount": 2.5}), "amount"),
        (json!({"adId": AD, "eventId": "not-a-uuid"}), "eventId"),
        (json!({"adId": AD, "type": "impression"}), "type"),
        (json!({"adId": AD, "userId": "u".repeat(129)}), "userId"),
        (json!({"adId": AD, "variant": "v".repeat(65)}), "variant"),
        (json!({"adId": AD, "experimentId": ["x"]}), "experimentId"),
        (json!({"adId": AD, "properties": "text"}), "properties"),
        (
            json!({"adId": AD, "properties": {"blob": "b".repeat(5000)}}),
            "properties",
        ),
        (
            json!({"adId": AD, "simulateFailure": true}),
            "simulateFailure",
        ),
        (json!({"adId": AD, "screenId": "bad/screen"}), "screenId"),
    ]
}

#[tokio::test]
async fn invalid_events_get_a_json_400_naming_the_field_and_change_nothing() {
    let app = spawn_app().await;
    for (body, field) in invalid_clicks() {
        let (status, json) = app.post("/ads/click", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {json}");
        assert!(json["error"].is_string(), "{json}");
        let message = json["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(field),
            "{body}: {message:?} should name {field}"
        );
    }
    // Plays need a campaign; unknown types are refused.
    let (status, json) = app.post("/events", &json!({"screen_id": "s1"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json["message"].as_str().unwrap().contains("campaignId"));
    let (status, _) = app
        .post("/events", &json!({"type": "view", "adId": AD}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Not an object, not JSON, duplicate keys, deep nesting.
    for raw in [
        "[1,2]".to_string(),
        "\"click\"".to_string(),
        "{\"adId\":".to_string(),
        format!("{{\"adId\":\"{AD}\",\"adId\":\"other\"}}"),
        format!("{{\"adId\":\"{AD}\",\"ad_id\":\"other\"}}"),
        format!(
            "{{\"adId\":\"{AD}\",\"properties\":{}1{}}}",
            "{\"a\":".repeat(40),
            "}".repeat(40)
        ),
    ] {
        let (status, json) = app
            .post_raw("/ads/click", Some("application/json"), raw.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{raw} -> {json}");
        assert!(
            json["error"].is_string() && json["message"].is_string(),
            "{json}"
        );
    }
    assert_eq!(app.queue_len().await, 0);
    assert_eq!(app.stored().await, 0);
    assert_nothing_else_queued(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn wrong_method_path_type_and_size_get_json_errors() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/ads/click")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "POST");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");

    // GET routes answer HEAD with the GET's status and headers, no body;
    // HEAD is not a way around a resource's methods.
    let res = app.client.head(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert!(res.bytes().await.unwrap().is_empty());
    let res = app.client.head(app.url("/ads/click")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let res = app.client.delete(app.url("/events")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "POST, GET, HEAD");

    let (status, body) = app.get("/no/such/path").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");

    let (status, body) = app
        .post_raw(
            "/ads/click",
            Some("application/x-www-form-urlencoded"),
            format!("{{\"adId\":\"{AD}\"}}"),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["error"], "unsupported_media_type");

    let big = format!(
        "{{\"adId\":\"{AD}\",\"userId\":\"{}\"}}",
        "u".repeat(17 * 1024)
    );
    let (status, body) = app
        .post_raw("/ads/click", Some("application/json"), big)
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"], "payload_too_large");

    let many: Vec<Value> = (0..1001)
        .map(|_| json!({"type": "impression", "adId": AD}))
        .collect();
    let (status, body) = app.post("/events/batch", &json!({ "events": many })).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    let huge = format!(
        "{{\"events\":[{{\"adId\":\"{AD}\",\"userId\":\"{}\"}}]}}",
        "u".repeat(1024 * 1024)
    );
    let (status, _) = app
        .post_raw("/events/batch", Some("application/json"), huge)
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let (status, body) = app.post("/events/batch", &json!({"items": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(app.queue_len().await, 0);
    assert_nothing_else_queued(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_batch_accepts_the_good_items_and_lists_the_bad_ones() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/events/batch",
            &json!({"events": [
                {"type": "impression", "adId": AD},
                {"type": "click", "adId": "bad id"},
                "not an object",
                {"type": "play", "campaignId": "c1", "screenId": "s1"},
                {"type": "click", "adId": AD, "timestamp": "yesterday"}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 2);
    let rejected: Vec<i64> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_i64().unwrap())
        .collect();
    assert_eq!(rejected, vec![1, 2, 4]);
    for r in body["rejected"].as_array().unwrap() {
        assert!(r["error"].is_string() && r["message"].is_string(), "{r}");
    }
    app.wait_drained().await;
    assert_eq!(app.stored().await, 2);
    app.stop().await;
}

#[tokio::test]
async fn the_same_event_id_is_one_event_across_requests_and_batches() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4().to_string();
    let click = json!({"adId": AD, "eventId": id, "ipAddress": "10.0.0.1"});
    for _ in 0..5 {
        assert_eq!(app.click(click.clone()).await, id);
    }
    app.wait_drained().await;
    // The same event again inside a batch with a new one, and twice in one batch.
    let (status, body) = app
        .post(
            "/events/batch",
            &json!({"events": [
                {"type": "click", "adId": AD, "eventId": id, "ipAddress": "10.0.0.1"},
                {"type": "click", "adId": AD, "eventId": id, "ipAddress": "10.0.0.1"},
                {"type": "click", "adId": AD, "ipAddress": "10.0.0.2"}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.wait_drained().await;
    assert_eq!(app.stored().await, 2);
    let all = app.analytics(AD, "all").await;
    assert_eq!(all["totalClicks"], 2, "{all}");
    assert_eq!(all["uniqueClicks"], 2, "{all}");
    for table in ["rollup_minute", "rollup_hour"] {
        let rolled: i64 = sqlx::query_scalar(&format!(
            "SELECT sum(events)::bigint FROM {table} WHERE kind = 'click'"
        ))
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(rolled, 2, "{table}");
    }
    assert!(app.metric("adtrack_events_duplicate_total").await >= 6.0);
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_maps_to_one_event() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let res = app
            .client
            .post(app.url("/ads/click"))
            .header("Idempotency-Key", "order-7731-click")
            .json(&json!({"adId": AD}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let body: Value = res.json().await.unwrap();
        ids.push(body["eventId"].as_str().unwrap().to_owned());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    // A UUID key is used as is.
    let key = uuid::Uuid::new_v4().to_string();
    let res = app
        .client
        .post(app.url("/ads/impression"))
        .header("Idempotency-Key", &key)
        .json(&json!({"adId": AD}))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["eventId"], key);
    // Too long a key is refused.
    let res = app
        .client
        .post(app.url("/ads/click"))
        .header("Idempotency-Key", "k".repeat(129))
        .json(&json!({"adId": AD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // A retried batch with the same key is the same events.
    for _ in 0..2 {
        let res = app
            .client
            .post(app.url("/events/batch"))
            .header("Idempotency-Key", "batch-42")
            .json(&json!({"events": [{"type": "impression", "adId": AD}, {"type": "click", "adId": AD}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    app.wait_drained().await;
    assert_eq!(app.stored().await, 4);
    let all = app.analytics(AD, "all").await;
    assert_eq!(all["totalClicks"], 2, "{all}");
    assert_eq!(all["impressions"], 2, "{all}");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_requests_share_redis_round_trips() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for i in 0..400 {
        let client = app.client.clone();
        let url = app.url("/ads/click");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"adId": AD, "ipAddress": format!("10.1.{}.{}", i / 200, i % 200)}))
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), StatusCode::ACCEPTED);
    }
    let pushed = app.metric("adtrack_push_group_size_sum").await;
    let groups = app.metric("adtrack_push_group_size_count").await;
    assert_eq!(pushed, 400.0);
    assert!(
        groups < pushed,
        "{groups} LPUSH round trips for {pushed} events: none was shared"
    );
    app.wait_drained().await;
    assert_eq!(app.analytics(AD, "all").await["totalClicks"], 400);
    app.stop().await;
}
