//! Several daemons on one PostgreSQL database, and PostgreSQL going away mid-cycle. These need
//! a real server (they say SKIPPED loudly without one): SQLite serves one machine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use smartcar_sim::{SimConfig, Simulator};
use smartcar_sync::daemon::Daemon;
use smartcar_sync::store::{Store, StoreOptions};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::support::postgres::PrivateCluster;
use crate::support::{self, TestDb};

fn fleet(users: usize, per_user: usize, latency: Duration) -> SimConfig {
    SimConfig {
        users,
        vehicles_per_user: per_user,
        // Readings hold still: a repeated poll would find nothing new, so only counters and the
        // jobs table can tell that a job ran twice.
        update_period: support::READINGS_HOLD_STILL,
        latency,
        ..SimConfig::default()
    }
}

/// Every served reading is stored once, and nothing else is stored.
async fn assert_samples_match_served(store: &Store, sim: &Simulator, what: &str) {
    let served = sim.served_readings();
    let stored = store.list_samples().await.unwrap();
    let keys: HashSet<_> = stored
        .iter()
        .map(|s| (s.vehicle_id.clone(), s.code.clone(), s.recorded_at))
        .collect();
    assert_eq!(keys.len(), stored.len(), "{what}: duplicate samples");
    assert_eq!(stored.len(), served.len(), "{what}: stored vs served");
    for r in served {
        assert!(
            keys.contains(&(r.vehicle_id.clone(), r.code.clone(), r.oem_updated_at)),
            "{what}: not stored: {r:?}"
        );
    }
}

/// Done jobs per (kind, subject), and the processes (the daemon id prefixing each lease) that ran them.
async fn done_jobs(url: &str) -> (BTreeMap<(String, String), i64>, HashSet<String>, i64) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows = sqlx::query(
        "SELECT kind, subject, count(*) AS n FROM jobs WHERE state = 'done' GROUP BY kind, subject",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let done = rows
        .iter()
        .map(|r| ((r.get("kind"), r.get("subject")), r.get("n")))
        .collect();
    // A job enqueued by a last tick, or handed back at shutdown, has no owner.
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT split_part(lease_owner, ':', 1) FROM jobs \
             WHERE lease_owner IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let not_done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state <> 'done'")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    (done, owners.into_iter().collect(), not_done)
}

#[tokio::test]
async fn two_sync_once_processes_on_one_database_run_each_job_exactly_once() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    // A second per call: both processes start (and race to migrate) long before the first job
    // can finish, so they really share one cycle.
    let sim = support::simulator(fleet(8, 3, Duration::from_secs(1))).await;
    let mut config = support::config(&sim, &db.url);
    config.queue.concurrency = 4;
    config.queue.lease = Duration::from_secs(15);
    let path = support::write_config(db.dir.path(), &config, "");
    let a = support::child(&path, &["sync-once"], "warn")
        .spawn()
        .unwrap();
    let b = support::child(&path, &["sync-once"], "warn")
        .spawn()
        .unwrap();
    let (a, b) = tokio::time::timeout(
        Duration::from_secs(120),
        futures::future::join(a.wait_with_output(), b.wait_with_output()),
    )
    .await
    .expect("both cycles finish");
    for out in [a.unwrap(), b.unwrap()] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let c = sim.counters();
    assert_eq!(c.signals_calls, 24, "one signals call per vehicle: {c:?}");
    let (done, owners, not_done) = done_jobs(&db.url).await;
    assert_eq!(not_done, 0, "every job done, none dead");
    let twice: Vec<_> = done.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "jobs done more than once: {twice:?}");
    let per_kind = done.keys().fold(HashMap::new(), |mut m, (k, _)| {
        *m.entry(k.as_str()).or_insert(0) += 1;
        m
    });
    assert_eq!(per_kind.get("discover_users"), Some(&1));
    assert_eq!(per_kind.get("sync_connections"), Some(&8));
    assert_eq!(per_kind.get("poll_signals"), Some(&24));
    assert_eq!(owners.len(), 2, "both processes took jobs: {owners:?}");

    let store = db.store().await;
    assert_samples_match_served(&store, &sim, "two processes").await;
    store.close().await;
    sim.shutdown().await;
    db.cleanup().await;
}

/// The `schedule tick` events in a process's JSON logs: (schedule, tick).
fn ticks(out: &std::process::Output) -> Vec<(String, String)> {
    let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(&out.stderr));
    all.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "schedule tick")
        .map(|v| {
            let s = |k: &str| v[k].as_str().map(str::to_owned).unwrap_or(v[k].to_string());
            (s("schedule"), s("tick"))
        })
        .collect()
}

#[tokio::test]
async fn two_running_daemons_fire_each_cron_tick_once() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let sim = support::simulator(fleet(4, 2, Duration::ZERO)).await;
    let mut config = support::config(&sim, &db.url);
    config.schedule.connections = "*/3 * * * * *".into();
    config.schedule.signals = "* * * * * *".into();
    config.queue.concurrency = 2;
    let path = support::write_config(db.dir.path(), &config, "[log]\nformat = \"json\"\n");
    let a = support::child(&path, &["run"], "info").spawn().unwrap();
    let b = support::child(&path, &["run"], "info").spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    for child in [&a, &b] {
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
    }
    let (a, b) = tokio::time::timeout(
        Duration::from_secs(20),
        futures::future::join(a.wait_with_output(), b.wait_with_output()),
    )
    .await
    .expect("both stop");
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.status.success() && b.status.success(), "{a:?} {b:?}");

    let (ta, tb) = (ticks(&a), ticks(&b));
    let mut seen = HashSet::new();
    for t in ta.iter().chain(&tb) {
        assert!(seen.insert(t.clone()), "tick fired twice: {t:?}");
    }
    let signals = seen.iter().filter(|(s, _)| s == "signals").count();
    assert!(signals >= 4, "signals ticked every second: {seen:?}");
    assert!(
        !ta.is_empty() && !tb.is_empty(),
        "both daemons won some ticks: {ta:?} {tb:?}"
    );
    // Every signals tick polled each vehicle at most once; nothing is stored twice.
    let (done, _, _) = done_jobs(&db.url).await;
    for ((kind, subject), n) in &done {
        if kind == "poll_signals" {
            assert!(
                *n as usize <= signals + 4,
                "{subject}: {n} polls for {signals} ticks"
            );
        }
    }
    let store = db.store().await;
    assert_samples_match_served(&store, &sim, "two running daemons").await;
    store.close().await;
    sim.shutdown().await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_postgres_restart_mid_cycle_loses_nothing_and_the_cycle_completes() {
    let Some(cluster) = PrivateCluster::start() else {
        return;
    };
    let url = cluster.create_database("restart_test").await;
    // Slow enough that the restart lands mid-poll.
    let sim = support::simulator(fleet(10, 3, Duration::from_millis(150))).await;
    let mut config = support::config(&sim, &url);
    config.queue.concurrency = 4;
    config.queue.lease = Duration::from_secs(2);
    config.queue.max_attempts = 20;
    let shutdown = CancellationToken::new();
    let daemon = Daemon::start(config, &shutdown)
        .await
        .expect("daemon starts");
    let watcher = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    let cycle = tokio::spawn(async move {
        let report = daemon.sync_once(&shutdown, |_| {}).await;
        (daemon, report)
    });

    let polling = support::eventually(Duration::from_secs(60), || {
        let w = watcher.clone();
        async move { w.sample_count().await.unwrap_or(0) > 0 }
    })
    .await;
    assert!(polling, "the cycle reached the polls");
    let before = sim.counters().signals_calls;
    cluster.stop_server().expect("stop PostgreSQL");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_server().expect("start PostgreSQL");
    watcher.close().await;

    let (daemon, report) = tokio::time::timeout(Duration::from_secs(120), cycle)
        .await
        .expect("the cycle completes after the restart")
        .expect("no panic");
    let report = report.expect("the cycle succeeds");
    assert_eq!(report.dead, 0, "nothing gave up");
    assert!(
        before < 30,
        "the restart happened mid-cycle ({before} polls before)"
    );
    let store = daemon.store();
    assert_eq!(store.open_jobs(None).await.unwrap(), 0);
    let vehicles = store.list_vehicles().await.unwrap();
    assert_eq!(vehicles.len(), 30);
    assert!(vehicles.iter().all(|v| v.last_polled_at.is_some()));
    assert_samples_match_served(store, &sim, "after a restart").await;
    store.close().await;
    sim.shutdown().await;
    drop(cluster);
}
