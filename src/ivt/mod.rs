//! Invalid traffic (`IVT_FILTER=flag`): events that a bot sent, or clicks
//! that repeat one IP's click on one ad, are flagged at the edge with their
//! reason. They are still stored (with `events.invalid_reason`), but the
//! rollups, CTR and every total leave them out; they are counted in the
//! ad's `invalid*` figures instead.
//!
//! With `IVT_FILTER=off` (the default) nothing here runs, so load tests and
//! curl count as they always did.
//!
//! Invariants:
//! - Flagging never refuses an event: a flagged event is answered 202 and
//!   stored like any other.
//! - The same event (same eventId) retried is never flagged as its own
//!   repeat: the click window remembers the eventId that opened it.
//! - The repeat check never stands between a client and the spool: when
//!   Redis is down or slow the click passes unflagged (fail open), counted
//!   in `adtrack_ivt_checks_skipped_total`.
//! - State is bounded: one Redis key per (tenant, ad, client) that clicked
//!   within the last `IVT_CLICK_WINDOW`, each expiring with its window.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::redis_client::RedisConn;
use regex::Regex;

use crate::config::IvtFilter;
use crate::domain::{Event, InvalidReason, Kind};
use crate::metrics::Metrics;
use crate::queue::Keys;
use crate::ratelimit::client_bucket;

/// Longest wait for the repeat check before the clicks pass unflagged.
const CHECK_TIMEOUT: Duration = Duration::from_millis(250);

/// The vendored patterns (`scripts/update-bot-list` refreshes them).
const BOT_PATTERNS: &str = include_str!("bots.txt");

/// Every pattern of [`BOT_PATTERNS`] as one alternation. `None` only if a
/// refreshed list has a pattern Rust's regex syntax rejects; the unit test
/// below fails on such a list before it can ship.
static BOTS: LazyLock<Option<Regex>> = LazyLock::new(|| {
    let alternation = patterns()
        .map(|p| format!("(?:{p})"))
        .collect::<Vec<_>>()
        .join("|");
    match Regex::new(&alternation) {
        Ok(re) => Some(re),
        Err(e) => {
            tracing::error!(error = %e, "the bot user-agent list does not compile; bot user agents are not flagged");
            None
        }
    }
});

fn patterns() -> impl Iterator<Item = &'static str> {
    BOT_PATTERNS
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Whether `user_agent` matches the list of known bots and crawlers.
pub fn is_bot(user_agent: &str) -> bool {
    BOTS.as_ref().is_some_and(|re| re.is_match(user_agent))
}

/// Flags invalid events before they are queued (see the module comment).
pub struct Ivt {
    filter: IvtFilter,
    click_window: Duration,
    keys: Keys,
    redis: RedisConn,
    metrics: Arc<Metrics>,
}

impl Ivt {
    pub fn new(
        filter: IvtFilter,
        click_window: Duration,
        keys: Keys,
        redis: RedisConn,
        metrics: Arc<Metrics>,
    ) -> Self {
        if filter == IvtFilter::Flag {
            // Compile the list at start-up rather than in the first request.
            LazyLock::force(&BOTS);
        }
        Self {
            filter,
            click_window,
            keys,
            redis,
            metrics,
        }
    }

    /// Sets `invalid` on the events of one request sent with `user_agent`.
    /// `redis_down`: the spool is taking events, so the repeat check is
    /// skipped rather than waited for.
    pub async fn flag(&self, events: &mut [Event], user_agent: Option<&str>, redis_down: bool) {
        if self.filter == IvtFilter::Off || events.is_empty() {
            return;
        }
        if user_agent.is_some_and(is_bot) {
            for e in events.iter_mut() {
                e.invalid = Some(InvalidReason::BotUserAgent);
            }
            self.count(InvalidReason::BotUserAgent, events.len());
            return;
        }
        let clicks: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == Kind::Click && e.ad_id.is_some() && e.ip_address.is_some())
            .map(|(i, _)| i)
            .collect();
        if clicks.is_empty() {
            return;
        }
        if redis_down {
            self.metrics.ivt_checks_skipped.inc_by(clicks.len() as u64);
            return;
        }
        let window_ms = u64::try_from(self.click_window.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        for &i in &clicks {
            let e = &events[i];
            let (Some(ad), Some(ip)) = (&e.ad_id, e.ip_address) else {
                continue;
            };
            // SET … NX GET: opens the window when there is none and answers
            // nil; else leaves it and answers the eventId that opened it.
            pipe.cmd("SET")
                .arg(self.click_key(&e.tenant_id, ad.as_str(), ip))
                .arg(e.event_id.to_string())
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(window_ms);
        }
        let mut conn = self.redis.clone();
        let answer: Result<Result<Vec<Option<String>>, redis::RedisError>, _> =
            // Boxed: with the filter off this is never reached, and the
            // pipeline's future would otherwise be part of every request's.
            Box::pin(tokio::time::timeout(CHECK_TIMEOUT, pipe.query_async(&mut conn))).await;
        let openers = match answer {
            Ok(Ok(openers)) if openers.len() == clicks.len() => openers,
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                self.metrics.ivt_checks_skipped.inc_by(clicks.len() as u64);
                tracing::warn!(
                    clicks = clicks.len(),
                    "the repeated-click check did not answer; the clicks pass unflagged"
                );
                return;
            }
        };
        let mut flagged = 0;
        for (&i, opener) in clicks.iter().zip(openers) {
            let e = &mut events[i];
            if opener.is_some_and(|id| id != e.event_id.to_string()) {
                e.invalid = Some(InvalidReason::RepeatedClick);
                flagged += 1;
            }
        }
        self.count(InvalidReason::RepeatedClick, flagged);
    }

    fn click_key(&self, tenant: &str, ad: &str, ip: IpAddr) -> String {
        self.keys.ivt_click(tenant, ad, &client_bucket(ip))
    }

    fn count(&self, reason: InvalidReason, n: usize) {
        if n > 0 {
            self.metrics
                .ivt_flagged
                .with_label_values(&[reason.as_str()])
                .inc_by(n as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles_and_the_list_is_not_empty() {
        let mut n = 0;
        for p in patterns() {
            assert!(Regex::new(p).is_ok(), "pattern {p:?} does not compile");
            n += 1;
        }
        assert!(n > 500, "only {n} patterns");
        assert!(BOTS.is_some());
    }

    #[test]
    fn known_bots_match_and_browsers_do_not() {
        for bot in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "curl/8.5.0",
            "python-requests/2.31.0",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
        ] {
            assert!(is_bot(bot), "{bot} is a bot");
        }
        for browser in [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
            "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
        ] {
            assert!(!is_bot(browser), "{browser} is a browser");
        }
    }
}
