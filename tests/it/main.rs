//! The one integration-test binary (one link step). Each module proves one capability; the
//! store and daemon tests run once per database backend (SQLite always, PostgreSQL when a
//! server can be started or `TEST_DATABASE_URL` is set).

mod allowance;
mod budget;
mod client;
mod daemon;
mod dashboards;
mod http;
mod operators;
mod payloads;
mod scale_out;
mod schedule;
mod security;
mod service;
mod store;
mod support;
mod upgrade;
