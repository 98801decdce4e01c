//! The worker's side of the queue: reserve items, beat, retire, divert the
//! ones that failed, and the reaper that gives a dead worker's items back.
//!
//! Every move of an item between two places is one script (see `lua/`) or
//! one `BLMOVE`; the acknowledgement of a committed batch runs with the
//! counter update (`Counters::ack`).

use std::time::Duration;

use anyhow::Context;

use super::{scripts, Queue};
use crate::redis_client::RedisConn;

/// Everything a processing list holds.
async fn held(conn: &mut RedisConn, processing: &str) -> anyhow::Result<Vec<String>> {
    redis::cmd("LRANGE")
        .arg(processing)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .context("reading the processing list")
}

impl Queue {
    /// What `worker` holds already (left over from an attempt that could not
    /// finish), else up to `max` new items, blocking up to `wait` for the
    /// first one. `conn` must be the worker's own connection: `BLMOVE` blocks it.
    pub async fn reserve(
        &self,
        conn: &mut RedisConn,
        worker: &str,
        max: usize,
        wait: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let processing = self.keys.processing(worker);
        // A move is never answered with less than the whole processing
        // list: a command resent after a lost answer (the cluster client
        // resends on a cut connection) finds the items the first one moved,
        // and the worker must see, process and acknowledge all of them.
        let items = self.take(conn, &processing, max).await?;
        if !items.is_empty() {
            return Ok(items);
        }
        // Wait for the first item, moved straight into the processing list
        // (one blocked worker takes it; the others stay blocked). The round
        // answers the whole list: a resent BLMOVE may have moved a second.
        let first: Option<String> = redis::cmd("BLMOVE")
            .arg(self.keys.queue())
            .arg(&processing)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(wait.as_secs_f64())
            .query_async(conn)
            .await
            .context("waiting on the queue (BLMOVE)")?;
        if first.is_none() {
            return Ok(Vec::new());
        }
        held(conn, &processing).await
    }

    /// Moves up to `max` items to the processing list (unless it holds
    /// some already) and answers the whole list: the script and the read
    /// in one round trip. A node that lacks the script (a restart, a
    /// promoted replica) answers `NOSCRIPT`, and the move goes as two
    /// calls, the first of which loads it.
    async fn take(
        &self,
        conn: &mut RedisConn,
        processing: &str,
        max: usize,
    ) -> anyhow::Result<Vec<String>> {
        let queue = self.keys.queue();
        let mut reserve = scripts::RESERVE.key(&queue);
        reserve.key(processing).arg(max);
        let mut pipe = redis::pipe();
        pipe.invoke_script(&reserve)
            .ignore()
            .cmd("LRANGE")
            .arg(processing)
            .arg(0)
            .arg(-1);
        match pipe.query_async::<(Vec<String>,)>(conn).await {
            Ok((items,)) => return Ok(items),
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {}
            Err(e) => return Err(e).context("moving items from the queue to the processing list"),
        }
        let length: usize = reserve
            .invoke_async(conn)
            .await
            .context("moving items from the queue to the processing list")?;
        if length == 0 {
            return Ok(Vec::new());
        }
        held(conn, processing).await
    }

    /// Registers `worker` and refreshes its heartbeat.
    pub async fn beat(
        &self,
        conn: &mut RedisConn,
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
    pub async fn retire(&self, conn: &mut RedisConn, workers: &[String]) -> anyhow::Result<()> {
        if workers.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for w in workers {
            pipe.cmd("DEL").arg(self.keys.heartbeat(w)).ignore();
        }
        pipe.query_async::<()>(conn)
            .await
            .context("removing worker heartbeats")?;
        // With its heartbeat gone, each is forgotten as the reaper forgets a
        // dead worker, so `{P}:workers` lists only live ones (a list that
        // is somehow not empty goes back to the queue on the way).
        for w in workers {
            self.requeue_dead(conn, w).await?;
        }
        Ok(())
    }

    /// Returns the items of every worker whose heartbeat expired to the
    /// queue. Returns how many items moved.
    pub async fn reap(&self, conn: &mut RedisConn) -> anyhow::Result<u64> {
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.workers())
            .query_async(conn)
            .await
            .context("listing workers")?;
        let mut moved = 0u64;
        for w in workers {
            let n = self.requeue_dead(conn, &w).await?;
            if n > 0 {
                tracing::warn!(worker = %w, items = n, "worker heartbeat expired; its items are back on the queue");
                moved += n as u64;
            }
        }
        Ok(moved)
    }

    /// Runs REQUEUE_DEAD for `worker`: -1 when its heartbeat is alive, else
    /// the items it gave back (it is forgotten either way but the first).
    async fn requeue_dead(&self, conn: &mut RedisConn, worker: &str) -> anyhow::Result<i64> {
        scripts::REQUEUE_DEAD
            .key(self.keys.heartbeat(worker))
            .key(self.keys.processing(worker))
            .key(self.keys.queue())
            .key(self.keys.workers())
            .arg(worker)
            .invoke_async(conn)
            .await
            .with_context(|| format!("requeueing the items of worker {worker}"))
    }

    /// Takes `items` (by their original text) out of `worker`'s processing
    /// list into the retry set or the dead-letter list.
    pub async fn divert(
        &self,
        conn: &mut RedisConn,
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
        scripts::DIVERT
            .key(self.keys.processing(worker))
            .key(self.keys.retry())
            .key(self.keys.dlq())
            .arg(args)
            .invoke_async(conn)
            .await
            .context("moving failed items to the retry set or dead-letter list")
    }
}

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
