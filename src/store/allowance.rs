//! The per-vehicle allowance's bookkeeping: calls counted per vehicle and period, what the
//! planner knows of each vehicle, and the webhook subscriptions kept.
//!
//! A call is counted **before** it is sent, by a conditional increment that refuses past the
//! allowance: every daemon on the database shares the count, so two of them can never both
//! spend the last call. Calls the poll then did not need (it never left: an app pause, no
//! token) are given back; calls it needed beyond the first (a retry after a 401, more pages)
//! are added.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::db::{Tx, args};
use super::{Store, StoreError};

/// What the planner writes after a poll.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRecord {
    pub vehicle_id: String,
    pub state: crate::plan::VehicleState,
    /// Odometer and location as the poll read them.
    pub fingerprint: String,
    pub interval_ms: i64,
    pub next_poll_at: DateTime<Utc>,
}

/// A vehicle the planner tick may enqueue a poll for (pollable, no poll open).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanCandidate {
    pub vehicle_id: String,
    pub state: crate::plan::VehicleState,
    pub used: u32,
    pub last_polled_at: Option<DateTime<Utc>>,
    pub last_pushed_at: Option<DateTime<Utc>>,
}

/// One vehicle in `smartcar-sync budget`.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRow {
    pub vehicle_id: String,
    pub status: String,
    pub state: crate::plan::VehicleState,
    pub used: u32,
    pub last_polled_at: Option<DateTime<Utc>>,
    pub last_pushed_at: Option<DateTime<Utc>>,
    pub interval_ms: Option<i64>,
    /// The open poll's run_at, else the plan's.
    pub next_poll_at: Option<DateTime<Utc>>,
    pub blocked_until: Option<DateTime<Utc>>,
}

fn count(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

impl Tx {
    /// Records what the planner decided after each poll of a group commit, in one statement and
    /// in the polls' own transaction, so a plan is the one of the readings committed with it.
    /// One plan per vehicle (a batch has one poll per vehicle).
    pub(crate) async fn save_plans(
        &mut self,
        plans: &[&PlanRecord],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if plans.is_empty() {
            return Ok(());
        }
        const UPSERT: &str = " ON CONFLICT (vehicle_id) DO UPDATE SET state = excluded.state, \
               fingerprint = excluded.fingerprint, interval_ms = excluded.interval_ms, \
               next_poll_at = excluded.next_poll_at, updated_at = excluded.updated_at";
        match self {
            Tx::Sqlite(..) => {
                let rows: Vec<(&str, &str, &str, i64, String)> = plans
                    .iter()
                    .map(|p| {
                        (
                            p.vehicle_id.as_str(),
                            p.state.as_str(),
                            p.fingerprint.as_str(),
                            p.interval_ms,
                            super::time::to_text(p.next_poll_at),
                        )
                    })
                    .collect();
                let json = serde_json::to_string(&rows)
                    .map_err(|e| StoreError::Corrupt(format!("plans as JSON: {e}")))?;
                // `WHERE true`: SQLite's upsert after a SELECT needs it to parse.
                let sql = format!(
                    "INSERT INTO vehicle_plan \
                     (vehicle_id, state, fingerprint, interval_ms, next_poll_at, updated_at) \
                     SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                            json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
                            json_extract(value, '$[4]'), $2 \
                     FROM json_each($1) WHERE true{UPSERT}"
                );
                self.exec(&sql, args![json.as_str(), now]).await?;
            }
            Tx::Postgres(t) => {
                let ids: Vec<&str> = plans.iter().map(|p| p.vehicle_id.as_str()).collect();
                let states: Vec<&str> = plans.iter().map(|p| p.state.as_str()).collect();
                let prints: Vec<&str> = plans.iter().map(|p| p.fingerprint.as_str()).collect();
                let intervals: Vec<i64> = plans.iter().map(|p| p.interval_ms).collect();
                let next: Vec<DateTime<Utc>> = plans.iter().map(|p| p.next_poll_at).collect();
                let sql = format!(
                    "INSERT INTO vehicle_plan \
                     (vehicle_id, state, fingerprint, interval_ms, next_poll_at, updated_at) \
                     SELECT v, s, f, i, n, $6 FROM UNNEST($1::text[], $2::text[], $3::text[], \
                                                         $4::int8[], $5::timestamptz[]) \
                       AS u(v, s, f, i, n){UPSERT}"
                );
                sqlx::query(&sql)
                    .bind(ids)
                    .bind(states)
                    .bind(prints)
                    .bind(intervals)
                    .bind(next)
                    .bind(now)
                    .execute(&mut **t)
                    .await?;
            }
        }
        Ok(())
    }
}

/// What a poll needs to know before it calls, read in one query: the vehicle's owner (for
/// `sc-user-id`), its calls counted in the period, its last planned state and fingerprint, and
/// when a webhook last pushed its readings. One round trip instead of four: on SQLite each
/// statement is a hop to the connection's thread and back, and the no-limit cycle is CPU-bound.
#[derive(Debug, Clone, PartialEq)]
pub struct PollContext {
    pub user_id: String,
    pub calls_used: u32,
    pub plan: Option<(crate::plan::VehicleState, Option<String>)>,
    pub last_pushed_at: Option<DateTime<Utc>>,
}

impl Store {
    /// The [`PollContext`] of a vehicle, with its calls counted in the period starting
    /// `period_start`; `None` if the vehicle is no longer known.
    pub async fn poll_context(
        &self,
        vehicle_id: &str,
        period_start: DateTime<Utc>,
    ) -> Result<Option<PollContext>, StoreError> {
        let row = self
            .pool
            .opt(
                "SELECT v.user_id, v.last_pushed_at, c.calls, p.state, p.fingerprint \
                 FROM vehicles v \
                 LEFT JOIN vehicle_calls c \
                   ON c.vehicle_id = v.vehicle_id AND c.period_start = $2 \
                 LEFT JOIN vehicle_plan p ON p.vehicle_id = v.vehicle_id \
                 WHERE v.vehicle_id = $1",
                args![vehicle_id, period_start],
            )
            .await?;
        row.map(|r| {
            Ok(PollContext {
                user_id: r.text("user_id")?,
                calls_used: r.opt_int("calls")?.map_or(0, count),
                plan: r
                    .opt_text("state")?
                    .map(|s| {
                        Ok::<_, StoreError>((
                            crate::plan::VehicleState::parse(&s),
                            r.opt_text("fingerprint")?,
                        ))
                    })
                    .transpose()?,
                last_pushed_at: r.opt_time("last_pushed_at")?,
            })
        })
        .transpose()
    }
}

impl Store {
    /// Adds `n` (possibly negative: calls reserved but not sent) to a vehicle's count.
    pub async fn add_calls(
        &self,
        vehicle_id: &str,
        period_start: DateTime<Utc>,
        n: i64,
    ) -> Result<(), StoreError> {
        if n == 0 {
            return Ok(());
        }
        self.pool
            .exec(
                "INSERT INTO vehicle_calls (vehicle_id, period_start, calls) \
                 VALUES ($1, $2, CASE WHEN $3 > 0 THEN $3 ELSE 0 END) \
                 ON CONFLICT (vehicle_id, period_start) DO UPDATE \
                 SET calls = CASE WHEN vehicle_calls.calls + $3 > 0 \
                   THEN vehicle_calls.calls + $3 ELSE 0 END",
                args![vehicle_id, period_start, n],
            )
            .await?;
        Ok(())
    }

    /// Calls counted for one vehicle in a period.
    pub async fn calls_used(
        &self,
        vehicle_id: &str,
        period_start: DateTime<Utc>,
    ) -> Result<u32, StoreError> {
        let row = self
            .pool
            .opt(
                "SELECT calls FROM vehicle_calls WHERE vehicle_id = $1 AND period_start = $2",
                args![vehicle_id, period_start],
            )
            .await?;
        Ok(row.map(|r| r.int("calls")).transpose()?.map_or(0, count))
    }

    /// Calls counted per vehicle in a period.
    pub async fn calls_in_period(
        &self,
        period_start: DateTime<Utc>,
    ) -> Result<HashMap<String, u32>, StoreError> {
        let rows = self
            .pool
            .all(
                "SELECT vehicle_id, calls FROM vehicle_calls WHERE period_start = $1",
                args![period_start],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.text("vehicle_id")?, count(r.int("calls")?))))
            .collect()
    }

    /// Records a plan's interval and next poll without touching the state (the planner tick).
    pub async fn save_next_poll(
        &self,
        vehicle_id: &str,
        interval_ms: i64,
        next_poll_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.pool
            .exec(
                "INSERT INTO vehicle_plan (vehicle_id, interval_ms, next_poll_at, updated_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (vehicle_id) DO UPDATE SET interval_ms = excluded.interval_ms, \
                   next_poll_at = excluded.next_poll_at, updated_at = excluded.updated_at",
                args![vehicle_id, interval_ms, next_poll_at, now],
            )
            .await?;
        Ok(())
    }

    /// Pollable vehicles with no poll open, with what the planner needs to know of them.
    pub async fn plan_candidates(
        &self,
        now: DateTime<Utc>,
        period_start: DateTime<Utc>,
    ) -> Result<Vec<PlanCandidate>, StoreError> {
        let rows = self
            .pool
            .all(
                concat!(
                    "SELECT v.vehicle_id, v.last_polled_at, p.state, c.calls, \
                       v.last_pushed_at AS pushed \
                     FROM vehicles v \
                     LEFT JOIN vehicle_plan p ON p.vehicle_id = v.vehicle_id \
                     LEFT JOIN vehicle_calls c ON c.vehicle_id = v.vehicle_id \
                       AND c.period_start = $2 \
                     WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.kind = 'poll_signals' \
                       AND j.subject = v.vehicle_id AND j.state IN ('pending', 'running')) \
                       AND ",
                    pollable!("$1"),
                    " ORDER BY v.vehicle_id"
                ),
                args![now, period_start],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(PlanCandidate {
                    vehicle_id: r.text("vehicle_id")?,
                    state: crate::plan::VehicleState::parse(
                        &r.opt_text("state")?.unwrap_or_default(),
                    ),
                    used: r.opt_int("calls")?.map_or(0, count),
                    last_polled_at: r.opt_time("last_polled_at")?,
                    last_pushed_at: r.opt_time("pushed")?,
                })
            })
            .collect()
    }

    /// Every vehicle with its count and plan, for `smartcar-sync budget`.
    pub async fn budget_rows(
        &self,
        period_start: DateTime<Utc>,
    ) -> Result<Vec<BudgetRow>, StoreError> {
        let rows = self
            .pool
            .all(
                "SELECT v.vehicle_id, v.status, v.last_polled_at, v.blocked_until, p.state, \
                   p.interval_ms, p.next_poll_at, c.calls, \
                   (SELECT MIN(j.run_at) FROM jobs j WHERE j.kind = 'poll_signals' \
                    AND j.subject = v.vehicle_id AND j.state IN ('pending', 'running')) AS open_at, \
                   v.last_pushed_at AS pushed \
                 FROM vehicles v \
                 LEFT JOIN vehicle_plan p ON p.vehicle_id = v.vehicle_id \
                 LEFT JOIN vehicle_calls c ON c.vehicle_id = v.vehicle_id AND c.period_start = $1 \
                 ORDER BY v.vehicle_id",
                args![period_start],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(BudgetRow {
                    vehicle_id: r.text("vehicle_id")?,
                    status: r.text("status")?,
                    state: crate::plan::VehicleState::parse(
                        &r.opt_text("state")?.unwrap_or_default(),
                    ),
                    used: r.opt_int("calls")?.map_or(0, count),
                    last_polled_at: r.opt_time("last_polled_at")?,
                    last_pushed_at: r.opt_time("pushed")?,
                    interval_ms: r.opt_int("interval_ms")?,
                    next_poll_at: r.opt_time("open_at")?.or(r.opt_time("next_poll_at")?),
                    blocked_until: r.opt_time("blocked_until")?,
                })
            })
            .collect()
    }

    /// Enqueues a poll of `vehicle_id` at `run_at` unless one is open; true if added.
    pub async fn enqueue_planned_poll(
        &self,
        vehicle_id: &str,
        run_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let now = Utc::now();
        let n = self
            .pool
            .exec(
                "INSERT INTO jobs (kind, subject, state, run_at, attempts, created_at, updated_at) \
                 VALUES ('poll_signals', $1, 'pending', $2, 0, $3, $3) \
                 ON CONFLICT (kind, subject) WHERE state IN ('pending', 'running') DO NOTHING",
                args![vehicle_id, run_at, now],
            )
            .await?;
        Ok(n == 1)
    }

    /// The vehicles subscribed to `webhook_id` as far as this database knows.
    pub async fn subscribed_vehicles(&self, webhook_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .pool
            .all(
                "SELECT vehicle_id FROM webhook_subscriptions WHERE webhook_id = $1 \
                 ORDER BY vehicle_id",
                args![webhook_id],
            )
            .await?;
        rows.iter().map(|r| r.text("vehicle_id")).collect()
    }

    /// Records a subscription (202 or 409: it exists).
    pub async fn record_subscription(
        &self,
        vehicle_id: &str,
        webhook_id: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.pool
            .exec(
                "INSERT INTO webhook_subscriptions (vehicle_id, webhook_id, user_id, subscribed_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (vehicle_id, webhook_id) DO NOTHING",
                args![vehicle_id, webhook_id, user_id, now],
            )
            .await?;
        Ok(())
    }

    /// Forgets a subscription (unsubscribed, or already gone).
    pub async fn forget_subscription(
        &self,
        vehicle_id: &str,
        webhook_id: &str,
    ) -> Result<(), StoreError> {
        self.pool
            .exec(
                "DELETE FROM webhook_subscriptions WHERE vehicle_id = $1 AND webhook_id = $2",
                args![vehicle_id, webhook_id],
            )
            .await?;
        Ok(())
    }

    /// The user's vehicles by status: (connected ones, disconnected ones).
    pub async fn user_vehicles_by_presence(
        &self,
        user_id: &str,
    ) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let rows = self
            .pool
            .all(
                "SELECT vehicle_id, status FROM vehicles WHERE user_id = $1 ORDER BY vehicle_id",
                args![user_id],
            )
            .await?;
        let mut present = Vec::new();
        let mut gone = Vec::new();
        for r in &rows {
            let id = r.text("vehicle_id")?;
            if r.text("status")? == "disconnected" {
                gone.push(id);
            } else {
                present.push(id);
            }
        }
        Ok((present, gone))
    }
}
