//! `TENANTS=on`: every request needs an API key, and one tenant can never
//! read or change another's figures, even with the same ad ids, campaign
//! ids and eventIds.

use adtrack::app::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{decode, spawn_app_with, start, TestApp};

async fn post(app: &TestApp, key: Option<&str>, path: &str, body: &Value) -> (StatusCode, Value) {
    let mut req = app.client.post(app.url(path)).json(body);
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    decode(req.send().await.unwrap()).await
}

async fn get(app: &TestApp, key: Option<&str>, path: &str) -> (StatusCode, Value) {
    let mut req = app.client.get(app.url(path));
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    decode(req.send().await.unwrap()).await
}

async fn get_ok(app: &TestApp, key: &str, path: &str) -> Value {
    let (status, body) = get(app, Some(key), path).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

async fn accepted(app: &TestApp, key: &str, path: &str, body: Value) {
    let (status, json) = post(app, Some(key), path, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
}

/// Every figure a tenant can read about `ad`, `camp` and `exp`.
async fn figures(app: &TestApp, key: &str) -> Value {
    json!({
        "analytics": get_ok(app, key, "/ads/analytics?adId=shared-ad&timeframe=all").await,
        "camp": get_ok(app, key, "/campaigns").await.as_array().unwrap().iter()
            .find(|c| c["campaignId"] == "camp").map(|c| c["plays"].clone()).unwrap_or(json!(0)),
        "screens": get_ok(app, key, "/campaigns/camp/screens").await,
        "aggregates": get_ok(app, key, "/aggregates?adId=shared-ad").await["count"],
        "events": get_ok(app, key, "/events?limit=1000").await["events"].as_array().unwrap().len(),
        "experiment": get_ok(app, key, "/experiments/exp/summary").await["variants"],
    })
}

#[tokio::test]
async fn tenants_never_see_or_change_each_others_figures() {
    let app = spawn_app_with(|s| s.tenants = true).await;
    let a = adtrack::tenants::create(&app.pool, "acme", "Acme")
        .await
        .unwrap();
    let b = adtrack::tenants::create(&app.pool, "globex", "")
        .await
        .unwrap();
    assert!(a.starts_with("adt_") && a != b);

    // Without a valid key nothing is accepted or read, and nothing changes.
    for key in [None, Some(""), Some("adt_not-a-key")] {
        let (status, body) = post(&app, key, "/ads/click", &json!({"adId": "shared-ad"})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"], "unauthorized");
        let (status, _) = post(
            &app,
            key,
            "/events/batch",
            &json!({"events": [{"adId": "x", "type": "click"}]}),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        for path in [
            "/ads/analytics?adId=shared-ad",
            "/campaigns",
            "/aggregates",
            "/events",
            "/experiments/exp/summary",
            "/ads",
        ] {
            let (status, body) = get(&app, key, path).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        }
    }
    assert_eq!(app.queue_len().await, 0);

    // The same ad, campaign, experiment and eventIds in both tenants.
    let shared_ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for id in &shared_ids {
        accepted(
            &app,
            &a,
            "/ads/click",
            json!({"adId": "shared-ad", "eventId": id, "ipAddress": "10.0.0.1"}),
        )
        .await;
        accepted(
            &app,
            &b,
            "/ads/click",
            json!({"adId": "shared-ad", "eventId": id, "ipAddress": "10.0.0.2"}),
        )
        .await;
    }
    // A tenant cannot pick its tenant through the body.
    accepted(&app, &a, "/events", json!({"type": "click", "adId": "shared-ad", "ipAddress": "10.0.0.1", "tenantId": "globex", "tenant_id": "globex"})).await;
    accepted(&app, &a, "/ads/impression", json!({"adId": "shared-ad"})).await;
    accepted(&app, &b, "/events/batch", json!({"events": [
        {"type": "click", "adId": "shared-ad"},
        {"type": "play", "campaignId": "camp", "screenId": "s1"},
        {"type": "conversion", "adId": "shared-ad", "userId": "u1", "variant": "control", "experimentId": "exp"},
    ]})).await;
    app.wait_drained().await;

    let fa = figures(&app, &a).await;
    let fb = figures(&app, &b).await;
    assert_eq!(fa["analytics"]["totalClicks"], 4, "{fa}");
    assert_eq!(fa["analytics"]["impressions"], 1, "{fa}");
    assert_eq!(fa["analytics"]["uniqueClicks"], 1, "{fa}");
    assert_eq!(fa["analytics"]["conversions"], 0, "{fa}");
    assert_eq!(fa["camp"], 0, "{fa}");
    assert_eq!(fa["screens"], json!([]), "{fa}");
    assert_eq!(fa["aggregates"], 5, "{fa}");
    assert_eq!(fa["events"], 5, "{fa}");
    assert_eq!(fa["experiment"], json!([]), "{fa}");

    assert_eq!(fb["analytics"]["totalClicks"], 4, "{fb}");
    assert_eq!(fb["analytics"]["impressions"], 0, "{fb}");
    assert_eq!(fb["analytics"]["conversions"], 1, "{fb}");
    assert_eq!(fb["camp"], 1, "{fb}");
    assert_eq!(fb["screens"][0]["plays"], 1, "{fb}");
    assert_eq!(fb["aggregates"], 5, "{fb}");
    assert_eq!(fb["events"], 6, "{fb}");
    assert_eq!(fb["experiment"][0]["conversions"], 1, "{fb}");

    // Postgres holds both tenants' copies of the shared eventIds.
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tenant_id, count(*) FROM events WHERE event_id = ANY($1) GROUP BY 1 ORDER BY 1",
    )
    .bind(&shared_ids)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows, vec![("acme".to_owned(), 3), ("globex".to_owned(), 3)]);
    let untenanted: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = ''")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(untenanted, 0);

    // A rebuild from Postgres keeps them apart.
    let mut conn = app.redis.clone();
    adtrack::counters::reconcile(&app.pool, &mut conn, &app.keys, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(figures(&app, &a).await, fa);
    assert_eq!(figures(&app, &b).await, fb);

    // Revoking one tenant locks out its key (a process started after the
    // revocation has no cached answer), and only that one.
    adtrack::tenants::revoke(&app.pool, "acme", None)
        .await
        .unwrap();
    let mut settings = app.settings.clone();
    settings.spool_dir = settings.spool_dir.join("second");
    let second = start(settings, Role::Api).await;
    let (status, _) = post(
        &second,
        Some(&a),
        "/ads/click",
        &json!({"adId": "shared-ad"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get(&second, Some(&a), "/events").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(
        &second,
        Some(&b),
        "/ads/click",
        &json!({"adId": "shared-ad"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    second.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn the_tenant_command_creates_lists_and_revokes_keys() {
    let settings = crate::helpers::test_settings();
    let bin = env!("CARGO_BIN_EXE_adtrack");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .env("DATABASE_URL", &settings.database_url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run(&["tenant", "create", "shop-1", "--name", "Shop"]);
    let second = run(&["tenant", "create", "shop-1"]);
    let (first, second) = (first.trim(), second.trim());
    assert!(first.starts_with("adt_") && second.starts_with("adt_") && first != second);
    let listed: Value = serde_json::from_str(run(&["tenant", "list"]).trim()).unwrap();
    assert_eq!(listed["id"], "shop-1");
    assert_eq!(listed["name"], "Shop");
    assert_eq!(listed["activeKeys"].as_array().unwrap().len(), 2);
    // The key itself is never stored.
    let pool = sqlx::PgPool::connect(&settings.database_url).await.unwrap();
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE key_hash = $1 OR prefix = $2")
            .bind(first.as_bytes())
            .bind(first)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 0);
    // Rotation: retire the first key only, named by the prefix `list`
    // shows; then the second by its whole key (a third, made for this, by
    // a prefix longer than `list` shows). A prefix that matches nothing
    // exits non-zero.
    let out = run(&["tenant", "revoke", "shop-1", "--key", &first[..12]]);
    assert!(out.contains("\"revokedKeys\":1"), "{out}");
    let nothing = std::process::Command::new(bin)
        .args(["tenant", "revoke", "shop-1", "--key", &first[..20]])
        .env("DATABASE_URL", &settings.database_url)
        .output()
        .unwrap();
    assert!(!nothing.status.success(), "an already revoked key matched");
    let third = run(&["tenant", "create", "shop-1"]);
    let third = third.trim();
    let out = run(&["tenant", "revoke", "shop-1", "--key", &third[..30]]);
    assert!(out.contains("\"revokedKeys\":1"), "{out}");
    let whole = run(&["tenant", "create", "shop-1"]);
    let whole = whole.trim();
    let out = run(&["tenant", "revoke", "shop-1", "--key", whole]);
    assert!(out.contains("\"revokedKeys\":1"), "{out}");
    let resolver = adtrack::tenants::KeyResolver::new(pool.clone());
    assert_eq!(resolver.tenant_of(first).await.unwrap(), None);
    assert_eq!(
        resolver.tenant_of(second).await.unwrap().as_deref(),
        Some("shop-1")
    );
    let out = run(&["tenant", "revoke", "shop-1"]);
    assert!(out.contains("\"revokedKeys\":1"), "{out}");
    let fresh = adtrack::tenants::KeyResolver::new(pool.clone());
    assert_eq!(fresh.tenant_of(second).await.unwrap(), None);
    let bad = std::process::Command::new(bin)
        .args(["tenant", "create", "Bad Id"])
        .env("DATABASE_URL", &settings.database_url)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let redis =
        adtrack::app::redis_connection(&settings.redis_url, std::time::Duration::from_secs(5))
            .await
            .unwrap();
    crate::helpers::cleanup(&settings, &pool, &redis).await;
}
