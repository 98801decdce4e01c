//! The properties the fuzz targets in `fuzz/` check on arbitrary input. They
//! live in the library so that the unit tests replay every input kept in
//! `fuzz/regressions/` without a fuzzer. Each function panics when its
//! property fails; that is how a fuzzer sees a finding.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use chrono::{DateTime, TimeZone, Utc};

use crate::domain::{parse_event, Event, Kind, ParseContext, MAX_CLOCK_SKEW, MAX_PROPERTIES_BYTES};
use crate::spool::{decode_line, split_segment};

/// The clock of every parse here, so a finding reproduces.
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

/// For any body, under the contexts of `/ads/click`, `/ads/impression` and
/// `/events`: parsing never panics, and an accepted event obeys the event
/// rules and survives its trip through the queue envelope (and a spool
/// line) unchanged.
pub fn parse_event_holds(data: &[u8]) {
    for fixed in [Some(Kind::Click), Some(Kind::Impression), None] {
        let mut ctx = ParseContext::new(now());
        ctx.fixed_kind = fixed;
        ctx.peer_ip = Some([192, 0, 2, 1].into());
        let Ok(event) = parse_event(data, &ctx) else {
            continue;
        };
        if let Some(kind) = fixed {
            assert_eq!(event.kind, kind, "the path fixes the type");
        }
        if event.kind == Kind::Play {
            assert!(event.campaign_id.is_some(), "a play without campaignId");
        } else {
            assert!(event.ad_id.is_some(), "a {} without adId", event.kind);
        }
        assert!(
            event.timestamp <= now() + MAX_CLOCK_SKEW,
            "a timestamp too far ahead"
        );
        assert!(
            event.timestamp >= Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap(),
            "a timestamp before 2000"
        );
        assert!(event.ip_address.is_some(), "no client IP");
        if let Some(t) = event.video_playback_time {
            assert!((0.0..=86_400.0).contains(&t), "videoPlaybackTime {t}");
        }
        assert!(event.amount.is_none_or(|a| a >= 0), "a negative amount");
        if let Some(p) = &event.properties {
            let size = serde_json::to_string(p).unwrap().len();
            assert!(size <= MAX_PROPERTIES_BYTES, "properties of {size} bytes");
        }
        let envelope = serde_json::to_string(&event).expect("an accepted event serializes");
        assert_eq!(
            event
                .to_envelope()
                .expect("an accepted event has an envelope"),
            envelope,
            "the envelope writer and serde write different text"
        );
        let back: Event = serde_json::from_str(&envelope).expect("its envelope parses");
        assert_eq!(back, event, "the envelope changed the event");
        let back = Event::from_envelope(&envelope).expect("its envelope decodes");
        assert_eq!(back, event, "the worker's decoder changed the event");
        assert!(
            decode_line(envelope.as_bytes()).is_ok(),
            "its spool line is refused"
        );
    }
}

/// For any text: what the worker's fast envelope decoder accepts, serde
/// decodes to the same event.
pub fn envelope_holds(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(fast) = crate::domain::envelope::read(text) {
        let slow: Event =
            serde_json::from_str(text).expect("serde refuses what the fast path took");
        assert_eq!(fast, slow, "the two decoders disagree");
    }
}

/// For any segment content: splitting never panics, every line is either
/// replayed or skipped, only the last line can be torn, and what is
/// replayed is exactly the lines that are event envelopes.
pub fn spool_segment_holds(data: &[u8]) {
    let lines = split_segment(data);
    assert_eq!(
        lines.good.len() + lines.skipped.len(),
        lines.count,
        "a line went missing"
    );
    let newlines = data.iter().filter(|b| **b == b'\n').count();
    let torn_tail = !data.is_empty() && data.last() != Some(&b'\n');
    assert_eq!(
        lines.count,
        newlines + usize::from(torn_tail),
        "miscounted lines"
    );
    for (n, _, torn) in &lines.skipped {
        assert_eq!(
            *torn,
            torn_tail && *n == lines.count,
            "line {n} called torn wrongly"
        );
    }
    for line in &lines.good {
        assert!(!line.contains('\n'));
        serde_json::from_str::<Event>(line).expect("a replayed line is an envelope");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input kept in `fuzz/regressions/<target>/` (findings and seeds).
    fn kept(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions")
            .join(target);
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        out.sort();
        assert!(!out.is_empty(), "no inputs in {}", dir.display());
        out
    }

    #[test]
    fn kept_envelope_inputs_hold() {
        for (name, data) in kept("envelope") {
            let r = std::panic::catch_unwind(|| envelope_holds(&data));
            assert!(r.is_ok(), "{name}");
        }
    }

    #[test]
    fn kept_parse_event_inputs_hold() {
        for (name, data) in kept("parse_event") {
            let r = std::panic::catch_unwind(|| parse_event_holds(&data));
            assert!(r.is_ok(), "{name}");
        }
    }

    #[test]
    fn kept_spool_segment_inputs_hold() {
        for (name, data) in kept("spool_segment") {
            let r = std::panic::catch_unwind(|| spool_segment_holds(&data));
            assert!(r.is_ok(), "{name}");
        }
    }

    #[test]
    fn a_torn_tail_is_the_only_torn_line() {
        let mut ctx = ParseContext::new(now());
        ctx.fixed_kind = Some(Kind::Click);
        let line = |ad: &str| {
            let body = format!("{{\"adId\":\"{ad}\",\"ipAddress\":\"10.0.0.1\"}}");
            serde_json::to_string(&parse_event(body.as_bytes(), &ctx).unwrap()).unwrap()
        };
        let data = format!(
            "{}\nnot json\n{}\n{}",
            line("a"),
            line("b"),
            &line("c")[..20]
        );
        spool_segment_holds(data.as_bytes());
        let lines = split_segment(data.as_bytes());
        assert_eq!(lines.good.len(), 2);
        assert_eq!(
            lines.skipped,
            vec![
                (2, "not an event envelope", false),
                (4, "not an event envelope", true)
            ]
        );
        assert_eq!(split_segment(b"").count, 0);
    }
}
