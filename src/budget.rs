//! One rate budget for the whole application, shared by every process that calls the API.
//!
//! Smartcar meters one token bucket per application (`[rate_limit]`: 120 requests refilling 2 a
//! minute as documented). Three things make a limiter configured to exactly that bucket fail:
//!
//! 1. **No margin.** A local bucket as large as the server's has no room for timing skew: the
//!    server sees calls a little bunched (network, scheduling) and answers 429 `SMARTCAR_API`,
//!    and each of those pauses the whole application for at least a second. So the local limiter
//!    keeps [`RATE_HEADROOM`] of the rate and [`BURST_HEADROOM`] of the burst (chosen by
//!    measurement, `cargo bench --bench budget`; see the README).
//! 2. **Several processes.** Every `run` daemon and `sync-once` on one database heartbeats a
//!    row (`daemons`) every [`HEARTBEAT`]; the live ones split the rate and the burst evenly (a
//!    starting process waits one heartbeat, [`join`], so the others count it first). A
//!    process that stops heartbeating for [`STALE_AFTER`] is dead: its share returns to the
//!    others at their next heartbeat, and its running jobs are handed back at once (fenced, so
//!    nothing it might still write counts).
//! 3. **A smaller real bucket** (Smartcar changed it, another tool uses the same application).
//!    After a 429 `SMARTCAR_API` the rate drops to [`DECREASE`] of what it was, climbs back
//!    quickly to [`SETTLE`] of that level, then probes upward slowly. The throttle is stored
//!    (`rate_budget`), so every process derives the same rate and one 429 storm counts once. The
//!    rate converges just under the real bucket instead of swinging between bursts and pauses.
//!
//! The limiter itself is governor's GCRA, replaced (starting empty, so a change never adds a
//! burst) when the share or the adaptive factor moves by more than 1 %. No call waits on the
//! database: the heartbeat runs beside the calls.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::smartcar::RateLimit;
use crate::store::{BudgetView, DaemonBeat, Store};

/// Share of the configured rate the daemons send at, all together.
pub const RATE_HEADROOM: f64 = 0.99;
/// Share of the configured burst the daemons may spend at once, all together.
pub const BURST_HEADROOM: f64 = 0.5;
/// After a throttle, the rate drops to this fraction of the rate it happened at…
pub const DECREASE: f64 = 0.7;
/// …climbs back to this fraction of it within a few seconds…
pub const SETTLE: f64 = 0.95;
/// …at this many configured-rates a second…
const CLIMB_PER_S: f64 = 0.05;
/// …and then probes upward at this many configured-rates a second.
const PROBE_PER_S: f64 = 0.002;
/// The adaptive factor never goes below this.
const FLOOR: f64 = 0.05;
/// How often each process reports and re-reads its share.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A process silent this long is dead.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// Throttles recorded within this of each other are one event.
const THROTTLE_DEDUPE: Duration = Duration::from_secs(2);

/// The fraction of the configured rate the application may use at `now`, given the last
/// throttle (when, and at what fraction).
pub fn adaptive_factor(throttled: Option<(DateTime<Utc>, f64)>, now: DateTime<Utc>) -> f64 {
    let Some((at, level)) = throttled else {
        return 1.0;
    };
    let dt = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
    let low = DECREASE * level;
    let settle = SETTLE * level;
    let climb_s = ((settle - low) / CLIMB_PER_S).max(0.0);
    let f = if dt < climb_s {
        low + CLIMB_PER_S * dt
    } else {
        settle + PROBE_PER_S * (dt - climb_s)
    };
    f.clamp(FLOOR, 1.0)
}

/// What the budget looks like from this process now (`status`, `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSnapshot {
    /// `[rate_limit] requests_per_minute` and `burst`.
    pub configured_per_minute: f64,
    pub configured_burst: u32,
    /// The adaptive factor in force (1.0 = not throttled).
    pub factor: f64,
    /// The application's rate now, all processes together (headroom and factor applied).
    pub application_per_minute: f64,
    /// This process's part of it.
    pub own_per_minute: f64,
    pub own_burst: u32,
    pub live_daemons: i64,
    pub calls: u64,
    pub throttled_app: u64,
    pub throttled_vehicle: u64,
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    factor: f64,
    live: i64,
    throttled: Option<(DateTime<Utc>, f64)>,
}

/// This process's limiter and counters. Cheap to share (`Arc`).
pub struct Budget {
    configured: RateLimit,
    /// The limiter in force and its generation (bumped on every replacement).
    limiter: RwLock<(u64, Arc<DefaultDirectRateLimiter>)>,
    shape: Mutex<Shape>,
    calls: AtomicU64,
    throttled_app: AtomicU64,
    throttled_vehicle: AtomicU64,
    /// A local throttle not yet written to the database (the fraction it happened at).
    unreported: Mutex<Option<(DateTime<Utc>, f64)>>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// (per-process rate a minute, per-process burst) for a factor and a number of processes.
fn own_quota(configured: RateLimit, factor: f64, live: i64) -> (f64, u32) {
    let live = live.max(1) as f64;
    let rate = f64::from(configured.requests_per_minute.get()) * RATE_HEADROOM * factor / live;
    let burst = (f64::from(configured.burst.get()) * BURST_HEADROOM / live).floor();
    (rate.max(0.01), burst.max(1.0) as u32)
}

/// A GCRA limiter for `per_minute` with `burst`; `empty`: its burst already spent (a
/// replacement must not add a burst on top of what the old one let through).
fn limiter(per_minute: f64, burst: u32, empty: bool) -> DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64((60.0 / per_minute).clamp(1e-6, 86_400.0));
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    let l = RateLimiter::direct(quota);
    if empty {
        let _ = l.check_n(burst);
    }
    l
}

impl Budget {
    /// A budget for `configured`, as if this process were alone and unthrottled until its
    /// first heartbeat says otherwise. The first limiter starts full: a lone process may burst.
    pub fn new(configured: RateLimit) -> Arc<Budget> {
        let (rate, burst) = own_quota(configured, 1.0, 1);
        let first = limiter(rate, burst, false);
        Arc::new(Budget {
            configured,
            limiter: RwLock::new((0, Arc::new(first))),
            shape: Mutex::new(Shape {
                factor: 1.0,
                live: 1,
                throttled: None,
            }),
            calls: AtomicU64::new(0),
            throttled_app: AtomicU64::new(0),
            throttled_vehicle: AtomicU64::new(0),
            unreported: Mutex::new(None),
        })
    }

    /// Waits for this process's next token. A call that waited on a limiter replaced meanwhile
    /// waits again on the new one: otherwise the old limiter's waiters and the new limiter's
    /// callers would both be let through, a burst the server answers with 429s.
    pub async fn acquire(&self) {
        loop {
            let (generation, current) = self
                .limiter
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            current.until_ready().await;
            let now = self.limiter.read().unwrap_or_else(|e| e.into_inner()).0;
            if now == generation {
                break;
            }
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// A 429 `SMARTCAR_API`: slow down now, and tell the others at the next heartbeat.
    pub fn throttled_app(&self, now: DateTime<Utc>) {
        self.throttled_app.fetch_add(1, Ordering::Relaxed);
        let factor = {
            let shape = self.shape.lock().unwrap_or_else(|e| e.into_inner());
            // A throttle right after one already applied is the same event.
            if shape
                .throttled
                .is_some_and(|(at, _)| now - at < chrono::Duration::seconds(2))
            {
                return;
            }
            shape.factor
        };
        *self.unreported.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, factor));
        let mut shape = *self.shape.lock().unwrap_or_else(|e| e.into_inner());
        shape.throttled = Some((now, factor));
        self.reshape(shape.live, shape.throttled, now);
    }

    /// A 429 `RATE_LIMIT/VEHICLE` (counted; it does not change the application's rate).
    pub fn throttled_vehicle(&self) {
        self.throttled_vehicle.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies the number of live processes and the last throttle.
    fn reshape(&self, live: i64, throttled: Option<(DateTime<Utc>, f64)>, now: DateTime<Utc>) {
        let factor = adaptive_factor(throttled, now);
        let mut shape = self.shape.lock().unwrap_or_else(|e| e.into_inner());
        let (old_rate, old_burst) = own_quota(self.configured, shape.factor, shape.live);
        let (rate, burst) = own_quota(self.configured, factor, live);
        *shape = Shape {
            factor,
            live,
            throttled,
        };
        if (rate - old_rate).abs() > old_rate * 0.01 || burst != old_burst {
            let mut current = self.limiter.write().unwrap_or_else(|e| e.into_inner());
            *current = (current.0 + 1, Arc::new(limiter(rate, burst, true)));
        }
    }

    /// What this process reports with its heartbeat.
    fn beat(&self, id: &Identity) -> DaemonBeat {
        let n = |a: &AtomicU64| i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        DaemonBeat {
            daemon_id: id.daemon_id.clone(),
            kind: id.kind,
            host: id.host.clone(),
            pid: i64::from(std::process::id()),
            started_at: id.started_at,
            calls: n(&self.calls),
            throttled_app: n(&self.throttled_app),
            throttled_vehicle: n(&self.throttled_vehicle),
        }
    }

    pub fn snapshot(&self) -> BudgetSnapshot {
        let shape = *self.shape.lock().unwrap_or_else(|e| e.into_inner());
        let (own, own_burst) = own_quota(self.configured, shape.factor, shape.live);
        BudgetSnapshot {
            configured_per_minute: f64::from(self.configured.requests_per_minute.get()),
            configured_burst: self.configured.burst.get(),
            factor: shape.factor,
            application_per_minute: own * shape.live as f64,
            own_per_minute: own,
            own_burst,
            live_daemons: shape.live,
            calls: self.calls.load(Ordering::Relaxed),
            throttled_app: self.throttled_app.load(Ordering::Relaxed),
            throttled_vehicle: self.throttled_vehicle.load(Ordering::Relaxed),
        }
    }
}

/// Who this process is in the `daemons` table.
#[derive(Debug, Clone)]
pub struct Identity {
    /// 16 hex digits from the OS's random source; the prefix of every lease this process takes.
    pub daemon_id: String,
    pub kind: &'static str,
    pub host: String,
    pub started_at: DateTime<Utc>,
}

impl Identity {
    pub fn new(kind: &'static str) -> Identity {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            bytes = fastrand::u64(..).to_le_bytes();
        }
        Identity {
            daemon_id: hex::encode(bytes),
            kind,
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            started_at: Utc::now(),
        }
    }
}

/// Joins the processes sharing the budget, before this one sends anything: registers, waits one
/// heartbeat (and a little) so that every other process counts it at its next heartbeat, then
/// takes its share. Without the wait, two processes starting together would each send at the
/// whole rate for up to a second, and the 429s that follow cost far more than the wait.
pub async fn join(store: &Store, id: &Identity, budget: &Budget) {
    if store
        .heartbeat(&budget.beat(id), Utc::now(), STALE_AFTER)
        .await
        .is_err()
    {
        return; // the heartbeat loop keeps trying; meanwhile the lone-process share applies
    }
    tokio::time::sleep(HEARTBEAT + Duration::from_millis(250)).await;
    let now = Utc::now();
    match store.heartbeat(&budget.beat(id), now, STALE_AFTER).await {
        Ok(view) => apply(budget, &view, now),
        Err(e) => tracing::warn!(error = %e, "heartbeat failed; starting with the whole rate"),
    }
}

/// Heartbeats every [`HEARTBEAT`] until `shutdown`, applying what each one says to `budget`
/// (when there is one), then deregisters. A failed heartbeat keeps the last shape: a database
/// hiccup must not stop the calls.
pub async fn heartbeat_loop(
    store: Store,
    id: Identity,
    budget: Option<Arc<Budget>>,
    wake: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(HEARTBEAT);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle = Budget::idle();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        let now = Utc::now();
        let b = budget.as_deref().unwrap_or(&idle);
        let unreported = b
            .unreported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((at, factor)) = unreported
            && let Err(e) = store.record_app_throttle(at, factor, THROTTLE_DEDUPE).await
        {
            tracing::warn!(error = %e, "cannot record the throttle; retrying at the next heartbeat");
            *b.unreported.lock().unwrap_or_else(|e| e.into_inner()) = Some((at, factor));
        }
        match store.heartbeat(&b.beat(&id), now, STALE_AFTER).await {
            Ok(view) => {
                apply(b, &view, now);
                if view.reclaimed_jobs > 0 {
                    wake.notify_waiters();
                    wake.notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; keeping the current share"),
        }
        crate::events::budget(&b.snapshot());
    }
    if let Err(e) = store.deregister(&id.daemon_id).await {
        tracing::warn!(error = %e, "cannot deregister; the others take over after 5 s");
    }
}

fn apply(budget: &Budget, view: &BudgetView, now: DateTime<Utc>) {
    // A local throttle newer than the stored one wins until it is stored.
    let local = budget
        .shape
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .throttled;
    let throttled = match (view.throttled, local) {
        (Some(a), Some(b)) => Some(if a.0 >= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    budget.reshape(view.live, throttled, now);
}

impl Budget {
    /// A budget for a process with no rate limit: it still heartbeats (for takeover).
    fn idle() -> Budget {
        let unlimited = RateLimit {
            requests_per_minute: NonZeroU32::MAX,
            burst: NonZeroU32::MAX,
        };
        Budget {
            configured: unlimited,
            limiter: RwLock::new((
                0,
                Arc::new(RateLimiter::direct(Quota::per_second(NonZeroU32::MAX))),
            )),
            shape: Mutex::new(Shape {
                factor: 1.0,
                live: 1,
                throttled: None,
            }),
            calls: AtomicU64::new(0),
            throttled_app: AtomicU64::new(0),
            throttled_vehicle: AtomicU64::new(0),
            unreported: Mutex::new(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rl(rpm: u32, burst: u32) -> RateLimit {
        RateLimit {
            requests_per_minute: NonZeroU32::new(rpm).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[test]
    fn the_rate_is_split_evenly_with_headroom() {
        let (rate, burst) = own_quota(rl(4800, 10), 1.0, 1);
        assert!((rate - 4800.0 * RATE_HEADROOM).abs() < 1e-6);
        assert_eq!(burst, 5);
        let (rate4, burst4) = own_quota(rl(4800, 10), 1.0, 4);
        assert!((rate4 * 4.0 - rate).abs() < 1e-6);
        assert_eq!(burst4, 1, "never below one");
    }

    #[test]
    fn after_a_throttle_the_factor_drops_climbs_back_and_then_probes() {
        let t0 = Utc::now();
        assert_eq!(adaptive_factor(None, t0), 1.0);
        let at = |s: f64| t0 + chrono::Duration::milliseconds((s * 1000.0) as i64);
        let f = |s| adaptive_factor(Some((t0, 1.0)), at(s));
        assert!((f(0.0) - DECREASE).abs() < 1e-9);
        assert!(f(2.0) > f(1.0));
        // Settles near 95 % of where it was throttled within a few seconds…
        let settle_s = (SETTLE - DECREASE) / CLIMB_PER_S;
        assert!((f(settle_s) - SETTLE).abs() < 1e-6);
        // …then probes slowly: 30 s later it is still below the throttled level.
        assert!(f(settle_s + 20.0) < 1.0);
        assert!(f(settle_s + 20.0) > SETTLE);
        assert_eq!(f(10_000.0), 1.0);
        // Never below the floor.
        assert_eq!(adaptive_factor(Some((t0, 0.01)), t0), FLOOR);
    }
}
