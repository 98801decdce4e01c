//! The queue's Lua scripts. Each lives in `lua/<name>.lua`, whose header
//! states its KEYS, ARGV, return value and the atomic move it performs, and
//! is built once per process with `redis_client::script` (sent by SHA; on
//! `NOSCRIPT` one node sends it again with `SCRIPT LOAD`, a cluster as
//! `EVAL` to the slot's owner). Public only so the integration tests can drive each
//! script's crash branches against a real Redis.

use std::sync::LazyLock;

use redis::Script;

/// Queue → processing list (see `lua/reserve.lua`).
pub static RESERVE: LazyLock<Script> =
    LazyLock::new(|| crate::redis_client::script(include_str!("lua/reserve.lua")));

/// A dead worker's processing list → queue (see `lua/requeue_dead.lua`).
pub static REQUEUE_DEAD: LazyLock<Script> =
    LazyLock::new(|| crate::redis_client::script(include_str!("lua/requeue_dead.lua")));

/// Processing list → retry set or dead-letter list (see `lua/divert.lua`).
pub static DIVERT: LazyLock<Script> =
    LazyLock::new(|| crate::redis_client::script(include_str!("lua/divert.lua")));

/// Due retries → queue (see `lua/promote_due.lua`).
pub static PROMOTE_DUE: LazyLock<Script> =
    LazyLock::new(|| crate::redis_client::script(include_str!("lua/promote_due.lua")));

/// Dead letters → queue (see `lua/replay_dead.lua`).
pub static REPLAY_DEAD: LazyLock<Script> =
    LazyLock::new(|| crate::redis_client::script(include_str!("lua/replay_dead.lua")));
