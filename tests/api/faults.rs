//! Outages that look like bad data (SPEC invariant 4): a Postgres that
//! refuses writes (read-only, a revoked privilege, a table renamed away,
//! sessions ended) and a Redis that refuses them (out of memory, a
//! read-only replica). Each is held for longer than the whole retry backoff
//! of `MAX_ATTEMPTS=2`: nothing may be dead-lettered, and once it clears
//! every accepted event is counted exactly once.

use std::time::{Duration, Instant};

use adtrack::app::{redis_connection, Role};
use adtrack::counters::Counters;
use adtrack::fault::{Cause, Dependency, Outage};
use adtrack::metrics::Metrics;
use adtrack::queue::Queues;
use adtrack::worker::{StepOutcome, Worker, WorkerContext};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

/// Ways to make Postgres refuse a worker's writes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PgFault {
    /// 25006: what every client of a demoted primary sees.
    ReadOnly,
    /// 42501: `REVOKE INSERT` on the dedup table.
    Revoked,
    /// 42P01: a bad deploy renamed a table away.
    TableRenamed,
    /// 57P01: every session of adtrack's ended mid-statement, again and
    /// again.
    Terminated,
}

impl PgFault {
    /// The cause `/ready` and the metric name for it (`None`: several).
    fn cause(self) -> Option<Cause> {
        match self {
            Self::ReadOnly => Some(Cause::ReadOnly),
            Self::Revoked => Some(Cause::NoPrivilege),
            Self::TableRenamed => Some(Cause::Schema),
            Self::Terminated => None,
        }
    }
}

/// A database owned by a role of its own, so privileges can be revoked
/// (a superuser ignores them), and a superuser's handle on it.
struct Owned {
    role: String,
    db: String,
    /// Superuser, on the `postgres` database.
    admin: PgPool,
    /// Superuser, on the test database.
    inside: Option<PgPool>,
    terminator: Option<tokio::task::JoinHandle<()>>,
    stop_terminating: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Owned {
    async fn new(settings: &mut adtrack::config::Settings) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let role = format!("adtrack_owner_{}", &id[..12]);
        let db = settings.database_url.rsplit('/').next().unwrap().to_owned();
        let admin = PgPool::connect(&format!("{}/postgres", postgres_base()))
            .await
            .unwrap();
        sqlx::query(&format!("CREATE ROLE \"{role}\" LOGIN CREATEDB"))
            .execute(&admin)
            .await
            .unwrap();
        let base =
            postgres_base().replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
        settings.database_url = format!("{base}/{db}");
        Self {
            role,
            db,
            admin,
            inside: None,
            terminator: None,
            stop_terminating: Default::default(),
        }
    }

    /// Connects the superuser handle once the app has created the database.
    async fn inside(&mut self) -> PgPool {
        if self.inside.is_none() {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&format!("{}/{}", postgres_base(), self.db))
                .await
                .unwrap();
            self.inside = Some(pool);
        }
        self.inside.clone().unwrap()
    }

    /// Ends every session of the test role on the database.
    async fn terminate(admin: &PgPool, role: &str) {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE usename = $1 AND pid <> pg_backend_pid()",
        )
        .bind(role)
        .execute(admin)
        .await
        .unwrap();
    }

    /// Runs `sql` as the superuser on the test database.
    async fn inside_sql(&mut self, sql: &str) {
        let inside = self.inside().await;
        sqlx::query(sql).execute(&inside).await.unwrap();
    }

    /// Sets or resets the database's read-only default, then ends adtrack's
    /// sessions so new ones see it (as a failover ends them).
    async fn read_only(&mut self, on: bool) {
        let (db, role) = (&self.db, &self.role);
        let sql = if on {
            format!("ALTER DATABASE \"{db}\" SET default_transaction_read_only = on")
        } else {
            format!("ALTER DATABASE \"{db}\" RESET default_transaction_read_only")
        };
        sqlx::query(&sql).execute(&self.admin).await.unwrap();
        Self::terminate(&self.admin, role).await;
    }

    async fn apply(&mut self, fault: PgFault) {
        let role = self.role.clone();
        match fault {
            PgFault::ReadOnly => self.read_only(true).await,
            PgFault::Revoked => {
                self.inside_sql(&format!("REVOKE INSERT ON event_keys FROM \"{role}\""))
                    .await
            }
            PgFault::TableRenamed => {
                self.inside_sql("ALTER TABLE event_keys RENAME TO event_keys_moved_away")
                    .await
            }
            PgFault::Terminated => {
                // The dedup table is locked, so every worker round waits on
                // it, and is ended by the administrator while it waits.
                let inside = self.inside().await;
                let admin = self.admin.clone();
                let stop = self.stop_terminating.clone();
                let mut lock = inside.begin().await.unwrap();
                sqlx::query("LOCK TABLE event_keys IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut *lock)
                    .await
                    .unwrap();
                self.terminator = Some(tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        Self::terminate(&admin, &role).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    lock.rollback().await.unwrap();
                }));
            }
        }
    }

    async fn clear(&mut self, fault: PgFault) {
        let role = self.role.clone();
        match fault {
            PgFault::ReadOnly => self.read_only(false).await,
            PgFault::Revoked => {
                self.inside_sql(&format!("GRANT INSERT ON event_keys TO \"{role}\""))
                    .await
            }
            PgFault::TableRenamed => {
                self.inside_sql("ALTER TABLE event_keys_moved_away RENAME TO event_keys")
                    .await
            }
            PgFault::Terminated => {
                self.stop_terminating
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                if let Some(t) = self.terminator.take() {
                    t.await.unwrap();
                }
            }
        }
    }

    async fn drop_role(self) {
        if let Some(p) = self.inside {
            p.close().await;
        }
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.db
        ))
        .execute(&self.admin)
        .await;
        sqlx::query(&format!("DROP ROLE IF EXISTS \"{}\"", self.role))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

/// Worker rounds that failed on an outage of `dependency` (and `cause`).
async fn outage_rounds(app: &TestApp, dependency: &str, cause: Option<Cause>) -> f64 {
    let mut labels = vec![("component", "worker"), ("dependency", dependency)];
    if let Some(c) = cause {
        labels.push(("cause", c.as_str()));
    }
    app.metric_where("adtrack_outages_total", &labels).await
}

async fn zcard(app: &TestApp, key: &str) -> i64 {
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut app.redis.clone())
        .await
        .unwrap()
}

async fn llen(app: &TestApp, key: &str) -> i64 {
    redis::cmd("LLEN")
        .arg(key)
        .query_async(&mut app.redis.clone())
        .await
        .unwrap()
}

/// Posts `n` clicks on `ad` with their own eventIds; all must be accepted.
async fn post_clicks(app: &TestApp, ad: &str, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(100) {
        let events: Vec<Value> = (0..100.min(n - chunk * 100))
            .map(|i| {
                let id = Uuid::now_v7();
                ids.push(id);
                json!({"type": "click", "adId": ad, "eventId": id, "ipAddress": format!("10.7.{chunk}.{i}")})
            })
            .collect();
        let (status, body) = app
            .post("/events/batch", &json!({ "events": events }))
            .await;
        assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["accepted"], events.len(), "{body}");
    }
    ids
}

/// Every accepted event stored once, its rollups and counters equal.
async fn assert_counted_once(app: &TestApp, ad: &str, ids: &[Uuid]) {
    let stored: Vec<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM events WHERE ad_id = $1 AND kind = 'click'")
            .bind(ad)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let stored: std::collections::HashSet<Uuid> = stored.into_iter().collect();
    let sent: std::collections::HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(
        stored.len(),
        sent.len(),
        "stored rows differ from accepted events"
    );
    assert_eq!(stored, sent);
    let rolled: Option<i64> = sqlx::query_scalar(
        "SELECT sum(events)::bigint FROM rollup_minute WHERE ad_id = $1 AND kind = 'click'",
    )
    .bind(ad)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(rolled, Some(ids.len() as i64), "rollups differ");
    let a = app.analytics(ad, "all").await;
    assert_eq!(a["totalClicks"], ids.len(), "{a}");
}

async fn readiness(app: &TestApp) -> Value {
    app.get("/ready").await.1
}

/// One Postgres fault held through many worker rounds under load.
async fn postgres_fault_dead_letters_nothing(fault: PgFault) {
    let mut settings = test_settings();
    let mut owned = Owned::new(&mut settings).await;
    settings.max_attempts = 2;
    let app = start(settings, Role::All).await;
    let ad = format!("ad-pg-{fault:?}");
    let mut ids = post_clicks(&app, &ad, 50).await;
    app.wait_drained().await;

    owned.apply(fault).await;
    ids.extend(post_clicks(&app, &ad, 300).await);
    if let Some(cause) = fault.cause() {
        wait_until(
            "/ready names the cause",
            Duration::from_secs(20),
            || async {
                let r = readiness(&app).await;
                r["postgres"] == cause.as_str() && r["status"] == "degraded"
            },
        )
        .await;
    }
    // Six failed rounds back to back per worker take over 3 s of backoff:
    // longer than the whole retry schedule of MAX_ATTEMPTS=2 (under 1 s).
    let cause = fault.cause();
    let rounds = 6.0 * app.settings.worker_count as f64;
    wait_until(
        "six outage rounds a worker",
        Duration::from_secs(30),
        || async { outage_rounds(&app, "postgres", cause).await >= rounds },
    )
    .await;
    assert_eq!(
        llen(&app, &app.keys.dlq()).await,
        0,
        "an outage dead-lettered events"
    );
    assert_eq!(
        zcard(&app, &app.keys.retry()).await,
        0,
        "an outage counted attempts"
    );

    let in_flight = app.queue_len().await + app.processing_len().await;
    owned.clear(fault).await;
    let cleared = Instant::now();
    wait_until("/ready is ready again", Duration::from_secs(20), || async {
        readiness(&app).await["status"] == "ready"
    })
    .await;
    app.wait_drained().await;
    eprintln!(
        "[postgres {fault:?}] accepted {}, in flight when it cleared {in_flight}, drained {:.1} s after",
        ids.len(),
        cleared.elapsed().as_secs_f64()
    );
    assert_eq!(
        llen(&app, &app.keys.dlq()).await,
        0,
        "an outage dead-lettered events"
    );
    assert_eq!(zcard(&app, &app.keys.retry()).await, 0);
    assert_eq!(app.metric("adtrack_dead_lettered_total").await, 0.0);
    assert_counted_once(&app, &ad, &ids).await;
    app.stop().await;
    owned.drop_role().await;
}

#[tokio::test]
async fn a_read_only_postgres_dead_letters_nothing() {
    postgres_fault_dead_letters_nothing(PgFault::ReadOnly).await;
}

#[tokio::test]
async fn a_revoked_insert_privilege_dead_letters_nothing() {
    postgres_fault_dead_letters_nothing(PgFault::Revoked).await;
}

#[tokio::test]
async fn a_table_renamed_away_dead_letters_nothing() {
    postgres_fault_dead_letters_nothing(PgFault::TableRenamed).await;
}

#[tokio::test]
async fn terminated_sessions_dead_letter_nothing() {
    postgres_fault_dead_letters_nothing(PgFault::Terminated).await;
}

/// A worker of the test's own on `app`'s queue, driven step by step.
async fn own_worker(app: &TestApp, max_attempts: u32) -> Worker {
    let ctx = std::sync::Arc::new(WorkerContext {
        pool: sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&app.settings.database_url)
            .await
            .unwrap(),
        redis: app.redis.clone(),
        queues: Queues::new(&app.settings.redis_prefix, 1),
        counters: Counters::new(app.keys.clone()),
        metrics: std::sync::Arc::new(Metrics::new().unwrap()),
        batch_size: 500,
        max_attempts,
        simulate_failures: false,
    });
    let conn = redis_connection(&app.settings.redis_url, Duration::from_secs(10))
        .await
        .unwrap();
    Worker::new(format!("step-{}", Uuid::new_v4().simple()), 0, conn, ctx)
}

/// `Worker::step` under each way Postgres refuses writes: an outage by
/// type, with its cause; the items stay held with no attempt counted; the
/// first round after it clears stores them all.
#[tokio::test]
async fn a_worker_step_on_a_refusing_postgres_is_an_outage_with_its_cause() {
    let mut settings = test_settings();
    let mut owned = Owned::new(&mut settings).await;
    let app = start(settings, Role::Api).await;
    let mut worker = own_worker(&app, 2).await;
    let processing = app.keys.processing(worker.id());
    for fault in [PgFault::ReadOnly, PgFault::Revoked, PgFault::TableRenamed] {
        let ad = format!("ad-step-{fault:?}");
        let ids = post_clicks(&app, &ad, 40).await;
        owned.apply(fault).await;
        for round in 0..3 {
            let err = worker
                .step()
                .await
                .expect_err("a refused write fails the round");
            assert_eq!(
                err.outage,
                Outage::new(Dependency::Postgres, fault.cause().unwrap()),
                "{fault:?}, round {round}: {err}"
            );
            assert_eq!(
                llen(&app, &processing).await,
                40,
                "{fault:?}: the items are held"
            );
        }
        let held: Vec<String> = redis::cmd("LRANGE")
            .arg(&processing)
            .arg(0)
            .arg(-1)
            .query_async(&mut app.redis.clone())
            .await
            .unwrap();
        for item in held {
            let v: Value = serde_json::from_str(&item).unwrap();
            assert!(
                v.get("attempts").is_none_or(|a| a == 0),
                "an attempt was counted: {v}"
            );
        }
        assert_eq!(zcard(&app, &app.keys.retry()).await, 0);
        assert_eq!(llen(&app, &app.keys.dlq()).await, 0);
        owned.clear(fault).await;
        let done = worker.step().await.expect("the round after the outage");
        assert_eq!(
            done,
            StepOutcome::Processed {
                items: 40,
                inserted: 40,
                failed: 0
            },
            "{fault:?}"
        );
        assert_eq!(llen(&app, &processing).await, 0);
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE ad_id = $1")
            .bind(&ad)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(stored, ids.len() as i64);
    }
    app.stop().await;
    owned.drop_role().await;
}

/// The other side of the line: an event whose own data Postgres refuses
/// (class 22) is split out of its batch and retried, and the rest commit.
#[tokio::test]
async fn a_worker_step_isolates_an_event_whose_data_postgres_refuses() {
    let app = start(test_settings(), Role::Api).await;
    let mut worker = own_worker(&app, 2).await;
    let ad = "ad-step-poison";
    post_clicks(&app, ad, 20).await;
    // jsonb has no NUL character: 22P05, the event's own data.
    let poison = json!({
        "eventId": Uuid::now_v7(), "type": "click", "adId": ad,
        "timestamp": chrono::Utc::now(), "receivedAt": chrono::Utc::now(),
        "properties": {"note": "a\u{0}b"}
    });
    let poison: adtrack::domain::Event = serde_json::from_value(poison).unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(app.keys.queue())
        .arg(serde_json::to_string(&poison).unwrap())
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
    let outcome = worker
        .step()
        .await
        .expect("a poison event is not an outage");
    assert_eq!(
        outcome,
        StepOutcome::Processed {
            items: 21,
            inserted: 20,
            failed: 1
        }
    );
    assert_eq!(
        zcard(&app, &app.keys.retry()).await,
        1,
        "the poison event waits for a retry"
    );
    assert_eq!(llen(&app, &app.keys.dlq()).await, 0);
    app.stop().await;
}

/// Redis faults that refuse writes while it still answers `PING`.
#[derive(Debug, Clone, Copy)]
enum RedisFault {
    /// `maxmemory` reached with `noeviction`: every write is `OOM`.
    OutOfMemory,
    /// A replica of a primary it cannot reach: every write is `READONLY`,
    /// and it keeps its data.
    ReadOnlyReplica,
}

async fn redis_fault_dead_letters_nothing(fault: RedisFault) {
    let redis = private_redis().await;
    let url = redis.url();
    let app = spawn_app_with(|s| {
        s.redis_url = url.clone();
        s.max_attempts = 2;
    })
    .await;
    let ad = format!("ad-redis-{fault:?}");
    let mut ids = post_clicks(&app, &ad, 50).await;
    app.wait_drained().await;

    let mut admin = redis_connection(&url, Duration::from_secs(5))
        .await
        .unwrap();
    let (cmd, cause) = match fault {
        RedisFault::OutOfMemory => {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg("noeviction")
                .query_async(&mut admin)
                .await
                .unwrap();
            (
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("maxmemory")
                    .arg(1)
                    .clone(),
                Cause::OutOfMemory,
            )
        }
        RedisFault::ReadOnlyReplica => (
            // Nothing listens there: the replica never syncs, so it keeps
            // its data set and refuses every write.
            redis::cmd("REPLICAOF")
                .arg("127.0.0.1")
                .arg(free_port())
                .clone(),
            Cause::ReadOnly,
        ),
    };
    // A batch in flight when the fault starts.
    ids.extend(post_clicks(&app, &ad, 100).await);
    let _: () = cmd.query_async(&mut admin).await.unwrap();
    wait_until(
        "/ready names the cause",
        Duration::from_secs(20),
        || async { readiness(&app).await["redis"] == cause.as_str() },
    )
    .await;
    // Ingest keeps answering 202: the events go to the spool.
    ids.extend(post_clicks(&app, &ad, 200).await);
    let rounds = 6.0 * app.settings.worker_count as f64;
    wait_until(
        "six outage rounds a worker",
        Duration::from_secs(30),
        || async { outage_rounds(&app, "redis", Some(cause)).await >= rounds },
    )
    .await;
    assert!(app.metric("adtrack_events_spooled_total").await >= 200.0);

    let _: () = match fault {
        RedisFault::OutOfMemory => redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(0)
            .clone(),
        RedisFault::ReadOnlyReplica => redis::cmd("REPLICAOF").arg("NO").arg("ONE").clone(),
    }
    .query_async(&mut admin)
    .await
    .unwrap();
    let cleared = Instant::now();
    wait_until("the spool is replayed", Duration::from_secs(30), || async {
        app.metric("adtrack_spool_events").await == 0.0
    })
    .await;
    app.wait_drained().await;
    eprintln!(
        "[redis {fault:?}] accepted {}, spooled {}, drained {:.1} s after it cleared",
        ids.len(),
        app.metric("adtrack_events_spooled_total").await,
        cleared.elapsed().as_secs_f64()
    );
    assert_eq!(
        llen(&app, &app.keys.dlq()).await,
        0,
        "an outage dead-lettered events"
    );
    assert_eq!(zcard(&app, &app.keys.retry()).await, 0);
    assert_counted_once(&app, &ad, &ids).await;
    app.stop().await;
}

#[tokio::test]
async fn a_redis_out_of_memory_dead_letters_nothing() {
    redis_fault_dead_letters_nothing(RedisFault::OutOfMemory).await;
}

#[tokio::test]
async fn a_read_only_redis_replica_dead_letters_nothing() {
    redis_fault_dead_letters_nothing(RedisFault::ReadOnlyReplica).await;
}

/// A Redis whose script cache was emptied (a restart with its data kept, a
/// `SCRIPT FLUSH`) answers `NOSCRIPT` to every script the workers send by
/// SHA, the reservation's pipelined one included: each is sent again with
/// its source, nothing is dead-lettered, and every event counts once.
#[tokio::test]
async fn a_redis_that_forgot_its_scripts_drains_on() {
    let redis = private_redis().await;
    let url = redis.url();
    let app = spawn_app_with(|s| s.redis_url = url.clone()).await;
    let ad = "ad-script-flush";
    let mut ids = post_clicks(&app, ad, 50).await;
    app.wait_drained().await;
    let mut admin = redis_connection(&url, Duration::from_secs(5))
        .await
        .unwrap();
    let flush = || redis::cmd("SCRIPT").arg("FLUSH").clone();
    let _: () = flush().query_async(&mut admin).await.unwrap();
    ids.extend(post_clicks(&app, ad, 300).await);
    // Once more while a drain is under way.
    let _: () = flush().query_async(&mut admin).await.unwrap();
    ids.extend(post_clicks(&app, ad, 300).await);
    app.wait_drained().await;
    assert_eq!(llen(&app, &app.keys.dlq()).await, 0);
    assert_counted_once(&app, ad, &ids).await;
    app.stop().await;
}

/// A read that fails on a dependency is 503; one that fails for any other
/// reason is 500 `internal`, so an alert on 503s always means a dependency.
#[tokio::test]
async fn reads_tell_an_outage_from_a_bug() {
    let mut settings = test_settings();
    let mut owned = Owned::new(&mut settings).await;
    let app = start(settings, Role::Api).await;
    let role = owned.role.clone();
    owned
        .inside_sql(&format!("REVOKE SELECT ON ads FROM \"{role}\""))
        .await;
    for path in ["/ads", "/campaigns"] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 503, "{path}");
        assert!(res.headers().contains_key("retry-after"), "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "unavailable", "{path}: {body}");
    }
    owned
        .inside_sql(&format!("GRANT SELECT ON ads TO \"{role}\""))
        .await;
    // A column the code reads as never null holds a null: not an outage, a
    // bug. (`Cause::Unknown`: the decode fails on adtrack's side, whether
    // the connection had the statement prepared or not. A changed column
    // type would not do: a freshly prepared statement decodes it unchecked.)
    owned
        .inside_sql("ALTER TABLE ads ALTER COLUMN title DROP NOT NULL")
        .await;
    owned.inside_sql("UPDATE ads SET title = NULL").await;
    let res = app.client.get(app.url("/ads")).send().await.unwrap();
    assert_eq!(res.status(), 500);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "internal", "{body}");
    app.stop().await;
    owned.drop_role().await;
}
