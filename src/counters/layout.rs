//! The counters' key layout (the table in the module comment of
//! `counters`): key names under one root, and when each windowed key
//! expires.

use std::time::Duration;

pub(crate) const HOUR: i64 = 3600;
pub(crate) const MINUTE: i64 = 60;
pub(crate) const DAY: i64 = 86_400;

/// How long all-time figures (an ad's `ad:`/`ua:` keys, a campaign's
/// ranking entry and screens) live after their last update. Long enough that
/// any ad or campaign still in use keeps them; an id nobody sends for this
/// long leaves Redis, and a read rebuilds its figure from Postgres.
pub const ALL_TIME_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Key names under one counter root (live or staging).
#[derive(Debug, Clone)]
pub struct Layout {
    root: String,
}

impl Layout {
    pub(crate) fn new(root: String) -> Self {
        Self { root }
    }
    pub(crate) fn root(&self) -> &str {
        &self.root
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
    pub fn screens(&self, campaign: &str) -> String {
        format!("{}cs:{campaign}", self.root)
    }
    pub(crate) fn campaign_excluded(&self, campaign: &str) -> String {
        format!("{}cx:{campaign}", self.root)
    }
}

/// When the minute hash of hour `h` expires.
pub(crate) fn minute_hash_expiry(hour: i64) -> i64 {
    (hour + 2) * HOUR
}
/// When the hour hash of day `d` expires: once the 7-day window, whose
/// oldest hour is 167 hours back, has passed its last hour.
pub(crate) fn hour_hash_expiry(day: i64) -> i64 {
    (day + 1) * DAY + 7 * DAY
}
pub(crate) fn hour_hll_expiry(hour: i64) -> i64 {
    (hour + 1) * HOUR + 7 * DAY
}
pub(crate) fn minute_hll_expiry(minute: i64) -> i64 {
    (minute + 1) * MINUTE + HOUR
}
