//! Real-time counters in Redis and the analytics read from them.
//!
//! Layout (root `R` = `{P}:c:`; `<h>` = hours since the Unix epoch, `<d>`
//! days, `<m>` minutes; kind codes `i` impression, `c` click, `p` play,
//! `v` conversion). Every key that an id sent by a client names expires, so
//! invented ids leave nothing behind for good (invariant 8):
//!
//! | key | type | holds | lives |
//! |---|---|---|---|
//! | `R ad:<adId>` | hash | `<k>` all-time count; `c:h:<h>` clicks in hour `<h>` | [`ALL_TIME_TTL`] after its last update; created only by a rebuild from Postgres |
//! | `R ax:<adId>` | set | batches already counted by the rebuild of `ad:<adId>` | [`MARKER_TTL_SECS`] |
//! | `R ua:<adId>` | HyperLogLog | distinct click IPs, all time | as `ad:<adId>` |
//! | `R ah:<d>:<adId>` | hash | `<k>:<h>` count in hour `<h>` of day `<d>` | 8 days after day `<d>` ends |
//! | `R am:<h>:<adId>` | hash | `<k>:<m>` count in minute `<m>` | 2 h after hour `<h>` starts |
//! | `R uh:<h>:<adId>` | HyperLogLog | distinct click IPs in hour `<h>` | 7 days after the hour |
//! | `R um:<m>:<adId>` | HyperLogLog | distinct click IPs in minute `<m>` | 1 h after the minute |
//! | `R cz` | sorted set | campaignId → plays | members: [`ALL_TIME_TTL`] after their last play; key: as long after any play |
//! | `R cl` | sorted set | campaignId → last play (Unix s), to drop silent campaigns | as `cz` |
//! | `R cs:<campaignId>` | sorted set | screenId → plays | as its campaign |
//!
//! The numeric bucket always comes before the id, so no two (id, bucket)
//! pairs share a key even though ids may contain `:`.
//!
//! All-time figures of an ad (`ad:`, `ua:`) are updated only while their
//! keys exist: a worker never creates them, because a key made from the
//! events of one batch would hold a part of the count. When they are missing
//! (never read, or expired), [`ad_analytics`] rebuilds them from a Postgres
//! snapshot taken under the outbox lock, and records in `ax:<adId>` the
//! batches that the snapshot already holds but that have not been applied
//! yet, so their later application skips that key (see `rebuild`).
//!
//! One [`Ops`] builder serves both the workers (one unit per inserted event)
//! and `reconcile` (counts from the Postgres rollups), so the two always
//! agree on the layout. [`epoch`] notices a Redis that came back empty and
//! runs that same rebuild.

mod analytics;
pub mod epoch;
mod rebuild;
mod reconcile;

pub use analytics::{
    ad_analytics, campaign_screens, campaigns, AdAnalytics, CampaignPlays, Page, ScreenPlays,
    Slice, Source, Timeframe,
};
pub use epoch::{last_reset, Epoch};
pub use rebuild::{settle_campaigns, SETTLE_PER_CALL};
pub use reconcile::{reconcile, ReconcileReport};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

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

/// How long all-time figures (an ad's `ad:`/`ua:` keys, a campaign's
/// ranking entry and screens) live after their last update. Long enough that
/// any ad or campaign still in use keeps them; an id nobody sends for this
/// long leaves Redis, and a read rebuilds its figure from Postgres.
pub const ALL_TIME_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Silent campaigns dropped from the ranking per counter application, so a
/// cleanup never costs one script call more than this.
const TRIM_PER_APPLY: usize = 100;

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
    pub fn ad(&self, ad: &str) -> String {
        format!("{}ad:{ad}", self.root)
    }
    pub(crate) fn ad_excluded(&self, ad: &str) -> String {
        format!("{}ax:{ad}", self.root)
    }
    pub(crate) fn ad_hours(&self, day: i64, ad: &str) -> String {
        format!("{}ah:{day}:{ad}", self.root)
    }
    pub(crate) fn ad_minutes(&self, hour: i64, ad: &str) -> String {
        format!("{}am:{hour}:{ad}", self.root)
    }
    pub fn uniques_all(&self, ad: &str) -> String {
        format!("{}ua:{ad}", self.root)
    }
    pub(crate) fn uniques_hour(&self, hour: i64, ad: &str) -> String {
        format!("{}uh:{hour}:{ad}", self.root)
    }
    pub(crate) fn uniques_minute(&self, minute: i64, ad: &str) -> String {
        format!("{}um:{minute}:{ad}", self.root)
    }
    /// Campaign ranking: campaignId → plays.
    pub fn campaigns(&self) -> String {
        format!("{}cz", self.root)
    }
    /// campaignId → when it last played (Unix seconds).
    pub(crate) fn campaigns_seen(&self) -> String {
        format!("{}cl", self.root)
    }
    /// Campaigns that played while absent from the ranking: new, or dropped
    /// after a silence; a rebuild from Postgres ranks them.
    pub(crate) fn campaigns_pending(&self) -> String {
        format!("{}cn", self.root)
    }
    fn screens_prefix(&self) -> String {
        format!("{}cs:", self.root)
    }
    pub fn screens(&self, campaign: &str) -> String {
        format!("{}cs:{campaign}", self.root)
    }
    fn campaign_excluded_prefix(&self) -> String {
        format!("{}cx:", self.root)
    }
    pub(crate) fn campaign_excluded(&self, campaign: &str) -> String {
        format!("{}cx:{campaign}", self.root)
    }
}

/// When the minute hash of hour `h` expires.
fn minute_hash_expiry(hour: i64) -> i64 {
    (hour + 2) * HOUR
}
/// When the hour hash of day `d` expires: once the 7-day window, whose
/// oldest hour is 167 hours back, has passed its last hour.
fn hour_hash_expiry(day: i64) -> i64 {
    (day + 1) * DAY + 7 * DAY
}
fn hour_hll_expiry(hour: i64) -> i64 {
    (hour + 1) * HOUR + 7 * DAY
}
fn minute_hll_expiry(minute: i64) -> i64 {
    (minute + 1) * MINUTE + HOUR
}

/// Who the updates are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A committed batch: all-time figures change only where they exist.
    Batch,
    /// `reconcile` writing a complete staging copy: every figure is written.
    Rebuild,
}

/// A set of counter updates, merged so each key/field is touched once.
#[derive(Debug)]
pub struct Ops {
    layout: Layout,
    mode: Mode,
    now: i64,
    incr: BTreeMap<(String, String), i64>,
    /// All-time ad counts: (key, exclusion set, field) → n.
    all_time: BTreeMap<(String, String, String), i64>,
    /// Plays per (tenant layout root, campaign, screen or "").
    plays: BTreeMap<(String, String, String), i64>,
    /// HyperLogLog members by the keys they all go to: the clicks of one ad
    /// in one minute go to its hour and minute keys, so each IP is sent once
    /// for both.
    uniques: BTreeMap<Vec<String>, BTreeSet<String>>,
    /// All-time unique-click keys (updated only where they exist).
    uniques_all: BTreeMap<String, BTreeSet<String>>,
    /// All-time keys whose TTL an update refreshes: an ad's counts and its
    /// unique clicks live and expire together.
    touch: BTreeSet<String>,
    expire: BTreeMap<String, i64>,
}

impl Ops {
    pub(crate) fn new(layout: Layout, now: DateTime<Utc>) -> Self {
        Self::with_mode(layout, now, Mode::Batch)
    }

    pub(crate) fn with_mode(layout: Layout, now: DateTime<Utc>, mode: Mode) -> Self {
        Self {
            layout,
            mode,
            now: now.timestamp(),
            incr: BTreeMap::new(),
            all_time: BTreeMap::new(),
            plays: BTreeMap::new(),
            uniques: BTreeMap::new(),
            uniques_all: BTreeMap::new(),
            touch: BTreeSet::new(),
            expire: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.incr.is_empty()
            && self.all_time.is_empty()
            && self.plays.is_empty()
            && self.uniques.is_empty()
            && self.uniques_all.is_empty()
    }

    fn hincr(&mut self, key: String, field: String, n: i64) {
        *self.incr.entry((key, field)).or_insert(0) += n;
    }

    fn all_time_incr(&mut self, layout: &Layout, ad: &str, field: String, n: i64) {
        let key = (layout.ad(ad), layout.ad_excluded(ad), field);
        *self.all_time.entry(key).or_insert(0) += n;
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
        let day = ts.div_euclid(DAY);
        let minute = ts.div_euclid(MINUTE);
        let layout = self.layout.tenant(tenant);
        if let Some(ad) = ad {
            self.all_time_incr(&layout, ad, k.to_owned(), n);
            self.touch.insert(layout.ad(ad));
            let uniques = layout.uniques_all(ad);
            if self.mode == Mode::Rebuild {
                // The copy has a unique-click key for every ad, empty for an
                // ad without clicks, so a read finds both keys.
                self.uniques_all.entry(uniques.clone()).or_default();
            }
            self.touch.insert(uniques);
            if kind == Kind::Click {
                self.all_time_incr(&layout, ad, format!("c:h:{hour}"), n);
            }
            let expiry = hour_hash_expiry(day);
            if expiry > self.now {
                let key = layout.ad_hours(day, ad);
                self.hincr(key.clone(), format!("{k}:{hour}"), n);
                self.expire.insert(key, expiry);
            }
            let expiry = minute_hash_expiry(hour);
            if expiry > self.now {
                let key = layout.ad_minutes(hour, ad);
                self.hincr(key.clone(), format!("{k}:{minute}"), n);
                self.expire.insert(key, expiry);
            }
        }
        if kind == Kind::Play {
            if let Some(campaign) = campaign {
                let entry = (
                    layout.root.clone(),
                    campaign.to_owned(),
                    screen.unwrap_or_default().to_owned(),
                );
                *self.plays.entry(entry).or_insert(0) += n;
            }
        }
    }

    /// A click from `ip` on `ad`, for the all-time unique-click estimate.
    pub(crate) fn add_unique_all_time(&mut self, tenant: &str, ad: &str, ip: &str) {
        self.uniques_all
            .entry(self.layout.tenant(tenant).uniques_all(ad))
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
        self.uniques_all
            .entry(layout.uniques_all(ad))
            .or_default()
            .extend(ips.iter().map(|ip| (*ip).to_owned()));
        let mut keys = Vec::new();
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
        if !keys.is_empty() {
            self.uniques
                .entry(keys)
                .or_default()
                .extend(ips.iter().map(|ip| (*ip).to_owned()));
        }
    }

    /// How many distinct updates are pending.
    pub(crate) fn len(&self) -> usize {
        self.incr.len()
            + self.all_time.len()
            + self.plays.len()
            + self.uniques.values().map(|m| m.len()).sum::<usize>()
            + self.uniques_all.values().map(|m| m.len()).sum::<usize>()
    }

    /// Every key these updates write (in rebuild mode: every key of the
    /// complete copy).
    pub(crate) fn keys(&self) -> BTreeSet<String> {
        let mut keys: BTreeSet<String> = self
            .incr
            .keys()
            .map(|(k, _)| k.clone())
            .chain(self.all_time.keys().map(|(k, _, _)| k.clone()))
            .chain(self.uniques.keys().flatten().cloned())
            .chain(self.uniques_all.keys().cloned())
            .collect();
        for (root, campaign, screen) in self.plays.keys() {
            let layout = Layout::new(root.clone());
            keys.insert(layout.campaigns());
            keys.insert(layout.campaigns_seen());
            if !screen.is_empty() {
                keys.insert(layout.screens(campaign));
            }
        }
        keys
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
        let ttl = ALL_TIME_TTL.as_secs().to_string();
        let rebuild = self.mode == Mode::Rebuild;
        for ((key, field), n) in &self.incr {
            push(vec!["H".into(), key.clone(), field.clone(), n.to_string()]);
        }
        let mut refresh: BTreeSet<&String> = self.touch.iter().collect();
        for ((key, excluded, field), n) in &self.all_time {
            let op = if rebuild { "H" } else { "A" };
            let mut args = vec![op.into(), key.clone()];
            if !rebuild {
                args.push(excluded.clone());
            }
            args.extend([field.clone(), n.to_string()]);
            push(args);
            refresh.insert(key);
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
        for (key, members) in &self.uniques_all {
            let members: Vec<&String> = members.iter().collect();
            let empty: [&String; 0] = [];
            let parts: Vec<&[&String]> = if members.is_empty() {
                vec![&empty]
            } else {
                members.chunks(1000).collect()
            };
            for part in parts {
                let mut args = if rebuild {
                    vec!["P".into(), "1".into(), key.clone()]
                } else {
                    vec!["U".into(), key.clone()]
                };
                args.push(part.len().to_string());
                args.extend(part.iter().map(|m| (*m).clone()));
                push(args);
            }
            refresh.insert(key);
        }
        let mut roots: BTreeSet<&String> = BTreeSet::new();
        for ((root, campaign, screen), n) in &self.plays {
            let layout = Layout::new(root.clone());
            roots.insert(root);
            let screens = layout.screens(campaign);
            if rebuild {
                push(vec![
                    "Z".into(),
                    layout.campaigns(),
                    campaign.clone(),
                    n.to_string(),
                ]);
                push(vec![
                    "L".into(),
                    layout.campaigns_seen(),
                    campaign.clone(),
                    self.now.to_string(),
                ]);
                if !screen.is_empty() {
                    push(vec!["Z".into(), screens, screen.clone(), n.to_string()]);
                }
            } else {
                push(vec![
                    "G".into(),
                    layout.campaigns(),
                    layout.campaigns_seen(),
                    layout.campaigns_pending(),
                    screens,
                    layout.campaign_excluded(campaign),
                    campaign.clone(),
                    screen.clone(),
                    n.to_string(),
                    self.now.to_string(),
                    ttl.clone(),
                ]);
            }
        }
        for root in roots {
            let layout = Layout::new(root.clone());
            if rebuild {
                for key in [layout.campaigns(), layout.campaigns_seen()] {
                    push(vec!["T".into(), key, ttl.clone()]);
                }
            } else {
                // Drop campaigns silent for ALL_TIME_TTL, a few per call.
                push(vec![
                    "C".into(),
                    layout.campaigns(),
                    layout.campaigns_seen(),
                    layout.campaigns_pending(),
                    layout.screens_prefix(),
                    layout.campaign_excluded_prefix(),
                    (self.now - ALL_TIME_TTL.as_secs() as i64).to_string(),
                    TRIM_PER_APPLY.to_string(),
                    ttl.clone(),
                ]);
            }
        }
        if rebuild {
            for (root, campaign, screen) in self.plays.keys() {
                if !screen.is_empty() {
                    let key = Layout::new(root.clone()).screens(campaign);
                    push(vec!["T".into(), key, ttl.clone()]);
                }
            }
        }
        // Expiry last, so it applies to keys created above.
        for key in refresh {
            push(vec!["T".into(), key.clone(), ttl.clone()]);
        }
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
/// marker, `-` = neither), batch id (`""` outside a batch), then ops:
/// - `H key field n`: HINCRBY.
/// - `A key excluded field n`: HINCRBY of an all-time ad count, only if the
///   key exists and the batch is not in `excluded` (a rebuild counted it).
/// - `P nkeys key… count member…`: PFADD of the members to every key.
/// - `U key count member…`: PFADD to an all-time key, only if it exists.
/// - `G ranking seen pending screens excluded campaign screen n now ttl`:
///   plays of a ranked campaign (skipped when `excluded` holds the batch);
///   a campaign absent from the ranking goes to `pending` instead.
/// - `C ranking seen pending screensPrefix excludedPrefix cutoff limit ttl`:
///   drops up to `limit` campaigns last seen before `cutoff` with their
///   screens, prunes `pending`, and refreshes the campaign keys' TTL.
/// - `Z key member n`: ZINCRBY. `L key member score`: ZADD.
/// - `T key seconds`: EXPIRE, if the key exists. `X key unixtime`: EXPIREAT.
const APPLY: &str = r"
local mode = ARGV[2]
local batch = ARGV[3]
local function ack() if string.find(mode, 'a', 1, true) then redis.call('DEL', KEYS[1]) end end
if string.find(mode, 'm', 1, true) then
  if redis.call('EXISTS', KEYS[3]) == 1 then ack() return 'paused' end
  if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then ack() return 'seen' end
end
local function counted(excluded)
  return batch ~= '' and redis.call('SISMEMBER', excluded, batch) == 1
end
local i = 4
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'H' then
    redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'A' then
    if redis.call('EXISTS', ARGV[i + 1]) == 1 and not counted(ARGV[i + 2]) then
      redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 3], ARGV[i + 4])
    end
    i = i + 5
  elseif op == 'P' then
    local k = tonumber(ARGV[i + 1])
    local n = tonumber(ARGV[i + 2 + k])
    for j = 1, k do
      redis.call('PFADD', ARGV[i + 1 + j], unpack(ARGV, i + 3 + k, i + 2 + k + n))
    end
    i = i + 3 + k + n
  elseif op == 'U' then
    local n = tonumber(ARGV[i + 2])
    if redis.call('EXISTS', ARGV[i + 1]) == 1 then
      redis.call('PFADD', ARGV[i + 1], unpack(ARGV, i + 3, i + 2 + n))
    end
    i = i + 3 + n
  elseif op == 'G' then
    local ranking, seen, pending, screens = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local campaign, screen, n, now, ttl = ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], ARGV[i + 9], ARGV[i + 10]
    if redis.call('ZSCORE', ranking, campaign) then
      if not counted(ARGV[i + 5]) then
        redis.call('ZINCRBY', ranking, n, campaign)
        if screen ~= '' then redis.call('ZINCRBY', screens, n, screen) end
      end
      -- The screens live as long as their campaign plays.
      if redis.call('EXISTS', screens) == 1 then redis.call('EXPIRE', screens, ttl) end
      redis.call('ZADD', seen, now, campaign)
    else
      redis.call('ZADD', pending, 'NX', now, campaign)
    end
    i = i + 11
  elseif op == 'C' then
    local ranking, seen, pending = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local cutoff, ttl = ARGV[i + 6], ARGV[i + 8]
    local stale = redis.call('ZRANGEBYSCORE', seen, '-inf', '(' .. cutoff, 'LIMIT', 0, ARGV[i + 7])
    for _, c in ipairs(stale) do
      redis.call('ZREM', ranking, c)
      redis.call('ZREM', seen, c)
      redis.call('DEL', ARGV[i + 4] .. c, ARGV[i + 5] .. c)
    end
    redis.call('ZREMRANGEBYSCORE', pending, '-inf', '(' .. cutoff)
    for _, k in ipairs({ranking, seen, pending}) do
      if redis.call('EXISTS', k) == 1 then redis.call('EXPIRE', k, ttl) end
    end
    i = i + 9
  elseif op == 'Z' then
    redis.call('ZINCRBY', ARGV[i + 1], ARGV[i + 3], ARGV[i + 2])
    i = i + 4
  elseif op == 'L' then
    redis.call('ZADD', ARGV[i + 1], ARGV[i + 3], ARGV[i + 2])
    i = i + 4
  elseif op == 'T' then
    if redis.call('EXISTS', ARGV[i + 1]) == 1 then redis.call('EXPIRE', ARGV[i + 1], ARGV[i + 2]) end
    i = i + 3
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
        let mut args = vec![
            MARKER_TTL_SECS.to_string(),
            mode.to_owned(),
            batch.to_string(),
        ];
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
        let all_time = (
            "{t}:c:ad:ad".to_string(),
            "{t}:c:ax:ad".to_string(),
            "c".to_string(),
        );
        assert_eq!(ops.all_time[&all_time], 3);
        assert_eq!(
            ops.plays[&("{t}:c:".to_string(), "camp".to_string(), "scr".to_string())],
            1
        );
        // Both IPs go once to the hour and minute keys together, and once
        // to the all-time key.
        let (keys, ips) = ops.uniques.iter().next().unwrap();
        assert_eq!(ops.uniques.len(), 1);
        assert_eq!(keys.len(), 2);
        assert_eq!(ips.len(), 2);
        assert_eq!(ops.uniques_all["{t}:c:ua:ad"].len(), 2);
    }

    #[test]
    fn batch_updates_never_create_all_time_keys_and_every_key_expires() {
        let now = Utc::now();
        let mut ops = Ops::new(Layout::new("{t}:c:".into()), now);
        let events = [
            event(Kind::Click, "ad", "1.2.3.4", now),
            event(Kind::Play, "ad", "1.2.3.4", now),
        ];
        ops.add_events(events.iter().map(CountedEvent::view));
        let args = ops.to_arg_chunks(usize::MAX).concat();
        // All-time figures go through the conditional ops only.
        for (i, a) in args.iter().enumerate() {
            if a == "H" {
                let key = &args[i + 1];
                assert!(!key.contains(":ad:") && !key.contains(":cz"), "{key}");
            }
        }
        // Every key a batch writes unconditionally gets an expiry.
        for key in ops.incr.keys().map(|(k, _)| k) {
            assert!(ops.expire.contains_key(key), "{key} never expires");
        }
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
            assert!(matches!(
                c[0].as_str(),
                "H" | "A" | "P" | "U" | "G" | "C" | "Z" | "L" | "T" | "X"
            ));
        }
    }
}
