//! Every way a Smartcar call can fail, classified into what the caller must do (contract §5).
//!
//! The client never decides policy; it says which [`Action`] the answer calls for, and the queue
//! turns that into data (a `run_at`, a pause, a vehicle status).

use std::fmt;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::auth::TokenError;
use super::time::parse_retry_after;

/// What the caller should do about a failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Transient (5xx, 409, timeout, connection refused, malformed answer): back off and retry.
    Retry,
    /// The carmaker's own limit (`UPSTREAM`/`RATE_LIMIT`): retry, but back off long.
    RetryLong,
    /// This vehicle only, not before the given time (429 `RATE_LIMIT`/`VEHICLE`).
    RetryAt(DateTime<Utc>),
    /// The whole application is throttled until the given time (429 `SMARTCAR_API`).
    PauseApp(DateTime<Utc>),
    /// The token was rejected (401): refresh it and retry once. The client does this itself;
    /// a caller only sees it when the fresh token was rejected too.
    Reauthenticate,
    /// No token can be had right now (credentials wrong or token endpoint down); retry no
    /// earlier than the given time without blaming the job.
    WaitForToken(DateTime<Utc>),
    /// Retrying will not help for this vehicle; record why and stop polling it.
    Permanent(VehicleProblem),
    /// A bug on our side (400 `VALIDATION` and other unexpected 4xx): log loudly, no retry.
    Bug,
}

/// Why a vehicle cannot be polled, as the store records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VehicleProblem {
    /// 403 `PERMISSION`: the user did not grant this.
    PermissionDenied,
    /// 404 `RESOURCE_NOT_FOUND`: the vehicle is gone.
    NotFound,
    /// 430 `BILLING`: the monthly allowance is spent.
    BillingLimited,
    /// 501 `COMPATIBILITY`: the vehicle cannot do this.
    Incompatible,
    /// 400 `CONNECTED_SERVICES_ACCOUNT`: the user must re-connect or fix the OEM account.
    NeedsReconnect,
}

/// Where the failure happened.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// The server answered with a non-success status.
    Http(u16),
    /// No answer within the configured timeout.
    Timeout,
    /// The connection could not be made or broke.
    Transport,
    /// A success status whose body does not have the contract's shape.
    Malformed,
    /// No usable token.
    Token(TokenError),
    /// The application is paused (a stored or just-received 429); nothing was sent.
    Paused(DateTime<Utc>),
    /// A pager that would not end (repeated page or more pages than possible).
    Runaway,
}

/// A failed Smartcar call with everything the logs and the database need (never a secret).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    /// Which call failed, e.g. `signals`.
    pub endpoint: &'static str,
    /// `type` from the body (`RATE_LIMIT`, `SERVER`, …) or OAuth's `error`.
    pub error_type: Option<String>,
    /// `code` from the body (`VEHICLE`, `SMARTCAR_API`, …).
    pub code: Option<String>,
    /// `detail`/`description`/`title`, or the start of a non-JSON body.
    pub detail: Option<String>,
    /// `SC-Request-Id` header, or the body's request id.
    pub request_id: Option<String>,
    /// `resolution.type` (or a bare `resolution` string), e.g. `RETRY_LATER`; for the logs.
    pub resolution: Option<String>,
    /// `Retry-After`, resolved to a point in time (capped by `queue.max_retry_after`).
    pub retry_after: Option<DateTime<Utc>>,
    /// The failure was on a continuation page (`links.next`) of a call whose first page
    /// answered: whatever it says, it is a transient failure of that call, never a verdict on
    /// the vehicle (see [`ApiError::action`]).
    pub continuation: bool,
}

impl ApiError {
    pub fn new(kind: ErrorKind, endpoint: &'static str) -> Self {
        ApiError {
            kind,
            endpoint,
            error_type: None,
            code: None,
            detail: None,
            request_id: None,
            resolution: None,
            retry_after: None,
            continuation: false,
        }
    }

    /// Marks this failure as one of a continuation page.
    pub fn on_continuation(mut self) -> Self {
        self.continuation = true;
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_request_id(mut self, id: Option<String>) -> Self {
        self.request_id = id;
        self
    }

    /// Builds the error for a non-success answer from its status, headers and raw body.
    /// `max_retry_after` caps the wait a `Retry-After` header can impose.
    pub fn from_response(
        endpoint: &'static str,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
        max_retry_after: std::time::Duration,
    ) -> Self {
        let mut err = ApiError::new(ErrorKind::Http(status), endpoint);
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => err.read_body(&v),
            Err(_) => {
                // A proxy's HTML 502 or similar: keep a short single-line excerpt.
                let text = String::from_utf8_lossy(body);
                let excerpt: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                if !excerpt.is_empty() {
                    err.detail = Some(excerpt.chars().take(120).collect());
                }
            }
        }
        if let Some(id) = header_str(headers, "sc-request-id") {
            err.request_id = Some(id.to_owned());
        }
        err.retry_after = header_str(headers, "retry-after")
            .and_then(|v| parse_retry_after(v, now, max_retry_after));
        err
    }

    /// Reads every error body shape seen (contract §5). Classification is by HTTP status first
    /// ([`ApiError::action`]), so each field here is optional:
    /// - v3 `{"errors": [{status, type?, code?, title?, detail?, resolution?, meta?}]}`, down to
    ///   the smallest published form `{status, code, title, detail}`;
    /// - flat v2 `{type, code, description, statusCode, requestId, resolution}`, whose
    ///   `resolution` is an object, `{"type": null}`, a bare string or null;
    /// - v1 `{error, message, code}` and OAuth's `{error, error_description}`;
    /// - a bare JSON string.
    fn read_body(&mut self, v: &Value) {
        if let Some(first) = v
            .get("errors")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            self.error_type = text(first, "type");
            self.code = text(first, "code");
            self.detail = text(first, "detail").or_else(|| text(first, "title"));
            self.request_id = first
                .pointer("/meta/debug/requestId")
                .and_then(Value::as_str)
                .map(str::to_owned);
            self.resolution = resolution(first);
        } else if v.get("type").is_some()
            || v.get("statusCode").is_some()
            || v.get("description").is_some()
        {
            self.error_type = text(v, "type");
            self.code = text(v, "code");
            self.detail = text(v, "description")
                .or_else(|| text(v, "detail"))
                .or_else(|| text(v, "message"));
            self.request_id = text(v, "requestId");
            self.resolution = resolution(v);
        } else if v.get("error").is_some() {
            self.error_type = text(v, "error");
            self.code = text(v, "code");
            self.detail = text(v, "error_description").or_else(|| text(v, "message"));
            self.request_id = text(v, "requestId");
        } else if let Some(s) = v.as_str() {
            self.detail = Some(s.chars().take(120).collect());
        }
    }

    /// The HTTP status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self.kind {
            ErrorKind::Http(s) => Some(s),
            _ => None,
        }
    }

    fn type_is(&self, t: &str) -> bool {
        self.error_type
            .as_deref()
            .is_some_and(|x| x.eq_ignore_ascii_case(t))
    }

    fn code_is(&self, c: &str) -> bool {
        self.code
            .as_deref()
            .is_some_and(|x| x.eq_ignore_ascii_case(c))
    }

    /// The contract's table (§5): what to do about this failure. `now` resolves a 429 that came
    /// without `Retry-After` to a conservative default.
    ///
    /// A failure on a continuation page is transient whatever it says: the first page just
    /// answered for this vehicle, so a 404 or 403 there is the pager's problem (an expired
    /// cursor, a bad link), not the vehicle's. Waits it asks for (429, app pause, no token) are
    /// still honoured.
    pub fn action(&self, now: DateTime<Utc>) -> Action {
        let action = self.status_action(now);
        if !self.continuation {
            return action;
        }
        match action {
            Action::Permanent(_) | Action::Bug | Action::Reauthenticate => Action::Retry,
            other => other,
        }
    }

    fn status_action(&self, now: DateTime<Utc>) -> Action {
        let status = match &self.kind {
            ErrorKind::Http(s) => *s,
            ErrorKind::Timeout | ErrorKind::Transport | ErrorKind::Malformed => {
                return Action::Retry;
            }
            ErrorKind::Runaway => return Action::Retry,
            ErrorKind::Paused(until) => return Action::PauseApp(*until),
            ErrorKind::Token(e) => return Action::WaitForToken(e.retry_at()),
        };
        match status {
            401 => Action::Reauthenticate,
            403 => Action::Permanent(VehicleProblem::PermissionDenied),
            404 => Action::Permanent(VehicleProblem::NotFound),
            400 if self.type_is("CONNECTED_SERVICES_ACCOUNT") => {
                Action::Permanent(VehicleProblem::NeedsReconnect)
            }
            409 => Action::Retry,
            429 => {
                if self.code_is("VEHICLE") {
                    Action::RetryAt(
                        self.retry_after
                            .unwrap_or(now + chrono::Duration::seconds(60)),
                    )
                } else {
                    // `SMARTCAR_API`, or a 429 that does not say: the app bucket is the safe guess.
                    Action::PauseApp(
                        self.retry_after
                            .unwrap_or(now + chrono::Duration::seconds(30)),
                    )
                }
            }
            430 => Action::Permanent(VehicleProblem::BillingLimited),
            501 => Action::Permanent(VehicleProblem::Incompatible),
            500..=599 if self.type_is("UPSTREAM") && self.code_is("RATE_LIMIT") => {
                Action::RetryLong
            }
            500..=599 => Action::Retry,
            _ => Action::Bug,
        }
    }
}

/// A non-empty string or number field as text (`code` is a number in some old bodies).
fn text(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `resolution` as `{"type": "RETRY_LATER"}`, `{"type": null}`, `"RETRY_LATER"` or null.
fn resolution(v: &Value) -> Option<String> {
    match v.get("resolution")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        r @ Value::Object(_) => text(r, "type"),
        _ => None,
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Http(s) => write!(f, "{} answered HTTP {s}", self.endpoint)?,
            ErrorKind::Timeout => write!(f, "{} timed out", self.endpoint)?,
            ErrorKind::Transport => write!(f, "{}: connection failed", self.endpoint)?,
            ErrorKind::Malformed => write!(f, "{}: malformed response", self.endpoint)?,
            ErrorKind::Token(e) => write!(f, "{}: no access token: {e}", self.endpoint)?,
            ErrorKind::Paused(t) => write!(f, "{}: application paused until {t}", self.endpoint)?,
            ErrorKind::Runaway => write!(f, "{}: pager did not end", self.endpoint)?,
        }
        if let Some(t) = &self.error_type {
            write!(f, " {t}")?;
            if let Some(c) = &self.code {
                write!(f, "/{c}")?;
            }
        }
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        if let Some(r) = &self.resolution {
            write!(f, " [resolution {r}]")?;
        }
        if self.continuation {
            write!(f, " (on a continuation page)")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " (request id {id})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use reqwest::header::HeaderValue;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    fn err(status: u16, body: &str, headers: &[(&'static str, &str)]) -> ApiError {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        ApiError::from_response(
            "signals",
            status,
            &h,
            body.as_bytes(),
            now(),
            std::time::Duration::from_secs(3600),
        )
    }

    fn v3(status: u16, t: &str, c: &str) -> String {
        format!(
            r#"{{"errors":[{{"status":"{status}","type":"{t}","code":"{c}","title":"t","detail":"d",
            "resolution":{{"type":"RETRY_LATER"}},"meta":{{"debug":{{"requestId":"req-{status}"}}}}}}]}}"#
        )
    }

    #[test]
    fn the_contract_table_maps_each_status_to_its_action() {
        use Action::*;
        use VehicleProblem::*;
        let ra = [("retry-after", "7")];
        let at7 = now() + chrono::Duration::seconds(7);
        let cases: Vec<(u16, &str, &str, Action)> = vec![
            (401, "AUTHENTICATION", "", Reauthenticate),
            (403, "PERMISSION", "", Permanent(PermissionDenied)),
            (400, "VALIDATION", "MISSING_PARAMETER", Bug),
            (
                400,
                "CONNECTED_SERVICES_ACCOUNT",
                "ACCOUNT_ISSUE",
                Permanent(NeedsReconnect),
            ),
            (404, "RESOURCE_NOT_FOUND", "PATH", Permanent(NotFound)),
            (409, "VEHICLE_STATE", "ASLEEP", Retry),
            (409, "VEHICLE_STATE", "UNREACHABLE", Retry),
            (429, "RATE_LIMIT", "SMARTCAR_API", PauseApp(at7)),
            (429, "RATE_LIMIT", "VEHICLE", RetryAt(at7)),
            (
                430,
                "BILLING",
                "VEHICLE_REQUEST_LIMIT",
                Permanent(BillingLimited),
            ),
            (
                501,
                "COMPATIBILITY",
                "SMARTCAR_NOT_CAPABLE",
                Permanent(Incompatible),
            ),
            (500, "SERVER", "INTERNAL", Retry),
            (502, "UPSTREAM", "UNKNOWN", Retry),
            (503, "UPSTREAM", "RATE_LIMIT", RetryLong),
            (504, "UPSTREAM", "TIMEOUT", Retry),
        ];
        for (status, t, c, want) in cases {
            let e = err(status, &v3(status, t, c), &ra);
            assert_eq!(e.action(now()), want, "{status} {t}/{c}");
            assert_eq!(
                e.request_id.as_deref(),
                Some(format!("req-{status}").as_str())
            );
        }
    }

    #[test]
    fn the_flat_v2_body_is_read() {
        let body = r#"{"type":"RATE_LIMIT","code":"VEHICLE","description":"slow down","statusCode":429,
                      "requestId":"v2-req","resolution":{"type":"RETRY_LATER"}}"#;
        let e = err(
            429,
            body,
            &[("retry-after", "Thu, 01 Jan 2026 00:00:09 GMT")],
        );
        assert_eq!(e.request_id.as_deref(), Some("v2-req"));
        assert_eq!(e.detail.as_deref(), Some("slow down"));
        assert_eq!(
            e.action(now()),
            Action::RetryAt(now() + chrono::Duration::seconds(9))
        );
    }

    #[test]
    fn an_html_502_is_a_retryable_server_error_not_a_parse_failure() {
        let e = err(
            502,
            "<html><head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>",
            &[("sc-request-id", "hdr-req")],
        );
        assert_eq!(e.action(now()), Action::Retry);
        assert_eq!(e.request_id.as_deref(), Some("hdr-req"));
        assert!(e.to_string().contains("502"), "{e}");
    }

    #[test]
    fn the_header_request_id_wins_and_oauth_bodies_are_read() {
        let e = err(
            401,
            r#"{"error":"invalid_client","error_description":"bad secret"}"#,
            &[("SC-Request-Id", "h1")],
        );
        assert_eq!(e.error_type.as_deref(), Some("invalid_client"));
        assert_eq!(e.request_id.as_deref(), Some("h1"));
    }

    #[test]
    fn a_429_without_retry_after_still_waits() {
        let e = err(429, &v3(429, "RATE_LIMIT", "SMARTCAR_API"), &[]);
        match e.action(now()) {
            Action::PauseApp(t) => assert!(t > now()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_smallest_v3_body_is_classified_by_status() {
        let body = r#"{"errors":[{"status":"400","code":"bad_request","title":"Bad Request",
                      "detail":"page[size] is invalid"}]}"#;
        let e = err(400, body, &[]);
        assert_eq!(e.code.as_deref(), Some("bad_request"));
        assert_eq!(e.detail.as_deref(), Some("page[size] is invalid"));
        assert_eq!(e.error_type, None);
        assert_eq!(e.request_id, None);
        assert_eq!(e.action(now()), Action::Bug);
        let e = err(
            404,
            r#"{"errors":[{"status":"404","code":"not_found","title":"Not Found"}]}"#,
            &[],
        );
        assert_eq!(e.detail.as_deref(), Some("Not Found"));
        assert_eq!(e.action(now()), Action::Permanent(VehicleProblem::NotFound));
    }

    #[test]
    fn every_v2_resolution_shape_and_the_v1_body_are_read() {
        for (resolution, want) in [
            (r#"{"type":"RETRY_LATER"}"#, Some("RETRY_LATER")),
            (r#"{"type":null}"#, None),
            (r#""RETRY_LATER""#, Some("RETRY_LATER")),
            ("null", None),
        ] {
            let body = format!(
                r#"{{"type":"VEHICLE_STATE","code":"ASLEEP","description":"asleep","statusCode":409,
                    "requestId":"r2","resolution":{resolution}}}"#
            );
            let e = err(409, &body, &[]);
            assert_eq!(e.resolution.as_deref(), want, "{resolution}");
            assert_eq!(e.error_type.as_deref(), Some("VEHICLE_STATE"));
            assert_eq!(e.request_id.as_deref(), Some("r2"));
            assert_eq!(e.action(now()), Action::Retry);
        }
        let e = err(
            429,
            r#"{"error":"rate_limit","message":"Too many requests to this vehicle.","code":"VEHICLE"}"#,
            &[("retry-after", "3")],
        );
        assert_eq!(e.error_type.as_deref(), Some("rate_limit"));
        assert_eq!(
            e.detail.as_deref(),
            Some("Too many requests to this vehicle.")
        );
        assert_eq!(
            e.action(now()),
            Action::RetryAt(now() + chrono::Duration::seconds(3))
        );
        // A numeric code and a bare-string body do not trip the reader.
        let e = err(500, r#"{"error":"server_error","code":500}"#, &[]);
        assert_eq!(e.code.as_deref(), Some("500"));
        let e = err(503, r#""Service Unavailable""#, &[]);
        assert_eq!(e.detail.as_deref(), Some("Service Unavailable"));
        assert_eq!(e.action(now()), Action::Retry);
    }

    #[test]
    fn a_failed_continuation_page_is_always_transient() {
        for status in [401, 403, 404, 400, 430, 501] {
            let e = err(status, &v3(status, "RESOURCE_NOT_FOUND", "PATH"), &[]).on_continuation();
            assert_eq!(e.action(now()), Action::Retry, "{status}");
        }
        let e = err(
            429,
            &v3(429, "RATE_LIMIT", "VEHICLE"),
            &[("retry-after", "7")],
        )
        .on_continuation();
        assert_eq!(
            e.action(now()),
            Action::RetryAt(now() + chrono::Duration::seconds(7))
        );
    }
}
