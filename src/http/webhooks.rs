//! `POST /webhooks/smartcar` (contract §7): verify the raw body's signature, then store the
//! delivery with the same parse and the same sample key as a poll, and answer 2xx only after the
//! commit. Smartcar redelivers anything not answered 2xx within 15 s, and `eventId` makes a
//! redelivery a no-op.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{HttpState, STORE_DEADLINE, hmac_hex, hmac_verify};
use crate::events;
use crate::jobs::signals::{next_month, readings};
use crate::smartcar::model::webhook_signals;
use crate::store::{SampleSource, VehicleErrorUpdate, VehicleStatus, WebhookDelivery};

/// Ids longer than this are not Smartcar's.
const MAX_ID_LEN: usize = 200;

fn answer(status: StatusCode, event_type: &str, outcome: &'static str) -> Response {
    events::webhook(event_type, outcome);
    (status, Json(json!({ "status": outcome }))).into_response()
}

pub(super) async fn receive(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        // Over the body limit (413) or a broken upload.
        Err(e) => {
            events::webhook("unknown", "rejected_body");
            return e.into_response();
        }
    };
    let key = match state.secrets.management_token() {
        Some(Ok(key)) => key,
        Some(Err(e)) => {
            tracing::error!(error = %e, "webhook refused: cannot read the management token");
            return answer(StatusCode::SERVICE_UNAVAILABLE, "unknown", "not_configured");
        }
        None => {
            tracing::error!(
                "webhook refused: no management token configured \
                 (SMARTCAR_MANAGEMENT_TOKEN or smartcar.management_token_file)"
            );
            return answer(StatusCode::SERVICE_UNAVAILABLE, "unknown", "not_configured");
        }
    };
    let signature = headers
        .get("sc-signature")
        .map(|v| v.to_str().unwrap_or_default());
    // The raw bytes are verified before anything parses them.
    if let Some(sig) = signature
        && !hmac_verify(&key, &body, sig)
    {
        return answer(StatusCode::UNAUTHORIZED, "unknown", "bad_signature");
    }
    let Ok(envelope) = serde_json::from_slice::<Value>(&body) else {
        let outcome = if signature.is_some() {
            "malformed"
        } else {
            "missing_signature"
        };
        let status = if signature.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNAUTHORIZED
        };
        return answer(status, "unknown", outcome);
    };
    let Some(event_type) = envelope.get("eventType").and_then(Value::as_str) else {
        if signature.is_none() {
            return answer(StatusCode::UNAUTHORIZED, "unknown", "missing_signature");
        }
        return answer(StatusCode::BAD_REQUEST, "unknown", "malformed");
    };
    // Only VERIFY comes unsigned.
    if event_type == "VERIFY" {
        return verify(&envelope, &key);
    }
    if signature.is_none() {
        return answer(StatusCode::UNAUTHORIZED, event_type, "missing_signature");
    }
    match event_type {
        "VEHICLE_STATE" | "VEHICLE_ERROR" => deliver(&state, event_type, &envelope, &body).await,
        // New event types must not make Smartcar retry: acknowledge and ignore.
        _ => answer(StatusCode::ACCEPTED, "other", "ignored"),
    }
}

/// Answers the subscription challenge: hex HMAC-SHA256(management token, challenge).
fn verify(envelope: &Value, key: &secrecy::SecretString) -> Response {
    let Some(challenge) = envelope.pointer("/data/challenge").and_then(Value::as_str) else {
        return answer(StatusCode::BAD_REQUEST, "VERIFY", "malformed");
    };
    events::webhook("VERIFY", "verified");
    (
        StatusCode::OK,
        Json(json!({ "challenge": hmac_hex(key, challenge.as_bytes()) })),
    )
        .into_response()
}

fn id_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= MAX_ID_LEN)
}

async fn deliver(state: &HttpState, event_type: &str, envelope: &Value, raw: &[u8]) -> Response {
    let Some(event_id) = id_at(envelope, "/eventId") else {
        return answer(StatusCode::BAD_REQUEST, event_type, "malformed");
    };
    let vehicle_id = id_at(envelope, "/vehicleId").or_else(|| id_at(envelope, "/data/vehicle/id"));
    let user_id = id_at(envelope, "/data/user/id");
    let Some(vehicle_id) = vehicle_id else {
        return answer(StatusCode::BAD_REQUEST, event_type, "malformed");
    };
    let now = Utc::now();
    let (samples, statuses, errors) = if event_type == "VEHICLE_STATE" {
        // From the raw bytes: each signal's body is stored as sent.
        let signals = webhook_signals(raw);
        let (samples, statuses) = readings(vehicle_id, &signals, SampleSource::Webhook, now);
        (samples, statuses, Vec::new())
    } else {
        let errors = envelope
            .pointer("/data/errors")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|e| vehicle_error(e, now))
            .collect();
        (Vec::new(), Vec::new(), errors)
    };
    let delivery = WebhookDelivery {
        event_id,
        event_type,
        vehicle_id: Some(vehicle_id),
        user_id,
    };
    let stored = tokio::time::timeout(
        STORE_DEADLINE,
        state
            .store
            .ingest_webhook_delivery(&delivery, &samples, &statuses, &errors, now),
    )
    .await;
    match stored {
        Ok(Ok(Some(outcome))) => {
            events::samples_stored("webhook", outcome.samples_inserted);
            if outcome.sync_enqueued {
                state.wake.notify_one();
            }
            tracing::debug!(
                event_id,
                vehicle_id,
                samples = outcome.samples_inserted,
                user_added = outcome.user_added,
                sync_enqueued = outcome.sync_enqueued,
                vehicles_updated = outcome.vehicles_updated,
                "webhook stored"
            );
            answer(StatusCode::OK, event_type, "stored")
        }
        Ok(Ok(None)) => answer(StatusCode::OK, event_type, "duplicate"),
        Ok(Err(e)) => {
            tracing::warn!(event_id, error = %e, "webhook not stored; Smartcar will redeliver");
            answer(StatusCode::SERVICE_UNAVAILABLE, event_type, "failed")
        }
        Err(_) => {
            tracing::warn!(
                event_id,
                "webhook not stored in time; Smartcar will redeliver"
            );
            answer(StatusCode::SERVICE_UNAVAILABLE, event_type, "failed")
        }
    }
}

/// One `VEHICLE_ERROR` entry as a status change. Permanent problems set the status a poll
/// hitting them would set; others (an asleep car) only note the reason.
fn vehicle_error(e: &Value, now: DateTime<Utc>) -> Option<VehicleErrorUpdate> {
    let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default();
    let error_type = text("type");
    if error_type.is_empty() {
        return None;
    }
    // The brackets end the marker, so `ASLEEP` never matches `ASLEEP_LONG`.
    let marker = format!("[webhook {error_type}:{}]", text("code"));
    if text("state").eq_ignore_ascii_case("RESOLVED") {
        return Some(VehicleErrorUpdate::Resolved { marker });
    }
    let (status, blocked_until) = match error_type {
        "PERMISSION" => (Some(VehicleStatus::PermissionDenied), None),
        "COMPATIBILITY" => (Some(VehicleStatus::Incompatible), None),
        "BILLING" => (Some(VehicleStatus::BillingLimited), Some(next_month(now))),
        "CONNECTED_SERVICES_ACCOUNT" => (
            Some(VehicleStatus::NeedsReconnect),
            Some(now + chrono::Duration::hours(6)),
        ),
        _ => (None, None),
    };
    let mut reason = format!("{marker} {}", text("description"));
    reason.truncate(reason.trim_end().len());
    let reason: String = reason.chars().take(300).collect();
    Some(VehicleErrorUpdate::Raised {
        status,
        reason,
        blocked_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolved_error_clears_only_its_own_marker() {
        let now = Utc::now();
        let raised = vehicle_error(
            &json!({"type": "BILLING", "code": "VEHICLE_LIMIT", "state": "ERROR",
                    "description": "limit"}),
            now,
        );
        let Some(VehicleErrorUpdate::Raised { status, reason, .. }) = raised else {
            panic!("{raised:?}");
        };
        assert_eq!(status, Some(VehicleStatus::BillingLimited));
        let resolved = vehicle_error(
            &json!({"type": "BILLING", "code": "VEHICLE_LIMIT", "state": "RESOLVED"}),
            now,
        );
        let Some(VehicleErrorUpdate::Resolved { marker }) = resolved else {
            panic!("{resolved:?}");
        };
        assert!(reason.starts_with(&marker));
        assert_eq!(vehicle_error(&json!({"code": "X"}), now), None);
    }
}
