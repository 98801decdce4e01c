//! Test harness: each test gets the real application on port 0 with its own
//! Postgres database (named by a UUID), its own Redis key prefix and its own
//! spool directory, so tests run in parallel against the real services.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use adtrack::app::{redis_connection, Application, Role};
use adtrack::config::Settings;
use adtrack::queue::Keys;
use redis::aio::ConnectionManager;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Settings for a fresh, isolated instance.
pub fn test_settings() -> Settings {
    let id = Uuid::new_v4().simple().to_string();
    Settings {
        host: [127, 0, 0, 1].into(),
        port: 0,
        database_url: format!("{}/adtrack_test_{id}", postgres_base()),
        redis_url: redis_url(),
        redis_prefix: format!("test-{}", &id[..12]),
        worker_count: 2,
        heartbeat_ttl: Duration::from_secs(3),
        spool_dir: std::env::temp_dir().join(format!("adtrack-spool-{id}")),
        ..Settings::default()
    }
}

pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub keys: Keys,
    pub client: reqwest::Client,
    token: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings();
    adjust(&mut settings);
    start(settings, Role::All).await
}

pub async fn start(settings: Settings, role: Role) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let app = Application::build_with_listener(settings.clone(), role, listener)
        .await
        .expect("the application starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let token = app.shutdown_token();
    let handle = tokio::spawn(app.run_until_stopped());
    let pool = PgPool::connect(&settings.database_url)
        .await
        .expect("connect to the test database");
    let redis = redis_connection(&settings.redis_url, Duration::from_secs(10))
        .await
        .expect("connect to redis");
    TestApp {
        address,
        keys: Keys::new(&settings.redis_prefix),
        settings,
        pool,
        redis,
        client: reqwest::Client::new(),
        token,
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let res = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent");
        decode(res).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        decode(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let res = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent");
        decode(res).await
    }

    /// Sends a click and asserts it was accepted; returns its eventId.
    pub async fn click(&self, body: Value) -> String {
        let (status, json) = self.post("/ads/click", &body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{json}");
        json["eventId"].as_str().expect("eventId").to_owned()
    }

    pub async fn analytics(&self, ad: &str, timeframe: &str) -> Value {
        let (status, json) = self
            .get(&format!("/ads/analytics?adId={ad}&timeframe={timeframe}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        json
    }

    pub async fn queue_len(&self) -> i64 {
        let mut conn = self.redis.clone();
        redis::cmd("LLEN")
            .arg(self.keys.queue())
            .query_async(&mut conn)
            .await
            .expect("LLEN")
    }

    /// Items in every processing list of this prefix.
    pub async fn processing_len(&self) -> i64 {
        let mut conn = self.redis.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(self.keys.processing_pattern())
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        let mut total = 0;
        for k in keys {
            let n: i64 = redis::cmd("LLEN")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .expect("LLEN");
            total += n;
        }
        total
    }

    pub async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM counter_outbox")
            .fetch_one(&self.pool)
            .await
            .expect("count outbox")
    }

    pub async fn stored(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("count events")
    }

    /// Waits until the queue, the processing lists and the counter outbox
    /// are all empty (several times in a row, to step over a batch that is
    /// between two of them).
    pub async fn wait_drained(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut calm = 0;
        while calm < 3 {
            assert!(Instant::now() < deadline, "the queue did not drain in 60 s");
            if self.queue_len().await == 0
                && self.processing_len().await == 0
                && self.outbox_len().await == 0
            {
                calm += 1;
            } else {
                calm = 0;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Stops the app, then drops its database and Redis keys.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
        }
        cleanup(&self.settings, &self.pool, &self.redis).await;
    }
}

pub async fn cleanup(settings: &Settings, pool: &PgPool, redis: &ConnectionManager) {
    pool.close().await;
    let db = settings
        .database_url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    if let Ok(admin) = PgPool::connect(&format!("{}/postgres", postgres_base())).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
    let mut conn = redis.clone();
    let pattern = format!("{{{}}}*", settings.redis_prefix);
    if let Ok(keys) = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async::<Vec<String>>(&mut conn)
        .await
    {
        if !keys.is_empty() {
            let _ = redis::cmd("DEL")
                .arg(keys)
                .query_async::<()>(&mut conn)
                .await;
        }
    }
    let _ = std::fs::remove_dir_all(&settings.spool_dir);
}

pub async fn decode(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

/// A redis-server of the test's own, on a free port, killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and directory (with AOF, the data
    /// written before the kill comes back).
    #[allow(dead_code)]
    pub async fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn_redis(self.port, &self.dir));
        wait_for_port(self.port).await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_redis(port: u16, dir: &std::path::Path) -> std::process::Child {
    std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on port {port}");
}

/// Starts a private redis-server with AOF on a free port; `None` when the
/// binary is missing.
pub async fn private_redis() -> Option<PrivateRedis> {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        return None;
    }
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("adtrack-redis-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).ok()?;
    let child = spawn_redis(port, &dir);
    wait_for_port(port).await;
    Some(PrivateRedis {
        port,
        dir,
        child: Some(child),
    })
}
