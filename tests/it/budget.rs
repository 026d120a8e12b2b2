//! The shared rate budget's bookkeeping on both backends: live processes split the rate, a
//! throttle storm is one event, and a dead process's jobs are retaken within seconds, fenced.
//! (Throughput against a real-sized bucket is a benchmark: `cargo bench --bench budget`.)

use std::time::Duration;

use chrono::Utc;
use smartcar_sync::store::{DaemonBeat, JobKind};

use crate::support;

fn beat(id: &str) -> DaemonBeat {
    DaemonBeat {
        daemon_id: id.to_owned(),
        kind: "run",
        host: "test".to_owned(),
        pid: 1,
        started_at: Utc::now(),
        calls: 0,
        throttled_app: 0,
        throttled_vehicle: 0,
    }
}

const STALE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn live_processes_are_counted_and_a_dead_ones_jobs_are_retaken_at_once() {
    for db in support::databases().await {
        let store = db.store().await;
        let b = db.backend;
        let now = Utc::now();
        let a = store.heartbeat(&beat("aaaa"), now, STALE).await.unwrap();
        assert_eq!(a.live, 1, "{b}");
        let view = store.heartbeat(&beat("bbbb"), now, STALE).await.unwrap();
        assert_eq!(view.live, 2, "{b}");
        assert_eq!(store.live_daemons(now, STALE).await.unwrap().len(), 2);

        // `aaaa` claims a job with a 120 s lease, then dies (stops heartbeating).
        store
            .enqueue(JobKind::PollSignals, "v-1", now)
            .await
            .unwrap();
        let claimed = store
            .claim("aaaa", now, Duration::from_secs(120), 1)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "{b}");
        let later = now + chrono::Duration::seconds(6);
        assert!(
            store
                .claim("bbbb", later, Duration::from_secs(120), 1)
                .await
                .unwrap()
                .is_empty(),
            "{b}: the lease still holds"
        );
        let view = store.heartbeat(&beat("bbbb"), later, STALE).await.unwrap();
        assert_eq!((view.live, view.reclaimed_jobs), (1, 1), "{b}");
        let retaken = store
            .claim("bbbb", later, Duration::from_secs(120), 1)
            .await
            .unwrap();
        assert_eq!(
            retaken.len(),
            1,
            "{b}: retaken 6 s after the death, not 120"
        );
        assert_eq!(retaken[0].id, claimed[0].id);
        // Fenced: the "dead" one, had it only been slow, can no longer complete it.
        assert!(store.complete(&claimed[0]).await.is_err(), "{b}");
        store.complete(&retaken[0]).await.unwrap();

        // Deregistering returns the share at once.
        store.deregister("bbbb").await.unwrap();
        assert!(store.live_daemons(later, STALE).await.unwrap().is_empty());
        store.close().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_throttle_storm_is_recorded_once() {
    for db in support::databases().await {
        let store = db.store().await;
        let now = Utc::now();
        assert_eq!(store.last_app_throttle().await.unwrap(), None);
        let dedupe = Duration::from_secs(2);
        assert!(store.record_app_throttle(now, 0.9, dedupe).await.unwrap());
        // Another process's 429 from the same storm: not a second decrease.
        let soon = now + chrono::Duration::milliseconds(500);
        assert!(!store.record_app_throttle(soon, 0.63, dedupe).await.unwrap());
        let (at, f) = store.last_app_throttle().await.unwrap().unwrap();
        assert_eq!(f, 0.9, "{}", db.backend);
        assert!((at - now).num_milliseconds().abs() < 1);
        let later = now + chrono::Duration::seconds(10);
        assert!(store.record_app_throttle(later, 0.7, dedupe).await.unwrap());
        store.close().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_running_daemon_heartbeats_and_shows_its_share() {
    let db = crate::support::TestDb::sqlite().await;
    let sim = support::simulator(smartcar_sim::SimConfig::default()).await;
    let mut config = support::config(&sim, &db.url);
    config.rate_limit.requests_per_minute = 600;
    config.rate_limit.burst = 10;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let one = smartcar_sync::daemon::Daemon::start(config.clone(), &shutdown)
        .await
        .unwrap();
    let two = smartcar_sync::daemon::Daemon::start_as("sync-once", config, &shutdown)
        .await
        .unwrap();
    let split = support::eventually(Duration::from_secs(10), || async {
        let a = one.client().budget().unwrap().snapshot();
        let b = two.client().budget().unwrap().snapshot();
        a.live_daemons == 2 && b.live_daemons == 2
    })
    .await;
    assert!(split, "both see two live processes");
    let s = one.client().budget().unwrap().snapshot();
    assert!(
        (s.own_per_minute - 600.0 * smartcar_sync::budget::RATE_HEADROOM / 2.0).abs() < 0.01,
        "{s:?}"
    );
    assert_eq!(s.own_burst, 2, "{s:?}");
    // Stopping deregisters: the row is gone at once.
    shutdown.cancel();
    two.close().await;
    let rows = one.store().live_daemons(Utc::now(), STALE).await.unwrap();
    assert!(rows.iter().all(|r| r.daemon_id != two.identity().daemon_id));
    one.store().close().await;
    sim.shutdown().await;
}
