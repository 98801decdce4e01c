//! The RFC 3339 writer and reader of the envelope's times.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Writes a time as chrono does (RFC 3339, UTC, `Z`, 0, 3, 6 or 9 fraction
/// digits, whichever shows it exactly) without going through `fmt`: every
/// queued envelope carries two times, and formatting them was a visible
/// part of an ingest request.
pub(super) fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    match Written::of(t) {
        Some(text) => s.serialize_str(text.as_str()),
        // Outside what four digits hold, or a leap second: chrono's own.
        None => t.serialize(s),
    }
}

/// The text [`rfc3339`] writes for a time whose year has four digits and
/// that is no leap second; chrono writes the others.
pub(super) struct Written {
    buf: [u8; 30],
    len: usize,
}

impl Written {
    pub(super) fn of(t: &DateTime<Utc>) -> Option<Self> {
        use chrono::{Datelike, Timelike};
        // The naive time: `DateTime`'s own accessors add the (zero) offset
        // again for each component.
        let t = t.naive_utc();
        let nanos = t.nanosecond();
        let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
        if nanos >= 1_000_000_000 {
            return None;
        }
        let mut buf = [0u8; 30];
        let mut put = |at: usize, value: u32, digits: usize| {
            let mut v = value;
            for i in (0..digits).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, year, 4);
        put(5, t.month(), 2);
        put(8, t.day(), 2);
        put(11, t.hour(), 2);
        put(14, t.minute(), 2);
        put(17, t.second(), 2);
        let (fraction, digits) = if nanos == 0 {
            (0, 0)
        } else if nanos.is_multiple_of(1_000_000) {
            (nanos / 1_000_000, 3)
        } else if nanos.is_multiple_of(1_000) {
            (nanos / 1_000, 6)
        } else {
            (nanos, 9)
        };
        if digits > 0 {
            put(20, fraction, digits);
        }
        for (at, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
            buf[at] = c;
        }
        let mut len = 19;
        if digits > 0 {
            buf[19] = b'.';
            len = 20 + digits;
        }
        buf[len] = b'Z';
        Some(Self { buf, len: len + 1 })
    }

    /// Only ASCII digits and separators were written.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(super) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// Reads a time as chrono's `Deserialize` does, with a fast path for what
/// [`rfc3339`] writes (`YYYY-MM-DDTHH:MM:SS`, then `.` and 3, 6 or 9
/// digits or none, then `Z`): a worker decodes two times per event, and
/// chrono's general parser was most of decoding an envelope. Anything else
/// (an offset, a leap second, an older envelope) goes to chrono's parser.
pub(super) fn from_rfc3339<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<DateTime<Utc>, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an RFC 3339 time")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            match parse_written(text.as_bytes()) {
                Some(t) => Ok(t),
                None => text
                    .parse::<DateTime<chrono::FixedOffset>>()
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(E::custom),
            }
        }
    }
    d.deserialize_str(Visitor)
}

/// A time in exactly the form [`rfc3339`] writes, else `None`.
pub(super) fn parse_written(b: &[u8]) -> Option<DateTime<Utc>> {
    let digits = match b.len() {
        20 => 0,
        24 | 27 | 30 => b.len() - 21,
        _ => return None,
    };
    let number = |from: usize, len: usize| -> Option<u32> {
        b[from..from + len].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, c)| b[at] != c) || b[b.len() - 1] != b'Z' {
        return None;
    }
    let nanos = if digits == 0 {
        0
    } else {
        if b[19] != b'.' {
            return None;
        }
        number(20, digits)? * 10u32.pow(9 - digits as u32)
    };
    let date = chrono::NaiveDate::from_ymd_opt(number(0, 4)? as i32, number(5, 2)?, number(8, 2)?)?;
    // A second of 60 (a leap second) is left to chrono.
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    if second > 59 {
        return None;
    }
    Some(
        date.and_hms_nano_opt(hour, minute, second, nanos)?
            .and_utc(),
    )
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    #[test]
    fn times_serialize_exactly_as_chrono_does() {
        use chrono::TimeZone;
        let base = Utc.with_ymd_and_hms(2026, 3, 7, 4, 5, 6).unwrap();
        for nanos in [
            0,
            1,
            999,
            1_000,
            120_000,
            1_000_000,
            5_000_000,
            123_456_789,
            999_999_999,
        ] {
            for t in [
                base + chrono::Duration::nanoseconds(nanos),
                Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap()
                    + chrono::Duration::nanoseconds(nanos),
                Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
                Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(12, 1, 1, 0, 0, 0).unwrap(),
            ] {
                let mut ours = serde_json::Serializer::new(Vec::new());
                super::rfc3339(&t, &mut ours).unwrap();
                let ours = String::from_utf8(ours.into_inner()).unwrap();
                assert_eq!(ours, serde_json::to_string(&t).unwrap(), "{t:?}");
            }
        }
    }

    #[test]
    fn times_deserialize_exactly_as_chrono_does() {
        use chrono::{DateTime, Utc};
        #[derive(serde::Deserialize)]
        struct Ours(#[serde(deserialize_with = "super::from_rfc3339")] DateTime<Utc>);
        let texts = [
            "2026-03-07T04:05:06Z",
            "2026-03-07T04:05:06.120Z",
            "2026-03-07T04:05:06.000001Z",
            "2026-03-07T04:05:06.123456789Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            // Leap second, offsets, other fraction lengths, lowercase,
            // a space: chrono's parser decides.
            "2016-12-31T23:59:60Z",
            "2016-12-31T23:59:60.5Z",
            "2026-03-07T04:05:06+02:00",
            "2026-03-07T04:05:06.1Z",
            "2026-03-07T04:05:06.12345Z",
            "2026-03-07t04:05:06z",
            "2026-03-07 04:05:06Z",
            // Not times at all.
            "2026-02-30T04:05:06Z",
            "2026-13-07T04:05:06Z",
            "2026-03-07T24:05:06Z",
            "2026-03-07T04:60:06Z",
            "2026-03-07T04:05:06.12aZ",
            "2026-03-07T04:05:06,123Z",
            "+2026-03-07T04:05:06Z",
            "2026-03-07T04:05:06",
            "",
        ];
        for text in texts {
            let json = serde_json::to_string(text).unwrap();
            let ours = serde_json::from_str::<Ours>(&json).map(|t| t.0).ok();
            let chrono = serde_json::from_str::<DateTime<Utc>>(&json).ok();
            assert_eq!(ours, chrono, "{text}");
        }
        // What the writer writes reads back as the same time.
        use chrono::TimeZone;
        let t = Utc.with_ymd_and_hms(2026, 3, 7, 4, 5, 6).unwrap();
        for nanos in [0, 1, 1_000, 120_000, 5_000_000, 123_456_789, 999_999_999] {
            let t = t + chrono::Duration::nanoseconds(nanos);
            let mut json = serde_json::Serializer::new(Vec::new());
            super::rfc3339(&t, &mut json).unwrap();
            let json = String::from_utf8(json.into_inner()).unwrap();
            assert!(
                super::parse_written(json.trim_matches('"').as_bytes()).is_some(),
                "{json}"
            );
            assert_eq!(serde_json::from_str::<Ours>(&json).unwrap().0, t, "{json}");
        }
    }
}
