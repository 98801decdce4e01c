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
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use redis::aio::ConnectionManager;
use redis::Script;

use crate::metrics::Metrics;
use crate::queue::Keys;

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

/// KEYS: the buckets. ARGV: per bucket `rate burst cost`. A bucket takes a
/// request when it holds its cost, or is full when the cost exceeds the
/// burst; the whole cost is taken either way, so a batch larger than the
/// burst leaves the bucket in debt for as long as it takes to refill (it
/// is charged in full, never refused forever). Returns `{1, 0, 0}` when
/// every bucket took its cost, else `{0, wait_ms, i}`: how long until
/// bucket `i`, the one furthest short, would take it; nothing is taken then.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = {}
local wait = 0
local short = 0
for i = 1, #KEYS do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local v = redis.call('HMGET', KEYS[i], 'tokens', 'at')
  local tokens = tonumber(v[1]) or burst
  local at = tonumber(v[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  left[i] = tokens - cost
  local short_by = math.min(cost, burst) - tokens
  if short_by > 0 then
    local w = math.ceil(short_by * 1000 / rate)
    if w > wait then wait = w short = i end
  end
end
if wait > 0 then return {0, wait, short} end
for i = 1, #KEYS do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  redis.call('HSET', KEYS[i], 'tokens', tostring(left[i]), 'at', now)
  -- A bucket idle long enough to be full again is the same as no bucket.
  redis.call('PEXPIRE', KEYS[i], math.ceil((burst - left[i]) * 1000 / rate) + 1000)
end
return {1, 0, 0}
";

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
    redis: ConnectionManager,
    take: Script,
    metrics: Arc<Metrics>,
}

impl RateLimiter {
    /// `None` when both limits are off.
    pub fn new(
        per_client: Option<Limit>,
        per_ad: Option<Limit>,
        keys: Keys,
        redis: ConnectionManager,
        metrics: Arc<Metrics>,
    ) -> Option<Self> {
        (per_client.is_some() || per_ad.is_some()).then(|| Self {
            per_client,
            per_ad,
            keys,
            redis,
            take: Script::new(TAKE),
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
        let mut call = self.take.prepare_invoke();
        for (_, key, limit, cost) in &buckets {
            call.key(key)
                .arg(limit.per_second)
                .arg(limit.burst)
                .arg(*cost);
        }
        let mut conn = self.redis.clone();
        let answer: Result<Result<(i64, i64, usize), redis::RedisError>, _> =
            tokio::time::timeout(LIMITER_TIMEOUT, call.invoke_async(&mut conn)).await;
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

/// The client of a request: the TCP peer, or, when the peer is one of
/// `trusted` proxies, the nearest address in `X-Forwarded-For` that is not
/// (read right to left, as each proxy appends the address it saw).
pub fn client_ip(req: &HttpRequest, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip())?;
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let mut client = peer;
    // Several headers are one list, in order; an unreadable or malformed
    // list is not believed at all.
    let hops: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .map(|v| v.to_str().map_err(|_| ()))
        .collect::<Result<Vec<&str>, ()>>()
        .and_then(|values| {
            values
                .iter()
                .flat_map(|v| v.split(','))
                .map(|hop| hop.trim().parse::<IpAddr>().map_err(|_| ()))
                .collect()
        })
        .unwrap_or_default();
    for hop in hops.into_iter().rev() {
        client = hop;
        if !is_trusted(hop, trusted) {
            break;
        }
    }
    Some(client)
}

fn is_trusted(ip: IpAddr, trusted: &[ipnet::IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

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

    fn request(peer: &str, forwarded: &[&str]) -> HttpRequest {
        let mut req = TestRequest::default().peer_addr(peer.parse().unwrap());
        for f in forwarded {
            req = req.append_header(("X-Forwarded-For", *f));
        }
        req.to_http_request()
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // Not behind a trusted proxy: the header is the client's own claim.
        assert_eq!(
            client_ip(&request("198.51.100.7:5000", &["203.0.113.5"]), &trusted),
            ip("198.51.100.7")
        );
        // Behind one: the nearest untrusted hop, read from the right.
        assert_eq!(
            client_ip(
                &request("10.1.1.1:5000", &["1.1.1.1, 203.0.113.5, 10.2.2.2"]),
                &trusted
            ),
            ip("203.0.113.5")
        );
        // Several headers are one list.
        assert_eq!(
            client_ip(
                &request("10.1.1.1:5000", &["1.1.1.1", "203.0.113.6"]),
                &trusted
            ),
            ip("203.0.113.6")
        );
        // Only trusted hops: the farthest one.
        assert_eq!(
            client_ip(&request("10.1.1.1:5000", &["10.3.3.3"]), &trusted),
            ip("10.3.3.3")
        );
        // A malformed list is not believed.
        assert_eq!(
            client_ip(&request("10.1.1.1:5000", &["203.0.113.5, bogus"]), &trusted),
            ip("10.1.1.1")
        );
        // No trusted proxies configured: the peer, always.
        assert_eq!(
            client_ip(&request("10.1.1.1:5000", &["203.0.113.5"]), &[]),
            ip("10.1.1.1")
        );
    }
}
