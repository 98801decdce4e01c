//! Rebuilding one ad's all-time figures, or the ranking entries of new
//! campaigns, from Postgres when their Redis keys are missing.
//!
//! Workers never create an all-time key (`ad:`, `ua:`) or a ranking entry
//! (`cz`): one batch knows only its own events. A read that finds them
//! missing rebuilds them here, exactly, while workers keep committing:
//! 1. In one REPEATABLE READ transaction, take the `counter_outbox` table
//!    lock (as `reconcile` does). It waits for every batch statement in
//!    flight and holds back new ones (each writes an outbox row) until this
//!    transaction ends, so no batch commits meanwhile; workers may still
//!    apply the counters of batches committed before.
//! 2. Read the figures from that snapshot, which starts once the lock is
//!    held (so it holds every batch the lock waited for): the rollups
//!    (`rollup_hour` for counts, `rollup_minute` for screens) and the raw
//!    clicks' IPs (raw events older than `EVENT_RETENTION` are gone, so
//!    after a rebuild the all-time unique count covers the retained clicks
//!    only), plus the ids of the outbox rows: batches the snapshot holds
//!    whose rows still stand (their update has not run, or has run and the
//!    worker's next statement has not deleted the row yet).
//! 3. Write the keys, and put those batch ids in the key's exclusion set
//!    (`ax:<ad>`, `cx:<campaign>`), one script, which the counter script
//!    consults: when those batches are applied after the keys are written,
//!    they skip the rebuilt figure that already holds them; one applied
//!    before is overwritten by figures that hold it. Batches committed
//!    later are not in the snapshot and count normally.
//! 4. Commit, releasing the lock.
//!
//! A crash after 3 and before 4 leaves keys that equal the snapshot and
//! exclusions for batches still in the outbox: the same state as a commit.
//! A crash before 3 leaves nothing. The lock is waited for at most
//! [`LOCK_WAIT`]; an ad whose rebuild cannot get it is answered from
//! Postgres without caching. An id with nothing in Postgres costs one
//! indexed lookup and creates no state. With more than [`MAX_PENDING`]
//! outbox rows (counters lagging behind an outage) nothing is cached either.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::scripts::{WRITE_AD, WRITE_CAMPAIGN};
use super::{code, field_code, Layout, ALL_TIME_TTL, HOUR};
use crate::domain::Kind;
use crate::exactly_once;
use crate::keys::fields;
use crate::redis_client::RedisConn;
use crate::store;

/// How long a rebuild waits for the outbox lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(250);
/// Outbox rows past which a rebuild does not cache (its exclusion sets
/// would grow with the backlog).
const MAX_PENDING: i64 = 1000;
/// Pending campaigns ranked per rebuild.
pub const SETTLE_PER_CALL: usize = 1000;

/// An ad's all-time figures.
#[derive(Debug, Default, Clone)]
pub(crate) struct AllTime {
    pub counts: [u64; Kind::ALL.len()],
    /// Invalid traffic (`IVT_FILTER=flag`) by kind.
    pub invalid: [u64; Kind::ALL.len()],
    pub hourly_clicks: BTreeMap<i64, u64>,
    pub uniques: u64,
}

type HourRow = (String, DateTime<Utc>, i64);

async fn ad_rollups<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    tenant: &str,
    ad: &str,
) -> anyhow::Result<Vec<HourRow>> {
    store::counters::ad_hours(ex, tenant, ad).await
}

fn figures(rows: &[HourRow], invalid: &[(String, i64)]) -> AllTime {
    let mut out = AllTime::default();
    for (kind, n) in invalid {
        if let Some(kind) = Kind::parse(kind) {
            out.invalid[kind as usize] += (*n).max(0) as u64;
        }
    }
    for (kind, bucket, n) in rows {
        let Some(kind) = Kind::parse(kind) else {
            continue;
        };
        let n = (*n).max(0) as u64;
        out.counts[kind as usize] += n;
        if kind == Kind::Click && n > 0 {
            *out.hourly_clicks
                .entry(bucket.timestamp().div_euclid(HOUR))
                .or_insert(0) += n;
        }
    }
    out
}

/// Starts the locked snapshot; `None` when the lock was not free in time.
async fn locked_snapshot(pool: &PgPool) -> anyhow::Result<Option<Transaction<'static, Postgres>>> {
    let mut tx = pool.begin().await.context("starting a rebuild")?;
    store::counters::begin_snapshot(&mut tx, Some(LOCK_WAIT)).await?;
    Ok(exactly_once::lock_outbox(&mut tx).await?.then_some(tx))
}

/// Batches committed in the snapshot whose outbox rows still stand;
/// `None` when there are more than [`MAX_PENDING`].
async fn pending_batches(
    tx: &mut Transaction<'static, Postgres>,
) -> anyhow::Result<Option<Vec<String>>> {
    let ids = exactly_once::pending_batches(tx, MAX_PENDING + 1).await?;
    if ids.len() as i64 > MAX_PENDING {
        return Ok(None);
    }
    Ok(Some(ids.into_iter().map(|b| b.to_string()).collect()))
}

/// The all-time figures of `ad`, rebuilt into Redis when that can be done
/// exactly (see the module comment).
pub(crate) async fn rebuild_ad(
    pool: &PgPool,
    conn: &mut RedisConn,
    layout: &Layout,
    tenant: &str,
    ad: &str,
) -> anyhow::Result<AllTime> {
    // An id Postgres has never seen: zeros, and no state anywhere.
    let rows = ad_rollups(pool, tenant, ad).await?;
    let invalid = store::counters::ad_invalid(pool, tenant, ad).await?;
    if rows.is_empty() && invalid.is_empty() {
        return Ok(AllTime::default());
    }
    let Some(mut tx) = locked_snapshot(pool).await? else {
        return uncached(pool, tenant, ad, &rows, &invalid).await;
    };
    let rows = ad_rollups(&mut *tx, tenant, ad).await?;
    let invalid = store::counters::ad_invalid(&mut *tx, tenant, ad).await?;
    let ips = store::counters::ad_click_ips(&mut *tx, tenant, ad).await?;
    let Some(batches) = pending_batches(&mut tx).await? else {
        drop(tx);
        return uncached(pool, tenant, ad, &rows, &invalid).await;
    };
    let mut all = figures(&rows, &invalid);
    all.uniques = ips.len() as u64;

    let mut args: Vec<String> = vec![
        ALL_TIME_TTL.as_secs().to_string(),
        exactly_once::MARKER_TTL_SECS.to_string(),
    ];
    let mut fields: Vec<(String, u64)> = Kind::ALL
        .into_iter()
        .flat_map(|k| {
            [
                (code(k).to_owned(), all.counts[k as usize]),
                (field_code(k, true).to_owned(), all.invalid[k as usize]),
            ]
        })
        .collect();
    fields.extend(
        all.hourly_clicks
            .iter()
            .map(|(h, n)| (fields::hour(code(Kind::Click), h), *n)),
    );
    args.push(fields.len().to_string());
    for (f, n) in fields {
        args.push(f);
        args.push(n.to_string());
    }
    args.extend(batches);
    let uniques_key = layout.uniques_all(ad);
    WRITE_AD
        .key(layout.ad(ad))
        .key(layout.ad_excluded(ad))
        .key(&uniques_key)
        .arg(args)
        .invoke_async::<i64>(conn)
        .await
        .context("writing rebuilt ad counters")?;
    for part in ips.chunks(1000) {
        let members: Vec<&str> = part.iter().map(String::as_str).collect();
        redis::cmd("PFADD")
            .arg(&uniques_key)
            .arg(members)
            .query_async::<i64>(conn)
            .await
            .context("writing rebuilt unique clicks")?;
    }
    // Answer what later reads of the key will answer (an estimate).
    all.uniques = redis::cmd("PFCOUNT")
        .arg(&uniques_key)
        .query_async(conn)
        .await
        .context("counting rebuilt unique clicks")?;
    tx.commit().await.context("ending the ad rebuild")?;
    Ok(all)
}

/// Figures straight from Postgres, cached nowhere.
async fn uncached(
    pool: &PgPool,
    tenant: &str,
    ad: &str,
    rows: &[HourRow],
    invalid: &[(String, i64)],
) -> anyhow::Result<AllTime> {
    let mut all = figures(rows, invalid);
    let n = store::counters::ad_click_ip_count(pool, tenant, ad).await?;
    all.uniques = n.max(0) as u64;
    Ok(all)
}

/// Ranks up to [`SETTLE_PER_CALL`] campaigns that played while absent from
/// the ranking (new ones, or ones dropped after [`ALL_TIME_TTL`] of silence),
/// from a locked snapshot as above. Returns how many were ranked; 0 when the
/// lock was busy (the next read tries again).
pub async fn settle_campaigns(
    pool: &PgPool,
    conn: &mut RedisConn,
    layout: &Layout,
    tenant: &str,
) -> anyhow::Result<usize> {
    let pending: Vec<String> = redis::cmd("ZRANGE")
        .arg(layout.campaigns_pending())
        .arg(0)
        .arg(SETTLE_PER_CALL - 1)
        .query_async(conn)
        .await
        .context("reading pending campaigns")?;
    if pending.is_empty() {
        return Ok(0);
    }
    let Some(mut tx) = locked_snapshot(pool).await? else {
        return Ok(0);
    };
    let totals = store::counters::campaign_plays(&mut *tx, tenant, &pending).await?;
    let screens = store::counters::campaign_screens(&mut *tx, tenant, &pending).await?;
    let Some(batches) = pending_batches(&mut tx).await? else {
        return Ok(0);
    };
    let totals: BTreeMap<String, i64> = totals.into_iter().collect();
    let mut per_campaign: BTreeMap<&str, Vec<(i64, &str)>> = BTreeMap::new();
    for (c, s, n) in &screens {
        per_campaign.entry(c).or_default().push((*n, s));
    }
    let script = &*WRITE_CAMPAIGN;
    let now = Utc::now().timestamp().to_string();
    for c in &pending {
        let mut args: Vec<String> = vec![
            c.clone(),
            totals.get(c).copied().unwrap_or(0).to_string(),
            now.clone(),
            ALL_TIME_TTL.as_secs().to_string(),
            exactly_once::MARKER_TTL_SECS.to_string(),
        ];
        let list = per_campaign
            .get(c.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        args.push(list.len().to_string());
        for (n, s) in list {
            args.push(n.to_string());
            args.push((*s).to_owned());
        }
        args.extend(batches.iter().cloned());
        script
            .key(layout.campaigns())
            .key(layout.campaigns_seen())
            .key(layout.campaigns_pending())
            .key(layout.screens(c))
            .key(layout.campaign_excluded(c))
            .arg(args)
            .invoke_async::<i64>(conn)
            .await
            .context("ranking a campaign")?;
    }
    tx.commit().await.context("ending the campaign rebuild")?;
    Ok(pending.len())
}
