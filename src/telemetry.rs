//! Structured logging with `tracing`: text for people, JSON for machines.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber; `RUST_LOG` filters (default `info`, with
/// actix-server's own start-up lines, such as "starting 2 workers" about its
/// HTTP threads, at `warn` so they are not read as adtrack's queue workers).
/// Logs go to stderr, so commands that print results (`dlq list`,
/// `tenant create`, `reconcile`) keep stdout for those alone.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,actix_server=warn"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
