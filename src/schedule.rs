//! The cron schedule: ticks become jobs.
//!
//! tokio-cron-scheduler fires the ticks. It does not replay ticks missed while the daemon was
//! down, and it has an open report of jobs that stop firing under load, so this module keeps
//! the last tick of each schedule in the database and:
//! - at start, catches up once if a tick was missed (a first start counts as missed: a new
//!   install syncs at once);
//! - runs a watchdog that notices a schedule that has not fired for two periods, logs it, and
//!   fires the missed tick itself.
//!
//! A tick is recorded with a compare-and-set, so with several daemons on one database exactly
//! one of them enqueues for a given tick; enqueueing is idempotent on top of that (one open job
//! per kind and subject).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use tokio::sync::Notify;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events;
use crate::store::{JobKind, Store};

/// Parses a 6-field cron expression (seconds first) exactly as tokio-cron-scheduler will.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    if expr.split_whitespace().count() != 6 {
        return Err(format!(
            "{expr:?} must have 6 fields, seconds first (e.g. \"0 */30 * * * *\")"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| format!("{expr:?} is not a cron expression: {e}"))
}

/// The two schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Connections,
    Signals,
}

impl Which {
    pub fn name(self) -> &'static str {
        match self {
            Which::Connections => "connections",
            Which::Signals => "signals",
        }
    }
}

/// One schedule: its expression and what the daemon last saw of it.
struct Entry {
    which: Which,
    cron: Cron,
    expr: String,
    /// The last tick this process saw recorded (by itself or another daemon).
    last_tick: Mutex<Option<DateTime<Utc>>>,
    stalled: std::sync::atomic::AtomicBool,
}

/// The schedule's state, shared with `/readyz` and `status`.
#[derive(Clone)]
pub struct Schedule {
    entries: Arc<[Entry; 2]>,
    store: Store,
    discover_users: bool,
    /// Wakes the worker pool when a tick enqueued work.
    wake: Arc<Notify>,
    /// `[budget]`: with an allowance, a signals tick is the planner's tick.
    allowance: Option<crate::plan::Allowance>,
}

impl Schedule {
    pub fn new(
        connections: &str,
        signals: &str,
        discover_users: bool,
        store: Store,
        wake: Arc<Notify>,
    ) -> Result<Self, String> {
        let entry = |which, expr: &str| -> Result<Entry, String> {
            Ok(Entry {
                which,
                cron: parse_cron(expr)?,
                expr: expr.to_owned(),
                last_tick: Mutex::new(None),
                stalled: std::sync::atomic::AtomicBool::new(false),
            })
        };
        Ok(Schedule {
            entries: Arc::new([
                entry(Which::Connections, connections)?,
                entry(Which::Signals, signals)?,
            ]),
            store,
            discover_users,
            wake,
            allowance: None,
        })
    }

    /// With an allowance, each signals tick enqueues every pollable vehicle without an open
    /// poll at its planned time ([`crate::plan`]) instead of polling the fleet at once.
    pub fn with_allowance(mut self, allowance: Option<crate::plan::Allowance>) -> Self {
        self.allowance = allowance;
        self
    }

    fn entry(&self, which: Which) -> &Entry {
        match which {
            Which::Connections => &self.entries[0],
            Which::Signals => &self.entries[1],
        }
    }

    /// Whether every schedule fired within its last two periods (for `/readyz`).
    pub fn is_firing(&self) -> bool {
        self.entries
            .iter()
            .all(|e| !e.stalled.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Records the tick and, if this call is the one that advanced it, enqueues its jobs.
    /// Returns the number of jobs enqueued.
    pub async fn fire(&self, which: Which, tick_at: DateTime<Utc>) -> anyhow::Result<u64> {
        let entry = self.entry(which);
        if !self.store.record_tick(which.name(), tick_at).await? {
            // Another daemon (or an earlier call) already handled this tick.
            self.remember(entry, tick_at);
            return Ok(0);
        }
        self.remember(entry, tick_at);
        let now = Utc::now();
        let n = match which {
            Which::Connections => {
                let mut n = 0;
                if self.discover_users {
                    self.store.enqueue(JobKind::DiscoverUsers, "", now).await?;
                    n += 1;
                }
                n + self.store.enqueue_syncs_for_all_users(now, None).await?
            }
            Which::Signals => match &self.allowance {
                Some(a) => plan_tick(&self.store, a, now).await?,
                None => self.store.enqueue_polls_for_pollable(now, None).await?,
            },
        };
        events::schedule_fired(which.name(), tick_at, n);
        self.wake.notify_one();
        Ok(n)
    }

    fn remember(&self, entry: &Entry, tick_at: DateTime<Utc>) {
        let mut last = entry.last_tick.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|l| l < tick_at) {
            *last = Some(tick_at);
        }
        entry
            .stalled
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Fires each schedule once if its most recent tick was missed (or never recorded).
    pub async fn catch_up(&self, now: DateTime<Utc>) -> anyhow::Result<()> {
        for entry in self.entries.iter() {
            let due = entry.cron.find_previous_occurrence(&now, true).ok();
            let last = self.store.last_tick(entry.which.name()).await?;
            if let Some(last) = last {
                self.remember(entry, last);
            }
            let missed = match (last, due) {
                (None, _) => true,
                (Some(last), Some(due)) => last < due,
                (Some(_), None) => false,
            };
            if missed {
                let tick = due.unwrap_or(now);
                tracing::info!(schedule = entry.which.name(), last = ?last, tick = %tick,
                    "catching up a missed tick");
                self.fire(entry.which, tick).await?;
            }
        }
        Ok(())
    }

    /// Runs the cron scheduler and the stall watchdog until `shutdown`.
    pub async fn start(
        &self,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<()> {
        let mut sched = JobScheduler::new().await?;
        for entry in self.entries.iter() {
            let this = self.clone();
            let which = entry.which;
            let job = Job::new_async(entry.expr.as_str(), move |_id, _lock| {
                let this = this.clone();
                Box::pin(async move {
                    let now = Utc::now();
                    // The scheduled instant, not "now": two daemons agree on it exactly.
                    let tick = this
                        .entry(which)
                        .cron
                        .find_previous_occurrence(&now, true)
                        .unwrap_or(now);
                    if let Err(e) = this.fire(which, tick).await {
                        tracing::error!(schedule = which.name(), error = %e, "tick failed; the watchdog will retry it");
                    }
                })
            })?;
            sched.add(job).await?;
        }
        sched.start().await?;

        let this = self.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(10));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = interval.tick() => {
                        this.check_stalls(Utc::now()).await;
                    }
                }
            }
            if let Err(e) = sched.shutdown().await {
                tracing::warn!(error = %e, "cron scheduler did not shut down cleanly");
            }
        });
        Ok(())
    }

    /// A schedule whose last tick is two periods old has stalled: say so and fire the missed
    /// tick. Returns the names of the schedules found stalled.
    pub async fn check_stalls(&self, now: DateTime<Utc>) -> Vec<&'static str> {
        let mut stalled = Vec::new();
        for entry in self.entries.iter() {
            let last = *entry.last_tick.lock().unwrap_or_else(|e| e.into_inner());
            let Some(last) = last else { continue };
            let Some(second_next) = entry
                .cron
                .find_next_occurrence(&last, false)
                .ok()
                .and_then(|n| entry.cron.find_next_occurrence(&n, false).ok())
            else {
                continue;
            };
            // A little slack: the scheduler fires at the boundary, not before it.
            if now < second_next + chrono::Duration::seconds(5) {
                continue;
            }
            // Another daemon may be firing it: trust the database before shouting.
            if let Ok(Some(stored)) = self.store.last_tick(entry.which.name()).await
                && stored > last
            {
                self.remember(entry, stored);
                continue;
            }
            entry
                .stalled
                .store(true, std::sync::atomic::Ordering::Relaxed);
            events::schedule_stalled(entry.which.name(), last);
            stalled.push(entry.which.name());
            let tick = entry
                .cron
                .find_previous_occurrence(&now, true)
                .unwrap_or(now);
            if let Err(e) = self.fire(entry.which, tick).await {
                tracing::error!(schedule = entry.which.name(), error = %e, "watchdog tick failed");
            }
        }
        stalled
    }
}

/// The planner's tick: every pollable vehicle with no poll open gets one at its planned time
/// (its phase in its interval, from its budget left, the time left and its state). Returns the
/// polls enqueued. The wait is data: the job's `run_at`.
pub async fn plan_tick(
    store: &Store,
    allowance: &crate::plan::Allowance,
    now: DateTime<Utc>,
) -> anyhow::Result<u64> {
    let (period_start, _) = allowance.period.bounds(now);
    let mut n = 0;
    for c in store.plan_candidates(now, period_start).await? {
        let planned = allowance.plan(
            &crate::plan::VehicleFacts {
                vehicle_id: &c.vehicle_id,
                state: c.state,
                used: c.used,
                last_polled_at: c.last_polled_at,
                last_pushed_at: c.last_pushed_at,
            },
            now,
        );
        if store
            .enqueue_planned_poll(&c.vehicle_id, planned.next_at)
            .await?
        {
            n += 1;
        }
        let interval_ms = i64::try_from(planned.interval.as_millis()).unwrap_or(i64::MAX);
        store
            .save_next_poll(&c.vehicle_id, interval_ms, planned.next_at, now)
            .await?;
    }
    events::polls_planned(n);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_field_expressions_are_required() {
        assert!(parse_cron("0 */30 * * * *").is_ok());
        assert!(parse_cron("*/30 * * * *").is_err());
        assert!(parse_cron("0 61 * * * *").is_err());
    }

    #[test]
    fn the_previous_occurrence_is_the_tick_time() {
        let cron = parse_cron("0 */30 * * * *").unwrap();
        let now = DateTime::parse_from_rfc3339("2026-01-01T10:44:10Z")
            .unwrap()
            .with_timezone(&Utc);
        let prev = cron.find_previous_occurrence(&now, true).unwrap();
        assert_eq!(prev.to_rfc3339(), "2026-01-01T10:30:00+00:00");
    }
}
