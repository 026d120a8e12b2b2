//! What a problem does to a vehicle: the status it gets, and until when polling stops.
//!
//! A vehicle learns of a problem two ways, a poll's error answer (classified into
//! [`VehicleProblem`] by `smartcar/error.rs`) and a `VEHICLE_ERROR` webhook; both end here, so
//! the same problem always has the same consequence. How a status is written, and the rules
//! that move a vehicle back to `connected`, are the store's `vehicle_status.rs`.

use chrono::{DateTime, Datelike, TimeZone, Utc};

use crate::smartcar::{ApiError, VehicleProblem};
use crate::store::{VehicleStatus, VehicleStatusUpdate};

/// How long a vehicle whose user must re-connect waits before the next try: "retry rarely".
const RECONNECT_WAIT: chrono::Duration = chrono::Duration::hours(6);

/// The status a problem sets, and until when polling stops (None: until something changes
/// the status, such as the connections listing the vehicle again).
///
/// A 430 blocks the vehicle until its allowance's period ends: the `[budget]` period when an
/// allowance is configured, else the calendar month.
pub fn consequence(
    problem: VehicleProblem,
    now: DateTime<Utc>,
    allowance: Option<&crate::plan::Allowance>,
) -> (VehicleStatus, Option<DateTime<Utc>>) {
    match problem {
        VehicleProblem::PermissionDenied => (VehicleStatus::PermissionDenied, None),
        VehicleProblem::NotFound => (VehicleStatus::Disconnected, None),
        VehicleProblem::Incompatible => (VehicleStatus::Incompatible, None),
        // The user must act first.
        VehicleProblem::NeedsReconnect => {
            (VehicleStatus::NeedsReconnect, Some(now + RECONNECT_WAIT))
        }
        // The allowance is spent (another application shares the vehicle, or the plan is
        // smaller than configured): nothing until the period ends.
        VehicleProblem::BillingLimited => (
            VehicleStatus::BillingLimited,
            Some(match allowance {
                Some(a) => a.period.bounds(now).1,
                None => next_month(now),
            }),
        ),
    }
}

/// The problem a `VEHICLE_ERROR` webhook's error `type` reports, if it is a permanent one
/// (others, such as an asleep car, change no status).
pub fn problem_of_webhook_error(error_type: &str) -> Option<VehicleProblem> {
    match error_type {
        "PERMISSION" => Some(VehicleProblem::PermissionDenied),
        "COMPATIBILITY" => Some(VehicleProblem::Incompatible),
        "BILLING" => Some(VehicleProblem::BillingLimited),
        "CONNECTED_SERVICES_ACCOUNT" => Some(VehicleProblem::NeedsReconnect),
        _ => None,
    }
}

/// The status update a poll's permanent error makes. With an allowance configured
/// (`[budget]`), a 430 blocks the vehicle until the end of the configured period rather than
/// the calendar month.
pub fn status_for(
    problem: VehicleProblem,
    err: &ApiError,
    now: DateTime<Utc>,
    allowance: Option<&crate::plan::Allowance>,
) -> VehicleStatusUpdate {
    let (status, blocked_until) = consequence(problem, now, allowance);
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

    #[test]
    fn a_webhook_error_has_the_consequence_of_the_same_poll_error() {
        let now = Utc.with_ymd_and_hms(2026, 12, 17, 8, 0, 0).unwrap();
        for (error_type, problem) in [
            ("PERMISSION", VehicleProblem::PermissionDenied),
            ("COMPATIBILITY", VehicleProblem::Incompatible),
            ("BILLING", VehicleProblem::BillingLimited),
            ("CONNECTED_SERVICES_ACCOUNT", VehicleProblem::NeedsReconnect),
        ] {
            assert_eq!(problem_of_webhook_error(error_type), Some(problem));
        }
        assert_eq!(problem_of_webhook_error("VEHICLE_STATE"), None);
        // With an allowance, a 430 blocks until its period ends.
        let a = crate::plan::Allowance {
            calls: std::num::NonZeroU32::MIN,
            period: crate::plan::Period::parse("6h").unwrap(),
            min_interval: std::time::Duration::from_secs(60),
            reserve: 0.1,
        };
        assert_eq!(
            consequence(VehicleProblem::BillingLimited, now, Some(&a)),
            (
                VehicleStatus::BillingLimited,
                Some(Utc.with_ymd_and_hms(2026, 12, 17, 12, 0, 0).unwrap())
            )
        );
        assert_eq!(
            consequence(VehicleProblem::BillingLimited, now, None).1,
            Some(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(
            consequence(VehicleProblem::NeedsReconnect, now, None),
            (VehicleStatus::NeedsReconnect, Some(now + RECONNECT_WAIT))
        );
    }
}
