//! `sync-once`: one full cycle (discovery, every user's connections, every vehicle's signals)
//! on the same queue the service uses, phase after phase, with an optional deadline that makes
//! it always end.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Daemon;
use super::housekeeping::save_token_audit;
use crate::queue::RunStats;
use crate::store::{JobKind, OpenJob, StoreError};

impl Daemon {
    /// One full cycle, in order: discovery (if on), every known user's connections, then every
    /// connected vehicle's signals. Returns when its jobs are done.
    pub async fn sync_once(
        &self,
        shutdown: &CancellationToken,
        progress: impl Fn(&str),
    ) -> anyhow::Result<CycleReport> {
        self.sync_once_until(shutdown, None, progress).await
    }

    /// [`Daemon::sync_once`] that always ends: once `deadline` has passed since the start, or
    /// as soon as every open job waits beyond it (a throttled vehicle deferred for minutes, an
    /// app pause), it stops claiming and reports the jobs left open
    /// ([`CycleReport::out_of_time`], [`CycleReport::deferred`]). Jobs running at that moment
    /// get `queue.shutdown_grace` to finish, as on SIGTERM. Nothing is lost: the open jobs stay
    /// in the queue, due when their wait ends.
    pub async fn sync_once_until(
        &self,
        shutdown: &CancellationToken,
        deadline: Option<Duration>,
        progress: impl Fn(&str),
    ) -> anyhow::Result<CycleReport> {
        let started = Utc::now();
        // Any duration is accepted; one beyond the clocks' range means "no deadline in practice".
        let deadline = deadline.map(|d| {
            let far = Duration::from_secs(100 * 365 * 86_400);
            let now = tokio::time::Instant::now();
            (
                now.checked_add(d)
                    .or_else(|| now.checked_add(far))
                    .unwrap_or(now),
                chrono::Duration::from_std(d)
                    .ok()
                    .and_then(|d| started.checked_add_signed(d))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            )
        });
        let stop_workers = CancellationToken::new();
        let runner = self.runner();
        let stats = runner.stats();
        let workers = tokio::spawn(runner.run(stop_workers.clone()));
        let result = async {
            use Phase::OutOfTime;
            if self.config.schedule.discover_users {
                outlasting(shutdown, || {
                    self.store.enqueue(JobKind::DiscoverUsers, "", Utc::now())
                })
                .await?;
                let p = "discovering users";
                if self
                    .wait_for(JobKind::DiscoverUsers, shutdown, deadline, &progress, p)
                    .await?
                    == OutOfTime
                {
                    return Ok(OutOfTime);
                }
            }
            // Users synced earlier in this cycle (just discovered) are not synced twice. Their
            // syncs must have finished first: on PostgreSQL an INSERT … SELECT racing a commit
            // reads the old `last_synced_at` and then finds no open job to conflict with.
            let p = "syncing new users";
            if self
                .wait_for(JobKind::SyncConnections, shutdown, deadline, &progress, p)
                .await?
                == OutOfTime
            {
                return Ok(OutOfTime);
            }
            outlasting(shutdown, || {
                self.store
                    .enqueue_syncs_for_all_users(Utc::now(), Some(started))
            })
            .await?;
            self.wake.notify_one();
            let p = "syncing connections";
            if self
                .wait_for(JobKind::SyncConnections, shutdown, deadline, &progress, p)
                .await?
                == OutOfTime
            {
                return Ok(OutOfTime);
            }
            // Vehicles first polled by their sync in this cycle are not polled twice (once
            // those polls are over, for the same reason as above).
            let p = "polling new vehicles";
            if self
                .wait_for(JobKind::PollSignals, shutdown, deadline, &progress, p)
                .await?
                == OutOfTime
            {
                return Ok(OutOfTime);
            }
            outlasting(shutdown, || {
                self.store
                    .enqueue_polls_for_pollable(Utc::now(), Some(started))
            })
            .await?;
            self.wake.notify_one();
            let p = "polling signals";
            self.wait_for(JobKind::PollSignals, shutdown, deadline, &progress, p)
                .await
        }
        .await;
        stop_workers.cancel();
        let _ = workers.await;
        save_token_audit(&self.store, self.client.tokens().audit()).await;
        let out_of_time = result? == Phase::OutOfTime;
        let (deferred, open_jobs) = if out_of_time {
            (
                outlasting(shutdown, || self.store.open_job_list(DEFERRED_LISTED)).await?,
                outlasting(shutdown, || self.store.open_jobs(None)).await?,
            )
        } else {
            (Vec::new(), 0)
        };
        Ok(CycleReport {
            started,
            finished: Utc::now(),
            dead: outlasting(shutdown, || self.store.dead_since(started)).await?,
            stats,
            out_of_time,
            open_jobs,
            deferred,
        })
    }

    async fn wait_for(
        &self,
        kind: JobKind,
        shutdown: &CancellationToken,
        deadline: Option<(tokio::time::Instant, DateTime<Utc>)>,
        progress: &impl Fn(&str),
        phase: &str,
    ) -> anyhow::Result<Phase> {
        self.wake.notify_one();
        // Poll often (a COUNT on the open-jobs index is cheap) so a phase ends promptly; report
        // progress at a human pace.
        let mut reported: Option<tokio::time::Instant> = None;
        loop {
            // A database restart mid-cycle is waited out (the pool reconnects), not fatal.
            let open = match self.store.open_jobs(Some(kind)).await {
                Ok(n) => n,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "cannot count open jobs; retrying");
                    -1
                }
                Err(e) => return Err(e.into()),
            };
            let due = reported.is_none_or(|t| t.elapsed() >= Duration::from_millis(250));
            if open == 0 || (open > 0 && due) {
                progress(&format!("{phase}: {open} jobs open"));
                reported = Some(tokio::time::Instant::now());
            }
            if open == 0 {
                return Ok(Phase::Done);
            }
            if let Some((at, at_utc)) = deadline {
                if tokio::time::Instant::now() >= at {
                    tracing::warn!(phase, open, "sync-once deadline reached: no more claims");
                    return Ok(Phase::OutOfTime);
                }
                // Every open job waits beyond the deadline (a running job's run_at is in the
                // past): waiting longer cannot finish anything.
                if due
                    && let Ok(first) = self.store.open_job_list(1).await
                    && first.first().is_some_and(|j| j.run_at > at_utc)
                {
                    tracing::warn!(
                        phase,
                        open,
                        "every open job waits beyond the sync-once deadline"
                    );
                    return Ok(Phase::OutOfTime);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => anyhow::bail!("interrupted"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
}

/// How long [`outlasting`] keeps retrying one call: a restart of the database server, not an
/// outage (the jobs' own retries cover those, and `sync-once` must end).
const OUTLAST: Duration = Duration::from_secs(60);

/// Runs one of the cycle's own store calls (enqueue a phase's jobs, count what is left),
/// waiting out a database restart: the first use of a pooled connection the restart closed
/// fails with a transient error, and the pool opens a new one for the next try. Transient errors
/// are retried with capped exponential backoff for up to [`OUTLAST`]; any other error, or the
/// last transient one, is returned. Every call passed here is idempotent (an enqueue skips jobs
/// already open), so a try whose commit was not acknowledged is safe to repeat.
async fn outlasting<T, F, Fut>(shutdown: &CancellationToken, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    use backon::BackoffBuilder;
    let started = tokio::time::Instant::now();
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .without_max_times()
        .build();
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && started.elapsed() < OUTLAST => {
                let delay = delays.next().unwrap_or(Duration::from_secs(2));
                tracing::warn!(error = %e, ?delay, "sync-once: database unavailable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("interrupted"),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How a phase of `sync-once` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Done,
    OutOfTime,
}

/// How many of the jobs left open a [`CycleReport`] lists.
const DEFERRED_LISTED: i64 = 50;

/// What `sync-once` did.
#[derive(Debug)]
pub struct CycleReport {
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Jobs that ended dead during the cycle.
    pub dead: i64,
    pub stats: Arc<RunStats>,
    /// The deadline ended the cycle before every job was done.
    pub out_of_time: bool,
    /// Jobs still open when the cycle ended (0 unless `out_of_time`).
    pub open_jobs: i64,
    /// The first of them, soonest first, with why and until when they wait.
    pub deferred: Vec<OpenJob>,
}
