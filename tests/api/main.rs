//! Integration tests against real PostgreSQL and Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod analytics;
mod bounds;
mod cluster;
mod cors;
mod counter_scripts;
mod deploy;
mod edge;
mod faults;
mod helpers;
mod hostile;
mod ingest;
mod ivt;
mod openapi;
mod pipeline;
mod ratelimit;
mod recovery;
mod reliability;
mod report_bounds;
mod reports;
mod scripts;
mod shards;
mod spool;
mod storage;
mod tenants;
mod uniques;
mod vast;
