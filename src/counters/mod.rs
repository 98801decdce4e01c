//! Real-time counters in Redis and the analytics read from them.
//!
//! Layout (root `R` = `{P}:c:`; `<h>` = hours since the Unix epoch, `<m>` =
//! minutes since the epoch, kind codes `i` impression, `c` click, `p` play,
//! `v` conversion):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `R ad:<adId>` | hash | `<k>` all-time count; `<k>:h:<h>` count in hour `<h>` |
//! | `R am:<h>:<adId>` | hash | `<k>:<m>` count in minute `<m>`; expires 2 h after hour `<h>` starts |
//! | `R ua:<adId>` | HyperLogLog | distinct click IPs, all time |
//! | `R uh:<h>:<adId>` | HyperLogLog | distinct click IPs in hour `<h>`; expires 7 days after the hour |
//! | `R um:<m>:<adId>` | HyperLogLog | distinct click IPs in minute `<m>`; expires 1 h after the minute |
//! | `R campaigns` | hash | campaignId → plays |
//! | `R screens:<campaignId>` | hash | screenId → plays |
//!
//! The numeric bucket always comes before the id, so no two (id, bucket)
//! pairs share a key even though ids may contain `:`. Keys that a window can no longer
//! reach expire, so memory stays bounded by the live windows.
//!
//! One [`Ops`] builder serves both the workers (one unit per inserted event)
//! and `reconcile` (counts from the Postgres rollups), so the two always
//! agree on the layout. [`epoch`] notices a Redis that came back empty and
//! runs that same rebuild.

mod analytics;
pub mod epoch;
mod reconcile;

pub use analytics::{
    ad_analytics, campaign_screens, campaigns, AdAnalytics, CampaignPlays, ScreenPlays, Timeframe,
};
pub use epoch::{last_reset, Epoch};
pub use reconcile::{reconcile, ReconcileReport};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context;
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::Script;

use crate::domain::Kind;
use crate::queue::Keys;

const HOUR: i64 = 3600;
const MINUTE: i64 = 60;
const DAY: i64 = 86_400;
/// How long an applied-batch marker lives when its cleanup did not happen.
const MARKER_TTL_SECS: u64 = 7 * 86_400;

/// The fields of an event the counters use.
#[derive(Debug, Clone)]
pub struct CountedEvent {
    /// `""` unless `TENANTS=on`.
    pub tenant: String,
    pub kind: Kind,
    pub ad_id: Option<String>,
    pub campaign_id: Option<String>,
    pub screen_id: Option<String>,
    pub ip: Option<String>,
    pub time: DateTime<Utc>,
}

impl From<&crate::domain::Event> for CountedEvent {
    fn from(e: &crate::domain::Event) -> Self {
        Self {
            tenant: e.tenant_id.clone(),
            kind: e.kind,
            ad_id: e.ad_id.as_ref().map(|v| v.to_string()),
            campaign_id: e.campaign_id.as_ref().map(|v| v.to_string()),
            screen_id: e.screen_id.as_ref().map(|v| v.to_string()),
            ip: e.ip_address.map(|ip| ip.to_string()),
            time: e.timestamp,
        }
    }
}

impl CountedEvent {
    pub fn view(&self) -> Counted<'_> {
        Counted {
            tenant: &self.tenant,
            kind: self.kind,
            ad_id: self.ad_id.as_deref(),
            campaign_id: self.campaign_id.as_deref(),
            screen_id: self.screen_id.as_deref(),
            ip: self.ip.as_deref(),
            time: self.time,
        }
    }
}

/// The fields the counters use, borrowed from an event (the worker) or a
/// [`CountedEvent`] (outbox recovery).
#[derive(Debug, Clone, Copy)]
pub struct Counted<'a> {
    pub tenant: &'a str,
    pub kind: Kind,
    pub ad_id: Option<&'a str>,
    pub campaign_id: Option<&'a str>,
    pub screen_id: Option<&'a str>,
    /// The client IP as text.
    pub ip: Option<&'a str>,
    pub time: DateTime<Utc>,
}

impl<'a> Counted<'a> {
    /// `ip` is the event's client IP as text (`Event` holds it parsed).
    pub fn of(e: &'a crate::domain::Event, ip: Option<&'a str>) -> Self {
        Self {
            tenant: &e.tenant_id,
            kind: e.kind,
            ad_id: e.ad_id.as_ref().map(|v| v.as_str()),
            campaign_id: e.campaign_id.as_ref().map(|v| v.as_str()),
            screen_id: e.screen_id.as_ref().map(|v| v.as_str()),
            ip,
            time: e.timestamp,
        }
    }
}

pub(crate) fn code(kind: Kind) -> &'static str {
    match kind {
        Kind::Impression => "i",
        Kind::Click => "c",
        Kind::Play => "p",
        Kind::Conversion => "v",
    }
}

/// Key names under one counter root (live or staging).
#[derive(Debug, Clone)]
pub struct Layout {
    root: String,
}

impl Layout {
    pub(crate) fn new(root: String) -> Self {
        Self { root }
    }
    /// The layout of `tenant`'s counters: the root itself for the tenant
    /// `""`, `<root>t:<tenant>:` for the others. Tenant ids have no `:`, and
    /// no key of the root layout starts with `t:`, so none collide.
    pub fn tenant(&self, tenant: &str) -> Layout {
        if tenant.is_empty() {
            self.clone()
        } else {
            Layout::new(format!("{}t:{tenant}:", self.root))
        }
    }
    pub(crate) fn ad(&self, ad: &str) -> String {
        format!("{}ad:{ad}", self.root)
    }
    pub(crate) fn ad_minutes(&self, hour: i64, ad: &str) -> String {
        format!("{}am:{hour}:{ad}", self.root)
    }
    pub(crate) fn uniques_all(&self, ad: &str) -> String {
        format!("{}ua:{ad}", self.root)
    }
    pub(crate) fn uniques_hour(&self, hour: i64, ad: &str) -> String {
        format!("{}uh:{hour}:{ad}", self.root)
    }
    pub(crate) fn uniques_minute(&self, minute: i64, ad: &str) -> String {
        format!("{}um:{minute}:{ad}", self.root)
    }
    pub(crate) fn campaigns(&self) -> String {
        format!("{}campaigns", self.root)
    }
    pub(crate) fn screens(&self, campaign: &str) -> String {
        format!("{}screens:{campaign}", self.root)
    }
}

/// When the minute hash of hour `h` expires.
fn minute_hash_expiry(hour: i64) -> i64 {
    (hour + 2) * HOUR
}
fn hour_hll_expiry(hour: i64) -> i64 {
    (hour + 1) * HOUR + 7 * DAY
}
fn minute_hll_expiry(minute: i64) -> i64 {
    (minute + 1) * MINUTE + HOUR
}

/// A set of counter updates, merged so each key/field is touched once.
#[derive(Debug)]
pub struct Ops {
    layout: Layout,
    now: i64,
    incr: BTreeMap<(String, String), i64>,
    /// HyperLogLog members by the keys they all go to: the clicks of one ad
    /// in one minute go to its all-time, hour and minute keys, so each IP is
    /// sent once for the three.
    uniques: BTreeMap<Vec<String>, BTreeSet<String>>,
    expire: BTreeMap<String, i64>,
}

impl Ops {
    pub(crate) fn new(layout: Layout, now: DateTime<Utc>) -> Self {
        Self {
            layout,
            now: now.timestamp(),
            incr: BTreeMap::new(),
            uniques: BTreeMap::new(),
            expire: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.incr.is_empty() && self.uniques.is_empty()
    }

    fn hincr(&mut self, key: String, field: String, n: i64) {
        *self.incr.entry((key, field)).or_insert(0) += n;
    }

    /// The updates for `events`. They are grouped by minute and dimensions
    /// first, so each key and field is formatted once per group rather than
    /// once per event.
    pub fn add_events<'a>(&mut self, events: impl IntoIterator<Item = Counted<'a>>) {
        type CountKey<'a> = (
            &'a str,
            Kind,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            i64,
        );
        let mut counts: HashMap<CountKey<'a>, i64> = HashMap::new();
        let mut clicks: HashMap<(&'a str, &'a str, i64), Vec<&'a str>> = HashMap::new();
        for e in events {
            let minute = e.time.timestamp().div_euclid(MINUTE);
            let key = (
                e.tenant,
                e.kind,
                e.ad_id,
                e.campaign_id,
                e.screen_id,
                minute,
            );
            *counts.entry(key).or_insert(0) += 1;
            if let (Kind::Click, Some(ad), Some(ip)) = (e.kind, e.ad_id, e.ip) {
                clicks.entry((e.tenant, ad, minute)).or_default().push(ip);
            }
        }
        let at = |minute: i64| DateTime::from_timestamp(minute * MINUTE, 0).unwrap_or_default();
        for ((tenant, kind, ad, campaign, screen, minute), n) in counts {
            self.add_count(tenant, kind, ad, campaign, screen, at(minute), n);
        }
        for ((tenant, ad, minute), ips) in clicks {
            self.add_unique_clicks(tenant, ad, at(minute), &ips);
        }
    }

    /// `n` events of one kind in the minute that holds `at`.
    // One argument per dimension of a rollup row; a struct would only
    // rename them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_count(
        &mut self,
        tenant: &str,
        kind: Kind,
        ad: Option<&str>,
        campaign: Option<&str>,
        screen: Option<&str>,
        at: DateTime<Utc>,
        n: i64,
    ) {
        let k = code(kind);
        let ts = at.timestamp();
        let hour = ts.div_euclid(HOUR);
        let minute = ts.div_euclid(MINUTE);
        let layout = self.layout.tenant(tenant);
        if let Some(ad) = ad {
            let key = layout.ad(ad);
            self.hincr(key.clone(), k.to_owned(), n);
            self.hincr(key, format!("{k}:h:{hour}"), n);
            let expiry = minute_hash_expiry(hour);
            if expiry > self.now {
                let key = layout.ad_minutes(hour, ad);
                self.hincr(key.clone(), format!("{k}:{minute}"), n);
                self.expire.insert(key, expiry);
            }
        }
        if kind == Kind::Play {
            if let Some(campaign) = campaign {
                self.hincr(layout.campaigns(), campaign.to_owned(), n);
                if let Some(screen) = screen {
                    self.hincr(layout.screens(campaign), screen.to_owned(), n);
                }
            }
        }
    }

    /// A click from `ip` on `ad`, for the all-time unique-click estimate.
    pub(crate) fn add_unique_all_time(&mut self, tenant: &str, ad: &str, ip: &str) {
        self.uniques
            .entry(vec![self.layout.tenant(tenant).uniques_all(ad)])
            .or_default()
            .insert(ip.to_owned());
    }

    /// A click from `ip` on `ad` at `at`, for the unique-click estimates.
    pub(crate) fn add_unique_click(&mut self, tenant: &str, ad: &str, at: DateTime<Utc>, ip: &str) {
        self.add_unique_clicks(tenant, ad, at, &[ip]);
    }

    /// Clicks from `ips` on `ad` in the minute of `at`: the all-time key, and
    /// the hour and minute keys while windows can still reach them.
    fn add_unique_clicks(&mut self, tenant: &str, ad: &str, at: DateTime<Utc>, ips: &[&str]) {
        let ts = at.timestamp();
        let hour = ts.div_euclid(HOUR);
        let minute = ts.div_euclid(MINUTE);
        let layout = self.layout.tenant(tenant);
        let mut keys = vec![layout.uniques_all(ad)];
        let expiry = hour_hll_expiry(hour);
        if expiry > self.now {
            let key = layout.uniques_hour(hour, ad);
            self.expire.insert(key.clone(), expiry);
            keys.push(key);
        }
        let expiry = minute_hll_expiry(minute);
        if expiry > self.now {
            let key = layout.uniques_minute(minute, ad);
            self.expire.insert(key.clone(), expiry);
            keys.push(key);
        }
        self.uniques
            .entry(keys)
            .or_default()
            .extend(ips.iter().map(|ip| (*ip).to_owned()));
    }

    /// How many distinct updates are pending.
    pub(crate) fn len(&self) -> usize {
        self.incr.len() + self.uniques.values().map(|m| m.len()).sum::<usize>()
    }

    /// Every key these updates write.
    pub(crate) fn keys(&self) -> BTreeSet<String> {
        self.incr
            .keys()
            .map(|(k, _)| k.clone())
            .chain(self.uniques.keys().flatten().cloned())
            .collect()
    }

    /// The updates as the flat argument list of [`APPLY`], in chunks of
    /// about `max_args` so no script call grows unbounded.
    pub(crate) fn to_arg_chunks(&self, max_args: usize) -> Vec<Vec<String>> {
        let mut chunks = vec![Vec::new()];
        let mut push = |args: Vec<String>| {
            let Some(last) = chunks.last_mut() else {
                return;
            };
            if !last.is_empty() && last.len() + args.len() > max_args {
                chunks.push(args);
            } else {
                last.extend(args);
            }
        };
        for ((key, field), n) in &self.incr {
            push(vec!["H".into(), key.clone(), field.clone(), n.to_string()]);
        }
        for (keys, members) in &self.uniques {
            let members: Vec<&String> = members.iter().collect();
            for part in members.chunks(1000) {
                let mut args = vec!["P".into(), keys.len().to_string()];
                args.extend(keys.iter().cloned());
                args.push(part.len().to_string());
                args.extend(part.iter().map(|m| (*m).clone()));
                push(args);
            }
        }
        // Expiry last, so it applies to keys created above.
        for (key, at) in &self.expire {
            push(vec!["X".into(), key.clone(), at.to_string()]);
        }
        chunks.retain(|c| !c.is_empty());
        chunks
    }
}

/// Applies counter updates. With a marker key, the updates are applied only
/// if the marker was not set yet (exactly-once per batch), and not at all
/// while `reconcile` has paused the counters. The processing list, when
/// given, is deleted in the same step: what it held is committed.
///
/// KEYS: processing list, marker, pause flag — always real keys of the
/// prefix, so the call is routed to (and stays in) the prefix's Cluster slot;
/// which of the first two are used is said by the mode.
/// ARGV: marker TTL, mode (`a` = delete the processing list, `m` = use the
/// marker, `-` = neither), then ops: `H key field n` |
/// `P nkeys key… count member…` (the members go to every key) |
/// `X key unixtime`.
const APPLY: &str = r"
local mode = ARGV[2]
local function ack() if string.find(mode, 'a', 1, true) then redis.call('DEL', KEYS[1]) end end
if string.find(mode, 'm', 1, true) then
  if redis.call('EXISTS', KEYS[3]) == 1 then ack() return 'paused' end
  if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then ack() return 'seen' end
end
local i = 3
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'H' then
    redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'P' then
    local k = tonumber(ARGV[i + 1])
    local n = tonumber(ARGV[i + 2 + k])
    for j = 1, k do
      redis.call('PFADD', ARGV[i + 1 + j], unpack(ARGV, i + 3 + k, i + 2 + k + n))
    end
    i = i + 3 + k + n
  elseif op == 'X' then
    redis.call('EXPIREAT', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  else
    return redis.error_reply('unknown counter op ' .. tostring(op))
  end
end
ack()
return 'ok'
";

/// What [`Counters::apply_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The updates are in Redis now.
    Applied,
    /// They were applied before (the marker exists).
    AlreadyApplied,
    /// `reconcile` is running; the updates stay in the outbox.
    Paused,
}

#[derive(Clone)]
pub struct Counters {
    keys: Keys,
    apply: Script,
}

impl Counters {
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            apply: Script::new(APPLY),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn layout(&self) -> Layout {
        Layout::new(self.keys.counters_root())
    }

    /// The updates for a committed batch: one unit per event.
    pub fn ops_for(&self, events: &[Counted<'_>], now: DateTime<Utc>) -> Ops {
        let mut ops = Ops::new(self.layout(), now);
        ops.add_events(events.iter().copied());
        if !events.is_empty() {
            // Running total for the UI's commit rate, applied with the batch.
            ops.hincr(self.keys.stats(), "committed".into(), events.len() as i64);
        }
        ops
    }

    /// Applies a committed batch's updates exactly once (guarded by the
    /// batch's marker) and acknowledges `processing` in the same script.
    pub async fn apply_batch(
        &self,
        conn: &mut ConnectionManager,
        batch: &uuid::Uuid,
        ops: &Ops,
        processing: Option<&str>,
    ) -> anyhow::Result<Applied> {
        // The marker makes the whole update one unit, so it must be one
        // script call: a batch is at most a few thousand events.
        let mode = if processing.is_some() { "am" } else { "m" };
        let mut args = vec![MARKER_TTL_SECS.to_string(), mode.to_owned()];
        for chunk in ops.to_arg_chunks(usize::MAX) {
            args.extend(chunk);
        }
        let paused = self.keys.counters_paused();
        let outcome: String = self
            .apply
            .key(processing.unwrap_or(&paused))
            .key(self.keys.applied(batch))
            .key(self.keys.counters_paused())
            .arg(args)
            .invoke_async(conn)
            .await
            .context("applying counter updates")?;
        Ok(match outcome.as_str() {
            "seen" => Applied::AlreadyApplied,
            "paused" => Applied::Paused,
            _ => Applied::Applied,
        })
    }

    /// Acknowledges a processing list without any counter update.
    pub async fn ack(&self, conn: &mut ConnectionManager, processing: &str) -> anyhow::Result<()> {
        redis::cmd("DEL")
            .arg(processing)
            .query_async::<()>(conn)
            .await
            .context("acknowledging the processing list")
    }

    /// Drops applied-batch markers once their outbox rows are gone.
    pub async fn forget_markers(
        &self,
        conn: &mut ConnectionManager,
        batches: &[uuid::Uuid],
    ) -> anyhow::Result<()> {
        if batches.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = batches.iter().map(|b| self.keys.applied(b)).collect();
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(conn)
            .await
            .context("removing applied-batch markers")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn event(kind: Kind, ad: &str, ip: &str, at: DateTime<Utc>) -> CountedEvent {
        CountedEvent {
            tenant: String::new(),
            kind,
            ad_id: Some(ad.into()),
            campaign_id: Some("camp".into()),
            screen_id: Some("scr".into()),
            ip: Some(ip.into()),
            time: at,
        }
    }

    #[test]
    fn old_events_skip_expired_window_keys() {
        let now = Utc::now();
        let old = Utc
            .with_ymd_and_hms(2025, 7, 2, 18, 30, 0)
            .single()
            .unwrap();
        let layout = Layout::new("{t}:c:".into());
        let mut ops = Ops::new(layout, now);
        ops.add_events([event(Kind::Click, "ad", "1.2.3.4", old).view()]);
        let keys = ops.keys();
        assert!(keys.contains("{t}:c:ad:ad"));
        assert!(keys.contains("{t}:c:ua:ad"));
        assert!(!keys
            .iter()
            .any(|k| k.contains(":am:") || k.contains(":uh:") || k.contains(":um:")));
    }

    #[test]
    fn updates_merge_per_field() {
        let now = Utc::now();
        let mut ops = Ops::new(Layout::new("{t}:c:".into()), now);
        let events = [
            event(Kind::Click, "ad", "1.2.3.4", now),
            event(Kind::Click, "ad", "1.2.3.4", now),
            event(Kind::Click, "ad", "5.6.7.8", now),
            event(Kind::Play, "ad", "1.2.3.4", now),
        ];
        ops.add_events(events.iter().map(CountedEvent::view));
        assert_eq!(ops.incr[&("{t}:c:ad:ad".to_string(), "c".to_string())], 3);
        assert_eq!(
            ops.incr[&("{t}:c:campaigns".to_string(), "camp".to_string())],
            1
        );
        // Both IPs go once to the all-time, hour and minute keys together.
        let (keys, ips) = ops.uniques.iter().next().unwrap();
        assert_eq!(ops.uniques.len(), 1);
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0], "{t}:c:ua:ad");
        assert_eq!(ips.len(), 2);
    }

    #[test]
    fn chunks_respect_the_limit_without_splitting_ops() {
        let now = Utc::now();
        let mut ops = Ops::new(Layout::new("{t}:c:".into()), now);
        let events: Vec<CountedEvent> = (0..50)
            .map(|i| event(Kind::Impression, &format!("ad{i}"), "1.1.1.1", now))
            .collect();
        ops.add_events(events.iter().map(CountedEvent::view));
        let chunks = ops.to_arg_chunks(40);
        assert!(chunks.len() > 1);
        for c in &chunks {
            assert!(matches!(c[0].as_str(), "H" | "P" | "X"));
        }
    }
}
