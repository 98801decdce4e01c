//! The event model: what one validated event is, as queued on Redis (the
//! "envelope") and stored in Postgres, and why a body is not one. Built only
//! by `parse` at the edge (or decoded from an envelope it wrote).

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::Ident;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    Impression,
    Click,
    Play,
    Conversion,
    /// The video ad started (VAST `start`).
    Start,
    /// A quarter, a half, three quarters of the ad played (VAST quartiles).
    FirstQuartile,
    Midpoint,
    ThirdQuartile,
    /// The ad played to its end.
    Complete,
    /// The viewer skipped the ad.
    Skip,
    /// The player could not show the ad; the event may carry its VAST
    /// error code (`errorCode`).
    Error,
}

impl Kind {
    /// Every kind, in the order of their discriminants (counters index
    /// arrays by `kind as usize`).
    pub const ALL: [Kind; 11] = [
        Kind::Impression,
        Kind::Click,
        Kind::Play,
        Kind::Conversion,
        Kind::Start,
        Kind::FirstQuartile,
        Kind::Midpoint,
        Kind::ThirdQuartile,
        Kind::Complete,
        Kind::Skip,
        Kind::Error,
    ];

    /// The names a request may use, for error messages and the OpenAPI
    /// patterns.
    pub const NAMES: &'static str = "impression, click, play, conversion, start, firstQuartile, \
         midpoint, thirdQuartile, complete, skip, error";

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Impression => "impression",
            Kind::Click => "click",
            Kind::Play => "play",
            Kind::Conversion => "conversion",
            Kind::Start => "start",
            Kind::FirstQuartile => "firstQuartile",
            Kind::Midpoint => "midpoint",
            Kind::ThirdQuartile => "thirdQuartile",
            Kind::Complete => "complete",
            Kind::Skip => "skip",
            Kind::Error => "error",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated event, as queued on Redis (the "envelope") and stored in
/// Postgres. `attempts` counts failed processing attempts so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<Ident>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<Ident>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_id: Option<Ident>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<IpAddr>,
    #[serde(
        serialize_with = "super::time::rfc3339",
        deserialize_with = "super::time::from_rfc3339"
    )]
    pub timestamp: DateTime<Utc>,
    #[serde(
        serialize_with = "super::time::rfc3339",
        deserialize_with = "super::time::from_rfc3339"
    )]
    pub received_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_playback_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// The VAST error code of an `error` event (100–999), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub simulate_failure: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// The tenant the event belongs to (`TENANTS=on`), set by the server
    /// from the API key and never read from a request body; `""` otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant_id: String,
    /// Why the event is invalid traffic (`IVT_FILTER=flag`), set by the
    /// server at the edge and never read from a request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<InvalidReason>,
}

impl Event {
    /// The client's IP as Postgres and the unique-click counters take it.
    pub fn ip_text(&self) -> Option<String> {
        self.ip_address.map(ip_text)
    }
}

/// `s` as part of a hash-map key: itself, or when empty a `""` that points
/// into the binary. An empty `String` or literal points nowhere (a dangling
/// address), and comparing two of them still calls `memcmp`, whose AVX-512
/// version in glibc loads from that address under an all-zero mask: the CPU
/// suppresses the fault in microcode. On AMD EPYC (Zen 4) such a comparison
/// took 77 ns against 2.6 ns, and the worker's batch keys hold the default
/// tenant and absent campaigns and screens as `""` for every event.
pub fn key_text(s: &str) -> &str {
    if s.is_empty() {
        EMPTY
    } else {
        s
    }
}

/// A zero-length `str` whose pointer is a real address (see [`key_text`]).
/// An empty slice is always UTF-8; the other arm only satisfies the type.
const EMPTY: &str = match std::str::from_utf8(ANCHOR.split_at(0).0) {
    Ok(empty) => empty,
    Err(_) => "",
};
static ANCHOR: [u8; 1] = [0];

/// An IP address as `Display` writes it, without `fmt` for IPv4: a worker
/// writes one per event, twice, and `fmt` made that a seventh of its work.
pub fn ip_text(ip: IpAddr) -> String {
    let mut text = Vec::with_capacity(15);
    push_ip(&mut text, ip);
    String::from_utf8(text).unwrap_or_else(|_| ip.to_string())
}

/// Appends what [`ip_text`] writes.
pub(super) fn push_ip(text: &mut Vec<u8>, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        // Writing to a `Vec` cannot fail.
        let _ = std::io::Write::write_fmt(text, format_args!("{ip}"));
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push(b'.');
        }
        if octet >= 100 {
            text.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            text.push(b'0' + octet / 10 % 10);
        }
        text.push(b'0' + octet % 10);
    }
}

/// Why an event was flagged as invalid traffic (see `ivt`); stored in
/// `events.invalid_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InvalidReason {
    /// Its User-Agent matches the list of known bots and crawlers.
    BotUserAgent,
    /// A click from one client on one ad within `IVT_CLICK_WINDOW` of an
    /// earlier one.
    RepeatedClick,
}

impl InvalidReason {
    pub const ALL: [InvalidReason; 2] = [InvalidReason::BotUserAgent, InvalidReason::RepeatedClick];

    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::BotUserAgent => "bot-user-agent",
            InvalidReason::RepeatedClick => "repeated-click",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == value)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why a body is not a valid event. `code` is the machine code of the JSON
/// error; `message` names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EventError {
    pub code: &'static str,
    pub message: String,
}

impl EventError {
    pub(super) fn field(field: &str, problem: impl fmt::Display) -> Self {
        Self {
            code: "invalid_field",
            message: format!("{field} {problem}"),
        }
    }

    pub(super) fn body(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn an_empty_key_text_points_into_the_binary() {
        // Empty strings point to a dangling address (see `key_text`).
        let empty = String::new();
        assert_eq!(
            empty.as_ptr() as usize,
            1,
            "the premise: a dangling pointer"
        );
        assert!(super::key_text(&empty).is_empty());
        assert_eq!(super::key_text(&empty).as_ptr(), super::ANCHOR.as_ptr());
        assert_eq!(super::key_text("").as_ptr(), super::ANCHOR.as_ptr());
        let ad = String::from("ad-1");
        assert_eq!(super::key_text(&ad).as_ptr(), ad.as_ptr());
    }

    #[test]
    fn ip_text_writes_what_display_writes() {
        let octets = [0u8, 1, 9, 10, 42, 99, 100, 109, 110, 199, 200, 255];
        for a in octets {
            for b in octets {
                let ip = IpAddr::V4(Ipv4Addr::new(a, b, 255 - a, b / 2));
                assert_eq!(super::ip_text(ip), ip.to_string());
            }
        }
        for ip in [
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            "2001:db8::1".parse().unwrap(),
            "::ffff:192.0.2.1".parse().unwrap(),
        ] {
            assert_eq!(super::ip_text(ip), ip.to_string());
        }
    }
}
