//! Reports answered from Postgres: `GET /aggregates`, `GET /events` (stored
//! events newest first, or the dead letters as failed events) and
//! `GET /experiments/{id}/summary`.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::openapi::{EventsPage, ReadErrors};
use super::query::{self, either};
use super::{ApiError, AppState};
use crate::domain::{Ident, Kind};
use crate::store::reports::{self, AggregateFilter, EventFilter, Grouping};
use crate::store::reports::{Aggregates, ExperimentSummary};

/// A report that failed. Its own bounds get their own 503 message: a
/// statement cut by `REPORT_TIMEOUT` (SQLSTATE 57014), or every report
/// connection busy; both with `Retry-After`, since the same report usually
/// succeeds once the load that slowed it has passed. Anything else is a
/// dependency failure like any read's.
fn report_failed(err: anyhow::Error, state: &AppState) -> ApiError {
    let sql = err.chain().find_map(|c| c.downcast_ref::<sqlx::Error>());
    let settings = &state.settings;
    let (message, retry_after_secs) = match sql {
        Some(sqlx::Error::Database(db)) if db.code().as_deref() == Some("57014") => (
            format!(
                "the report ran longer than REPORT_TIMEOUT ({}) and was cancelled; retry later, \
                 or ask for a narrower range or a filter by adId or campaignId",
                humantime::format_duration(settings.report_timeout)
            ),
            settings.report_timeout.as_secs().clamp(1, 60),
        ),
        Some(sqlx::Error::PoolTimedOut) => (
            format!(
                "all {} report connections (REPORT_POOL_SIZE) are busy; retry shortly",
                settings.report_pool_size
            ),
            1,
        ),
        _ => return ApiError::dependency(err),
    };
    tracing::warn!(error = format!("{err:#}"), "report refused: {message}");
    ApiError::Unavailable {
        message,
        retry_after_secs,
    }
}

/// Most buckets one `/aggregates` answer may hold (a week by minute is
/// 10,080).
pub const MAX_BUCKETS: i64 = 10_080;
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 1000;

/// The filters `/aggregates` and `/events` share; `adId` and `campaignId`
/// may be given in snake_case too.
#[derive(Deserialize)]
struct Dimensions {
    #[serde(rename = "campaignId")]
    campaign_id: Option<String>,
    #[serde(rename = "campaign_id")]
    campaign_id_snake: Option<String>,
    #[serde(rename = "adId")]
    ad_id: Option<String>,
    #[serde(rename = "ad_id")]
    ad_id_snake: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl Dimensions {
    fn campaign(&self) -> Result<Option<String>, ApiError> {
        ident(
            either(&self.campaign_id, &self.campaign_id_snake),
            "campaignId",
        )
    }

    fn ad(&self) -> Result<Option<String>, ApiError> {
        ident(either(&self.ad_id, &self.ad_id_snake), "adId")
    }

    fn kind(&self) -> Result<Option<String>, ApiError> {
        present(self.kind.as_deref())
            .map(|v| {
                Kind::parse(v)
                    .map(|k| k.as_str().to_owned())
                    .ok_or_else(|| {
                        ApiError::invalid_field(format!("type must be one of {}", Kind::NAMES))
                    })
            })
            .transpose()
    }
}

/// The query of `GET /aggregates`.
#[derive(Deserialize)]
struct AggregatesQuery {
    #[serde(flatten)]
    dimensions: Dimensions,
    from: Option<String>,
    to: Option<String>,
    #[serde(rename = "groupBy")]
    group_by: Option<String>,
    #[serde(rename = "group_by")]
    group_by_snake: Option<String>,
}

/// The query of `GET /events`.
#[derive(Deserialize)]
struct EventsQuery {
    #[serde(flatten)]
    dimensions: Dimensions,
    before: Option<String>,
    limit: Option<String>,
    status: Option<String>,
}

/// An empty value counts as absent.
fn present(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

fn ident(value: Option<&str>, name: &str) -> Result<Option<String>, ApiError> {
    present(value)
        .map(|v| {
            Ident::parse(v)
                .map(|id| id.as_str().to_owned())
                .map_err(|problem| ApiError::invalid_field(format!("{name} {problem}")))
        })
        .transpose()
}

fn time(value: &Option<String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    present(value.as_deref())
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::invalid_field(format!(
                        "{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z"
                    ))
                })
                .and_then(|t| in_range(t, name))
        })
        .transpose()
}

/// A time a report may ask about: years 1 to 9999. Postgres refuses times
/// outside its own range with an error, so a wild one must be a 400 naming
/// the parameter here, never a failed query.
fn in_range(t: DateTime<Utc>, name: &str) -> Result<DateTime<Utc>, ApiError> {
    use chrono::Datelike;
    if (1..=9999).contains(&t.year()) {
        Ok(t)
    } else {
        Err(ApiError::invalid_field(format!(
            "{name} is out of range: times from year 1 to 9999 only"
        )))
    }
}

/// Events and summed `amount` per minute, hour or day bucket over an
/// event-time range, from the Postgres rollups.
#[utoipa::path(
    get,
    path = "/aggregates",
    tag = "reports",
    params(
        ("campaignId" = Option<String>, Query, description = "1 to 64 characters of A-Z a-z 0-9 _ . : -", pattern = "^([A-Za-z0-9_.:-]{1,64})?$"),
        ("adId" = Option<String>, Query, description = "1 to 64 characters of A-Z a-z 0-9 _ . : -", pattern = "^([A-Za-z0-9_.:-]{1,64})?$"),
        ("type" = Option<String>, Query, description = "impression, click, play, conversion, start, firstQuartile, midpoint, thirdQuartile, complete, skip or error", pattern = "^(impression|click|play|conversion|start|firstQuartile|midpoint|thirdQuartile|complete|skip|error)?$"),
        ("from" = Option<String>, Query, description = "RFC 3339; default 24 hours before `to` (empty = absent)", pattern = "^(\\d{4}-\\d{2}-\\d{2}[Tt ]\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?([Zz]|[+-]\\d{2}:\\d{2}))?$"),
        ("to" = Option<String>, Query, description = "RFC 3339; default now (empty = absent)", pattern = "^(\\d{4}-\\d{2}-\\d{2}[Tt ]\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?([Zz]|[+-]\\d{2}:\\d{2}))?$"),
        ("groupBy" = Option<String>, Query, description = "minute, hour (default) or day; at most 10,080 buckets", pattern = "^(minute|hour|day)?$"),
    ),
    responses(
        (status = 200, description = "Every bucket of the range, empty ones with zeros", body = Aggregates),
        ReadErrors
    )
)]
pub async fn aggregates(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q: AggregatesQuery = query::parse(&req)?;
    let group_by = present(either(&q.group_by, &q.group_by_snake));
    let grouping = match group_by {
        None => Grouping::Hour,
        Some(g) => Grouping::parse(g)
            .ok_or_else(|| ApiError::invalid_field("groupBy must be one of minute, hour, day"))?,
    };
    let to = time(&q.to, "to")?.unwrap_or_else(Utc::now);
    let from = time(&q.from, "from")?.unwrap_or(to - chrono::Duration::hours(24));
    if from >= to {
        return Err(ApiError::invalid_field("from must be before to"));
    }
    // The range is half-open: the buckets that start in [floor(from), to).
    let span = to - grouping.floor(from);
    let step = grouping.step();
    let whole = span.num_seconds() / step.num_seconds();
    let partial = whole <= MAX_BUCKETS && span > step * whole as i32;
    let buckets = whole + i64::from(partial);
    if buckets > MAX_BUCKETS {
        return Err(ApiError::invalid_field(format!(
            "the range holds {buckets} buckets of one {}; at most {MAX_BUCKETS} are allowed: \
             narrow from/to or group by a wider unit",
            group_by.unwrap_or("hour")
        )));
    }
    let filter = AggregateFilter {
        tenant: super::tenant_of(&req, &state).await?,
        campaign_id: q.dimensions.campaign()?,
        ad_id: q.dimensions.ad()?,
        kind: q.dimensions.kind()?,
    };
    let result = reports::aggregates(&state.report_pool, &filter, from, to, grouping)
        .await
        .map_err(|e| report_failed(e, &state))?;
    Ok(HttpResponse::Ok().json(result))
}

/// `<microseconds since the epoch>~<eventId>` of the last event of a page.
fn encode_cursor(time: DateTime<Utc>, id: Uuid) -> String {
    format!("{}~{}", time.timestamp_micros(), id.simple())
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (micros, id) = cursor.split_once('~')?;
    let time = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    let time = in_range(time, "before").ok()?;
    Some((time, Uuid::parse_str(id).ok()?))
}

fn limit(value: &Option<String>) -> Result<i64, ApiError> {
    match present(value.as_deref()) {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::invalid_field(format!("limit must be 1 to {MAX_LIMIT}"))),
    }
}

/// Stored events newest first (event time, then eventId), or the dead
/// letters as failed events, a page at a time.
#[utoipa::path(
    get,
    path = "/events",
    tag = "reports",
    params(
        ("type" = Option<String>, Query, description = "impression, click, play, conversion, start, firstQuartile, midpoint, thirdQuartile, complete, skip or error", pattern = "^(impression|click|play|conversion|start|firstQuartile|midpoint|thirdQuartile|complete|skip|error)?$"),
        ("adId" = Option<String>, Query, description = "1 to 64 characters of A-Z a-z 0-9 _ . : -", pattern = "^([A-Za-z0-9_.:-]{1,64})?$"),
        ("campaignId" = Option<String>, Query, description = "1 to 64 characters of A-Z a-z 0-9 _ . : -", pattern = "^([A-Za-z0-9_.:-]{1,64})?$"),
        ("before" = Option<String>, Query, description = "A `nextCursor`, or (stored events) an RFC 3339 time"),
        ("limit" = Option<String>, Query, description = "1 to 1000, default 50 (empty = absent)", pattern = "^([0-9]{1,4})?$"),
        ("status" = Option<String>, Query, description = "processed (default) or failed", pattern = "^(processed|failed)?$"),
    ),
    responses(
        (status = 200, description = "One page", body = EventsPage),
        ReadErrors
    )
)]
pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q: EventsQuery = query::parse(&req)?;
    let tenant = super::tenant_of(&req, &state).await?;
    let limit = limit(&q.limit)?;
    match present(q.status.as_deref()) {
        None | Some("processed") => processed(&q, tenant, limit, &state).await,
        Some("failed") => {
            // Dead letters carry error text: operator data. With tenants
            // off that takes the admin token; with tenants on a key sees
            // its own tenant's letters only (see `failed`).
            if state.api_keys.is_none() {
                super::admin::authorize(&req, &state).map_err(|_| {
                    ApiError::Unauthorized(
                        "failed events are operator data: send the ADMIN_TOKEN as a bearer token"
                            .into(),
                    )
                })?;
            }
            failed(&q, &tenant, limit, &state).await
        }
        Some(_) => Err(ApiError::invalid_field(
            "status must be processed (the default) or failed",
        )),
    }
}

async fn processed(
    q: &EventsQuery,
    tenant: String,
    limit: i64,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let before = match present(q.before.as_deref()) {
        None => None,
        Some(c) => Some(
            decode_cursor(c)
                .or_else(|| {
                    // An RFC 3339 time works too: everything strictly before it.
                    DateTime::parse_from_rfc3339(c)
                        .ok()
                        .and_then(|t| in_range(t.with_timezone(&Utc), "before").ok())
                        .map(|t| (t, Uuid::nil()))
                })
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        "before must be a nextCursor from a previous page or an RFC 3339 time \
                         from year 1 to 9999",
                    )
                })?,
        ),
    };
    let filter = EventFilter {
        tenant,
        kind: q.dimensions.kind()?,
        ad_id: q.dimensions.ad()?,
        campaign_id: q.dimensions.campaign()?,
        before,
        limit,
    };
    let mut events = reports::list_events(&state.report_pool, &filter)
        .await
        .map_err(|e| report_failed(e, state))?;
    let more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    let next = more
        .then(|| {
            events
                .last()
                .map(|e| encode_cursor(e.timestamp, e.event_id))
        })
        .flatten();
    Ok(HttpResponse::Ok().json(json!({ "events": events, "nextCursor": next })))
}

/// Dead letters in the event shape, newest first, each with `status`,
/// `error`, `attempts` and `failedAt`; the cursor is an offset.
async fn failed(
    q: &EventsQuery,
    tenant: &str,
    limit: i64,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let offset = match present(q.before.as_deref()) {
        None => 0,
        Some(c) => c
            .strip_prefix("failed~")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::invalid_field("before must be a nextCursor from a previous page")
            })?,
    };
    let kind = q.dimensions.kind()?;
    let ad = q.dimensions.ad()?;
    let campaign = q.dimensions.campaign()?;
    let mut conn = state.redis.clone();
    let (total, letters) = state
        .queues
        .dlq_page(&mut conn, offset, limit as u64)
        .await
        .map_err(ApiError::dependency)?;
    let read = letters.len() as u64;
    let events: Vec<Value> = letters
        .into_iter()
        .map(failed_event)
        .filter(|e| {
            let is = |field: &str, want: &Option<String>| {
                want.as_deref().is_none_or(|w| e[field].as_str() == Some(w))
            };
            // Events of the tenant "" carry no tenantId.
            let owner = e["tenantId"].as_str().unwrap_or_default();
            owner == tenant && is("type", &kind) && is("adId", &ad) && is("campaignId", &campaign)
        })
        .collect();
    let next = (offset + read < total).then(|| format!("failed~{}", offset + read));
    Ok(HttpResponse::Ok().json(json!({ "events": events, "nextCursor": next })))
}

/// A dead letter `{"event":{…},"error","attempts","failedAt"}` as a failed
/// event: the event's own fields plus the failure.
fn failed_event(letter: Value) -> Value {
    let mut out = match letter.get("event") {
        Some(Value::Object(event)) => event.clone(),
        Some(other) => {
            let mut m = serde_json::Map::new();
            m.insert("raw".into(), other.clone());
            m
        }
        None => serde_json::Map::new(),
    };
    out.remove("attempts");
    out.insert("status".into(), json!("failed"));
    for field in ["error", "attempts", "failedAt"] {
        if let Some(v) = letter.get(field) {
            out.insert(field.into(), v.clone());
        }
    }
    Value::Object(out)
}

/// Per-variant users, conversions and conversion rate of one experiment,
/// with a two-proportion z-test of each variant against the control.
#[utoipa::path(
    get,
    path = "/experiments/{id}/summary",
    tag = "reports",
    params(("id" = String, Path, description = "The experimentId, 1 to 64 characters", pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,64}$")),
    responses(
        (status = 200, description = "The variants (none for an unknown experiment)", body = ExperimentSummary),
        ReadErrors
    )
)]
pub async fn experiment_summary(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = super::tenant_of(&req, &state).await?;
    let id = path.into_inner();
    if id.is_empty() || id.chars().count() > 64 || id.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            "the experiment id must be 1 to 64 characters without control characters",
        ));
    }
    let summary = reports::experiment_summary(&state.report_pool, &tenant, &id)
        .await
        .map_err(|e| report_failed(e, &state))?;
    Ok(HttpResponse::Ok().json(summary))
}
