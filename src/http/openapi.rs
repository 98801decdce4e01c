//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! attributes and the response types, served at `GET /openapi.json`; the
//! interactive page at `GET /docs` (Swagger UI, vendored under
//! `web/vendor/swagger-ui`) reads it.
//!
//! Invariant: the document lists exactly the routes `http::routes` serves
//! (a test compares the two), and every answer a handler can give, errors
//! included, is described.

use actix_web::HttpResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

use super::{admin, analytics, health, ingest, live, reports, ui};

/// Every error: a machine code and a sentence naming what is wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// e.g. `invalid_field`, `rate_limited`, `unavailable`.
    #[schema(example = "invalid_field")]
    pub error: String,
    #[schema(example = "adId must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")]
    pub message: String,
}

/// One event. Names are camelCase here; every field is also accepted in
/// snake_case (`ad_id`, `campaign_id`, `ip` …). Unknown members are ignored.
#[allow(dead_code)] // Describes the request body; the parser reads the bytes.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventBody {
    /// The idempotency key; absent, the server assigns a UUIDv7.
    event_id: Option<Uuid>,
    /// Fixed by the path on `/ads/click` and `/ads/impression`; `play` by
    /// default on `/events`.
    #[serde(rename = "type")]
    #[schema(
        value_type = Option<String>,
        pattern = "^(impression|click|play|conversion|start|firstQuartile|midpoint|thirdQuartile|complete|skip|error)$"
    )]
    kind: Option<String>,
    /// The VAST error code of an `error` event (refused on other types).
    #[schema(minimum = 100, maximum = 999)]
    error_code: Option<u16>,
    /// Required except for plays.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", max_length = 64)]
    ad_id: Option<String>,
    /// Required for plays.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", max_length = 64)]
    campaign_id: Option<String>,
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", max_length = 64)]
    screen_id: Option<String>,
    /// No control characters.
    #[schema(max_length = 128, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    user_id: Option<String>,
    /// IPv4 or IPv6; defaults to the client's address.
    #[schema(format = "ip")]
    ip_address: Option<String>,
    /// RFC 3339 event time; default the receive time. At most 5 minutes
    /// ahead, not before 2000-01-01.
    #[schema(value_type = Option<String>, format = DateTime)]
    timestamp: Option<String>,
    /// Seconds into the video at the click.
    #[schema(minimum = 0.0, maximum = 86400.0)]
    video_playback_time: Option<f64>,
    /// Cost or revenue in micro-units, summed by `/aggregates`.
    #[schema(minimum = 0)]
    amount: Option<i64>,
    #[schema(max_length = 64, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    variant: Option<String>,
    #[schema(max_length = 64, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    experiment_id: Option<String>,
    /// Free-form, at most 4 KiB serialized.
    #[schema(value_type = Option<Object>)]
    properties: Option<serde_json::Value>,
    /// Fails processing on purpose; only with `SIMULATE_FAILURES=true`,
    /// else 400.
    simulate_failure: Option<bool>,
}

/// A batch: up to 1,000 events and 1 MiB (also sent as NDJSON,
/// `application/x-ndjson`, one event per line). More is a 413 (too large),
/// not a schema violation, so the limit is not a `maxItems` here.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct BatchBody {
    /// Each item is an `EventBody`; items that break its rules do not fail
    /// the batch but come back in `rejected` (so any JSON value is taken here).
    #[schema(value_type = Vec<Value>)]
    events: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    #[schema(example = "accepted")]
    pub status: &'static str,
    pub event_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchAccepted {
    pub accepted: usize,
    pub event_ids: Vec<Uuid>,
    pub rejected: Vec<Rejected>,
}

/// A batch item that was refused; the others were accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rejected {
    pub index: usize,
    pub error: &'static str,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `degraded`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// `ok`, `down`, or how it refuses work: `read-only`, `no-privilege`,
    /// `schema`, `disk-full`, `out-of-memory`, `timeout`, …
    #[schema(example = "ok")]
    pub postgres: &'static str,
    /// `ok`, `down`, or how it refuses work: `read-only`, `out-of-memory`,
    /// `loading`, `failover`, `timeout`, …
    #[schema(example = "ok")]
    pub redis: &'static str,
}

/// A page of events, newest first.
#[allow(dead_code)]
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsPage {
    /// Stored events (`status=processed`, see `StoredEvent`), or dead
    /// letters in the same shape plus `status`, `error`, `attempts`,
    /// `failedAt` (`status=failed`).
    #[schema(value_type = Vec<Object>)]
    events: Vec<serde_json::Value>,
    /// Pass back as `before` for the next page; null on the last one.
    next_cursor: Option<String>,
}

/// The pipeline: queue depths, this process's spool and the workers.
#[allow(dead_code)]
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    queued: u64,
    processing: u64,
    retrying: u64,
    dead_lettered: u64,
    spooled_events: u64,
    spool_bytes: u64,
    /// `{"id","alive","processing"}` per registered worker.
    #[schema(value_type = Vec<Object>)]
    workers: Vec<serde_json::Value>,
    ingested: u64,
    committed: u64,
    /// When adtrack last found Redis empty (restarted without its data, or
    /// used by adtrack for the first time); the counters are rebuilt from
    /// Postgres right after. Events Redis held that Postgres had not stored
    /// yet were lost then. Null while Redis has no such record.
    #[schema(format = DateTime, required = true)]
    redis_reset_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetters {
    pub total: u64,
    /// `{"event":{…},"error","attempts","failedAt"}`, newest first.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Moved {
    pub moved: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Purged {
    pub purged: u64,
}

/// The errors of every ingest endpoint.
#[allow(dead_code)] // Describes answers; ApiError produces them.
#[derive(utoipa::IntoResponses)]
pub enum IngestErrors {
    /// An invalid field (the message names it), bad JSON, a duplicate key,
    /// nesting past 32, properties over 4 KiB.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `TENANTS=on` and no valid `X-API-Key`.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The body did not arrive within `BODY_TIMEOUT` (default 10 s).
    #[response(status = 408)]
    RequestTimeout(ErrorBody),
    /// The body is over the size limit (16 KiB, or 1 MiB / 1,000 events).
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Not JSON.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// Over a rate limit.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))]
    RateLimited(ErrorBody),
    /// Cannot queue now (the spool is full, or the server is shutting down).
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))]
    Unavailable(ErrorBody),
}

/// The errors of every read endpoint.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum ReadErrors {
    /// An invalid or repeated query parameter.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `TENANTS=on` and no valid `X-API-Key`; on `/events?status=failed`
    /// with tenants off, no valid admin bearer token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Redis or Postgres is unavailable; or (reports) the report ran past
    /// `REPORT_TIMEOUT` or found every report connection busy.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))]
    Unavailable(ErrorBody),
    /// A failure that is not a dependency's (a bug), logged with its cause.
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// The errors of every `/admin/*` endpoint.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum AdminErrors {
    /// No valid bearer token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `ADMIN_TOKEN` is unset: the admin API does not exist.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// Redis is unavailable.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))]
    Unavailable(ErrorBody),
    /// A failure that is not a dependency's (a bug), logged with its cause.
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// Marks `/admin/*` as needing `Authorization: Bearer $ADMIN_TOKEN`.
struct AdminAuth;

impl Modify for AdminAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "adtrack",
        description = "Ad-event tracking: ingest answers 202 once Redis holds the event; \
                       workers move it exactly once into PostgreSQL; analytics come from \
                       Redis counters, reports from Postgres. Every error is \
                       `{\"error\",\"message\"}`."
    ),
    paths(
        ingest::click,
        ingest::impression,
        ingest::event,
        ingest::batch,
        analytics::ads,
        analytics::ad_analytics,
        analytics::campaigns,
        analytics::campaign_screens,
        reports::aggregates,
        reports::events,
        reports::experiment_summary,
        live::live,
        super::vast::document,
        super::vast::pixel,
        super::vast::click,
        super::vast::vast_tag,
        admin::queue,
        admin::dlq,
        admin::dlq_replay,
        admin::dlq_purge,
        health::health,
        health::ready,
        health::metrics,
        openapi_json,
        docs,
        ui::index,
    ),
    components(schemas(
        ErrorBody,
        EventBody,
        BatchBody,
        crate::store::reports::StoredEvent,
    )),
    modifiers(&AdminAuth),
    tags(
        (name = "ingest", description = "Events in: 202 once queued"),
        (name = "analytics", description = "Real-time figures from the Redis counters"),
        (name = "reports", description = "Reports from PostgreSQL"),
        (name = "vast", description = "Video ads: VAST documents, their tracking pixels and click redirect"),
        (name = "admin", description = "Queue and dead letters; bearer ADMIN_TOKEN"),
        (name = "operations", description = "Health, readiness, metrics, this document, the UI"),
    )
)]
pub struct ApiDoc;

/// The document as JSON (built once per process).
pub fn document() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into()))
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}

/// Interactive documentation of this API (Swagger UI over `/openapi.json`).
#[utoipa::path(
    get,
    path = "/docs",
    tag = "operations",
    responses((status = 200, description = "An HTML page", content_type = "text/html", body = String))
)]
pub async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", DOCS_POLICY))
        .body(DOCS_PAGE)
}

/// The policy of `/docs`: the site-wide one, except that Swagger UI sets
/// `style` attributes from its bundle, so inline styles are allowed here
/// (never inline scripts: its start-up code is `init.js`).
const DOCS_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>adtrack API</title>
  <link rel="stylesheet" href="/vendor/swagger-ui/swagger-ui.css">
</head>
<body>
  <div id="docs"></div>
  <script src="/vendor/swagger-ui/swagger-ui-bundle.js"></script>
  <script src="/vendor/swagger-ui/init.js"></script>
</body>
</html>
"#;
