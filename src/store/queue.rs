//! The job lifecycle: enqueue, claim, lease, release, retry, kill, complete, prune.
//!
//! A job is a row: `pending` until due (`run_at`), `running` while a claim holds its lease,
//! then `done` or `dead`. Every change to a claimed job is fenced by the claim's lease token
//! ([`fenced!`]), so a worker whose lease expired and was taken over changes nothing. What a
//! job *does* to the rest of the database commits with its completion: see `effects.rs`.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::db::{Backend, Row, Tx, args};
use super::{Job, JobKind, Store, StoreError};

/// The conflict target of the "one open job per kind and subject" partial unique index.
macro_rules! on_open_conflict {
    () => {
        " ON CONFLICT (kind, subject) WHERE state IN ('pending', 'running') DO NOTHING"
    };
}

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

/// Marks a claimed job done: `$1` now, `$2` id, `$3` lease token.
const COMPLETE: &str = concat!(
    "UPDATE jobs SET state = 'done', lease_until = NULL, finished_at = $1, updated_at = $1",
    fenced!("$2", "$3")
);

/// Puts a claimed job back to pending without using an attempt: `$1` run_at, `$2` note,
/// `$3` now, `$4` id, `$5` lease token.
const RELEASE: &str = concat!(
    "UPDATE jobs SET state = 'pending', run_at = $1, lease_until = NULL, note = $2, \
     updated_at = $3",
    fenced!("$4", "$5")
);

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

impl Tx {
    /// Marks the claimed job done, fenced; the first statement of every composite
    /// transaction, so a lost lease aborts before anything else is written.
    pub(crate) async fn complete_fenced(
        &mut self,
        job: &Job,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let n = self
            .exec(COMPLETE, args![now, job.id, job.lease_owner.as_str()])
            .await?;
        fence(job, n)
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
            Tx::Sqlite(t, _) => {
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

    /// Checks the claim still holds the job's lease, without completing it (a job that writes
    /// part of its effect before it completes: discovery, page by page).
    ///
    /// `progress` records where the job got to (discovery: the next page), kept across
    /// retries so the next attempt resumes there; `None` leaves it as it is. Progress also
    /// resets the job's `attempts`: they count the failures since the job last got anywhere.
    /// A discovery of thousands of pages meets a 5xx every fifty pages at 2 % faults; counted
    /// over the whole paging, its attempts would run out (and its backoff grow to the maximum)
    /// although every attempt moved it forward.
    pub(crate) async fn hold_fenced(
        &mut self,
        job: &Job,
        progress: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let n = self
            .exec(
                concat!(
                    "UPDATE jobs SET updated_at = $1, progress = COALESCE($4, progress), \
                     attempts = CASE WHEN $4 IS NULL THEN attempts ELSE 0 END",
                    fenced!("$2", "$3")
                ),
                args![now, job.id, job.lease_owner.as_str(), progress],
            )
            .await?;
        fence(job, n)
    }

    /// Puts the claimed job back to pending at `run_at` without using an attempt, fenced.
    pub(crate) async fn release_fenced(
        &mut self,
        job: &Job,
        run_at: DateTime<Utc>,
        note: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let n = self
            .exec(
                RELEASE,
                args![run_at, note, now, job.id, job.lease_owner.as_str()],
            )
            .await?;
        fence(job, n)
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
        let sql = format!(
            concat!(
                "INSERT INTO jobs (kind, subject, state, run_at, attempts, created_at, updated_at) \
                 SELECT DISTINCT $1, value, 'pending', $2, 0, $2, $2 FROM {} WHERE true",
                on_open_conflict!()
            ),
            self.backend().list_rows("$3")
        );
        self.exec(&sql, args![kind.as_str(), now, subjects]).await
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
        let sql = match self.pool.backend() {
            Backend::Sqlite => {
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
             RETURNING id, kind, subject, attempts, run_at, lease_owner"
            }
            Backend::Postgres => {
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
             RETURNING j.id, j.kind, j.subject, j.attempts, j.run_at, j.lease_owner"
            }
        };
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
                RELEASE,
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

    /// The failures a claimed job has had since it last made progress (see
    /// [`Tx::hold_fenced`]): its `attempts` now, which a progressing job resets after its
    /// claim; `None` if the claim no longer holds.
    pub async fn attempts_now(&self, job: &Job) -> Result<Option<i32>, StoreError> {
        self.pool
            .opt(
                concat!("SELECT attempts FROM jobs", fenced!("$1", "$2")),
                args![job.id, job.lease_owner.as_str()],
            )
            .await?
            .map(|r| Ok(i32::try_from(r.int("attempts")?).unwrap_or(i32::MAX)))
            .transpose()
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

    /// Where an earlier attempt of the job got to ([`Tx::hold_fenced`]'s `progress`), if any.
    pub async fn job_progress(&self, job: &Job) -> Result<Option<i64>, StoreError> {
        let row = self
            .pool
            .opt("SELECT progress FROM jobs WHERE id = $1", args![job.id])
            .await?;
        Ok(row.map(|r| r.opt_int("progress")).transpose()?.flatten())
    }

    /// Marks a claimed job done (for jobs whose effect is not in the database).
    pub async fn complete(&self, job: &Job) -> Result<(), StoreError> {
        let n = self
            .pool
            .exec(
                COMPLETE,
                args![Utc::now(), job.id, job.lease_owner.as_str()],
            )
            .await?;
        fence(job, n)
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
