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
//!    rows, their rollups and an outbox row naming them.
//!    *Crash after:* the rows and the outbox row are committed; the items
//!    are still in the worker's processing list. *Repair:* the reaper
//!    returns the items to the queue and re-processing inserts nothing
//!    (dedup); recovery (step R) applies the outbox row.
//! 2. **Claim** ([`apply_committed`]): in a transaction, delete the batch's
//!    outbox row (it stays locked until step 4). No row means recovery or
//!    reconcile took it: the list is only acknowledged (step 3's `DEL`).
//!    *Crash after:* the transaction rolls back and the row is back: as
//!    after step 1.
//! 3. **Apply and acknowledge** (`lua/apply.lua` in `counters`): one script
//!    sets the batch's marker `{P}:applied:<batch>`, applies every update
//!    and deletes the processing list. (With counter slots, one script per
//!    slot, each with its own marker `{P.c<s>}:applied:<batch>` and pause
//!    flag; the `{P}` call, with the acknowledgement, runs last. A crash
//!    between two slots is repaired as a crash after step 2: the claim
//!    rolls back, and recovery finds the applied slots' markers.) With
//!    `REDIS_MIN_REPLICAS`, each call is followed by `WAIT` in the same
//!    pipeline, and an unconfirmed call fails the step: the claim rolls
//!    back, so a failover that loses the update loses no outbox row. If the marker was already set it
//!    changes nothing but the list (`seen`); while reconcile's pause flag
//!    is set it changes nothing but the list (`paused`) and the claim is
//!    rolled back, so the row waits for recovery.
//!    *Crash after:* Redis has counted the batch and the list is gone, but
//!    the claim rolls back. *Repair:* recovery claims the row, APPLY finds
//!    the marker (`seen`) and the row is deleted: counted once.
//! 4. **Commit the claim**: the outbox row is gone for good.
//!    *Crash after:* the marker stays. *Repair:* its TTL
//!    ([`MARKER_TTL_SECS`]); nothing applies the batch again, since its
//!    row and its items are gone.
//! 5. **Forget the marker**. A failure here is left to the TTL too.
//!
//! A round that committed nothing (every event a duplicate) acknowledges
//! its list with [`acknowledge`]. *Crash before:* the reaper requeues the
//! items; they are duplicates again.
//!
//! **R. Recovery** ([`recover`], run by the maintenance loop): claims outbox
//! rows older than a grace period (so it never races step 2 of a live
//! worker; `SKIP LOCKED` skips rows being claimed), reads their events from
//! Postgres and runs step 3 without a list, then steps 4 and 5. A `paused`
//! answer stops it; only the applied rows are deleted. *Crash after
//! APPLY:* the rows come back, their markers answer `seen`, the next
//! recovery deletes them.
//!
//! **Reconcile** (`counters::reconcile`) rebuilds every counter from
//! Postgres:
//! - P1. [`pause`]: set the pause flag (with a TTL). From now on APPLY
//!   answers `paused` and outbox rows stay. *Crash after:* the flag
//!   expires and recovery applies the rows left meanwhile.
//! - P2. Under [`lock_outbox`] (EXCLUSIVE, in a REPEATABLE READ snapshot):
//!   read the rollups and [`take_outbox`] (delete every row; the snapshot
//!   already counts their batches). *Crash after:* the transaction rolls
//!   back, nothing changed in Redis but staging keys, which expire.
//! - P3. Swap the staged keys in and set the taken batches' markers
//!   ([`marker_keys`], one script), then [`resume`]. *Crash after:* the
//!   transaction rolls back and the rows are back, but their markers say
//!   `seen`, so recovery only deletes them.
//! - P4. Commit; forget the markers ([`forget_markers`]).
//!
//! **Rebuild skip lists** (`counters::rebuild`, an ad's or a campaign's
//! all-time figures rebuilt on a read): under [`lock_outbox`], the batches
//! still in the outbox ([`pending_batches`]) are written with the figures
//! into the key's skip list (`ax:`/`cx:`, TTL [`MARKER_TTL_SECS`]); APPLY
//! skips that key for those batches, which the snapshot already counts.
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

/// What step 3 did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The updates are in Redis now.
    Applied,
    /// They were applied before (the marker exists).
    AlreadyApplied,
    /// `reconcile` is running; the updates stay in the outbox.
    Paused,
}

/// Step 1: commits `events` as batch `batch` with its outbox row. Returns
/// the keys that were new.
pub async fn commit(
    pool: &PgPool,
    events: &[&Event],
    batch: Uuid,
) -> anyhow::Result<Vec<store::EventKey>> {
    store::insert_batch(pool, events, batch).await
}

/// Steps 2 to 5 for one committed batch. With `processing`, its
/// acknowledgement runs in step 3 (or alone, when the row is gone).
pub async fn apply_committed(
    pool: &PgPool,
    conn: &mut RedisConn,
    counters: &Counters,
    batch: &Uuid,
    counted: &[Counted<'_>],
    processing: Option<&str>,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await.context("starting the counter claim")?;
    let claimed = store::outbox::claim(&mut *tx, batch).await?;
    if claimed == 0 {
        // Recovery or reconcile already accounted for this batch.
        drop(tx);
        if let Some(p) = processing {
            acknowledge(conn, p).await?;
        }
        return Ok(());
    }
    let ops = counters.ops_for(counted, Utc::now());
    match apply_batch(conn, counters, batch, &ops, processing).await? {
        Applied::Paused => {
            // Reconcile is running; recovery applies this row later.
            tx.rollback().await.context("releasing the counter claim")?;
        }
        Applied::Applied | Applied::AlreadyApplied => {
            tx.commit().await.context("committing the counter claim")?;
            forget_markers_later(conn, counters.keys(), &[*batch]).await;
        }
    }
    Ok(())
}

/// Step 3: applies a committed batch's updates once (guarded by its
/// marker and the pause flag) and, with `processing`, acknowledges that
/// list in the same script.
///
/// With counter slots (cluster mode) the updates are applied slot by slot,
/// each with the marker and pause flag of its own slot
/// (`{P.c<s>}:applied:<batch>`); the acknowledgement goes with the `{P}`
/// call, which always runs (last). A crash between two slots leaves some
/// markers set and the claim rolled back: recovery applies the batch again,
/// the slots already applied answer `seen`, the others apply. The answer is
/// `Paused` if any slot was paused (the claim must roll back), else
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
    forget_markers_later(conn, counters.keys(), &applied).await;
    Ok(applied.len())
}

/// How many outbox rows wait to be applied.
pub async fn outbox_depth(pool: &PgPool) -> anyhow::Result<i64> {
    store::outbox::depth(pool).await
}

/// Whether any outbox row waits (a batch committed, not yet counted).
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

/// The rebuild: batches committed in the snapshot whose counter update has
/// not run, at most `limit` of them.
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

/// Step 5 and P4: drops applied-batch markers once their outbox rows are
/// gone (one `DEL` per counter slot).
pub async fn forget_markers(
    conn: &mut RedisConn,
    keys: &Keys,
    batches: &[Uuid],
) -> anyhow::Result<()> {
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

/// [`forget_markers`], where a failure only means the TTL removes them.
async fn forget_markers_later(conn: &mut RedisConn, keys: &Keys, batches: &[Uuid]) {
    if let Err(e) = forget_markers(conn, keys, batches).await {
        tracing::debug!(
            error = format!("{e:#}"),
            "marker cleanup deferred to its TTL"
        );
    }
}
