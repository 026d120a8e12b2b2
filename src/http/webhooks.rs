//! `POST /webhooks/smartcar` (contract §7): verify the raw body's signature, then store the
//! delivery with the same parse and the same sample key as a poll, and answer 2xx only after the
//! commit. Smartcar redelivers anything not answered 2xx within 15 s, and `eventId` makes a
//! redelivery a no-op.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{HttpState, STORE_DEADLINE, body, hmac_hex, hmac_verify};
use crate::events::{self, WebhookAnswer};
use crate::ids::{self, Escaped};
use crate::jobs::signals::readings;
use crate::smartcar::model::webhook_signals;
use crate::store::{SampleSource, VehicleErrorUpdate, WebhookDelivery};
use crate::vehicle_status;

/// Longest VERIFY challenge answered. Smartcar's challenges are short random tokens.
pub const MAX_CHALLENGE_LEN: usize = 128;

/// Whether a VERIFY challenge is a short opaque token: 1 to [`MAX_CHALLENGE_LEN`] characters of
/// letters, digits and `- _ . ~ + / =` (UUIDs, hex, base64 and base64url all fit).
///
/// This is what keeps VERIFY from being a signing oracle. Its answer is
/// HMAC(management token, challenge), which is exactly the `SC-Signature` a delivery whose raw
/// body equals the challenge would carry. Every delivery the daemon acts on is a JSON object, so
/// its body starts with `{` and holds `"`: characters no acceptable challenge contains. No answer
/// to VERIFY can therefore sign anything this endpoint would store.
pub fn challenge_is_acceptable(challenge: &str) -> bool {
    !challenge.is_empty()
        && challenge.len() <= MAX_CHALLENGE_LEN
        && challenge.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=')
        })
}

/// Answers a webhook request: its event (log line and metric) and the HTTP status that
/// belongs to that answer. Only a 2xx stops Smartcar's redeliveries, so only what is stored
/// (or deliberately ignored) gets one.
fn answer(event_type: &str, a: WebhookAnswer) -> Response {
    events::webhook(event_type, a);
    let status = match a {
        WebhookAnswer::Stored | WebhookAnswer::Duplicate | WebhookAnswer::Verified => {
            StatusCode::OK
        }
        WebhookAnswer::Ignored => StatusCode::ACCEPTED,
        WebhookAnswer::Malformed | WebhookAnswer::BadChallenge => StatusCode::BAD_REQUEST,
        WebhookAnswer::MissingSignature | WebhookAnswer::BadSignature => StatusCode::UNAUTHORIZED,
        WebhookAnswer::VerifyClosed => StatusCode::FORBIDDEN,
        WebhookAnswer::NotConfigured | WebhookAnswer::Failed | WebhookAnswer::Busy => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        WebhookAnswer::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        WebhookAnswer::TooSlow => StatusCode::REQUEST_TIMEOUT,
        WebhookAnswer::BrokenBody => StatusCode::BAD_REQUEST,
    };
    (status, Json(json!({ "status": a.as_str() }))).into_response()
}

pub(super) async fn receive(
    State(state): State<HttpState>,
    headers: HeaderMap,
    request_body: axum::body::Body,
) -> Response {
    // Bounded in size, in time and against the process-wide budget of body bytes in flight.
    let body: Bytes = match body::read(request_body, &state.limits).await {
        Ok(b) => b,
        Err(rejected) => {
            events::webhook("unknown", rejected.outcome());
            return rejected.into_response();
        }
    };
    let key = match state.secrets.management_token() {
        Some(Ok(key)) => key,
        Some(Err(e)) => {
            tracing::error!(error = %e, "webhook refused: cannot read the management token");
            return answer("unknown", WebhookAnswer::NotConfigured);
        }
        None => {
            tracing::error!(
                "webhook refused: no management token configured \
                 (SMARTCAR_MANAGEMENT_TOKEN or smartcar.management_token_file)"
            );
            return answer("unknown", WebhookAnswer::NotConfigured);
        }
    };
    let signature = headers
        .get("sc-signature")
        .map(|v| v.to_str().unwrap_or_default());
    // The raw bytes are verified before anything parses them.
    if let Some(sig) = signature
        && !hmac_verify(&key, &body, sig)
    {
        return answer("unknown", WebhookAnswer::BadSignature);
    }
    let Ok(envelope) = serde_json::from_slice::<Value>(&body) else {
        return answer(
            "unknown",
            if signature.is_some() {
                WebhookAnswer::Malformed
            } else {
                WebhookAnswer::MissingSignature
            },
        );
    };
    let Some(event_type) = envelope.get("eventType").and_then(Value::as_str) else {
        if signature.is_none() {
            return answer("unknown", WebhookAnswer::MissingSignature);
        }
        return answer("unknown", WebhookAnswer::Malformed);
    };
    // Only VERIFY comes unsigned.
    if event_type == "VERIFY" {
        return verify(&state, &envelope, &key);
    }
    if signature.is_none() {
        return answer(event_type, WebhookAnswer::MissingSignature);
    }
    match event_type {
        "VEHICLE_STATE" | "VEHICLE_ERROR" => deliver(&state, event_type, &envelope, &body).await,
        // New event types must not make Smartcar retry: acknowledge and ignore.
        _ => answer("other", WebhookAnswer::Ignored),
    }
}

/// Answers the subscription challenge: hex HMAC-SHA256(management token, challenge), but only
/// for a challenge that is a short opaque token ([`challenge_is_acceptable`]) and only while
/// verification is open (`[http] verify_window` after start or SIGHUP).
fn verify(state: &HttpState, envelope: &Value, key: &secrecy::SecretString) -> Response {
    let Some(challenge) = envelope.pointer("/data/challenge").and_then(Value::as_str) else {
        return answer("VERIFY", WebhookAnswer::Malformed);
    };
    if !challenge_is_acceptable(challenge) {
        tracing::warn!(
            challenge_len = challenge.len(),
            "VERIFY refused: the challenge is not a short opaque token (a forged signing request?)"
        );
        return answer("VERIFY", WebhookAnswer::BadChallenge);
    }
    if !state.secrets.verify_is_open() {
        tracing::warn!(
            "VERIFY refused: verification is closed (http.verify_window); send SIGHUP \
             (systemctl reload) to open it, then verify the webhook in Smartcar's dashboard"
        );
        return answer("VERIFY", WebhookAnswer::VerifyClosed);
    }
    events::webhook("VERIFY", WebhookAnswer::Verified);
    (
        StatusCode::OK,
        Json(json!({ "challenge": hmac_hex(key, challenge.as_bytes()) })),
    )
        .into_response()
}

/// The id at `pointer`: `Ok(None)` when absent, `Err` when present but not a valid id
/// ([`ids::is_valid`]): a delivery carrying one is refused whole.
fn id_at<'a>(v: &'a Value, pointer: &str) -> Result<Option<&'a str>, ()> {
    match v.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if ids::is_valid(s) => Ok(Some(s.as_str())),
        Some(other) => {
            let shown = other.as_str().map(Escaped);
            tracing::warn!(field = pointer, id = ?shown, "webhook refused: invalid id");
            Err(())
        }
    }
}

async fn deliver(state: &HttpState, event_type: &str, envelope: &Value, raw: &[u8]) -> Response {
    let ids = (|| {
        let event_id = id_at(envelope, "/eventId")?.ok_or(())?;
        let vehicle_id = match id_at(envelope, "/vehicleId")? {
            Some(v) => v,
            None => id_at(envelope, "/data/vehicle/id")?.ok_or(())?,
        };
        let user_id = id_at(envelope, "/data/user/id")?;
        Ok::<_, ()>((event_id, vehicle_id, user_id))
    })();
    let Ok((event_id, vehicle_id, user_id)) = ids else {
        return answer(event_type, WebhookAnswer::Malformed);
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
            .filter_map(|e| vehicle_error(e, now, state.allowance.as_ref()))
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
            events::samples_stored(events::SampleOrigin::Webhook, outcome.samples_inserted);
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
            answer(event_type, WebhookAnswer::Stored)
        }
        Ok(Ok(None)) => answer(event_type, WebhookAnswer::Duplicate),
        Ok(Err(e)) => {
            tracing::warn!(event_id, error = %e, "webhook not stored; Smartcar will redeliver");
            answer(event_type, WebhookAnswer::Failed)
        }
        Err(_) => {
            tracing::warn!(
                event_id,
                "webhook not stored in time; Smartcar will redeliver"
            );
            answer(event_type, WebhookAnswer::Failed)
        }
    }
}

/// One `VEHICLE_ERROR` entry as a status change. Permanent problems set the status a poll
/// hitting them would set; others (an asleep car) only note the reason.
fn vehicle_error(
    e: &Value,
    now: DateTime<Utc>,
    allowance: Option<&crate::plan::Allowance>,
) -> Option<VehicleErrorUpdate> {
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
    let (status, blocked_until) = match vehicle_status::problem_of_webhook_error(error_type) {
        Some(problem) => {
            let (status, until) = vehicle_status::consequence(problem, now, allowance);
            (Some(status), until)
        }
        None => (None, None),
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
            None,
        );
        let Some(VehicleErrorUpdate::Raised { status, reason, .. }) = raised else {
            panic!("{raised:?}");
        };
        assert_eq!(status, Some(crate::store::VehicleStatus::BillingLimited));
        let resolved = vehicle_error(
            &json!({"type": "BILLING", "code": "VEHICLE_LIMIT", "state": "RESOLVED"}),
            now,
            None,
        );
        let Some(VehicleErrorUpdate::Resolved { marker }) = resolved else {
            panic!("{resolved:?}");
        };
        assert!(reason.starts_with(&marker));
        assert_eq!(vehicle_error(&json!({"code": "X"}), now, None), None);
    }
}
