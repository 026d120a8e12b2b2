//! Request counters: lock-free atomics on the hot path, a serialisable snapshot for checks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What the simulator has seen since start (or the last reset).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterSnapshot {
    pub token_requests: u64,
    /// Token requests answered `invalid_client` or `invalid_request`.
    pub token_rejected: u64,
    /// Most token requests in flight at once (a single-flight client keeps this at 1).
    pub token_concurrent_peak: u64,
    /// Every non-token call.
    pub api_calls: u64,
    /// Most non-token calls in flight at once (a client's concurrency cap shows here).
    pub api_concurrent_peak: u64,
    /// The time non-token calls spent in the simulator, summed over calls, in microseconds
    /// (from the request read to the response built, the configured latency included). Divided
    /// by a run's length it is the mean number of calls in flight at the simulator.
    pub api_busy_us: u64,
    pub connections_calls: u64,
    pub vehicle_calls: u64,
    pub signals_calls: u64,
    pub signal_calls: u64,
    pub responses_429_app: u64,
    pub responses_429_vehicle: u64,
    /// Calls that arrived while a `Retry-After` the simulator gave was still in force (app-wide
    /// for app 429s, per vehicle for vehicle 429s).
    pub calls_before_retry_after: u64,
    /// Calls with a token whose lifetime had passed.
    pub expired_token_calls: u64,
    /// Calls without a token, or with one the simulator never issued.
    pub unknown_token_calls: u64,
    /// Injected 500/502/503 and injected "expired" 401s.
    pub injected_errors: u64,
    pub slow_responses: u64,
    /// SUCCESS signals returned by `/signals` and the single-signal endpoint.
    pub signals_served: u64,
    /// Responses by HTTP status (token endpoint included).
    pub by_status: BTreeMap<u16, u64>,
}

const STATUS_SLOTS: usize = 600;

#[derive(Default)]
pub(crate) struct Counters {
    pub token_requests: AtomicU64,
    pub token_rejected: AtomicU64,
    pub token_in_flight: AtomicU64,
    pub token_concurrent_peak: AtomicU64,
    pub api_calls: AtomicU64,
    pub api_in_flight: AtomicU64,
    pub api_concurrent_peak: AtomicU64,
    pub api_busy_us: AtomicU64,
    pub connections_calls: AtomicU64,
    pub vehicle_calls: AtomicU64,
    pub signals_calls: AtomicU64,
    pub signal_calls: AtomicU64,
    pub responses_429_app: AtomicU64,
    pub responses_429_vehicle: AtomicU64,
    pub calls_before_retry_after: AtomicU64,
    pub expired_token_calls: AtomicU64,
    pub unknown_token_calls: AtomicU64,
    pub injected_errors: AtomicU64,
    pub slow_responses: AtomicU64,
    pub signals_served: AtomicU64,
    by_status: StatusCounts,
}

struct StatusCounts(Vec<AtomicU64>);

impl Default for StatusCounts {
    fn default() -> Self {
        StatusCounts((0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect())
    }
}

/// Increments a counter.
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl Counters {
    pub(crate) fn status(&self, status: u16) {
        if let Some(c) = self.by_status.0.get(status as usize) {
            inc(c);
        }
    }

    /// Marks a token request in flight; the guard ends it (also when the request is dropped).
    pub(crate) fn token_start(&self) -> TokenGuard<'_> {
        let now = self.token_in_flight.fetch_add(1, Relaxed) + 1;
        self.token_concurrent_peak.fetch_max(now, Relaxed);
        TokenGuard(&self.token_in_flight)
    }

    /// Marks an API call in flight; the guard ends it and adds its time to `api_busy_us` (also
    /// when the request is dropped).
    pub(crate) fn api_start(&self) -> ApiGuard<'_> {
        let now = self.api_in_flight.fetch_add(1, Relaxed) + 1;
        self.api_concurrent_peak.fetch_max(now, Relaxed);
        ApiGuard {
            counters: self,
            started: std::time::Instant::now(),
        }
    }

    pub(crate) fn snapshot(&self) -> CounterSnapshot {
        let g = |c: &AtomicU64| c.load(Relaxed);
        CounterSnapshot {
            token_requests: g(&self.token_requests),
            token_rejected: g(&self.token_rejected),
            token_concurrent_peak: g(&self.token_concurrent_peak),
            api_calls: g(&self.api_calls),
            api_concurrent_peak: g(&self.api_concurrent_peak),
            api_busy_us: g(&self.api_busy_us),
            connections_calls: g(&self.connections_calls),
            vehicle_calls: g(&self.vehicle_calls),
            signals_calls: g(&self.signals_calls),
            signal_calls: g(&self.signal_calls),
            responses_429_app: g(&self.responses_429_app),
            responses_429_vehicle: g(&self.responses_429_vehicle),
            calls_before_retry_after: g(&self.calls_before_retry_after),
            expired_token_calls: g(&self.expired_token_calls),
            unknown_token_calls: g(&self.unknown_token_calls),
            injected_errors: g(&self.injected_errors),
            slow_responses: g(&self.slow_responses),
            signals_served: g(&self.signals_served),
            by_status: self
                .by_status
                .0
                .iter()
                .enumerate()
                .filter_map(|(s, c)| {
                    let n = g(c);
                    (n > 0).then_some((s as u16, n))
                })
                .collect(),
        }
    }

    pub(crate) fn reset(&self) {
        for c in [
            &self.token_requests,
            &self.token_rejected,
            &self.token_concurrent_peak,
            &self.api_calls,
            &self.api_concurrent_peak,
            &self.api_busy_us,
            &self.connections_calls,
            &self.vehicle_calls,
            &self.signals_calls,
            &self.signal_calls,
            &self.responses_429_app,
            &self.responses_429_vehicle,
            &self.calls_before_retry_after,
            &self.expired_token_calls,
            &self.unknown_token_calls,
            &self.injected_errors,
            &self.slow_responses,
            &self.signals_served,
        ] {
            c.store(0, Relaxed);
        }
        for c in &self.by_status.0 {
            c.store(0, Relaxed);
        }
    }
}

/// Ends an in-flight mark when dropped.
pub(crate) struct TokenGuard<'a>(&'a AtomicU64);

impl Drop for TokenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Ends an API call's in-flight mark and counts its time when dropped.
pub(crate) struct ApiGuard<'a> {
    counters: &'a Counters,
    started: std::time::Instant,
}

impl Drop for ApiGuard<'_> {
    fn drop(&mut self) {
        let us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.counters.api_busy_us.fetch_add(us, Relaxed);
        self.counters.api_in_flight.fetch_sub(1, Relaxed);
    }
}
