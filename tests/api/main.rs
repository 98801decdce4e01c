//! Integration tests against real PostgreSQL and Redis.

mod analytics;
mod helpers;
mod ingest;
mod pipeline;
