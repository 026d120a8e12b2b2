//! `poll_signals(vehicle)`: read every signal and store the readings with the job's completion.
//! [`readings`] is shared with webhooks: a reading seen by both is stored once.
//!
//! When the signals answer is paged and a continuation page fails, the readings of the pages
//! already received are stored at once (without completing the job), and the failure goes to
//! the queue as a transient one: the poll is retried, the vehicle's status is untouched. Samples
//! are keyed by `(vehicle, code, recorded_at)` and the first writer wins, so the retry stores
//! the rest and nothing is lost or duplicated; a reading that changed between the two tries is
//! kept in both versions, as two samples.

use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, Utc};

use super::{Done, JobContext, JobError};
use crate::events::AllowanceSkip;
use crate::plan::{Allowance, VehicleFacts, VehicleState};
use crate::smartcar::time::plausible_reading_time;
use crate::smartcar::{Signal, SignalStatus};
use crate::store::{
    Job, NewSample, PlanRecord, PollContext, PollResult, SampleSource, SignalState,
};

pub(super) async fn run(ctx: &JobContext, job: &Job) -> Result<Done, JobError> {
    let vehicle_id = job.subject.as_str();
    let now = Utc::now();
    // Without an allowance the period is irrelevant; any instant reads the owner the same.
    let period_start = ctx
        .allowance
        .as_ref()
        .map_or(now, |a| a.period.bounds(now).0);
    let Some(known) = ctx.store.poll_context(vehicle_id, period_start).await? else {
        ctx.store.complete(job).await?;
        return Ok(Done::Skipped("vehicle no longer known"));
    };
    let user_id = known.user_id.as_str();
    tracing::Span::current().record("user_id", user_id);
    // With an allowance, the call is counted (and may be refused) before it is sent.
    let metered = match &ctx.allowance {
        Some(a) => match meter(ctx, a, job, &known, period_start, now).await? {
            Ok(m) => Some(m),
            Err(skipped) => return Ok(skipped),
        },
        None => None,
    };
    let sent = AtomicU32::new(0);
    let result = ctx.client.signals_metered(vehicle_id, user_id, &sent).await;
    if let Some(m) = &metered {
        // One call was counted ahead; settle the count with the requests actually sent.
        let extra = i64::from(sent.load(Ordering::Relaxed)) - 1;
        if let Err(e) = ctx.store.add_calls(vehicle_id, m.period_start, extra).await {
            tracing::warn!(error = %e, extra, "cannot settle the vehicle's call count");
        }
        crate::events::allowance_calls(i64::from(sent.load(Ordering::Relaxed)));
    }
    let signals = match result {
        Ok(s) => s,
        Err(partial) => {
            if !partial.received.is_empty() {
                let (samples, statuses) = readings(
                    vehicle_id,
                    &partial.received,
                    SampleSource::Poll,
                    Utc::now(),
                );
                let n = ctx.store.ingest_samples(&samples, &statuses).await?;
                crate::events::samples_stored(crate::events::SampleOrigin::Poll, n);
                tracing::info!(
                    signals = partial.received.len(),
                    inserted = n,
                    error = %partial.error,
                    "a later signals page failed: the pages received are stored, the poll will be retried"
                );
            }
            return Err(partial.error.into());
        }
    };
    let now = Utc::now();
    let (samples, statuses) = readings(vehicle_id, &signals, SampleSource::Poll, now);
    let plan = match (&ctx.allowance, metered) {
        (Some(a), Some(m)) => Some(replan(a, vehicle_id, &signals, m, now)),
        _ => None,
    };
    let result = PollResult {
        vehicle_id: vehicle_id.to_owned(),
        samples,
        statuses,
        polled_at: now,
        plan,
    };
    let outcome = ctx.store.finish_poll(job, &result).await?;
    crate::events::samples_stored(crate::events::SampleOrigin::Poll, outcome.samples_inserted);
    Ok(Done::Polled {
        signals: signals.len(),
        inserted: outcome.samples_inserted,
    })
}

/// A call counted ahead of a poll.
#[derive(Debug, Clone)]
struct Metered {
    period_start: DateTime<Utc>,
    used: u32,
    previous: Option<String>,
}

/// Counts the poll's call against the vehicle's allowance before it is sent, or completes the
/// job without calling: readings pushed by a webhook within the interval stand in for it, and
/// a vehicle whose allowance is spent (or whose period ends within the guard) is not called at
/// all: the daemon's own polling never earns a 430. The planner tick plans its next poll.
async fn meter(
    ctx: &JobContext,
    a: &Allowance,
    job: &Job,
    known: &PollContext,
    period_start: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Result<Metered, Done>, JobError> {
    let vehicle_id = job.subject.as_str();
    let used = known.calls_used;
    let (state, previous) = known.plan.clone().unwrap_or((VehicleState::Unknown, None));
    if let (Some(pushed), Some(interval)) = (
        known.last_pushed_at,
        a.interval(state, used, now, crate::plan::phase(vehicle_id)),
    ) && pushed + chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX) > now
    {
        ctx.store.complete(job).await?;
        crate::events::allowance_skipped(AllowanceSkip::Pushed);
        return Ok(Err(Done::Skipped(
            "readings pushed by webhook within the interval",
        )));
    }
    let reserved = if a.may_call(used, now) {
        ctx.store
            .reserve_call(vehicle_id, period_start, a.calls.get())
            .await?
    } else {
        None
    };
    let Some(used) = reserved else {
        ctx.store.complete(job).await?;
        crate::events::allowance_skipped(AllowanceSkip::Spent);
        tracing::info!(
            used,
            allowance = a.calls.get(),
            "allowance spent for this period (or it ends now): not polled"
        );
        return Ok(Err(Done::Skipped("allowance spent for this period")));
    };
    Ok(Ok(Metered {
        period_start,
        used,
        previous,
    }))
}

/// Whether `code` is `wanted` (kebab case, or the camelCase variant).
fn is_code(code: &str, wanted: &str) -> bool {
    code.chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .eq(wanted.chars().filter(|c| *c != '-'))
}

/// Whether the readings say the vehicle charges, and its odometer/location fingerprint.
pub fn motion(signals: &[crate::smartcar::Signal]) -> (bool, String) {
    let mut charging = false;
    let mut odometer = String::new();
    let mut location = String::new();
    for s in signals.iter().filter(|s| s.status == SignalStatus::Success) {
        if is_code(&s.code, "charge-ischarging") {
            charging = s.value_num.is_some_and(|v| v > 0.5)
                || s.body
                    .as_ref()
                    .and_then(|b| b.get("value"))
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false);
        } else if is_code(&s.code, "odometer-traveleddistance") {
            odometer = s.value_num.map(|v| v.to_string()).unwrap_or_default();
        } else if is_code(&s.code, "location-preciselocation") {
            location = s.body_json();
        }
    }
    (charging, format!("{odometer}|{location}"))
}

/// After a poll: the vehicle's state from its readings, and its next poll, committed with the
/// poll for the planner tick and `budget`.
fn replan(
    a: &Allowance,
    vehicle_id: &str,
    signals: &[crate::smartcar::Signal],
    m: Metered,
    now: DateTime<Utc>,
) -> PlanRecord {
    let (charging, fingerprint) = motion(signals);
    let state = VehicleState::from_readings(charging, &fingerprint, m.previous.as_deref());
    let planned = a.plan(
        &VehicleFacts {
            vehicle_id,
            state,
            used: m.used,
            last_polled_at: Some(now),
            last_pushed_at: None,
        },
        now,
    );
    crate::events::vehicle_planned(state, planned.interval);
    PlanRecord {
        vehicle_id: vehicle_id.to_owned(),
        state,
        fingerprint,
        interval_ms: i64::try_from(planned.interval.as_millis()).unwrap_or(i64::MAX),
        next_poll_at: planned.next_at,
    }
}

/// The `error_type` of a status recorded for a reading whose time cannot be used.
pub const TIME_ERROR_TYPE: &str = "READING_TIME";

/// Splits signals into samples (SUCCESS with a usable measurement time) and the latest status of
/// every signal. A signal that is not SUCCESS is not a sample. A SUCCESS reading whose time was
/// sent but is unreadable or implausible (before 2000, or more than a day ahead of `now`) is
/// recorded as a status `ERROR` with type [`TIME_ERROR_TYPE`] and code `UNREADABLE` or
/// `OUT_OF_RANGE`, not as a sample. A SUCCESS reading with no measurement time at all (an empty
/// `meta`) keeps its SUCCESS status and is not a sample: `retrievedAt` changes on every poll and
/// would store the same reading again and again.
pub fn readings(
    vehicle_id: &str,
    signals: &[Signal],
    source: SampleSource,
    now: DateTime<Utc>,
) -> (Vec<NewSample>, Vec<SignalState>) {
    let mut samples = Vec::with_capacity(signals.len());
    let mut statuses = Vec::with_capacity(signals.len());
    for s in signals {
        let (mut status, mut error_type, mut error_code) = match &s.status {
            SignalStatus::Error { error_type, code } => {
                ("ERROR".to_owned(), error_type.clone(), code.clone())
            }
            other => (other.as_str().to_owned(), None, None),
        };
        let mut sample_at = None;
        if s.status == SignalStatus::Success {
            let time_error = if let Some(raw) = &s.unreadable_time {
                tracing::error!(vehicle_id, code = %s.code, time = %raw,
                    "reading time cannot be read: recorded as a status error, not stored");
                Some("UNREADABLE")
            } else {
                match s.recorded_at() {
                    Some(t) if plausible_reading_time(t, now) => {
                        sample_at = Some(t);
                        None
                    }
                    Some(t) => {
                        tracing::error!(vehicle_id, code = %s.code, time = %t,
                            "implausible reading time: recorded as a status error, not stored");
                        Some("OUT_OF_RANGE")
                    }
                    None => {
                        tracing::debug!(vehicle_id, code = %s.code,
                            "reading without oemUpdatedAt: status only");
                        None
                    }
                }
            };
            if let Some(code) = time_error {
                status = "ERROR".to_owned();
                error_type = Some(TIME_ERROR_TYPE.to_owned());
                error_code = Some(code.to_owned());
            }
        }
        statuses.push(SignalState {
            vehicle_id: vehicle_id.to_owned(),
            code: s.code.clone(),
            status,
            error_type,
            error_code,
            observed_at: now,
        });
        if let Some(recorded_at) = sample_at {
            samples.push(NewSample {
                vehicle_id: vehicle_id.to_owned(),
                code: s.code.clone(),
                recorded_at,
                value_num: s.value_num,
                unit: s.unit.clone(),
                body: s.body_json(),
                source,
            });
        }
    }
    (samples, statuses)
}
