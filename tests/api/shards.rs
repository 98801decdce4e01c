//! `QUEUE_SHARDS`: ingest spreads over several queues of one prefix, the
//! workers of every shard drain them exactly once, and the operator's views
//! add the shards up.

use std::time::Duration;

use adtrack::app::{Application, Role};
use adtrack::queue::Keys;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{start, test_settings};

const SHARDS: usize = 4;
const TOKEN: &str = "shard-admin-token-0123";

async fn llen(conn: &mut adtrack::redis_client::RedisConn, key: &str) -> i64 {
    redis::cmd("LLEN").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test]
async fn several_queue_shards_spread_ingest_and_drain_exactly_once() {
    let mut settings = test_settings();
    settings.queue_shards = SHARDS;
    settings.worker_count = SHARDS;
    settings.simulate_failures = true;
    settings.max_attempts = 1;
    settings.admin_token = Some(TOKEN.into());

    // An ingest-only process first, so the queues can be looked at full.
    let api = start(settings.clone(), Role::Api).await;
    let ad = "ad-shards";
    let n = 200;
    for i in 0..n {
        api.click(json!({ "adId": ad, "ipAddress": format!("10.1.{}.{}", i / 250, i % 250) }))
            .await;
    }
    // Two poison events per shard, sent one request at a time like the rest.
    for _ in 0..(2 * SHARDS) {
        let (status, _) = api
            .post(
                "/events",
                &json!({ "type": "click", "adId": "ad-poison", "simulateFailure": true }),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let mut conn = api.redis.clone();
    let mut per_shard = Vec::new();
    for i in 0..SHARDS {
        per_shard.push(llen(&mut conn, &Keys::shard(&settings.redis_prefix, i).queue()).await);
    }
    assert_eq!(per_shard.iter().sum::<i64>(), n + 2 * SHARDS as i64);
    assert!(
        per_shard.iter().all(|&len| len > 0),
        "every shard gets pushes: {per_shard:?}"
    );
    // Shards other than 0 have their own hash tag.
    assert_eq!(
        Keys::shard(&settings.redis_prefix, 2).queue(),
        format!("{{{}.2}}:queue", settings.redis_prefix)
    );

    // Now the workers: one process, one worker per shard.
    let mut worker_settings = settings.clone();
    worker_settings.spool_dir = settings.spool_dir.join("workers");
    let workers = start(worker_settings, Role::Worker).await;
    api.wait_drained().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, q) = admin_get(&api, "/admin/queue").await;
        assert_eq!(status, StatusCode::OK, "{q}");
        if q["deadLettered"] == 2 * SHARDS {
            assert_eq!(q["queued"], 0, "{q}");
            assert_eq!(q["processing"], 0, "{q}");
            assert_eq!(q["workers"].as_array().unwrap().len(), SHARDS, "{q}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE ad_id = $1")
        .bind(ad)
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(stored, n);
    let a = api.analytics(ad, "all").await;
    assert_eq!(a["totalClicks"], n, "{a}");
    // HyperLogLog: within the SPEC's 2 %.
    let unique = a["uniqueClicks"].as_i64().unwrap();
    assert!((unique - n).abs() <= n / 50, "{a}");

    // Dead letters of every shard are listed and replayed.
    let (_, dlq) = admin_get(&api, "/admin/dlq?limit=100").await;
    assert_eq!(dlq["total"], 2 * SHARDS, "{dlq}");
    assert_eq!(dlq["items"].as_array().unwrap().len(), 2 * SHARDS, "{dlq}");
    let res = api
        .client
        .delete(api.url("/admin/dlq"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let purged: serde_json::Value = res.json().await.unwrap();
    assert_eq!(purged["purged"], 2 * SHARDS, "{purged}");
    workers.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_process_with_another_shard_count_refuses_to_start() {
    let mut settings = test_settings();
    settings.queue_shards = 3;
    let app = start(settings.clone(), Role::All).await;

    let mut other = settings.clone();
    other.queue_shards = 2;
    other.spool_dir = settings.spool_dir.join("other");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = match Application::build_with_listener(other, Role::Api, listener).await {
        Ok(_) => panic!("a process with QUEUE_SHARDS=2 started on a 3-shard prefix"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("QUEUE_SHARDS"), "{err}");
    app.stop().await;
}

/// A Redis user that may not run `SORT` (Redis files it under `@dangerous`,
/// often withheld from restricted users) could never reserve a batch: a
/// process with workers refuses to start and names the grant, where it
/// would otherwise back off forever; an API-only process, which never
/// reserves, starts.
#[tokio::test]
async fn workers_refuse_to_start_as_a_redis_user_that_may_not_sort() {
    let mut settings = test_settings();
    let mut admin = settings
        .redis_target()
        .unwrap()
        .connect(Duration::from_secs(10))
        .await
        .unwrap();
    let user = format!("adtrack-nosort-{}", uuid::Uuid::new_v4().simple());
    let password = "nosort-password";
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-sort")
        .query_async(&mut admin)
        .await
        .unwrap();
    settings.redis_url =
        settings
            .redis_url
            .replacen("redis://", &format!("redis://{user}:{password}@"), 1);

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = match Application::build_with_listener(settings.clone(), Role::All, listener).await {
        Ok(_) => panic!("a process with workers started as a user that may not SORT"),
        Err(e) => format!("{e:#}"),
    };
    let mut api_only = settings.clone();
    api_only.spool_dir = settings.spool_dir.join("api");
    let api = start(api_only, Role::Api).await;
    api.stop().await;
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(err.contains("may not run SORT"), "{err}");
    assert!(err.contains("+sort"), "{err}");
}

async fn admin_get(app: &crate::helpers::TestApp, path: &str) -> (StatusCode, serde_json::Value) {
    let res = app
        .client
        .get(app.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    crate::helpers::decode(res).await
}
