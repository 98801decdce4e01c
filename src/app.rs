//! `Application`: connects to Postgres and Redis, wires the HTTP server,
//! the pusher, the workers and their maintenance, and shuts them down in
//! order.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::counters::Counters;
use crate::http::{self, AppState, Surface};
use crate::metrics::Metrics;
use crate::queue::{Keys, Pusher, Queues};
pub use crate::redis_client::{redis_connection, redis_manager_config};
use crate::spool::{RedisDown, Replayer, Spool};
use crate::store;
use crate::worker::{Maintenance, Worker, WorkerContext};

/// What a `serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// HTTP ingest and reads only.
    Api,
    /// Workers and recovery only (health endpoints still served).
    Worker,
    /// Both.
    All,
}

impl Role {
    pub fn runs_api(self) -> bool {
        matches!(self, Role::Api | Role::All)
    }
    pub fn runs_workers(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }
}

/// How long in-flight HTTP requests get to finish on shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(15);

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    shutdown: CancellationToken,
    spool: Option<Spool>,
    spool_thread: Option<std::thread::JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    maintenance: Option<Arc<Maintenance>>,
    background: Vec<JoinHandle<()>>,
}

/// Kernel accept queue asked for; the kernel caps it at
/// `net.core.somaxconn`. More than the connections of a `hey -c 10000`
/// burst, so that however many of them wait past the per-thread cap
/// ([`MAX_CONNECTIONS_PER_THREAD`]), none is dropped.
pub const LISTEN_BACKLOG: i32 = 16384;

/// Connections one HTTP thread serves at once. Past it the thread stops
/// accepting, and new connections wait in the kernel's accept queue
/// ([`LISTEN_BACKLOG`], capped by `somaxconn`) until one closes. Each open
/// connection holds actix's read and write buffers and whatever its request
/// holds, about 17 KB under `hey -c 10000`. With two HTTP threads (a
/// 2-core host) 3,500 per thread keep the peak RSS of a burst of 10,000
/// connections well under 200 MB: 7,000 are served and the rest wait to be
/// accepted. The queue must hold more than the 3,000 the arithmetic says,
/// since a connection its client closed holds its slot until the thread
/// reads the close: at the default `somaxconn` of 4,096 the kernel dropped
/// thousands of handshakes a second under `hey`, and still some at 8,192
/// (docs/OPERATIONS.md has the counts). Idle
/// keep-alive connections count too; docs/OPERATIONS.md has what that
/// means for health probes and one-core hosts.
pub const MAX_CONNECTIONS_PER_THREAD: usize = 3500;

/// Binds `addr` with a wide accept queue. The standard library listens with
/// a backlog of 128, which a burst of thousands of new connections (`hey -c
/// 10000`) overflows into resets and time-outs; actix's own `backlog` setting
/// applies only to sockets it binds itself.
pub fn bind_listener(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .context("creating the listening socket")?;
    socket
        .set_reuse_address(true)
        .context("setting SO_REUSEADDR")?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("listening on {addr}"))?;
    warn_on_a_short_accept_queue();
    Ok(socket.into())
}

/// Where the kernel says how long an accept queue may be (Linux).
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

/// Warns when the kernel caps the accept queue below [`LISTEN_BACKLOG`].
/// The queue is where the connections past [`MAX_CONNECTIONS_PER_THREAD`]
/// wait; once it is full the kernel drops their handshakes, and each
/// client waits out its TCP retransmission back-off (seconds, growing), so
/// a burst of `hey -c 10000` at the default 4,096 ends in time-outs.
fn warn_on_a_short_accept_queue() {
    let Some(cap) = std::fs::read_to_string(SOMAXCONN)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    if cap < LISTEN_BACKLOG {
        tracing::warn!(
            somaxconn = cap,
            wanted = LISTEN_BACKLOG,
            "net.core.somaxconn caps the accept queue below what adtrack asks for: \
             bursts of connections past the per-thread cap will be dropped and retried \
             by their clients (see docs/OPERATIONS.md)"
        );
    }
}

impl Application {
    /// Connects, migrates, seeds and binds; nothing is served until
    /// [`Application::run_until_stopped`].
    pub async fn build(settings: Settings, role: Role) -> anyhow::Result<Self> {
        let listener = bind_listener(SocketAddr::new(settings.host, settings.port))?;
        Self::build_with_listener(settings, role, listener).await
    }

    pub async fn build_with_listener(
        settings: Settings,
        role: Role,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        let port = listener
            .local_addr()
            .context("reading the bound port")?
            .port();
        // First, before any other side effect: a second process on this
        // SPOOL_DIR is refused here (the spool takes the directory's lock).
        let (spool, spool_thread) = Spool::open(&settings.spool_dir, settings.spool_max_bytes)?;
        let metrics = Arc::new(Metrics::new().context("creating metrics")?);
        let pool_size = (settings.worker_count as u32 * 2 + 8).min(64);
        let pool = store::connect(&settings.database_url, pool_size).await?;
        if settings.seed_catalogue && role.runs_api() {
            let seeded = store::seed_catalogue(&pool).await?;
            if seeded > 0 {
                tracing::info!(ads = seeded, "seeded the demo ad catalogue");
            }
        }
        let report_pool = store::reports::pool(
            &settings.database_url,
            settings.report_pool_size,
            settings.report_timeout,
        )?;
        let target = settings.redis_target()?;
        let redis = target.connect(Duration::from_secs(5)).await?;
        let keys = settings.keys();
        let queues = Queues::new(&settings.redis_prefix, settings.queue_shards);
        queues.check_shard_count(&mut redis.clone()).await?;
        if role.runs_workers() {
            queues.check_reservation_allowed(&mut redis.clone()).await?;
        }
        let counters = Counters::new(keys.clone())
            .confirmed_by(settings.replication())
            .counting_skips(metrics.unique_ips_skipped.clone());
        let shutdown = CancellationToken::new();

        let shard_keys: Vec<Keys> = queues.all().iter().map(|q| q.keys().clone()).collect();
        let pusher = Pusher::new(
            target.clone(),
            settings.replication(),
            &shard_keys,
            metrics.clone(),
        )?;
        let redis_down = Arc::new(RedisDown::default());

        let mut workers = Vec::new();
        let mut maintenance = None;
        let mut background = Vec::new();
        if role.runs_workers() {
            let ctx = Arc::new(WorkerContext {
                pool: pool.clone(),
                redis: redis.clone(),
                queues: queues.clone(),
                counters: counters.clone(),
                metrics: metrics.clone(),
                batch_size: settings.batch_size,
                max_attempts: settings.max_attempts,
                simulate_failures: settings.simulate_failures,
            });
            let process = process_id();
            let ids: Vec<String> = (0..settings.worker_count)
                .map(|i| format!("{process}-{i}"))
                .collect();
            let m = Arc::new(Maintenance {
                ctx: ctx.clone(),
                workers: ids.clone(),
                heartbeat_ttl: settings.heartbeat_ttl,
                event_retention: settings.event_retention,
                info: serde_json::json!({ "pid": std::process::id(), "process": process })
                    .to_string(),
            });
            // Register and beat before taking any item, so the reaper can
            // always tell this process's lists are alive.
            let mut conn = redis.clone();
            m.ctx
                .queues
                .beat(&mut conn, &ids, &m.info, settings.heartbeat_ttl)
                .await
                .context("registering workers")?;
            background.push(tokio::spawn(m.clone().heartbeat(shutdown.clone())));
            background.push(tokio::spawn(m.clone().run(shutdown.clone())));
            background.push(tokio::spawn(m.clone().watch_epoch(shutdown.clone())));
            for (index, id) in ids.into_iter().enumerate() {
                // Its own connection (its own cluster connection in cluster
                // mode): a blocking read holds it, on whichever node owns
                // the worker's shard now.
                let conn = target.connect(Duration::from_secs(10)).await?;
                let worker = Worker::new(id, index, conn, ctx.clone());
                workers.push(tokio::spawn(worker.run(shutdown.clone())));
            }
            maintenance = Some(m);
        }
        if role.runs_api() {
            let replayer = Replayer {
                spool: spool.clone(),
                redis: redis.clone(),
                keys: keys.clone(),
                replication: settings.replication(),
                metrics: metrics.clone(),
                redis_down: redis_down.clone(),
            };
            background.push(tokio::spawn(replayer.run(shutdown.clone())));
        }

        let rate_limiter = crate::ratelimit::RateLimiter::new(
            settings.client_limit(),
            settings.ad_limit(),
            keys.clone(),
            redis.clone(),
            metrics.clone(),
        );
        let ivt = crate::ivt::Ivt::new(
            settings.ivt_filter,
            settings.ivt_click_window,
            keys.clone(),
            redis.clone(),
            metrics.clone(),
        );
        let views = view_signer(&settings, &pool).await?;
        let catalogue = crate::vast::Catalogue::load(pool.clone(), metrics.clone())
            .await
            .context("loading the ad catalogue")?;
        if role.runs_api() {
            background.push(tokio::spawn(catalogue.clone().refresh(shutdown.clone())));
        }
        let state = web::Data::new(AppState {
            settings: settings.clone(),
            keys,
            queues,
            layout: counters.layout(),
            api_keys: settings
                .tenants
                .then(|| Arc::new(crate::tenants::KeyResolver::new(pool.clone()))),
            pool,
            report_pool,
            redis,
            pusher,
            spool: spool.clone(),
            redis_down,
            rate_limiter,
            ivt,
            metrics,
            shutdown: shutdown.clone(),
            live_streams: Arc::default(),
            settle_gate: Arc::default(),
            views,
            catalogue,
        });
        let surface = if role.runs_api() {
            Surface::Full
        } else {
            Surface::HealthOnly
        };
        let server = actix_web::HttpServer::new(move || http::service(state.clone(), surface))
            .listen(listener)
            .context("listening")?
            .max_connection_rate(4096)
            .max_connections(MAX_CONNECTIONS_PER_THREAD)
            .client_request_timeout(Duration::from_secs(30))
            .keep_alive(Duration::from_secs(75))
            .shutdown_timeout(HTTP_DRAIN.as_secs())
            .disable_signals()
            .run();

        tracing::info!(
            port,
            ?role,
            queue_workers = workers.len(),
            http_threads = std::thread::available_parallelism().map_or(1, usize::from),
            "adtrack is ready"
        );
        Ok(Self {
            port,
            server,
            shutdown,
            spool: Some(spool),
            spool_thread: Some(spool_thread),
            workers,
            maintenance,
            background,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A token that stops the application when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then stops in order:
    /// HTTP (in-flight requests finish and are answered once their pushes
    /// reach Redis), the workers (each finishes its round),
    /// then the heartbeats.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            server,
            shutdown,
            spool,
            spool_thread,
            workers,
            maintenance,
            background,
            ..
        } = self;
        let handle = server.handle();
        let stopper = {
            let token = shutdown.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                handle.stop(true).await;
            })
        };
        // Every in-flight request waits for its push, so once the server is
        // done, every accepted envelope is in Redis or in the spool.
        // Awaiting by value drops the app factory, and with it the handlers'
        // clones of the spool.
        let served = server.await;
        shutdown.cancel();
        let _ = stopper.await;
        for w in workers {
            let _ = w.await;
        }
        for b in background {
            let _ = b.await;
        }
        // Every append was synced before it was answered; this closes the
        // segment being written.
        drop(spool);
        if let Some(t) = spool_thread {
            let joined = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::task::spawn_blocking(move || t.join()),
            );
            if joined.await.is_err() {
                tracing::warn!("the spool writer did not finish in time");
            }
        }
        if let Some(m) = &maintenance {
            m.retire().await;
        }
        tracing::info!("adtrack stopped");
        served.context("the HTTP server failed")
    }
}

/// The signer of VAST view tokens: `VAST_SIGNING_KEY` when set, else the
/// key stored in Postgres (made by the first process, so every process of
/// the database agrees and restarts keep it). The stored key and
/// `VAST_SIGNING_KEY_PREVIOUS` are accepted for verification too, so
/// moving to an explicit key, or rotating it, does not refuse the views
/// already served.
async fn view_signer(
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<crate::vast::ViewSigner> {
    let stored = store::vast_signing_key(pool, &crate::vast::ViewSigner::random_key()).await?;
    let previous = settings
        .vast_signing_key_previous
        .as_deref()
        .map(str::as_bytes);
    let signer = match &settings.vast_signing_key {
        Some(key) => {
            let mut accepted: Vec<&[u8]> = vec![&stored];
            accepted.extend(previous);
            crate::vast::ViewSigner::with_previous(key.as_bytes(), &accepted)
        }
        None => crate::vast::ViewSigner::with_previous(&stored, &Vec::from_iter(previous)),
    };
    tracing::info!(
        source = if settings.vast_signing_key.is_some() {
            "VAST_SIGNING_KEY"
        } else {
            "postgres"
        },
        previous = settings.vast_signing_key_previous.is_some(),
        "VAST view tokens signing key"
    );
    Ok(signer)
}

/// A name for this process, unique across restarts: host, pid and a random
/// suffix (containers often run as pid 1).
fn process_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "adtrack".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(40)
        .collect();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{host}-{}-{suffix}", std::process::id())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
