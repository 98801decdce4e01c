//! Group commit of ingest pushes.
//!
//! Handlers hand their envelopes to one flusher task through a channel. The
//! flusher takes everything waiting, sends it as ONE `LPUSH` with many
//! values, and answers every handler when Redis has replied. Under load,
//! thousands of requests share a round trip; when idle, a lone request is
//! flushed at once. A handler is answered `Ok` only after Redis accepted its
//! envelope, so a 202 never runs ahead of the data.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

use super::Keys;
use crate::metrics::Metrics;

/// Most envelopes sent in one `LPUSH`.
const MAX_GROUP: usize = 4096;
/// Flushes allowed in flight at once on the multiplexed connection.
const MAX_IN_FLIGHT: usize = 4;
/// A push that takes longer than this is treated as failed (Redis is down).
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, thiserror::Error)]
pub enum PushError {
    /// Redis did not take the envelopes; the caller may spool them.
    #[error("redis did not accept the push: {0}")]
    Unavailable(String),
    /// The flusher has stopped (the server is shutting down).
    #[error("the push queue is closed")]
    Closed,
}

/// A failed push hands its envelopes back, so the caller can spool them.
pub type PushFailure = (PushError, Vec<String>);

struct Pending {
    payloads: Vec<String>,
    done: oneshot::Sender<Result<(), PushFailure>>,
}

#[derive(Clone)]
pub struct Pusher {
    /// One flusher per queue shard.
    shards: Arc<[mpsc::Sender<Pending>]>,
    /// Round-robin position over the shards.
    next: Arc<AtomicUsize>,
}

impl Pusher {
    /// Starts one flusher per queue shard (`shards`: the keys of each). They
    /// stop once every `Pusher` clone is dropped and all pending pushes are
    /// answered; await the handle to wait for that.
    pub fn start(
        conn: ConnectionManager,
        shards: &[Keys],
        metrics: Arc<Metrics>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let mut senders = Vec::with_capacity(shards.len());
        let mut flushers = JoinSet::new();
        for keys in shards {
            let (tx, rx) = mpsc::channel(65_536);
            flushers.spawn(flusher(rx, conn.clone(), keys.clone(), metrics.clone()));
            senders.push(tx);
        }
        let handle = tokio::spawn(async move { while flushers.join_next().await.is_some() {} });
        let pusher = Self {
            shards: senders.into(),
            next: Arc::new(AtomicUsize::new(0)),
        };
        (pusher, handle)
    }

    /// Pushes envelopes; returns once Redis has them all (one `LPUSH`, so
    /// all or none). On failure the envelopes come back with the error.
    pub async fn push(&self, payloads: Vec<String>) -> Result<(), PushFailure> {
        if payloads.is_empty() {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        let shard = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len().max(1);
        let Some(tx) = self.shards.get(shard) else {
            return Err((PushError::Closed, payloads));
        };
        if let Err(e) = tx.send(Pending { payloads, done }).await {
            return Err((PushError::Closed, e.0.payloads));
        }
        answer
            .await
            .unwrap_or_else(|_| Err((PushError::Closed, Vec::new())))
    }
}

async fn flusher(
    mut rx: mpsc::Receiver<Pending>,
    conn: ConnectionManager,
    keys: Keys,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut in_flight = JoinSet::new();
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: what arrives meanwhile joins this group.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut group = vec![first];
        let mut count = group[0].payloads.len();
        while count < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => {
                    count += p.payloads.len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let mut conn = conn.clone();
        let keys = keys.clone();
        let metrics = metrics.clone();
        in_flight.spawn(async move {
            let started = Instant::now();
            let result = flush(&mut conn, &keys, &group, count).await;
            metrics.push_group_size.observe(count as f64);
            metrics
                .push_duration
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = &result {
                metrics.push_failures.inc();
                tracing::warn!(error = %e, events = count, "push to redis failed");
            }
            for p in group {
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err((e.clone(), p.payloads)),
                };
                let _ = p.done.send(answer);
            }
            drop(permit);
        });
        // Reap finished flushes so the set does not grow.
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

async fn flush(
    conn: &mut ConnectionManager,
    keys: &Keys,
    group: &[Pending],
    count: usize,
) -> Result<(), PushError> {
    let mut pipe = redis::pipe();
    let push = pipe.cmd("LPUSH").arg(keys.queue()).ignore();
    for p in group {
        for payload in &p.payloads {
            push.arg(payload.as_str());
        }
    }
    // A running total for the UI's ingest rate; same round trip.
    pipe.cmd("HINCRBY")
        .arg(keys.stats())
        .arg("ingested")
        .arg(count)
        .ignore();
    match tokio::time::timeout(PUSH_TIMEOUT, pipe.query_async::<()>(conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(PushError::Unavailable(e.to_string())),
        Err(_) => Err(PushError::Unavailable(format!(
            "no answer within {PUSH_TIMEOUT:?} for {count} events"
        ))),
    }
}
