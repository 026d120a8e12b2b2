//! `/healthz` (the process answers), `/readyz` (it can do its work) and `/metrics`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;

use super::HttpState;
use crate::store::JobState;

/// A database that does not answer a trivial query within this is "unreachable".
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the daemon can do its work: the database answers, a valid token is held, the
/// schedule fires and the credentials are not rejected. 503 otherwise, with every reason.
pub(super) async fn readyz(State(state): State<HttpState>) -> Response {
    let mut reasons = Vec::new();
    let database = match tokio::time::timeout(PING_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readyz: database unreachable");
            reasons.push("database unreachable".to_owned());
            "unreachable"
        }
        Err(_) => {
            reasons.push("database did not answer within 2s".to_owned());
            "timeout"
        }
    };
    let credentials = match state.tokens.credential_problem() {
        Some(e) => {
            reasons.push(format!("credentials: {e}"));
            "rejected"
        }
        None => "ok",
    };
    let token = if state.tokens.has_valid_token() {
        "valid"
    } else {
        reasons.push("no valid access token".to_owned());
        "none"
    };
    let schedule = match &state.schedule {
        Some(s) if !s.is_firing() => {
            reasons.push("a schedule has stalled".to_owned());
            "stalled"
        }
        Some(_) => "firing",
        None => "off",
    };
    let ready = reasons.is_empty();
    let body = json!({
        "ready": ready,
        "database": database,
        "token": token,
        "schedule": schedule,
        "credentials": credentials,
        "reason": reasons.join("; "),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus (OpenMetrics) text. Queue depth and cycle age are sampled from the database now,
/// so they are right whichever daemon did the work.
pub(super) async fn metrics(State(state): State<HttpState>) -> Response {
    let now = Utc::now();
    match tokio::time::timeout(PING_TIMEOUT, state.store.queue_counts()).await {
        Ok(Ok(counts)) => {
            for s in JobState::ALL {
                let n = counts
                    .iter()
                    .filter(|(_, state, _)| state == s.as_str())
                    .map(|c| c.2)
                    .sum();
                crate::events::queue_depth(s.as_str(), n);
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: cannot read the queue depth"),
        Err(_) => tracing::warn!("metrics: the queue depth query timed out"),
    }
    match tokio::time::timeout(PING_TIMEOUT, state.store.oldest_poll_of_pollable(now)).await {
        Ok(Ok(oldest)) => {
            let age = oldest.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1e3);
            crate::events::since_last_cycle(age);
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: cannot read the last cycle"),
        Err(_) => tracing::warn!("metrics: the last cycle query timed out"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::events::render(),
    )
        .into_response()
}
