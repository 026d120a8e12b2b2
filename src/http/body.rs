//! Reading a request body within the surface's bounds: at most `body_limit` bytes (413), all of
//! it within `body_timeout` and never stalled for [`STALL`] (408), and only while the
//! process-wide budget of buffered body bytes lasts (503). The budget is what keeps 300 clients
//! that each send 1 MiB − 1 and stop from holding 300 MiB: past it they are refused, and each is
//! cut when it stalls.
//!
//! The budget has two pools, so that large bodies cannot starve small ones: a body that declares
//! at most [`SMALL`] bytes (every webhook Smartcar sends) draws from a quarter of the budget
//! kept for such bodies; any other body draws from the rest. A refused client is answered only
//! after [`TARPIT`], so a flood that reconnects at once costs it a second a try, not us a core.

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::server::ServerLimits;

/// A body declaring at most this many bytes is small.
pub(super) const SMALL: u64 = 64 * 1024;
/// A body that makes no progress for this long is cut.
const STALL: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a refused client waits for its 503.
const TARPIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rejected {
    TooLarge,
    TooSlow,
    Busy,
    Broken,
}

impl Rejected {
    /// The webhook event's outcome.
    pub(super) fn outcome(self) -> crate::events::WebhookAnswer {
        use crate::events::WebhookAnswer;
        match self {
            Rejected::TooLarge => WebhookAnswer::TooLarge,
            Rejected::TooSlow => WebhookAnswer::TooSlow,
            Rejected::Busy => WebhookAnswer::Busy,
            Rejected::Broken => WebhookAnswer::BrokenBody,
        }
    }
}

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Rejected::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
            Rejected::TooSlow => (StatusCode::REQUEST_TIMEOUT, "body not sent in time\n"),
            Rejected::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy, retry later\n"),
            Rejected::Broken => (StatusCode::BAD_REQUEST, "broken body\n"),
        };
        // The connection is not reused: what is left of the body is never read.
        (
            status,
            [(axum::http::header::CONNECTION, "close")],
            text.to_owned(),
        )
            .into_response()
    }
}

/// Reads the whole body within `limits`.
pub(super) async fn read(body: Body, limits: &ServerLimits) -> Result<Bytes, Rejected> {
    let result = read_inner(body, limits).await;
    if result == Err(Rejected::Busy) {
        tokio::time::sleep(TARPIT).await;
    }
    result
}

async fn read_inner(body: Body, limits: &ServerLimits) -> Result<Bytes, Rejected> {
    let mut body = body;
    let hint = http_body::Body::size_hint(&body);
    let declared = hint.upper().filter(|&u| u == hint.lower());
    if declared.is_some_and(|n| n > limits.body_limit as u64) {
        return Err(Rejected::TooLarge);
    }
    let small = declared.is_some_and(|n| n <= SMALL);
    let pool = if small {
        &limits.small_body_budget
    } else {
        &limits.body_budget
    };
    let deadline = tokio::time::Instant::now() + limits.body_timeout;
    // Reserved only up to a small body: a declared length is a claim, not bytes received.
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(SMALL as usize));
    // Permits held for what is buffered; released when this returns (the handler then owns a
    // body of at most `body_limit` bytes, briefly).
    let mut held = Vec::new();
    let mut held_kib = 0usize;
    loop {
        let next = deadline.min(tokio::time::Instant::now() + STALL);
        let frame = match tokio::time::timeout_at(next, body.frame()).await {
            Err(_) => return Err(Rejected::TooSlow),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(Rejected::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > limits.body_limit
            || (small && (buf.len() + data.len()) as u64 > SMALL)
        {
            return Err(Rejected::TooLarge);
        }
        // Whole KiB held for the bytes buffered so far (a dribble of 1-byte frames costs what
        // it buffers, not a KiB a frame).
        let needed = (buf.len() + data.len()).div_ceil(1024);
        if needed > held_kib {
            let more = u32::try_from(needed - held_kib).unwrap_or(u32::MAX);
            match pool.clone().try_acquire_many_owned(more) {
                Ok(permit) => held.push(permit),
                Err(_) => return Err(Rejected::Busy),
            }
            held_kib = needed;
        }
        buf.extend_from_slice(&data);
    }
    drop(held);
    Ok(Bytes::from(buf))
}
