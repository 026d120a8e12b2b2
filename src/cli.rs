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
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::daemon::{Daemon, open_store};
use crate::store::{JobKind, UserSource};

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
    /// Queue depth, pauses, dead jobs, freshness: the state at a glance.
    Status,
    /// Create or update the database schema.
    Migrate,
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
    List,
}

#[derive(Debug, Subcommand)]
pub enum VehiclesCommand {
    /// List known vehicles and their status.
    List,
}

/// Runs a parsed command line; returns the process exit status.
pub async fn run(cli: Cli) -> ExitCode {
    let (path, must_exist) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from("config.toml"), false),
    };
    // The simulator and the demo bring their own configuration.
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
        Command::Vehicles(VehiclesCommand::List) => vehicles(config).await,
        Command::Status => status(config).await,
        Command::Migrate => migrate(config).await,
        Command::ConnectUrl => connect_url(config).await,
        Command::CheckConfig => return check_config(config).await,
        #[cfg(feature = "simulator")]
        Command::Demo(_) | Command::Simulate(_) => Ok(ExitCode::SUCCESS),
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

#[cfg(feature = "simulator")]
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

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT: stopping"),
            _ = term => tracing::info!("SIGTERM: stopping"),
        }
        token.cancel();
    });
}

async fn run_daemon(config: Config, path: PathBuf, must_exist: bool) -> anyhow::Result<ExitCode> {
    config.require_credentials()?;
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let daemon = Daemon::start(config, &shutdown).await?;
    reload_on_sighup(path, must_exist, daemon.reloader(), shutdown.clone());
    daemon.run(shutdown, || {}).await?;
    Ok(ExitCode::SUCCESS)
}

/// On SIGHUP, re-reads the configuration (file and environment) and applies its reloadable
/// parts, the secrets; a configuration that no longer validates is refused and the running one
/// kept.
fn reload_on_sighup(
    path: PathBuf,
    must_exist: bool,
    reloader: crate::daemon::Reloader,
    shutdown: CancellationToken,
) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: reload needs a restart");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            tracing::info!(config = %path.display(), "SIGHUP: reloading");
            crate::daemon::notify(&[sd_notify::NotifyState::Reloading]);
            match Config::load(&path, must_exist, |k| std::env::var(k).ok()) {
                Ok(config) => reloader.apply(&config),
                Err(e) => tracing::error!(error = %e,
                    "reload refused: the configuration is not valid; keeping the running one"),
            }
            crate::daemon::notify(&[sd_notify::NotifyState::Ready]);
        }
    });
    #[cfg(not(unix))]
    let _ = (path, must_exist, reloader, shutdown);
}

async fn sync_once(config: Config, deadline: Duration) -> anyhow::Result<ExitCode> {
    config.require_credentials()?;
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let daemon = Daemon::start_as("sync-once", config, &shutdown).await?;
    let report = daemon
        .sync_once_until(&shutdown, Some(deadline), |_| {})
        .await?;
    let samples = daemon.store.sample_count().await?;
    // The heartbeat deregisters (the others take this share back) before the pool closes.
    shutdown.cancel();
    daemon.tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), daemon.tracker.wait()).await;
    daemon.store.close().await;
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
        UsersCommand::List => {
            let users = store.list_users().await?;
            out!("{:<38} {:<10} {:<20} LAST SYNC", "USER", "SOURCE", "ADDED")?;
            for u in &users {
                out!(
                    "{:<38} {:<10} {:<20} {}",
                    u.user_id,
                    u.source.as_str(),
                    u.created_at.format("%Y-%m-%d %H:%M:%S"),
                    when(u.last_synced_at)
                )?;
            }
            out!("{} users", users.len())?;
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn vehicles(config: Config) -> anyhow::Result<ExitCode> {
    let store = migrated_store(&config).await?;
    let vehicles = store.list_vehicles().await?;
    out!(
        "{:<38} {:<38} {:<24} {:<17} LAST POLL",
        "VEHICLE",
        "USER",
        "MAKE MODEL YEAR",
        "STATUS"
    )?;
    for v in &vehicles {
        let car = format!(
            "{} {} {}",
            v.make.as_deref().unwrap_or("?"),
            v.model.as_deref().unwrap_or("?"),
            v.year.map(|y| y.to_string()).unwrap_or_default()
        );
        out!(
            "{:<38} {:<38} {:<24} {:<17} {}",
            v.vehicle_id,
            v.user_id,
            car.chars().take(24).collect::<String>(),
            v.status.as_str(),
            when(v.last_polled_at)
        )?;
    }
    out!("{} vehicles", vehicles.len())?;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

fn when(t: Option<chrono::DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "never".to_owned())
}

async fn status(config: Config) -> anyhow::Result<ExitCode> {
    let store = migrated_store(&config).await?;
    let now = Utc::now();
    out!(
        "database   {}",
        crate::daemon::redact_url(&config.database.url)
    )?;
    match store.app_paused_until(now).await? {
        Some(until) => out!("app pause  PAUSED until {until} (a 429 from Smartcar)")?,
        None => out!("app pause  none")?,
    }
    match store.oldest_poll_of_pollable(now).await? {
        Some(t) => out!(
            "last cycle every pollable vehicle polled since {} ({} ago)",
            t.format("%Y-%m-%d %H:%M:%S"),
            ago(now - t)
        )?,
        None => out!("last cycle no complete cycle yet")?,
    }
    for schedule in ["connections", "signals"] {
        out!(
            "tick       {schedule:<12} last {}",
            when(store.last_tick(schedule).await?)
        )?;
    }
    out!("samples    {}", store.sample_count().await?)?;
    print_budget(&config, &store, now).await?;
    out!()?;
    out!(
        "{:<18} {:>8} {:>8} {:>8} {:>8}",
        "QUEUE",
        "pending",
        "running",
        "done",
        "dead"
    )?;
    let counts = store.queue_counts().await?;
    for kind in JobKind::ALL {
        let n = |state: &str| {
            counts
                .iter()
                .find(|(k, s, _)| k == kind.as_str() && s == state)
                .map(|c| c.2)
                .unwrap_or(0)
        };
        out!(
            "{:<18} {:>8} {:>8} {:>8} {:>8}",
            kind.as_str(),
            n("pending"),
            n("running"),
            n("done"),
            n("dead")
        )?;
    }
    let dead = store.dead_jobs(20).await?;
    if !dead.is_empty() {
        out!()?;
        out!("DEAD JOBS (latest {})", dead.len())?;
        for d in &dead {
            out!(
                "  #{} {}({}) after {} attempts at {}: {}{}",
                d.id,
                d.kind,
                d.subject,
                d.attempts,
                when(d.finished_at),
                d.last_error.as_deref().unwrap_or("?"),
                d.last_request_id
                    .as_deref()
                    .map(|r| format!(" [request id {r}]"))
                    .unwrap_or_default()
            )?;
        }
    }
    let users = store.list_users().await?;
    out!()?;
    out!("{:<38} {:<10} LAST CONNECTIONS SYNC", "USER", "SOURCE")?;
    for u in users.iter().take(50) {
        out!(
            "{:<38} {:<10} {}",
            u.user_id,
            u.source.as_str(),
            when(u.last_synced_at)
        )?;
    }
    if users.len() > 50 {
        out!("… and {} more (users list)", users.len() - 50)?;
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// The shared rate budget: configured, in force now, and who shares it.
async fn print_budget(
    config: &Config,
    store: &crate::store::Store,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    use crate::budget::{BURST_HEADROOM, RATE_HEADROOM, STALE_AFTER, adaptive_factor};
    let daemons = store.live_daemons(now, STALE_AFTER).await?;
    let throttle = store.last_app_throttle().await?;
    match config.rate_limit() {
        Some(rl) => {
            let factor = adaptive_factor(throttle, now);
            let rpm = f64::from(rl.requests_per_minute.get());
            out!(
                "rate       configured {rpm}/min, burst {}; in force {:.1}/min (headroom {:.0} %, \
                 adaptive factor {factor:.2}), burst {:.0}, split over {} live process(es)",
                rl.burst,
                rpm * RATE_HEADROOM * factor,
                RATE_HEADROOM * 100.0,
                f64::from(rl.burst.get()) * BURST_HEADROOM,
                daemons.len().max(1)
            )?;
        }
        None => out!("rate       no limit (rate_limit.requests_per_minute = 0)")?,
    }
    match throttle {
        Some((at, f)) => out!(
            "throttle   last 429 SMARTCAR_API at {} ({} ago), sent at {:.2} of the rate",
            at.format("%Y-%m-%d %H:%M:%S"),
            ago(now - at),
            f
        )?,
        None => out!("throttle   never")?,
    }
    out!(
        "processes  {} live: {}",
        daemons.len(),
        daemons
            .iter()
            .map(|d| format!(
                "{} {} on {} pid {} ({} calls, 429 app {} vehicle {})",
                d.daemon_id, d.kind, d.host, d.pid, d.calls, d.throttled_app, d.throttled_vehicle
            ))
            .collect::<Vec<_>>()
            .join("; ")
    )?;
    Ok(())
}

fn ago(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
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

async fn check_config(config: Config) -> ExitCode {
    let _ = out!("configuration: every key valid");
    if let Err(e) = config.require_credentials() {
        return config_error(&e);
    }
    let shutdown = CancellationToken::new();
    let client = match crate::daemon::build_client(&config, shutdown.clone()) {
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
