//! `poll_signals(vehicle)`: read every signal and store the readings with the job's completion.
//! [`readings`] is shared with webhooks: a reading seen by both is stored once.

use chrono::{DateTime, Datelike, TimeZone, Utc};

use super::{Done, JobContext, JobError};
use crate::smartcar::{ApiError, Signal, SignalStatus, VehicleProblem};
use crate::store::{
    Job, NewSample, PollResult, SampleSource, SignalState, VehicleStatus, VehicleStatusUpdate,
};

pub(super) async fn run(ctx: &JobContext, job: &Job) -> Result<Done, JobError> {
    let vehicle_id = job.subject.as_str();
    let Some(user_id) = ctx.store.vehicle_owner(vehicle_id).await? else {
        ctx.store.complete(job).await?;
        return Ok(Done::Skipped("vehicle no longer known"));
    };
    tracing::Span::current().record("user_id", user_id.as_str());
    let signals = ctx.client.signals(vehicle_id, &user_id).await?;
    let now = Utc::now();
    let (samples, statuses) = readings(vehicle_id, &signals, SampleSource::Poll, now);
    let result = PollResult {
        vehicle_id: vehicle_id.to_owned(),
        samples,
        statuses,
        polled_at: now,
    };
    let outcome = ctx.store.finish_poll(job, &result).await?;
    crate::events::samples_stored("poll", outcome.samples_inserted);
    Ok(Done::Polled {
        signals: signals.len(),
        inserted: outcome.samples_inserted,
    })
}

/// Splits signals into samples (SUCCESS with a measurement time) and the latest status of every
/// signal. A signal that is not SUCCESS is not a sample.
pub fn readings(
    vehicle_id: &str,
    signals: &[Signal],
    source: SampleSource,
    now: DateTime<Utc>,
) -> (Vec<NewSample>, Vec<SignalState>) {
    let mut samples = Vec::with_capacity(signals.len());
    let mut statuses = Vec::with_capacity(signals.len());
    for s in signals {
        let (error_type, error_code) = match &s.status {
            SignalStatus::Error { error_type, code } => (error_type.clone(), code.clone()),
            _ => (None, None),
        };
        statuses.push(SignalState {
            vehicle_id: vehicle_id.to_owned(),
            code: s.code.clone(),
            status: s.status.as_str().to_owned(),
            error_type,
            error_code,
            observed_at: now,
        });
        if s.status != SignalStatus::Success {
            continue;
        }
        let Some(recorded_at) = s.recorded_at() else {
            tracing::debug!(vehicle_id, code = %s.code, "reading without oemUpdatedAt: not stored");
            continue;
        };
        let body = s
            .body
            .as_ref()
            .map(|b| b.to_string())
            .unwrap_or_else(|| "{}".to_owned());
        samples.push(NewSample {
            vehicle_id: vehicle_id.to_owned(),
            code: s.code.clone(),
            recorded_at,
            value_num: s.value_num,
            unit: s.unit.clone(),
            body,
            source,
        });
    }
    (samples, statuses)
}

/// The vehicle status a permanent error sets, and until when polling stops.
pub fn status_for(
    problem: VehicleProblem,
    err: &ApiError,
    now: DateTime<Utc>,
) -> VehicleStatusUpdate {
    let (status, blocked_until) = match problem {
        VehicleProblem::PermissionDenied => (VehicleStatus::PermissionDenied, None),
        VehicleProblem::NotFound => (VehicleStatus::Disconnected, None),
        VehicleProblem::Incompatible => (VehicleStatus::Incompatible, None),
        // "Retry rarely (hours)": the user must act first.
        VehicleProblem::NeedsReconnect => (
            VehicleStatus::NeedsReconnect,
            Some(now + chrono::Duration::hours(6)),
        ),
        // The monthly allowance is spent: nothing until the next calendar month.
        VehicleProblem::BillingLimited => (VehicleStatus::BillingLimited, Some(next_month(now))),
    };
    VehicleStatusUpdate {
        status,
        reason: err.to_string(),
        request_id: err.request_id.clone(),
        blocked_until,
        at: now,
    }
}

/// Midnight UTC on the first day of the month after `now`.
pub fn next_month(now: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .unwrap_or(now + chrono::Duration::days(31))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_stops_until_the_next_calendar_month() {
        let t = Utc.with_ymd_and_hms(2026, 12, 17, 8, 0, 0).unwrap();
        assert_eq!(
            next_month(t),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        let t = Utc.with_ymd_and_hms(2026, 2, 28, 23, 59, 59).unwrap();
        assert_eq!(
            next_month(t),
            Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
        );
    }
}
