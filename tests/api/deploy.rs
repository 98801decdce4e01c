//! Deployment shapes: the container health probe, several processes with
//! split roles sharing one Redis, database and prefix, and Redis in Cluster
//! mode.

use std::time::Duration;

use adtrack::app::redis_connection;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    assert_exactly_once, block_commits, free_port, private_cluster_redis, send_clicks, spawn_app,
    spawn_app_with, test_settings, wait_until, Backends, Binary,
};

fn healthcheck(port: u16) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_adtrack"))
        .args(["healthcheck", "--port", &port.to_string(), "--timeout", "2"])
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_healthcheck_command_tells_a_live_server_from_anything_else() {
    let app = spawn_app().await;
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let out = healthcheck(port);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing listening.
    assert!(!healthcheck(free_port()).status.success());

    // Something that answers, but not 200.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    // The probe blocks; the fake server needs this runtime to answer.
    let out = tokio::task::spawn_blocking(move || healthcheck(port))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("503"));
    app.stop().await;
}

/// An api-only process, two worker-only processes and one full `serve`
/// process on one Redis, database and prefix; a worker process is killed
/// with -9 mid-load while it holds a batch. The survivors return its
/// processing list to the queue and every accepted event is stored and
/// counted exactly once.
#[tokio::test]
async fn split_roles_share_one_queue_and_survive_a_killed_worker() {
    let base = test_settings();
    let mut base = base;
    base.heartbeat_ttl = Duration::from_secs(2);
    base.batch_size = 100;
    let b = Backends::connect(&base).await;
    let with = |name: &str| {
        let mut s = base.clone();
        s.port = free_port();
        s.spool_dir = base.spool_dir.with_extension(name);
        s
    };
    let api = Binary::start_role(&with("api"), "api").await;
    let mut doomed = Binary::start_role(&with("w1"), "worker").await;
    let _survivor = Binary::start_role(&with("w2"), "worker").await;
    let full = Binary::start_role(&with("all"), "all").await;

    let ad = "ad-split-roles";
    let to_api = tokio::spawn({
        let base = api.address.clone();
        async move { send_clicks(&base, ad, 3000, 8).await }
    });
    let to_full = tokio::spawn({
        let base = full.address.clone();
        async move { send_clicks(&base, ad, 2000, 4).await }
    });
    // Commits wait while the test holds the outbox lock, so a batch the
    // doomed process reserved stays in its processing lists until the kill.
    let stall = block_commits(&b.pool).await;
    let doomed_workers = b.workers_of(doomed.child.id()).await;
    assert_eq!(doomed_workers.len(), base.worker_count);
    let (b_ref, ids) = (&b, &doomed_workers);
    wait_until(
        "the doomed process holds a batch",
        Duration::from_secs(30),
        || async move { b_ref.held_by(ids).await > 0 },
    )
    .await;
    doomed.kill9();
    let held = b.held_by(&doomed_workers).await;
    assert!(held > 0, "the killed process held nothing");
    stall.rollback().await.unwrap();

    let mut outcome = to_api.await.unwrap();
    let other = to_full.await.unwrap();
    outcome.accepted.extend(other.accepted);
    outcome.sent.extend(other.sent);
    assert_eq!(outcome.refused + other.refused, 0);
    assert_eq!(outcome.failed + other.failed, 0);
    assert_eq!(outcome.accepted.len(), 5000);

    b.wait_drained().await;
    assert_exactly_once(&b, ad, &outcome, &api.address).await;
    // Both ingest processes answer from the same counters.
    assert_exactly_once(&b, ad, &outcome, &full.address).await;
    eprintln!("[split roles] the killed process held {held} items");
    drop(api);
    drop(full);
    b.cleanup().await;
}

/// Every key one script or LMOVE touches must share the `{P}` hash tag:
/// a Cluster-mode Redis refuses anything else with CROSSSLOT. Ingest,
/// processing, retries, dead letters, replay, reconcile and analytics all
/// run against one.
#[tokio::test]
async fn the_whole_pipeline_runs_on_redis_in_cluster_mode() {
    let redis = private_cluster_redis().await;
    let app = spawn_app_with(|s| {
        s.redis_url = redis.url();
        s.simulate_failures = true;
        s.max_attempts = 1;
        s.admin_token = Some("cluster-admin-token-0123".into());
    })
    .await;
    let ad = "ad-cluster";
    for i in 0..50 {
        app.click(json!({ "adId": ad, "ipAddress": format!("10.0.0.{i}") }))
            .await;
    }
    let (status, _) = app.post("/ads/impression", &json!({ "adId": ad })).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    // A poison event amid good ones: the batch is split, and the parts
    // committed before the last one update counters without acknowledging.
    let mut batch: Vec<_> = (0..10)
        .map(|_| json!({ "type": "click", "adId": ad }))
        .collect();
    batch.insert(
        5,
        json!({ "type": "click", "adId": ad, "eventId": Uuid::new_v4(), "simulateFailure": true }),
    );
    let (status, body) = app.post("/events/batch", &json!({ "events": batch })).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    app.wait_drained().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.metric("adtrack_dead_lettered_total").await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let a = app.analytics(ad, "all").await;
    assert_eq!(a["totalClicks"], 60, "{a}");
    assert_eq!(a["impressions"], 1, "{a}");
    assert_eq!(app.metric("adtrack_outages_total").await, 0.0);

    // Outbox recovery: a batch committed to Postgres whose worker died before
    // updating the counters (applied without a processing list).
    let events: Vec<adtrack::domain::Event> = (0..3)
        .map(|i| {
            let body =
                json!({ "type": "impression", "adId": ad, "ipAddress": format!("10.9.0.{i}") });
            adtrack::domain::parse_value(
                body,
                &adtrack::domain::ParseContext::new(chrono::Utc::now()),
            )
            .unwrap()
        })
        .collect();
    let refs: Vec<&_> = events.iter().collect();
    adtrack::store::insert_batch(&app.pool, &refs, Uuid::now_v7(), &[])
        .await
        .unwrap();
    let counters = adtrack::counters::Counters::new(app.keys.clone());
    let mut cluster_conn = app.redis.clone();
    let applied =
        adtrack::worker::recover_outbox(&app.pool, &mut cluster_conn, &counters, Duration::ZERO)
            .await
            .expect("outbox recovery runs in cluster mode");
    assert_eq!(applied, 1);
    assert_eq!(app.analytics(ad, "all").await["impressions"], 4);

    // Admin replay of the dead letter (an LMOVE loop in one script).
    let replay = app
        .client
        .post(app.url("/admin/dlq/replay"))
        .bearer_auth("cluster-admin-token-0123")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), reqwest::StatusCode::OK);

    // Reconcile rebuilds and swaps the counters with scripts too.
    let mut conn = redis_connection(&redis.url(), Duration::from_secs(5))
        .await
        .unwrap();
    adtrack::counters::reconcile(&app.pool, &mut conn, &app.keys, chrono::Utc::now())
        .await
        .expect("reconcile runs in cluster mode");
    let a = app.analytics(ad, "all").await;
    assert_eq!(a["totalClicks"], 60, "{a}");
    // 50 distinct IPs, plus the batch's events from the peer address.
    assert_eq!(a["uniqueClicks"], 51, "{a}");
    app.stop().await;
}
