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
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::store;
pub use crate::store::tenants::TenantInfo;

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

/// Bytes of a VAST tag (before base64url: 22 characters).
const TAG_LEN: usize = 16;

/// The VAST tag of the key whose digest is `digest`: HMAC-SHA256 keyed by
/// the digest, truncated. Computable from the stored digest, so every
/// process knows the tags of the valid keys; it reveals nothing of the key.
fn tag_of_digest(digest: &[u8; 32]) -> [u8; TAG_LEN] {
    use hmac::{Hmac, Mac};
    let mut out = [0u8; TAG_LEN];
    // HMAC takes a key of any length, so this cannot fail.
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(digest) {
        mac.update(b"adtrack vast tag v1");
        out.copy_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
    }
    out
}

/// The publishable VAST tag of API key `key`: it goes in players' URLs
/// (`/vast/{adId}?tag=…`) where a key cannot, and lets its holder only
/// mint documents (views) of the key's tenant, never read anything. It
/// stops working when the key is revoked.
pub fn vast_tag(key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag_of_digest(&digest(key)))
}

fn decode_tag(tag: &str) -> Option<[u8; TAG_LEN]> {
    use base64::Engine;
    if tag.len() > 32 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tag)
        .ok()?;
    <[u8; TAG_LEN]>::try_from(bytes).ok()
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
    store::tenants::upsert_tenant(&mut *tx, id, name).await?;
    store::tenants::insert_key(&mut *tx, &digest(&key), id, &key[..KEY_PREFIX.len() + 8]).await?;
    tx.commit().await.context("committing the tenant")?;
    KEYS_CHANGED.fetch_add(1, Ordering::Relaxed);
    Ok(key)
}

pub async fn list(pool: &PgPool) -> anyhow::Result<Vec<TenantInfo>> {
    store::tenants::list(pool).await
}

/// Revokes every key of tenant `id` (and the tenant), or with `key_prefix`
/// only the keys starting with it (any prefix, up to the whole key).
/// Returns how many keys were revoked.
pub async fn revoke(pool: &PgPool, id: &str, key_prefix: Option<&str>) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await.context("starting the revocation")?;
    let exists = store::tenants::tenant_exists(&mut *tx, id).await?;
    if !exists {
        bail!("no tenant {id:?}");
    }
    // Only a short prefix of each key is stored: a given prefix up to that
    // length matches the stored ones it starts; a longer one matches the
    // stored prefix it starts with; a whole key matches its digest alone.
    let whole = key_prefix.filter(|k| well_formed_key(k)).map(digest);
    let revoked =
        store::tenants::revoke_keys(&mut *tx, id, key_prefix, whole.as_ref().map(|d| &d[..]))
            .await?;
    if key_prefix.is_none() {
        store::tenants::revoke_tenant(&mut *tx, id).await?;
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
    /// The VAST tags of the same keys.
    tags: HashMap<[u8; TAG_LEN], String>,
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

    /// The tenant of VAST tag `tag` (see [`vast_tag`]), or `None` when it
    /// is malformed or its key unknown or revoked.
    pub async fn tenant_of_tag(&self, tag: &str) -> anyhow::Result<Option<String>> {
        let Some(tag) = decode_tag(tag) else {
            return Ok(None);
        };
        let snapshot = self.current().await?;
        Ok(snapshot.tags.get(&tag).cloned())
    }

    /// Whether `tenant` still has a valid key (revoking a tenant revokes
    /// them all): the pixels of its views count only while it does.
    pub async fn is_active(&self, tenant: &str) -> anyhow::Result<bool> {
        let snapshot = self.current().await?;
        Ok(snapshot.tenants.values().any(|t| t == tenant))
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
        let rows = store::tenants::valid_keys(&self.pool).await?;
        let tenants: HashMap<[u8; 32], String> = rows
            .into_iter()
            .filter_map(|k| Some((<[u8; 32]>::try_from(k.key_hash).ok()?, k.tenant_id)))
            .collect();
        let tags = tenants
            .iter()
            .map(|(d, t)| (tag_of_digest(d), t.clone()))
            .collect();
        let snapshot = Arc::new(Snapshot {
            tenants,
            tags,
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
