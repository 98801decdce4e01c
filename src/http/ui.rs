//! The web UI: static files from `web/`, embedded into the binary.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use rust_embed::RustEmbed;

use super::ApiError;

#[derive(RustEmbed)]
#[folder = "web/"]
struct Assets;

/// The web UI.
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    responses((status = 200, description = "The web UI: ad player, live analytics, reports", content_type = "text/html", body = String))
)]
pub async fn index(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    asset_or_not_found(req).await
}

/// Serves `GET /` and any embedded file; everything else is a JSON 404.
pub async fn asset_or_not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let path = req.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    if req.method() == actix_web::http::Method::GET || req.method() == actix_web::http::Method::HEAD
    {
        if let Some(file) = Assets::get(path) {
            let mime = file.metadata.mimetype();
            let cache = if path == "index.html" {
                "no-cache"
            } else {
                "public, max-age=300"
            };
            return Ok(HttpResponse::Ok()
                .insert_header((header::CONTENT_TYPE, mime))
                .insert_header((header::CACHE_CONTROL, cache))
                .body(file.data.into_owned()));
        }
    }
    Err(ApiError::NotFound(format!("no resource at {}", req.path())))
}
