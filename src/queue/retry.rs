//! The retry schedule: exponential backoff (backon) with full jitter.
//!
//! backon's own jitter adds up to one extra delay on top; "full jitter" instead draws the whole
//! delay uniformly from `(0, cap]`, which spreads a burst of failures (an outage ending) best.
//! backon supplies the capped exponential sequence; the draw is ours.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The shortest wait ever drawn, so a retry never lands in the same instant.
const FLOOR: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub min: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The cap for the `failures`-th retry (0-based): `min * 2^failures`, at most `max`.
    pub fn cap(&self, failures: u32) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .nth(failures as usize)
            .unwrap_or(self.max)
    }

    /// A full-jitter delay for the `failures`-th retry.
    pub fn delay(&self, failures: u32) -> Duration {
        self.cap(failures).mul_f64(fastrand::f64()).max(FLOOR)
    }

    /// Whether a job that has failed `failures` times before this failure may try again.
    pub fn may_retry(&self, failures: u32) -> bool {
        failures + 1 < self.max_attempts
    }
}

/// The wait after the `streak`-th consecutive 429 `RATE_LIMIT`/`VEHICLE` from one vehicle
/// (1-based): the `Retry-After` delay (at least 1 s) doubled for every earlier 429 of the
/// streak, capped at `max`, and never shorter than `Retry-After` itself. A vehicle that answers
/// 429 with `Retry-After: 2` on every call is thus called after 2, 4, 8, 16 … s, not every 2 s.
pub fn throttle_wait(retry_after: Duration, streak: i64, max: Duration) -> Duration {
    // A year at most, whatever the configuration says: the wait is added to a date.
    let max = max.min(Duration::from_secs(366 * 86_400));
    let base = retry_after.max(Duration::from_secs(1));
    let doublings = u32::try_from((streak - 1).clamp(0, 30)).unwrap_or(30);
    base.saturating_mul(1u32 << doublings)
        .min(max)
        .max(retry_after.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_429s_wait_longer_each_time_with_retry_after_as_the_floor() {
        let s = Duration::from_secs;
        let waits: Vec<u64> = (1..=8)
            .map(|n| throttle_wait(s(2), n, s(60)).as_secs())
            .collect();
        assert_eq!(waits, vec![2, 4, 8, 16, 32, 60, 60, 60]);
        // Retry-After is the floor even when larger than the doubling so far.
        assert_eq!(throttle_wait(s(45), 1, s(3600)), s(45));
        // A sub-second Retry-After still grows from 1 s, but never waits less than it asked.
        assert_eq!(throttle_wait(Duration::ZERO, 3, s(3600)), s(4));
        // A huge streak neither overflows nor exceeds the cap.
        assert_eq!(throttle_wait(s(2), i64::MAX, s(3600)), s(3600));
        assert_eq!(throttle_wait(s(2), 0, s(3600)), s(2));
    }

    #[test]
    fn caps_double_up_to_the_maximum_and_draws_stay_under_them() {
        let p = RetryPolicy {
            min: Duration::from_secs(2),
            max: Duration::from_secs(60),
            max_attempts: 5,
        };
        let caps: Vec<u64> = (0..7).map(|n| p.cap(n).as_secs()).collect();
        assert_eq!(caps, vec![2, 4, 8, 16, 32, 60, 60]);
        for n in 0..7 {
            for _ in 0..100 {
                let d = p.delay(n);
                assert!(d <= p.cap(n) && d >= FLOOR, "{d:?}");
            }
        }
        // Full jitter really spreads: not every draw sits at the cap.
        let draws: Vec<Duration> = (0..50).map(|_| p.delay(4)).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_secs(16)));
        assert!(p.may_retry(3) && !p.may_retry(4));
    }
}
