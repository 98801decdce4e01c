//! The exactly-once commit protocol: every committed event is counted in
//! the Redis counters once, whatever crashes, and its queue item is
//! acknowledged once it is committed. This module holds every step; the
//! worker calls it, and it alone calls the `counter_outbox` statements in
//! [`crate::store::outbox`] (the outbox row itself is written by the batch
//! statement in [`crate::store::insert_batch`], through [`commit`]).
//!
//! A worker's round, for each committed sub-batch:
//!
//! 1. **Commit** ([`commit`]): one Postgres statement inserts the new raw
//!    rows, their rollups and an outbox row naming them, and deletes the
//!    outbox rows of batches this worker counted earlier (their step 4).
//!    *Crash after:* the rows and the outbox row are committed; the items
//!    are still in the worker's processing list. *Repair:* the reaper
//!    returns the items to the queue and re-processing inserts nothing
//!    (dedup); recovery (step R) applies the outbox row.
//! 2. **Apply and acknowledge** ([`apply_committed`], `lua/apply.lua` in
//!    `counters`): one script sets the batch's marker
//!    `{P}:applied:<batch>`, applies every update and deletes the
//!    processing list. (With counter slots, one script per slot, each with
//!    its own marker `{P.c<s>}:applied:<batch>` and pause flag; the `{P}`
//!    call, with the acknowledgement, runs last. A crash between two slots
//!    is repaired as a crash after step 1: recovery finds the applied
//!    slots' markers.) With `REDIS_MIN_REPLICAS`, each call is followed by
//!    `WAIT` in the same pipeline, and an unconfirmed call fails the step:
//!    the outbox row stays, so a failover that loses the update loses no
//!    outbox row. If the marker was already set it changes nothing but the
//!    list (`seen`); while reconcile's pause flag is set it changes nothing
//!    but the list (`paused`), and the row waits for recovery.
//!    *Crash after:* Redis has counted the batch and the list is gone; the
//!    outbox row stays. *Repair:* recovery claims the row, APPLY finds the
//!    marker (`seen`) and the row is deleted: counted once.
//! 3. **Remember** ([`Unsettled`]): a batch applied (or found `seen`)
//!    joins the worker's unsettled batches; a `paused` one does not.
//! 4. **Delete the row**: the worker's next batch statement (step 1 of its
//!    next batch) deletes the unsettled batches' rows; a worker with
//!    nothing to commit (its queue is empty, or it stops) deletes them alone
//!    ([`Unsettled::settle`]). *Crash before:* as after step 2.
//! 5. **Forget the marker**, once the deletion committed. A failure here is
//!    left to the marker's TTL ([`MARKER_TTL_SECS`]); nothing applies the
//!    batch again, since its row and its items are gone.
//!
//! No transaction spans steps 1 to 5: the marker alone decides, atomically
//! in Redis, whether a batch's update has run. A row is deleted only after
//! its update ran (step 4, or recovery), and a marker is forgotten only by
//! the worker whose batch it is (after an `Applied` or a `seen` answer),
//! once the row is gone and its own APPLY has returned: nothing else
//! applies that batch again. Recovery and reconcile leave the markers they
//! set or find to their TTL: a worker stalled between its commit and its
//! APPLY may still send that APPLY, which must answer `seen`.
//!
//! A round that committed nothing (every event a duplicate) acknowledges
//! its list with [`acknowledge`]. *Crash before:* the reaper requeues the
//! items; they are duplicates again.
//!
//! **R. Recovery** ([`recover`], run by the maintenance loop): claims outbox
//! rows older than a grace period (`SKIP LOCKED` skips rows a live
//! worker's statement is deleting), reads their events from Postgres, runs
//! step 2 without a list and deletes the rows applied. A `paused` answer
//! stops it; only the applied rows are deleted. *Crash after APPLY:* the
//! rows come back and their markers answer `seen`.
//!
//! **Reconcile** (`counters::reconcile`) rebuilds every counter from
//! Postgres:
//! - P1. [`pause`]: set the pause flag (with a TTL). From now on APPLY
//!   answers `paused` and outbox rows stay. *Crash after:* the flag
//!   expires and recovery applies the rows left meanwhile.
//! - P2. Under [`lock_outbox`] (EXCLUSIVE, in a REPEATABLE READ snapshot:
//!   no batch statement can commit until the end): read the rollups and
//!   [`take_outbox`] (delete every row, applied or not; the snapshot
//!   already counts their batches). *Crash after:* the transaction rolls
//!   back, nothing changed in Redis but staging keys, which expire.
//! - P3. Swap the staged keys in and set the taken batches' markers
//!   ([`marker_keys`], one script), then [`resume`]. *Crash after:* the
//!   transaction rolls back and the rows are back, but their markers say
//!   `seen`, so recovery only deletes them.
//! - P4. Commit. The markers live out their TTL.
//!
//! **Rebuild skip lists** (`counters::rebuild`, an ad's or a campaign's
//! all-time figures rebuilt on a read): under [`lock_outbox`] (its snapshot
//! starts once the lock is held, see `store::counters::begin_snapshot`),
//! the batches
//! still in the outbox ([`pending_batches`]: not applied yet, or applied
//! and not deleted yet) are written with the figures into the key's skip
//! list (`ax:`/`cx:`, TTL [`MARKER_TTL_SECS`]); APPLY skips that key for
//! those batches, which the snapshot already counts. An APPLY that runs
//! before the figures are written is overwritten by figures that hold it.
//! *Crash after:* the skip list only names batches counted in the figures;
//! it expires with them or by its TTL.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::counters::apply::{self, ApplyKeys};
use crate::counters::{Counted, Counters, Ops};
use crate::domain::Event;
use crate::queue::Keys;
use crate::redis_client::RedisConn;
use crate::store;

/// How long an applied-batch marker (and a rebuild's skip list) lives when
/// its cleanup did not happen.
pub const MARKER_TTL_SECS: u64 = 7 * 86_400;

/// What step 2 did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The updates are in Redis now.
    Applied,
    /// They were applied before (the marker exists).
    AlreadyApplied,
    /// `reconcile` is running; the updates stay in the outbox.
    Paused,
}

/// Step 1: commits `events` as batch `batch` with its outbox row, and
/// deletes the rows of `settled` (step 4 of earlier batches). Returns the
/// events that were new.
pub async fn commit<'e>(
    pool: &PgPool,
    events: &[&'e Event],
    batch: Uuid,
    settled: &[Uuid],
) -> anyhow::Result<Vec<&'e Event>> {
    store::insert_batch(pool, events, batch, settled).await
}

/// Step 2 for one committed batch. With `processing`, its acknowledgement
/// runs in the same script. The caller remembers an `Applied` or
/// `AlreadyApplied` batch in its [`Unsettled`] (step 3).
pub async fn apply_committed(
    conn: &mut RedisConn,
    counters: &Counters,
    batch: &Uuid,
    counted: &[Counted<'_>],
    processing: Option<&str>,
) -> anyhow::Result<Applied> {
    let ops = counters.ops_for(counted, Utc::now());
    let applied = apply_batch(conn, counters, batch, &ops, processing).await?;
    if applied != Applied::Paused {
        counters.applied(&ops, applied == Applied::Applied);
    }
    Ok(applied)
}

/// Steps 3 to 5 of one worker: the batches it counted whose outbox rows
/// still stand.
#[derive(Debug, Default)]
pub struct Unsettled(Vec<Uuid>);

impl Unsettled {
    /// Step 3: `batch` was applied (or found applied).
    pub fn counted(&mut self, batch: Uuid) {
        self.0.push(batch);
    }

    /// The batches whose rows the worker's next [`commit`] deletes.
    pub fn batches(&self) -> &[Uuid] {
        &self.0
    }

    /// Step 5, once a [`commit`] that carried [`Self::batches`] committed.
    pub async fn deleted(&mut self, conn: &mut RedisConn, keys: &Keys) {
        forget_markers_later(conn, keys, &self.0).await;
        self.0.clear();
    }

    /// Steps 4 and 5 alone, for a worker with nothing to commit.
    pub async fn settle(
        &mut self,
        pool: &PgPool,
        conn: &mut RedisConn,
        keys: &Keys,
    ) -> anyhow::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        store::outbox::delete(pool, &self.0).await?;
        self.deleted(conn, keys).await;
        Ok(())
    }
}

/// Step 2: applies a committed batch's updates once (guarded by its
/// marker and the pause flag) and, with `processing`, acknowledges that
/// list in the same script.
///
/// With counter slots (cluster mode) the updates are applied slot by slot,
/// each with the marker and pause flag of its own slot
/// (`{P.c<s>}:applied:<batch>`); the acknowledgement goes with the `{P}`
/// call, which always runs (last). A crash between two slots leaves some
/// markers set and the outbox row in place: recovery applies the batch
/// again, the slots already applied answer `seen`, the others apply. The
/// answer is `Paused` if any slot was paused (the row must stay), else
/// `Applied` if any slot applied, else `AlreadyApplied`.
pub async fn apply_batch(
    conn: &mut RedisConn,
    counters: &Counters,
    batch: &Uuid,
    ops: &Ops,
    processing: Option<&str>,
) -> anyhow::Result<Applied> {
    let keys = counters.keys();
    let home = keys.counter_tags().into_iter().next().unwrap_or_default();
    // The marker makes each slot's update one unit, so it must be one
    // script call: a batch is at most a few thousand events.
    let mut chunks = ops.to_tagged_chunks(usize::MAX);
    // The `{P}` call runs even with nothing to count: the marker and the
    // acknowledgement still do.
    let home_chunk = chunks
        .remove(&home)
        .and_then(|c| c.into_iter().next())
        .unwrap_or_default();
    let mut outcomes = Vec::with_capacity(chunks.len() + 1);
    for (tag, tag_chunks) in &chunks {
        for chunk in tag_chunks {
            outcomes.push(apply_in(conn, counters, tag, batch, chunk, None).await?);
        }
    }
    outcomes.push(apply_in(conn, counters, &home, batch, &home_chunk, processing).await?);
    Ok(if outcomes.contains(&Applied::Paused) {
        Applied::Paused
    } else if outcomes.contains(&Applied::Applied) {
        Applied::Applied
    } else {
        Applied::AlreadyApplied
    })
}

/// One slot's APPLY of a batch: its marker, its pause flag, its ops.
async fn apply_in(
    conn: &mut RedisConn,
    counters: &Counters,
    tag: &str,
    batch: &Uuid,
    chunk: &crate::counters::Chunk,
    processing: Option<&str>,
) -> anyhow::Result<Applied> {
    let keys = counters.keys();
    let paused = keys.paused_in(tag);
    let marker = keys.applied_in(tag, batch);
    let mode = if processing.is_some() { "am" } else { "m" };
    let apply_keys = ApplyKeys {
        processing: processing.unwrap_or(&paused),
        marker: &marker,
        paused: &paused,
    };
    let outcome = apply::run(
        conn,
        apply_keys,
        MARKER_TTL_SECS,
        mode,
        &batch.to_string(),
        chunk,
        counters.replication(),
    )
    .await?;
    Ok(match outcome.as_str() {
        "seen" => Applied::AlreadyApplied,
        "paused" => Applied::Paused,
        _ => Applied::Applied,
    })
}

/// Acknowledges a processing list whose items need no counter update
/// (nothing new was committed, or the batch was already accounted for).
pub async fn acknowledge(conn: &mut RedisConn, processing: &str) -> anyhow::Result<()> {
    redis::cmd("DEL")
        .arg(processing)
        .query_async::<()>(conn)
        .await
        .context("acknowledging the processing list")
}

/// Step R: applies the counter updates of outbox rows older than `grace`.
/// Returns the number of batches applied.
pub async fn recover(
    pool: &PgPool,
    conn: &mut RedisConn,
    counters: &Counters,
    grace: Duration,
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await.context("starting outbox recovery")?;
    let rows = store::outbox::claim_stale(&mut *tx, grace).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut applied = Vec::with_capacity(rows.len());
    for row in &rows {
        let batch = &row.batch_id;
        let events =
            store::counted_events(&mut *tx, &row.event_ids, row.tenant_ids.as_deref()).await?;
        let views: Vec<_> = events.iter().map(|e| e.view()).collect();
        let ops = counters.ops_for(&views, Utc::now());
        if apply_batch(conn, counters, batch, &ops, None).await? == Applied::Paused {
            // Reconcile is rebuilding; leave the rest for later.
            break;
        }
        applied.push(*batch);
    }
    if applied.len() < rows.len() {
        // Only some were applied: keep the others' rows by undoing the
        // claim and deleting just the applied ones.
        tx.rollback().await.context("releasing outbox rows")?;
        if !applied.is_empty() {
            store::outbox::delete(pool, &applied).await?;
        }
    } else {
        tx.commit().await.context("committing outbox recovery")?;
    }
    // The markers stay until their TTL: a worker stalled between its commit
    // and its APPLY of one of these batches must find it `seen`.
    Ok(applied.len())
}

/// How many outbox rows wait to be applied or deleted.
pub async fn outbox_depth(pool: &PgPool) -> anyhow::Result<i64> {
    store::outbox::depth(pool).await
}

/// Whether any outbox row waits (a batch committed, not yet counted or not
/// yet confirmed counted).
pub async fn outbox_pending(pool: &PgPool) -> anyhow::Result<bool> {
    store::outbox::any(pool).await
}

/// P1: pauses counter updates for reconcile `run` until [`resume`] or
/// `ttl`, in every counter slot (the `{P}` flag first).
pub async fn pause(
    conn: &mut RedisConn,
    keys: &Keys,
    run: &str,
    ttl: Duration,
) -> anyhow::Result<()> {
    for tag in keys.counter_tags() {
        redis::cmd("SET")
            .arg(keys.paused_in(&tag))
            .arg(run)
            .arg("EX")
            .arg(ttl.as_secs())
            .query_async::<()>(conn)
            .await
            .context("pausing counter updates")?;
    }
    Ok(())
}

/// P3: lets workers apply counter updates again, in every counter slot.
pub async fn resume(conn: &mut RedisConn, keys: &Keys) -> anyhow::Result<()> {
    for tag in keys.counter_tags() {
        redis::cmd("DEL")
            .arg(keys.paused_in(&tag))
            .query_async::<()>(conn)
            .await
            .context("resuming counter updates")?;
    }
    Ok(())
}

/// P2 and the rebuild: locks the outbox table in `tx`, so no batch is
/// between "committed" and "outbox row written" in the snapshot. `false`
/// when the transaction's `lock_timeout` ran out first.
pub async fn lock_outbox(tx: &mut Transaction<'static, Postgres>) -> anyhow::Result<bool> {
    store::outbox::lock(&mut **tx).await
}

/// The rebuild: batches committed in the snapshot whose outbox rows still
/// stand, at most `limit` of them.
pub async fn pending_batches(
    tx: &mut Transaction<'static, Postgres>,
    limit: i64,
) -> anyhow::Result<Vec<Uuid>> {
    store::outbox::pending(&mut **tx, limit).await
}

/// P2: takes (deletes, inside `tx`) every outbox row; the snapshot counts
/// their batches.
pub async fn take_outbox(tx: &mut Transaction<'static, Postgres>) -> anyhow::Result<Vec<Uuid>> {
    store::outbox::take_all(&mut **tx).await
}

/// P3: the markers that say `batches` are counted, in every counter slot.
pub fn marker_keys(keys: &Keys, batches: &[Uuid]) -> Vec<String> {
    keys.counter_tags()
        .iter()
        .flat_map(|tag| batches.iter().map(move |b| keys.applied_in(tag, b)))
        .collect()
}

/// Step 5: drops applied-batch markers once their outbox rows are gone
/// (one `DEL` per counter slot).
async fn forget_markers(conn: &mut RedisConn, keys: &Keys, batches: &[Uuid]) -> anyhow::Result<()> {
    if batches.is_empty() {
        return Ok(());
    }
    for tag in keys.counter_tags() {
        let markers: Vec<String> = batches.iter().map(|b| keys.applied_in(&tag, b)).collect();
        redis::cmd("DEL")
            .arg(markers)
            .query_async::<()>(conn)
            .await
            .context("removing applied-batch markers")?;
    }
    Ok(())
}

async fn forget_markers_later(conn: &mut RedisConn, keys: &Keys, batches: &[Uuid]) {
    if let Err(e) = forget_markers(conn, keys, batches).await {
        tracing::debug!(
            error = format!("{e:#}"),
            "marker cleanup deferred to its TTL"
        );
    }
}
