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
    /// `Retry-After`, resolved to a point in time.
    pub retry_after: Option<DateTime<Utc>>,
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
            retry_after: None,
        }
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
    pub fn from_response(
        endpoint: &'static str,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
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
        err.retry_after =
            header_str(headers, "retry-after").and_then(|v| parse_retry_after(v, now));
        err
    }

    /// Reads the v3 `errors[]` body, the flat v2 body, or an OAuth `error` body.
    fn read_body(&mut self, v: &Value) {
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        if let Some(first) = v
            .get("errors")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            self.error_type = s(first, "type");
            self.code = s(first, "code");
            self.detail = s(first, "detail").or_else(|| s(first, "title"));
            self.request_id = first
                .pointer("/meta/debug/requestId")
                .and_then(Value::as_str)
                .map(str::to_owned);
        } else if v.get("type").is_some() || v.get("statusCode").is_some() {
            self.error_type = s(v, "type");
            self.code = s(v, "code");
            self.detail = s(v, "description").or_else(|| s(v, "detail"));
            self.request_id = s(v, "requestId");
        } else if v.get("error").is_some() {
            self.error_type = s(v, "error");
            self.detail = s(v, "error_description");
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
    pub fn action(&self, now: DateTime<Utc>) -> Action {
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
        ApiError::from_response("signals", status, &h, body.as_bytes(), now())
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
}
