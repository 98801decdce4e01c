//! Typed settings read from the environment and validated at boot.
//!
//! Every variable is optional; the defaults are the SPEC's. A bad value stops
//! start-up with a message that names the variable, never a silent fallback.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

/// How the service logs: human text or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `IVT_FILTER`: `off` counts every event (what load tests and the seeds'
/// users expect); `flag` stores invalid traffic with its reason and keeps
/// it out of totals and CTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvtFilter {
    Off,
    Flag,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub host: IpAddr,
    pub port: u16,
    pub database_url: String,
    /// `CORS_ORIGINS`: `None` for `*` (any origin may send events; reads
    /// and admin stay same-origin), else the origins allowed everywhere.
    pub cors_origins: Option<Vec<String>>,
    /// One `redis://` URL, or with `REDIS_CLUSTER=on` a comma-separated
    /// list of a cluster's seed nodes.
    pub redis_url: String,
    /// `REDIS_CLUSTER=on`: talk to a Redis Cluster through redis-rs's
    /// cluster client (see `redis_client`).
    pub redis_cluster: bool,
    /// `REDIS_MIN_REPLICAS`: replicas that must confirm a push (and a
    /// counter application) with `WAIT` before it counts as done.
    pub redis_min_replicas: u32,
    /// `REDIS_WAIT_TIMEOUT`: how long `WAIT` waits for them.
    pub redis_wait_timeout: Duration,
    pub redis_prefix: String,
    pub worker_count: usize,
    pub batch_size: usize,
    pub max_attempts: u32,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub admin_token: Option<String>,
    pub simulate_failures: bool,
    pub heartbeat_ttl: Duration,
    /// How long a request body may take to arrive once its headers have
    /// (`BODY_TIMEOUT`); past it the answer is 408. Bounds the connections
    /// a client can hold open by trickling bodies.
    pub body_timeout: Duration,
    /// `/live` streams one process keeps open at once (`LIVE_MAX_STREAMS`);
    /// past it a new stream is refused with 503 and `Retry-After`.
    pub live_max_streams: usize,
    /// Ingest events a second per client IP (`0` = off); a batch costs
    /// one token per event.
    pub rate_limit_per_ip: u32,
    /// Events a quiet client may send at once (default: twice the rate).
    pub rate_limit_burst: Option<u32>,
    /// Events a second per adId (`0` = off).
    pub rate_limit_per_ad: u32,
    /// Events an ad may take at once (default: twice the rate).
    pub rate_limit_ad_burst: Option<u32>,
    /// Proxies whose `X-Forwarded-For` names the client (CIDRs).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Queue shards under the prefix (see `queue::Queues`).
    pub queue_shards: usize,
    /// `TENANTS=on`: every ingest and read needs an `X-API-Key`.
    pub tenants: bool,
    /// How long raw events are kept (whole UTC days); `None` keeps them forever.
    pub event_retention: Option<Duration>,
    /// `MAX_EVENT_AGE`: event times older than this are refused (400);
    /// `None` accepts any time since 2000 (late ones land in the default
    /// partition).
    pub max_event_age: Option<Duration>,
    /// Connections of the reports' own Postgres pool (`REPORT_POOL_SIZE`),
    /// apart from the pool of ingest and the workers, so reports never
    /// take a connection they need.
    pub report_pool_size: u32,
    /// The longest one report statement may run (`REPORT_TIMEOUT`, the
    /// `statement_timeout` of the report pool's connections); past it the
    /// report answers 503.
    pub report_timeout: Duration,
    pub log_format: LogFormat,
    /// `IVT_FILTER`: whether invalid traffic (bot user agents, repeated
    /// clicks) is flagged and kept out of the totals.
    pub ivt_filter: IvtFilter,
    /// `IVT_CLICK_WINDOW`: a second click from one IP on one ad within this
    /// long is flagged (with `IVT_FILTER=flag`).
    pub ivt_click_window: Duration,
    /// Seed the demo ad catalogue when the `ads` table is empty.
    pub seed_catalogue: bool,
    /// `PUBLIC_URL`: where players reach adtrack (`https://track.example`),
    /// the base of every URL in a VAST document; `None` takes the request's
    /// own scheme and `Host`.
    pub public_url: Option<String>,
    /// `VAST_SIGNING_KEY`: the HMAC key of view tokens (at least 32
    /// characters); `None` uses the key stored in Postgres (made once, so
    /// every process of a database shares it and restarts keep it).
    pub vast_signing_key: Option<String>,
    /// `VAST_SIGNING_KEY_PREVIOUS`: a former `VAST_SIGNING_KEY`, still
    /// accepted when verifying views (never used to sign), for rotation.
    pub vast_signing_key_previous: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 8080,
            database_url: "postgres://postgres@127.0.0.1:5432/adtrack".into(),
            cors_origins: None,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_cluster: false,
            redis_min_replicas: 0,
            redis_wait_timeout: Duration::from_millis(500),
            redis_prefix: "adtrack".into(),
            worker_count: 4,
            batch_size: 500,
            max_attempts: 5,
            spool_dir: PathBuf::from("./fallback"),
            spool_max_bytes: 1 << 30,
            admin_token: None,
            simulate_failures: false,
            heartbeat_ttl: Duration::from_secs(15),
            body_timeout: Duration::from_secs(10),
            live_max_streams: 200,
            rate_limit_per_ip: 0,
            rate_limit_burst: None,
            rate_limit_per_ad: 0,
            rate_limit_ad_burst: None,
            trusted_proxies: Vec::new(),
            queue_shards: 1,
            tenants: false,
            event_retention: None,
            max_event_age: None,
            report_pool_size: 4,
            report_timeout: Duration::from_secs(5),
            log_format: LogFormat::Text,
            ivt_filter: IvtFilter::Off,
            ivt_click_window: Duration::from_secs(30),
            seed_catalogue: true,
            public_url: None,
            vast_signing_key: None,
            vast_signing_key_previous: None,
        }
    }
}

impl Settings {
    /// Where Redis is, as `REDIS_URL` and `REDIS_CLUSTER` say.
    pub fn redis_target(&self) -> anyhow::Result<crate::redis_client::RedisTarget> {
        crate::redis_client::RedisTarget::new(&self.redis_url, self.redis_cluster)
    }

    /// The prefix's keys: in cluster mode an ad's counters are spread over
    /// [`crate::keys::CLUSTER_COUNTER_SLOTS`] counter slots; on one node
    /// every key keeps the SPEC's `{P}` layout.
    pub fn keys(&self) -> crate::queue::Keys {
        let slots = if self.redis_cluster {
            crate::keys::CLUSTER_COUNTER_SLOTS
        } else {
            0
        };
        crate::queue::Keys::new(&self.redis_prefix).with_counter_slots(slots)
    }

    /// What a push or a counter application waits for (`WAIT`), if
    /// anything.
    pub fn replication(&self) -> crate::redis_client::Replication {
        crate::redis_client::Replication {
            replicas: self.redis_min_replicas,
            timeout: self.redis_wait_timeout,
        }
    }

    /// The per-client limit, when on.
    pub fn client_limit(&self) -> Option<crate::ratelimit::Limit> {
        limit(self.rate_limit_per_ip, self.rate_limit_burst)
    }

    /// The per-ad limit, when on.
    pub fn ad_limit(&self) -> Option<crate::ratelimit::Limit> {
        limit(self.rate_limit_per_ad, self.rate_limit_ad_burst)
    }

    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can supply their own values.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut s = Self::default();
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        if let Some(v) = get("HOST") {
            s.host = parse(&v, "HOST")?;
        }
        if let Some(v) = get("PORT") {
            s.port = parse(&v, "PORT")?;
        }
        if let Some(v) = get("DATABASE_URL") {
            s.database_url = v;
        }
        if let Some(v) = get("CORS_ORIGINS") {
            s.cors_origins = parse_origins(&v)?;
        }
        if let Some(v) = get("REDIS_URL") {
            s.redis_url = v;
        }
        if let Some(v) = get("REDIS_CLUSTER") {
            s.redis_cluster = parse_bool(&v, "REDIS_CLUSTER")?;
        }
        if let Some(v) = get("REDIS_MIN_REPLICAS") {
            s.redis_min_replicas = parse(&v, "REDIS_MIN_REPLICAS")?;
        }
        if let Some(v) = get("REDIS_WAIT_TIMEOUT") {
            s.redis_wait_timeout = humantime::parse_duration(&v).with_context(|| {
                format!("REDIS_WAIT_TIMEOUT: {v:?} is not a duration such as 500ms")
            })?;
        }
        if let Some(v) = get("REDIS_PREFIX") {
            s.redis_prefix = v;
        }
        if let Some(v) = get("WORKER_COUNT") {
            s.worker_count = parse(&v, "WORKER_COUNT")?;
        }
        if let Some(v) = get("BATCH_SIZE") {
            s.batch_size = parse(&v, "BATCH_SIZE")?;
        }
        if let Some(v) = get("MAX_ATTEMPTS") {
            s.max_attempts = parse(&v, "MAX_ATTEMPTS")?;
        }
        if let Some(v) = get("SPOOL_DIR") {
            s.spool_dir = PathBuf::from(v);
        }
        if let Some(v) = get("SPOOL_MAX_BYTES") {
            s.spool_max_bytes = parse(&v, "SPOOL_MAX_BYTES")?;
        }
        s.admin_token = get("ADMIN_TOKEN");
        if let Some(v) = get("SIMULATE_FAILURES") {
            s.simulate_failures = parse_bool(&v, "SIMULATE_FAILURES")?;
        }
        if let Some(v) = get("HEARTBEAT_TTL") {
            s.heartbeat_ttl = humantime::parse_duration(&v)
                .with_context(|| format!("HEARTBEAT_TTL: {v:?} is not a duration such as 15s"))?;
        }
        if let Some(v) = get("BODY_TIMEOUT") {
            s.body_timeout = humantime::parse_duration(&v)
                .with_context(|| format!("BODY_TIMEOUT: {v:?} is not a duration such as 10s"))?;
        }
        if let Some(v) = get("LIVE_MAX_STREAMS") {
            s.live_max_streams = parse(&v, "LIVE_MAX_STREAMS")?;
        }
        if let Some(v) = get("RATE_LIMIT_PER_IP") {
            s.rate_limit_per_ip = parse(&v, "RATE_LIMIT_PER_IP")?;
        }
        if let Some(v) = get("RATE_LIMIT_BURST") {
            s.rate_limit_burst = Some(parse(&v, "RATE_LIMIT_BURST")?);
        }
        if let Some(v) = get("RATE_LIMIT_PER_AD") {
            s.rate_limit_per_ad = parse(&v, "RATE_LIMIT_PER_AD")?;
        }
        if let Some(v) = get("RATE_LIMIT_AD_BURST") {
            s.rate_limit_ad_burst = Some(parse(&v, "RATE_LIMIT_AD_BURST")?);
        }
        if let Some(v) = get("TRUSTED_PROXIES") {
            s.trusted_proxies = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    p.parse::<ipnet::IpNet>()
                        .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            anyhow::anyhow!("TRUSTED_PROXIES: {p:?} is not an IP address or CIDR")
                        })
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(v) = get("TENANTS") {
            s.tenants = parse_bool(&v, "TENANTS")?;
        }
        if let Some(v) = get("QUEUE_SHARDS") {
            s.queue_shards = parse(&v, "QUEUE_SHARDS")?;
        }
        if let Some(v) = get("EVENT_RETENTION") {
            let d = humantime::parse_duration(&v)
                .with_context(|| format!("EVENT_RETENTION: {v:?} is not a duration such as 90d"))?;
            s.event_retention = (!d.is_zero()).then_some(d);
        }
        if let Some(v) = get("MAX_EVENT_AGE") {
            let d = humantime::parse_duration(&v)
                .with_context(|| format!("MAX_EVENT_AGE: {v:?} is not a duration such as 30d"))?;
            s.max_event_age = (!d.is_zero()).then_some(d);
        }
        if let Some(v) = get("REPORT_POOL_SIZE") {
            s.report_pool_size = parse(&v, "REPORT_POOL_SIZE")?;
        }
        if let Some(v) = get("REPORT_TIMEOUT") {
            s.report_timeout = humantime::parse_duration(&v)
                .with_context(|| format!("REPORT_TIMEOUT: {v:?} is not a duration such as 5s"))?;
        }
        if let Some(v) = get("LOG_FORMAT") {
            s.log_format = match v.to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => bail!("LOG_FORMAT: {v:?} must be text or json"),
            };
        }
        if let Some(v) = get("IVT_FILTER") {
            s.ivt_filter = match v.to_ascii_lowercase().as_str() {
                "off" => IvtFilter::Off,
                "flag" => IvtFilter::Flag,
                _ => bail!("IVT_FILTER: {v:?} must be off or flag"),
            };
        }
        if let Some(v) = get("IVT_CLICK_WINDOW") {
            let d = humantime::parse_duration(&v).with_context(|| {
                format!("IVT_CLICK_WINDOW: {v:?} is not a duration such as 30s")
            })?;
            if d < Duration::from_millis(1) || d > Duration::from_secs(86_400) {
                bail!("IVT_CLICK_WINDOW: {v:?} must be between 1ms and 24h");
            }
            s.ivt_click_window = d;
        }
        if let Some(v) = get("SEED_CATALOGUE") {
            s.seed_catalogue = parse_bool(&v, "SEED_CATALOGUE")?;
        }
        if let Some(v) = get("PUBLIC_URL") {
            s.public_url = Some(parse_public_url(&v)?);
        }
        s.vast_signing_key = get("VAST_SIGNING_KEY");
        s.vast_signing_key_previous = get("VAST_SIGNING_KEY_PREVIOUS");
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> anyhow::Result<()> {
        check_database_url(&self.database_url)?;
        if self.redis_cluster {
            let seeds = crate::redis_client::seed_urls(&self.redis_url);
            if seeds.is_empty() {
                bail!("REDIS_URL: with REDIS_CLUSTER=on, list at least one seed node");
            }
            for seed in &seeds {
                check_redis_url(seed)?;
            }
        } else {
            check_redis_url(&self.redis_url)?;
        }
        if self.redis_min_replicas > 16 {
            bail!("REDIS_MIN_REPLICAS: must be between 0 and 16");
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(1)).contains(&self.redis_wait_timeout)
        {
            bail!("REDIS_WAIT_TIMEOUT: must be between 10ms and 1s");
        }
        if self.redis_prefix.is_empty()
            || self.redis_prefix.len() > 64
            || self
                .redis_prefix
                .contains(['{', '}', ' ', '*', '?', '[', ']', '\\'])
        {
            bail!("REDIS_PREFIX: must be 1..64 characters without braces or spaces");
        }
        if !(1..=256).contains(&self.worker_count) {
            bail!("WORKER_COUNT: must be between 1 and 256");
        }
        if !(1..=10_000).contains(&self.batch_size) {
            bail!("BATCH_SIZE: must be between 1 and 10000");
        }
        if !(1..=100).contains(&self.max_attempts) {
            bail!("MAX_ATTEMPTS: must be between 1 and 100");
        }
        if self.heartbeat_ttl < Duration::from_secs(1) {
            bail!("HEARTBEAT_TTL: must be at least 1s");
        }
        if !(1..=100_000).contains(&self.live_max_streams) {
            bail!("LIVE_MAX_STREAMS: must be between 1 and 100000");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&self.body_timeout) {
            bail!("BODY_TIMEOUT: must be between 1s and 5m");
        }
        if self
            .event_retention
            .is_some_and(|d| d < Duration::from_secs(86_400))
        {
            bail!("EVENT_RETENTION: must be at least 1d (or 0 to keep events forever)");
        }
        if !(1..=64).contains(&self.report_pool_size) {
            bail!("REPORT_POOL_SIZE: must be between 1 and 64");
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(600)).contains(&self.report_timeout) {
            bail!("REPORT_TIMEOUT: must be between 10ms and 10m");
        }
        if !(1..=crate::queue::MAX_SHARDS).contains(&self.queue_shards) {
            bail!("QUEUE_SHARDS: must be between 1 and 64");
        }
        if self.rate_limit_burst == Some(0) || self.rate_limit_ad_burst == Some(0) {
            bail!("RATE_LIMIT_BURST / RATE_LIMIT_AD_BURST: must be at least 1");
        }
        if self.spool_max_bytes < 4096 {
            bail!("SPOOL_MAX_BYTES: must be at least 4096");
        }
        if let Some(token) = &self.admin_token {
            if token.len() < 16 {
                bail!("ADMIN_TOKEN: must be at least 16 characters");
            }
        }
        if self.vast_signing_key.as_ref().is_some_and(|k| k.len() < 32) {
            bail!("VAST_SIGNING_KEY: must be at least 32 characters");
        }
        if self
            .vast_signing_key_previous
            .as_ref()
            .is_some_and(|k| k.len() < 32)
        {
            bail!("VAST_SIGNING_KEY_PREVIOUS: must be at least 32 characters");
        }
        Ok(())
    }
}

/// Every environment variable adtrack reads, in the order `--help` lists
/// them. A unit test checks it against what [`Settings::from_lookup`] asks
/// for, and an integration test against the README's configuration table.
pub const VARIABLES: &[&str] = &[
    "HOST",
    "PORT",
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_CLUSTER",
    "REDIS_MIN_REPLICAS",
    "REDIS_WAIT_TIMEOUT",
    "REDIS_PREFIX",
    "CORS_ORIGINS",
    "WORKER_COUNT",
    "BATCH_SIZE",
    "MAX_ATTEMPTS",
    "SPOOL_DIR",
    "SPOOL_MAX_BYTES",
    "ADMIN_TOKEN",
    "SIMULATE_FAILURES",
    "HEARTBEAT_TTL",
    "BODY_TIMEOUT",
    "RATE_LIMIT_PER_IP",
    "RATE_LIMIT_BURST",
    "RATE_LIMIT_PER_AD",
    "RATE_LIMIT_AD_BURST",
    "TRUSTED_PROXIES",
    "TENANTS",
    "QUEUE_SHARDS",
    "EVENT_RETENTION",
    "MAX_EVENT_AGE",
    "REPORT_POOL_SIZE",
    "REPORT_TIMEOUT",
    "LIVE_MAX_STREAMS",
    "IVT_FILTER",
    "IVT_CLICK_WINDOW",
    "SEED_CATALOGUE",
    "PUBLIC_URL",
    "VAST_SIGNING_KEY",
    "VAST_SIGNING_KEY_PREVIOUS",
    "RUST_LOG",
    "LOG_FORMAT",
];

/// The long help of `adtrack --help`: what it is and every variable.
pub fn long_help() -> String {
    format!(
        "Ad-event tracking: HTTP ingest → Redis queue → workers → PostgreSQL, with real-time \
         analytics.\n\nConfiguration comes from the environment: {}. See the README for \
         defaults.",
        VARIABLES.join(", ")
    )
}

/// `*`, or a comma-separated list of origins (`scheme://host[:port]`, no
/// path): what a browser sends in `Origin`.
fn parse_origins(value: &str) -> anyhow::Result<Option<Vec<String>>> {
    if value.trim() == "*" {
        return Ok(None);
    }
    let mut origins = Vec::new();
    for origin in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        match rest {
            Some(host) if !host.is_empty() && !host.contains('/') && origin.is_ascii() => {
                origins.push(origin.to_ascii_lowercase())
            }
            _ => bail!(
                "CORS_ORIGINS: {origin:?} is not an origin such as https://news.example (scheme and host, no path), nor *"
            ),
        }
    }
    if origins.is_empty() {
        bail!("CORS_ORIGINS: name at least one origin, or * for any");
    }
    Ok(Some(origins))
}

/// `http(s)://host[:port][/path]`, without a query, fragment or trailing
/// slash (one is dropped): the base of VAST URLs.
fn parse_public_url(value: &str) -> anyhow::Result<String> {
    let v = value.trim().trim_end_matches('/');
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"));
    let ok = rest.is_some_and(|r| {
        let host = r.split('/').next().unwrap_or_default();
        !host.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:/[]~".contains(&b))
    });
    if !ok {
        bail!(
            "PUBLIC_URL: {value:?} must be an http(s) URL such as https://track.example (no query)"
        );
    }
    Ok(v.to_owned())
}

/// A Postgres URL with its scheme and a database name: without the scheme,
/// `localhost:5432/adtrack` would be read as a database named
/// `5432/adtrack` and silently created.
fn check_database_url(url: &str) -> anyhow::Result<()> {
    let example = "for example postgres://postgres@127.0.0.1:5432/adtrack";
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .with_context(|| {
            format!("DATABASE_URL: {url:?} must start with postgres:// ({example})")
        })?;
    let database = rest
        .split_once('/')
        .map(|(_, path)| path.split('?').next().unwrap_or_default())
        .unwrap_or_default();
    if database.is_empty() || database.contains('/') {
        bail!("DATABASE_URL: {url:?} must end with one database name ({example})");
    }
    url.parse::<sqlx::postgres::PgConnectOptions>()
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: {url:?} is not valid ({e})"))?;
    Ok(())
}

fn check_redis_url(url: &str) -> anyhow::Result<()> {
    if !["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        bail!("REDIS_URL: {url:?} must start with redis:// (for example redis://127.0.0.1:6379)");
    }
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("REDIS_URL: {url:?} is not valid ({e})"))
}

fn parse<T: std::str::FromStr>(value: &str, name: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .parse::<T>()
        .map_err(|e| anyhow::anyhow!("{name}: {value:?} is not valid ({e})"))
}

fn limit(rate: u32, burst: Option<u32>) -> Option<crate::ratelimit::Limit> {
    (rate > 0).then(|| crate::ratelimit::Limit {
        per_second: f64::from(rate),
        burst: burst.unwrap_or(rate.saturating_mul(2)),
    })
}

fn parse_bool(value: &str, name: &str) -> anyhow::Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => bail!("{name}: {value:?} must be true or false"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_spec() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.worker_count, 4);
        assert_eq!(s.batch_size, 500);
        assert_eq!(s.max_attempts, 5);
        assert_eq!(s.spool_max_bytes, 1_073_741_824);
        assert_eq!(s.heartbeat_ttl, Duration::from_secs(15));
        assert_eq!(s.redis_prefix, "adtrack");
        assert!(s.admin_token.is_none());
        assert_eq!(s.report_pool_size, 4);
        assert_eq!(s.report_timeout, Duration::from_secs(5));
    }

    #[test]
    fn the_help_lists_every_variable_the_settings_read() {
        let asked = std::cell::RefCell::new(std::collections::BTreeSet::new());
        Settings::from_lookup(|name| {
            asked.borrow_mut().insert(name.to_owned());
            None
        })
        .unwrap();
        // RUST_LOG is read by the log filter, not by the settings.
        let listed: std::collections::BTreeSet<String> = VARIABLES
            .iter()
            .filter(|v| **v != "RUST_LOG")
            .map(|v| v.to_string())
            .collect();
        assert_eq!(asked.into_inner(), listed);
        for v in VARIABLES {
            assert!(long_help().contains(v), "{v}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("PORT", "eighty"),
            ("WORKER_COUNT", "0"),
            ("BATCH_SIZE", "-1"),
            ("HEARTBEAT_TTL", "soon"),
            ("SIMULATE_FAILURES", "maybe"),
            ("LOG_FORMAT", "xml"),
            ("REDIS_PREFIX", "a{b}"),
            ("DATABASE_URL", "localhost:5432/adtrack"),
            ("DATABASE_URL", "postgres://127.0.0.1:5432"),
            ("DATABASE_URL", "postgres://127.0.0.1:5432/a/b"),
            ("REDIS_URL", "127.0.0.1:6379"),
            ("REDIS_URL", "redis://"),
            ("REPORT_POOL_SIZE", "0"),
            ("REPORT_POOL_SIZE", "many"),
            ("REPORT_TIMEOUT", "1ms"),
            ("REPORT_TIMEOUT", "1h"),
            ("REPORT_TIMEOUT", "soon"),
            ("PUBLIC_URL", "track.example"),
            ("PUBLIC_URL", "ftp://track.example"),
            ("PUBLIC_URL", "https://track.example/?a=1"),
            ("VAST_SIGNING_KEY", "too short"),
            ("REDIS_CLUSTER", "maybe"),
            ("REDIS_MIN_REPLICAS", "one"),
            ("REDIS_MIN_REPLICAS", "17"),
            ("REDIS_WAIT_TIMEOUT", "5s"),
            ("REDIS_WAIT_TIMEOUT", "soon"),
            ("VAST_SIGNING_KEY_PREVIOUS", "too short"),
        ] {
            let err = settings(&[(name, value)]).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn the_public_url_loses_its_trailing_slash() {
        let s = settings(&[("PUBLIC_URL", "https://track.example/ads/")]).unwrap();
        assert_eq!(s.public_url.as_deref(), Some("https://track.example/ads"));
    }

    #[test]
    fn cluster_mode_takes_a_list_of_seeds_and_spreads_the_counters() {
        let s = settings(&[
            ("REDIS_CLUSTER", "on"),
            ("REDIS_URL", "redis://10.0.0.1:7000,redis://10.0.0.2:7000"),
            ("REDIS_MIN_REPLICAS", "1"),
        ])
        .unwrap();
        assert!(s.redis_target().unwrap().is_cluster());
        assert_eq!(s.replication().replicas, 1);
        assert_eq!(s.keys().counter_slots(), crate::keys::CLUSTER_COUNTER_SLOTS);
        for url in ["redis://10.0.0.1:7000,10.0.0.2:7000", " , "] {
            let err = settings(&[("REDIS_CLUSTER", "on"), ("REDIS_URL", url)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("REDIS_URL"), "{err}");
        }
        // One node: a list is refused, and the keys keep the SPEC layout.
        let err = settings(&[("REDIS_URL", "redis://a:1,redis://b:2")]);
        assert!(err.is_err());
        let one = settings(&[]).unwrap();
        assert_eq!(one.keys().counter_slots(), 0);
        assert!(!one.replication().is_on());
    }

    #[test]
    fn rate_limits_default_to_a_burst_of_twice_the_rate() {
        let s = settings(&[
            ("RATE_LIMIT_PER_IP", "50"),
            ("RATE_LIMIT_PER_AD", "10"),
            ("RATE_LIMIT_AD_BURST", "15"),
        ])
        .unwrap();
        assert_eq!(s.client_limit().unwrap().burst, 100);
        assert_eq!(s.ad_limit().unwrap().burst, 15);
        assert!(settings(&[]).unwrap().client_limit().is_none());
        let s = settings(&[("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1,::1")]).unwrap();
        assert_eq!(s.trusted_proxies.len(), 3);
        for bad in [
            ("TRUSTED_PROXIES", "10.0.0.0/33"),
            ("RATE_LIMIT_BURST", "0"),
            ("RATE_LIMIT_PER_AD", "-1"),
        ] {
            let err = settings(&[bad]).unwrap_err().to_string();
            assert!(err.contains(bad.0.split('_').next().unwrap()), "{err}");
        }
    }

    #[test]
    fn durations_take_units() {
        let s = settings(&[("HEARTBEAT_TTL", "2s")]).unwrap();
        assert_eq!(s.heartbeat_ttl, Duration::from_secs(2));
    }
}
