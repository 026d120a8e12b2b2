//! The per-vehicle allowance (issue 11), end to end: the daemon's planner against a simulator
//! that enforces a short allowance and answers 430 past it.
//!
//! ```sh
//! cargo bench --bench allowance
//! ```
//!
//! Honest setup: the simulator allows each vehicle [`CALLS`] calls per [`PERIOD_S`] s (periods
//! aligned to the Unix epoch, as the daemon's are) and answers 430 past it; its application
//! bucket is exactly `[rate_limit]`; 2 % of calls fail with 500/502/503 (each still counts
//! against the allowance, and its retry too), answers come 20 ms late. 30 vehicles: a third
//! parked, a third charging, a third driving. The daemon runs `run` (signals tick every second:
//! the planner's tick) with `[budget] calls_per_vehicle = 10, period = "60s"`, for four periods
//! and more; the three full periods after the first are measured (the first one holds the start,
//! when every vehicle is new).
//!
//! Criteria (the run fails with a non-zero exit when one is missed): no 430; no vehicle over its
//! allowance in any period (calls sent, not only admitted); active vehicles use ≥ 60 % of their
//! allowance; parked ones ≤ 60 % of what active ones use; no tenth of a period gets more than
//! 25 % of that period's calls. Plan versus run: `budget plan` for the shipped `config.toml`
//! (500 calls a month) plans ≤ 500 per vehicle, and the run's counts match `budget plan` for
//! the bench's own configuration within 10 %: active vehicles' calls per period, and the
//! fleet's (parked vehicles' alone are shown: ten vehicles polling 3 or 4 times a period each,
//! by their phase, average 3.6 only over many).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{BenchDb, DaemonConfig, Res, Table};
use smartcar_sim::{Bucket, Faults, SimConfig};

const USERS: usize = 10;
const VPU: usize = 3;
const CALLS: u32 = 10;
const PERIOD_S: i64 = 60;
/// Full periods measured.
const MEASURED: i64 = 3;
const RPM: u32 = 600;
const BURST: u32 = 20;

#[tokio::main]
async fn main() -> Res<()> {
    println!("allowance bench on {}", common::machine());
    println!("daemon: {}", common::binary());
    let (t, all_met) = run().await?;
    println!("{}", t.render());
    println!(
        "\n{}; load average now {}",
        if all_met {
            "every target met"
        } else {
            "some targets MISSED"
        },
        common::load()
    );
    if !all_met {
        std::process::exit(1);
    }
    Ok(())
}

/// `smartcar-sync --config PATH budget plan --vehicles N --json`, parsed.
fn budget_plan(config: &std::path::Path, vehicles: u64) -> Res<serde_json::Value> {
    let out = std::process::Command::new(common::binary())
        .arg("--config")
        .arg(config)
        .args([
            "budget",
            "plan",
            "--vehicles",
            &vehicles.to_string(),
            "--json",
        ])
        .env_remove("SMARTCAR_SYNC_CONFIG")
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "budget plan failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn num(v: &serde_json::Value, k: &str) -> f64 {
    v.get(k)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(f64::NAN)
}

async fn run() -> Res<(Table, bool)> {
    let mut t = Table::new(format!(
        "{} vehicles (a third each parked, charging, driving), {CALLS} calls per {PERIOD_S} s \
         each, 2 % faults, bucket = [rate_limit] ({RPM}/min, burst {BURST})",
        USERS * VPU
    ));
    let sim = common::simulator(SimConfig {
        users: USERS,
        vehicles_per_user: VPU,
        latency: Duration::from_millis(20),
        update_period: Duration::from_secs(1),
        app_bucket: Some(Bucket {
            capacity: f64::from(BURST),
            refill_per_second: f64::from(RPM) / 60.0,
        }),
        faults: Faults {
            error_rate: 0.02,
            ..Faults::default()
        },
        record_served: false,
        allowance: Some(smartcar_sim::VehicleAllowance {
            calls: CALLS,
            period: Duration::from_secs(PERIOD_S as u64),
        }),
        behaviour_thirds: true,
        ..SimConfig::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let db = BenchDb::sqlite(dir.path());
    let mut c = DaemonConfig::new(&db.url);
    c.requests_per_minute = RPM;
    c.burst = BURST;
    c.concurrency = 8;
    c.backoff_min = Duration::from_millis(300);
    c.backoff_max = Duration::from_secs(3);
    c.signals_cron = "* * * * * *".to_owned();
    c.extra = format!(
        "[budget]\ncalls_per_vehicle = {CALLS}\nperiod = \"{PERIOD_S}s\"\nmin_interval = \"2s\"\n\
         reserve = \"10%\"\n"
    );
    let config = c.write(dir.path(), &sim)?;

    // Start just after a period boundary, run the first (start-up) period and MEASURED more.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let period_ms = PERIOD_S * 1000;
    let first = now_ms.div_euclid(period_ms) + 1;
    let measured = first + 1..first + 1 + MEASURED;
    let start_at = first * period_ms + 500;
    tokio::time::sleep(Duration::from_millis((start_at - now_ms).max(0) as u64)).await;
    let daemon = common::spawn_daemon(&config, &["run"], "warn", "allowance")?;
    let stop_at = (first + 1 + MEASURED) * period_ms + 1500;
    let wait = stop_at - chrono::Utc::now().timestamp_millis();
    println!(
        "running {:.0} s ({} periods of {PERIOD_S} s, the last {MEASURED} measured)…",
        wait as f64 / 1000.0,
        MEASURED + 1
    );
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    daemon.signal("TERM")?;
    let (stats, _out, err) = daemon.wait().await?;
    t.info(
        "daemon exit",
        format!("{:?}", stats.status.and_then(|s| s.code())),
    );
    let log_errors = err.lines().filter(|l| l.contains("ERROR")).count();
    t.info("ERROR log lines", log_errors);

    let calls = sim.allowance_calls();
    let counters = sim.counters();
    let n430 = counters.by_status.get(&430).copied().unwrap_or(0);
    t.check("430 answers", n430, "0", n430 == 0);

    // Which third each vehicle is in: creation order, user by user.
    let mut class: HashMap<String, usize> = HashMap::new();
    let mut i = 0;
    for u in sim.user_ids() {
        for v in sim.vehicles_of(&u) {
            class.insert(v, i % 3);
            i += 1;
        }
    }
    // Calls sent (admitted or not) per (vehicle, period), measured periods only.
    let mut per: HashMap<(String, i64), u32> = HashMap::new();
    let mut tenths: HashMap<i64, [u32; 10]> = HashMap::new();
    for c in calls.iter().filter(|c| measured.contains(&c.period)) {
        *per.entry((c.vehicle_id.clone(), c.period)).or_default() += 1;
        let tenth = ((c.at_ms - c.period * period_ms) * 10 / period_ms).clamp(0, 9) as usize;
        tenths.entry(c.period).or_default()[tenth] += 1;
    }
    let max = per.values().copied().max().unwrap_or(0);
    t.check(
        "most calls of one vehicle in one period",
        max,
        &format!("≤ {CALLS}"),
        max <= CALLS,
    );
    // Mean calls per vehicle per period, by class (vehicles with no call count as 0).
    let mean = |k: usize| {
        let ids: Vec<&String> = class
            .iter()
            .filter(|(_, c)| **c == k)
            .map(|(v, _)| v)
            .collect();
        let total: u32 = ids
            .iter()
            .flat_map(|v| measured.clone().map(move |p| ((*v).clone(), p)))
            .map(|key| per.get(&key).copied().unwrap_or(0))
            .sum();
        f64::from(total) / (ids.len().max(1) as f64 * MEASURED as f64)
    };
    let (parked, charging, driving) = (mean(0), mean(1), mean(2));
    let active = (charging + driving) / 2.0;
    t.info(
        "calls per period: charging (mean)",
        format!("{charging:.2}"),
    );
    t.info("calls per period: driving (mean)", format!("{driving:.2}"));
    t.info("calls per period: parked (mean)", format!("{parked:.2}"));
    let active_share = active / f64::from(CALLS);
    t.check(
        "active vehicles' use of their allowance",
        format!("{:.0} %", active_share * 100.0),
        "≥ 60 %",
        active_share >= 0.6,
    );
    let parked_ratio = parked / active.max(f64::MIN_POSITIVE);
    t.check(
        "parked use ÷ active use",
        format!("{:.0} %", parked_ratio * 100.0),
        "≤ 60 %",
        parked_ratio <= 0.6,
    );
    let worst = tenths
        .values()
        .map(|b| {
            let total: u32 = b.iter().sum();
            f64::from(b.iter().copied().max().unwrap_or(0)) / f64::from(total.max(1))
        })
        .fold(0.0, f64::max);
    t.check(
        "busiest tenth of a period",
        format!("{:.0} % of the period's calls", worst * 100.0),
        "≤ 25 %",
        worst <= 0.25,
    );

    // Plan versus run.
    let shipped = budget_plan(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"),
        1000,
    )?;
    let shipped_calls = num(&shipped, "active_calls_per_vehicle");
    t.check(
        "budget plan, shipped config (500 a month): calls per vehicle",
        format!(
            "{shipped_calls} (base interval {:.0} min)",
            num(&shipped, "base_interval_s") / 60.0
        ),
        "≤ 500",
        shipped_calls <= 500.0,
    );
    let plan = budget_plan(&config, (USERS * VPU) as u64)?;
    let plan_active = num(&plan, "active_calls_per_vehicle");
    let plan_parked = num(&plan, "parked_calls_per_vehicle");
    let off = |run: f64, plan: f64| (run - plan).abs() / plan;
    t.check(
        "active: run vs plan",
        format!(
            "{active:.2} vs {plan_active:.2} ({:+.0} %)",
            (active / plan_active - 1.0) * 100.0
        ),
        "within 10 %",
        off(active, plan_active) <= 0.10,
    );
    t.info(
        "parked: run vs plan",
        format!(
            "{parked:.2} vs {plan_parked:.2} ({:+.0} %; 10 vehicles, each polls 3 or 4 times \
             a period by its phase)",
            (parked / plan_parked - 1.0) * 100.0
        ),
    );
    // The fleet: a third parked, two thirds active.
    let n = (USERS * VPU) as f64;
    let plan_fleet = n / 3.0 * (2.0 * plan_active + plan_parked);
    let run_fleet = n / 3.0 * (charging + driving + parked);
    t.check(
        "fleet calls per period: run vs plan",
        format!(
            "{run_fleet:.1} vs {plan_fleet:.1} ({:+.1} %)",
            (run_fleet / plan_fleet - 1.0) * 100.0
        ),
        "within 10 %",
        off(run_fleet, plan_fleet) <= 0.10,
    );
    t.info(
        "API calls / injected faults / 429s",
        format!(
            "{} / {} / {}",
            counters.api_calls,
            counters.injected_errors,
            counters.responses_429_app + counters.responses_429_vehicle
        ),
    );
    let met = t.all_met();
    sim.shutdown().await;
    db.cleanup().await;
    Ok((t, met))
}
