//! The ingest baseline of `bench/run`: an actix-web server that parses the
//! click body exactly as adtrack's `/ads/click` does and answers 202 with
//! the same JSON, but sends nothing anywhere. adtrack's ingest rate is
//! reported as a ratio of this one's, measured in the same run.
//!
//! `cargo run --release --example baseline -- <port>`

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use adtrack::domain::{parse_event, Kind, ParseContext};

async fn click(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let mut ctx = ParseContext::new(chrono::Utc::now());
    ctx.fixed_kind = Some(Kind::Click);
    ctx.peer_ip = req.peer_addr().map(|a| a.ip());
    match parse_event(&body, &ctx) {
        Ok(event) => HttpResponse::Accepted().json(serde_json::json!({
            "status": "accepted",
            "eventId": event.event_id,
        })),
        Err(e) => HttpResponse::BadRequest().json(serde_json::json!({
            "error": e.code,
            "message": e.message,
        })),
    }
}

/// The same allocator as adtrack, so the two differ only in what adtrack
/// does beyond parsing.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8090);
    // The same listener and server settings as adtrack.
    let listener = adtrack::app::bind_listener(SocketAddr::from(([0, 0, 0, 0], port)))?;
    HttpServer::new(|| {
        App::new()
            .app_data(web::PayloadConfig::new(16 * 1024))
            .route("/ads/click", web::post().to(click))
    })
    .listen(listener)?
    .max_connection_rate(4096)
    .client_request_timeout(Duration::from_secs(30))
    .keep_alive(Duration::from_secs(75))
    .run()
    .await?;
    Ok(())
}
