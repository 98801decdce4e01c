//! `/admin/*`: the queue overview and the dead-letter list, behind the
//! bearer token `ADMIN_TOKEN`. Without a configured token the admin API does
//! not exist (404); a missing or wrong token is 401. Tokens are compared in
//! constant time.

use std::sync::atomic::Ordering;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::openapi::{AdminErrors, DeadLetters, ErrorBody, Moved, Purged, QueueStatus};
use super::query;
use super::{ApiError, AppState};

pub(crate) fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(expected) = state.settings.admin_token.as_deref() else {
        return Err(ApiError::NotFound(
            "the admin API is disabled; start adtrack with ADMIN_TOKEN set".into(),
        ));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or("");
    if token_matches(given, expected) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "a valid bearer token is required".into(),
        ))
    }
}

/// Compares SHA-256 digests in constant time: the time taken says nothing
/// about how much of the token matched, nor about its length (comparing the
/// raw bytes would stop at the first length mismatch).
fn token_matches(given: &str, expected: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given.as_slice().ct_eq(expected.as_slice()).into()
}

/// The queue overview with this process's spool, as `/admin/queue` and the
/// live stream show it.
pub(crate) async fn queue_status(state: &AppState) -> anyhow::Result<serde_json::Value> {
    let mut conn = state.redis.clone();
    let o = state.queues.overview(&mut conn).await?;
    let reset = crate::counters::last_reset(&mut conn, &state.keys).await?;
    let spool = state.spool.stats();
    Ok(json!({
        "queued": o.queued,
        "processing": o.processing,
        "retrying": o.retrying,
        "deadLettered": o.dead_lettered,
        "spooledEvents": spool.events.load(Ordering::Relaxed),
        "spoolBytes": spool.bytes.load(Ordering::Relaxed),
        "workers": o.workers,
        "ingested": o.ingested,
        "committed": o.committed,
        "redisResetAt": reset.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    }))
}

/// Queue depths, this process's spool and the workers.
#[utoipa::path(
    get,
    path = "/admin/queue",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The pipeline now", body = QueueStatus),
        AdminErrors
    )
)]
pub async fn queue(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let status = queue_status(&state).await.map_err(ApiError::dependency)?;
    Ok(HttpResponse::Ok().json(status))
}

/// The query of `GET /admin/dlq`.
#[derive(serde::Deserialize)]
struct DlqQuery {
    limit: Option<String>,
}

/// Dead letters, newest first.
#[utoipa::path(
    get,
    path = "/admin/dlq",
    tag = "admin",
    security(("admin_token" = [])),
    params(("limit" = Option<u64>, Query, description = "1 to 1000, default 100", minimum = 1, maximum = 1000)),
    responses(
        (status = 200, description = "The total and the newest letters", body = DeadLetters),
        (status = 400, description = "An invalid limit", body = ErrorBody),
        AdminErrors
    )
)]
pub async fn dlq(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let q: DlqQuery = query::parse(&req)?;
    let limit = match q.limit {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::invalid_field("limit must be an integer from 1 to 1000"))?,
    };
    let mut conn = state.redis.clone();
    let (total, items) = state
        .queues
        .dlq_list(&mut conn, limit)
        .await
        .map_err(ApiError::dependency)?;
    Ok(HttpResponse::Ok().json(DeadLetters { total, items }))
}

/// Moves every dead letter back to the queue (attempts reset).
#[utoipa::path(
    post,
    path = "/admin/dlq/replay",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "How many moved", body = Moved),
        AdminErrors
    )
)]
pub async fn dlq_replay(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let mut conn = state.redis.clone();
    let moved = state
        .queues
        .dlq_replay(&mut conn)
        .await
        .map_err(ApiError::dependency)?;
    tracing::info!(moved, "dead letters replayed");
    Ok(HttpResponse::Ok().json(Moved { moved }))
}

/// Deletes every dead letter.
#[utoipa::path(
    delete,
    path = "/admin/dlq",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "How many were deleted", body = Purged),
        AdminErrors
    )
)]
pub async fn dlq_purge(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let mut conn = state.redis.clone();
    let purged = state
        .queues
        .dlq_purge(&mut conn)
        .await
        .map_err(ApiError::dependency)?;
    tracing::warn!(purged, "dead letters purged");
    Ok(HttpResponse::Ok().json(Purged { purged }))
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn only_the_exact_token_matches() {
        let token = "s3cret-token-0123456789";
        assert!(token_matches(token, token));
        for other in [
            "",
            "s3cret-token-012345678",
            "s3cret-token-01234567890",
            "S3cret-token-0123456789",
            "s3cret-token-0123456788",
            "s3cret-token-0123456789\0",
        ] {
            assert!(!token_matches(other, token), "{other:?}");
        }
    }
}
