//! Every Redis key and hash field name adtrack uses, in one place. The
//! values are part of the operator's interface (the README's `redis-cli`
//! lines read them): rename a method here freely, never the text it returns.

use std::fmt::Display;

/// Every Redis key adtrack uses, derived from `REDIS_PREFIX`.
///
/// All keys carry the hash tag `{P}`, so the keys of one prefix share one
/// Redis Cluster slot and every Lua script may touch any of them. With
/// `QUEUE_SHARDS` above 1, shard `i > 0` keeps its queue, processing lists,
/// heartbeats, worker set, retry set and dead letters under `{P.i}` (a slot
/// of its own); counters and totals stay under `{P}`, except that in cluster
/// mode an ad's counters move to its counter slot `{P.c<s>}`
/// ([`Keys::with_counter_slots`]).
#[derive(Debug, Clone)]
pub struct Keys {
    /// Hash tag of the queue keys: `{P}`, or `{P.i}` for shard `i > 0`.
    tag: String,
    /// `{P}`: hash tag of the counters and everything shared.
    home: String,
    /// `P`.
    prefix: String,
    /// Counter slots an ad's counters are spread over (`0`: none, every
    /// counter under `{P}`, the single-node layout). See
    /// [`Keys::with_counter_slots`].
    counter_slots: u16,
}

/// Counter slots in cluster mode: ads hash to `{P.c0}` … `{P.c15}`.
pub const CLUSTER_COUNTER_SLOTS: u16 = 16;

/// The hash tag of `key` with its braces (`{P.c3}`), or `""` when it has
/// none.
pub fn hash_tag(key: &str) -> &str {
    key.find('{')
        .and_then(|open| {
            key[open..]
                .find('}')
                .map(|close| &key[open..open + close + 1])
        })
        .unwrap_or("")
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self::shard(prefix, 0)
    }

    /// The keys of queue shard `index` (shard 0 is the SPEC's layout).
    pub fn shard(prefix: &str, index: usize) -> Self {
        let home = format!("{{{prefix}}}");
        let tag = if index == 0 {
            home.clone()
        } else {
            format!("{{{prefix}.{index}}}")
        };
        Self {
            tag,
            home,
            prefix: prefix.to_owned(),
            counter_slots: 0,
        }
    }

    /// These keys with an ad's counters (its windows, all-time figures and
    /// their skip lists) under `{P.c<s>}`, `s` = CRC16 of the adId modulo
    /// `slots`, so counter writes for many ads reach every primary of a
    /// cluster while one ad's keys share a slot. The campaign ranking, the
    /// totals, the epoch and the pause flag stay under `{P}`. `0` keeps
    /// every counter under `{P}`.
    pub fn with_counter_slots(mut self, slots: u16) -> Self {
        self.counter_slots = slots;
        self
    }

    /// `P`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn counter_slots(&self) -> u16 {
        self.counter_slots
    }

    /// The hash tag of `ad`'s counters: `{P}`, or `{P.c<s>}` when spread.
    pub fn counter_tag(&self, ad: &str) -> String {
        counter_tag(&self.prefix, self.counter_slots, ad)
    }

    /// Every hash tag counters live under: `{P}` first.
    pub fn counter_tags(&self) -> Vec<String> {
        std::iter::once(self.home.clone())
            .chain((0..self.counter_slots).map(|s| format!("{{{}.c{s}}}", self.prefix)))
            .collect()
    }

    /// The applied-marker of `batch` in the counter slot of `tag`: the
    /// batch's update of the keys under `tag` was applied.
    pub fn applied_in(&self, tag: &str, batch: &uuid::Uuid) -> String {
        format!("{tag}:applied:{batch}")
    }

    /// The pause flag of the counter slot of `tag` (reconcile sets one in
    /// every slot; `{P}:counters-paused` for `{P}`).
    pub fn paused_in(&self, tag: &str) -> String {
        format!("{tag}:counters-paused")
    }

    /// Whether this shard's queue keys share the counters' slot, so one
    /// script may touch both.
    pub fn queue_in_home_slot(&self) -> bool {
        self.tag == self.home
    }

    /// `{P}:queue-shards`: the shard count every process of the prefix
    /// must agree on.
    pub fn queue_shards(&self) -> String {
        format!("{}:queue-shards", self.home)
    }

    pub fn queue(&self) -> String {
        format!("{}:queue", self.tag)
    }

    pub fn processing(&self, worker: &str) -> String {
        format!("{}:processing:{worker}", self.tag)
    }

    pub fn processing_pattern(&self) -> String {
        format!("{}:processing:*", self.tag)
    }

    pub fn heartbeat(&self, worker: &str) -> String {
        format!("{}:worker:{worker}", self.tag)
    }

    /// Set of the worker ids that may own a processing list.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.tag)
    }

    pub fn retry(&self) -> String {
        format!("{}:retry", self.tag)
    }

    pub fn dlq(&self) -> String {
        format!("{}:dlq", self.tag)
    }

    /// Root of the real-time counters (see `counters`).
    pub fn counters_root(&self) -> String {
        format!("{}:c:", self.home)
    }

    /// Root `reconcile` builds new counters under before swapping them in.
    pub fn staging_root(&self, run: &str) -> String {
        format!("{}:rc:{run}:", self.home)
    }

    /// Set while `reconcile` rebuilds the counters: workers leave their
    /// counter updates in the Postgres outbox instead of applying them.
    pub fn counters_paused(&self) -> String {
        format!("{}:counters-paused", self.home)
    }

    /// Hash written once per Redis lifetime: `id` (random), `resetAt` (when
    /// adtrack found Redis without it) and `rebuiltAt` (when the counters
    /// were rebuilt from Postgres for it). See `counters::epoch`.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.home)
    }

    /// Lease of the process rebuilding the counters for a new epoch.
    pub fn epoch_rebuild(&self) -> String {
        format!("{}:epoch-rebuild", self.home)
    }

    /// Hash of cluster-wide running totals (`ingested`, `committed`).
    pub fn stats(&self) -> String {
        format!("{}:stats", self.home)
    }

    /// `{P}:ready`: written by `/ready` (10 s TTL) to find out whether
    /// Redis takes writes, not just whether it answers.
    pub fn ready_probe(&self) -> String {
        format!("{}:ready", self.home)
    }

    /// Marker that a batch's counter update was applied (see `worker`).
    pub fn applied(&self, batch: &uuid::Uuid) -> String {
        format!("{}:applied:{batch}", self.home)
    }

    /// Token bucket of one rate-limited client (see `ratelimit`).
    pub fn rate_limit_client(&self, client: &str) -> String {
        format!("{}:rl:ip:{client}", self.home)
    }

    /// The open repeated-click window of one client on one ad of one tenant
    /// (see `ivt`): holds the eventId of the click that opened it.
    pub fn ivt_click(&self, tenant: &str, ad: &str, client: &str) -> String {
        format!("{}:ivt:click:{tenant}:{ad}:{client}", self.home)
    }

    /// Token bucket of one ad of one tenant (`""` unless `TENANTS=on`).
    pub fn rate_limit_ad(&self, tenant: &str, ad: &str) -> String {
        format!("{}:rl:ad:{tenant}:{ad}", self.home)
    }
}

/// The hash tag of `ad`'s counters under prefix `prefix` with `slots`
/// counter slots.
pub fn counter_tag(prefix: &str, slots: u16, ad: &str) -> String {
    if slots == 0 {
        format!("{{{prefix}}}")
    } else {
        let s = crate::redis_client::key_slot(ad.as_bytes()) % slots;
        format!("{{{prefix}.c{s}}}")
    }
}

/// Hash field names written or read in more than one place.
pub mod fields {
    use super::Display;

    /// `{P}:stats` field: events accepted into the queue (pushed by ingest
    /// or replayed from the spool).
    pub const INGESTED: &str = "ingested";

    /// `{P}:stats` field: events committed to Postgres and counted.
    pub const COMMITTED: &str = "committed";

    /// Field of an all-time counter hash holding the events of kind code
    /// `kind` in hour `hour` since the epoch: `c:h:<hour>` for clicks.
    pub fn hour(kind: &str, hour: impl Display) -> String {
        format!("{}{hour}", hour_prefix(kind))
    }

    /// What every [`hour`] field of kind code `kind` starts with.
    pub fn hour_prefix(kind: &str) -> String {
        format!("{kind}:h:")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_spec_layout() {
        let k = Keys::new("adtrack");
        assert_eq!(k.queue(), "{adtrack}:queue");
        assert_eq!(k.processing("w1"), "{adtrack}:processing:w1");
        assert_eq!(k.heartbeat("w1"), "{adtrack}:worker:w1");
        assert_eq!(k.retry(), "{adtrack}:retry");
        assert_eq!(k.dlq(), "{adtrack}:dlq");
        assert_eq!(Keys::new("x").queue(), "{x}:queue");
    }

    #[test]
    fn shards_move_only_the_queue_keys() {
        let s = Keys::shard("adtrack", 3);
        assert_eq!(s.queue(), "{adtrack.3}:queue");
        assert_eq!(s.processing("w"), "{adtrack.3}:processing:w");
        assert_eq!(s.heartbeat("w"), "{adtrack.3}:worker:w");
        assert_eq!(s.workers(), "{adtrack.3}:workers");
        assert_eq!(s.retry(), "{adtrack.3}:retry");
        assert_eq!(s.dlq(), "{adtrack.3}:dlq");
        assert_eq!(s.stats(), "{adtrack}:stats");
        assert_eq!(s.counters_root(), "{adtrack}:c:");
        assert_eq!(s.counters_paused(), "{adtrack}:counters-paused");
        assert_eq!(s.epoch(), "{adtrack}:epoch");
        assert_eq!(s.epoch_rebuild(), "{adtrack}:epoch-rebuild");
        assert!(!s.queue_in_home_slot());
        assert!(Keys::shard("adtrack", 0).queue_in_home_slot());
        assert_eq!(Keys::shard("adtrack", 0).queue(), "{adtrack}:queue");
    }

    #[test]
    fn spread_counters_move_only_ad_tags() {
        let k = Keys::new("adtrack");
        assert_eq!(k.counter_tag("ad-1"), "{adtrack}");
        assert_eq!(k.counter_tags(), vec!["{adtrack}".to_string()]);
        assert_eq!(
            k.applied_in("{adtrack}", &uuid::Uuid::nil()),
            k.applied(&uuid::Uuid::nil())
        );
        assert_eq!(k.paused_in("{adtrack}"), k.counters_paused());
        let s = Keys::new("adtrack").with_counter_slots(16);
        let tag = s.counter_tag("ad-1");
        assert!(tag.starts_with("{adtrack.c") && tag.ends_with('}'), "{tag}");
        assert_eq!(s.counter_tags().len(), 17);
        assert!(s.counter_tags().contains(&tag));
        assert_eq!(hash_tag("{adtrack.c3}:c:ad:x"), "{adtrack.c3}");
        assert_eq!(hash_tag("plain"), "");
        assert_eq!(s.queue(), "{adtrack}:queue");
    }

    #[test]
    fn field_names_match_the_readme() {
        assert_eq!(fields::INGESTED, "ingested");
        assert_eq!(fields::COMMITTED, "committed");
        assert_eq!(fields::hour("c", 493_001), "c:h:493001");
        assert_eq!(fields::hour_prefix("c"), "c:h:");
    }
}
