//! adtrack: an ad-event tracking service.
//!
//! Events arrive over HTTP, are acknowledged once Redis holds them, and are
//! moved by workers into PostgreSQL, the source of truth, while real-time
//! counters in Redis answer the analytics.

/// The running service: wiring, start-up and ordered shutdown.
pub mod app;
/// Command-line interface.
pub mod cli;
/// Typed settings from the environment.
pub mod config;
/// Real-time counters in Redis, the analytics read from them, reconcile.
pub mod counters;
/// The event model, parsed at the edge.
pub mod domain;
/// The exactly-once commit protocol: outbox, marker, acknowledgement, deferred deletion, recovery, pause.
pub mod exactly_once;
/// Outage or the event's own fault: how every failure is classified.
pub mod fault;
/// Properties the fuzz targets check (used by `fuzz/` and its regression tests).
#[doc(hidden)]
pub mod fuzzing;
/// The container health probe (`adtrack healthcheck`).
pub mod healthcheck;
/// Routes, handlers and JSON errors.
pub mod http;
/// Queuing accepted events: Redis, or the spool while Redis is down.
pub mod ingest;
/// Invalid traffic: bot user agents and repeated clicks (`IVT_FILTER`).
pub mod ivt;
/// Every Redis key and hash field name.
pub mod keys;
/// Prometheus metrics.
pub mod metrics;
/// The Redis list protocol: push, reserve, divert, reap; retries and dead letters.
pub mod queue;
/// Redis-backed rate limits per client IP and per adId.
pub mod ratelimit;
/// Redis connections: how every one connects and reconnects.
pub mod redis_client;
/// The on-disk spool used while Redis is down, and its replay.
pub mod spool;
/// PostgreSQL: migrations, batched inserts with dedup and rollups, reads.
pub mod store;
/// Logging setup.
pub mod telemetry;
/// Tenants and their API keys (`TENANTS=on`).
pub mod tenants;
/// Video-ad tracking: VAST documents, signed views, pixel macros.
pub mod vast;
/// The workers and their maintenance duties.
pub mod worker;
