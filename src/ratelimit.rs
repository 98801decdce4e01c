//! Rate limits on ingestion, per client IP and per adId, held in Redis so
//! they bind across every adtrack instance of a prefix.
//!
//! Each limit is a token bucket (`rate` tokens a second, at most `burst`
//! held) in one Redis hash. One script call checks every bucket a request
//! touches and takes from all of them or from none, with Redis's own clock,
//! so instances with skewed clocks still agree.
//!
//! Invariants:
//! - A refused request changes nothing but its answer (429 with
//!   `Retry-After`); an accepted one is charged exactly once.
//! - The limiter never stands between a client and the spool: when Redis is
//!   down or slow it lets the request through (fail open), and counts that
//!   in `adtrack_rate_limit_fail_open_total`.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use crate::metrics::Metrics;
use crate::queue::Keys;
use crate::redis_client::RedisConn;

/// Longest wait for the limiter before the request is let through.
const LIMITER_TIMEOUT: Duration = Duration::from_millis(250);

/// One bucket's refill rate and capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Tokens added per second.
    pub per_second: f64,
    /// Most tokens a bucket holds: the burst a quiet client may send at once.
    pub burst: u32,
}

/// Takes a request's cost from every bucket it touches, or from none (see
/// `ratelimit/take.lua`). Public only for the integration tests of its
/// branches.
#[doc(hidden)]
pub static TAKE: LazyLock<Script> =
    LazyLock::new(|| crate::redis_client::script(include_str!("ratelimit/take.lua")));

/// What [`RateLimiter::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Refused: the bucket of `scope` is empty for `retry_after_secs`.
    Limited {
        scope: &'static str,
        retry_after_secs: u64,
    },
}

pub struct RateLimiter {
    per_client: Option<Limit>,
    per_ad: Option<Limit>,
    keys: Keys,
    redis: RedisConn,
    metrics: Arc<Metrics>,
}

impl RateLimiter {
    /// `None` when both limits are off.
    pub fn new(
        per_client: Option<Limit>,
        per_ad: Option<Limit>,
        keys: Keys,
        redis: RedisConn,
        metrics: Arc<Metrics>,
    ) -> Option<Self> {
        (per_client.is_some() || per_ad.is_some()).then(|| Self {
            per_client,
            per_ad,
            keys,
            redis,
            metrics,
        })
    }

    /// Charges `events` tokens to `client` (a request costs what it
    /// carries: one per event of a batch) and per ad of `ads` (tenant,
    /// adId, events) its events. `redis_down`: the spool is taking events,
    /// so the limiter is skipped rather than waited for.
    pub async fn check(
        &self,
        client: Option<IpAddr>,
        events: u32,
        tenant: &str,
        ads: &[(&str, u32)],
        redis_down: bool,
    ) -> Decision {
        let mut buckets: Vec<(&'static str, String, Limit, u32)> = Vec::new();
        if let (Some(limit), Some(ip)) = (self.per_client, client) {
            buckets.push((
                "ip",
                self.keys.rate_limit_client(&client_bucket(ip)),
                limit,
                events.max(1),
            ));
        }
        if let Some(limit) = self.per_ad {
            for (ad, n) in ads {
                // A batch larger than the burst empties the bucket rather
                // than being refused forever.
                let cost = (*n).min(limit.burst);
                buckets.push(("ad", self.keys.rate_limit_ad(tenant, ad), limit, cost));
            }
        }
        if buckets.is_empty() {
            return Decision::Allowed;
        }
        if redis_down {
            self.metrics.rate_limit_fail_open.inc();
            return Decision::Allowed;
        }
        let mut call = TAKE.prepare_invoke();
        for (_, key, limit, cost) in &buckets {
            call.key(key)
                .arg(limit.per_second)
                .arg(limit.burst)
                .arg(*cost);
        }
        let mut conn = self.redis.clone();
        // Boxed: a limiter that is off never reaches here, and the script
        // call's future would otherwise be part of every ingest request's.
        let answer: Result<Result<(i64, i64, usize), redis::RedisError>, _> = Box::pin(
            tokio::time::timeout(LIMITER_TIMEOUT, call.invoke_async(&mut conn)),
        )
        .await;
        match answer {
            Ok(Ok((1, _, _))) => Decision::Allowed,
            Ok(Ok((_, wait_ms, short))) => {
                let scope = short
                    .checked_sub(1)
                    .and_then(|i| buckets.get(i))
                    .map_or("ip", |b| b.0);
                self.metrics.rate_limited.with_label_values(&[scope]).inc();
                Decision::Limited {
                    scope,
                    retry_after_secs: u64::try_from(wait_ms).unwrap_or(1).div_ceil(1000).max(1),
                }
            }
            Ok(Err(e)) => {
                self.metrics.rate_limit_fail_open.inc();
                tracing::warn!(error = %e, "rate limiter unavailable; letting the request through");
                Decision::Allowed
            }
            Err(_) => {
                self.metrics.rate_limit_fail_open.inc();
                tracing::warn!(
                    timeout_ms = LIMITER_TIMEOUT.as_millis() as u64,
                    "rate limiter did not answer in time; letting the request through"
                );
                Decision::Allowed
            }
        }
    }
}

/// The bucket a client address belongs to: an IPv4 address itself, an IPv6
/// address by its /64 (one subscriber usually holds a whole /64, and could
/// otherwise rotate through it).
pub fn client_bucket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_bucket(a), client_bucket(b));
        assert_ne!(client_bucket(a), client_bucket(c));
        assert_eq!(client_bucket(a), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(client_bucket(mapped), "203.0.113.9");
    }
}
