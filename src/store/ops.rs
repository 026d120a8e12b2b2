//! What operators ask of the database: fixed-size summaries for `status`, filtered lists, and
//! the two repairs, `jobs retry` and `jobs cancel`.
//!
//! Why aggregates: a real fleet has 10,000 users and 30,000 vehicles. A `status` that loads
//! every row to print ten reads the whole fleet on every call (and a scripted one polls it), so
//! each summary here is one `GROUP BY`/`COUNT` or one `ORDER BY … LIMIT`: its cost is an index or
//! table scan inside the database and its answer is bounded whatever the fleet size.
//!
//! Why the repairs are transactions: an operator's list of ids is checked as a whole (unknown
//! ids, jobs in the wrong state) before anything changes, so a typo never leaves half a repair.
//! Both only ever move a job along the same fenced lifecycle the workers use: a cancelled
//! running job is deleted, and its worker's next heartbeat or its completion finds the row
//! gone (`LeaseLost`) and commits nothing.

use chrono::{DateTime, Utc};

use super::db::{Row, args};
use super::{JobKind, JobState, Store, StoreError, UserRow, VehicleRow, VehicleStatus};

/// One job as operators see it (`jobs list`, `status`). The lease token is not shown: it is
/// the fence, not information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    /// The vehicle of a poll, the user of a sync, empty for discovery.
    pub subject: String,
    pub state: String,
    /// Failures so far.
    pub attempts: i64,
    /// When it may run (pending), when it was due (others).
    pub run_at: DateTime<Utc>,
    /// A running job's lease end.
    pub lease_until: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_request_id: Option<String>,
    /// Why it last waited (a deferral), or what an operator's retry replaced.
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const JOB_COLUMNS: &str = "id, kind, subject, state, attempts, run_at, lease_until, last_error, \
                           last_request_id, note, created_at, updated_at, finished_at";

fn job_row(r: &Row) -> Result<JobRow, StoreError> {
    Ok(JobRow {
        id: r.int("id")?,
        kind: r.text("kind")?,
        subject: r.text("subject")?,
        state: r.text("state")?,
        attempts: r.int("attempts")?,
        run_at: r.time("run_at")?,
        lease_until: r.opt_time("lease_until")?,
        last_error: r.opt_text("last_error")?,
        last_request_id: r.opt_text("last_request_id")?,
        note: r.opt_text("note")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        finished_at: r.opt_time("finished_at")?,
    })
}

/// Which jobs `jobs list` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub kind: Option<JobKind>,
    /// At most this many (newest first); None: all.
    pub limit: Option<u64>,
}

/// How many rows of a set fall in each age bucket of a time column (a vehicle's last poll, a
/// user's last sync). Each bucket's lower bound is inclusive: `under_6h` is 1 h ≤ age < 6 h.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freshness {
    pub under_1h: i64,
    pub under_6h: i64,
    pub under_24h: i64,
    pub over_24h: i64,
    pub never: i64,
}

impl Freshness {
    pub fn total(&self) -> i64 {
        self.under_1h + self.under_6h + self.under_24h + self.over_24h + self.never
    }
}

/// Why a job named on the command line was not touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub id: i64,
    /// Its state, or None if there is no such job.
    pub state: Option<String>,
}

/// What `jobs retry` did to one dead job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// Pending again, due now, attempts reset; the last error moved into the note.
    Requeued {
        id: i64,
        kind: String,
        subject: String,
    },
    /// Another job of the same kind and subject is already open (the schedule enqueued it
    /// since, or a newer dead job of the same subject is requeued instead): the work is queued
    /// as `open`, so this dead record is deleted rather than run twice.
    Superseded {
        id: i64,
        kind: String,
        subject: String,
        open: i64,
    },
}

/// What `jobs cancel` did to one open job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    pub id: i64,
    pub kind: String,
    pub subject: String,
    /// `pending`, or `running` (its worker will find its lease gone and commit nothing).
    pub was: String,
}

impl Store {
    /// Jobs matching `filter`, newest first, and how many match in all.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<(Vec<JobRow>, i64), StoreError> {
        let state = filter.state.map(JobState::as_str);
        let kind = filter.kind.map(JobKind::as_str);
        let limit = filter
            .limit
            .map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1 IS NULL OR state = $1) \
             AND ($2 IS NULL OR kind = $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = self
            .pool
            .all(&sql, args![state, kind, limit])
            .await?
            .iter()
            .map(job_row)
            .collect::<Result<Vec<_>, _>>()?;
        let total = self
            .pool
            .opt(
                "SELECT COUNT(*) AS n FROM jobs WHERE ($1 IS NULL OR state = $1) \
                 AND ($2 IS NULL OR kind = $2)",
                args![state, kind],
            )
            .await?
            .map_or(Ok(0), |r| r.int("n"))?;
        Ok((rows, total))
    }

    /// One job by id.
    pub async fn job(&self, id: i64) -> Result<Option<JobRow>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        self.pool
            .opt(&sql, args![id])
            .await?
            .map(|r| job_row(&r))
            .transpose()
    }

    /// Pollable vehicles (those the schedule polls) by the age of their last poll at `now`.
    pub async fn vehicle_freshness(&self, now: DateTime<Utc>) -> Result<Freshness, StoreError> {
        let sql = freshness_sql(
            "last_polled_at",
            "vehicles",
            concat!("WHERE ", pollable!("$4")),
        );
        self.freshness(&sql, now).await
    }

    /// Users by the age of their last successful connections sync at `now`.
    pub async fn user_freshness(&self, now: DateTime<Utc>) -> Result<Freshness, StoreError> {
        let sql = freshness_sql("last_synced_at", "users", "WHERE $4 IS NOT NULL");
        self.freshness(&sql, now).await
    }

    async fn freshness(&self, sql: &str, now: DateTime<Utc>) -> Result<Freshness, StoreError> {
        let h = |n: i64| now - chrono::Duration::hours(n);
        let Some(r) = self.pool.opt(sql, args![h(1), h(6), h(24), now]).await? else {
            return Ok(Freshness::default());
        };
        Ok(Freshness {
            under_1h: r.int("under_1h")?,
            under_6h: r.int("under_6h")?,
            under_24h: r.int("under_24h")?,
            over_24h: r.int("over_24h")?,
            never: r.int("never")?,
        })
    }

    /// Vehicles per status (only statuses some vehicle has).
    pub async fn vehicles_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.pool
            .all(
                "SELECT status, COUNT(*) AS n FROM vehicles GROUP BY status ORDER BY status",
                args![],
            )
            .await?
            .iter()
            .map(|r| Ok((r.text("status")?, r.int("n")?)))
            .collect()
    }

    /// The `limit` pollable vehicles polled longest ago (never polled first).
    pub async fn stalest_vehicles(
        &self,
        now: DateTime<Utc>,
        limit: Option<u64>,
    ) -> Result<Vec<VehicleRow>, StoreError> {
        let sql = format!(
            concat!(
                "SELECT {} FROM vehicles WHERE ",
                pollable!("$1"),
                " ORDER BY (last_polled_at IS NOT NULL), last_polled_at, vehicle_id LIMIT $2"
            ),
            super::fleet::vehicle_columns(self.backend())
        );
        self.vehicle_rows(&sql, args![now, sql_limit(limit)]).await
    }

    /// The `limit` vehicles not `connected` whose status changed last.
    pub async fn unconnected_vehicles(
        &self,
        limit: Option<u64>,
    ) -> Result<Vec<VehicleRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM vehicles WHERE status <> 'connected' \
             ORDER BY status_changed_at DESC, vehicle_id LIMIT $1",
            super::fleet::vehicle_columns(self.backend())
        );
        self.vehicle_rows(&sql, args![sql_limit(limit)]).await
    }

    /// Vehicles of one status and/or one user (either may be None), by user then vehicle id.
    pub async fn find_vehicles(
        &self,
        status: Option<VehicleStatus>,
        user_id: Option<&str>,
    ) -> Result<Vec<VehicleRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM vehicles WHERE ($1 IS NULL OR status = $1) \
             AND ($2 IS NULL OR user_id = $2) ORDER BY user_id, vehicle_id",
            super::fleet::vehicle_columns(self.backend())
        );
        self.vehicle_rows(&sql, args![status.map(VehicleStatus::as_str), user_id])
            .await
    }

    async fn vehicle_rows(
        &self,
        sql: &str,
        args: &[super::db::Arg<'_>],
    ) -> Result<Vec<VehicleRow>, StoreError> {
        self.pool
            .all(sql, args)
            .await?
            .iter()
            .map(super::fleet::vehicle_from_row)
            .collect()
    }

    /// The `limit` users synced longest ago (never synced first).
    pub async fn stalest_users(&self, limit: Option<u64>) -> Result<Vec<UserRow>, StoreError> {
        self.pool
            .all(
                "SELECT user_id, source, created_at, last_synced_at FROM users \
                 ORDER BY (last_synced_at IS NOT NULL), last_synced_at, user_id LIMIT $1",
                args![sql_limit(limit)],
            )
            .await?
            .iter()
            .map(super::fleet::user_from_row)
            .collect()
    }

    /// Requeues dead jobs: the ones named, or every dead job when `ids` is None. A named job
    /// that does not exist or is not dead refuses the whole call (nothing changes). Each
    /// requeued job is pending, due `now`, with its attempts reset; its last error and request
    /// id move into its note (`requeued by an operator after: …`) and are cleared, so a new
    /// failure is not confused with the old one. A dead job whose kind and subject already
    /// have an open job is deleted instead (see [`Retried::Superseded`]).
    pub async fn retry_dead_jobs(
        &self,
        ids: Option<&[i64]>,
        now: DateTime<Utc>,
    ) -> Result<Result<Vec<Retried>, Vec<Refusal>>, StoreError> {
        // On PostgreSQL a daemon may enqueue the same kind and subject between the check for
        // open jobs and the requeue; the unique index then refuses the requeue, and a second
        // pass sees that job and treats the dead one as superseded.
        let mut tries = 0;
        loop {
            match self.retry_dead_jobs_once(ids, now).await {
                Err(StoreError::Database(sqlx::Error::Database(e)))
                    if e.is_unique_violation() && tries < 3 =>
                {
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    async fn retry_dead_jobs_once(
        &self,
        ids: Option<&[i64]>,
        now: DateTime<Utc>,
    ) -> Result<Result<Vec<Retried>, Vec<Refusal>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let b = tx.backend();
        let id_list: Vec<String> = ids.unwrap_or_default().iter().map(i64::to_string).collect();
        let selection = match ids {
            Some(_) => b.in_int_list("id", "$1"),
            None => "state = 'dead' AND $1 IS NOT NULL".to_owned(),
        };
        let sql = format!(
            "SELECT id, kind, subject, state FROM jobs WHERE {selection} ORDER BY id DESC{}",
            b.lock_rows()
        );
        let found = tx.all(&sql, args![id_list.as_slice()]).await?;
        let mut dead: Vec<(i64, String, String)> = Vec::new();
        let mut refused = Vec::new();
        for r in &found {
            let (id, state) = (r.int("id")?, r.text("state")?);
            if state == JobState::Dead.as_str() {
                dead.push((id, r.text("kind")?, r.text("subject")?));
            } else {
                refused.push(Refusal {
                    id,
                    state: Some(state),
                });
            }
        }
        for id in ids.unwrap_or_default() {
            if !found.iter().any(|r| r.int("id").ok() == Some(*id)) {
                refused.push(Refusal {
                    id: *id,
                    state: None,
                });
            }
        }
        if !refused.is_empty() {
            refused.sort_by_key(|r| r.id);
            refused.dedup();
            return Ok(Err(refused));
        }
        // Open jobs of the same kind and subject: one open job per pair is the queue's rule.
        let dead_ids: Vec<String> = dead.iter().map(|(id, _, _)| id.to_string()).collect();
        let open: Vec<(String, String, i64)> = tx
            .all(
                &format!(
                    "SELECT o.kind, o.subject, o.id FROM jobs o JOIN jobs d \
                     ON o.kind = d.kind AND o.subject = d.subject \
                     WHERE o.state IN ('pending', 'running') AND d.{}",
                    b.in_int_list("id", "$1")
                ),
                args![dead_ids.as_slice()],
            )
            .await?
            .iter()
            .map(|r| Ok((r.text("kind")?, r.text("subject")?, r.int("id")?)))
            .collect::<Result<_, StoreError>>()?;
        // Newest first: the newest dead job of a pair is requeued, older ones are superseded.
        let mut done: Vec<Retried> = Vec::new();
        for (id, kind, subject) in dead {
            let holder = open
                .iter()
                .find(|(k, s, _)| *k == kind && *s == subject)
                .map(|o| o.2)
                .or_else(|| {
                    done.iter().find_map(|d| match d {
                        Retried::Requeued {
                            id: o,
                            kind: k,
                            subject: s,
                        } if *k == kind && *s == subject => Some(*o),
                        _ => None,
                    })
                });
            done.push(match holder {
                Some(open) => Retried::Superseded {
                    id,
                    kind,
                    subject,
                    open,
                },
                None => Retried::Requeued { id, kind, subject },
            });
        }
        let (mut requeue, mut delete) = (Vec::new(), Vec::new());
        for d in &done {
            match d {
                Retried::Requeued { id, .. } => requeue.push(id.to_string()),
                Retried::Superseded { id, .. } => delete.push(id.to_string()),
            }
        }
        if !delete.is_empty() {
            let sql = format!(
                "DELETE FROM jobs WHERE state = 'dead' AND {}",
                b.in_int_list("id", "$1")
            );
            tx.exec(&sql, args![delete.as_slice()]).await?;
        }
        if !requeue.is_empty() {
            let sql = format!(
                "UPDATE jobs SET state = 'pending', run_at = $2, attempts = 0, \
                 lease_owner = NULL, lease_until = NULL, finished_at = NULL, \
                 note = 'requeued by an operator after: ' || COALESCE(last_error, 'no error') \
                   || CASE WHEN last_request_id IS NULL THEN '' \
                      ELSE ' [request id ' || last_request_id || ']' END, \
                 last_error = NULL, last_request_id = NULL, updated_at = $2 \
                 WHERE state = 'dead' AND {}",
                b.in_int_list("id", "$1")
            );
            tx.exec(&sql, args![requeue.as_slice(), now]).await?;
        }
        tx.commit().await?;
        done.sort_by_key(|d| match d {
            Retried::Requeued { id, .. } | Retried::Superseded { id, .. } => *id,
        });
        Ok(Ok(done))
    }

    /// Cancels open jobs by deleting them. A job that does not exist or is not pending or
    /// running refuses the whole call (nothing changes). A running job's worker keeps running
    /// until its next lease heartbeat or its completion, both fenced on the row: they find it
    /// gone, the worker drops its result (`LeaseLost`) and nothing of it is committed. The
    /// schedule may enqueue the same kind and subject again at its next tick.
    pub async fn cancel_jobs(
        &self,
        ids: &[i64],
    ) -> Result<Result<Vec<Cancelled>, Vec<Refusal>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let b = tx.backend();
        let id_list: Vec<String> = ids.iter().map(i64::to_string).collect();
        let sql = format!(
            "SELECT id, kind, subject, state FROM jobs WHERE {} ORDER BY id{}",
            b.in_int_list("id", "$1"),
            b.lock_rows()
        );
        let found = tx.all(&sql, args![id_list.as_slice()]).await?;
        let mut cancelled = Vec::new();
        let mut refused = Vec::new();
        for r in &found {
            let (id, state) = (r.int("id")?, r.text("state")?);
            if state == JobState::Pending.as_str() || state == JobState::Running.as_str() {
                cancelled.push(Cancelled {
                    id,
                    kind: r.text("kind")?,
                    subject: r.text("subject")?,
                    was: state,
                });
            } else {
                refused.push(Refusal {
                    id,
                    state: Some(state),
                });
            }
        }
        for id in ids {
            if !found.iter().any(|r| r.int("id").ok() == Some(*id)) {
                refused.push(Refusal {
                    id: *id,
                    state: None,
                });
            }
        }
        if !refused.is_empty() {
            refused.sort_by_key(|r| r.id);
            refused.dedup();
            return Ok(Err(refused));
        }
        let sql = format!(
            "DELETE FROM jobs WHERE state IN ('pending', 'running') AND {}",
            b.in_int_list("id", "$1")
        );
        tx.exec(&sql, args![id_list.as_slice()]).await?;
        tx.commit().await?;
        Ok(Ok(cancelled))
    }
}

/// `LIMIT` for an optional limit: no limit is the largest one.
fn sql_limit(limit: Option<u64>) -> i64 {
    limit.map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// One row counting `table`'s rows per age bucket of `column` ($1..$3: now − 1 h, 6 h, 24 h).
fn freshness_sql(column: &str, table: &str, filter: &str) -> String {
    let c = column;
    format!(
        "SELECT COUNT(CASE WHEN {c} >= $1 THEN 1 END) AS under_1h, \
         COUNT(CASE WHEN {c} < $1 AND {c} >= $2 THEN 1 END) AS under_6h, \
         COUNT(CASE WHEN {c} < $2 AND {c} >= $3 THEN 1 END) AS under_24h, \
         COUNT(CASE WHEN {c} < $3 THEN 1 END) AS over_24h, \
         COUNT(CASE WHEN {c} IS NULL THEN 1 END) AS never \
         FROM {table} {filter}"
    )
}
