//! Reads: `GET /ads`, `/ads/analytics`, `/campaigns`,
//! `/campaigns/{id}/screens`, answered from the Redis counters (and the
//! catalogue in Postgres).

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;

use super::openapi::ReadErrors;
use super::{ApiError, AppState};
use crate::counters::{self, Timeframe};
use crate::counters::{AdAnalytics, CampaignPlays, ScreenPlays};
use crate::domain::Ident;
use crate::store;
use crate::store::Ad;

pub(crate) fn query_map(req: &HttpRequest) -> Result<HashMap<String, String>, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| {
            ApiError::bad_request("invalid_query", format!("the query string is invalid: {e}"))
        })?
        .into_inner();
    let mut map = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        // `?adId=a&adId=b` is ambiguous; refuse it rather than pick one.
        if map.contains_key(&name) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("the query parameter {name:?} is given more than once"),
            ));
        }
        map.insert(name, value);
    }
    Ok(map)
}

/// The `timeframe` query parameter; `24h` when absent.
pub(crate) fn timeframe_param(q: &HashMap<String, String>) -> Result<Timeframe, ApiError> {
    match q.get("timeframe").map(String::as_str) {
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
    let q = query_map(&req)?;
    let ad = q
        .get("adId")
        .or_else(|| q.get("ad_id"))
        .ok_or_else(|| ApiError::invalid_field("adId is required"))?;
    let ad = ident_param(ad, "adId")?;
    let timeframe = timeframe_param(&q)?;
    let layout = state.layout.tenant(&super::tenant_of(&req, &state).await?);
    let mut conn = state.redis.clone();
    let result = counters::ad_analytics(&mut conn, &layout, ad.as_str(), timeframe, Utc::now())
        .await
        .map_err(ApiError::dependency)?;
    Ok(HttpResponse::Ok().json(result))
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

/// Plays and distinct screens per campaign.
#[utoipa::path(
    get,
    path = "/campaigns",
    tag = "analytics",
    responses(
        (status = 200, description = "Campaigns, with the catalogue's campaigns listed even without plays", body = Vec<CampaignPlays>),
        ReadErrors
    )
)]
pub async fn campaigns(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let layout = state.layout.tenant(&super::tenant_of(&req, &state).await?);
    let known: Vec<String> = store::catalogue(&state.pool)
        .await
        .map_err(ApiError::dependency)?
        .into_iter()
        .map(|a| a.campaign_id)
        .collect();
    let mut conn = state.redis.clone();
    let list = counters::campaigns(&mut conn, &layout, known)
        .await
        .map_err(ApiError::dependency)?;
    Ok(HttpResponse::Ok().json(list))
}

/// Plays per screen of one campaign, most plays first.
#[utoipa::path(
    get,
    path = "/campaigns/{id}/screens",
    tag = "analytics",
    params(("id" = String, Path, description = "1 to 64 characters of A-Z a-z 0-9 _ . : -", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "The campaign's screens", body = Vec<ScreenPlays>),
        ReadErrors
    )
)]
pub async fn campaign_screens(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let layout = state.layout.tenant(&super::tenant_of(&req, &state).await?);
    let campaign = ident_param(&path.into_inner(), "campaignId")?;
    let mut conn = state.redis.clone();
    let list = counters::campaign_screens(&mut conn, &layout, campaign.as_str())
        .await
        .map_err(ApiError::dependency)?;
    Ok(HttpResponse::Ok().json(list))
}
