//! The command line: `serve` (the default), `migrate`, `reconcile`.

use clap::{Parser, Subcommand};

use crate::app::Role;

#[derive(Debug, Parser)]
#[command(
    name = "adtrack",
    version,
    about = "Ad-event tracking: HTTP ingest → Redis queue → workers → PostgreSQL, with real-time analytics",
    long_about = crate::config::long_help()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API and run the workers (the default).
    Serve {
        /// What this process runs.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
    },
    /// Create the database if needed and apply migrations, then exit.
    Migrate,
    /// Rebuild every Redis counter from Postgres (safe while servers run).
    Reconcile,
    /// Exit 0 when the server on this machine answers `GET /health` (for
    /// container health checks; needs no curl).
    Healthcheck {
        /// Port to ask; defaults to PORT.
        #[arg(long)]
        port: Option<u16>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// Manage tenants and their API keys (`TENANTS=on`).
    Tenant {
        #[command(subcommand)]
        action: TenantAction,
    },
    /// Inspect or act on the dead-letter list.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantAction {
    /// Create a tenant (or add a key to an existing one) and print its new
    /// API key, which is shown only this once.
    Create {
        /// Tenant id: 1 to 63 of a-z, 0-9 and '-'.
        id: String,
        /// A display name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List tenants with the prefixes of their valid keys, as JSON lines.
    List,
    /// Revoke every key of a tenant, or with --key only the keys starting
    /// with that prefix (e.g. to retire an old key after rotation).
    Revoke {
        id: String,
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Print dead letters, newest first, one JSON object per line.
    List {
        /// How many to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move every dead letter back to the queue, attempts reset.
    Replay,
    /// Delete every dead letter.
    Purge,
}
