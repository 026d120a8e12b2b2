//! The allowance planner: when to poll each vehicle so that it fits its allowance.
//!
//! Smartcar bills a fixed number of calls per vehicle per period (contract §6: e.g. 500 a
//! month); past it every call answers 430 until the period ends. Polling every vehicle on every
//! signals tick spends that by day 10. This module decides, for one vehicle at a time, from
//! data only (no I/O, so it is unit-tested and `budget plan` can run it without a database):
//!
//! - **How many calls it may still plan**: the allowance minus the reserve (kept for retries,
//!   429s and on-demand calls such as `sync-once`), times a share by state (a parked car, whose
//!   readings do not change, aims at [`PARKED_SHARE`] of it), minus the calls already counted
//!   this period.
//! - **How often**: the time left in the period spread evenly over those calls, never more
//!   often than `min_interval`. A vehicle that spends slower than planned gets shorter
//!   intervals later, one that spent more (retries) longer ones: the plan corrects itself.
//! - **When exactly**: each vehicle has a stable phase (a hash of its id), so the first poll of
//!   a period lands at `start + phase × interval` and the fleet's polls are spread over the
//!   interval instead of bursting at every tick.
//! - **Not at all**: readings pushed by a webhook within the interval replace the poll.
//!
//! Periods are calendar months (UTC) or a fixed duration `d`, aligned to the Unix epoch:
//! period `k` runs from `k·d` to `(k+1)·d`, the same for every daemon and the server.

use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::Serialize;

/// The share of the (reserve-less) allowance a parked vehicle aims to spend.
pub const PARKED_SHARE: f64 = 0.4;

/// A billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// The calendar month, UTC.
    Month,
    /// A fixed duration aligned to the Unix epoch.
    Every(Duration),
}

impl Period {
    /// `"month"` or a duration (`"60s"`, `"1h"`, `"30d"`), at least one second.
    pub fn parse(s: &str) -> Result<Period, String> {
        if s.trim() == "month" {
            return Ok(Period::Month);
        }
        let d = crate::config::parse_duration(s)
            .map_err(|e| format!("must be \"month\" or a duration: {e}"))?;
        if d < Duration::from_secs(1) || d > Duration::from_secs(400 * 86_400) {
            return Err("a duration period must be between 1s and 400d".into());
        }
        Ok(Period::Every(d))
    }

    /// The period containing `t`: `[start, end)`.
    pub fn bounds(self, t: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        match self {
            Period::Month => {
                let start = Utc
                    .with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
                    .single()
                    .unwrap_or(t);
                (start, crate::vehicle_status::next_month(t))
            }
            Period::Every(d) => {
                let d_ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1);
                let k = t.timestamp_millis().div_euclid(d_ms);
                let start = DateTime::from_timestamp_millis(k.saturating_mul(d_ms)).unwrap_or(t);
                let end = DateTime::from_timestamp_millis((k + 1).saturating_mul(d_ms))
                    .unwrap_or(t + chrono::Duration::days(1));
                (start, end)
            }
        }
    }

    /// How the period reads in `budget plan` ("a month", "60s").
    pub fn label(self) -> String {
        match self {
            Period::Month => "a month".into(),
            Period::Every(d) => format!("per {}", human(d)),
        }
    }

    /// A typical length (30 days for a month), for dry runs.
    pub fn typical(self) -> Duration {
        match self {
            Period::Month => Duration::from_secs(30 * 86_400),
            Period::Every(d) => d,
        }
    }
}

/// `[budget]`, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allowance {
    pub calls: NonZeroU32,
    pub period: Period,
    pub min_interval: Duration,
    /// Share kept back (0.0..=0.9).
    pub reserve: f64,
}

/// What the planner knows of a vehicle's behaviour, from its last readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VehicleState {
    /// Not polled yet (planned like an active vehicle until its readings say otherwise).
    Unknown,
    /// Readings unchanged since the previous poll: the car is asleep.
    Parked,
    /// `charge-ischarging` true.
    Charging,
    /// Odometer or location changed since the previous poll.
    Moving,
}

impl VehicleState {
    pub fn as_str(self) -> &'static str {
        match self {
            VehicleState::Unknown => "unknown",
            VehicleState::Parked => "parked",
            VehicleState::Charging => "charging",
            VehicleState::Moving => "moving",
        }
    }

    pub fn parse(s: &str) -> VehicleState {
        match s {
            "parked" => VehicleState::Parked,
            "charging" => VehicleState::Charging,
            "moving" => VehicleState::Moving,
            _ => VehicleState::Unknown,
        }
    }

    /// Whether the vehicle's readings are changing.
    pub fn is_active(self) -> bool {
        matches!(self, VehicleState::Charging | VehicleState::Moving)
    }

    /// The share of the plannable allowance a vehicle in this state aims to spend.
    fn share(self) -> f64 {
        match self {
            VehicleState::Parked => PARKED_SHARE,
            _ => 1.0,
        }
    }

    /// The state a poll's readings show: charging wins, then a changed odometer or location
    /// (`fingerprint`, compared with the previous poll's), else parked. Without a previous
    /// fingerprint nothing can be compared: unknown.
    pub fn from_readings(charging: bool, fingerprint: &str, previous: Option<&str>) -> Self {
        if charging {
            VehicleState::Charging
        } else {
            match previous {
                None => VehicleState::Unknown,
                Some(p) if p != fingerprint => VehicleState::Moving,
                Some(_) => VehicleState::Parked,
            }
        }
    }
}

/// What the planner knows of one vehicle.
#[derive(Debug, Clone, PartialEq)]
pub struct VehicleFacts<'a> {
    pub vehicle_id: &'a str,
    pub state: VehicleState,
    /// Calls counted for it in the period containing `now`.
    pub used: u32,
    pub last_polled_at: Option<DateTime<Utc>>,
    /// The newest reading pushed by a webhook (when it was received).
    pub last_pushed_at: Option<DateTime<Utc>>,
}

/// The planner's decision for one vehicle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// The gap between its polls at the current pace.
    pub interval: Duration,
    /// When to poll next.
    pub next_at: DateTime<Utc>,
    /// Readings pushed within the interval replace the poll due now.
    pub pushed: bool,
}

/// A stable number in `[0, 1)` per vehicle: its phase within an interval. FNV-1a of its id,
/// then the 64-bit finaliser of MurmurHash3 so that ids differing in one character spread.
pub fn phase(vehicle_id: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vehicle_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn secs(d: chrono::Duration) -> f64 {
    d.num_milliseconds().max(0) as f64 / 1000.0
}

impl Allowance {
    /// Calls a vehicle may plan per period: the allowance less the reserve.
    pub fn plannable(&self) -> f64 {
        f64::from(self.calls.get()) * (1.0 - self.reserve)
    }

    /// Calls a vehicle in `state` aims to spend per period.
    pub fn target(&self, state: VehicleState) -> f64 {
        (self.plannable() * state.share()).max(1.0)
    }

    /// A margin before a period's end in which no call is sent (it could reach the server in
    /// the next period and be counted there): 1 % of a duration period, at most 5 s.
    pub fn guard(&self) -> Duration {
        match self.period {
            Period::Month => Duration::from_secs(5),
            Period::Every(d) => (d / 100).min(Duration::from_secs(5)),
        }
    }

    /// Whether one more call may be sent now by a vehicle that used `used` this period.
    pub fn may_call(&self, used: u32, now: DateTime<Utc>) -> bool {
        let (_, end) = self.period.bounds(now);
        used < self.calls.get() && now + dur(self.guard()) < end
    }

    /// The interval for a whole period in `state` (the pace at the start of a period).
    pub fn base_interval(&self, state: VehicleState, period_len: Duration) -> Duration {
        let i = period_len.as_secs_f64() / self.target(state);
        Duration::from_secs_f64(i.max(self.min_interval.as_secs_f64()))
    }

    /// The interval from now on, or `None` when the vehicle's target for this period is spent.
    ///
    /// A vehicle on track polls on a lattice `start + (phase + k) · T/n` (`n` its target, `T`
    /// the period): right after its poll `j`, the time left is `(n − j + 1 − phase) · T/n`, so
    /// the time left over `calls left + 1 − phase` is exactly `T/n` again. A vehicle behind
    /// (a missed poll) gets shorter intervals, one ahead (retries counted) longer ones, and
    /// the lattice's points all fall inside the period: `n` polls, no more.
    pub fn interval(
        &self,
        state: VehicleState,
        used: u32,
        now: DateTime<Utc>,
        phase: f64,
    ) -> Option<Duration> {
        if used >= self.calls.get() {
            return None;
        }
        let (_, end) = self.period.bounds(now);
        let slots = self.target(state) - f64::from(used) + 1.0 - phase;
        if slots <= 0.0 {
            return None;
        }
        let i = secs(end - now) / slots;
        Some(Duration::from_secs_f64(
            i.clamp(self.min_interval.as_secs_f64(), 400.0 * 86_400.0),
        ))
    }

    /// When to poll `v` next, seen at `now` (a planner tick or a poll just done).
    pub fn plan(&self, v: &VehicleFacts<'_>, now: DateTime<Utc>) -> Planned {
        let (start, end) = self.period.bounds(now);
        let phase = phase(v.vehicle_id);
        let period_len =
            |s: DateTime<Utc>, e: DateTime<Utc>| (e - s).to_std().unwrap_or(self.period.typical());
        let first_of_next = |state: VehicleState| {
            let (n_start, n_end) = self.period.bounds(end);
            let i = self.base_interval(state, period_len(n_start, n_end));
            Planned {
                interval: i,
                next_at: n_start + dur(i.mul_f64(phase)),
                pushed: false,
            }
        };
        // Not polled yet this period (or never): its phase in the period's first interval.
        let fresh = v.last_polled_at.is_none_or(|l| l < start);
        let Some(interval) = self.interval(v.state, v.used, now, phase) else {
            return first_of_next(v.state);
        };
        let i = dur(interval);
        // Readings pushed within the interval stand in for a poll.
        if let Some(p) = v.last_pushed_at
            && p + i > now
            && v.last_polled_at.is_none_or(|l| p > l)
        {
            let at = p + i;
            return if at + dur(self.guard()) >= end {
                first_of_next(v.state)
            } else {
                Planned {
                    interval,
                    next_at: at,
                    pushed: true,
                }
            };
        }
        let next = match v.last_polled_at {
            Some(l) if !fresh => l + i,
            _ => {
                let base = self.base_interval(v.state, period_len(start, end));
                start + dur(base.mul_f64(phase))
            }
        };
        // Overdue (after downtime, a new vehicle, a state that shortened the interval): spread
        // over one interval from now, not all at once.
        let next = if next < now {
            now + dur(interval.mul_f64(phase))
        } else {
            next
        };
        if next + dur(self.guard()) >= end {
            return first_of_next(v.state);
        }
        Planned {
            interval,
            next_at: next,
            pushed: false,
        }
    }

    /// `budget plan`: what the config means for a fleet of `vehicles` over a typical period.
    pub fn dry_run(&self, vehicles: u64) -> DryRun {
        let len = self.period.typical();
        let base = self.base_interval(VehicleState::Unknown, len);
        let parked = self.base_interval(VehicleState::Parked, len);
        // Polls on the lattice of one period (fractional: the average over phases).
        let per = |i: Duration| (len.as_secs_f64() / i.as_secs_f64() * 1e6).round() / 1e6;
        let active_calls = per(base);
        DryRun {
            vehicles,
            calls_per_vehicle: self.calls.get(),
            period: self.period.label(),
            reserve: self.reserve,
            min_interval_s: self.min_interval.as_secs_f64(),
            base_interval_s: base.as_secs_f64(),
            parked_interval_s: parked.as_secs_f64(),
            active_calls_per_vehicle: active_calls,
            parked_calls_per_vehicle: per(parked),
            fleet_calls_at_most: active_calls * vehicles as f64,
        }
    }
}

/// The result of `budget plan`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryRun {
    pub vehicles: u64,
    pub calls_per_vehicle: u32,
    pub period: String,
    pub reserve: f64,
    pub min_interval_s: f64,
    /// An active (or not yet known) vehicle's interval.
    pub base_interval_s: f64,
    pub parked_interval_s: f64,
    /// Planned polls per period of an active vehicle (never more than the allowance).
    pub active_calls_per_vehicle: f64,
    pub parked_calls_per_vehicle: f64,
    pub fleet_calls_at_most: f64,
}

impl std::fmt::Display for DryRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = |s: f64| human(Duration::from_secs_f64(s));
        write!(
            f,
            "{} vehicles, {} calls {} → base interval {} (moving and charging vehicles; a \
             vehicle that saved calls while parked spends them, never more often than every \
             {}), parked vehicles every {}; at most {} planned calls per vehicle, {}% kept in \
             reserve; the fleet at most {} calls {}",
            thousands(self.vehicles),
            thousands(u64::from(self.calls_per_vehicle)),
            self.period,
            d(self.base_interval_s),
            d(self.min_interval_s),
            d(self.parked_interval_s),
            self.active_calls_per_vehicle,
            (self.reserve * 100.0).round(),
            thousands(self.fleet_calls_at_most.round() as u64),
            self.period,
        )
    }
}

/// `96 min`, `45 s`, `7.5 h`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 120.0 {
        format!("{} s", (s * 10.0).round() / 10.0)
    } else if s < 3.0 * 3600.0 {
        format!("{} min", (s / 60.0).round())
    } else {
        format!("{} h", (s / 360.0).round() / 10.0)
    }
}

/// `1,000`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn allowance(calls: u32, period: &str, min_s: u64) -> Allowance {
        Allowance {
            calls: NonZeroU32::new(calls).unwrap(),
            period: Period::parse(period).unwrap(),
            min_interval: Duration::from_secs(min_s),
            reserve: 0.1,
        }
    }

    #[test]
    fn periods_are_calendar_months_or_epoch_aligned() {
        let (s, e) = Period::Month.bounds(t("2026-02-14T10:00:00Z"));
        assert_eq!(
            (s, e),
            (t("2026-02-01T00:00:00Z"), t("2026-03-01T00:00:00Z"))
        );
        let p = Period::parse("60s").unwrap();
        let (s, e) = p.bounds(t("2026-02-14T10:00:59.999Z"));
        assert_eq!(
            (s, e),
            (t("2026-02-14T10:00:00Z"), t("2026-02-14T10:01:00Z"))
        );
        assert!(Period::parse("weekly").is_err());
        assert!(Period::parse("0s").is_err());
    }

    #[test]
    fn the_shipped_defaults_plan_96_minutes_and_stay_under_500() {
        let a = allowance(500, "month", 1800);
        let d = a.dry_run(1000);
        assert_eq!(d.base_interval_s.round(), 5760.0, "96 min");
        assert!(d.active_calls_per_vehicle <= 500.0);
        assert!(d.parked_interval_s > d.base_interval_s);
        let line = d.to_string();
        assert!(
            line.starts_with("1,000 vehicles, 500 calls a month → base interval 96 min"),
            "{line}"
        );
    }

    #[test]
    fn the_interval_is_the_time_left_over_the_calls_left_bounded_by_min_interval() {
        let a = allowance(10, "60s", 1);
        let now = t("2026-01-01T00:00:00Z");
        // 9 plannable calls over 60 s.
        // On the lattice: right after poll 1 at phase 0.5 of the first interval.
        let t1 = now + chrono::Duration::milliseconds((0.5 * 60_000.0 / 9.0) as i64);
        let i = a.interval(VehicleState::Moving, 1, t1, 0.5).unwrap();
        assert!((i.as_secs_f64() - 60.0 / 9.0).abs() < 0.01, "{i:?}");
        // Parked: 40 % of the calls, so intervals 2.5 times as long.
        let p = a.interval(VehicleState::Parked, 1, now, 0.0).unwrap();
        assert!((p.as_secs_f64() - 60.0 / 3.6).abs() < 1e-6);
        // Spent: nothing until the next period.
        assert_eq!(a.interval(VehicleState::Moving, 10, now, 0.5), None);
        assert_eq!(a.interval(VehicleState::Moving, 11, now, 0.0), None);
        // min_interval bounds an active vehicle.
        let slow = allowance(10, "60s", 20);
        assert_eq!(
            slow.interval(VehicleState::Charging, 0, now, 0.0),
            Some(Duration::from_secs(20))
        );
    }

    #[test]
    fn an_active_vehicle_on_track_makes_its_target_and_a_parked_one_fewer() {
        // 9 for an active vehicle (8 when its phase puts the last poll inside the guard before
        // the period's end), 3.6 on average for a parked one.
        let a = allowance(10, "60s", 1);
        let start = t("2026-01-01T00:00:00Z");
        for (state, lo, hi) in [(VehicleState::Moving, 8, 9), (VehicleState::Parked, 3, 4)] {
            for n in 0..50 {
                let id = format!("v{n}");
                let mut used = 0;
                let mut last = None;
                let mut now = start;
                loop {
                    let p = a.plan(
                        &VehicleFacts {
                            vehicle_id: &id,
                            state,
                            used,
                            last_polled_at: last,
                            last_pushed_at: None,
                        },
                        now,
                    );
                    if p.next_at >= start + chrono::Duration::seconds(60) {
                        break;
                    }
                    now = p.next_at;
                    last = Some(now);
                    used += 1;
                }
                assert!((lo..=hi).contains(&used), "{state:?} {id}: {used}");
            }
        }
    }

    #[test]
    fn a_spent_vehicle_is_planned_at_its_phase_in_the_next_period() {
        let a = allowance(10, "60s", 1);
        let now = t("2026-01-01T00:00:30Z");
        let v = VehicleFacts {
            vehicle_id: "v1",
            state: VehicleState::Moving,
            used: 9,
            last_polled_at: Some(now),
            last_pushed_at: None,
        };
        let p = a.plan(&v, now);
        assert!(p.next_at >= t("2026-01-01T00:01:00Z"));
        assert!(p.next_at < t("2026-01-01T00:01:00Z") + chrono::Duration::seconds(7));
    }

    #[test]
    fn phases_spread_a_fleet_over_the_interval() {
        let a = allowance(10, "60s", 1);
        let start = t("2026-01-01T00:00:00Z");
        let mut buckets = [0u32; 10];
        for n in 0..1000 {
            let id = format!("vehicle-{n}");
            let v = VehicleFacts {
                vehicle_id: &id,
                state: VehicleState::Moving,
                used: 0,
                last_polled_at: None,
                last_pushed_at: None,
            };
            let p = a.plan(&v, start);
            let off = (p.next_at - start).num_milliseconds() as f64 / 1000.0;
            buckets[((off / p.interval.as_secs_f64()) * 10.0) as usize % 10] += 1;
        }
        assert!(buckets.iter().all(|&b| b > 50 && b < 150), "{buckets:?}");
    }

    #[test]
    fn readings_pushed_within_the_interval_replace_the_poll() {
        let a = allowance(10, "60s", 1);
        let now = t("2026-01-01T00:00:20Z");
        let v = VehicleFacts {
            vehicle_id: "v1",
            state: VehicleState::Moving,
            used: 2,
            last_polled_at: Some(t("2026-01-01T00:00:10Z")),
            last_pushed_at: Some(t("2026-01-01T00:00:19Z")),
        };
        let p = a.plan(&v, now);
        assert!(p.pushed);
        assert_eq!(p.next_at, t("2026-01-01T00:00:19Z") + dur(p.interval));
        // An old push does not.
        let old = VehicleFacts {
            last_pushed_at: Some(t("2026-01-01T00:00:01Z")),
            ..v
        };
        assert!(!a.plan(&old, now).pushed);
    }

    #[test]
    fn the_state_comes_from_the_readings() {
        use VehicleState::*;
        assert_eq!(VehicleState::from_readings(true, "a", Some("a")), Charging);
        assert_eq!(VehicleState::from_readings(false, "a", Some("b")), Moving);
        assert_eq!(VehicleState::from_readings(false, "a", Some("a")), Parked);
        assert_eq!(VehicleState::from_readings(false, "a", None), Unknown);
    }

    #[test]
    fn no_call_leaves_in_the_guard_before_a_period_ends() {
        let a = allowance(10, "60s", 1);
        assert!(a.may_call(9, t("2026-01-01T00:00:30Z")));
        assert!(!a.may_call(10, t("2026-01-01T00:00:30Z")));
        assert!(!a.may_call(0, t("2026-01-01T00:00:59.500Z")));
    }
}
