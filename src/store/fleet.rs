//! Users, vehicles, the app pause, schedule ticks and the numbers `status` and metrics show.

use chrono::{DateTime, Utc};

use super::db::{Backend, Row, Tx, args};
use super::{DeadJob, JobKind, Store, StoreError, UserRow, UserSource, VehicleRow, VehicleStatus};

pub(super) fn user_from_row(r: &Row) -> Result<UserRow, StoreError> {
    Ok(UserRow {
        user_id: r.text("user_id")?,
        source: r.text("source")?.parse()?,
        created_at: r.time("created_at")?,
        last_synced_at: r.opt_time("last_synced_at")?,
    })
}

/// Vehicle columns; the JSON permissions are read back as text.
pub(super) fn vehicle_columns(b: Backend) -> String {
    format!(
        "vehicle_id, user_id, connection_id, make, model, year, powertrain_type, mode, {}, \
         status, status_reason, status_request_id, status_changed_at, blocked_until, \
         first_seen_at, last_seen_at, last_polled_at",
        b.json_text("permissions")
    )
}

pub(super) fn vehicle_from_row(r: &Row) -> Result<VehicleRow, StoreError> {
    let permissions = r.text("permissions")?;
    let status: VehicleStatus = r.text("status")?.parse()?;
    Ok(VehicleRow {
        vehicle_id: r.text("vehicle_id")?,
        user_id: r.text("user_id")?,
        connection_id: r.opt_text("connection_id")?,
        make: r.opt_text("make")?,
        model: r.opt_text("model")?,
        year: r.opt_int("year")?,
        powertrain_type: r.opt_text("powertrain_type")?,
        mode: r.opt_text("mode")?,
        permissions: serde_json::from_str(&permissions)
            .map_err(|e| StoreError::Corrupt(format!("permissions {permissions:?}: {e}")))?,
        status,
        status_reason: r.opt_text("status_reason")?,
        status_request_id: r.opt_text("status_request_id")?,
        status_changed_at: r.time("status_changed_at")?,
        blocked_until: r.opt_time("blocked_until")?,
        first_seen_at: r.time("first_seen_at")?,
        last_seen_at: r.time("last_seen_at")?,
        last_polled_at: r.opt_time("last_polled_at")?,
    })
}

impl Tx {
    /// Inserts the users not yet known; returns those (in no particular order).
    pub(crate) async fn insert_users(
        &mut self,
        user_ids: &[String],
        source: UserSource,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "INSERT INTO users (user_id, source, created_at) \
             SELECT DISTINCT value, $2, $3 FROM {} WHERE true \
             ON CONFLICT (user_id) DO NOTHING RETURNING user_id",
            self.backend().list_rows("$1")
        );
        self.all(&sql, args![user_ids, source.as_str(), now])
            .await?
            .iter()
            .map(|r| r.text("user_id"))
            .collect()
    }
}

impl Store {
    /// Adds a user; true if new. Enqueueing a sync is the caller's decision.
    pub async fn add_user(&self, user_id: &str, source: UserSource) -> Result<bool, StoreError> {
        let n = self
            .pool
            .exec(
                "INSERT INTO users (user_id, source, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO NOTHING",
                args![user_id, source.as_str(), Utc::now()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Removes a user, their vehicles (and those vehicles' signal statuses) and their open
    /// jobs; a worker holding one of those jobs then gets LeaseLost. Samples are history and
    /// stay. True if the user existed.
    pub async fn remove_user(&self, user_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        tx.exec(
            "DELETE FROM jobs WHERE state IN ('pending', 'running') AND ( \
               (kind = $2 AND subject = $1) OR \
               (kind = $3 AND subject IN (SELECT vehicle_id FROM vehicles WHERE user_id = $1)))",
            args![
                user_id,
                JobKind::SyncConnections.as_str(),
                JobKind::PollSignals.as_str()
            ],
        )
        .await?;
        tx.exec(
            "DELETE FROM signal_status \
             WHERE vehicle_id IN (SELECT vehicle_id FROM vehicles WHERE user_id = $1)",
            args![user_id],
        )
        .await?;
        tx.exec("DELETE FROM vehicles WHERE user_id = $1", args![user_id])
            .await?;
        let n = tx
            .exec("DELETE FROM users WHERE user_id = $1", args![user_id])
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    pub async fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.pool
            .all(
                "SELECT user_id, source, created_at, last_synced_at FROM users ORDER BY user_id",
                args![],
            )
            .await?
            .iter()
            .map(user_from_row)
            .collect()
    }

    /// All vehicles, by user then vehicle id.
    pub async fn list_vehicles(&self) -> Result<Vec<VehicleRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM vehicles ORDER BY user_id, vehicle_id",
            vehicle_columns(self.backend())
        );
        self.pool
            .all(&sql, args![])
            .await?
            .iter()
            .map(vehicle_from_row)
            .collect()
    }

    pub async fn vehicle(&self, vehicle_id: &str) -> Result<Option<VehicleRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM vehicles WHERE vehicle_id = $1",
            vehicle_columns(self.backend())
        );
        self.pool
            .opt(&sql, args![vehicle_id])
            .await?
            .map(|r| vehicle_from_row(&r))
            .transpose()
    }

    /// The user a vehicle belongs to.
    pub async fn vehicle_owner(&self, vehicle_id: &str) -> Result<Option<String>, StoreError> {
        self.pool
            .opt(
                "SELECT user_id FROM vehicles WHERE vehicle_id = $1",
                args![vehicle_id],
            )
            .await?
            .map(|r| r.text("user_id"))
            .transpose()
    }

    /// Pauses all claims until `until` (an app-wide limit). Keeps the later of the stored and
    /// the new end, so a shorter pause never cuts a longer one short.
    pub async fn set_app_pause(
        &self,
        until: DateTime<Utc>,
        reason: &str,
        request_id: Option<&str>,
    ) -> Result<(), StoreError> {
        self.pool
            .exec(
                "INSERT INTO app_pause (id, paused_until, reason, request_id, updated_at) \
                 VALUES (1, $1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET paused_until = excluded.paused_until, \
                 reason = excluded.reason, request_id = excluded.request_id, \
                 updated_at = excluded.updated_at \
                 WHERE app_pause.paused_until < excluded.paused_until",
                args![until, reason, request_id, Utc::now()],
            )
            .await?;
        Ok(())
    }

    /// The end of the app pause if it is still in force at `now`.
    pub async fn app_paused_until(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.pool
            .opt(
                "SELECT paused_until FROM app_pause WHERE id = 1 AND paused_until > $1",
                args![now],
            )
            .await?
            .map(|r| r.time("paused_until"))
            .transpose()
    }

    /// The last tick recorded for a schedule.
    pub async fn last_tick(&self, schedule: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.pool
            .opt(
                "SELECT tick_at FROM schedule_ticks WHERE schedule = $1",
                args![schedule],
            )
            .await?
            .map(|r| r.time("tick_at"))
            .transpose()
    }

    /// Advances a schedule's tick to `tick_at` if that is later than the stored one (atomic
    /// compare-and-set). True only for the call that advanced it: with several daemons, exactly
    /// one acts on a given tick.
    pub async fn record_tick(
        &self,
        schedule: &str,
        tick_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = self
            .pool
            .exec(
                "INSERT INTO schedule_ticks (schedule, tick_at, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (schedule) DO UPDATE SET tick_at = excluded.tick_at, \
                 updated_at = excluded.updated_at \
                 WHERE schedule_ticks.tick_at < excluded.tick_at",
                args![schedule, tick_at, Utc::now()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Job counts by (kind, state), sorted.
    pub async fn queue_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.pool
            .all(
                "SELECT kind, state, COUNT(*) AS n FROM jobs GROUP BY kind, state \
                 ORDER BY kind, state",
                args![],
            )
            .await?
            .iter()
            .map(|r| Ok((r.text("kind")?, r.text("state")?, r.int("n")?)))
            .collect()
    }

    /// The most recently failed dead jobs first.
    pub async fn dead_jobs(&self, limit: u32) -> Result<Vec<DeadJob>, StoreError> {
        self.pool
            .all(
                "SELECT id, kind, subject, attempts, last_error, last_request_id, finished_at \
                 FROM jobs WHERE state = 'dead' ORDER BY finished_at DESC, id DESC LIMIT $1",
                args![i64::from(limit)],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(DeadJob {
                    id: r.int("id")?,
                    kind: r.text("kind")?,
                    subject: r.text("subject")?,
                    attempts: r.int("attempts")?,
                    last_error: r.opt_text("last_error")?,
                    last_request_id: r.opt_text("last_request_id")?,
                    finished_at: r.opt_time("finished_at")?,
                })
            })
            .collect()
    }

    /// Pending + running jobs, of one kind or all.
    pub async fn open_jobs(&self, kind: Option<JobKind>) -> Result<i64, StoreError> {
        self.pool
            .opt(
                "SELECT COUNT(*) AS n FROM jobs WHERE state IN ('pending', 'running') \
                 AND ($1 IS NULL OR kind = $1)",
                args![kind.map(JobKind::as_str)],
            )
            .await?
            .map_or(Ok(0), |r| r.int("n"))
    }

    /// Jobs that died at or after `since`.
    pub async fn dead_since(&self, since: DateTime<Utc>) -> Result<i64, StoreError> {
        self.pool
            .opt(
                "SELECT COUNT(*) AS n FROM jobs WHERE state = 'dead' AND finished_at >= $1",
                args![since],
            )
            .await?
            .map_or(Ok(0), |r| r.int("n"))
    }

    /// Fleet freshness: the oldest last successful poll over pollable vehicles. A pollable
    /// vehicle never polled counts as polled at the Unix epoch (maximally stale). None if no
    /// vehicle is pollable.
    pub async fn oldest_poll_of_pollable(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.pool
            .opt(
                concat!(
                    "SELECT MIN(COALESCE(last_polled_at, $2)) AS t FROM vehicles WHERE ",
                    pollable!("$1")
                ),
                args![now, DateTime::<Utc>::UNIX_EPOCH],
            )
            .await?
            .map(|r| r.opt_time("t"))
            .transpose()
            .map(Option::flatten)
    }
}

#[cfg(any(test, feature = "test-support"))]
impl Store {
    /// Adds users; returns how many were new.
    pub async fn add_users(
        &self,
        user_ids: &[String],
        source: UserSource,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let added = tx.insert_users(user_ids, source, Utc::now()).await?.len();
        tx.commit().await?;
        Ok(added as u64)
    }
}
