//! smartcar-sync: keeps a database full of fresh, correct Smartcar v3 connected-car data.
//!
//! The path of one reading: a cron tick ([`schedule`]) enqueues durable jobs ([`store`]); the
//! worker pool ([`queue`]) claims them under a lease and runs them ([`jobs`]) through the
//! rate-limited Smartcar client ([`smartcar`]), whose single-flight token provider keeps one
//! application token fresh. The effect and the job's bookkeeping commit in one transaction.
//! The simulator of the v3 API that tests, the demo and benchmarks run against is its own crate,
//! `smartcar-sim` (`crates/smartcar-sim`); the `demo` and `simulate` commands need the default
//! feature `simulator`.

pub mod admin;
pub mod allowance;
pub mod budget;
pub mod cli;
pub mod config;
pub mod daemon;
#[cfg(feature = "simulator")]
pub mod demo;
pub mod events;
pub mod http;
pub mod ids;
pub mod jobs;
pub mod lifecycle;
pub mod plan;
pub mod queue;
pub mod schedule;
pub mod smartcar;
pub mod store;
pub mod telemetry;
pub mod vehicle_status;
