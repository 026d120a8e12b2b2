//! smartcar-sync: keeps a database full of fresh, correct Smartcar v3 connected-car data.
//!
//! The path of one reading: a cron tick ([`schedule`]) enqueues durable jobs ([`store`]); the
//! worker pool ([`queue`]) claims them under a lease and runs them ([`jobs`]) through the
//! rate-limited Smartcar client ([`smartcar`]), whose single-flight token provider keeps one
//! application token fresh. The effect and the job's bookkeeping commit in one transaction.
//! [`simulator`] is a faithful fake of the v3 API for tests, the demo and benchmarks.

pub mod admin;
pub mod budget;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod events;
pub mod http;
pub mod ids;
pub mod jobs;
pub mod queue;
pub mod schedule;
pub mod simulator;
pub mod smartcar;
pub mod store;
pub mod telemetry;
