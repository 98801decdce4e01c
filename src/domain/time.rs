//! The RFC 3339 writer of the envelope's times.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Writes a time as chrono does (RFC 3339, UTC, `Z`, 0, 3, 6 or 9 fraction
/// digits, whichever shows it exactly) without going through `fmt`: every
/// queued envelope carries two times, and formatting them was a visible
/// part of an ingest request.
pub(super) fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    use chrono::{Datelike, Timelike};
    let nanos = t.nanosecond();
    let year = t.year();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        // Outside what four digits hold, or a leap second: chrono's own.
        return t.serialize(s);
    }
    let mut buf = [0u8; 30];
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut v = value;
        for i in (0..digits).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year as u32, 4);
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
    // Only ASCII digits and separators were written.
    let text = std::str::from_utf8(&buf[..=len]).map_err(serde::ser::Error::custom)?;
    s.serialize_str(text)
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
}
