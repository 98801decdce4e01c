//! The fields of an event that the counters use, owned (outbox recovery)
//! or borrowed (the worker), and the one-letter code of each kind.

use chrono::{DateTime, Utc};

use crate::domain::Kind;

/// The fields of an event the counters use.
#[derive(Debug, Clone)]
pub struct CountedEvent {
    /// `""` unless `TENANTS=on`.
    pub tenant: String,
    pub kind: Kind,
    pub ad_id: Option<String>,
    pub campaign_id: Option<String>,
    pub screen_id: Option<String>,
    pub ip: Option<String>,
    pub time: DateTime<Utc>,
    /// Flagged as invalid traffic (`IVT_FILTER=flag`): counted only in the
    /// `x<k>` fields.
    pub invalid: bool,
}

impl From<&crate::domain::Event> for CountedEvent {
    fn from(e: &crate::domain::Event) -> Self {
        Self {
            tenant: e.tenant_id.clone(),
            kind: e.kind,
            ad_id: e.ad_id.as_ref().map(|v| v.to_string()),
            campaign_id: e.campaign_id.as_ref().map(|v| v.to_string()),
            screen_id: e.screen_id.as_ref().map(|v| v.to_string()),
            ip: e.ip_text(),
            time: e.timestamp,
            invalid: e.invalid.is_some(),
        }
    }
}

impl CountedEvent {
    pub fn view(&self) -> Counted<'_> {
        Counted {
            tenant: crate::domain::key_text(&self.tenant),
            kind: self.kind,
            ad_id: self.ad_id.as_deref(),
            campaign_id: self.campaign_id.as_deref(),
            screen_id: self.screen_id.as_deref(),
            ip: self.ip.as_deref(),
            time: self.time,
            invalid: self.invalid,
        }
    }
}

/// The fields the counters use, borrowed from an event (the worker) or a
/// [`CountedEvent`] (outbox recovery).
#[derive(Debug, Clone, Copy)]
pub struct Counted<'a> {
    pub tenant: &'a str,
    pub kind: Kind,
    pub ad_id: Option<&'a str>,
    pub campaign_id: Option<&'a str>,
    pub screen_id: Option<&'a str>,
    /// The client IP as text.
    pub ip: Option<&'a str>,
    pub time: DateTime<Utc>,
    pub invalid: bool,
}

impl<'a> Counted<'a> {
    /// `ip` is the event's client IP as text (`Event` holds it parsed).
    pub fn of(e: &'a crate::domain::Event, ip: Option<&'a str>) -> Self {
        Self {
            tenant: crate::domain::key_text(&e.tenant_id),
            kind: e.kind,
            ad_id: e.ad_id.as_ref().map(|v| v.as_str()),
            campaign_id: e.campaign_id.as_ref().map(|v| v.as_str()),
            screen_id: e.screen_id.as_ref().map(|v| v.as_str()),
            ip,
            time: e.timestamp,
            invalid: e.invalid.is_some(),
        }
    }
}

pub(crate) fn code(kind: Kind) -> &'static str {
    match kind {
        Kind::Impression => "i",
        Kind::Click => "c",
        Kind::Play => "p",
        Kind::Conversion => "v",
        Kind::Start => "s",
        Kind::FirstQuartile => "1",
        Kind::Midpoint => "2",
        Kind::ThirdQuartile => "3",
        Kind::Complete => "f",
        Kind::Skip => "k",
        Kind::Error => "e",
    }
}

/// The field code of invalid events of `kind` (`IVT_FILTER=flag`): `x`
/// before the kind's code. Such events count only in these fields.
pub(crate) fn invalid_code(kind: Kind) -> &'static str {
    match kind {
        Kind::Impression => "xi",
        Kind::Click => "xc",
        Kind::Play => "xp",
        Kind::Conversion => "xv",
        Kind::Start => "xs",
        Kind::FirstQuartile => "x1",
        Kind::Midpoint => "x2",
        Kind::ThirdQuartile => "x3",
        Kind::Complete => "xf",
        Kind::Skip => "xk",
        Kind::Error => "xe",
    }
}

/// The code of the counter field of `kind`, for valid or invalid events.
pub(crate) fn field_code(kind: Kind, invalid: bool) -> &'static str {
    if invalid {
        invalid_code(kind)
    } else {
        code(kind)
    }
}
