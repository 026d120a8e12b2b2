//! Rate limits: the application token bucket and the per-vehicle throttle, each remembering the
//! `Retry-After` deadline it gave so calls that ignore it can be counted (and refused again).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::config::{Bucket, RetryAfterForm};

/// Result of asking a limiter for admission.
#[derive(Debug, PartialEq)]
pub(crate) enum Admit {
    Ok,
    /// Refused; `wait` until the limiter will admit again.
    Limited {
        wait: Duration,
        /// The call came while an earlier `Retry-After` was still in force.
        early: bool,
    },
}

/// Calls arriving this soon after a 429 was issued were already on the wire when the client got
/// it: refused, but not counted as ignoring `Retry-After`.
const IN_FLIGHT_GRACE: Duration = Duration::from_millis(100);

pub(crate) struct AppLimiter {
    cfg: Option<Bucket>,
    tokens: f64,
    last: Instant,
    /// The `Retry-After` deadline in force and when it was issued.
    deadline: Option<(Instant, Instant)>,
}

impl AppLimiter {
    pub(crate) fn new(cfg: Option<Bucket>) -> AppLimiter {
        AppLimiter {
            cfg,
            tokens: cfg.map_or(0.0, |b| b.capacity),
            last: Instant::now(),
            deadline: None,
        }
    }

    /// Replaces the bucket (full) and forgets any deadline.
    pub(crate) fn set(&mut self, cfg: Option<Bucket>) {
        *self = AppLimiter::new(cfg);
    }

    pub(crate) fn admit(&mut self, now: Instant) -> Admit {
        if let Some((d, issued)) = self.deadline {
            if now < d {
                return Admit::Limited {
                    wait: d - now,
                    early: now.saturating_duration_since(issued) > IN_FLIGHT_GRACE,
                };
            }
            self.deadline = None;
        }
        let Some(b) = self.cfg else {
            return Admit::Ok;
        };
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * b.refill_per_second).min(b.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Admit::Ok;
        }
        let wait = if b.refill_per_second > 0.0 {
            (1.0 - self.tokens) / b.refill_per_second
        } else {
            3600.0
        };
        Admit::Limited {
            wait: Duration::from_secs_f64(wait.min(86_400.0)),
            early: false,
        }
    }

    pub(crate) fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some((deadline, Instant::now()));
    }

    /// Whether a `Retry-After` deadline is still in force (then it is not moved).
    pub(crate) fn in_force(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|(d, _)| now < d)
    }
}

#[derive(Clone, Copy)]
struct VehicleSlot {
    last_ok: Instant,
    deadline: Option<Instant>,
}

/// Per-vehicle minimum interval between admitted calls.
#[derive(Default)]
pub(crate) struct VehicleThrottle {
    slots: HashMap<u32, VehicleSlot>,
}

impl VehicleThrottle {
    pub(crate) fn admit(&mut self, vehicle: u32, now: Instant, min: Duration) -> Admit {
        let Some(slot) = self.slots.get_mut(&vehicle) else {
            self.slots.insert(
                vehicle,
                VehicleSlot {
                    last_ok: now,
                    deadline: None,
                },
            );
            return Admit::Ok;
        };
        if let Some(d) = slot.deadline {
            if now < d {
                return Admit::Limited {
                    wait: d - now,
                    early: true,
                };
            }
            slot.deadline = None;
        }
        let next = slot.last_ok + min;
        if now < next {
            return Admit::Limited {
                wait: next - now,
                early: false,
            };
        }
        slot.last_ok = now;
        Admit::Ok
    }

    pub(crate) fn set_deadline(&mut self, vehicle: u32, deadline: Instant) {
        if let Some(s) = self.slots.get_mut(&vehicle) {
            s.deadline = Some(deadline);
        }
    }
}

/// A `Retry-After` value and the instant it names.
pub(crate) struct RetryAfter {
    pub header: String,
    pub deadline: Instant,
}

/// `Retry-After` for a wait, in the given form: whole seconds rounded up (at least 1), or an
/// absolute time (HTTP date or epoch seconds rounded up to the next whole second, epoch
/// milliseconds exact), so a client that obeys it is never early.
pub(crate) fn retry_after(now: Instant, wait: Duration, form: RetryAfterForm) -> RetryAfter {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    if form == RetryAfterForm::Seconds {
        return RetryAfter {
            header: secs.to_string(),
            deadline: now + Duration::from_secs(secs),
        };
    }
    let wall = Utc::now();
    let target_ms = wall.timestamp_millis() + secs as i64 * 1000;
    let target_s = target_ms.div_euclid(1000) + i64::from(target_ms.rem_euclid(1000) != 0);
    let target = chrono::DateTime::from_timestamp(target_s, 0).unwrap_or(wall);
    let ahead = (target_s * 1000 - wall.timestamp_millis()).max(0) as u64;
    let header = match form {
        RetryAfterForm::EpochMillis => {
            return RetryAfter {
                header: target_ms.to_string(),
                deadline: now + Duration::from_secs(secs),
            };
        }
        RetryAfterForm::EpochSeconds => target_s.to_string(),
        _ => target.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
    };
    RetryAfter {
        header,
        deadline: now + Duration::from_millis(ahead),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refuses_when_empty_then_counts_early_calls() {
        let mut l = AppLimiter::new(Some(Bucket {
            capacity: 2.0,
            refill_per_second: 0.5,
        }));
        let t = Instant::now();
        assert_eq!(l.admit(t), Admit::Ok);
        assert_eq!(l.admit(t), Admit::Ok);
        let Admit::Limited { wait, early } = l.admit(t) else {
            panic!("expected limit")
        };
        assert!(!early);
        let ra = retry_after(t, wait, RetryAfterForm::Seconds);
        assert_eq!(ra.header, "2");
        l.set_deadline(ra.deadline);
        assert!(matches!(
            l.admit(t + Duration::from_secs(1)),
            Admit::Limited { early: true, .. }
        ));
        assert_eq!(l.admit(t + Duration::from_secs(2)), Admit::Ok);
    }

    #[test]
    fn vehicle_throttle_needs_min_interval() {
        let mut v = VehicleThrottle::default();
        let t = Instant::now();
        let min = Duration::from_millis(500);
        assert_eq!(v.admit(1, t, min), Admit::Ok);
        assert!(matches!(
            v.admit(1, t, min),
            Admit::Limited { early: false, .. }
        ));
        assert_eq!(v.admit(2, t, min), Admit::Ok);
        assert_eq!(v.admit(1, t + min, min), Admit::Ok);
    }

    #[test]
    fn http_date_is_in_the_future() {
        let ra = retry_after(
            Instant::now(),
            Duration::from_millis(1500),
            RetryAfterForm::HttpDate,
        );
        assert!(ra.header.ends_with(" GMT"), "{}", ra.header);
        let parsed = chrono::DateTime::parse_from_rfc2822(&ra.header.replace("GMT", "+0000"));
        assert!(parsed.is_ok_and(|d| d.timestamp_millis() >= Utc::now().timestamp_millis() + 1000));
    }
}
