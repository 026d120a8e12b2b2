//! Throughput against the bound: one full cycle (`sync-once`: discovery, connections, signals)
//! of a 2,000 × 5 fleet, the daemon a separate process (the release binary) and the simulator
//! in this one.
//!
//! ```sh
//! cargo bench --bench cycle            # (a), (b) and the 100,000-vehicle memory run, SQLite,
//!                                      # then (a) and (b) on PostgreSQL when it is installed
//! cargo bench --bench cycle -- a b     # pick: a, b, mem, pg (PostgreSQL: the picked of (a), (b);
//!                                      # both if none picked), sqlite; `pg only`: no SQLite
//! cargo bench --bench cycle -- b pg only reference  # the reference client before each (b) run
//! cargo bench --bench cycle -- reference            # the reference client alone
//! ```
//!
//! - (a) the daemon limited to 200 requests/s (`requests_per_minute = 12000`, burst 20), 5 ms
//!   simulated latency, concurrency 16; the simulator's bucket is exactly the configured one
//!   (200/s, capacity 20).
//! - (b) no rate limit, 20 ms latency, concurrency 32.
//! - mem: 20,000 users × 5 vehicles (100,000 known), no limit, no latency, concurrency 32.
//!
//! In every case the simulator is configured as the real service is: 2 % of calls answer 5xx,
//! and each vehicle has an allowance of 500 calls per 30-day period, which the daemon's
//! `[budget]` knows too.
//!
//! The reference client (`cycle/reference.rs`) makes (b)'s calls with the daemon's API client
//! and nothing else, against a simulator configured alike: its efficiency is the most this
//! machine allows in that hour, and the daemon's efficiency divided by it is the daemon's own
//! share of the gap.
//!
//! Cycle efficiency = ideal / actual, ideal = max(API calls ÷ allowed rate, API calls × latency
//! ÷ concurrency), actual = the cycle time `sync-once` reports (process start-up, migration and
//! the token request excluded; the wall time of the whole process is printed too).

mod common;
#[path = "cycle/reference.rs"]
mod reference;

use std::time::Duration;

use common::{BenchDb, DaemonConfig, Res, Table, mib};
use smartcar_sim::{Bucket, CounterSnapshot, Faults, SimConfig, VehicleAllowance};
use smartcar_sync::smartcar::client::PAGE_SIZE;

/// The per-vehicle allowance both sides enforce: a typical plan's 500 calls, per 30 days.
const ALLOWANCE_CALLS: u32 = 500;
const ALLOWANCE_PERIOD: Duration = Duration::from_secs(30 * 86_400);

/// The configured bucket's capacity (`rate_limit.burst`), and the simulator's with it.
const BURST: u32 = 20;

#[derive(Clone, Debug)]
struct Case {
    name: &'static str,
    users: usize,
    vehicles_per_user: usize,
    latency_ms: u64,
    /// Requests per second the daemon allows itself; 0 = unlimited.
    rate_per_s: u32,
    concurrency: usize,
    /// Compare every served reading with the database (off for the memory run).
    verify: bool,
    /// SIGTERM the daemon once this many polls are done (the memory run: 100,000 vehicles are
    /// known after the connections phase; polling them all would take minutes).
    stop_after_polls: Option<i64>,
}

const A: Case = Case {
    name: "(a) 200 req/s limit, 5 ms latency, concurrency 16",
    users: 2_000,
    vehicles_per_user: 5,
    latency_ms: 5,
    rate_per_s: 200,
    concurrency: 16,
    verify: true,
    stop_after_polls: None,
};

const B: Case = Case {
    name: "(b) no limit, 20 ms latency, concurrency 32",
    users: 2_000,
    vehicles_per_user: 5,
    latency_ms: 20,
    rate_per_s: 0,
    concurrency: 32,
    verify: true,
    stop_after_polls: None,
};

const MEM: Case = Case {
    name: "memory: 100,000 vehicles known (20,000 users × 5), no limit, no latency, concurrency 32",
    users: 20_000,
    vehicles_per_user: 5,
    latency_ms: 0,
    rate_per_s: 0,
    concurrency: 32,
    verify: false,
    stop_after_polls: Some(10_000),
};

#[tokio::main]
async fn main() -> Res<()> {
    if let Ok(spec) = std::env::var(reference::ENV) {
        return reference::run_child(&spec).await;
    }
    let words = common::words();
    let want = |w: &str| words.is_empty() || words.iter().any(|x| x == w);
    let sqlite_only = words.iter().any(|w| w == "sqlite");
    println!("cycle bench on {}", common::machine());
    println!("daemon: {}", common::binary());
    let mut all_met = true;
    let mut cases = Vec::new();
    if want("a") {
        cases.push(A);
    }
    if want("b") {
        cases.push(B);
    }
    if want("mem") {
        cases.push(MEM);
    }
    // `-- b pg only`: PostgreSQL alone.
    let pg_only = words.iter().any(|w| w == "only");
    // `-- reference`: the reference client before each (b) run, in the same hour (alone: the
    // reference client only).
    let with_reference = words.iter().any(|w| w == "reference");
    if with_reference && cases.is_empty() && !words.iter().any(|w| w == "pg") {
        let dir = tempfile::tempdir()?;
        let (table, _) = run_reference(&B, dir.path()).await?;
        println!("{}", table.render());
        return Ok(());
    }
    let reference_for = |case: &Case| with_reference && case.name == B.name;
    for case in cases.iter().filter(|_| !pg_only) {
        let dir = tempfile::tempdir()?;
        let reference = if reference_for(case) {
            let (table, eff) = run_reference(case, dir.path()).await?;
            println!("{}", table.render());
            Some(eff)
        } else {
            None
        };
        let db = BenchDb::sqlite(dir.path());
        let table = run(case, &db, dir.path(), reference).await?;
        all_met &= table.all_met();
        println!("{}", table.render());
        db.cleanup().await;
    }
    if (words.is_empty() || words.iter().any(|w| w == "pg")) && !sqlite_only {
        // `-- b pg`: only (b) on PostgreSQL too; `-- pg` alone: both.
        let picked = words.iter().any(|w| w == "a" || w == "b");
        for case in [A, B] {
            if picked && !want(if case.name == A.name { "a" } else { "b" }) {
                continue;
            }
            let dir = tempfile::tempdir()?;
            let Some(db) = BenchDb::postgres().await else {
                println!("SKIPPED: PostgreSQL (no server binaries)");
                break;
            };
            let reference = if reference_for(&case) {
                let (table, eff) = run_reference(&case, dir.path()).await?;
                println!("{}", table.render());
                Some(eff)
            } else {
                None
            };
            let table = run(&case, &db, dir.path(), reference).await?;
            all_met &= table.all_met();
            println!("{}", table.render());
            db.cleanup().await;
        }
    }
    println!(
        "\n{}; load average now {}",
        if all_met {
            "every target met"
        } else {
            "some targets MISSED"
        },
        common::load()
    );
    Ok(())
}

/// The simulator as the real service is, for `case`: 2 % of calls fail with a 5xx, every
/// vehicle has the daemon's allowance (500 calls per 30-day period, epoch-aligned on both
/// sides), and with a rate limit its bucket is exactly the configured one.
fn sim_config(case: &Case) -> SimConfig {
    let mut sim_config = SimConfig {
        users: case.users,
        vehicles_per_user: case.vehicles_per_user,
        latency: Duration::from_millis(case.latency_ms),
        // Readings hold still for the run.
        update_period: Duration::from_secs(86_400),
        record_served: case.verify,
        // As the real service: 2 % of calls fail with a 5xx, and every vehicle has the
        // daemon's allowance (500 calls per 30-day period, epoch-aligned on both sides).
        faults: Faults {
            error_rate: 0.02,
            ..Faults::default()
        },
        allowance: Some(VehicleAllowance {
            calls: ALLOWANCE_CALLS,
            period: ALLOWANCE_PERIOD,
        }),
        ..SimConfig::default()
    };
    if case.rate_per_s > 0 {
        // The simulator's bucket is exactly the configured one.
        sim_config.app_bucket = Some(Bucket {
            capacity: f64::from(BURST),
            refill_per_second: f64::from(case.rate_per_s),
        });
    }
    sim_config
}

/// The reference client's run of `case` (see `cycle/reference.rs`): its table, and its
/// efficiency.
async fn run_reference(case: &Case, dir: &std::path::Path) -> Res<(Table, f64)> {
    let sim = common::simulator(sim_config(case)).await?;
    let sim_cpu_before = common::own_cpu_s();
    let machine = common::MachineCpu::now();
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.env(
        reference::ENV,
        format!(
            "{} {} {} {}",
            sim.auth_url(),
            sim.api_url(),
            sim.client_id(),
            case.concurrency
        ),
    );
    let child = common::spawn_watched(cmd, dir, "reference")?;
    let (stats, stdout, stderr) = child.wait().await?;
    let sim_cpu = common::own_cpu_s() - sim_cpu_before;
    let machine = machine.since();
    let c = sim.counters();
    sim.shutdown().await;
    let Some(out) = reference::parse(&stdout) else {
        return Err(format!(
            "the reference client failed ({:?}):\n{}",
            stats.status,
            tail(&stderr, 20)
        )
        .into());
    };
    let calls = c.api_calls as f64;
    let ideal = calls * case.latency_ms as f64 / 1000.0 / case.concurrency as f64;
    let eff = ideal / out.seconds;
    let mut t = Table::new(format!(
        "{} — the reference client (the API calls alone: no database, no queue)",
        case.name
    ));
    t.info(
        "API calls (simulator) / counted by the client",
        format!("{} / {}", c.api_calls, out.calls),
    );
    t.info(
        "  connections / signals (simulator) / signals (client)",
        format!(
            "{} / {} / {}",
            c.connections_calls, c.signals_calls, out.signals_calls
        ),
    );
    t.info(
        "time (first call to the last answer; the token before it)",
        format!("{:.2} s", out.seconds),
    );
    t.info(
        "ideal = calls × latency ÷ concurrency",
        format!("{ideal:.2} s"),
    );
    t.info(
        "reference efficiency (the hour's ceiling)",
        format!("{eff:.3}"),
    );
    in_flight(&mut t, &c, out.seconds, case.concurrency);
    t.info(
        "reference client CPU (user+sys)",
        format!("{:.2} s", stats.cpu_s),
    );
    t.info(
        "simulator + bench CPU (same machine)",
        format!("{sim_cpu:.2} s"),
    );
    t.info("the machine's CPU during the run (/proc/stat)", machine);
    Ok((t, eff))
}

async fn run(
    case: &Case,
    db: &BenchDb,
    dir: &std::path::Path,
    reference: Option<f64>,
) -> Res<Table> {
    let vehicles = case.users * case.vehicles_per_user;
    let mut config = DaemonConfig::new(&db.url);
    config.requests_per_minute = case.rate_per_s * 60;
    config.burst = BURST;
    config.concurrency = case.concurrency;
    config.extra = format!(
        "[budget]\ncalls_per_vehicle = {ALLOWANCE_CALLS}\nperiod = \"{}s\"\n",
        ALLOWANCE_PERIOD.as_secs()
    );
    let sim = common::simulator(sim_config(case)).await?;
    let path = config.write(dir, &sim)?;
    let load_before = common::load();
    let sim_cpu_before = common::own_cpu_s();
    let machine = common::MachineCpu::now();
    // BENCH_DAEMON_LOG=filter: the daemon's log level, and its last lines printed after the run
    // (BENCH_DAEMON_LOG_FILE=path keeps all of it, in path.<case>.<backend>).
    let log = std::env::var("BENCH_DAEMON_LOG")
        .ok()
        .filter(|l| !l.is_empty());
    let daemon = common::spawn_daemon(
        &path,
        &["sync-once"],
        log.as_deref().unwrap_or("warn"),
        "sync-once",
    )?;
    let mut stopped = None;
    if let Some(polls) = case.stop_after_polls {
        let store = db.store().await?;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !daemon.is_running() {
                break;
            }
            let done: i64 = store
                .queue_counts()
                .await?
                .iter()
                .filter(|(k, s, _)| k == "poll_signals" && s == "done")
                .map(|c| c.2)
                .sum();
            if done >= polls {
                daemon.signal("TERM")?;
                stopped = Some((done, daemon.started.elapsed()));
                break;
            }
        }
        store.close().await;
    }
    // The simulator's call count each second: where the cycle spends its time.
    let mut timeline = Vec::new();
    let mut last = sim.counters().api_calls;
    while stopped.is_none() && daemon.is_running() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sim.counters().api_calls;
        timeline.push(now - last);
        last = now;
    }
    let (stats, stdout, stderr) = daemon.wait().await?;
    let sim_cpu = common::own_cpu_s() - sim_cpu_before;
    let machine = machine.since();
    let summary = common::parse_summary(&stdout);
    let c = sim.counters();

    let mut t = Table::new(format!(
        "{} — {} ({} users × {} vehicles)",
        case.name, db.backend, case.users, case.vehicles_per_user
    ));
    if let Some((polls, after)) = stopped {
        t.info(
            "stopped with SIGTERM (by design) after",
            format!(
                "{:.1} s: discovery, {} connections syncs, {polls} of {vehicles} polls",
                after.as_secs_f64(),
                case.users
            ),
        );
    }
    let code = stats
        .status
        .map_or("?".to_owned(), |s| s.code().unwrap_or(-1).to_string());
    let ok = stopped.is_some() || stats.status.is_some_and(|s| s.success());
    if stopped.is_some() {
        t.info("sync-once exit status (interrupted by the SIGTERM)", code);
    } else {
        t.check("sync-once exit status", code, "0", ok);
    }
    if !ok || log.is_some() {
        eprintln!("daemon stderr:\n{}", tail(&stderr, 40));
    }
    // BENCH_DAEMON_LOG_FILE=path: the whole log kept there (the run's directory is removed).
    if let Some(path) = std::env::var_os("BENCH_DAEMON_LOG_FILE") {
        let mut path = std::path::PathBuf::from(path);
        let case_letter = case.name.chars().nth(1).unwrap_or('x');
        path.as_mut_os_string()
            .push(format!(".{case_letter}.{}", db.backend));
        std::fs::write(path, &stderr)?;
    }
    let calls = c.api_calls as f64;
    let cycle_s = summary
        .get("cycle_s")
        .copied()
        .or(stopped.map(|(_, after)| after.as_secs_f64()))
        .unwrap_or(f64::NAN);
    let by_rate = if case.rate_per_s > 0 {
        calls / f64::from(case.rate_per_s)
    } else {
        0.0
    };
    let by_latency = calls * case.latency_ms as f64 / 1000.0 / case.concurrency as f64;
    let ideal = by_rate.max(by_latency);
    t.info("API calls (simulator)", c.api_calls);
    t.info(
        "  connections / signals / other",
        format!(
            "{} / {} / {}",
            c.connections_calls,
            c.signals_calls,
            c.api_calls - c.connections_calls - c.signals_calls
        ),
    );
    t.info("cycle time (sync-once)", format!("{cycle_s:.2} s"));
    t.info(
        "process wall time (start-up, migration, token included)",
        format!("{:.2} s", stats.wall.as_secs_f64()),
    );
    t.info(
        "ideal = max(calls ÷ rate, calls × latency ÷ concurrency)",
        format!("max({by_rate:.2}, {by_latency:.2}) = {ideal:.2} s"),
    );
    if ideal > 0.0 {
        let eff = ideal / cycle_s;
        t.check(
            "cycle efficiency",
            format!("{eff:.3}"),
            "≥ 0.95",
            eff >= 0.95,
        );
        if let Some(r) = reference {
            t.info(
                "cycle efficiency ÷ the reference client's (the same hour)",
                format!("{:.3} ({eff:.3} ÷ {r:.3})", eff / r),
            );
        }
    }
    t.info(
        "achieved rate",
        format!("{:.0} calls/s", calls / cycle_s.max(1e-9)),
    );
    if let Some((polls, _)) = stopped {
        t.info(
            "signals calls (run stopped mid-phase)",
            format!(
                "{} ({polls} polls done when SIGTERM was sent)",
                c.signals_calls
            ),
        );
    } else {
        // Each injected 5xx costs at most one more call (its retry); beyond that, a vehicle
        // polled twice in one cycle would show here.
        let per_vehicle = c.signals_calls as f64 / vehicles as f64;
        let retries_allowed = c.injected_errors;
        t.check(
            "signals calls per vehicle (≤ 1 + retries of injected 5xx)",
            format!(
                "{per_vehicle:.3} ({} injected 5xx in all)",
                c.injected_errors
            ),
            "1 each, plus retries",
            c.signals_calls >= vehicles as u64
                && c.signals_calls <= vehicles as u64 + retries_allowed,
        );
    }
    // Discovery pages the application's connections once, PAGE_SIZE a page.
    let discovery_pages = vehicles.div_ceil(PAGE_SIZE as usize) as u64;
    let per_user = c.connections_calls.saturating_sub(discovery_pages) as f64 / case.users as f64;
    t.info(
        "connections pages per user (discovery's pages apart)",
        format!("{per_user:.3} (+ {discovery_pages} discovery pages)"),
    );
    t.check(
        "token requests (1 h token; the cycle is shorter)",
        c.token_requests,
        "1",
        c.token_requests == 1,
    );
    let r429 = c.responses_429_app + c.responses_429_vehicle;
    t.check("429s served", r429, "0", r429 == 0);
    t.check(
        "calls before a Retry-After",
        c.calls_before_retry_after,
        "0",
        c.calls_before_retry_after == 0,
    );
    in_flight(&mut t, &c, cycle_s, case.concurrency);
    if !timeline.is_empty() {
        let cells: Vec<String> = timeline.iter().map(u64::to_string).collect();
        t.info("calls per second, second by second", cells.join(" "));
    }
    t.info("daemon CPU (user+sys)", format!("{:.2} s", stats.cpu_s));
    t.info(
        "daemon CPU per 1,000 API calls",
        format!("{:.3} s", stats.cpu_s / calls * 1000.0),
    );
    t.info(
        "simulator + bench CPU (same machine)",
        format!("{sim_cpu:.2} s"),
    );
    t.info("the machine's CPU during the run (/proc/stat)", machine);
    let peak = stats.peak_rss_kib;
    if case.users * case.vehicles_per_user >= 100_000 {
        t.check(
            "daemon peak RSS (VmHWM), 100,000 vehicles known",
            mib(peak),
            "≤ 64 MiB",
            peak <= 64 * 1024,
        );
    } else {
        t.info("daemon peak RSS (VmHWM)", mib(peak));
    }
    if stopped.is_none() {
        t.check(
            "jobs dead",
            summary.get("dead").copied().unwrap_or(f64::NAN),
            "0",
            summary.get("dead") == Some(&0.0),
        );
    }
    t.info(
        "jobs done / retries",
        format!(
            "{} / {}",
            summary.get("done").copied().unwrap_or(f64::NAN),
            summary.get("retries").copied().unwrap_or(f64::NAN)
        ),
    );
    if case.verify {
        let store = db.store().await?;
        let cmp = common::compare(&store, &sim).await?;
        t.check(
            "served readings stored exactly once, right value",
            format!("{} of {} (stored {})", cmp.matched, cmp.served, cmp.stored),
            "all",
            cmp.exact(),
        );
        store.close().await;
    } else {
        t.info(
            "samples stored",
            summary.get("samples").copied().unwrap_or(f64::NAN),
        );
    }
    t.info("load average before → after", {
        format!("{load_before} → {}", common::load())
    });
    sim.shutdown().await;
    Ok(t)
}

/// The requests in flight at the simulator: the most at once (never above `concurrency`), and
/// where the bound is lost: the time the calls spent in the simulator (its latency plus
/// handling, waits for a CPU included) against the time the client left slots idle.
fn in_flight(t: &mut Table, c: &CounterSnapshot, seconds: f64, concurrency: usize) {
    t.check(
        "most requests in flight at once (simulator)",
        c.api_concurrent_peak,
        &format!("≤ {concurrency}"),
        c.api_concurrent_peak <= concurrency as u64,
    );
    let busy_s = c.api_busy_us as f64 / 1e6;
    t.info(
        "mean time a call spends in the simulator (latency included)",
        format!("{:.2} ms", busy_s * 1000.0 / (c.api_calls as f64).max(1.0)),
    );
    t.info(
        "mean requests in flight at the simulator (busy time ÷ cycle time)",
        format!("{:.1} of {concurrency}", busy_s / seconds.max(1e-9)),
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
