//! Rate limits: per client IP and per adId, held in Redis so they bind
//! across instances; 429 with `Retry-After`; fail open when Redis is down.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn click_from(app: &TestApp, ad: &str, forwarded: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/ads/click"))
        .json(&json!({ "adId": ad }));
    if let Some(f) = forwarded {
        req = req.header("X-Forwarded-For", f);
    }
    req.send().await.expect("request sent")
}

async fn refused(res: reqwest::Response) -> (u64, Value) {
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (_, body) = decode(res).await;
    (retry, body)
}

#[tokio::test]
async fn a_client_past_its_burst_gets_429_and_nothing_is_queued() {
    // One request a second, three at once: the fourth in a row is refused.
    let app = spawn_app_with(|s| {
        s.rate_limit_per_ip = 1;
        s.rate_limit_burst = Some(3);
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            click_from(&app, "ad-rl", None).await.status(),
            StatusCode::ACCEPTED
        );
    }
    let (retry, body) = refused(click_from(&app, "ad-rl", None).await).await;
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("client"),
        "{body}"
    );
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // A bad request is charged too, and refused the same way.
    let res = app
        .client
        .post(app.url("/ads/click"))
        .json(&json!({ "adId": "no spaces" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    app.wait_drained().await;
    assert_eq!(app.stored().await, 3, "a refused request was stored");
    assert_eq!(app.analytics("ad-rl", "all").await["totalClicks"], 3);
    assert!(app.metric("adtrack_rate_limited_total").await >= 2.0);
    // The bucket refills at the configured rate.
    tokio::time::sleep(Duration::from_millis(1100 * retry)).await;
    assert_eq!(
        click_from(&app, "ad-rl", None).await.status(),
        StatusCode::ACCEPTED
    );
    // Health and reads are not limited.
    assert_eq!(app.get("/health").await.0, StatusCode::OK);
    assert_eq!(app.get("/ads/analytics?adId=ad-rl").await.0, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn the_limit_holds_across_instances_sharing_redis() {
    let first = spawn_app_with(|s| {
        s.rate_limit_per_ip = 1;
        s.rate_limit_burst = Some(4);
    })
    .await;
    let mut settings = first.settings.clone();
    // A second process on the same Redis prefix, its own spool and database.
    settings.spool_dir =
        std::env::temp_dir().join(format!("adtrack-spool-{}", uuid::Uuid::new_v4()));
    let second = start(settings, adtrack::app::Role::Api).await;
    let mut accepted = 0;
    let mut limited = 0;
    for i in 0..6 {
        let app = if i % 2 == 0 { &first } else { &second };
        match click_from(app, "ad-shared", None).await.status() {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        (accepted, limited),
        (4, 2),
        "the two instances kept separate buckets"
    );
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn an_ad_past_its_limit_is_refused_while_others_are_not() {
    let app = spawn_app_with(|s| {
        s.rate_limit_per_ad = 1;
        s.rate_limit_ad_burst = Some(2);
    })
    .await;
    for _ in 0..2 {
        assert_eq!(
            click_from(&app, "ad-hot", None).await.status(),
            StatusCode::ACCEPTED
        );
    }
    let (_, body) = refused(click_from(&app, "ad-hot", None).await).await;
    assert!(body["message"].as_str().unwrap().contains("adId"), "{body}");
    assert_eq!(
        click_from(&app, "ad-cold", None).await.status(),
        StatusCode::ACCEPTED
    );
    // A batch is charged per event of each ad, and refused whole.
    let (status, body) = app
        .post(
            "/events/batch",
            &json!({"events": [
                {"type": "click", "adId": "ad-cold"},
                {"type": "click", "adId": "ad-hot"}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    app.wait_drained().await;
    assert_eq!(app.analytics("ad-hot", "all").await["totalClicks"], 2);
    assert_eq!(app.analytics("ad-cold", "all").await["totalClicks"], 1);
    assert!(app.metric("adtrack_rate_limited_total{scope=\"ad\"}").await >= 2.0);
    app.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let app = spawn_app_with(|s| {
        s.rate_limit_per_ip = 1;
        s.rate_limit_burst = Some(1);
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let a = Some("203.0.113.10");
    let b = Some("198.51.100.20");
    assert_eq!(
        click_from(&app, "ad-px", a).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        click_from(&app, "ad-px", b).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        click_from(&app, "ad-px", a).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.wait_drained().await;
    // The forwarded client is also the events' default ipAddress.
    let ips: Vec<String> =
        sqlx::query_scalar("SELECT host(ip) FROM events WHERE ad_id = 'ad-px' ORDER BY 1")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(ips, ["198.51.100.20", "203.0.113.10"]);
    app.stop().await;

    // Without trusted proxies the header is ignored: one bucket, the peer's.
    let app = spawn_app_with(|s| {
        s.rate_limit_per_ip = 1;
        s.rate_limit_burst = Some(1);
    })
    .await;
    assert_eq!(
        click_from(&app, "ad-px", a).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        click_from(&app, "ad-px", b).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.stop().await;
}

#[tokio::test]
async fn with_redis_down_the_limiter_fails_open_and_the_spool_takes_events() {
    let mut redis = private_redis().await;
    let url = redis.url();
    let app = spawn_app_with(|s| {
        s.redis_url = url.clone();
        s.rate_limit_per_ip = 1;
        s.rate_limit_burst = Some(1000);
    })
    .await;
    assert_eq!(
        click_from(&app, "ad-open", None).await.status(),
        StatusCode::ACCEPTED
    );
    redis.kill();
    for _ in 0..5 {
        assert_eq!(
            click_from(&app, "ad-open", None).await.status(),
            StatusCode::ACCEPTED,
            "ingestion must keep answering 202 with Redis down"
        );
    }
    assert!(app.metric("adtrack_rate_limit_fail_open_total").await >= 1.0);
    assert!(app.metric("adtrack_events_spooled_total").await >= 1.0);
    redis.restart().await;
    let b = Backends::connect(&app.settings).await;
    b.wait_drained().await;
    assert_eq!(app.analytics("ad-open", "all").await["totalClicks"], 6);
    app.stop().await;
}
