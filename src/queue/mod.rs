//! The Redis list protocol: ingest pushes, worker reservations,
//! acknowledgements, heartbeats and the reaper.
//!
//! Invariants kept here:
//! - An item is always in exactly one place: the queue, one worker's
//!   processing list, the retry set or the dead-letter list. Every move
//!   between two of them is one `LMOVE`/`BLMOVE` or one Lua script.
//! - A worker only ever removes its own processing list, and only after what
//!   it held is committed to Postgres.
//! - A processing list whose worker's heartbeat has expired is moved back to
//!   the queue by one script that re-checks the heartbeat inside Redis.

mod keys;
mod pusher;
mod shards;

pub use keys::Keys;
pub use pusher::{LocalPusher, PushError, PushFailure, Pusher};
pub use shards::{Queues, MAX_SHARDS};

use std::time::Duration;

use anyhow::Context;
use redis::aio::ConnectionManager;
use redis::Script;

/// Moves the oldest ARGV[1] items (at most) from the queue to a processing
/// list in one step: one LRANGE, one LTRIM and a few RPUSHes instead of an
/// LMOVE per item. Returns them.
const RESERVE: &str = r"
local items = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
if #items == 0 then return items end
redis.call('LTRIM', KEYS[1], 0, -#items - 1)
for i = 1, #items, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 999, #items)))
end
return items
";

/// Returns a dead worker's processing list to the consuming end of the queue
/// and forgets the worker; does nothing if its heartbeat came back.
const REQUEUE_DEAD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'RIGHT', 'RIGHT') do n = n + 1 end
redis.call('SREM', KEYS[4], ARGV[1])
return n
";

/// What one worker does to the queue.
#[derive(Clone)]
pub struct Queue {
    keys: Keys,
    reserve: Script,
    requeue_dead: Script,
    divert: Script,
    promote_due: Script,
}

impl Queue {
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            reserve: Script::new(RESERVE),
            requeue_dead: Script::new(REQUEUE_DEAD),
            divert: Script::new(DIVERT),
            promote_due: Script::new(PROMOTE_DUE),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// What `worker` holds already (left over from an attempt that could not
    /// finish), else up to `max` new items, blocking up to `wait` for the
    /// first one. `conn` must be the worker's own connection: `BLMOVE` blocks it.
    /// `held_nothing`: the caller knows its processing list is empty (its
    /// last round acknowledged it), which saves reading it.
    pub async fn reserve(
        &self,
        conn: &mut ConnectionManager,
        worker: &str,
        max: usize,
        wait: Duration,
        held_nothing: bool,
    ) -> anyhow::Result<Vec<String>> {
        let processing = self.keys.processing(worker);
        if !held_nothing {
            let held: Vec<String> = redis::cmd("LRANGE")
                .arg(&processing)
                .arg(0)
                .arg(-1)
                .query_async(conn)
                .await
                .context("reading the processing list")?;
            if !held.is_empty() {
                return Ok(held);
            }
        }
        let mut items = self.take(conn, &processing, max).await?;
        if items.is_empty() {
            let first: Option<String> = redis::cmd("BLMOVE")
                .arg(self.keys.queue())
                .arg(&processing)
                .arg("RIGHT")
                .arg("LEFT")
                .arg(wait.as_secs_f64())
                .query_async(conn)
                .await
                .context("waiting on the queue (BLMOVE)")?;
            let Some(first) = first else {
                return Ok(items);
            };
            items.push(first);
            if max > 1 {
                items.extend(self.take(conn, &processing, max - 1).await?);
            }
        }
        Ok(items)
    }

    async fn take(
        &self,
        conn: &mut ConnectionManager,
        processing: &str,
        max: usize,
    ) -> anyhow::Result<Vec<String>> {
        self.reserve
            .key(self.keys.queue())
            .key(processing)
            .arg(max)
            .invoke_async(conn)
            .await
            .context("moving items from the queue to the processing list")
    }

    /// Registers `worker` and refreshes its heartbeat.
    pub async fn beat(
        &self,
        conn: &mut ConnectionManager,
        workers: &[String],
        info: &str,
        ttl: Duration,
    ) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        if !workers.is_empty() {
            pipe.cmd("SADD")
                .arg(self.keys.workers())
                .arg(workers)
                .ignore();
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        for w in workers {
            pipe.cmd("SET")
                .arg(self.keys.heartbeat(w))
                .arg(info)
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
        pipe.query_async::<()>(conn)
            .await
            .context("refreshing worker heartbeats")
    }

    /// Forgets workers that stopped cleanly with an empty processing list.
    pub async fn retire(
        &self,
        conn: &mut ConnectionManager,
        workers: &[String],
    ) -> anyhow::Result<()> {
        if workers.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for w in workers {
            pipe.cmd("DEL").arg(self.keys.heartbeat(w)).ignore();
        }
        // The reaper drops them from the set once their lists are empty.
        pipe.query_async::<()>(conn)
            .await
            .context("removing worker heartbeats")
    }

    /// Returns the items of every worker whose heartbeat expired to the
    /// queue. Returns how many items moved.
    pub async fn reap(&self, conn: &mut ConnectionManager) -> anyhow::Result<u64> {
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.workers())
            .query_async(conn)
            .await
            .context("listing workers")?;
        let mut moved = 0u64;
        for w in workers {
            let n: i64 = self
                .requeue_dead
                .key(self.keys.heartbeat(&w))
                .key(self.keys.processing(&w))
                .key(self.keys.queue())
                .key(self.keys.workers())
                .arg(&w)
                .invoke_async(conn)
                .await
                .with_context(|| format!("requeueing the items of worker {w}"))?;
            if n > 0 {
                tracing::warn!(worker = %w, items = n, "worker heartbeat expired; its items are back on the queue");
                moved += n as u64;
            }
        }
        Ok(moved)
    }

    /// Queue depth and the number of items held by workers.
    pub async fn depths(&self, conn: &mut ConnectionManager) -> anyhow::Result<(u64, u64)> {
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.workers())
            .query_async(conn)
            .await
            .context("listing workers")?;
        let mut pipe = redis::pipe();
        pipe.cmd("LLEN").arg(self.keys.queue());
        for w in &workers {
            pipe.cmd("LLEN").arg(self.keys.processing(w));
        }
        let lens: Vec<u64> = pipe
            .query_async(conn)
            .await
            .context("reading list lengths")?;
        let queued = lens.first().copied().unwrap_or(0);
        let processing = lens.iter().skip(1).sum();
        Ok((queued, processing))
    }
}

/// Moves items out of a processing list to the retry set or the
/// dead-letter list, atomically per item. ARGV: triples of
/// (original item, 'R' due-score | 'D' '', new payload).
const DIVERT: &str = r"
local moved = 0
for i = 1, #ARGV, 4 do
  local removed = redis.call('LREM', KEYS[1], 1, ARGV[i])
  if removed > 0 then
    if ARGV[i + 1] == 'R' then
      redis.call('ZADD', KEYS[2], ARGV[i + 2], ARGV[i + 3])
    else
      redis.call('LPUSH', KEYS[3], ARGV[i + 3])
    end
    moved = moved + 1
  end
end
return moved
";

/// Moves retries that are due back to the queue. ARGV: now (ms), max items.
const PROMOTE_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, item in ipairs(due) do
  redis.call('ZREM', KEYS[1], item)
  redis.call('LPUSH', KEYS[2], item)
end
return #due
";

/// Where a failed item goes.
pub enum Divert {
    /// Back to the queue at `due`.
    Retry {
        due: chrono::DateTime<chrono::Utc>,
        payload: String,
    },
    /// To the dead-letter list, as `letter`.
    Dead { letter: String },
}

impl Queue {
    /// Takes `items` (by their original text) out of `worker`'s processing
    /// list into the retry set or the dead-letter list.
    pub async fn divert(
        &self,
        conn: &mut ConnectionManager,
        worker: &str,
        items: &[(String, Divert)],
    ) -> anyhow::Result<u64> {
        if items.is_empty() {
            return Ok(0);
        }
        let mut args: Vec<String> = Vec::with_capacity(items.len() * 4);
        for (original, divert) in items {
            args.push(original.clone());
            match divert {
                Divert::Retry { due, payload } => {
                    args.push("R".into());
                    args.push(due.timestamp_millis().to_string());
                    args.push(payload.clone());
                }
                Divert::Dead { letter } => {
                    args.push("D".into());
                    args.push(String::new());
                    args.push(letter.clone());
                }
            }
        }
        self.divert
            .key(self.keys.processing(worker))
            .key(self.keys.retry())
            .key(self.keys.dlq())
            .arg(args)
            .invoke_async(conn)
            .await
            .context("moving failed items to the retry set or dead-letter list")
    }

    /// Moves due retries back to the queue; returns how many moved.
    pub async fn promote_due(
        &self,
        conn: &mut ConnectionManager,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<u64> {
        self.promote_due
            .key(self.keys.retry())
            .key(self.keys.queue())
            .arg(now.timestamp_millis())
            .arg(1000)
            .invoke_async(conn)
            .await
            .context("moving due retries to the queue")
    }
}

/// Moves dead letters back to the queue, atomically per item. ARGV: pairs of
/// (letter as stored, envelope to queue).
const REPLAY_DEAD: &str = r"
local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    moved = moved + 1
  end
end
return moved
";

/// One worker as `/admin/queue` shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    pub id: String,
    pub alive: bool,
    pub processing: u64,
}

/// Where every item of one prefix is now.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueOverview {
    pub queued: u64,
    pub processing: u64,
    pub retrying: u64,
    pub dead_lettered: u64,
    pub workers: Vec<WorkerStatus>,
    /// Running totals across all processes of this prefix.
    pub ingested: u64,
    pub committed: u64,
}

impl Queue {
    pub async fn overview(&self, conn: &mut ConnectionManager) -> anyhow::Result<QueueOverview> {
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.workers())
            .query_async(conn)
            .await
            .context("listing workers")?;
        ids.sort();
        let mut pipe = redis::pipe();
        pipe.cmd("LLEN").arg(self.keys.queue());
        pipe.cmd("ZCARD").arg(self.keys.retry());
        pipe.cmd("LLEN").arg(self.keys.dlq());
        pipe.cmd("HMGET")
            .arg(self.keys.stats())
            .arg("ingested")
            .arg("committed");
        for w in &ids {
            pipe.cmd("LLEN").arg(self.keys.processing(w));
            pipe.cmd("EXISTS").arg(self.keys.heartbeat(w));
        }
        let replies: Vec<redis::Value> = pipe
            .query_async(conn)
            .await
            .context("reading queue state")?;
        let num = |i: usize| -> u64 {
            replies
                .get(i)
                .and_then(|v| redis::from_redis_value::<u64>(v).ok())
                .unwrap_or(0)
        };
        let totals: Vec<Option<u64>> = replies
            .get(3)
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default();
        let workers: Vec<WorkerStatus> = ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| WorkerStatus {
                id,
                processing: num(4 + i * 2),
                alive: num(5 + i * 2) == 1,
            })
            .collect();
        Ok(QueueOverview {
            queued: num(0),
            retrying: num(1),
            dead_lettered: num(2),
            processing: workers.iter().map(|w| w.processing).sum(),
            workers,
            ingested: totals.first().copied().flatten().unwrap_or(0),
            committed: totals.get(1).copied().flatten().unwrap_or(0),
        })
    }

    /// The newest `limit` dead letters (decoded when they are JSON) and the
    /// total.
    pub async fn dlq_list(
        &self,
        conn: &mut ConnectionManager,
        limit: usize,
    ) -> anyhow::Result<(u64, Vec<serde_json::Value>)> {
        let (total, raw): (u64, Vec<String>) = redis::pipe()
            .cmd("LLEN")
            .arg(self.keys.dlq())
            .cmd("LRANGE")
            .arg(self.keys.dlq())
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(conn)
            .await
            .context("reading the dead-letter list")?;
        let items = if limit == 0 { Vec::new() } else { raw };
        Ok((
            total,
            items
                .into_iter()
                .map(|s| serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s)))
                .collect(),
        ))
    }

    /// Moves every dead letter back to the queue with its attempts reset.
    pub async fn dlq_replay(&self, conn: &mut ConnectionManager) -> anyhow::Result<u64> {
        let script = Script::new(REPLAY_DEAD);
        let mut moved = 0;
        loop {
            // Oldest first, from the right end.
            let letters: Vec<String> = redis::cmd("LRANGE")
                .arg(self.keys.dlq())
                .arg(-500)
                .arg(-1)
                .query_async(conn)
                .await
                .context("reading the dead-letter list")?;
            if letters.is_empty() {
                return Ok(moved);
            }
            let mut args = Vec::with_capacity(letters.len() * 2);
            for letter in letters {
                let payload = requeue_payload(&letter);
                args.push(letter);
                args.push(payload);
            }
            let n: u64 = script
                .key(self.keys.dlq())
                .key(self.keys.queue())
                .arg(args)
                .invoke_async(conn)
                .await
                .context("moving dead letters to the queue")?;
            if n == 0 {
                return Ok(moved);
            }
            moved += n;
        }
    }

    /// Deletes every dead letter; returns how many there were.
    pub async fn dlq_purge(&self, conn: &mut ConnectionManager) -> anyhow::Result<u64> {
        let (n, ()): (u64, ()) = redis::pipe()
            .atomic()
            .cmd("LLEN")
            .arg(self.keys.dlq())
            .cmd("DEL")
            .arg(self.keys.dlq())
            .ignore()
            .query_async(conn)
            .await
            .map(|(n,)| (n, ()))
            .context("purging the dead-letter list")?;
        Ok(n)
    }
}

/// The envelope a dead letter goes back to the queue as: its event with the
/// attempts reset (or, for an undecodable item, the item as it was).
fn requeue_payload(letter: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(letter) {
        Ok(serde_json::Value::Object(mut l)) => match l.remove("event") {
            Some(serde_json::Value::Object(mut event)) => {
                event.remove("attempts");
                serde_json::Value::Object(event).to_string()
            }
            Some(serde_json::Value::String(raw)) => raw,
            _ => letter.to_owned(),
        },
        _ => letter.to_owned(),
    }
}
