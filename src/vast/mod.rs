//! Video-ad tracking the way players speak it (VAST 4): the document that
//! describes an ad to a player, the signed view it carries, and what its
//! tracking pixels say.
//!
//! Every document served is one *view*: a fresh id, signed together with
//! the ad and the tenant ([`view`]), embedded in every URL of the document.
//! A pixel's eventId is derived from (view, event), so a pixel fired twice,
//! retried, or embedded twice counts once; the pixel then goes through the
//! same ingest path as `POST /events` (rate limits, queue or spool, metrics).
//!
//! Bounds: nothing per view is kept on the server (a view lives only in its
//! signed token), so minting views costs no memory however many are made.
//! A pixel or click is refused unless its view carries adtrack's
//! signature, so it names only a view that a `GET /vast/{adId}` minted.
//! How many views one client can mint, and so how many impressions it can
//! count, is bounded only when `RATE_LIMIT_PER_IP` / `RATE_LIMIT_PER_AD`
//! are set (they are off by default): each document is charged like one
//! event, exactly as a POSTed impression is. Without them, views are as
//! unbounded as POSTed impressions; `IVT_FILTER=flag` then flags bots.

pub mod catalogue;
pub mod document;
pub mod macros;
pub mod view;
mod xml;

pub use catalogue::{Catalogue, Lookup};
pub use document::{render, Document, VideoAd};
pub use macros::{PixelFields, PixelQuery};
pub use view::{View, ViewError, ViewSigner};

use crate::domain::Kind;

/// What a pixel's event is: stored as a kind, or only counted in a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelEvent {
    /// Stored like a POSTed event of this kind, once per view.
    Stored(Kind),
    /// Player state changes (pause, resume, mute, unmute, closeLinear):
    /// they may repeat any number of times within one view and feed no
    /// figure, so they are counted in `adtrack_vast_player_events_total`
    /// only.
    Counted(&'static str),
}

/// The tracking events the document lists, in its order, after the
/// impression (the document's `<Impression>`) and the error URL.
pub const TRACKED: [&str; 11] = [
    "start",
    "firstQuartile",
    "midpoint",
    "thirdQuartile",
    "complete",
    "pause",
    "resume",
    "mute",
    "unmute",
    "skip",
    "closeLinear",
];

impl PixelEvent {
    /// The event a pixel path names; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "impression" => Self::Stored(Kind::Impression),
            "start" => Self::Stored(Kind::Start),
            "firstQuartile" => Self::Stored(Kind::FirstQuartile),
            "midpoint" => Self::Stored(Kind::Midpoint),
            "thirdQuartile" => Self::Stored(Kind::ThirdQuartile),
            "complete" => Self::Stored(Kind::Complete),
            "skip" => Self::Stored(Kind::Skip),
            "error" => Self::Stored(Kind::Error),
            "pause" => Self::Counted("pause"),
            "resume" => Self::Counted("resume"),
            "mute" => Self::Counted("mute"),
            "unmute" => Self::Counted("unmute"),
            "closeLinear" => Self::Counted("closeLinear"),
            _ => return None,
        })
    }
}

/// Whether `url` may be a click redirect's `Location`: an http(s) URL
/// without control characters (a CR or LF would split the header). The
/// catalogue checks the same on write (migration 0012).
pub fn valid_target(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    (lower.starts_with("http://") && url.len() > 7
        || lower.starts_with("https://") && url.len() > 8)
        && !url.chars().any(char::is_control)
}

/// Namespace of the eventIds derived from (view, event).
const PIXEL_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x7661_7374_2d70_6978_656c_2d65_7665_6e74);

/// The eventId of `kind` in view `view`: the same for every firing.
pub fn event_id(view: uuid::Uuid, kind: Kind) -> uuid::Uuid {
    let mut name = Vec::with_capacity(16 + 1 + 16);
    name.extend_from_slice(view.as_bytes());
    name.push(b'/');
    name.extend_from_slice(kind.as_str().as_bytes());
    uuid::Uuid::new_v5(&PIXEL_NAMESPACE, &name)
}

/// The 1×1 transparent GIF a pixel answers with.
pub const GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_depend_on_view_and_kind_only() {
        let a = uuid::Uuid::new_v4();
        let b = uuid::Uuid::new_v4();
        assert_eq!(event_id(a, Kind::Start), event_id(a, Kind::Start));
        assert_ne!(event_id(a, Kind::Start), event_id(a, Kind::Complete));
        assert_ne!(event_id(a, Kind::Start), event_id(b, Kind::Start));
    }

    #[test]
    fn only_http_urls_without_control_characters_are_targets() {
        for ok in [
            "https://example.com/a?b=1",
            "http://x",
            "HTTPS://Example.com",
        ] {
            assert!(valid_target(ok), "{ok}");
        }
        for bad in [
            "",
            "https://",
            "http://",
            "javascript:alert(1)",
            "//evil.example",
            "ftp://x",
            "https://a\r\nSet-Cookie: x",
            "https://a\u{7f}",
        ] {
            assert!(!valid_target(bad), "{bad:?}");
        }
    }

    #[test]
    fn every_listed_event_is_a_pixel() {
        for name in TRACKED.iter().chain(&["impression", "error"]) {
            assert!(PixelEvent::parse(name).is_some(), "{name}");
        }
        assert!(PixelEvent::parse("click").is_none());
    }
}
