//! A thin backend-neutral layer over the two pools.
//!
//! SQLite accepts PostgreSQL's `$N` placeholders, so most statements are one SQL string for both
//! backends. What differs is how values travel: timestamps are bound as the fixed-format TEXT on
//! SQLite and as TIMESTAMPTZ on PostgreSQL, lists as a JSON array (read with `json_each`) on
//! SQLite and as a `text[]` on PostgreSQL. [`Arg`] and [`Row`] hide exactly that, nothing more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{PgPool, Postgres, Row as _, Sqlite, SqlitePool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{StoreError, time};
use crate::events;

/// Which database a statement runs on.
///
/// The dialects differ in a handful of spellings, each one helper below; a statement is written
/// once with the helper in its place. Only the claim (`store/queue.rs`) is two statements,
/// because PostgreSQL's `FOR UPDATE SKIP LOCKED` changes its shape, not just a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The rows of a list parameter as one text column `value`.
    pub(crate) fn list_rows(self, param: &str) -> String {
        match self {
            Backend::Sqlite => format!("json_each({param})"),
            Backend::Postgres => format!("UNNEST({param}::text[]) AS u(value)"),
        }
    }

    /// `col` is one of the list parameter's strings.
    pub(crate) fn in_list(self, col: &str, param: &str) -> String {
        match self {
            Backend::Sqlite => format!("{col} IN (SELECT value FROM json_each({param}))"),
            Backend::Postgres => format!("{col} = ANY({param})"),
        }
    }

    /// `col` is none of the list parameter's strings.
    pub(crate) fn not_in_list(self, col: &str, param: &str) -> String {
        match self {
            Backend::Sqlite => format!("{col} NOT IN (SELECT value FROM json_each({param}))"),
            Backend::Postgres => format!("{col} <> ALL({param})"),
        }
    }

    /// The integer column `col` is one of the list parameter's strings, read as integers.
    pub(crate) fn in_int_list(self, col: &str, param: &str) -> String {
        match self {
            Backend::Sqlite => {
                format!("{col} IN (SELECT CAST(value AS INTEGER) FROM json_each({param}))")
            }
            Backend::Postgres => format!("{col} = ANY({param}::text[]::bigint[])"),
        }
    }

    /// A text parameter written into a JSON column (TEXT checked by `json_valid` on SQLite,
    /// JSONB on PostgreSQL).
    pub(crate) fn json_param(self, param: &str) -> String {
        match self {
            Backend::Sqlite => param.to_owned(),
            Backend::Postgres => format!("{param}::jsonb"),
        }
    }

    /// A JSON column read back as text under its own name.
    pub(crate) fn json_text(self, col: &str) -> String {
        match self {
            Backend::Sqlite => col.to_owned(),
            Backend::Postgres => format!("{col}::text AS {col}"),
        }
    }

    /// The rows of a parameter holding a JSON array of objects, one column `value` each (read
    /// its fields with [`Backend::json_field`]).
    pub(crate) fn json_rows(self, param: &str) -> String {
        match self {
            Backend::Sqlite => format!("json_each({param})"),
            Backend::Postgres => format!("jsonb_array_elements({param}::jsonb) AS u(value)"),
        }
    }

    /// A field of a [`Backend::json_rows`] row, as `sql_type` (PostgreSQL's cast; SQLite reads
    /// JSON numbers and strings as its own types). `jsonb` keeps the field as JSON: JSONB on
    /// PostgreSQL, its JSON text on SQLite.
    pub(crate) fn json_field(self, field: &str, sql_type: &str) -> String {
        match (self, sql_type) {
            (Backend::Sqlite, _) => format!("json_extract(value, '$.{field}')"),
            (Backend::Postgres, "jsonb") => format!("(value -> '{field}')"),
            (Backend::Postgres, _) => format!("(value ->> '{field}')::{sql_type}"),
        }
    }

    /// The suffix that locks the selected rows until the transaction ends; SQLite's
    /// `BEGIN IMMEDIATE` already holds the whole database's write lock.
    pub(crate) fn lock_rows(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }
}

/// A thread with a runtime of its own, for SQLite's writes of several statements or several
/// callers (see [`Pool::run_apart`]). One thread, not the blocking pool: the writes queue for
/// one writer anyway, and each thread of the blocking pool (a connections sync each) grew a
/// malloc arena of its own (the 100,000-vehicle memory run: 40.5 → 64.2 MiB). The thread ends
/// when the last clone of the store is dropped; tasks still on it are dropped with it.
#[derive(Debug)]
pub(crate) struct WriterThread {
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl WriterThread {
    fn start() -> std::io::Result<WriterThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(WriterThread {
            runtime: handle,
            stop: Some(stop),
        })
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Sqlite(SqlitePool, WriteGate),
    Postgres(PgPool),
}

/// SQLite's one writer, queued for in this process.
///
/// SQLite lets one connection write at a time. A connection that finds the write lock taken
/// waits in SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25 … ms between tries and
/// is not told when the lock frees: behind a 20 ms group commit a waiting writer slept past
/// it, and a newcomer could take the lock between its sleeps. Every writing statement and
/// write transaction of this process first takes this gate, a fair (first come, first served)
/// semaphore that wakes the next writer the moment the previous one finishes; the busy handler
/// is left for writers in other processes (a CLI command beside the daemon). Reads need no
/// gate: WAL readers never wait for the writer.
///
/// Whoever passes the gate writes on [`WriteGate::writer`], one connection kept for writes
/// alone. A SQLite connection drops its whole page cache when it finds that another connection
/// has committed since its last transaction. With the pool's eight connections taking turns at
/// writing, nearly every write transaction began by re-reading, from the WAL and the file,
/// the index pages it was about to change, and freeing the cache it had: in the no-limit cycle,
/// whose bottleneck on SQLite is the single writer, a fifth of the SQLite threads' CPU went to
/// `free` alone. The writer's own commits leave its cache warm.
#[derive(Clone, Debug)]
pub(crate) struct WriteGate {
    permit: Arc<Semaphore>,
    /// The longest a writer waits for the gate, then fails as a pool timeout would (a
    /// transient error: the job is retried).
    wait: Duration,
    /// The connection every write of this process runs on (for an in-memory database, the
    /// pool's one connection).
    pub(crate) writer: SqlitePool,
    /// Where the writes made for several callers run ([`Pool::run_apart`]).
    thread: Arc<WriterThread>,
}

impl WriteGate {
    /// Fails only if the writer thread cannot be started.
    pub(crate) fn new(wait: Duration, writer: SqlitePool) -> std::io::Result<WriteGate> {
        Ok(WriteGate {
            permit: Arc::new(Semaphore::new(1)),
            wait,
            writer,
            thread: Arc::new(WriterThread::start()?),
        })
    }

    pub(crate) async fn enter(&self) -> Result<Writing, StoreError> {
        let asked = Instant::now();
        match tokio::time::timeout(self.wait, self.permit.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Writing {
                _permit: permit,
                waited: asked.elapsed(),
                since: Instant::now(),
            }),
            _ => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
    }

    /// The gate for a statement that may write: every statement but one that begins with
    /// SELECT (an UPDATE … RETURNING read with `all` writes).
    async fn enter_unless_reading(&self, sql: &str) -> Result<Option<Writing>, StoreError> {
        let reads_only = sql
            .trim_start()
            .get(..6)
            .is_some_and(|w| w.eq_ignore_ascii_case("select"));
        Ok(match reads_only {
            true => None,
            false => Some(self.enter().await?),
        })
    }
}

/// The write gate, held: dropped, it lets the next writer in and reports how long this one
/// waited for it and held it ([`events::sqlite_write`]).
#[derive(Debug)]
pub(crate) struct Writing {
    _permit: OwnedSemaphorePermit,
    waited: Duration,
    since: Instant,
}

impl Drop for Writing {
    fn drop(&mut self) {
        events::sqlite_write(self.waited, self.since.elapsed());
    }
}

/// One bound value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
    Float(Option<f64>),
    Time(Option<DateTime<Utc>>),
    /// A list of strings: JSON text on SQLite (`json_each`), `text[]` on PostgreSQL (`UNNEST`).
    List(&'a [String]),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(v))
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v)
    }
}
impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}
impl From<f64> for Arg<'_> {
    fn from(v: f64) -> Self {
        Arg::Float(Some(v))
    }
}
impl From<DateTime<Utc>> for Arg<'_> {
    fn from(v: DateTime<Utc>) -> Self {
        Arg::Time(Some(v))
    }
}
impl From<Option<DateTime<Utc>>> for Arg<'_> {
    fn from(v: Option<DateTime<Utc>>) -> Self {
        Arg::Time(v)
    }
}
impl<'a> From<&'a [String]> for Arg<'a> {
    fn from(v: &'a [String]) -> Self {
        Arg::List(v)
    }
}

/// `args![a, b, c]`: a slice of [`Arg`]s, converting each value with `From`.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::store::db::Arg::from($v)),*][..] };
}
pub(crate) use args;

fn json_list(v: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("list to JSON: {e}")))
}

fn sqlite_query<'q>(
    sql: &'q str,
    args: &'q [Arg<'q>],
) -> Result<Query<'q, Sqlite, SqliteArguments<'q>>, StoreError> {
    let mut q = sqlx::query(sql);
    for a in args {
        q = match *a {
            Arg::Text(v) => q.bind(v),
            Arg::Int(v) => q.bind(v),
            Arg::Float(v) => q.bind(v),
            Arg::Time(v) => q.bind(v.map(time::to_text)),
            Arg::List(v) => q.bind(json_list(v)?),
        };
    }
    Ok(q)
}

fn pg_query<'q>(sql: &'q str, args: &'q [Arg<'q>]) -> Query<'q, Postgres, PgArguments> {
    let mut q = sqlx::query(sql);
    for a in args {
        q = match *a {
            Arg::Text(v) => q.bind(v),
            Arg::Int(v) => q.bind(v),
            Arg::Float(v) => q.bind(v),
            Arg::Time(v) => q.bind(v),
            Arg::List(v) => q.bind(v),
        };
    }
    q
}

impl Pool {
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Pool::Sqlite(..) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs `work`, a write made for several callers at once (a group commit, a batch of
    /// allowance reservations) or a transaction of several statements (a connections sync), to
    /// its end in a task of its own: a caller dropped meanwhile (a job abandoned at shutdown)
    /// cannot roll it back. `None` if that task panicked or the runtime is shutting down.
    ///
    /// On SQLite the task runs on the store's [`WriterThread`]. SQLite's one writer is held
    /// from the first statement to the commit, and each statement is a round trip to the
    /// connection's thread. As a task of the daemon's runtime, the write waited after every
    /// answer for a runtime worker, behind every other task that was ready (hundreds of
    /// workers' HTTP and JSON), with the writer held; on a thread whose only tasks are such
    /// writes it runs on the moment the answer comes. In the no-limit cycle bench on SQLite,
    /// moving the group commit off the runtime won all three pairs (0.501/0.540, 0.514/0.556,
    /// 0.404/0.511) and cut the daemon's CPU by 1.1 to 2.1 s. PostgreSQL has no single writer:
    /// a task of the runtime.
    pub(crate) async fn run_apart<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        match self {
            Pool::Sqlite(_, gate) => gate.thread.runtime.spawn(work).await.ok(),
            Pool::Postgres(_) => tokio::spawn(work).await.ok(),
        }
    }

    /// Runs one statement in autocommit; returns the rows it changed.
    pub(crate) async fn exec(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        Ok(match self {
            Pool::Sqlite(_, gate) => {
                let _writing = gate.enter().await?;
                sqlite_query(sql, args)?
                    .execute(&gate.writer)
                    .await?
                    .rows_affected()
            }
            Pool::Postgres(p) => pg_query(sql, args).execute(p).await?.rows_affected(),
        })
    }

    pub(crate) async fn all(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        Ok(match self {
            Pool::Sqlite(p, gate) => {
                let writing = gate.enter_unless_reading(sql).await?;
                sqlite_query(sql, args)?
                    .fetch_all(if writing.is_some() { &gate.writer } else { p })
                    .await?
                    .into_iter()
                    .map(Row::Sqlite)
                    .collect()
            }
            Pool::Postgres(p) => pg_query(sql, args)
                .fetch_all(p)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
        })
    }

    pub(crate) async fn opt(&self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>, StoreError> {
        Ok(match self {
            Pool::Sqlite(p, gate) => {
                let writing = gate.enter_unless_reading(sql).await?;
                sqlite_query(sql, args)?
                    .fetch_optional(if writing.is_some() { &gate.writer } else { p })
                    .await?
                    .map(Row::Sqlite)
            }
            Pool::Postgres(p) => pg_query(sql, args)
                .fetch_optional(p)
                .await?
                .map(Row::Postgres),
        })
    }

    /// Starts a write transaction. On SQLite it first takes the [`WriteGate`], then begins
    /// with `BEGIN IMMEDIATE`: the write lock is taken up front, so a writer of another process
    /// waits on busy_timeout instead of failing with SQLITE_BUSY when a read transaction would
    /// later need to upgrade. The gate is held until the transaction ends.
    pub(crate) async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Pool::Sqlite(_, gate) => {
                let writing = gate.enter().await?;
                Tx::Sqlite(gate.writer.begin_with("BEGIN IMMEDIATE").await?, writing)
            }
            Pool::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }
}

/// An open transaction; dropped without [`Tx::commit`] it rolls back. On SQLite it holds the
/// [`WriteGate`] until then.
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>, Writing),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Tx {
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(..) => Backend::Sqlite,
            Tx::Postgres(_) => Backend::Postgres,
        }
    }

    pub(crate) async fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        Ok(match self {
            Tx::Sqlite(t, _) => sqlite_query(sql, args)?
                .execute(&mut **t)
                .await?
                .rows_affected(),
            Tx::Postgres(t) => pg_query(sql, args).execute(&mut **t).await?.rows_affected(),
        })
    }

    pub(crate) async fn all(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Vec<Row>, StoreError> {
        Ok(match self {
            Tx::Sqlite(t, _) => sqlite_query(sql, args)?
                .fetch_all(&mut **t)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
            Tx::Postgres(t) => pg_query(sql, args)
                .fetch_all(&mut **t)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
        })
    }

    /// PostgreSQL: plans this transaction's next statements (until [`Tx::plan_cached`]) for their
    /// parameters at every execution (`SET LOCAL plan_cache_mode`), for statements that read or
    /// update by a list (`= ANY($1)`, `UNNEST`) the rows of a table that a first cycle fills
    /// from empty: in the group commit and the connections sync. A prepared statement's generic plan is chosen after
    /// five executions and kept until the table's next ANALYZE; fixed while `vehicles` was
    /// nearly empty, it scanned the whole table for the rest of the cycle (3.7 ms a sync's
    /// lookup; 0.4 ms instead of 0.1 the group commit's update of 10,000 vehicles). Statements
    /// that look up one row by its key (the claim, a poll's context) keep the cached plan:
    /// planning them at every execution was 1.3 s of the database's 10 s of CPU in a cycle.
    /// SQLite: nothing to do.
    pub(crate) async fn plan_per_execution(&mut self) -> Result<(), StoreError> {
        if let Tx::Postgres(t) = self {
            sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
                .execute(&mut **t)
                .await?;
        }
        Ok(())
    }

    /// PostgreSQL: back to the plan cache for the rest of this transaction (undoes
    /// [`Tx::plan_per_execution`]), for statements whose every plan is the same: an UNNEST
    /// insert, or a lookup of one dictionary row by its unique key per element. Planning the
    /// group commit's ingest at every execution cost a tenth of its time. SQLite: nothing to do.
    pub(crate) async fn plan_cached(&mut self) -> Result<(), StoreError> {
        if let Tx::Postgres(t) = self {
            sqlx::query("SET LOCAL plan_cache_mode = auto")
                .execute(&mut **t)
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(t, _writing) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }
}

/// A result row; accessors decode by column name into the API's types.
pub(crate) enum Row {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl Row {
    pub(crate) fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(match self {
            Row::Sqlite(r) => r.try_get(col)?,
            Row::Postgres(r) => r.try_get(col)?,
        })
    }

    pub(crate) fn text(&self, col: &str) -> Result<String, StoreError> {
        self.opt_text(col)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {col} is NULL")))
    }

    pub(crate) fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        Ok(match self {
            Row::Sqlite(r) => r.try_get(col)?,
            Row::Postgres(r) => r.try_get(col)?,
        })
    }

    pub(crate) fn int(&self, col: &str) -> Result<i64, StoreError> {
        self.opt_int(col)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {col} is NULL")))
    }

    pub(crate) fn opt_float(&self, col: &str) -> Result<Option<f64>, StoreError> {
        Ok(match self {
            Row::Sqlite(r) => r.try_get(col)?,
            Row::Postgres(r) => r.try_get(col)?,
        })
    }

    pub(crate) fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self {
            Row::Sqlite(r) => r
                .try_get::<Option<String>, _>(col)?
                .map(|s| time::from_text(&s))
                .transpose(),
            Row::Postgres(r) => Ok(r.try_get(col)?),
        }
    }

    pub(crate) fn time(&self, col: &str) -> Result<DateTime<Utc>, StoreError> {
        self.opt_time(col)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {col} is NULL")))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::{Store, StoreOptions};

    /// SQLite: a write transaction holds the write gate until it ends. Another writer of the
    /// process waits for the gate (and fails transiently if it waits past the acquire timeout);
    /// a reader never waits for it.
    #[tokio::test]
    async fn sqlite_writers_wait_for_the_gate_and_readers_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("gate.db").display());
        let opts = StoreOptions {
            acquire_timeout: Duration::from_millis(300),
            ..StoreOptions::default()
        };
        let store = Store::connect(&url, &opts).await.unwrap();
        store.migrate().await.unwrap();
        let pool = store.pool.clone();

        let tx = pool.begin().await.unwrap();
        let read = pool.opt("SELECT count(*) AS n FROM jobs", args![]).await;
        assert!(read.is_ok(), "a reader passes an open write transaction");
        let started = std::time::Instant::now();
        let write = pool
            .exec("UPDATE jobs SET attempts = attempts WHERE id = 0", args![])
            .await;
        let err = write.expect_err("the writer waits for the gate, then gives up");
        assert!(err.is_transient(), "{err}");
        // The gate's wait (300 ms), not SQLite's busy handler (5 s): the writer queued here.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        let returning = pool
            .all(
                "UPDATE jobs SET attempts = 0 WHERE id = 0 RETURNING id",
                args![],
            )
            .await;
        assert!(
            returning.is_err(),
            "a RETURNING write read with `all` takes the gate too"
        );

        // Once the transaction ends, the next writer goes through at once.
        tx.commit().await.unwrap();
        let started = std::time::Instant::now();
        pool.exec("UPDATE jobs SET attempts = attempts WHERE id = 0", args![])
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(300));
        store.close().await;
    }
}
