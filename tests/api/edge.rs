//! The HTTP edge under hostile traffic (SPEC invariant 8): security headers,
//! a deadline on request bodies, out-of-range parameters, operator data,
//! where API keys may travel, what unknown keys cost, revoked keys on open
//! streams, and rate limits that charge per event.

use std::time::{Duration, Instant};

use adtrack::app::Role;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::helpers::*;

const TOKEN: &str = "edge-admin-token-0123456789";

fn header<'r>(res: &'r reqwest::Response, name: &str) -> &'r str {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{} has no {name} header", res.url()))
}

#[tokio::test]
async fn every_answer_carries_security_headers_and_the_ui_has_no_inline_code() {
    let app = spawn_app().await;
    let pages = [
        ("/", StatusCode::OK),
        ("/docs", StatusCode::OK),
        ("/app.js", StatusCode::OK),
        ("/ads/analytics?adId=ad-h", StatusCode::OK),
        ("/ads/analytics?adId=bad%20id", StatusCode::BAD_REQUEST),
        ("/no/such/path", StatusCode::NOT_FOUND),
    ];
    let click = json!({"adId": "ad-h"});
    let answers = [
        (reqwest::Method::POST, "/ads/click", StatusCode::ACCEPTED),
        (
            reqwest::Method::PUT,
            "/ads/click",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    let requests = pages
        .into_iter()
        .map(|(path, status)| (reqwest::Method::GET, path, status))
        .chain(answers);
    let mut html = 0;
    for (method, path, status) in requests {
        let res = app
            .client
            .request(method, app.url(path))
            .json(&click)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{path}");
        let csp = header(&res, "content-security-policy").to_owned();
        if header(&res, "content-type").starts_with("text/html") {
            assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
            assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
            assert!(!csp.contains("unsafe-eval"), "{path}: {csp}");
            assert!(csp.contains("object-src 'none'"), "{path}: {csp}");
            if path == "/docs" {
                // The page's own policy, which the edge keeps.
                assert!(
                    csp.contains("style-src 'self' 'unsafe-inline'"),
                    "{path}: {csp}"
                );
            } else {
                // Swagger UI sets style attributes; nothing else may.
                assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
            }
            html += 1;
        } else {
            // Anything else (JSON, a script, an error) loads and runs
            // nothing when opened on its own, and is never framed.
            assert_eq!(csp, "default-src 'none'; frame-ancestors 'none'", "{path}");
        }
        assert_eq!(header(&res, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&res, "x-frame-options"), "DENY", "{path}");
        let referrer = header(&res, "referrer-policy");
        assert!(
            ["no-referrer", "strict-origin-when-cross-origin"].contains(&referrer),
            "{path}: {referrer}"
        );
    }
    assert_eq!(html, 2, "the UI and /docs are the HTML pages");
    // With PUBLIC_URL, the VAST documents' pixels and video come from its
    // origin: the page may load images and media from there.
    let public =
        spawn_app_with(|s| s.public_url = Some("https://track.example:8443/ads".into())).await;
    let res = public.client.get(public.url("/")).send().await.unwrap();
    let csp = header(&res, "content-security-policy").to_owned();
    assert!(
        csp.contains("img-src 'self' data: https://track.example:8443;"),
        "{csp}"
    );
    assert!(
        csp.contains("media-src 'self' https://track.example:8443;"),
        "{csp}"
    );
    assert!(csp.contains("script-src 'self';"), "{csp}");
    public.stop().await;
    // The policy forbids inline code, so the pages must not carry any.
    for path in ["/", "/docs"] {
        let html = app
            .client
            .get(app.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .to_ascii_lowercase();
        for script in html.split("<script").skip(1) {
            let tag = &script[..script.find('>').unwrap()];
            assert!(tag.contains(" src="), "{path}: inline <script{tag}>");
        }
        assert!(!html.contains("<style"), "{path}: inline <style>");
        assert!(!html.contains(" style="), "{path}: a style attribute");
        assert!(!html.contains("javascript:"), "{path}: a javascript: URL");
        let handler = html.split_whitespace().any(|w| {
            w.starts_with("on")
                && w.contains('=')
                && w[2..w.find('=').unwrap()]
                    .chars()
                    .all(|c| c.is_ascii_lowercase())
        });
        assert!(!handler, "{path}: an inline event handler");
    }
    app.stop().await;
}

/// The request metrics name the standard methods and label any other one
/// `other`, so a client inventing methods adds no series; each request is
/// counted once, in the histogram of its route, method and status.
#[tokio::test]
async fn invented_methods_share_one_metric_label() {
    let app = spawn_app().await;
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("INVENT{i}").as_bytes()).unwrap();
        let res = app
            .client
            .request(method, app.url("/ads/click"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
    for _ in 0..3 {
        let (status, body) = app.post("/ads/click", &json!({"adId": "ad-m"})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let text = app.metrics_text().await;
    assert!(!text.contains("INVENT"), "{text}");
    let count = |method: &'static str, status: &'static str| {
        let app = &app;
        async move {
            app.metric_where(
                "adtrack_http_request_duration_seconds_count",
                &[
                    ("route", "/ads/click"),
                    ("method", method),
                    ("status", status),
                ],
            )
            .await
        }
    };
    assert_eq!(count("other", "405").await, 20.0);
    assert_eq!(count("POST", "202").await, 3.0);
    app.stop().await;
}

/// What the server answers on a raw connection, read until the end of a
/// JSON body or of the connection; `None` if nothing complete comes within
/// 20 s.
async fn json_answer<R: tokio::io::AsyncRead + Unpin>(rd: &mut R) -> Option<String> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&answer);
            if text.contains("\r\n\r\n") && text.contains('}') {
                break;
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&answer).into_owned())
}

/// A body that never comes: the headers promise one and the client sends
/// nothing more. Nothing wakes the handler but its deadline, which ingest
/// arms only when the body is still missing at its second look.
#[tokio::test]
async fn a_stalled_body_gets_408_within_the_deadline() {
    let app = spawn_app_with(|s| s.body_timeout = Duration::from_secs(1)).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    for path in ["/ads/click", "/events/batch"] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: adtrack\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let text = json_answer(&mut stream)
            .await
            .unwrap_or_else(|| panic!("{path}: no answer to a stalled body within 20 s"));
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        assert!(text.contains("\"request_timeout\""), "{path}: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path}: {text}"
        );
    }
    assert_eq!(app.queue_len().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_trickled_body_gets_408_within_the_deadline() {
    let app = spawn_app_with(|s| s.body_timeout = Duration::from_secs(1)).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(
        b"POST /events/batch HTTP/1.1\r\nHost: adtrack\r\nContent-Type: application/json\r\n\
          Content-Length: 100000\r\n\r\n{\"events\":[",
    )
    .await
    .unwrap();
    // A byte every 100 ms: the connection is never idle, the body never
    // complete.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let trickle = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop_rx => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if wr.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let answer = json_answer(&mut rd).await;
    let _ = stop_tx.send(());
    let _ = trickle.await;
    let text = answer.expect("no answer to a trickled body within 20 s");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10), "{text}");
    assert_eq!(app.queue_len().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn cursors_times_and_numbers_out_of_range_are_400_naming_the_parameter() {
    let app = spawn_app_with(|s| s.admin_token = Some(TOKEN.into())).await;
    let zeros = "0".repeat(32);
    let id = Uuid::new_v4().simple();
    for (path, name) in [
        (
            format!("/events?before=-220000000000000000~{zeros}"),
            "before",
        ),
        (format!("/events?before=-220000000000000000~{id}"), "before"),
        (format!("/events?before=-62135596800000001~{id}"), "before"),
        (format!("/events?before=9223372036854775807~{id}"), "before"),
        ("/events?before=0000-01-01T00:00:00Z".into(), "before"),
        ("/aggregates?to=0000-12-31T00:00:00Z".into(), "to"),
        (
            "/aggregates?from=0000-12-31T00:00:00Z&to=0001-01-01T00:00:00Z".into(),
            "from",
        ),
        ("/aggregates?to=9999-12-31T23:00:00-05:00".into(), "to"),
        ("/events?limit=99999999999999999999".into(), "limit"),
        ("/events?limit=-1".into(), "limit"),
        (
            "/events?status=failed&before=failed~99999999999999999999999".into(),
            "before",
        ),
    ] {
        let res = app
            .client
            .get(app.url(&path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let (status, body) = decode(res).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"], "invalid_field", "{path}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(name),
            "{path}: {body}"
        );
    }
    // Nothing was taken for an outage.
    assert_eq!(app.get("/ready").await.0, StatusCode::OK);
    app.stop().await;
}

async fn push_letter(app: &TestApp, tenant: Option<&str>, error: &str) {
    let mut event = json!({"eventId": Uuid::new_v4(), "type": "click", "adId": "ad-dead",
        "timestamp": chrono::Utc::now().to_rfc3339(), "receivedAt": chrono::Utc::now().to_rfc3339()});
    if let Some(t) = tenant {
        event["tenantId"] = json!(t);
    }
    let letter = json!({"event": event, "error": error, "attempts": 5, "failedAt": chrono::Utc::now().to_rfc3339()});
    let mut conn = app.redis.clone();
    let _: () = redis::cmd("LPUSH")
        .arg(app.keys.dlq())
        .arg(letter.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
}

fn errors_of(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["error"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn failed_events_are_operator_data() {
    // Tenants off: the admin token, as for /admin/dlq.
    for token in [Some(TOKEN), None] {
        let app = spawn_app_with(|s| s.admin_token = token.map(str::to_owned)).await;
        push_letter(&app, None, "secret error text").await;
        for auth in [None, Some("wrong-token")] {
            let mut req = app.client.get(app.url("/events?status=failed"));
            if let Some(a) = auth {
                req = req.bearer_auth(a);
            }
            let (status, body) = decode(req.send().await.unwrap()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}: {body}");
            assert!(!body.to_string().contains("secret"), "{body}");
        }
        if token.is_some() {
            let res = app
                .client
                .get(app.url("/events?status=failed"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let (status, page) = decode(res).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            assert_eq!(errors_of(&page), ["secret error text"]);
        }
        // Stored events stay open to all.
        assert_eq!(app.get("/events").await.0, StatusCode::OK);
        app.stop().await;
    }

    // Tenants on: a key sees its own tenant's letters only.
    let app = spawn_app_with(|s| s.tenants = true).await;
    let acme = adtrack::tenants::create(&app.pool, "acme", "")
        .await
        .unwrap();
    let globex = adtrack::tenants::create(&app.pool, "globex", "")
        .await
        .unwrap();
    push_letter(&app, Some("acme"), "acme failure").await;
    push_letter(&app, Some("globex"), "globex failure").await;
    push_letter(&app, None, "untenanted failure").await;
    for (key, want) in [(&acme, "acme failure"), (&globex, "globex failure")] {
        let res = app
            .client
            .get(app.url("/events?status=failed"))
            .header("X-API-Key", key.as_str())
            .send()
            .await
            .unwrap();
        let (status, page) = decode(res).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(errors_of(&page), [want], "{page}");
    }
    app.stop().await;
}

#[tokio::test]
async fn api_keys_in_the_query_are_refused_except_on_live() {
    let app = spawn_app_with(|s| s.tenants = true).await;
    let key = adtrack::tenants::create(&app.pool, "acme", "")
        .await
        .unwrap();
    for (method, path) in [
        ("GET", format!("/ads/analytics?adId=ad-q&apiKey={key}")),
        ("GET", format!("/events?apiKey={key}")),
        ("GET", format!("/campaigns?apiKey={key}")),
        ("POST", format!("/ads/click?apiKey={key}")),
        ("POST", format!("/events/batch?apiKey={key}")),
    ] {
        // Refused with the header too: the key is already in a URL.
        for with_header in [false, true] {
            let mut req = app
                .client
                .request(method.parse().unwrap(), app.url(&path))
                .json(&json!({"adId": "ad-q", "events": [{"adId": "ad-q", "type": "click"}]}));
            if with_header {
                req = req.header("X-API-Key", key.as_str());
            }
            let (status, body) = decode(req.send().await.unwrap()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
            assert!(
                body["message"].as_str().unwrap().contains("X-API-Key"),
                "{body}"
            );
        }
    }
    assert_eq!(app.queue_len().await, 0);
    // The header works, and /live takes the query parameter.
    let res = app
        .client
        .get(app.url("/ads/analytics?adId=ad-q"))
        .header("X-API-Key", key.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut live = app
        .client
        .get(app.url(&format!("/live?apiKey={key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    assert!(live.chunk().await.unwrap().is_some());
    drop(live);
    app.stop().await;
}

/// Transactions committed in `db`, once every session of it has ended and
/// flushed its statistics.
async fn commits_after_sessions_end(db: &str) -> i64 {
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", postgres_base()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (sessions,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(db)
                .fetch_one(&admin)
                .await
                .unwrap();
        if sessions == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{sessions} sessions still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (commits,): (i64,) =
        sqlx::query_as("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
            .bind(db)
            .fetch_one(&admin)
            .await
            .unwrap();
    admin.close().await;
    commits
}

#[tokio::test]
async fn ten_thousand_unknown_keys_cost_no_postgres_queries_nor_evict_a_valid_one() {
    let mut settings = test_settings();
    settings.tenants = true;
    let mut app = start(settings, Role::Api).await;
    let key = adtrack::tenants::create(&app.pool, "acme", "")
        .await
        .unwrap();
    let db = app
        .settings
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let click = |k: String| {
        let req = app
            .client
            .post(app.url("/ads/click"))
            .header("X-API-Key", k)
            .json(&json!({"adId": "ad-keys"}));
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(click(key.clone()).await, StatusCode::ACCEPTED);
    let (before,): (i64,) =
        sqlx::query_as("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
            .bind(&db)
            .fetch_one(&app.pool)
            .await
            .unwrap();

    // Well-formed unknown keys, and a few malformed ones.
    let keys: Vec<String> = (0..10_000)
        .map(|i| match i % 100 {
            0 => format!("adt_{}", Uuid::new_v4().simple()),
            1 => format!("nope_{}", Uuid::new_v4().simple()),
            _ => format!("adt_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
        })
        .collect();
    let statuses: Vec<StatusCode> = futures_util::stream::iter(keys)
        .map(&click)
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    // The valid key was not pushed out.
    assert_eq!(click(key.clone()).await, StatusCode::ACCEPTED);

    app.halt().await;
    app.pool.close().await;
    let queries = commits_after_sessions_end(&db).await - before;
    // The key set is reloaded every few seconds; one query per key would
    // be 10,000.
    eprintln!("{queries} transactions for 10,000 unknown keys");
    assert!(
        queries < 200,
        "{queries} transactions for 10,000 unknown keys"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_keys_live_stream_ends() {
    let app = spawn_app_with(|s| s.tenants = true).await;
    let key = adtrack::tenants::create(&app.pool, "acme", "")
        .await
        .unwrap();
    let mut live = app
        .client
        .get(app.url(&format!("/live?apiKey={key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    assert!(live.chunk().await.unwrap().is_some());
    // Revoked behind this process's back, as `adtrack tenant revoke` on
    // another host would: only the periodic reload can notice.
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE tenant_id = 'acme'")
        .execute(&app.pool)
        .await
        .unwrap();
    let limit = adtrack::tenants::REFRESH + Duration::from_secs(5);
    let ended = tokio::time::timeout(limit, async {
        while let Ok(Some(_)) = live.chunk().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream still runs {limit:?} after revocation"
    );
    let res = app
        .client
        .get(app.url("/ads"))
        .header("X-API-Key", key.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_is_charged_one_token_per_event() {
    // Five events a second, ten at once.
    let app = spawn_app_with(|s| s.rate_limit_per_ip = 5).await;
    let batch = |n: usize| {
        let events: Vec<Value> = (0..n)
            .map(|_| json!({"type": "click", "adId": "ad-cost"}))
            .collect();
        app.client
            .post(app.url("/events/batch"))
            .json(&json!({ "events": events }))
            .send()
    };
    let started = Instant::now();
    let mut accepted = 0u64;
    let mut refused = 0;
    for _ in 0..20 {
        let res = batch(10).await.unwrap();
        match res.status() {
            StatusCode::ACCEPTED => {
                accepted += decode(res).await.1["accepted"].as_u64().unwrap();
            }
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst plus the refill while the loop ran (and one batch of
    // slack for a refill that lands just before the last one).
    let bound = 10.0 + 5.0 * elapsed + 10.0;
    assert!(
        (accepted as f64) <= bound,
        "{accepted} events accepted in {elapsed:.1} s; at most {bound:.0} allowed"
    );
    assert!(refused > 0);
    // A batch beyond the burst is charged in full: the bucket is in debt
    // and a single event right after it is refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(batch(30).await.unwrap().status(), StatusCode::ACCEPTED);
    let (status, body) = app.post("/ads/click", &json!({"adId": "ad-cost"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    app.stop().await;
}

/// A `POST` of one event without an `Origin` is served by the fast path in
/// front of the app (`src/http/front.rs`), the same request with one by the
/// app through actix-cors. Both answer alike, but for the CORS headers, and
/// count the request under the same route.
#[tokio::test]
async fn ingest_answers_alike_with_and_without_an_origin() {
    const PAGE: &str = "https://news.example";
    const SECURITY: [&str; 5] = [
        "content-type",
        "content-security-policy",
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
    ];
    let app = spawn_app().await;
    let key = Uuid::now_v7().to_string();
    let too_large = json!({"adId": "ad-f", "properties": {"pad": "x".repeat(17 * 1024)}});
    // (path, headers, body, the status both answers must have)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, StatusCode);
    let cases: Vec<Case> = vec![
        (
            "/ads/click",
            vec![("idempotency-key", key.as_str())],
            json!({"adId": "ad-f"}).to_string(),
            StatusCode::ACCEPTED,
        ),
        (
            "/ads/impression",
            vec![("idempotency-key", key.as_str())],
            json!({"adId": "ad-f"}).to_string(),
            StatusCode::ACCEPTED,
        ),
        (
            "/events",
            vec![("idempotency-key", key.as_str())],
            json!({"type": "click", "adId": "ad-f"}).to_string(),
            StatusCode::ACCEPTED,
        ),
        (
            "/ads/click",
            vec![],
            "{not json".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/ads/click",
            vec![],
            json!({"adId": "bad id"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/ads/click",
            vec![("idempotency-key", "")],
            json!({"adId": "ad-f"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/ads/impression",
            vec![],
            too_large.to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "/ads/click",
            vec![("content-type", "text/csv")],
            "adId\nad-f".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "/events",
            vec![("content-type", "application/x-ndjson")],
            "{}\n{}".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "/ads/click",
            vec![("content-encoding", "br")],
            "{}".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ];
    let mut expected: std::collections::HashMap<(&str, u16), f64> = Default::default();
    for (path, headers, body, status) in &cases {
        let mut answers = Vec::new();
        for origin in [None, Some(PAGE)] {
            let mut req = app.client.post(app.url(path)).body(body.clone());
            if !headers.iter().any(|(name, _)| *name == "content-type") {
                req = req.header("content-type", "application/json");
            }
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            if let Some(origin) = origin {
                req = req.header("origin", origin);
            }
            let res = req.send().await.unwrap();
            assert_eq!(
                res.status(),
                *status,
                "{path} {headers:?}, origin {origin:?}"
            );
            let cors = res.headers().get("access-control-allow-origin").cloned();
            assert_eq!(cors.is_some(), origin.is_some(), "{path} {headers:?}");
            let kept: Vec<String> = SECURITY
                .iter()
                .map(|name| header(&res, name).to_owned())
                .collect();
            let body: Value = res.json().await.unwrap();
            answers.push((kept, body));
        }
        assert_eq!(answers[0], answers[1], "{path} {headers:?}");
        *expected.entry((path, status.as_u16())).or_default() += 2.0;
    }
    for ((route, status), n) in expected {
        let counted = app
            .metric_where(
                "adtrack_http_request_duration_seconds_count",
                &[
                    ("route", route),
                    ("method", "POST"),
                    ("status", &status.to_string()),
                ],
            )
            .await;
        assert_eq!(counted, n, "{route} {status}");
    }
    app.stop().await;
}
