//! Reads: `GET /ads`, `/ads/analytics`, `/campaigns`,
//! `/campaigns/{id}/screens`, answered from the Redis counters (and the
//! catalogue in Postgres).

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;

use super::openapi::ReadErrors;
use super::query::{self, either};
use super::{ApiError, AppState};
use crate::counters::{self, Timeframe};
use crate::counters::{AdAnalytics, CampaignPlays, ScreenPlays};
use crate::domain::Ident;
use crate::store;
use crate::store::Ad;

/// The query of `GET /ads/analytics`.
#[derive(Deserialize)]
struct AdAnalyticsQuery {
    #[serde(rename = "adId")]
    ad_id: Option<String>,
    #[serde(rename = "ad_id")]
    ad_id_snake: Option<String>,
    timeframe: Option<String>,
}

/// The query of a ranked listing: see [`slice_param`].
#[derive(Deserialize)]
struct SliceQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// The `timeframe` query parameter; `24h` when absent.
pub(crate) fn timeframe_param(timeframe: Option<&str>) -> Result<Timeframe, ApiError> {
    match timeframe {
        None | Some("") => Ok(Timeframe::Day),
        Some(t) => Timeframe::parse(t)
            .ok_or_else(|| ApiError::invalid_field("timeframe must be one of 1h, 24h, 7d, all")),
    }
}

fn ident_param(value: &str, name: &str) -> Result<Ident, ApiError> {
    Ident::parse(value).map_err(|problem| ApiError::invalid_field(format!("{name} {problem}")))
}

/// Impressions, clicks, unique clicks, CTR and an hourly click series for
/// one ad over a window of event time.
#[utoipa::path(
    get,
    path = "/ads/analytics",
    tag = "analytics",
    params(
        ("adId" = String, Query, description = "1 to 64 characters of A-Z a-z 0-9 _ . : -", pattern = "^[A-Za-z0-9_.:-]{1,64}$"),
        ("timeframe" = Option<String>, Query, description = "1h, 24h (default), 7d or all", pattern = "^(1h|24h|7d|all)?$"),
    ),
    responses(
        (status = 200, description = "The ad's figures (zeros for an ad without events)", body = AdAnalytics),
        ReadErrors
    )
)]
pub async fn ad_analytics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q: AdAnalyticsQuery = query::parse(&req)?;
    let ad = either(&q.ad_id, &q.ad_id_snake)
        .ok_or_else(|| ApiError::invalid_field("adId is required"))?;
    let ad = ident_param(ad, "adId")?;
    let timeframe = timeframe_param(q.timeframe.as_deref())?;
    let tenant = super::tenant_of(&req, &state).await?;
    let result = read_ad(&state, &tenant, ad.as_str(), timeframe)
        .await
        .map_err(ApiError::dependency)?;
    Ok(HttpResponse::Ok().json(result))
}

/// One ad's figures for `tenant` now: what `/ads/analytics` answers and
/// `/live` streams.
pub(super) async fn read_ad(
    state: &AppState,
    tenant: &str,
    ad: &str,
    timeframe: counters::Timeframe,
) -> anyhow::Result<counters::AdAnalytics> {
    let layout = state.layout.tenant(tenant);
    let mut conn = state.redis.clone();
    let source = counters::Source {
        pool: &state.pool,
        tenant,
    };
    let now = Utc::now();
    let mut figures =
        counters::ad_analytics(&mut conn, source, &layout, ad, timeframe, now).await?;
    // Only an ad with errors costs a Postgres read (on the reports' pool,
    // bounded by REPORT_TIMEOUT). Without Postgres the figures from Redis
    // are still answered, errorsByCode left out: analytics (and /live) do
    // not go down with Postgres.
    if figures.errors > 0 {
        let since = timeframe.start(now);
        figures.errors_by_code =
            match store::reports::errors_by_code(&state.report_pool, tenant, ad, since).await {
                Ok(by_code) => Some(by_code),
                Err(e) => {
                    state
                        .metrics
                        .analytics_parts_missing
                        .with_label_values(&["errorsByCode"])
                        .inc();
                    tracing::warn!(
                        error = format!("{e:#}"),
                        ad,
                        "errorsByCode could not be read; answering the analytics without it"
                    );
                    None
                }
            };
    }
    Ok(figures)
}

/// The ad catalogue.
#[utoipa::path(
    get,
    path = "/ads",
    tag = "analytics",
    responses(
        (status = 200, description = "Every ad", body = Vec<Ad>),
        ReadErrors
    )
)]
pub async fn ads(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    super::tenant_of(&req, &state).await?;
    let ads = store::catalogue(&state.pool)
        .await
        .map_err(ApiError::dependency)?;
    Ok(HttpResponse::Ok().json(ads))
}

/// Entries a ranked listing returns unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u64 = 100;
/// The most entries one page may hold.
pub const MAX_LIMIT: u64 = 1000;
/// The largest cursor accepted (an offset into the ranking).
const MAX_CURSOR: u64 = 1_000_000_000;

/// `limit` (1..=1000, default 100) and `cursor` (the `X-Next-Cursor` of the
/// previous page: an offset into the ranking, default 0).
fn slice_param(q: &SliceQuery) -> Result<counters::Slice, ApiError> {
    let limit = match q.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_field(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
            })?,
    };
    let offset = match q.cursor.as_deref() {
        None | Some("") => 0,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= MAX_CURSOR)
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "cursor must be the X-Next-Cursor header of a previous page",
                )
            })?,
    };
    Ok(counters::Slice { offset, limit })
}

/// A page as the SPEC's array, with the ranking's size in `X-Total-Count`
/// and, when more follow, their cursor in `X-Next-Cursor` and a `Link`.
fn paged<T: serde::Serialize>(
    path: &str,
    slice: counters::Slice,
    page: counters::Page<T>,
) -> HttpResponse {
    let mut res = HttpResponse::Ok();
    res.insert_header(("X-Total-Count", page.total.to_string()));
    let next = slice.offset + page.items.len() as u64;
    if !page.items.is_empty() && next < page.total {
        res.insert_header(("X-Next-Cursor", next.to_string()));
        res.insert_header((
            "Link",
            format!("<{path}?limit={}&cursor={next}>; rel=\"next\"", slice.limit),
        ));
    }
    res.json(page.items)
}

/// Ranks campaigns that played while unranked (bounded per call), so a
/// listing shows them; a busy outbox lock leaves them for the next read.
pub(crate) async fn settle(
    state: &AppState,
    conn: &mut crate::redis_client::RedisConn,
    layout: &counters::Layout,
    tenant: &str,
) -> anyhow::Result<()> {
    counters::settle_campaigns(&state.pool, conn, layout, tenant)
        .await
        .map(|_| ())
}

/// Plays and distinct screens per campaign, most plays first.
#[utoipa::path(
    get,
    path = "/campaigns",
    tag = "analytics",
    params(
        ("limit" = Option<u64>, Query, description = "Entries per page, 1 to 1000 (default 100)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "The X-Next-Cursor header of the previous page", pattern = "^[0-9]{0,10}$"),
    ),
    responses(
        (status = 200, description = "One page of the campaigns by plays, most first; the catalogue's campaigns follow even without plays", body = Vec<CampaignPlays>,
            headers(
                ("X-Total-Count" = u64, description = "How many campaigns there are in all"),
                ("X-Next-Cursor" = String, description = "Present when more follow: the cursor of the next page"),
                ("Link" = String, description = "Present when more follow: the next page, rel=\"next\""),
            )),
        ReadErrors
    )
)]
pub async fn campaigns(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let slice = slice_param(&query::parse(&req)?)?;
    let tenant = super::tenant_of(&req, &state).await?;
    let layout = state.layout.tenant(&tenant);
    let known: Vec<String> = store::catalogue(&state.pool)
        .await
        .map_err(ApiError::dependency)?
        .into_iter()
        .map(|a| a.campaign_id)
        .collect();
    let mut conn = state.redis.clone();
    {
        let _gate = state.settle_gate.lock().await;
        settle(&state, &mut conn, &layout, &tenant)
            .await
            .map_err(ApiError::dependency)?;
    }
    let page = counters::campaigns(&mut conn, &layout, known, slice)
        .await
        .map_err(ApiError::dependency)?;
    Ok(paged("/campaigns", slice, page))
}

/// Plays per screen of one campaign, most plays first.
#[utoipa::path(
    get,
    path = "/campaigns/{id}/screens",
    tag = "analytics",
    params(
        ("id" = String, Path, description = "1 to 64 characters of A-Z a-z 0-9 _ . : -", pattern = "^[A-Za-z0-9_.:-]{1,64}$"),
        ("limit" = Option<u64>, Query, description = "Entries per page, 1 to 1000 (default 100)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "The X-Next-Cursor header of the previous page", pattern = "^[0-9]{0,10}$"),
    ),
    responses(
        (status = 200, description = "One page of the campaign's screens", body = Vec<ScreenPlays>,
            headers(
                ("X-Total-Count" = u64, description = "How many screens the campaign has"),
                ("X-Next-Cursor" = String, description = "Present when more follow: the cursor of the next page"),
                ("Link" = String, description = "Present when more follow: the next page, rel=\"next\""),
            )),
        ReadErrors
    )
)]
pub async fn campaign_screens(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let slice = slice_param(&query::parse(&req)?)?;
    let tenant = super::tenant_of(&req, &state).await?;
    let layout = state.layout.tenant(&tenant);
    let campaign = ident_param(&path.into_inner(), "campaignId")?;
    let mut conn = state.redis.clone();
    {
        let _gate = state.settle_gate.lock().await;
        settle(&state, &mut conn, &layout, &tenant)
            .await
            .map_err(ApiError::dependency)?;
    }
    let page = counters::campaign_screens(&mut conn, &layout, campaign.as_str(), slice)
        .await
        .map_err(ApiError::dependency)?;
    let path = format!("/campaigns/{}/screens", campaign.as_str());
    Ok(paged(&path, slice, page))
}
