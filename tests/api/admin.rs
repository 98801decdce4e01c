//! The admin API and `adtrack dlq`: token checks, queue overview,
//! dead-letter list, replay and purge; the live stream.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const TOKEN: &str = "test-admin-token-0123456789";

async fn with_dead_letters(app: &TestApp, n: usize) {
    let mut conn = app.redis.clone();
    for i in 0..n {
        let event = json!({"eventId": uuid::Uuid::new_v4(), "type": "click", "adId": "ad-dead",
            "timestamp": chrono::Utc::now().to_rfc3339(), "receivedAt": chrono::Utc::now().to_rfc3339(), "attempts": 5});
        let letter = json!({"event": event, "error": format!("boom {i}"), "attempts": 5, "failedAt": chrono::Utc::now().to_rfc3339()});
        let _: () = redis::cmd("LPUSH")
            .arg(app.keys.dlq())
            .arg(letter.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

const ADMIN_ROUTES: [(&str, &str); 4] = [
    ("GET", "/admin/queue"),
    ("GET", "/admin/dlq"),
    ("POST", "/admin/dlq/replay"),
    ("DELETE", "/admin/dlq"),
];

#[tokio::test]
async fn the_admin_api_is_off_without_a_token() {
    let app = spawn_app().await;
    with_dead_letters(&app, 2).await;
    for (method, path) in ADMIN_ROUTES {
        for auth in [None, Some("Bearer "), Some("Bearer anything")] {
            let mut req = app.client.request(method.parse().unwrap(), app.url(path));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let (status, body) = decode(req.send().await.unwrap()).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path} {auth:?}");
            assert_eq!(body["error"], "not_found");
            assert!(body["message"].as_str().unwrap().contains("ADMIN_TOKEN"));
        }
    }
    // Nothing was replayed or purged.
    let mut conn = app.redis.clone();
    let n: i64 = redis::cmd("LLEN")
        .arg(app.keys.dlq())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 2);
    app.stop().await;
}

#[tokio::test]
async fn admin_routes_need_the_bearer_token() {
    let app = spawn_app_with(|s| s.admin_token = Some(TOKEN.into())).await;
    let prefix = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let longer = format!("Bearer {TOKEN}0");
    let basic = format!("Basic {TOKEN}");
    for (method, path) in ADMIN_ROUTES {
        for auth in [
            None,
            Some("Bearer wrong-token-wrong-token"),
            Some(TOKEN),
            Some("Basic abc"),
            Some("Bearer "),
            Some(prefix.as_str()),
            Some(longer.as_str()),
            Some(basic.as_str()),
        ] {
            let mut req = app.client.request(method.parse().unwrap(), app.url(path));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let res = req.send().await.unwrap();
            assert_eq!(
                res.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"], "unauthorized");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn dead_letters_can_be_listed_replayed_and_purged() {
    let app = spawn_app_with(|s| {
        s.admin_token = Some(TOKEN.into());
        s.worker_count = 1;
    })
    .await;
    let auth = format!("Bearer {TOKEN}");
    with_dead_letters(&app, 3).await;

    let res = app
        .client
        .get(app.url("/admin/queue"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let q: Value = res.json().await.unwrap();
    for key in [
        "queued",
        "processing",
        "retrying",
        "deadLettered",
        "spooledEvents",
        "spoolBytes",
        "workers",
    ] {
        assert!(!q[key].is_null(), "{key} missing: {q}");
    }
    assert_eq!(q["deadLettered"], 3);
    // A new prefix has no epoch: the first start records itself as a reset.
    let reset = q["redisResetAt"].as_str().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(reset).is_ok(),
        "redisResetAt: {q}"
    );
    assert_eq!(q["workers"].as_array().unwrap().len(), 1);
    assert_eq!(q["workers"][0]["alive"], true);

    let res = app
        .client
        .get(app.url("/admin/dlq?limit=2"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["total"], 3);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(list["items"][0]["attempts"], 5);
    let res = app
        .client
        .get(app.url("/admin/dlq?limit=0"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    let res = app
        .client
        .post(app.url("/admin/dlq/replay"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"moved": 3}));
    app.wait_drained().await;
    assert_eq!(app.analytics("ad-dead", "all").await["totalClicks"], 3);
    let attempts: Vec<i64> = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, vec![3]);

    with_dead_letters(&app, 2).await;
    let res = app
        .client
        .delete(app.url("/admin/dlq"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"purged": 2}));
    let mut conn = app.redis.clone();
    let left: i64 = redis::cmd("LLEN")
        .arg(app.keys.dlq())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
    app.stop().await;
}

#[tokio::test]
async fn the_dlq_command_lists_replays_and_purges() {
    let app = spawn_app_with(|s| s.worker_count = 1).await;
    with_dead_letters(&app, 2).await;
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_adtrack"))
            .args(args)
            .env("REDIS_URL", &app.settings.redis_url)
            .env("REDIS_PREFIX", &app.settings.redis_prefix)
            .output()
            .unwrap()
    };
    let list = run(&["dlq", "list"]);
    assert!(list.status.success());
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 2);
    let replay = run(&["dlq", "replay"]);
    assert_eq!(
        String::from_utf8_lossy(&replay.stdout).trim(),
        "{\"moved\":2}"
    );
    app.wait_drained().await;
    assert_eq!(app.analytics("ad-dead", "all").await["totalClicks"], 2);
    with_dead_letters(&app, 1).await;
    let purge = run(&["dlq", "purge"]);
    assert_eq!(
        String::from_utf8_lossy(&purge.stdout).trim(),
        "{\"purged\":1}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_live_stream_sends_pipeline_analytics_and_campaigns() {
    let app = spawn_app().await;
    app.click(json!({"adId": "ad-live"})).await;
    app.wait_drained().await;
    let res = app
        .client
        .get(app.url("/live?adId=ad-live&timeframe=1h"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut res = res;
    let mut text = String::new();
    while !(text.contains("event: campaigns") && text.contains("\n\n")) {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), res.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data_of = |name: &str| -> Value {
        let start = text.find(&format!("event: {name}\ndata: ")).unwrap() + name.len() + 14;
        let end = text[start..].find('\n').unwrap() + start;
        serde_json::from_str(&text[start..end]).unwrap()
    };
    let pipeline = data_of("pipeline");
    assert!(pipeline["committed"].as_u64().unwrap() >= 1, "{pipeline}");
    assert!(pipeline["ingested"].as_u64().unwrap() >= 1, "{pipeline}");
    assert_eq!(data_of("analytics")["totalClicks"], 1);
    assert!(data_of("campaigns").is_array());
    let (status, _) = app.get("/live?timeframe=5m").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.stop().await;
}
