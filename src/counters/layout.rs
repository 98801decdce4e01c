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
    /// `{P}:c:` (live), `{P}:rc:<run>:` (staging), plus `t:<tenant>:`.
    root: String,
    /// `P`, and the counter slots an ad's keys are spread over (`0`: none;
    /// see `Keys::with_counter_slots`).
    prefix: String,
    slots: u16,
}

impl Layout {
    /// Every key under `root` (no counter slots).
    pub(crate) fn new(root: String) -> Self {
        Self {
            root,
            prefix: String::new(),
            slots: 0,
        }
    }

    /// Keys under `root`, an ad's keys moved to its counter slot's tag
    /// `{P.c<s>}` when `slots` > 0 (`root` starts with `{P}`).
    pub(crate) fn spread(root: String, prefix: &str, slots: u16) -> Self {
        Self {
            root,
            prefix: prefix.to_owned(),
            slots,
        }
    }

    /// Where `ad`'s keys live: the root, or the root under the ad's
    /// counter slot tag.
    fn ad_root(&self, ad: &str) -> String {
        if self.slots == 0 {
            return self.root.clone();
        }
        let rest = &self.root[crate::keys::hash_tag(&self.root).len()..];
        format!(
            "{}{rest}",
            crate::keys::counter_tag(&self.prefix, self.slots, ad)
        )
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
            Layout {
                root: format!("{}t:{tenant}:", self.root),
                prefix: self.prefix.clone(),
                slots: self.slots,
            }
        }
    }
    pub fn ad(&self, ad: &str) -> String {
        format!("{}ad:{ad}", self.ad_root(ad))
    }
    pub(crate) fn ad_excluded(&self, ad: &str) -> String {
        format!("{}ax:{ad}", self.ad_root(ad))
    }
    pub fn ad_hours(&self, day: i64, ad: &str) -> String {
        format!("{}ah:{day}:{ad}", self.ad_root(ad))
    }
    pub(crate) fn ad_minutes(&self, hour: i64, ad: &str) -> String {
        format!("{}am:{hour}:{ad}", self.ad_root(ad))
    }
    pub fn uniques_all(&self, ad: &str) -> String {
        format!("{}ua:{ad}", self.ad_root(ad))
    }
    pub(crate) fn uniques_hour(&self, hour: i64, ad: &str) -> String {
        format!("{}uh:{hour}:{ad}", self.ad_root(ad))
    }
    pub(crate) fn uniques_minute(&self, minute: i64, ad: &str) -> String {
        format!("{}um:{minute}:{ad}", self.ad_root(ad))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_layout_moves_an_ads_keys_to_its_slot_and_nothing_else() {
        let one = Layout::new("{adtrack}:c:".into());
        assert_eq!(one.ad("x"), "{adtrack}:c:ad:x");
        let spread = Layout::spread("{adtrack}:c:".into(), "adtrack", 16);
        let tag = crate::keys::counter_tag("adtrack", 16, "x");
        assert_eq!(spread.ad("x"), format!("{tag}:c:ad:x"));
        assert_eq!(spread.uniques_minute(7, "x"), format!("{tag}:c:um:7:x"));
        assert_eq!(spread.ad_excluded("x"), format!("{tag}:c:ax:x"));
        assert_eq!(spread.campaigns(), "{adtrack}:c:cz");
        assert_eq!(spread.screens("k"), "{adtrack}:c:cs:k");
        let tenant = spread.tenant("t1");
        assert_eq!(tenant.ad("x"), format!("{tag}:c:t:t1:ad:x"));
        let staging = Layout::spread("{adtrack}:rc:run1:".into(), "adtrack", 16);
        assert_eq!(staging.ad_hours(3, "x"), format!("{tag}:rc:run1:ah:3:x"));
    }
}
