//! `/events`: stored events newest first (event time, then eventId), a page
//! at a time, filtered by type, ad or campaign.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// What `/events` filters on, and where the page starts.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// `""` unless `TENANTS=on`.
    pub tenant: String,
    pub kind: Option<String>,
    pub ad_id: Option<String>,
    pub campaign_id: Option<String>,
    /// Only events strictly older than this (event time, then eventId).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// One stored event as `/events` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub screen_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    pub timestamp: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_playback_time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// The VAST error code of an `error` event, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<Value>,
}

/// The listing's statement: `$1` type, `$2` adId, `$3` campaignId (each
/// `NULL` when absent), `$4`/`$5` the cursor, `$6` the row limit, `$7` the
/// tenant. Planned for its parameters (see [`pool`]), a set adId or
/// campaignId leads with `events_ad_time_idx` or `events_campaign_time_idx`
/// in every partition: an unknown one reads a few index pages, not the
/// events.
pub const LIST_EVENTS_SQL: &str = include_str!("sql/list_events.sql");

/// Stored events, newest first (event time, then eventId), one more than
/// `limit` so the caller can tell whether a next page exists.
pub async fn list_events(pool: &PgPool, f: &EventFilter) -> anyhow::Result<Vec<StoredEvent>> {
    let (before_time, before_id) = f.before.unzip();
    sqlx::query_file_as!(
        StoredEvent,
        "src/store/reports/sql/list_events.sql",
        f.kind.as_deref(),
        f.ad_id.as_deref(),
        f.campaign_id.as_deref(),
        before_time,
        before_id,
        f.limit + 1,
        &f.tenant,
    )
    .fetch_all(pool)
    .await
    .context("listing stored events")
}
