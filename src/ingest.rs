//! Queuing accepted events: on Redis when it takes them, else in the synced
//! disk spool. The HTTP handlers parse and limit a request, then hand its
//! events to [`Enqueue::events`], which answers only once Redis or the spool
//! holds every one of them (SPEC invariants 1 and 6).
//!
//! The failover policy lives here: the first push Redis refuses switches
//! ingestion to the spool (`RedisDown`) until the spool's replayer sees
//! Redis answer again, and the refused envelopes go to the spool at once.
//! A full spool or a failed spool write refuses the events (the caller
//! answers 503); nothing accepted is ever dropped.

use crate::domain::Event;
use crate::metrics::Metrics;
use crate::queue::{LocalPusher, PushError};
use crate::spool::{FailureCause, RedisDown, Spool, SpoolError};

/// Why events were not queued; the caller may try again later in every case.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The pusher or the spool has stopped: the server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Redis did not take the events and the spool is at `SPOOL_MAX_BYTES`.
    #[error("redis is unavailable and the spool is full")]
    SpoolFull,
    /// Redis did not take the events and the spool write failed (and was
    /// rolled back: nothing of it will be replayed).
    #[error("redis is unavailable and the spool could not be written ({cause})")]
    SpoolWrite { cause: FailureCause },
    /// An event could not be serialized (a bug, not the client's fault).
    #[error("encoding an event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What queuing needs: the calling thread's pusher, the spool, the shared
/// Redis-down flag and the metrics.
pub struct Enqueue<'a> {
    pub pusher: &'a LocalPusher,
    pub spool: &'a Spool,
    pub redis_down: &'a RedisDown,
    pub metrics: &'a Metrics,
}

impl Enqueue<'_> {
    /// Queues `events` in Redis, or in the spool while Redis is down.
    pub async fn events(&self, events: &[Event]) -> Result<(), EnqueueError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut payloads = Vec::with_capacity(events.len());
        for e in events {
            payloads.push(e.to_envelope()?);
        }
        if !self.redis_down.is_down() {
            match self.pusher.push(payloads).await {
                Ok(()) => {
                    self.count_enqueued(events);
                    return Ok(());
                }
                Err((PushError::Unavailable { outage, reason }, back)) => {
                    // Send the next requests straight to the spool until the
                    // replayer sees Redis answer again.
                    self.redis_down.set(true);
                    self.metrics.outage("ingest", outage);
                    tracing::warn!(
                        cause = outage.cause.as_str(),
                        reason,
                        events = back.len(),
                        "redis refused a push; spooling"
                    );
                    payloads = back;
                }
                Err((PushError::Closed, _)) => return Err(EnqueueError::ShuttingDown),
            }
        }
        // Boxed: the spool is the rare path, and keeping its future out of
        // line keeps every request's future small.
        match Box::pin(self.spool.append(payloads)).await {
            Ok(()) => {
                self.metrics.events_spooled.inc_by(events.len() as u64);
                self.count_enqueued(events);
                Ok(())
            }
            Err(SpoolError::Full(bytes)) => {
                self.metrics.spool_full.inc();
                tracing::error!(bytes, "the spool is full; refusing events");
                Err(EnqueueError::SpoolFull)
            }
            Err(SpoolError::Closed) => Err(EnqueueError::ShuttingDown),
            Err(SpoolError::Write { cause, message }) => {
                // The group was rolled back: nothing of it will be replayed,
                // so the client's retry is the only copy.
                self.metrics
                    .spool_append_failures
                    .with_label_values(&[cause.as_str()])
                    .inc();
                tracing::error!(
                    cause = cause.as_str(),
                    error = message,
                    events = events.len(),
                    "spooling failed; refusing events"
                );
                Err(EnqueueError::SpoolWrite { cause })
            }
        }
    }

    fn count_enqueued(&self, events: &[Event]) {
        for e in events {
            self.pusher.count_enqueued(e.kind, 1);
        }
    }
}
