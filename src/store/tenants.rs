//! The `tenants` and `api_keys` tables' statements. `crate::tenants` owns
//! what a key is, how it is made and how it is resolved; the SQL lives here.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// A tenant as `adtrack tenant list` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantInfo {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The first characters of each key still valid.
    pub active_keys: Vec<String>,
}

/// A valid key's digest and its tenant.
#[derive(Debug)]
pub struct ValidKey {
    pub key_hash: Vec<u8>,
    pub tenant_id: String,
}

/// Creates tenant `id`, or renames it (unless `name` is empty) and lifts
/// its revocation.
pub async fn upsert_tenant<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: &str,
    name: &str,
) -> anyhow::Result<()> {
    sqlx::query!(
        "INSERT INTO tenants (id, name) VALUES ($1, $2)
         ON CONFLICT (id) DO UPDATE SET name = CASE WHEN $2 = '' THEN tenants.name ELSE $2 END,
                                        revoked_at = NULL",
        id,
        name,
    )
    .execute(executor)
    .await
    .context("creating the tenant")?;
    Ok(())
}

/// Stores a key of `tenant` as its digest and its first characters.
pub async fn insert_key<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    key_hash: &[u8],
    tenant: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    sqlx::query!(
        "INSERT INTO api_keys (key_hash, tenant_id, prefix) VALUES ($1, $2, $3)",
        key_hash,
        tenant,
        prefix,
    )
    .execute(executor)
    .await
    .context("storing the API key")?;
    Ok(())
}

/// Every tenant, by id, with the prefixes of its valid keys.
pub async fn list(pool: &PgPool) -> anyhow::Result<Vec<TenantInfo>> {
    sqlx::query_as!(
        TenantInfo,
        r#"SELECT t.id, t.name, t.created_at, t.revoked_at,
                  coalesce(array_agg(k.prefix ORDER BY k.created_at)
                           FILTER (WHERE k.prefix IS NOT NULL AND k.revoked_at IS NULL), '{}')
                      AS "active_keys!"
           FROM tenants t LEFT JOIN api_keys k ON k.tenant_id = t.id
           GROUP BY t.id ORDER BY t.id"#,
    )
    .fetch_all(pool)
    .await
    .context("listing tenants")
}

/// Whether tenant `id` exists (revoked or not).
pub async fn tenant_exists<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: &str,
) -> anyhow::Result<bool> {
    let found = sqlx::query_scalar!("SELECT id FROM tenants WHERE id = $1", id)
        .fetch_optional(executor)
        .await
        .context("looking up the tenant")?;
    Ok(found.is_some())
}

/// Revokes the valid keys of tenant `id`: the one whose digest is `whole`
/// when given, else those matching `prefix` (any prefix, shorter or longer
/// than the stored one), else all of them. Returns how many it revoked.
pub async fn revoke_keys<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: &str,
    prefix: Option<&str>,
    whole: Option<&[u8]>,
) -> anyhow::Result<u64> {
    Ok(sqlx::query!(
        "UPDATE api_keys SET revoked_at = now()
         WHERE tenant_id = $1 AND revoked_at IS NULL
           AND CASE WHEN $3::bytea IS NOT NULL THEN key_hash = $3
                    WHEN $2::text IS NULL THEN true
                    WHEN length($2) <= length(prefix) THEN starts_with(prefix, $2)
                    ELSE starts_with($2, prefix) END",
        id,
        prefix,
        whole,
    )
    .execute(executor)
    .await
    .context("revoking keys")?
    .rows_affected())
}

/// Marks tenant `id` revoked.
pub async fn revoke_tenant<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: &str,
) -> anyhow::Result<()> {
    sqlx::query!("UPDATE tenants SET revoked_at = now() WHERE id = $1", id)
        .execute(executor)
        .await
        .context("revoking the tenant")?;
    Ok(())
}

/// The digests of every valid key (neither it nor its tenant revoked).
pub async fn valid_keys(pool: &PgPool) -> anyhow::Result<Vec<ValidKey>> {
    sqlx::query_as!(
        ValidKey,
        "SELECT k.key_hash, k.tenant_id FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
         WHERE k.revoked_at IS NULL AND t.revoked_at IS NULL",
    )
    .fetch_all(pool)
    .await
    .context("loading the valid API keys")
}
