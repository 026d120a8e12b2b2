//! The per-vehicle allowance (issue 11), once per database backend: every call counted (retries
//! included) as the server counts it, never a call past the allowance, a 430 blocks the vehicle
//! until the configured period ends, the planner polls active vehicles more often than parked
//! ones, pushed readings replace a poll, webhook subscriptions are kept, and the `budget`
//! command and its configuration errors.

use std::collections::HashMap;
use std::time::Duration;

use smartcar_sim::{Behaviour, ForcedError, SimConfig, Simulator, VehicleAllowance};
use smartcar_sync::config::{Config, Reserve};
use smartcar_sync::daemon::{CycleReport, Daemon};
use smartcar_sync::plan::{Period, VehicleState};
use smartcar_sync::store::{NewSample, SampleSource, VehicleStatus};
use tokio_util::sync::CancellationToken;

use crate::support::{self, TestDb};

fn budget(c: &mut Config, calls: u32, period: &str, min_interval: Duration) {
    c.budget.calls_per_vehicle = calls;
    c.budget.period = period.to_owned();
    c.budget.min_interval = min_interval;
    c.budget.reserve = Reserve(0.1);
}

async fn cycle(daemon: &Daemon) -> CycleReport {
    let shutdown = CancellationToken::new();
    tokio::time::timeout(Duration::from_secs(60), daemon.sync_once(&shutdown, |_| {}))
        .await
        .expect("the cycle finishes")
        .expect("the cycle runs")
}

async fn start(config: Config) -> Daemon {
    Daemon::start(config, &CancellationToken::new())
        .await
        .expect("daemon starts")
}

/// Calls the simulator's allowance saw per vehicle (admitted or not), all periods.
fn server_counts(sim: &Simulator) -> HashMap<String, u32> {
    let mut m = HashMap::new();
    for c in sim.allowance_calls() {
        *m.entry(c.vehicle_id).or_default() += 1;
    }
    m
}

fn allowance(calls: u32, period_s: u64) -> Option<VehicleAllowance> {
    Some(VehicleAllowance {
        calls,
        period: Duration::from_secs(period_s),
    })
}

#[tokio::test]
async fn every_call_is_counted_as_the_server_counts_it_retries_included() {
    for db in support::databases().await {
        let sim = support::simulator(SimConfig {
            users: 1,
            vehicles_per_user: 2,
            update_period: support::READINGS_HOLD_STILL,
            allowance: allowance(1000, 86_400),
            ..SimConfig::default()
        })
        .await;
        let mut config = support::config(&sim, &db.url);
        budget(&mut config, 1000, "1d", Duration::from_secs(1));
        config.queue.max_attempts = 3;
        let daemon = start(config).await;
        let user = sim.user_ids()[0].clone();
        let vehicles = sim.vehicles_of(&user);
        // A failing vehicle: every attempt is a call, and each one counts.
        sim.force_vehicle_error(&vehicles[1], Some(ForcedError::Server));
        let report = cycle(&daemon).await;
        // Its first poll (after the sync) and the cycle's own poll both die.
        assert!(report.dead >= 1, "{}: the failing poll died", db.backend);
        let period = Period::parse("1d").unwrap().bounds(chrono::Utc::now()).0;
        let server = server_counts(&sim);
        for v in &vehicles {
            let counted = daemon.store().calls_used(v, period).await.unwrap();
            assert_eq!(
                Some(&counted),
                server.get(v),
                "{}: the daemon's count of {v} is the server's",
                db.backend
            );
        }
        let attempts = server.get(&vehicles[1]).copied().unwrap_or(0);
        assert!(
            attempts >= 3 && attempts % 3 == 0,
            "{}: three attempts per poll, {attempts}",
            db.backend
        );
        daemon.close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn the_daemon_never_calls_past_the_allowance_so_no_430_arrives() {
    for db in support::databases().await {
        let sim = support::simulator(SimConfig {
            users: 1,
            vehicles_per_user: 2,
            update_period: support::READINGS_HOLD_STILL,
            allowance: allowance(3, 86_400),
            ..SimConfig::default()
        })
        .await;
        let mut config = support::config(&sim, &db.url);
        budget(&mut config, 3, "1d", Duration::from_secs(1));
        let daemon = start(config).await;
        for _ in 0..5 {
            let r = cycle(&daemon).await;
            assert_eq!(r.dead, 0, "{}", db.backend);
        }
        let c = sim.counters();
        assert_eq!(c.by_status.get(&430), None, "{}: no 430", db.backend);
        let period = Period::parse("1d").unwrap().bounds(chrono::Utc::now()).0;
        for (v, n) in server_counts(&sim) {
            assert!(n <= 3, "{}: {v} called {n} times", db.backend);
            assert_eq!(daemon.store().calls_used(&v, period).await.unwrap(), n);
        }
        // Two vehicles, three calls each, then nothing: five cycles could have made ten.
        assert_eq!(c.signals_calls, 6, "{}", db.backend);
        daemon.close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_430_blocks_the_vehicle_until_the_configured_period_ends() {
    for db in support::databases().await {
        let sim = support::simulator(SimConfig {
            users: 1,
            vehicles_per_user: 1,
            update_period: support::READINGS_HOLD_STILL,
            ..SimConfig::default()
        })
        .await;
        let mut config = support::config(&sim, &db.url);
        budget(&mut config, 100, "6h", Duration::from_secs(1));
        let daemon = start(config).await;
        let vehicle = sim.vehicles_of(&sim.user_ids()[0])[0].clone();
        // Another application shares the vehicle and spent its allowance.
        sim.force_vehicle_error(&vehicle, Some(ForcedError::Billing));
        let before = chrono::Utc::now();
        cycle(&daemon).await;
        let after = chrono::Utc::now();
        let v = daemon
            .store()
            .list_vehicles()
            .await
            .unwrap()
            .into_iter()
            .find(|v| v.vehicle_id == vehicle)
            .unwrap();
        assert_eq!(v.status, VehicleStatus::BillingLimited, "{}", db.backend);
        let p = Period::parse("6h").unwrap();
        let ends = [p.bounds(before).1, p.bounds(after).1];
        assert!(
            v.blocked_until.is_some_and(|b| ends.contains(&b)),
            "{}: blocked until {:?}, the period ends {:?}",
            db.backend,
            v.blocked_until,
            ends
        );
        // Blocked: the next cycle does not call it.
        let calls = sim.counters().signals_calls;
        cycle(&daemon).await;
        assert_eq!(sim.counters().signals_calls, calls, "{}", db.backend);
        daemon.close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn readings_pushed_within_the_interval_replace_the_poll() {
    for db in support::databases().await {
        let sim = support::simulator(SimConfig {
            users: 1,
            vehicles_per_user: 2,
            update_period: support::READINGS_HOLD_STILL,
            ..SimConfig::default()
        })
        .await;
        let mut config = support::config(&sim, &db.url);
        // A long interval: a reading pushed now is fresh for the whole test.
        budget(&mut config, 10, "30d", Duration::from_secs(3600));
        let daemon = start(config).await;
        cycle(&daemon).await;
        let vehicles = sim.vehicles_of(&sim.user_ids()[0]);
        let pushed = NewSample {
            vehicle_id: vehicles[0].clone(),
            code: "odometer-traveleddistance".into(),
            recorded_at: chrono::Utc::now(),
            value_num: Some(1.0),
            unit: Some("kilometers".into()),
            body: r#"{"value":1.0,"unit":"kilometers"}"#.into(),
            source: SampleSource::Webhook,
        };
        daemon.store().ingest_samples(&[pushed], &[]).await.unwrap();
        sim.reset_counters();
        cycle(&daemon).await;
        // Only the vehicle without a pushed reading was called.
        assert_eq!(sim.counters().signals_calls, 1, "{}", db.backend);
        daemon.close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn the_planner_polls_moving_and_charging_vehicles_more_often_than_parked_ones() {
    for db in support::databases().await {
        let sim = support::simulator(SimConfig {
            users: 1,
            vehicles_per_user: 3,
            update_period: Duration::from_millis(200),
            allowance: allowance(10, 12),
            ..SimConfig::default()
        })
        .await;
        let vehicles = sim.vehicles_of(&sim.user_ids()[0]);
        let behaviours = [Behaviour::Parked, Behaviour::Charging, Behaviour::Driving];
        for (v, b) in vehicles.iter().zip(behaviours) {
            sim.set_behaviour(v, Some(b));
        }
        let mut config = support::config(&sim, &db.url);
        budget(&mut config, 10, "12s", Duration::from_secs(1));
        config.schedule.signals = "* * * * * *".into();
        let path = support::write_config(db.dir.path(), &config, "");
        let mut child = support::child(&path, &["run"], "warn").spawn().unwrap();
        tokio::time::sleep(Duration::from_secs(26)).await;
        child.start_kill().unwrap();
        let out = child.wait_with_output().await.unwrap();
        let log = String::from_utf8_lossy(&out.stderr).to_string();

        assert_eq!(sim.counters().by_status.get(&430), None, "{}", db.backend);
        let mut per: HashMap<(String, i64), u32> = HashMap::new();
        for c in sim.allowance_calls() {
            *per.entry((c.vehicle_id, c.period)).or_default() += 1;
        }
        assert!(per.values().all(|n| *n <= 10), "{}: {per:?}", db.backend);
        let total = |v: &String| -> u32 {
            per.iter()
                .filter(|((id, _), _)| id == v)
                .map(|(_, n)| *n)
                .sum()
        };
        let (parked, charging, driving) = (
            total(&vehicles[0]),
            total(&vehicles[1]),
            total(&vehicles[2]),
        );
        assert!(
            charging > parked + 2 && driving > parked + 2,
            "{}: parked {parked}, charging {charging}, driving {driving}\n{log}",
            db.backend
        );
        // The states the planner saw, through the `budget` command.
        let out = support::child(&path, &["budget", "--json"], "warn")
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", db.backend);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let state = |id: &str| -> String {
            report["vehicles"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["vehicle_id"] == id)
                .map(|v| v["state"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(state(&vehicles[0]), VehicleState::Parked.as_str());
        assert_eq!(state(&vehicles[1]), VehicleState::Charging.as_str());
        assert_eq!(state(&vehicles[2]), VehicleState::Moving.as_str());
        assert_eq!(report["fleet"]["vehicles"], 3);
        assert_eq!(report["fleet"]["calls_per_vehicle"], 10);
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn subscriptions_are_kept_409_tolerated_and_vanished_vehicles_unsubscribed() {
    for db in support::databases().await {
        let sim = support::simulator(SimConfig {
            users: 1,
            vehicles_per_user: 3,
            update_period: support::READINGS_HOLD_STILL,
            ..SimConfig::default()
        })
        .await;
        let vehicles = sim.vehicles_of(&sim.user_ids()[0]);
        let webhook = sim.webhook_id();
        // Already subscribed (the Dashboard did it): the POST answers 409.
        assert!(sim.subscribe(&vehicles[0], &webhook));
        let mut config = support::config(&sim, &db.url);
        config.smartcar.management_token = Some(secrecy::SecretString::from(
            SimConfig::default().management_token,
        ));
        config.smartcar.management_url = sim.management_url();
        config.webhooks.webhook_id = webhook.clone();
        let daemon = start(config).await;
        let r = cycle(&daemon).await;
        assert_eq!(r.dead, 0, "{}", db.backend);
        let mut want: Vec<(String, String)> = vehicles
            .iter()
            .map(|v| (v.clone(), webhook.clone()))
            .collect();
        want.sort();
        assert_eq!(sim.subscriptions(), want, "{}", db.backend);
        let mut recorded = daemon.store().subscribed_vehicles(&webhook).await.unwrap();
        recorded.sort();
        let mut all = vehicles.clone();
        all.sort();
        assert_eq!(recorded, all, "{}: 202 and 409 both recorded", db.backend);

        assert!(sim.disconnect_vehicle(&vehicles[1]));
        cycle(&daemon).await;
        want.retain(|(v, _)| v != &vehicles[1]);
        assert_eq!(
            sim.subscriptions(),
            want,
            "{}: vanished unsubscribed",
            db.backend
        );
        assert!(
            !daemon
                .store()
                .subscribed_vehicles(&webhook)
                .await
                .unwrap()
                .contains(&vehicles[1])
        );
        daemon.close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn budget_plan_prints_the_dry_run_for_the_shipped_defaults() {
    let db = TestDb::sqlite().await;
    let sim = support::simulator(SimConfig::default()).await;
    let mut config = support::config(&sim, &db.url);
    config.budget = smartcar_sync::config::BudgetConfig::default();
    let path = support::write_config(db.dir.path(), &config, "");
    let out = support::child(&path, &["budget", "plan", "--vehicles", "1000"], "warn")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("1,000 vehicles, 500 calls a month → base interval 96 min"),
        "{text}"
    );
    let out = support::child(&path, &["budget", "plan", "--json"], "warn")
        .output()
        .await
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(plan["active_calls_per_vehicle"].as_f64().unwrap() <= 500.0);
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_budget_values_exit_78_naming_the_key() {
    let db = TestDb::sqlite().await;
    let sim = support::simulator(SimConfig::default()).await;
    let config = support::config(&sim, &db.url);
    let path = support::write_config(db.dir.path(), &config, "");
    let good = std::fs::read_to_string(&path).unwrap();
    for (from, to, key) in [
        ("period = \"month\"", "period = \"weekly\"", "budget.period"),
        ("reserve = 0.1", "reserve = \"95%\"", "budget.reserve"),
        ("reserve = 0.1", "reserve = \"lots\"", "budget.reserve"),
        (
            "calls_per_vehicle = 0",
            "calls_per_vehicle = -1",
            "budget.calls_per_vehicle",
        ),
    ] {
        assert!(good.contains(from), "{from}");
        std::fs::write(&path, good.replace(from, to)).unwrap();
        let out = support::child(&path, &["budget", "plan"], "warn")
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{to}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{to}: {err}");
    }
    let bad_min = good.replace(
        &format!(
            "min_interval = \"{}ms\"",
            config.budget.min_interval.as_millis()
        ),
        "min_interval = \"0s\"",
    );
    std::fs::write(&path, bad_min).unwrap();
    let out = support::child(&path, &["budget", "plan"], "warn")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("budget.min_interval"));
    sim.shutdown().await;
}
