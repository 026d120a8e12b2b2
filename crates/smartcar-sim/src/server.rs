//! HTTP surface: the token endpoint and the `/v3` routes. Every `/v3` call passes the gate
//! (latency, bearer token, fault dice, application bucket) before its handler runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use chrono::Utc;
use serde_json::{Value, json};

use super::config::{ForcedError, LinkStyle, PagingVariant, VehicleMode};
use super::counters::inc;
use super::errors::{ApiError, html_502, oauth_error};
use super::fleet::VehicleView;
use super::ids::{self, decode_form, encode_component};
use super::limits::{Admit, retry_after};
use super::readings::{Reading, Sampler, Status, code_index, signal_set};
use super::shapes;
use super::state::{Inner, lock};

const MAX_PAGE_SIZE: usize = 100;
const DEFAULT_PAGE_SIZE: usize = 10;
/// The token endpoint takes a few ms, so concurrent token requests overlap and show in the peak.
const TOKEN_DELAY: Duration = Duration::from_millis(5);

/// The id of the current request, set before routing.
#[derive(Clone)]
pub(crate) struct RequestId(pub String);

type Shared = Arc<Inner>;

pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/v3/connections", get(list_connections))
        .route("/v3/connections/{id}", delete(delete_connection))
        .route("/v3/users/{id}", delete(delete_user))
        .route("/v3/vehicles/{id}", get(get_vehicle))
        .route("/v3/vehicles/{id}/signals", get(get_signals))
        .route("/v3/vehicles/{id}/signals/{code}", get(get_signal))
        .route(
            "/management/v3/subscriptions",
            post(super::management::subscribe).get(super::management::list),
        )
        .route(
            "/management/v3/subscriptions/{webhook}/vehicles/{id}",
            delete(super::management::unsubscribe),
        )
        .route_layer(from_fn_with_state(state.clone(), gate))
        .route("/oauth2/token", post(token))
        .fallback(fallback)
        .layer(from_fn_with_state(state.clone(), outer))
        .with_state(state)
}

/// Request id in, `SC-Request-Id` out; counts every response by status.
async fn outer(State(s): State<Shared>, mut req: Request, next: Next) -> Response {
    let id = s.next_request_id();
    let api = req.uri().path() != "/oauth2/token";
    if api {
        inc(&s.counters.api_calls);
    }
    req.extensions_mut().insert(RequestId(id.clone()));
    let in_flight = api.then(|| s.counters.api_start());
    let mut resp = next.run(req).await;
    drop(in_flight);
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("sc-request-id", v);
    }
    s.counters.status(resp.status().as_u16());
    resp
}

fn error(s: &Inner, rid: &RequestId, e: ApiError) -> Response {
    e.render(&rid.0, s.variants.error_body)
}

/// Checks common to every `/v3` route, in the order the contract implies.
async fn gate(
    State(s): State<Shared>,
    Extension(rid): Extension<RequestId>,
    req: Request,
    next: Next,
) -> Response {
    let c = &s.counters;
    match req.extensions().get::<MatchedPath>().map(|m| m.as_str()) {
        Some("/v3/connections") => inc(&c.connections_calls),
        Some("/v3/vehicles/{id}") => inc(&c.vehicle_calls),
        Some("/v3/vehicles/{id}/signals") => inc(&c.signals_calls),
        Some("/v3/vehicles/{id}/signals/{code}") => inc(&c.signal_calls),
        _ => {}
    }
    if !s.latency.is_zero() {
        s.delays.until(Instant::now() + s.latency).await;
    }

    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned());
    let now = Instant::now();
    let expiry = token.as_ref().and_then(|t| lock(&s.tokens).get(t).copied());
    match expiry {
        None => {
            inc(&c.unknown_token_calls);
            return error(
                &s,
                &rid,
                ApiError::authentication("Invalid or missing access token."),
            );
        }
        Some(exp) if exp <= now => {
            inc(&c.expired_token_calls);
            return error(
                &s,
                &rid,
                ApiError::authentication("The access token has expired."),
            );
        }
        Some(_) => {}
    }

    let f = *lock(&s.faults);
    let roll = fastrand::f64();
    if roll < f.expired_token_rate {
        // As if the token had expired: it now has, so a retry with it fails too.
        if let Some(t) = &token {
            lock(&s.tokens).insert(t.clone(), now);
        }
        inc(&c.injected_errors);
        return error(
            &s,
            &rid,
            ApiError::authentication("The access token has expired."),
        );
    }
    if roll < f.expired_token_rate + f.error_rate {
        inc(&c.injected_errors);
        return match fastrand::u8(0..3) {
            0 => error(&s, &rid, ApiError::server(500)),
            1 => html_502(&rid.0),
            _ => error(&s, &rid, ApiError::server(503)),
        };
    }
    if f.slow_rate > 0.0 && fastrand::f64() < f.slow_rate {
        inc(&c.slow_responses);
        tokio::time::sleep(f.slow_delay).await;
    }

    let now = Instant::now();
    let limited = {
        let mut limiter = lock(&s.app_limiter);
        match limiter.admit(now) {
            Admit::Ok => None,
            Admit::Limited { wait, early } => {
                let ra = retry_after(now, wait, s.retry_after_form());
                if early {
                    inc(&c.calls_before_retry_after);
                } else if !limiter.in_force(now) {
                    limiter.set_deadline(ra.deadline);
                }
                Some(ra.header)
            }
        }
    };
    if let Some(header) = limited {
        inc(&c.responses_429_app);
        return error(&s, &rid, ApiError::rate_limit(false, header));
    }
    next.run(req).await
}

async fn fallback(State(s): State<Shared>, Extension(rid): Extension<RequestId>) -> Response {
    error(&s, &rid, ApiError::not_found("No such path."))
}

/// Form or JSON body fields of a token request.
fn token_fields(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if is_json {
        let parsed: HashMap<String, Value> = serde_json::from_slice(body).unwrap_or_default();
        parsed
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
            .collect()
    } else {
        decode_form(&String::from_utf8_lossy(body))
            .into_iter()
            .collect()
    }
}

/// `POST /oauth2/token` (client credentials, §1). Never rate limited.
async fn token(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let c = &s.counters;
    inc(&c.token_requests);
    let _in_flight = c.token_start();
    tokio::time::sleep(TOKEN_DELAY).await;
    let f = token_fields(&headers, &body);
    let field = |k: &str| f.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let reject = |status, error, description| {
        inc(&c.token_rejected);
        oauth_error(status, error, description)
    };
    match field("grant_type") {
        Some("client_credentials") => {}
        Some(_) => {
            return reject(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type must be client_credentials.",
            );
        }
        None => {
            return reject(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing.",
            );
        }
    }
    let (Some(id), Some(secret)) = (field("client_id"), field("client_secret")) else {
        return reject(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id and client_secret are required.",
        );
    };
    let secret_ok = lock(&s.secrets).iter().any(|x| x == secret);
    if id != s.client_id || !secret_ok {
        return reject(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client_id or client_secret.",
        );
    }
    let token = ids::random_token();
    s.issue_token(token.clone());
    Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": s.token_lifetime.as_secs(),
    }))
    .into_response()
}

fn params(q: Option<String>) -> HashMap<String, String> {
    q.map(|q| decode_form(&q).into_iter().collect())
        .unwrap_or_default()
}

/// A positive integer query parameter, or the default when absent.
fn page_param(p: &HashMap<String, String>, key: &str, default: usize) -> Result<usize, ApiError> {
    match p.get(key) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(ApiError::validation(format!(
                "{key} must be a positive integer."
            ))),
        },
    }
}

fn page_size(p: &HashMap<String, String>, default: usize) -> Result<usize, ApiError> {
    let size = page_param(p, "page[size]", default)?;
    if p.contains_key("page[size]") && size > MAX_PAGE_SIZE {
        return Err(ApiError::validation(format!(
            "page[size] must be at most {MAX_PAGE_SIZE}."
        )));
    }
    Ok(size)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `GET /v3/connections` (§3).
async fn list_connections(
    State(s): State<Shared>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let p = params(q);
    let (number, size) = match (
        page_param(&p, "page[number]", 1),
        page_size(&p, DEFAULT_PAGE_SIZE),
    ) {
        (Ok(n), Ok(s)) => (n, s),
        (Err(e), _) | (_, Err(e)) => return error(&s, &rid, e),
    };
    let mode = match p.get("filter[vehicle.mode]").map(String::as_str) {
        None | Some("live") => VehicleMode::Live,
        Some("simulated") => VehicleMode::Simulated,
        Some(_) => {
            return error(
                &s,
                &rid,
                ApiError::validation("filter[vehicle.mode] must be live or simulated."),
            );
        }
    };
    let user_filter = p
        .get("filter[userId]")
        .map(String::as_str)
        .or_else(|| header_str(&headers, "sc-user-id"));
    let vehicle_filter = p.get("filter[vehicleId]").map(String::as_str);
    if user_filter.is_none() && vehicle_filter.is_none() && s.take_app_page_failure() {
        inc(&s.counters.injected_errors);
        return error(&s, &rid, ApiError::server(500));
    }
    let start = (number - 1).saturating_mul(size);

    let (data, total) = {
        let fleet = s.fleet();
        let user = user_filter.map(|u| fleet.user_by_id(u));
        let selected: Vec<u32>;
        let (page, total): (&[u32], usize) = match (vehicle_filter, user) {
            (_, Some(None)) => (&[], 0),
            (Some(vid), user) => {
                selected = fleet
                    .vehicle_by_id(vid)
                    .and_then(|i| fleet.view(i))
                    .filter(|v| {
                        v.active && v.mode == mode && user.is_none_or(|u| u == Some(v.user))
                    })
                    .map(|v| vec![v.index])
                    .unwrap_or_default();
                let end = selected.len().min(start.saturating_add(size));
                (&selected[start.min(end)..end], selected.len())
            }
            (None, Some(Some(u))) => {
                selected = fleet.active(Some(u), mode);
                let end = selected.len().min(start.saturating_add(size));
                (&selected[start.min(end)..end], selected.len())
            }
            (None, None) => (
                fleet.active_page(mode, start, size),
                fleet.active_count(mode),
            ),
        };
        let data: Vec<Value> = page
            .iter()
            .filter_map(|&i| fleet.view(i))
            .map(|v| shapes::connection(&v, fleet.user_id(v.user), &s.variants))
            .collect();
        (data, total)
    };

    let mut filters = String::new();
    for (k, v) in [
        ("filter[userId]", user_filter),
        ("filter[vehicleId]", vehicle_filter),
        (
            "filter[vehicle.mode]",
            p.get("filter[vehicle.mode]").map(String::as_str),
        ),
    ] {
        if let Some(v) = v {
            filters.push_str(&format!("{k}={}&", encode_component(v)));
        }
    }
    let link = |n: usize| format!("/connections?{filters}page[number]={n}&page[size]={size}");
    let last = total.div_ceil(size).max(1);
    let has_next = start.saturating_add(data.len()) < total;
    let (meta, links) = match s.variants.paging {
        PagingVariant::Standard => (
            json!({"pageNumber": number, "pageSize": size, "totalCount": total}),
            json!({"self": link(number), "first": link(1),
                   "prev": (number > 1).then(|| link(number - 1)),
                   "next": has_next.then(|| link(number + 1)), "last": link(last)}),
        ),
        PagingVariant::Alternate => (
            json!({"page": number, "pageSize": size, "totalCount": total}),
            json!({"self": link(number), "first": link(1),
                   "previous": (number > 1).then(|| link(number - 1)),
                   "next": has_next.then(|| link(number + 1)), "last": link(last)}),
        ),
        // No links object at all: a links object without `next` is itself a last-page signal
        // (contract §3), so a server that pages by totals alone sends none.
        PagingVariant::TotalsOnly => (
            json!({"pageNumber": number, "pageSize": size, "totalCount": total}),
            serde_json::Value::Null,
        ),
        PagingVariant::LinksOnly => {
            let mut links = json!({"self": link(number)});
            if has_next {
                links["next"] = json!(link(number + 1));
            }
            (json!({"pageNumber": number, "pageSize": size}), links)
        }
    };
    let mut body = json!({"data": data, "meta": meta});
    if !links.is_null() {
        body["links"] = links;
    }
    Json(body).into_response()
}

/// Lookup, ownership, per-vehicle throttle and forced error of a vehicle-scoped call.
fn vehicle_checks(
    s: &Inner,
    rid: &RequestId,
    headers: &HeaderMap,
    id: &str,
    user_required: bool,
    forced_applies: bool,
) -> Result<VehicleView, Box<Response>> {
    let user = header_str(headers, "sc-user-id");
    if user_required && user.is_none() {
        return Err(Box::new(error(
            s,
            rid,
            ApiError::missing_parameter("The sc-user-id header is required."),
        )));
    }
    let Some((v, owner)) = s.vehicle(id).filter(|(v, _)| v.active) else {
        return Err(Box::new(error(
            s,
            rid,
            ApiError::not_found("The vehicle was not found."),
        )));
    };
    if user.is_some_and(|u| u != owner) {
        return Err(Box::new(error(
            s,
            rid,
            ApiError::permission("The vehicle is not connected to this user."),
        )));
    }
    // Every call that reaches the vehicle is billed (a 429 too); past the allowance, 430.
    if !s.admit_allowance(&v, chrono::Utc::now().timestamp_millis()) {
        return Err(Box::new(error(
            s,
            rid,
            ApiError::forced(ForcedError::Billing),
        )));
    }
    if let Some(min) = s.vehicle_min_interval {
        let now = Instant::now();
        let mut throttle = lock(&s.vehicle_throttle);
        if let Admit::Limited { wait, early } = throttle.admit(v.index, now, min) {
            let ra = retry_after(now, wait, s.retry_after_form());
            if early {
                inc(&s.counters.calls_before_retry_after);
            } else {
                throttle.set_deadline(v.index, ra.deadline);
            }
            drop(throttle);
            inc(&s.counters.responses_429_vehicle);
            return Err(Box::new(error(
                s,
                rid,
                ApiError::rate_limit(true, ra.header),
            )));
        }
    }
    match v.forced {
        Some(ForcedError::VehicleRateLimit) if forced_applies => {
            inc(&s.counters.responses_429_vehicle);
            let ra = retry_after(Instant::now(), Duration::from_secs(2), s.retry_after_form());
            Err(Box::new(error(
                s,
                rid,
                ApiError::rate_limit(true, ra.header),
            )))
        }
        Some(e) if forced_applies => Err(Box::new(error(s, rid, ApiError::forced(e)))),
        _ => Ok(v),
    }
}

fn wrap(s: &Inner, resource: Value) -> Response {
    if s.variants.wrapped_resources {
        Json(json!({"data": resource})).into_response()
    } else {
        Json(resource).into_response()
    }
}

fn imperial(headers: &HeaderMap) -> bool {
    header_str(headers, "sc-unit-system").is_some_and(|u| u.eq_ignore_ascii_case("imperial"))
}

fn successes(readings: &[Reading]) -> u64 {
    readings
        .iter()
        .filter(|r| matches!(r.status, Status::Success { .. }))
        .count() as u64
}

/// `GET /v3/vehicles/{id}`: `sc-user-id` optional, checked when given.
async fn get_vehicle(
    State(s): State<Shared>,
    Extension(rid): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match vehicle_checks(&s, &rid, &headers, &id, false, false) {
        Ok(v) => wrap(&s, shapes::vehicle(&v, &s.variants)),
        Err(r) => *r,
    }
}

/// `GET /v3/vehicles/{id}/signals` (§4).
async fn get_signals(
    State(s): State<Shared>,
    Extension(rid): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let v = match vehicle_checks(&s, &rid, &headers, &id, true, true) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let p = params(q);
    let paged = s.variants.signals_page_size.is_some() || p.contains_key("page[size]");
    let (number, size) = match (
        page_param(&p, "page[number]", 1),
        page_size(&p, s.variants.signals_page_size.unwrap_or(usize::MAX)),
    ) {
        (Ok(n), Ok(s)) => (n, s.max(1)),
        (Err(e), _) | (_, Err(e)) => return error(&s, &rid, e),
    };
    let now_ms = Utc::now().timestamp_millis();
    let fmt = s.variants.timestamps;
    let readings = if v.no_signals {
        Vec::new()
    } else {
        s.readings(&v, now_ms, imperial(&headers))
    };
    if number > 1 && s.take_continuation_failure() {
        return error(
            &s,
            &rid,
            ApiError::not_found("The requested page was not found."),
        );
    }
    let total = readings.len();
    let start = (number - 1).saturating_mul(size).min(total);
    let end = start.saturating_add(size).min(total);
    let page = &readings[start..end];
    s.record(&v, page, fmt);
    s.counters
        .signals_served
        .fetch_add(successes(page), std::sync::atomic::Ordering::Relaxed);

    let vid = ids::fmt_uuid(v.id);
    let base = format!("/vehicles/{vid}/signals");
    let mut data: Vec<Value> = page
        .iter()
        .map(|r| shapes::signal(r, now_ms, fmt, &s.variants))
        .collect();
    if s.variants.overlong_code && number == 1 {
        data.push(shapes::overlong_signal(now_ms, fmt, false));
    }
    let links = if paged {
        let host = header_str(&headers, "host").unwrap_or("localhost");
        let link = |n: usize| {
            let q = format!("page[number]={n}&page[size]={size}");
            match s.variants.signals_link {
                LinkStyle::RootRelative => format!("{base}?{q}"),
                LinkStyle::ApiPrefixed => format!("/v3{base}?{q}"),
                LinkStyle::Absolute => format!("http://{host}/v3{base}?{q}"),
                LinkStyle::ForeignOrigin => format!("http://foreign.invalid/v3{base}?{q}"),
                LinkStyle::OtherVehicle => format!("/vehicles/not-{vid}/signals?{q}"),
            }
        };
        let mut l = json!({"self": link(number)});
        if end < total {
            l["next"] = json!(link(number + 1));
        }
        l
    } else {
        json!({"self": base})
    };
    let page_size = if paged { size } else { total };
    Json(json!({
        "data": data,
        "meta": {"page": number, "pageSize": page_size, "totalCount": total},
        "links": links,
        "included": {"vehicle": shapes::included_vehicle(&v)},
    }))
    .into_response()
}

/// `GET /v3/vehicles/{id}/signals/{code}`: 404 for a code the vehicle does not have.
async fn get_signal(
    State(s): State<Shared>,
    Extension(rid): Extension<RequestId>,
    Path((id, code)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let v = match vehicle_checks(&s, &rid, &headers, &id, true, true) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(def) = code_index(&code).filter(|d| signal_set(&v).contains(d)) else {
        return error(
            &s,
            &rid,
            ApiError::not_found(format!("Unknown signal {code}.")),
        );
    };
    let now_ms = Utc::now().timestamp_millis();
    let fmt = s.variants.timestamps;
    let reading = if v.no_signals {
        // Nothing in the store yet for an unsubscribed vehicle.
        Reading {
            def,
            status: Status::Unavailable,
            meta: super::readings::Meta::Normal,
        }
    } else {
        let mut r = Sampler::new(s.seed, v, s.period_ms, imperial(&headers)).reading(def, now_ms);
        shapes::vary(&s.variants, &mut r, v.index);
        r
    };
    let readings = [reading];
    s.record(&v, &readings, fmt);
    s.counters
        .signals_served
        .fetch_add(successes(&readings), std::sync::atomic::Ordering::Relaxed);
    wrap(&s, shapes::signal(&readings[0], now_ms, fmt, &s.variants))
}

/// `DELETE /v3/connections/{id}`: disconnects one vehicle.
async fn delete_connection(
    State(s): State<Shared>,
    Extension(rid): Extension<RequestId>,
    Path(id): Path<String>,
) -> Response {
    let mut fleet = s.fleet_mut();
    match fleet.vehicle_by_connection(&id) {
        Some(i) if fleet.disconnect(i) => StatusCode::NO_CONTENT.into_response(),
        _ => {
            drop(fleet);
            error(
                &s,
                &rid,
                ApiError::not_found("The connection was not found."),
            )
        }
    }
}

/// `DELETE /v3/users/{id}`: purges a user (all their connections).
async fn delete_user(
    State(s): State<Shared>,
    Extension(rid): Extension<RequestId>,
    Path(id): Path<String>,
) -> Response {
    let mut fleet = s.fleet_mut();
    let Some(u) = fleet.user_by_id(&id) else {
        drop(fleet);
        return error(&s, &rid, ApiError::not_found("The user was not found."));
    };
    let vehicles = fleet.users[u as usize].vehicles.clone();
    for i in vehicles {
        fleet.disconnect(i);
    }
    StatusCode::NO_CONTENT.into_response()
}
