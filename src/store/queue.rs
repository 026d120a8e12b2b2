//! The durable job queue and the composite "effect + job done" transactions.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::db::{Backend, Row, Tx, args};
use super::{
    Job, JobKind, NewSample, PollOutcome, PollResult, SignalState, Store, StoreError, SyncOutcome,
    VehicleStatusUpdate, VehicleUpsert, postgres, sqlite,
};

/// The conflict target of the "one open job per kind and subject" partial unique index.
macro_rules! on_open_conflict {
    () => {
        " ON CONFLICT (kind, subject) WHERE state IN ('pending', 'running') DO NOTHING"
    };
}

/// A successful poll: the vehicle was polled at $1 and is connected (vehicle id $2).
const MARK_POLLED: &str = "UPDATE vehicles SET \
       last_polled_at = CASE WHEN last_polled_at IS NULL OR last_polled_at < $1 \
                        THEN $1 ELSE last_polled_at END, \
       status_changed_at = CASE WHEN status <> 'connected' THEN $1 \
                           ELSE status_changed_at END, \
       status = 'connected', status_reason = NULL, status_request_id = NULL, \
       blocked_until = NULL, throttle_streak = 0 \
     WHERE vehicle_id = $2";

/// The fence: a claimed job may only be changed by the claim that holds its lease.
macro_rules! fenced {
    ($id:literal, $owner:literal) => {
        concat!(
            " WHERE id = ",
            $id,
            " AND state = 'running' AND lease_owner = ",
            $owner
        )
    };
}

fn job_from_row(r: &Row) -> Result<Job, StoreError> {
    Ok(Job {
        id: r.int("id")?,
        kind: r.text("kind")?.parse()?,
        subject: r.text("subject")?,
        attempts: i32::try_from(r.int("attempts")?).unwrap_or(i32::MAX),
        run_at: r.time("run_at")?,
        lease_owner: r.opt_text("lease_owner")?.unwrap_or_default(),
    })
}

fn chrono_lease(lease: Duration) -> chrono::Duration {
    chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX)
}

/// Fails with [`StoreError::LeaseLost`] unless exactly one row changed.
fn fence(job: &Job, changed: u64) -> Result<(), StoreError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost { job_id: job.id })
    }
}

/// Keeps the newest observation per (vehicle, code): one statement may touch a row only once.
fn dedup_statuses(statuses: &[SignalState]) -> Vec<SignalState> {
    let mut latest: HashMap<(&str, &str), &SignalState> = HashMap::new();
    for s in statuses {
        let key = (s.vehicle_id.as_str(), s.code.as_str());
        match latest.get(&key) {
            Some(prev) if prev.observed_at > s.observed_at => {}
            _ => {
                latest.insert(key, s);
            }
        }
    }
    latest.into_values().cloned().collect()
}

impl Tx {
    /// Marks the claimed job done, fenced; the first statement of every composite
    /// transaction, so a lost lease aborts before anything else is written.
    async fn complete_fenced(&mut self, job: &Job, now: DateTime<Utc>) -> Result<(), StoreError> {
        let n = self
            .exec(
                concat!(
                    "UPDATE jobs SET state = 'done', lease_until = NULL, finished_at = $1, \
                     updated_at = $1",
                    fenced!("$2", "$3")
                ),
                args![now, job.id, job.lease_owner.as_str()],
            )
            .await?;
        fence(job, n)
    }

    /// Inserts samples idempotently (first writer wins) and upserts signal statuses, inside
    /// this transaction. Shared by polls and webhooks. Returns the sample rows inserted.
    pub(crate) async fn ingest(
        &mut self,
        samples: &[NewSample],
        statuses: &[SignalState],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(self
            .ingest_by_vehicle(samples, statuses, now)
            .await?
            .values()
            .sum())
    }

    /// [`Tx::ingest`], counting the rows inserted per vehicle (several polls in one batch).
    pub(crate) async fn ingest_by_vehicle(
        &mut self,
        samples: &[NewSample],
        statuses: &[SignalState],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, u64>, StoreError> {
        let statuses = dedup_statuses(statuses);
        match self {
            Tx::Sqlite(t) => {
                let n = sqlite::insert_samples(t, samples, now).await?;
                sqlite::upsert_statuses(t, &statuses).await?;
                Ok(n)
            }
            Tx::Postgres(t) => {
                let n = postgres::insert_samples(t, samples, now).await?;
                postgres::upsert_statuses(t, &statuses).await?;
                Ok(n)
            }
        }
    }

    /// [`Tx::complete_fenced`] for several jobs in one statement; returns the (id, lease owner)
    /// of the jobs it completed: the others lost their lease and must write nothing.
    pub(crate) async fn complete_fenced_many(
        &mut self,
        jobs: &[&Job],
        now: DateTime<Utc>,
    ) -> Result<HashSet<(i64, String)>, StoreError> {
        if jobs.is_empty() {
            return Ok(HashSet::new());
        }
        let rows: Vec<(i64, String)> = match self {
            Tx::Sqlite(t) => {
                let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "UPDATE jobs SET state = 'done', lease_until = NULL, finished_at = ",
                );
                qb.push_bind(super::time::to_text(now));
                qb.push(", updated_at = ");
                qb.push_bind(super::time::to_text(now));
                qb.push(" WHERE state = 'running' AND (id, lease_owner) IN (VALUES ");
                let mut first = true;
                for j in jobs {
                    if !first {
                        qb.push(", ");
                    }
                    first = false;
                    qb.push("(");
                    qb.push_bind(j.id);
                    qb.push(", ");
                    qb.push_bind(j.lease_owner.as_str());
                    qb.push(")");
                }
                qb.push(") RETURNING id, lease_owner");
                qb.build_query_as().fetch_all(&mut **t).await?
            }
            Tx::Postgres(t) => {
                // Index probes by id; a lease owner names its job (`prefix:id:random`), so
                // matching any of the owners is matching each job's own.
                let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
                let owners: Vec<&str> = jobs.iter().map(|j| j.lease_owner.as_str()).collect();
                sqlx::query_as(
                    "UPDATE jobs SET state = 'done', lease_until = NULL, finished_at = $1, \
                     updated_at = $1 \
                     WHERE id = ANY($2::int8[]) AND state = 'running' \
                       AND lease_owner = ANY($3::text[]) \
                     RETURNING id, lease_owner",
                )
                .bind(now)
                .bind(ids)
                .bind(owners)
                .fetch_all(&mut **t)
                .await?
            }
        };
        Ok(rows.into_iter().collect())
    }

    /// Marks vehicles polled (at each poll's time) and connected: the vehicle side of
    /// [`Tx::apply_poll`] for several polls.
    pub(crate) async fn mark_polled(&mut self, polls: &[&PollResult]) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(_) => {
                for p in polls {
                    self.exec(MARK_POLLED, args![p.polled_at, p.vehicle_id.as_str()])
                        .await?;
                }
            }
            Tx::Postgres(t) => {
                let ids: Vec<&str> = polls.iter().map(|p| p.vehicle_id.as_str()).collect();
                let at: Vec<DateTime<Utc>> = polls.iter().map(|p| p.polled_at).collect();
                sqlx::query(
                    "UPDATE vehicles v SET \
                       last_polled_at = CASE WHEN v.last_polled_at IS NULL \
                                        OR v.last_polled_at < f.ats[array_position($1, v.vehicle_id)] \
                                        THEN f.ats[array_position($1, v.vehicle_id)] \
                                        ELSE v.last_polled_at END, \
                       status_changed_at = CASE WHEN v.status <> 'connected' \
                                           THEN f.ats[array_position($1, v.vehicle_id)] \
                                           ELSE v.status_changed_at END, \
                       status = 'connected', status_reason = NULL, status_request_id = NULL, \
                       blocked_until = NULL, throttle_streak = 0 \
                     FROM (SELECT $2::timestamptz[] AS ats) f \
                     WHERE v.vehicle_id = ANY($1::text[])",
                )
                .bind(ids)
                .bind(at)
                .execute(&mut **t)
                .await?;
            }
        }
        Ok(())
    }

    /// A poll's effect and its job's completion, inside this transaction (which may hold other
    /// polls too: `group.rs`): completes the job, fenced (first, so a lost lease writes
    /// nothing), stores the samples and statuses, marks the vehicle polled and connected.
    pub(crate) async fn apply_poll(
        &mut self,
        job: &Job,
        poll: &PollResult,
        now: DateTime<Utc>,
    ) -> Result<PollOutcome, StoreError> {
        self.complete_fenced(job, now).await?;
        let samples_inserted = self.ingest(&poll.samples, &poll.statuses, now).await?;
        self.exec(MARK_POLLED, args![poll.polled_at, poll.vehicle_id.as_str()])
            .await?;
        Ok(PollOutcome { samples_inserted })
    }

    /// Enqueues one job per subject (skipping subjects with an open job of that kind).
    pub(crate) async fn enqueue_many(
        &mut self,
        kind: JobKind,
        subjects: &[String],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        if subjects.is_empty() {
            return Ok(0);
        }
        let sql = self.backend().pick(
            concat!(
                "INSERT INTO jobs (kind, subject, state, run_at, attempts, created_at, updated_at) \
                 SELECT DISTINCT $1, value, 'pending', $2, 0, $2, $2 FROM json_each($3) WHERE true",
                on_open_conflict!()
            ),
            concat!(
                "INSERT INTO jobs (kind, subject, state, run_at, attempts, created_at, updated_at) \
                 SELECT DISTINCT $1, value, 'pending', $2, 0, $2, $2 \
                 FROM UNNEST($3::text[]) AS u(value) WHERE true",
                on_open_conflict!()
            ),
        );
        self.exec(sql, args![kind.as_str(), now, subjects]).await
    }
}

impl Store {
    /// Enqueues a job unless one of the same kind and subject is already open; returns the id
    /// of the new or of the open job.
    pub async fn enqueue(
        &self,
        kind: JobKind,
        subject: &str,
        run_at: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let now = Utc::now();
        // Retried because the open job may finish between the INSERT and the SELECT.
        for _ in 0..5 {
            let inserted = self
                .pool
                .opt(
                    concat!(
                        "INSERT INTO jobs \
                         (kind, subject, state, run_at, attempts, created_at, updated_at) \
                         VALUES ($1, $2, 'pending', $3, 0, $4, $4)",
                        on_open_conflict!(),
                        " RETURNING id"
                    ),
                    args![kind.as_str(), subject, run_at, now],
                )
                .await?;
            if let Some(row) = inserted {
                return row.int("id");
            }
            let open = self
                .pool
                .opt(
                    "SELECT id FROM jobs WHERE kind = $1 AND subject = $2 \
                     AND state IN ('pending', 'running')",
                    args![kind.as_str(), subject],
                )
                .await?;
            if let Some(row) = open {
                return row.int("id");
            }
        }
        Err(StoreError::Corrupt(format!(
            "could not enqueue {kind} {subject:?}: open job keeps changing"
        )))
    }

    /// One `sync_connections` job (due `now`) for every user without one open. Returns jobs added.
    ///
    /// With `synced_before`, only users not synced since then (a cycle that already synced
    /// some users, e.g. just discovered, does not sync them twice).
    pub async fn enqueue_syncs_for_all_users(
        &self,
        now: DateTime<Utc>,
        synced_before: Option<DateTime<Utc>>,
    ) -> Result<u64, StoreError> {
        self.pool
            .exec(
                concat!(
                    "INSERT INTO jobs \
                     (kind, subject, state, run_at, attempts, created_at, updated_at) \
                     SELECT $1, user_id, 'pending', $2, 0, $2, $2 FROM users \
                     WHERE ($3 IS NULL OR last_synced_at IS NULL OR last_synced_at < $3)",
                    on_open_conflict!()
                ),
                args![JobKind::SyncConnections.as_str(), now, synced_before],
            )
            .await
    }

    /// One `poll_signals` job (due `now`) for every pollable vehicle without one open: status
    /// connected, needs_reconnect or billing_limited, and not blocked past `now`.
    ///
    /// With `polled_before`, only vehicles not polled since then.
    pub async fn enqueue_polls_for_pollable(
        &self,
        now: DateTime<Utc>,
        polled_before: Option<DateTime<Utc>>,
    ) -> Result<u64, StoreError> {
        self.pool
            .exec(
                concat!(
                    "INSERT INTO jobs \
                     (kind, subject, state, run_at, attempts, created_at, updated_at) \
                     SELECT $1, vehicle_id, 'pending', $2, 0, $2, $2 FROM vehicles \
                     WHERE ($3 IS NULL OR last_polled_at IS NULL OR last_polled_at < $3) AND ",
                    pollable!("$2"),
                    on_open_conflict!()
                ),
                args![JobKind::PollSignals.as_str(), now, polled_before],
            )
            .await
    }

    /// Claims up to `limit` due jobs, oldest `run_at` first: pending jobs due by `now`, and
    /// running jobs whose lease expired (their worker died; that counts as a failed attempt).
    /// Each claim gets a fresh lease token (`owner_prefix:id:random`) and a lease until
    /// `now + lease`. Claims nothing while the app is paused. Safe with several daemons:
    /// PostgreSQL skips rows another claimer has locked; SQLite serialises writers.
    pub async fn claim(
        &self,
        owner_prefix: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Two index range scans, each already in order, rather than one `OR` that makes the
        // database sort every due job on every claim (1.5 ms with 10,000 pending on SQLite;
        // 0.02 ms this way). Jobs of a dead worker (expired lease) come first.
        let sql = self.pool.backend().pick(
            "UPDATE jobs SET state = 'running', \
               attempts = attempts + (CASE WHEN state = 'running' THEN 1 ELSE 0 END), \
               lease_until = $2, \
               lease_owner = $3 || ':' || id || ':' || lower(hex(randomblob(8))), \
               updated_at = $1 \
             WHERE id IN (SELECT id FROM ( \
                 SELECT id FROM (SELECT id FROM jobs \
                   WHERE state = 'running' AND lease_until <= $1 \
                   ORDER BY lease_until, id LIMIT $4) \
                 UNION ALL \
                 SELECT id FROM (SELECT id FROM jobs \
                   WHERE state = 'pending' AND run_at <= $1 \
                   ORDER BY run_at, id LIMIT $4)) \
               LIMIT $4) \
               AND NOT EXISTS (SELECT 1 FROM app_pause WHERE paused_until > $1) \
             RETURNING id, kind, subject, attempts, run_at, lease_owner",
            "WITH r AS (SELECT id FROM jobs \
                 WHERE state = 'running' AND lease_until <= $1 \
                   AND NOT EXISTS (SELECT 1 FROM app_pause WHERE paused_until > $1) \
                 ORDER BY lease_until, id LIMIT $4 FOR UPDATE SKIP LOCKED), \
               p AS (SELECT id FROM jobs \
                 WHERE state = 'pending' AND run_at <= $1 \
                   AND NOT EXISTS (SELECT 1 FROM app_pause WHERE paused_until > $1) \
                 ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED), \
               c AS (SELECT id FROM (SELECT id FROM r UNION ALL SELECT id FROM p) u LIMIT $4) \
             UPDATE jobs j SET state = 'running', \
               attempts = j.attempts + (CASE WHEN j.state = 'running' THEN 1 ELSE 0 END), \
               lease_until = $2, \
               lease_owner = $3 || ':' || j.id || ':' || substr(md5(random()::text), 1, 16), \
               updated_at = $1 \
             FROM c WHERE j.id = c.id \
             RETURNING j.id, j.kind, j.subject, j.attempts, j.run_at, j.lease_owner",
        );
        let until = now + chrono_lease(lease);
        let rows = self
            .pool
            .all(sql, args![now, until, owner_prefix, i64::from(limit)])
            .await?;
        let mut jobs = rows
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        jobs.sort_by(|a, b| a.run_at.cmp(&b.run_at).then(a.id.cmp(&b.id)));
        Ok(jobs)
    }

    /// Extends the lease of a job this worker still holds; false if the lease was lost.
    pub async fn extend_lease(&self, job: &Job, until: DateTime<Utc>) -> Result<bool, StoreError> {
        let n = self
            .pool
            .exec(
                concat!(
                    "UPDATE jobs SET lease_until = $1, updated_at = $2",
                    fenced!("$3", "$4")
                ),
                args![until, Utc::now(), job.id, job.lease_owner.as_str()],
            )
            .await?;
        Ok(n == 1)
    }

    /// The earliest time something becomes claimable (a pending job's run_at or a running
    /// job's lease expiry), no earlier than the end of an app pause; None if no job is open.
    pub async fn next_wake(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = self
            .pool
            .opt(
                "SELECT MIN(t) AS t FROM ( \
                   SELECT MIN(run_at) AS t FROM jobs WHERE state = 'pending' \
                   UNION ALL \
                   SELECT MIN(lease_until) AS t FROM jobs WHERE state = 'running') AS w",
                args![],
            )
            .await?;
        let Some(wake) = row.map(|r| r.opt_time("t")).transpose()?.flatten() else {
            return Ok(None);
        };
        Ok(Some(match self.app_paused_until(now).await? {
            Some(until) if until > wake => until,
            _ => wake,
        }))
    }

    /// Puts a claimed job back to pending at `run_at` WITHOUT using an attempt (shutdown, 429,
    /// app pause, no token): the wait was not the job's fault.
    pub async fn release(
        &self,
        job: &Job,
        run_at: DateTime<Utc>,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        let n = self
            .pool
            .exec(
                concat!(
                    "UPDATE jobs SET state = 'pending', run_at = $1, lease_until = NULL, \
                     note = $2, updated_at = $3",
                    fenced!("$4", "$5")
                ),
                args![run_at, note, Utc::now(), job.id, job.lease_owner.as_str()],
            )
            .await?;
        fence(job, n)
    }

    /// A failed attempt: attempts + 1, pending again at `run_at`, the error recorded.
    pub async fn retry(
        &self,
        job: &Job,
        run_at: DateTime<Utc>,
        error: &str,
        request_id: Option<&str>,
    ) -> Result<(), StoreError> {
        let n = self
            .pool
            .exec(
                concat!(
                    "UPDATE jobs SET state = 'pending', attempts = attempts + 1, run_at = $1, \
                     lease_until = NULL, last_error = $2, last_request_id = $3, updated_at = $4",
                    fenced!("$5", "$6")
                ),
                args![
                    run_at,
                    error,
                    request_id,
                    Utc::now(),
                    job.id,
                    job.lease_owner.as_str()
                ],
            )
            .await?;
        fence(job, n)
    }

    /// Gives up on a job: dead (kept for inspection), attempts + 1, the error recorded.
    pub async fn kill(
        &self,
        job: &Job,
        error: &str,
        request_id: Option<&str>,
    ) -> Result<(), StoreError> {
        let n = self
            .pool
            .exec(
                concat!(
                    "UPDATE jobs SET state = 'dead', attempts = attempts + 1, lease_until = NULL, \
                     last_error = $1, last_request_id = $2, finished_at = $3, updated_at = $3",
                    fenced!("$4", "$5")
                ),
                args![
                    error,
                    request_id,
                    Utc::now(),
                    job.id,
                    job.lease_owner.as_str()
                ],
            )
            .await?;
        fence(job, n)
    }

    /// Marks a claimed job done (for jobs whose effect is not in the database).
    pub async fn complete(&self, job: &Job) -> Result<(), StoreError> {
        let n = self
            .pool
            .exec(
                concat!(
                    "UPDATE jobs SET state = 'done', lease_until = NULL, finished_at = $1, \
                     updated_at = $1",
                    fenced!("$2", "$3")
                ),
                args![Utc::now(), job.id, job.lease_owner.as_str()],
            )
            .await?;
        fence(job, n)
    }

    /// Applies a user's connections list and completes the sync job — one transaction: new
    /// vehicles are inserted (connected) and get a poll job due `now`; known ones are refreshed
    /// and set back to connected unless billing-limited or blocked for reconnect; the user's
    /// vehicles missing from the list become disconnected; the user's last sync is recorded.
    pub async fn finish_sync(
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

        let existing: Vec<String> = tx
            .all(
                backend.pick(
                    "SELECT vehicle_id FROM vehicles \
                     WHERE vehicle_id IN (SELECT value FROM json_each($1))",
                    "SELECT vehicle_id FROM vehicles WHERE vehicle_id = ANY($1)",
                ),
                args![ids.as_slice()],
            )
            .await?
            .iter()
            .map(|r| r.text("vehicle_id"))
            .collect::<Result<_, _>>()?;

        let mut new_vehicles = Vec::new();
        for id in &ids {
            let Some(v) = by_id.get(id.as_str()) else {
                continue;
            };
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
            if existing.contains(id) {
                tx.exec(
                    backend.pick(
                        concat!(
                            "UPDATE vehicles SET user_id = $2, connection_id = $3, make = $4, \
                             model = $5, year = $6, powertrain_type = $7, mode = $8, \
                             permissions = $9, last_seen_at = $10, ",
                            reconnect_set!("$10"),
                            " WHERE vehicle_id = $1"
                        ),
                        concat!(
                            "UPDATE vehicles SET user_id = $2, connection_id = $3, make = $4, \
                             model = $5, year = $6, powertrain_type = $7, mode = $8, \
                             permissions = $9::jsonb, last_seen_at = $10, ",
                            reconnect_set!("$10"),
                            " WHERE vehicle_id = $1"
                        ),
                    ),
                    a,
                )
                .await?;
            } else {
                let inserted = tx
                    .exec(
                        backend.pick(
                            "INSERT INTO vehicles (vehicle_id, user_id, connection_id, make, \
                             model, year, powertrain_type, mode, permissions, status, \
                             status_changed_at, first_seen_at, last_seen_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'connected', \
                             $10, $10, $10) ON CONFLICT (vehicle_id) DO NOTHING",
                            "INSERT INTO vehicles (vehicle_id, user_id, connection_id, make, \
                             model, year, powertrain_type, mode, permissions, status, \
                             status_changed_at, first_seen_at, last_seen_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, 'connected', \
                             $10, $10, $10) ON CONFLICT (vehicle_id) DO NOTHING",
                        ),
                        a,
                    )
                    .await?;
                if inserted == 1 {
                    new_vehicles.push(id.clone());
                }
            }
        }

        let mut vanished: Vec<String> = tx
            .all(
                backend.pick(
                    "UPDATE vehicles SET status = 'disconnected', \
                     status_reason = 'absent from connections', status_request_id = NULL, \
                     status_changed_at = $2 \
                     WHERE user_id = $1 AND status <> 'disconnected' \
                     AND vehicle_id NOT IN (SELECT value FROM json_each($3)) \
                     RETURNING vehicle_id",
                    "UPDATE vehicles SET status = 'disconnected', \
                     status_reason = 'absent from connections', status_request_id = NULL, \
                     status_changed_at = $2 \
                     WHERE user_id = $1 AND status <> 'disconnected' \
                     AND vehicle_id <> ALL($3) \
                     RETURNING vehicle_id",
                ),
                args![user_id, now, ids.as_slice()],
            )
            .await?
            .iter()
            .map(|r| r.text("vehicle_id"))
            .collect::<Result<_, _>>()?;
        vanished.sort();

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
    pub async fn discovered_page(
        &self,
        job: &Job,
        user_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = tx
            .exec(
                concat!("UPDATE jobs SET updated_at = $1", fenced!("$2", "$3")),
                args![now, job.id, job.lease_owner.as_str()],
            )
            .await?;
        fence(job, n)?;
        let mut new_users = tx
            .insert_users(user_ids, super::UserSource::Discovery, now)
            .await?;
        new_users.sort();
        tx.enqueue_many(JobKind::SyncConnections, &new_users, now)
            .await?;
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
        let mut new_users = tx
            .insert_users(user_ids, super::UserSource::Discovery, now)
            .await?;
        new_users.sort();
        tx.enqueue_many(JobKind::SyncConnections, &new_users, now)
            .await?;
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
        tx.exec(
            "UPDATE vehicles SET \
               status_changed_at = CASE WHEN status <> $2 THEN $3 ELSE status_changed_at END, \
               status = $2, status_reason = $4, status_request_id = $5, blocked_until = $6 \
             WHERE vehicle_id = $1",
            args![
                vehicle_id,
                update.status.as_str(),
                update.at,
                update.reason.as_str(),
                update.request_id.as_deref(),
                update.blocked_until,
            ],
        )
        .await?;
        tx.commit().await
    }

    /// Stores samples and statuses outside a job's completion (the readings of a poll's pages
    /// received before a later page failed, kept while the poll retries): one transaction,
    /// idempotent. Returns the sample rows inserted.
    pub async fn ingest_samples(
        &self,
        samples: &[NewSample],
        statuses: &[SignalState],
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = tx.ingest(samples, statuses, Utc::now()).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Deletes done jobs finished before `older_than`; dead jobs are kept for inspection.
    pub async fn prune_finished_jobs(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        self.pool
            .exec(
                "DELETE FROM jobs WHERE state = 'done' AND finished_at < $1",
                args![older_than],
            )
            .await
    }

    pub(crate) fn backend(&self) -> Backend {
        self.pool.backend()
    }
}

/// An open job, as `sync-once` reports the ones it leaves behind.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenJob {
    pub id: i64,
    pub kind: String,
    /// The vehicle of a poll, the user of a sync, empty for discovery.
    pub subject: String,
    pub state: String,
    /// When it may run next.
    pub run_at: DateTime<Utc>,
    /// Why it waits: the note of its last deferral, else its last error.
    pub reason: Option<String>,
}

impl Store {
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
        let rows = tx
            .all(
                "UPDATE vehicles SET throttle_streak = throttle_streak + 1 \
                 WHERE vehicle_id = $1 RETURNING throttle_streak",
                args![vehicle_id],
            )
            .await?;
        let streak = match rows.first() {
            Some(r) => r.int("throttle_streak")?,
            None => 1,
        };
        let at = run_at(streak);
        let n = tx
            .exec(
                concat!(
                    "UPDATE jobs SET state = 'pending', run_at = $1, lease_until = NULL, \
                     note = $2, updated_at = $3",
                    fenced!("$4", "$5")
                ),
                args![at, note, now, job.id, job.lease_owner.as_str()],
            )
            .await?;
        fence(job, n)?;
        tx.commit().await?;
        Ok((streak, at))
    }

    /// A vehicle's consecutive 429 `RATE_LIMIT`/`VEHICLE` count (0 if unknown).
    pub async fn throttle_streak(&self, vehicle_id: &str) -> Result<i64, StoreError> {
        let row = self
            .pool
            .opt(
                "SELECT throttle_streak FROM vehicles WHERE vehicle_id = $1",
                args![vehicle_id],
            )
            .await?;
        row.map(|r| r.int("throttle_streak"))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Every signal's latest status, by vehicle and code (for `status` views and tests).
    pub async fn list_signal_statuses(&self) -> Result<Vec<SignalState>, StoreError> {
        let rows = self
            .pool
            .all(
                "SELECT vehicle_id, code, status, error_type, error_code, observed_at \
                 FROM signal_status ORDER BY vehicle_id, code",
                args![],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SignalState {
                    vehicle_id: r.text("vehicle_id")?,
                    code: r.text("code")?,
                    status: r.text("status")?,
                    error_type: r.opt_text("error_type")?,
                    error_code: r.opt_text("error_code")?,
                    observed_at: r.time("observed_at")?,
                })
            })
            .collect()
    }

    /// Open (pending or running) jobs, soonest first, at most `limit`.
    pub async fn open_job_list(&self, limit: i64) -> Result<Vec<OpenJob>, StoreError> {
        let rows = self
            .pool
            .all(
                "SELECT id, kind, subject, state, run_at, note, last_error FROM jobs \
                 WHERE state IN ('pending', 'running') ORDER BY run_at, id LIMIT $1",
                args![limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OpenJob {
                    id: r.int("id")?,
                    kind: r.text("kind")?,
                    subject: r.text("subject")?,
                    state: r.text("state")?,
                    run_at: r.time("run_at")?,
                    reason: r.opt_text("note")?.or(r.opt_text("last_error")?),
                })
            })
            .collect()
    }
}
