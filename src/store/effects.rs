//! A job's effect and its completion, in one transaction each.
//!
//! Every `finish_*` first completes its job, fenced by the claim's lease token, and then
//! writes what the job found; a worker that lost its lease gets [`StoreError::LeaseLost`] from
//! the first statement and writes nothing. A crash before the commit leaves the job to be
//! claimed again; after it, nothing to redo. What a finished job means for its vehicle's
//! status is written by the helpers in `vehicle_status.rs`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::db::{Backend, Tx, args};
use super::{
    Job, JobKind, Store, StoreError, SyncOutcome, UserSource, VehicleStatusUpdate, VehicleUpsert,
};

impl Store {
    /// Applies a user's connections list and completes the sync job — one transaction: new
    /// vehicles are inserted (connected) and get a poll job due `now`; known ones are refreshed
    /// and set back to connected unless billing-limited or blocked for reconnect; the user's
    /// vehicles missing from the list become disconnected; the user's last sync is recorded.
    ///
    /// On SQLite the transaction runs apart from the caller, on the writer thread
    /// ([`Pool::run_apart`](super::db::Pool)), so its eight statements hold the one writer as
    /// briefly as they can.
    pub async fn finish_sync(
        &self,
        job: &Job,
        user_id: &str,
        vehicles: &[VehicleUpsert],
        now: DateTime<Utc>,
    ) -> Result<SyncOutcome, StoreError> {
        if self.pool.backend() == Backend::Postgres {
            // No single writer to hold: run in the caller, as a spawned task measured no faster.
            return self.sync_tx(job, user_id, vehicles, now).await;
        }
        let (store, job, user_id, vehicles) = (
            self.clone(),
            job.clone(),
            user_id.to_owned(),
            vehicles.to_vec(),
        );
        self.pool
            .run_apart(async move { store.sync_tx(&job, &user_id, &vehicles, now).await })
            .await
            .unwrap_or_else(|| {
                Err(StoreError::Corrupt(
                    "the connections sync task ended".into(),
                ))
            })
    }

    async fn sync_tx(
        &self,
        job: &Job,
        user_id: &str,
        vehicles: &[VehicleUpsert],
        now: DateTime<Utc>,
    ) -> Result<SyncOutcome, StoreError> {
        // The last listing of a vehicle wins if the API repeats one.
        let mut by_id: HashMap<&str, &VehicleUpsert> = HashMap::new();
        for v in vehicles {
            by_id.insert(v.vehicle_id.as_str(), v);
        }
        let mut ids: Vec<String> = by_id.keys().map(|s| (*s).to_owned()).collect();
        ids.sort();

        let mut tx = self.pool.begin().await?;
        let backend = tx.backend();
        tx.complete_fenced(job, now).await?;

        // The two statements that read `vehicles` by a list are planned for their parameters
        // (see `Tx::plan_per_execution`); the rest, by key or from a list alone, keep the plan
        // cache (planning them at every execution was half of the sync's database time).
        tx.plan_per_execution().await?;

        let existing_sql = format!(
            "SELECT vehicle_id FROM vehicles WHERE {}",
            backend.in_list("vehicle_id", "$1")
        );
        let existing: Vec<String> = tx
            .all(&existing_sql, args![ids.as_slice()])
            .await?
            .iter()
            .map(|r| r.text("vehicle_id"))
            .collect::<Result<_, _>>()?;

        // Not listed any more: disconnected.
        let mut vanished = tx.disconnect_vanished(user_id, &ids, now).await?;
        vanished.sort();
        tx.plan_cached().await?;

        // Listed again: refreshed, and back to connected where the status rules allow.
        let refresh_sql = format!(
            concat!(
                "UPDATE vehicles SET user_id = $2, connection_id = $3, make = $4, model = $5, \
                 year = $6, powertrain_type = $7, mode = $8, permissions = {}, \
                 last_seen_at = $10, ",
                reconnect_set!("$10"),
                " WHERE vehicle_id = $1"
            ),
            backend.json_param("$9")
        );
        // New vehicles: one statement for all of them (a user's first sync lists them all).
        let f = |field, ty| backend.json_field(field, ty);
        let insert_sql = format!(
            "INSERT INTO vehicles (vehicle_id, user_id, connection_id, make, model, year, \
             powertrain_type, mode, permissions, status, status_changed_at, first_seen_at, \
             last_seen_at) \
             SELECT {}, $2, {}, {}, {}, {}, {}, {}, {}, 'connected', $3, $3, $3 FROM {} \
             WHERE true ON CONFLICT (vehicle_id) DO NOTHING RETURNING vehicle_id",
            f("vehicle_id", "text"),
            f("connection_id", "text"),
            f("make", "text"),
            f("model", "text"),
            f("year", "bigint"),
            f("powertrain_type", "text"),
            f("mode", "text"),
            f("permissions", "jsonb"),
            backend.json_rows("$1"),
        );
        let mut fresh = Vec::new();
        for id in &ids {
            let Some(v) = by_id.get(id.as_str()) else {
                continue;
            };
            if existing.contains(id) {
                let permissions = serde_json::to_string(&v.permissions)
                    .map_err(|e| StoreError::Corrupt(format!("permissions to JSON: {e}")))?;
                let a = args![
                    v.vehicle_id.as_str(),
                    user_id,
                    v.connection_id.as_deref(),
                    v.make.as_deref(),
                    v.model.as_deref(),
                    v.year,
                    v.powertrain_type.as_deref(),
                    v.mode.as_deref(),
                    permissions.as_str(),
                    now,
                ];
                tx.exec(&refresh_sql, a).await?;
            } else {
                fresh.push(serde_json::json!({
                    "vehicle_id": v.vehicle_id,
                    "connection_id": v.connection_id,
                    "make": v.make,
                    "model": v.model,
                    "year": v.year,
                    "powertrain_type": v.powertrain_type,
                    "mode": v.mode,
                    "permissions": v.permissions,
                }));
            }
        }
        let mut new_vehicles = Vec::new();
        if !fresh.is_empty() {
            let doc = serde_json::Value::Array(fresh).to_string();
            new_vehicles = tx
                .all(&insert_sql, args![doc.as_str(), user_id, now])
                .await?
                .iter()
                .map(|r| r.text("vehicle_id"))
                .collect::<Result<_, _>>()?;
            new_vehicles.sort();
        }

        tx.enqueue_many(JobKind::PollSignals, &new_vehicles, now)
            .await?;
        tx.exec(
            "UPDATE users SET last_synced_at = $2 WHERE user_id = $1",
            args![user_id, now],
        )
        .await?;
        tx.commit().await?;
        Ok(SyncOutcome {
            new_vehicles,
            vanished,
        })
    }

    /// Records one page of discovered users (source `discovery`) and enqueues a connections sync
    /// for each new one while the discovery job still runs, so the syncs start while later
    /// pages are fetched (paging is sequential: 100 pages are 2.5 s of a 7.6 s cycle). One
    /// transaction, fenced on the job's lease without completing it (a worker that lost the
    /// lease writes nothing); idempotent, so a retried discovery repeats it harmlessly. The job
    /// completes with [`Store::finish_discovery`] after the last page. Returns the new users.
    ///
    /// `next_page` is recorded with the page: a retried discovery resumes there
    /// ([`Store::job_progress`]) instead of paging from the start again.
    pub async fn discovered_page(
        &self,
        job: &Job,
        user_ids: &[String],
        next_page: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        tx.hold_fenced(job, Some(next_page), now).await?;
        let new_users = tx.register_discovered(user_ids, now).await?;
        tx.commit().await?;
        Ok(new_users)
    }

    /// Records discovered users (source `discovery`), enqueues a connections sync for each new
    /// one and completes the discovery job — one transaction. Returns the new users, sorted.
    pub async fn finish_discovery(
        &self,
        job: &Job,
        user_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        tx.complete_fenced(job, now).await?;
        let new_users = tx.register_discovered(user_ids, now).await?;
        tx.commit().await?;
        Ok(new_users)
    }

    /// Sets a vehicle's status (status_changed_at only when it changes) and completes the job
    /// — one transaction.
    pub async fn finish_vehicle_status(
        &self,
        job: &Job,
        vehicle_id: &str,
        update: &VehicleStatusUpdate,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        tx.complete_fenced(job, Utc::now()).await?;
        tx.set_vehicle_status(vehicle_id, update).await?;
        tx.commit().await
    }

    /// Defers a claimed poll after a 429 `RATE_LIMIT`/`VEHICLE`, WITHOUT using an attempt, and
    /// counts the answer in the vehicle's `throttle_streak` — one transaction. `run_at` gets the
    /// new streak (1 for the first 429 since the last successful poll) and returns when the
    /// job may run again. Returns the streak and that time.
    pub async fn defer_throttled(
        &self,
        job: &Job,
        vehicle_id: &str,
        run_at: impl FnOnce(i64) -> DateTime<Utc>,
        note: &str,
    ) -> Result<(i64, DateTime<Utc>), StoreError> {
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        let streak = tx.bump_throttle_streak(vehicle_id).await?;
        let at = run_at(streak);
        tx.release_fenced(job, at, Some(note), now).await?;
        tx.commit().await?;
        Ok((streak, at))
    }
}

impl Tx {
    /// Registers the users not yet known (source `discovery`) and enqueues a connections sync
    /// for each; returns them, sorted.
    async fn register_discovered(
        &mut self,
        user_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let mut new_users = self
            .insert_users(user_ids, UserSource::Discovery, now)
            .await?;
        new_users.sort();
        self.enqueue_many(JobKind::SyncConnections, &new_users, now)
            .await?;
        Ok(new_users)
    }
}
