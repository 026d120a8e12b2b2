//! JSON shapes of the contract's resources (connection, vehicle, signal), per variant.

use chrono::{DateTime, SecondsFormat};
use serde_json::{Value, json};

use super::config::{TimestampFormat, UserIdLocation, Variants};
use super::fleet::{Powertrain, VehicleView};
use super::ids;
use super::readings::{Reading, Status};

pub(crate) fn iso(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn timestamp(ms: i64, fmt: TimestampFormat) -> Value {
    match fmt {
        TimestampFormat::EpochMillis => json!(ms),
        TimestampFormat::EpochSeconds => json!(ms.div_euclid(1000)),
        TimestampFormat::Iso8601 => json!(iso(ms)),
    }
}

fn year(v: &VehicleView, as_string: bool) -> Value {
    if as_string {
        json!(v.year.to_string())
    } else {
        json!(v.year)
    }
}

/// `{make, model, year, mode, powertrainType}` as in a connection.
pub(crate) fn vehicle_attributes(v: &VehicleView, variants: &Variants) -> Value {
    let m = v.model();
    json!({
        "make": m.make,
        "model": m.model,
        "year": year(v, variants.year_as_string),
        "mode": v.mode.as_str(),
        "powertrainType": m.powertrain.as_str(),
    })
}

fn permissions(pt: Powertrain) -> Vec<&'static str> {
    let mut p = vec![
        "read_vehicle_info",
        "read_odometer",
        "read_location",
        "read_security",
    ];
    match pt {
        Powertrain::Bev => p.extend(["read_battery", "read_charge"]),
        Powertrain::Phev => p.extend(["read_battery", "read_charge", "read_fuel"]),
        Powertrain::Ice => p.extend(["read_fuel", "read_engine_oil"]),
    }
    p
}

/// One connection of `GET /connections`.
pub(crate) fn connection(v: &VehicleView, user_id: &str, variants: &Variants) -> Value {
    let vid = ids::fmt_uuid(v.id);
    let mut attributes = json!({
        "permissions": permissions(v.model().powertrain),
        "vehicle": vehicle_attributes(v, variants),
    });
    let mut relationships = json!({"vehicle": {"data": {"id": vid, "type": "vehicle"}}});
    let loc = variants.user_id_location;
    if matches!(loc, UserIdLocation::Attributes | UserIdLocation::Both) {
        attributes["user"] = json!({"id": user_id});
    }
    if matches!(loc, UserIdLocation::Relationships | UserIdLocation::Both) {
        relationships["user"] = json!({"data": {"id": user_id, "type": "user"}});
    }
    let created = iso(v.created_ms);
    json!({
        "id": ids::fmt_uuid(v.connection_id),
        "type": "connection",
        "attributes": attributes,
        "relationships": relationships,
        "meta": {"createdAt": created, "updatedAt": created},
    })
}

/// `GET /vehicles/{id}` resource.
pub(crate) fn vehicle(v: &VehicleView, variants: &Variants) -> Value {
    json!({
        "id": ids::fmt_uuid(v.id),
        "type": "vehicle",
        "attributes": vehicle_attributes(v, variants),
    })
}

/// `included.vehicle` of a signals response, exactly as the contract's example (upper-case make,
/// year as a string).
pub(crate) fn included_vehicle(v: &VehicleView) -> Value {
    let m = v.model();
    json!({
        "id": ids::fmt_uuid(v.id),
        "type": "vehicle",
        "attributes": {"make": m.make.to_uppercase(), "model": m.model, "year": v.year.to_string()},
    })
}

fn status(r: &Reading) -> Value {
    match r.status {
        Status::Success { .. } => json!({"value": "SUCCESS"}),
        Status::Error => json!({"value": "ERROR",
                                "error": {"type": "COMPATIBILITY", "code": "VEHICLE_NOT_CAPABLE"}}),
        Status::Unavailable => json!({"value": "UNAVAILABLE"}),
    }
}

fn meta(r: &Reading, retrieved_ms: i64, fmt: TimestampFormat) -> Value {
    let mut meta = json!({"retrievedAt": timestamp(retrieved_ms, fmt)});
    if let Status::Success { oem_ms, .. } = r.status {
        meta["oemUpdatedAt"] = timestamp(oem_ms, fmt);
    }
    meta
}

/// A signal as `/signals` returns it (§4).
pub(crate) fn signal(r: &Reading, retrieved_ms: i64, fmt: TimestampFormat) -> Value {
    let d = r.def();
    let mut attributes =
        json!({"code": d.code, "name": d.name, "group": d.group, "status": status(r)});
    if let Status::Success { body, .. } = &r.status {
        attributes["body"] = body.clone();
    }
    json!({"id": d.code, "type": "signal", "attributes": attributes,
           "meta": meta(r, retrieved_ms, fmt)})
}

/// A signal as a webhook carries it (§7): flat, epoch-ms timestamps.
pub(crate) fn flat_signal(r: &Reading, retrieved_ms: i64) -> Value {
    let d = r.def();
    let mut s = json!({"code": d.code, "name": d.name, "group": d.group, "status": status(r),
                       "meta": meta(r, retrieved_ms, TimestampFormat::EpochMillis)});
    if let Status::Success { body, .. } = &r.status {
        s["body"] = body.clone();
    }
    s
}
