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
//! - what is learned is relied on only while Postgres still holds the
//!   events it came from (`EVENT_RETENTION` is at least a day), so a key
//!   rebuilt from Postgres (by `reconcile`, or an all-time key made again
//!   when missing) holds it too: a minute key's clicks are at most an
//!   hour old, an hour key is relied on until 12 hours after its hour, and
//!   the all-time key learns only from clicks of the last hour, for an
//!   hour ([`super::Ops`]'s `add_unique_clicks`);
//! - a key is relied on only until [`MARGIN_SECS`] before it expires (or
//!   before the end of that span), and only IPv4 text is left out or
//!   learned: IPv6 text written here and by Postgres's `host()` can
//!   differ;
//! - a paused application (`reconcile` rebuilding) teaches nothing;
//! - a Redis that lost its data (a restart without persistence, a flush, a
//!   failover that lost writes): the worker forgets everything on any Redis
//!   error and when the epoch changes, and updates built before that teach
//!   nothing; a Redis that came back empty is rebuilt from Postgres in any
//!   case (see [`super::epoch`]);
//! - it relies on the server's HyperLogLog being Redis's own (the SPEC's
//!   Redis 7), which the tests check against a real server.
//!
//! Bounded: at most [`MAX_KEYS`] keys of 16 KiB each (the least recently
//! used goes first); a key is remembered only once one application sent it
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
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Known>,
    /// Bumped by every [`Registers::forget`]: updates built before it teach
    /// nothing (their application may have gone to the Redis that lost its
    /// data).
    generation: u64,
    /// A clock of uses, for evicting the key used least recently.
    tick: u64,
}

struct Known {
    ranks: Box<[u8]>,
    /// Unix seconds after which the key is not relied on.
    expires: i64,
    used: u64,
}

impl std::fmt::Debug for Registers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registers")
            .field("keys", &self.len())
            .finish()
    }
}

/// Whether `member` may be left out or learned: only IPv4 text. IPv6 text
/// written here and by Postgres's `host()` (the rebuilds' source) differ
/// for some addresses (`::102:304` against `::1.2.3.4`), so a key rebuilt
/// from Postgres may not hold the member this process hashed.
fn comparable(member: &str) -> bool {
    !member.contains(':')
}

impl Registers {
    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.state.lock().map_or(0, |s| s.keys.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every key: Redis may have lost what it held.
    pub fn forget(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.keys.clear();
            s.generation += 1;
        }
    }

    /// The generation that [`Self::learn`] must be given by updates built
    /// now.
    pub fn generation(&self) -> u64 {
        self.state.lock().map_or(u64::MAX, |s| s.generation)
    }

    /// The members of `members` that can change at least one of `keys`,
    /// as of `now` (Unix seconds). With no key, a key not remembered, or
    /// one about to expire, every member is needed.
    pub fn needed<'m>(&self, keys: &[&str], members: &[&'m str], now: i64) -> Vec<&'m str> {
        let Ok(mut guard) = self.state.lock() else {
            return members.to_vec();
        };
        let s = &mut *guard;
        if keys.is_empty() {
            return members.to_vec();
        }
        s.tick += 1;
        for key in keys {
            match s.keys.get_mut(*key) {
                Some(k) if k.expires - MARGIN_SECS > now => k.used = s.tick,
                _ => return members.to_vec(),
            }
        }
        let held: Vec<&[u8]> = keys
            .iter()
            .filter_map(|key| s.keys.get(*key))
            .map(|k| &*k.ranks)
            .collect();
        members
            .iter()
            .filter(|m| {
                if !comparable(m) {
                    return true;
                }
                let (index, rank) = member(m.as_bytes());
                held.iter().any(|ranks| rank > ranks[index])
            })
            .copied()
            .collect()
    }

    /// `key` holds at least the ranks of `members` until `expires` (Unix
    /// seconds): an application that sent them was confirmed. Updates
    /// built before a [`Self::forget`] (an older `generation`) teach
    /// nothing.
    pub fn learn<'m>(
        &self,
        key: &str,
        expires: i64,
        now: i64,
        generation: u64,
        members: impl ExactSizeIterator<Item = &'m str>,
    ) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if generation != s.generation || expires - MARGIN_SECS <= now {
            return;
        }
        s.tick += 1;
        let tick = s.tick;
        if !s.keys.contains_key(key) {
            if members.len() < MIN_LEARN {
                return;
            }
            s.keys.retain(|_, k| k.expires - MARGIN_SECS > now);
            if s.keys.len() >= MAX_KEYS {
                let oldest = s
                    .keys
                    .iter()
                    .min_by_key(|(_, k)| k.used)
                    .map(|(name, _)| name.clone());
                if let Some(name) = oldest {
                    s.keys.remove(&name);
                }
            }
            s.keys.insert(
                key.to_owned(),
                Known {
                    ranks: vec![0; REGISTERS].into_boxed_slice(),
                    expires,
                    used: tick,
                },
            );
        }
        let Some(k) = s.keys.get_mut(key) else {
            return;
        };
        // A key is relied on no longer than its first lifetime: the
        // ranks must come from events that Postgres still holds when a
        // rebuild replaces the key.
        k.expires = k.expires.min(expires);
        k.used = tick;
        for m in members.filter(|m| comparable(m)) {
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

    fn learn(r: &Registers, key: &str, expires: i64, members: &[String]) {
        let generation = r.generation();
        r.learn(
            key,
            expires,
            0,
            generation,
            members.iter().map(String::as_str),
        );
    }

    fn refs(members: &[String]) -> Vec<&str> {
        members.iter().map(String::as_str).collect()
    }

    #[test]
    fn a_member_that_cannot_raise_a_register_is_not_needed() {
        let r = Registers::default();
        let first = ips(0, 20_000);
        learn(&r, "k", 10_000, &first);
        assert!(r.needed(&["k"], &refs(&first), 0).is_empty());
        // New members: only those whose rank beats their register's.
        let next = ips(20_000, 5_000);
        let next = refs(&next);
        let needed = r.needed(&["k"], &next, 0);
        assert!(
            !needed.is_empty() && needed.len() < next.len() / 2,
            "{}",
            needed.len()
        );
        let mut ranks = vec![0u8; REGISTERS];
        for m in &first {
            let (index, rank) = member(m.as_bytes());
            ranks[index] = ranks[index].max(rank);
        }
        for m in &next {
            let (index, rank) = member(m.as_bytes());
            assert_eq!(needed.contains(m), rank > ranks[index], "{m}");
        }
    }

    #[test]
    fn every_key_of_a_group_must_be_known_and_alive() {
        let r = Registers::default();
        let known = ips(0, 1_000);
        learn(&r, "k", 10_000, &known);
        let all = refs(&known);
        assert!(r.needed(&["k"], &all, 0).is_empty());
        // No key, or a key not known: every member may change something.
        assert_eq!(r.needed(&[], &all, 0).len(), all.len());
        assert_eq!(r.needed(&["k", "other"], &all, 0).len(), all.len());
        // Close to its expiry the key counts as unknown.
        assert_eq!(
            r.needed(&["k"], &all, 10_000 - MARGIN_SECS).len(),
            all.len()
        );
        // A key that would expire within the margin is not learned.
        r.learn("late", 30, 0, r.generation(), all.iter().copied());
        assert_eq!(r.len(), 1);
        r.forget();
        assert_eq!(r.needed(&["k"], &all, 0).len(), all.len());
    }

    #[test]
    fn updates_built_before_a_forget_teach_nothing() {
        let r = Registers::default();
        let members = ips(0, 1_000);
        let before = r.generation();
        r.forget();
        r.learn("k", 10_000, 0, before, members.iter().map(String::as_str));
        assert!(r.is_empty());
        learn(&r, "k", 10_000, &members);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn ipv6_members_are_always_sent_and_never_learned() {
        let r = Registers::default();
        let mut members = ips(0, 1_000);
        members.extend((0..1_000).map(|i| format!("2001:db8::{i:x}")));
        learn(&r, "k", 10_000, &members);
        let needed = r.needed(&["k"], &refs(&members), 0);
        assert_eq!(needed.len(), 1_000);
        assert!(needed.iter().all(|m| m.contains(':')));
    }

    #[test]
    fn few_members_teach_nothing_and_the_least_used_key_goes_first() {
        let r = Registers::default();
        learn(&r, "rare", 10_000, &ips(0, MIN_LEARN as u32 - 1));
        assert!(r.is_empty());
        let many = ips(0, MIN_LEARN as u32);
        for i in 0..MAX_KEYS {
            learn(&r, &format!("k{i}"), 10_000, &many);
        }
        // k0 was learned first but used since; k1 is now the least used.
        r.needed(&["k0"], &refs(&many), 0);
        learn(&r, "new", 10_000, &many);
        assert_eq!(r.len(), MAX_KEYS);
        let s = r.state.lock().unwrap();
        assert!(s.keys.contains_key("k0") && s.keys.contains_key("new"));
        assert!(!s.keys.contains_key("k1"));
    }
}
