//! The one call that writes counter updates: `lua/apply.lua`, in the modes
//! the exactly-once protocol ([`crate::exactly_once`]) and reconcile use.
//! What its marker, pause flag and acknowledgement mean is the protocol's
//! business; this file only builds the call.

use anyhow::Context;
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;

use super::ops::Chunk;
use super::scripts::APPLY;
use super::{Counted, Layout, Ops};
use crate::keys::fields;
use crate::queue::Keys;

/// The real-time counters of one prefix.
#[derive(Clone)]
pub struct Counters {
    keys: Keys,
}

/// The three keys of an APPLY call (see `lua/apply.lua`).
pub(crate) struct ApplyKeys<'a> {
    pub processing: &'a str,
    pub marker: &'a str,
    pub paused: &'a str,
}

impl Counters {
    pub fn new(keys: Keys) -> Self {
        Self { keys }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn layout(&self) -> Layout {
        Layout::new(self.keys.counters_root())
    }

    /// The updates for a committed batch: one unit per event.
    pub fn ops_for(&self, events: &[Counted<'_>], now: DateTime<Utc>) -> Ops {
        let mut ops = Ops::new(self.layout(), now);
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

/// Runs APPLY once with the ops of `chunk` and returns its answer: `ok`,
/// `seen` or `paused`.
pub(crate) async fn run(
    conn: &mut ConnectionManager,
    keys: ApplyKeys<'_>,
    marker_ttl_secs: u64,
    mode: &str,
    batch: &str,
    chunk: &Chunk,
) -> anyhow::Result<String> {
    APPLY
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
        .context("applying counter updates")
}

/// Writes `ops` (reconcile's staged copy) in chunks of about `max_args`,
/// with neither marker nor acknowledgement.
pub(crate) async fn write_staged(
    conn: &mut ConnectionManager,
    ops: &Ops,
    anchor: &str,
    max_args: usize,
) -> anyhow::Result<()> {
    for chunk in ops.to_arg_chunks(max_args) {
        // No processing list and no marker: the keys only route the call.
        let keys = ApplyKeys {
            processing: anchor,
            marker: anchor,
            paused: anchor,
        };
        run(conn, keys, 0, "-", "", &chunk)
            .await
            .context("writing staged counters")?;
    }
    Ok(())
}
