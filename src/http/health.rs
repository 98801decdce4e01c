//! `GET /health`, `/ready`, `/metrics`.

use std::time::Duration;

use super::openapi::{Health, Readiness};
use actix_web::{web, HttpResponse};

use super::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// 200 while the process lives.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses((status = 200, description = "Alive", body = Health))
)]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// 200 when Postgres and Redis both answer, else 503 naming the one down.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Both dependencies answer", body = Readiness),
        (status = 503, description = "At least one does not", body = Readiness, headers(("Retry-After" = u64, description = "Seconds until a retry may succeed"))),
    )
)]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let (pg, redis) = tokio::join!(postgres_up(&state), redis_up(&state));
    state
        .metrics
        .dependency_up
        .with_label_values(&["postgres"])
        .set(pg as i64);
    state
        .metrics
        .dependency_up
        .with_label_values(&["redis"])
        .set(redis as i64);
    let word = |up: bool| if up { "ok" } else { "down" };
    let body = Readiness {
        status: if pg && redis { "ready" } else { "degraded" },
        postgres: word(pg),
        redis: word(redis),
    };
    if pg && redis {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    }
}

async fn postgres_up(state: &AppState) -> bool {
    let check = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
    matches!(tokio::time::timeout(CHECK_TIMEOUT, check).await, Ok(Ok(1)))
}

async fn redis_up(state: &AppState) -> bool {
    let mut conn = state.redis.clone();
    let ping = redis::cmd("PING");
    let check = ping.query_async::<String>(&mut conn);
    matches!(tokio::time::timeout(CHECK_TIMEOUT, check).await, Ok(Ok(_)))
}

/// Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Every metric of this process", content_type = "text/plain", body = String))
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // Depth gauges are sampled at scrape time, so every role reports them.
    let mut conn = state.redis.clone();
    if let Ok(Ok((queued, processing))) =
        tokio::time::timeout(CHECK_TIMEOUT, state.queues.depths(&mut conn)).await
    {
        state.metrics.queue_depth.set(queued as i64);
        state.metrics.processing_depth.set(processing as i64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
