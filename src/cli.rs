//! The command line: `smartcar-sync [--config PATH] <command>`. Each command's output is meant
//! for a person at a terminal. Exit statuses follow sysexits.h ([`exit`]), so systemd and
//! operators can tell "fix the configuration" from "the database is down, retry"; 75 is a
//! `sync-once` that reached its deadline with jobs still deferred.
//!
//! Output goes through [`out!`], never `println!`: `println!` panics when stdout is a closed pipe
//! (`smartcar-sync vehicles list | head -1`), whereas `out!` returns the `BrokenPipe` error and
//! [`run`] turns it into a quiet exit 0, as any Unix filter behaves.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::daemon::{Daemon, open_store};
use crate::store::{JobKind, JobState, UserSource, VehicleStatus};

/// `EX_CONFIG` from sysexits.h: systemd and operators recognise it.
pub const EXIT_CONFIG: u8 = exit::CONFIG;

/// The exit statuses, from sysexits.h. `RestartPreventExitStatus=` in the unit lists the ones a
/// restart cannot fix.
pub mod exit {
    /// Failure: `sync-once` ended with dead jobs, or an error not classified below.
    pub const FAILURE: u8 = 1;
    /// `EX_UNAVAILABLE`: the database cannot be reached (PostgreSQL down, network). A restart
    /// may fix it.
    pub const UNAVAILABLE: u8 = 69;
    /// `EX_OSERR`: a listener cannot be bound (address in use, no permission for the port).
    pub const CANNOT_LISTEN: u8 = 71;
    /// `EX_CANTCREAT`: the SQLite database cannot be created or written (directory missing,
    /// permissions, read-only file system).
    pub const CANNOT_CREATE: u8 = 73;
    /// `EX_CONFIG`: the configuration is wrong (a key named in the message), including a
    /// database URL that does not parse and credentials the database refuses.
    pub const CONFIG: u8 = 78;
}

/// The exit status an error deserves: the first classifiable cause in its chain.
pub fn exit_status(e: &anyhow::Error) -> u8 {
    use crate::store::StoreError;
    for cause in e.chain() {
        if cause.downcast_ref::<ConfigError>().is_some() {
            return exit::CONFIG;
        }
        if cause.downcast_ref::<crate::daemon::ListenError>().is_some() {
            return exit::CANNOT_LISTEN;
        }
        match cause.downcast_ref::<StoreError>() {
            Some(StoreError::BadUrl(_)) => return exit::CONFIG,
            Some(StoreError::Database(e)) => return sqlx_exit_status(e),
            Some(StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e))) => {
                return sqlx_exit_status(e);
            }
            _ => {}
        }
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return sqlx_exit_status(e);
        }
    }
    exit::FAILURE
}

fn sqlx_exit_status(e: &sqlx::Error) -> u8 {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => exit::UNAVAILABLE,
        sqlx::Error::Configuration(_) => exit::CONFIG,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match code.as_ref() {
                // PostgreSQL: bad password, no such role or database.
                "28P01" | "28000" | "3D000" => exit::CONFIG,
                // PostgreSQL: starting up, shutting down, too many connections.
                "57P03" | "57P01" | "53300" => exit::UNAVAILABLE,
                // SQLite (primary code in the low byte): CANTOPEN 14, READONLY 8, PERM 3,
                // FULL 13, IOERR 10.
                c => match c.parse::<u32>().map(|n| n & 0xff) {
                    Ok(14 | 8 | 3 | 13 | 10) => exit::CANNOT_CREATE,
                    _ => exit::FAILURE,
                },
            }
        }
        _ => exit::FAILURE,
    }
}

/// `EX_TEMPFAIL` from sysexits.h: `sync-once` reached its deadline with jobs deferred (a
/// throttled vehicle, an app pause, a backoff); running it again later continues them.
pub const EXIT_DEFERRED: u8 = 75;

/// `sync-once --deadline` when not given: a cycle that cannot finish in this long is waiting
/// on throttles or backoffs, and the next scheduled run picks it up.
pub const DEFAULT_SYNC_DEADLINE: &str = "30m";

/// `writeln!` to stdout, returning the `io::Result` (see the module docs): `out!(…)?`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}
// The demo prints through it too (feature `simulator`).
#[cfg_attr(not(feature = "simulator"), allow(unused_imports))]
pub(crate) use out;

/// Whether `e` is (caused by) writing to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "smartcar-sync",
    version,
    about = "Keeps a database full of fresh, correct Smartcar connected-car data"
)]
pub struct Cli {
    /// The configuration file (default ./config.toml; missing means all defaults).
    #[arg(long, short, global = true, env = "SMARTCAR_SYNC_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start and never moved around: the size of the `simulate` variant (every
// simulator flag) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: schedule, workers, HTTP surface; SIGTERM stops it cleanly.
    Run,
    /// One full cycle (discovery, connections, signals) and exit: 0 if every job succeeded,
    /// 1 if any ended dead, 75 if the deadline came with jobs still deferred.
    SyncOnce {
        /// Stop claiming after this long (e.g. 90s, 10m), report the jobs still deferred and
        /// exit 75. Also ends the cycle early once every open job waits beyond it.
        #[arg(long, default_value = DEFAULT_SYNC_DEADLINE, value_parser = crate::config::parse_duration)]
        deadline: Duration,
    },
    /// Manage known users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Known vehicles.
    #[command(subcommand)]
    Vehicles(VehiclesCommand),
    /// The state at a glance, at any fleet size: the queue by state, the app pause and the rate
    /// budget, vehicles and users by freshness, and the worst few of each list.
    Status {
        /// Show at most N of each list (stalest vehicles, vehicles not connected, stalest
        /// users, dead jobs).
        #[arg(long, value_name = "N", default_value_t = crate::admin::DEFAULT_TOP, conflicts_with = "all")]
        top: u64,
        /// Show every list in full.
        #[arg(long)]
        all: bool,
        /// Print JSON (field names: README, "JSON output").
        #[arg(long)]
        json: bool,
    },
    /// Inspect and repair the job queue: list, retry dead jobs, cancel open ones.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Each vehicle against its allowance this period ([budget]): calls used, projected at the
    /// period's end, planned interval, next poll, state; and a fleet summary.
    Budget {
        #[command(subcommand)]
        plan: Option<BudgetCommand>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create or update the database schema.
    Migrate,
    /// PostgreSQL: move the samples recorded before a time to the compact cold table now
    /// (hourly housekeeping does it for those older than [storage] hot_window). SQLite: nothing
    /// to do.
    Compact {
        /// RFC 3339 time (e.g. 2030-01-31T00:00:00Z); default: now minus storage.hot_window.
        #[arg(long, value_parser = parse_time)]
        before: Option<chrono::DateTime<Utc>>,
    },
    /// Issue a one-time Smartcar Connect URL for one user to connect a vehicle (its `state` is
    /// single-use and expires after connect.state_ttl).
    ConnectUrl,
    /// Validate every configuration key, then check the credentials with a token request.
    CheckConfig,
    /// Start the simulator and the daemon against it with a local SQLite file; print a summary.
    #[cfg(feature = "simulator")]
    Demo(crate::demo::DemoArgs),
    /// Run the Smartcar v3 simulator (also the `smartcar-sim` binary).
    #[cfg(feature = "simulator")]
    Simulate(smartcar_sim::SimArgs),
    /// Write the man pages and the bash, zsh and fish completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Output directory (man/ and completions/ are created in it).
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add users by id and sync their connections at the next run.
    Add {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove a user, their vehicles and their pending jobs (samples stay).
    Remove { id: String },
    /// List known users.
    List {
        /// Print JSON (field names: README, "JSON output").
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum VehiclesCommand {
    /// List known vehicles and their status.
    List {
        /// Only vehicles with this status.
        #[arg(long, value_name = "STATUS", value_parser = vehicle_status_parser())]
        status: Option<VehicleStatus>,
        /// Only this user's vehicles.
        #[arg(long, value_name = "USER_ID", value_parser = parse_user_id)]
        user: Option<String>,
        /// Print JSON (field names: README, "JSON output").
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// A dry run of the planner for this configuration and a fleet size (no database).
    Plan {
        /// The fleet size to plan for.
        #[arg(long, default_value_t = 1000)]
        vehicles: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// Only dead jobs (the same as --state dead).
        #[arg(long, conflicts_with = "state")]
        dead: bool,
        /// Only jobs in this state.
        #[arg(long, value_name = "STATE", value_parser = job_state_parser())]
        state: Option<JobState>,
        /// Only jobs of this kind.
        #[arg(long, value_name = "KIND", value_parser = job_kind_parser())]
        kind: Option<JobKind>,
        /// At most N jobs (0: all).
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u64,
        /// Print JSON (field names: README, "JSON output").
        #[arg(long)]
        json: bool,
    },
    /// Requeue dead jobs: pending, due now, attempts reset, the last error kept in the note.
    /// Only dead jobs can be retried; any other id fails the whole command (nothing changes).
    Retry {
        /// The jobs to requeue (ids from `jobs list --dead` or `status`).
        #[arg(
            value_name = "ID",
            required_unless_present = "dead",
            conflicts_with = "dead"
        )]
        ids: Vec<i64>,
        /// Every dead job.
        #[arg(long)]
        dead: bool,
    },
    /// Cancel pending or running jobs (they are deleted; a running job's worker commits
    /// nothing). Any other id fails the whole command (nothing changes).
    Cancel {
        #[arg(value_name = "ID", required = true)]
        ids: Vec<i64>,
    },
}

/// A `--status` value: one of the stored vehicle statuses (listed in `--help` and completions).
fn vehicle_status_parser() -> impl clap::builder::TypedValueParser<Value = VehicleStatus> {
    clap::builder::PossibleValuesParser::new(VehicleStatus::ALL.iter().map(|s| s.as_str()))
        .try_map(|s| s.parse::<VehicleStatus>())
}

fn job_state_parser() -> impl clap::builder::TypedValueParser<Value = JobState> {
    clap::builder::PossibleValuesParser::new(JobState::ALL.iter().map(|s| s.as_str()))
        .try_map(|s| s.parse::<JobState>())
}

fn job_kind_parser() -> impl clap::builder::TypedValueParser<Value = JobKind> {
    clap::builder::PossibleValuesParser::new(JobKind::ALL.iter().map(|s| s.as_str()))
        .try_map(|s| s.parse::<JobKind>())
}

/// An RFC 3339 time on the command line.
fn parse_time(s: &str) -> Result<chrono::DateTime<Utc>, chrono::ParseError> {
    chrono::DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

/// A user id on the command line obeys the same rule as every other id ([`crate::ids`]).
fn parse_user_id(s: &str) -> Result<String, crate::ids::InvalidId> {
    crate::ids::check("user id", s).map(|()| s.to_owned())
}

/// Runs a parsed command line; returns the process exit status.
pub async fn run(cli: Cli) -> ExitCode {
    let (path, must_exist) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from("config.toml"), false),
    };
    // The simulator, the demo and the packaging assets need no configuration.
    if let Command::GenerateAssets { dir } = &cli.command {
        return report(generate_assets(dir));
    }
    #[cfg(feature = "simulator")]
    match cli.command {
        Command::Simulate(args) => {
            crate::telemetry::init(crate::config::LogFormat::Text, "info");
            return report(smartcar_sim::run_cli(args).await);
        }
        Command::Demo(args) => return report(crate::demo::run(args).await),
        _ => {}
    }
    let config = match Config::load(&path, must_exist, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    crate::telemetry::init(config.log.format, &config.log.level);
    for (key, file) in config.world_readable_secrets(&path) {
        tracing::warn!(
            key,
            file = %file.display(),
            "a file holding a secret is readable by every user on this machine: chmod o-r it"
        );
    }
    let result = match cli.command {
        Command::Run => run_daemon(config, path, must_exist).await,
        Command::SyncOnce { deadline } => sync_once(config, deadline).await,
        Command::Users(cmd) => users(config, cmd).await,
        Command::Vehicles(cmd) => vehicles(config, cmd).await,
        Command::Status { top, all, json } => status(config, top, all, json).await,
        Command::Jobs(cmd) => jobs(config, cmd).await,
        Command::Budget { plan, json } => budget(config, plan, json).await,
        Command::Migrate => migrate(config).await,
        Command::Compact { before } => compact(config, before).await,
        Command::ConnectUrl => connect_url(config).await,
        Command::CheckConfig => return check_config(config).await,
        #[cfg(feature = "simulator")]
        Command::Demo(_) | Command::Simulate(_) => Ok(ExitCode::SUCCESS),
        Command::GenerateAssets { .. } => Ok(ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`| head`): nothing more to say to anyone.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<ConfigError>() {
                return config_error(ce);
            }
            let status = exit_status(&e);
            eprintln!("error: {e:#}");
            ExitCode::from(status)
        }
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("configuration error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

async fn run_daemon(config: Config, path: PathBuf, must_exist: bool) -> anyhow::Result<ExitCode> {
    config.require_credentials()?;
    let shutdown = CancellationToken::new();
    crate::lifecycle::cancel_on_signals(shutdown.clone());
    let daemon = Daemon::start(config, &shutdown).await?;
    crate::lifecycle::reload_on_sighup(path, must_exist, daemon.reloader(), shutdown.clone());
    daemon.run(shutdown, || {}).await?;
    Ok(ExitCode::SUCCESS)
}

async fn sync_once(config: Config, deadline: Duration) -> anyhow::Result<ExitCode> {
    config.require_credentials()?;
    let shutdown = CancellationToken::new();
    crate::lifecycle::cancel_on_signals(shutdown.clone());
    let daemon = Daemon::start_as("sync-once", config, &shutdown).await?;
    let progress = Progress::new(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let report = daemon
        .sync_once_until(&shutdown, Some(deadline), |line| progress.report(line))
        .await;
    progress.finish();
    let report = report?;
    let samples = daemon.store().sample_count().await?;
    // The heartbeat deregisters (the others take this share back) before the pool closes.
    shutdown.cancel();
    daemon.close().await;
    let s = &report.stats;
    let ord = std::sync::atomic::Ordering::Relaxed;
    out!(
        "sync-once: {} jobs done, {} retries, {} deferred, {} vehicles flagged, {} dead; {} samples stored in total; {:.1}s",
        s.done.load(ord),
        s.retried.load(ord),
        s.deferred.load(ord),
        s.vehicle_status.load(ord),
        report.dead,
        samples,
        (report.finished - report.started).num_milliseconds() as f64 / 1000.0
    )?;
    if report.out_of_time {
        out!(
            "sync-once: {} jobs still open at the {} deadline (or waiting beyond it); they stay \
             queued for the next run:",
            report.open_jobs,
            humanize(deadline)
        )?;
        for j in &report.deferred {
            let subject = match j.kind.as_str() {
                "poll_signals" => format!("vehicle {}", j.subject),
                "sync_connections" => format!("user {}", j.subject),
                _ => j.kind.clone(),
            };
            out!(
                "  {:<16} {subject} until {}: {}",
                j.kind,
                j.run_at.format("%Y-%m-%d %H:%M:%S UTC"),
                j.reason.as_deref().unwrap_or(j.state.as_str())
            )?;
        }
        if report.open_jobs > report.deferred.len() as i64 {
            out!(
                "  … and {} more (status)",
                report.open_jobs - report.deferred.len() as i64
            )?;
        }
    }
    Ok(if report.dead > 0 {
        ExitCode::FAILURE
    } else if report.out_of_time && report.open_jobs > 0 {
        ExitCode::from(EXIT_DEFERRED)
    } else {
        ExitCode::SUCCESS
    })
}

/// `sync-once`'s progress, on stderr (stdout keeps the summary for scripts). On a terminal, one
/// status line rewritten in place, as `demo` does; anywhere else (a pipe, a log, journald) plain
/// lines: one at each phase change and at most one every [`Progress::PLAIN_EVERY`] within a
/// phase, so a long cycle shows it is alive without flooding the log.
struct Progress {
    terminal: bool,
    started: std::time::Instant,
    /// The last phase reported and when a plain line was last written.
    last: std::sync::Mutex<(String, Option<std::time::Instant>)>,
}

impl Progress {
    const PLAIN_EVERY: Duration = Duration::from_secs(5);

    fn new(terminal: bool) -> Progress {
        Progress {
            terminal,
            started: std::time::Instant::now(),
            last: std::sync::Mutex::new((String::new(), None)),
        }
    }

    /// `line` is `phase: N jobs open`, as `Daemon::sync_once_until` reports it.
    fn report(&self, line: &str) {
        self.report_to(line, &mut std::io::stderr().lock());
    }

    fn report_to(&self, line: &str, out: &mut dyn std::io::Write) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let phase = line.split_once(':').map_or(line, |(p, _)| p);
        let text = format!("[{:>6.1}s] {line}", self.started.elapsed().as_secs_f64());
        // A closed stderr is no reason to stop syncing: write errors are ignored.
        if self.terminal {
            let _ = write!(out, "\r\x1b[2K{text}");
            let _ = out.flush();
            last.1 = Some(std::time::Instant::now());
        } else if last.0 != phase || last.1.is_none_or(|t| t.elapsed() >= Self::PLAIN_EVERY) {
            let _ = writeln!(out, "sync-once {text}");
            last.1 = Some(std::time::Instant::now());
        }
        if last.0 != phase {
            last.0 = phase.to_owned();
        }
    }

    /// Ends the live line so what follows starts on a fresh one.
    fn finish(&self) {
        if self.terminal && self.last.lock().is_ok_and(|l| l.1.is_some()) {
            eprintln!();
        }
    }
}

/// `90s`, `30m`, `2h` for a message.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        _ if s % 3600 == 0 => format!("{}h", s / 3600),
        _ if s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

async fn migrated_store(config: &Config) -> anyhow::Result<crate::store::Store> {
    let store = open_store(config).await?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    Ok(store)
}

async fn users(config: Config, cmd: UsersCommand) -> anyhow::Result<ExitCode> {
    let store = migrated_store(&config).await?;
    match cmd {
        UsersCommand::Add { ids } => {
            // Every id is checked before any is added.
            for id in &ids {
                crate::ids::check("user id", id.trim())?;
            }
            for id in &ids {
                let id = id.trim();
                let new = store.add_user(id, UserSource::Cli).await?;
                store
                    .enqueue(JobKind::SyncConnections, id, Utc::now())
                    .await?;
                out!("{id}: {}", if new { "added" } else { "already known" })?;
            }
        }
        UsersCommand::Remove { id } => {
            if store.remove_user(&id).await? {
                out!("{id}: removed (its samples are kept)")?;
            } else {
                out!("{id}: not known")?;
                return Ok(ExitCode::FAILURE);
            }
        }
        UsersCommand::List { json } => crate::admin::users_list(&store, json).await?,
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn vehicles(config: Config, cmd: VehiclesCommand) -> anyhow::Result<ExitCode> {
    let store = migrated_store(&config).await?;
    match cmd {
        VehiclesCommand::List { status, user, json } => {
            crate::admin::vehicles_list(&store, status, user.as_deref(), json).await?;
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn status(config: Config, top: u64, all: bool, json: bool) -> anyhow::Result<ExitCode> {
    let store = migrated_store(&config).await?;
    let code = crate::admin::status(&config, &store, (!all).then_some(top), json).await?;
    store.close().await;
    Ok(code)
}

async fn budget(
    config: Config,
    cmd: Option<BudgetCommand>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some(a) = config.allowance() else {
        out!(
            "no allowance: [budget] calls_per_vehicle = 0 (unlimited); every signals tick polls every vehicle"
        )?;
        return Ok(ExitCode::SUCCESS);
    };
    if let Some(BudgetCommand::Plan {
        vehicles,
        json: plan_json,
    }) = cmd
    {
        let d = a.dry_run(vehicles);
        if json || plan_json {
            out!("{}", serde_json::to_string_pretty(&d)?)?;
        } else {
            out!("{d}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let store = migrated_store(&config).await?;
    let r = crate::allowance::report(&store, &a, Utc::now()).await?;
    crate::allowance::print(&r, json)?;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn jobs(config: Config, cmd: JobsCommand) -> anyhow::Result<ExitCode> {
    let store = migrated_store(&config).await?;
    let code = match cmd {
        JobsCommand::List {
            dead,
            state,
            kind,
            limit,
            json,
        } => {
            let filter = crate::store::JobFilter {
                state: if dead { Some(JobState::Dead) } else { state },
                kind,
                limit: (limit > 0).then_some(limit),
            };
            crate::admin::jobs_list(&store, &filter, json).await?;
            ExitCode::SUCCESS
        }
        JobsCommand::Retry { ids, dead } => {
            crate::admin::jobs_retry(&store, (!dead).then_some(ids.as_slice())).await?
        }
        JobsCommand::Cancel { ids } => crate::admin::jobs_cancel(&store, &ids).await?,
    };
    store.close().await;
    Ok(code)
}

/// `generate-assets DIR`: the man pages and shell completions, generated from this very
/// command-line definition (so they cannot drift from it). The package build runs it; a plain
/// `cargo build` does not pay for it.
fn generate_assets(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let cmd = Cli::command().version(env!("CARGO_PKG_VERSION"));
    // One page for the program and one per command, down to `smartcar-sync-jobs-retry(1)`, as
    // git does; the hidden commands have none.
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("cannot write the man pages into {}", man.display()))?;
    let mut written = Vec::new();
    for entry in std::fs::read_dir(&man)? {
        written.push(entry?.path());
    }
    written.sort();
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let path =
            clap_complete::generate_to(shell, &mut cmd.clone(), "smartcar-sync", &completions)
                .with_context(|| format!("cannot write the {shell} completions"))?;
        written.push(path);
    }
    for p in written {
        out!("{}", p.display())?;
    }
    Ok(())
}

async fn connect_url(config: Config) -> anyhow::Result<ExitCode> {
    let store = migrated_store(&config).await?;
    let settings = crate::http::ConnectSettings::from_config(&config);
    let issued = crate::http::issue_connect_url(&store, &settings, Utc::now()).await;
    store.close().await;
    let issued = issued?;
    out!("{}", issued.url)?;
    eprintln!(
        "valid once, until {} (connect.state_ttl)",
        issued.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    Ok(ExitCode::SUCCESS)
}

async fn migrate(config: Config) -> anyhow::Result<ExitCode> {
    let store = migrated_store(&config).await?;
    out!(
        "database migrated ({}: {})",
        store.backend_name(),
        crate::daemon::redact_url(&config.database.url)
    )?;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn compact(
    config: Config,
    before: Option<chrono::DateTime<Utc>>,
) -> anyhow::Result<ExitCode> {
    let store = migrated_store(&config).await?;
    let before = match before {
        Some(t) => t,
        None => {
            let window = chrono::Duration::from_std(config.storage.hot_window)
                .context("storage.hot_window is too large")?;
            Utc::now() - window
        }
    };
    let moved = store.compact_samples(before).await?;
    match store.compacted_before().await? {
        Some(w) => out!(
            "compacted {moved} samples; readings recorded before {} are in the cold table",
            w.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )?,
        None => out!(
            "nothing to compact on {} (one table for every sample)",
            store.backend_name()
        )?,
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn check_config(config: Config) -> ExitCode {
    let _ = out!("configuration: every key valid");
    if let Err(e) = config.require_credentials() {
        return config_error(&e);
    }
    let shutdown = CancellationToken::new();
    let client = match crate::daemon::build_client(
        &config,
        shutdown.clone(),
        &tokio_util::task::TaskTracker::new(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = tokio::time::timeout(
        config.smartcar.request_timeout + Duration::from_secs(5),
        client.tokens().get(),
    )
    .await;
    shutdown.cancel();
    match result {
        Ok(Ok(token)) => {
            let _ = out!(
                "credentials: OK (token {} issued, expires {})",
                token.fingerprint,
                token.expires_at_utc
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("credentials: FAILED: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "credentials: FAILED: no answer from {}",
                config.smartcar.auth_url
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_rewrites_one_line_on_a_terminal_and_prints_phase_changes_otherwise() {
        let lines = [
            "syncing connections: 3 jobs open",
            "syncing connections: 2 jobs open",
            "syncing connections: 0 jobs open",
            "polling signals: 9 jobs open",
            "polling signals: 4 jobs open",
        ];
        let plain = Progress::new(false);
        let mut out = Vec::new();
        for l in lines {
            plain.report_to(l, &mut out);
        }
        let text = String::from_utf8(out).unwrap();
        let printed: Vec<&str> = text.lines().collect();
        assert_eq!(printed.len(), 2, "{text}");
        assert!(
            printed[0].starts_with("sync-once [")
                && printed[0].ends_with("syncing connections: 3 jobs open")
        );
        assert!(printed[1].ends_with("polling signals: 9 jobs open"));
        assert!(!text.contains('\r') && !text.contains('\x1b'));

        let live = Progress::new(true);
        let mut out = Vec::new();
        for l in lines {
            live.report_to(l, &mut out);
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("\r\x1b[2K").count(), lines.len(), "{text:?}");
        assert!(!text.contains('\n'));
        assert!(text.ends_with("polling signals: 4 jobs open"));
    }
}
