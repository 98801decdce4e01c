//! The HTTP edge: routes, shared state, and the mapping of every error to
//! the SPEC's JSON shape.

mod admin;
mod analytics;
mod error;
mod health;
mod ingest;
mod live;
mod reports;
mod ui;

pub use error::ApiError;
pub use ingest::{MAX_BATCH_BYTES, MAX_BATCH_ITEMS, MAX_EVENT_BYTES};

use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::Service;
use actix_web::{web, HttpRequest, HttpResponse};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::config::Settings;
use crate::counters::Layout;
use crate::metrics::Metrics;
use crate::queue::{Keys, Pusher, Queues};
use crate::spool::{RedisDown, Spool};
use tokio_util::sync::CancellationToken;

/// What every handler shares.
pub struct AppState {
    pub settings: Settings,
    pub keys: Keys,
    pub queues: Queues,
    pub layout: Layout,
    /// Resolves `X-API-Key` when `TENANTS=on`; `None` when tenants are off.
    pub api_keys: Option<Arc<crate::tenants::KeyResolver>>,
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub pusher: Pusher,
    pub spool: Spool,
    pub redis_down: Arc<RedisDown>,
    /// `None` unless `RATE_LIMIT_PER_IP` or `RATE_LIMIT_PER_AD` is set.
    pub rate_limiter: Option<crate::ratelimit::RateLimiter>,
    pub metrics: Arc<Metrics>,
    /// Cancelled on shutdown; ends long-lived streams.
    pub shutdown: CancellationToken,
}

/// The tenant of a request: `""` with tenants off; with `TENANTS=on` the
/// owner of its `X-API-Key` header (or, for `EventSource`, which cannot set
/// headers, its `apiKey` query parameter), else 401.
pub(crate) async fn tenant_of(req: &HttpRequest, state: &AppState) -> Result<String, ApiError> {
    let Some(resolver) = &state.api_keys else {
        return Ok(String::new());
    };
    let header = req
        .headers()
        .get("x-api-key")
        .map(|v| v.to_str().map(str::to_owned).unwrap_or_default());
    let key = match header {
        Some(k) => k,
        None => analytics::query_map(req)?
            .remove("apiKey")
            .unwrap_or_default(),
    };
    if key.is_empty() {
        return Err(ApiError::Unauthorized(
            "this server has tenants: send your API key in the X-API-Key header".into(),
        ));
    }
    match resolver.tenant_of(key.trim()).await {
        Ok(Some(tenant)) => Ok(tenant),
        Ok(None) => Err(ApiError::Unauthorized(
            "the API key is unknown or revoked".into(),
        )),
        Err(e) => Err(ApiError::dependency(e)),
    }
}

/// Which routes a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Ingest, reads and UI, plus health.
    Full,
    /// Health, readiness and metrics only (worker processes).
    HealthOnly,
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// Registers the routes; `surface` decides which.
pub fn configure(cfg: &mut web::ServiceConfig, surface: Surface) {
    // Each resource is named by its pattern, so the request metrics can
    // label by route without building a string per request.
    let resource = |path: &str| {
        web::resource(path.to_owned())
            .name(path)
            .default_service(web::to(method_not_allowed))
    };
    cfg.service(resource("/health").route(web::get().to(health::health)))
        .service(resource("/ready").route(web::get().to(health::ready)))
        .service(resource("/metrics").route(web::get().to(health::metrics)));
    if surface == Surface::Full {
        cfg.service(resource("/ads/click").route(web::post().to(ingest::click)))
            .service(resource("/ads/impression").route(web::post().to(ingest::impression)))
            .service(resource("/events/batch").route(web::post().to(ingest::batch)))
            .service(resource("/ads").route(web::get().to(analytics::ads)))
            .service(resource("/ads/analytics").route(web::get().to(analytics::ad_analytics)))
            .service(resource("/campaigns").route(web::get().to(analytics::campaigns)))
            .service(
                resource("/campaigns/{id}/screens")
                    .route(web::get().to(analytics::campaign_screens)),
            )
            .service(resource("/aggregates").route(web::get().to(reports::aggregates)))
            .service(
                resource("/events")
                    .route(web::post().to(ingest::event))
                    .route(web::get().to(reports::events)),
            )
            .service(
                resource("/experiments/{id}/summary")
                    .route(web::get().to(reports::experiment_summary)),
            )
            .service(resource("/live").route(web::get().to(live::live)))
            .service(resource("/admin/queue").route(web::get().to(admin::queue)))
            .service(
                resource("/admin/dlq")
                    .route(web::get().to(admin::dlq))
                    .route(web::delete().to(admin::dlq_purge)),
            )
            .service(resource("/admin/dlq/replay").route(web::post().to(admin::dlq_replay)));
    }
    cfg.default_service(web::to(ui::asset_or_not_found));
}

/// Builds the actix `App` for `state`, with request metrics.
pub fn app(
    state: web::Data<AppState>,
    surface: Surface,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let metrics = state.metrics.clone();
    // The app factory runs once on each HTTP worker thread: that thread's
    // pusher (and its Redis connection) stays on it.
    let pusher = state.pusher.local();
    actix_web::App::new()
        .app_data(state)
        .app_data(pusher)
        .configure(move |cfg| configure(cfg, surface))
        .wrap(actix_web::middleware::ErrorHandlers::new().default_handler(error::json_error_body))
        .wrap_fn(move |req, srv| {
            let started = Instant::now();
            let method = req.method().clone();
            let fut = srv.call(req);
            let metrics = metrics.clone();
            async move {
                let res = fut.await?;
                let route = res.request().match_name().unwrap_or("unmatched");
                metrics
                    .http_requests
                    .with_label_values(&[route, method.as_str(), res.status().as_str()])
                    .observe(started.elapsed().as_secs_f64());
                Ok(res)
            }
        })
}
