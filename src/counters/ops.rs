//! The counter updates of a batch (or of reconcile's complete copy),
//! merged so each key and field is touched once, and their encoding as the
//! ops of `lua/apply.lua`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use foldhash::fast::RandomState as Fast;

use super::layout::{
    hour_hash_expiry, hour_hll_expiry, minute_hash_expiry, minute_hll_expiry, Layout, ALL_TIME_TTL,
    DAY, HOUR, MINUTE,
};
use super::registers::Registers;
use super::{code, field_code, Counted};
use crate::domain::Kind;
use crate::keys::fields;

/// How long after its hour an hour key's learned ranks are relied on (see
/// `add_unique_clicks`).
const RECENT: i64 = 12 * HOUR;

/// Silent campaigns dropped from the ranking per counter application, so a
/// cleanup never costs one script call more than this.
const TRIM_PER_APPLY: usize = 100;

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
    /// in one minute go to its hour and minute keys and, where it exists,
    /// its all-time key, so each IP is sent once for all three.
    uniques: BTreeMap<UniqueKeys, BTreeSet<String>>,
    /// All-time unique-click keys of a rebuild (written whole, empty ones
    /// too).
    uniques_all: BTreeMap<String, BTreeSet<String>>,
    /// All-time keys whose TTL an update refreshes: an ad's counts and its
    /// unique clicks live and expire together.
    touch: BTreeSet<String>,
    expire: BTreeMap<String, i64>,
    /// What the unique-click keys are known to hold: a batch leaves out
    /// the IPs that cannot change them (see [`Registers`]), as of its
    /// generation.
    known: Option<(Arc<Registers>, u64)>,
    /// Until when each window's unique-click key written may be relied on
    /// once these updates are applied (see `add_unique_clicks`).
    trust: BTreeMap<String, i64>,
    /// The minute keys among them: only their clicks teach the all-time
    /// key.
    recent: BTreeSet<String>,
    /// Click IPs left out for that reason.
    skipped: usize,
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
            known: None,
            trust: BTreeMap::new(),
            recent: BTreeSet::new(),
            skipped: 0,
        }
    }

    /// These updates, sending a click's IP only where it can change a
    /// unique-click key that `known` remembers (batches only).
    pub(crate) fn knowing(mut self, known: Arc<Registers>) -> Self {
        if self.mode == Mode::Batch {
            let generation = known.generation();
            self.known = Some((known, generation));
        }
        self
    }

    /// Click IPs left out because they could not change their keys.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Tells `known` what the unique-click keys hold now that these
    /// updates were applied.
    pub(crate) fn teach(&self, known: &Registers) {
        let Some((_, generation)) = &self.known else {
            return;
        };
        for (keys, members) in &self.uniques {
            for key in &keys.always {
                if let Some(until) = self.trust.get(key) {
                    let members = members.iter().map(String::as_str);
                    known.learn(key, *until, self.now, *generation, members);
                }
            }
            let recent = keys.always.iter().any(|k| self.recent.contains(k));
            if let (Some(all), true) = (&keys.if_exists, recent) {
                let members = members.iter().map(String::as_str);
                known.learn(all, self.now + HOUR, self.now, *generation, members);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.incr.is_empty()
            && self.all_time.is_empty()
            && self.plays.is_empty()
            && self.uniques.is_empty()
            && self.uniques_all.is_empty()
    }

    pub(crate) fn hincr(&mut self, key: String, field: String, n: i64) {
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
        // foldhash rather than SipHash: the keys are a batch's fields, so a
        // client that makes them collide slows one batch of at most
        // `BATCH_SIZE` events, and SipHash was a tenth of a worker's work.
        let mut counts: HashMap<CountKey<'a>, i64, Fast> = HashMap::default();
        let mut clicks: HashMap<(&'a str, &'a str, i64), Vec<&'a str>, Fast> = HashMap::default();
        let mut invalid: HashMap<(&'a str, Kind, &'a str, i64), i64, Fast> = HashMap::default();
        for e in events {
            let minute = e.time.timestamp().div_euclid(MINUTE);
            if e.invalid {
                if let Some(ad) = e.ad_id {
                    *invalid.entry((e.tenant, e.kind, ad, minute)).or_insert(0) += 1;
                }
                continue;
            }
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
        for ((tenant, kind, ad, minute), n) in invalid {
            self.add_invalid_count(tenant, kind, ad, at(minute), n);
        }
    }

    /// Refreshes the TTL of `ad`'s all-time keys.
    fn touch_all_time(&mut self, layout: &Layout, ad: &str) {
        self.touch.insert(layout.ad(ad));
        let uniques = layout.uniques_all(ad);
        if self.mode == Mode::Rebuild {
            // The copy has a unique-click key for every ad, empty for an
            // ad without clicks, so a read finds both keys.
            self.uniques_all.entry(uniques.clone()).or_default();
        }
        self.touch.insert(uniques);
    }

    /// `n` invalid events (`IVT_FILTER=flag`) of one kind on `ad` in the
    /// minute that holds `at`: only the ad's `x<k>` fields, all-time and in
    /// its windows; no unique click, play or campaign figure.
    pub(crate) fn add_invalid_count(
        &mut self,
        tenant: &str,
        kind: Kind,
        ad: &str,
        at: DateTime<Utc>,
        n: i64,
    ) {
        let layout = self.layout.tenant(tenant);
        self.add_ad_count(&layout, ad, field_code(kind, true), at, n);
    }

    /// `n` under field code `k` of `ad`: its all-time count (kept alive
    /// with its unique clicks) and its hour and minute windows that can
    /// still be read.
    fn add_ad_count(&mut self, layout: &Layout, ad: &str, k: &str, at: DateTime<Utc>, n: i64) {
        let ts = at.timestamp();
        let hour = ts.div_euclid(HOUR);
        let day = ts.div_euclid(DAY);
        let minute = ts.div_euclid(MINUTE);
        self.all_time_incr(layout, ad, k.to_owned(), n);
        self.touch_all_time(layout, ad);
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
        let layout = self.layout.tenant(tenant);
        if let Some(ad) = ad {
            self.add_ad_count(&layout, ad, code(kind), at, n);
            if kind == Kind::Click {
                let hour = at.timestamp().div_euclid(HOUR);
                self.all_time_incr(&layout, ad, fields::hour(code(Kind::Click), hour), n);
            }
        }
        if kind == Kind::Play {
            if let Some(campaign) = campaign {
                let entry = (
                    layout.root().to_owned(),
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
        // A batch updates the all-time key only where it exists, with the
        // same members as the windows'; a rebuild writes it whole.
        let if_exists = if self.mode == Mode::Rebuild {
            self.uniques_all
                .entry(layout.uniques_all(ad))
                .or_default()
                .extend(ips.iter().map(|ip| (*ip).to_owned()));
            None
        } else {
            Some(layout.uniques_all(ad))
        };
        // What these IPs teach is relied on only while Postgres holds
        // their events, so that a key rebuilt from it (reconcile, a
        // missing all-time key) holds them too: EVENT_RETENTION is at least
        // a day. A minute key's clicks are at most an hour old; an hour
        // key is relied on until RECENT after its hour; the all-time key
        // is learned only from clicks of the last hour, for an hour.
        let mut keys = Vec::new();
        let expiry = hour_hll_expiry(hour);
        if expiry > self.now {
            let key = layout.uniques_hour(hour, ad);
            self.expire.insert(key.clone(), expiry);
            self.trust
                .insert(key.clone(), expiry.min((hour + 1) * HOUR + RECENT));
            keys.push(key);
        }
        let expiry = minute_hll_expiry(minute);
        if expiry > self.now {
            let key = layout.uniques_minute(minute, ad);
            self.expire.insert(key.clone(), expiry);
            self.trust.insert(key.clone(), expiry);
            self.recent.insert(key.clone());
            keys.push(key);
        }
        if keys.is_empty() && if_exists.is_none() {
            return;
        }
        // Only groups with a window key are filtered: a click too old for
        // any window goes to the all-time key alone, which is then trusted
        // to nothing older than an hour's clicks.
        let needed = match &self.known {
            Some((known, _)) if !keys.is_empty() => {
                let names: Vec<&str> = keys.iter().chain(&if_exists).map(String::as_str).collect();
                known.needed(&names, ips, self.now)
            }
            _ => ips.to_vec(),
        };
        self.skipped += ips.len() - needed.len();
        if needed.is_empty() {
            return;
        }
        let always = keys;
        self.uniques
            .entry(UniqueKeys { always, if_exists })
            .or_default()
            .extend(needed.iter().map(|ip| (*ip).to_owned()));
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
            .chain(
                self.uniques
                    .keys()
                    .flat_map(|k| k.always.iter().chain(&k.if_exists))
                    .cloned(),
            )
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

    /// The updates as the ops of `lua/apply.lua`, in chunks of about
    /// `max_args` arguments so no script call grows unbounded. Each chunk
    /// declares the keys its ops touch; an op names a key by its index in
    /// the call's KEYS.
    #[cfg(test)]
    pub(crate) fn to_arg_chunks(&self, max_args: usize) -> Vec<Chunk> {
        self.to_tagged_chunks(max_args)
            .into_values()
            .flatten()
            .collect()
    }

    /// [`Ops::to_arg_chunks`] by the hash tag of the keys each op touches
    /// (every key of one op shares it): one list of chunks per counter
    /// slot, each call's keys in one Cluster slot.
    pub(crate) fn to_tagged_chunks(&self, max_args: usize) -> BTreeMap<String, Vec<Chunk>> {
        let mut tagged: BTreeMap<String, Vec<Chunk>> = BTreeMap::new();
        let mut push = |op: Vec<Arg>| {
            let tag = op
                .iter()
                .find_map(|a| match a {
                    K(key) => Some(crate::keys::hash_tag(key).to_owned()),
                    V(_) => None,
                })
                .unwrap_or_default();
            let chunks = tagged.entry(tag).or_insert_with(|| vec![Chunk::default()]);
            let Some(last) = chunks.last_mut() else {
                return;
            };
            if !last.args.is_empty() && last.args.len() + op.len() > max_args {
                chunks.push(Chunk::default());
            }
            if let Some(chunk) = chunks.last_mut() {
                chunk.push(op);
            }
        };
        let ttl = || V(ALL_TIME_TTL.as_secs().to_string());
        let rebuild = self.mode == Mode::Rebuild;
        for ((key, field), n) in &self.incr {
            push(vec![
                op("H"),
                K(key.clone()),
                V(field.clone()),
                V(n.to_string()),
            ]);
        }
        let mut refresh: BTreeSet<&String> = self.touch.iter().collect();
        for ((key, excluded, field), n) in &self.all_time {
            let mut args = vec![op(if rebuild { "H" } else { "A" }), K(key.clone())];
            if !rebuild {
                args.push(K(excluded.clone()));
            }
            args.extend([V(field.clone()), V(n.to_string())]);
            push(args);
            refresh.insert(key);
        }
        for (keys, members) in &self.uniques {
            let members: Vec<&String> = members.iter().collect();
            for part in members.chunks(1000) {
                let code = if keys.if_exists.is_some() { "Q" } else { "P" };
                let mut args = vec![op(code), V(keys.always.len().to_string())];
                args.extend(keys.always.iter().cloned().map(K));
                args.extend(keys.if_exists.iter().cloned().map(K));
                args.push(V(part.len().to_string()));
                args.extend(part.iter().map(|m| V((*m).clone())));
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
                let mut args = vec![op("P"), V("1".into()), K(key.clone())];
                args.push(V(part.len().to_string()));
                args.extend(part.iter().map(|m| V((*m).clone())));
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
                    op("Z"),
                    K(layout.campaigns()),
                    V(campaign.clone()),
                    V(n.to_string()),
                ]);
                push(vec![
                    op("L"),
                    K(layout.campaigns_seen()),
                    V(campaign.clone()),
                    V(self.now.to_string()),
                ]);
                if !screen.is_empty() {
                    push(vec![
                        op("Z"),
                        K(screens),
                        V(screen.clone()),
                        V(n.to_string()),
                    ]);
                }
            } else {
                push(vec![
                    op("G"),
                    K(layout.campaigns()),
                    K(layout.campaigns_seen()),
                    K(layout.campaigns_pending()),
                    K(screens),
                    K(layout.campaign_excluded(campaign)),
                    V(campaign.clone()),
                    V(screen.clone()),
                    V(n.to_string()),
                    V(self.now.to_string()),
                    ttl(),
                ]);
            }
        }
        for root in roots {
            let layout = Layout::new(root.clone());
            if rebuild {
                for key in [layout.campaigns(), layout.campaigns_seen()] {
                    push(vec![op("T"), K(key), ttl()]);
                }
            } else {
                // Drop campaigns silent for ALL_TIME_TTL, a few per call.
                push(vec![
                    op("C"),
                    K(layout.campaigns()),
                    K(layout.campaigns_seen()),
                    K(layout.campaigns_pending()),
                    V((self.now - ALL_TIME_TTL.as_secs() as i64).to_string()),
                    V(TRIM_PER_APPLY.to_string()),
                    ttl(),
                ]);
            }
        }
        if rebuild {
            for (root, campaign, screen) in self.plays.keys() {
                if !screen.is_empty() {
                    let key = Layout::new(root.clone()).screens(campaign);
                    push(vec![op("T"), K(key), ttl()]);
                }
            }
        }
        // Expiry last, so it applies to keys created above.
        for key in refresh {
            push(vec![op("T"), K(key.clone()), ttl()]);
        }
        for (key, at) in &self.expire {
            push(vec![op("X"), K(key.clone()), V(at.to_string())]);
        }
        for chunks in tagged.values_mut() {
            chunks.retain(|c| !c.args.is_empty());
        }
        tagged.retain(|_, chunks| !chunks.is_empty());
        tagged
    }
}

/// The keys one set of HyperLogLog members goes to: every key of `always`,
/// and `if_exists` only where it exists (the all-time key, in a batch).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct UniqueKeys {
    always: Vec<String>,
    if_exists: Option<String>,
}

/// One argument of an op: a key (declared in KEYS) or a value.
enum Arg {
    K(String),
    V(String),
}
use Arg::{K, V};

fn op(code: &str) -> Arg {
    V(code.to_owned())
}

/// The keys APPLY always takes first (processing list, marker, pause
/// flag); a chunk's own keys follow them.
const FIXED_KEYS: usize = 3;

/// One APPLY call's worth of ops: the keys they touch, and the arguments
/// that name those keys by their position in KEYS.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pub keys: Vec<String>,
    pub args: Vec<String>,
    index: HashMap<String, usize>,
}

impl Chunk {
    fn push(&mut self, op: Vec<Arg>) {
        for arg in op {
            match arg {
                V(v) => self.args.push(v),
                K(key) => {
                    let next = FIXED_KEYS + self.keys.len() + 1;
                    let at = match self.index.get(&key) {
                        Some(at) => *at,
                        None => {
                            self.index.insert(key.clone(), next);
                            self.keys.push(key);
                            next
                        }
                    };
                    self.args.push(at.to_string());
                }
            }
        }
    }

    /// The key an op argument names.
    #[cfg(test)]
    fn key(&self, arg: &str) -> Option<&str> {
        let at: usize = arg.parse().ok()?;
        self.keys
            .get(at.checked_sub(FIXED_KEYS + 1)?)
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::CountedEvent;
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
            invalid: false,
        }
    }

    #[test]
    fn invalid_events_count_only_in_their_own_fields() {
        let now = Utc::now();
        let layout = Layout::new("{t}:c:".into());
        let mut bot = event(Kind::Click, "ad", "192.0.2.1", now);
        bot.invalid = true;
        let mut play = event(Kind::Play, "ad", "192.0.2.1", now);
        play.invalid = true;
        let mut ops = Ops::new(layout.clone(), now);
        ops.add_events([bot.view(), play.view()]);
        let minute = now.timestamp().div_euclid(MINUTE);
        let hour = now.timestamp().div_euclid(HOUR);
        let fields: BTreeSet<&str> = ops.incr.keys().map(|(_, f)| f.as_str()).collect();
        let expected = [
            format!("xc:{minute}"),
            format!("xc:{hour}"),
            format!("xp:{minute}"),
            format!("xp:{hour}"),
        ];
        assert_eq!(fields, expected.iter().map(String::as_str).collect());
        let all_time: BTreeSet<&str> = ops.all_time.keys().map(|(_, _, f)| f.as_str()).collect();
        assert_eq!(all_time, BTreeSet::from(["xc", "xp"]));
        assert!(ops.plays.is_empty(), "an invalid play ranks no campaign");
        assert!(
            ops.uniques.is_empty(),
            "an invalid click is no unique click: {:?}",
            ops.keys()
        );
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

    /// What a batch of `ips` clicking `ad` at `at` sends to its unique-click
    /// keys, and what it teaches, given what `known` holds.
    fn unique_batch(known: &Arc<Registers>, ad: &str, ips: &[String], at: DateTime<Utc>) -> Ops {
        let events: Vec<CountedEvent> = ips
            .iter()
            .map(|ip| event(Kind::Click, ad, ip, at))
            .collect();
        let mut ops = Ops::new(Layout::new("{t}:c:".into()), Utc::now()).knowing(known.clone());
        ops.add_events(events.iter().map(CountedEvent::view));
        ops
    }

    fn sent(ops: &Ops) -> usize {
        ops.uniques.values().map(BTreeSet::len).sum()
    }

    #[test]
    fn only_recent_clicks_teach_and_a_click_with_no_window_is_always_sent() {
        let known = Arc::new(Registers::default());
        let ips: Vec<String> = (0..2_000u32)
            .map(|i| std::net::Ipv4Addr::from(i).to_string())
            .collect();
        // Clicks three hours old: the hour key and the all-time key, which
        // they do not teach.
        let earlier = Utc::now() - chrono::Duration::hours(3);
        unique_batch(&known, "ad", &ips, earlier).teach(&known);
        assert_eq!(known.len(), 1, "only the hour key is learned");
        // Clicks of this minute teach its hour and minute keys and the
        // all-time key; the same IPs again are then left out.
        let now = Utc::now();
        let first = unique_batch(&known, "ad", &ips, now);
        assert_eq!(sent(&first), ips.len());
        first.teach(&known);
        assert_eq!(known.len(), 4);
        let again = unique_batch(&known, "ad", &ips, now);
        assert_eq!((sent(&again), again.skipped()), (0, ips.len()));
        // A click too old for any window goes to the all-time key alone,
        // and is sent whatever that key is known to hold.
        let old = Utc::now() - chrono::Duration::days(30);
        let late = unique_batch(&known, "ad", &ips, old);
        assert_eq!((sent(&late), late.skipped()), (ips.len(), 0));
        // A rebuild's updates neither filter nor teach.
        let mut rebuild =
            Ops::with_mode(Layout::new("{t}:c:".into()), now, Mode::Rebuild).knowing(known.clone());
        rebuild.add_unique_clicks(
            "",
            "ad",
            now,
            &ips.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert_eq!(rebuild.skipped(), 0);
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
        // Both IPs go once to the hour and minute keys and the all-time key
        // together (the last only where it exists).
        let (keys, ips) = ops.uniques.iter().next().unwrap();
        assert_eq!(ops.uniques.len(), 1);
        assert_eq!(keys.always.len(), 2);
        assert_eq!(keys.if_exists.as_deref(), Some("{t}:c:ua:ad"));
        assert_eq!(ips.len(), 2);
        assert!(ops.uniques_all.is_empty());
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
        let chunks = ops.to_arg_chunks(usize::MAX);
        assert_eq!(chunks.len(), 1);
        let chunk = &chunks[0];
        // All-time figures go through the conditional ops only.
        for (i, a) in chunk.args.iter().enumerate() {
            if a == "H" {
                let key = chunk.key(&chunk.args[i + 1]).unwrap();
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
                c.args[0].as_str(),
                "H" | "A" | "P" | "Q" | "G" | "C" | "Z" | "L" | "T" | "X"
            ));
        }
    }
}
