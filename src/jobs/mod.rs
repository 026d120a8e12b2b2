//! What each job does. How and when it runs is the queue's business ([`crate::queue`]).
//!
//! Every job ends in one store call that commits its effect together with the job's completion
//! (architecture rule 1), so a crash before it leaves the job to be claimed again and a crash
//! after it leaves nothing to redo.

mod connections;
mod discover;
pub mod signals;

use crate::smartcar::{ApiError, Client};
use crate::store::{Job, JobKind, Store, StoreError};

/// What a job needs from the rest of the daemon.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub store: Store,
    pub client: Client,
    /// `[budget]`: the per-vehicle allowance polls are counted against (`None`: unlimited).
    pub allowance: Option<crate::plan::Allowance>,
    /// Webhook subscriptions kept by each connections sync (`None`: not configured).
    pub subscriptions: Option<Subscriptions>,
    /// The runner's wake-up: a job that enqueues work for now (discovery's syncs, a sync's
    /// first polls) wakes idle workers, which would otherwise sleep until their next check.
    pub wake: std::sync::Arc<tokio::sync::Notify>,
}

impl JobContext {
    /// Wakes enough idle workers for `jobs` new jobs (each claim takes several).
    pub fn wake_for(&self, jobs: usize) {
        for _ in 0..jobs.div_ceil(crate::queue::CLAIM_BATCH).min(32) {
            self.wake.notify_one();
        }
    }
}

/// Where and to what the connections sync subscribes vehicles (contract §8).
#[derive(Clone, Debug)]
pub struct Subscriptions {
    /// `[smartcar] management_url`.
    pub management_url: url::Url,
    /// `[webhooks] webhook_id`.
    pub webhook_id: String,
}

/// A job that did not complete. The queue decides what happens next from the API error's
/// [`crate::smartcar::Action`].
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

/// What a completed job did, for its log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Discovered {
        users: usize,
        new: usize,
    },
    Synced {
        vehicles: usize,
        new: usize,
        vanished: usize,
    },
    Polled {
        signals: usize,
        inserted: u64,
    },
    /// Nothing to do any more (the vehicle or user was removed meanwhile).
    Skipped(&'static str),
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Done::Discovered { users, new } => write!(f, "{users} users listed, {new} new"),
            Done::Synced {
                vehicles,
                new,
                vanished,
            } => {
                write!(f, "{vehicles} vehicles, {new} new, {vanished} vanished")
            }
            Done::Polled { signals, inserted } => {
                write!(f, "{signals} signals, {inserted} new samples")
            }
            Done::Skipped(why) => write!(f, "skipped: {why}"),
        }
    }
}

/// Runs one claimed job to completion (its effect committed with its completion) or an error.
pub async fn run(ctx: &JobContext, job: &Job) -> Result<Done, JobError> {
    match job.kind {
        JobKind::DiscoverUsers => discover::run(ctx, job).await,
        JobKind::SyncConnections => connections::run(ctx, job).await,
        JobKind::PollSignals => signals::run(ctx, job).await,
    }
}
