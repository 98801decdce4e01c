//! The reports' own Postgres pool: small, read-only, each statement bounded
//! by `REPORT_TIMEOUT` and planned for its own parameters, so no report can
//! hold or slow the connections of ingest and the workers.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// How long a report waits for a free connection of its pool.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// The `application_name` of the report pool's connections, so an operator
/// sees them apart in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "adtrack-reports";

/// The reports' own pool: `size` connections at most, each with
/// `statement_timeout` = `timeout`, read-only, without parallel workers,
/// and planning every statement for its parameters. Connects lazily; the
/// database must exist.
pub fn pool(database_url: &str, size: u32, timeout: Duration) -> anyhow::Result<PgPool> {
    let millis = timeout.as_millis().max(1).to_string();
    let options = PgConnectOptions::from_str(database_url)
        .context("DATABASE_URL is not a valid postgres URL")?
        .application_name(APPLICATION_NAME)
        .options([
            ("statement_timeout", millis.as_str()),
            ("plan_cache_mode", "force_custom_plan"),
            ("default_transaction_read_only", "on"),
            // A report is one backend: REPORT_POOL_SIZE bounds the
            // reports' share of the server, parallel workers included.
            ("max_parallel_workers_per_gather", "0"),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}
