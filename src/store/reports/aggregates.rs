//! `/aggregates`: events and summed amounts per minute, hour or day bucket,
//! read from the per-minute and per-hour rollups, never from raw events.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

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
    let rows = sqlx::query_file!(
        "src/store/reports/sql/aggregates.sql",
        grouping.unit(),
        from,
        to,
        filter.campaign_id.as_deref(),
        filter.ad_id.as_deref(),
        filter.kind.as_deref(),
        &filter.tenant,
        hours_from,
        hours_to,
    )
    .fetch_all(pool)
    .await
    .context("reading aggregates from the rollups")?;

    // `start` stays unmarked in the SQL (operators and the report tests find
    // the statement by its text); `bucket` is NOT NULL, so none is missing.
    let mut found = rows
        .into_iter()
        .filter_map(|row| Some((row.start?, row.events, row.amount)))
        .peekable();
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

#[cfg(test)]
mod tests {
    use super::*;

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
