//! JSON shapes of the contract's resources (connection, vehicle, signal), per variant, and the
//! payload variants of readings themselves ([`vary`]): exact-to-the-bit values, legacy bodies,
//! unit spellings, odd `meta`s.

use chrono::{DateTime, SecondsFormat};
use serde_json::{Value, json};

use super::config::{TimestampFormat, UserIdLocation, Variants};
use super::fleet::{Powertrain, VehicleView};
use super::ids;
use super::readings::{Meta, Reading, SignalDef, Status};

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

/// The impossible `oemUpdatedAt`s of `Variants::out_of_range_times`, one per vehicle in turn.
fn bad_time(vehicle_index: u32) -> Value {
    match vehicle_index % 6 {
        0 => json!("10000-01-01T00:00:00Z"),
        1 => json!("+12345-01-01T00:00:00"),
        2 => json!("-0001-01-01T00:00:00"),
        3 => json!(8_000_000_000_000_000_i64),
        4 => json!("9999-12-31T23:59:59Z"),
        _ => json!("1999-12-31T23:59:59Z"),
    }
}

/// `x` nudged (by 0.01 to 0.1) to a double whose shortest decimal form is as long as its
/// magnitude allows: 17 significant digits wherever a double can need them (most values from
/// 100 up, such as an odometer; below that 16 always suffice).
fn seventeen_digits(x: f64, salt: u64) -> f64 {
    let digits = |y: f64| {
        let e = format!("{y:e}");
        e.split('e')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_digit)
            .count()
    };
    // A random 53-bit fraction: a mantissa with no short decimal form, so a few ulp steps at
    // most reach one that needs 17 digits.
    let mut y = x + 0.01 + ((salt >> 11) as f64 / (1u64 << 53) as f64) * 0.09;
    let mut best = y;
    for _ in 0..64 {
        if digits(y) >= 17 {
            return y;
        }
        if digits(y) > digits(best) {
            best = y;
        }
        y = f64::from_bits(y.to_bits() + 1);
    }
    best
}

/// Applies the reading-level payload variants to one reading (before it is served or recorded,
/// so the served record holds exactly what was sent).
pub(crate) fn vary(variants: &Variants, r: &mut Reading, vehicle_index: u32) {
    let code = r.def().code;
    if let Status::Success { body, oem_ms } = &mut r.status {
        if variants.precise_values
            && let Some(x) = body.get("value").and_then(Value::as_f64)
            && body.get("value").is_some_and(|v| !v.is_boolean())
        {
            let salt = ids::h(*oem_ms as u64, vehicle_index as u64, r.def as u64);
            // A car's odometer reads tens of thousands of km (as in the reading that was
            // stored one ulp off: 115071.50046584333); the fleet's young cars get an offset.
            let x = if code == "odometer-traveleddistance" {
                x + 100_000.0
            } else {
                x
            };
            body["value"] = json!(seventeen_digits(x, salt));
        }
        if variants.legacy_soc_body
            && code == "tractionbattery-stateofcharge"
            && let Some(v) = body.get("value").cloned()
        {
            *body = json!({ "percentage": v });
        }
        if variants.unit_aliases
            && let Some(unit) = body.get("unit").and_then(Value::as_str)
        {
            let alias = match unit {
                "percent" => "percentage",
                "kilometers" => "km",
                "miles" => "mi",
                other => other,
            };
            body["unit"] = json!(alias);
        }
        if variants.out_of_range_times && code == "lowvoltagebattery-stateofcharge" {
            r.meta = Meta::BadTime(bad_time(vehicle_index));
        }
    }
    if variants.empty_meta && code == "closure-islocked" {
        r.meta = Meta::Empty;
    }
}

/// The code as served: kebab-case (`charge-voltage`), or camelCase (`chargeVoltage`).
fn served_code(d: &SignalDef, variants: &Variants) -> String {
    if !variants.camel_case_codes {
        return d.code.to_owned();
    }
    let mut g = d.group.chars();
    match g.next() {
        Some(first) => format!("{}{}{}", first.to_ascii_lowercase(), g.as_str(), d.name),
        None => d.code.to_owned(),
    }
}

fn meta(r: &Reading, retrieved_ms: i64, fmt: TimestampFormat, retrieved_key: &str) -> Value {
    if r.meta == Meta::Empty {
        return json!({});
    }
    let mut meta = json!({ retrieved_key: timestamp(retrieved_ms, fmt) });
    if let Status::Success { oem_ms, .. } = r.status {
        meta["oemUpdatedAt"] = match &r.meta {
            Meta::BadTime(v) => v.clone(),
            _ => timestamp(oem_ms, fmt),
        };
    }
    meta
}

/// A signal as `/signals` returns it (§4).
pub(crate) fn signal(
    r: &Reading,
    retrieved_ms: i64,
    fmt: TimestampFormat,
    variants: &Variants,
) -> Value {
    let d = r.def();
    let code = served_code(d, variants);
    let mut attributes =
        json!({"code": code, "name": d.name, "group": d.group, "status": status(r)});
    if let Status::Success { body, .. } = &r.status {
        attributes["body"] = body.clone();
    }
    json!({"id": code, "type": "signal", "attributes": attributes,
           "meta": meta(r, retrieved_ms, fmt, "retrievedAt")})
}

/// A signal as a webhook carries it (§7): flat, epoch-ms timestamps, `retrievedAt` or (variant)
/// `fetchedAt`.
pub(crate) fn flat_signal(r: &Reading, retrieved_ms: i64, variants: &Variants) -> Value {
    let d = r.def();
    let key = if variants.webhook_fetched_at {
        "fetchedAt"
    } else {
        "retrievedAt"
    };
    let mut s = json!({"code": served_code(d, variants), "name": d.name, "group": d.group,
                       "status": status(r),
                       "meta": meta(r, retrieved_ms, TimestampFormat::EpochMillis, key)});
    if let Status::Success { body, .. } = &r.status {
        s["body"] = body.clone();
    }
    s
}

/// A signal whose code is 80 characters (`Variants::overlong_code`): a client must skip it.
pub(crate) fn overlong_signal(retrieved_ms: i64, fmt: TimestampFormat, flat: bool) -> Value {
    let code = format!("odometer-{}", "x".repeat(71));
    let meta = json!({"retrievedAt": timestamp(retrieved_ms, fmt),
                      "oemUpdatedAt": timestamp(retrieved_ms, fmt)});
    let attributes = json!({"code": code, "name": "Overlong", "group": "Odometer",
                            "status": {"value": "SUCCESS"}, "body": {"value": 1}});
    if flat {
        let mut s = attributes;
        s["meta"] = meta;
        s
    } else {
        json!({"id": code, "type": "signal", "attributes": attributes, "meta": meta})
    }
}
