//! `GET /health`, `/ready`, `/metrics`.

use std::time::Duration;

use super::openapi::{Health, Readiness};
use actix_web::{web, HttpResponse};

use super::AppState;
use crate::fault::{Cause, Outage};
use crate::store;

/// A dependency that does not answer a probe within this is `down` for
/// readiness, whether its connection was refused or it hangs.
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

/// 200 when Postgres and Redis both take writes, else 503 naming what is
/// wrong with each: `down`, or how it refuses (`read-only`, `no-privilege`,
/// `schema`, `out-of-memory`, … as in [`crate::fault::Cause`]).
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Both dependencies take writes", body = Readiness),
        (status = 503, description = "At least one does not", body = Readiness, headers(("Retry-After" = u64, description = "Seconds until a retry may succeed"))),
    )
)]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let (pg, redis) = tokio::join!(postgres_state(&state), redis_state(&state));
    for (name, result) in [("postgres", pg), ("redis", redis)] {
        state
            .metrics
            .dependency_up
            .with_label_values(&[name])
            .set(result.is_ok() as i64);
    }
    let word = |r: Result<(), Cause>| r.err().map_or("ok", Cause::as_str);
    let ok = pg.is_ok() && redis.is_ok();
    let body = Readiness {
        status: if ok { "ready" } else { "degraded" },
        postgres: word(pg),
        redis: word(redis),
    };
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    }
}

/// Whether the workers could write now: the server answers, is not a
/// read-only standby, has adtrack's tables and lets it insert into them.
async fn postgres_state(state: &AppState) -> Result<(), Cause> {
    let check = store::health::probe_writes(&state.pool);
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Err(_) => Err(Cause::Down),
        Ok(Err(e)) => Err(cause_of(e)),
        Ok(Ok(p)) if p.read_only => Err(Cause::ReadOnly),
        Ok(Ok(p)) if !p.tables_present => Err(Cause::Schema),
        Ok(Ok(p)) if !p.can_insert => Err(Cause::NoPrivilege),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Whether Redis takes a write: a `PING` answers on a replica and on a
/// server out of memory, where every push would fail.
async fn redis_state(state: &AppState) -> Result<(), Cause> {
    let mut conn = state.redis.clone();
    let mut probe = redis::cmd("SET");
    probe
        .arg(state.keys.ready_probe())
        .arg(1)
        .arg("PX")
        .arg(10_000);
    let check = probe.query_async::<()>(&mut conn);
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Err(_) => Err(Cause::Down),
        Ok(Err(e)) => Err(cause_of(e.into())),
        Ok(Ok(())) => Ok(()),
    }
}

fn cause_of(err: anyhow::Error) -> Cause {
    Outage::of(&err).cause
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
