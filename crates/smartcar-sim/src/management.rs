//! The Management API's webhook subscriptions (§8), and the pusher that sends subscribed
//! vehicles' readings to `SimConfig::webhook_url` as `VEHICLE_STATE` webhooks.
//!
//! Routes (under `/management/v3`, same Bearer token as the vehicle API):
//! - `POST /subscriptions` `{"data": {"attributes": {"webhookId", "userId", "vehicleId"}}}` →
//!   202 `{"meta": {"message": "subscription creation in progress"}}`, 409 when it exists,
//!   404 for an unknown vehicle, 403 when the vehicle is not that user's;
//! - `GET /subscriptions?filter[webhookId]=…&filter[vehicleId]=…&page[number]=…&page[size]=…`;
//! - `DELETE /subscriptions/{webhookId}/vehicles/{vehicleId}` → 204, 404 when not subscribed.
//!   The contract says only that unsubscribing "has its own endpoint"; this is its shape here.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::errors::ApiError;
use super::ids;
use super::server::RequestId;
use super::state::{Inner, lock};

type Shared = std::sync::Arc<Inner>;

fn err(s: &Inner, rid: &RequestId, e: ApiError) -> Response {
    e.render(&rid.0, s.variants.error_body)
}

pub(crate) async fn subscribe(
    State(s): State<Shared>,
    Extension(rid): Extension<RequestId>,
    body: Bytes,
) -> Response {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return err(&s, &rid, ApiError::validation("The body is not JSON.")),
    };
    let attrs = &v["data"]["attributes"];
    let field = |k: &str| attrs.get(k).and_then(Value::as_str).map(str::to_owned);
    let (Some(webhook_id), Some(user_id), Some(vehicle_id)) =
        (field("webhookId"), field("userId"), field("vehicleId"))
    else {
        return err(
            &s,
            &rid,
            ApiError::validation("data.attributes needs webhookId, userId and vehicleId."),
        );
    };
    let Some((vehicle, owner)) = s.vehicle(&vehicle_id).filter(|(v, _)| v.active) else {
        return err(&s, &rid, ApiError::not_found("The vehicle was not found."));
    };
    if owner != user_id {
        return err(
            &s,
            &rid,
            ApiError::permission("The vehicle is not connected to this user."),
        );
    }
    let added = lock(&s.subscriptions)
        .entry(vehicle.index)
        .or_default()
        .insert(webhook_id);
    if !added {
        return err(
            &s,
            &rid,
            ApiError::conflict("The vehicle is already subscribed to this webhook."),
        );
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"meta": {"message": "subscription creation in progress"}})),
    )
        .into_response()
}

pub(crate) async fn list(State(s): State<Shared>, RawQuery(q): RawQuery) -> Response {
    let p: std::collections::HashMap<String, String> = q
        .map(|q| ids::decode_form(&q).into_iter().collect())
        .unwrap_or_default();
    let webhook = p.get("filter[webhookId]");
    let vehicle = p.get("filter[vehicleId]");
    let size = p
        .get("page[size]")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 100);
    let number = p
        .get("page[number]")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let fleet = s.fleet();
    let all: Vec<Value> = lock(&s.subscriptions)
        .iter()
        .flat_map(|(&i, hooks)| {
            let vid = fleet
                .view(i)
                .map(|v| ids::fmt_uuid(v.id))
                .unwrap_or_default();
            hooks
                .iter()
                .map(move |h| (vid.clone(), h.clone()))
                .collect::<Vec<_>>()
        })
        .filter(|(vid, h)| webhook.is_none_or(|w| w == h) && vehicle.is_none_or(|v| v == vid))
        .map(|(vid, h)| {
            json!({"type": "subscription", "attributes": {"webhookId": h, "vehicleId": vid}})
        })
        .collect();
    let total = all.len();
    let page: Vec<Value> = all
        .into_iter()
        .skip((number - 1).saturating_mul(size))
        .take(size)
        .collect();
    Json(json!({"data": page,
                "meta": {"pageNumber": number, "pageSize": size, "totalCount": total}}))
    .into_response()
}

pub(crate) async fn unsubscribe(
    State(s): State<Shared>,
    Extension(rid): Extension<RequestId>,
    Path((webhook_id, vehicle_id)): Path<(String, String)>,
) -> Response {
    let idx = s.fleet().vehicle_by_id(&vehicle_id);
    let removed = idx.is_some_and(|i| {
        let mut subs = lock(&s.subscriptions);
        let removed = subs.get_mut(&i).is_some_and(|h| h.remove(&webhook_id));
        if subs.get(&i).is_some_and(|h| h.is_empty()) {
            subs.remove(&i);
        }
        removed
    });
    if removed {
        StatusCode::NO_CONTENT.into_response()
    } else {
        err(&s, &rid, ApiError::not_found("No such subscription."))
    }
}

/// Pushes each subscribed vehicle's readings every `webhook_every` until the runtime ends (or
/// the simulator is dropped): signed like Smartcar's, delivered at most once (a failed delivery
/// is not retried; the readings stay available to polling).
pub(crate) async fn pusher(inner: std::sync::Weak<Inner>, url: String, every: Duration) {
    let Some((host, path)) = split_url(&url) else {
        tracing::warn!(
            url,
            "webhook_url is not http://HOST:PORT/PATH; nothing is pushed"
        );
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = inner.upgrade() else { return };
        let subscribed: Vec<String> = {
            let fleet = s.fleet();
            lock(&s.subscriptions)
                .keys()
                .filter_map(|&i| fleet.view(i))
                .filter(|v| v.active)
                .map(|v| ids::fmt_uuid(v.id))
                .collect()
        };
        for vid in subscribed {
            let Some(body) = super::webhook::vehicle_state(&s, &vid, false) else {
                continue;
            };
            let sig = super::webhook::hmac_hex(s.management_token.as_bytes(), &body);
            if let Err(e) = post(&host, &path, &body, &sig).await {
                tracing::debug!(error = %e, "webhook delivery failed");
            }
        }
    }
}

fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Some((host.to_owned(), path.to_owned()))
}

/// One HTTP/1.1 POST over a fresh connection; `Ok` on a 2xx.
async fn post(host: &str, path: &str, body: &[u8], signature: &str) -> std::io::Result<()> {
    let fut = async {
        let mut conn = tokio::net::TcpStream::connect(host).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             SC-Signature: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(body).await?;
        let mut buf = [0u8; 32];
        let n = conn.read(&mut buf).await?;
        let line = String::from_utf8_lossy(&buf[..n]);
        if line.starts_with("HTTP/1.1 2") || line.starts_with("HTTP/1.0 2") {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("answered {line:?}")))
        }
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .map_err(|_| std::io::Error::other("timed out"))?
}
