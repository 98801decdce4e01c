//! The reads the Redis counters are rebuilt from (`reconcile`, the rebuild
//! of a missing all-time figure, the Redis-empty check), checked against
//! the schema at compile time. Each runs in the caller's snapshot when it
//! takes an executor: the exactly-once protocol decides when (see
//! `exactly_once`).

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use sqlx::{PgPool, Postgres, Transaction};

/// Makes `tx` a REPEATABLE READ transaction that waits at most `lock_wait`
/// (`None`: no limit) for locks. It takes no snapshot: the snapshot is that
/// of the first query after it, so a caller that first takes a lock (`LOCK
/// TABLE` takes no snapshot either) sees everything committed by the
/// transactions the lock waited for.
pub async fn begin_snapshot(
    tx: &mut Transaction<'static, Postgres>,
    lock_wait: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut **tx)
        .await
        .context("setting the isolation level")?;
    if let Some(wait) = lock_wait {
        // `SET` takes no snapshot, where `SELECT set_config(…)` would; it
        // takes no parameter either, and the value is a whole number.
        let set = format!("SET LOCAL lock_timeout = '{}ms'", wait.as_millis().max(1));
        sqlx::query(&set)
            .execute(&mut **tx)
            .await
            .context("bounding the lock wait")?;
    }
    Ok(())
}

/// Whether Postgres holds any event or rollup.
pub async fn anything_stored(pool: &PgPool) -> anyhow::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT (EXISTS (SELECT 1 FROM rollup_minute) OR EXISTS (SELECT 1 FROM events)) AS "stored!""#
    )
    .fetch_one(pool)
    .await
    .context("looking for committed events")
}

/// One ad's events per kind and hour: (kind, hour, events).
pub async fn ad_hours<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    tenant: &str,
    ad: &str,
) -> anyhow::Result<Vec<(String, DateTime<Utc>, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT kind AS "kind!", bucket AS "bucket!", sum(events)::bigint AS "events!"
           FROM rollup_hour WHERE tenant_id = $1 AND ad_id = $2 GROUP BY 1, 2"#,
        tenant,
        ad
    )
    .fetch_all(ex)
    .await
    .context("reading an ad's rollups")?;
    Ok(rows
        .into_iter()
        .map(|r| (r.kind, r.bucket, r.events))
        .collect())
}

/// One ad's invalid events (`IVT_FILTER=flag`) per kind: (kind, events).
/// They are in no rollup; the raw rows (kept for `EVENT_RETENTION`) hold
/// them, found through the partial index `events_invalid_by_ad`.
pub async fn ad_invalid<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    tenant: &str,
    ad: &str,
) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT kind AS "kind!", count(*) AS "events!" FROM events
           WHERE tenant_id = $1 AND ad_id = $2 AND invalid_reason IS NOT NULL GROUP BY 1"#,
        tenant,
        ad
    )
    .fetch_all(ex)
    .await
    .context("reading an ad's invalid events")?;
    Ok(rows.into_iter().map(|r| (r.kind, r.events)).collect())
}

/// Every stored invalid event (`IVT_FILTER=flag`) as `reconcile` reads it,
/// per minute from `minute_cut` on and per hour before it.
pub struct InvalidCount {
    pub tenant: String,
    pub kind: String,
    pub ad: String,
    pub at: DateTime<Utc>,
    pub events: i64,
}

pub fn invalid_counts<'a>(
    tx: &'a mut Transaction<'static, Postgres>,
    minute_cut: DateTime<Utc>,
) -> impl Stream<Item = anyhow::Result<InvalidCount>> + 'a {
    sqlx::query_as!(
        InvalidCount,
        r#"SELECT tenant_id AS "tenant!", kind AS "kind!", ad_id AS "ad!",
                  CASE WHEN event_time >= $1 THEN date_trunc('minute', event_time)
                       ELSE date_trunc('hour', event_time) END AS "at!",
                  count(*) AS "events!"
           FROM events
           WHERE invalid_reason IS NOT NULL AND ad_id IS NOT NULL
           GROUP BY 1, 2, 3, 4"#,
        minute_cut
    )
    .fetch(&mut **tx)
    .map(|r| r.context("reading invalid events"))
}

/// The distinct IPs of one ad's stored clicks.
pub async fn ad_click_ips<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    tenant: &str,
    ad: &str,
) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"SELECT DISTINCT host(ip) AS "ip!" FROM events
           WHERE tenant_id = $1 AND ad_id = $2 AND kind = 'click' AND ip IS NOT NULL
                 AND invalid_reason IS NULL"#,
        tenant,
        ad
    )
    .fetch_all(ex)
    .await
    .context("reading an ad's click IPs")
}

/// How many distinct IPs one ad's stored clicks have.
pub async fn ad_click_ip_count<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    tenant: &str,
    ad: &str,
) -> anyhow::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(DISTINCT host(ip)) AS "n!" FROM events
           WHERE tenant_id = $1 AND ad_id = $2 AND kind = 'click' AND ip IS NOT NULL
                 AND invalid_reason IS NULL"#,
        tenant,
        ad
    )
    .fetch_one(ex)
    .await
    .context("counting an ad's click IPs")
}

/// Plays per campaign, for `campaigns`: (campaign, plays).
pub async fn campaign_plays<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    tenant: &str,
    campaigns: &[String],
) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT campaign_id AS "campaign!", sum(events)::bigint AS "plays!" FROM rollup_hour
           WHERE tenant_id = $1 AND campaign_id = ANY($2) AND kind = 'play' GROUP BY 1"#,
        tenant,
        campaigns
    )
    .fetch_all(ex)
    .await
    .context("reading campaign plays")?;
    Ok(rows.into_iter().map(|r| (r.campaign, r.plays)).collect())
}

/// Plays per screen of `campaigns`: (campaign, screen, plays).
pub async fn campaign_screens<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    tenant: &str,
    campaigns: &[String],
) -> anyhow::Result<Vec<(String, String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT campaign_id AS "campaign!", screen_id AS "screen!", sum(events)::bigint AS "plays!"
           FROM rollup_minute
           WHERE tenant_id = $1 AND campaign_id = ANY($2) AND kind = 'play' AND screen_id <> ''
           GROUP BY 1, 2"#,
        tenant,
        campaigns
    )
    .fetch_all(ex)
    .await
    .context("reading campaign screens")?;
    Ok(rows
        .into_iter()
        .map(|r| (r.campaign, r.screen, r.plays))
        .collect())
}

/// A rollup row as `reconcile` reads it.
pub struct RolledCount {
    pub tenant: String,
    pub kind: String,
    pub ad: String,
    pub campaign: String,
    pub screen: String,
    pub at: DateTime<Utc>,
    pub events: i64,
}

/// Every rollup, per minute from `minute_cut` on and per hour before it.
pub fn rolled_counts<'a>(
    tx: &'a mut Transaction<'static, Postgres>,
    minute_cut: DateTime<Utc>,
) -> impl Stream<Item = anyhow::Result<RolledCount>> + 'a {
    sqlx::query_as!(
        RolledCount,
        r#"SELECT tenant_id AS "tenant!", kind AS "kind!", ad_id AS "ad!",
                  campaign_id AS "campaign!", screen_id AS "screen!",
                  CASE WHEN bucket >= $1 THEN bucket ELSE date_trunc('hour', bucket) END AS "at!",
                  sum(events)::bigint AS "events!"
           FROM rollup_minute GROUP BY 1, 2, 3, 4, 5, 6"#,
        minute_cut
    )
    .fetch(&mut **tx)
    .map(|r| r.context("reading rollups"))
}

/// A stored click's IP as `reconcile` reads it: `at` is its minute from
/// `minute_cut` on, its hour from `hour_cut` on, else `None` (all-time).
pub struct ClickIp {
    pub tenant: String,
    pub ad: String,
    pub ip: String,
    pub at: Option<DateTime<Utc>>,
}

/// Every distinct (tenant, ad, IP, window) of the stored clicks.
pub fn click_ips<'a>(
    tx: &'a mut Transaction<'static, Postgres>,
    minute_cut: DateTime<Utc>,
    hour_cut: DateTime<Utc>,
) -> impl Stream<Item = anyhow::Result<ClickIp>> + 'a {
    sqlx::query_as!(
        ClickIp,
        r#"SELECT DISTINCT tenant_id AS "tenant!", ad_id AS "ad!", host(ip) AS "ip!",
                  CASE WHEN event_time >= $1 THEN date_trunc('minute', event_time)
                       WHEN event_time >= $2 THEN date_trunc('hour', event_time) END AS "at?"
           FROM events
           WHERE kind = 'click' AND ad_id IS NOT NULL AND ip IS NOT NULL
                 AND invalid_reason IS NULL"#,
        minute_cut,
        hour_cut
    )
    .fetch(&mut **tx)
    .map(|r| r.context("reading click IPs"))
}
