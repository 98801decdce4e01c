//! The worker: moves events from the Redis queue into Postgres and updates
//! the real-time counters, exactly once.
//!
//! One round ([`Worker::step`]):
//! 1. Reserve: what this worker's processing list still holds (a round that
//!    could not finish), else up to `BATCH_SIZE` items moved from the queue.
//! 2. Commit the batch to Postgres in one statement: new raw rows, their
//!    rollups and an outbox row naming them (see [`crate::exactly_once`]). Events that fail
//!    on their own are isolated by splitting the batch, and sent to the retry
//!    set or, after `MAX_ATTEMPTS`, the dead-letter list; the rest commit.
//! 3. Apply the counters and acknowledge the processing list, exactly once;
//!    the next batch's statement deletes the batch's outbox row. The steps,
//!    and what a crash after each leaves, are in [`crate::exactly_once`].
//! Outages never count as attempts ([`crate::fault`] decides what is one):
//! the round fails as a whole, the items stay where they are, and the worker
//! backs off.

mod maintenance;

pub use crate::exactly_once::recover as recover_outbox;
pub use maintenance::Maintenance;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use rand::Rng;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::counters::{Counted, Counters};
use crate::domain::{Event, Kind};
use crate::exactly_once::{self, Applied, Unsettled};
use crate::fault::{Fault, OutageError};
use crate::metrics::Metrics;
use crate::queue::{Divert, Queue, Queues};
use crate::redis_client::RedisConn;

/// How long a reservation blocks on an empty queue.
const RESERVE_WAIT: Duration = Duration::from_secs(1);

/// Everything the workers of one process share.
pub struct WorkerContext {
    pub pool: PgPool,
    pub redis: RedisConn,
    pub queues: Queues,
    pub counters: Counters,
    pub metrics: Arc<Metrics>,
    pub batch_size: usize,
    pub max_attempts: u32,
    pub simulate_failures: bool,
}

/// What one round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Nothing was waiting.
    Idle,
    Processed {
        /// Items taken off the queue.
        items: usize,
        /// Events newly stored (the rest were duplicates or failed).
        inserted: usize,
        /// Events sent to the retry set or dead-letter list.
        failed: usize,
    },
}

pub struct Worker {
    id: String,
    conn: RedisConn,
    ctx: Arc<WorkerContext>,
    /// The queue shard this worker takes from.
    queue: Queue,
    /// Batches counted whose outbox rows the next commit deletes.
    unsettled: Unsettled,
}

/// [`Worker::commit_isolating`]'s answer.
type CommitOutcome<'e> = (Vec<(Uuid, Vec<&'e Event>)>, Vec<Failure>, bool);

struct Failure {
    raw: String,
    event: Option<Event>,
    error: String,
}

impl Worker {
    /// `conn` must be this worker's own connection: reservations block it.
    /// Worker number `index` of its process; it takes from queue shard
    /// `index % QUEUE_SHARDS`.
    pub fn new(id: String, index: usize, conn: RedisConn, ctx: Arc<WorkerContext>) -> Self {
        let queue = ctx.queues.for_worker(index).clone();
        Self {
            id,
            conn,
            ctx,
            queue,
            unsettled: Unsettled::default(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs rounds until `shutdown`; a round in progress always finishes.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        tracing::info!(worker = %self.id, "worker started");
        while !shutdown.is_cancelled() {
            match self.step().await {
                Ok(_) => backoff.reset(),
                Err(e) => {
                    // Redis may have lost what the unique-click keys held.
                    self.ctx.counters.registers().forget();
                    self.ctx.metrics.outage("worker", e.outage);
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        worker = %self.id,
                        dependency = e.outage.dependency.as_str(),
                        cause = e.outage.cause.as_str(),
                        error = format!("{:#}", e.error),
                        retry_in_ms = delay.as_millis() as u64,
                        "worker round failed on an outage; backing off"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
        // What a last round counted; left to recovery if this fails.
        let ctx = self.ctx.clone();
        if let Err(e) = self
            .unsettled
            .settle(&ctx.pool, &mut self.conn, ctx.counters.keys())
            .await
        {
            tracing::warn!(worker = %self.id, error = format!("{e:#}"), "outbox rows left to recovery");
        }
        tracing::info!(worker = %self.id, "worker stopped");
    }

    /// One round: reserve, commit, count, acknowledge.
    ///
    /// Every error is an outage by type: it fails the round as a whole,
    /// counts no attempt and leaves the items in the processing list, where
    /// the next round (or the reaper) takes them again. Only events that
    /// fail on their own data are retried or dead-lettered, inside the round.
    #[tracing::instrument(skip_all, fields(worker = %self.id))]
    pub async fn step(&mut self) -> Result<StepOutcome, OutageError> {
        let ctx = self.ctx.clone();
        let items = self
            .queue
            .reserve(&mut self.conn, &self.id, ctx.batch_size, RESERVE_WAIT)
            .await?;
        if items.is_empty() {
            // Nothing to commit: delete the counted batches' rows alone.
            self.unsettled
                .settle(&ctx.pool, &mut self.conn, ctx.counters.keys())
                .await?;
            return Ok(StepOutcome::Idle);
        }
        let started = Instant::now();
        let processing = self.queue.keys().processing(&self.id);
        // The counter script may delete the processing list in the same step
        // only when both live in one Cluster slot (shard 0); other shards
        // acknowledge right after it (the batch marker keeps that safe).
        let ack_in_script = self.queue.keys().queue_in_home_slot();

        let mut failures = Vec::new();
        let mut events: Vec<(&str, Event)> = Vec::with_capacity(items.len());
        // foldhash: see `Ops::add_events`; a batch bounds what collisions cost.
        let mut seen =
            HashSet::with_capacity_and_hasher(items.len(), foldhash::fast::RandomState::default());
        let mut duplicates = 0usize;
        for raw in items.iter() {
            match Event::from_envelope(raw) {
                Ok(event) if ctx.simulate_failures && event.simulate_failure => {
                    failures.push(Failure {
                        raw: raw.clone(),
                        event: Some(event),
                        error: "simulated failure (simulateFailure=true)".into(),
                    })
                }
                // A second copy of an eventId in one batch adds nothing.
                Ok(event) => {
                    if seen.insert((event.tenant_id.clone(), event.event_id)) {
                        events.push((raw.as_str(), event));
                    } else {
                        duplicates += 1;
                    }
                }
                Err(e) => failures.push(Failure {
                    raw: raw.clone(),
                    event: None,
                    error: format!("undecodable envelope: {e}"),
                }),
            }
        }

        let (committed, failed_here, settled) = self.commit_isolating(&events).await?;
        if settled {
            self.unsettled
                .deleted(&mut self.conn, ctx.counters.keys())
                .await;
        }
        let failed_to_store = failed_here.len();
        failures.extend(failed_here);
        let failed = failures.len();
        if !failures.is_empty() {
            self.divert(failures).await?;
        }

        let mut inserted = 0;
        let last = committed.len().saturating_sub(1);
        let mut acked = false;
        for (i, (batch, new)) in committed.iter().enumerate() {
            inserted += new.len();
            let ips: Vec<Option<String>> = new.iter().map(|e| e.ip_text()).collect();
            let counted: Vec<Counted> = new
                .iter()
                .zip(&ips)
                .map(|(e, ip)| Counted::of(e, ip.as_deref()))
                .collect();
            let now = Utc::now();
            let mut per_kind = [0u64; Kind::ALL.len()];
            for e in new {
                per_kind[e.kind as usize] += 1;
                let lag = (now - e.received_at).num_milliseconds().max(0) as f64 / 1000.0;
                ctx.metrics.ingest_to_commit.observe(lag);
            }
            for (kind, n) in Kind::ALL.iter().zip(per_kind) {
                if n > 0 {
                    ctx.metrics
                        .events_processed
                        .with_label_values(&[kind.as_str()])
                        .inc_by(n);
                }
            }
            // The last apply also acknowledges the processing list.
            let ack = (i == last && ack_in_script).then_some(processing.as_str());
            let applied =
                exactly_once::apply_committed(&mut self.conn, &ctx.counters, batch, &counted, ack)
                    .await?;
            if applied != Applied::Paused {
                self.unsettled.counted(*batch);
            }
            acked |= ack.is_some();
        }
        if !acked {
            exactly_once::acknowledge(&mut self.conn, &processing).await?;
        }

        duplicates += events.len().saturating_sub(inserted + failed_to_store);
        ctx.metrics.events_duplicate.inc_by(duplicates as u64);
        ctx.metrics.batch_size.observe(items.len() as f64);
        ctx.metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            batch_size = items.len(),
            inserted,
            failed,
            "batch committed"
        );
        Ok(StepOutcome::Processed {
            items: items.len(),
            inserted,
            failed,
        })
    }

    /// Commits `events`, splitting the batch to isolate events that fail on
    /// their own. Returns the committed sub-batches (batch id, new events),
    /// the failed events, and whether a commit deleted the unsettled
    /// batches' rows (the first that succeeds carries them). Only
    /// [`Fault::Poison`] splits a batch: any other error fails the whole
    /// round as an outage.
    async fn commit_isolating<'e>(
        &self,
        events: &'e [(&str, Event)],
    ) -> Result<CommitOutcome<'e>, OutageError> {
        let mut committed = Vec::new();
        let mut failures = Vec::new();
        let mut pending: Vec<&[(&str, Event)]> = if events.is_empty() {
            vec![]
        } else {
            vec![events]
        };
        let mut settled = false;
        while let Some(part) = pending.pop() {
            let batch = Uuid::now_v7();
            let refs: Vec<&Event> = part.iter().map(|(_, e)| e).collect();
            let carried = if settled {
                &[][..]
            } else {
                self.unsettled.batches()
            };
            let err = match exactly_once::commit(&self.ctx.pool, &refs, batch, carried).await {
                Ok(new) => {
                    settled = true;
                    if !new.is_empty() {
                        committed.push((batch, new));
                    }
                    continue;
                }
                Err(e) => e,
            };
            if !Fault::of(&err).is_poison() {
                return Err(err.into());
            }
            if let [(raw, event)] = part {
                tracing::warn!(worker = %self.id, event_id = %event.event_id, error = format!("{err:#}"), "event failed to store");
                failures.push(Failure {
                    raw: (*raw).to_owned(),
                    event: Some(event.clone()),
                    error: format!("{:#}", err.root_cause()),
                });
            } else {
                let (a, b) = part.split_at(part.len() / 2);
                pending.push(b);
                pending.push(a);
            }
        }
        Ok((
            committed,
            failures,
            settled && !self.unsettled.batches().is_empty(),
        ))
    }

    /// Sends failed events to the retry set with backoff, or to the
    /// dead-letter list once they have used up their attempts.
    async fn divert(&mut self, failures: Vec<Failure>) -> anyhow::Result<()> {
        let max = self.ctx.max_attempts;
        let now = Utc::now();
        let mut moves = Vec::with_capacity(failures.len());
        for f in failures {
            let divert = match f.event {
                Some(mut event) => {
                    event.attempts += 1;
                    if event.attempts >= max {
                        self.ctx.metrics.dead_lettered.inc();
                        tracing::warn!(worker = %self.id, event_id = %event.event_id, attempts = event.attempts, error = %f.error, "event dead-lettered");
                        Divert::Dead {
                            letter: dead_letter(json!(event), &f.error, event.attempts, now),
                        }
                    } else {
                        self.ctx.metrics.retried.inc();
                        let due = now + retry_delay(event.attempts);
                        Divert::Retry {
                            due,
                            payload: event.to_envelope().context("encoding a retry")?,
                        }
                    }
                }
                None => {
                    self.ctx.metrics.dead_lettered.inc();
                    tracing::warn!(worker = %self.id, error = %f.error, "undecodable item dead-lettered");
                    Divert::Dead {
                        letter: dead_letter(json!(f.raw), &f.error, 1, now),
                    }
                }
            };
            moves.push((f.raw, divert));
        }
        self.queue.divert(&mut self.conn, &self.id, &moves).await?;
        Ok(())
    }
}

/// A dead letter as the SPEC shows it.
pub fn dead_letter(
    event: serde_json::Value,
    error: &str,
    attempts: u32,
    at: chrono::DateTime<Utc>,
) -> String {
    json!({
        "event": event,
        "error": error,
        "attempts": attempts,
        "failedAt": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
    .to_string()
}

/// Exponential backoff with jitter before retry `attempt` (1-based):
/// about 1 s, 2 s, 4 s … capped at 5 minutes.
pub fn retry_delay(attempt: u32) -> chrono::Duration {
    let base_ms = 1000u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    let capped = base_ms.min(300_000);
    let jittered = capped / 2 + rand::rng().random_range(0..=capped / 2);
    chrono::Duration::milliseconds(jittered as i64)
}

/// Capped exponential backoff for outages.
pub struct Backoff {
    first: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            current: first,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        for attempt in 1..40 {
            let d = retry_delay(attempt).num_milliseconds();
            assert!(d <= 300_000, "{attempt}: {d}");
            let base = 1000i64
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(300_000);
            assert!(d >= base / 2, "{attempt}: {d}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        assert_eq!(b.next_delay(), Duration::from_millis(350));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
