//! `adtrack reconcile`: rebuild every Redis counter from Postgres, safely
//! while servers run.
//!
//! How it stays exact with workers running (steps P1 to P4 of the protocol
//! in [`crate::exactly_once`]):
//! 1. Set the pause flag: from now on no worker applies counter updates; a
//!    worker that tries leaves its update in the Postgres outbox.
//! 2. In one REPEATABLE READ transaction, lock the outbox table (so no batch
//!    is between "committed" and "outbox row written"), read the rollups and
//!    raw clicks, and delete every outbox row: the snapshot already counts
//!    those batches.
//! 3. Build the counters under a staging root, then swap them in, set the
//!    applied-markers of the deleted outbox batches and clear the pause flag.
//! 4. Commit. Should the commit fail, the outbox rows come back, but their
//!    markers say they are applied, so recovery only deletes them. The
//!    markers live out their TTL: a worker that committed one of those
//!    batches and has not sent its update yet finds it applied.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::scripts::SWAP;
use super::{Layout, Mode, Ops, HOUR};
use crate::domain::Kind;
use crate::exactly_once;
use crate::queue::Keys;
use crate::redis_client::{RedisConn, Replication};
use crate::store;

/// How long the pause flag lives if reconcile dies before clearing it.
const PAUSE: Duration = Duration::from_secs(600);
/// Pending updates applied to staging at a time.
const FLUSH_AT: usize = 50_000;
/// Keys per swap script call; a swap that fits in one call is atomic.
const SWAP_CHUNK: usize = 20_000;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    pub keys_written: usize,
    pub keys_removed: usize,
    pub outbox_batches: usize,
    pub elapsed_ms: u128,
}

/// Rebuilds every counter of `keys`' prefix from Postgres, without
/// replica confirmation (`REDIS_MIN_REPLICAS=0`).
pub async fn reconcile(
    pool: &PgPool,
    conn: &mut RedisConn,
    keys: &Keys,
    now: DateTime<Utc>,
) -> anyhow::Result<ReconcileReport> {
    reconcile_confirmed(pool, conn, keys, Replication::default(), now).await
}

/// As [`reconcile`], each slot's swap confirmed by `replication` before the
/// outbox rows it counts are deleted: a failover right after the swap
/// cannot take the rebuilt counters and leave their batches forgotten.
pub async fn reconcile_confirmed(
    pool: &PgPool,
    conn: &mut RedisConn,
    keys: &Keys,
    replication: Replication,
    now: DateTime<Utc>,
) -> anyhow::Result<ReconcileReport> {
    let started = Instant::now();
    let run = Uuid::new_v4().simple().to_string();
    let live_root = keys.counters_root();
    let staging_root = keys.staging_root(&run);

    exactly_once::pause(conn, keys, &run, PAUSE).await?;

    let result = rebuild(
        pool,
        conn,
        keys,
        replication,
        &live_root,
        &staging_root,
        now,
    )
    .await;
    if result.is_err() {
        // Leave the live counters as they were and let workers resume.
        let _ = exactly_once::resume(conn, keys).await;
    }
    let mut report = result?;
    report.elapsed_ms = started.elapsed().as_millis();
    Ok(report)
}

async fn rebuild(
    pool: &PgPool,
    conn: &mut RedisConn,
    keys: &Keys,
    replication: Replication,
    live_root: &str,
    staging_root: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<ReconcileReport> {
    let staging = Layout::spread(staging_root.to_owned(), keys.prefix(), keys.counter_slots());
    let mut written: BTreeSet<String> = BTreeSet::new();
    let this_hour = now.timestamp().div_euclid(HOUR);
    // Minute precision where a minute key can still be alive, hour
    // precision where an hour key can, all-time only before that.
    let minute_cut = DateTime::from_timestamp((this_hour - 1) * HOUR, 0).unwrap_or(now);
    let hour_cut = DateTime::from_timestamp((this_hour - 168) * HOUR, 0).unwrap_or(now);

    let mut tx = pool
        .begin()
        .await
        .context("starting the reconcile transaction")?;
    // No lock_timeout: this waits for the lock.
    store::counters::begin_snapshot(&mut tx, None).await?;
    if !exactly_once::lock_outbox(&mut tx).await? {
        anyhow::bail!("the counter outbox lock was not free");
    }

    let mut ops = Ops::with_mode(staging.clone(), now, Mode::Rebuild);
    {
        let mut rows = store::counters::rolled_counts(&mut tx, minute_cut);
        while let Some(row) = rows.try_next().await? {
            let store::counters::RolledCount {
                tenant,
                kind,
                ad,
                campaign,
                screen,
                at,
                events: n,
            } = row;
            let Some(kind) = Kind::parse(&kind) else {
                continue;
            };
            let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
            ops.add_count(
                &tenant,
                kind,
                opt(&ad).as_deref(),
                opt(&campaign).as_deref(),
                opt(&screen).as_deref(),
                at,
                n,
            );
            if ops.len() >= FLUSH_AT {
                flush(conn, keys, &mut ops, &mut written, &staging, now).await?;
            }
        }
    }
    {
        let mut rows = store::counters::invalid_counts(&mut tx, minute_cut);
        while let Some(row) = rows.try_next().await? {
            let store::counters::InvalidCount {
                tenant,
                kind,
                ad,
                at,
                events: n,
            } = row;
            let Some(kind) = Kind::parse(&kind) else {
                continue;
            };
            ops.add_invalid_count(&tenant, kind, &ad, at, n);
            if ops.len() >= FLUSH_AT {
                flush(conn, keys, &mut ops, &mut written, &staging, now).await?;
            }
        }
    }
    {
        let mut rows = store::counters::click_ips(&mut tx, minute_cut, hour_cut);
        while let Some(store::counters::ClickIp { tenant, ad, ip, at }) = rows.try_next().await? {
            match at {
                Some(at) => ops.add_unique_click(&tenant, &ad, at, &ip),
                None => ops.add_unique_all_time(&tenant, &ad, &ip),
            }
            if ops.len() >= FLUSH_AT {
                flush(conn, keys, &mut ops, &mut written, &staging, now).await?;
            }
        }
    }
    flush(conn, keys, &mut ops, &mut written, &staging, now).await?;

    let outbox = exactly_once::take_outbox(&mut tx).await?;

    // Live keys the rebuild does not write are stale: remove them. Slot by
    // slot: `{P}` and each counter slot `{P.c<s>}` (SCAN names no key, so
    // in a cluster it runs on the primary that owns the slot).
    let home_tag = crate::keys::hash_tag(live_root);
    let live_suffix = &live_root[home_tag.len()..];
    let staging_suffix = &staging_root[crate::keys::hash_tag(staging_root).len()..];
    let moved = |key: &str, from: &str, to: &str| {
        let tag = crate::keys::hash_tag(key);
        let rest = key[tag.len()..]
            .strip_prefix(from)
            .unwrap_or(&key[tag.len()..]);
        format!("{tag}{to}{rest}")
    };
    let mut stale = Vec::new();
    for tag in keys.counter_tags() {
        let pattern = format!("{tag}{live_suffix}*");
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, batch): (u64, Vec<String>) = conn
                .on_owner_of(&tag, &scan)
                .await
                .context("listing live counter keys")?;
            for key in batch {
                if !written.contains(&moved(&key, live_suffix, staging_suffix)) {
                    stale.push(key);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }

    let renames: Vec<(String, String)> = written
        .iter()
        .map(|k| (k.clone(), moved(k, staging_suffix, live_suffix)))
        .collect();
    let markers = exactly_once::marker_keys(keys, &outbox);
    // One swap per counter slot: a script's keys must share a slot.
    for tag in keys.counter_tags() {
        let mine = |k: &String| crate::keys::hash_tag(k) == tag;
        let tag_stale: Vec<String> = stale.iter().filter(|k| mine(k)).cloned().collect();
        let tag_renames: Vec<(String, String)> =
            renames.iter().filter(|(k, _)| mine(k)).cloned().collect();
        let tag_markers: Vec<String> = markers.iter().filter(|k| mine(k)).cloned().collect();
        swap(
            conn,
            &keys.paused_in(&tag),
            &tag_stale,
            &tag_renames,
            &tag_markers,
            replication,
        )
        .await?;
    }
    exactly_once::resume(conn, keys).await?;

    // The taken batches' markers live out their TTL (see `exactly_once`).
    tx.commit().await.context("committing the reconcile")?;

    Ok(ReconcileReport {
        keys_written: renames.len(),
        keys_removed: stale.len(),
        outbox_batches: outbox.len(),
        elapsed_ms: 0,
    })
}

async fn flush(
    conn: &mut RedisConn,
    keys: &Keys,
    ops: &mut Ops,
    written: &mut BTreeSet<String>,
    staging: &Layout,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    written.extend(ops.keys());
    super::apply::write_staged(conn, keys, ops, 10_000).await?;
    *ops = Ops::with_mode(staging.clone(), now, Mode::Rebuild);
    Ok(())
}

/// `anchor` is a key of the prefix, so a call with nothing else to move is
/// still routed to its Cluster slot; every key moved is declared too.
async fn swap(
    conn: &mut RedisConn,
    anchor: &str,
    stale: &[String],
    renames: &[(String, String)],
    markers: &[String],
    replication: Replication,
) -> anyhow::Result<()> {
    let total = stale.len() + renames.len() * 2 + markers.len();
    let chunks = total.div_ceil(SWAP_CHUNK).max(1);
    let per = |len: usize| len.div_ceil(chunks).max(1);
    let mut stale_parts = stale.chunks(per(stale.len()));
    let mut rename_parts = renames.chunks(per(renames.len()));
    let mut marker_parts = markers.chunks(per(markers.len()));
    for _ in 0..chunks {
        let del = stale_parts.next().unwrap_or(&[]);
        let ren = rename_parts.next().unwrap_or(&[]);
        let mk = marker_parts.next().unwrap_or(&[]);
        let mut call = SWAP.prepare_invoke();
        call.key(anchor).key(del);
        for (from, to) in ren {
            call.key(from).key(to);
        }
        call.key(mk)
            .arg(del.len())
            .arg(ren.len())
            .arg(exactly_once::MARKER_TTL_SECS);
        call.invoke_async::<i64>(conn)
            .await
            .context("swapping the rebuilt counters in")?;
    }
    if replication.is_on() {
        // The anchor is in the swapped slot: WAIT runs on its primary, on
        // the connection that sent the swap.
        let ms = u64::try_from(replication.timeout.as_millis()).unwrap_or(u64::MAX);
        let mut wait = redis::cmd("WAIT");
        wait.arg(replication.replicas).arg(ms.max(1));
        let confirmed: i64 = conn
            .on_owner_of(anchor, &wait)
            .await
            .context("confirming the swap with the replicas")?;
        replication.check(confirmed)?;
    }
    Ok(())
}
