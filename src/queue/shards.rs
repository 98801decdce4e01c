//! `QUEUE_SHARDS`: several queues under one prefix, each in a Redis Cluster
//! slot of its own, read and managed as one.
//!
//! Ingest spreads pushes over the shards, worker `j` of every process takes
//! from shard `j % shards`, and the operator's views (queue overview, dead
//! letters) sum or concatenate the shards. Counters stay under `{P}` (in
//! cluster mode an ad's under its counter slot `{P.c<s>}`, see `keys`).

use anyhow::{bail, Context};

use super::{Keys, Queue, QueueOverview};
use crate::redis_client::RedisConn;

/// Most shards one prefix may have.
pub const MAX_SHARDS: usize = 64;

/// Every queue shard of one prefix.
#[derive(Clone)]
pub struct Queues {
    shards: Vec<Queue>,
}

impl Queues {
    pub fn new(prefix: &str, shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|i| Queue::new(Keys::shard(prefix, i)))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    pub fn all(&self) -> &[Queue] {
        &self.shards
    }

    /// Shard 0: the SPEC's `{P}` keys.
    pub fn first(&self) -> &Queue {
        &self.shards[0]
    }

    /// The shard worker number `index` of a process takes from.
    pub fn for_worker(&self, index: usize) -> &Queue {
        &self.shards[index % self.shards.len()]
    }

    /// Records this prefix's shard count on first use and refuses a process
    /// configured with another one: items would be stranded in shards no
    /// worker reads.
    pub async fn check_shard_count(&self, conn: &mut RedisConn) -> anyhow::Result<()> {
        let key = self.first().keys().queue_shards();
        let (_, stored): ((), Option<usize>) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(self.len())
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&key)
            .query_async(conn)
            .await
            .map(|(stored,)| ((), stored))
            .context("reading the prefix's queue shard count")?;
        match stored {
            Some(n) if n != self.len() => bail!(
                "QUEUE_SHARDS is {} but this prefix runs with {n} (key {key}); \
                 drain every queue, then delete that key to change it",
                self.len()
            ),
            _ => Ok(()),
        }
    }

    /// Refuses a Redis user that may not run `SORT` (Redis files it under
    /// `@dangerous`, which restricted users often lack): the reservation
    /// script needs it, and without it every round would fail with `NOPERM`
    /// and the workers would back off forever as on an outage. A
    /// `SORT … LIMIT 0 0` of each queue reads nothing and changes nothing.
    pub async fn check_reservation_allowed(&self, conn: &mut RedisConn) -> anyhow::Result<()> {
        for shard in &self.shards {
            let sorted: redis::RedisResult<Vec<String>> = redis::cmd("SORT")
                .arg(shard.keys().queue())
                .arg("BY")
                .arg("nosort")
                .arg("LIMIT")
                .arg(0)
                .arg(0)
                .query_async(conn)
                .await;
            match sorted {
                Ok(_) => {}
                Err(e) if e.code() == Some("NOPERM") => bail!(
                    "the Redis user may not run SORT, which the workers' reservation \
                     script needs (grant it with `ACL SETUSER <user> +sort`, or run this \
                     process with --role api): {e}"
                ),
                Err(e) => return Err(e).context("checking that the Redis user may reserve"),
            }
        }
        Ok(())
    }

    /// Queued and processing items over every shard.
    pub async fn depths(&self, conn: &mut RedisConn) -> anyhow::Result<(u64, u64)> {
        let (mut queued, mut processing) = (0, 0);
        for q in &self.shards {
            let (a, b) = q.depths(conn).await?;
            queued += a;
            processing += b;
        }
        Ok((queued, processing))
    }

    /// The overview of every shard, summed; workers of all shards listed.
    pub async fn overview(&self, conn: &mut RedisConn) -> anyhow::Result<QueueOverview> {
        let mut total = self.first().overview(conn).await?;
        for q in &self.shards[1..] {
            let o = q.overview(conn).await?;
            total.queued += o.queued;
            total.processing += o.processing;
            total.retrying += o.retrying;
            total.dead_lettered += o.dead_lettered;
            total.workers.extend(o.workers);
        }
        total.workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(total)
    }

    /// Up to `limit` dead letters, shard by shard, and the total.
    pub async fn dlq_list(
        &self,
        conn: &mut RedisConn,
        limit: usize,
    ) -> anyhow::Result<(u64, Vec<serde_json::Value>)> {
        let mut total = 0;
        let mut items = Vec::new();
        for q in &self.shards {
            let (n, mut some) = q.dlq_list(conn, limit.saturating_sub(items.len())).await?;
            total += n;
            items.append(&mut some);
        }
        Ok((total, items))
    }

    /// `limit` dead letters from position `offset` of all shards' lists
    /// taken one after another (each newest first), and the total.
    pub async fn dlq_page(
        &self,
        conn: &mut RedisConn,
        offset: u64,
        limit: u64,
    ) -> anyhow::Result<(u64, Vec<serde_json::Value>)> {
        let mut total = 0u64;
        let mut items = Vec::new();
        for q in &self.shards {
            let dlq = q.keys().dlq();
            let len: u64 = redis::cmd("LLEN")
                .arg(&dlq)
                .query_async(conn)
                .await
                .context("counting dead letters")?;
            // This shard's part of [offset, offset + limit).
            let start = offset.saturating_sub(total);
            let wanted = limit.saturating_sub(items.len() as u64);
            if start < len && wanted > 0 {
                let raw: Vec<String> = redis::cmd("LRANGE")
                    .arg(&dlq)
                    .arg(start)
                    .arg(start + wanted - 1)
                    .query_async(conn)
                    .await
                    .context("reading dead letters")?;
                items.extend(
                    raw.into_iter()
                        .map(|s| serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s))),
                );
            }
            total += len;
        }
        Ok((total, items))
    }

    pub async fn dlq_replay(&self, conn: &mut RedisConn) -> anyhow::Result<u64> {
        let mut moved = 0;
        for q in &self.shards {
            moved += q.dlq_replay(conn).await?;
        }
        Ok(moved)
    }

    pub async fn dlq_purge(&self, conn: &mut RedisConn) -> anyhow::Result<u64> {
        let mut purged = 0;
        for q in &self.shards {
            purged += q.dlq_purge(conn).await?;
        }
        Ok(purged)
    }

    /// Registers and beats the workers of a process: `workers[j]` belongs
    /// to shard `j % shards`.
    pub async fn beat(
        &self,
        conn: &mut RedisConn,
        workers: &[String],
        info: &str,
        ttl: std::time::Duration,
    ) -> anyhow::Result<()> {
        for (i, q) in self.shards.iter().enumerate() {
            let mine = self.of_shard(workers, i);
            if !mine.is_empty() {
                q.beat(conn, &mine, info, ttl).await?;
            }
        }
        Ok(())
    }

    pub async fn retire(&self, conn: &mut RedisConn, workers: &[String]) -> anyhow::Result<()> {
        for (i, q) in self.shards.iter().enumerate() {
            q.retire(conn, &self.of_shard(workers, i)).await?;
        }
        Ok(())
    }

    fn of_shard(&self, workers: &[String], shard: usize) -> Vec<String> {
        workers
            .iter()
            .enumerate()
            .filter(|(j, _)| j % self.shards.len() == shard)
            .map(|(_, w)| w.clone())
            .collect()
    }
}
