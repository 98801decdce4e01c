//! The counters' Lua scripts. Each lives in `lua/<name>.lua`, whose header
//! states its KEYS, ARGV, return value and the atomic move it performs, and
//! is built once per process with `redis_client::script` (sent by SHA; on
//! `NOSCRIPT` one node sends it again with `SCRIPT LOAD`, a cluster as
//! `EVAL` to the slot's owner). Public only so the integration tests can drive each
//! script's crash branches against a real Redis.

use std::sync::LazyLock;

use redis::Script;

/// Counter updates, guarded by a batch's marker and the pause flag, with
/// the processing list's acknowledgement (see `lua/apply.lua`).
pub static APPLY: LazyLock<Script> = LazyLock::new(|| crate::redis_client::script(APPLY_SOURCE));

/// The text of `lua/apply.lua`, sent again with `EVAL` when a node answers
/// `NOSCRIPT` to a call pipelined with `WAIT`.
pub const APPLY_SOURCE: &str = include_str!("lua/apply.lua");

/// Staging keys over live ones, with the snapshot's markers (see
/// `lua/swap.lua`).
pub static SWAP: LazyLock<Script> =
    LazyLock::new(|| crate::redis_client::script(include_str!("lua/swap.lua")));

/// An ad's all-time figures and skip list from a snapshot (see
/// `lua/write_ad.lua`).
pub static WRITE_AD: LazyLock<Script> =
    LazyLock::new(|| crate::redis_client::script(include_str!("lua/write_ad.lua")));

/// One campaign's ranking, screens and skip list from a snapshot (see
/// `lua/write_campaign.lua`).
pub static WRITE_CAMPAIGN: LazyLock<Script> =
    LazyLock::new(|| crate::redis_client::script(include_str!("lua/write_campaign.lua")));

/// The epoch read or created, with the rebuild lease (see
/// `lua/epoch_check.lua`).
pub static EPOCH_CHECK: LazyLock<Script> =
    LazyLock::new(|| crate::redis_client::script(include_str!("lua/epoch_check.lua")));

/// A rebuild's end: `rebuiltAt` and the lease (see `lua/epoch_finish.lua`).
pub static EPOCH_FINISH: LazyLock<Script> =
    LazyLock::new(|| crate::redis_client::script(include_str!("lua/epoch_finish.lua")));

/// The lease extended by its holder (see `lua/epoch_extend.lua`).
pub static EPOCH_EXTEND: LazyLock<Script> =
    LazyLock::new(|| crate::redis_client::script(include_str!("lua/epoch_extend.lua")));
