//! Reports read from Postgres: time-range aggregates from the per-minute
//! rollups, newest-first listings of raw events, and experiment summaries.
//!
//! Bounds (SPEC invariant 8: no unauthenticated read may slow ingest):
//! - every report runs on [`pool`], the reports' own small pool, never on the
//!   pool of ingest and the workers; a report that finds every connection
//!   busy for [`ACQUIRE_TIMEOUT`] gives up;
//! - each connection of that pool carries a `statement_timeout`
//!   (`REPORT_TIMEOUT`), so no report statement runs longer;
//! - each report is planned for its own parameters (`plan_cache_mode =
//!   force_custom_plan`): a cached generic plan cannot see that a filter is
//!   set, and would walk every event by time to find an unknown campaign;
//! - listings filtered by ad or campaign start from an index on that column
//!   (migrations 0003 and 0009), and an experiment summary reads the
//!   per-variant rollup (`rollup_experiment`), never the raw events.

//!
//! Each report's SQL is a file under `sql/`, checked against the schema at
//! compile time through sqlx's `query_file*!` macros; the report_bounds
//! tests EXPLAIN the same text through [`LIST_EVENTS_SQL`] and
//! [`EXPERIMENT_SUMMARY_SQL`].

mod aggregates;
mod errors;
mod experiments;
mod listings;
mod pool;
mod stats;

pub use aggregates::{aggregates, AggregateFilter, Aggregates, Bucket, Grouping};
pub use errors::errors_by_code;
pub use experiments::{
    experiment_summary, ExperimentSummary, VariantSummary, EXPERIMENT_SUMMARY_SQL,
};
pub use listings::{list_events, EventFilter, StoredEvent, LIST_EVENTS_SQL};
pub use pool::{pool, ACQUIRE_TIMEOUT, APPLICATION_NAME};
pub use stats::{erfc, two_proportion_z_test};
