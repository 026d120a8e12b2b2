//! Losing nothing: a fault soak and a crash loop, the daemon a separate process (the release
//! binary) and the simulator in this one.
//!
//! ```sh
//! cargo bench --bench reliability            # both
//! cargo bench --bench reliability -- soak    # the fault soak (SOAK_SECS, default 180)
//! cargo bench --bench reliability -- crash   # the crash loop (CRASH_KILLS, default 20)
//! ```
//!
//! Soak: `run` on a fast schedule (signals every 10 s, connections and discovery every 30 s)
//! against a simulator answering 10 % of calls 500/502/503, 2 % only after 3 s (the client gives
//! up at 2 s), with an application bucket smaller than the demand and readings that change every
//! 4 s; then SIGTERM. A slow answer the client abandoned is never recorded as served: hyper sees
//! the connection close and drops the handler while it still sleeps, before it picks readings.
//!
//! Crash loop: `sync-once` of a 1,000 × 5 fleet, SIGKILLed at random moments and restarted
//! against the same SQLite file (lease 2 s), then one run to completion. Readings hold still
//! during the loop: a reading handed to a process killed before it committed is served again,
//! identical, to the next one.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{BenchDb, DaemonConfig, Res, Table};
use smartcar_sim::{Bucket, Faults, SimConfig, Simulator};
use smartcar_sync::store::Store;

#[tokio::main]
async fn main() -> Res<()> {
    let words = common::words();
    let want = |w: &str| words.is_empty() || words.iter().any(|x| x == w);
    println!("reliability bench on {}", common::machine());
    println!("daemon: {}", common::binary());
    let mut all_met = true;
    if want("soak") {
        let secs = env_u64("SOAK_SECS", 180);
        let t = soak(Duration::from_secs(secs)).await?;
        all_met &= t.all_met();
        println!("{}", t.render());
    }
    if want("crash") {
        let kills = env_u64("CRASH_KILLS", 20) as usize;
        let t = crash_loop(kills).await?;
        all_met &= t.all_met();
        println!("{}", t.render());
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

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const SOAK_USERS: usize = 200;
const SOAK_VPU: usize = 3;
const SOAK_TOKEN_LIFETIME_S: u64 = 60;

async fn soak(duration: Duration) -> Res<Table> {
    let dir = tempfile::tempdir()?;
    let db = BenchDb::sqlite(dir.path());
    let sim = common::simulator(SimConfig {
        users: SOAK_USERS,
        vehicles_per_user: SOAK_VPU,
        update_period: Duration::from_secs(4),
        latency: Duration::from_millis(5),
        token_lifetime: Duration::from_secs(SOAK_TOKEN_LIFETIME_S),
        // Demand: 600 polls per 10 s + 206 pages per 30 s ≈ 67 calls/s; the bucket gives 40.
        app_bucket: Some(Bucket {
            capacity: 30.0,
            refill_per_second: 40.0,
        }),
        faults: Faults {
            error_rate: 0.10,
            slow_rate: 0.02,
            slow_delay: Duration::from_secs(3),
            expired_token_rate: 0.0,
        },
        ..SimConfig::default()
    })
    .await?;
    let mut config = DaemonConfig::new(&db.url);
    config.requests_per_minute = 0; // it learns the limit from 429s
    config.concurrency = 8;
    config.request_timeout = Duration::from_secs(2);
    config.lease = Duration::from_secs(10);
    config.backoff_min = Duration::from_millis(200);
    config.backoff_max = Duration::from_secs(5);
    config.shutdown_grace = Duration::from_secs(10);
    config.signals_cron = "*/10 * * * * *".to_owned();
    config.connections_cron = "*/30 * * * * *".to_owned();
    let path = config.write(dir.path(), &sim)?;
    // Migrated here, before the daemon starts, so the two never migrate at once.
    let store = db.store().await?;
    let load_before = common::load();
    println!(
        "\nsoak: {} s, {SOAK_USERS} users × {SOAK_VPU} vehicles, 10 % 5xx, 2 % slow (3 s > 2 s timeout), \
         bucket 30 + 40/s, readings change every 4 s",
        duration.as_secs()
    );
    let daemon = common::spawn_daemon(&path, &["run"], "warn", "run")?;
    let started = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(30).min(duration - started.elapsed().min(duration)))
            .await;
        if !daemon.is_running() {
            break;
        }
        let c = sim.counters();
        println!(
            "  {:>4.0} s: {} calls, {} samples stored, {} jobs open, {} 5xx, {} slow, {} 429s",
            started.elapsed().as_secs_f64(),
            c.api_calls,
            store.sample_count().await.unwrap_or(-1),
            store.open_jobs(None).await.unwrap_or(-1),
            c.injected_errors,
            c.slow_responses,
            c.responses_429_app + c.responses_429_vehicle
        );
    }
    let ran = started.elapsed();
    let still_running = daemon.is_running();
    let term_sent = Instant::now();
    if still_running {
        daemon.signal("TERM")?;
    }
    let (stats, _stdout, stderr) = daemon.wait().await?;
    let stop_time = term_sent.elapsed();
    let c = sim.counters();

    let mut t = Table::new(format!(
        "fault soak — sqlite, {} s of `run`, {SOAK_USERS} users × {SOAK_VPU} vehicles",
        ran.as_secs()
    ));
    let ok = still_running && stats.status.is_some_and(|s| s.success());
    t.check(
        "SIGTERM → exit status, time to exit",
        format!(
            "{}, {:.1} s",
            stats
                .status
                .map_or("?".to_owned(), |s| s.code().unwrap_or(-1).to_string()),
            stop_time.as_secs_f64()
        ),
        "0, < grace (10 s)",
        ok && stop_time < Duration::from_secs(10),
    );
    if !ok {
        eprintln!("daemon stderr (tail):\n{}", tail(&stderr, 40));
    }
    t.info("API calls", c.api_calls);
    t.info(
        "signals calls / connections calls",
        format!("{} / {}", c.signals_calls, c.connections_calls),
    );
    t.info(
        "injected 5xx / slow answers (abandoned at the 2 s timeout)",
        format!("{} / {}", c.injected_errors, c.slow_responses),
    );
    t.info("429s (application bucket)", c.responses_429_app);
    t.check(
        "faults really happened",
        format!(
            "5xx {}, slow {}, 429 {}",
            c.injected_errors, c.slow_responses, c.responses_429_app
        ),
        "all > 0",
        c.injected_errors > 0 && c.slow_responses > 0 && c.responses_429_app > 0,
    );
    t.check(
        "calls before a Retry-After had passed",
        c.calls_before_retry_after,
        "0",
        c.calls_before_retry_after == 0,
    );
    t.check(
        "calls with an expired or unknown token",
        c.expired_token_calls + c.unknown_token_calls,
        "0",
        c.expired_token_calls + c.unknown_token_calls == 0,
    );
    let lifetimes = ran.as_secs_f64() / SOAK_TOKEN_LIFETIME_S as f64;
    t.check(
        "token requests per token lifetime (60 s tokens)",
        format!(
            "{} in {:.1} lifetimes = {:.2}",
            c.token_requests,
            lifetimes,
            c.token_requests as f64 / lifetimes
        ),
        "≈ 1 (1 an hour with 1 h tokens)",
        (c.token_requests as f64) <= lifetimes.ceil() + 1.0,
    );
    t.info(
        "token requests in flight at once (peak)",
        c.token_concurrent_peak,
    );
    let dead = store.dead_since(chrono::DateTime::UNIX_EPOCH).await?;
    t.check("dead jobs", dead, "0", dead == 0);
    let counts = store.queue_counts().await?;
    let done: i64 = counts
        .iter()
        .filter(|(_, s, _)| s == "done")
        .map(|c| c.2)
        .sum();
    let open: i64 = counts
        .iter()
        .filter(|(_, s, _)| s == "pending" || s == "running")
        .map(|c| c.2)
        .sum();
    t.info(
        "jobs done / left pending at SIGTERM (not started: nothing served)",
        format!("{done} / {open}"),
    );
    let cmp = common::compare(&store, &sim).await?;
    t.check(
        "served readings stored exactly once with the right value",
        format!(
            "{} of {} (missing {}, wrong {}, unexpected {}, duplicates {})",
            cmp.matched, cmp.served, cmp.missing, cmp.wrong_value, cmp.unexpected, cmp.duplicates
        ),
        "all, nothing else",
        cmp.exact(),
    );
    t.info(
        "daemon CPU / peak RSS",
        format!("{:.1} s / {}", stats.cpu_s, common::mib(stats.peak_rss_kib)),
    );
    t.info(
        "load average before → after",
        format!("{load_before} → {}", common::load()),
    );
    store.close().await;
    sim.shutdown().await;
    db.cleanup().await;
    Ok(t)
}

const CRASH_USERS: usize = 1_000;
const CRASH_VPU: usize = 5;

async fn crash_loop(kills: usize) -> Res<Table> {
    let dir = tempfile::tempdir()?;
    let db = BenchDb::sqlite(dir.path());
    let sim = common::simulator(SimConfig {
        users: CRASH_USERS,
        vehicles_per_user: CRASH_VPU,
        latency: Duration::from_millis(5),
        // Readings hold still: see the module comment.
        update_period: Duration::from_secs(86_400),
        ..SimConfig::default()
    })
    .await?;
    let mut config = DaemonConfig::new(&db.url);
    config.concurrency = 16;
    config.lease = Duration::from_secs(2);
    let path = config.write(dir.path(), &sim)?;
    let store = db.store().await?;
    let load_before = common::load();
    // Kill moments are spread over a cycle's typical length (each restart runs a whole cycle:
    // discovery, every user's connections, every vehicle's signals).
    let span = env_u64("CRASH_SPAN_MS", 8_000);
    println!(
        "\ncrash loop: {kills} SIGKILLs of `sync-once` ({CRASH_USERS} users × {CRASH_VPU} vehicles, \
         5 ms latency, lease 2 s) at random moments in 0.1–{:.1} s",
        span as f64 / 1000.0
    );
    let mut killed = 0;
    let mut runs = 0;
    let mut finished_early = 0;
    let mut phases: Vec<String> = Vec::new();
    let loop_started = Instant::now();
    while killed < kills {
        runs += 1;
        let at = Duration::from_millis(fastrand::u64(100..span.max(200)));
        let daemon = common::spawn_daemon(&path, &["sync-once"], "warn", &format!("run{runs}"))?;
        tokio::time::sleep(at).await;
        if daemon.is_running() {
            daemon.signal("KILL")?;
            let (stats, _, _) = daemon.wait().await?;
            killed += 1;
            let phase = phase(&store).await?;
            println!(
                "  kill {killed:>2} at {:>5.2} s ({}): {phase}",
                at.as_secs_f64(),
                stats.status.map_or("?".to_owned(), |s| format!("{s}")
                    .replace("signal: ", "sig "))
            );
            phases.push(phase);
        } else {
            let (stats, _, _) = daemon.wait().await?;
            finished_early += 1;
            println!(
                "  run {runs} finished before its kill at {:.2} s (exit {:?})",
                at.as_secs_f64(),
                stats.status.and_then(|s| s.code())
            );
        }
    }
    let final_start = Utc::now();
    let daemon = common::spawn_daemon(&path, &["sync-once"], "warn", "final")?;
    let (stats, stdout, stderr) = daemon.wait().await?;
    let loop_time = loop_started.elapsed();
    let c = sim.counters();

    let mut t = Table::new(format!(
        "crash loop — sqlite, {CRASH_USERS} users × {CRASH_VPU} vehicles, {killed} SIGKILLs + a final run"
    ));
    let ok = stats.status.is_some_and(|s| s.success());
    t.check(
        "final sync-once exit status",
        stats
            .status
            .map_or("?".to_owned(), |s| s.code().unwrap_or(-1).to_string()),
        "0",
        ok,
    );
    if !ok {
        eprintln!("daemon stderr (tail):\n{}", tail(&stderr, 40));
    }
    t.info(
        "kills (runs, runs that finished before their kill)",
        format!("{killed} ({runs} runs, {finished_early} early)"),
    );
    let in_phase = |p: &str| phases.iter().filter(|x| x.starts_with(p)).count();
    t.info(
        "kills landing in discovery / connections / signals",
        format!(
            "{} / {} / {}",
            in_phase("discovery"),
            in_phase("connections"),
            in_phase("signals")
        ),
    );
    t.info(
        "final run",
        stdout
            .lines()
            .find(|l| l.starts_with("sync-once:"))
            .unwrap_or("?"),
    );
    let open = store.open_jobs(None).await?;
    t.check("open jobs at the end", open, "0", open == 0);
    let dead = store.dead_since(chrono::DateTime::UNIX_EPOCH).await?;
    t.check("dead jobs", dead, "0", dead == 0);
    let (done, reclaimed, max_attempts) = job_figures(&db.url).await?;
    t.info(
        "jobs done / taken over after a kill (lease expired) / most attempts",
        format!("{done} / {reclaimed} / {max_attempts}"),
    );
    let lost = lost_work(&store, &sim, final_start).await?;
    t.check(
        "no job lost: every user synced, every vehicle polled in the final cycle",
        format!("{} users, {} vehicles missed", lost.0, lost.1),
        "0, 0",
        lost == (0, 0),
    );
    let cmp = common::compare(&store, &sim).await?;
    t.check(
        "duplicate samples",
        cmp.duplicates,
        "0",
        cmp.duplicates == 0,
    );
    t.check(
        "served readings stored exactly once with the right value",
        format!(
            "{} of {} (missing {}, wrong {}, unexpected {})",
            cmp.matched, cmp.served, cmp.missing, cmp.wrong_value, cmp.unexpected
        ),
        "all, nothing else",
        cmp.exact(),
    );
    t.info(
        "token requests (one per process start)",
        format!("{} for {} processes", c.token_requests, runs + 1),
    );
    t.info("loop time", format!("{:.0} s", loop_time.as_secs_f64()));
    t.info(
        "load average before → after",
        format!("{load_before} → {}", common::load()),
    );
    store.close().await;
    sim.shutdown().await;
    db.cleanup().await;
    Ok(t)
}

/// Which phase the queue was in when the process died: the open job kinds.
async fn phase(store: &Store) -> Res<String> {
    let counts = store.queue_counts().await?;
    let open = |kind: &str| {
        counts
            .iter()
            .filter(|(k, s, _)| k == kind && (s == "pending" || s == "running"))
            .map(|c| c.2)
            .sum::<i64>()
    };
    let (d, c, s) = (
        open("discover_users"),
        open("sync_connections"),
        open("poll_signals"),
    );
    let name = if d > 0 {
        "discovery"
    } else if c > 0 {
        "connections"
    } else if s > 0 {
        "signals"
    } else {
        "between phases"
    };
    Ok(format!(
        "{name} (open: {d} discovery, {c} connections, {s} polls; {} samples)",
        store.sample_count().await?
    ))
}

/// (done jobs, done jobs that had been taken over after a lease expired, most attempts).
async fn job_figures(url: &str) -> Res<(i64, i64, i64)> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(url).await?;
    let row: (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(attempts > 0), 0), COALESCE(MAX(attempts), 0) \
         FROM jobs WHERE state = 'done'",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    Ok(row)
}

/// Users not synced and vehicles not polled since the final run started, over the whole fleet
/// the simulator has.
async fn lost_work(
    store: &Store,
    sim: &Simulator,
    since: chrono::DateTime<Utc>,
) -> Res<(usize, usize)> {
    let synced: HashSet<String> = store
        .list_users()
        .await?
        .into_iter()
        .filter(|u| u.last_synced_at.is_some_and(|t| t >= since))
        .map(|u| u.user_id)
        .collect();
    let polled: HashSet<String> = store
        .list_vehicles()
        .await?
        .into_iter()
        .filter(|v| v.last_polled_at.is_some_and(|t| t >= since))
        .map(|v| v.vehicle_id)
        .collect();
    let mut users_missed = 0;
    let mut vehicles_missed = 0;
    for u in sim.user_ids() {
        if !synced.contains(&u) {
            users_missed += 1;
        }
        for v in sim.vehicles_of(&u) {
            if !polled.contains(&v) {
                vehicles_missed += 1;
            }
        }
    }
    Ok((users_missed, vehicles_missed))
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
