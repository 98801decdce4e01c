//! Optional multi-tenancy (`TENANTS=on`): tenants, their API keys (stored as
//! SHA-256 digests) and the lookup of a request's `X-API-Key`.
//!
//! Keys are resolved from memory: each process holds the digests of every
//! valid key (one row per key an operator made, so the set is bounded by
//! the operator, never by clients). The set is reloaded from Postgres when
//! it is older than `REFRESH` and at once after a `create` or `revoke` in
//! the same process. So a request never costs a Postgres query: a
//! malformed key is refused by its shape, an unknown well-formed one by the
//! set, and a flood of either cannot push a valid key out. A key revoked by
//! another process stops working within `REFRESH`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// Longest a process uses its set of valid keys before reloading it: the
/// most a key revoked elsewhere keeps working (and an open `/live` stream
/// with it keeps running).
pub const REFRESH: Duration = Duration::from_secs(5);
/// Every key starts with this, so leaked keys are easy to grep for.
pub const KEY_PREFIX: &str = "adt_";
/// Hex digits after the prefix (32 random bytes).
const KEY_HEX_LEN: usize = 64;

/// Bumped by every `create` and `revoke` in this process, so resolvers
/// here reload at once instead of after `REFRESH`.
static KEYS_CHANGED: AtomicU64 = AtomicU64::new(0);

/// Whether `key` has the shape of a key `create` makes: `adt_` and 64
/// lowercase hex digits. Anything else cannot be valid and is refused
/// without a lookup.
pub fn well_formed_key(key: &str) -> bool {
    key.len() == KEY_PREFIX.len() + KEY_HEX_LEN
        && key.starts_with(KEY_PREFIX)
        && key[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

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
    KEYS_CHANGED.fetch_add(1, Ordering::Relaxed);
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
/// only the keys starting with it (any prefix, up to the whole key).
/// Returns how many keys were revoked.
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
    // Only a short prefix of each key is stored: a given prefix up to that
    // length matches the stored ones it starts; a longer one matches the
    // stored prefix it starts with; a whole key matches its digest alone.
    let whole = key_prefix.filter(|k| well_formed_key(k)).map(digest);
    let revoked = sqlx::query(
        "UPDATE api_keys SET revoked_at = now()
         WHERE tenant_id = $1 AND revoked_at IS NULL
           AND CASE WHEN $3::bytea IS NOT NULL THEN key_hash = $3
                    WHEN $2::text IS NULL THEN true
                    WHEN length($2) <= length(prefix) THEN starts_with(prefix, $2)
                    ELSE starts_with($2, prefix) END",
    )
    .bind(id)
    .bind(key_prefix)
    .bind(whole.as_ref().map(|d| &d[..]))
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
    KEYS_CHANGED.fetch_add(1, Ordering::Relaxed);
    Ok(revoked)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The valid keys' digests and their tenants, as loaded at `at`.
struct Snapshot {
    tenants: HashMap<[u8; 32], String>,
    at: Instant,
    /// `KEYS_CHANGED` when the load started.
    generation: u64,
}

/// Resolves API keys to tenants from the in-memory set of valid keys.
pub struct KeyResolver {
    pool: PgPool,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    /// One reload at a time; the others keep using the current set.
    reloading: tokio::sync::Mutex<()>,
}

impl KeyResolver {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            snapshot: RwLock::new(None),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The tenant of `key`, or `None` when the key is malformed, unknown or
    /// revoked. Errs only when no set of keys could ever be loaded.
    pub async fn tenant_of(&self, key: &str) -> anyhow::Result<Option<String>> {
        if !well_formed_key(key) {
            return Ok(None);
        }
        let snapshot = self.current().await?;
        Ok(snapshot.tenants.get(&digest(key)).cloned())
    }

    fn cached(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.read().ok().and_then(|s| s.clone())
    }

    fn fresh(s: &Snapshot) -> bool {
        s.at.elapsed() < REFRESH && s.generation == KEYS_CHANGED.load(Ordering::Relaxed)
    }

    /// The set of keys, reloaded first when stale. While one caller reloads
    /// the others answer from the stale set; a failed reload keeps it (and
    /// is retried by the next caller), so a Postgres outage does not stop
    /// ingest with keys already known.
    async fn current(&self) -> anyhow::Result<Arc<Snapshot>> {
        let stale = match self.cached() {
            Some(s) if Self::fresh(&s) => return Ok(s),
            stale => stale,
        };
        let guard = match (&stale, self.reloading.try_lock()) {
            (_, Ok(guard)) => guard,
            (Some(s), Err(_)) => return Ok(s.clone()),
            // Nothing loaded yet: wait for the load under way.
            (None, Err(_)) => self.reloading.lock().await,
        };
        if let Some(s) = self.cached().filter(|s| Self::fresh(s)) {
            return Ok(s);
        }
        let loaded = self.load().await;
        drop(guard);
        match (loaded, stale) {
            (Ok(s), _) => Ok(s),
            (Err(e), Some(stale)) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "reloading the API keys failed; using the previous set"
                );
                Ok(stale)
            }
            (Err(e), None) => Err(e),
        }
    }

    async fn load(&self) -> anyhow::Result<Arc<Snapshot>> {
        let generation = KEYS_CHANGED.load(Ordering::Relaxed);
        let rows: Vec<(Vec<u8>, String)> = sqlx::query_as(
            "SELECT k.key_hash, k.tenant_id FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE k.revoked_at IS NULL AND t.revoked_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await
        .context("loading the valid API keys")?;
        let tenants = rows
            .into_iter()
            .filter_map(|(hash, tenant)| Some((<[u8; 32]>::try_from(hash).ok()?, tenant)))
            .collect();
        let snapshot = Arc::new(Snapshot {
            tenants,
            at: Instant::now(),
            generation,
        });
        if let Ok(mut slot) = self.snapshot.write() {
            *slot = Some(snapshot.clone());
        }
        Ok(snapshot)
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

    #[test]
    fn only_keys_of_the_made_shape_are_well_formed() {
        let good = format!("adt_{}", "0123456789abcdef".repeat(4));
        assert!(well_formed_key(&good));
        for bad in [
            String::new(),
            "adt_".into(),
            good.replace("adt_", "adx_"),
            good.to_uppercase(),
            format!("{good}0"),
            good[..good.len() - 1].to_owned(),
            good.replacen('0', "g", 1),
            good.replacen('0', "é", 1),
        ] {
            assert!(!well_formed_key(&bad), "{bad}");
        }
    }
}
