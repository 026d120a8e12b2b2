//! Group commit: several polls' "samples + job done" in one database transaction.
//!
//! One commit per poll held PostgreSQL to a few thousand samples/s per connection and the
//! no-limit cycle to about a third of its bound: every poll paid a commit (an fsync on
//! PostgreSQL; SQLite's single writer lock on SQLite) and a pool round trip of its own.
//! [`Store::finish_poll`] now queues the poll; whoever finds a flush slot free takes every queued
//! poll (up to [`MAX_BATCH`]) and commits them together. Nothing waits on a timer: a poll is
//! committed by the next flush that starts, so its delay is at most the flushes already running
//! plus its own (each at most `MAX_BATCH` polls), whatever those take: a few milliseconds on
//! cores with time to spare. `group_commit_delay_seconds` measures it, poll by poll.
//!
//! Architecture rule 1 holds per job: the batch's first statement completes every job of it in
//! one fenced `UPDATE … RETURNING`, and a job whose lease was lost (not returned) is left out
//! before anything of it is written - it gets [`StoreError::LeaseLost`] - while the others in the
//! batch still commit. The rest is a handful of set-based statements whatever the batch size (one
//! ingest for every kept poll's samples and statuses, one vehicles update): a batch that ran each
//! poll's statements in turn only moved onto one connection what had run on eight. Any error
//! rolls the whole batch back and every poll of it is retried alone, in its own transaction, so
//! one poll's failure is reported to that poll only.
//!
//! The flush runs in a task of its own (`Pool::run_apart`; on SQLite on the writer thread, so
//! that it holds the one writer no longer than its statements take): a caller dropped mid-flush
//! (a job abandoned at shutdown) cannot roll back the other callers' polls.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use tokio::sync::{Semaphore, oneshot};

use super::db::Backend;
use super::{Job, NewSample, PlanRecord, PollOutcome, PollResult, SignalState, Store, StoreError};

/// The most polls one transaction commits.
///
/// Large enough that a flush takes the whole queue when commits fall behind. At 32, on cores
/// too busy to keep up, nearly every flush was full and polls queued behind several flushes: on
/// the no-limit cycle bench a poll's commit delay (the longest of each flush, median) was 280 to
/// 320 ms against flushes of 45 to 100 ms, and the workers waiting for those commits were not
/// sending requests. At 128 the delay halved (115 to 165 ms) and the cycle ran faster in 7 of 9
/// pairs, as fast in one (PostgreSQL 0.451 against 0.431 on average, SQLite 0.463 against
/// 0.449). A batch's statements are set-based, so a larger batch costs more rows, not more
/// round trips.
pub(crate) const MAX_BATCH: usize = 128;

type Reply = oneshot::Sender<Result<PollOutcome, StoreError>>;

struct Request {
    ticket: u64,
    /// When the poll was queued: its commit delay runs from here.
    queued: Instant,
    job: Job,
    poll: PollResult,
    reply: Reply,
}

/// The queue of polls waiting for a commit, and the flush slots.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    pending: Mutex<Vec<Request>>,
    tickets: AtomicU64,
    /// Flushes that may run at once: 1 on SQLite (one writer at a time anyway), 3 on
    /// PostgreSQL (batches build while others commit). Three rather than two, on the no-limit
    /// cycle bench with busy cores: the longest poll delay of each commit fell from a median of
    /// 121–209 ms to 92–131 ms in six pairs, and the cycle ran faster in four of them (0.415
    /// against 0.399 on average).
    slots: Semaphore,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("job", &self.job.id)
            .finish()
    }
}

impl GroupCommit {
    pub(crate) fn new(backend: Backend) -> Arc<Self> {
        let slots = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => 3,
        };
        Arc::new(GroupCommit {
            pending: Mutex::new(Vec::new()),
            tickets: AtomicU64::new(0),
            slots: Semaphore::new(slots),
        })
    }

    fn push(&self, r: Request) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(r);
    }

    fn is_pending(&self, ticket: u64) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|r| r.ticket == ticket)
    }

    fn take(&self) -> Vec<Request> {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = pending.len().min(MAX_BATCH);
        pending.drain(..n).collect()
    }
}

impl Store {
    /// Stores a poll's samples and statuses, marks the vehicle polled and connected, and
    /// completes the job — committed together, in one transaction shared with the other polls
    /// finishing at the same moment (see the module docs). On a lost lease nothing of this poll
    /// is written.
    pub async fn finish_poll(
        &self,
        job: &Job,
        poll: &PollResult,
    ) -> Result<PollOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        let ticket = self.group.tickets.fetch_add(1, Ordering::Relaxed);
        self.group.push(Request {
            ticket,
            queued: Instant::now(),
            job: job.clone(),
            poll: poll.clone(),
            reply,
        });
        loop {
            let slot = self
                .group
                .slots
                .acquire()
                .await
                .map_err(|_| StoreError::Corrupt("group commit closed".into()))?;
            if !self.group.is_pending(ticket) {
                // Taken by a flush that has run or is running: its reply comes.
                break;
            }
            let batch = self.group.take();
            let store = self.clone();
            // A task of its own: dropping this caller must not roll back the others' polls.
            let _ = self
                .pool
                .run_apart(async move { store.flush(batch).await })
                .await;
            drop(slot);
        }
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Corrupt("group commit dropped the poll".into())))
    }

    async fn flush(&self, batch: Vec<Request>) {
        let started = Instant::now();
        let size = batch.len();
        let mut delays = Vec::with_capacity(size);
        match self.commit_batch(&batch).await {
            Ok(results) => {
                let committed = Instant::now();
                for (r, result) in batch.into_iter().zip(results) {
                    delays.push(committed.duration_since(r.queued));
                    let _ = r.reply.send(result);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, size, "group commit failed; committing its polls one by one");
                for r in batch {
                    let result = self.commit_one(&r.job, &r.poll).await;
                    delays.push(r.queued.elapsed());
                    let _ = r.reply.send(result);
                }
            }
        }
        crate::events::group_commit(started.elapsed(), &delays);
    }

    /// One transaction for the whole batch, a handful of statements whatever its size: the
    /// jobs completed in one fenced UPDATE (a job whose lease was lost is left out, and so are
    /// its samples), the samples and statuses of the others in one ingest, the vehicles marked
    /// polled in one UPDATE.
    async fn commit_batch(
        &self,
        batch: &[Request],
    ) -> Result<Vec<Result<PollOutcome, StoreError>>, StoreError> {
        // One open poll job per vehicle: rows are counted per vehicle. A batch that breaks the
        // rule (a job retaken after a lost lease, still finishing) is committed poll by poll.
        let mut vehicles = HashSet::new();
        if !batch
            .iter()
            .all(|r| vehicles.insert(r.poll.vehicle_id.as_str()))
        {
            return Err(StoreError::Corrupt(
                "two polls of one vehicle in a batch".into(),
            ));
        }
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        tx.plan_per_execution().await?;
        let jobs: Vec<&Job> = batch.iter().map(|r| &r.job).collect();
        let done = tx.complete_fenced_many(&jobs, now).await?;
        let kept: Vec<&Request> = batch
            .iter()
            .filter(|r| done.contains(&(r.job.id, r.job.lease_owner.clone())))
            .collect();
        let samples: Vec<NewSample> = kept
            .iter()
            .flat_map(|r| r.poll.samples.iter().cloned())
            .collect();
        let statuses: Vec<SignalState> = kept
            .iter()
            .flat_map(|r| r.poll.statuses.iter().cloned())
            .collect();
        tx.plan_cached().await?;
        let inserted = tx.ingest_by_vehicle(&samples, &statuses, now).await?;
        let polls: Vec<&PollResult> = kept.iter().map(|r| &r.poll).collect();
        tx.plan_per_execution().await?;
        tx.mark_polled_many(&polls).await?;
        let plans: Vec<&PlanRecord> = polls.iter().filter_map(|p| p.plan.as_ref()).collect();
        tx.save_plans(&plans, now).await?;
        tx.commit().await?;
        Ok(batch
            .iter()
            .map(|r| {
                if done.contains(&(r.job.id, r.job.lease_owner.clone())) {
                    Ok(PollOutcome {
                        samples_inserted: inserted.get(&r.poll.vehicle_id).copied().unwrap_or(0),
                    })
                } else {
                    Err(StoreError::LeaseLost { job_id: r.job.id })
                }
            })
            .collect())
    }

    async fn commit_one(&self, job: &Job, poll: &PollResult) -> Result<PollOutcome, StoreError> {
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        tx.plan_per_execution().await?;
        tx.complete_fenced(job, now).await?;
        let samples_inserted = tx.ingest(&poll.samples, &poll.statuses, now).await?;
        tx.mark_polled(&poll.vehicle_id, poll.polled_at).await?;
        let plans: Vec<&PlanRecord> = poll.plan.iter().collect();
        tx.save_plans(&plans, now).await?;
        tx.commit().await?;
        Ok(PollOutcome { samples_inserted })
    }
}
