//! Observable events: each one emits its log line and its metric together, so the two never
//! disagree (the pattern of vector's `internal_events`). `/metrics` renders [`render`].
//!
//! The registry is process-wide: there is one daemon per process, and tests that share a
//! process only ever read deltas.

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    endpoint: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    event_type: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabels {
    schedule: &'static str,
}

struct Metrics {
    registry: Registry,
    api_calls: Family<ApiLabels, Counter>,
    rate_limited: Family<ScopeLabels, Counter>,
    token_requests: Family<OutcomeLabels, Counter>,
    jobs: Family<JobLabels, Counter>,
    job_seconds: Family<KindLabels, Histogram>,
    samples: Family<SourceLabels, Counter>,
    webhooks: Family<WebhookLabels, Counter>,
    queue_depth: Family<StateLabels, Gauge>,
    ticks: Family<ScheduleLabels, Counter>,
    stalls: Family<ScheduleLabels, Counter>,
    since_cycle: Gauge<f64, std::sync::atomic::AtomicU64>,
    rate_configured: Gauge<f64, std::sync::atomic::AtomicU64>,
    rate_application: Gauge<f64, std::sync::atomic::AtomicU64>,
    rate_own: Gauge<f64, std::sync::atomic::AtomicU64>,
    rate_factor: Gauge<f64, std::sync::atomic::AtomicU64>,
    live_daemons: Gauge,
    rate_tokens_used: Gauge,
    allowance_calls: Counter,
    allowance_skipped: Family<OutcomeLabels, Counter>,
    allowance_interval: Family<StateLabels, Histogram>,
    allowance_planned: Counter,
    subscriptions: Family<OutcomeLabels, Counter>,
    group_commit_seconds: Histogram,
    group_commit_delay: Histogram,
    group_commit_polls: Counter,
    sqlite_writer_seconds: Family<PhaseLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
}

/// Group commit durations, with a bucket at the 50 ms the design bounds a commit's delay by.
const GROUP_COMMIT_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("smartcar_sync");
        let api_calls = Family::<ApiLabels, Counter>::default();
        registry.register(
            "api_calls",
            "Smartcar API calls by endpoint and status class",
            api_calls.clone(),
        );
        let rate_limited = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "429 answers by scope (app or vehicle)",
            rate_limited.clone(),
        );
        let token_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "token_requests",
            "Token endpoint requests by outcome",
            token_requests.clone(),
        );
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register("jobs", "Finished job runs by kind and outcome", jobs.clone());
        let job_seconds = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "job_duration_seconds",
            "Job run time by kind",
            job_seconds.clone(),
        );
        let samples = Family::<SourceLabels, Counter>::default();
        registry.register(
            "samples_stored",
            "Signal samples newly stored, by source",
            samples.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_events",
            "Webhook deliveries by event type and outcome",
            webhooks.clone(),
        );
        let queue_depth = Family::<StateLabels, Gauge>::default();
        registry.register("queue_depth", "Jobs by state", queue_depth.clone());
        let ticks = Family::<ScheduleLabels, Counter>::default();
        registry.register("schedule_ticks", "Schedule ticks handled", ticks.clone());
        let stalls = Family::<ScheduleLabels, Counter>::default();
        registry.register(
            "schedule_stalls",
            "Schedules found not firing for two periods",
            stalls.clone(),
        );
        let since_cycle = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "seconds_since_last_cycle",
            "Age of the oldest last-poll among pollable vehicles (a full cycle completed that long ago)",
            since_cycle.clone(),
        );
        let gauge_f64 = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            registry.register(name, help, g.clone());
            g
        };
        let rate_configured = gauge_f64(
            &mut registry,
            "rate_configured_per_minute",
            "The application's rate as configured ([rate_limit] requests_per_minute)",
        );
        let rate_application = gauge_f64(
            &mut registry,
            "rate_application_per_minute",
            "The rate all processes together keep to now (headroom and adaptive factor applied)",
        );
        let rate_own = gauge_f64(
            &mut registry,
            "rate_own_per_minute",
            "This process's share of the application's rate",
        );
        let rate_factor = gauge_f64(
            &mut registry,
            "rate_adaptive_factor",
            "Fraction of the configured rate allowed after the last 429 SMARTCAR_API (1 = none)",
        );
        let live_daemons = Gauge::default();
        registry.register(
            "live_daemons",
            "Processes sharing the rate budget on this database",
            live_daemons.clone(),
        );
        let rate_tokens_used = Gauge::default();
        registry.register(
            "rate_tokens_used",
            "Rate tokens (API calls) this process has used since it started",
            rate_tokens_used.clone(),
        );
        let allowance_calls = Counter::default();
        registry.register(
            "allowance_calls",
            "API calls counted against vehicles' allowances (retries and 429s included)",
            allowance_calls.clone(),
        );
        let allowance_skipped = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "allowance_polls_skipped",
            "Planned polls not sent: readings pushed within the interval, or the allowance spent",
            allowance_skipped.clone(),
        );
        let allowance_interval = Family::<StateLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 18))
        });
        registry.register(
            "allowance_interval_seconds",
            "Planned poll intervals by vehicle state",
            allowance_interval.clone(),
        );
        let allowance_planned = Counter::default();
        registry.register(
            "allowance_polls_planned",
            "Polls the planner tick enqueued at their planned time",
            allowance_planned.clone(),
        );
        let subscriptions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_subscriptions",
            "Management API subscription calls by outcome",
            subscriptions.clone(),
        );
        let group_commit_seconds = Histogram::new(GROUP_COMMIT_BUCKETS);
        registry.register(
            "group_commit_duration_seconds",
            "Group commits (several polls in one transaction), from the start of the flush to \
             its commit, waiting for the database included",
            group_commit_seconds.clone(),
        );
        let group_commit_delay = Histogram::new(GROUP_COMMIT_BUCKETS);
        registry.register(
            "group_commit_delay_seconds",
            "Each poll's commit delay: from the moment it was queued for a group commit to the \
             commit of its batch (the flushes under way when it came included)",
            group_commit_delay.clone(),
        );
        let group_commit_polls = Counter::default();
        registry.register(
            "group_commit_polls",
            "Polls committed by group commits",
            group_commit_polls.clone(),
        );
        let sqlite_writer_seconds =
            Family::<PhaseLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "sqlite_writer_seconds",
            "SQLite's single writer: seconds writers waited for it and seconds it was held \
             (a rate of held seconds near 1 means the writer is saturated)",
            sqlite_writer_seconds.clone(),
        );
        Metrics {
            group_commit_seconds,
            group_commit_delay,
            group_commit_polls,
            sqlite_writer_seconds,
            allowance_calls,
            allowance_skipped,
            allowance_interval,
            allowance_planned,
            subscriptions,
            rate_configured,
            rate_application,
            rate_own,
            rate_factor,
            live_daemons,
            rate_tokens_used,
            registry,
            api_calls,
            rate_limited,
            token_requests,
            jobs,
            job_seconds,
            samples,
            webhooks,
            queue_depth,
            ticks,
            stalls,
            since_cycle,
        }
    })
}

/// Prometheus text exposition of every metric.
pub fn render() -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &metrics().registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// How an API call ended, as the `class` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallClass {
    Success,
    /// 401: the token was refused (the client refreshes it once and retries).
    Unauthorized,
    /// 429: the application's or the vehicle's rate limit.
    RateLimited,
    /// Any other 4xx (and 1xx/3xx, which the API never sends).
    ClientError,
    ServerError,
    /// No answer: timeout, refused, reset.
    NoAnswer,
}

impl CallClass {
    /// The class of an HTTP status.
    pub fn of_status(status: u16) -> CallClass {
        match status {
            200..=299 => CallClass::Success,
            401 => CallClass::Unauthorized,
            429 => CallClass::RateLimited,
            500..=599 => CallClass::ServerError,
            _ => CallClass::ClientError,
        }
    }

    /// The `class` label of `smartcar_api_calls_total`: 401s and 429s count as `4xx` there
    /// (they have their own metrics); the per-token audit keeps them apart.
    pub fn as_str(self) -> &'static str {
        match self {
            CallClass::Success => "2xx",
            CallClass::Unauthorized | CallClass::RateLimited | CallClass::ClientError => "4xx",
            CallClass::ServerError => "5xx",
            CallClass::NoAnswer => "error",
        }
    }
}

/// An API call's answer (the token endpoint apart).
pub fn api_call(endpoint: &'static str, class: CallClass) {
    let class = class.as_str();
    metrics()
        .api_calls
        .get_or_create(&ApiLabels { endpoint, class })
        .inc();
    tracing::debug!(endpoint, class, "api call");
}

/// Whose limit a 429 reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    /// The application's bucket (`SMARTCAR_API`): every process pauses.
    App,
    /// One vehicle's throttle: that vehicle's poll waits.
    Vehicle,
}

impl RateScope {
    pub fn as_str(self) -> &'static str {
        match self {
            RateScope::App => "app",
            RateScope::Vehicle => "vehicle",
        }
    }
}

/// A 429, app-wide or for one vehicle.
pub fn rate_limited(scope: RateScope, until: DateTime<Utc>, request_id: Option<&str>) {
    let scope = scope.as_str();
    metrics()
        .rate_limited
        .get_or_create(&ScopeLabels { scope })
        .inc();
    tracing::warn!(scope, until = %until, request_id, "rate limited by Smartcar");
}

/// How a token endpoint request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOutcome {
    Issued,
    /// The credentials were refused (`invalid_client`): retrying will not help.
    Rejected,
    /// A transient failure (5xx, timeout): retried with backoff.
    Failed,
}

impl TokenOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenOutcome::Issued => "ok",
            TokenOutcome::Rejected => "rejected",
            TokenOutcome::Failed => "failed",
        }
    }
}

/// A token endpoint request finished. The refresher logs the details (expiry, the error); this
/// is the count and one debug line.
pub fn token_request(outcome: TokenOutcome) {
    let outcome = outcome.as_str();
    metrics()
        .token_requests
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
    tracing::debug!(outcome, "token request");
}

/// How a job run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Done,
    /// Failed transiently: back to pending at its backoff.
    Retry,
    /// Waits for something not its fault (a 429, a pause, no token) without using an attempt.
    Deferred,
    /// Out of attempts, or a failure retrying cannot fix.
    Dead,
    /// A permanent answer about the vehicle (403, 404, 430, 501): its status was set.
    VehicleStatus,
    /// Given back at shutdown.
    Released,
    /// Its lease was taken over: this run's result was dropped.
    Lost,
}

impl JobOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Done => "done",
            JobOutcome::Retry => "retry",
            JobOutcome::Deferred => "deferred",
            JobOutcome::Dead => "dead",
            JobOutcome::VehicleStatus => "vehicle_status",
            JobOutcome::Released => "released",
            JobOutcome::Lost => "lost",
        }
    }
}

/// A job run ended: its count and duration, and one debug line (the job's own span carries its
/// id and subject; `settle` logs failures with their error and request id).
pub fn job_finished(kind: crate::store::JobKind, outcome: JobOutcome, took: Duration) {
    let (kind, outcome) = (kind.as_str(), outcome.as_str());
    let m = metrics();
    m.jobs.get_or_create(&JobLabels { kind, outcome }).inc();
    m.job_seconds
        .get_or_create(&KindLabels { kind })
        .observe(took.as_secs_f64());
    tracing::debug!(
        kind,
        outcome,
        took_ms = took.as_millis() as u64,
        "job finished"
    );
}

/// Where samples came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleOrigin {
    Poll,
    Webhook,
}

/// New samples were committed.
pub fn samples_stored(origin: SampleOrigin, n: u64) {
    let source = match origin {
        SampleOrigin::Poll => "poll",
        SampleOrigin::Webhook => "webhook",
    };
    if n > 0 {
        metrics()
            .samples
            .get_or_create(&SourceLabels { source })
            .inc_by(n);
    }
    tracing::debug!(source, stored = n, "samples stored");
}

/// The event types a webhook label may name; anything else is `other` (or `unknown` before the
/// body was verified and parsed). Label values come only from closed sets: an unauthenticated
/// client must not be able to add a time series, let alone break the exposition with `"`, `}`
/// or a newline.
pub fn webhook_event_label(event_type: &str) -> &'static str {
    match event_type {
        "VERIFY" => "VERIFY",
        "VEHICLE_STATE" => "VEHICLE_STATE",
        "VEHICLE_ERROR" => "VEHICLE_ERROR",
        "" | "unknown" => "unknown",
        _ => "other",
    }
}

/// How a webhook request was answered (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookAnswer {
    /// A new delivery, durably stored.
    Stored,
    /// A redelivery of an event already stored: nothing written.
    Duplicate,
    /// A `VERIFY` challenge answered.
    Verified,
    /// An event type this daemon does not handle, acknowledged so Smartcar stops retrying.
    Ignored,
    /// The body is not the envelope the contract describes.
    Malformed,
    MissingSignature,
    BadSignature,
    /// A `VERIFY` challenge that is not an opaque token.
    BadChallenge,
    /// A `VERIFY` outside the window after start or reload.
    VerifyClosed,
    /// No management token to check signatures with.
    NotConfigured,
    /// The database did not take it: Smartcar will redeliver.
    Failed,
    TooLarge,
    TooSlow,
    /// Too many body bytes in flight over all connections.
    Busy,
    /// The body broke off.
    BrokenBody,
}

impl WebhookAnswer {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookAnswer::Stored => "stored",
            WebhookAnswer::Duplicate => "duplicate",
            WebhookAnswer::Verified => "verified",
            WebhookAnswer::Ignored => "ignored",
            WebhookAnswer::Malformed => "malformed",
            WebhookAnswer::MissingSignature => "missing_signature",
            WebhookAnswer::BadSignature => "bad_signature",
            WebhookAnswer::BadChallenge => "bad_challenge",
            WebhookAnswer::VerifyClosed => "verify_closed",
            WebhookAnswer::NotConfigured => "not_configured",
            WebhookAnswer::Failed => "failed",
            WebhookAnswer::TooLarge => "rejected_too_large",
            WebhookAnswer::TooSlow => "rejected_too_slow",
            WebhookAnswer::Busy => "rejected_busy",
            WebhookAnswer::BrokenBody => "rejected_body",
        }
    }
}

/// A webhook request was answered. `event_type` is whatever the body said; it is reduced to
/// [`webhook_event_label`] for both the metric and the log line.
pub fn webhook(event_type: &str, answer: WebhookAnswer) {
    let event_type = webhook_event_label(event_type);
    let outcome = answer.as_str();
    metrics()
        .webhooks
        .get_or_create(&WebhookLabels {
            event_type,
            outcome,
        })
        .inc();
    tracing::info!(event_type, outcome, "webhook");
}

/// The queue's depth by state, sampled when `/metrics` is scraped.
pub fn queue_depth(state: &'static str, n: i64) {
    metrics()
        .queue_depth
        .get_or_create(&StateLabels { state })
        .set(n);
}

/// Seconds since the last full cycle, sampled when `/metrics` is scraped.
pub fn since_last_cycle(seconds: f64) {
    metrics().since_cycle.set(seconds);
}

/// The rate budget after a heartbeat. Logged when the share or the factor changed.
pub fn budget(b: &crate::budget::BudgetSnapshot) {
    let m = metrics();
    let before = (m.live_daemons.get(), m.rate_factor.get());
    m.rate_configured.set(b.configured_per_minute);
    m.rate_application.set(b.application_per_minute);
    m.rate_own.set(b.own_per_minute);
    m.rate_factor.set(b.factor);
    m.live_daemons.set(b.live_daemons);
    m.rate_tokens_used
        .set(i64::try_from(b.calls).unwrap_or(i64::MAX));
    if before.0 != b.live_daemons || (before.1 - b.factor).abs() >= 0.05 {
        tracing::info!(
            live_daemons = b.live_daemons,
            factor = format!("{:.2}", b.factor),
            application_per_minute = format!("{:.1}", b.application_per_minute),
            own_per_minute = format!("{:.1}", b.own_per_minute),
            own_burst = b.own_burst,
            "rate budget"
        );
    }
}

/// A schedule tick was recorded and its jobs enqueued.
pub fn schedule_fired(schedule: &'static str, tick: DateTime<Utc>, enqueued: u64) {
    metrics()
        .ticks
        .get_or_create(&ScheduleLabels { schedule })
        .inc();
    tracing::info!(schedule, tick = %tick, enqueued, "schedule tick");
}

/// A schedule has not fired for two periods.
pub fn schedule_stalled(schedule: &'static str, last: DateTime<Utc>) {
    metrics()
        .stalls
        .get_or_create(&ScheduleLabels { schedule })
        .inc();
    tracing::error!(schedule, last_tick = %last,
        "schedule has not fired for two periods; firing the missed tick from the watchdog");
}

/// Calls counted against a vehicle's allowance by one poll (every request sent).
pub fn allowance_calls(n: i64) {
    if n > 0 {
        metrics()
            .allowance_calls
            .inc_by(u64::try_from(n).unwrap_or_default());
    }
    tracing::debug!(calls = n, "calls counted against the vehicle's allowance");
}

/// Why a planned poll was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowanceSkip {
    /// Readings pushed by a webhook within the interval.
    Pushed,
    /// The allowance of this period is spent, or the period ends within the guard.
    Spent,
}

impl AllowanceSkip {
    pub fn as_str(self) -> &'static str {
        match self {
            AllowanceSkip::Pushed => "pushed",
            AllowanceSkip::Spent => "spent",
        }
    }
}

/// A planned poll not sent.
pub fn allowance_skipped(why: AllowanceSkip) {
    let outcome = why.as_str();
    metrics()
        .allowance_skipped
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
    tracing::info!(reason = outcome, "planned poll not sent");
}

/// The planner's interval for a vehicle after a poll.
pub fn vehicle_planned(state: crate::plan::VehicleState, interval: Duration) {
    let state = state.as_str();
    metrics()
        .allowance_interval
        .get_or_create(&StateLabels { state })
        .observe(interval.as_secs_f64());
    tracing::debug!(
        state,
        interval_s = interval.as_secs_f64(),
        "vehicle planned"
    );
}

/// The planner tick enqueued `n` polls at their planned times.
pub fn polls_planned(n: u64) {
    metrics().allowance_planned.inc_by(n);
    tracing::debug!(enqueued = n, "planner tick");
}

/// How a Management API subscription call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionOutcome {
    /// 202: created.
    Subscribed,
    /// 409: it already existed.
    AlreadySubscribed,
    Unsubscribed,
    Failed,
}

impl SubscriptionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionOutcome::Subscribed => "subscribed",
            SubscriptionOutcome::AlreadySubscribed => "already_subscribed",
            SubscriptionOutcome::Unsubscribed => "unsubscribed",
            SubscriptionOutcome::Failed => "failed",
        }
    }
}

/// One subscription call for a vehicle.
pub fn subscription(outcome: SubscriptionOutcome, vehicle_id: &str) {
    let o = outcome.as_str();
    metrics()
        .subscriptions
        .get_or_create(&OutcomeLabels { outcome: o })
        .inc();
    if outcome == SubscriptionOutcome::Failed {
        tracing::warn!(vehicle_id, outcome = o, "webhook subscription call failed");
    } else {
        tracing::info!(vehicle_id, outcome = o, "webhook subscription");
    }
}

/// A group commit: `delays.len()` polls committed in one transaction, `took` from the start
/// of its flush to its commit (waiting for a connection and, on SQLite, for the writer
/// included), and each poll's delay from the moment it was queued to that commit (the flushes
/// under way when it came, then its own). The design keeps a poll's delay under 50 ms; both
/// histograms have a bucket there.
pub fn group_commit(took: Duration, delays: &[Duration]) {
    let m = metrics();
    m.group_commit_seconds.observe(took.as_secs_f64());
    m.group_commit_polls.inc_by(delays.len() as u64);
    for d in delays {
        m.group_commit_delay.observe(d.as_secs_f64());
    }
    let longest = delays.iter().max().copied().unwrap_or_default();
    // The target the README's group commit measurement filters on.
    tracing::debug!(
        target: "smartcar_sync::store::group",
        size = delays.len(),
        ms = took.as_secs_f64() * 1e3,
        longest_delay_ms = longest.as_secs_f64() * 1e3,
        "group commit"
    );
}

/// A SQLite write (a transaction, or one statement outside one) released the process's
/// write gate after waiting `waited` for it and holding it `held`. Their rates show how busy
/// the single writer is: held seconds per second near 1 means every write queues behind
/// another, the point where PostgreSQL (several writers) is the answer.
pub fn sqlite_write(waited: Duration, held: Duration) {
    let m = metrics();
    m.sqlite_writer_seconds
        .get_or_create(&PhaseLabels { phase: "waiting" })
        .inc_by(waited.as_secs_f64());
    m.sqlite_writer_seconds
        .get_or_create(&PhaseLabels { phase: "holding" })
        .inc_by(held.as_secs_f64());
    tracing::trace!(
        waited_us = waited.as_micros() as u64,
        held_us = held.as_micros() as u64,
        "SQLite write"
    );
}
