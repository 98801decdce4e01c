//! The Redis list protocol: ingest pushes (`pusher`), the worker's side
//! (`protocol`: reserve, heartbeats, divert, reap) and the operator's side
//! (`admin`: due retries, overview, dead letters). Its Lua scripts live in
//! `lua/`, one file each.
//!
//! Invariants kept here:
//! - An item is always in exactly one place: the queue, one worker's
//!   processing list, the retry set or the dead-letter list. Every move
//!   between two of them is one `LMOVE`/`BLMOVE` or one Lua script.
//! - A worker only ever removes its own processing list, and only after what
//!   it held is committed to Postgres.
//! - A processing list whose worker's heartbeat has expired is moved back to
//!   the queue by one script that re-checks the heartbeat inside Redis.

mod admin;
mod protocol;
mod pusher;
#[doc(hidden)]
pub mod scripts;
mod shards;

pub use crate::keys::Keys;
pub use admin::{QueueOverview, WorkerStatus};
pub use protocol::Divert;
pub use pusher::{LocalPusher, PushError, PushFailure, Pusher};
pub use shards::{Queues, MAX_SHARDS};

/// One queue shard's keys and the moves on them.
#[derive(Clone)]
pub struct Queue {
    keys: Keys,
}

impl Queue {
    pub fn new(keys: Keys) -> Self {
        Self { keys }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}
