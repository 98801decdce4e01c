//! The Redis epoch: noticing that Redis came back empty, and rebuilding the
//! counters from Postgres without an operator.
//!
//! Redis that restarts without its data (no persistence, a fresh replica
//! promoted, a flush) forgets the queue, the processing lists, the retry set,
//! the dead letters and the real-time counters. What was queued and not yet
//! stored is gone for good; what Postgres holds is not, so the counters can
//! be rebuilt from it, once someone notices.
//!
//! `{P}:epoch` is a hash written once per Redis lifetime: `id` (random),
//! `resetAt` (when a process found Redis without it) and, once the counters
//! equal Postgres again, `rebuiltAt`. Every worker process runs
//! [`Epoch::check`] twice a second; one script reads the epoch and acts:
//! - missing: Redis lost its data, or adtrack uses this Redis and prefix for
//!   the first time (the two look the same). The script creates the epoch
//!   and hands the rebuild lease `{P}:epoch-rebuild` to the calling process;
//!   only that process reports the reset and rebuilds.
//! - present without `rebuiltAt`: a rebuild is due; whoever takes the free
//!   lease runs it, so a rebuilder that died is replaced once its lease
//!   (refreshed while it works) expires.
//! - present with `rebuiltAt`: nothing to do.
//!
//! The rebuild is [`reconcile`], which stays exact while workers commit and
//! while another reconcile runs (each holds the `counter_outbox` table lock
//! from its snapshot to its commit, so they take turns), so a lease lost
//! under a stalled rebuild costs a second rebuild, never a double count.
//! When Postgres holds no event and no outbox row yet (a first start),
//! there is nothing to rebuild: every batch commits after that check and
//! counts itself, so the epoch is only marked rebuilt.
//!
//! What a crash right after each step leaves, and what repairs it:
//! 1. Epoch created, lease taken: the lease expires ([`LEASE`]) and another
//!    process (or this one, restarted) rebuilds.
//! 2. Reconcile committed, `rebuiltAt` not written: the next lease holder
//!    rebuilds again, to the same result.
//! 3. `rebuiltAt` written: done. It is written only while the epoch id is
//!    still the one rebuilt for, so a Redis emptied again meanwhile gets its
//!    own rebuild.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::scripts::{EPOCH_CHECK, EPOCH_EXTEND, EPOCH_FINISH};
use super::{reconcile_confirmed, ReconcileReport};
use crate::exactly_once;
use crate::queue::Keys;
use crate::redis_client::{RedisConn, Replication};

/// How long the rebuild lease lives unless its holder refreshes it.
pub const LEASE: Duration = Duration::from_secs(30);
/// How long a failed rebuild keeps the lease, so the next attempt waits
/// that long instead of hammering a Postgres that is down.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What [`Epoch::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Redis had no epoch; this process created one and must rebuild.
    Reset(String),
    /// A rebuild is due and this process holds the lease.
    Rebuild(String),
    /// Another process is rebuilding.
    Rebuilding(String),
    /// The counters were rebuilt for this epoch.
    Settled(String),
}

impl Seen {
    pub fn id(&self) -> &str {
        match self {
            Seen::Reset(id) | Seen::Rebuild(id) | Seen::Rebuilding(id) | Seen::Settled(id) => id,
        }
    }
}

/// One process's view of the epoch of a prefix.
#[derive(Clone)]
pub struct Epoch {
    keys: Keys,
    /// Confirms the rebuild's swaps (`REDIS_MIN_REPLICAS`).
    replication: Replication,
    /// Written into the lease: says which process holds it.
    holder: String,
}

impl Epoch {
    pub fn new(keys: Keys, holder: String) -> Self {
        Self {
            keys,
            replication: Replication::default(),
            holder,
        }
    }

    /// This epoch, its rebuilds confirmed by `replication`.
    pub fn confirmed_by(mut self, replication: Replication) -> Self {
        self.replication = replication;
        self
    }

    pub async fn check(&self, conn: &mut RedisConn, now: DateTime<Utc>) -> anyhow::Result<Seen> {
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let (state, id): (String, String) = EPOCH_CHECK
            .key(self.keys.epoch())
            .key(self.keys.epoch_rebuild())
            .arg(&fresh)
            .arg(rfc3339(now))
            .arg(&self.holder)
            .arg(LEASE.as_secs())
            .invoke_async(conn)
            .await
            .context("checking the Redis epoch")?;
        Ok(match state.as_str() {
            "reset" => Seen::Reset(id),
            "rebuild" => Seen::Rebuild(id),
            "rebuilding" => Seen::Rebuilding(id),
            _ => Seen::Settled(id),
        })
    }

    /// Rebuilds the counters for epoch `id` while holding the lease, then
    /// marks the epoch rebuilt. `None`: Postgres held nothing to rebuild
    /// from. On an error the lease is kept for [`RETRY_AFTER`]; on
    /// `shutdown` the rebuild is abandoned and the lease freed at once, so
    /// another process takes over.
    pub async fn rebuild(
        &self,
        pool: &PgPool,
        conn: &mut RedisConn,
        id: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<ReconcileReport>> {
        let outcome = tokio::select! {
            r = self.rebuild_holding_lease(pool, conn) => Some(r),
            _ = shutdown.cancelled() => None,
        };
        let Some(result) = outcome else {
            // Dropping reconcile mid-way leaves its pause flag for minutes;
            // clear it so workers count again, and free the lease so another
            // process rebuilds.
            let _ = exactly_once::resume(conn, &self.keys).await;
            self.end(conn, id, "free").await?;
            anyhow::bail!("shut down before the counters were rebuilt");
        };
        match result {
            Ok(report) => {
                self.end(conn, id, "done").await?;
                Ok(report)
            }
            Err(e) => {
                let keep = format!("keep:{}", RETRY_AFTER.as_millis());
                if let Err(end) = self.end(conn, id, &keep).await {
                    tracing::debug!(
                        error = format!("{end:#}"),
                        "keeping the rebuild lease failed"
                    );
                }
                Err(e)
            }
        }
    }

    async fn rebuild_holding_lease(
        &self,
        pool: &PgPool,
        conn: &mut RedisConn,
    ) -> anyhow::Result<Option<ReconcileReport>> {
        let mut lease_conn = conn.clone();
        let work = async {
            if !anything_committed(pool).await? {
                return Ok(None);
            }
            reconcile_confirmed(pool, conn, &self.keys, self.replication, Utc::now())
                .await
                .map(Some)
        };
        tokio::pin!(work);
        let mut refresh = tokio::time::interval(LEASE / 3);
        refresh.tick().await;
        loop {
            tokio::select! {
                r = &mut work => return r,
                _ = refresh.tick() => {
                    let kept: anyhow::Result<i64> = EPOCH_EXTEND
                        .key(self.keys.epoch_rebuild())
                        .arg(&self.holder)
                        .arg(LEASE.as_secs())
                        .invoke_async(&mut lease_conn)
                        .await
                        .context("extending the rebuild lease");
                    match kept {
                        Ok(1) => {}
                        Ok(_) => tracing::warn!(
                            "the rebuild lease expired; another process may rebuild too (harmless)"
                        ),
                        Err(e) => tracing::debug!(error = format!("{e:#}"), "lease refresh failed"),
                    }
                }
            }
        }
    }

    async fn end(&self, conn: &mut RedisConn, id: &str, outcome: &str) -> anyhow::Result<()> {
        EPOCH_FINISH
            .key(self.keys.epoch())
            .key(self.keys.epoch_rebuild())
            .arg(id)
            .arg(rfc3339(Utc::now()))
            .arg(&self.holder)
            .arg(outcome)
            .invoke_async::<i64>(conn)
            .await
            .context("finishing the counter rebuild")?;
        Ok(())
    }
}

/// When adtrack last found this Redis without its epoch; `None` when the
/// epoch (and with it this record) is missing or was written by hand.
pub async fn last_reset(
    conn: &mut RedisConn,
    keys: &Keys,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    let at: Option<String> = redis::cmd("HGET")
        .arg(keys.epoch())
        .arg("resetAt")
        .query_async(conn)
        .await
        .context("reading the Redis epoch")?;
    Ok(at
        .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
        .map(|at| at.with_timezone(&Utc)))
}

/// Whether Postgres holds anything the counters are built from.
async fn anything_committed(pool: &PgPool) -> anyhow::Result<bool> {
    let stored = crate::store::counters::anything_stored(pool).await?;
    Ok(stored || exactly_once::outbox_pending(pool).await?)
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}
