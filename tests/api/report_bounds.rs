//! Reports are bounded (SPEC invariant 8): they run on their own small pool
//! with a statement timeout, so ingest and the drain never wait behind them;
//! a listing by an unknown campaign or ad reads an index; an experiment
//! summary reads its rollup, whatever the number of raw events.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adtrack::store::reports::{self as store_reports, EXPERIMENT_SUMMARY_SQL, LIST_EVENTS_SQL};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{decode, spawn_app, spawn_app_with, TestApp};

/// The database name of an app's test database.
fn db_name(app: &TestApp) -> String {
    app.settings
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

/// Every node of an `EXPLAIN (FORMAT JSON)` plan, depth first.
fn nodes(plan: &Value) -> Vec<&Value> {
    let mut out = vec![plan];
    if let Some(children) = plan["Plans"].as_array() {
        for child in children {
            out.extend(nodes(child));
        }
    }
    out
}

/// Shared pages a plan node touched (hit or read).
fn pages(node: &Value) -> i64 {
    node["Shared Hit Blocks"].as_i64().unwrap_or(0)
        + node["Shared Read Blocks"].as_i64().unwrap_or(0)
}

/// The root plan nodes of `sql` executed seven times, as a cached prepared
/// statement on one connection of a report pool built as the app builds its
/// own: the fifth run onwards is where Postgres may switch to a generic plan.
async fn explain_as_prepared(reports: &PgPool, sql: &str, args: &str) -> Vec<Value> {
    let mut conn = reports.acquire().await.unwrap();
    sqlx::query(&format!("PREPARE report AS {sql}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    let mut plans = Vec::new();
    for _ in 0..7 {
        let (plan,): (Value,) = sqlx::query_as(&format!(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE report({args})"
        ))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        plans.push(plan[0]["Plan"].clone());
    }
    sqlx::query("DEALLOCATE report")
        .execute(&mut *conn)
        .await
        .unwrap();
    plans
}

/// Pages of the `events` partitions.
async fn event_pages(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(relpages), 0)::bigint FROM pg_class
         WHERE relkind = 'r' AND relname LIKE 'events\\_%'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_listing_by_an_unknown_campaign_or_ad_reads_an_index_not_the_events() {
    let app = spawn_app().await;
    // A server on which cached generic plans win: a generic plan cannot
    // see that a filter is set, and walks every event by time to find an
    // unknown campaign. The report pool must plan for its parameters anyway.
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET plan_cache_mode = force_generic_plan",
        db_name(&app)
    ))
    .execute(&app.pool)
    .await
    .unwrap();
    // 120,000 events, half today (a day partition), half in 2020 (the
    // default partition), in five campaigns and fifty ads.
    sqlx::query(
        "INSERT INTO events (event_id, kind, ad_id, campaign_id, event_time, received_at)
         SELECT gen_random_uuid(), CASE WHEN i % 3 = 0 THEN 'play' ELSE 'click' END,
                'ad-' || (i % 50), 'camp-' || (i % 5),
                CASE WHEN i % 2 = 0 THEN now() - (i % 3600) * interval '1 second'
                     ELSE timestamptz '2020-01-01' + i * interval '1 minute' END,
                now()
         FROM generate_series(1, 120000) i",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE events")
        .execute(&app.pool)
        .await
        .unwrap();
    let table_pages = event_pages(&app.pool).await;
    assert!(table_pages > 1000, "only {table_pages} pages of events");

    let reports =
        store_reports::pool(&app.settings.database_url, 1, Duration::from_secs(30)).unwrap();
    let nil = Uuid::nil();
    // $1 type, $2 adId, $3 campaignId, $4/$5 cursor, $6 limit, $7 tenant.
    for (what, args) in [
        (
            "an unknown campaign",
            "NULL, NULL, 'no-such-campaign', NULL, NULL, 51, ''".to_string(),
        ),
        (
            "an unknown ad",
            "NULL, 'no-such-ad', NULL, NULL, NULL, 51, ''".to_string(),
        ),
        (
            "clicks of an unknown campaign",
            "'click', NULL, 'no-such-campaign', NULL, NULL, 1001, ''".to_string(),
        ),
        (
            "a known ad in an unknown campaign",
            "NULL, 'ad-7', 'no-such-campaign', NULL, NULL, 51, ''".to_string(),
        ),
        (
            "a later page of an unknown campaign",
            format!("NULL, NULL, 'no-such-campaign', now(), '{nil}', 51, ''"),
        ),
    ] {
        for (run, plan) in explain_as_prepared(&reports, LIST_EVENTS_SQL, &args)
            .await
            .iter()
            .enumerate()
        {
            // A few index pages per partition, whatever the table holds.
            assert!(
                pages(plan) < 60,
                "{what}, run {run}: {} of {table_pages} pages read: {plan:#}",
                pages(plan)
            );
            for node in nodes(plan) {
                if node["Node Type"] == "Seq Scan" {
                    assert_eq!(pages(node), 0, "{what}: a scan of events: {node:#}");
                }
            }
        }
    }
    reports.close().await;

    // The endpoint answers the same listings, empty.
    for path in [
        "/events?campaignId=no-such-campaign",
        "/events?adId=no-such-ad&limit=1000",
        "/events?adId=ad-7&campaignId=no-such-campaign",
    ] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["events"], json!([]), "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_experiment_summary_reads_its_rollup_whatever_the_raw_events() {
    let app = spawn_app().await;
    let exp = "exp-big";
    for (user, variant, kind) in [
        ("u1", "control", "impression"),
        ("u1", "control", "conversion"),
        ("u2", "b", "impression"),
    ] {
        let (status, body) = app
            .post(
                "/events",
                &json!({"type": kind, "adId": "ad-x", "userId": user, "variant": variant, "experimentId": exp}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    app.wait_drained().await;
    // 200,000 more raw events of the experiment, many users each: the old
    // summary read every one of them on every call.
    sqlx::query(
        "INSERT INTO events (event_id, kind, ad_id, user_id, variant, experiment_id,
                             event_time, received_at)
         SELECT gen_random_uuid(), CASE WHEN i % 10 = 0 THEN 'conversion' ELSE 'impression' END,
                'ad-x', 'user-' || (i % 50000), CASE WHEN i % 2 = 0 THEN 'control' ELSE 'b' END,
                $1, now() - (i % 3600) * interval '1 second', now()
         FROM generate_series(1, 200000) i",
    )
    .bind(exp)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE events")
        .execute(&app.pool)
        .await
        .unwrap();

    let reports =
        store_reports::pool(&app.settings.database_url, 1, Duration::from_secs(30)).unwrap();
    for plan in explain_as_prepared(&reports, EXPERIMENT_SUMMARY_SQL, &format!("'{exp}', ''")).await
    {
        let read: Vec<&str> = nodes(&plan)
            .into_iter()
            .filter_map(|n| n["Relation Name"].as_str())
            .collect();
        assert!(
            read.iter().all(|r| *r == "rollup_experiment"),
            "the summary reads {read:?}: {plan:#}"
        );
        // One row per variant: a few pages, not the 200,000 events.
        assert!(pages(&plan) < 10, "{} pages: {plan:#}", pages(&plan));
    }
    reports.close().await;
    app.stop().await;
}

/// The summary the raw events give, computed as adtrack computed it before
/// the rollup existed: the oracle the rollup must match.
async fn summary_from_raw_events(pool: &PgPool, exp: &str) -> Vec<(String, i64, i64, i64, i64)> {
    sqlx::query_as(
        "SELECT coalesce(variant, ''), count(*),
                count(DISTINCT coalesce(user_id, host(ip))),
                count(*) FILTER (WHERE kind = 'conversion'),
                count(DISTINCT coalesce(user_id, host(ip))) FILTER (WHERE kind = 'conversion')
         FROM events WHERE tenant_id = '' AND experiment_id = $1
         GROUP BY 1 ORDER BY 1",
    )
    .bind(exp)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_experiment_rollup_equals_the_raw_events_across_batches_races_and_duplicates() {
    // Small batches and four workers: one user's events land in different
    // batches, committed by racing workers.
    let app = spawn_app_with(|s| {
        s.batch_size = 7;
        s.worker_count = 4;
    })
    .await;
    let exp = "exp-race";
    let mut events = Vec::new();
    for i in 0..400u32 {
        let user = format!("user-{}", i % 37);
        let variant = ["control", "b", "c"][(i % 3) as usize];
        // Users convert late, some twice; some events carry no variant.
        let kind = if i > 150 && i % 4 == 0 {
            "conversion"
        } else {
            "impression"
        };
        let mut e = json!({"eventId": Uuid::new_v4(), "type": kind, "adId": "ad-r", "userId": user, "experimentId": exp});
        if i % 11 != 0 {
            e["variant"] = json!(variant);
        }
        events.push(e);
    }
    // Events with no userId count the client IP as the user.
    for _ in 0..5 {
        events.push(json!({"eventId": Uuid::new_v4(), "type": "conversion", "adId": "ad-r", "variant": "b", "experimentId": exp}));
    }
    // Every event is sent twice: the duplicates must count nowhere.
    for chunk in events.chunks(50).chain(events.chunks(50)) {
        let (status, body) = app.post("/events/batch", &json!({ "events": chunk })).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["accepted"], chunk.len(), "{body}");
    }
    app.wait_drained().await;

    let raw = summary_from_raw_events(&app.pool, exp).await;
    assert_eq!(raw.len(), 4, "{raw:?}");
    assert!(
        raw.iter().all(|v| v.4 > 0),
        "every variant converts: {raw:?}"
    );
    let (status, summary) = app.get(&format!("/experiments/{exp}/summary")).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    let got: Vec<(String, i64, i64, i64, i64)> = summary["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["variant"].as_str().unwrap().to_owned(),
                v["events"].as_i64().unwrap(),
                v["uniqueUsers"].as_i64().unwrap(),
                v["conversions"].as_i64().unwrap(),
                v["convertedUsers"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, raw, "rollup against raw events");
    app.stop().await;
}

/// One report's answer, as the test saw it.
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
    took: Duration,
}

#[tokio::test]
async fn a_report_past_its_timeout_answers_503_while_ingest_and_the_drain_go_on() {
    let app = spawn_app_with(|s| {
        s.report_timeout = Duration::from_millis(20);
        s.report_pool_size = 2;
    })
    .await;
    // Six days of minutes in 300,000 rollup rows: summing them by minute
    // takes several times the 20 ms the reports may run.
    sqlx::query(
        "INSERT INTO rollup_minute (tenant_id, bucket, kind, ad_id, campaign_id, screen_id, events)
         SELECT '', date_trunc('minute', now()) - (i % 8000) * interval '1 minute', 'play', '', '',
                's' || (i / 8000), 1
         FROM generate_series(0, 299999) i",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE rollup_minute")
        .execute(&app.pool)
        .await
        .unwrap();
    let from = (chrono::Utc::now() - chrono::Duration::days(6))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let report = app.url(&format!("/aggregates?groupBy=minute&from={from}"));

    // Eight clients ask for the report over and over: four times what the
    // report pool holds.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (client, url, stop) = (app.client.clone(), report.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let res = client.get(&url).send().await.unwrap();
                let retry_after = res
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                let (status, body) = decode(res).await;
                answers.push(Answer {
                    status,
                    retry_after,
                    body,
                    took: started.elapsed(),
                });
            }
            answers
        }));
    }

    // Watch Postgres while they run: which connections run the report (the
    // statement of /aggregates; the analytics read rollup_minute too).
    let db = db_name(&app);
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pool, stop, db) = (app.pool.clone(), watch_stop.clone(), db.clone());
        tokio::spawn(async move {
            let mut seen: Vec<(i64, Vec<String>)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // Parallel workers of a report are backends too.
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT backend_type || ' ' || coalesce(application_name, '')
                     FROM pg_stat_activity
                     WHERE datname = $1 AND state = 'active'
                       AND query LIKE 'SELECT date_trunc($1, bucket, ''UTC'') AS start%' AND pid <> pg_backend_pid()",
                )
                .bind(&db)
                .fetch_all(&pool)
                .await
                .unwrap();
                if !names.is_empty() {
                    seen.push((names.len() as i64, names));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        })
    };
    // Ingest starts once reports are running.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active'
               AND query LIKE 'SELECT date_trunc($1, bucket, ''UTC'') AS start%' AND pid <> pg_backend_pid()",
        )
        .bind(&db)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if running > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no report started in 30 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // 300 clicks, accepted, stored and counted while the reports go on.
    let clicks: Vec<Value> = (0..300)
        .map(|_| json!({"type": "click", "adId": "ad-under-reports"}))
        .collect();
    for chunk in clicks.chunks(100) {
        let (status, body) = app.post("/events/batch", &json!({ "events": chunk })).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["accepted"], 100, "{body}");
    }
    let (status, body) = app
        .post("/ads/click", &json!({"adId": "ad-under-reports"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE ad_id = 'ad-under-reports'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        let counted = app.analytics("ad-under-reports", "24h").await["totalClicks"].clone();
        if stored == 301 && counted == 301 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "clicks not drained behind the reports in 30 s: {stored} stored, {counted} counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        clients.iter().all(|c| !c.is_finished()),
        "the reports ran the whole time"
    );

    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }
    watch_stop.store(true, Ordering::Relaxed);
    let seen = watcher.await.unwrap();

    // Only the report pool's connections ran the report, never more than
    // it holds and without parallel workers: the pool of ingest and the
    // workers stayed theirs.
    assert!(!seen.is_empty(), "the report was never seen running");
    for (running, names) in &seen {
        assert!(
            *running <= 2,
            "{running} report statements at once: {names:?}"
        );
        assert!(
            names
                .iter()
                .all(|n| *n == format!("client backend {}", store_reports::APPLICATION_NAME)),
            "a report ran outside the report pool: {names:?}"
        );
    }
    assert!(answers.len() >= 8, "{} reports answered", answers.len());
    let mut timed_out = 0;
    for a in &answers {
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
        assert_eq!(a.body["error"], "unavailable", "{}", a.body);
        assert!(a.retry_after.is_some(), "no Retry-After: {}", a.body);
        let message = a.body["message"].as_str().unwrap();
        if message.contains("REPORT_TIMEOUT (20ms)") {
            timed_out += 1;
        } else {
            assert!(message.contains("REPORT_POOL_SIZE"), "{message}");
        }
        // The timeout plus at most the wait for a connection, with room
        // for a loaded machine; unbounded, this report answers 200.
        assert!(a.took < Duration::from_secs(5), "{:?}: {}", a.took, a.body);
    }
    assert!(timed_out > 0, "no report was cut by its timeout");
    app.stop().await;
}
