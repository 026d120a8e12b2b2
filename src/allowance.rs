//! `smartcar-sync budget`: where each vehicle stands against its allowance this period (calls
//! used, projected at the period's end, planned interval, next poll, state), a fleet summary,
//! and `budget plan`, a dry run of the planner for the configuration and a fleet size. The
//! numbers come from the same planner ([`crate::plan`]) and counts the daemon uses.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::out;
use crate::plan::{Allowance, VehicleState};
use crate::store::{BudgetRow, Store};

/// One vehicle in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VehicleBudget {
    pub vehicle_id: String,
    pub status: String,
    pub state: VehicleState,
    pub calls_used: u32,
    /// Calls used plus the polls still planned before the period ends, at most the allowance.
    pub projected: u32,
    pub interval_s: Option<f64>,
    pub next_poll_at: Option<String>,
    pub last_pushed_at: Option<String>,
}

/// The fleet in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetBudget {
    pub period_start: String,
    pub period_end: String,
    pub calls_per_vehicle: u32,
    pub vehicles: usize,
    pub calls_used: u64,
    pub projected: u64,
    /// Vehicles whose projection reaches the allowance.
    pub at_allowance: usize,
    pub parked: usize,
    pub charging: usize,
    pub moving: usize,
    pub unknown: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetReport {
    pub fleet: FleetBudget,
    pub vehicles: Vec<VehicleBudget>,
}

/// Calls used plus the polls planned from `next` every `interval` until `end`, capped.
pub fn projected(
    used: u32,
    interval_ms: Option<i64>,
    next: Option<DateTime<Utc>>,
    end: DateTime<Utc>,
    cap: u32,
) -> u32 {
    let more = match (interval_ms, next) {
        (Some(i), Some(n)) if i > 0 && n < end => 1 + (end - n).num_milliseconds().max(0) / i,
        _ => 0,
    };
    u32::try_from(i64::from(used) + more)
        .unwrap_or(u32::MAX)
        .min(cap)
        .max(used)
}

/// Builds the report from the store at `now`.
pub async fn report(
    store: &Store,
    a: &Allowance,
    now: DateTime<Utc>,
) -> anyhow::Result<BudgetReport> {
    let (start, end) = a.period.bounds(now);
    let rows: Vec<BudgetRow> = store.budget_rows(start).await?;
    let fmt = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339());
    let vehicles: Vec<VehicleBudget> = rows
        .iter()
        .map(|r| {
            // A plan made in an earlier period says nothing of this one.
            let next = r.next_poll_at;
            VehicleBudget {
                vehicle_id: r.vehicle_id.clone(),
                status: r.status.clone(),
                state: r.state,
                calls_used: r.used,
                projected: projected(r.used, r.interval_ms, next, end, a.calls.get()),
                interval_s: r.interval_ms.map(|i| i as f64 / 1000.0),
                next_poll_at: fmt(next),
                last_pushed_at: fmt(r.last_pushed_at),
            }
        })
        .collect();
    let count = |s: VehicleState| vehicles.iter().filter(|v| v.state == s).count();
    let fleet = FleetBudget {
        period_start: start.to_rfc3339(),
        period_end: end.to_rfc3339(),
        calls_per_vehicle: a.calls.get(),
        vehicles: vehicles.len(),
        calls_used: vehicles.iter().map(|v| u64::from(v.calls_used)).sum(),
        projected: vehicles.iter().map(|v| u64::from(v.projected)).sum(),
        at_allowance: vehicles
            .iter()
            .filter(|v| v.projected >= a.calls.get())
            .count(),
        parked: count(VehicleState::Parked),
        charging: count(VehicleState::Charging),
        moving: count(VehicleState::Moving),
        unknown: count(VehicleState::Unknown),
    };
    Ok(BudgetReport { fleet, vehicles })
}

/// Prints the report (a table, or JSON).
pub fn print(r: &BudgetReport, json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(r)?)?;
        return Ok(());
    }
    out!(
        "{:<38} {:<10} {:>5} {:>9} {:>10} {:<25} STATUS",
        "VEHICLE",
        "STATE",
        "USED",
        "PROJECTED",
        "INTERVAL",
        "NEXT POLL"
    )?;
    for v in &r.vehicles {
        out!(
            "{:<38} {:<10} {:>5} {:>9} {:>10} {:<25} {}",
            v.vehicle_id,
            v.state.as_str(),
            v.calls_used,
            v.projected,
            v.interval_s
                .map(|s| crate::plan::human(std::time::Duration::from_secs_f64(s.max(0.0))))
                .unwrap_or_else(|| "-".into()),
            v.next_poll_at.as_deref().unwrap_or("-"),
            v.status
        )?;
    }
    let f = &r.fleet;
    out!(
        "{} vehicles, period {} to {}: {} calls used, {} projected at the period's end \
         (allowance {} per vehicle, {} in all); {} vehicles projected at their allowance; \
         {} moving, {} charging, {} parked, {} not yet known",
        f.vehicles,
        f.period_start,
        f.period_end,
        f.calls_used,
        f.projected,
        f.calls_per_vehicle,
        u64::from(f.calls_per_vehicle) * f.vehicles as u64,
        f.at_allowance,
        f.moving,
        f.charging,
        f.parked,
        f.unknown
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projection_adds_the_polls_planned_before_the_end_and_is_capped() {
        let end = DateTime::parse_from_rfc3339("2026-01-01T00:01:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let next = end - chrono::Duration::seconds(20);
        assert_eq!(projected(3, Some(10_000), Some(next), end, 10), 6);
        assert_eq!(projected(3, Some(1_000), Some(next), end, 10), 10);
        assert_eq!(projected(3, None, None, end, 10), 3);
        assert_eq!(projected(3, Some(10_000), Some(end), end, 10), 3);
    }
}
