//! The Smartcar v3 client: everything the daemon says to Smartcar goes through here.
//!
//! - [`auth`]: the single-flight token provider (the only caller of the token endpoint);
//! - [`client`]: the calls (connections pager, signals, vehicle) behind one gate: app pause,
//!   rate limiter, token, one retry after a 401;
//! - [`model`]: wire shapes and every variant the public sources disagree on;
//! - [`error`]: failures classified into the [`Action`] the caller must take;
//! - [`time`]: the three timestamp formats, plausible reading times, and `Retry-After` in
//!   every form it arrives in.
//!
//! It knows nothing of the database or the queue.

// `ApiError` carries the request id, body fields and `Retry-After` a failure must be logged
// with; it only travels on the failure path of a network call, where its size costs nothing.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod client;
pub mod error;
pub mod model;
pub mod time;

pub use auth::{AccessToken, SecretSource, TokenConfig, TokenError, TokenProvider};
pub use client::{Client, ClientConfig, ConnectionsPager, PartialSignals, RateLimit};
pub use error::{Action, ApiError, ErrorKind, VehicleProblem};
pub use model::{Connection, ConnectionsPage, Signal, SignalStatus, VehicleInfo};
