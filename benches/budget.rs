//! One rate budget for the whole application: efficiency against a simulator whose bucket is
//! exactly the configured one, with 1, 2 and 4 processes; convergence under a smaller real
//! bucket; and takeover after `kill -9`.
//!
//! ```sh
//! cargo bench --bench budget                  # everything (PostgreSQL parts need its binaries)
//! cargo bench --bench budget -- exact smaller kill
//! ```
//!
//! Honest setup: the simulator's application bucket is exactly `[rate_limit]` (10 requests,
//! refilling 80/s; `requests_per_minute = 4800`, `burst = 10`), it fails 2 % of calls with
//! 500/502/503 (each still costs a token), and answers 20 ms late. The workload is one
//! `sync-once` cycle of 600 users × 2 vehicles (1,812 calls) per process group, every process
//! started at once on the same database.
//!
//! - efficiency = calls the bucket admitted ÷ (80/s × cycle seconds + 10), the cycle being the
//!   longest `sync-once` reported among the processes;
//! - 429s as a share of all calls; calls sent before a `Retry-After` ran out (the simulator
//!   counts them).

mod common;

use std::time::{Duration, Instant};

use common::{BenchDb, DaemonConfig, Res, Table};
use smartcar_sim::{Bucket, Faults, SimConfig, Simulator};

const USERS: usize = 600;
const VPU: usize = 2;
const RATE: f64 = 80.0;
const CAPACITY: f64 = 10.0;

#[tokio::main]
async fn main() -> Res<()> {
    let words = common::words();
    let want = |w: &str| words.is_empty() || words.iter().any(|x| x == w);
    println!("budget bench on {}", common::machine());
    println!("daemon: {}", common::binary());
    let mut all_met = true;
    let mut report = |t: Table| {
        all_met &= t.all_met();
        println!("{}", t.render());
    };
    if want("exact") {
        report(exact("sqlite", 1).await?);
        report(exact("sqlite", 2).await?);
        for n in [1, 2, 4] {
            match exact("postgres", n).await {
                Ok(t) => report(t),
                Err(e) => println!("SKIPPED PostgreSQL: {e}"),
            }
        }
    }
    if want("smaller") {
        report(smaller("sqlite", 1).await?);
        match smaller("postgres", 2).await {
            Ok(t) => report(t),
            Err(e) => println!("SKIPPED PostgreSQL: {e}"),
        }
    }
    if want("kill") {
        match kill("postgres").await {
            Ok(t) => report(t),
            Err(e) => println!("SKIPPED PostgreSQL: {e}"),
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

async fn database(backend: &str, dir: &std::path::Path) -> Res<BenchDb> {
    if backend == "sqlite" {
        Ok(BenchDb::sqlite(dir))
    } else {
        BenchDb::postgres()
            .await
            .ok_or_else(|| "no PostgreSQL server binaries".into())
    }
}

async fn simulator(bucket: Bucket) -> Res<Simulator> {
    common::simulator(SimConfig {
        users: USERS,
        vehicles_per_user: VPU,
        latency: Duration::from_millis(20),
        update_period: Duration::from_secs(86_400),
        app_bucket: Some(bucket),
        faults: Faults {
            error_rate: 0.02,
            ..Faults::default()
        },
        record_served: true,
        ..SimConfig::default()
    })
    .await
}

fn config(db: &BenchDb, dir: &std::path::Path, sim: &Simulator) -> Res<std::path::PathBuf> {
    let mut c = DaemonConfig::new(&db.url);
    c.requests_per_minute = (RATE * 60.0) as u32;
    c.burst = CAPACITY as u32;
    c.concurrency = 8;
    c.backoff_min = Duration::from_millis(100);
    c.backoff_max = Duration::from_secs(2);
    c.write(dir, sim)
}

/// No call may leave before a `Retry-After` ran out (the simulator counts those that did).
fn check_retry_after(t: &mut Table, c: &smartcar_sim::CounterSnapshot) {
    t.check(
        "calls before a Retry-After",
        c.calls_before_retry_after,
        "0",
        c.calls_before_retry_after == 0,
    );
}

/// Every process of the cycle exited 0.
fn check_exits(t: &mut Table, o: &Outcome) {
    t.check(
        "exit statuses",
        format!("{:?}", o.exits),
        "all 0",
        o.exits.iter().all(|c| *c == Some(0)),
    );
}

/// Cycle seconds `sync-once` reports at the end of its summary line (`…; 23.4s`).
fn cycle_seconds(stdout: &str) -> Option<f64> {
    let line = stdout.lines().find(|l| l.starts_with("sync-once:"))?;
    line.rsplit(';')
        .next()?
        .trim()
        .trim_end_matches('s')
        .parse()
        .ok()
}

struct Outcome {
    cycle_s: f64,
    exits: Vec<Option<i32>>,
}

/// Starts `n` `sync-once` processes at once; waits for all.
async fn cycle(path: &std::path::Path, n: usize) -> Res<Outcome> {
    let mut daemons = Vec::new();
    for i in 0..n {
        daemons.push(common::spawn_daemon(
            path,
            &["sync-once"],
            "warn",
            &format!("p{i}"),
        )?);
    }
    let mut cycle_s: f64 = 0.0;
    let mut exits = Vec::new();
    for d in daemons {
        let (stats, out, err) = d.wait().await?;
        let code = stats.status.and_then(|s| s.code());
        if code != Some(0) {
            eprintln!("sync-once exited {code:?}:\n{out}\n{err}");
        }
        exits.push(code);
        cycle_s = cycle_s.max(cycle_seconds(&out).unwrap_or(stats.wall.as_secs_f64()));
    }
    Ok(Outcome { cycle_s, exits })
}

async fn exact(backend: &'static str, n: usize) -> Res<Table> {
    let dir = tempfile::tempdir()?;
    let db = database(backend, dir.path()).await?;
    let sim = simulator(Bucket {
        capacity: CAPACITY,
        refill_per_second: RATE,
    })
    .await?;
    let path = config(&db, dir.path(), &sim)?;
    let o = cycle(&path, n).await?;
    let c = sim.counters();
    let throttled = c.by_status.get(&429).copied().unwrap_or(0);
    let admitted = c.api_calls - throttled;
    let efficiency = admitted as f64 / (RATE * o.cycle_s + CAPACITY);
    let share_429 = throttled as f64 / c.api_calls.max(1) as f64;
    let store = db.store().await?;
    let cmp = common::compare(&store, &sim).await?;
    store.close().await;
    let mut t = Table::new(format!(
        "bucket = configuration (10, 80/s): {n} process(es) on {backend}"
    ));
    t.info(
        "API calls (admitted + 429)",
        format!("{admitted} + {throttled}"),
    );
    t.info("cycle", format!("{:.1} s", o.cycle_s));
    t.check(
        "efficiency (admitted ÷ bucket over the cycle)",
        format!("{efficiency:.3}"),
        ">= 0.95",
        efficiency >= 0.95,
    );
    t.check(
        "429s",
        format!("{:.2} %", share_429 * 100.0),
        "<= 1 %",
        share_429 <= 0.01,
    );
    check_retry_after(&mut t, &c);
    t.check(
        "readings stored exactly once",
        format!("{} of {}", cmp.matched, cmp.served),
        "all, no duplicates",
        cmp.exact(),
    );
    check_exits(&mut t, &o);
    sim.shutdown().await;
    db.cleanup().await;
    Ok(t)
}

/// The real bucket is 70 % of the configured one: the rate must converge under it.
async fn smaller(backend: &'static str, n: usize) -> Res<Table> {
    let dir = tempfile::tempdir()?;
    let db = database(backend, dir.path()).await?;
    let real = Bucket {
        capacity: CAPACITY * 0.7,
        refill_per_second: RATE * 0.7,
    };
    let sim = simulator(real).await?;
    let path = config(&db, dir.path(), &sim)?;
    // Sample the simulator's counters every second while the cycle runs.
    let started = Instant::now();
    let run = tokio::spawn({
        let path = path.clone();
        async move { cycle(&path, n).await.map_err(|e| e.to_string()) }
    });
    let mut samples = Vec::new();
    while !run.is_finished() {
        let c = sim.counters();
        samples.push((
            started.elapsed().as_secs_f64(),
            c.api_calls - c.by_status.get(&429).copied().unwrap_or(0),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let o = run.await??;
    let c = sim.counters();
    let throttled = c.by_status.get(&429).copied().unwrap_or(0);
    let share_429 = throttled as f64 / c.api_calls.max(1) as f64;
    // After convergence: the second half of the time calls were flowing, minus the last
    // second (the cycle's tail).
    let flowing: Vec<_> = samples.iter().filter(|s| s.1 > 0).collect();
    let (mid, end) = if flowing.len() >= 6 {
        (flowing[flowing.len() / 2], flowing[flowing.len() - 2])
    } else {
        (flowing[0], flowing[flowing.len() - 1])
    };
    let throughput = (end.1 - mid.1) as f64 / (end.0 - mid.0).max(1e-9);
    let ratio = throughput / real.refill_per_second;
    let mut t = Table::new(format!(
        "real bucket 70 % of the configured (7, 56/s): {n} process(es) on {backend}"
    ));
    t.info("cycle", format!("{:.1} s", o.cycle_s));
    t.check(
        "throughput after convergence ÷ real rate",
        format!("{ratio:.3} ({throughput:.1}/s)"),
        ">= 0.85",
        ratio >= 0.85,
    );
    t.check(
        "429s",
        format!("{:.2} % ({throttled})", share_429 * 100.0),
        "<= 3 %",
        share_429 <= 0.03,
    );
    check_retry_after(&mut t, &c);
    check_exits(&mut t, &o);
    sim.shutdown().await;
    db.cleanup().await;
    Ok(t)
}

/// Two processes; one is SIGKILLed mid-cycle. The other finishes the cycle within the normal
/// two-process cycle time + 15 s, and every reading is stored exactly once.
async fn kill(backend: &'static str) -> Res<Table> {
    // The normal two-process cycle, for reference.
    let normal = {
        let dir = tempfile::tempdir()?;
        let db = database(backend, dir.path()).await?;
        let sim = simulator(Bucket {
            capacity: CAPACITY,
            refill_per_second: RATE,
        })
        .await?;
        let path = config(&db, dir.path(), &sim)?;
        let o = cycle(&path, 2).await?;
        sim.shutdown().await;
        db.cleanup().await;
        o.cycle_s
    };
    let dir = tempfile::tempdir()?;
    let db = database(backend, dir.path()).await?;
    let sim = simulator(Bucket {
        capacity: CAPACITY,
        refill_per_second: RATE,
    })
    .await?;
    let path = config(&db, dir.path(), &sim)?;
    let started = Instant::now();
    let survivor = common::spawn_daemon(&path, &["sync-once"], "warn", "survivor")?;
    let victim = common::spawn_daemon(&path, &["sync-once"], "warn", "victim")?;
    // Mid-cycle: during the polls.
    tokio::time::sleep(Duration::from_secs_f64(normal * 0.6)).await;
    victim.signal("KILL")?;
    let killed_at = started.elapsed();
    let _ = victim.wait().await;
    let (stats, out, err) = survivor.wait().await?;
    let total = started.elapsed();
    let code = stats.status.and_then(|s| s.code());
    if code != Some(0) {
        eprintln!("survivor exited {code:?}:\n{out}\n{err}");
    }
    let store = db.store().await?;
    let cmp = common::compare(&store, &sim).await?;
    let open = store.open_jobs(None).await?;
    store.close().await;
    let mut t = Table::new(format!(
        "kill -9 one of two processes mid-cycle, on {backend}"
    ));
    t.info("normal two-process cycle", format!("{normal:.1} s"));
    t.info("killed at", format!("{:.1} s", killed_at.as_secs_f64()));
    t.check(
        "the survivor's cycle (start to exit)",
        format!("{:.1} s", total.as_secs_f64()),
        &format!("<= {:.1} s (normal + 15 s)", normal + 15.0),
        total.as_secs_f64() <= normal + 15.0 && code == Some(0),
    );
    t.check("open jobs left", open, "0", open == 0);
    t.check(
        "readings stored exactly once",
        format!(
            "{} of {} ({} missing, {} duplicates)",
            cmp.matched, cmp.served, cmp.missing, cmp.duplicates
        ),
        "all, no duplicates",
        cmp.exact(),
    );
    sim.shutdown().await;
    db.cleanup().await;
    Ok(t)
}
