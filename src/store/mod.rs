//! Durable storage: one [`Store`] over SQLite (embedded default) and PostgreSQL (production,
//! several daemons on one database).
//!
//! The store speaks in domain operations (enqueue, claim, finish a poll, upsert vehicles), not
//! in SQL. Where each lives:
//! - `queue.rs`: the job lifecycle (enqueue, claim, lease, release, retry, kill, complete);
//! - `effects.rs`: a job's effect committed with its completion (`finish_*`); `group.rs`: a
//!   poll's (`finish_poll`), committed together with the other polls finishing at that moment;
//!   `reserve.rs`: the allowance's "count this call before it is sent", grouped the same way;
//! - `samples.rs`: the time series (ingest, read back); `compact.rs`: how a sample is stored in
//!   few bytes (migration 0008) without losing a byte of it; `cold.rs`: PostgreSQL's hot and
//!   cold tables (migration 0012), which reading goes where and how old ones move;
//! - `vehicle_status.rs`: every rule and statement that changes a vehicle's status;
//! - `webhooks.rs`: one webhook delivery in one transaction; `connect.rs`: Connect states;
//! - `fleet.rs`: users, vehicles, ticks, pauses; `ops.rs`: operator commands and `status`;
//! - `budget.rs`: the shared rate budget and daemon heartbeats; `audit.rs`: per-token counts;
//! - `db.rs`: the two pools behind one API, and the few dialect differences as helpers;
//!   `sqlite.rs` / `postgres.rs`: what only one backend does (array inserts, partitions).
//!
//! Methods only tests use are compiled with the `test-support` feature (the integration tests
//! and benches turn it on). Two rules shape the store:
//! 1. The effect and the bookkeeping commit together: every `finish_*` writes its data and
//!    completes its job in one transaction, and every change to a claimed job is fenced by the
//!    claim's lease token, so a worker that lost its lease changes nothing ([`StoreError::LeaseLost`]).
//! 2. Every wait is data: backoffs, 429s and pauses are `run_at` / `paused_until` values; a
//!    claim only ever returns jobs that are due.

// SQL fragments other files use: the vehicle-status rules (`pollable!`, `reconnect_set!`),
// declared first so that every module below sees them.
#[macro_use]
mod vehicle_status;

mod allowance;
mod audit;
mod budget;
mod cold;
pub mod compact;
mod connect;
mod db;
mod effects;
mod fleet;
mod group;
mod migrate;
mod ops;
mod postgres;
mod queue;
mod reserve;
mod samples;
mod sqlite;
pub mod time;
mod webhooks;

pub use allowance::{BudgetRow, PlanCandidate, PlanRecord, PollContext};
pub use audit::TokenAuditRow;
pub use budget::{BudgetView, DaemonBeat, DaemonRow};
pub use connect::{ConnectRedemption, StateProof};
pub use ops::{Cancelled, Freshness, JobFilter, JobRow, Refusal, Retried};
pub use queue::OpenJob;
pub use webhooks::{VehicleErrorUpdate, WebhookDelivery, WebhookOutcome};

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use db::Pool;

/// Errors at the storage boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The job's lease was taken over (expired and reclaimed) or the job was removed: this
    /// worker must drop its result; nothing was written.
    #[error("lease lost on job {job_id}")]
    LeaseLost { job_id: i64 },
    /// The database URL is not `sqlite:…` or `postgres://…`, or does not parse. Never contains
    /// the URL itself (it may hold a password).
    #[error("bad database URL: {0}")]
    BadUrl(String),
    /// A stored value the code cannot read back (unknown enum text, bad timestamp).
    #[error("unexpected stored data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True for failures that may pass on their own (lost connection, pool exhausted, database
    /// restarting, lock contention, serialization failure): retry later rather than give up.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => sqlx_is_transient(e),
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => sqlx_is_transient(e),
            _ => false,
        }
    }
}

/// Creates a new SQLite database file readable by its owner only (0600): it holds vehicle
/// locations. SQLite gives the `-wal` and `-shm` files the database file's mode, so they are
/// owner-only too. An existing file is left as it is (a dashboard may read it through its
/// group); any failure here is left for SQLite to report when it opens the file.
fn create_owner_only(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn sqlx_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else { return false };
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // Extended result codes: the primary code is the low byte. 5 = BUSY, 6 = LOCKED.
                return code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
            }
            // PostgreSQL SQLSTATE: connection exceptions, serialization failure, deadlock,
            // shutdown / starting up, too many connections, statement timeout, lock timeout.
            code.starts_with("08")
                || matches!(
                    &*code,
                    "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300" | "57014" | "55P03"
                )
        }
        _ => false,
    }
}

/// An enum stored as text was not one of the known values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what}: {value:?}")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

impl From<UnknownValue> for StoreError {
    fn from(e: UnknownValue) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// Declares a text-backed enum with `as_str`, `Display` and `FromStr`.
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue { what: $what, value: s.to_owned() }),
                }
            }
        }
    };
}

text_enum!(
    /// What a job does.
    JobKind, "job kind" {
        DiscoverUsers => "discover_users",
        SyncConnections => "sync_connections",
        PollSignals => "poll_signals",
    }
);

text_enum!(
    /// Where a job is in its life.
    JobState, "job state" {
        Pending => "pending",
        Running => "running",
        Done => "done",
        Dead => "dead",
    }
);

text_enum!(
    /// How the daemon learned of a user.
    UserSource, "user source" {
        Cli => "cli",
        Connect => "connect",
        Webhook => "webhook",
        Discovery => "discovery",
    }
);

text_enum!(
    /// A vehicle's connection state as far as polling is concerned.
    VehicleStatus, "vehicle status" {
        Connected => "connected",
        Disconnected => "disconnected",
        NeedsReconnect => "needs_reconnect",
        PermissionDenied => "permission_denied",
        BillingLimited => "billing_limited",
        Incompatible => "incompatible",
    }
);

text_enum!(
    /// How a sample arrived.
    SampleSource, "sample source" {
        Poll => "poll",
        Webhook => "webhook",
    }
);

/// Pool and timeout settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// PostgreSQL / SQLite-file pool size (an in-memory SQLite database always has one). A
    /// SQLite file gets one connection more, kept for writes.
    pub max_connections: u32,
    /// How long to wait for a pooled connection before failing (transiently).
    pub acquire_timeout: Duration,
    /// PostgreSQL `statement_timeout`, so a stuck statement cannot hold a worker forever.
    pub statement_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// A claimed job. `lease_owner` is the fencing token of this claim: every change to the job
/// must present it, so a worker whose lease expired and was taken over changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub kind: JobKind,
    pub subject: String,
    /// Failures so far (retries, kills and reclaims after a dead worker).
    pub attempts: i32,
    pub run_at: DateTime<Utc>,
    pub lease_owner: String,
}

/// A job that gave up, for `status` output.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadJob {
    pub id: i64,
    pub kind: String,
    pub subject: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub last_request_id: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One reading. Its identity is (vehicle_id, code, recorded_at); the first writer wins.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSample {
    pub vehicle_id: String,
    pub code: String,
    /// The car's `oemUpdatedAt`, UTC.
    pub recorded_at: DateTime<Utc>,
    pub value_num: Option<f64>,
    pub unit: Option<String>,
    /// The raw JSON of the signal, as text (must be valid JSON).
    pub body: String,
    pub source: SampleSource,
}

/// A stored sample, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    pub vehicle_id: String,
    pub code: String,
    pub recorded_at: DateTime<Utc>,
    pub value_num: Option<f64>,
    pub unit: Option<String>,
    /// The raw JSON body, as text.
    pub body: String,
    pub source: SampleSource,
    pub ingested_at: DateTime<Utc>,
}

/// The latest status of one signal of one vehicle (SUCCESS / ERROR / UNAVAILABLE …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalState {
    pub vehicle_id: String,
    pub code: String,
    pub status: String,
    pub error_type: Option<String>,
    pub error_code: Option<String>,
    pub observed_at: DateTime<Utc>,
}

/// What a successful signals poll of one vehicle produced.
#[derive(Debug, Clone, PartialEq)]
pub struct PollResult {
    pub vehicle_id: String,
    pub samples: Vec<NewSample>,
    pub statuses: Vec<SignalState>,
    pub polled_at: DateTime<Utc>,
    /// The planner's decision after this poll (with an allowance), committed with it.
    pub plan: Option<PlanRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollOutcome {
    /// New rows; readings already stored are not counted.
    pub samples_inserted: u64,
}

/// A vehicle as listed by a user's connections.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VehicleUpsert {
    pub vehicle_id: String,
    pub connection_id: Option<String>,
    pub make: Option<String>,
    pub model: Option<String>,
    pub year: Option<i64>,
    pub powertrain_type: Option<String>,
    pub mode: Option<String>,
    pub permissions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncOutcome {
    /// Vehicles seen for the first time (a poll was enqueued for each), sorted.
    pub new_vehicles: Vec<String>,
    /// The user's vehicles no longer listed, now `disconnected`, sorted.
    pub vanished: Vec<String>,
}

/// A vehicle status decided by a job (e.g. a poll that hit a permission or billing error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleStatusUpdate {
    pub status: VehicleStatus,
    pub reason: String,
    pub request_id: Option<String>,
    /// Polling suspended until then (None: not suspended by time).
    pub blocked_until: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub user_id: String,
    pub source: UserSource,
    pub created_at: DateTime<Utc>,
    /// Last successful connections sync.
    pub last_synced_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleRow {
    pub vehicle_id: String,
    pub user_id: String,
    pub connection_id: Option<String>,
    pub make: Option<String>,
    pub model: Option<String>,
    pub year: Option<i64>,
    pub powertrain_type: Option<String>,
    pub mode: Option<String>,
    pub permissions: Vec<String>,
    pub status: VehicleStatus,
    pub status_reason: Option<String>,
    pub status_request_id: Option<String>,
    pub status_changed_at: DateTime<Utc>,
    pub blocked_until: Option<DateTime<Utc>>,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// Last successful signals poll.
    pub last_polled_at: Option<DateTime<Utc>>,
}

/// The database. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// Polls waiting to be committed together (`group.rs`); shared by the clones.
    group: std::sync::Arc<group::GroupCommit>,
    /// Allowance reservations waiting to be made together (`reserve.rs`).
    reserve: std::sync::Arc<reserve::GroupReserve>,
}

/// A pooled PostgreSQL connection idle this long is pinged before it is used.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Prepared statements each SQLite connection keeps (sqlx's default is 100). A multi-row insert
/// is new text for every row count, so a large cache fills with statements used once: with 100,
/// the 100,000-vehicle run peaked at 71 MiB (64 is the target), with 24 at 51–57; the no-limit
/// cycle ran as fast with either.
const SQLITE_STATEMENT_CACHE: usize = 24;

impl Store {
    /// Connects to `sqlite://path` (file created if missing; WAL, busy_timeout 5 s, foreign
    /// keys, synchronous=NORMAL), `sqlite::memory:` (tests; one connection, kept open) or
    /// `postgres://…` (pool with `statement_timeout`, acquire timeout, and a liveness check
    /// before using a connection idle for a second or more, so a restarted server is
    /// reconnected). Does not migrate.
    pub async fn connect(url: &str, opts: &StoreOptions) -> Result<Store, StoreError> {
        let pool = if url.starts_with("sqlite:") {
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            let co = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::BadUrl(format!("SQLite URL does not parse: {e}")))?
                .create_if_missing(true)
                .journal_mode(if memory {
                    SqliteJournalMode::Memory
                } else {
                    SqliteJournalMode::Wal
                })
                .busy_timeout(Duration::from_secs(5))
                .statement_cache_capacity(SQLITE_STATEMENT_CACHE)
                .foreign_keys(true)
                // No memory map (`mmap_size`): the pages it maps count in the daemon's
                // resident memory (118.7 MiB instead of 56 in the 100,000-vehicle run), and the
                // no-limit cycle ran no faster with it.
                .synchronous(SqliteSynchronous::Normal);
            if !memory {
                create_owner_only(co.get_filename());
            }
            // No ping before each acquire: a SQLite connection is a file handle that cannot go
            // stale, and the ping is a round trip to the connection's thread per statement.
            let po = SqlitePoolOptions::new()
                .acquire_timeout(opts.acquire_timeout)
                .test_before_acquire(false);
            // An in-memory database lives as long as its connection: keep exactly one, forever,
            // and write on it too. A file gets a connection of its own for writes, kept open so
            // its page cache stays warm (see `WriteGate`).
            let (readers, writer) = if memory {
                let pool = po
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(co)
                    .await?;
                (pool.clone(), pool)
            } else {
                let writer = po
                    .clone()
                    .max_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(co.clone())
                    .await?;
                let readers = po
                    .max_connections(opts.max_connections.max(1))
                    .connect_with(co)
                    .await?;
                (readers, writer)
            };
            let gate = db::WriteGate::new(opts.acquire_timeout, writer)
                .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
            Pool::Sqlite(readers, gate)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let timeout_ms = opts.statement_timeout.as_millis().max(1);
            let co = PgConnectOptions::from_str(url)
                .map_err(|e| StoreError::BadUrl(format!("PostgreSQL URL does not parse: {e}")))?
                .application_name("smartcar-sync")
                // Prepared statements keep PostgreSQL's default plan caching: planning every
                // execution with its parameters (`force_custom_plan`) cost 2.7 s of the
                // database's 10 s of CPU in the no-limit cycle bench. The transactions a
                // generic plan hurt plan per execution (see `Tx::plan_per_execution`).
                .options([("statement_timeout", format!("{timeout_ms}ms"))]);
            let pool = PgPoolOptions::new()
                .max_connections(opts.max_connections.max(1))
                .acquire_timeout(opts.acquire_timeout)
                // A connection idle for a while is pinged before use (a restarted server is
                // reconnected instead of failing a job); one in steady use is not: a ping per
                // statement doubled the round trips of a busy queue.
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= PING_IF_IDLE_FOR {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_with(co)
                .await?;
            Pool::Postgres(pool)
        } else {
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(StoreError::BadUrl(format!(
                "unsupported scheme {scheme:?}: expected sqlite: or postgres://"
            )));
        };
        let group = group::GroupCommit::new(pool.backend());
        Ok(Store {
            pool,
            group,
            reserve: reserve::GroupReserve::new(),
        })
    }

    /// Applies the embedded migrations (idempotent; several daemons may call it at once on
    /// PostgreSQL) and makes sure the monthly sample partitions around now exist.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.migrate_until(i64::MAX).await?;
        self.ensure_partitions(Utc::now(), 3).await?;
        Ok(())
    }

    /// Applies the embedded migrations up to `version` only, and nothing else: for the upgrade
    /// tests, which fill a database as an older release left it, then migrate it.
    #[doc(hidden)]
    pub async fn migrate_until(&self, version: i64) -> Result<(), StoreError> {
        match &self.pool {
            // sqlx takes no migration lock on SQLite: two processes starting at once (`run`
            // and `status`, say) can both try version N, and the loser fails on "already
            // exists". Its retry finds N applied and moves on.
            Pool::Sqlite(p, _) => {
                let mut tries = 0;
                loop {
                    match migrate::sqlite(version).await?.run(p).await {
                        Ok(()) => break,
                        Err(e) if tries < 5 => {
                            tries += 1;
                            tracing::debug!(error = %e, "migration raced another process; retrying");
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Pool::Postgres(p) => migrate::postgres(version).await?.run(p).await?,
        }
        Ok(())
    }

    /// "sqlite" or "postgres".
    pub fn backend_name(&self) -> &'static str {
        match self.pool.backend() {
            db::Backend::Sqlite => "sqlite",
            db::Backend::Postgres => "postgres",
        }
    }

    /// Closes the pool, waiting for checked-out connections to come back (shutdown).
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p, gate) => {
                p.close().await;
                gate.writer.close().await;
            }
            Pool::Postgres(p) => p.close().await,
        }
    }

    /// PostgreSQL: creates the monthly partitions `signal_samples_YYYYMM` from the previous
    /// month to `months_ahead` months after `now` (a month whose rows already sit in the
    /// default partition is skipped with a warning). Returns the partitions created.
    /// SQLite: nothing to do.
    pub async fn ensure_partitions(
        &self,
        now: DateTime<Utc>,
        months_ahead: u32,
    ) -> Result<Vec<String>, StoreError> {
        match &self.pool {
            Pool::Sqlite(..) => Ok(Vec::new()),
            Pool::Postgres(p) => postgres::ensure_partitions(p, now, months_ahead).await,
        }
    }

    /// Retention. PostgreSQL: drops the monthly partitions that end at or before `cutoff`
    /// (and deletes older rows from the default partition); returns the dropped partitions.
    /// SQLite: deletes the rows recorded before `cutoff`; returns an empty list.
    pub async fn drop_partitions_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        match &self.pool {
            Pool::Sqlite(_, gate) => {
                let _writing = gate.enter().await?;
                sqlite::delete_samples_before(&gate.writer, cutoff).await?;
                Ok(Vec::new())
            }
            Pool::Postgres(p) => postgres::drop_partitions_before(p, cutoff).await,
        }
    }
}
