//! VAST: `GET /vast/{adId}` (the document of one view), `GET
//! /t/{view}/{event}` (its tracking pixels) and `GET /c/{view}` (its click
//! redirect). Pixels and clicks become events through the same steps as
//! `POST /events`: the event is parsed by `domain::parse_value`, charged
//! to the rate limits, and queued by `crate::ingest` (Redis, or the synced
//! spool), and only then answered. Their eventId comes from (view, event),
//! so every repetition of a pixel is the same event.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde_json::{json, Value};

use super::ingest::{enqueue, ingress, limit, parse_context, rejected};
use super::{ApiError, AppState};
use crate::domain::{parse_value, Ident, Kind};
use crate::domain::{ParseContext, MAX_CLOCK_SKEW};
use crate::vast::{self, Lookup, PixelEvent, PixelFields, PixelQuery, VideoAd, View};
use std::sync::Arc;

/// The errors of `GET /vast/{adId}`.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum DocumentErrors {
    /// `?apiKey=` given (keys go in the header).
    #[response(status = 400)]
    BadRequest(super::openapi::ErrorBody),
    /// `TENANTS=on` and no valid `X-API-Key` nor `tag`.
    #[response(status = 401)]
    Unauthorized(super::openapi::ErrorBody),
    /// No catalogue ad has this id.
    #[response(status = 404)]
    NotFound(super::openapi::ErrorBody),
    /// Over a rate limit (a document costs one event).
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))]
    RateLimited(super::openapi::ErrorBody),
    /// The id is not in the in-memory catalogue and Postgres cannot be
    /// read to reload it; or (`TENANTS=on`) the API keys were never loaded.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))]
    Unavailable(super::openapi::ErrorBody),
}

/// The errors of `GET /t/{view}/{event}`.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum PixelErrors {
    /// A view token adtrack did not sign, or that expired (24 h after its
    /// document), or whose tenant has no valid key; or an event name the
    /// document never uses.
    #[response(status = 404)]
    NotFound(super::openapi::ErrorBody),
    /// Over a rate limit (shared with the POST endpoints).
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))]
    RateLimited(super::openapi::ErrorBody),
    /// Neither Redis nor the spool can take the event now, or the server
    /// is shutting down; or (`TENANTS=on`) the API keys were never loaded.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))]
    Unavailable(super::openapi::ErrorBody),
}

/// The errors of `GET /c/{view}`. A click that cannot be queued still
/// redirects (counted in `adtrack_vast_clicks_unrecorded_total`).
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum ClickErrors {
    /// A view token adtrack did not sign, or that expired, or whose tenant
    /// has no valid key; or its ad is no longer in the catalogue, or has
    /// no valid targetUrl.
    #[response(status = 404)]
    NotFound(super::openapi::ErrorBody),
    /// Over a rate limit (a click costs one event, as a pixel does).
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))]
    RateLimited(super::openapi::ErrorBody),
    /// The ad is not in the in-memory catalogue and Postgres cannot be
    /// read to reload it; or (`TENANTS=on`) the API keys were never loaded.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))]
    Unavailable(super::openapi::ErrorBody),
}

/// A VAST 4 InLine document for a catalogue ad: one new view, whose id is
/// `AdServingId` and whose signed token is in every tracking, error and
/// click URL.
#[utoipa::path(
    get,
    path = "/vast/{adId}",
    tag = "vast",
    params(
        ("adId" = String, Path, description = "A catalogue ad's id"),
        ("tag" = Option<String>, Query, description = "With TENANTS=on and no X-API-Key: the tenant's publishable VAST tag (GET /tenant/vast-tag)"),
    ),
    responses(
        (status = 200, description = "The VAST document (`Cache-Control: no-store`: each one is a new view)", content_type = "application/xml", body = String),
        DocumentErrors
    )
)]
#[tracing::instrument(skip_all, fields(ad = %path.as_str()))]
pub async fn document(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = document_tenant(&req, &state).await?;
    let ad = Ident::parse(&path).map_err(|_| unknown_ad())?;
    let mut ctx = parse_context(&req, &state, None, None)?;
    ctx.tenant = tenant;
    // A document mints a view: it costs its client and its ad one event,
    // like a POSTed impression, so views are bounded as events are.
    // Charged before the catalogue is looked up, so a flood over the
    // limits never reaches Postgres (an unknown id reloads the catalogue).
    limit(&state, &ctx, 1, &[(ad.as_str(), 1)]).await?;
    let video = catalogue_ad(&state, ad.as_str()).await?;
    let (view, token) = state.views.mint(&ad, &ctx.tenant, ctx.now);
    let base = public_base(&req, &state);
    let xml = vast::render(
        &video,
        &vast::Document {
            base: &base,
            token: &token,
            view_id: view.id,
        },
    );
    state.metrics.vast_documents.inc();
    Ok(HttpResponse::Ok()
        .content_type("application/xml; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(xml))
}

/// A tracking pixel of a served document: `impression`, `start`,
/// `firstQuartile`, `midpoint`, `thirdQuartile`, `complete`, `skip` and
/// `error` are stored once per view; `pause`, `resume`, `mute`, `unmute`
/// and `closeLinear` are counted in a metric only. Query parameters are the
/// document's macros (`ts`, `ph`, `code` …); unknown or unsubstituted
/// values are ignored, never refused.
#[utoipa::path(
    get,
    path = "/t/{view}/{event}",
    tag = "vast",
    params(
        ("view" = String, Path, description = "The view token of the document"),
        ("event" = String, Path, description = "impression, start, firstQuartile, midpoint, thirdQuartile, complete, skip, error, pause, resume, mute, unmute or closeLinear"),
    ),
    responses(
        (status = 200, description = "A 1×1 GIF, once the event is queued (Redis or the synced spool); `Cache-Control: no-store`", content_type = "image/gif", body = Vec<u8>),
        PixelErrors
    )
)]
pub async fn pixel(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (token, name) = path.into_inner();
    let now = Utc::now();
    let view = verify_view(&state, &token, now).await?;
    let event = PixelEvent::parse(&name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "{name} is not a tracking event of adtrack's VAST documents"
        ))
    })?;
    let kind = match event {
        PixelEvent::Stored(kind) => kind,
        PixelEvent::Counted(name) => {
            state
                .metrics
                .vast_player_events
                .with_label_values(&[name])
                .inc();
            return Ok(gif());
        }
    };
    let ctx = view_context(&req, &state, &view)?;
    limit(&state, &ctx, 1, &[(view.ad.as_str(), 1)]).await?;
    record(&req, &state, &view, kind, ctx).await?;
    Ok(gif())
}

/// The click-through of a served document: records the view's click (once,
/// however often it is followed) and redirects to the ad's catalogue
/// `targetUrl`. The destination never comes from the request. `HEAD`
/// answers the same redirect and records nothing (link scanners send it).
#[utoipa::path(
    get,
    path = "/c/{view}",
    tag = "vast",
    params(("view" = String, Path, description = "The view token of the document")),
    responses(
        (status = 302, description = "To the ad's catalogue targetUrl", headers(("Location" = String, description = "The ad's targetUrl"))),
        ClickErrors
    )
)]
pub async fn click(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let view = verify_view(&state, &path, Utc::now()).await?;
    let ctx = view_context(&req, &state, &view)?;
    // Over a rate limit, a click is refused like a pixel (429), before the
    // catalogue is looked up.
    limit(&state, &ctx, 1, &[(view.ad.as_str(), 1)]).await?;
    // From memory: a redirect needs no Postgres (see vast::catalogue).
    let ad = catalogue_ad(&state, view.ad.as_str()).await?;
    if !vast::valid_target(&ad.target_url) {
        tracing::error!(
            ad = view.ad.as_str(),
            "a catalogue targetUrl is not an http(s) URL without control characters; no redirect"
        );
        return Err(ApiError::NotFound(
            "this ad has no valid targetUrl to redirect to".into(),
        ));
    }
    // A HEAD is a link scanner or preview checking the link, not a viewer:
    // it gets the redirect and records nothing.
    let followed = req.method() != actix_web::http::Method::HEAD;
    // The viewer goes to the advertiser even when the click cannot be
    // queued (Redis and the spool both refusing): that case is counted,
    // and logged, rather than shown to the viewer.
    let recorded = if followed {
        record(&req, &state, &view, Kind::Click, ctx).await
    } else {
        Ok(())
    };
    if let Err(e) = recorded {
        state.metrics.vast_clicks_unrecorded.inc();
        tracing::warn!(error = %e, ad = view.ad.as_str(), "a click redirect was not recorded");
    }
    Ok(HttpResponse::Found()
        .insert_header((header::LOCATION, ad.target_url.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

/// The parse context of a pixel or click of `view`: its tenant is the
/// view's.
fn view_context(
    req: &HttpRequest,
    state: &AppState,
    view: &View,
) -> Result<ParseContext, ApiError> {
    let mut ctx = parse_context(req, state, None, None)?;
    ctx.tenant = view.tenant.clone();
    Ok(ctx)
}

/// The catalogue ad `id`, from the in-memory catalogue.
async fn catalogue_ad(state: &AppState, id: &str) -> Result<Arc<VideoAd>, ApiError> {
    match state.catalogue.get(id).await {
        Lookup::Found(ad) => Ok(ad),
        Lookup::Unknown => Err(unknown_ad()),
        Lookup::Unavailable(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                ad = id,
                "the ad catalogue is unavailable"
            );
            Err(ApiError::Unavailable {
                message: "the ad catalogue cannot be read now; retry shortly".into(),
                retry_after_secs: 1,
            })
        }
    }
}

/// Queues the `kind` event of `view`, with what the request's macros say.
/// The caller has charged the rate limits.
async fn record(
    req: &HttpRequest,
    state: &AppState,
    view: &View,
    kind: Kind,
    ctx: ParseContext,
) -> Result<(), ApiError> {
    // A pixel's time is believed only from shortly before its view was
    // issued: a token holder cannot place events in old buckets, nor, by
    // dating them back, outlive EVENT_RETENTION's purge of their keys and
    // count twice.
    let oldest = ctx.oldest.max(Some(view.issued - MAX_CLOCK_SKEW));
    let fields = PixelFields::read(&PixelQuery::parse(req.query_string()), ctx.now, oldest);
    let mut properties = fields.properties;
    properties.insert("viewId".into(), Value::from(view.id.to_string()));
    let mut body = json!({
        "eventId": vast::event_id(view.id, kind),
        "type": kind.as_str(),
        "adId": view.ad.as_str(),
        "properties": properties,
    });
    if let Some(t) = fields.timestamp {
        body["timestamp"] = Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    }
    if let Some(p) = fields.playhead {
        body["videoPlaybackTime"] = Value::from(p);
    }
    if kind == Kind::Error {
        if let Some(code) = fields.error_code {
            body["errorCode"] = Value::from(code);
        }
    }
    // Every field was checked above; should one still be refused, the
    // event is kept without what the macros said rather than refused, since
    // a player cannot correct a pixel.
    let mut event = match parse_value(body.clone(), &ctx) {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(error = %e, kind = kind.as_str(), "a pixel's macros were refused; storing the event without them");
            if let Some(fields) = body.as_object_mut() {
                for name in ["timestamp", "videoPlaybackTime", "errorCode"] {
                    fields.remove(name);
                }
            }
            body["properties"] = json!({ "viewId": view.id.to_string() });
            parse_value(body, &ctx).map_err(|e| rejected(state, e))?
        }
    };
    enqueue(req, ingress(req)?, std::slice::from_mut(&mut event)).await?;
    state
        .metrics
        .vast_pixels
        .with_label_values(&[kind.as_str()])
        .inc();
    Ok(())
}

/// The tenant a document is minted for: with `TENANTS=on`, the owner of
/// the `X-API-Key` header or, since a player cannot send headers, of the
/// `tag` query parameter (a key's publishable VAST tag, which allows
/// nothing else); else 401.
async fn document_tenant(req: &HttpRequest, state: &AppState) -> Result<String, ApiError> {
    let Some(resolver) = &state.api_keys else {
        return Ok(String::new());
    };
    if req.headers().contains_key("x-api-key") {
        return super::tenant_of(req, state).await;
    }
    let query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let Some((_, tag)) = query.iter().find(|(name, _)| name == "tag") else {
        return Err(ApiError::Unauthorized(
            "this server has tenants: send your API key in the X-API-Key header, or your VAST tag as ?tag=".into(),
        ));
    };
    match resolver.tenant_of_tag(tag).await {
        Ok(Some(tenant)) => Ok(tenant),
        Ok(None) => Err(ApiError::Unauthorized(
            "the VAST tag is unknown, or its key was revoked".into(),
        )),
        Err(e) => Err(ApiError::dependency(e)),
    }
}

/// The view `token` names, when adtrack signed it, it is still live and,
/// with `TENANTS=on`, its tenant still has a valid key (checked in the
/// in-memory key set: revoking a tenant stops its pixels and clicks within
/// `tenants::REFRESH`).
async fn verify_view(
    state: &AppState,
    token: &str,
    now: chrono::DateTime<Utc>,
) -> Result<View, ApiError> {
    let view = verify(state, token, now)?;
    if let Some(resolver) = &state.api_keys {
        let active = resolver
            .is_active(&view.tenant)
            .await
            .map_err(ApiError::dependency)?;
        if !active {
            state
                .metrics
                .vast_views_refused
                .with_label_values(&["revoked"])
                .inc();
            return Err(ApiError::NotFound(
                "no such view: its tenant has no valid API key".into(),
            ));
        }
    }
    Ok(view)
}

fn verify(state: &AppState, token: &str, now: chrono::DateTime<Utc>) -> Result<View, ApiError> {
    state.views.verify(token, now).map_err(|e| {
        state
            .metrics
            .vast_views_refused
            .with_label_values(&[e.as_str()])
            .inc();
        ApiError::NotFound(format!("no such view: {e}"))
    })
}

/// The publishable VAST tag of the request's API key.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct VastTag {
    /// The key's tenant.
    tenant: String,
    /// Goes in players' document URLs, `/vast/{adId}?tag=…`: it mints
    /// documents (views) of this tenant and allows nothing else. It stops
    /// working when the key is revoked.
    tag: String,
}

/// The VAST tag of the request's API key (`TENANTS=on`): what a player's
/// `/vast/{adId}` URL carries instead of the key, which a player cannot
/// send and a page must not show.
#[utoipa::path(
    get,
    path = "/tenant/vast-tag",
    tag = "vast",
    responses(
        (status = 200, description = "The tag of the X-API-Key", body = VastTag),
        TagErrors
    )
)]
pub async fn vast_tag(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.api_keys.is_none() {
        return Err(ApiError::NotFound(
            "this server has no tenants (TENANTS=off): /vast/{adId} needs no tag".into(),
        ));
    }
    let tenant = super::tenant_of(&req, &state).await?;
    let key = super::api_key(&req)?;
    Ok(HttpResponse::Ok().json(VastTag {
        tenant,
        tag: crate::tenants::vast_tag(&key),
    }))
}

/// The errors of `GET /tenant/vast-tag`.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum TagErrors {
    /// `?apiKey=` given (keys go in the header).
    #[response(status = 400)]
    BadRequest(super::openapi::ErrorBody),
    /// No valid `X-API-Key`.
    #[response(status = 401)]
    Unauthorized(super::openapi::ErrorBody),
    /// `TENANTS=off`: there are no tags.
    #[response(status = 404)]
    NotFound(super::openapi::ErrorBody),
    /// The API keys could never be loaded from Postgres.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds until a retry may succeed")))]
    Unavailable(super::openapi::ErrorBody),
}

fn unknown_ad() -> ApiError {
    ApiError::NotFound("no catalogue ad has this id".into())
}

fn gif() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("image/gif")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(vast::GIF)
}

/// The base of a document's URLs: `PUBLIC_URL`, else the request's scheme
/// and `Host` (with `X-Forwarded-Proto`/`-Host` only from `TRUSTED_PROXIES`).
fn public_base(req: &HttpRequest, state: &AppState) -> String {
    if let Some(url) = &state.settings.public_url {
        return url.clone();
    }
    let trusted = req
        .peer_addr()
        .is_some_and(|p| super::client::is_trusted(p.ip(), &state.settings.trusted_proxies));
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or_default().trim().to_owned())
    };
    let forwarded = |name: &str| if trusted { header(name) } else { None };
    let scheme = forwarded("x-forwarded-proto")
        .filter(|s| s == "http" || s == "https")
        .unwrap_or_else(|| {
            if req.app_config().secure() {
                "https"
            } else {
                "http"
            }
            .to_owned()
        });
    let host = forwarded("x-forwarded-host")
        .or_else(|| header("host"))
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or_else(|| req.app_config().host().to_owned());
    format!("{scheme}://{host}")
}
