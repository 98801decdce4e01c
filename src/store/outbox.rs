//! The `counter_outbox` table's statements (the batch statement writes a
//! row and deletes the rows its worker counted; see `insert_batch`): the
//! deletion of counted rows on their own, the claim of rows an interrupted
//! worker left behind, the table lock and reads of a snapshot, and the
//! outbox depth. Only
//! [`crate::exactly_once`], which holds the protocol, calls them; the SQL
//! lives here.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;

/// An outbox row: the events one committed batch inserted, whose counter
/// updates are still to be applied or to be confirmed applied.
#[derive(Debug)]
pub struct OutboxRow {
    pub batch_id: Uuid,
    pub event_ids: Vec<Uuid>,
    /// `None` for a row written before tenants existed (the tenant `""`).
    pub tenant_ids: Option<Vec<String>>,
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

/// Whether any outbox row waits.
pub async fn any(pool: &PgPool) -> anyhow::Result<bool> {
    sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM counter_outbox) AS "any!""#)
        .fetch_one(pool)
        .await
        .context("looking for outbox rows")
}

/// Locks the table (EXCLUSIVE: batch statements and deletions wait) until the caller's
/// transaction ends. `false` when its `lock_timeout` ran out first.
pub async fn lock<'e>(executor: impl sqlx::PgExecutor<'e>) -> anyhow::Result<bool> {
    match sqlx::query!("LOCK TABLE counter_outbox IN EXCLUSIVE MODE")
        .execute(executor)
        .await
    {
        Ok(_) => Ok(true),
        // lock_not_available
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => Ok(false),
        Err(e) => Err(e).context("locking the counter outbox"),
    }
}

/// Up to `limit` batch ids of waiting rows.
pub async fn pending<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    limit: i64,
) -> anyhow::Result<Vec<Uuid>> {
    sqlx::query_scalar!("SELECT batch_id FROM counter_outbox LIMIT $1", limit)
        .fetch_all(executor)
        .await
        .context("reading the counter outbox")
}

/// Deletes every row (inside the caller's transaction); returns their
/// batch ids.
pub async fn take_all<'e>(executor: impl sqlx::PgExecutor<'e>) -> anyhow::Result<Vec<Uuid>> {
    sqlx::query_scalar!("DELETE FROM counter_outbox RETURNING batch_id")
        .fetch_all(executor)
        .await
        .context("clearing the counter outbox")
}
