//! The operator's side of the queue: due retries back to the queue, the
//! overview `/admin/queue` shows, and the dead-letter list (list, replay,
//! purge).

use anyhow::Context;

use super::{scripts, Queue};
use crate::keys::fields;
use crate::redis_client::RedisConn;

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
    /// Moves due retries back to the queue; returns how many moved.
    pub async fn promote_due(
        &self,
        conn: &mut RedisConn,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<u64> {
        scripts::PROMOTE_DUE
            .key(self.keys.retry())
            .key(self.keys.queue())
            .arg(now.timestamp_millis())
            .arg(1000)
            .invoke_async(conn)
            .await
            .context("moving due retries to the queue")
    }

    /// Queue depth and the number of items held by workers.
    pub async fn depths(&self, conn: &mut RedisConn) -> anyhow::Result<(u64, u64)> {
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

    pub async fn overview(&self, conn: &mut RedisConn) -> anyhow::Result<QueueOverview> {
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
        // The totals live under `{P}`, in another Cluster slot than the
        // queue keys of shards above 0: a command of their own.
        let totals: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(self.keys.stats())
            .arg(fields::INGESTED)
            .arg(fields::COMMITTED)
            .query_async(conn)
            .await
            .context("reading the running totals")?;
        let workers: Vec<WorkerStatus> = ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| WorkerStatus {
                id,
                processing: num(3 + i * 2),
                alive: num(4 + i * 2) == 1,
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
        conn: &mut RedisConn,
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
    pub async fn dlq_replay(&self, conn: &mut RedisConn) -> anyhow::Result<u64> {
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
            let n: u64 = scripts::REPLAY_DEAD
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
    pub async fn dlq_purge(&self, conn: &mut RedisConn) -> anyhow::Result<u64> {
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
