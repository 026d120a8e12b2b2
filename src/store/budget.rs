//! The shared rate budget's bookkeeping: live processes (their heartbeats) and the last
//! application-wide throttle. One small transaction a second per process, never one per call.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::db::args;
use super::{Store, StoreError};

/// What one process reports with its heartbeat.
#[derive(Debug, Clone)]
pub struct DaemonBeat {
    /// Unique per process; also the prefix of every lease it takes.
    pub daemon_id: String,
    /// `run` or `sync-once`.
    pub kind: &'static str,
    pub host: String,
    pub pid: i64,
    pub started_at: DateTime<Utc>,
    /// API calls sent so far (rate tokens used).
    pub calls: i64,
    pub throttled_app: i64,
    pub throttled_vehicle: i64,
}

/// What every process derives its share of the rate from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetView {
    /// Live processes, this one included.
    pub live: i64,
    /// The last 429 `SMARTCAR_API` any process got, and the fraction of the configured rate the
    /// application was sent at then.
    pub throttled: Option<(DateTime<Utc>, f64)>,
    /// Running jobs of dead processes handed back by this heartbeat.
    pub reclaimed_jobs: u64,
}

/// A live (or just dead) process, for `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonRow {
    pub daemon_id: String,
    pub kind: String,
    pub host: String,
    pub pid: i64,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub calls: i64,
    pub throttled_app: i64,
    pub throttled_vehicle: i64,
}

fn stale_cutoff(now: DateTime<Utc>, stale_after: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::seconds(5))
}

impl Store {
    /// Records `me` as alive at `now`; processes silent for `stale_after` are declared dead:
    /// their rows go, and their running jobs get an expired lease, so any worker retakes them
    /// now (still fenced: a process that was only slow finds its lease gone and writes nothing).
    pub async fn heartbeat(
        &self,
        me: &DaemonBeat,
        now: DateTime<Utc>,
        stale_after: Duration,
    ) -> Result<BudgetView, StoreError> {
        let cutoff = stale_cutoff(now, stale_after);
        let mut tx = self.pool.begin().await?;
        tx.exec(
            "INSERT INTO daemons (daemon_id, kind, host, pid, started_at, heartbeat_at, calls, \
               throttled_app, throttled_vehicle) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (daemon_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, \
               calls = excluded.calls, throttled_app = excluded.throttled_app, \
               throttled_vehicle = excluded.throttled_vehicle",
            args![
                me.daemon_id.as_str(),
                me.kind,
                me.host.as_str(),
                me.pid,
                me.started_at,
                now,
                me.calls,
                me.throttled_app,
                me.throttled_vehicle
            ],
        )
        .await?;
        let dead: Vec<String> = tx
            .all(
                "DELETE FROM daemons WHERE heartbeat_at < $1 RETURNING daemon_id",
                args![cutoff],
            )
            .await?
            .iter()
            .map(|r| r.text("daemon_id"))
            .collect::<Result<_, _>>()?;
        let mut reclaimed_jobs = 0;
        for id in &dead {
            // Lease tokens are `daemon_id:job_id:random`; daemon ids are hex, so no LIKE
            // wildcard can hide in one.
            reclaimed_jobs += tx
                .exec(
                    "UPDATE jobs SET lease_until = $1 WHERE state = 'running' \
                       AND lease_until > $1 AND lease_owner LIKE $2",
                    args![now, format!("{id}:%").as_str()],
                )
                .await?;
        }
        let live = tx
            .all(
                "SELECT COUNT(*) AS n FROM daemons WHERE heartbeat_at >= $1",
                args![cutoff],
            )
            .await?
            .first()
            .map_or(Ok(1), |r| r.int("n"))?;
        let throttled = tx
            .all(
                "SELECT throttled_at, factor_at_throttle FROM rate_budget WHERE id = 1",
                args![],
            )
            .await?
            .first()
            .map(|r| {
                Ok::<_, StoreError>((
                    r.opt_time("throttled_at")?,
                    r.opt_float("factor_at_throttle")?,
                ))
            })
            .transpose()?;
        tx.commit().await?;
        if !dead.is_empty() {
            tracing::warn!(
                dead = ?dead,
                reclaimed_jobs,
                "processes stopped heartbeating: their running jobs are retaken now"
            );
        }
        Ok(BudgetView {
            live: live.max(1),
            throttled: match throttled {
                Some((Some(at), Some(f))) => Some((at, f)),
                _ => None,
            },
            reclaimed_jobs,
        })
    }

    /// Records an application-wide throttle at `factor` of the configured rate, unless another
    /// process recorded one within `dedupe` (one 429 storm is one event, not one per process).
    pub async fn record_app_throttle(
        &self,
        now: DateTime<Utc>,
        factor: f64,
        dedupe: Duration,
    ) -> Result<bool, StoreError> {
        let n = self
            .pool
            .exec(
                "UPDATE rate_budget SET throttled_at = $1, factor_at_throttle = $2 \
                 WHERE id = 1 AND (throttled_at IS NULL OR throttled_at < $3)",
                args![now, factor, stale_cutoff(now, dedupe)],
            )
            .await?;
        Ok(n == 1)
    }

    /// This process stops: its share returns to the others at their next heartbeat.
    pub async fn deregister(&self, daemon_id: &str) -> Result<(), StoreError> {
        self.pool
            .exec("DELETE FROM daemons WHERE daemon_id = $1", args![daemon_id])
            .await?;
        Ok(())
    }

    /// Processes that heartbeated within `stale_after` of `now`.
    pub async fn live_daemons(
        &self,
        now: DateTime<Utc>,
        stale_after: Duration,
    ) -> Result<Vec<DaemonRow>, StoreError> {
        self.pool
            .all(
                "SELECT daemon_id, kind, host, pid, started_at, heartbeat_at, calls, \
                   throttled_app, throttled_vehicle FROM daemons WHERE heartbeat_at >= $1 \
                 ORDER BY started_at, daemon_id",
                args![stale_cutoff(now, stale_after)],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(DaemonRow {
                    daemon_id: r.text("daemon_id")?,
                    kind: r.text("kind")?,
                    host: r.text("host")?,
                    pid: r.int("pid")?,
                    started_at: r.time("started_at")?,
                    heartbeat_at: r.time("heartbeat_at")?,
                    calls: r.int("calls")?,
                    throttled_app: r.int("throttled_app")?,
                    throttled_vehicle: r.int("throttled_vehicle")?,
                })
            })
            .collect()
    }

    /// The last application-wide throttle, if any (for `status`).
    pub async fn last_app_throttle(&self) -> Result<Option<(DateTime<Utc>, f64)>, StoreError> {
        let row = self
            .pool
            .opt(
                "SELECT throttled_at, factor_at_throttle FROM rate_budget WHERE id = 1",
                args![],
            )
            .await?;
        Ok(match row {
            Some(r) => match (
                r.opt_time("throttled_at")?,
                r.opt_float("factor_at_throttle")?,
            ) {
                (Some(at), Some(f)) => Some((at, f)),
                _ => None,
            },
            None => None,
        })
    }
}
