//! Background duties of a worker process: heartbeats, the reaper of dead
//! workers' items, promotion of due retries, counter-outbox recovery, the
//! queue-depth gauges, and the watch on the Redis epoch (see
//! `counters::epoch`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::WorkerContext;
use crate::counters::epoch::Seen;
use crate::counters::Epoch;
use crate::exactly_once;
use crate::store;

/// Outbox rows younger than this are left to their own worker.
const OUTBOX_GRACE: Duration = Duration::from_secs(10);

pub struct Maintenance {
    pub ctx: Arc<WorkerContext>,
    /// The workers of this process, kept alive by the heartbeat.
    pub workers: Vec<String>,
    pub heartbeat_ttl: Duration,
    /// What the heartbeat value says about this process.
    pub info: String,
    /// `EVENT_RETENTION`: raw events older than this are dropped by day.
    pub event_retention: Option<Duration>,
}

/// How often the Redis epoch is checked: the longest a Redis that came back
/// empty goes unnoticed.
const EPOCH_EVERY: Duration = Duration::from_millis(500);

/// How often partitions are created ahead and retention runs.
const PARTITION_EVERY: Duration = Duration::from_secs(600);
/// Days of partitions created ahead of the current one.
const PARTITIONS_AHEAD: i64 = 2;

impl Maintenance {
    /// A duty that failed: logged at warn with its outage cause and counted
    /// in `adtrack_outages_total{component="maintenance"}`; the next tick
    /// tries again.
    fn failed(&self, duty: &'static str, e: anyhow::Error) {
        let e = crate::fault::OutageError::from(e);
        self.ctx.metrics.outage("maintenance", e.outage);
        tracing::warn!(
            duty,
            dependency = e.outage.dependency.as_str(),
            cause = e.outage.cause.as_str(),
            error = format!("{:#}", e.error),
            "maintenance duty failed; retrying next tick"
        );
    }

    /// Heartbeats until `shutdown`, then retires this process's workers.
    pub async fn heartbeat(self: Arc<Self>, shutdown: CancellationToken) {
        let mut conn = self.ctx.redis.clone();
        let period = self.heartbeat_ttl / 3;
        loop {
            if let Err(e) = self
                .ctx
                .queues
                .beat(&mut conn, &self.workers, &self.info, self.heartbeat_ttl)
                .await
            {
                tracing::warn!(error = format!("{e:#}"), "heartbeat failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }

    /// Deletes this process's heartbeats after its workers stopped.
    pub async fn retire(&self) {
        let mut conn = self.ctx.redis.clone();
        if let Err(e) = self.ctx.queues.retire(&mut conn, &self.workers).await {
            tracing::warn!(error = format!("{e:#}"), "removing heartbeats failed");
        }
    }

    /// Checks the Redis epoch until `shutdown`: when Redis came back empty,
    /// one process reports it and rebuilds the counters from Postgres. A
    /// task of its own, so a long rebuild holds up neither the reaper nor
    /// outbox recovery.
    pub async fn watch_epoch(self: Arc<Self>, shutdown: CancellationToken) {
        let epoch = Epoch::new(self.ctx.counters.keys().clone(), self.info.clone())
            .confirmed_by(self.ctx.counters.replication());
        let mut conn = self.ctx.redis.clone();
        let mut tick = tokio::time::interval(EPOCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The epoch this process last saw; `None` before the first check.
        let mut known: Option<String> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            let seen = match epoch.check(&mut conn, Utc::now()).await {
                Ok(seen) => seen,
                Err(e) => {
                    // Every 500 ms: an outage is reported by the workers and /ready.
                    tracing::debug!(error = format!("{e:#}"), "epoch check failed");
                    continue;
                }
            };
            let previous = known.replace(seen.id().to_owned());
            if previous.as_deref() != Some(seen.id()) {
                // A new epoch: Redis lost its data, and with it what the
                // unique-click keys held.
                self.ctx.counters.registers().forget();
            }
            match &seen {
                Seen::Reset(id) => {
                    self.ctx.metrics.redis_resets.inc();
                    tracing::warn!(
                        epoch = %id,
                        previous = previous.as_deref().unwrap_or("none"),
                        "Redis has no epoch: it came back empty (or adtrack uses it for \
                         the first time); what it queued and had not stored is lost; \
                         rebuilding the counters from Postgres"
                    );
                }
                Seen::Rebuild(id) => {
                    tracing::warn!(epoch = %id, "taking over a pending counter rebuild");
                }
                Seen::Rebuilding(id) | Seen::Settled(id) => {
                    if previous.as_ref().is_some_and(|p| p != id) {
                        tracing::info!(
                            epoch = %id,
                            previous = previous.as_deref().unwrap_or("none"),
                            "Redis has a new epoch; another process rebuilds the counters"
                        );
                    }
                }
            }
            if let Seen::Reset(id) | Seen::Rebuild(id) = &seen {
                match epoch
                    .rebuild(&self.ctx.pool, &mut conn, id, &shutdown)
                    .await
                {
                    Ok(Some(r)) => tracing::info!(
                        epoch = %id,
                        keys_written = r.keys_written,
                        keys_removed = r.keys_removed,
                        outbox_batches = r.outbox_batches,
                        elapsed_ms = r.elapsed_ms as u64,
                        "counters rebuilt from Postgres"
                    ),
                    Ok(None) => tracing::info!(
                        epoch = %id,
                        "Postgres holds no events yet; the counters need no rebuild"
                    ),
                    Err(e) => tracing::warn!(
                        epoch = %id,
                        error = format!("{e:#}"),
                        "rebuilding the counters failed; retrying shortly"
                    ),
                }
            }
        }
    }

    /// Reaper, retry promotion, outbox recovery and gauges, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut conn = self.ctx.redis.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reap_every = (self.heartbeat_ttl / 2).max(Duration::from_secs(1));
        let mut last_reap = tokio::time::Instant::now() - reap_every;
        let mut last_outbox = tokio::time::Instant::now();
        let mut last_partitions: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            for queue in self.ctx.queues.all() {
                if let Err(e) = queue.promote_due(&mut conn, Utc::now()).await {
                    self.failed("retry promotion", e);
                }
            }
            if last_partitions.is_none_or(|at| at.elapsed() >= PARTITION_EVERY) {
                last_partitions = Some(tokio::time::Instant::now());
                if let Err(e) = self.partitions().await {
                    self.ctx.metrics.partition_maintenance_errors.inc();
                    tracing::warn!(error = format!("{e:#}"), "partition maintenance failed");
                }
            }
            if last_reap.elapsed() >= reap_every {
                last_reap = tokio::time::Instant::now();
                for queue in self.ctx.queues.all() {
                    match queue.reap(&mut conn).await {
                        Ok(n) => self.ctx.metrics.requeued_items.inc_by(n),
                        Err(e) => self.failed("reaper round", e),
                    }
                }
            }
            if last_outbox.elapsed() >= Duration::from_secs(2) {
                last_outbox = tokio::time::Instant::now();
                match exactly_once::recover(
                    &self.ctx.pool,
                    &mut conn,
                    &self.ctx.counters,
                    OUTBOX_GRACE,
                )
                .await
                {
                    Ok(n) if n > 0 => {
                        self.ctx.metrics.outbox_recovered.inc_by(n as u64);
                        tracing::info!(
                            batches = n,
                            "applied counter updates left by an interrupted worker"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => self.failed("outbox recovery", e),
                }
                if let Ok(depth) = exactly_once::outbox_depth(&self.ctx.pool).await {
                    self.ctx.metrics.outbox_depth.set(depth);
                }
            }
        }
    }
}

impl Maintenance {
    /// Creates the partitions of today and the next days (the only place
    /// partitions are made), drops what `EVENT_RETENTION` no longer keeps,
    /// and updates the partition gauge.
    pub async fn partitions(&self) -> anyhow::Result<()> {
        let pool = &self.ctx.pool;
        let today = Utc::now().date_naive();
        let days: Vec<_> = (0..=PARTITIONS_AHEAD)
            .filter_map(|ahead| today.checked_add_signed(chrono::Duration::days(ahead)))
            .collect();
        store::ensure_partitions(pool, &days).await?;
        if let Some(keep) = self.event_retention {
            if let Some(pruned) = store::prune(pool, Utc::now(), keep).await? {
                let m = &self.ctx.metrics;
                m.event_partitions_dropped.inc_by(pruned.partitions_dropped);
                m.event_keys_purged.inc_by(pruned.keys_purged);
                m.events_purged.inc_by(pruned.default_rows_purged);
                if pruned.partitions_dropped > 0
                    || pruned.keys_purged > 0
                    || pruned.default_rows_purged > 0
                {
                    tracing::info!(
                        partitions_dropped = pruned.partitions_dropped,
                        default_rows_purged = pruned.default_rows_purged,
                        keys_purged = pruned.keys_purged,
                        "event retention pass"
                    );
                }
            }
        }
        let partitions = store::count_partitions(pool).await?;
        self.ctx.metrics.event_partitions.set(partitions);
        Ok(())
    }
}
