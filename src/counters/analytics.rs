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

use super::{code, rebuild, Layout, DAY, HOUR, MINUTE};
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
    by_kind: [u64; 4],
}

impl Totals {
    fn add(&mut self, kind: Kind, n: u64) {
        self.by_kind[kind as usize] += n;
    }
    fn get(&self, kind: Kind) -> u64 {
        self.by_kind[kind as usize]
    }
}

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
                    let n = fields.get(code(kind)).copied().unwrap_or(0).max(0) as u64;
                    totals.add(kind, n);
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
                let fields: Vec<String> = hs
                    .iter()
                    .flat_map(|h| Kind::ALL.map(|k| format!("{}:{h}", code(k))))
                    .collect();
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
                    for (kind, n) in slot_counts(&values, hi) {
                        totals.add(kind, n);
                        if kind == Kind::Click {
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
                let fields: Vec<String> = ms
                    .iter()
                    .flat_map(|m| Kind::ALL.map(|k| format!("{}:{m}", code(k))))
                    .collect();
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
                    for (kind, n) in slot_counts(&values, mi) {
                        totals.add(kind, n);
                        if kind == Kind::Click {
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
    Ok(AdAnalytics {
        ad_id: ad.to_owned(),
        timeframe,
        impressions,
        total_clicks: clicks,
        // An estimate can exceed the exact total; never report more.
        unique_clicks: unique.min(clicks),
        ctr: if impressions == 0 {
            0.0
        } else {
            clicks as f64 / impressions as f64
        },
        plays: totals.get(Kind::Play),
        conversions: totals.get(Kind::Conversion),
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

/// The counts of every kind in slot `slot` of an `HMGET` that asked for
/// the kinds' fields slot by slot (missing or negative fields read 0).
fn slot_counts(values: &[Option<i64>], slot: usize) -> impl Iterator<Item = (Kind, u64)> + '_ {
    Kind::ALL.into_iter().enumerate().map(move |(j, kind)| {
        let n = values
            .get(slot * Kind::ALL.len() + j)
            .copied()
            .flatten()
            .unwrap_or(0);
        (kind, n.max(0) as u64)
    })
}
