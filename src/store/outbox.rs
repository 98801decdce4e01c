//! The `counter_outbox` table's statements for the workers: the claim of a
//! batch's row after its commit, the claim of rows an interrupted worker
//! left behind, and the outbox depth. The worker (`worker`) and its
//! maintenance (`worker::maintenance`) hold the protocol; the SQL lives here.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;

/// An outbox row: the events one committed batch inserted, whose counter
/// updates are still to be applied.
#[derive(Debug)]
pub struct OutboxRow {
    pub batch_id: Uuid,
    pub event_ids: Vec<Uuid>,
    /// `None` for a row written before tenants existed (the tenant `""`).
    pub tenant_ids: Option<Vec<String>>,
}

/// Claims (deletes, inside the caller's transaction) the outbox row of
/// `batch`. Returns 0 when recovery or reconcile already took it.
pub async fn claim<'e>(executor: impl sqlx::PgExecutor<'e>, batch: &Uuid) -> anyhow::Result<u64> {
    Ok(
        sqlx::query!("DELETE FROM counter_outbox WHERE batch_id = $1", batch)
            .execute(executor)
            .await
            .context("claiming the counter outbox row")?
            .rows_affected(),
    )
}

/// Claims (deletes, inside the caller's transaction) up to 20 outbox rows
/// older than `grace`, oldest first, skipping rows another transaction holds.
pub async fn claim_stale<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    grace: Duration,
) -> anyhow::Result<Vec<OutboxRow>> {
    sqlx::query_as!(
        OutboxRow,
        "DELETE FROM counter_outbox WHERE batch_id IN (
             SELECT batch_id FROM counter_outbox
             WHERE created_at < now() - make_interval(secs => $1)
             ORDER BY created_at LIMIT 20 FOR UPDATE SKIP LOCKED)
         RETURNING batch_id, event_ids, tenant_ids",
        grace.as_secs_f64(),
    )
    .fetch_all(executor)
    .await
    .context("claiming outbox rows")
}

/// Deletes the outbox rows of `batches`, whose updates were applied.
pub async fn delete(pool: &PgPool, batches: &[Uuid]) -> anyhow::Result<u64> {
    Ok(sqlx::query!(
        "DELETE FROM counter_outbox WHERE batch_id = ANY($1)",
        batches
    )
    .execute(pool)
    .await
    .context("deleting applied outbox rows")?
    .rows_affected())
}

/// How many outbox rows wait to be applied.
pub async fn depth(pool: &PgPool) -> anyhow::Result<i64> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "depth!" FROM counter_outbox"#)
        .fetch_one(pool)
        .await
        .context("counting outbox rows")
}
