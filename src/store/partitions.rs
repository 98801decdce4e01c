//! Partitions of the raw `events` table: one per UTC day, created ahead of
//! time by maintenance only (today and `PARTITIONS_AHEAD` days), and one
//! default partition for every time without a day partition (late events,
//! days retention dropped). Input never creates a table, so the count grows
//! by one a day whatever clients send (bound: one per day kept, plus the
//! default). `EVENT_RETENTION` drops old days whole and deletes old rows
//! from the default partition in chunks. Rollups are never touched, so
//! aggregates and analytics keep every day.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::PgQueryResult;
use sqlx::PgPool;

/// Expired keys and default-partition rows are deleted in chunks this size, so one purge never
/// holds a long transaction.
const PURGE_CHUNK: i64 = 10_000;

/// Session-level advisory lock: one retention pass at a time across every
/// process sharing the database.
const RETENTION_LOCK: i64 = 0x6164_7472_6574_6e00; // "adtretn\0"

/// Creates the partitions for `days` that do not exist yet; returns how many
/// it created.
pub async fn ensure_partitions(pool: &PgPool, days: &[NaiveDate]) -> anyhow::Result<i32> {
    let created = sqlx::query_scalar!(
        r#"SELECT ensure_event_partitions($1::date[]) AS "created!""#,
        days,
    )
    .fetch_one(pool)
    .await
    .context("creating event partitions")?;
    if created > 0 {
        tracing::info!(created, first_day = %days[0], "created event partitions");
    }
    Ok(created)
}

/// How many partitions `events` has, the default one included.
pub async fn count_partitions(pool: &PgPool) -> anyhow::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM pg_inherits WHERE inhparent = 'events'::regclass"#
    )
    .fetch_one(pool)
    .await
    .context("counting event partitions")
}

/// The day partitions of `events`, oldest first.
pub async fn list_partitions(pool: &PgPool) -> anyhow::Result<Vec<(String, NaiveDate)>> {
    let names = sqlx::query_scalar!(
        r#"SELECT c.relname::text AS "name!" FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'events'::regclass
           ORDER BY 1"#
    )
    .fetch_all(pool)
    .await
    .context("listing event partitions")?;
    Ok(names
        .into_iter()
        .filter_map(|name| {
            let day = NaiveDate::parse_from_str(name.strip_prefix("events_p")?, "%Y%m%d").ok()?;
            Some((name, day))
        })
        .collect())
}

/// What one retention pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub partitions_dropped: u64,
    /// Expired rows deleted from the default partition.
    pub default_rows_purged: u64,
    pub keys_purged: u64,
}

/// The oldest event time still kept under `retention` at `now`: the start
/// of the oldest UTC day that is not wholly older than the retention.
pub fn retention_cutoff(now: DateTime<Utc>, retention: Duration) -> DateTime<Utc> {
    let keep = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let edge = now
        .checked_sub_signed(keep)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    edge.date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or(edge)
}

/// Drops the day partitions that end at or before the retention cutoff and
/// purges their idempotency keys. Returns `None` when another process holds
/// the retention lock.
pub async fn prune(
    pool: &PgPool,
    now: DateTime<Utc>,
    retention: Duration,
) -> anyhow::Result<Option<Pruned>> {
    let cutoff = retention_cutoff(now, retention);
    let mut conn = pool.acquire().await.context("connecting for retention")?;
    let locked = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_lock($1) AS "locked!""#,
        RETENTION_LOCK
    )
    .fetch_one(&mut *conn)
    .await
    .context("taking the retention lock")?;
    if !locked {
        return Ok(None);
    }
    let result = prune_locked(pool, cutoff).await;
    // Whether it was still held does not matter here: the lock is gone.
    let unlocked = sqlx::query_scalar!("SELECT pg_advisory_unlock($1)", RETENTION_LOCK)
        .fetch_one(&mut *conn)
        .await
        .context("releasing the retention lock");
    let pruned = result?;
    unlocked?;
    Ok(Some(pruned))
}

async fn prune_locked(pool: &PgPool, cutoff: DateTime<Utc>) -> anyhow::Result<Pruned> {
    let mut pruned = Pruned::default();
    let cutoff_day = cutoff.date_naive();
    for (name, day) in list_partitions(pool).await? {
        if day >= cutoff_day {
            break;
        }
        // The one statement not checked at compile time: a table name cannot
        // be a bind parameter, so the SQL is built at run time. The name
        // comes from the catalogue and matched events_pYYYYMMDD.
        sqlx::query(&format!("DROP TABLE IF EXISTS \"{name}\""))
            .execute(pool)
            .await
            .with_context(|| format!("dropping partition {name}"))?;
        pruned.partitions_dropped += 1;
        tracing::info!(partition = %name, %day, "dropped an expired event partition");
    }
    pruned.default_rows_purged = purge_in_chunks(|| async move {
        sqlx::query!(
            "DELETE FROM events_default WHERE ctid IN (
                 SELECT ctid FROM events_default WHERE event_time < $1 LIMIT $2)",
            cutoff,
            PURGE_CHUNK,
        )
        .execute(pool)
        .await
    })
    .await
    .context("purging expired rows of the default partition")?;
    pruned.keys_purged = purge_in_chunks(|| async move {
        sqlx::query!(
            "DELETE FROM event_keys WHERE (event_id, tenant_id) IN (
                 SELECT event_id, tenant_id FROM event_keys WHERE event_time < $1 LIMIT $2)",
            cutoff,
            PURGE_CHUNK,
        )
        .execute(pool)
        .await
    })
    .await
    .context("purging expired idempotency keys")?;
    Ok(pruned)
}

/// Runs `delete_chunk` (a `DELETE` of at most `PURGE_CHUNK` expired rows)
/// until it deletes less than a chunk; returns the rows deleted.
async fn purge_in_chunks<F, Fut>(mut delete_chunk: F) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<PgQueryResult, sqlx::Error>>,
{
    let mut total = 0;
    loop {
        let done = delete_chunk().await?.rows_affected();
        total += done;
        if done < PURGE_CHUNK as u64 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_cutoff_keeps_the_whole_day_that_holds_the_edge() {
        let now = Utc.with_ymd_and_hms(2026, 3, 10, 15, 30, 0).unwrap();
        let cutoff = retention_cutoff(now, Duration::from_secs(2 * 86_400));
        assert_eq!(cutoff, Utc.with_ymd_and_hms(2026, 3, 8, 0, 0, 0).unwrap());
        let cutoff = retention_cutoff(now, Duration::from_secs(86_400));
        assert_eq!(cutoff, Utc.with_ymd_and_hms(2026, 3, 9, 0, 0, 0).unwrap());
    }
}
