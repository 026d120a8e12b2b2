//! The daemon end to end against the simulator, once per database backend: full cycles,
//! idempotence, faults and rate limits, a SIGKILL mid-cycle, SIGTERM, and secrets in logs.

use std::collections::HashMap;
use std::time::Duration;

use smartcar_sim::{Bucket, Faults, ForcedError, SimConfig, Simulator};
use smartcar_sync::config::Config;
use smartcar_sync::daemon::{CycleReport, Daemon};
use smartcar_sync::store::{JobKind, SampleSource, Store, VehicleStatus};
use tokio_util::sync::CancellationToken;

use crate::support::{self, TestDb};

fn fleet(users: usize, vehicles_per_user: usize) -> SimConfig {
    SimConfig {
        users,
        vehicles_per_user,
        // A second poll sees the same readings.
        update_period: support::READINGS_HOLD_STILL,
        ..SimConfig::default()
    }
}

async fn cycle(config: Config) -> (Daemon, CycleReport) {
    let shutdown = CancellationToken::new();
    let daemon = Daemon::start(config, &shutdown)
        .await
        .expect("daemon starts");
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        daemon.sync_once(&shutdown, |_| {}),
    )
    .await
    .expect("the cycle finishes")
    .expect("the cycle runs");
    (daemon, report)
}

/// Every reading the simulator served is stored exactly once, with its value and body.
async fn assert_store_matches_served(store: &Store, sim: &Simulator, backend: &str) {
    let served = sim.served_readings();
    let stored = store.list_samples().await.unwrap();
    let mut by_key = HashMap::new();
    for s in &stored {
        let prev = by_key.insert((s.vehicle_id.clone(), s.code.clone(), s.recorded_at), s);
        assert!(prev.is_none(), "{backend}: duplicate sample {:?}", s);
    }
    assert_eq!(stored.len(), served.len(), "{backend}: stored vs served");
    for r in served {
        let s = by_key
            .get(&(r.vehicle_id.clone(), r.code.clone(), r.oem_updated_at))
            .unwrap_or_else(|| panic!("{backend}: reading not stored: {r:?}"));
        assert_eq!(s.value_num, r.value_num, "{backend}: {}", r.code);
        let body: serde_json::Value = serde_json::from_str(&s.body).unwrap();
        assert_eq!(body, r.body, "{backend}: {}", r.code);
    }
}

#[tokio::test]
async fn a_full_cycle_stores_every_reading_and_a_second_cycle_adds_nothing() {
    for db in support::databases().await {
        let sim = support::simulator(fleet(20, 3)).await;
        let (daemon, report) = cycle(support::config(&sim, &db.url)).await;
        assert_eq!(report.dead, 0, "{}", db.backend);
        let store = daemon.store();
        assert_eq!(store.list_users().await.unwrap().len(), 20, "discovered");
        let vehicles = store.list_vehicles().await.unwrap();
        assert_eq!(vehicles.len(), 60);
        assert!(vehicles.iter().all(|v| v.last_polled_at.is_some()));
        assert_store_matches_served(store, &sim, db.backend).await;
        let c = sim.counters();
        assert_eq!(
            c.signals_calls, 60,
            "{}: exactly one signals call per vehicle",
            db.backend
        );
        assert_eq!(c.token_requests, 1);
        assert!(
            store
                .list_samples()
                .await
                .unwrap()
                .iter()
                .all(|s| s.source == SampleSource::Poll)
        );

        let before = store.sample_count().await.unwrap();
        let (daemon2, report2) = cycle(support::config(&sim, &db.url)).await;
        assert_eq!(report2.dead, 0);
        assert_eq!(
            daemon2.store().sample_count().await.unwrap(),
            before,
            "{}",
            db.backend
        );
        daemon.store().close().await;
        daemon2.store().close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

/// `queue.concurrency` caps requests in flight, not jobs: the queue runs more jobs than that
/// (their database work overlaps the requests), and the simulator never sees more requests at
/// once than the configuration allows, while the workers keep every slot busy.
#[tokio::test]
async fn requests_in_flight_never_exceed_the_concurrency_although_more_jobs_run() {
    let db = TestDb::sqlite().await;
    let mut sim_config = fleet(10, 4);
    sim_config.latency = Duration::from_millis(30);
    let sim = support::simulator(sim_config).await;
    let mut config = support::config(&sim, &db.url);
    config.queue.concurrency = 3;
    let (daemon, report) = cycle(config).await;
    assert_eq!(report.dead, 0);
    let c = sim.counters();
    assert_eq!(
        c.api_concurrent_peak, 3,
        "at most 3 requests in flight, and the cap is reached"
    );
    assert_store_matches_served(daemon.store(), &sim, db.backend).await;
    daemon.store().close().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_and_a_small_app_bucket_lose_nothing_and_retry_after_is_obeyed() {
    for db in support::databases().await {
        let mut sim_config = fleet(10, 3);
        // 15 %: over ~46 calls, no fault at all would happen once in 1,800 runs (at 10 %, once
        // in 130).
        sim_config.faults = Faults {
            error_rate: 0.15,
            ..Faults::default()
        };
        sim_config.app_bucket = Some(Bucket {
            capacity: 8.0,
            refill_per_second: 15.0,
        });
        let sim = support::simulator(sim_config).await;
        let (daemon, report) = cycle(support::config(&sim, &db.url)).await;
        let c = sim.counters();
        assert_eq!(report.dead, 0, "{}: {c:?}", db.backend);
        assert!(c.injected_errors > 0, "faults were injected: {c:?}");
        assert!(c.responses_429_app > 0, "the bucket was too small: {c:?}");
        assert_eq!(c.calls_before_retry_after, 0, "{}: {c:?}", db.backend);
        assert_store_matches_served(daemon.store(), &sim, db.backend).await;
        daemon.store().close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn permanent_errors_set_the_vehicle_status_and_stop_polling_it() {
    for db in support::databases().await {
        let sim = support::simulator(fleet(2, 3)).await;
        let user = sim.user_ids()[0].clone();
        let v = sim.vehicles_of(&user);
        sim.force_vehicle_error(&v[0], Some(ForcedError::Billing));
        sim.force_vehicle_error(&v[1], Some(ForcedError::Permission));
        sim.force_vehicle_error(&v[2], Some(ForcedError::Incompatible));
        let (daemon, report) = cycle(support::config(&sim, &db.url)).await;
        assert_eq!(report.dead, 0, "{}", db.backend);
        let status: HashMap<String, (VehicleStatus, bool)> = daemon
            .store()
            .list_vehicles()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.vehicle_id, (r.status, r.blocked_until.is_some())))
            .collect();
        assert_eq!(status[&v[0]], (VehicleStatus::BillingLimited, true));
        assert_eq!(status[&v[1]].0, VehicleStatus::PermissionDenied);
        assert_eq!(status[&v[2]].0, VehicleStatus::Incompatible);
        // No retry storm: one call each; and the next cycle leaves them alone.
        let calls = sim.counters().signals_calls;
        assert_eq!(
            calls,
            6,
            "{}: {:?} retried {:?}",
            db.backend,
            sim.counters(),
            report.stats
        );
        let (daemon2, _) = cycle(support::config(&sim, &db.url)).await;
        let more = sim.counters().signals_calls - calls;
        // The connections sync sees the 403/501 vehicles again and gives them one more try;
        // the billing-limited one stays blocked until next month.
        assert!(more <= 5, "{more} calls in the second cycle");
        daemon.store().close().await;
        daemon2.store().close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_vanished_vehicle_is_marked_disconnected_and_a_new_one_is_polled() {
    for db in support::databases().await {
        let sim = support::simulator(fleet(1, 2)).await;
        let user = sim.user_ids()[0].clone();
        let (d1, _) = cycle(support::config(&sim, &db.url)).await;
        let gone = sim.vehicles_of(&user)[0].clone();
        sim.disconnect_vehicle(&gone);
        let new = sim.connect_vehicle(&user);
        let (d2, report) = cycle(support::config(&sim, &db.url)).await;
        assert_eq!(report.dead, 0);
        let rows = d2.store().list_vehicles().await.unwrap();
        let row = |id: &str| rows.iter().find(|r| r.vehicle_id == id).unwrap().clone();
        assert_eq!(row(&gone).status, VehicleStatus::Disconnected);
        assert_eq!(row(&new).status, VehicleStatus::Connected);
        assert!(row(&new).last_polled_at.is_some());
        d1.store().close().await;
        d2.store().close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

async fn open_jobs(store: &Store) -> i64 {
    store.open_jobs(None).await.unwrap()
}

#[tokio::test]
async fn a_daemon_killed_mid_cycle_completes_every_job_on_restart_without_duplicates() {
    for db in support::databases().await {
        let mut sim_config = fleet(30, 3);
        // Slow enough that the kill lands mid-cycle.
        sim_config.latency = Duration::from_millis(30);
        let sim = support::simulator(sim_config).await;
        let mut config = support::config(&sim, &db.url);
        config.queue.concurrency = 4;
        config.queue.lease = Duration::from_secs(2);
        let path = support::write_config(db.dir.path(), &config, "");

        let store = db.store().await;
        let mut first = support::child(&path, &["sync-once"], "warn")
            .spawn()
            .unwrap();
        let started = support::eventually(Duration::from_secs(60), || {
            let store = store.clone();
            async move { store.sample_count().await.unwrap_or(0) > 0 }
        })
        .await;
        assert!(started, "{}: the first run made no progress", db.backend);
        first.start_kill().unwrap(); // SIGKILL
        let status = first.wait().await.unwrap();
        assert!(!status.success());
        assert!(
            open_jobs(&store).await > 0,
            "{}: killed mid-cycle",
            db.backend
        );

        let second = support::child(&path, &["sync-once"], "warn")
            .output()
            .await
            .unwrap();
        assert!(
            second.status.success(),
            "{}: {}",
            db.backend,
            String::from_utf8_lossy(&second.stderr)
        );
        assert_eq!(open_jobs(&store).await, 0);
        assert_eq!(
            store
                .dead_since(chrono::DateTime::UNIX_EPOCH)
                .await
                .unwrap(),
            0
        );
        let vehicles = store.list_vehicles().await.unwrap();
        assert_eq!(vehicles.len(), 90);
        assert!(vehicles.iter().all(|v| v.last_polled_at.is_some()));
        assert_store_matches_served(&store, &sim, db.backend).await;
        store.close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn sigterm_during_run_exits_0_within_the_grace_period() {
    let db = TestDb::sqlite().await;
    let mut sim_config = fleet(10, 3);
    sim_config.latency = Duration::from_millis(200);
    let sim = support::simulator(sim_config).await;
    let mut config = support::config(&sim, &db.url);
    config.queue.concurrency = 2;
    config.queue.shutdown_grace = Duration::from_secs(3);
    let path = support::write_config(db.dir.path(), &config, "");
    let store = db.store().await;
    let mut child = support::child(&path, &["run"], "info").spawn().unwrap();
    let busy = support::eventually(Duration::from_secs(30), || {
        let store = store.clone();
        async move { store.sample_count().await.unwrap_or(0) > 0 }
    })
    .await;
    assert!(busy, "the daemon started working");
    let pid = child.id().unwrap() as i32;
    let sent = std::time::Instant::now();
    // SAFETY-free: kill(2) through the libc-free route of the `kill` command.
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exited within the grace period")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    // Nothing is left claimed: running jobs finished or were released.
    let counts = store.queue_counts().await.unwrap();
    assert!(
        counts
            .iter()
            .all(|(_, state, n)| state != "running" || *n == 0),
        "{counts:?}"
    );
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn debug_logs_of_a_full_cycle_never_contain_the_secret_or_a_token() {
    let db = TestDb::sqlite().await;
    let mut sim_config = fleet(5, 2);
    sim_config.faults = Faults {
        error_rate: 0.2,
        // High enough that some call always hits it (0.7^20 < 0.1 %): tokens get replaced.
        expired_token_rate: 0.3,
        ..Faults::default()
    };
    let sim = support::simulator(sim_config).await;
    let config = support::config(&sim, &db.url);
    let path = support::write_config(db.dir.path(), &config, "");
    let out = support::child(&path, &["sync-once"], "debug")
        .output()
        .await
        .unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{logs}");
    assert!(logs.contains("DEBUG"), "debug logging was on");
    assert!(logs.contains("access token issued"));
    let tokens = sim.issued_tokens();
    assert!(
        tokens.len() >= 2,
        "the expired-token faults forced refreshes"
    );
    assert!(
        !logs.contains(support::SECRET),
        "the client secret leaked into the logs"
    );
    for t in &tokens {
        assert!(
            !logs.contains(t.as_str()),
            "an access token leaked into the logs"
        );
    }
    // Nor into the database file.
    let db_bytes = std::fs::read(db.dir.path().join("test.db")).unwrap();
    let db_text = String::from_utf8_lossy(&db_bytes);
    assert!(!db_text.contains(support::SECRET));
    for t in &tokens {
        assert!(!db_text.contains(t.as_str()));
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_bad_config_key_is_named_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[queue]\nconcurency = 4\n").unwrap();
    let out = support::child(&path, &["status"], "info")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("queue.concurency"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_bad_hot_window_is_named_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    for value in ["\"soon\"", "\"10m\"", "\"4000d\""] {
        std::fs::write(&path, format!("[storage]\nhot_window = {value}\n")).unwrap();
        let out = support::child(&path, &["compact"], "info")
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("storage.hot_window"), "{value}: {stderr}");
    }
}

/// `compact` moves old samples to PostgreSQL's cold table on demand (and says there is nothing
/// to do on SQLite); the readings read back the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compact_command_moves_old_samples() {
    for db in support::databases().await {
        let store = db.store().await;
        let at = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2030, 1, 15, 12, 0, 0).unwrap();
        let sample = smartcar_sync::store::NewSample {
            vehicle_id: "v1".into(),
            code: "odometer-traveleddistance".into(),
            recorded_at: at,
            value_num: Some(1.5),
            unit: None,
            body: r#"{"value":1.5}"#.into(),
            source: SampleSource::Poll,
        };
        assert_eq!(store.ingest_samples(&[sample], &[]).await.unwrap(), 1);
        let before = store.list_samples().await.unwrap();
        let path = db.dir.path().join("compact.toml");
        std::fs::write(&path, format!("[database]\nurl = \"{}\"\n", db.url)).unwrap();
        let out = support::child(
            &path,
            &["compact", "--before", "2030-02-01T00:00:00Z"],
            "warn",
        )
        .output()
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if db.backend == "postgres" {
            assert!(stdout.contains("compacted 1 samples"), "{stdout}");
            assert!(stdout.contains("2030-02-01T00:00:00.000000Z"), "{stdout}");
        } else {
            assert!(stdout.contains("nothing to compact"), "{stdout}");
        }
        assert_eq!(store.list_samples().await.unwrap(), before);
        store.close().await;
        db.cleanup().await;
    }
}

/// A discovery that fails on a page resumes at that page: with 20 pages and half of the calls
/// failing, starting over from page 1 would succeed in one attempt in a million (and no fault
/// at all is as unlikely); resuming needs each page answered once. The simulator's connections
/// calls are exactly the 20 pages plus one per injected failure: no page is fetched twice after
/// it was answered.
#[tokio::test]
async fn a_failed_discovery_resumes_at_the_page_it_failed_on() {
    let db = support::databases().await.remove(0);
    let mut sim_config = fleet(2_000, 1);
    sim_config.faults = Faults {
        error_rate: 0.5,
        ..Faults::default()
    };
    let sim = support::simulator(sim_config).await;
    let shutdown = CancellationToken::new();
    let config = support::config(&sim, &db.url);
    let store = smartcar_sync::daemon::open_store(&config).await.unwrap();
    store.migrate().await.unwrap();
    let tracker = tokio_util::task::TaskTracker::new();
    let client = smartcar_sync::daemon::build_client(&config, shutdown.clone(), &tracker).unwrap();
    let ctx = smartcar_sync::jobs::JobContext {
        store: store.clone(),
        client,
        allowance: None,
        subscriptions: None,
        wake: std::sync::Arc::new(tokio::sync::Notify::new()),
    };
    store
        .enqueue(JobKind::DiscoverUsers, "", chrono::Utc::now())
        .await
        .unwrap();
    let mut attempts = 0;
    loop {
        let now = chrono::Utc::now();
        let job = store
            .claim("test", now, Duration::from_secs(60), 1)
            .await
            .unwrap()
            .pop()
            .expect("the discovery job is due");
        // The connections syncs each page enqueues are not this test's business.
        if job.kind != JobKind::DiscoverUsers {
            store.complete(&job).await.unwrap();
            continue;
        }
        attempts += 1;
        assert!(attempts <= 400, "discovery never finished");
        match smartcar_sync::jobs::run(&ctx, &job).await {
            Ok(_) => break,
            Err(_) => store.retry(&job, now, "injected", None).await.unwrap(),
        }
    }
    let users = store.list_users().await.unwrap();
    assert_eq!(users.len(), 2_000, "every user discovered");
    let c = sim.counters();
    assert!(attempts > 1, "faults were injected: {c:?}");
    assert_eq!(
        c.connections_calls,
        20 + c.injected_errors,
        "each page fetched once, plus one call per failure: {c:?}"
    );
    shutdown.cancel();
    store.close().await;
    sim.shutdown().await;
    db.cleanup().await;
}

/// A job's attempts count its failures since it last made progress. A discovery whose every
/// other page fails meets ten failures in twenty pages, but each attempt registers a page
/// before it fails: with three attempts allowed it still finishes, and discovers everyone.
#[tokio::test]
async fn a_discovery_failing_every_other_page_finishes_because_every_attempt_moves_it_on() {
    for db in support::databases().await {
        let b = db.backend;
        let sim = support::simulator(fleet(2_000, 1)).await;
        sim.fail_every_nth_app_connections_page(2);
        let mut config = support::config(&sim, &db.url);
        config.queue.max_attempts = 3;
        let (daemon, report) = cycle(config).await;
        let c = sim.counters();
        assert!(
            c.injected_errors >= 9,
            "{b}: a page failed after each page fetched: {c:?}"
        );
        assert_eq!(report.dead, 0, "{b}: {report:?}");
        let users = daemon.store().list_users().await.unwrap();
        assert_eq!(users.len(), 2_000, "{b}: every user discovered");
        daemon.store().close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}
