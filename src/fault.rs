//! Outage or the event's own fault: the one decision every path that moves
//! an event makes, taken here and nowhere else.
//!
//! SPEC invariant 4: while Postgres or Redis is down *or refuses to work*,
//! nothing is dead-lettered. An event is poison only when the failure belongs
//! to its own data: SQLSTATE classes 22 (data exception) and 23 (integrity
//! constraint). (An envelope that does not decode and `simulateFailure` are
//! decided by the worker before anything is sent.) Every other failure is an
//! outage, and so is every failure this module does not recognise: a stuck
//! queue pages someone, while a dead-lettered stream silently corrupts the
//! analytics.
//!
//! Who reads the decision:
//! - the worker bisects a batch and counts an attempt only for
//!   [`Fault::Poison`]; an outage fails the round as a whole and backs off;
//! - ingest and the spool replayer treat every Redis failure as an outage
//!   (spool, retry later) and label it with its [`Cause`];
//! - the HTTP reads answer an outage with 503 and `Retry-After`, and anything
//!   else (a bug) with 500;
//! - `/ready` names the cause, and `adtrack_outages_total` counts it.

use std::fmt;

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dependency {
    Postgres,
    Redis,
    /// The spool's filesystem.
    Disk,
    /// Not known from the error (a bare time-out, say).
    Unknown,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::Disk => "disk",
            Self::Unknown => "unknown",
        }
    }
}

/// Why a dependency cannot do the work now. The words are what `/ready`
/// shows and what the `cause` label of `adtrack_outages_total` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// No connection: refused, reset, closed, TLS or protocol failure.
    Down,
    /// No answer in time (pool time-out, statement timeout, a slow Redis).
    Timeout,
    /// Writes refused: a standby after a failover (25006), a Redis replica.
    ReadOnly,
    /// A privilege was revoked (42501) or authentication failed.
    NoPrivilege,
    /// A table, column or function is missing or changed (class 42): a bad
    /// deploy or a manual change.
    Schema,
    /// The server's disk is full (53100), or Redis cannot persist (MISCONF).
    DiskFull,
    /// Postgres (53200) or Redis (`OOM`, `maxmemory` with `noeviction`)
    /// is out of memory.
    OutOfMemory,
    /// Too many connections or another exhausted resource (class 53).
    Resources,
    /// The server is shutting down or ended the session (class 57).
    Shutdown,
    /// Serialization failure or deadlock (class 40): try again.
    Conflict,
    /// Redis is loading its data set or busy with a script.
    Loading,
    /// A cluster is failing over or resharding: CLUSTERDOWN, MASTERDOWN,
    /// TRYAGAIN, MOVED and ASK that were not followed, no connection to the
    /// node that owns a slot.
    Failover,
    /// A script missing from the script cache (a restarted or promoted node).
    NoScript,
    /// Fewer replicas than `REDIS_MIN_REPLICAS` confirmed a write in time.
    Replication,
    /// An I/O error reported by the server or the local filesystem.
    Io,
    /// Not recognised. Still an outage for the pipeline; a read that fails
    /// this way is a bug and answers 500.
    Unknown,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Timeout => "timeout",
            Self::ReadOnly => "read-only",
            Self::NoPrivilege => "no-privilege",
            Self::Schema => "schema",
            Self::DiskFull => "disk-full",
            Self::OutOfMemory => "out-of-memory",
            Self::Resources => "resources",
            Self::Shutdown => "shutdown",
            Self::Conflict => "conflict",
            Self::Loading => "loading",
            Self::Failover => "failover",
            Self::NoScript => "noscript",
            Self::Replication => "replication",
            Self::Io => "io",
            Self::Unknown => "unknown",
        }
    }
}

/// A dependency that cannot do the work now, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outage {
    pub dependency: Dependency,
    pub cause: Cause,
}

impl Outage {
    pub const fn new(dependency: Dependency, cause: Cause) -> Self {
        Self { dependency, cause }
    }

    /// Whether the failure is known to be a dependency's rather than a bug
    /// of adtrack's: what separates a read's 503 from its 500.
    pub fn is_known(self) -> bool {
        self.cause != Cause::Unknown
    }
}

impl fmt::Display for Outage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.dependency.as_str(), self.cause.as_str())
    }
}

/// The decision for one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Retrying later can help; nothing is the event's fault.
    Outage(Outage),
    /// The event's own data: retrying the same event fails the same way.
    Poison,
}

impl Fault {
    /// Classifies an error by the first cause in its chain that says what
    /// failed. Unrecognised errors are outages of an unknown cause.
    pub fn of(err: &anyhow::Error) -> Self {
        for cause in err.chain() {
            if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
                return postgres(e);
            }
            if cause.is::<crate::redis_client::Unreplicated>() {
                return Self::Outage(Outage::new(Dependency::Redis, Cause::Replication));
            }
            if let Some(e) = cause.downcast_ref::<redis::RedisError>() {
                return Self::Outage(Outage::new(Dependency::Redis, redis_cause(e)));
            }
            if let Some(e) = cause.downcast_ref::<std::io::Error>() {
                return Self::Outage(Outage::new(Dependency::Disk, io_cause(e)));
            }
            if cause.is::<tokio::time::error::Elapsed>() {
                return Self::Outage(Outage::new(Dependency::Unknown, Cause::Timeout));
            }
        }
        Self::Outage(Outage::new(Dependency::Unknown, Cause::Unknown))
    }

    pub fn is_poison(self) -> bool {
        self == Self::Poison
    }
}

/// An error that fails a whole round or request: always an outage, with
/// its cause decided. Poison never travels this way; where a data error
/// escapes outside any one event it counts as an outage of unknown cause.
#[derive(Debug, thiserror::Error)]
#[error("{outage}: {error:#}")]
pub struct OutageError {
    pub outage: Outage,
    pub error: anyhow::Error,
}

impl Outage {
    /// The outage `err` stands for where no single event is at fault (a
    /// round, a probe, a read): a data error there is a Postgres failure of
    /// unknown cause.
    pub fn of(err: &anyhow::Error) -> Self {
        match Fault::of(err) {
            Fault::Outage(o) => o,
            Fault::Poison => Outage::new(Dependency::Postgres, Cause::Unknown),
        }
    }
}

impl From<anyhow::Error> for OutageError {
    fn from(error: anyhow::Error) -> Self {
        Self {
            outage: Outage::of(&error),
            error,
        }
    }
}

impl From<redis::RedisError> for OutageError {
    fn from(e: redis::RedisError) -> Self {
        anyhow::Error::from(e).into()
    }
}

fn postgres(e: &sqlx::Error) -> Fault {
    let cause = match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match (code.get(..2).unwrap_or_default(), code.as_ref()) {
                ("22" | "23", _) => return Fault::Poison,
                (_, "25006") => Cause::ReadOnly,
                (_, "42501") | ("28", _) => Cause::NoPrivilege,
                ("42", _) | ("3F", _) => Cause::Schema,
                (_, "53100") => Cause::DiskFull,
                (_, "53200") => Cause::OutOfMemory,
                ("53", _) => Cause::Resources,
                (_, "57014") => Cause::Timeout,
                ("57", _) => Cause::Shutdown,
                ("40", _) => Cause::Conflict,
                ("08", _) => Cause::Down,
                ("58", _) => Cause::Io,
                _ => Cause::Unknown,
            }
        }
        sqlx::Error::PoolTimedOut => Cause::Timeout,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Cause::Down,
        _ => Cause::Unknown,
    };
    Fault::Outage(Outage::new(Dependency::Postgres, cause))
}

fn redis_cause(e: &redis::RedisError) -> Cause {
    use redis::ErrorKind as K;
    if e.is_timeout() {
        return Cause::Timeout;
    }
    match e.kind() {
        K::IoError => Cause::Down,
        K::ReadOnly => Cause::ReadOnly,
        K::BusyLoadingError => Cause::Loading,
        K::NoScriptError => Cause::NoScript,
        K::MasterDown
        | K::ClusterDown
        | K::TryAgain
        | K::Moved
        | K::Ask
        | K::ClusterConnectionNotFound => Cause::Failover,
        K::AuthenticationFailed => Cause::NoPrivilege,
        _ => match e.code() {
            Some("OOM") => Cause::OutOfMemory,
            Some("MISCONF") => Cause::DiskFull,
            Some("BUSY") => Cause::Loading,
            Some("NOAUTH" | "NOPERM" | "WRONGPASS") => Cause::NoPrivilege,
            _ if e.is_connection_dropped() || e.is_connection_refusal() => Cause::Down,
            _ => Cause::Unknown,
        },
    }
}

fn io_cause(e: &std::io::Error) -> Cause {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::StorageFull | K::QuotaExceeded => Cause::DiskFull,
        K::TimedOut => Cause::Timeout,
        K::PermissionDenied | K::ReadOnlyFilesystem => Cause::NoPrivilege,
        K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
            Cause::Down
        }
        _ => Cause::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server error reply as the parser reads it off the wire.
    fn redis_error(code: &str, detail: &str) -> anyhow::Error {
        let reply = format!("-{code} {detail}\r\n");
        let err = redis::parse_redis_value(reply.as_bytes())
            .and_then(redis::Value::extract_error)
            .expect_err("an error reply");
        anyhow::Error::from(err).context("in a round")
    }

    #[test]
    fn redis_errors_are_outages_with_their_cause() {
        let cases = [
            (
                "OOM",
                "command not allowed when used memory > 'maxmemory'.",
                Cause::OutOfMemory,
            ),
            (
                "READONLY",
                "You can't write against a read only replica.",
                Cause::ReadOnly,
            ),
            (
                "LOADING",
                "Redis is loading the dataset in memory",
                Cause::Loading,
            ),
            ("MASTERDOWN", "Link with MASTER is down", Cause::Failover),
            ("CLUSTERDOWN", "The cluster is down", Cause::Failover),
            (
                "TRYAGAIN",
                "Multiple keys request during rehashing of slot",
                Cause::Failover,
            ),
            ("NOSCRIPT", "No matching script.", Cause::NoScript),
            ("MOVED", "3999 127.0.0.1:6381", Cause::Failover),
            ("ASK", "3999 127.0.0.1:6381", Cause::Failover),
            ("CLUSTERDOWN", "Hash slot not served", Cause::Failover),
            (
                "WRONGTYPE",
                "Operation against a key holding the wrong kind of value",
                Cause::Unknown,
            ),
        ];
        for (code, detail, cause) in cases {
            assert_eq!(
                Fault::of(&redis_error(code, detail)),
                Fault::Outage(Outage::new(Dependency::Redis, cause)),
                "{code}"
            );
        }
        // Lost connections, as a single node's and the cluster client's
        // connections report them.
        for kind in [
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::BrokenPipe,
        ] {
            let dropped = redis::RedisError::from(std::io::Error::from(kind));
            assert_eq!(
                Fault::of(&dropped.into()),
                Fault::Outage(Outage::new(Dependency::Redis, Cause::Down)),
                "{kind:?}"
            );
        }
        let no_node = redis::RedisError::from((
            redis::ErrorKind::ClusterConnectionNotFound,
            "no connection to the slot's node",
        ));
        assert_eq!(
            Fault::of(&no_node.into()),
            Fault::Outage(Outage::new(Dependency::Redis, Cause::Failover))
        );
        let late = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(
            Fault::of(&late.into()),
            Fault::Outage(Outage::new(Dependency::Redis, Cause::Timeout))
        );
        let unconfirmed = anyhow::Error::from(crate::redis_client::Unreplicated {
            wanted: 1,
            confirmed: 0,
        })
        .context("pushing a group");
        assert_eq!(
            Fault::of(&unconfirmed),
            Fault::Outage(Outage::new(Dependency::Redis, Cause::Replication))
        );
    }

    #[test]
    fn io_and_unknown_errors_are_outages() {
        let full = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert_eq!(
            Fault::of(&full.context("appending")),
            Fault::Outage(Outage::new(Dependency::Disk, Cause::DiskFull))
        );
        let odd = anyhow::anyhow!("something nobody expected");
        assert_eq!(
            Fault::of(&odd),
            Fault::Outage(Outage::new(Dependency::Unknown, Cause::Unknown))
        );
        assert!(!Outage::new(Dependency::Unknown, Cause::Unknown).is_known());
    }

    #[test]
    fn sqlx_errors_without_a_server_code() {
        for (e, cause) in [
            (sqlx::Error::PoolTimedOut, Cause::Timeout),
            (sqlx::Error::PoolClosed, Cause::Down),
            (
                sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
                Cause::Down,
            ),
            (sqlx::Error::RowNotFound, Cause::Unknown),
        ] {
            assert_eq!(
                Fault::of(&anyhow::Error::from(e)),
                Fault::Outage(Outage::new(Dependency::Postgres, cause))
            );
        }
    }
}
