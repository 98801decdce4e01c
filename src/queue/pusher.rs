//! Group commit of ingest pushes.
//!
//! Handlers hand their envelopes to one flusher task through a channel. The
//! flusher takes everything waiting, sends it as ONE `LPUSH` with many
//! values, and answers every handler when Redis has replied. Under load,
//! thousands of requests share a round trip; when idle, a lone request is
//! flushed at once. A handler is answered `Ok` only after Redis accepted its
//! envelope, so a 202 never runs ahead of the data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

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

struct Pending {
    payloads: Vec<String>,
    done: oneshot::Sender<Result<(), PushError>>,
}

#[derive(Clone)]
pub struct Pusher {
    tx: mpsc::Sender<Pending>,
}

impl Pusher {
    /// Starts the flusher. It stops once every `Pusher` clone is dropped and
    /// all pending pushes are answered; await the handle to wait for that.
    pub fn start(
        conn: ConnectionManager,
        queue_key: String,
        metrics: Arc<Metrics>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(65_536);
        let handle = tokio::spawn(flusher(rx, conn, queue_key, metrics));
        (Self { tx }, handle)
    }

    /// Pushes envelopes; returns once Redis has them all (one `LPUSH`, so
    /// all or none).
    pub async fn push(&self, payloads: Vec<String>) -> Result<(), PushError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Pending { payloads, done })
            .await
            .map_err(|_| PushError::Closed)?;
        answer.await.map_err(|_| PushError::Closed)?
    }
}

async fn flusher(
    mut rx: mpsc::Receiver<Pending>,
    conn: ConnectionManager,
    queue_key: String,
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
        let key = queue_key.clone();
        let metrics = metrics.clone();
        in_flight.spawn(async move {
            let started = Instant::now();
            let result = flush(&mut conn, &key, &group, count).await;
            metrics.push_group_size.observe(count as f64);
            metrics
                .push_duration
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = &result {
                metrics.push_failures.inc();
                tracing::warn!(error = %e, events = count, "push to redis failed");
            }
            for p in group {
                let _ = p.done.send(result.clone());
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
    key: &str,
    group: &[Pending],
    count: usize,
) -> Result<(), PushError> {
    let mut cmd = redis::cmd("LPUSH");
    cmd.arg(key);
    for p in group {
        for payload in &p.payloads {
            cmd.arg(payload.as_str());
        }
    }
    match tokio::time::timeout(PUSH_TIMEOUT, cmd.query_async::<u64>(conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(PushError::Unavailable(e.to_string())),
        Err(_) => Err(PushError::Unavailable(format!(
            "no answer within {PUSH_TIMEOUT:?} for {count} events"
        ))),
    }
}
