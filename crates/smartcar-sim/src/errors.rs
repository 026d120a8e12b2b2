//! Error responses in the shapes of §5: the v3 `errors[]` body, the flat v2 body, and a proxy's
//! HTML 502. Every body carries the request id.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::config::{ErrorBodyVariant, ForcedError};

/// One API error, rendered per the configured [`ErrorBodyVariant`].
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub title: &'static str,
    pub detail: String,
    pub resolution: Option<&'static str>,
    pub retry_after: Option<String>,
}

impl ApiError {
    fn new(
        status: u16,
        kind: &'static str,
        code: Option<&'static str>,
        title: &'static str,
        detail: impl Into<String>,
        resolution: Option<&'static str>,
    ) -> ApiError {
        ApiError {
            status,
            kind,
            code,
            title,
            detail: detail.into(),
            resolution,
            retry_after: None,
        }
    }

    /// 409: the subscription already exists (§8).
    pub(crate) fn conflict(detail: impl Into<String>) -> ApiError {
        Self::new(
            409,
            "CONFLICT",
            Some("ALREADY_EXISTS"),
            "Conflict",
            detail,
            None,
        )
    }

    pub(crate) fn authentication(detail: &str) -> ApiError {
        Self::new(401, "AUTHENTICATION", None, "Authentication", detail, None)
    }

    pub(crate) fn missing_parameter(detail: &str) -> ApiError {
        Self::new(
            400,
            "VALIDATION",
            Some("MISSING_PARAMETER"),
            "Validation",
            detail,
            None,
        )
    }

    pub(crate) fn validation(detail: impl Into<String>) -> ApiError {
        Self::new(
            400,
            "VALIDATION",
            Some("PARAMETER"),
            "Validation",
            detail,
            None,
        )
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> ApiError {
        Self::new(
            404,
            "RESOURCE_NOT_FOUND",
            None,
            "Resource Not Found",
            detail,
            None,
        )
    }

    pub(crate) fn permission(detail: &str) -> ApiError {
        Self::new(
            403,
            "PERMISSION",
            None,
            "Permission",
            detail,
            Some("REAUTHENTICATE"),
        )
    }

    pub(crate) fn rate_limit(vehicle: bool, retry_after: String) -> ApiError {
        let (code, detail) = if vehicle {
            ("VEHICLE", "Too many requests to this vehicle.")
        } else {
            (
                "SMARTCAR_API",
                "The application exceeded its request limit.",
            )
        };
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(
                429,
                "RATE_LIMIT",
                Some(code),
                "Rate Limit",
                detail,
                Some("RETRY_LATER"),
            )
        }
    }

    pub(crate) fn server(status: u16) -> ApiError {
        match status {
            503 => Self::new(
                503,
                "UPSTREAM",
                Some("UNKNOWN_ISSUE"),
                "Upstream",
                "The carmaker's service is unavailable.",
                Some("RETRY_LATER"),
            ),
            _ => Self::new(
                500,
                "SERVER",
                Some("INTERNAL"),
                "Server",
                "Internal server error.",
                Some("RETRY_LATER"),
            ),
        }
    }

    pub(crate) fn forced(e: ForcedError) -> ApiError {
        use ForcedError::*;
        match e {
            Permission => Self::permission("The user did not grant the permission for this."),
            NotFound => Self::not_found("The vehicle was not found."),
            Billing => Self::new(
                430,
                "BILLING",
                Some("VEHICLE_REQUEST_LIMIT"),
                "Billing",
                "The vehicle's monthly request allowance is spent.",
                None,
            ),
            Incompatible => Self::new(
                501,
                "COMPATIBILITY",
                Some("VEHICLE_NOT_CAPABLE"),
                "Compatibility",
                "The vehicle is not capable of this request.",
                None,
            ),
            ConnectedServicesAccount => Self::new(
                400,
                "CONNECTED_SERVICES_ACCOUNT",
                Some("ACCOUNT_ISSUE"),
                "Connected Services Account",
                "The user must fix their connected services account.",
                Some("CONTACT_SUPPORT"),
            ),
            Asleep => Self::new(
                409,
                "VEHICLE_STATE",
                Some("ASLEEP"),
                "Vehicle State",
                "The vehicle is asleep.",
                Some("RETRY_LATER"),
            ),
            Unreachable => Self::new(
                409,
                "VEHICLE_STATE",
                Some("UNREACHABLE"),
                "Vehicle State",
                "The vehicle is unreachable.",
                Some("RETRY_LATER"),
            ),
            Validation => Self::validation("The request is invalid."),
            Server => Self::server(500),
            UpstreamRateLimit => Self::new(
                503,
                "UPSTREAM",
                Some("RATE_LIMIT"),
                "Upstream",
                "The carmaker's rate limit was reached.",
                Some("RETRY_LATER"),
            ),
            GatewayTimeout => Self::new(
                504,
                "UPSTREAM",
                Some("TIMEOUT"),
                "Upstream",
                "The carmaker did not answer in time.",
                Some("RETRY_LATER"),
            ),
            // The server gives the header its configured form; this is the plain one.
            VehicleRateLimit => Self::rate_limit(true, "2".to_owned()),
        }
    }

    fn body(&self, request_id: &str, variant: ErrorBodyVariant) -> Value {
        let resolution = json!({"type": self.resolution});
        let v2 = |resolution: Value| {
            json!({
                "type": self.kind,
                "code": self.code,
                "description": self.detail,
                "statusCode": self.status,
                "requestId": request_id,
                "resolution": resolution,
                "docURL": "https://smartcar.com/docs/errors/api-errors",
            })
        };
        match variant {
            ErrorBodyVariant::V3 => json!({"errors": [{
                "status": self.status.to_string(),
                "type": self.kind,
                "code": self.code,
                "title": self.title,
                "detail": self.detail,
                "resolution": resolution,
                "meta": {"debug": {"requestId": request_id}},
            }]}),
            // What Smartcar's published v3 examples show: a snake_case code and nothing else.
            ErrorBodyVariant::V3Minimal => json!({"errors": [{
                "status": self.status.to_string(),
                "code": self.code.unwrap_or(self.kind).to_ascii_lowercase(),
                "title": self.title,
                "detail": self.detail,
            }]}),
            ErrorBodyVariant::V2 => v2(resolution),
            ErrorBodyVariant::V2ResolutionTypeNull => v2(json!({"type": null})),
            ErrorBodyVariant::V2ResolutionString => v2(json!(self.resolution)),
            ErrorBodyVariant::V2ResolutionNull => v2(Value::Null),
            ErrorBodyVariant::V1 => json!({
                "error": self.kind.to_ascii_lowercase(),
                "message": self.detail,
                "code": self.code,
            }),
        }
    }

    pub(crate) fn render(&self, request_id: &str, variant: ErrorBodyVariant) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Json(self.body(request_id, variant))).into_response();
        if let Some(ra) = self
            .retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, ra);
        }
        resp
    }
}

/// The HTML page a proxy answers with: clients must cope with a non-JSON error body.
pub(crate) fn html_502(request_id: &str) -> Response {
    let body = format!(
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
         <center><h1>502 Bad Gateway</h1></center>\r\n<!-- request {request_id} -->\r\n\
         </body>\r\n</html>\r\n"
    );
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// OAuth error of the token endpoint (§1).
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}
