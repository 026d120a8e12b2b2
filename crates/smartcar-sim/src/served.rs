//! The record of readings served, so a check can compare what a client stored with what it was
//! given. Distinct by (vehicle, code, oemUpdatedAt as rendered).

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::ids;
use super::readings::{Meta, Reading, Status, value_num};

/// One distinct SUCCESS reading handed out by `/signals`, the single-signal endpoint or the
/// webhook helper. `oem_updated_at` is as precise as the format it was served in.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ServedReading {
    pub vehicle_id: String,
    pub code: String,
    pub oem_updated_at: DateTime<Utc>,
    pub value_num: Option<f64>,
    pub body: serde_json::Value,
}

#[derive(Default)]
pub(crate) struct ServedLog {
    seen: HashSet<(u32, u8, i64)>,
    list: Vec<ServedReading>,
}

impl ServedLog {
    /// Records the SUCCESS readings of one vehicle; `precision_ms` is 1000 when timestamps were
    /// served as epoch seconds, else 1.
    pub(crate) fn record(
        &mut self,
        vehicle: u32,
        vehicle_id: u128,
        readings: &[Reading],
        precision_ms: i64,
    ) {
        for r in readings {
            let Status::Success { body, oem_ms } = &r.status else {
                continue;
            };
            if r.meta != Meta::Normal {
                continue;
            }
            let oem = oem_ms.div_euclid(precision_ms) * precision_ms;
            if !self.seen.insert((vehicle, r.def, oem)) {
                continue;
            }
            self.list.push(ServedReading {
                vehicle_id: ids::fmt_uuid(vehicle_id),
                code: r.def().code.to_owned(),
                oem_updated_at: DateTime::from_timestamp_millis(oem).unwrap_or_default(),
                value_num: value_num(body),
                body: body.clone(),
            });
        }
    }

    pub(crate) fn all(&self) -> Vec<ServedReading> {
        self.list.clone()
    }
}
