//! Analytics answered from the counters.
//!
//! Windows are on event time and aligned to buckets: `1h` is the current
//! minute and the 59 before it, `24h` the current hour and the 23 before it,
//! `7d` the current hour and the 167 before it, `all` everything.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use sqlx::PgPool;

use super::{code, field_code, rebuild, Layout, DAY, HOUR, MINUTE};
use crate::domain::Kind;
use crate::keys::fields;
use crate::redis_client::RedisConn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Timeframe {
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "7d")]
    Week,
    #[serde(rename = "all")]
    All,
}

impl Timeframe {
    /// The first instant of the window at `now` (`None` for `all`): the
    /// windows are aligned to buckets as the module comment says.
    pub fn start(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let ts = now.timestamp();
        let first = match self {
            Self::Hour => (ts.div_euclid(MINUTE) - 59) * MINUTE,
            Self::Day => (ts.div_euclid(HOUR) - 23) * HOUR,
            Self::Week => (ts.div_euclid(HOUR) - 167) * HOUR,
            Self::All => return None,
        };
        DateTime::from_timestamp(first, 0)
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "1h" => Self::Hour,
            "24h" => Self::Day,
            "7d" => Self::Week,
            "all" => Self::All,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdAnalytics {
    pub ad_id: String,
    pub timeframe: Timeframe,
    pub impressions: u64,
    pub total_clicks: u64,
    pub unique_clicks: u64,
    pub ctr: f64,
    pub plays: u64,
    pub conversions: u64,
    /// Video funnel (VAST events): ads started, played to a quarter, a half,
    /// three quarters and to the end, skipped, and failed.
    pub starts: u64,
    pub first_quartiles: u64,
    pub midpoints: u64,
    pub third_quartiles: u64,
    pub completes: u64,
    pub skips: u64,
    pub errors: u64,
    /// Errors by VAST error code (`"unknown"` for errors without one), read
    /// from the Postgres error rollup; empty when `errors` is 0, and absent
    /// when Postgres could not be read (the other figures come from Redis
    /// and are answered all the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors_by_code: Option<BTreeMap<String, u64>>,
    /// completes ÷ impressions (0 without impressions, like `ctr`).
    pub completion_rate: f64,
    /// Invalid traffic (`IVT_FILTER=flag`): impressions, clicks and events
    /// of every kind flagged as coming from a bot or repeating a click.
    /// None of them is in the figures above.
    pub invalid_impressions: u64,
    pub invalid_clicks: u64,
    pub invalid_events: u64,
    /// Clicks per hour (RFC 3339 hour start → clicks). For bounded windows
    /// every hour of the window is present, zeros included.
    pub hourly_clicks: BTreeMap<String, u64>,
}

fn hour_label(hour: i64) -> String {
    Utc.timestamp_opt(hour * HOUR, 0)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[derive(Default)]
struct Totals {
    by_kind: [u64; Kind::ALL.len()],
    /// Invalid traffic (`IVT_FILTER=flag`), by kind.
    invalid: [u64; Kind::ALL.len()],
}

impl Totals {
    fn add(&mut self, kind: Kind, n: u64) {
        self.by_kind[kind as usize] += n;
    }
    fn add_field(&mut self, kind: Kind, invalid: bool, n: u64) {
        if invalid {
            self.invalid[kind as usize] += n;
        } else {
            self.add(kind, n);
        }
    }
    fn get(&self, kind: Kind) -> u64 {
        self.by_kind[kind as usize]
    }
}

/// The counter fields of one bucket, valid and invalid, in the order
/// [`slot_counts`] reads them back.
fn slot_fields(bucket: i64) -> impl Iterator<Item = String> {
    Kind::ALL.into_iter().flat_map(move |k| {
        [false, true].map(|invalid| format!("{}:{bucket}", field_code(k, invalid)))
    })
}
const FIELDS_PER_SLOT: usize = 2 * Kind::ALL.len();

/// Where an all-time figure whose keys are missing is rebuilt from.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub pool: &'a PgPool,
    /// The tenant whose rows count (`""` unless `TENANTS=on`).
    pub tenant: &'a str,
}

/// An ad's figures over `timeframe`. `layout` is the tenant's layout.
pub async fn ad_analytics(
    conn: &mut RedisConn,
    source: Source<'_>,
    layout: &Layout,
    ad: &str,
    timeframe: Timeframe,
    now: DateTime<Utc>,
) -> anyhow::Result<AdAnalytics> {
    let mut totals = Totals::default();
    let mut hourly: BTreeMap<i64, u64> = BTreeMap::new();
    let unique: u64;
    let ts = now.timestamp();
    let this_hour = ts.div_euclid(HOUR);
    let this_minute = ts.div_euclid(MINUTE);

    match timeframe {
        Timeframe::All => {
            let (has_counts, has_uniques, fields, uniques): (
                bool,
                bool,
                BTreeMap<String, i64>,
                u64,
            ) = redis::pipe()
                .cmd("EXISTS")
                .arg(layout.ad(ad))
                .cmd("EXISTS")
                .arg(layout.uniques_all(ad))
                .cmd("HGETALL")
                .arg(layout.ad(ad))
                .cmd("PFCOUNT")
                .arg(layout.uniques_all(ad))
                .query_async(conn)
                .await
                .context("reading all-time ad counters")?;
            if has_counts && has_uniques {
                for kind in Kind::ALL {
                    for invalid in [false, true] {
                        let field = field_code(kind, invalid);
                        let n = fields.get(field).copied().unwrap_or(0).max(0) as u64;
                        totals.add_field(kind, invalid, n);
                    }
                }
                let prefix = fields::hour_prefix(code(Kind::Click));
                for (field, n) in &fields {
                    if let Some(hour) = field
                        .strip_prefix(&prefix)
                        .and_then(|h| h.parse::<i64>().ok())
                    {
                        if *n > 0 {
                            hourly.insert(hour, *n as u64);
                        }
                    }
                }
                unique = uniques;
            } else {
                // Never read before, or expired: Postgres has the figure.
                let all = rebuild::rebuild_ad(source.pool, conn, layout, source.tenant, ad).await?;
                for kind in Kind::ALL {
                    totals.add(kind, all.counts[kind as usize]);
                    totals.add_field(kind, true, all.invalid[kind as usize]);
                }
                hourly = all.hourly_clicks;
                unique = all.uniques;
            }
        }
        Timeframe::Day | Timeframe::Week => {
            let span = if timeframe == Timeframe::Day { 24 } else { 168 };
            let hours: Vec<i64> = (this_hour - span + 1..=this_hour).collect();
            // The window spans at most 8 day hashes.
            let mut by_day: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
            for h in &hours {
                by_day
                    .entry((h * HOUR).div_euclid(DAY))
                    .or_default()
                    .push(*h);
            }
            let mut pipe = redis::pipe();
            for (day, hs) in &by_day {
                let fields: Vec<String> = hs.iter().flat_map(|h| slot_fields(*h)).collect();
                pipe.cmd("HMGET").arg(layout.ad_hours(*day, ad)).arg(fields);
            }
            let hll_keys: Vec<String> = hours.iter().map(|h| layout.uniques_hour(*h, ad)).collect();
            pipe.cmd("PFCOUNT").arg(&hll_keys);
            let replies: Vec<redis::Value> = pipe
                .query_async(conn)
                .await
                .context("reading hourly ad counters")?;
            for (i, hs) in by_day.values().enumerate() {
                let values: Vec<Option<i64>> = match replies.get(i) {
                    Some(v) => redis::from_redis_value(v).context("decoding hour counters")?,
                    None => Vec::new(),
                };
                for (hi, h) in hs.iter().enumerate() {
                    for (kind, invalid, n) in slot_counts(&values, hi) {
                        totals.add_field(kind, invalid, n);
                        if kind == Kind::Click && !invalid {
                            hourly.insert(*h, n);
                        }
                    }
                }
            }
            unique = match replies.get(by_day.len()) {
                Some(v) => redis::from_redis_value(v).context("decoding the unique count")?,
                None => 0,
            };
        }
        Timeframe::Hour => {
            let minutes: Vec<i64> = (this_minute - 59..=this_minute).collect();
            // The window spans at most two minute hashes.
            let mut by_hash: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
            for m in &minutes {
                by_hash
                    .entry((m * MINUTE).div_euclid(HOUR))
                    .or_default()
                    .push(*m);
            }
            let mut pipe = redis::pipe();
            for (hour, ms) in &by_hash {
                let fields: Vec<String> = ms.iter().flat_map(|m| slot_fields(*m)).collect();
                pipe.cmd("HMGET")
                    .arg(layout.ad_minutes(*hour, ad))
                    .arg(fields);
            }
            let hll_keys: Vec<String> = minutes
                .iter()
                .map(|m| layout.uniques_minute(*m, ad))
                .collect();
            pipe.cmd("PFCOUNT").arg(&hll_keys);
            let replies: Vec<redis::Value> = pipe
                .query_async(conn)
                .await
                .context("reading per-minute ad counters")?;
            for (i, (hour, ms)) in by_hash.iter().enumerate() {
                let values: Vec<Option<i64>> = match replies.get(i) {
                    Some(v) => redis::from_redis_value(v).context("decoding minute counters")?,
                    None => Vec::new(),
                };
                for (mi, _) in ms.iter().enumerate() {
                    for (kind, invalid, n) in slot_counts(&values, mi) {
                        totals.add_field(kind, invalid, n);
                        if kind == Kind::Click && !invalid {
                            *hourly.entry(*hour).or_insert(0) += n;
                        }
                    }
                }
            }
            unique = match replies.get(by_hash.len()) {
                Some(v) => redis::from_redis_value(v).context("decoding the unique count")?,
                None => 0,
            };
        }
    }

    let impressions = totals.get(Kind::Impression);
    let clicks = totals.get(Kind::Click);
    let completes = totals.get(Kind::Complete);
    let rate = |n: u64| {
        if impressions == 0 {
            0.0
        } else {
            n as f64 / impressions as f64
        }
    };
    Ok(AdAnalytics {
        ad_id: ad.to_owned(),
        timeframe,
        impressions,
        total_clicks: clicks,
        // An estimate can exceed the exact total; never report more.
        unique_clicks: unique.min(clicks),
        ctr: rate(clicks),
        plays: totals.get(Kind::Play),
        conversions: totals.get(Kind::Conversion),
        starts: totals.get(Kind::Start),
        first_quartiles: totals.get(Kind::FirstQuartile),
        midpoints: totals.get(Kind::Midpoint),
        third_quartiles: totals.get(Kind::ThirdQuartile),
        completes,
        skips: totals.get(Kind::Skip),
        errors: totals.get(Kind::Error),
        errors_by_code: Some(BTreeMap::new()),
        completion_rate: rate(completes),
        invalid_impressions: totals.invalid[Kind::Impression as usize],
        invalid_clicks: totals.invalid[Kind::Click as usize],
        invalid_events: totals.invalid.iter().sum(),
        hourly_clicks: hourly
            .into_iter()
            .map(|(h, n)| (hour_label(h), n))
            .collect(),
    })
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CampaignPlays {
    pub campaign_id: String,
    pub plays: u64,
    pub screens: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScreenPlays {
    pub screen_id: String,
    pub plays: u64,
}

/// One page of a ranking and the size of the whole.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// How many entries the whole ranking has.
    pub total: u64,
}

/// A slice of a ranking: `offset` entries skipped, at most `limit` taken.
#[derive(Debug, Clone, Copy)]
pub struct Slice {
    pub offset: u64,
    pub limit: u64,
}

/// Campaigns by plays, most first (ties by id, last first), then the
/// `known` campaigns (the catalogue's) that have no plays, by id. Each
/// entry carries its distinct screens. Costs one ranked read and one
/// `ZCARD` per entry of the page, however many campaigns exist.
pub async fn campaigns(
    conn: &mut RedisConn,
    layout: &Layout,
    known: impl IntoIterator<Item = String>,
    slice: Slice,
) -> anyhow::Result<Page<CampaignPlays>> {
    let known: Vec<String> = known
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut pipe = redis::pipe();
    pipe.cmd("ZCARD").arg(layout.campaigns());
    if !known.is_empty() {
        pipe.cmd("ZMSCORE").arg(layout.campaigns()).arg(&known);
    }
    let replies: Vec<redis::Value> = pipe
        .query_async(conn)
        .await
        .context("sizing the campaign ranking")?;
    let ranked: u64 = match replies.first() {
        Some(v) => redis::from_redis_value(v).context("decoding the ranking size")?,
        None => 0,
    };
    let scores: Vec<Option<f64>> = match replies.get(1) {
        Some(v) => redis::from_redis_value(v).context("decoding catalogue scores")?,
        None => Vec::new(),
    };
    let unplayed: Vec<&String> = known
        .iter()
        .zip(scores.iter().chain(std::iter::repeat(&None)))
        .filter(|(_, s)| s.is_none())
        .map(|(c, _)| c)
        .collect();
    let total = ranked + unplayed.len() as u64;

    let mut entries: Vec<(String, u64)> = Vec::new();
    if slice.limit > 0 && slice.offset < ranked {
        let stop = slice.offset + slice.limit - 1;
        let page: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(layout.campaigns())
            .arg(slice.offset)
            .arg(stop)
            .arg("REV")
            .arg("WITHSCORES")
            .query_async(conn)
            .await
            .context("reading the campaign ranking")?;
        entries.extend(page.into_iter().map(|(c, n)| (c, n.max(0.0) as u64)));
    }
    let room = (slice.limit as usize).saturating_sub(entries.len());
    let skip = slice.offset.saturating_sub(ranked) as usize;
    entries.extend(
        unplayed
            .into_iter()
            .skip(skip)
            .take(room)
            .map(|c| (c.clone(), 0)),
    );
    let mut pipe = redis::pipe();
    for (c, _) in &entries {
        pipe.cmd("ZCARD").arg(layout.screens(c));
    }
    let screens: Vec<u64> = if entries.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(conn)
            .await
            .context("counting campaign screens")?
    };
    Ok(Page {
        items: entries
            .into_iter()
            .zip(screens)
            .map(|((campaign_id, plays), screens)| CampaignPlays {
                campaign_id,
                plays,
                screens,
            })
            .collect(),
        total,
    })
}

/// Plays per screen of one campaign, most plays first (ties by id, last
/// first).
pub async fn campaign_screens(
    conn: &mut RedisConn,
    layout: &Layout,
    campaign: &str,
    slice: Slice,
) -> anyhow::Result<Page<ScreenPlays>> {
    let key = layout.screens(campaign);
    let total: u64 = redis::cmd("ZCARD")
        .arg(&key)
        .query_async(conn)
        .await
        .context("counting screens")?;
    if slice.limit == 0 || slice.offset >= total {
        return Ok(Page {
            items: Vec::new(),
            total,
        });
    }
    let page: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(slice.offset)
        .arg(slice.offset + slice.limit - 1)
        .arg("REV")
        .arg("WITHSCORES")
        .query_async(conn)
        .await
        .context("reading screen plays")?;
    Ok(Page {
        items: page
            .into_iter()
            .map(|(screen_id, n)| ScreenPlays {
                screen_id,
                plays: n.max(0.0) as u64,
            })
            .collect(),
        total,
    })
}

/// The counts of every kind, valid and invalid, in slot `slot` of an
/// `HMGET` that asked for [`slot_fields`] slot by slot (missing or negative
/// fields read 0).
fn slot_counts(
    values: &[Option<i64>],
    slot: usize,
) -> impl Iterator<Item = (Kind, bool, u64)> + '_ {
    Kind::ALL
        .into_iter()
        .flat_map(|k| [(k, false), (k, true)])
        .enumerate()
        .map(move |(j, (kind, invalid))| {
            let n = values
                .get(slot * FIELDS_PER_SLOT + j)
                .copied()
                .flatten()
                .unwrap_or(0);
            (kind, invalid, n.max(0) as u64)
        })
}
