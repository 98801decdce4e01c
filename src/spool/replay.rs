//! Replays closed spool segments into Redis once it answers again.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::redis_client::{RedisConn, Replication};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{segments, split_segment, sync_dir, Lines, Spool};
use crate::keys::fields;
use crate::metrics::Metrics;
use crate::queue::Keys;

/// Envelopes per pipelined `LPUSH` during replay.
const REPLAY_CHUNK: usize = 1000;

/// Whether ingestion should skip Redis and spool directly. Set when a push
/// fails; cleared by the replayer once Redis answers again.
#[derive(Debug, Default)]
pub struct RedisDown(AtomicBool);

impl RedisDown {
    pub fn is_down(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    pub fn set(&self, down: bool) {
        self.0.store(down, Ordering::Relaxed);
    }
}

pub struct Replayer {
    pub spool: Spool,
    pub redis: RedisConn,
    pub keys: Keys,
    /// Replicas that must confirm a replayed chunk (`REDIS_MIN_REPLICAS`).
    pub replication: Replication,
    pub metrics: Arc<Metrics>,
    pub redis_down: Arc<RedisDown>,
}

impl Replayer {
    /// Checks Redis twice a second; when it answers and the spool holds
    /// anything, replays everything.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            let pending = self.spool.stats().bytes.load(Ordering::Relaxed) > 0;
            self.update_gauges();
            if !pending && !self.redis_down.is_down() {
                continue;
            }
            if !self.ping().await {
                self.redis_down.set(true);
                continue;
            }
            self.redis_down.set(false);
            if pending {
                match self.replay_all().await {
                    Ok(n) if n > 0 => tracing::info!(events = n, "replayed the spool into Redis"),
                    Ok(_) => {}
                    Err(e) => {
                        let outage = crate::fault::OutageError::from(e);
                        self.metrics.outage("replayer", outage.outage);
                        tracing::warn!(
                            dependency = outage.outage.dependency.as_str(),
                            cause = outage.outage.cause.as_str(),
                            error = format!("{:#}", outage.error),
                            "spool replay paused"
                        );
                    }
                }
                self.update_gauges();
            }
        }
    }

    fn update_gauges(&self) {
        let stats = self.spool.stats();
        self.metrics
            .spool_bytes
            .set(stats.bytes.load(Ordering::Relaxed) as i64);
        self.metrics
            .spool_events
            .set(stats.events.load(Ordering::Relaxed) as i64);
    }

    async fn ping(&mut self) -> bool {
        // The node that takes the replay: in a cluster, the owner of the
        // queue's slot (a bare PING would ask every node).
        let cmd = redis::cmd("PING");
        let queue = self.keys.queue();
        let check = self.redis.on_owner_of::<String>(&queue, &cmd);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), check).await,
            Ok(Ok(_))
        )
    }

    /// Closes the active segment and replays every closed one, oldest
    /// first. Returns the envelopes pushed.
    pub async fn replay_all(&mut self) -> anyhow::Result<u64> {
        self.spool
            .rotate()
            .await
            .context("closing the spool segment")?;
        let mut total = 0;
        for seg in segments(self.spool.dir())? {
            total += self.replay_segment(&seg).await?;
        }
        Ok(total)
    }

    async fn replay_segment(&mut self, path: &Path) -> anyhow::Result<u64> {
        let mut data = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        // A segment closed after a failed append is read only up to what
        // was acknowledged.
        let keep = super::replayable_len(path, data.len() as u64);
        data.truncate(usize::try_from(keep).unwrap_or(data.len()));
        let Lines {
            good,
            skipped,
            count,
        } = split_segment(&data);
        for (line, reason, torn) in skipped {
            let kind = if torn { "torn" } else { "corrupt" };
            self.metrics
                .spool_skipped_lines
                .with_label_values(&[kind])
                .inc();
            tracing::warn!(segment = %path.display(), line, reason, kind, "skipping a spool line");
        }
        for chunk in good.chunks(REPLAY_CHUNK) {
            let mut pipe = redis::pipe();
            pipe.cmd("LPUSH").arg(self.keys.queue()).arg(chunk).ignore();
            let mut total = redis::cmd("HINCRBY");
            total
                .arg(self.keys.stats())
                .arg(fields::INGESTED)
                .arg(chunk.len());
            // On a cluster the running total goes apart, after the push: a
            // pipeline sent again after a MOVED (shard 0's slot migrating)
            // would push the chunk again with it.
            let total_apart = self.redis.is_cluster();
            if !total_apart {
                pipe.add_command(total.clone()).ignore();
            }
            // With REDIS_MIN_REPLICAS, a segment leaves the disk only once
            // the replicas have its events too.
            tokio::time::timeout(
                Duration::from_secs(5),
                self.replication.query(&mut self.redis, &mut pipe),
            )
            .await
            .context("replaying into Redis timed out")?
            .context("replaying into Redis")?;
            if total_apart {
                let sent = tokio::time::timeout(
                    Duration::from_secs(5),
                    total.query_async::<i64>(&mut self.redis),
                )
                .await;
                if !matches!(sent, Ok(Ok(_))) {
                    // The events are queued; only the UI's rate misses them.
                    tracing::debug!(events = chunk.len(), "the ingested total was not updated");
                }
            }
            self.metrics.spool_replayed.inc_by(chunk.len() as u64);
        }
        tokio::fs::remove_file(path)
            .await
            .with_context(|| format!("removing the replayed segment {}", path.display()))?;
        sync_dir(self.spool.dir())?;
        let stats = self.spool.stats();
        sub(&stats.bytes, data.len() as u64);
        sub(&stats.events, count as u64);
        Ok(good.len() as u64)
    }
}

fn sub(counter: &std::sync::atomic::AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}
