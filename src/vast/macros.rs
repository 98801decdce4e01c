//! The VAST macros in pixel URLs: what a player substituted, parsed into
//! event fields; what it left alone is unknown.
//!
//! A player replaces `[TIMESTAMP]`, `[ADPLAYHEAD]` … in the URLs it fires.
//! One that does not know a macro leaves it as is (`[ERRORCODE]`, or
//! `%5BERRORCODE%5D`), and VAST 4 lets it send `-1` (unknown) or `-2`
//! (hidden by policy). All of these read as unknown, as does any value
//! that does not parse: a player cannot correct or retry a pixel, so a
//! pixel is never refused for what its macros hold.
//!
//! | query | macro | becomes |
//! |---|---|---|
//! | `ts` | `[TIMESTAMP]` | the event time, when within the accepted window (from 5 min before the view's issue) |
//! | `ph` | `[ADPLAYHEAD]` | `videoPlaybackTime` (seconds) |
//! | `code` | `[ERRORCODE]` | `errorCode` of an error event (100–999) |
//! | `cph` | `[CONTENTPLAYHEAD]` | `properties.contentPlayhead` (seconds) |
//! | `mph` | `[MEDIAPLAYHEAD]` | `properties.mediaPlayhead` (seconds) |
//! | `reason` | `[REASON]` | `properties.reason` |
//! | `asset` | `[ASSETURI]` | `properties.assetUri` |
//! | `ps` | `[PLAYERSTATE]` | `properties.playerState` |
//! | `psz` | `[PLAYERSIZE]` | `properties.playerSize` |
//! | `bp` | `[BREAKPOSITION]` | `properties.breakPosition` |
//! | `lat` | `[LIMITADTRACKING]` | `properties.limitAdTracking` |
//! | `cb` | `[CACHEBUSTING]` | nothing (it only defeats caches) |

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::domain::{MAX_CLOCK_SKEW, VAST_ERROR_CODES};

/// The query parameters a pixel URL carries, and the macro of each, in the
/// order the document writes them. The error URL adds [`ERROR_QUERY`].
pub const QUERY: [(&str, &str); 10] = [
    ("ts", "[TIMESTAMP]"),
    ("cb", "[CACHEBUSTING]"),
    ("ph", "[ADPLAYHEAD]"),
    ("cph", "[CONTENTPLAYHEAD]"),
    ("mph", "[MEDIAPLAYHEAD]"),
    ("asset", "[ASSETURI]"),
    ("ps", "[PLAYERSTATE]"),
    ("psz", "[PLAYERSIZE]"),
    ("bp", "[BREAKPOSITION]"),
    ("lat", "[LIMITADTRACKING]"),
];
/// What the error URL carries besides [`QUERY`].
pub const ERROR_QUERY: [(&str, &str); 2] = [("code", "[ERRORCODE]"), ("reason", "[REASON]")];

/// Longest text kept from a macro (`[ASSETURI]` is a URL); a longer value
/// is unknown. With at most 8 text values, properties stay far below 4 KiB.
const MAX_TEXT: usize = 256;

/// A pixel's query string, decoded leniently: a parameter that does not
/// decode is ignored rather than refused, and a repeated one keeps its
/// first value (later ones are ignored). At most 32 parameters are read.
#[derive(Debug, Default, Clone)]
pub struct PixelQuery(Vec<(String, String)>);

impl PixelQuery {
    pub fn parse(query: &str) -> Self {
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()).take(32) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(k), Some(v)) = (decode(k), decode(v)) else {
                continue;
            };
            if !out.iter().any(|(seen, _)| *seen == k) {
                out.push((k, v));
            }
        }
        Self(out)
    }

    /// The value of `name`, unless it is unknown (absent, empty, an
    /// unsubstituted macro, or a VAST sentinel).
    pub fn known(&self, name: &str) -> Option<&str> {
        let v = self.0.iter().find(|(k, _)| k == name)?.1.trim();
        let unknown = v.is_empty() || v.contains('[') || v.contains(']') || v == "-1" || v == "-2";
        (!unknown).then_some(v)
    }
}

/// `application/x-www-form-urlencoded` decoding; `None` when the result is
/// not UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// What a pixel's macros say, ready for the event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PixelFields {
    pub timestamp: Option<DateTime<Utc>>,
    pub playhead: Option<f64>,
    pub error_code: Option<u16>,
    pub properties: Map<String, Value>,
}

impl PixelFields {
    /// Reads `q`; a timestamp is kept only within `[oldest, now + skew]`
    /// (else the server's time applies, as for an event without one).
    pub fn read(q: &PixelQuery, now: DateTime<Utc>, oldest: Option<DateTime<Utc>>) -> Self {
        let earliest = crate::domain::earliest().max(oldest.unwrap_or(DateTime::<Utc>::MIN_UTC));
        let mut f = Self {
            timestamp: q
                .known("ts")
                .and_then(timestamp)
                .filter(|t| *t >= earliest && *t <= now + MAX_CLOCK_SKEW),
            playhead: q.known("ph").and_then(playhead),
            error_code: q
                .known("code")
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| VAST_ERROR_CODES.contains(c)),
            properties: Map::new(),
        };
        for (param, name) in [("cph", "contentPlayhead"), ("mph", "mediaPlayhead")] {
            if let Some(s) = q.known(param).and_then(playhead) {
                f.properties.insert(name.into(), Value::from(s));
            }
        }
        for (param, name) in [
            ("reason", "reason"),
            ("asset", "assetUri"),
            ("ps", "playerState"),
            ("psz", "playerSize"),
            ("bp", "breakPosition"),
            ("lat", "limitAdTracking"),
        ] {
            if let Some(v) = q
                .known(param)
                .filter(|v| v.len() <= MAX_TEXT && !v.chars().any(char::is_control))
            {
                f.properties.insert(name.into(), Value::from(v));
            }
        }
        f
    }
}

/// A VAST time offset (`HH:MM:SS` or `HH:MM:SS.mmm`), or plain seconds, as
/// seconds from 0 to 86400.
fn playhead(v: &str) -> Option<f64> {
    let secs = match v.split(':').collect::<Vec<_>>()[..] {
        [h, m, s] => {
            let h: u32 = h.parse().ok()?;
            let m: u32 = m.parse().ok()?;
            let s: f64 = s.parse().ok()?;
            if m >= 60 || !(0.0..60.0).contains(&s) {
                return None;
            }
            f64::from(h) * 3600.0 + f64::from(m) * 60.0 + s
        }
        [s] => s.parse().ok()?,
        _ => return None,
    };
    (secs.is_finite() && (0.0..=86_400.0).contains(&secs)).then_some(secs)
}

/// `[TIMESTAMP]`: ISO 8601 with an offset (RFC 3339; VAST's examples also
/// drop the offset's minutes, `-08`), or Unix milliseconds.
fn timestamp(v: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%#z"] {
        if let Ok(t) = DateTime::parse_from_str(v, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    if v.len() >= 12 && v.bytes().all(|b| b.is_ascii_digit()) {
        return DateTime::from_timestamp_millis(v.parse().ok()?);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(q: &str) -> PixelFields {
        PixelFields::read(&PixelQuery::parse(q), Utc::now(), None)
    }

    #[test]
    fn unsubstituted_macros_and_sentinels_are_unknown() {
        let raw: String = QUERY
            .iter()
            .chain(&ERROR_QUERY)
            .map(|(k, m)| format!("{k}={m}&"))
            .collect();
        assert_eq!(read(&raw), PixelFields::default());
        let encoded = raw.replace('[', "%5B").replace(']', "%5D");
        assert_eq!(read(&encoded), PixelFields::default());
        for sentinel in ["-1", "-2"] {
            let q = format!(
                "ts={sentinel}&ph={sentinel}&code={sentinel}&cph={sentinel}&asset={sentinel}"
            );
            assert_eq!(read(&q), PixelFields::default(), "{q}");
        }
        // Junk of every sort is unknown too, never an error.
        let junk = read("ts=yesterday&ph=1:99:00&code=42&code=303&%zz=1&asset=%ff%fe&ph=3");
        assert_eq!(junk, PixelFields::default());
    }

    #[test]
    fn substituted_values_are_parsed() {
        let now = Utc::now();
        let at = (now - chrono::Duration::minutes(3))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let q = format!(
            "ts={}&ph=00:00:04.250&code=405&cph=01:02:03&reason=1&asset=https%3A%2F%2Fcdn.example%2Fa.mp4&cb=123",
            at.replace('+', "%2B")
        );
        let f = read(&q);
        assert_eq!(
            f.timestamp.map(|t| t.timestamp_millis()),
            DateTime::parse_from_rfc3339(&at)
                .ok()
                .map(|t| t.timestamp_millis())
        );
        assert_eq!(f.playhead, Some(4.25));
        assert_eq!(f.error_code, Some(405));
        assert_eq!(f.properties["contentPlayhead"], 3723.0);
        assert_eq!(f.properties["assetUri"], "https://cdn.example/a.mp4");
        assert_eq!(f.properties["reason"], "1");
        assert!(!f.properties.contains_key("cb"));
    }

    #[test]
    fn a_timestamp_outside_the_window_is_unknown() {
        let now = Utc::now();
        for t in ["1999-12-31T23:59:59Z", "2999-01-01T00:00:00Z"] {
            assert_eq!(read(&format!("ts={t}")).timestamp, None, "{t}");
        }
        let old = now - chrono::Duration::days(3);
        let q = PixelQuery::parse(&format!("ts={}", old.timestamp_millis()));
        assert_eq!(
            PixelFields::read(&q, now, Some(now - chrono::Duration::days(1))).timestamp,
            None
        );
        assert!(PixelFields::read(&q, now, None).timestamp.is_some());
    }
}
