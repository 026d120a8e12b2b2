//! `poll_signals(vehicle)`: read every signal and store the readings with the job's completion.
//! [`readings`] is shared with webhooks: a reading seen by both is stored once.
//!
//! When the signals answer is paged and a continuation page fails, the readings of the pages
//! already received are stored at once (without completing the job), and the failure goes to
//! the queue as a transient one: the poll is retried, the vehicle's status is untouched. Samples
//! are keyed by `(vehicle, code, recorded_at)` and the first writer wins, so the retry stores
//! the rest and nothing is lost or duplicated; a reading that changed between the two tries is
//! kept in both versions, as two samples.

use chrono::{DateTime, Utc};

use super::{Done, JobContext, JobError};
use crate::smartcar::time::plausible_reading_time;
use crate::smartcar::{Signal, SignalStatus};
use crate::store::{Job, NewSample, PollResult, SampleSource, SignalState};

pub(super) async fn run(ctx: &JobContext, job: &Job) -> Result<Done, JobError> {
    let vehicle_id = job.subject.as_str();
    let Some(user_id) = ctx.store.vehicle_owner(vehicle_id).await? else {
        ctx.store.complete(job).await?;
        return Ok(Done::Skipped("vehicle no longer known"));
    };
    tracing::Span::current().record("user_id", user_id.as_str());
    let signals = match ctx
        .client
        .signals_keeping_partial(vehicle_id, &user_id)
        .await
    {
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
    let result = PollResult {
        vehicle_id: vehicle_id.to_owned(),
        samples,
        statuses,
        polled_at: now,
    };
    let outcome = ctx.store.finish_poll(job, &result).await?;
    crate::events::samples_stored(crate::events::SampleOrigin::Poll, outcome.samples_inserted);
    Ok(Done::Polled {
        signals: signals.len(),
        inserted: outcome.samples_inserted,
    })
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
