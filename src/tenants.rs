//! Optional multi-tenancy (`TENANTS=on`): tenants, their API keys (stored as
//! SHA-256 digests) and the lookup of a request's `X-API-Key`.
//!
//! A key is resolved through a small in-process cache, so ingest does not
//! pay a Postgres round trip per request; a revoked key stops working once
//! its cache entry expires (`CACHE_TTL`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// How long a resolved key (or a refused one) is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Entries kept before the cache is cleared (bounds memory under key spraying).
const CACHE_MAX: usize = 100_000;
/// Every key starts with this, so leaked keys are easy to grep for.
pub const KEY_PREFIX: &str = "adt_";

pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Creates tenant `id` when missing and a new API key for it; returns the
/// key, which is stored only as its digest.
pub async fn create(pool: &PgPool, id: &str, name: &str) -> anyhow::Result<String> {
    if !valid_tenant_id(id) {
        bail!("tenant id {id:?} must be 1 to 63 of a-z, 0-9 and '-', not starting with '-'");
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let key = format!("{KEY_PREFIX}{}", hex(&raw));
    let mut tx = pool.begin().await.context("starting the tenant creation")?;
    sqlx::query(
        "INSERT INTO tenants (id, name) VALUES ($1, $2)
         ON CONFLICT (id) DO UPDATE SET name = CASE WHEN $2 = '' THEN tenants.name ELSE $2 END,
                                        revoked_at = NULL",
    )
    .bind(id)
    .bind(name)
    .execute(&mut *tx)
    .await
    .context("creating the tenant")?;
    sqlx::query("INSERT INTO api_keys (key_hash, tenant_id, prefix) VALUES ($1, $2, $3)")
        .bind(&digest(&key)[..])
        .bind(id)
        .bind(&key[..KEY_PREFIX.len() + 8])
        .execute(&mut *tx)
        .await
        .context("storing the API key")?;
    tx.commit().await.context("committing the tenant")?;
    Ok(key)
}

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

pub async fn list(pool: &PgPool) -> anyhow::Result<Vec<TenantInfo>> {
    type Row = (
        String,
        String,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Vec<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT t.id, t.name, t.created_at, t.revoked_at,
                    coalesce(array_agg(k.prefix ORDER BY k.created_at)
                             FILTER (WHERE k.prefix IS NOT NULL AND k.revoked_at IS NULL), '{}')
             FROM tenants t LEFT JOIN api_keys k ON k.tenant_id = t.id
             GROUP BY t.id ORDER BY t.id",
    )
    .fetch_all(pool)
    .await
    .context("listing tenants")?;
    Ok(rows
        .into_iter()
        .map(
            |(id, name, created_at, revoked_at, active_keys)| TenantInfo {
                id,
                name,
                created_at,
                revoked_at,
                active_keys,
            },
        )
        .collect())
}

/// Revokes every key of tenant `id` (and the tenant), or with `key_prefix`
/// only the keys starting with it. Returns how many keys were revoked.
pub async fn revoke(pool: &PgPool, id: &str, key_prefix: Option<&str>) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await.context("starting the revocation")?;
    let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .context("looking up the tenant")?;
    if exists.is_none() {
        bail!("no tenant {id:?}");
    }
    let revoked = sqlx::query(
        "UPDATE api_keys SET revoked_at = now()
         WHERE tenant_id = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR prefix LIKE $2 || '%')",
    )
    .bind(id)
    .bind(key_prefix)
    .execute(&mut *tx)
    .await
    .context("revoking keys")?
    .rows_affected();
    if key_prefix.is_none() {
        sqlx::query("UPDATE tenants SET revoked_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .context("revoking the tenant")?;
    }
    tx.commit().await.context("committing the revocation")?;
    Ok(revoked)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key digest's tenant (`None`: refused) and when it was looked up.
type CacheEntry = (Option<String>, Instant);

/// Resolves API keys to tenants, with a short-lived cache.
pub struct KeyResolver {
    pool: PgPool,
    cache: Mutex<HashMap<[u8; 32], CacheEntry>>,
}

impl KeyResolver {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant of `key`, or `None` when the key is unknown or revoked.
    pub async fn tenant_of(&self, key: &str) -> anyhow::Result<Option<String>> {
        let hash = digest(key);
        if let Ok(cache) = self.cache.lock() {
            if let Some((tenant, at)) = cache.get(&hash) {
                if at.elapsed() < CACHE_TTL {
                    return Ok(tenant.clone());
                }
            }
        }
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT k.tenant_id FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND t.revoked_at IS NULL",
        )
        .bind(&hash[..])
        .fetch_optional(&self.pool)
        .await
        .context("looking up the API key")?;
        let tenant = row.map(|(t,)| t);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(hash, (tenant.clone(), Instant::now()));
        }
        Ok(tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_plain_slugs() {
        for ok in ["acme", "a", "shop-7", "0x"] {
            assert!(valid_tenant_id(ok), "{ok}");
        }
        for bad in ["", "-x", "Acme", "a:b", "a b", "a_b", &"x".repeat(64)] {
            assert!(!valid_tenant_id(bad), "{bad}");
        }
    }
}
