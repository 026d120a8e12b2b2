//! The store's contract, proved on both backends: every test body runs against SQLite (a temp
//! file) and against PostgreSQL (a fresh database; skipped loudly when there is no server).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use smartcar_sync::store::{
    Job, JobKind, NewSample, PollResult, SampleSource, SignalState, Store, StoreError,
    StoreOptions, UserSource, VehicleStatus, VehicleStatusUpdate, VehicleUpsert,
};

use crate::support::postgres::{PgDatabase, fresh_database};

/// One migrated database for one test.
struct TestDb {
    url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<PgDatabase>,
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let db = TestDb {
            url,
            _dir: Some(dir),
            pg: None,
        };
        db.store().await.migrate().await.expect("migrate sqlite");
        db
    }

    async fn postgres() -> Option<TestDb> {
        let pg = fresh_database().await?;
        let db = TestDb {
            url: pg.url.clone(),
            _dir: None,
            pg: Some(pg),
        };
        db.store().await.migrate().await.expect("migrate postgres");
        Some(db)
    }

    /// A new pool on this database.
    async fn store(&self) -> Store {
        Store::connect(&self.url, &StoreOptions::default())
            .await
            .expect("connect")
    }

    async fn finish(self) {
        if let Some(pg) = self.pg {
            pg.drop_database().await;
        }
    }
}

/// Runs `async fn $name(store: Store)` once per backend, as tests `store::$name::sqlite` and
/// `store::$name::postgres`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::TestDb;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = TestDb::sqlite().await;
                let store = db.store().await;
                super::$name(store.clone()).await;
                store.close().await;
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = TestDb::postgres().await else { return };
                let store = db.store().await;
                assert_eq!(store.backend_name(), "postgres");
                super::$name(store.clone()).await;
                store.close().await;
                db.finish().await;
            }
        }
    )*};
}

both!(
    the_same_reading_twice_is_stored_once,
    an_expired_lease_is_reclaimed_and_the_old_owner_is_fenced_out,
    only_one_job_per_kind_and_subject_is_open,
    an_app_pause_blocks_claims_until_it_ends,
    release_does_not_use_an_attempt_but_retry_and_kill_do,
    finish_sync_reports_new_and_vanished_vehicles_and_enqueues_polls,
    a_lost_lease_rolls_back_the_whole_poll,
    a_group_commit_keeps_every_poll_but_the_one_whose_lease_was_lost,
    record_tick_lets_exactly_one_caller_win_a_tick,
    timestamps_round_trip_at_microsecond_precision,
    sample_partitions_are_managed,
    discovery_adds_users_and_enqueues_their_syncs,
    vehicle_status_decides_pollability,
    removing_a_user_removes_vehicles_and_open_jobs_but_keeps_samples,
    observability_counts_and_pruning,
    compaction_changes_no_answer_and_never_moves_back,
    an_old_reading_is_stored_once_in_cold,
    ingest_between_compaction_slices_loses_and_duplicates_nothing,
    concurrent_writers_of_new_series_units_and_bodies_store_each_reading_once,
);

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 15, 12, 0, 0).unwrap() + chrono::Duration::seconds(secs)
}

const LEASE: Duration = Duration::from_secs(30);

fn sample(vehicle: &str, code: &str, at: DateTime<Utc>, value: f64) -> NewSample {
    NewSample {
        vehicle_id: vehicle.into(),
        code: code.into(),
        recorded_at: at,
        value_num: Some(value),
        unit: Some("km".into()),
        body: format!(r#"{{"value":{value}}}"#),
        source: SampleSource::Poll,
    }
}

fn vehicle(id: &str) -> VehicleUpsert {
    VehicleUpsert {
        vehicle_id: id.into(),
        connection_id: Some(format!("conn-{id}")),
        make: Some("TESLA".into()),
        model: Some("Model 3".into()),
        year: Some(2022),
        powertrain_type: Some("BEV".into()),
        mode: Some("live".into()),
        permissions: vec!["read_odometer".into(), "read_battery".into()],
    }
}

async fn claim_one(store: &Store, now: DateTime<Utc>) -> Option<Job> {
    let mut jobs = store.claim("test", now, LEASE, 1).await.expect("claim");
    jobs.pop()
}

/// A user with the given vehicles, synced at t(0) through a real sync job.
async fn user_with_vehicles(store: &Store, user: &str, vehicles: &[&str]) {
    store.add_user(user, UserSource::Cli).await.unwrap();
    store
        .enqueue(JobKind::SyncConnections, user, t(0))
        .await
        .unwrap();
    // Take the user's sync job; put back whatever else was due (release costs no attempt).
    let mut sync = None;
    for job in store.claim("setup", t(0), LEASE, 1000).await.unwrap() {
        if job.kind == JobKind::SyncConnections && job.subject == user {
            sync = Some(job);
        } else {
            store.release(&job, job.run_at, None).await.unwrap();
        }
    }
    let job = sync.expect("sync job");
    let list: Vec<_> = vehicles.iter().map(|v| vehicle(v)).collect();
    store.finish_sync(&job, user, &list, t(0)).await.unwrap();
}

async fn the_same_reading_twice_is_stored_once(store: Store) {
    let a = sample("v1", "odometer", t(0), 100.0);
    let b = sample("v1", "odometer", t(1), 101.0);
    assert_eq!(
        store
            .ingest_samples(&[a.clone(), b.clone()], &[])
            .await
            .unwrap(),
        2
    );
    // The same reading again (also twice within one batch): nothing new, first writer wins.
    let mut again = a.clone();
    again.value_num = Some(999.0);
    again.body = r#"{"value":999}"#.into();
    again.source = SampleSource::Webhook;
    assert_eq!(
        store
            .ingest_samples(&[again.clone(), again], &[])
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.sample_count().await.unwrap(), 2);

    // A poll carrying the same readings inserts nothing either.
    user_with_vehicles(&store, "u1", &["v1"]).await;
    let job = claim_one(&store, t(1)).await.expect("poll job");
    assert_eq!(job.kind, JobKind::PollSignals);
    let poll = PollResult {
        vehicle_id: "v1".into(),
        samples: vec![a, b, sample("v1", "odometer", t(2), 102.0)],
        statuses: vec![],
        polled_at: t(3),
        plan: None,
    };
    let out = store.finish_poll(&job, &poll).await.unwrap();
    assert_eq!(out.samples_inserted, 1);
    assert_eq!(store.sample_count().await.unwrap(), 3);

    // Many samples in one call (more than one SQLite chunk).
    let many: Vec<_> = (0..1000)
        .map(|i| sample("v2", "speed", t(100 + i), i as f64))
        .collect();
    assert_eq!(store.ingest_samples(&many, &[]).await.unwrap(), 1000);
    assert_eq!(store.ingest_samples(&many, &[]).await.unwrap(), 0);
}

/// Writers that add the same new series, units and bodies at once (on PostgreSQL one waits on
/// the other's unique key, then reads the winner's id) each store their readings once, each
/// under the right series, unit and body.
async fn concurrent_writers_of_new_series_units_and_bodies_store_each_reading_once(store: Store) {
    let reading = |task: i64, vehicle: usize, code: &str| {
        let mut s = sample(&format!("c{vehicle}"), code, t(task), task as f64);
        match code {
            // A body said once by every writer: stored once or twice, read back the same.
            "location" => {
                s.value_num = None;
                s.unit = None;
                s.body = r#"{"latitude":1.5,"longitude":2.5}"#.into();
            }
            // Rebuilt from value and a unit every writer adds.
            "range" => {
                s.unit = Some("miles".into());
                s.body = format!(r#"{{"unit":"miles","value":{task}}}"#);
            }
            _ => {}
        }
        s
    };
    let codes = ["odometer", "range", "location"];
    let mut tasks = Vec::new();
    for task in 0..8 {
        let store = store.clone();
        // 36 series: enough for PostgreSQL's plain insert first (32 or more).
        let batch: Vec<NewSample> = (0..12)
            .flat_map(|v| codes.map(|c| reading(task, v, c)))
            .collect();
        tasks.push(tokio::spawn(async move {
            store.ingest_samples(&batch, &[]).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 36);
    }
    let stored = store.list_samples().await.unwrap();
    assert_eq!(stored.len(), 8 * 12 * 3);
    for row in &stored {
        let task = (row.recorded_at - t(0)).num_seconds();
        let vehicle: usize = row.vehicle_id[1..].parse().unwrap();
        let want = reading(task, vehicle, &row.code);
        assert_eq!(row.value_num, want.value_num, "{row:?}");
        assert_eq!(row.unit, want.unit, "{row:?}");
        let body: serde_json::Value = serde_json::from_str(&row.body).unwrap();
        let want_body: serde_json::Value = serde_json::from_str(&want.body).unwrap();
        assert_eq!(body, want_body, "{row:?}");
    }
}

async fn an_expired_lease_is_reclaimed_and_the_old_owner_is_fenced_out(store: Store) {
    let id = store
        .enqueue(JobKind::DiscoverUsers, "", t(0))
        .await
        .unwrap();
    assert!(claim_one(&store, t(-1)).await.is_none(), "not due yet");
    let first = claim_one(&store, t(0)).await.expect("due job");
    assert_eq!((first.id, first.attempts), (id, 0));
    assert!(first.lease_owner.starts_with("test"));
    assert!(claim_one(&store, t(10)).await.is_none(), "lease still held");

    // The worker died: once the lease expires the job is claimed again, as a failed attempt.
    let second = claim_one(&store, t(31)).await.expect("reclaimed");
    assert_eq!((second.id, second.attempts), (id, 1));
    assert_ne!(second.lease_owner, first.lease_owner);

    // The old owner is fenced out of every change.
    assert!(matches!(
        store.complete(&first).await,
        Err(StoreError::LeaseLost { job_id }) if job_id == id
    ));
    assert!(!store.extend_lease(&first, t(500)).await.unwrap());
    assert!(matches!(
        store.retry(&first, t(40), "boom", None).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(store.extend_lease(&second, t(100)).await.unwrap());
    assert!(
        claim_one(&store, t(90)).await.is_none(),
        "extended lease holds"
    );
    store.complete(&second).await.unwrap();
    assert!(matches!(
        store.complete(&second).await,
        Err(StoreError::LeaseLost { .. })
    ));
    // Done is done: never claimed again.
    assert!(
        store
            .claim("x", t(100_000), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.open_jobs(None).await.unwrap(), 0);
    assert_eq!(store.next_wake(t(0)).await.unwrap(), None);
}

async fn only_one_job_per_kind_and_subject_is_open(store: Store) {
    let a = store
        .enqueue(JobKind::PollSignals, "v1", t(0))
        .await
        .unwrap();
    let again = store
        .enqueue(JobKind::PollSignals, "v1", t(50))
        .await
        .unwrap();
    assert_eq!(a, again);
    let other_kind = store
        .enqueue(JobKind::SyncConnections, "v1", t(0))
        .await
        .unwrap();
    assert_ne!(a, other_kind);
    assert_eq!(store.open_jobs(None).await.unwrap(), 2);
    assert_eq!(
        store.open_jobs(Some(JobKind::PollSignals)).await.unwrap(),
        1
    );

    // While running it is still the open job; once done a new one can be enqueued.
    let jobs = store.claim("w", t(0), LEASE, 10).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        store
            .enqueue(JobKind::PollSignals, "v1", t(0))
            .await
            .unwrap(),
        a
    );
    let poll = jobs.iter().find(|j| j.id == a).unwrap();
    store.complete(poll).await.unwrap();
    let next = store
        .enqueue(JobKind::PollSignals, "v1", t(0))
        .await
        .unwrap();
    assert_ne!(next, a);

    // Bulk enqueue honours the same rule.
    user_with_vehicles(&store, "u1", &["v1", "v2"]).await; // sync enqueues poll for v2 only
    assert_eq!(
        store.enqueue_polls_for_pollable(t(1), None).await.unwrap(),
        0
    );
    assert_eq!(
        store.enqueue_syncs_for_all_users(t(1), None).await.unwrap(),
        1
    );
    assert_eq!(
        store.enqueue_syncs_for_all_users(t(1), None).await.unwrap(),
        0
    );
}

async fn an_app_pause_blocks_claims_until_it_ends(store: Store) {
    store
        .enqueue(JobKind::DiscoverUsers, "", t(0))
        .await
        .unwrap();
    assert_eq!(store.next_wake(t(-10)).await.unwrap(), Some(t(0)));
    store
        .set_app_pause(t(60), "app rate limit", Some("req-1"))
        .await
        .unwrap();
    // A shorter pause never cuts the longer one short.
    store.set_app_pause(t(30), "shorter", None).await.unwrap();
    assert_eq!(store.app_paused_until(t(0)).await.unwrap(), Some(t(60)));
    assert!(store.claim("w", t(10), LEASE, 10).await.unwrap().is_empty());
    assert_eq!(store.next_wake(t(10)).await.unwrap(), Some(t(60)));
    assert_eq!(store.app_paused_until(t(60)).await.unwrap(), None);
    assert!(claim_one(&store, t(60)).await.is_some());
}

async fn release_does_not_use_an_attempt_but_retry_and_kill_do(store: Store) {
    store
        .enqueue(JobKind::PollSignals, "v9", t(0))
        .await
        .unwrap();
    let job = claim_one(&store, t(0)).await.unwrap();
    store
        .release(&job, t(20), Some("rate limited"))
        .await
        .unwrap();
    assert!(
        claim_one(&store, t(19)).await.is_none(),
        "released until t(20)"
    );
    assert_eq!(store.next_wake(t(0)).await.unwrap(), Some(t(20)));
    let job = claim_one(&store, t(20)).await.unwrap();
    assert_eq!(job.attempts, 0);

    store
        .retry(&job, t(40), "HTTP 500", Some("req-500"))
        .await
        .unwrap();
    let job = claim_one(&store, t(40)).await.unwrap();
    assert_eq!(job.attempts, 1);
    assert_eq!(job.run_at, t(40));

    store
        .kill(&job, "permanent: 404", Some("req-404"))
        .await
        .unwrap();
    let dead = store.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].kind, "poll_signals");
    assert_eq!(dead[0].subject, "v9");
    assert_eq!(dead[0].last_error.as_deref(), Some("permanent: 404"));
    assert_eq!(dead[0].last_request_id.as_deref(), Some("req-404"));
    assert!(dead[0].finished_at.is_some());
    assert_eq!(
        store
            .dead_since(Utc::now() - chrono::Duration::hours(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .dead_since(Utc::now() + chrono::Duration::hours(1))
            .await
            .unwrap(),
        0
    );
    assert!(
        claim_one(&store, t(100_000)).await.is_none(),
        "dead is never claimed"
    );
}

async fn finish_sync_reports_new_and_vanished_vehicles_and_enqueues_polls(store: Store) {
    store.add_user("u1", UserSource::Connect).await.unwrap();
    store
        .enqueue(JobKind::SyncConnections, "u1", t(0))
        .await
        .unwrap();
    let job = claim_one(&store, t(0)).await.unwrap();
    let out = store
        .finish_sync(
            &job,
            "u1",
            &[vehicle("v2"), vehicle("v1"), vehicle("v3")],
            t(0),
        )
        .await
        .unwrap();
    assert_eq!(out.new_vehicles, ["v1", "v2", "v3"]);
    assert!(out.vanished.is_empty());
    assert_eq!(
        store.open_jobs(Some(JobKind::PollSignals)).await.unwrap(),
        3
    );
    assert_eq!(
        store
            .open_jobs(Some(JobKind::SyncConnections))
            .await
            .unwrap(),
        0
    );
    let v1 = store.vehicle("v1").await.unwrap().unwrap();
    assert_eq!(v1.status, VehicleStatus::Connected);
    assert_eq!(v1.user_id, "u1");
    assert_eq!(v1.permissions, ["read_odometer", "read_battery"]);
    assert_eq!(v1.year, Some(2022));
    assert_eq!(v1.first_seen_at, t(0));
    assert_eq!(
        store.vehicle_owner("v1").await.unwrap().as_deref(),
        Some("u1")
    );
    let users = store.list_users().await.unwrap();
    assert_eq!(users[0].last_synced_at, Some(t(0)));
    assert_eq!(users[0].source, UserSource::Connect);

    // v2 gets billing-limited, v3 needs a reconnect until far ahead.
    let polls = store.claim("w", t(1), LEASE, 10).await.unwrap();
    assert_eq!(polls.len(), 3);
    for (v, status, blocked) in [
        ("v2", VehicleStatus::BillingLimited, Some(t(10_000))),
        ("v3", VehicleStatus::NeedsReconnect, Some(t(10_000))),
    ] {
        let job = polls.iter().find(|j| j.subject == v).unwrap();
        let update = VehicleStatusUpdate {
            status,
            reason: "test".into(),
            request_id: Some("req-s".into()),
            blocked_until: blocked,
            at: t(1),
        };
        store.finish_vehicle_status(job, v, &update).await.unwrap();
    }

    // The next sync lists v2, v3 and a new v4: v1 vanished; v2/v3 keep their status.
    store
        .enqueue(JobKind::SyncConnections, "u1", t(2))
        .await
        .unwrap();
    let job = store
        .claim("w", t(2), LEASE, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.kind == JobKind::SyncConnections)
        .unwrap();
    let mut v2 = vehicle("v2");
    v2.model = Some("Model Y".into());
    let out = store
        .finish_sync(&job, "u1", &[v2, vehicle("v3"), vehicle("v4")], t(2))
        .await
        .unwrap();
    assert_eq!(out.new_vehicles, ["v4"]);
    assert_eq!(out.vanished, ["v1"]);
    let v1 = store.vehicle("v1").await.unwrap().unwrap();
    assert_eq!(v1.status, VehicleStatus::Disconnected);
    assert_eq!(v1.status_reason.as_deref(), Some("absent from connections"));
    assert_eq!(v1.status_changed_at, t(2));
    let v2 = store.vehicle("v2").await.unwrap().unwrap();
    assert_eq!(v2.status, VehicleStatus::BillingLimited);
    assert_eq!(v2.model.as_deref(), Some("Model Y"));
    assert_eq!(v2.last_seen_at, t(2));
    let v3 = store.vehicle("v3").await.unwrap().unwrap();
    assert_eq!(v3.status, VehicleStatus::NeedsReconnect);

    // The third sync brings v1 back: connected again, reason cleared; vanished is not
    // reported twice.
    store
        .enqueue(JobKind::SyncConnections, "u1", t(3))
        .await
        .unwrap();
    let job = store
        .claim("w", t(3), LEASE, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.kind == JobKind::SyncConnections)
        .unwrap();
    let out = store
        .finish_sync(
            &job,
            "u1",
            &[vehicle("v1"), vehicle("v2"), vehicle("v3")],
            t(3),
        )
        .await
        .unwrap();
    assert!(out.new_vehicles.is_empty());
    assert_eq!(out.vanished, ["v4"]);
    let v1 = store.vehicle("v1").await.unwrap().unwrap();
    assert_eq!(v1.status, VehicleStatus::Connected);
    assert_eq!(v1.status_reason, None);
    assert_eq!(v1.status_changed_at, t(3));
    assert_eq!(store.list_vehicles().await.unwrap().len(), 4);
}

async fn a_lost_lease_rolls_back_the_whole_poll(store: Store) {
    user_with_vehicles(&store, "u1", &["v1"]).await;
    let stale = claim_one(&store, t(1)).await.expect("poll job");
    let fresh = claim_one(&store, t(100))
        .await
        .expect("reclaimed after expiry");
    let poll = PollResult {
        vehicle_id: "v1".into(),
        samples: vec![sample("v1", "odometer", t(0), 1.0)],
        statuses: vec![SignalState {
            vehicle_id: "v1".into(),
            code: "odometer".into(),
            status: "SUCCESS".into(),
            error_type: None,
            error_code: None,
            observed_at: t(1),
        }],
        polled_at: t(1),
        plan: None,
    };
    assert!(matches!(
        store.finish_poll(&stale, &poll).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(store.sample_count().await.unwrap(), 0, "nothing written");
    assert_eq!(
        store.vehicle("v1").await.unwrap().unwrap().last_polled_at,
        None
    );

    let out = store.finish_poll(&fresh, &poll).await.unwrap();
    assert_eq!(out.samples_inserted, 1);
    let v1 = store.vehicle("v1").await.unwrap().unwrap();
    assert_eq!(v1.last_polled_at, Some(t(1)));
    assert_eq!(store.open_jobs(None).await.unwrap(), 0);
}

/// Polls finishing together share one transaction (group commit): the one whose lease was lost
/// writes nothing and gets `LeaseLost`; every other poll of the batch commits.
async fn a_group_commit_keeps_every_poll_but_the_one_whose_lease_was_lost(store: Store) {
    let vehicles = ["g1", "g2", "g3", "g4", "g5", "g6"];
    user_with_vehicles(&store, "u1", &vehicles).await;
    let jobs = store.claim("test", t(1), LEASE, 10).await.unwrap();
    assert_eq!(jobs.len(), vehicles.len());
    let mut tasks = Vec::new();
    for job in jobs {
        let mut job = job;
        let lost = job.subject == "g3";
        if lost {
            // Another claim holds this job now: this worker's token no longer fences it.
            job.lease_owner = "test:0:stale".into();
        }
        let poll = PollResult {
            vehicle_id: job.subject.clone(),
            samples: vec![sample(&job.subject, "odometer", t(0), 1.5)],
            statuses: Vec::new(),
            polled_at: t(1),
            plan: None,
        };
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            (lost, s.finish_poll(&job, &poll).await)
        }));
    }
    for task in tasks {
        match task.await.unwrap() {
            (true, r) => assert!(matches!(r, Err(StoreError::LeaseLost { .. })), "{r:?}"),
            (false, r) => assert_eq!(r.unwrap().samples_inserted, 1),
        }
    }
    assert_eq!(store.sample_count().await.unwrap(), 5);
    for v in vehicles {
        let polled = store.vehicle(v).await.unwrap().unwrap().last_polled_at;
        assert_eq!(polled, (v != "g3").then(|| t(1)), "{v}");
    }
    // Only the lost poll's job is still open (its real claim has not finished).
    assert_eq!(store.open_jobs(None).await.unwrap(), 1);
}

async fn record_tick_lets_exactly_one_caller_win_a_tick(store: Store) {
    assert_eq!(store.last_tick("poll").await.unwrap(), None);
    assert!(store.record_tick("poll", t(60)).await.unwrap());
    assert!(!store.record_tick("poll", t(60)).await.unwrap());
    assert!(!store.record_tick("poll", t(0)).await.unwrap());
    assert_eq!(store.last_tick("poll").await.unwrap(), Some(t(60)));

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(
            async move { s.record_tick("poll", t(120)).await },
        ));
    }
    let mut winners = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(store.last_tick("poll").await.unwrap(), Some(t(120)));
    assert_eq!(store.last_tick("sync").await.unwrap(), None);
}

async fn timestamps_round_trip_at_microsecond_precision(store: Store) {
    let precise = t(0) + chrono::Duration::nanoseconds(123_456_789);
    let micros = t(0) + chrono::Duration::microseconds(123_456);
    store
        .enqueue(JobKind::DiscoverUsers, "", precise)
        .await
        .unwrap();
    let job = claim_one(&store, precise)
        .await
        .expect("due at its own run_at");
    assert_eq!(job.run_at, micros);
    assert!(store.record_tick("s", precise).await.unwrap());
    assert_eq!(store.last_tick("s").await.unwrap(), Some(micros));
    // One microsecond later sorts later.
    assert!(
        store
            .record_tick("s", micros + chrono::Duration::microseconds(1))
            .await
            .unwrap()
    );
    assert_eq!(
        store.next_wake(t(0)).await.unwrap(),
        Some(micros + chrono::Duration::seconds(30))
    );
}

async fn sample_partitions_are_managed(store: Store) {
    let now = Utc.with_ymd_and_hms(2031, 6, 10, 0, 0, 0).unwrap();
    let created = store.ensure_partitions(now, 2).await.unwrap();
    if store.backend_name() == "postgres" {
        // Both tables, month by month: hot `samples` and `samples_cold` (migration 0012).
        assert_eq!(
            created,
            [
                "signal_samples_203105",
                "samples_cold_203105",
                "signal_samples_203106",
                "samples_cold_203106",
                "signal_samples_203107",
                "samples_cold_203107",
                "signal_samples_203108",
                "samples_cold_203108"
            ]
        );
        assert!(store.ensure_partitions(now, 2).await.unwrap().is_empty());
        // A month whose rows already sit in the default partition is skipped, not an error.
        let sept = Utc.with_ymd_and_hms(2031, 9, 3, 0, 0, 0).unwrap();
        store
            .ingest_samples(&[sample("v1", "x", sept, 1.0)], &[])
            .await
            .unwrap();
        // (The cold table's September is free: its default partition holds nothing then.)
        assert_eq!(
            store.ensure_partitions(now, 4).await.unwrap(),
            [
                "samples_cold_203109",
                "signal_samples_203110",
                "samples_cold_203110"
            ]
        );
    } else {
        assert!(created.is_empty());
    }
    let may = Utc.with_ymd_and_hms(2031, 5, 20, 0, 0, 0).unwrap();
    let june = Utc.with_ymd_and_hms(2031, 6, 20, 0, 0, 0).unwrap();
    store
        .ingest_samples(
            &[sample("v1", "x", may, 1.0), sample("v1", "x", june, 2.0)],
            &[],
        )
        .await
        .unwrap();
    // May's reading moves to cold; retention drops it from there too.
    let may_end = Utc.with_ymd_and_hms(2031, 6, 1, 0, 0, 0).unwrap();
    let moved = store.compact_samples(may_end).await.unwrap();
    if store.backend_name() == "postgres" {
        assert_eq!(moved, 1);
    }
    let before = store.sample_count().await.unwrap();
    let dropped = store.drop_partitions_before(may_end).await.unwrap();
    if store.backend_name() == "postgres" {
        for name in ["signal_samples_203105", "samples_cold_203105"] {
            assert!(dropped.contains(&name.to_owned()), "{dropped:?}");
        }
        assert!(!dropped.contains(&"signal_samples_203106".to_owned()));
        assert!(!dropped.contains(&"samples_cold_203106".to_owned()));
    }
    assert_eq!(store.sample_count().await.unwrap(), before - 1);
}

async fn discovery_adds_users_and_enqueues_their_syncs(store: Store) {
    store.add_user("known", UserSource::Cli).await.unwrap();
    store
        .enqueue(JobKind::DiscoverUsers, "", t(0))
        .await
        .unwrap();
    let job = claim_one(&store, t(0)).await.unwrap();
    let ids: Vec<String> = ["u2", "known", "u1", "u2"].map(String::from).to_vec();
    let new = store.finish_discovery(&job, &ids, t(0)).await.unwrap();
    assert_eq!(new, ["u1", "u2"]);
    assert_eq!(
        store
            .open_jobs(Some(JobKind::SyncConnections))
            .await
            .unwrap(),
        2
    );
    let users = store.list_users().await.unwrap();
    assert_eq!(users.len(), 3);
    assert_eq!(users[1].source, UserSource::Discovery);
    assert_eq!(
        store
            .add_users(&["u1".into(), "u3".into()], UserSource::Webhook)
            .await
            .unwrap(),
        1
    );
    assert!(!store.add_user("u3", UserSource::Cli).await.unwrap());
}

async fn vehicle_status_decides_pollability(store: Store) {
    user_with_vehicles(&store, "u1", &["v1", "v2", "v3"]).await;
    // Finish the three initial polls.
    for job in store.claim("w", t(1), LEASE, 10).await.unwrap() {
        let poll = PollResult {
            vehicle_id: job.subject.clone(),
            samples: vec![],
            statuses: vec![],
            polled_at: t(1),
            plan: None,
        };
        store.finish_poll(&job, &poll).await.unwrap();
    }
    assert_eq!(
        store.oldest_poll_of_pollable(t(2)).await.unwrap(),
        Some(t(1))
    );

    assert_eq!(
        store.enqueue_polls_for_pollable(t(2), None).await.unwrap(),
        3
    );
    let jobs = store.claim("w", t(2), LEASE, 10).await.unwrap();
    let job_for = |v: &str| jobs.iter().find(|j| j.subject == v).unwrap().clone();
    let update = |status, blocked_until| VehicleStatusUpdate {
        status,
        reason: "says the API".into(),
        request_id: Some("req-7".into()),
        blocked_until,
        at: t(2),
    };
    store
        .finish_vehicle_status(
            &job_for("v1"),
            "v1",
            &update(VehicleStatus::PermissionDenied, None),
        )
        .await
        .unwrap();
    store
        .finish_vehicle_status(
            &job_for("v2"),
            "v2",
            &update(VehicleStatus::BillingLimited, Some(t(100))),
        )
        .await
        .unwrap();
    store.complete(&job_for("v3")).await.unwrap();
    let v1 = store.vehicle("v1").await.unwrap().unwrap();
    assert_eq!(v1.status, VehicleStatus::PermissionDenied);
    assert_eq!(v1.status_reason.as_deref(), Some("says the API"));
    assert_eq!(v1.status_request_id.as_deref(), Some("req-7"));
    assert_eq!(v1.status_changed_at, t(2));

    // v1 is not pollable, v2 is blocked until t(100), v3 is.
    assert_eq!(
        store.enqueue_polls_for_pollable(t(3), None).await.unwrap(),
        1
    );
    let job = claim_one(&store, t(3)).await.unwrap();
    assert_eq!(job.subject, "v3");
    store.complete(&job).await.unwrap();
    assert_eq!(
        store
            .enqueue_polls_for_pollable(t(100), None)
            .await
            .unwrap(),
        2
    );

    // A successful poll makes v2 connected again and clears its block.
    let job = store
        .claim("w", t(100), LEASE, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.subject == "v2")
        .unwrap();
    let poll = PollResult {
        vehicle_id: "v2".into(),
        samples: vec![],
        statuses: vec![],
        polled_at: t(100),
        plan: None,
    };
    store.finish_poll(&job, &poll).await.unwrap();
    let v2 = store.vehicle("v2").await.unwrap().unwrap();
    assert_eq!(v2.status, VehicleStatus::Connected);
    assert_eq!((v2.blocked_until, v2.status_reason), (None, None));
    assert_eq!(v2.last_polled_at, Some(t(100)));
    // Freshness: v3 was last polled at t(1) (its t(3) job was completed without a poll).
    assert_eq!(
        store.oldest_poll_of_pollable(t(100)).await.unwrap(),
        Some(t(1))
    );
}

async fn removing_a_user_removes_vehicles_and_open_jobs_but_keeps_samples(store: Store) {
    user_with_vehicles(&store, "u1", &["v1"]).await;
    user_with_vehicles(&store, "u2", &["v2"]).await;
    store
        .ingest_samples(&[sample("v1", "odometer", t(0), 5.0)], &[])
        .await
        .unwrap();
    let running = store
        .claim("w", t(1), LEASE, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.subject == "v1")
        .unwrap();
    assert!(store.remove_user("u1").await.unwrap());
    assert!(!store.remove_user("u1").await.unwrap());
    assert!(store.vehicle("v1").await.unwrap().is_none());
    assert_eq!(
        store.vehicle_owner("v2").await.unwrap().as_deref(),
        Some("u2")
    );
    assert_eq!(store.sample_count().await.unwrap(), 1);
    assert!(matches!(
        store.complete(&running).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(store.list_users().await.unwrap().len(), 1);
}

async fn observability_counts_and_pruning(store: Store) {
    store
        .enqueue(JobKind::DiscoverUsers, "", t(0))
        .await
        .unwrap();
    store
        .enqueue(JobKind::PollSignals, "v1", t(0))
        .await
        .unwrap();
    store
        .enqueue(JobKind::PollSignals, "v2", t(0))
        .await
        .unwrap();
    let job = claim_one(&store, t(0)).await.unwrap();
    store.complete(&job).await.unwrap();
    let counts = store.queue_counts().await.unwrap();
    let total: i64 = counts.iter().map(|c| c.2).sum();
    assert_eq!(total, 3);
    assert!(counts.iter().any(|c| c.1 == "done" && c.2 == 1));
    assert_eq!(
        store
            .prune_finished_jobs(Utc::now() - chrono::Duration::hours(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .prune_finished_jobs(Utc::now() + chrono::Duration::hours(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.open_jobs(None).await.unwrap(), 2);
    assert_eq!(store.oldest_poll_of_pollable(t(0)).await.unwrap(), None);
}

/// Two pools (two daemons) claiming from one queue never get the same job.
async fn two_claimers_never_get_the_same_job(db: &TestDb) {
    let a = db.store().await;
    let b = db.store().await;
    for i in 0..150 {
        a.enqueue(JobKind::PollSignals, &format!("v{i}"), t(0))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for (n, store) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let jobs = store.claim(&format!("c{n}"), t(1), LEASE, 3).await.unwrap();
                if jobs.is_empty() {
                    break;
                }
                mine.extend(jobs.into_iter().map(|j| j.id));
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for task in tasks {
        for id in task.await.unwrap() {
            total += 1;
            assert!(seen.insert(id), "job {id} claimed twice");
        }
    }
    assert_eq!(total, 150);
    a.close().await;
    b.close().await;
}

mod two_claimers {
    use super::{TestDb, two_claimers_never_get_the_same_job};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let db = TestDb::sqlite().await;
        two_claimers_never_get_the_same_job(&db).await;
        db.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(db) = TestDb::postgres().await else {
            return;
        };
        two_claimers_never_get_the_same_job(&db).await;
        db.finish().await;
    }
}

#[tokio::test]
async fn an_in_memory_sqlite_database_works_and_bad_urls_are_refused() {
    let store = Store::connect("sqlite::memory:", &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.backend_name(), "sqlite");
    store.add_user("u1", UserSource::Cli).await.unwrap();
    assert_eq!(store.list_users().await.unwrap().len(), 1);
    let err = Store::connect("mysql://user:secret@h/db", &StoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::BadUrl(_)));
    assert!(!err.to_string().contains("secret"));
    assert!(!err.is_transient());
}

/// Readings over three days of 2030-01 (three series), some with bodies that must be stored.
fn history() -> Vec<NewSample> {
    let mut out = Vec::new();
    for h in 0..72 {
        let at = t(h * 3600 + 7);
        out.push(sample("v1", "odometer", at, 1000.0 + h as f64));
        out.push(sample("v2", "odometer", at, 2000.5 + h as f64));
        let mut loc = sample("v1", "location", at, 0.0);
        loc.value_num = None;
        loc.unit = None;
        loc.body = format!(r#"{{"latitude":{h},"longitude":-{h}.5}}"#);
        loc.source = SampleSource::Webhook;
        out.push(loc);
    }
    out
}

/// Compaction moves readings and changes no answer of `signal_samples`; the watermark only goes
/// forward, and compacting again moves nothing. SQLite: a no-op.
async fn compaction_changes_no_answer_and_never_moves_back(store: Store) {
    let all = history();
    assert_eq!(
        store.ingest_samples(&all, &[]).await.unwrap() as usize,
        all.len()
    );
    let before = store.list_samples().await.unwrap();
    let pg = store.backend_name() == "postgres";
    assert_eq!(store.compacted_before().await.unwrap(), None);
    // A day and a half: 36 hours of three series.
    let moved = store.compact_samples(t(36 * 3600)).await.unwrap();
    assert_eq!(moved, if pg { 36 * 3 } else { 0 });
    assert_eq!(store.list_samples().await.unwrap(), before);
    assert_eq!(store.sample_count().await.unwrap() as usize, all.len());
    if pg {
        assert_eq!(store.compacted_before().await.unwrap(), Some(t(36 * 3600)));
    }
    // Not back: an earlier `before` moves nothing and leaves the watermark.
    assert_eq!(store.compact_samples(t(3600)).await.unwrap(), 0);
    assert_eq!(store.compact_samples(t(36 * 3600)).await.unwrap(), 0);
    if pg {
        assert_eq!(store.compacted_before().await.unwrap(), Some(t(36 * 3600)));
    }
    // Everything, in several one-hour transactions.
    let moved = store.compact_samples(t(100 * 3600)).await.unwrap();
    assert_eq!(moved, if pg { 36 * 3 } else { 0 });
    assert_eq!(store.list_samples().await.unwrap(), before);
    if pg {
        assert_eq!(store.compacted_before().await.unwrap(), Some(t(100 * 3600)));
    }
    // Sent again, below the watermark now: nothing stored twice.
    assert_eq!(store.ingest_samples(&all, &[]).await.unwrap(), 0);
    assert_eq!(store.list_samples().await.unwrap(), before);
}

/// A reading older than the watermark that cold already holds is not stored again, by a poll,
/// by a group-committed poll or by a webhook (twice in one batch included); a new old reading is
/// stored once, in cold, and reads back; a reading after the watermark still goes to hot.
async fn an_old_reading_is_stored_once_in_cold(store: Store) {
    let pg = store.backend_name() == "postgres";
    let a = sample("v1", "odometer", t(0), 100.0);
    let b = sample("v1", "odometer", t(60), 101.0);
    assert_eq!(
        store
            .ingest_samples(&[a.clone(), b.clone()], &[])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store.compact_samples(t(3600)).await.unwrap(),
        if pg { 2 } else { 0 }
    );
    let listed = store.list_samples().await.unwrap();

    // The parked car's last reading again, as a poll (twice in one batch).
    let mut again = a.clone();
    again.value_num = Some(999.0);
    again.body = r#"{"value":999}"#.into();
    assert_eq!(
        store
            .ingest_samples(&[again.clone(), again.clone()], &[])
            .await
            .unwrap(),
        0
    );
    // ... as a group-committed poll.
    user_with_vehicles(&store, "u1", &["v1"]).await;
    let job = claim_one(&store, t(1)).await.expect("poll job");
    let new_old = sample("v1", "odometer", t(30), 100.5);
    let poll = PollResult {
        vehicle_id: "v1".into(),
        samples: vec![a.clone(), b.clone(), new_old.clone(), new_old.clone()],
        statuses: vec![],
        polled_at: t(4000),
        plan: None,
    };
    assert_eq!(
        store
            .finish_poll(&job, &poll)
            .await
            .unwrap()
            .samples_inserted,
        1
    );
    // ... and as a webhook.
    let delivery = smartcar_sync::store::WebhookDelivery {
        event_id: "e1",
        event_type: "VEHICLE_STATE",
        vehicle_id: Some("v1"),
        user_id: Some("u1"),
    };
    let mut pushed = new_old.clone();
    pushed.source = SampleSource::Webhook;
    let out = store
        .ingest_webhook_delivery(&delivery, &[pushed, again], &[], &[], t(4000))
        .await
        .unwrap()
        .expect("a new delivery");
    assert_eq!(out.samples_inserted, 0);

    let now = store.list_samples().await.unwrap();
    assert_eq!(now.len(), listed.len() + 1);
    let stored = now
        .iter()
        .find(|r| r.recorded_at == t(30))
        .expect("the new old reading");
    assert_eq!(stored.value_num, Some(100.5));
    // (JSONB text on PostgreSQL: a space after the colon.)
    assert_eq!(stored.body.replace(' ', ""), r#"{"value":100.5}"#);
    for r in &listed {
        assert!(now.contains(r), "{r:?} unchanged");
    }

    // After the watermark: hot as before, and still stored once.
    let fresh = sample("v1", "odometer", t(7200), 102.0);
    assert_eq!(
        store
            .ingest_samples(std::slice::from_ref(&fresh), &[])
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.ingest_samples(&[fresh], &[]).await.unwrap(), 0);
    assert_eq!(
        store.sample_count().await.unwrap() as usize,
        listed.len() + 2
    );
}

/// Ingest running while a backlog is compacted slice by slice (one hour per transaction): every
/// reading ends up stored exactly once, whichever side of the moving watermark it fell on.
async fn ingest_between_compaction_slices_loses_and_duplicates_nothing(store: Store) {
    let all = history();
    let (first, second) = all.split_at(all.len() / 2);
    assert_eq!(
        store.ingest_samples(first, &[]).await.unwrap() as usize,
        first.len()
    );
    let compactor = {
        let store = store.clone();
        tokio::spawn(async move { store.compact_samples(t(100 * 3600)).await })
    };
    // The second half in small batches, each sent twice, while the compactor runs; then the
    // first half again.
    let writer = {
        let store = store.clone();
        let second = second.to_vec();
        let first = first.to_vec();
        tokio::spawn(async move {
            let mut n = 0;
            for chunk in second.chunks(5) {
                n += store.ingest_samples(chunk, &[]).await?;
                // Compacted right behind it (a second compactor), then sent again.
                let last = chunk[chunk.len() - 1].recorded_at;
                store
                    .compact_samples(last + chrono::Duration::seconds(1))
                    .await?;
                n += store.ingest_samples(chunk, &[]).await?;
                tokio::task::yield_now().await;
            }
            for chunk in first.chunks(7) {
                n += store.ingest_samples(chunk, &[]).await?;
            }
            Ok::<u64, StoreError>(n)
        })
    };
    let written = writer.await.unwrap().unwrap();
    compactor.await.unwrap().unwrap();
    assert_eq!(written as usize, second.len());
    // Whatever was left hot by the race, compact it too, then check.
    store.compact_samples(t(100 * 3600)).await.unwrap();
    let listed = store.list_samples().await.unwrap();
    assert_eq!(listed.len(), all.len());
    let mut keys: Vec<_> = listed
        .iter()
        .map(|r| (r.vehicle_id.clone(), r.code.clone(), r.recorded_at))
        .collect();
    keys.dedup();
    assert_eq!(keys.len(), all.len(), "no reading twice");
    assert_eq!(store.sample_count().await.unwrap() as usize, all.len());
}
