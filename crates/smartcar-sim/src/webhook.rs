//! Webhook payloads (§7) built from the same readings as polling, and their signatures.

use chrono::Utc;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::config::TimestampFormat;
use super::fleet::VehicleView;
use super::ids::{self, TAG_WEBHOOK};
use super::shapes;
use super::state::Inner;

/// Hex HMAC-SHA256 of `msg` keyed with `key`.
pub(crate) fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(msg);
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC accepts keys of any length; this arm is unreachable in practice.
        Err(_) => String::new(),
    }
}

fn webhook_vehicle(v: &VehicleView) -> Value {
    let m = v.model();
    json!({"id": ids::fmt_uuid(v.id), "make": m.make, "model": m.model, "year": v.year,
           "mode": v.mode.as_str(), "powertrainType": m.powertrain.as_str()})
}

fn envelope(inner: &Inner, event_type: &str, vehicle_id: Option<String>, data: Value) -> Value {
    let now_ms = Utc::now().timestamp_millis();
    let mut e = json!({
        "eventId": ids::random_uuid(),
        "eventType": event_type,
        "data": data,
        "meta": {
            "version": "4.0",
            "webhookId": ids::fmt_uuid(ids::uuid(inner.seed, TAG_WEBHOOK, 0)),
            "deliveryId": ids::random_uuid(),
            "deliveredAt": shapes::timestamp(now_ms, inner.variants.webhook_delivered_at),
            "mode": "LIVE",
        },
    });
    if let Some(id) = vehicle_id {
        e["vehicleId"] = json!(id);
    }
    e
}

/// A `VEHICLE_STATE` envelope with the vehicle's current readings (recorded as served).
/// `triggers_top_level` puts `triggers` beside `data` instead of inside it (both occur).
pub(crate) fn vehicle_state(
    inner: &Inner,
    vehicle_id: &str,
    triggers_top_level: bool,
) -> Option<Vec<u8>> {
    let (v, user) = inner.vehicle(vehicle_id).filter(|(v, _)| v.active)?;
    let now_ms = Utc::now().timestamp_millis();
    let readings = inner.readings(&v, now_ms, false);
    inner.record(&v, &readings, TimestampFormat::EpochMillis);
    let mut signals: Vec<Value> = readings
        .iter()
        .map(|r| shapes::flat_signal(r, now_ms, &inner.variants))
        .collect();
    if inner.variants.overlong_code {
        signals.push(shapes::overlong_signal(
            now_ms,
            TimestampFormat::EpochMillis,
            true,
        ));
    }
    let triggers: Vec<Value> = readings
        .iter()
        .take(1)
        .map(|r| {
            let d = r.def();
            json!({"type": "SIGNAL_UPDATED",
                   "signal": {"code": d.code, "name": d.name, "group": d.group}})
        })
        .collect();
    let mut data =
        json!({"user": {"id": user}, "vehicle": webhook_vehicle(&v), "signals": signals});
    let mut e;
    if triggers_top_level {
        e = envelope(inner, "VEHICLE_STATE", Some(ids::fmt_uuid(v.id)), data);
        e["triggers"] = json!(triggers);
    } else {
        data["triggers"] = json!(triggers);
        e = envelope(inner, "VEHICLE_STATE", Some(ids::fmt_uuid(v.id)), data);
    }
    serde_json::to_vec(&e).ok()
}

/// A `VEHICLE_ERROR` envelope for one error of the vehicle.
pub(crate) fn vehicle_error(
    inner: &Inner,
    vehicle_id: &str,
    error_type: &str,
    code: &str,
    resolved: bool,
) -> Option<Vec<u8>> {
    let (v, user) = inner.vehicle(vehicle_id)?;
    let data = json!({
        "user": {"id": user},
        "vehicle": webhook_vehicle(&v),
        "errors": [{
            "type": error_type,
            "code": code,
            "state": if resolved { "RESOLVED" } else { "ERROR" },
            "description": format!("{error_type}:{code}"),
            "resolution": {"type": if resolved { Value::Null } else { json!("RETRY_LATER") }},
            "signals": [],
        }],
    });
    serde_json::to_vec(&envelope(
        inner,
        "VEHICLE_ERROR",
        Some(ids::fmt_uuid(v.id)),
        data,
    ))
    .ok()
}

/// An (unsigned) `VERIFY` envelope carrying `challenge`.
pub(crate) fn verify(inner: &Inner, challenge: &str) -> Vec<u8> {
    serde_json::to_vec(&envelope(
        inner,
        "VERIFY",
        None,
        json!({"challenge": challenge}),
    ))
    .unwrap_or_default()
}
