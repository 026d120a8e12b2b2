//! Reading a request body within the surface's bounds: at most `body_limit` bytes (413), all of
//! it within `body_timeout` (408), and only while the process-wide budget of buffered body
//! bytes lasts (503). The budget is what keeps 300 clients that each send 1 MiB − 1 and stop
//! from holding 300 MiB: past it they are refused, and each is cut at its timeout.

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::server::ServerLimits;

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rejected {
    TooLarge,
    TooSlow,
    Busy,
    Broken,
}

impl Rejected {
    /// The metric outcome.
    pub(super) fn outcome(self) -> &'static str {
        match self {
            Rejected::TooLarge => "rejected_too_large",
            Rejected::TooSlow => "rejected_too_slow",
            Rejected::Busy => "rejected_busy",
            Rejected::Broken => "rejected_body",
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
    let mut body = body;
    let declared = http_body::Body::size_hint(&body).upper();
    if declared.is_some_and(|n| n > limits.body_limit as u64) {
        return Err(Rejected::TooLarge);
    }
    let deadline = tokio::time::Instant::now() + limits.body_timeout;
    let mut buf = Vec::new();
    // Permits held for what is buffered; released when this returns (the handler then owns a
    // body of at most `body_limit` bytes, briefly).
    let mut held = Vec::new();
    let mut held_kib = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(Rejected::TooSlow),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(Rejected::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > limits.body_limit {
            return Err(Rejected::TooLarge);
        }
        // Whole KiB held for the bytes buffered so far (a dribble of 1-byte frames costs what
        // it buffers, not a KiB a frame).
        let needed = (buf.len() + data.len()).div_ceil(1024);
        if needed > held_kib {
            let more = u32::try_from(needed - held_kib).unwrap_or(u32::MAX);
            match limits.body_budget.clone().try_acquire_many_owned(more) {
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
