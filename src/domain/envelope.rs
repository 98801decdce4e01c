//! Writing and reading an envelope: the JSON text of an [`Event`] on a
//! Redis list.
//!
//! Ingest writes one envelope per event, and serde's derived encoder was a
//! fifteenth of an ingest request. [`Event::to_envelope`] writes the same
//! text in one pass (the tests hold the two byte for byte equal), and
//! leaves to serde only what it would write differently: a time chrono
//! writes, a float or a string that needs escaping.
//!
//! A worker decodes one envelope per event, and serde's derived decoder was
//! over a third of a worker's instructions. [`Event::from_envelope`] reads
//! the form adtrack's own encoder writes (no whitespace, no escapes, no
//! `null`, each member once, numbers that both parsers read exactly) in one
//! pass, and hands anything else to serde: an escape in a string, a
//! `properties` object, an unknown member, a time chrono must read, an
//! envelope of an older or newer release. Whatever the fast path decodes,
//! serde decodes to the same event (see the tests); it never accepts what
//! serde would refuse.

use std::net::IpAddr;

use uuid::Uuid;

use super::event::{push_ip, Event, InvalidReason, Kind};
use super::time::{parse_written, Written};
use super::Ident;

impl Event {
    /// The envelope of this event: exactly what `serde_json::to_string`
    /// writes for it.
    pub fn to_envelope(&self) -> serde_json::Result<String> {
        match write(self) {
            Some(text) => Ok(text),
            None => serde_json::to_string(self),
        }
    }

    /// The event an envelope holds, or serde's error for it.
    pub fn from_envelope(raw: &str) -> serde_json::Result<Event> {
        match read(raw) {
            Some(event) => Ok(event),
            None => serde_json::from_str(raw),
        }
    }
}

/// The envelope of `e`, member by member in the order of `Event`'s fields
/// (serde's order); `None` for a time [`Written`] leaves to chrono.
fn write(e: &Event) -> Option<String> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"eventId\":\"");
    out.extend_from_slice(
        e.event_id
            .hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .as_bytes(),
    );
    out.extend_from_slice(b"\",\"type\":\"");
    out.extend_from_slice(e.kind.as_str().as_bytes());
    out.push(b'"');
    for (name, value) in [
        ("adId", e.ad_id.as_ref().map(Ident::as_str)),
        ("campaignId", e.campaign_id.as_ref().map(Ident::as_str)),
        ("screenId", e.screen_id.as_ref().map(Ident::as_str)),
        ("userId", e.user_id.as_deref()),
    ] {
        if let Some(value) = value {
            member(&mut out, name);
            string(&mut out, value)?;
        }
    }
    if let Some(ip) = e.ip_address {
        member(&mut out, "ipAddress");
        out.push(b'"');
        push_ip(&mut out, ip);
        out.push(b'"');
    }
    for (name, t) in [("timestamp", &e.timestamp), ("receivedAt", &e.received_at)] {
        member(&mut out, name);
        out.push(b'"');
        out.extend_from_slice(Written::of(t)?.as_bytes());
        out.push(b'"');
    }
    if let Some(t) = e.video_playback_time {
        member(&mut out, "videoPlaybackTime");
        serde_json::to_writer(&mut out, &t).ok()?;
    }
    if let Some(amount) = e.amount {
        member(&mut out, "amount");
        out.extend_from_slice(itoa::Buffer::new().format(amount).as_bytes());
    }
    if let Some(code) = e.error_code {
        member(&mut out, "errorCode");
        out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    }
    for (name, value) in [
        ("variant", e.variant.as_deref()),
        ("experimentId", e.experiment_id.as_deref()),
    ] {
        if let Some(value) = value {
            member(&mut out, name);
            string(&mut out, value)?;
        }
    }
    if let Some(properties) = &e.properties {
        member(&mut out, "properties");
        serde_json::to_writer(&mut out, properties).ok()?;
    }
    if e.simulate_failure {
        out.extend_from_slice(b",\"simulateFailure\":true");
    }
    if e.attempts != 0 {
        member(&mut out, "attempts");
        out.extend_from_slice(itoa::Buffer::new().format(e.attempts).as_bytes());
    }
    if !e.tenant_id.is_empty() {
        member(&mut out, "tenantId");
        string(&mut out, &e.tenant_id)?;
    }
    if let Some(reason) = e.invalid {
        member(&mut out, "invalid");
        out.push(b'"');
        out.extend_from_slice(reason.as_str().as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
    String::from_utf8(out).ok()
}

/// `,"name":`
fn member(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A JSON string as serde_json writes it: as it is between quotes unless
/// it holds a byte serde_json escapes (a quote, a backslash, a control
/// character), which serde_json then writes itself.
fn string(out: &mut Vec<u8>, value: &str) -> Option<()> {
    if value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        return serde_json::to_writer(out, value).ok();
    }
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
    Some(())
}

/// The members the fast path reads; a member's index is its bit in the
/// mask that refuses a member written twice (serde refuses it too).
const MEMBERS: [&str; 18] = [
    "eventId",
    "type",
    "timestamp",
    "receivedAt",
    "adId",
    "campaignId",
    "screenId",
    "userId",
    "ipAddress",
    "videoPlaybackTime",
    "amount",
    "errorCode",
    "variant",
    "experimentId",
    "simulateFailure",
    "attempts",
    "tenantId",
    "invalid",
];

struct Cursor<'a> {
    /// The envelope, sliced between ASCII bytes, so that a slice is text
    /// without validating it again.
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&self, at: usize) -> Option<u8> {
        self.text.as_bytes().get(at).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.byte(self.at) == Some(c)).then(|| self.at += 1)
    }

    /// A string without escapes or control characters, as written.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        loop {
            match self.byte(self.at)? {
                b'"' => break,
                b'\\' => return None,
                c if c < 0x20 => return None,
                _ => self.at += 1,
            }
        }
        let text = self.text.get(start..self.at)?;
        self.at += 1;
        Some(text)
    }

    /// A JSON number token: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, no exponent.
    /// Returns its text and whether it has a fraction.
    fn number(&mut self) -> Option<(&'a str, bool)> {
        let start = self.at;
        let digits = |c: &mut Self| {
            let from = c.at;
            while c.byte(c.at).is_some_and(|b| b.is_ascii_digit()) {
                c.at += 1;
            }
            c.at - from
        };
        let _ = self.eat(b'-');
        let int_from = self.at;
        let int = digits(self);
        if int == 0 || (int > 1 && self.byte(int_from) == Some(b'0')) {
            return None;
        }
        let fraction = self.eat(b'.').is_some();
        if fraction && digits(self) == 0 {
            return None;
        }
        if matches!(self.byte(self.at), Some(b'e' | b'E')) {
            return None;
        }
        Some((self.text.get(start..self.at)?, fraction))
    }

    /// An integer. `-0` is left to serde, which reads it as a float (a
    /// negative zero) and so refuses it for an integer member.
    fn integer<T: std::str::FromStr>(&mut self) -> Option<T> {
        match self.number()? {
            ("-0", _) => None,
            (text, false) => text.parse().ok(),
            _ => None,
        }
    }

    /// A float both parsers read exactly: at most 15 significant digits and
    /// no exponent, so that its decimal value rounds once, the same way.
    fn float(&mut self) -> Option<f64> {
        let (text, _) = self.number()?;
        let significant = text
            .bytes()
            .filter(u8::is_ascii_digit)
            .skip_while(|c| *c == b'0')
            .count();
        if significant > 15 {
            return None;
        }
        text.parse().ok().filter(|v: &f64| v.is_finite())
    }

    fn boolean(&mut self) -> Option<bool> {
        let rest = self.text.as_bytes().get(self.at..)?;
        if rest.starts_with(b"true") {
            self.at += 4;
            Some(true)
        } else if rest.starts_with(b"false") {
            self.at += 5;
            Some(false)
        } else {
            None
        }
    }
}

/// The fast path: `None` whenever the text is not in the written form.
pub(crate) fn read(text: &str) -> Option<Event> {
    let mut c = Cursor { text, at: 0 };
    c.eat(b'{')?;
    let mut seen = 0u32;
    let (mut event_id, mut kind, mut timestamp, mut received_at) = (None, None, None, None);
    let mut e = Event {
        event_id: Uuid::nil(),
        kind: Kind::Impression,
        ad_id: None,
        campaign_id: None,
        screen_id: None,
        user_id: None,
        ip_address: None,
        timestamp: chrono::DateTime::UNIX_EPOCH,
        received_at: chrono::DateTime::UNIX_EPOCH,
        video_playback_time: None,
        amount: None,
        error_code: None,
        variant: None,
        experiment_id: None,
        properties: None,
        simulate_failure: false,
        attempts: 0,
        tenant_id: String::new(),
        invalid: None,
    };
    if c.eat(b'}').is_none() {
        loop {
            let name = c.string()?;
            // `properties`, and members this release does not know, go to
            // serde.
            let bit = 1u32 << MEMBERS.iter().position(|m| *m == name)?;
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            c.eat(b':')?;
            let ident = |c: &mut Cursor| c.string().and_then(|s| Ident::parse(s).ok());
            match name {
                "eventId" => {
                    event_id = Some(Uuid::try_parse(c.string()?).ok()?);
                }
                "type" => {
                    kind = Some(Kind::parse(c.string()?)?);
                }
                "timestamp" => {
                    timestamp = Some(parse_written(c.string()?.as_bytes())?);
                }
                "receivedAt" => {
                    received_at = Some(parse_written(c.string()?.as_bytes())?);
                }
                "adId" => {
                    e.ad_id = Some(ident(&mut c)?);
                }
                "campaignId" => {
                    e.campaign_id = Some(ident(&mut c)?);
                }
                "screenId" => {
                    e.screen_id = Some(ident(&mut c)?);
                }
                "userId" => {
                    e.user_id = Some(c.string()?.to_owned());
                }
                "ipAddress" => {
                    e.ip_address = Some(c.string()?.parse::<IpAddr>().ok()?);
                }
                "videoPlaybackTime" => {
                    e.video_playback_time = Some(c.float()?);
                }
                "amount" => {
                    e.amount = Some(c.integer()?);
                }
                "errorCode" => {
                    e.error_code = Some(c.integer()?);
                }
                "variant" => {
                    e.variant = Some(c.string()?.to_owned());
                }
                "experimentId" => {
                    e.experiment_id = Some(c.string()?.to_owned());
                }
                "simulateFailure" => {
                    e.simulate_failure = c.boolean()?;
                }
                "attempts" => {
                    e.attempts = c.integer()?;
                }
                "tenantId" => {
                    e.tenant_id = c.string()?.to_owned();
                }
                "invalid" => {
                    e.invalid = Some(InvalidReason::parse(c.string()?)?);
                }
                _ => return None,
            }
            if c.eat(b'}').is_some() {
                break;
            }
            c.eat(b',')?;
        }
    }
    if c.at != text.len() {
        return None;
    }
    e.event_id = event_id?;
    e.kind = kind?;
    e.timestamp = timestamp?;
    e.received_at = received_at?;
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    fn serde(raw: &str) -> Option<Event> {
        serde_json::from_str(raw).ok()
    }

    fn random_event(rng: &mut impl Rng) -> Event {
        let texts = [
            "",
            "a",
            "user-1",
            "é ü 中文",
            "with \"quotes\"",
            "back\\slash",
            "tab\there",
        ];
        let pick = |i: usize| texts[i % texts.len()].to_owned();
        let now = chrono::Utc::now();
        let mut e = Event {
            event_id: Uuid::now_v7(),
            kind: Kind::ALL[rng.random_range(0..Kind::ALL.len())],
            ad_id: rng
                .random_bool(0.8)
                .then(|| Ident::parse("ad-1.x:y_z").unwrap()),
            campaign_id: rng.random_bool(0.5).then(|| Ident::parse("camp").unwrap()),
            screen_id: rng.random_bool(0.3).then(|| Ident::parse("s-9").unwrap()),
            user_id: rng
                .random_bool(0.3)
                .then(|| pick(rng.random_range(0..texts.len()))),
            ip_address: match rng.random_range(0..3) {
                0 => None,
                1 => Some(IpAddr::from([
                    rng.random(),
                    rng.random(),
                    rng.random(),
                    rng.random(),
                ])),
                _ => Some(IpAddr::from([
                    rng.random::<u16>(),
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    rng.random(),
                ])),
            },
            timestamp: now - chrono::Duration::nanoseconds(rng.random_range(0..10i64.pow(15))),
            received_at: now,
            video_playback_time: match rng.random_range(0..4) {
                0 => None,
                1 => Some(f64::from(rng.random_range(0..86_400))),
                2 => Some(rng.random_range(0.0..86_400.0)),
                _ => Some(rng.random_range(0..8_640_000) as f64 / 100.0),
            },
            amount: rng.random_bool(0.2).then(|| rng.random_range(0..i64::MAX)),
            error_code: rng.random_bool(0.2).then(|| rng.random_range(100..1000)),
            variant: rng
                .random_bool(0.2)
                .then(|| pick(rng.random_range(0..texts.len()))),
            experiment_id: rng
                .random_bool(0.2)
                .then(|| pick(rng.random_range(0..texts.len()))),
            properties: rng
                .random_bool(0.1)
                .then(|| json!({"k": [1, "v"]}).as_object().unwrap().clone()),
            simulate_failure: rng.random_bool(0.1),
            attempts: if rng.random_bool(0.2) {
                rng.random_range(1..10)
            } else {
                0
            },
            tenant_id: if rng.random_bool(0.3) {
                "tenant-a".into()
            } else {
                String::new()
            },
            invalid: rng
                .random_bool(0.2)
                .then(|| InvalidReason::ALL[rng.random_range(0..InvalidReason::ALL.len())]),
        };
        if rng.random_bool(0.1) {
            e.timestamp = e.received_at;
        }
        e
    }

    /// The writer and serde write the same text for every event, and the
    /// writer leaves to serde what it cannot write the same way.
    #[test]
    fn the_writer_writes_what_serde_writes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut odd = random_event(&mut rng);
        let mut events: Vec<Event> = (0..20_000).map(|_| random_event(&mut rng)).collect();
        for user in ["\u{7f}", "\u{2028}", "nul\u{0}", "\u{1f}", "é\"", "end\\"] {
            odd.user_id = Some(user.into());
            events.push(odd.clone());
        }
        odd.video_playback_time = Some(f64::NAN);
        events.push(odd.clone());
        odd.video_playback_time = Some(1e300);
        events.push(odd.clone());
        odd.amount = Some(i64::MIN);
        odd.error_code = Some(u16::MAX);
        odd.attempts = u32::MAX;
        odd.ip_address = Some("::ffff:10.0.0.1".parse().unwrap());
        events.push(odd.clone());
        // chrono's years of five digits and its leap seconds.
        odd.timestamp = "+10000-01-01T00:00:00Z".parse().unwrap();
        events.push(odd.clone());
        odd.timestamp = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        events.push(odd.clone());
        let mut written = 0;
        for e in &events {
            let serde = serde_json::to_string(e).unwrap();
            assert_eq!(e.to_envelope().unwrap(), serde);
            if let Some(text) = write(e) {
                assert_eq!(text, serde);
                written += 1;
            }
        }
        assert_eq!(
            written,
            events.len() - 2,
            "only the two odd times go to serde"
        );
    }

    #[test]
    fn every_written_envelope_decodes_to_its_event() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut fast = 0;
        for _ in 0..20_000 {
            let e = random_event(&mut rng);
            let raw = serde_json::to_string(&e).unwrap();
            assert_eq!(Event::from_envelope(&raw).unwrap(), e, "{raw}");
            if let Some(read) = read(&raw) {
                assert_eq!(read, e, "{raw}");
                fast += 1;
            }
        }
        // Most envelopes take the fast path (not those with properties or
        // escapes, or floats of more than 15 digits).
        assert!(fast > 10_000, "{fast}");
    }

    /// The fast path agrees with serde on everything it accepts, whatever
    /// the bytes: single-byte edits, cuts and splices of real envelopes.
    #[test]
    fn what_the_fast_path_accepts_serde_decodes_the_same() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let alphabet = b"{}[]\":,.-+0123456789eE \\tnulfasrxabcdefzAZ\x01\x7f";
        let mut accepted = 0;
        for _ in 0..100_000 {
            let e = random_event(&mut rng);
            let mut raw = serde_json::to_string(&e).unwrap().into_bytes();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..raw.len());
                match rng.random_range(0..4) {
                    0 => raw[at] = alphabet[rng.random_range(0..alphabet.len())],
                    1 => {
                        raw.remove(at);
                    }
                    2 => raw.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                    _ => raw.truncate(at),
                }
                if raw.is_empty() {
                    break;
                }
            }
            let Ok(text) = String::from_utf8(raw) else {
                continue;
            };
            if let Some(fast) = read(&text) {
                accepted += 1;
                assert_eq!(serde(&text), Some(fast), "{text}");
            }
        }
        assert!(accepted > 1_000, "{accepted}");
    }

    #[test]
    fn the_fast_path_leaves_what_it_does_not_know_to_serde() {
        let id = Uuid::now_v7();
        let base = format!(
            r#""eventId":"{id}","type":"click","timestamp":"2025-07-02T18:30:00Z","receivedAt":"2025-07-02T18:30:00.500Z""#
        );
        for (extra, why) in [
            (r#","adId":null"#, "null"),
            (r#","properties":{"a":1}"#, "properties"),
            (r#","userId":"a\"b""#, "escape"),
            (r#","future":1"#, "unknown member"),
            (r#","adId":"a","adId":"b""#, "duplicate"),
            (r#","videoPlaybackTime":1e2"#, "exponent"),
            (r#","videoPlaybackTime":0.1234567890123456"#, "16 digits"),
            (r#","amount":01"#, "leading zero"),
            (r#","amount":-0"#, "negative zero, a float to serde"),
            (r#", "adId":"a""#, "whitespace"),
        ] {
            let raw = format!("{{{base}{extra}}}");
            assert!(read(&raw).is_none(), "{why}: {raw}");
        }
        let raw = format!("{{{base}}}");
        assert!(read(&raw).is_some());
        // A time chrono reads and the fast path does not.
        let offset = raw.replace("18:30:00Z", "20:30:00+02:00");
        assert!(read(&offset).is_none());
        assert_eq!(
            Event::from_envelope(&offset).unwrap(),
            Event::from_envelope(&raw).unwrap()
        );
    }
}
