//! What the unique-click HyperLogLogs in Redis are known to hold, so that a
//! worker sends only the IPs that can still change them.
//!
//! A HyperLogLog keeps, for each of its 16,384 registers, the largest rank
//! of the members hashed to it; adding a member whose rank is not above its
//! register's changes nothing. Redis's hash is fixed (MurmurHash64A with
//! seed `0xadc83b19`; `hyperloglog.c`), so [`member`] finds each IP's
//! register and rank as `PFADD` will. Once an application of a batch is
//! confirmed (`ok` or `seen`), every key it wrote holds at least the ranks
//! of the IPs it sent: [`Registers::learn`] remembers them, and a later
//! batch leaves out an IP whose rank is not above what every key of its
//! group is known to hold ([`Registers::needed`]). Under a steady stream of
//! clicks on one ad most IPs change nothing: after `n` members a key's
//! registers hold about `n / 16,384` each, and a new member raises its
//! register with a probability of about `16,384 / n`.
//!
//! Why "known to hold" stays true:
//! - a register never goes down while its key lives;
//! - a minute or hour key lives until a fixed expiry, and is forgotten here
//!   [`MARGIN_SECS`] before it;
//! - an all-time key (`ua:`) is created only by a rebuild from Postgres,
//!   which holds every event whose counters were applied, so a key that
//!   expired and came back holds at least as much;
//! - `reconcile` swaps in copies rebuilt from Postgres while applications
//!   are paused, and a paused application teaches nothing;
//! - a Redis that lost its data (a restart without persistence, a flush, a
//!   failover that lost writes): the worker forgets everything on any Redis
//!   error and when the epoch changes, and such a Redis is rebuilt from
//!   Postgres in any case (see [`super::epoch`]).
//!
//! Bounded: at most [`MAX_KEYS`] keys of 16 KiB each, the ones that expire
//! last; a key is remembered only once one application sent it
//! [`MIN_LEARN`] IPs, so rare ads cost nothing here.

use std::collections::HashMap;
use std::sync::Mutex;

/// Registers of a Redis HyperLogLog (`HLL_P` = 14).
pub const REGISTERS: usize = 1 << 14;
/// Keys remembered at most: 1 MiB of ranks.
pub const MAX_KEYS: usize = 64;
/// IPs one application must send to a key before it is remembered.
pub const MIN_LEARN: usize = 64;
/// A key is forgotten this long before its expiry, for clock skew between
/// this process and Redis.
pub const MARGIN_SECS: i64 = 60;

/// The register and the rank that `PFADD` gives `member` (Redis's
/// `hllPatLen`).
pub fn member(member: &[u8]) -> (usize, u8) {
    let hash = murmur_hash_64a(member, 0xadc8_3b19);
    let index = (hash as usize) & (REGISTERS - 1);
    // The rank counts the trailing zeros of the hash's other 50 bits, plus
    // one; bit 50 ends the count at 51.
    let rest = (hash >> 14) | (1 << 50);
    (index, rest.trailing_zeros() as u8 + 1)
}

/// MurmurHash64A as Redis's `hyperloglog.c` has it (little-endian words).
fn murmur_hash_64a(key: &[u8], seed: u64) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    let mut h = seed ^ (key.len() as u64).wrapping_mul(M);
    let mut words = key.chunks_exact(8);
    for w in &mut words {
        let mut k = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate() {
            h ^= u64::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// The ranks one process knows some HyperLogLog keys to hold at least.
#[derive(Default)]
pub struct Registers {
    keys: Mutex<HashMap<String, Known>>,
}

struct Known {
    ranks: Box<[u8]>,
    /// Unix seconds after which the key may be gone.
    expires: i64,
}

impl std::fmt::Debug for Registers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registers")
            .field("keys", &self.len())
            .finish()
    }
}

impl Registers {
    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.keys.lock().map_or(0, |k| k.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every key: Redis may have lost what it held.
    pub fn forget(&self) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.clear();
        }
    }

    /// The members of `members` that can change at least one of `keys`,
    /// as of `now` (Unix seconds). A key not remembered, or about to
    /// expire, can be changed by any member.
    pub fn needed<'m>(&self, keys: &[&str], members: &[&'m str], now: i64) -> Vec<&'m str> {
        let Ok(known) = self.keys.lock() else {
            return members.to_vec();
        };
        let mut held = Vec::with_capacity(keys.len());
        for key in keys {
            match known.get(*key) {
                Some(k) if k.expires - MARGIN_SECS > now => held.push(&k.ranks),
                _ => return members.to_vec(),
            }
        }
        members
            .iter()
            .filter(|m| {
                let (index, rank) = member(m.as_bytes());
                held.iter().any(|ranks| rank > ranks[index])
            })
            .copied()
            .collect()
    }

    /// `key` (alive until `expires`, Unix seconds) now holds at least the
    /// ranks of `members`: an application that sent them was confirmed.
    pub fn learn<'m>(
        &self,
        key: &str,
        expires: i64,
        members: impl ExactSizeIterator<Item = &'m str>,
    ) {
        let Ok(mut known) = self.keys.lock() else {
            return;
        };
        if !known.contains_key(key) {
            if members.len() < MIN_LEARN {
                return;
            }
            if known.len() >= MAX_KEYS {
                // Keep the keys that live longest; a new key that would
                // expire first is not remembered.
                let first = known
                    .iter()
                    .min_by_key(|(_, k)| k.expires)
                    .map(|(name, k)| (name.clone(), k.expires));
                match first {
                    Some((name, at)) if at < expires => {
                        known.remove(&name);
                    }
                    _ => return,
                }
            }
            known.insert(
                key.to_owned(),
                Known {
                    ranks: vec![0; REGISTERS].into_boxed_slice(),
                    expires,
                },
            );
        }
        let Some(k) = known.get_mut(key) else {
            return;
        };
        k.expires = k.expires.max(expires);
        for m in members {
            let (index, rank) = member(m.as_bytes());
            k.ranks[index] = k.ranks[index].max(rank);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(from: u32, n: u32) -> Vec<String> {
        (from..from + n)
            .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string())
            .collect()
    }

    #[test]
    fn a_member_that_cannot_raise_a_register_is_not_needed() {
        let r = Registers::default();
        let first = ips(0, 20_000);
        r.learn("k", 10_000, first.iter().map(String::as_str));
        let again: Vec<&str> = first.iter().map(String::as_str).collect();
        assert!(r.needed(&["k"], &again, 0).is_empty());
        // New members: only those whose rank beats their register's.
        let next = ips(20_000, 5_000);
        let next: Vec<&str> = next.iter().map(String::as_str).collect();
        let needed = r.needed(&["k"], &next, 0);
        assert!(
            !needed.is_empty() && needed.len() < next.len() / 2,
            "{}",
            needed.len()
        );
        for m in &next {
            let (index, rank) = member(m.as_bytes());
            let beats = {
                let keys = r.keys.lock().unwrap();
                rank > keys["k"].ranks[index]
            };
            assert_eq!(needed.contains(m), beats, "{m}");
        }
    }

    #[test]
    fn every_key_of_a_group_must_be_known_and_alive() {
        let r = Registers::default();
        let known = ips(0, 1_000);
        r.learn("k", 10_000, known.iter().map(String::as_str));
        let all: Vec<&str> = known.iter().map(String::as_str).collect();
        assert!(r.needed(&["k"], &all, 0).is_empty());
        // A key not known: every member may change it.
        assert_eq!(r.needed(&["k", "other"], &all, 0).len(), all.len());
        // Close to its expiry the key counts as unknown.
        assert_eq!(
            r.needed(&["k"], &all, 10_000 - MARGIN_SECS).len(),
            all.len()
        );
        r.forget();
        assert_eq!(r.needed(&["k"], &all, 0).len(), all.len());
    }

    #[test]
    fn few_members_teach_nothing_and_the_keys_are_bounded() {
        let r = Registers::default();
        let few = ips(0, MIN_LEARN as u32 - 1);
        r.learn("rare", 10_000, few.iter().map(String::as_str));
        assert!(r.is_empty());
        let many = ips(0, MIN_LEARN as u32);
        for i in 0..MAX_KEYS as i64 + 10 {
            r.learn(&format!("k{i}"), 1_000 + i, many.iter().map(String::as_str));
        }
        assert_eq!(r.len(), MAX_KEYS);
        // The keys that expire first went.
        let keys = r.keys.lock().unwrap();
        assert!(!keys.contains_key("k0") && keys.contains_key(&format!("k{}", MAX_KEYS + 9)));
    }
}
