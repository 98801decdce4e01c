//! The strict JSON reader of event bodies: duplicate keys (at any depth)
//! and serde_json's private member names are refused, nesting and
//! `properties` are bounded, and every field is checked against its rule
//! before an [`Event`] exists.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, TimeZone, Utc};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Event, EventError, Ident, Kind};

/// Deepest JSON nesting accepted anywhere in an event body.
pub const MAX_DEPTH: usize = 32;
/// Largest serialized `properties` object.
pub const MAX_PROPERTIES_BYTES: usize = 4096;
/// The error codes VAST defines (100–999); `errorCode` takes only these.
pub const VAST_ERROR_CODES: std::ops::RangeInclusive<u16> = 100..=999;
/// Furthest into the future a client timestamp may be.
pub const MAX_CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// What the request around the body decides: the path's kind, the peer, the
/// clock, an `Idempotency-Key`, and whether failure simulation is allowed.
#[derive(Debug, Clone)]
pub struct ParseContext {
    /// Set by `/ads/click` and `/ads/impression`; the body may repeat it.
    pub fixed_kind: Option<Kind>,
    /// Used when the body has no `type` (plays on `/events`).
    pub default_kind: Kind,
    pub peer_ip: Option<IpAddr>,
    pub now: DateTime<Utc>,
    /// From the `Idempotency-Key` header; used when the body has no eventId.
    pub default_event_id: Option<Uuid>,
    pub allow_simulate_failure: bool,
    /// Event times before this are refused (raw events that old are no
    /// longer kept: `EVENT_RETENTION`).
    pub oldest: Option<DateTime<Utc>>,
    /// The tenant the request's API key belongs to (`""` unless `TENANTS=on`).
    pub tenant: String,
}

impl ParseContext {
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            fixed_kind: None,
            default_kind: Kind::Play,
            peer_ip: None,
            now,
            default_event_id: None,
            allow_simulate_failure: false,
            oldest: None,
            tenant: String::new(),
        }
    }
}

/// Parses one event body (a JSON object).
pub fn parse_event(body: &[u8], ctx: &ParseContext) -> Result<Event, EventError> {
    // Duplicate keys deeper down (say inside `properties`) would otherwise be
    // resolved silently, last one wins; refuse them like top-level ones. This
    // strict pass runs first: it also refuses serde_json's private keys,
    // which would make the `Value` pass below read a string as JSON.
    serde_json::from_slice::<NoDuplicateKeys>(body).map_err(json_error)?;
    let fields: Fields = serde_json::from_slice(body).map_err(json_error)?;
    build(fields.0, ctx)
}

/// Parses one event that arrived inside a batch as an already-decoded value.
pub fn parse_value(value: Value, ctx: &ParseContext) -> Result<Event, EventError> {
    match value {
        Value::Object(map) => build(map.into_iter().collect(), ctx),
        other => Err(EventError::body(
            "invalid_body",
            format!("an event must be a JSON object, not {}", type_name(&other)),
        )),
    }
}

/// The prefix of the member names serde_json gives a meaning of its own.
const SERDE_PRIVATE_KEY: &str = "$serde_json::private::";

/// Any JSON value, refused when an object in it repeats a key or uses one of
/// serde_json's private member names.
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeysVisitor)
    }
}

struct NoDuplicateKeysVisitor;

impl<'de> Visitor<'de> for NoDuplicateKeysVisitor {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            // With the `raw_value` feature, `{"$serde_json::private::RawValue":
            // "<text>"}` decodes as the JSON inside <text>, past this check.
            if key.starts_with(SERDE_PRIVATE_KEY) {
                return Err(de::Error::custom(format_args!(
                    "reserved key {key:?} inside an object"
                )));
            }
            map.next_value::<NoDuplicateKeys>()?;
            if !seen.insert(key) {
                return Err(de::Error::custom("duplicate field inside an object"));
            }
        }
        Ok(NoDuplicateKeys)
    }
}

pub(crate) fn json_error(e: serde_json::Error) -> EventError {
    let text = e.to_string();
    if text.contains("recursion limit") {
        return EventError::body(
            "too_deep",
            format!("JSON is nested deeper than {MAX_DEPTH} levels"),
        );
    }
    if text.contains("duplicate field") {
        return EventError::body("duplicate_field", text);
    }
    if text.contains("reserved key") {
        return EventError::body("reserved_key", text);
    }
    EventError::body(
        "invalid_json",
        format!("body is not a valid JSON object: {text}"),
    )
}

/// A JSON object read as its list of members, so duplicate keys are seen
/// (a map would silently keep the last one).
struct Fields(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8).min(32));
                while let Some(key) = map.next_key::<String>()? {
                    if out.len() >= 64 {
                        return Err(de::Error::custom("an event has at most 64 fields"));
                    }
                    let value: Value = map.next_value()?;
                    out.push((key, value));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    EventId,
    Type,
    AdId,
    CampaignId,
    ScreenId,
    UserId,
    Ip,
    Timestamp,
    PlaybackTime,
    Amount,
    Variant,
    ExperimentId,
    Properties,
    SimulateFailure,
    ErrorCode,
}

impl Field {
    fn from_key(key: &str) -> Option<Self> {
        Some(match key {
            "eventId" | "event_id" => Self::EventId,
            "type" => Self::Type,
            "adId" | "ad_id" => Self::AdId,
            "campaignId" | "campaign_id" => Self::CampaignId,
            "screenId" | "screen_id" => Self::ScreenId,
            "userId" | "user_id" => Self::UserId,
            "ipAddress" | "ip_address" | "ip" => Self::Ip,
            "timestamp" | "ts" => Self::Timestamp,
            "videoPlaybackTime" | "video_playback_time" => Self::PlaybackTime,
            "amount" => Self::Amount,
            "variant" => Self::Variant,
            "experimentId" | "experiment_id" => Self::ExperimentId,
            "properties" => Self::Properties,
            "simulateFailure" | "simulate_failure" => Self::SimulateFailure,
            "errorCode" | "error_code" => Self::ErrorCode,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::EventId => "eventId",
            Self::Type => "type",
            Self::AdId => "adId",
            Self::CampaignId => "campaignId",
            Self::ScreenId => "screenId",
            Self::UserId => "userId",
            Self::Ip => "ipAddress",
            Self::Timestamp => "timestamp",
            Self::PlaybackTime => "videoPlaybackTime",
            Self::Amount => "amount",
            Self::Variant => "variant",
            Self::ExperimentId => "experimentId",
            Self::Properties => "properties",
            Self::SimulateFailure => "simulateFailure",
            Self::ErrorCode => "errorCode",
        }
    }
}

fn build(fields: Vec<(String, Value)>, ctx: &ParseContext) -> Result<Event, EventError> {
    // The limit holds for the whole body, members adtrack ignores included.
    if 1 + fields.iter().map(|(_, v)| depth(v)).max().unwrap_or(0) > MAX_DEPTH {
        return Err(EventError::body(
            "too_deep",
            format!("JSON is nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    let mut seen: Vec<Field> = Vec::with_capacity(fields.len());
    let mut event_id = None;
    let mut kind = None;
    let mut ad_id = None;
    let mut campaign_id = None;
    let mut screen_id = None;
    let mut user_id = None;
    let mut ip = None;
    let mut timestamp = None;
    let mut playback = None;
    let mut amount = None;
    let mut variant = None;
    let mut experiment_id = None;
    let mut properties = None;
    let mut simulate_failure = false;
    let mut error_code = None;

    for (key, value) in fields {
        // Unknown members are ignored so older and newer clients keep working.
        let Some(field) = Field::from_key(&key) else {
            continue;
        };
        if seen.contains(&field) {
            return Err(EventError::body(
                "duplicate_field",
                format!("{} is given more than once", field.name()),
            ));
        }
        seen.push(field);
        if value.is_null() {
            continue;
        }
        let name = field.name();
        match field {
            Field::EventId => {
                let s = string(&value, name)?;
                event_id = Some(
                    Uuid::parse_str(s).map_err(|_| EventError::field(name, "must be a UUID"))?,
                );
            }
            Field::Type => {
                let s = string(&value, name)?;
                kind = Some(Kind::parse(s).ok_or_else(|| {
                    EventError::field(name, format_args!("must be one of {}", Kind::NAMES))
                })?);
            }
            Field::AdId => ad_id = Some(ident(&value, name)?),
            Field::CampaignId => campaign_id = Some(ident(&value, name)?),
            Field::ScreenId => screen_id = Some(ident(&value, name)?),
            Field::UserId => user_id = Some(text(&value, name, 128)?),
            Field::Variant => variant = Some(text(&value, name, 64)?),
            Field::ExperimentId => experiment_id = Some(text(&value, name, 64)?),
            Field::Ip => {
                let s = string(&value, name)?;
                ip = Some(
                    s.parse::<IpAddr>()
                        .map_err(|_| EventError::field(name, "must be an IPv4 or IPv6 address"))?,
                );
            }
            Field::Timestamp => timestamp = Some(time(&value, name, ctx)?),
            Field::PlaybackTime => {
                let n = value
                    .as_f64()
                    .filter(|n| n.is_finite() && (0.0..=86_400.0).contains(n))
                    .ok_or_else(|| EventError::field(name, "must be a number from 0 to 86400"))?;
                playback = Some(n);
            }
            Field::Amount => {
                let n = value.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
                    EventError::field(name, "must be an integer from 0 to 9223372036854775807")
                })?;
                amount = Some(n);
            }
            Field::Properties => {
                let Value::Object(map) = value else {
                    return Err(EventError::field(name, "must be a JSON object"));
                };
                // The member itself sits at depth 2 of the event body.
                if depth_of_map(&map) + 1 > MAX_DEPTH {
                    return Err(EventError::body(
                        "too_deep",
                        format!("JSON is nested deeper than {MAX_DEPTH} levels"),
                    ));
                }
                let encoded = serde_json::to_string(&map).unwrap_or_default();
                // PostgreSQL's jsonb cannot hold U+0000.
                if encoded.contains("\\u0000") {
                    return Err(EventError::field(name, "must not contain NUL characters"));
                }
                let size = encoded.len();
                if size > MAX_PROPERTIES_BYTES {
                    return Err(EventError::body(
                        "properties_too_large",
                        format!("properties is {size} bytes; at most {MAX_PROPERTIES_BYTES} are allowed"),
                    ));
                }
                properties = Some(map);
            }
            Field::ErrorCode => {
                let n = value
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| VAST_ERROR_CODES.contains(n))
                    .ok_or_else(|| {
                        EventError::field(
                            name,
                            "must be a VAST error code, an integer from 100 to 999",
                        )
                    })?;
                error_code = Some(n);
            }
            Field::SimulateFailure => {
                simulate_failure = value
                    .as_bool()
                    .ok_or_else(|| EventError::field(name, "must be true or false"))?;
                if simulate_failure && !ctx.allow_simulate_failure {
                    return Err(EventError::field(
                        name,
                        "is honoured only when the server runs with SIMULATE_FAILURES=true",
                    ));
                }
            }
        }
    }

    let kind = match (ctx.fixed_kind, kind) {
        (Some(fixed), Some(given)) if fixed != given => {
            return Err(EventError::field(
                "type",
                format_args!("must be {fixed} on this path (or be left out)"),
            ))
        }
        (Some(fixed), _) => fixed,
        (None, Some(given)) => given,
        (None, None) => ctx.default_kind,
    };
    if error_code.is_some() && kind != Kind::Error {
        return Err(EventError::field(
            "errorCode",
            format_args!("is only for error events, not {kind}"),
        ));
    }
    if kind == Kind::Play {
        if campaign_id.is_none() {
            return Err(EventError::field("campaignId", "is required for plays"));
        }
    } else if ad_id.is_none() {
        return Err(EventError::field(
            "adId",
            format_args!("is required for {kind} events"),
        ));
    }

    Ok(Event {
        event_id: event_id
            .or(ctx.default_event_id)
            .unwrap_or_else(Uuid::now_v7),
        kind,
        ad_id,
        campaign_id,
        screen_id,
        user_id,
        ip_address: ip.or(ctx.peer_ip),
        timestamp: timestamp.unwrap_or(ctx.now),
        received_at: ctx.now,
        video_playback_time: playback,
        amount,
        error_code,
        variant,
        experiment_id,
        properties,
        simulate_failure,
        attempts: 0,
        tenant_id: ctx.tenant.clone(),
    })
}

fn string<'a>(value: &'a Value, name: &str) -> Result<&'a str, EventError> {
    value.as_str().ok_or_else(|| {
        EventError::field(
            name,
            format_args!("must be a string, not {}", type_name(value)),
        )
    })
}

fn ident(value: &Value, name: &str) -> Result<Ident, EventError> {
    Ident::parse(string(value, name)?).map_err(|problem| EventError::field(name, problem))
}

fn text(value: &Value, name: &str, max: usize) -> Result<String, EventError> {
    let s = string(value, name)?;
    if s.chars().count() > max {
        return Err(EventError::field(
            name,
            format_args!("must be at most {max} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(EventError::field(
            name,
            "must not contain control characters",
        ));
    }
    Ok(s.to_owned())
}

fn time(value: &Value, name: &str, ctx: &ParseContext) -> Result<DateTime<Utc>, EventError> {
    let now = ctx.now;
    let s = string(value, name)?;
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|_| {
            EventError::field(
                name,
                "must be an RFC 3339 time such as 2026-01-31T12:00:00Z",
            )
        })?
        .with_timezone(&Utc);
    if t > now + MAX_CLOCK_SKEW {
        return Err(EventError::field(
            name,
            "is more than 5 minutes in the future",
        ));
    }
    if t < earliest() {
        return Err(EventError::field(name, "is before 2000-01-01"));
    }
    if let Some(oldest) = ctx.oldest.filter(|oldest| t < *oldest) {
        return Err(EventError::field(
            name,
            format!(
                "is older than this server accepts (EVENT_RETENTION / MAX_EVENT_AGE; oldest accepted: {})",
                oldest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        ));
    }
    Ok(t)
}

/// The earliest event time accepted.
pub fn earliest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn depth_of_map(map: &Map<String, Value>) -> usize {
    1 + map.values().map(depth).max().unwrap_or(0)
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => depth_of_map(map),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_comes_from_the_context_and_survives_the_envelope() {
        let mut c = ctx();
        c.tenant = "acme".into();
        let e = parse_event(
            br#"{"adId":"a","type":"click","tenantId":"globex","tenant_id":"globex"}"#,
            &c,
        )
        .unwrap();
        assert_eq!(e.tenant_id, "acme");
        let envelope = serde_json::to_string(&e).unwrap();
        let back: Event = serde_json::from_str(&envelope).unwrap();
        assert_eq!(back.tenant_id, "acme");
        // Tenants off: the envelope has no tenantId at all.
        let plain = parse_event(
            br#"{"adId":"a","type":"click","tenantId":"globex"}"#,
            &ctx(),
        )
        .unwrap();
        assert_eq!(plain.tenant_id, "");
        assert!(!serde_json::to_string(&plain).unwrap().contains("tenantId"));
    }

    fn ctx() -> ParseContext {
        ParseContext::new(Utc::now())
    }

    fn click_ctx() -> ParseContext {
        ParseContext {
            fixed_kind: Some(Kind::Click),
            ..ctx()
        }
    }

    #[test]
    fn seed_click_body_parses() {
        let body = br#"{"adId":"11111111-1111-1111-1111-111111111111","timestamp":"2025-07-02T18:30:00Z","ipAddress":"1.2.3.4","videoPlaybackTime":10.5}"#;
        let e = parse_event(body, &click_ctx()).unwrap();
        assert_eq!(e.kind, Kind::Click);
        assert_eq!(
            e.ad_id.unwrap().as_str(),
            "11111111-1111-1111-1111-111111111111"
        );
        assert_eq!(e.ip_address.unwrap().to_string(), "1.2.3.4");
        assert_eq!(e.video_playback_time, Some(10.5));
    }

    #[test]
    fn snake_case_play_defaults_to_play() {
        let e = parse_event(
            br#"{"screen_id":"s-1","campaign_id":"c-1","ts":"2026-01-01T00:00:00Z"}"#,
            &ctx(),
        )
        .unwrap();
        assert_eq!(e.kind, Kind::Play);
        assert_eq!(e.screen_id.unwrap().as_str(), "s-1");
    }

    #[test]
    fn both_spellings_of_a_field_are_a_duplicate() {
        let err = parse_event(br#"{"adId":"a","ad_id":"b"}"#, &click_ctx()).unwrap_err();
        assert_eq!(err.code, "duplicate_field");
        let err = parse_event(br#"{"adId":"a","adId":"b"}"#, &click_ctx()).unwrap_err();
        assert_eq!(err.code, "duplicate_field");
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"adId":""}"#, "adId"),
            (br#"{"adId":"a b"}"#, "adId"),
            (br#"{"adId":5}"#, "adId"),
            (br#"{"adId":"a","ipAddress":"1.2.3"}"#, "ipAddress"),
            (br#"{"adId":"a","timestamp":"yesterday"}"#, "timestamp"),
            (
                br#"{"adId":"a","timestamp":"1999-12-31T23:59:59Z"}"#,
                "timestamp",
            ),
            (
                br#"{"adId":"a","timestamp":"2999-01-01T00:00:00Z"}"#,
                "timestamp",
            ),
            (
                br#"{"adId":"a","videoPlaybackTime":-1}"#,
                "videoPlaybackTime",
            ),
            (
                br#"{"adId":"a","videoPlaybackTime":86401}"#,
                "videoPlaybackTime",
            ),
            (br#"{"adId":"a","amount":1.5}"#, "amount"),
            (br#"{"adId":"a","amount":-3}"#, "amount"),
            (br#"{"adId":"a","eventId":"nope"}"#, "eventId"),
            (br#"{"adId":"a","type":"view"}"#, "type"),
            (br#"{"adId":"a","type":"impression"}"#, "type"),
            (br#"{"adId":"a","properties":[1]}"#, "properties"),
            (br#"{"adId":"a","simulateFailure":true}"#, "simulateFailure"),
            (br#"{"adId":"a","userId":"a\u0000b"}"#, "userId"),
            (
                br#"{"adId":"a","properties":{"k":"a\u0000b"}}"#,
                "properties",
            ),
            (br#"{"timestamp":"2026-01-01T00:00:00Z"}"#, "adId"),
        ];
        for (body, field) in cases {
            let err = parse_event(body, &click_ctx()).unwrap_err();
            assert!(
                err.message.contains(field),
                "{}: {}",
                String::from_utf8_lossy(body),
                err.message
            );
        }
    }

    #[test]
    fn plays_need_a_campaign() {
        let err = parse_event(br#"{"screenId":"s"}"#, &ctx()).unwrap_err();
        assert!(err.message.contains("campaignId"));
    }

    #[test]
    fn non_objects_and_deep_nesting_are_rejected() {
        assert_eq!(
            parse_event(b"[1]", &ctx()).unwrap_err().code,
            "invalid_json"
        );
        assert_eq!(
            parse_event(b"\"x\"", &ctx()).unwrap_err().code,
            "invalid_json"
        );
        let deep = format!(
            r#"{{"campaignId":"c","properties":{}1{}}}"#,
            r#"{"a":"#.repeat(40),
            "}".repeat(40)
        );
        assert_eq!(
            parse_event(deep.as_bytes(), &ctx()).unwrap_err().code,
            "too_deep"
        );
        let ok = format!(
            r#"{{"campaignId":"c","properties":{}1{}}}"#,
            r#"{"a":"#.repeat(31),
            "}".repeat(31)
        );
        assert!(parse_event(ok.as_bytes(), &ctx()).is_ok());
    }

    #[test]
    fn properties_over_4_kib_are_rejected() {
        let body = format!(
            r#"{{"campaignId":"c","properties":{{"x":"{}"}}}}"#,
            "a".repeat(4100)
        );
        assert_eq!(
            parse_event(body.as_bytes(), &ctx()).unwrap_err().code,
            "properties_too_large"
        );
    }

    #[test]
    fn envelope_round_trips() {
        let e = parse_event(
            br#"{"adId":"a","type":"conversion","amount":5,"variant":"B","properties":{"k":[1,2]}}"#,
            &ctx(),
        )
        .unwrap();
        let json = serde_json::to_string(&e).unwrap();
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(e, back);
    }

    #[test]
    fn idempotency_default_applies_only_without_an_event_id() {
        let id = Uuid::new_v4();
        let c = ParseContext {
            default_event_id: Some(id),
            ..click_ctx()
        };
        assert_eq!(parse_event(br#"{"adId":"a"}"#, &c).unwrap().event_id, id);
        let own = Uuid::new_v4();
        let body = format!(r#"{{"adId":"a","eventId":"{own}"}}"#);
        assert_eq!(parse_event(body.as_bytes(), &c).unwrap().event_id, own);
    }

    #[test]
    fn serde_private_keys_are_refused_at_any_depth() {
        let bodies: &[&[u8]] = &[
            br#"{"adId":"a","properties":{"$serde_json::private::RawValue":"{\"k\":1,\"k\":2}"}}"#,
            br#"{"adId":"a","extra":[{"$serde_json::private::RawValue":"[1]"}]}"#,
            br#"{"$serde_json::private::Number":"1","adId":"a"}"#,
        ];
        for body in bodies {
            let err = parse_event(body, &click_ctx()).unwrap_err();
            assert_eq!(
                err.code,
                "reserved_key",
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn playback_times_keep_every_bit() {
        // Shortest decimal forms of pseudo-random doubles in 0..86400 must
        // decode to the same double (serde_json's `float_roundtrip`).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x >> 11) as f64 / (1u64 << 53) as f64 * 86_400.0;
            let body = format!(r#"{{"adId":"a","videoPlaybackTime":{n:?}}}"#);
            let e = parse_event(body.as_bytes(), &click_ctx()).unwrap();
            assert_eq!(
                e.video_playback_time.map(f64::to_bits),
                Some(n.to_bits()),
                "{n:?}"
            );
        }
    }
}
