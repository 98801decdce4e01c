//! Group commit of ingest pushes, one group per HTTP worker thread.
//!
//! Every actix worker thread has its own [`LocalPusher`] (made by the app
//! factory, which runs on that thread) with its own Redis connection. A
//! handler adds its envelopes to the thread's pending group and waits; one
//! flush task per thread sends the whole group as ONE `LPUSH`, then answers
//! every handler in it. While a push is in flight, the requests that arrive
//! form the next group, so the group grows with the load: under `wrk`
//! hundreds of requests share a round trip, and a request on an idle
//! thread is sent at once. Under load a small group also waits up to
//! [`LINGER`] for more (see there). Handler, flush task and the
//! connection's driver run on the same thread, so no request crosses a
//! thread on its way to Redis.
//!
//! A handler is answered `Ok` only after Redis replied to the push that held
//! its envelopes, so a 202 never runs ahead of the data.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::redis_client::{RedisConn, RedisTarget, Replication};
use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::{oneshot, OnceCell};

use super::Keys;
use crate::domain::Kind;
use crate::fault::{Cause, Dependency, Outage};
use crate::keys::fields;
use crate::metrics::Metrics;

/// Most envelopes sent in one `LPUSH`; more wait for the next one.
const MAX_GROUP: usize = 4096;
/// Under load (the group just sent held more than one request), the next
/// group waits up to [`LINGER`] for more requests, unless [`LINGER_GROUP`]
/// envelopes are already waiting (one batch request may bring them all).
/// Each push costs Redis and this thread a round trip's system calls and
/// wake-ups whatever its size, and many clients that each send one request
/// at a time (`hey -c 10000` against a busy server) form groups of a few
/// requests only: a group of 8 cost Redis about 55 µs, 7 µs per event.
/// When the group sent last held one request (or none was sent yet), the
/// next is sent at once.
const LINGER: Duration = Duration::from_millis(1);
const LINGER_GROUP: usize = 64;
/// A push that takes longer than this is treated as failed (Redis is down).
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, thiserror::Error)]
pub enum PushError {
    /// Redis did not take the envelopes (always an outage: every Redis
    /// failure is); the caller may spool them.
    #[error("redis did not accept the push ({}): {reason}", outage.cause.as_str())]
    Unavailable { outage: Outage, reason: String },
    /// The flush task has stopped (the server is shutting down).
    #[error("the push queue is closed")]
    Closed,
}

impl PushError {
    fn redis(e: anyhow::Error, doing: &str) -> Self {
        let reason = format!("{doing}: {e:#}");
        // Whatever the chain says, it was Redis that failed.
        let cause = Outage::of(&e).cause;
        let outage = Outage::new(Dependency::Redis, cause);
        Self::Unavailable { outage, reason }
    }

    fn timeout(reason: String) -> Self {
        Self::Unavailable {
            outage: Outage::new(Dependency::Redis, Cause::Timeout),
            reason,
        }
    }
}

/// A failed push hands its envelopes back, so the caller can spool them.
pub type PushFailure = (PushError, Vec<String>);

struct Pending {
    payloads: Vec<String>,
    done: oneshot::Sender<Result<(), PushFailure>>,
}

/// What every thread's pusher shares: where to connect, the queue shards,
/// the metrics. Cheap to clone; [`Pusher::local`] makes a thread's pusher.
#[derive(Clone)]
pub struct Pusher {
    shared: Arc<Shared>,
}

struct Shared {
    target: RedisTarget,
    /// Replicas that must confirm a group before it is answered.
    replication: Replication,
    /// The keys of each queue shard; groups go round-robin over them.
    shards: Vec<Keys>,
    next: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Pusher {
    pub fn new(
        target: RedisTarget,
        replication: Replication,
        shards: &[Keys],
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            shared: Arc::new(Shared {
                target,
                replication,
                shards: shards.to_vec(),
                next: AtomicUsize::new(0),
                metrics,
            }),
        })
    }

    /// The pusher of the calling thread. Its flush task and connection live
    /// on this thread, which must run a tokio `LocalSet` (actix workers do).
    pub fn local(&self) -> LocalPusher {
        let counters = self.shared.metrics.events_enqueued.shard();
        LocalPusher {
            inner: Rc::new(Local {
                shared: self.shared.clone(),
                pending: RefCell::new(Vec::new()),
                waiting: Cell::new(0),
                flushing: Cell::new(false),
                filled: tokio::sync::Notify::new(),
                conn: OnceCell::new(),
                enqueued: Kind::ALL
                    .iter()
                    .map(|k| counters.with_label_values(&[k.as_str()]))
                    .collect(),
                enqueued_by_name: counters,
            }),
        }
    }
}

/// One HTTP worker thread's pusher (not `Send`: it stays on its thread).
#[derive(Clone)]
pub struct LocalPusher {
    inner: Rc<Local>,
}

struct Local {
    shared: Arc<Shared>,
    pending: RefCell<Vec<Pending>>,
    /// The envelopes in `pending`.
    waiting: Cell<usize>,
    /// Whether the flush task is running; it stops when nothing is pending.
    flushing: Cell<bool>,
    /// Wakes a lingering flush task once [`LINGER_GROUP`] envelopes wait.
    filled: tokio::sync::Notify,
    /// Connected on the first push, on this thread, so its driver runs here.
    conn: OnceCell<RedisConn>,
    /// This thread's shard of `events_enqueued_total`, each kind's counter
    /// at `kind as usize`, so that counting an event looks no label up.
    enqueued: Vec<IntCounter>,
    enqueued_by_name: IntCounterVec,
}

impl LocalPusher {
    /// Counts `n` events of `kind` queued by this thread (in Redis or the
    /// spool) in `events_enqueued_total`.
    pub fn count_enqueued(&self, kind: Kind, n: u64) {
        match self.inner.enqueued.get(kind as usize) {
            Some(counter) => counter.inc_by(n),
            None => self
                .inner
                .enqueued_by_name
                .with_label_values(&[kind.as_str()])
                .inc_by(n),
        }
    }

    /// Pushes envelopes; returns once Redis has them all (one `LPUSH`, so
    /// all or none). On failure the envelopes come back with the error.
    pub async fn push(&self, payloads: Vec<String>) -> Result<(), PushFailure> {
        if payloads.is_empty() {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        let filled = self.inner.added(payloads.len());
        self.inner
            .pending
            .borrow_mut()
            .push(Pending { payloads, done });
        if filled {
            // Only a flush task lingering now is woken: no permit is kept
            // to cut a later linger short.
            self.inner.filled.notify_waiters();
        }
        if !self.inner.flushing.replace(true) {
            tokio::task::spawn_local(flush_loop(self.inner.clone()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err((PushError::Closed, Vec::new())))
    }
}

/// Sends what is pending, one group at a time, until nothing is.
async fn flush_loop(local: Rc<Local>) {
    // Requests in the group sent last (none yet).
    let mut last = 0;
    loop {
        // Let the requests that are ready on this thread now join the group.
        tokio::task::yield_now().await;
        if lingers(last, local.waiting.get()) {
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = local.filled.notified() => {}
            }
        }
        let group = take_group(&mut local.pending.borrow_mut());
        if group.is_empty() {
            local.flushing.set(false);
            return;
        }
        last = group.len();
        let count: usize = group.iter().map(|p| p.payloads.len()).sum();
        local.taken(count);
        let metrics = &local.shared.metrics;
        let started = Instant::now();
        let result = match local.connection().await {
            Ok(mut conn) => {
                let shard = local.shared.next.fetch_add(1, Ordering::Relaxed)
                    % local.shared.shards.len().max(1);
                match local.shared.shards.get(shard) {
                    Some(keys) => {
                        flush(&mut conn, keys, local.shared.replication, &group, count).await
                    }
                    None => Err(PushError::Closed),
                }
            }
            Err(e) => Err(e),
        };
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
    }
}

/// Whether the next group waits for more requests: only under load (the
/// group sent last held more than one request) and while fewer than
/// [`LINGER_GROUP`] envelopes wait.
fn lingers(last_group: usize, waiting: usize) -> bool {
    last_group > 1 && waiting < LINGER_GROUP
}

/// The oldest pending pushes, up to [`MAX_GROUP`] envelopes (at least one
/// push, whatever its size).
fn take_group(pending: &mut Vec<Pending>) -> Vec<Pending> {
    let mut count = 0;
    let mut n = 0;
    for p in pending.iter() {
        if n > 0 && count + p.payloads.len() > MAX_GROUP {
            break;
        }
        count += p.payloads.len();
        n += 1;
    }
    if n == pending.len() {
        std::mem::take(pending)
    } else {
        pending.drain(..n).collect()
    }
}

impl Local {
    /// Counts `n` more waiting envelopes; `true` when they make the
    /// waiting ones reach [`LINGER_GROUP`] (and a lingering group can go).
    fn added(&self, n: usize) -> bool {
        let before = self.waiting.get();
        let now = before.saturating_add(n);
        self.waiting.set(now);
        before < LINGER_GROUP && now >= LINGER_GROUP
    }

    /// `n` waiting envelopes went into a group.
    fn taken(&self, n: usize) {
        self.waiting.set(self.waiting.get().saturating_sub(n));
    }

    async fn connection(&self) -> Result<RedisConn, PushError> {
        let connect = self.conn.get_or_try_init(|| async {
            self.shared
                .target
                .connect(PUSH_TIMEOUT)
                .await
                .map_err(|e| PushError::redis(e, "connecting to redis"))
        });
        match tokio::time::timeout(PUSH_TIMEOUT, connect).await {
            Ok(Ok(conn)) => Ok(conn.clone()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PushError::timeout(format!(
                "no connection to redis within {PUSH_TIMEOUT:?}"
            ))),
        }
    }
}

/// Sends one group as one `LPUSH` (followed by `WAIT` with
/// `REDIS_MIN_REPLICAS`): `Ok` once Redis, and the replicas asked for,
/// have it.
async fn flush(
    conn: &mut RedisConn,
    keys: &Keys,
    replication: Replication,
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
    // A running total for the UI's ingest rate: in the same round trip on
    // one node; on a cluster always sent once the push is confirmed. Even
    // for shard 0, whose queue shares the total's slot: while that slot
    // migrates, redis-rs sends ASKING once per pipeline, so the second
    // command of the pipeline gets MOVED and the whole pipeline, LPUSH
    // included, is sent again (the group pushed twice or more).
    let total_apart = conn.is_cluster();
    if !total_apart {
        count_ingested(&mut pipe, keys, count);
    }
    match tokio::time::timeout(PUSH_TIMEOUT, replication.query(conn, &mut pipe)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(PushError::redis(e, "pushing a group")),
        Err(_) => {
            return Err(PushError::timeout(format!(
                "no answer within {PUSH_TIMEOUT:?} for {count} events"
            )))
        }
    }
    if total_apart {
        let mut pipe = redis::pipe();
        count_ingested(&mut pipe, keys, count);
        let sent = tokio::time::timeout(PUSH_TIMEOUT, pipe.query_async::<()>(conn)).await;
        if !matches!(sent, Ok(Ok(()))) {
            // The events are queued; only the UI's rate misses them.
            tracing::debug!(events = count, "the ingested total was not updated");
        }
    }
    Ok(())
}

fn count_ingested(pipe: &mut redis::Pipeline, keys: &Keys, count: usize) {
    pipe.cmd("HINCRBY")
        .arg(keys.stats())
        .arg(fields::INGESTED)
        .arg(count)
        .ignore();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(n: usize) -> Pending {
        Pending {
            payloads: vec![String::new(); n],
            done: oneshot::channel().0,
        }
    }

    #[test]
    fn a_group_stops_at_the_limit_but_always_takes_one_push() {
        let mut queue = vec![pending(4000), pending(200), pending(10)];
        let first = take_group(&mut queue);
        assert_eq!(first.len(), 1);
        assert_eq!(queue.len(), 2);
        let second = take_group(&mut queue);
        assert_eq!(second.len(), 2);
        assert!(queue.is_empty());

        let mut huge = vec![pending(MAX_GROUP + 5)];
        assert_eq!(take_group(&mut huge).len(), 1);
    }

    #[test]
    fn a_group_lingers_only_under_load_and_until_it_is_big_enough() {
        // The first group, and one after a lone request, go at once.
        assert!(!lingers(0, 1));
        assert!(!lingers(1, 1));
        // After a group of several, a small group waits for more.
        assert!(lingers(2, 0));
        assert!(lingers(8, LINGER_GROUP - 1));
        assert!(!lingers(8, LINGER_GROUP));
        assert!(!lingers(MAX_GROUP, MAX_GROUP));
    }

    #[test]
    fn waiting_envelopes_not_requests_end_a_linger() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let target = RedisTarget::new("redis://127.0.0.1:1", false).unwrap();
        let pusher = Pusher::new(target, Replication::default(), &[], metrics).unwrap();
        let local = pusher.local().inner;
        // One request of a single event: a group under load still waits.
        assert!(!local.added(1));
        assert!(lingers(8, local.waiting.get()));
        // A batch that brings the rest ends the linger at once, and only
        // the push that crosses the mark wakes the flush task.
        assert!(local.added(LINGER_GROUP - 1));
        assert!(!lingers(8, local.waiting.get()));
        assert!(!local.added(5));
        local.taken(LINGER_GROUP + 5);
        assert_eq!(local.waiting.get(), 0);
        // One request of a thousand events is a group by itself.
        assert!(local.added(1000));
        assert!(!lingers(8, local.waiting.get()));
    }
}
