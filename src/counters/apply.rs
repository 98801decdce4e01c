//! The one call that writes counter updates: `lua/apply.lua`, in the modes
//! the exactly-once protocol ([`crate::exactly_once`]) and reconcile use.
//! What its marker, pause flag and acknowledgement mean is the protocol's
//! business; this file only builds the call.

use crate::redis_client::{RedisConn, Replication};
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use prometheus::IntCounter;

use super::ops::Chunk;
use super::registers::Registers;
use super::scripts::{APPLY, APPLY_SOURCE};
use super::{Counted, Layout, Ops};
use crate::keys::fields;
use crate::queue::Keys;

/// The real-time counters of one prefix.
#[derive(Clone)]
pub struct Counters {
    keys: Keys,
    /// Replicas that must confirm a batch's application (see
    /// `exactly_once`).
    replication: Replication,
    /// What this process knows its unique-click keys hold, shared by its
    /// workers.
    registers: Arc<Registers>,
    /// Counts the click IPs left out because they could not change a key.
    skipped: Option<IntCounter>,
}

/// The three keys of an APPLY call (see `lua/apply.lua`).
pub(crate) struct ApplyKeys<'a> {
    pub processing: &'a str,
    pub marker: &'a str,
    pub paused: &'a str,
}

impl Counters {
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            replication: Replication::default(),
            registers: Arc::default(),
            skipped: None,
        }
    }

    /// These counters, counting in `skipped` the click IPs a batch left out.
    pub fn counting_skips(mut self, skipped: IntCounter) -> Self {
        self.skipped = Some(skipped);
        self
    }

    pub fn registers(&self) -> &Registers {
        &self.registers
    }

    /// `ops` were applied (`sent`: by this call) or found applied: their
    /// unique-click keys hold their IPs now.
    pub(crate) fn applied(&self, ops: &Ops, sent: bool) {
        ops.teach(&self.registers);
        if let (Some(c), true) = (&self.skipped, sent) {
            c.inc_by(ops.skipped() as u64);
        }
    }

    /// These counters, with every batch application confirmed by
    /// `replication` before it counts as done.
    pub fn confirmed_by(mut self, replication: Replication) -> Self {
        self.replication = replication;
        self
    }

    pub fn replication(&self) -> Replication {
        self.replication
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn layout(&self) -> Layout {
        live_layout(&self.keys)
    }

    /// The updates for a committed batch: one unit per event.
    pub fn ops_for(&self, events: &[Counted<'_>], now: DateTime<Utc>) -> Ops {
        let mut ops = Ops::new(self.layout(), now).knowing(self.registers.clone());
        ops.add_events(events.iter().copied());
        if !events.is_empty() {
            // Running total for the UI's commit rate, applied with the batch.
            ops.hincr(
                self.keys.stats(),
                fields::COMMITTED.into(),
                events.len() as i64,
            );
        }
        ops
    }
}

/// The live counters' layout of the prefix of `keys`.
pub(crate) fn live_layout(keys: &Keys) -> Layout {
    Layout::spread(keys.counters_root(), keys.prefix(), keys.counter_slots())
}

/// Runs APPLY once with the ops of `chunk` and returns its answer: `ok`,
/// `seen` or `paused`. With `replication` on, `WAIT` follows the script in
/// the same pipeline (it cannot run inside a script), on the node that ran
/// it, and the answer is an error unless the replicas confirmed it.
pub(crate) async fn run(
    conn: &mut RedisConn,
    keys: ApplyKeys<'_>,
    marker_ttl_secs: u64,
    mode: &str,
    batch: &str,
    chunk: &Chunk,
    replication: Replication,
) -> anyhow::Result<String> {
    if !replication.is_on() {
        return APPLY
            .key(keys.processing)
            .key(keys.marker)
            .key(keys.paused)
            .key(&chunk.keys)
            .arg(marker_ttl_secs)
            .arg(mode)
            .arg(batch)
            .arg(&chunk.args)
            .invoke_async(conn)
            .await
            .context("applying counter updates");
    }
    let call = |by_source: bool| {
        let mut cmd = if by_source {
            let mut c = redis::cmd("EVAL");
            c.arg(APPLY_SOURCE);
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(APPLY.get_hash());
            c
        };
        cmd.arg(3 + chunk.keys.len())
            .arg(keys.processing)
            .arg(keys.marker)
            .arg(keys.paused)
            .arg(&chunk.keys)
            .arg(marker_ttl_secs)
            .arg(mode)
            .arg(batch)
            .arg(&chunk.args);
        cmd
    };
    let mut sent = confirmed(conn, call(false), replication).await;
    if matches!(&sent, Err(e) if is_noscript(e)) {
        // A promoted replica or a restarted node without the script in its
        // cache: send the script itself (EVAL caches it again).
        sent = confirmed(conn, call(true), replication).await;
    }
    sent.context("applying counter updates")
}

/// `cmd`, then `WAIT`, in one pipeline; the command's reply once the
/// replicas confirmed it.
async fn confirmed(
    conn: &mut RedisConn,
    cmd: redis::Cmd,
    replication: Replication,
) -> anyhow::Result<String> {
    let mut pipe = redis::pipe();
    pipe.add_command(cmd);
    replication.append_wait(&mut pipe);
    let (outcome, replicas): (String, i64) = pipe.query_async(conn).await?;
    replication.check(replicas)?;
    Ok(outcome)
}

fn is_noscript(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<redis::RedisError>()
            .is_some_and(|r| r.kind() == redis::ErrorKind::NoScriptError)
    })
}

/// Writes `ops` (reconcile's staged copy) in chunks of about `max_args`,
/// with neither marker nor acknowledgement: one call per chunk, each in
/// one counter slot.
pub(crate) async fn write_staged(
    conn: &mut RedisConn,
    keys: &Keys,
    ops: &Ops,
    max_args: usize,
) -> anyhow::Result<()> {
    for (tag, chunks) in ops.to_tagged_chunks(max_args) {
        // No processing list and no marker: the keys only route the call
        // to the slot's node.
        let anchor = keys.paused_in(&tag);
        for chunk in chunks {
            let apply_keys = ApplyKeys {
                processing: &anchor,
                marker: &anchor,
                paused: &anchor,
            };
            run(conn, apply_keys, 0, "-", "", &chunk, Replication::default())
                .await
                .context("writing staged counters")?;
        }
    }
    Ok(())
}
