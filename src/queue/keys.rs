/// Every Redis key adtrack uses, derived from `REDIS_PREFIX`.
///
/// All keys carry the hash tag `{P}`, so the keys of one prefix share one
/// Redis Cluster slot and every Lua script may touch any of them.
#[derive(Debug, Clone)]
pub struct Keys {
    tag: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            tag: format!("{{{prefix}}}"),
        }
    }

    /// `{P}`: the hash tag itself, the root of every key.
    pub fn tag(&self) -> &str {
        &self.tag
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
        format!("{}:c:", self.tag)
    }

    /// Root `reconcile` builds new counters under before swapping them in.
    pub fn staging_root(&self, run: &str) -> String {
        format!("{}:rc:{run}:", self.tag)
    }

    /// Set while `reconcile` rebuilds the counters: workers leave their
    /// counter updates in the Postgres outbox instead of applying them.
    pub fn counters_paused(&self) -> String {
        format!("{}:counters-paused", self.tag)
    }

    /// Hash of cluster-wide running totals (`ingested`, `committed`).
    pub fn stats(&self) -> String {
        format!("{}:stats", self.tag)
    }

    /// Marker that a batch's counter update was applied (see `worker`).
    pub fn applied(&self, batch: &uuid::Uuid) -> String {
        format!("{}:applied:{batch}", self.tag)
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
}
