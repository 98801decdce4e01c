//! Cross-origin access (`CORS_ORIGINS`), through actix-cors.
//!
//! Ads run on other people's pages, so by default (`*`) the routes that take
//! events answer a preflight and a `POST` from any origin, without
//! credentials; reads and admin routes stay same-origin. When
//! `CORS_ORIGINS` names origins, those origins (and no others) may use
//! every route. A request from an origin that is not allowed is still
//! served, without CORS headers, so the browser keeps its answer from the
//! page; `curl` and same-origin pages are unaffected. The browser SDK
//! (`/sdk.js`, `/sdk.mjs`) may be fetched by any page whatever the setting:
//! a module script is always fetched in CORS mode, and the SDK is public.
//! A request without an `Origin` header never reaches this middleware
//! (`super::edge`).

use std::rc::Rc;

use actix_cors::Cors;
use actix_web::dev::RequestHead;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::Method;

/// The paths that take events from a page.
pub const INGEST_PATHS: &[&str] = &["/ads/click", "/ads/impression", "/events", "/events/batch"];

/// The browser SDK's files, which any page may load (as a module too).
pub const SDK_PATHS: &[&str] = &["/sdk.js", "/sdk.mjs"];

/// The CORS middleware for `listed` origins (`None`: `*` for ingest).
pub fn middleware(listed: Option<Vec<String>>) -> Cors {
    let listed: Option<Rc<[String]>> = listed.map(Rc::from);
    Cors::default()
        .allowed_origin_fn(move |origin, head| allows(listed.as_deref(), origin, head))
        .allowed_methods([Method::GET, Method::POST, Method::DELETE])
        .allowed_headers([
            header::CONTENT_TYPE,
            // A page compresses a batch with CompressionStream and says so.
            header::CONTENT_ENCODING,
            header::AUTHORIZATION,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-api-key"),
        ])
        .expose_headers([
            header::RETRY_AFTER,
            header::LINK,
            HeaderName::from_static("x-total-count"),
            HeaderName::from_static("x-next-cursor"),
        ])
        .max_age(3600)
        .block_on_origin_mismatch(false)
}

/// Whether `path` is a VAST document, pixel or click: players on any page
/// load them (the document with `fetch`), and they carry no credentials.
pub fn is_vast_path(path: &str) -> bool {
    ["/vast/", "/t/", "/c/"].iter().any(|p| path.starts_with(p))
}

fn allows(listed: Option<&[String]>, origin: &HeaderValue, head: &RequestHead) -> bool {
    if head.method == Method::GET && SDK_PATHS.contains(&head.uri.path()) {
        return true;
    }
    if let Some(listed) = listed {
        return origin
            .to_str()
            .is_ok_and(|o| listed.iter().any(|l| l.eq_ignore_ascii_case(o)));
    }
    // A preflight names the method the page wants to use.
    let method = if head.method == Method::OPTIONS {
        head.headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
    } else {
        Some(head.method.clone())
    };
    let path = head.uri.path();
    (method == Some(Method::POST) && INGEST_PATHS.contains(&path))
        || (method == Some(Method::GET) && is_vast_path(path))
}
