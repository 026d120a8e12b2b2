//! Real Smartcar payloads end to end (simulator → client → database), once per database backend:
//! readings exact to the bit, every signal, webhook and error shape variant, impossible reading
//! times, failing continuation pages, a vehicle throttled on every call, `Retry-After` in every
//! form, and commands writing to a closed pipe.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use smartcar_sim::{
    ErrorBodyVariant, ForcedError, RetryAfterForm, SimConfig, Simulator, TimestampFormat, Variants,
};
use smartcar_sync::config::Config;
use smartcar_sync::daemon::{CycleReport, Daemon};
use smartcar_sync::store::{SampleSource, Store, VehicleStatus};
use tokio_util::sync::CancellationToken;

use crate::support::{self, TestDb};

fn fleet(users: usize, vehicles_per_user: usize, variants: Variants) -> SimConfig {
    SimConfig {
        users,
        vehicles_per_user,
        variants,
        // A retried poll sees the same readings.
        update_period: support::READINGS_HOLD_STILL,
        ..SimConfig::default()
    }
}

async fn cycle_until(config: Config, deadline: Option<Duration>) -> (Daemon, CycleReport) {
    let shutdown = CancellationToken::new();
    let daemon = Daemon::start(config, &shutdown)
        .await
        .expect("daemon starts");
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        daemon.sync_once_until(&shutdown, deadline, |_| {}),
    )
    .await
    .expect("the cycle finishes")
    .expect("the cycle runs");
    (daemon, report)
}

async fn cycle(config: Config) -> (Daemon, CycleReport) {
    cycle_until(config, None).await
}

/// Every reading the simulator served is stored exactly once: `value_num` the same f64 to the
/// bit, `body` the same JSON, and the body's text holding the served number's exact digits.
async fn assert_stored_exactly(store: &Store, sim: &Simulator, what: &str) {
    let served = sim.served_readings();
    let stored = store.list_samples().await.unwrap();
    let mut by_key = HashMap::new();
    for s in &stored {
        let prev = by_key.insert((s.vehicle_id.clone(), s.code.clone(), s.recorded_at), s);
        assert!(prev.is_none(), "{what}: duplicate sample {s:?}");
    }
    assert_eq!(stored.len(), served.len(), "{what}: stored vs served");
    for r in served {
        let s = by_key
            .get(&(r.vehicle_id.clone(), r.code.clone(), r.oem_updated_at))
            .unwrap_or_else(|| panic!("{what}: reading not stored: {r:?}"));
        assert_eq!(
            s.value_num.map(f64::to_bits),
            r.value_num.map(f64::to_bits),
            "{what}: {} {:?} vs {:?}",
            r.code,
            s.value_num,
            r.value_num
        );
        let body: serde_json::Value = serde_json::from_str(&s.body).unwrap();
        assert_eq!(body, r.body, "{what}: {}", r.code);
        // The text as sent is kept on SQLite; PostgreSQL's JSONB keeps the number exactly but
        // writes it its own way (`0.00001` for `1e-5`), so there the value comparison decides.
        if let Some(v) = r.body.get("value").filter(|v| v.is_f64())
            && what.starts_with("sqlite")
        {
            let digits = serde_json::to_string(v).unwrap();
            assert!(
                s.body.contains(&digits),
                "{what}: {} body {} lacks {digits}",
                r.code,
                s.body
            );
        }
    }
}

/// Significant digits of the shortest text that reads back as `x`.
fn significant_digits(x: f64) -> usize {
    let e = format!("{x:e}");
    e.split('e')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_digit)
        .count()
}

/// A daemon with its HTTP surface (webhooks) on a free port; no workers, no schedule.
struct Surface {
    daemon: Daemon,
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Surface {
    async fn start(sim: &Simulator, db: &TestDb) -> Surface {
        let mut config = support::config(sim, &db.url);
        config.smartcar.management_token =
            Some(SecretString::from(SimConfig::default().management_token));
        let shutdown = CancellationToken::new();
        let daemon = Daemon::start(config, &shutdown)
            .await
            .expect("daemon starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = daemon.http_state(None);
        tokio::spawn(smartcar_sync::http::serve(
            listener,
            state,
            shutdown.clone(),
        ));
        Surface {
            daemon,
            base,
            http: reqwest::Client::new(),
            shutdown,
        }
    }

    /// Posts a signed webhook; returns the status and body.
    async fn deliver(&self, sim: &Simulator, body: Vec<u8>) -> (u16, String) {
        let resp = self
            .http
            .post(format!("{}/webhooks/smartcar", self.base))
            .header("content-type", "application/json")
            .header("SC-Signature", sim.sign(&body))
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Every vehicle's current readings as one `VEHICLE_STATE` webhook each.
    async fn deliver_all(&self, sim: &Simulator, top_level_triggers: bool) {
        for user in sim.user_ids() {
            for v in sim.vehicles_of(&user) {
                let body = if top_level_triggers {
                    sim.vehicle_state_webhook_top_level_triggers(&v)
                } else {
                    sim.vehicle_state_webhook(&v)
                }
                .unwrap();
                let (status, text) = self.deliver(sim, body).await;
                assert_eq!(status, 200, "{text}");
            }
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.daemon.store().close().await;
    }
}

fn all_vehicles(sim: &Simulator) -> Vec<String> {
    sim.user_ids()
        .iter()
        .flat_map(|u| sim.vehicles_of(u))
        .collect()
}

#[tokio::test]
async fn readings_needing_all_17_digits_are_stored_bit_exact_from_polls() {
    for db in support::databases().await {
        let variants = Variants {
            precise_values: true,
            ..Variants::default()
        };
        let sim = support::simulator(fleet(3, 2, variants)).await;
        let (daemon, report) = cycle(support::config(&sim, &db.url)).await;
        assert_eq!(report.dead, 0, "{}", db.backend);
        let served = sim.served_readings();
        // Every odometer reading (and more) needs all 17 significant digits.
        let precise: Vec<f64> = served
            .iter()
            .filter(|r| r.code == "odometer-traveleddistance")
            .filter_map(|r| r.value_num)
            .collect();
        assert_eq!(precise.len(), 6);
        assert!(
            precise.iter().all(|x| significant_digits(*x) == 17),
            "{precise:?}"
        );
        assert_stored_exactly(daemon.store(), &sim, db.backend).await;
        daemon.store().close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn readings_needing_all_17_digits_are_stored_bit_exact_from_webhooks() {
    for db in support::databases().await {
        let variants = Variants {
            precise_values: true,
            ..Variants::default()
        };
        let sim = support::simulator(fleet(2, 2, variants)).await;
        let s = Surface::start(&sim, &db).await;
        s.deliver_all(&sim, false).await;
        let samples = s.daemon.store().list_samples().await.unwrap();
        assert!(samples.iter().all(|x| x.source == SampleSource::Webhook));
        assert_stored_exactly(s.daemon.store(), &sim, db.backend).await;
        s.stop().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_failed_continuation_page_is_retried_without_touching_the_vehicle_or_losing_readings() {
    for db in support::databases().await {
        let variants = Variants {
            signals_page_size: Some(4),
            ..Variants::default()
        };
        let sim = support::simulator(fleet(2, 2, variants)).await;
        // Page 2 of the first polls answers 404, as an expired cursor would.
        sim.fail_next_signal_pages(3);
        let (daemon, report) = cycle(support::config(&sim, &db.url)).await;
        let b = db.backend;
        assert_eq!(report.dead, 0, "{b}");
        assert!(
            report
                .stats
                .retried
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1,
            "{b}"
        );
        let vehicles = daemon.store().list_vehicles().await.unwrap();
        assert_eq!(vehicles.len(), 4);
        assert!(
            vehicles
                .iter()
                .all(|v| v.status == VehicleStatus::Connected),
            "{b}: a continuation 404 is not a vanished vehicle: {vehicles:?}"
        );
        assert!(vehicles.iter().all(|v| v.last_polled_at.is_some()));
        assert_stored_exactly(daemon.store(), &sim, b).await;
        daemon.store().close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_continuation_page_failing_for_good_keeps_the_readings_already_received() {
    for db in support::databases().await {
        let variants = Variants {
            signals_page_size: Some(4),
            ..Variants::default()
        };
        let sim = support::simulator(fleet(1, 1, variants)).await;
        sim.fail_next_signal_pages(1_000);
        let mut config = support::config(&sim, &db.url);
        config.queue.max_attempts = 2;
        let (daemon, report) = cycle(config).await;
        let b = db.backend;
        // The poll gave up (dead; a second time in the cycle's last phase, as the vehicle was
        // never polled), but the vehicle is still connected and page 1 is stored.
        assert!(report.dead >= 1, "{b}");
        let v = &daemon.store().list_vehicles().await.unwrap()[0];
        assert_eq!(v.status, VehicleStatus::Connected, "{b}: {v:?}");
        assert!(daemon.store().sample_count().await.unwrap() > 0, "{b}");
        // Exactly what was served (page 1, twice) is stored, once.
        assert_stored_exactly(daemon.store(), &sim, b).await;
        daemon.store().close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn every_signal_shape_variant_is_read_end_to_end() {
    for db in support::databases().await {
        let variants = Variants {
            camel_case_codes: true,
            unit_aliases: true,
            legacy_soc_body: true,
            empty_meta: true,
            overlong_code: true,
            year_as_string: true,
            wrapped_resources: false,
            timestamps: TimestampFormat::Iso8601,
            ..Variants::default()
        };
        let sim = support::simulator(fleet(2, 3, variants)).await;
        let (daemon, report) = cycle(support::config(&sim, &db.url)).await;
        let b = db.backend;
        assert_eq!(report.dead, 0, "{b}");
        let store = daemon.store();
        // Codes arrived in camelCase and are stored in kebab-case, as the simulator's record
        // (which keeps the canonical code) expects.
        assert_stored_exactly(store, &sim, b).await;
        let samples = store.list_samples().await.unwrap();
        let unit_of = |code: &str| {
            samples
                .iter()
                .filter(|s| s.code == code)
                .map(|s| s.unit.clone())
                .collect::<HashSet<_>>()
        };
        // Units are stored as sent.
        assert!(unit_of("odometer-traveleddistance").contains(&Some("km".to_owned())));
        // The legacy state-of-charge body gives its number.
        let soc: Vec<_> = samples
            .iter()
            .filter(|s| s.code == "tractionbattery-stateofcharge")
            .collect();
        assert!(!soc.is_empty(), "{b}");
        assert!(
            soc.iter()
                .all(|s| s.value_num.is_some() && s.body.contains("percentage")),
            "{b}"
        );
        // An empty meta: the status is recorded, no sample.
        let statuses = store.list_signal_statuses().await.unwrap();
        let locked: Vec<_> = statuses
            .iter()
            .filter(|s| s.code == "closure-islocked")
            .collect();
        assert_eq!(locked.len(), 6, "{b}");
        assert!(locked.iter().all(|s| s.status == "SUCCESS"));
        assert!(samples.iter().all(|s| s.code != "closure-islocked"));
        // The 80-character code is skipped; nothing else is.
        assert!(statuses.iter().all(|s| s.code.len() <= 64), "{b}");
        assert!(samples.iter().all(|s| s.code.len() <= 64), "{b}");
        assert!(
            statuses
                .iter()
                .all(|s| s.code.chars().all(|c| c.is_ascii_lowercase() || c == '-')),
            "{b}: every code kebab-case lower"
        );
        // Vehicles (year as a string, unwrapped resources) are read.
        assert!(
            store
                .list_vehicles()
                .await
                .unwrap()
                .iter()
                .all(|v| v.year.is_some())
        );
        daemon.store().close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

/// Every vehicle's `lowvoltagebattery-stateofcharge` status is a reading-time error, and no
/// sample of it exists.
async fn assert_bad_times_are_status_errors(store: &Store, vehicles: usize, what: &str) {
    let statuses = store.list_signal_statuses().await.unwrap();
    let lv: Vec<_> = statuses
        .iter()
        .filter(|s| s.code == "lowvoltagebattery-stateofcharge")
        .collect();
    assert_eq!(lv.len(), vehicles, "{what}");
    for s in lv {
        assert_eq!(s.status, "ERROR", "{what}: {s:?}");
        assert_eq!(s.error_type.as_deref(), Some("READING_TIME"), "{what}");
        assert!(
            matches!(s.error_code.as_deref(), Some("UNREADABLE" | "OUT_OF_RANGE")),
            "{what}: {s:?}"
        );
    }
    let samples = store.list_samples().await.unwrap();
    assert!(
        samples
            .iter()
            .all(|s| s.code != "lowvoltagebattery-stateofcharge"),
        "{what}"
    );
    let now = chrono::Utc::now();
    assert!(
        samples
            .iter()
            .all(|s| s.recorded_at.timestamp() > 946_684_800
                && s.recorded_at < now + chrono::Duration::days(1)),
        "{what}"
    );
}

#[tokio::test]
async fn impossible_reading_times_are_status_errors_not_samples_by_poll_and_webhook() {
    for db in support::databases().await {
        let variants = Variants {
            out_of_range_times: true,
            ..Variants::default()
        };
        // Six vehicles: each of the six impossible times once.
        let sim = support::simulator(fleet(2, 3, variants)).await;
        let (daemon, report) = cycle(support::config(&sim, &db.url)).await;
        let b = db.backend;
        assert_eq!(report.dead, 0, "{b}");
        assert_stored_exactly(daemon.store(), &sim, b).await;
        assert_bad_times_are_status_errors(daemon.store(), 6, b).await;
        daemon.store().close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
    for db in support::databases().await {
        let variants = Variants {
            out_of_range_times: true,
            ..Variants::default()
        };
        let sim = support::simulator(fleet(2, 3, variants)).await;
        let s = Surface::start(&sim, &db).await;
        s.deliver_all(&sim, false).await;
        let what = format!("{} webhook", db.backend);
        assert_stored_exactly(s.daemon.store(), &sim, &what).await;
        assert_bad_times_are_status_errors(s.daemon.store(), 6, &what).await;
        s.stop().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn webhook_shape_variants_are_read_end_to_end() {
    for db in support::databases().await {
        for (fetched_at, delivered_at, top_level_triggers) in [
            (true, TimestampFormat::EpochMillis, false),
            (false, TimestampFormat::EpochSeconds, true),
            (true, TimestampFormat::Iso8601, true),
        ] {
            let db = if db.backend == "sqlite" {
                TestDb::sqlite().await
            } else {
                match TestDb::postgres().await {
                    Some(d) => d,
                    None => continue,
                }
            };
            let variants = Variants {
                webhook_fetched_at: fetched_at,
                webhook_delivered_at: delivered_at,
                camel_case_codes: true,
                overlong_code: true,
                ..Variants::default()
            };
            let sim = support::simulator(fleet(1, 2, variants)).await;
            let s = Surface::start(&sim, &db).await;
            s.deliver_all(&sim, top_level_triggers).await;
            let what = format!("{} {fetched_at} {delivered_at:?}", db.backend);
            assert_stored_exactly(s.daemon.store(), &sim, &what).await;
            assert!(s.daemon.store().sample_count().await.unwrap() > 0, "{what}");
            s.stop().await;
            sim.shutdown().await;
            db.cleanup().await;
        }
        db.cleanup().await;
    }
}

#[tokio::test]
async fn every_error_body_variant_is_classified_end_to_end() {
    for db in support::databases().await {
        for error_body in [
            ErrorBodyVariant::V3,
            ErrorBodyVariant::V3Minimal,
            ErrorBodyVariant::V2,
            ErrorBodyVariant::V2ResolutionTypeNull,
            ErrorBodyVariant::V2ResolutionString,
            ErrorBodyVariant::V2ResolutionNull,
            ErrorBodyVariant::V1,
        ] {
            let db = if db.backend == "sqlite" {
                TestDb::sqlite().await
            } else {
                match TestDb::postgres().await {
                    Some(d) => d,
                    None => continue,
                }
            };
            let variants = Variants {
                error_body,
                ..Variants::default()
            };
            let sim = support::simulator(fleet(1, 4, variants)).await;
            let v = all_vehicles(&sim);
            sim.force_vehicle_error(&v[0], Some(ForcedError::NotFound));
            sim.force_vehicle_error(&v[1], Some(ForcedError::Permission));
            sim.force_vehicle_error(&v[2], Some(ForcedError::Asleep));
            sim.force_vehicle_error(&v[3], Some(ForcedError::VehicleRateLimit));
            let mut config = support::config(&sim, &db.url);
            config.queue.max_attempts = 2;
            let (daemon, report) = cycle_until(config, Some(Duration::from_secs(2))).await;
            let what = format!("{} {error_body:?}", db.backend);
            let store = daemon.store();
            let status: HashMap<String, VehicleStatus> = store
                .list_vehicles()
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.vehicle_id, r.status))
                .collect();
            assert_eq!(status[&v[0]], VehicleStatus::Disconnected, "{what}");
            assert_eq!(status[&v[1]], VehicleStatus::PermissionDenied, "{what}");
            // Asleep: retried, then dead; the vehicle stays connected.
            assert_eq!(status[&v[2]], VehicleStatus::Connected, "{what}");
            assert_eq!(report.dead, 1, "{what}");
            // Throttled: deferred, counted, still connected, left open at the deadline.
            assert_eq!(status[&v[3]], VehicleStatus::Connected, "{what}");
            assert!(store.throttle_streak(&v[3]).await.unwrap() >= 1, "{what}");
            assert!(report.out_of_time, "{what}");
            assert!(
                report.deferred.iter().any(|j| j.subject == v[3]),
                "{what}: {:?}",
                report.deferred
            );
            daemon.store().close().await;
            sim.shutdown().await;
            db.cleanup().await;
        }
        db.cleanup().await;
    }
}

#[tokio::test]
async fn retry_after_in_every_form_defers_the_throttled_poll_until_then_and_is_capped() {
    for db in support::databases().await {
        for (form, cap, lo, hi) in [
            (RetryAfterForm::Seconds, 3600, 1_500, 3_000),
            (RetryAfterForm::HttpDate, 3600, 1_000, 4_000),
            (RetryAfterForm::EpochMillis, 3600, 1_500, 3_000),
            (RetryAfterForm::EpochSeconds, 3600, 1_000, 4_000),
            // Capped by queue.max_retry_after.
            (RetryAfterForm::EpochMillis, 1, 500, 1_600),
        ] {
            let db = if db.backend == "sqlite" {
                TestDb::sqlite().await
            } else {
                match TestDb::postgres().await {
                    Some(d) => d,
                    None => continue,
                }
            };
            let variants = Variants {
                retry_after_form: form,
                ..Variants::default()
            };
            let sim = support::simulator(fleet(1, 1, variants)).await;
            let v = all_vehicles(&sim)[0].clone();
            sim.force_vehicle_error(&v, Some(ForcedError::VehicleRateLimit));
            let mut config = support::config(&sim, &db.url);
            config.queue.max_retry_after = Duration::from_secs(cap);
            let (daemon, report) = cycle_until(config, Some(Duration::from_secs(1))).await;
            let what = format!("{} {form:?} cap {cap}s", db.backend);
            assert!(report.out_of_time, "{what}");
            let job = report
                .deferred
                .iter()
                .find(|j| j.subject == v)
                .unwrap_or_else(|| panic!("{what}: {:?}", report.deferred));
            let wait = (job.run_at - report.started).num_milliseconds();
            assert!((lo..=hi).contains(&wait), "{what}: deferred by {wait} ms");
            assert!(
                job.reason.as_deref().is_some_and(|r| r.contains("429")),
                "{what}: {job:?}"
            );
            assert_eq!(
                daemon.store().throttle_streak(&v).await.unwrap(),
                1,
                "{what}"
            );
            daemon.store().close().await;
            sim.shutdown().await;
            db.cleanup().await;
        }
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_vehicle_throttled_on_every_call_backs_off_and_sync_once_ends_with_75() {
    for db in support::databases().await {
        let variants = Variants {
            // An absolute Retry-After: read as a time, and logged once however often it comes.
            retry_after_form: RetryAfterForm::EpochMillis,
            ..Variants::default()
        };
        let sim = support::simulator(fleet(1, 2, variants)).await;
        let v = all_vehicles(&sim);
        sim.force_vehicle_error(&v[0], Some(ForcedError::VehicleRateLimit));
        let config = support::config(&sim, &db.url);
        let path = support::write_config(db.dir.path(), &config, "");
        let started = Instant::now();
        let out = support::child(&path, &["sync-once", "--deadline", "10s"], "warn")
            .output()
            .await
            .unwrap();
        let elapsed = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let b = db.backend;
        assert_eq!(out.status.code(), Some(75), "{b}: {stdout}\n{stderr}");
        // Calls at 0, 2 and 6 s (waits of 2, 4, then 8 s reach past the deadline, so the cycle
        // ends early) instead of one every 2 s for the whole deadline.
        let calls = sim.counters().responses_429_vehicle;
        assert!((3..=4).contains(&calls), "{b}: {calls} calls\n{stderr}");
        assert!(elapsed < Duration::from_secs(10), "{b}: {elapsed:?}");
        assert!(stdout.contains(&v[0]), "{b}: {stdout}");
        assert!(stdout.contains("until"), "{b}: {stdout}");
        assert!(stdout.contains("throttled"), "{b}: {stdout}");
        assert_eq!(
            stderr.matches("unusual Retry-After").count(),
            1,
            "{b}: logged once: {stderr}"
        );
        let store = db.store().await;
        assert_eq!(store.throttle_streak(&v[0]).await.unwrap(), calls as i64);
        // The other vehicle was polled normally.
        let polled = store.vehicle(&v[1]).await.unwrap().unwrap();
        assert!(polled.last_polled_at.is_some(), "{b}");
        store.close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn every_printing_command_exits_quietly_on_a_closed_pipe() {
    let db = TestDb::sqlite().await;
    let sim = support::simulator(fleet(2, 2, Variants::default())).await;
    let config = support::config(&sim, &db.url);
    let path = support::write_config(db.dir.path(), &config, "");
    let ok = support::child(&path, &["users", "add", "u-1", "u-2"], "warn")
        .output()
        .await
        .unwrap();
    assert!(ok.status.success());
    for args in [
        &["vehicles", "list"][..],
        &["users", "list"],
        &["status"],
        &["status", "--json"],
        &["users", "list", "--json"],
        &["vehicles", "list", "--json"],
        &["jobs", "list"],
        &["jobs", "list", "--json"],
        &["migrate"],
        &["users", "add", "u-3"],
        &["sync-once"],
    ] {
        let mut child = support::child(&path, args, "warn").spawn().unwrap();
        // The reader is gone before the command writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
    sim.shutdown().await;
    db.cleanup().await;
}

/// Rows of `sql` (every column selected as text) on the test database.
async fn text_rows(db: &TestDb, sql: &str) -> Vec<Vec<Option<String>>> {
    use sqlx::Row;
    if db.backend == "sqlite" {
        let pool = sqlx::sqlite::SqlitePool::connect(&db.url).await.unwrap();
        let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap();
        let out = rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<Option<String>, _>(i))
                    .collect()
            })
            .collect();
        pool.close().await;
        out
    } else {
        let pool = sqlx::postgres::PgPool::connect(&db.url).await.unwrap();
        let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap();
        let out = rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<Option<String>, _>(i))
                    .collect()
            })
            .collect();
        pool.close().await;
        out
    }
}

#[tokio::test]
async fn units_are_stored_as_sent_and_normalised_in_the_dashboard_views() {
    use smartcar_sync::store::{NewSample, SignalState};
    for db in support::databases().await {
        let store = db.store().await;
        let t0 = chrono::Utc::now() - chrono::Duration::hours(2);
        let sample =
            |code: &str, minutes: i64, unit: Option<&str>, value: f64, body: &str| NewSample {
                vehicle_id: "v-units".to_owned(),
                code: code.to_owned(),
                recorded_at: t0 + chrono::Duration::minutes(minutes),
                value_num: Some(value),
                unit: unit.map(str::to_owned),
                body: body.to_owned(),
                source: SampleSource::Poll,
            };
        let samples = vec![
            sample(
                "odometer-traveleddistance",
                0,
                Some("mi"),
                10.0,
                r#"{"unit":"mi","value":10}"#,
            ),
            sample(
                "odometer-traveleddistance",
                1,
                Some("mi"),
                20.0,
                r#"{"unit":"mi","value":20}"#,
            ),
            sample(
                "tractionbattery-range",
                0,
                Some("km"),
                300.0,
                r#"{"unit":"km","value":300}"#,
            ),
            sample(
                "tractionbattery-stateofcharge",
                0,
                None,
                75.0,
                r#"{"percentage":75}"#,
            ),
            sample(
                "internalcombustionengine-fuellevel",
                0,
                Some("percentage"),
                40.0,
                r#"{"unit":"percentage","value":40}"#,
            ),
            sample(
                "tractionbattery-nominalcapacity",
                0,
                Some("kWhr"),
                82.5,
                r#"{"unit":"kWhr","value":82.5}"#,
            ),
        ];
        let statuses: Vec<SignalState> = samples
            .iter()
            .map(|s| SignalState {
                vehicle_id: s.vehicle_id.clone(),
                code: s.code.clone(),
                status: "SUCCESS".to_owned(),
                error_type: None,
                error_code: None,
                observed_at: t0,
            })
            .collect();
        store.ingest_samples(&samples, &statuses).await.unwrap();
        let b = db.backend;
        // As sent in the table.
        let stored: HashMap<String, Option<String>> = store
            .list_samples()
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.code, s.unit))
            .collect();
        assert_eq!(
            stored["tractionbattery-range"].as_deref(),
            Some("km"),
            "{b}"
        );
        assert_eq!(stored["tractionbattery-stateofcharge"], None, "{b}");
        // One spelling in the views.
        let latest: HashMap<String, (Option<String>, Option<String>)> = text_rows(
            &db,
            "SELECT code, unit, unit_sent FROM dash_latest_reading ORDER BY code",
        )
        .await
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), (r[1].clone(), r[2].clone())))
        .collect();
        let unit = |code: &str| latest[code].0.clone();
        assert_eq!(
            unit("odometer-traveleddistance").as_deref(),
            Some("miles"),
            "{b}"
        );
        assert_eq!(
            unit("tractionbattery-range").as_deref(),
            Some("kilometers"),
            "{b}"
        );
        assert_eq!(
            unit("tractionbattery-stateofcharge").as_deref(),
            Some("percent"),
            "{b}"
        );
        assert_eq!(
            unit("internalcombustionengine-fuellevel").as_deref(),
            Some("percent"),
            "{b}"
        );
        assert_eq!(
            unit("tractionbattery-nominalcapacity").as_deref(),
            Some("kWh"),
            "{b}"
        );
        assert_eq!(
            latest["tractionbattery-range"].1.as_deref(),
            Some("km"),
            "{b}"
        );
        // Miles in any spelling are converted to km.
        let distance = text_rows(
            &db,
            "SELECT CAST(distance_km AS TEXT) FROM dash_distance_daily WHERE vehicle_id = 'v-units'",
        )
        .await;
        let km: f64 = distance[0][0].as_deref().unwrap().parse().unwrap();
        assert!((km - 16.09344).abs() < 1e-9, "{b}: {km}");
        let range = text_rows(
            &db,
            "SELECT CAST(range_km AS TEXT) FROM dash_soc_range \
             WHERE vehicle_id = 'v-units' AND range_km IS NOT NULL",
        )
        .await;
        let km: f64 = range[0][0].as_deref().unwrap().parse().unwrap();
        assert!((km - 300.0).abs() < 1e-9, "{b}: {km}");
        store.close().await;
        db.cleanup().await;
    }
}
