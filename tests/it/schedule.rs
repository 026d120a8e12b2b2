//! The schedule's bookkeeping, once per backend: catch-up at start, one enqueue per tick across
//! daemons, and the stall watchdog.

use std::sync::Arc;

use chrono::{Duration, Utc};
use smartcar_sync::schedule::{Schedule, Which};
use smartcar_sync::store::{JobKind, Store, UserSource};
use tokio::sync::Notify;

use crate::support;

/// A schedule over `store` with its own wake-up (nothing listens to it here).
fn new_schedule(connections: &str, signals: &str, discover: bool, store: &Store) -> Schedule {
    Schedule::new(
        connections,
        signals,
        discover,
        store.clone(),
        Arc::new(Notify::new()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_first_start_catches_up_once_and_a_restart_does_not_repeat_it() {
    for db in support::databases().await {
        let store = db.store().await;
        store.add_user("u1", UserSource::Cli).await.unwrap();
        let schedule = new_schedule("0 0 * * * *", "0 */30 * * * *", true, &store);
        let now = Utc::now();
        schedule.catch_up(now).await.unwrap();
        assert!(
            store.last_tick("connections").await.unwrap().is_some(),
            "{}",
            db.backend
        );
        assert!(store.last_tick("signals").await.unwrap().is_some());
        assert_eq!(
            store
                .open_jobs(Some(JobKind::SyncConnections))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store.open_jobs(Some(JobKind::DiscoverUsers)).await.unwrap(),
            1
        );
        // A restart within the same period: nothing was missed, nothing is enqueued again.
        let again = new_schedule("0 0 * * * *", "0 */30 * * * *", true, &store);
        again.catch_up(now + Duration::seconds(5)).await.unwrap();
        let ticks = store.queue_counts().await.unwrap();
        let total: i64 = ticks.iter().map(|(_, _, n)| n).sum();
        assert_eq!(total, 2, "{}: {ticks:?}", db.backend);
        store.close().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn two_daemons_firing_the_same_tick_enqueue_it_once() {
    for db in support::databases().await {
        let store = db.store().await;
        store.add_user("u1", UserSource::Cli).await.unwrap();
        let a = new_schedule("0 0 * * * *", "0 */30 * * * *", false, &store);
        let b = new_schedule("0 0 * * * *", "0 */30 * * * *", false, &store);
        let tick = Utc::now();
        let (na, nb) = tokio::join!(
            a.fire(Which::Connections, tick),
            b.fire(Which::Connections, tick)
        );
        let (na, nb) = (na.unwrap(), nb.unwrap());
        assert_eq!(
            na + nb,
            1,
            "{}: exactly one daemon enqueued the tick",
            db.backend
        );
        assert!(na == 0 || nb == 0);
        store.close().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_schedule_silent_for_two_periods_is_detected_and_its_tick_fired() {
    for db in support::databases().await {
        let store = db.store().await;
        store.add_user("u1", UserSource::Cli).await.unwrap();
        // Every 10 s; the last tick was a minute ago: the scheduler has stalled.
        let schedule = new_schedule("*/10 * * * * *", "*/10 * * * * *", false, &store);
        let long_ago = Utc::now() - Duration::seconds(60);
        schedule.fire(Which::Connections, long_ago).await.unwrap();
        schedule.fire(Which::Signals, long_ago).await.unwrap();
        store.prune_finished_jobs(Utc::now()).await.unwrap();
        let stalled = schedule.check_stalls(Utc::now()).await;
        assert_eq!(stalled, vec!["connections", "signals"], "{}", db.backend);
        let last = store.last_tick("connections").await.unwrap().unwrap();
        assert!(
            last > long_ago + Duration::seconds(40),
            "the missed tick was fired"
        );
        // Fired again just now: not stalled any more.
        assert!(schedule.check_stalls(Utc::now()).await.is_empty());
        assert!(schedule.is_firing());
        store.close().await;
        db.cleanup().await;
    }
}
