//! The worker pool: claims due jobs under a lease, runs them, and turns every failure into data.
//!
//! - A claim is a lease with a fencing token; a heartbeat extends it while the job runs. A
//!   worker killed with SIGKILL stops heart-beating, its lease expires, another claim takes it.
//! - Every wait is data, not a sleep (architecture rule 2): a backoff, a `Retry-After`, an app
//!   pause or a credential wait becomes the job's `run_at` (and the stored pause), so a restart
//!   honours it and no worker is held by a slow vehicle.
//! - On shutdown the pool stops claiming, gives running jobs `shutdown_grace` to finish, then
//!   releases the rest (no attempt used). Nothing is lost either way.

pub mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::events::{self, JobOutcome};
use crate::jobs::{self, JobContext, JobError};
use crate::smartcar::Action;
use crate::store::{Job, JobKind, StoreError};
use crate::vehicle_status;
pub use retry::RetryPolicy;

/// The pool's settings (`[queue]`).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Workers, i.e. jobs run at once. The daemon runs [`WORKERS_PER_REQUEST`] per request it
    /// may have in flight (`queue.concurrency`, enforced by the client): while some workers
    /// wait for the API, the others claim, count and commit, so the database round trips of a
    /// job do not leave a request slot idle.
    pub workers: usize,
    pub lease: Duration,
    pub shutdown_grace: Duration,
    pub retry: RetryPolicy,
    /// The longest the pool sleeps with nothing due, so jobs enqueued by another daemon are
    /// found without a wake-up.
    pub idle_poll: Duration,
    /// The longest wait a `Retry-After` or a throttled vehicle's backoff can impose.
    pub max_retry_after: Duration,
}

/// Workers per request slot (see [`QueueSettings::workers`]). Measured on the no-limit cycle
/// bench (32 requests in flight, README "Throughput against the bound"): on PostgreSQL, before
/// the write gate and plan caching, 2 → 0.39 of the bound, 4 → 0.58, 8 → 0.48; after them,
/// 4 → 0.84 (SQLite 0.78–0.79) and 8 → 0.85 (SQLite 0.84–0.86). The queue claims nothing while
/// a full round of requests waits for a slot, so more workers do not hoard jobs.
pub const WORKERS_PER_REQUEST: usize = 8;

/// The most jobs one claim takes (see `Runner::worker`).
pub(crate) const CLAIM_BATCH: usize = 8;

/// How this runner's job runs ended, for `sync-once`'s summary and the demo's progress line.
/// Counted from the same [`JobOutcome`] the `jobs_total` metric counts ([`RunStats::record`]).
#[derive(Debug, Default)]
pub struct RunStats {
    pub done: AtomicU64,
    pub retried: AtomicU64,
    pub deferred: AtomicU64,
    pub dead: AtomicU64,
    pub vehicle_status: AtomicU64,
    pub released: AtomicU64,
    pub lost: AtomicU64,
}

impl RunStats {
    fn record(&self, outcome: JobOutcome) {
        let counter = match outcome {
            JobOutcome::Done => &self.done,
            JobOutcome::Retry => &self.retried,
            JobOutcome::Deferred => &self.deferred,
            JobOutcome::Dead => &self.dead,
            JobOutcome::VehicleStatus => &self.vehicle_status,
            JobOutcome::Released => &self.released,
            JobOutcome::Lost => &self.lost,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The worker pool.
pub struct Runner {
    ctx: JobContext,
    settings: QueueSettings,
    wake: Arc<Notify>,
    owner: String,
    stats: Arc<RunStats>,
    /// Jobs running right now (for the shutdown log).
    running: AtomicUsize,
    /// True while an idle worker sleeps until the next due job (see `Runner::worker`).
    timekeeper: std::sync::atomic::AtomicBool,
    /// Wakes the timekeeper when a job of this process is rescheduled (a retry, a deferral):
    /// it may now be due before the time the timekeeper sleeps until.
    keep_time: Notify,
    /// Jobs claimed by one worker for its siblings, leases held, not started yet.
    ready: std::sync::Mutex<std::collections::VecDeque<Job>>,
}

impl Runner {
    /// `wake` is notified by whoever enqueues work in this process (schedule, webhooks, CLI).
    pub fn new(ctx: JobContext, settings: QueueSettings, wake: Arc<Notify>) -> Self {
        let owner = format!("{}-{:08x}", std::process::id(), fastrand::u32(..));
        Runner {
            ctx,
            settings,
            wake,
            owner,
            stats: Arc::new(RunStats::default()),
            ready: std::sync::Mutex::new(std::collections::VecDeque::new()),
            running: AtomicUsize::new(0),
            timekeeper: std::sync::atomic::AtomicBool::new(false),
            keep_time: Notify::new(),
        }
    }

    /// Leases taken by this runner carry `owner` as their prefix: the process's id in the
    /// `daemons` table, so a dead process's jobs can be found and retaken at once.
    pub fn owned_by(mut self, owner: &str) -> Self {
        self.owner = owner.to_owned();
        self
    }

    pub fn stats(&self) -> Arc<RunStats> {
        self.stats.clone()
    }

    /// Runs `workers` workers until `shutdown`, then drains within the grace period.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        // Cancelled when the grace period is over: running jobs are released.
        let abandon = CancellationToken::new();
        let this = Arc::new(self);
        for _ in 0..this.settings.workers.max(1) {
            let (this, shutdown, abandon) = (this.clone(), shutdown.clone(), abandon.clone());
            tracker.spawn(async move { this.worker(shutdown, abandon).await });
        }
        tracker.close();
        shutdown.cancelled().await;
        let running = this.running.load(Ordering::Relaxed);
        if running > 0 {
            tracing::info!(
                running,
                grace_s = this.settings.shutdown_grace.as_secs_f64(),
                "stopping: no new claims; waiting for running jobs"
            );
        }
        if tokio::time::timeout(this.settings.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = this.running.load(Ordering::Relaxed),
                "grace period over; releasing running jobs"
            );
            abandon.cancel();
            // Releasing is one quick statement per job; do not hang on a dead database.
            let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), this.release_unstarted()).await;
    }

    /// One worker: take a claimed job, or claim some, run it, repeat; sleep until something is
    /// due when idle.
    ///
    /// Each worker claims for itself rather than one loop claiming for all: a single claim loop
    /// caps throughput at one claim round trip per job, however many workers wait. A claim takes
    /// up to [`CLAIM_BATCH`] jobs; the worker runs the first and leaves the rest, leases held, in
    /// the runner's `ready` list for its siblings, waking them. One claim per job made the
    /// claim PostgreSQL's costliest statement in a busy cycle: each scan of the due-jobs index
    /// steps over the entries that earlier claims left behind until vacuum removes them.
    async fn worker(&self, shutdown: CancellationToken, abandon: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Some(job) = self.take_ready() {
                self.run_counted(job, &abandon).await;
                continue;
            }
            // Backpressure: while a full round of requests waits for a slot, a job claimed now
            // would only wait behind them, its lease held, where another daemon sharing the
            // database could have run it.
            if self.ctx.client.requests_backlogged() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.ctx.client.request_slot_taken() => {}
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.settings.idle_poll) => {}
                }
                continue;
            }
            let now = Utc::now();
            let batch = CLAIM_BATCH.min(self.settings.workers.max(1)) as u32;
            match self
                .ctx
                .store
                .claim(&self.owner, now, self.settings.lease, batch)
                .await
            {
                Ok(jobs) if !jobs.is_empty() => {
                    // A full claim may have left more due jobs behind; a short one took all.
                    let more = jobs.len() as u32 == batch;
                    let mut jobs = jobs.into_iter();
                    let first = jobs.next();
                    let rest: Vec<Job> = jobs.collect();
                    if !rest.is_empty() {
                        let n = rest.len();
                        self.ready
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .extend(rest);
                        for _ in 0..n {
                            self.wake.notify_one();
                        }
                    }
                    // A worker whose claim came back full wakes one idle sibling to claim
                    // again, so a burst of new jobs spreads over every worker within a few
                    // claims. After a short claim, a sibling woken to claim would find
                    // nothing: on the cycle bench such empty claims, each followed by a
                    // `next_wake`, were a tenth of PostgreSQL's work.
                    if more {
                        self.wake.notify_one();
                    }
                    if let Some(job) = first {
                        self.run_counted(job, &abandon).await;
                    }
                }
                Ok(_) => {
                    // One idle worker (the timekeeper) sleeps until the next job is due; the
                    // others sleep until woken. When every idle worker slept until the same
                    // due time, a retry's `run_at` woke them all to race for one job: on the
                    // cycle bench, thousands of empty claims, each with its `next_wake`.
                    let timekeeper = !self.timekeeper.swap(true, Ordering::AcqRel);
                    let wait = if timekeeper {
                        match self.ctx.store.next_wake(now).await {
                            Ok(Some(at)) => (at - now).to_std().unwrap_or(Duration::ZERO),
                            _ => self.settings.idle_poll,
                        }
                        .clamp(Duration::from_millis(5), self.settings.idle_poll)
                    } else {
                        self.settings.idle_poll
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = self.wake.notified() => {}
                        _ = self.keep_time.notified(), if timekeeper => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                    if timekeeper {
                        // Whoever next finds nothing to claim keeps time from here.
                        self.timekeeper.store(false, Ordering::Release);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim jobs; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    fn take_ready(&self) -> Option<Job> {
        self.ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    }

    async fn run_counted(&self, job: Job, abandon: &CancellationToken) {
        self.running.fetch_add(1, Ordering::Relaxed);
        self.run_one(job, abandon.clone()).await;
        self.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// Jobs claimed but never started (shutdown came first) go back to the queue at once,
    /// not after their lease runs out.
    async fn release_unstarted(&self) {
        let left: Vec<Job> = self
            .ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
            .collect();
        for job in left {
            if let Err(e) = self
                .ctx
                .store
                .release(&job, Utc::now(), Some("shutdown"))
                .await
            {
                tracing::warn!(error = %e, job_id = job.id, "cannot release an unstarted job; its lease will expire");
            }
        }
    }

    async fn run_one(&self, job: Job, abandon: CancellationToken) {
        let span = match job.kind {
            JobKind::PollSignals => {
                // The owner is looked up by the job; it records `user_id` into this span.
                tracing::info_span!("job", id = job.id, kind = job.kind.as_str(),
                    vehicle_id = %job.subject, user_id = tracing::field::Empty)
            }
            JobKind::SyncConnections => {
                tracing::info_span!("job", id = job.id, kind = job.kind.as_str(), user_id = %job.subject)
            }
            JobKind::DiscoverUsers => {
                tracing::info_span!("job", id = job.id, kind = job.kind.as_str())
            }
        };
        async {
            let started = Instant::now();
            let heartbeat = self.heartbeat(&job);
            let result = tokio::select! {
                r = jobs::run(&self.ctx, &job) => Some(r),
                _ = heartbeat => Some(Err(JobError::Store(StoreError::LeaseLost { job_id: job.id }))),
                _ = abandon.cancelled() => None,
            };
            let outcome = self.settle(&job, result).await;
            if !matches!(
                outcome,
                JobOutcome::Done | JobOutcome::Dead | JobOutcome::Lost
            ) {
                // The job is open again (a retry, a deferral, a status wait, a release), due
                // perhaps before the time the timekeeper sleeps until: it looks again.
                self.keep_time.notify_one();
            }
            self.stats.record(outcome);
            events::job_finished(job.kind, outcome, started.elapsed());
        }
        .instrument(span)
        .await
    }

    /// Extends the lease every third of its length; returns only if the lease was lost.
    async fn heartbeat(&self, job: &Job) {
        let every = self.settings.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            match self
                .ctx
                .store
                .extend_lease(job, Utc::now() + chrono_dur(self.settings.lease))
                .await
            {
                Ok(true) => {}
                Ok(false) => return,
                // A database hiccup: the lease still has two thirds to run.
                Err(e) => tracing::warn!(error = %e, "cannot extend lease"),
            }
        }
    }

    /// Records what happened to a job; returns the outcome label for metrics.
    async fn settle(&self, job: &Job, result: Option<Result<jobs::Done, JobError>>) -> JobOutcome {
        let store = &self.ctx.store;
        let now = Utc::now();
        let result = match result {
            None => {
                self.release(job, "shutdown").await;
                return JobOutcome::Released;
            }
            Some(r) => r,
        };
        let err = match result {
            Ok(done) => {
                tracing::info!(%done, "job done");
                return JobOutcome::Done;
            }
            Err(JobError::Store(StoreError::LeaseLost { .. })) => {
                tracing::warn!("lease lost (another worker took the job over); result discarded");
                return JobOutcome::Lost;
            }
            Err(JobError::Store(e)) => {
                // The database failed under us: retry like any transient failure.
                return self.retry_or_kill(job, &e.to_string(), None).await;
            }
            Err(JobError::Api(e)) => e,
        };
        let request_id = err.request_id.as_deref();
        match err.action(now) {
            Action::Retry | Action::Reauthenticate => {
                self.retry_or_kill(job, &err.to_string(), request_id).await
            }
            Action::RetryLong => {
                // The carmaker's own limit: jump straight to the longest backoff.
                self.retry_at(job, self.settings.retry.max, &err.to_string(), request_id)
                    .await
            }
            Action::RetryAt(at) if job.kind == JobKind::PollSignals => {
                // 429 RATE_LIMIT/VEHICLE: Retry-After is the floor; each consecutive 429 from
                // this vehicle (counted in the database) waits longer.
                self.defer_throttled(job, at, &err.to_string()).await;
                JobOutcome::Deferred
            }
            Action::RetryAt(at) => {
                self.defer(job, at, &err.to_string()).await;
                JobOutcome::Deferred
            }
            Action::PauseApp(until) => {
                if !matches!(err.kind, crate::smartcar::ErrorKind::Paused(_)) {
                    // Store it so every daemon and a restart honour it.
                    if let Err(e) = store
                        .set_app_pause(until, &err.to_string(), request_id)
                        .await
                    {
                        tracing::warn!(error = %e, "cannot store the app pause");
                    }
                }
                self.ctx.client.pause_until(until);
                self.defer(job, until, &err.to_string()).await;
                JobOutcome::Deferred
            }
            Action::WaitForToken(at) => {
                self.defer(job, at, &err.to_string()).await;
                JobOutcome::Deferred
            }
            Action::Permanent(problem) if job.kind == JobKind::PollSignals => {
                let update =
                    vehicle_status::status_for(problem, &err, now, self.ctx.allowance.as_ref());
                tracing::warn!(error = %err, status = update.status.as_str(),
                    blocked_until = ?update.blocked_until, "vehicle cannot be polled");
                match store
                    .finish_vehicle_status(job, &job.subject, &update)
                    .await
                {
                    Ok(()) => JobOutcome::VehicleStatus,
                    Err(e) => self.retry_or_kill(job, &e.to_string(), None).await,
                }
            }
            Action::Permanent(_) | Action::Bug => {
                tracing::error!(error = %err, request_id,
                    "job failed permanently (a bug on our side or a resource that is gone)");
                self.kill(job, &err.to_string(), request_id).await;
                JobOutcome::Dead
            }
        }
    }

    async fn retry_or_kill(&self, job: &Job, error: &str, request_id: Option<&str>) -> JobOutcome {
        // Failures since the job last made progress: discovery, the one job that records
        // progress (page by page), may have reset its count since the claim.
        let attempts = match job.kind {
            JobKind::DiscoverUsers => self
                .ctx
                .store
                .attempts_now(job)
                .await
                .ok()
                .flatten()
                .unwrap_or(job.attempts),
            _ => job.attempts,
        };
        let failures = attempts.max(0) as u32;
        if !self.settings.retry.may_retry(failures) {
            tracing::error!(
                error,
                request_id,
                attempts = failures + 1,
                "job failed for the last time"
            );
            self.kill(job, error, request_id).await;
            return JobOutcome::Dead;
        }
        let delay = self.settings.retry.delay(failures);
        self.retry_at(job, delay, error, request_id).await
    }

    async fn retry_at(
        &self,
        job: &Job,
        delay: Duration,
        error: &str,
        request_id: Option<&str>,
    ) -> JobOutcome {
        let at = Utc::now() + chrono_dur(delay);
        tracing::warn!(error, request_id, attempt = job.attempts + 1, retry_at = %at, "job failed; will retry");
        if let Err(e) = self.ctx.store.retry(job, at, error, request_id).await {
            tracing::warn!(error = %e, "cannot record the retry; the lease will expire and the job run again");
        }
        JobOutcome::Retry
    }

    async fn defer(&self, job: &Job, at: chrono::DateTime<Utc>, why: &str) {
        tracing::info!(until = %at, reason = why, "job deferred (no attempt used)");
        if let Err(e) = self.ctx.store.release(job, at, Some(why)).await {
            tracing::warn!(error = %e, "cannot defer the job; the lease will expire and the job run again");
        }
    }

    async fn defer_throttled(&self, job: &Job, floor: chrono::DateTime<Utc>, why: &str) {
        let now = Utc::now();
        let retry_after = (floor - now).to_std().unwrap_or(Duration::ZERO);
        let max = self.settings.max_retry_after;
        let note = format!("throttled: {why}");
        let result = self
            .ctx
            .store
            .defer_throttled(
                job,
                &job.subject,
                |streak| now + chrono_dur(retry::throttle_wait(retry_after, streak, max)),
                &note,
            )
            .await;
        match result {
            Ok((streak, until)) => tracing::info!(until = %until, streak, reason = why,
                "vehicle throttled: poll deferred (no attempt used)"),
            Err(e) => tracing::warn!(error = %e,
                "cannot defer the throttled job; the lease will expire and the job run again"),
        }
    }

    async fn kill(&self, job: &Job, error: &str, request_id: Option<&str>) {
        if let Err(e) = self.ctx.store.kill(job, error, request_id).await {
            tracing::warn!(error = %e, "cannot mark the job dead");
        }
    }

    async fn release(&self, job: &Job, why: &str) {
        if let Err(e) = self.ctx.store.release(job, Utc::now(), Some(why)).await {
            tracing::warn!(job_id = job.id, error = %e, "cannot release the job; its lease will expire");
        }
    }
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
