//! `GET /live`: server-sent events for the UI. About once a second it sends
//! `pipeline` (queue overview and running totals), `analytics` (for the
//! `adId`/`timeframe` asked for, when it changed) and `campaigns` (the
//! entries of the top [`LIVE_CAMPAIGNS`] by plays that changed since the
//! stream's previous tick; the first tick sends them all). The stream ends
//! when the client goes away or the server shuts down.
//!
//! Bounds: a tick is at most one `pipeline`, one `analytics` and
//! [`LIVE_CAMPAIGNS`] campaign entries (about 12 KiB with 64-character ids),
//! however many campaigns exist; a stream remembers at most
//! [`LIVE_CAMPAIGNS`] entries; and at most `LIVE_MAX_STREAMS` (default 200)
//! streams are open per process: past that, 503 with `Retry-After`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::analytics::timeframe_param;
use super::query;
use super::{ApiError, AppState};
use crate::counters::{self, Timeframe};
use crate::domain::Ident;
use crate::fault::Outage;
use crate::store;

const PERIOD: Duration = Duration::from_secs(1);
/// Campaigns a tick looks at (the top by plays) and at most sends.
pub const LIVE_CAMPAIGNS: u64 = 100;
/// Ticks between two reads of the catalogue (whose campaigns are listed
/// even without plays).
const CATALOGUE_EVERY: u64 = 60;
/// How long a client refused for the stream cap should wait.
const FULL_RETRY_AFTER_SECS: u64 = 5;

/// One open stream's place under `LIVE_MAX_STREAMS`; freed when the stream
/// is dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        let taken = open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The query of `GET /live` (its `apiKey` is read by `super::api_key`).
#[derive(Deserialize)]
struct LiveQuery {
    #[serde(rename = "adId")]
    ad_id: Option<String>,
    timeframe: Option<String>,
}

/// What a stream remembers between ticks, to send only changes.
#[derive(Default)]
struct Sent {
    ticks: u64,
    known: Vec<String>,
    analytics: Option<String>,
    campaigns: HashMap<String, (u64, u64)>,
}

/// Server-sent events for dashboards, about once a second: `pipeline`,
/// `analytics` (for `adId`/`timeframe`, when it changed) and `campaigns`
/// (entries of the top 100 that changed since the previous tick; merge them
/// by `campaignId`).
#[utoipa::path(
    get,
    path = "/live",
    tag = "analytics",
    params(
        ("adId" = Option<String>, Query, description = "1 to 64 characters of A-Z a-z 0-9 _ . : -", pattern = "^([A-Za-z0-9_.:-]{1,64})?$"),
        ("timeframe" = Option<String>, Query, description = "1h, 24h (default), 7d or all", pattern = "^(1h|24h|7d|all)?$"),
        ("apiKey" = Option<String>, Query, description = "With TENANTS=on: the key (EventSource cannot send headers)"),
    ),
    responses(
        (status = 200, description = "An endless text/event-stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "An invalid query parameter", body = super::openapi::ErrorBody),
        (status = 401, description = "TENANTS=on and no valid key", body = super::openapi::ErrorBody),
        (status = 503, description = "LIVE_MAX_STREAMS streams are open; retry after Retry-After seconds", body = super::openapi::ErrorBody),
    )
)]
pub async fn live(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let q: LiveQuery = query::parse(&req)?;
    let ad = match q.ad_id.as_deref().filter(|v| !v.is_empty()) {
        Some(v) => Some(Ident::parse(v).map_err(|p| ApiError::invalid_field(format!("adId {p}")))?),
        None => None,
    };
    let timeframe = timeframe_param(q.timeframe.as_deref())?;
    let tenant = super::tenant_of(&req, &state).await?;
    let key = super::api_key(&req)?;
    let slot =
        Slot::take(&state.live_streams, state.settings.live_max_streams).ok_or_else(|| {
            ApiError::Unavailable {
                message: format!(
                    "{} live streams are open, the most this server keeps; try again later",
                    state.settings.live_max_streams
                ),
                retry_after_secs: FULL_RETRY_AFTER_SECS,
            }
        })?;
    let start = (state, slot, Sent::default());
    let stream = futures_util::stream::unfold(start, move |(state, slot, mut sent)| {
        let ad = ad.clone();
        let tenant = tenant.clone();
        let key = key.clone();
        async move {
            if sent.ticks > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(PERIOD) => {}
                    _ = state.shutdown.cancelled() => return None,
                }
                if !still_valid(&state, &key).await {
                    return None;
                }
            }
            let chunk = frame(&state, &tenant, ad.as_ref(), timeframe, &mut sent).await;
            sent.ticks += 1;
            Some((
                Ok::<_, actix_web::Error>(Bytes::from(chunk)),
                (state, slot, sent),
            ))
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        // An event must never wait in a compressor's buffer.
        .insert_header(actix_web::http::header::ContentEncoding::Identity)
        .streaming(stream))
}

/// Whether the stream's key still resolves (always, with tenants off). The
/// resolver answers from memory, refreshed within `tenants::REFRESH`; when
/// it cannot load keys at all the stream goes on.
async fn still_valid(state: &AppState, key: &str) -> bool {
    match &state.api_keys {
        None => true,
        Some(resolver) => !matches!(resolver.tenant_of(key).await, Ok(None)),
    }
}

/// One round of events. A part whose source fails is left out of this
/// round and logged with its cause (a comment line keeps the connection
/// alive when nothing could be sent).
async fn frame(
    state: &AppState,
    tenant: &str,
    ad: Option<&Ident>,
    timeframe: Timeframe,
    sent: &mut Sent,
) -> String {
    let mut out = String::new();
    let mut conn = state.redis.clone();
    let layout = state.layout.tenant(tenant);
    // The pipeline overview spans every tenant: operators only (with
    // tenants on it stays behind /admin/queue).
    if state.api_keys.is_none() {
        if let Some(mut status) = logged("pipeline", super::admin::queue_status(state).await) {
            status["ts"] = json!(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            push_event(&mut out, "pipeline", &status.to_string());
        }
    }
    if let Some(ad) = ad {
        let read = super::analytics::read_ad(state, tenant, ad.as_str(), timeframe);
        if let Some(a) = logged("analytics", read.await) {
            match serde_json::to_string(&a) {
                Ok(text) if sent.analytics.as_deref() != Some(text.as_str()) => {
                    push_event(&mut out, "analytics", &text);
                    sent.analytics = Some(text);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(part = "analytics", error = %e, "encoding a live stream part failed")
                }
            }
        }
    }
    if sent.ticks.is_multiple_of(CATALOGUE_EVERY) {
        if let Some(ads) = logged("campaigns", store::catalogue(&state.pool).await) {
            sent.known = ads.into_iter().map(|a| a.campaign_id).collect();
        }
    }
    // One settling at a time per process; the others read what is ranked.
    if let Ok(_gate) = state.settle_gate.try_lock() {
        logged(
            "campaigns",
            super::analytics::settle(state, &mut conn, &layout, tenant).await,
        );
    }
    let top = counters::Slice {
        offset: 0,
        limit: LIVE_CAMPAIGNS,
    };
    if let Some(page) = logged(
        "campaigns",
        counters::campaigns(&mut conn, &layout, sent.known.iter().cloned(), top).await,
    ) {
        let changed: Vec<&counters::CampaignPlays> = page
            .items
            .iter()
            .filter(|c| sent.campaigns.get(&c.campaign_id) != Some(&(c.plays, c.screens)))
            .collect();
        if !changed.is_empty() || sent.ticks == 0 {
            push_json(&mut out, "campaigns", &changed);
        }
        sent.campaigns = page
            .items
            .iter()
            .map(|c| (c.campaign_id.clone(), (c.plays, c.screens)))
            .collect();
    }
    if out.is_empty() {
        out.push_str(": waiting for redis and postgres\n\n");
    }
    out
}

/// The value of a part's read, or `None` after logging why it failed.
fn logged<T>(part: &'static str, read: anyhow::Result<T>) -> Option<T> {
    match read {
        Ok(v) => Some(v),
        Err(e) => {
            let outage = Outage::of(&e);
            tracing::warn!(
                part,
                dependency = outage.dependency.as_str(),
                cause = outage.cause.as_str(),
                error = format!("{e:#}"),
                "live stream part left out"
            );
            None
        }
    }
}

fn push_json(out: &mut String, name: &str, value: &impl serde::Serialize) {
    match serde_json::to_string(value) {
        Ok(text) => push_event(out, name, &text),
        Err(e) => tracing::error!(part = name, error = %e, "encoding a live stream part failed"),
    }
}

fn push_event(out: &mut String, name: &str, data: &str) {
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(data);
    out.push_str("\n\n");
}
