//! Shared state of one simulator: immutable settings, runtime knobs, the fleet, limiters, issued
//! tokens, counters. Std locks held only for a few microseconds, never across an await.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::config::{
    Behaviour, Faults, RetryAfterForm, SimConfig, TimestampFormat, Variants, VehicleAllowance,
};
use super::counters::Counters;
use super::delay::Delays;
use super::fleet::{Fleet, VehicleView};
use super::ids::{self, TAG_REQUEST};
use super::limits::{AppLimiter, VehicleThrottle};
use super::readings::{Reading, Sampler, signal_set};
use super::served::ServedLog;

/// At most this many secrets are live at once (§1).
pub(crate) const MAX_SECRETS: usize = 3;

pub(crate) struct Inner {
    pub seed: u64,
    pub client_id: String,
    pub token_lifetime: Duration,
    pub period_ms: i64,
    pub latency: Duration,
    /// Waits out `latency` to the microsecond (see `delay.rs`).
    pub delays: Delays,
    pub vehicle_min_interval: Option<Duration>,
    pub variants: Variants,
    pub record_served: bool,
    pub management_token: String,
    pub allowance: Option<VehicleAllowance>,
    pub allowance_log: Mutex<AllowanceLog>,
    /// Vehicle index → webhook ids it is subscribed to (§8).
    pub subscriptions: Mutex<BTreeMap<u32, BTreeSet<String>>>,
    pub webhook_url: Option<String>,
    pub webhook_every: Duration,
    pub secrets: Mutex<Vec<String>>,
    pub faults: Mutex<Faults>,
    pub app_limiter: Mutex<AppLimiter>,
    pub vehicle_throttle: Mutex<VehicleThrottle>,
    /// Issued tokens and their expiry.
    pub tokens: Mutex<HashMap<String, Instant>>,
    pub fleet: RwLock<Fleet>,
    pub served: Mutex<ServedLog>,
    pub counters: Counters,
    /// Continuation pages of `/signals` still to be failed with 404 (see
    /// `Simulator::fail_next_signal_pages`).
    continuation_failures: AtomicU64,
    /// Every how many application-wide `/connections` pages one answers 500 (0: none), and
    /// the count of such pages so far (see `Simulator::fail_every_nth_app_connections_page`).
    app_page_failure_every: AtomicU64,
    app_pages: AtomicU64,
    request_seq: AtomicU64,
    request_salt: u64,
}

/// Every vehicle-scoped call the allowance saw: counts per (vehicle, period) and each call.
#[derive(Default)]
pub(crate) struct AllowanceLog {
    pub counts: HashMap<(u32, i64), u32>,
    pub calls: Vec<AllowanceCall>,
}

/// One vehicle-scoped call under the allowance.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AllowanceCall {
    pub vehicle_id: String,
    /// Wall clock, epoch ms.
    pub at_ms: i64,
    /// The allowance period it fell in (`at_ms / period_ms`).
    pub period: i64,
    /// `false`: answered 430.
    pub admitted: bool,
}

/// Locks, shrugging off poisoning: the protected data stays consistent between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    pub(crate) fn new(c: SimConfig) -> Inner {
        let mut secrets = c.client_secrets;
        secrets.truncate(MAX_SECRETS);
        Inner {
            seed: c.seed,
            client_id: c.client_id,
            token_lifetime: c.token_lifetime,
            period_ms: (c.update_period.as_millis() as i64).max(1),
            latency: c.latency,
            delays: Delays::new(),
            vehicle_min_interval: c.vehicle_min_interval,
            variants: c.variants,
            record_served: c.record_served,
            management_token: c.management_token,
            allowance: c.allowance,
            allowance_log: Mutex::new(AllowanceLog::default()),
            subscriptions: Mutex::new(BTreeMap::new()),
            webhook_url: c.webhook_url,
            webhook_every: c.webhook_every,
            secrets: Mutex::new(secrets),
            faults: Mutex::new(c.faults),
            app_limiter: Mutex::new(AppLimiter::new(c.app_bucket)),
            vehicle_throttle: Mutex::new(VehicleThrottle::default()),
            tokens: Mutex::new(HashMap::new()),
            fleet: RwLock::new({
                let mut f = Fleet::generate(c.seed, c.users, c.vehicles_per_user);
                if c.behaviour_thirds {
                    for (i, v) in f.vehicles.iter_mut().enumerate() {
                        v.set_behaviour(Some(match i % 3 {
                            0 => Behaviour::Parked,
                            1 => Behaviour::Charging,
                            _ => Behaviour::Driving,
                        }));
                    }
                }
                f
            }),
            served: Mutex::new(ServedLog::default()),
            counters: Counters::default(),
            continuation_failures: AtomicU64::new(0),
            app_page_failure_every: AtomicU64::new(0),
            app_pages: AtomicU64::new(0),
            request_seq: AtomicU64::new(0),
            request_salt: fastrand::u64(..),
        }
    }

    pub(crate) fn fleet(&self) -> RwLockReadGuard<'_, Fleet> {
        self.fleet.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn fleet_mut(&self) -> RwLockWriteGuard<'_, Fleet> {
        self.fleet.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A unique request id (UUID-shaped).
    pub(crate) fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        ids::fmt_uuid(ids::uuid(self.request_salt, TAG_REQUEST, n))
    }

    /// Vehicle by id, with its owner's user id.
    pub(crate) fn vehicle(&self, id: &str) -> Option<(VehicleView, String)> {
        let fleet = self.fleet();
        let v = fleet.view(fleet.vehicle_by_id(id)?)?;
        Some((v, fleet.user_id(v.user).to_owned()))
    }

    /// The form of `Retry-After` on 429s.
    pub(crate) fn retry_after_form(&self) -> RetryAfterForm {
        if self.variants.retry_after_http_date {
            RetryAfterForm::HttpDate
        } else {
            self.variants.retry_after_form
        }
    }

    /// Current readings of every signal the vehicle exposes.
    pub(crate) fn readings(&self, v: &VehicleView, now_ms: i64, imperial: bool) -> Vec<Reading> {
        let s = Sampler::new(self.seed, *v, self.period_ms, imperial);
        signal_set(v)
            .into_iter()
            .map(|d| {
                let mut r = s.reading(d, now_ms);
                super::shapes::vary(&self.variants, &mut r, v.index);
                r
            })
            .collect()
    }

    /// Arms the next `n` continuation-page requests (`page[number]` > 1) of `/signals` to fail.
    pub(crate) fn fail_continuation_pages(&self, n: u64) {
        self.continuation_failures.store(n, Ordering::SeqCst);
    }

    /// Whether this continuation-page request must fail (and counts it if so).
    pub(crate) fn take_continuation_failure(&self) -> bool {
        self.continuation_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Every `n`-th application-wide connections page from now on answers 500 (0: none).
    pub(crate) fn fail_every_nth_app_page(&self, n: u64) {
        self.app_pages.store(0, Ordering::SeqCst);
        self.app_page_failure_every.store(n, Ordering::SeqCst);
    }

    /// Counts an application-wide connections page; whether it must fail.
    pub(crate) fn take_app_page_failure(&self) -> bool {
        let every = self.app_page_failure_every.load(Ordering::SeqCst);
        every > 0 && (self.app_pages.fetch_add(1, Ordering::SeqCst) + 1) % every == 0
    }

    /// Records served readings (when enabled) at the precision of `fmt`.
    pub(crate) fn record(&self, v: &VehicleView, readings: &[Reading], fmt: TimestampFormat) {
        if !self.record_served {
            return;
        }
        let precision = if fmt == TimestampFormat::EpochSeconds {
            1000
        } else {
            1
        };
        lock(&self.served).record(v.index, v.id, readings, precision);
    }

    /// Counts a vehicle-scoped call against the vehicle's allowance; `false`: past it (430).
    pub(crate) fn admit_allowance(&self, v: &VehicleView, now_ms: i64) -> bool {
        let Some(a) = self.allowance else {
            return true;
        };
        let period_ms = i64::try_from(a.period.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let period = now_ms.div_euclid(period_ms);
        let mut log = lock(&self.allowance_log);
        let n = log.counts.entry((v.index, period)).or_insert(0);
        let admitted = *n < a.calls;
        if admitted {
            *n += 1;
        }
        log.calls.push(AllowanceCall {
            vehicle_id: ids::fmt_uuid(v.id),
            at_ms: now_ms,
            period,
            admitted,
        });
        admitted
    }

    /// Remembers an issued token; forgets long-expired ones once the map grows large.
    pub(crate) fn issue_token(&self, token: String) {
        let now = Instant::now();
        let mut tokens = lock(&self.tokens);
        if tokens.len() > 50_000 {
            let keep_after = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
            tokens.retain(|_, exp| *exp > keep_after);
        }
        tokens.insert(token, now + self.token_lifetime);
    }
}
