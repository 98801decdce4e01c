//! Reports read from Postgres: time-range aggregates from the per-minute
//! rollups, newest-first listings of raw events, and experiment summaries.
//!
//! Bounds (SPEC invariant 8: no unauthenticated read may slow ingest):
//! - every report runs on [`pool`], the reports' own small pool, never on the
//!   pool of ingest and the workers; a report that finds every connection
//!   busy for [`ACQUIRE_TIMEOUT`] gives up;
//! - each connection of that pool carries a `statement_timeout`
//!   (`REPORT_TIMEOUT`), so no report statement runs longer;
//! - each report is planned for its own parameters (`plan_cache_mode =
//!   force_custom_plan`): a cached generic plan cannot see that a filter is
//!   set, and would walk every event by time to find an unknown campaign;
//! - listings filtered by ad or campaign start from an index on that column
//!   (migrations 0003 and 0009), and an experiment summary reads the
//!   per-variant rollup (`rollup_experiment`), never the raw events.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

/// How long a report waits for a free connection of its pool.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// The `application_name` of the report pool's connections, so an operator
/// sees them apart in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "adtrack-reports";

/// The reports' own pool: `size` connections at most, each with
/// `statement_timeout` = `timeout`, read-only, without parallel workers,
/// and planning every statement for its parameters. Connects lazily; the
/// database must exist.
pub fn pool(database_url: &str, size: u32, timeout: Duration) -> anyhow::Result<PgPool> {
    let millis = timeout.as_millis().max(1).to_string();
    let options = PgConnectOptions::from_str(database_url)
        .context("DATABASE_URL is not a valid postgres URL")?
        .application_name(APPLICATION_NAME)
        .options([
            ("statement_timeout", millis.as_str()),
            ("plan_cache_mode", "force_custom_plan"),
            ("default_transaction_read_only", "on"),
            // A report is one backend: REPORT_POOL_SIZE bounds the
            // reports' share of the server, parallel workers included.
            ("max_parallel_workers_per_gather", "0"),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// The width of an aggregate bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    Minute,
    Hour,
    Day,
}

impl Grouping {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "minute" => Some(Self::Minute),
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            _ => None,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    pub fn step(self) -> chrono::Duration {
        match self {
            Self::Minute => chrono::Duration::minutes(1),
            Self::Hour => chrono::Duration::hours(1),
            Self::Day => chrono::Duration::days(1),
        }
    }

    /// The start of the bucket holding `t` (UTC).
    pub fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let secs = t.timestamp();
        let width = self.step().num_seconds();
        DateTime::from_timestamp(secs - secs.rem_euclid(width), 0).unwrap_or(t)
    }
}

/// What `/aggregates` filters on.
#[derive(Debug, Clone, Default)]
pub struct AggregateFilter {
    /// `""` unless `TENANTS=on`.
    pub tenant: String,
    pub campaign_id: Option<String>,
    pub ad_id: Option<String>,
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub count: i64,
    pub total_amount: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Aggregates {
    /// The range asked for (or the last 24 hours).
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    #[schema(value_type = String, example = "hour")]
    pub group_by: &'static str,
    pub count: i64,
    pub total_amount: i64,
    pub buckets: Vec<Bucket>,
}

/// Events and summed amounts per bucket over the rollup minutes that start
/// in `[from, to)`; every bucket of the range is listed, empty ones with
/// zeros. Grouped by hour or day, the whole hours of the range are read from
/// `rollup_hour` and only the partial hours at its two ends from
/// `rollup_minute`, so a day costs at most 24 rows per dimension.
pub async fn aggregates(
    pool: &PgPool,
    filter: &AggregateFilter,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    grouping: Grouping,
) -> anyhow::Result<Aggregates> {
    let (hours_from, hours_to) = whole_hours(from, to, grouping);
    let rows: Vec<(DateTime<Utc>, i64, i64)> = sqlx::query_as(
        "SELECT date_trunc($1, bucket, 'UTC') AS start,
                sum(events)::bigint, sum(amount)::bigint
         FROM (
             SELECT bucket, events, amount FROM rollup_minute
             WHERE tenant_id = $7
               AND ((bucket >= $2 AND bucket < $8) OR (bucket >= $9 AND bucket < $3))
               AND ($4::text IS NULL OR campaign_id = $4)
               AND ($5::text IS NULL OR ad_id = $5)
               AND ($6::text IS NULL OR kind = $6)
             UNION ALL
             SELECT bucket, events, amount FROM rollup_hour
             WHERE tenant_id = $7 AND bucket >= $8 AND bucket < $9
               AND ($4::text IS NULL OR campaign_id = $4)
               AND ($5::text IS NULL OR ad_id = $5)
               AND ($6::text IS NULL OR kind = $6)
         ) r
         GROUP BY 1 ORDER BY 1",
    )
    .bind(grouping.unit())
    .bind(from)
    .bind(to)
    .bind(&filter.campaign_id)
    .bind(&filter.ad_id)
    .bind(&filter.kind)
    .bind(&filter.tenant)
    .bind(hours_from)
    .bind(hours_to)
    .fetch_all(pool)
    .await
    .context("reading aggregates from the rollups")?;

    let mut found = rows.into_iter().peekable();
    let mut buckets = Vec::new();
    let mut start = grouping.floor(from);
    while start < to {
        let mut bucket = Bucket {
            start,
            count: 0,
            total_amount: 0,
        };
        while let Some((_, count, amount)) = found.next_if(|(s, _, _)| *s <= start) {
            bucket.count += count;
            bucket.total_amount += amount;
        }
        buckets.push(bucket);
        start += grouping.step();
    }
    Ok(Aggregates {
        from,
        to,
        group_by: grouping.unit(),
        count: buckets.iter().map(|b| b.count).sum(),
        total_amount: buckets.iter().map(|b| b.total_amount).sum(),
        buckets,
    })
}

/// The hours `[start, end)` that lie wholly inside the minutes of `[from,
/// to)`, read from `rollup_hour`; empty (`start == end == to`) when grouping
/// by minute or when the range holds no whole hour. A minute `m` is in the
/// range when `from <= m < to`, so hour `h` is whole when `h >= from` and
/// `h + 1h <= to`.
fn whole_hours(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    grouping: Grouping,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let floor = Grouping::Hour.floor(from);
    let start = if floor < from {
        floor + chrono::Duration::hours(1)
    } else {
        floor
    };
    let end = Grouping::Hour.floor(to);
    if grouping == Grouping::Minute || start >= end {
        (to, to)
    } else {
        (start, end)
    }
}

/// What `/events` filters on, and where the page starts.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// `""` unless `TENANTS=on`.
    pub tenant: String,
    pub kind: Option<String>,
    pub ad_id: Option<String>,
    pub campaign_id: Option<String>,
    /// Only events strictly older than this (event time, then eventId).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// One stored event as `/events` lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub screen_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    pub timestamp: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_playback_time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<Value>,
}

/// The listing's statement: `$1` type, `$2` adId, `$3` campaignId (each
/// `NULL` when absent), `$4`/`$5` the cursor, `$6` the row limit, `$7` the
/// tenant. Planned for its parameters (see [`pool`]), a set adId or
/// campaignId leads with `events_ad_time_idx` or `events_campaign_time_idx`
/// in every partition: an unknown one reads a few index pages, not the
/// events.
pub const LIST_EVENTS_SQL: &str =
    "SELECT event_id, kind, ad_id, campaign_id, screen_id, user_id, host(ip) AS ip_address,
            event_time AS timestamp, received_at, processed_at,
            playback_time AS video_playback_time, amount, variant, experiment_id, properties
     FROM events
     WHERE tenant_id = $7 AND ($1::text IS NULL OR kind = $1)
       AND ($2::text IS NULL OR ad_id = $2)
       AND ($3::text IS NULL OR campaign_id = $3)
       AND ($4::timestamptz IS NULL OR (event_time, event_id) < ($4, $5))
     ORDER BY event_time DESC, event_id DESC
     LIMIT $6";

/// Stored events, newest first (event time, then eventId), one more than
/// `limit` so the caller can tell whether a next page exists.
pub async fn list_events(pool: &PgPool, f: &EventFilter) -> anyhow::Result<Vec<StoredEvent>> {
    let (before_time, before_id) = f.before.unzip();
    sqlx::query_as(LIST_EVENTS_SQL)
        .bind(&f.kind)
        .bind(&f.ad_id)
        .bind(&f.campaign_id)
        .bind(before_time)
        .bind(before_id)
        .bind(f.limit + 1)
        .bind(&f.tenant)
        .fetch_all(pool)
        .await
        .context("listing stored events")
}

/// One variant of an experiment.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantSummary {
    pub variant: String,
    /// Events of every type carrying this variant.
    pub events: i64,
    /// Distinct users (userId, else the client IP) with any event.
    pub unique_users: i64,
    /// Conversion events.
    pub conversions: i64,
    /// Distinct users with at least one conversion.
    pub converted_users: i64,
    /// converted_users / unique_users (0 when there are no users).
    pub conversion_rate: f64,
    /// Two-sided p-value of a two-proportion z-test of this variant's
    /// conversion rate against the control's; absent for the control.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub z_score: Option<f64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentSummary {
    pub experiment_id: String,
    /// The variant the others are compared with: `control` when present,
    /// else the first in name order.
    pub control: Option<String>,
    pub variants: Vec<VariantSummary>,
}

/// The summary's statement: one row per variant of experiment `$1` of
/// tenant `$2`, from `rollup_experiment` (a primary-key range), so its cost
/// grows with the variants, never with the events.
pub const EXPERIMENT_SUMMARY_SQL: &str =
    "SELECT variant, events, users, conversions, converted_users
     FROM rollup_experiment WHERE tenant_id = $2 AND experiment_id = $1
     ORDER BY variant";

pub async fn experiment_summary(
    pool: &PgPool,
    tenant: &str,
    experiment: &str,
) -> anyhow::Result<ExperimentSummary> {
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(EXPERIMENT_SUMMARY_SQL)
        .bind(experiment)
        .bind(tenant)
        .fetch_all(pool)
        .await
        .context("summarising the experiment")?;
    let mut variants: Vec<VariantSummary> = rows
        .into_iter()
        .map(
            |(variant, events, users, conversions, converted)| VariantSummary {
                variant,
                events,
                unique_users: users,
                conversions,
                converted_users: converted,
                conversion_rate: if users > 0 {
                    converted as f64 / users as f64
                } else {
                    0.0
                },
                p_value: None,
                z_score: None,
            },
        )
        .collect();
    let control = variants
        .iter()
        .position(|v| v.variant == "control")
        .or(if variants.is_empty() { None } else { Some(0) });
    if let Some(c) = control {
        let (cx, cn) = (variants[c].converted_users, variants[c].unique_users);
        for (i, v) in variants.iter_mut().enumerate() {
            if i != c {
                if let Some((z, p)) =
                    two_proportion_z_test(v.converted_users, v.unique_users, cx, cn)
                {
                    v.z_score = Some(z);
                    v.p_value = Some(p);
                }
            }
        }
    }
    Ok(ExperimentSummary {
        experiment_id: experiment.to_owned(),
        control: control.map(|c| variants[c].variant.clone()),
        variants,
    })
}

/// Pooled two-proportion z-test of `x1/n1` against `x2/n2`: the z score
/// and its two-sided p-value. `None` when either sample is empty; a p-value
/// of 1 when the pooled proportion is 0 or 1 (no variance: no difference
/// can be shown).
pub fn two_proportion_z_test(x1: i64, n1: i64, x2: i64, n2: i64) -> Option<(f64, f64)> {
    if n1 <= 0 || n2 <= 0 {
        return None;
    }
    let (x1, n1, x2, n2) = (x1 as f64, n1 as f64, x2 as f64, n2 as f64);
    let pooled = (x1 + x2) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 || !se.is_finite() {
        return Some((0.0, 1.0));
    }
    let z = (x1 / n1 - x2 / n2) / se;
    Some((z, erfc(z.abs() / std::f64::consts::SQRT_2).clamp(0.0, 1.0)))
}

/// The complementary error function: libm's, accurate to the last bits
/// across the range (the hand-written Chebyshev fit it replaced was good to
/// 1.2e-7 only).
pub fn erfc(x: f64) -> f64 {
    libm::erfc(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn erfc_matches_known_values() {
        // Reference values of erfc (Abramowitz & Stegun, table 7.1).
        for (x, want) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_1),
            (1.959_963_984_540_054 / std::f64::consts::SQRT_2, 0.05),
            (2.0, 0.004_677_734_981_047_266),
            (3.0, 2.209_049_699_858_544e-5),
            (-1.0, 1.842_700_792_949_715),
        ] {
            assert!(
                close(erfc(x), want, 1e-12),
                "erfc({x}) = {} ≠ {want}",
                erfc(x)
            );
        }
    }

    #[test]
    fn z_test_matches_a_hand_computation() {
        // 120/1000 against 100/1000: pooled 0.11, se = sqrt(0.11·0.89·0.002)
        // = 0.0139929, z = 0.02 / 0.0139929 = 1.429301, p = erfc(z/√2) =
        // 0.1529178 (Python's math.erfc).
        let (z, p) = two_proportion_z_test(120, 1000, 100, 1000).unwrap();
        assert!(close(z, 1.429_297, 1e-5), "{z}");
        assert!(close(p, 0.152_917_8, 1e-6), "{p}");
        // Symmetric.
        let (z2, p2) = two_proportion_z_test(100, 1000, 120, 1000).unwrap();
        assert!(close(z2, -z, 1e-12) && close(p2, p, 1e-12));
        // A large, clear difference.
        let (_, p) = two_proportion_z_test(300, 1000, 100, 1000).unwrap();
        assert!(p < 1e-20, "{p}");
    }

    #[test]
    fn z_test_edges_never_give_nan() {
        assert_eq!(two_proportion_z_test(0, 0, 5, 10), None);
        assert_eq!(two_proportion_z_test(0, 10, 0, 10), Some((0.0, 1.0)));
        assert_eq!(two_proportion_z_test(10, 10, 10, 10), Some((0.0, 1.0)));
    }

    #[test]
    fn buckets_floor_to_utc_boundaries() {
        let t = DateTime::parse_from_rfc3339("2026-03-10T15:47:31Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            Grouping::Minute.floor(t).to_rfc3339(),
            "2026-03-10T15:47:00+00:00"
        );
        assert_eq!(
            Grouping::Hour.floor(t).to_rfc3339(),
            "2026-03-10T15:00:00+00:00"
        );
        assert_eq!(
            Grouping::Day.floor(t).to_rfc3339(),
            "2026-03-10T00:00:00+00:00"
        );
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn whole_hours_are_the_hours_inside_the_range() {
        let hours = |f: &str, t: &str, g| {
            let (a, b) = whole_hours(at(f), at(t), g);
            (a.to_rfc3339(), b.to_rfc3339())
        };
        // Unaligned ends: the partial hours at both ends are left to minutes.
        assert_eq!(
            hours(
                "2026-03-10T10:30:00Z",
                "2026-03-11T09:15:00Z",
                Grouping::Hour
            ),
            (
                "2026-03-10T11:00:00+00:00".into(),
                "2026-03-11T09:00:00+00:00".into()
            )
        );
        // Aligned ends: every hour is whole.
        assert_eq!(
            hours(
                "2026-03-10T00:00:00Z",
                "2026-03-11T00:00:00Z",
                Grouping::Day
            ),
            (
                "2026-03-10T00:00:00+00:00".into(),
                "2026-03-11T00:00:00+00:00".into()
            )
        );
        // A minute into the hour: the minute 10:00 is outside the range, so
        // hour 10 is not whole.
        assert_eq!(
            hours(
                "2026-03-10T10:00:30Z",
                "2026-03-10T12:00:00Z",
                Grouping::Hour
            ),
            (
                "2026-03-10T11:00:00+00:00".into(),
                "2026-03-10T12:00:00+00:00".into()
            )
        );
        // No whole hour, or grouping by minute: nothing from rollup_hour.
        let none = (
            "2026-03-10T11:10:00+00:00".to_string(),
            "2026-03-10T11:10:00+00:00".to_string(),
        );
        assert_eq!(
            hours(
                "2026-03-10T10:20:00Z",
                "2026-03-10T11:10:00Z",
                Grouping::Hour
            ),
            none
        );
        assert_eq!(
            hours(
                "2026-03-10T08:00:00Z",
                "2026-03-10T11:10:00Z",
                Grouping::Minute
            ),
            none
        );
    }
}
