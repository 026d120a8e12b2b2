//! Signal readings, computed on demand. A reading is a pure function of (seed, vehicle, code,
//! period index), so polling twice inside one period returns identical readings and nothing is
//! stored per reading.
//!
//! Each vehicle follows a repeating cycle of segments (parked, driving, charging/refuelling), laid
//! out on absolute time from a fixed epoch. A signal samples that timeline at the start of its
//! current period (its `oemUpdatedAt`), so the odometer never goes back, the state of charge falls
//! while driving and rises while charging, and the charging signals agree with it. Coupled signals
//! share a phase so that a single poll sees one consistent moment.

use serde_json::{Value, json};

use super::config::Behaviour;
use super::fleet::{Powertrain, VehicleView};
use super::ids::{self, mix};

/// 2025-01-01T00:00:00Z, the origin of every vehicle's timeline (fixed so restarts agree).
const EPOCH0_MS: i64 = 1_735_689_600_000;
/// Update periods per activity segment.
const SEGMENT_PERIODS: i64 = 5;
/// Segments per repeating cycle.
const CYCLE: usize = 12;
const TAG_PHASE: u64 = 0x7068_6173;
const KM_TO_MILES: f64 = 0.621_371;

/// Signals sampled together share a phase, so one poll sees one consistent moment.
#[derive(Clone, Copy)]
enum PhaseGroup {
    Motion,
    Energy,
    Closure,
    Own(u64),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Odometer,
    Soc,
    EvRange,
    IsCharging,
    CableConnected,
    DetailedCharging,
    Voltage,
    FuelLevel,
    FuelRange,
    OilLife,
    Location,
    IsAtHome,
    Doors,
    IsLocked,
    LowVoltageSoc,
    /// Always `ERROR` COMPATIBILITY/VEHICLE_NOT_CAPABLE.
    NotCapable,
    /// Always `UNAVAILABLE`.
    Unavailable,
}

/// One signal code of the catalogue (real Smartcar v3 codes).
pub(crate) struct SignalDef {
    pub code: &'static str,
    pub group: &'static str,
    pub name: &'static str,
    phase: PhaseGroup,
    kind: Kind,
}

const fn s(
    code: &'static str,
    group: &'static str,
    name: &'static str,
    phase: PhaseGroup,
    kind: Kind,
) -> SignalDef {
    SignalDef {
        code,
        group,
        name,
        phase,
        kind,
    }
}

use PhaseGroup::{Closure, Energy, Motion, Own};

pub(crate) const SIGNALS: &[SignalDef] = &[
    s(
        "odometer-traveleddistance",
        "Odometer",
        "TraveledDistance",
        Motion,
        Kind::Odometer,
    ),
    s(
        "tractionbattery-stateofcharge",
        "TractionBattery",
        "StateOfCharge",
        Energy,
        Kind::Soc,
    ),
    s(
        "tractionbattery-range",
        "TractionBattery",
        "Range",
        Energy,
        Kind::EvRange,
    ),
    s(
        "charge-ischarging",
        "Charge",
        "IsCharging",
        Energy,
        Kind::IsCharging,
    ),
    s(
        "charge-ischargingcableconnected",
        "Charge",
        "IsChargingCableConnected",
        Energy,
        Kind::CableConnected,
    ),
    s(
        "charge-detailedchargingstatus",
        "Charge",
        "DetailedChargingStatus",
        Energy,
        Kind::DetailedCharging,
    ),
    s("charge-voltage", "Charge", "Voltage", Energy, Kind::Voltage),
    s(
        "internalcombustionengine-fuellevel",
        "InternalCombustionEngine",
        "FuelLevel",
        Energy,
        Kind::FuelLevel,
    ),
    s(
        "internalcombustionengine-range",
        "InternalCombustionEngine",
        "Range",
        Energy,
        Kind::FuelRange,
    ),
    s(
        "internalcombustionengine-oillife",
        "InternalCombustionEngine",
        "OilLife",
        Motion,
        Kind::OilLife,
    ),
    s(
        "location-preciselocation",
        "Location",
        "PreciseLocation",
        Motion,
        Kind::Location,
    ),
    s(
        "location-isathome",
        "Location",
        "IsAtHome",
        Motion,
        Kind::IsAtHome,
    ),
    s("closure-doors", "Closure", "Doors", Closure, Kind::Doors),
    s(
        "closure-islocked",
        "Closure",
        "IsLocked",
        Closure,
        Kind::IsLocked,
    ),
    s(
        "lowvoltagebattery-stateofcharge",
        "LowVoltageBattery",
        "StateOfCharge",
        Own(1),
        Kind::LowVoltageSoc,
    ),
    s(
        "closure-sunroof",
        "Closure",
        "Sunroof",
        Own(2),
        Kind::NotCapable,
    ),
    s(
        "closure-reartrunk",
        "Closure",
        "RearTrunk",
        Own(3),
        Kind::Unavailable,
    ),
];

const BEV_SET: &[u8] = &[0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14];
const PHEV_SET: &[u8] = &[0, 1, 2, 3, 4, 5, 7, 8, 10, 12, 13, 14];
const ICE_SET: &[u8] = &[0, 7, 8, 9, 10, 11, 12, 13, 14];
/// Every third vehicle (index 0, 3, 6, …) also has one ERROR and one UNAVAILABLE signal.
const EXTRA_SET: &[u8] = &[15, 16];

/// The signal codes (indices into [`SIGNALS`]) a vehicle exposes, in response order.
pub(crate) fn signal_set(v: &VehicleView) -> Vec<u8> {
    let base = match v.model().powertrain {
        Powertrain::Bev => BEV_SET,
        Powertrain::Phev => PHEV_SET,
        Powertrain::Ice => ICE_SET,
    };
    let mut out = base.to_vec();
    if v.index % 3 == 0 {
        out.extend_from_slice(EXTRA_SET);
    }
    out
}

/// Index of a code in [`SIGNALS`].
pub(crate) fn code_index(code: &str) -> Option<u8> {
    SIGNALS.iter().position(|d| d.code == code).map(|i| i as u8)
}

pub(crate) enum Status {
    Success { body: Value, oem_ms: i64 },
    Error,
    Unavailable,
}

pub(crate) struct Reading {
    pub def: u8,
    pub status: Status,
    pub meta: Meta,
}

/// How a reading's `meta` is served: as usual, or one of the odd forms a variant asks for
/// (`Variants::empty_meta`, `Variants::out_of_range_times`). Odd readings are not recorded as
/// served: a client cannot (or must not) store them as samples.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Meta {
    Normal,
    /// `"meta": {}`
    Empty,
    /// `oemUpdatedAt` replaced by this impossible value.
    BadTime(Value),
}

impl Reading {
    pub(crate) fn def(&self) -> &'static SignalDef {
        &SIGNALS[self.def as usize % SIGNALS.len()]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Activity {
    Parked,
    Drive,
    Charge,
}

/// A vehicle's repeating cycle, derived from its spec hash.
struct Dynamics {
    cycle: [Activity; CYCLE],
    drives_before: [u32; CYCLE],
    drives: u32,
    soc_start: [f64; CYCLE],
    soc_drop: f64,
    soc_gain: f64,
    fuel_start: [f64; CYCLE],
    fuel_drop: f64,
    fuel_gain: f64,
    km_per_drive: f64,
    odo_base: f64,
    home: (f64, f64),
    radius_km: f64,
}

const HOMES: &[(f64, f64)] = &[
    (37.7749, -122.4194),
    (40.7128, -74.0060),
    (51.5074, -0.1278),
    (48.1351, 11.5820),
    (34.0522, -118.2437),
    (47.6062, -122.3321),
    (52.5200, 13.4050),
    (43.6532, -79.3832),
];

/// Start-of-segment levels of a quantity that drops by `drop` per drive and gains `gain` per
/// charge, shifted so the whole cycle stays within [8, 95].
fn levels(cycle: &[Activity; CYCLE], drop: f64, gain: f64, jitter: f64) -> [f64; CYCLE] {
    let mut start = [0.0; CYCLE];
    let (mut rel, mut lo, mut hi) = (0.0f64, 0.0f64, 0.0f64);
    for (p, a) in cycle.iter().enumerate() {
        start[p] = rel;
        rel += match a {
            Activity::Drive => -drop,
            Activity::Charge => gain,
            Activity::Parked => 0.0,
        };
        lo = lo.min(rel);
        hi = hi.max(rel);
    }
    let span = hi - lo;
    let offset = 92.0 - hi - jitter.min((84.0 - span).max(0.0));
    for x in &mut start {
        *x += offset;
    }
    start
}

fn dynamics(seed: u64, v: &VehicleView, seg_ms: i64) -> Dynamics {
    let hh = |tag: u64| ids::h(seed ^ v.spec, TAG_PHASE ^ 0xd1, tag);
    // Shuffle segment positions, then assign drives and charges to the first ones.
    let mut pos: [usize; CYCLE] = std::array::from_fn(|i| i);
    for i in (1..CYCLE).rev() {
        let j = (hh(100 + i as u64) % (i as u64 + 1)) as usize;
        pos.swap(i, j);
    }
    let mut drives = 2 + (hh(1) % 3) as usize;
    let mut charges = 1 + (hh(2) % 2) as usize;
    let mut cycle = [Activity::Parked; CYCLE];
    for &p in &pos[..drives] {
        cycle[p] = Activity::Drive;
    }
    for &p in &pos[drives..drives + charges] {
        cycle[p] = Activity::Charge;
    }
    // A fixed behaviour: the whole cycle is that one activity (parked: nothing moves; charging:
    // the state of charge rises and `charge-ischarging` is true; driving: odometer and location
    // change with every update period).
    if let Some(b) = v.behaviour {
        let a = match b {
            Behaviour::Parked => Activity::Parked,
            Behaviour::Charging => Activity::Charge,
            Behaviour::Driving => Activity::Drive,
        };
        cycle = [a; CYCLE];
        drives = if a == Activity::Drive { CYCLE } else { 0 };
        charges = if a == Activity::Charge { CYCLE } else { 1 };
    }
    let mut drives_before = [0u32; CYCLE];
    let mut n = 0;
    for p in 0..CYCLE {
        drives_before[p] = n;
        if cycle[p] == Activity::Drive {
            n += 1;
        }
    }
    let soc_drop = 6.0 + (hh(3) % 8) as f64;
    let soc_gain = if v.behaviour == Some(Behaviour::Charging) {
        // Slow enough to keep rising for a long run before it reaches 100 %.
        0.2
    } else {
        soc_drop * drives as f64 / charges as f64
    };
    let fuel_drop = 3.0 + (hh(4) % 5) as f64;
    let fuel_gain = fuel_drop * drives as f64 / charges.max(1) as f64;
    let speed_kmh = 25.0 + (hh(5) % 30) as f64;
    let km_per_drive = speed_kmh * seg_ms as f64 / 3_600_000.0;
    let (lat, lon) = HOMES[(hh(6) % HOMES.len() as u64) as usize];
    let jitter = |k: u64| ((hh(k) % 10_000) as f64 / 10_000.0 - 0.5) * 0.1;
    Dynamics {
        cycle,
        drives_before,
        drives: drives as u32,
        soc_start: levels(&cycle, soc_drop, soc_gain, (hh(7) % 25) as f64),
        soc_drop,
        soc_gain,
        fuel_start: levels(&cycle, fuel_drop, fuel_gain, (hh(8) % 30) as f64),
        fuel_drop,
        fuel_gain,
        km_per_drive,
        odo_base: 5_000.0 + (hh(9) % 60_000) as f64,
        home: (lat + jitter(10), lon + jitter(11)),
        radius_km: km_per_drive * drives as f64 / std::f64::consts::TAU,
    }
}

/// The vehicle's state at one instant.
struct State {
    activity: Activity,
    prev: Activity,
    /// Drives completed since the epoch (fractional while driving).
    drives_total: f64,
    /// Drives completed in the current cycle (fractional while driving).
    drives_in_cycle: f64,
    soc: f64,
    fuel: f64,
}

fn state_at(d: &Dynamics, t_ms: i64, seg_ms: i64) -> State {
    let rel = t_ms - EPOCH0_MS;
    let seg = rel.div_euclid(seg_ms);
    let frac = rel.rem_euclid(seg_ms) as f64 / seg_ms as f64;
    let p = seg.rem_euclid(CYCLE as i64) as usize;
    let cycles = seg.div_euclid(CYCLE as i64) as f64;
    let activity = d.cycle[p];
    let prev = d.cycle[(p + CYCLE - 1) % CYCLE];
    let driving = if activity == Activity::Drive {
        frac
    } else {
        0.0
    };
    let drives_in_cycle = d.drives_before[p] as f64 + driving;
    let (soc_delta, fuel_delta) = match activity {
        Activity::Drive => (-d.soc_drop * frac, -d.fuel_drop * frac),
        Activity::Charge => (d.soc_gain * frac, d.fuel_gain * frac),
        Activity::Parked => (0.0, 0.0),
    };
    State {
        activity,
        prev,
        drives_total: cycles * d.drives as f64 + drives_in_cycle,
        drives_in_cycle,
        soc: d.soc_start[p] + soc_delta,
        fuel: d.fuel_start[p] + fuel_delta,
    }
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn r6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Start of the period the signal is in: its `oemUpdatedAt`.
fn sample_time(seed: u64, v: &VehicleView, group: PhaseGroup, now_ms: i64, period_ms: i64) -> i64 {
    let g = match group {
        Motion => 1,
        Energy => 2,
        Closure => 3,
        Own(n) => 16 + n,
    };
    let phase = (ids::h(seed ^ v.spec, TAG_PHASE, g) % period_ms as u64) as i64;
    phase + (now_ms - phase).div_euclid(period_ms) * period_ms
}

/// Per-vehicle reading context: the cycle is derived once per request, not once per signal.
pub(crate) struct Sampler {
    seed: u64,
    v: VehicleView,
    period_ms: i64,
    seg_ms: i64,
    d: Dynamics,
    imperial: bool,
}

impl Sampler {
    pub(crate) fn new(seed: u64, v: VehicleView, period_ms: i64, imperial: bool) -> Sampler {
        let period_ms = period_ms.max(1);
        let seg_ms = period_ms.saturating_mul(SEGMENT_PERIODS);
        Sampler {
            seed,
            v,
            period_ms,
            seg_ms,
            d: dynamics(seed, &v, seg_ms),
            imperial,
        }
    }

    fn distance(&self, km: f64) -> (f64, &'static str) {
        if self.imperial {
            (r1(km * KM_TO_MILES), "miles")
        } else {
            (r1(km), "kilometers")
        }
    }

    /// The reading of signal `def` (an index into [`SIGNALS`]) at `now_ms`.
    pub(crate) fn reading(&self, def: u8, now_ms: i64) -> Reading {
        let sd = &SIGNALS[def as usize % SIGNALS.len()];
        let status = match sd.kind {
            Kind::NotCapable => Status::Error,
            Kind::Unavailable => Status::Unavailable,
            kind => {
                let t = sample_time(self.seed, &self.v, sd.phase, now_ms, self.period_ms);
                Status::Success {
                    body: self.body(kind, t),
                    oem_ms: t,
                }
            }
        };
        Reading {
            def,
            status,
            meta: Meta::Normal,
        }
    }

    fn body(&self, kind: Kind, t: i64) -> Value {
        let d = &self.d;
        let st = state_at(d, t, self.seg_ms);
        let period_k = t.div_euclid(self.period_ms) as u64;
        let odometer_km = (d.odo_base + d.km_per_drive * st.drives_total).max(0.0);
        let range = self.v.model().range_km;
        let charging = st.activity == Activity::Charge;
        let cable = charging || (st.activity == Activity::Parked && st.prev == Activity::Charge);
        let percent = |x: f64| json!({"unit": "percent", "value": r1(x.clamp(0.0, 100.0))});
        match kind {
            Kind::Odometer => {
                let (value, unit) = self.distance(odometer_km);
                json!({"unit": unit, "value": value})
            }
            Kind::Soc => percent(st.soc),
            Kind::EvRange => {
                let (value, unit) = self.distance(st.soc * range / 100.0);
                json!({"unit": unit, "value": value})
            }
            Kind::IsCharging => json!({"value": charging}),
            Kind::CableConnected => json!({"value": cable}),
            Kind::DetailedCharging => {
                let s = if charging {
                    "CHARGING"
                } else if cable {
                    "FULLY_CHARGED"
                } else {
                    "NOT_CHARGING"
                };
                json!({"value": s})
            }
            Kind::Voltage => {
                let volts = if charging {
                    228 + mix(self.v.spec ^ period_k) % 6
                } else {
                    0
                };
                json!({"unit": "volts", "value": volts})
            }
            Kind::FuelLevel => percent(st.fuel),
            Kind::FuelRange => {
                let full = if self.v.model().powertrain == Powertrain::Ice {
                    range
                } else {
                    550.0
                };
                let (value, unit) = self.distance(st.fuel * full / 100.0);
                json!({"unit": unit, "value": value})
            }
            Kind::OilLife => percent(100.0 - (odometer_km % 12_000.0) / 120.0),
            Kind::Location => self.location(&st),
            Kind::IsAtHome => {
                let home = st.activity != Activity::Drive
                    && (st.drives_in_cycle.round() as u32) % d.drives.max(1) == 0;
                json!({"value": home})
            }
            Kind::Doors | Kind::IsLocked => {
                let r = mix(self.v.spec ^ mix(period_k)) % 20;
                let locked = st.activity == Activity::Drive || r >= 2;
                if kind == Kind::IsLocked {
                    return json!({"value": locked});
                }
                let values: Vec<Value> = (0..4)
                    .map(|i| {
                        json!({"row": i / 2, "column": i % 2,
                               "isOpen": i == 0 && !locked && r == 0, "isLocked": locked})
                    })
                    .collect();
                json!({"values": values, "rowCount": 2, "columnCount": 2})
            }
            Kind::LowVoltageSoc => {
                percent(72.0 + (mix(self.v.spec ^ period_k ^ 0x1f) % 250) as f64 / 10.0)
            }
            Kind::NotCapable | Kind::Unavailable => Value::Null,
        }
    }

    /// A loop around home, driven a little further with every drive of the cycle.
    fn location(&self, st: &State) -> Value {
        let d = &self.d;
        let theta = std::f64::consts::TAU * st.drives_in_cycle / d.drives.max(1) as f64;
        let east_km = d.radius_km * (1.0 - theta.cos());
        let north_km = d.radius_km * theta.sin();
        let lat = d.home.0 + north_km / 111.32;
        let lon = d.home.1 + east_km / (111.32 * d.home.0.to_radians().cos());
        let heading = r1(theta.to_degrees().rem_euclid(360.0));
        const DIRS: [&str; 8] = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"];
        let dir = DIRS[(((heading + 22.5) / 45.0) as usize) % 8];
        let kind = if st.activity == Activity::Drive {
            "CURRENT"
        } else {
            "LAST_PARKED"
        };
        json!({"latitude": r6(lat), "longitude": r6(lon), "heading": heading,
               "direction": dir, "locationType": kind})
    }
}

/// The number a reading carries, if any: a numeric or boolean `value` (as 1/0).
/// The number a client extracts from a body: `value` (booleans as 0/1), or the legacy
/// state-of-charge body's `percentage`.
pub(crate) fn value_num(body: &Value) -> Option<f64> {
    match body.get("value").or_else(|| body.get("percentage"))? {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Fleet;

    fn num(r: &Reading) -> f64 {
        match &r.status {
            Status::Success { body, .. } => value_num(body).unwrap_or(f64::NAN),
            _ => f64::NAN,
        }
    }

    #[test]
    fn odometer_monotonic_and_soc_follows_charging() {
        let fleet = Fleet::generate(5, 20, 2);
        let period = 1_000;
        let mut saw_charge_rise = false;
        let mut saw_drive_fall = false;
        for i in 0..40u32 {
            let Some(v) = fleet.view(i) else { continue };
            let s = Sampler::new(5, v, period, false);
            let set = signal_set(&v);
            let has_soc = set.contains(&1);
            let mut last_odo = f64::MIN;
            let mut last_soc: Option<f64> = None;
            let mut was_charging = false;
            let start = EPOCH0_MS + 400 * 86_400_000;
            for k in 0..200 {
                let now = start + k * period;
                let odo = num(&s.reading(0, now));
                assert!(odo >= last_odo, "odometer went back: {last_odo} -> {odo}");
                last_odo = odo;
                if has_soc {
                    let soc = num(&s.reading(1, now));
                    let charging = num(&s.reading(3, now)) == 1.0;
                    assert!((0.0..=100.0).contains(&soc));
                    if let Some(prev) = last_soc {
                        if soc > prev {
                            assert!(charging || was_charging, "soc rose without charging");
                            saw_charge_rise = true;
                        }
                        if soc < prev {
                            saw_drive_fall = true;
                        }
                    }
                    last_soc = Some(soc);
                    was_charging = charging;
                }
            }
        }
        assert!(saw_charge_rise && saw_drive_fall);
    }

    #[test]
    fn same_period_same_reading() {
        let fleet = Fleet::generate(5, 1, 1);
        let Some(v) = fleet.view(0) else {
            panic!("no vehicle")
        };
        let s = Sampler::new(5, v, 60_000, false);
        for def in signal_set(&v) {
            let a = s.reading(def, EPOCH0_MS + 1_000_000_000);
            let b = s.reading(def, EPOCH0_MS + 1_000_000_001);
            match (a.status, b.status) {
                (
                    Status::Success { body: x, oem_ms: p },
                    Status::Success { body: y, oem_ms: q },
                ) => {
                    if p == q {
                        assert_eq!(x, y);
                    }
                }
                (Status::Error, Status::Error) | (Status::Unavailable, Status::Unavailable) => {}
                _ => panic!("status changed"),
            }
        }
    }
}
