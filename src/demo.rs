//! `smartcar-sync demo`: the whole path on one machine with nothing installed. It starts the
//! simulator on loopback, points the daemon at it with a local SQLite file, runs one full cycle
//! (discovery, connections, signals) with a live status line, and prints a summary.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::cli::out;
use crate::config::{Config, LogFormat};
use crate::daemon::Daemon;
use smartcar_sim::{Bucket, Faults, SimConfig, Simulator};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Users in the simulated fleet.
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    /// Vehicles per user.
    #[arg(long, default_value_t = 3)]
    pub vehicles_per_user: usize,
    /// The SQLite file the demo fills (recreated on every run).
    #[arg(long, default_value = "smartcar-sync-demo.db")]
    pub database: PathBuf,
    /// Fraction of API calls the simulator fails with 500/502/503, to show retries.
    #[arg(long, default_value_t = 0.05)]
    pub error_rate: f64,
    /// Simulated API latency in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// Fleet seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let level = std::env::var(crate::config::env::LOG_LEVEL).unwrap_or_else(|_| "error".into());
    crate::telemetry::init(LogFormat::Text, &level);
    let started = Instant::now();

    let sim = Simulator::start(
        SimConfig {
            users: args.users,
            vehicles_per_user: args.vehicles_per_user,
            seed: args.seed,
            latency: Duration::from_millis(args.latency_ms),
            // A bucket the daemon's limiter stays under: no 429 expected.
            app_bucket: Some(Bucket {
                capacity: 100.0,
                refill_per_second: 100.0,
            }),
            faults: Faults {
                error_rate: args.error_rate,
                ..Faults::default()
            },
            record_served: false,
            ..SimConfig::default()
        },
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .context("cannot start the simulator")?;

    for suffix in ["", "-wal", "-shm"] {
        let mut p = args.database.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    let mut config = Config::default();
    config.smartcar.auth_url = sim.auth_url();
    config.smartcar.api_url = sim.api_url();
    config.smartcar.client_id = sim.client_id();
    config.smartcar.client_secret = Some(SecretString::from("sim-client-secret".to_owned()));
    config.database.url = format!("sqlite://{}", args.database.display());
    config.rate_limit.requests_per_minute = 6000;
    config.rate_limit.burst = 50;
    config.queue.concurrency = 8;
    config.queue.backoff_min = Duration::from_millis(200);
    config.queue.backoff_max = Duration::from_secs(5);
    config.validate()?;

    eprintln!(
        "smartcar-sync demo: simulator at {} ({} users x {} vehicles, {:.0}% injected 5xx, {} ms latency)",
        sim.api_url(),
        args.users,
        args.vehicles_per_user,
        args.error_rate * 100.0,
        args.latency_ms
    );
    eprintln!("database: {}", config.database.url);

    let shutdown = CancellationToken::new();
    crate::lifecycle::cancel_on_signals(shutdown.clone());
    let daemon = Daemon::start(config, &shutdown).await?;
    let store = daemon.store().clone();
    let counters_sim = &sim;
    let terminal = std::io::stderr().is_terminal();
    let report = daemon
        .sync_once(&shutdown, |phase| {
            let c = counters_sim.counters();
            let line = format!(
                "[{:>5.1}s] {phase} | {} API calls, {} 5xx injected",
                started.elapsed().as_secs_f64(),
                c.api_calls,
                c.injected_errors
            );
            // One line rewritten in place on a terminal; plain lines in a log.
            if terminal {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
        })
        .await?;
    if terminal {
        eprintln!();
    }
    shutdown.cancel();

    let users = store.list_users().await?.len();
    let vehicles = store.list_vehicles().await?;
    let polled = vehicles
        .iter()
        .filter(|v| v.last_polled_at.is_some())
        .count();
    let samples = store.sample_count().await?;
    let c = sim.counters();
    let ord = std::sync::atomic::Ordering::Relaxed;
    out!()?;
    out!("Summary")?;
    out!("  users discovered     {users}")?;
    out!(
        "  vehicles             {} ({polled} polled)",
        vehicles.len()
    )?;
    out!("  samples stored       {samples}")?;
    out!(
        "  API calls            {} ({} connections, {} signals; {} failed by injection, {} x 429)",
        c.api_calls,
        c.connections_calls,
        c.signals_calls,
        c.injected_errors,
        c.responses_429_app + c.responses_429_vehicle
    )?;
    out!("  token requests       {}", c.token_requests)?;
    out!(
        "  jobs                 {} done, {} retried, {} dead",
        report.stats.done.load(ord),
        report.stats.retried.load(ord),
        report.dead
    )?;
    out!(
        "  elapsed              {:.1}s",
        started.elapsed().as_secs_f64()
    )?;
    out!()?;
    out!(
        "Look inside: sqlite3 {} 'SELECT code, COUNT(*) FROM signal_samples GROUP BY code'",
        args.database.display()
    )?;
    store.close().await;
    sim.shutdown().await;
    if report.dead > 0 {
        anyhow::bail!("{} jobs ended dead", report.dead);
    }
    Ok(())
}
