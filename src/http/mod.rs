//! The HTTP edge: routes, shared state, and the mapping of every error to
//! the SPEC's JSON shape.

mod admin;
mod analytics;
mod client;
mod cors;
mod edge;
mod error;
mod front;
mod health;
mod ingest;
mod live;
pub mod openapi;
mod query;
mod reports;
mod ui;
mod vast;

pub use error::ApiError;
pub use ingest::{MAX_BATCH_BYTES, MAX_BATCH_ITEMS, MAX_EVENT_BYTES};

use std::rc::Rc;
use std::sync::Arc;

use actix_web::http::Method;
use actix_web::middleware::Compress;
use actix_web::{guard, web, HttpRequest, HttpResponse};
use sqlx::PgPool;

use crate::config::Settings;
use crate::counters::Layout;
use crate::metrics::Metrics;
use crate::queue::{Keys, Pusher, Queues};
use crate::redis_client::RedisConn;
use crate::spool::{RedisDown, Spool};
use client::Incoming;
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
    /// The reports' own small pool with a statement timeout
    /// (`store::reports::pool`): reports never wait for, or hold, a
    /// connection of `pool`.
    pub report_pool: PgPool,
    pub redis: RedisConn,
    pub pusher: Pusher,
    pub spool: Spool,
    pub redis_down: Arc<RedisDown>,
    /// `None` unless `RATE_LIMIT_PER_IP` or `RATE_LIMIT_PER_AD` is set.
    pub rate_limiter: Option<crate::ratelimit::RateLimiter>,
    /// Flags invalid traffic before it is queued (`IVT_FILTER`).
    pub ivt: crate::ivt::Ivt,
    pub metrics: Arc<Metrics>,
    /// Cancelled on shutdown; ends long-lived streams.
    pub shutdown: CancellationToken,
    /// `/live` streams open now (at most `LIVE_MAX_STREAMS`).
    pub live_streams: Arc<std::sync::atomic::AtomicUsize>,
    /// One ranking of pending campaigns at a time in this process.
    pub settle_gate: Arc<tokio::sync::Mutex<()>>,
    /// Signs and verifies the view tokens of VAST documents.
    pub views: crate::vast::ViewSigner,
    /// The ad catalogue of the VAST routes, in memory.
    pub catalogue: Arc<crate::vast::Catalogue>,
}

/// The tenant of a request: `""` with tenants off; with `TENANTS=on` the
/// owner of its API key, else 401.
pub(crate) async fn tenant_of<R: Incoming + ?Sized>(
    req: &R,
    state: &AppState,
) -> Result<String, ApiError> {
    let Some(resolver) = &state.api_keys else {
        return Ok(String::new());
    };
    let key = api_key(req)?;
    if key.is_empty() {
        return Err(ApiError::Unauthorized(
            "this server has tenants: send your API key in the X-API-Key header".into(),
        ));
    }
    // Boxed: with tenants off this is never reached, and the lookup's
    // future would otherwise be part of every request's.
    match Box::pin(resolver.tenant_of(&key)).await {
        Ok(Some(tenant)) => Ok(tenant),
        Ok(None) => Err(ApiError::Unauthorized(
            "the API key is unknown or revoked".into(),
        )),
        Err(e) => Err(ApiError::dependency(e)),
    }
}

/// The shared state, borrowed from the request: taking `web::Data` as an
/// argument clones its `Arc`, an atomic write to a count every HTTP thread
/// shares, which the ingest routes avoid.
pub(crate) fn state_of(req: &HttpRequest) -> Result<&AppState, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .map(|s| s.get_ref())
        .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("no state on this HTTP worker")))
}

/// The API key of a request (`""` when none): its `X-API-Key` header, or on
/// `/live` only, whose `EventSource` cannot set headers, its `apiKey` query
/// parameter. Elsewhere `?apiKey=` is refused (400), so keys stay out of
/// the URLs that proxies and access logs record.
pub(crate) fn api_key<R: Incoming + ?Sized>(req: &R) -> Result<String, ApiError> {
    let header = req
        .headers()
        .get("x-api-key")
        .map(|v| v.to_str().map(|k| k.trim().to_owned()).unwrap_or_default());
    if req.path() == "/live" {
        return Ok(match header {
            Some(k) => k,
            None => query::parse::<LiveKey, _>(req)?.api_key.unwrap_or_default(),
        });
    }
    let in_query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .is_ok_and(|q| q.iter().any(|(name, _)| name == "apiKey"));
    if in_query {
        return Err(ApiError::bad_request(
            "invalid_query",
            "send the API key in the X-API-Key header: ?apiKey= is accepted only on /live",
        ));
    }
    Ok(header.unwrap_or_default())
}

/// The `apiKey` query parameter of `/live`.
#[derive(serde::Deserialize)]
struct LiveKey {
    #[serde(rename = "apiKey")]
    api_key: Option<String>,
}

/// The Content-Security-Policy of every answer: scripts, styles, images and
/// media from adtrack itself only, nothing inline, no plugins, and no page
/// may frame adtrack's (the UI renders data only through `textContent`; this
/// is the second line). `img-src data:` is for the icons in vendored CSS.
/// With `PUBLIC_URL`, its origin may serve images and media too: the VAST
/// documents name it in their pixel and video URLs, so the UI's player
/// works whatever address the page was opened at.
pub(crate) fn content_security_policy(public_url: Option<&str>) -> String {
    let public = public_url
        .map(origin)
        .map_or(String::new(), |o| format!(" {o}"));
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; \
         img-src 'self' data:{public}; media-src 'self'{public}; connect-src 'self'; \
         font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    )
}

/// `scheme://host[:port]` of an http(s) URL (`PUBLIC_URL` is checked to be
/// one at start).
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => &url[..after_scheme + slash],
        None => url,
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

/// The answer of a resource to a method it does not take: 405 naming the
/// ones it does (in `Allow`, as RFC 9110 asks).
fn method_not_allowed(allow: String) -> actix_web::Route {
    web::to(move || {
        let allow = allow.clone();
        async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow }) }
    })
}

/// The route table: every path the server serves, with its methods and
/// handlers. `configure` registers it and [`routes`] lists it, so the list
/// cannot drift from what is served (the OpenAPI test checks the document
/// against [`routes`]).
type Table = Vec<(&'static str, Vec<(Method, actix_web::Route)>)>;

fn table(surface: Surface) -> Table {
    let mut t: Table = vec![
        ("/health", vec![(Method::GET, web::to(health::health))]),
        ("/ready", vec![(Method::GET, web::to(health::ready))]),
        ("/metrics", vec![(Method::GET, web::to(health::metrics))]),
    ];
    if surface == Surface::Full {
        t.extend([
            ("/ads/click", vec![(Method::POST, web::to(ingest::click))]),
            (
                "/ads/impression",
                vec![(Method::POST, web::to(ingest::impression))],
            ),
            (
                "/events/batch",
                vec![(Method::POST, web::to(ingest::batch))],
            ),
            ("/ads", vec![(Method::GET, web::to(analytics::ads))]),
            (
                "/ads/analytics",
                vec![(Method::GET, web::to(analytics::ad_analytics))],
            ),
            (
                "/campaigns",
                vec![(Method::GET, web::to(analytics::campaigns))],
            ),
            (
                "/campaigns/{id}/screens",
                vec![(Method::GET, web::to(analytics::campaign_screens))],
            ),
            (
                "/aggregates",
                vec![(Method::GET, web::to(reports::aggregates))],
            ),
            (
                "/events",
                vec![
                    (Method::POST, web::to(ingest::event)),
                    (Method::GET, web::to(reports::events)),
                ],
            ),
            (
                "/experiments/{id}/summary",
                vec![(Method::GET, web::to(reports::experiment_summary))],
            ),
            ("/live", vec![(Method::GET, web::to(live::live))]),
            ("/vast/{adId}", vec![(Method::GET, web::to(vast::document))]),
            (
                "/t/{view}/{event}",
                vec![(Method::GET, web::to(vast::pixel))],
            ),
            ("/c/{view}", vec![(Method::GET, web::to(vast::click))]),
            (
                "/tenant/vast-tag",
                vec![(Method::GET, web::to(vast::vast_tag))],
            ),
            ("/admin/queue", vec![(Method::GET, web::to(admin::queue))]),
            (
                "/admin/dlq",
                vec![
                    (Method::GET, web::to(admin::dlq)),
                    (Method::DELETE, web::to(admin::dlq_purge)),
                ],
            ),
            (
                "/admin/dlq/replay",
                vec![(Method::POST, web::to(admin::dlq_replay))],
            ),
            (
                "/openapi.json",
                vec![(Method::GET, web::to(openapi::openapi_json))],
            ),
            ("/docs", vec![(Method::GET, web::to(openapi::docs))]),
            ("/", vec![(Method::GET, web::to(ui::index))]),
        ]);
    }
    t
}

/// Every (method, path) the server serves on `surface`, paths in the
/// router's (and OpenAPI's) `{param}` syntax.
pub fn routes(surface: Surface) -> Vec<(Method, &'static str)> {
    table(surface)
        .into_iter()
        .flat_map(|(path, routes)| routes.into_iter().map(move |(m, _)| (m, path)))
        .collect()
}

/// Whether a route for `method` answers HEAD as well: GET routes do (RFC
/// 9110 9.3.2), with the same handler; actix leaves the body off the wire.
fn answers_head(method: &Method) -> bool {
    *method == Method::GET
}

/// Registers the routes; `surface` decides which. Other paths are the UI's
/// static files or a JSON 404.
pub fn configure(cfg: &mut web::ServiceConfig, surface: Surface) {
    for (path, routes) in table(surface) {
        let allow = routes
            .iter()
            .flat_map(|(m, _)| std::iter::once(m.as_str()).chain(answers_head(m).then_some("HEAD")))
            .collect::<Vec<_>>()
            .join(", ");
        // Each resource is named by its pattern, so the request metrics can
        // label by route without building a string per request.
        let mut resource = web::resource(path)
            .name(path)
            .default_service(method_not_allowed(allow));
        for (method, route) in routes {
            let route = if compresses(&method, path) {
                route.wrap(Compress::default())
            } else {
                route
            };
            // Not actix's `guard::Method`: each one a request meets records
            // its method in the request's extensions (a map insert and an
            // allocation or two) for the `Allow` of actix's built-in 405,
            // which nothing here serves: every resource answers 405 with
            // `method_not_allowed`, its `Allow` built from the table.
            let head = answers_head(&method);
            resource = resource.route(route.guard(guard::fn_guard(move |ctx| {
                let asked = &ctx.head().method;
                *asked == method || (head && *asked == Method::HEAD)
            })));
        }
        cfg.service(resource);
    }
    cfg.default_service(web::to(ui::asset_or_not_found).wrap(Compress::default()));
}

/// Whether answers of `method` on `path` are gzip-compressed for a client
/// that asks: reads and documents are. Ingest answers, pixels, redirects,
/// health checks and the event stream are not: they are a few dozen bytes
/// or must not wait in a compressor, and the middleware would cost the
/// hottest routes a layer for nothing.
fn compresses(method: &Method, path: &str) -> bool {
    const SMALL_OR_STREAMED: [&str; 5] = [
        "/health",
        "/ready",
        "/live",
        "/t/{view}/{event}",
        "/c/{view}",
    ];
    *method == Method::GET && !SMALL_OR_STREAMED.contains(&path)
}

/// Builds what serves HTTP on one worker thread for `state`: the actix
/// `App` with every route on `surface` behind the edge, and in front of it
/// the ingest fast path ([`front`]) when `surface` has the ingest routes.
pub fn service(
    state: web::Data<AppState>,
    surface: Surface,
) -> front::Front<
    impl actix_web::dev::ServiceFactory<
        actix_http::Request,
        Config = actix_web::dev::AppConfig,
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    use actix_service::IntoServiceFactory;

    // The factory runs once on each HTTP worker thread: that thread's
    // pusher (and its Redis connection) and edge state stay on it, shared
    // by the app and the fast path.
    let pusher = state.pusher.local();
    let cors_origins = state.settings.cors_origins.clone();
    let csp = content_security_policy(state.settings.public_url.as_deref());
    let edge = Rc::new(edge::Edge::new(csp, &state.metrics));
    let fast = (surface == Surface::Full).then(|| front::Fast {
        state: state.clone(),
        pusher: pusher.clone(),
        edge: edge.clone(),
    });
    let app = actix_web::App::new()
        .app_data(state)
        .app_data(pusher)
        .configure(move |cfg| configure(cfg, surface))
        .wrap(edge::Layer::new(edge, cors::middleware(cors_origins)));
    front::Front::new(app.into_factory(), fast)
}
