//! Test harness: each test gets the real application on port 0 with its own
//! Postgres database (named by a UUID), its own Redis key prefix and its own
//! spool directory, so tests run in parallel against the real services.

use std::collections::HashSet;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use adtrack::app::{Application, Role};
use adtrack::config::Settings;
use adtrack::queue::Keys;
use adtrack::redis_client::RedisConn;
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
    pub redis: RedisConn,
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

/// Waits until a process with workers has taken up the Redis epoch. A new
/// prefix is a Redis without adtrack's epoch: the first check rebuilds the
/// counters (or, on an empty database, only marks them rebuilt). Tests
/// start once that is done, so a rebuild never races what they write first
/// (nor a process killed before it finished, whose successor would take the
/// rebuild over instead of recovering what the killed one left).
pub async fn wait_for_epoch(redis: &RedisConn, keys: &Keys) {
    wait_until(
        "the app has taken up the Redis epoch",
        Duration::from_secs(30),
        || {
            let mut conn = redis.clone();
            let key = keys.epoch();
            async move {
                redis::cmd("HEXISTS")
                    .arg(key)
                    .arg("rebuiltAt")
                    .query_async::<bool>(&mut conn)
                    .await
                    .unwrap_or(false)
            }
        },
    )
    .await;
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
    let redis = settings
        .redis_target()
        .expect("a valid REDIS_URL")
        .connect(Duration::from_secs(10))
        .await
        .expect("connect to redis");
    let keys = settings.keys();
    if role.runs_workers() {
        wait_for_epoch(&redis, &keys).await;
    }
    TestApp {
        address,
        keys,
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

    /// The keys of every queue shard of this app's prefix.
    pub fn shard_keys(&self) -> Vec<Keys> {
        (0..self.settings.queue_shards)
            .map(|i| Keys::shard(&self.settings.redis_prefix, i))
            .collect()
    }

    /// Items queued, over every shard.
    pub async fn queue_len(&self) -> i64 {
        let mut conn = self.redis.clone();
        let mut total = 0;
        for k in self.shard_keys() {
            let n: i64 = redis::cmd("LLEN")
                .arg(k.queue())
                .query_async(&mut conn)
                .await
                .expect("LLEN");
            total += n;
        }
        total
    }

    /// Items in every processing list of this prefix, over every shard.
    pub async fn processing_len(&self) -> i64 {
        let mut conn = self.redis.clone();
        let mut keys: Vec<String> = Vec::new();
        for k in self.shard_keys() {
            let some: Vec<String> = redis::cmd("KEYS")
                .arg(k.processing_pattern())
                .query_async(&mut conn)
                .await
                .expect("KEYS");
            keys.extend(some);
        }
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
        outbox_len(&self.pool).await
    }

    pub async fn stored(&self) -> i64 {
        stored(&self.pool).await
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

    /// The `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The sum of every series of `name`.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metric_where(name, &[]).await
    }

    /// The sum of the series of `name` whose labels include every pair.
    pub async fn metric_where(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Stops the app, then drops its database and Redis keys.
    /// Shuts the application down (as SIGTERM would) and waits for it,
    /// leaving its database and Redis keys for the test to inspect;
    /// `stop` still cleans up afterwards.
    pub async fn halt(&mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
        }
    }

    pub async fn stop(mut self) {
        self.shut_down().await;
        cleanup(&self.settings, &self.pool, &self.redis).await;
    }

    /// Stops the app and leaves its database and keys to another app that
    /// shares them.
    pub async fn shut_down(&mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
        }
    }
}

/// The sum of every series of metric `name` served at `base`.
pub async fn metric_at(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
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

/// Blocks every batch commit while the returned transaction is open: it
/// holds the counter outbox's table lock, which the commit statement needs
/// from its start (it writes the batch's outbox row). A worker that
/// reserved a batch waits inside its commit, its items in its processing
/// list, until the transaction ends.
pub async fn block_commits(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE counter_outbox IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("lock the counter outbox");
    tx
}

/// Stops every worker in the statement that deletes the outbox rows of the
/// batches it counted, until [`CountStall::release`]: a trigger makes each
/// deletion wait for an advisory lock this session holds. Each stalled
/// worker has a counted batch's outbox row still standing and the next
/// batch's items, not committed, in its processing list.
pub struct CountStall {
    session: sqlx::pool::PoolConnection<sqlx::Postgres>,
}

const COUNT_STALL_LOCK: i64 = 7_406_514;

impl CountStall {
    pub async fn start(pool: &PgPool) -> Self {
        let mut session = pool.acquire().await.expect("a session");
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(COUNT_STALL_LOCK)
            .execute(&mut *session)
            .await
            .expect("take the stall lock");
        sqlx::query(&format!(
            "CREATE FUNCTION stall_outbox_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_advisory_xact_lock({COUNT_STALL_LOCK}); RETURN OLD; END $$"
        ))
        .execute(pool)
        .await
        .expect("create the stall function");
        sqlx::query(
            "CREATE TRIGGER stall_outbox_deletes BEFORE DELETE ON counter_outbox
             FOR EACH ROW EXECUTE FUNCTION stall_outbox_deletes()",
        )
        .execute(pool)
        .await
        .expect("create the stall trigger");
        Self { session }
    }

    /// Lets the stalled deletions go on, then removes the trigger.
    pub async fn release(mut self, pool: &PgPool) {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(COUNT_STALL_LOCK)
            .execute(&mut *self.session)
            .await
            .expect("release the stall lock");
        drop(self.session);
        sqlx::query("DROP TRIGGER stall_outbox_deletes ON counter_outbox")
            .execute(pool)
            .await
            .expect("drop the stall trigger");
    }
}

pub async fn cleanup(settings: &Settings, pool: &PgPool, redis: &RedisConn) {
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
    // The prefix's own keys and those of its queue shards ({P.i}).
    for pattern in [
        format!("{{{}}}*", settings.redis_prefix),
        format!("{{{}.*}}*", settings.redis_prefix),
    ] {
        if let Ok(keys) = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async::<Vec<String>>(&mut conn)
            .await
        {
            // One DEL per key: shard keys live in different Cluster slots.
            for key in keys {
                let _ = redis::cmd("DEL")
                    .arg(key)
                    .query_async::<()>(&mut conn)
                    .await;
            }
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
    /// AOF with `appendfsync always`: a restart brings back every write.
    /// Without it, a restart comes back empty.
    persistent: bool,
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
    /// written before the kill comes back; without, Redis is empty).
    pub async fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn_redis(self.port, &self.dir, self.persistent));
        wait_for_port(self.port).await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_redis(port: u16, dir: &std::path::Path, persistent: bool) -> std::process::Child {
    let aof = if persistent {
        ["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        ["--appendonly", "no", "--appendfsync", "no"]
    };
    std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(aof)
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
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

/// Fails the test with a clear message when `tool` is missing: a fault
/// test that skips itself proves nothing. `.ci/run` installs both tools.
fn require(tool: &str, package: &str, why: &str) {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is not installed (or not on PATH); {why} (apt-get install {package})"
    );
}

fn require_redis_server() {
    require(
        "redis-server",
        "redis-server",
        "the fault tests need it to start a Redis of their own",
    );
}

/// Starts a private redis-server with AOF (`appendfsync always`) on a free
/// port: a restart brings its data back.
pub async fn private_redis() -> PrivateRedis {
    start_private_redis(true).await
}

/// Starts a private redis-server without any persistence: a restart comes
/// back empty, as Redis without AOF or a freshly promoted replica does.
pub async fn private_redis_without_persistence() -> PrivateRedis {
    start_private_redis(false).await
}

async fn start_private_redis(persistent: bool) -> PrivateRedis {
    require_redis_server();
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("adtrack-redis-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create the private Redis directory");
    let child = spawn_redis(port, &dir, persistent);
    wait_for_port(port).await;
    PrivateRedis {
        port,
        dir,
        persistent,
        child: Some(child),
    }
}

/// A private redis-server in Cluster mode that owns every slot: one node,
/// but with Cluster's rules (a multi-key command or script whose keys are in
/// different slots fails with CROSSSLOT).
pub async fn private_cluster_redis() -> PrivateRedis {
    require_redis_server();
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("adtrack-redis-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create the private Redis directory");
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--cluster-enabled", "yes", "--cluster-config-file"])
        .arg(dir.join("nodes.conf"))
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server");
    wait_for_port(port).await;
    let redis = PrivateRedis {
        port,
        dir,
        persistent: false,
        child: Some(child),
    };
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut conn)
        .await
        .unwrap();
    for _ in 0..100 {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .unwrap();
        if info.contains("cluster_state:ok") {
            return redis;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the private cluster node did not become ready");
}

/// Polls `check` every 50 ms until it holds; fails the test, naming `what`,
/// after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy in front of Postgres that a test can cut and restore, so the
/// service sees Postgres vanish mid-connection.
pub struct PgProxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl PgProxy {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target =
            std::env::var("TEST_POSTGRES_ADDR").unwrap_or_else(|_| "127.0.0.1:5432".into());
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = {
            let cut = cut.clone();
            let conns = conns.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if cut.load(std::sync::atomic::Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let target = target.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    conns.lock().unwrap().push(task.abort_handle());
                }
            })
        };
        Self {
            port,
            cut,
            conns,
            accept,
        }
    }

    /// A URL for `db` through the proxy.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// The environment that makes the real binary use `settings`.
pub fn env_of(settings: &Settings) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("HOST", settings.host.to_string()),
        ("PORT", settings.port.to_string()),
        ("DATABASE_URL", settings.database_url.clone()),
        ("REDIS_URL", settings.redis_url.clone()),
        ("REDIS_PREFIX", settings.redis_prefix.clone()),
        ("WORKER_COUNT", settings.worker_count.to_string()),
        ("BATCH_SIZE", settings.batch_size.to_string()),
        ("MAX_ATTEMPTS", settings.max_attempts.to_string()),
        ("SPOOL_DIR", settings.spool_dir.display().to_string()),
        ("SPOOL_MAX_BYTES", settings.spool_max_bytes.to_string()),
        ("SIMULATE_FAILURES", settings.simulate_failures.to_string()),
        (
            "HEARTBEAT_TTL",
            format!("{}ms", settings.heartbeat_ttl.as_millis()),
        ),
        ("QUEUE_SHARDS", settings.queue_shards.to_string()),
        ("TENANTS", settings.tenants.to_string()),
        ("RUST_LOG", "warn".into()),
    ];
    if let Some(t) = &settings.admin_token {
        env.push(("ADMIN_TOKEN", t.clone()));
    }
    env
}

/// The real `adtrack serve` binary, started with `settings` (a fixed port).
pub struct Binary {
    pub child: std::process::Child,
    pub address: String,
}

impl Binary {
    pub async fn start(settings: &Settings) -> Self {
        Self::start_role(settings, "all").await
    }

    /// `adtrack serve --role <role>`.
    pub async fn start_role(settings: &Settings, role: &str) -> Self {
        assert_ne!(settings.port, 0, "the binary needs a fixed port");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_adtrack"))
            .args(["serve", "--role", role])
            .envs(env_of(settings))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start adtrack");
        let address = format!("http://127.0.0.1:{}", settings.port);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{address}/health")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "adtrack did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, address }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Connections to the database and Redis of `settings`, without an app:
/// for tests that run the real binary.
pub struct Backends {
    pub settings: Settings,
    pub pool: PgPool,
    pub redis: RedisConn,
    pub keys: Keys,
}

impl Backends {
    pub async fn connect(settings: &Settings) -> Self {
        adtrack::store::ensure_database(&settings.database_url)
            .await
            .unwrap();
        Self {
            settings: settings.clone(),
            pool: PgPool::connect(&settings.database_url).await.unwrap(),
            redis: settings
                .redis_target()
                .unwrap()
                .connect(Duration::from_secs(10))
                .await
                .unwrap(),
            keys: settings.keys(),
        }
    }

    /// Runs a query, retrying while a restarted Redis reconnects.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut c = self.redis.clone();
        for _ in 0..20 {
            match cmd.query_async(&mut c).await {
                Ok(v) => return v,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        cmd.query_async(&mut c).await.expect("redis answers")
    }

    pub async fn llen(&self, key: &str) -> i64 {
        self.query(redis::cmd("LLEN").arg(key)).await
    }

    pub async fn processing_len(&self) -> i64 {
        let keys: Vec<String> = self
            .query(redis::cmd("KEYS").arg(self.keys.processing_pattern()))
            .await;
        let mut total = 0;
        for k in keys {
            total += self.llen(&k).await;
        }
        total
    }

    /// The worker ids of the process `pid`, read from their heartbeats.
    pub async fn workers_of(&self, pid: u32) -> Vec<String> {
        let ids: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.keys.workers()))
            .await;
        let mut mine = Vec::new();
        for id in ids {
            let beat: Option<String> = self
                .query(redis::cmd("GET").arg(self.keys.heartbeat(&id)))
                .await;
            let beat: Option<Value> = beat.and_then(|b| serde_json::from_str(&b).ok());
            if beat.is_some_and(|b| b["pid"] == pid) {
                mine.push(id);
            }
        }
        mine
    }

    /// Items in the processing lists of `workers`.
    pub async fn held_by(&self, workers: &[String]) -> i64 {
        let mut total = 0;
        for w in workers {
            total += self.llen(&self.keys.processing(w)).await;
        }
        total
    }

    pub async fn outbox_len(&self) -> i64 {
        outbox_len(&self.pool).await
    }

    pub async fn stored(&self) -> i64 {
        stored(&self.pool).await
    }

    pub async fn stored_ids(&self) -> std::collections::HashSet<Uuid> {
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM events")
            .fetch_all(&self.pool)
            .await
            .unwrap();
        ids.into_iter().collect()
    }

    pub async fn wait_drained(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut calm = 0;
        while calm < 3 {
            assert!(Instant::now() < deadline, "the queue did not drain in 90 s");
            let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM counter_outbox")
                .fetch_one(&self.pool)
                .await
                .unwrap_or(1);
            let spooled = std::fs::read_dir(&self.settings.spool_dir)
                .map(|d| d.count())
                .unwrap_or(0);
            if self.llen(&self.keys.queue()).await == 0
                && self.processing_len().await == 0
                && outbox == 0
                && spooled == 0
            {
                calm += 1;
            } else {
                calm = 0;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn cleanup(self) {
        cleanup(&self.settings, &self.pool, &self.redis).await;
    }
}

/// What happened to each event a load generator sent.
#[derive(Default)]
pub struct Outcome {
    pub accepted: std::collections::HashSet<Uuid>,
    pub sent: std::collections::HashSet<Uuid>,
    pub refused: usize,
    pub failed: usize,
}

/// Posts `count` clicks on `ad`, each with its own eventId, from
/// `concurrency` tasks; a request that fails outright is recorded, not
/// retried. `base` may change between calls (a restarted server).
pub async fn send_clicks(base: &str, ad: &str, count: usize, concurrency: usize) -> Outcome {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let per = count.div_ceil(concurrency);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let client = client.clone();
        let url = format!("{base}/ads/click");
        let ad = ad.to_owned();
        let n = per.min(count.saturating_sub(t * per));
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            for i in 0..n {
                let id = Uuid::now_v7();
                out.sent.insert(id);
                let body = serde_json::json!({"adId": ad, "eventId": id, "ipAddress": format!("10.{}.{}.{}", t % 250, i / 250 % 250, i % 250)});
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => {
                        out.accepted.insert(id);
                    }
                    Ok(_) => out.refused += 1,
                    Err(_) => out.failed += 1,
                }
            }
            out
        }));
    }
    let mut all = Outcome::default();
    for t in tasks {
        let o = t.await.unwrap();
        all.accepted.extend(o.accepted);
        all.sent.extend(o.sent);
        all.refused += o.refused;
        all.failed += o.failed;
    }
    all
}

/// Asserts the two invariants: every accepted event is stored, nothing that
/// was not sent is, and the ad's click counter equals the stored rows.
pub async fn assert_exactly_once(b: &Backends, ad: &str, outcome: &Outcome, base: &str) {
    let stored = b.stored_ids().await;
    let lost: Vec<_> = outcome.accepted.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} accepted events were lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    assert!(
        stored.is_subset(&outcome.sent),
        "stored events that were never sent"
    );
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE ad_id = $1 AND kind = 'click'")
            .bind(ad)
            .fetch_one(&b.pool)
            .await
            .unwrap();
    for table in ["rollup_minute", "rollup_hour"] {
        let rolled: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT sum(events)::bigint FROM {table} WHERE ad_id = $1 AND kind = 'click'"
        ))
        .bind(ad)
        .fetch_one(&b.pool)
        .await
        .unwrap();
        assert_eq!(rolled.unwrap_or(0), rows, "{table} differs from raw rows");
    }
    let res: Value = reqwest::get(format!("{base}/ads/analytics?adId={ad}&timeframe=all"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        res["totalClicks"].as_i64().unwrap(),
        rows,
        "counter differs from Postgres: {res}"
    );
}

/// A tmpfs of `bytes` mounted on a fresh directory, unmounted on drop. The
/// test fails (never skips) when it cannot be mounted.
pub struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    pub fn mount(bytes: u64) -> Self {
        let path = std::env::temp_dir().join(format!("adtrack-tmpfs-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Self { path },
            other => {
                let _ = std::fs::remove_dir(&path);
                panic!(
                    "mounting a {bytes}-byte tmpfs on {} failed (the test needs root): {other:?}",
                    path.display()
                );
            }
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a process that has not exited yet): detach it now,
            // the kernel frees it when the last user goes.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.path)
                .status();
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Counter-outbox rows waiting in `pool`'s database.
pub async fn outbox_len(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM counter_outbox")
        .fetch_one(pool)
        .await
        .expect("count outbox")
}

/// Raw events stored in `pool`'s database.
pub async fn stored(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count events")
}

/// One node of a [`TestCluster`]: its port, its process, its directory.
pub struct ClusterNode {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl ClusterNode {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// A real Redis Cluster of six `redis-server --cluster-enabled yes`
/// processes (AOF on, `cluster-node-timeout` [`CLUSTER_NODE_TIMEOUT_MS`]),
/// created by `redis-cli --cluster create … --cluster-replicas 1`: three
/// primaries, each with one replica. Every process is killed on drop.
///
/// One cluster runs at a time in this process (a `TestCluster` holds
/// [`CLUSTER_SERIAL`] for its whole life): six nodes, adtrack and Postgres
/// on a 2-core machine, times several clusters, starve the nodes' cluster
/// bus until they declare each other failed in tests that kill nothing.
pub struct TestCluster {
    pub nodes: Vec<ClusterNode>,
    dir: std::path::PathBuf,
    // Dropped after the nodes are killed (Drop runs before the fields).
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// Held by every live [`TestCluster`]: the cluster tests run one at a time.
static CLUSTER_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Long enough that a node starved of CPU for a moment is not declared
/// failed; a real failure is still noticed (and failed over) in a few
/// seconds.
const CLUSTER_NODE_TIMEOUT_MS: u32 = 3000;

/// Ports handed out to cluster nodes in this process; never handed out
/// twice, so a node that was killed and is restarted keeps its port while
/// no other cluster can take it.
static CLUSTER_PORTS: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A node's port: below 22768, so its cluster bus port (port + 10000) is
/// below Linux's ephemeral range (32768+), where an outgoing connection
/// could take it between this check and the node's start. Both ports are
/// free when chosen, and none is chosen twice in this process.
fn free_cluster_port() -> u16 {
    let mut taken = CLUSTER_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..10_000 {
        let port = rand::random_range(12_000..22_768u16);
        if taken.contains(&port) {
            continue;
        }
        let both = TcpListener::bind(("127.0.0.1", port))
            .and_then(|a| TcpListener::bind(("127.0.0.1", port + 10_000)).map(|b| (a, b)));
        if both.is_ok() {
            taken.push(port);
            return port;
        }
    }
    panic!("no free port pair (port, port + 10000) below 32768 for a cluster node");
}

fn require_redis_cli() {
    require(
        "redis-cli",
        "redis-tools",
        "the cluster tests need it to create a Redis Cluster",
    );
}

impl TestCluster {
    pub async fn start() -> TestCluster {
        require_redis_server();
        require_redis_cli();
        let serial = CLUSTER_SERIAL.lock().await;
        let dir = std::env::temp_dir().join(format!("adtrack-cluster-{}", Uuid::new_v4().simple()));
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            dir,
            _serial: serial,
        };
        for _ in 0..6 {
            let port = free_cluster_port();
            let node_dir = cluster.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("create a cluster node's directory");
            let child = spawn_cluster_node(port, &node_dir);
            cluster.nodes.push(ClusterNode {
                port,
                child: Some(child),
            });
        }
        for n in &cluster.nodes {
            wait_for_port(n.port).await;
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .expect("run redis-cli --cluster create");
        // A panic here prints every node's log (see Drop).
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        cluster.wait_healthy(3, true).await;
        cluster
    }

    /// The last lines of every node's log.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = self.dir.join(n.port.to_string()).join("redis.log");
            let text = std::fs::read_to_string(&log).unwrap_or_else(|e| format!("({e})"));
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            out.push_str(&format!(
                "--- node {} ({}) ---\n{tail}\n",
                n.port,
                log.display()
            ));
        }
        out
    }

    /// `REDIS_URL` for `REDIS_CLUSTER=on`: every node as a seed.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(ClusterNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn alive(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// A plain connection to the node on `port`.
    pub async fn node(&self, port: u16) -> redis::aio::MultiplexedConnection {
        try_node(port).await.expect("connect to a cluster node")
    }

    /// Waits until every live node says `cluster_state:ok`, all 16384 slots
    /// are served, `primaries` primaries hold them and, with `replicated`,
    /// each primary has a replica in sync.
    pub async fn wait_healthy(&self, primaries: usize, replicated: bool) {
        let ports: Vec<u16> = self.alive().map(|n| n.port).collect();
        wait_until("the cluster is healthy", Duration::from_secs(60), || {
            let ports = ports.clone();
            async move {
                for port in &ports {
                    let Some(mut c) = try_node(*port).await else {
                        return false;
                    };
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    if !info.contains("cluster_state:ok")
                        || !info.contains("cluster_slots_ok:16384")
                    {
                        return false;
                    }
                    let Ok(slots) = cluster_slots(&mut c).await else {
                        return false;
                    };
                    let owners: HashSet<u16> = slots.iter().map(|s| s.2).collect();
                    if owners.len() != primaries
                        || (replicated && slots.iter().any(|s| s.3.is_empty()))
                    {
                        return false;
                    }
                    // A replica listed in CLUSTER SLOTS may not have its
                    // link to the primary up (or its first sync done) yet.
                    if replicated {
                        for replica in slots.iter().flat_map(|s| s.3.iter()) {
                            let Some(mut r) = try_node(*replica).await else {
                                return false;
                            };
                            let info: String = redis::cmd("INFO")
                                .arg("replication")
                                .query_async(&mut r)
                                .await
                                .unwrap_or_default();
                            if !info.contains("master_link_status:up") {
                                return false;
                            }
                        }
                    }
                }
                true
            }
        })
        .await;
    }

    /// `(first slot, last slot, primary port, replica ports)` of every
    /// range, as a live node sees it.
    pub async fn slots(&self) -> Vec<(u16, u16, u16, Vec<u16>)> {
        let port = self.alive().next().expect("a live node").port;
        cluster_slots(&mut self.node(port).await)
            .await
            .expect("CLUSTER SLOTS")
    }

    /// The primaries' ports.
    pub async fn primaries(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.slots().await.iter().map(|s| s.2).collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// The port of the primary that owns `key`'s slot.
    pub async fn owner_of(&self, key: &str) -> u16 {
        let slot = adtrack::redis_client::key_slot(key.as_bytes());
        self.slots()
            .await
            .iter()
            .find(|s| (s.0..=s.1).contains(&slot))
            .map(|s| s.2)
            .expect("every slot has an owner")
    }

    /// The port of a replica of the primary on `primary`.
    pub async fn replica_of(&self, primary: u16) -> u16 {
        self.slots()
            .await
            .iter()
            .find(|s| s.2 == primary)
            .and_then(|s| s.3.first().copied())
            .expect("the primary has a replica")
    }

    /// `kill -9` of the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the killed node on `port` again (same directory, so its AOF
    /// and `nodes.conf`): it rejoins as a replica of whoever took over.
    pub async fn restart(&mut self, port: u16) {
        let dir = self.dir.join(port.to_string());
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        assert!(node.child.is_none(), "the node on {port} still runs");
        node.child = Some(spawn_cluster_node(port, &dir));
        wait_for_port(port).await;
    }

    /// A prefix whose queue shards `0..shards` have their slots on every
    /// primary: how an operator spreads the shards (see the README).
    pub async fn spread_prefix(&self, shards: usize) -> String {
        let slots = self.slots().await;
        let primaries: HashSet<u16> = slots.iter().map(|s| s.2).collect();
        for _ in 0..10_000 {
            let prefix = format!("test-{}", &Uuid::new_v4().simple().to_string()[..12]);
            let owners: HashSet<u16> = (0..shards)
                .map(|i| {
                    let key = adtrack::queue::Keys::shard(&prefix, i).queue();
                    let slot = adtrack::redis_client::key_slot(key.as_bytes());
                    slots
                        .iter()
                        .find(|s| (s.0..=s.1).contains(&slot))
                        .map(|s| s.2)
                        .unwrap_or(0)
                })
                .collect();
            if owners == primaries {
                return prefix;
            }
        }
        panic!("no prefix spreads {shards} shards over every primary");
    }

    /// Keys of `prefix` (any shard) stored on the node on `port`.
    pub async fn keys_on(&self, port: u16, prefix: &str) -> Vec<String> {
        let mut c = self.node(port).await;
        let mut found = Vec::new();
        for pattern in [format!("{{{prefix}}}*"), format!("{{{prefix}.*}}*")] {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut c)
                .await
                .expect("KEYS on a node");
            found.extend(keys);
        }
        found
    }
}

fn spawn_cluster_node(port: u16, dir: &std::path::Path) -> std::process::Child {
    std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout"])
        .arg(CLUSTER_NODE_TIMEOUT_MS.to_string())
        // A replica whose link was cut may still take over: the failover
        // tests cut it on purpose.
        .args(["--cluster-replica-validity-factor", "0"])
        .arg("--cluster-config-file")
        .arg(dir.join("nodes.conf"))
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server")
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the cluster's node logs:\n{}", self.log_tails());
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type SlotRange = (u16, u16, u16, Vec<u16>);

async fn cluster_slots(
    c: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<Vec<SlotRange>> {
    let raw: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await?;
    let mut out = Vec::new();
    for range in raw {
        let redis::Value::Array(parts) = range else {
            continue;
        };
        let num = |v: &redis::Value| redis::from_redis_value::<i64>(v).unwrap_or(-1);
        let port_of = |v: &redis::Value| match v {
            redis::Value::Array(node) => node.get(1).map(num).unwrap_or(-1),
            _ => -1,
        };
        if parts.len() < 3 {
            continue;
        }
        let replicas = parts[3..].iter().map(|v| port_of(v) as u16).collect();
        out.push((
            num(&parts[0]) as u16,
            num(&parts[1]) as u16,
            port_of(&parts[2]) as u16,
            replicas,
        ));
    }
    Ok(out)
}

/// A plain connection to the Redis node on `port`, or `None` while it does
/// not answer.
async fn try_node(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()
}
