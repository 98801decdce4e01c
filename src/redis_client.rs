//! How every adtrack connection to Redis is made, and the one connection
//! type the rest of the code talks through: [`RedisConn`].
//!
//! With `REDIS_CLUSTER=off` (the default) a `RedisConn` is a reconnecting
//! `ConnectionManager` to the one node of `REDIS_URL`. With
//! `REDIS_CLUSTER=on`, `REDIS_URL` lists seed nodes and a `RedisConn` is
//! redis-rs's cluster connection: it routes each command (and each
//! single-slot pipeline) to the primary that owns the slot, follows `MOVED`
//! and `ASK`, refreshes its slot map after a failover or a resharding, and
//! retries `TRYAGAIN`, `CLUSTERDOWN` and `LOADING` a few times before the
//! error reaches `fault`, which calls it an outage.
//!
//! Scripts are made with [`script`], which records each one's source by
//! its SHA1: on a cluster, an `EVALSHA` answered `NOSCRIPT` (a promoted
//! replica, a restarted or flushed node) is sent again as `EVAL` to the
//! same slot's owner. redis-rs's own reload would send `SCRIPT LOAD` to
//! every node of its map, and fail while one of them cannot take it.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Arg, Cmd, ErrorKind, Pipeline, RedisFuture, RedisResult, Script, Value};

/// The source of every script made by [`script`], by SHA1.
static SOURCES: LazyLock<Mutex<HashMap<String, &'static str>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A script whose source a cluster connection can send again when a node
/// answers `NOSCRIPT` (see the module's comment). Every adtrack script is
/// made with it.
pub fn script(source: &'static str) -> Script {
    let script = Script::new(source);
    SOURCES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(script.get_hash().to_owned(), source);
    script
}

/// `EVALSHA sha …` as `EVAL source …`, when `sha` is a script made by
/// [`script`].
fn as_eval(cmd: &Cmd) -> Option<Cmd> {
    let mut args = cmd.args_iter();
    match args.next()? {
        Arg::Simple(name) if name.eq_ignore_ascii_case(b"EVALSHA") => {}
        _ => return None,
    }
    let Arg::Simple(sha) = args.next()? else {
        return None;
    };
    let source = *SOURCES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(std::str::from_utf8(sha).ok()?)?;
    let mut eval = redis::cmd("EVAL");
    eval.arg(source);
    for arg in args {
        match arg {
            Arg::Simple(a) => eval.arg(a),
            Arg::Cursor => return None,
        };
    }
    Some(eval)
}

fn is_evalsha(cmd: &Cmd) -> bool {
    matches!(cmd.args_iter().next(), Some(Arg::Simple(n)) if n.eq_ignore_ascii_case(b"EVALSHA"))
}

/// Where adtrack's Redis is: one node, or the seed nodes of a cluster.
/// Cheap to clone; [`RedisTarget::connect`] opens a connection.
#[derive(Clone)]
pub enum RedisTarget {
    Single(redis::Client),
    Cluster(ClusterTarget),
}

/// A cluster's seed nodes (connections are made per response time-out).
#[derive(Clone)]
pub struct ClusterTarget {
    seeds: Vec<String>,
}

impl RedisTarget {
    /// `url` is one `redis://` URL, or with `cluster` a comma-separated
    /// list of seed nodes.
    pub fn new(url: &str, cluster: bool) -> anyhow::Result<Self> {
        if !cluster {
            let client = redis::Client::open(url).context("REDIS_URL is not a valid redis URL")?;
            return Ok(Self::Single(client));
        }
        let seeds = seed_urls(url);
        if seeds.is_empty() {
            bail!("REDIS_URL lists no seed node");
        }
        // Validates every seed (scheme, host, port) now rather than on
        // the first command.
        ClusterClient::new(seeds.clone()).context("REDIS_URL is not a list of redis URLs")?;
        Ok(Self::Cluster(ClusterTarget { seeds }))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A connection whose every command answers within `response` (a
    /// blocking reservation must fit inside it).
    pub async fn connect(&self, response: Duration) -> anyhow::Result<RedisConn> {
        match self {
            Self::Single(client) => {
                ConnectionManager::new_with_config(client.clone(), redis_manager_config(response))
                    .await
                    .map(RedisConn::Single)
                    .context("connecting to Redis")
            }
            Self::Cluster(target) => {
                let client = redis::cluster::ClusterClientBuilder::new(target.seeds.clone())
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(response)
                    // A failover takes a cluster-node-timeout plus an
                    // election: the client retries redirections and
                    // TRYAGAIN/CLUSTERDOWN a few times within the
                    // response time-out, then the caller's outage handling
                    // (spool, back off) takes over.
                    .retries(4)
                    .min_retry_wait(50)
                    .max_retry_wait(500)
                    .build()
                    .context("REDIS_URL is not a list of redis URLs")?;
                client
                    .get_async_connection()
                    .await
                    .map(RedisConn::Cluster)
                    .context("connecting to the Redis Cluster")
            }
        }
    }
}

/// The seed URLs of a cluster `REDIS_URL`: comma-separated, blanks ignored.
pub fn seed_urls(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A connection to one Redis node or to a Redis Cluster; every command
/// and script of adtrack goes through it. Cheap to clone (clones share the
/// underlying connections).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Runs `cmd` on the primary that owns `key`'s slot: for a command
    /// that names no key but is about keys of one slot (`SCAN` of a
    /// prefix's counters). On one node it is just `cmd`.
    pub async fn on_owner_of<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        let value = match self {
            Self::Single(c) => cmd.query_async::<Value>(c).await?,
            Self::Cluster(c) => {
                let route = Route::new(key_slot(key.as_bytes()), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                c.route_command(cmd, routing).await?
            }
        };
        redis::from_redis_value(&value)
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => {
                if !is_evalsha(cmd) {
                    return c.req_packed_command(cmd);
                }
                Box::pin(async move {
                    match c.req_packed_command(cmd).await {
                        Err(e) if e.kind() == ErrorKind::NoScriptError => match as_eval(cmd) {
                            // EVAL runs the script on the slot's owner and
                            // caches it there for the next EVALSHA.
                            Some(eval) => c.req_packed_command(&eval).await,
                            None => Err(e),
                        },
                        other => other,
                    }
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// What a write waits for before adtrack calls it done
/// (`REDIS_MIN_REPLICAS`, `REDIS_WAIT_TIMEOUT`): `WAIT replicas timeout`
/// pipelined right after the write, on the same node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    pub replicas: u32,
    pub timeout: Duration,
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            replicas: 0,
            timeout: Duration::from_millis(500),
        }
    }
}

impl Replication {
    /// Whether writes wait for replicas at all.
    pub fn is_on(self) -> bool {
        self.replicas > 0
    }

    /// Appends `WAIT` to `pipe` (its reply is the pipeline's last value).
    /// Nothing when no replica is asked for.
    pub fn append_wait(self, pipe: &mut Pipeline) {
        if self.is_on() {
            let ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
            pipe.cmd("WAIT").arg(self.replicas).arg(ms.max(1));
        }
    }

    /// `WAIT`'s reply: enough replicas, or the error that makes the write
    /// an outage (its data may or may not survive a failover).
    pub fn check(self, confirmed: i64) -> Result<(), Unreplicated> {
        if confirmed >= i64::from(self.replicas) {
            Ok(())
        } else {
            Err(Unreplicated {
                wanted: self.replicas,
                confirmed,
            })
        }
    }

    /// Runs `pipe` with `WAIT` appended; `Ok` only when the replicas
    /// confirmed it. The pipeline's own replies must all be ignored.
    pub async fn query(self, conn: &mut RedisConn, pipe: &mut Pipeline) -> anyhow::Result<()> {
        if !self.is_on() {
            pipe.query_async::<()>(conn).await?;
            return Ok(());
        }
        self.append_wait(pipe);
        let (confirmed,): (i64,) = pipe.query_async(conn).await?;
        self.check(confirmed)?;
        Ok(())
    }
}

/// Fewer replicas than `REDIS_MIN_REPLICAS` confirmed a write in time: the
/// write is on the primary only and a failover could lose it, so adtrack
/// treats it as not done (an outage of cause `replication`).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{confirmed} of {wanted} replica(s) confirmed the write in time")]
pub struct Unreplicated {
    pub wanted: u32,
    pub confirmed: i64,
}

/// A single-node connection to `url` (the default mode; tools and tests).
pub async fn redis_connection(url: &str, response: Duration) -> anyhow::Result<RedisConn> {
    RedisTarget::new(url, false)?.connect(response).await
}

/// How every single-node adtrack connection connects and reconnects.
pub fn redis_manager_config(response: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(response)
        .set_number_of_retries(2)
        .set_max_delay(1000)
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the
/// text between the first `{` and the next `}`, when not empty) or of the
/// whole key, modulo 16384. What `CLUSTER KEYSLOT` answers.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % 16_384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_evalsha_of_a_known_script_is_sent_again_as_eval() {
        let source = "return {KEYS[1], ARGV[1]} -- as_eval test";
        let known = script(source);
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(known.get_hash()).arg(1).arg("{k}:a").arg("x");
        let mut expected = redis::cmd("EVAL");
        expected.arg(source).arg(1).arg("{k}:a").arg("x");
        assert!(is_evalsha(&evalsha));
        assert_eq!(
            as_eval(&evalsha).map(|c| c.get_packed_command()),
            Some(expected.get_packed_command())
        );

        let unknown = Script::new("return 2 -- never registered");
        let mut other = redis::cmd("EVALSHA");
        other.arg(unknown.get_hash()).arg(0);
        assert!(as_eval(&other).is_none(), "no source, no EVAL");
        assert!(!is_evalsha(&redis::cmd("GET")));
    }

    #[test]
    fn slots_follow_the_cluster_specification() {
        // Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{adtrack}:queue"), key_slot(b"{adtrack}:stats"));
        assert_eq!(key_slot(b"{}foo"), key_slot(b"{}foo"));
        assert_ne!(key_slot(b"{}foo"), key_slot(b"foo"));
    }

    #[test]
    fn seeds_are_split_on_commas() {
        assert_eq!(
            seed_urls("redis://a:7000, redis://b:7000,,"),
            vec!["redis://a:7000".to_string(), "redis://b:7000".to_string()]
        );
    }

    #[test]
    fn a_cluster_target_checks_every_seed() {
        assert!(RedisTarget::new("redis://a:7000,redis://b:7000", true).is_ok());
        assert!(RedisTarget::new("redis://a:7000,nonsense", true).is_err());
        assert!(RedisTarget::new(" , ", true).is_err());
        assert!(!RedisTarget::new("redis://a:7000", false)
            .map(|t| t.is_cluster())
            .unwrap_or(true));
    }
}
