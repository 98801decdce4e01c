//! Signed views. A view token names one served VAST document: a random view
//! id, the ad, the tenant and when it was issued, followed by an HMAC-SHA256
//! (truncated to 128 bits) under `VAST_SIGNING_KEY` (or, without it, the
//! key stored once in Postgres), all base64url. It is signed, not
//! encrypted: anyone can decode the view id, ad and tenant in it. It
//! carries no API key; only a process holding the key
//! can make one, so a pixel or click URL cannot name a view adtrack never
//! served, nor another ad or tenant than its document's.
//!
//! Layout (before base64url): version `1`, view id (16 bytes), issued at
//! (u32, minutes since the Unix epoch, big-endian), ad id length (1 byte)
//! and bytes, tenant length (1 byte) and bytes, then the 16-byte MAC.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;

use crate::domain::Ident;

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
/// The longest token: two ids of at most 64 bytes and the fixed parts.
const MAX_TOKEN_BYTES: usize = 1 + 16 + 4 + 1 + 64 + 1 + 64 + MAC_LEN;
/// How long a view takes pixels and clicks after its document was served.
/// A player fires them within the ad's few seconds or minutes; a day covers
/// a paused tab, and bounds how long a leaked URL counts.
pub const VIEW_LIFETIME: chrono::Duration = chrono::Duration::hours(24);
/// How far in the future an issue time may be (clocks of several processes).
const CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// One verified view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub id: Uuid,
    pub ad: Ident,
    /// `""` unless `TENANTS=on`.
    pub tenant: String,
    pub issued: DateTime<Utc>,
}

/// Why a token names no view adtrack will count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("the view token is malformed")]
    Malformed,
    #[error("the view token's signature does not match")]
    Forged,
    #[error("the view has expired")]
    Expired,
}

impl ViewError {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Forged => "forged",
            Self::Expired => "expired",
        }
    }
}

/// Mints view tokens under one key and verifies them under it or a
/// previous one.
#[derive(Clone)]
pub struct ViewSigner {
    /// The signing key first, then keys accepted for verification only.
    keys: Vec<Vec<u8>>,
}

impl ViewSigner {
    /// A signer for `key` alone.
    pub fn new(key: &[u8]) -> Self {
        Self::with_previous(key, &[])
    }

    /// Signs with `key`; verifies with `key` or any of `previous` (a key
    /// being rotated out, the stored key when `VAST_SIGNING_KEY` overrides
    /// it), so views served before a rotation keep counting.
    pub fn with_previous(key: &[u8], previous: &[&[u8]]) -> Self {
        let mut keys = vec![key.to_vec()];
        for k in previous {
            if !keys.iter().any(|known| known == k) {
                keys.push(k.to_vec());
            }
        }
        Self { keys }
    }

    /// 32 random bytes: the key stored in Postgres when none is.
    pub fn random_key() -> Vec<u8> {
        let mut k = vec![0u8; 32];
        rand::rng().fill_bytes(&mut k);
        k
    }

    fn mac(key: &[u8], payload: &[u8]) -> [u8; MAC_LEN] {
        // HMAC takes a key of any length, so this cannot fail.
        let mut out = [0u8; MAC_LEN];
        if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) {
            mac.update(payload);
            out.copy_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
        }
        out
    }

    /// A new view of `ad` for `tenant`, issued at `now`, and its token.
    pub fn mint(&self, ad: &Ident, tenant: &str, now: DateTime<Utc>) -> (View, String) {
        let view = View {
            id: Uuid::new_v4(),
            ad: ad.clone(),
            tenant: tenant.to_owned(),
            issued: now,
        };
        let minutes = u32::try_from(now.timestamp().div_euclid(60)).unwrap_or(u32::MAX);
        let mut bytes = Vec::with_capacity(MAX_TOKEN_BYTES);
        bytes.push(VERSION);
        bytes.extend_from_slice(view.id.as_bytes());
        bytes.extend_from_slice(&minutes.to_be_bytes());
        for part in [ad.as_str(), tenant] {
            // Ids are at most 64 bytes (Ident, tenant ids), so the length fits.
            bytes.push(u8::try_from(part.len()).unwrap_or(u8::MAX));
            bytes.extend_from_slice(part.as_bytes());
        }
        let mac = Self::mac(&self.keys[0], &bytes);
        bytes.extend_from_slice(&mac);
        (view, URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The view `token` names, when adtrack signed it and it is still live.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<View, ViewError> {
        if token.len() > MAX_TOKEN_BYTES * 4 / 3 + 4 {
            return Err(ViewError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| ViewError::Malformed)?;
        if bytes.len() < 1 + 16 + 4 + 1 + 1 + MAC_LEN || bytes[0] != VERSION {
            return Err(ViewError::Malformed);
        }
        let (payload, mac) = bytes.split_at(bytes.len() - MAC_LEN);
        let signed = self.keys.iter().any(|key| {
            let expected = Self::mac(key, payload);
            bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], mac))
        });
        if !signed {
            return Err(ViewError::Forged);
        }
        // Signed by adtrack: the layout below is the one `mint` wrote.
        let id = Uuid::from_slice(&payload[1..17]).map_err(|_| ViewError::Malformed)?;
        let minutes = u32::from_be_bytes([payload[17], payload[18], payload[19], payload[20]]);
        let mut rest = &payload[21..];
        let mut parts = Vec::with_capacity(2);
        for _ in 0..2 {
            let (&len, tail) = rest.split_first().ok_or(ViewError::Malformed)?;
            let len = usize::from(len);
            if tail.len() < len {
                return Err(ViewError::Malformed);
            }
            let (part, tail) = tail.split_at(len);
            parts.push(std::str::from_utf8(part).map_err(|_| ViewError::Malformed)?);
            rest = tail;
        }
        let ad = Ident::parse(parts[0]).map_err(|_| ViewError::Malformed)?;
        let issued =
            DateTime::from_timestamp(i64::from(minutes) * 60, 0).ok_or(ViewError::Malformed)?;
        if issued > now + CLOCK_SKEW || now - issued > VIEW_LIFETIME {
            return Err(ViewError::Expired);
        }
        Ok(View {
            id,
            ad,
            tenant: parts[1].to_owned(),
            issued,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ad() -> Ident {
        Ident::parse("11111111-1111-1111-1111-111111111111").unwrap()
    }

    #[test]
    fn a_minted_token_verifies_to_its_view() {
        let s = ViewSigner::new(b"a key of thirty-two characters..");
        let now = Utc::now();
        let (view, token) = s.mint(&ad(), "acme", now);
        let back = s.verify(&token, now).unwrap();
        assert_eq!(back.id, view.id);
        assert_eq!(back.ad, view.ad);
        assert_eq!(back.tenant, "acme");
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(!token.contains("adt_"));
    }

    #[test]
    fn other_keys_edits_and_old_views_are_refused() {
        let s = ViewSigner::new(b"a key of thirty-two characters..");
        let now = Utc::now();
        let (_, token) = s.mint(&ad(), "", now);
        let other = ViewSigner::new(b"another key of thirty-two chars.");
        assert_eq!(other.verify(&token, now), Err(ViewError::Forged));
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[5] ^= 1;
        assert_eq!(
            s.verify(&URL_SAFE_NO_PAD.encode(&bytes), now),
            Err(ViewError::Forged)
        );
        assert_eq!(
            s.verify(&token, now + VIEW_LIFETIME + chrono::Duration::minutes(2)),
            Err(ViewError::Expired)
        );
        // A key rotated out still verifies what it signed; it never signs.
        let rotated = ViewSigner::with_previous(
            b"another key of thirty-two chars.",
            &[b"a key of thirty-two characters.."],
        );
        assert_eq!(
            rotated.verify(&token, now).map(|v| v.id).ok(),
            s.verify(&token, now).map(|v| v.id).ok()
        );
        let (_, minted) = rotated.mint(&ad(), "", now);
        assert_eq!(s.verify(&minted, now), Err(ViewError::Forged));
        for junk in ["", "x", "!!!", &"A".repeat(10_000)] {
            assert_eq!(s.verify(junk, now), Err(ViewError::Malformed), "{junk}");
        }
    }
}
