//! The generated fleet: users, their vehicles and connections. Only identity and a few bytes of
//! state per vehicle are stored (ids as `u128`); readings are computed on the fly in
//! [`super::readings`], so 100,000 vehicles cost a few tens of MB.

use std::collections::HashMap;

use super::config::Behaviour;
use super::config::{ForcedError, VehicleMode};
use super::ids::{self, TAG_CONNECTION, TAG_SPEC, TAG_USER, TAG_VEHICLE};

/// Drivetrain as the API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Powertrain {
    Bev,
    Phev,
    Ice,
}

impl Powertrain {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Powertrain::Bev => "BEV",
            Powertrain::Phev => "PHEV",
            Powertrain::Ice => "ICE",
        }
    }
}

/// A model of the catalogue; `range_km` is the electric range (BEV, PHEV) or the fuel range (ICE).
pub(crate) struct Model {
    pub make: &'static str,
    pub model: &'static str,
    pub powertrain: Powertrain,
    pub range_km: f64,
}

const fn m(
    make: &'static str,
    model: &'static str,
    powertrain: Powertrain,
    range_km: f64,
) -> Model {
    Model {
        make,
        model,
        powertrain,
        range_km,
    }
}

pub(crate) const MODELS: &[Model] = &[
    m("Tesla", "Model 3", Powertrain::Bev, 510.0),
    m("Tesla", "Model Y", Powertrain::Bev, 480.0),
    m("Ford", "Mustang Mach-E", Powertrain::Bev, 440.0),
    m("Hyundai", "Ioniq 5", Powertrain::Bev, 430.0),
    m("Volkswagen", "ID.4", Powertrain::Bev, 400.0),
    m("Kia", "EV6", Powertrain::Bev, 450.0),
    m("Chevrolet", "Bolt EV", Powertrain::Bev, 380.0),
    m("BMW", "i4", Powertrain::Bev, 480.0),
    m("Nissan", "Leaf", Powertrain::Bev, 270.0),
    m("Polestar", "2", Powertrain::Bev, 440.0),
    m("Toyota", "RAV4 Prime", Powertrain::Phev, 68.0),
    m("Volvo", "XC60 Recharge", Powertrain::Phev, 55.0),
    m("Jeep", "Wrangler 4xe", Powertrain::Phev, 35.0),
    m("Ford", "F-150", Powertrain::Ice, 700.0),
    m("Toyota", "Camry", Powertrain::Ice, 900.0),
    m("Honda", "Civic", Powertrain::Ice, 750.0),
];
const BEV_MODELS: u64 = 10;
const PHEV_MODELS: u64 = 3;
const ICE_MODELS: u64 = 3;

/// 2024-01-01T00:00:00Z: generated connections were created during 2024.
const CREATED_BASE_MS: i64 = 1_704_067_200_000;

pub(crate) struct User {
    pub id: String,
    /// Active vehicles, in connection order.
    pub vehicles: Vec<u32>,
}

/// One vehicle: 64-odd bytes.
pub(crate) struct Vehicle {
    pub id: u128,
    pub connection_id: u128,
    pub user: u32,
    pub spec: u64,
    pub model: u8,
    pub year: u16,
    pub mode: VehicleMode,
    pub active: bool,
    pub no_signals: bool,
    pub forced: Option<ForcedError>,
    pub created_ms: i64,
    /// A fixed behaviour instead of the generated parked/driving/charging cycle.
    pub behaviour: Option<Behaviour>,
}

/// A copy of what a request needs about one vehicle, taken under the lock and used outside it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VehicleView {
    pub index: u32,
    pub id: u128,
    pub connection_id: u128,
    pub user: u32,
    pub spec: u64,
    pub model: u8,
    pub year: u16,
    pub mode: VehicleMode,
    pub active: bool,
    pub no_signals: bool,
    pub forced: Option<ForcedError>,
    pub created_ms: i64,
    /// A fixed behaviour instead of the generated parked/driving/charging cycle.
    pub behaviour: Option<Behaviour>,
}

impl Vehicle {
    /// Fixes the behaviour; a vehicle that charges gets an electric model if it had none (an
    /// ICE car has no charging signals to show it).
    pub(crate) fn set_behaviour(&mut self, b: Option<Behaviour>) {
        if b == Some(Behaviour::Charging)
            && MODELS[self.model as usize % MODELS.len()].powertrain == Powertrain::Ice
        {
            self.model = (self.spec % BEV_MODELS) as u8;
        }
        self.behaviour = b;
    }
}

impl VehicleView {
    pub(crate) fn model(&self) -> &'static Model {
        &MODELS[self.model as usize % MODELS.len()]
    }
}

pub(crate) struct Fleet {
    seed: u64,
    pub users: Vec<User>,
    user_index: HashMap<String, u32>,
    pub vehicles: Vec<Vehicle>,
    vehicle_index: HashMap<u128, u32>,
    connection_index: HashMap<u128, u32>,
    active_live: Vec<u32>,
    active_simulated: Vec<u32>,
}

impl Fleet {
    pub(crate) fn generate(seed: u64, users: usize, per_user: usize) -> Fleet {
        let mut fleet = Fleet {
            seed,
            users: Vec::with_capacity(users),
            user_index: HashMap::with_capacity(users),
            vehicles: Vec::with_capacity(users * per_user),
            vehicle_index: HashMap::with_capacity(users * per_user),
            connection_index: HashMap::with_capacity(users * per_user),
            active_live: Vec::with_capacity(users * per_user),
            active_simulated: Vec::new(),
        };
        for u in 0..users {
            let uid = ids::fmt_uuid(ids::uuid(seed, TAG_USER, u as u64));
            let ui = fleet.ensure_user(&uid);
            for _ in 0..per_user {
                let idx = fleet.vehicles.len() as u64;
                let created = CREATED_BASE_MS
                    + (ids::h(seed, TAG_CONNECTION, idx) % (365 * 86_400_000)) as i64;
                fleet.add_vehicle(ui, VehicleMode::Live, created);
            }
        }
        fleet
    }

    fn ensure_user(&mut self, user_id: &str) -> u32 {
        if let Some(&i) = self.user_index.get(user_id) {
            return i;
        }
        let i = self.users.len() as u32;
        self.users.push(User {
            id: user_id.to_owned(),
            vehicles: Vec::new(),
        });
        self.user_index.insert(user_id.to_owned(), i);
        i
    }

    fn add_vehicle(&mut self, user: u32, mode: VehicleMode, created_ms: i64) -> u32 {
        let idx = self.vehicles.len() as u32;
        let seed = self.seed;
        let spec = ids::h(seed, TAG_SPEC, idx as u64);
        let pick = spec % 100;
        let model = if pick < 70 {
            (spec >> 8) % BEV_MODELS
        } else if pick < 85 {
            BEV_MODELS + (spec >> 8) % PHEV_MODELS
        } else {
            BEV_MODELS + PHEV_MODELS + (spec >> 8) % ICE_MODELS
        };
        let v = Vehicle {
            id: ids::uuid(seed, TAG_VEHICLE, idx as u64),
            connection_id: ids::uuid(seed, TAG_CONNECTION, idx as u64),
            user,
            spec,
            model: model as u8,
            year: 2017 + ((spec >> 16) % 9) as u16,
            mode,
            active: true,
            no_signals: false,
            forced: None,
            created_ms,
            behaviour: None,
        };
        self.vehicle_index.insert(v.id, idx);
        self.connection_index.insert(v.connection_id, idx);
        self.vehicles.push(v);
        self.users[user as usize].vehicles.push(idx);
        match mode {
            VehicleMode::Live => self.active_live.push(idx),
            VehicleMode::Simulated => self.active_simulated.push(idx),
        }
        idx
    }

    /// Connects a new vehicle to `user_id` (created if unknown); returns its id.
    pub(crate) fn connect(&mut self, user_id: &str, mode: VehicleMode, now_ms: i64) -> String {
        let u = self.ensure_user(user_id);
        let idx = self.add_vehicle(u, mode, now_ms);
        ids::fmt_uuid(self.vehicles[idx as usize].id)
    }

    /// Disconnects by vehicle index; false when already gone.
    pub(crate) fn disconnect(&mut self, idx: u32) -> bool {
        let Some(v) = self.vehicles.get_mut(idx as usize) else {
            return false;
        };
        if !v.active {
            return false;
        }
        v.active = false;
        let (user, mode) = (v.user, v.mode);
        let list = match mode {
            VehicleMode::Live => &mut self.active_live,
            VehicleMode::Simulated => &mut self.active_simulated,
        };
        list.retain(|&i| i != idx);
        if let Some(u) = self.users.get_mut(user as usize) {
            u.vehicles.retain(|&i| i != idx);
        }
        true
    }

    pub(crate) fn vehicle_by_id(&self, id: &str) -> Option<u32> {
        ids::parse_uuid(id).and_then(|u| self.vehicle_index.get(&u).copied())
    }

    pub(crate) fn vehicle_by_connection(&self, id: &str) -> Option<u32> {
        ids::parse_uuid(id).and_then(|u| self.connection_index.get(&u).copied())
    }

    pub(crate) fn user_by_id(&self, id: &str) -> Option<u32> {
        self.user_index.get(id).copied()
    }

    pub(crate) fn view(&self, idx: u32) -> Option<VehicleView> {
        self.vehicles.get(idx as usize).map(|v| VehicleView {
            index: idx,
            id: v.id,
            connection_id: v.connection_id,
            user: v.user,
            spec: v.spec,
            model: v.model,
            year: v.year,
            mode: v.mode,
            active: v.active,
            no_signals: v.no_signals,
            forced: v.forced,
            created_ms: v.created_ms,
            behaviour: v.behaviour,
        })
    }

    pub(crate) fn user_id(&self, user: u32) -> &str {
        self.users.get(user as usize).map_or("", |u| u.id.as_str())
    }

    /// Active vehicles in connection order: all of the app's, or one user's.
    pub(crate) fn active(&self, user: Option<u32>, mode: VehicleMode) -> Vec<u32> {
        match user {
            None => match mode {
                VehicleMode::Live => self.active_live.clone(),
                VehicleMode::Simulated => self.active_simulated.clone(),
            },
            Some(u) => self.users.get(u as usize).map_or_else(Vec::new, |u| {
                u.vehicles
                    .iter()
                    .copied()
                    .filter(|&i| self.vehicles[i as usize].mode == mode)
                    .collect()
            }),
        }
    }

    /// Number of active vehicles of one mode, without copying the list.
    pub(crate) fn active_count(&self, mode: VehicleMode) -> usize {
        match mode {
            VehicleMode::Live => self.active_live.len(),
            VehicleMode::Simulated => self.active_simulated.len(),
        }
    }

    /// A page of the app-wide active list, without copying all of it.
    pub(crate) fn active_page(&self, mode: VehicleMode, start: usize, len: usize) -> &[u32] {
        let list = match mode {
            VehicleMode::Live => &self.active_live,
            VehicleMode::Simulated => &self.active_simulated,
        };
        let start = start.min(list.len());
        let end = start.saturating_add(len).min(list.len());
        &list[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_mostly_bev() {
        let a = Fleet::generate(9, 50, 2);
        let b = Fleet::generate(9, 50, 2);
        assert_eq!(a.users[3].id, b.users[3].id);
        assert_eq!(a.vehicles[7].id, b.vehicles[7].id);
        let bev = (0..100u32)
            .filter_map(|i| a.view(i))
            .filter(|v| v.model().powertrain == Powertrain::Bev)
            .count();
        assert!((50..=90).contains(&bev), "{bev}");
    }

    #[test]
    fn disconnect_removes_from_lists() {
        let mut f = Fleet::generate(1, 2, 2);
        assert!(f.disconnect(1));
        assert!(!f.disconnect(1));
        assert_eq!(f.active(None, VehicleMode::Live), vec![0, 2, 3]);
        assert_eq!(f.active(Some(0), VehicleMode::Live), vec![0]);
    }
}
