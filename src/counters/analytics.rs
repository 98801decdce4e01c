//! Analytics answered from the counters.
//!
//! Windows are on event time and aligned to buckets: `1h` is the current
//! minute and the 59 before it, `24h` the current hour and the 23 before it,
//! `7d` the current hour and the 167 before it, `all` everything.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::{code, Layout, HOUR, MINUTE};
use crate::domain::Kind;

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

pub async fn ad_analytics(
    conn: &mut ConnectionManager,
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
            let (fields, uniques): (BTreeMap<String, i64>, u64) = redis::pipe()
                .cmd("HGETALL")
                .arg(layout.ad(ad))
                .cmd("PFCOUNT")
                .arg(layout.uniques_all(ad))
                .query_async(conn)
                .await
                .context("reading all-time ad counters")?;
            for kind in Kind::ALL {
                let n = fields.get(code(kind)).copied().unwrap_or(0).max(0) as u64;
                totals.add(kind, n);
            }
            let prefix = format!("{}:h:", code(Kind::Click));
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
        }
        Timeframe::Day | Timeframe::Week => {
            let span = if timeframe == Timeframe::Day { 24 } else { 168 };
            let hours: Vec<i64> = (this_hour - span + 1..=this_hour).collect();
            let mut fields = Vec::with_capacity(hours.len() * 4);
            for h in &hours {
                for kind in Kind::ALL {
                    fields.push(format!("{}:h:{h}", code(kind)));
                }
            }
            let hll_keys: Vec<String> = hours.iter().map(|h| layout.uniques_hour(*h, ad)).collect();
            let (values, uniques): (Vec<Option<i64>>, u64) = redis::pipe()
                .cmd("HMGET")
                .arg(layout.ad(ad))
                .arg(&fields)
                .cmd("PFCOUNT")
                .arg(&hll_keys)
                .query_async(conn)
                .await
                .context("reading hourly ad counters")?;
            for (i, h) in hours.iter().enumerate() {
                for (j, kind) in Kind::ALL.into_iter().enumerate() {
                    let n = values.get(i * 4 + j).copied().flatten().unwrap_or(0).max(0) as u64;
                    totals.add(kind, n);
                    if kind == Kind::Click {
                        hourly.insert(*h, n);
                    }
                }
            }
            unique = uniques;
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
                    for (j, kind) in Kind::ALL.into_iter().enumerate() {
                        let n = values
                            .get(mi * 4 + j)
                            .copied()
                            .flatten()
                            .unwrap_or(0)
                            .max(0) as u64;
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

/// Plays and distinct screens per campaign; `known` campaigns (from the
/// catalogue) are listed even without plays.
pub async fn campaigns(
    conn: &mut ConnectionManager,
    layout: &Layout,
    known: impl IntoIterator<Item = String>,
) -> anyhow::Result<Vec<CampaignPlays>> {
    let plays: BTreeMap<String, i64> = redis::cmd("HGETALL")
        .arg(layout.campaigns())
        .query_async(conn)
        .await
        .context("reading campaign plays")?;
    let mut all: BTreeMap<String, u64> = known.into_iter().map(|c| (c, 0)).collect();
    for (c, n) in plays {
        all.insert(c, n.max(0) as u64);
    }
    let ids: Vec<String> = all.keys().cloned().collect();
    let mut pipe = redis::pipe();
    for c in &ids {
        pipe.cmd("HLEN").arg(layout.screens(c));
    }
    let screens: Vec<u64> = if ids.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(conn)
            .await
            .context("counting campaign screens")?
    };
    Ok(ids
        .into_iter()
        .zip(screens)
        .map(|(campaign_id, screens)| CampaignPlays {
            plays: all.get(&campaign_id).copied().unwrap_or(0),
            campaign_id,
            screens,
        })
        .collect())
}

/// Plays per screen of one campaign, most plays first.
pub async fn campaign_screens(
    conn: &mut ConnectionManager,
    layout: &Layout,
    campaign: &str,
) -> anyhow::Result<Vec<ScreenPlays>> {
    let screens: BTreeMap<String, i64> = redis::cmd("HGETALL")
        .arg(layout.screens(campaign))
        .query_async(conn)
        .await
        .context("reading screen plays")?;
    let mut out: Vec<ScreenPlays> = screens
        .into_iter()
        .map(|(screen_id, n)| ScreenPlays {
            screen_id,
            plays: n.max(0) as u64,
        })
        .collect();
    out.sort_by(|a, b| {
        b.plays
            .cmp(&a.plays)
            .then_with(|| a.screen_id.cmp(&b.screen_id))
    });
    Ok(out)
}
