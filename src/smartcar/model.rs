//! The v3 wire shapes and every variant the public sources disagree on (contract §3, §4, §7).
//!
//! Rule: accept every documented variant. Parsing walks `serde_json::Value` rather than fixed
//! structs, because the same datum lives under different names (`pageNumber`/`page`,
//! `prev`/`previous`, `retrievedAt`/`fetchedAt`) or places (user id in `relationships` or
//! `attributes`), and numbers arrive as strings.
//!
//! Readings must be exact to the bit. serde_json's `float_roundtrip` parser yields the very f64
//! a number denotes (the default one can be an ulp off), and a signal's `body` is kept as the raw
//! text Smartcar sent ([`RawValue`]) rather than re-serialised, so `value_num` and `body` agree
//! with the wire. [`SignalsPage::parse_bytes`] and [`webhook_signals`] read from the raw bytes
//! for that reason.
//!
//! One bad signal never costs the others: a signal without a usable code is skipped with a
//! logged error, and the rest of the answer is read (see `docs/smartcar-v3.md`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use serde_json::value::RawValue;

use super::time::parse_timestamp;

/// Signal codes longer than this are refused (the signal is skipped with a logged error): real
/// codes are under 40 characters, and the code is part of every sample's primary key.
pub const MAX_CODE_LEN: usize = 64;

/// Why a success answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(pub String);

fn shape(msg: impl Into<String>) -> ShapeError {
    ShapeError(msg.into())
}

/// A number that may arrive as a JSON number or a string.
fn lenient_i64(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn string_at(v: &Value, pointer: &str) -> Option<String> {
    match v.pointer(pointer)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One connection: a vehicle a user has connected to the application.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub connection_id: String,
    pub vehicle_id: String,
    /// Absent only when the server put it nowhere; callers filtering by user know it anyway.
    pub user_id: Option<String>,
    pub make: Option<String>,
    pub model: Option<String>,
    pub year: Option<i64>,
    pub mode: Option<String>,
    pub powertrain_type: Option<String>,
    pub permissions: Vec<String>,
}

impl Connection {
    fn from_value(v: &Value) -> Result<Self, ShapeError> {
        let vehicle_id = string_at(v, "/relationships/vehicle/data/id")
            .or_else(|| string_at(v, "/attributes/vehicle/id"))
            .ok_or_else(|| shape("connection without a vehicle id"))?;
        let connection_id = string_at(v, "/id").unwrap_or_else(|| vehicle_id.clone());
        let user_id = string_at(v, "/relationships/user/data/id")
            .or_else(|| string_at(v, "/attributes/user/id"));
        let veh = v.pointer("/attributes/vehicle");
        let attr = |k: &str| {
            veh.and_then(|x| x.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let permissions = v
            .pointer("/attributes/permissions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Connection {
            connection_id,
            vehicle_id,
            user_id,
            make: attr("make"),
            model: attr("model"),
            year: lenient_i64(veh.and_then(|x| x.get("year"))),
            mode: attr("mode"),
            powertrain_type: attr("powertrainType"),
            permissions,
        })
    }
}

/// One page of `GET /connections`, with the paging facts the server chose to give.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionsPage {
    pub connections: Vec<Connection>,
    pub page_number: Option<i64>,
    pub page_size: Option<i64>,
    pub total_count: Option<i64>,
    /// `Some(Some(url))`: a next link; `Some(None)`: a links object without one (last page);
    /// `None`: no links object at all (rely on the totals).
    pub next: Option<Option<String>>,
}

impl ConnectionsPage {
    pub fn parse(v: &Value) -> Result<Self, ShapeError> {
        let data = match v.get("data") {
            Some(Value::Array(a)) => a.as_slice(),
            Some(Value::Null) | None => &[],
            Some(_) => return Err(shape("`data` is not a list")),
        };
        let connections = data
            .iter()
            .map(Connection::from_value)
            .collect::<Result<Vec<_>, _>>()?;
        let meta = v.get("meta");
        let m = |k: &str| lenient_i64(meta.and_then(|m| m.get(k)));
        let next = v.get("links").filter(|l| l.is_object()).map(|l| {
            l.get("next")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        });
        Ok(ConnectionsPage {
            connections,
            page_number: m("pageNumber").or_else(|| m("page")),
            page_size: m("pageSize"),
            total_count: m("totalCount"),
            next,
        })
    }

    /// The contract's last-page rule: `links.next` null or absent, or
    /// `pageNumber * pageSize >= totalCount`, or empty `data`, whichever comes first.
    pub fn is_last(&self, requested_page: i64, requested_size: i64) -> bool {
        if self.connections.is_empty() {
            return true;
        }
        if let Some(None) = self.next {
            return true;
        }
        if let Some(total) = self.total_count {
            let page = self.page_number.unwrap_or(requested_page);
            let size = self.page_size.unwrap_or(requested_size).max(1);
            if page.saturating_mul(size) >= total {
                return true;
            }
        }
        false
    }
}

/// A signal's status (contract §4): per-signal failures do not fail the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalStatus {
    Success,
    Error {
        error_type: Option<String>,
        code: Option<String>,
    },
    Unavailable,
    /// A status this version does not know; kept verbatim.
    Other(String),
}

impl SignalStatus {
    pub fn as_str(&self) -> &str {
        match self {
            SignalStatus::Success => "SUCCESS",
            SignalStatus::Error { .. } => "ERROR",
            SignalStatus::Unavailable => "UNAVAILABLE",
            SignalStatus::Other(s) => s,
        }
    }
}

/// One signal reading, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub code: String,
    pub name: Option<String>,
    pub group: Option<String>,
    pub status: SignalStatus,
    /// The body, kept whole: location, doors and others are not `{value, unit}`.
    pub body: Option<Value>,
    /// The body exactly as Smartcar sent it, when the signal was read from raw bytes; what is
    /// stored. `None` for a signal read from a `Value` (the body is then serialised from it).
    pub body_text: Option<String>,
    /// `body.value` when it is one number, or a boolean as 0/1; the legacy state-of-charge body
    /// `{"percentage": 75}` gives 75.
    pub value_num: Option<f64>,
    pub unit: Option<String>,
    /// When the car measured it.
    pub oem_updated_at: Option<DateTime<Utc>>,
    /// `retrievedAt`, or a webhook's `fetchedAt`.
    pub retrieved_at: Option<DateTime<Utc>>,
    pub ingested_at: Option<DateTime<Utc>>,
    /// The measurement time was sent (`oemUpdatedAt`, else `ingestedAt`) but cannot be read as
    /// a time: its text, for the log. Such a signal is recorded as a status error, not a sample.
    pub unreadable_time: Option<String>,
}

impl Signal {
    /// Reads a signal in the API's shape (fields under `attributes`) or the webhook's flat shape.
    pub fn from_value(v: &Value) -> Result<Self, ShapeError> {
        let attrs = v.get("attributes").filter(|a| a.is_object()).unwrap_or(v);
        let text = |k: &str| attrs.get(k).and_then(Value::as_str).map(str::to_owned);
        let group = text("group");
        let sent = attrs
            .get("code")
            .or_else(|| v.get("id"))
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| shape("signal without a code"))?;
        let code = normalize_code(sent, group.as_deref())?;
        let status = match attrs.get("status") {
            // `{"value": "SUCCESS"}`, or a bare string in older shapes; no status means success.
            Some(Value::Object(s)) => status_of(
                s.get("value").and_then(Value::as_str).unwrap_or("SUCCESS"),
                s.get("error"),
            ),
            Some(Value::String(s)) => status_of(s, None),
            _ => SignalStatus::Success,
        };
        let body = attrs.get("body").filter(|b| !b.is_null()).cloned();
        let value_num = body.as_ref().and_then(|b| {
            let number = |x: &Value| match x {
                Value::Number(n) => n.as_f64(),
                Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
                _ => None,
            };
            match b.get("value") {
                Some(v) => number(v),
                // The legacy state-of-charge body: `{"percentage": 75}`, no `value`.
                None => b.get("percentage").and_then(number),
            }
        });
        let unit = body
            .as_ref()
            .and_then(|b| b.get("unit"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        // `meta` beside `attributes` (REST) or inside the flat signal (webhook); it may be empty.
        let meta = v
            .get("meta")
            .or_else(|| attrs.get("meta"))
            .filter(|m| m.is_object());
        let raw = |k: &str| meta.and_then(|m| m.get(k)).filter(|x| !x.is_null());
        let ts = |k: &str| raw(k).and_then(parse_timestamp);
        // The time the reading is keyed by, if it was sent but cannot be read.
        let unreadable_time = ["oemUpdatedAt", "ingestedAt"]
            .iter()
            .find_map(|k| raw(k))
            .filter(|x| parse_timestamp(x).is_none())
            .map(|x| x.to_string().chars().take(80).collect());
        Ok(Signal {
            code,
            name: text("name"),
            group,
            status,
            body,
            body_text: None,
            value_num,
            unit,
            oem_updated_at: ts("oemUpdatedAt"),
            retrieved_at: ts("retrievedAt").or_else(|| ts("fetchedAt")),
            ingested_at: ts("ingestedAt"),
            unreadable_time,
        })
    }

    /// [`Signal::from_value`] on the raw text of one signal, keeping its body's text as sent.
    pub fn from_raw(raw: &RawValue) -> Result<Self, ShapeError> {
        let v: Value = serde_json::from_str(raw.get())
            .map_err(|e| shape(format!("signal is not JSON: {e}")))?;
        let mut signal = Signal::from_value(&v)?;
        let holder = match raw_field(raw, "attributes") {
            Some(a) if v.get("attributes").is_some_and(Value::is_object) => Some(a),
            _ => Some(raw),
        };
        signal.body_text = holder
            .and_then(|h| raw_field(h, "body"))
            .map(|b| b.get().to_owned())
            .filter(|b| b != "null");
        Ok(signal)
    }

    /// The body to store: the text as sent, else the parsed body serialised, else `{}`.
    pub fn body_json(&self) -> String {
        match (&self.body_text, &self.body) {
            (Some(t), _) => t.clone(),
            (None, Some(b)) => b.to_string(),
            (None, None) => "{}".to_owned(),
        }
    }

    /// When the reading was taken, the sample's key: the car's time, else Smartcar's ingest
    /// time. Never `retrievedAt`, which changes on every poll and would duplicate a reading.
    pub fn recorded_at(&self) -> Option<DateTime<Utc>> {
        self.oem_updated_at.or(self.ingested_at)
    }
}

fn status_of(value: &str, error: Option<&Value>) -> SignalStatus {
    match value.to_ascii_uppercase().as_str() {
        "SUCCESS" => SignalStatus::Success,
        "UNAVAILABLE" => SignalStatus::Unavailable,
        "ERROR" => SignalStatus::Error {
            error_type: error
                .and_then(|e| e.get("type"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            code: error
                .and_then(|e| e.get("code"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
        _ => SignalStatus::Other(value.to_owned()),
    }
}

/// Normalises a signal code to the one form stored: kebab-case, lower case
/// (`odometer-traveleddistance`). Smartcar's codes are `{group}-{name}`; camelCase codes
/// (`chargeVoltage`) are split after the signal's `group` when it is a prefix
/// (`tractionBatteryStateOfCharge` + `TractionBattery` gives `tractionbattery-stateofcharge`),
/// else at the first capital (`chargeVoltage` gives `charge-voltage`); `_` becomes `-`.
/// Codes over [`MAX_CODE_LEN`] characters, or with characters other than ASCII letters,
/// digits, `-`, `_` and `.`, are refused.
pub fn normalize_code(code: &str, group: Option<&str>) -> Result<String, ShapeError> {
    let code = code.trim();
    if code.chars().count() > MAX_CODE_LEN {
        return Err(shape(format!(
            "signal code of {} characters (at most {MAX_CODE_LEN}) refused: {}…",
            code.chars().count(),
            code.chars().take(24).collect::<String>()
        )));
    }
    if !code
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(shape(format!(
            "signal code {code:?} has unexpected characters"
        )));
    }
    let lower = code.to_ascii_lowercase().replace('_', "-");
    if code.contains(['-', '_']) || !code.chars().skip(1).any(|c| c.is_ascii_uppercase()) {
        return Ok(lower);
    }
    // camelCase or PascalCase.
    if let Some(g) = group.map(|g| g.to_ascii_lowercase().replace(['-', '_', ' '], ""))
        && !g.is_empty()
        && lower.len() > g.len()
        && lower.starts_with(&g)
    {
        return Ok(format!("{g}-{}", &lower[g.len()..]));
    }
    match code
        .char_indices()
        .skip(1)
        .find(|(_, c)| c.is_ascii_uppercase())
    {
        Some((i, _)) => Ok(format!("{}-{}", &lower[..i], &lower[i..])),
        None => Ok(lower),
    }
}

/// One field of a raw JSON object, still raw; `None` if absent or `raw` is not an object.
fn raw_field<'a>(raw: &'a RawValue, key: &str) -> Option<&'a RawValue> {
    let fields: HashMap<String, &'a RawValue> = serde_json::from_str(raw.get()).ok()?;
    fields.get(key).copied()
}

/// Reads each raw signal; a signal that cannot be read is skipped with a logged error, so one
/// bad entry never costs the others (nor fails the call, which would retry it forever).
fn read_signals(raw: &[&RawValue]) -> Vec<Signal> {
    raw.iter()
        .filter_map(|r| match Signal::from_raw(r) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "signal skipped: it cannot be read");
                None
            }
        })
        .collect()
}

/// A raw JSON list; `None` or `null` is empty.
fn raw_list<'a>(raw: Option<&'a RawValue>, what: &str) -> Result<Vec<&'a RawValue>, ShapeError> {
    match raw {
        None => Ok(Vec::new()),
        Some(r) if r.get().trim() == "null" => Ok(Vec::new()),
        Some(r) => {
            serde_json::from_str(r.get()).map_err(|_| shape(format!("`{what}` is not a list")))
        }
    }
}

/// The signals of a webhook's `data.signals`, each body kept as sent. A delivery without a
/// readable list has no signals; a signal that cannot be read is skipped with a logged error.
pub fn webhook_signals(body: &[u8]) -> Vec<Signal> {
    let Ok(root) = serde_json::from_slice::<&RawValue>(body) else {
        return Vec::new();
    };
    let list = raw_field(root, "data").and_then(|d| raw_field(d, "signals"));
    match raw_list(list, "data.signals") {
        Ok(raw) => read_signals(&raw),
        Err(e) => {
            tracing::error!(error = %e, "webhook signals skipped");
            Vec::new()
        }
    }
}

/// One page of `GET /vehicles/{id}/signals`.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalsPage {
    pub signals: Vec<Signal>,
    pub next: Option<String>,
}

impl SignalsPage {
    /// Reads a page from a parsed value (bodies are serialised from it; exact, but not the
    /// text as sent). The client reads pages with [`SignalsPage::parse_bytes`].
    pub fn parse(v: &Value) -> Result<Self, ShapeError> {
        let bytes = serde_json::to_vec(v).map_err(|e| shape(e.to_string()))?;
        Self::parse_bytes(&bytes)
    }

    /// Reads a page from the answer's raw bytes, keeping each signal's body as sent.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, ShapeError> {
        let root = serde_json::from_slice::<&RawValue>(bytes)
            .map_err(|e| shape(format!("not JSON: {e}")))?;
        let fields: HashMap<String, &RawValue> = serde_json::from_str(root.get())
            .map_err(|_| shape("the answer is not a JSON object"))?;
        let signals = read_signals(&raw_list(fields.get("data").copied(), "data")?);
        let next = fields
            .get("links")
            .and_then(|l| serde_json::from_str::<Value>(l.get()).ok())
            .and_then(|l| l.get("next").and_then(Value::as_str).map(str::to_owned))
            .filter(|s| !s.is_empty());
        Ok(SignalsPage { signals, next })
    }
}

/// `GET /vehicles/{id}`, wrapped (`{"data": {…}}`) or not.
#[derive(Debug, Clone, PartialEq)]
pub struct VehicleInfo {
    pub vehicle_id: String,
    pub make: Option<String>,
    pub model: Option<String>,
    pub year: Option<i64>,
    pub mode: Option<String>,
    pub powertrain_type: Option<String>,
}

impl VehicleInfo {
    pub fn parse(v: &Value) -> Result<Self, ShapeError> {
        let v = unwrap_resource(v);
        let attrs = v.get("attributes").filter(|a| a.is_object()).unwrap_or(v);
        let text = |k: &str| attrs.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(VehicleInfo {
            vehicle_id: string_at(v, "/id").ok_or_else(|| shape("vehicle without an id"))?,
            make: text("make"),
            model: text("model"),
            year: lenient_i64(attrs.get("year")),
            mode: text("mode"),
            powertrain_type: text("powertrainType"),
        })
    }
}

/// Both wrapped and unwrapped single resources occur: `{"data": {…}}` or the resource itself.
pub fn unwrap_resource(v: &Value) -> &Value {
    match v.get("data") {
        Some(inner @ Value::Object(_)) => inner,
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn connection(year: Value, user_in_attrs: bool, user_in_rel: bool) -> Value {
        let mut c = json!({"id": "c1", "type": "connection",
            "attributes": {"permissions": ["read_odometer", "read_battery"],
                           "vehicle": {"make": "Tesla", "model": "Model 3", "year": year,
                                       "mode": "live", "powertrainType": "BEV"}},
            "relationships": {"vehicle": {"data": {"id": "v1", "type": "vehicle"}}},
            "meta": {"createdAt": "2024-01-01T00:00:00Z", "updatedAt": "2024-01-02T00:00:00Z"}});
        if user_in_attrs {
            c["attributes"]["user"] = json!({"id": "u1"});
        }
        if user_in_rel {
            c["relationships"]["user"] = json!({"data": {"id": "u1", "type": "user"}});
        }
        c
    }

    #[test]
    fn connections_parse_in_every_documented_variant() {
        for (year, a, r) in [
            (json!(2021), false, true),
            (json!("2021"), true, false),
            (json!(2021), true, true),
        ] {
            let page = json!({"data": [connection(year, a, r)],
                "meta": {"pageNumber": 1, "pageSize": 100, "totalCount": 1},
                "links": {"self": "x", "first": "x", "prev": null, "next": null, "last": "x"}});
            let p = ConnectionsPage::parse(&page).unwrap();
            let c = &p.connections[0];
            assert_eq!(c.vehicle_id, "v1");
            assert_eq!(c.user_id.as_deref(), Some("u1"));
            assert_eq!(c.year, Some(2021));
            assert_eq!(c.powertrain_type.as_deref(), Some("BEV"));
            assert_eq!(c.permissions.len(), 2);
            assert!(p.is_last(1, 100));
        }
    }

    #[test]
    fn the_alternate_paging_names_are_read() {
        let page = json!({"data": [connection(json!(2020), false, true)],
            "meta": {"page": 2, "pageSize": 100, "totalCount": 250},
            "links": {"previous": "p1", "next": "p3"}});
        let p = ConnectionsPage::parse(&page).unwrap();
        assert_eq!(p.page_number, Some(2));
        assert_eq!(p.next, Some(Some("p3".into())));
        assert!(!p.is_last(2, 100));
    }

    #[test]
    fn each_last_page_signal_ends_paging() {
        let one = || json!([connection(json!(2020), false, true)]);
        // totals say so, although a next link is present
        let p = ConnectionsPage::parse(&json!({"data": one(),
            "meta": {"pageNumber": 3, "pageSize": 100, "totalCount": 250}, "links": {"next": "p4"}}))
        .unwrap();
        assert!(p.is_last(3, 100));
        // links object without next, no totals
        let p = ConnectionsPage::parse(&json!({"data": one(), "links": {"self": "s"}})).unwrap();
        assert!(p.is_last(1, 100));
        // empty data
        let p = ConnectionsPage::parse(&json!({"data": [], "links": {"next": "p2"}})).unwrap();
        assert!(p.is_last(1, 100));
        // no links object and no totals: not known to be last
        let p = ConnectionsPage::parse(&json!({"data": one()})).unwrap();
        assert!(!p.is_last(1, 100));
    }

    #[test]
    fn a_connection_without_a_vehicle_is_malformed() {
        let page = json!({"data": [{"id": "c1", "attributes": {}}]});
        assert!(ConnectionsPage::parse(&page).is_err());
    }

    fn contract_signals() -> Value {
        json!({"data": [
            {"id": "odometer-traveleddistance", "type": "signal",
             "attributes": {"code": "odometer-traveleddistance", "name": "TraveledDistance",
                            "group": "Odometer", "status": {"value": "SUCCESS"},
                            "body": {"unit": "kilometers", "value": 115071.5}},
             "meta": {"retrievedAt": 1752104218549_i64, "oemUpdatedAt": 1752104118549_i64}},
            {"id": "charge-ischarging", "type": "signal",
             "attributes": {"code": "charge-ischarging", "status": {"value": "SUCCESS"},
                            "body": {"value": true}},
             "meta": {"retrievedAt": "2025-07-09T23:36:58.549Z", "oemUpdatedAt": 1752104118}},
            {"id": "location-preciselocation", "type": "signal",
             "attributes": {"code": "location-preciselocation", "status": {"value": "SUCCESS"},
                            "body": {"latitude": 37.77, "longitude": -122.42, "heading": 90,
                                     "direction": "E", "locationType": "GPS"}},
             "meta": {"retrievedAt": 1752104218549_i64, "oemUpdatedAt": 1752104118549_i64}},
            {"id": "closure-doors", "type": "signal",
             "attributes": {"code": "closure-doors", "status": {"value": "SUCCESS"},
                            "body": {"values": [{"row": 0, "column": 0, "isOpen": false}],
                                     "rowCount": 2, "columnCount": 2}},
             "meta": {"retrievedAt": 1752104218549_i64, "oemUpdatedAt": 1752104118549_i64}},
            {"id": "tractionbattery-range", "type": "signal",
             "attributes": {"code": "tractionbattery-range",
                            "status": {"value": "ERROR", "error": {"type": "COMPATIBILITY",
                                                                   "code": "VEHICLE_NOT_CAPABLE"}}},
             "meta": {"retrievedAt": 1752104218549_i64}},
            {"id": "fuel-level", "type": "signal",
             "attributes": {"code": "fuel-level", "status": {"value": "UNAVAILABLE"}},
             "meta": {"retrievedAt": 1752104218549_i64}}],
          "meta": {"page": 1, "pageSize": 6, "totalCount": 6},
          "links": {"self": "/vehicles/v1/signals"},
          "included": {"vehicle": {"id": "v1", "type": "vehicle",
                                   "attributes": {"make": "TESLA", "model": "Model Y", "year": "2021"}}}})
    }

    #[test]
    fn the_contract_signals_example_parses_with_every_body_shape() {
        let p = SignalsPage::parse(&contract_signals()).unwrap();
        assert_eq!(p.signals.len(), 6);
        assert_eq!(p.next, None);
        let odo = &p.signals[0];
        assert_eq!(odo.value_num, Some(115071.5));
        assert_eq!(odo.unit.as_deref(), Some("kilometers"));
        assert_eq!(
            odo.oem_updated_at.map(|t| t.timestamp_millis()),
            Some(1752104118549)
        );
        let charging = &p.signals[1];
        assert_eq!(charging.value_num, Some(1.0));
        assert_eq!(
            charging.oem_updated_at.map(|t| t.timestamp()),
            Some(1752104118)
        );
        assert_eq!(
            charging.retrieved_at.map(|t| t.timestamp_millis()),
            Some(1752104218549)
        );
        assert_eq!(p.signals[2].value_num, None);
        assert_eq!(p.signals[2].body.as_ref().unwrap()["latitude"], 37.77);
        assert_eq!(p.signals[3].value_num, None);
        assert_eq!(
            p.signals[4].status,
            SignalStatus::Error {
                error_type: Some("COMPATIBILITY".into()),
                code: Some("VEHICLE_NOT_CAPABLE".into())
            }
        );
        assert_eq!(p.signals[4].body, None);
        assert_eq!(p.signals[5].status, SignalStatus::Unavailable);
    }

    #[test]
    fn an_empty_signals_list_is_a_valid_answer() {
        let p = SignalsPage::parse(&json!({"data": [], "links": {"self": "/x"}})).unwrap();
        assert!(p.signals.is_empty());
    }

    #[test]
    fn webhook_signals_are_flat() {
        let s = Signal::from_value(&json!({"code": "tractionbattery-stateofcharge",
            "name": "StateOfCharge", "group": "TractionBattery",
            "body": {"value": 80, "unit": "percent"}, "status": {"value": "SUCCESS"},
            "meta": {"oemUpdatedAt": 1761896351529_i64, "retrievedAt": 1761896351600_i64}}))
        .unwrap();
        assert_eq!(s.value_num, Some(80.0));
        assert_eq!(
            s.recorded_at().map(|t| t.timestamp_millis()),
            Some(1761896351529)
        );
    }

    #[test]
    fn single_resources_parse_wrapped_and_unwrapped() {
        let inner = json!({"id": "v1", "type": "vehicle",
            "attributes": {"make": "TESLA", "model": "Model Y", "year": "2021"}});
        for v in [inner.clone(), json!({"data": inner})] {
            let info = VehicleInfo::parse(&v).unwrap();
            assert_eq!(info.vehicle_id, "v1");
            assert_eq!(info.year, Some(2021));
        }
    }

    #[test]
    fn codes_are_normalised_to_lower_kebab_case() {
        let n = |c: &str, g: Option<&str>| normalize_code(c, g).unwrap();
        assert_eq!(n("chargeVoltage", None), "charge-voltage");
        assert_eq!(n("chargeVoltage", Some("Charge")), "charge-voltage");
        assert_eq!(
            n("tractionBatteryStateOfCharge", Some("TractionBattery")),
            "tractionbattery-stateofcharge"
        );
        assert_eq!(n("ChargeVoltage", None), "charge-voltage");
        assert_eq!(
            n("odometer-traveleddistance", None),
            "odometer-traveleddistance"
        );
        assert_eq!(
            n("Odometer-TraveledDistance", None),
            "odometer-traveleddistance"
        );
        assert_eq!(n("charge_voltage", None), "charge-voltage");
        assert_eq!(n("odometer", None), "odometer");
        assert!(normalize_code(&"a".repeat(MAX_CODE_LEN + 1), None).is_err());
        assert!(normalize_code(&"a".repeat(MAX_CODE_LEN), None).is_ok());
        assert!(normalize_code("odo meter\n", None).is_err());
    }

    #[test]
    fn a_signal_that_cannot_be_read_is_skipped_and_the_rest_kept() {
        let long = "x".repeat(65);
        let page = format!(
            r#"{{"data": [
                {{"attributes": {{"code": "{long}", "body": {{"value": 1}}}}}},
                {{"attributes": {{"body": {{"value": 2}}}}}},
                {{"attributes": {{"code": "chargeVoltage", "group": "Charge",
                                  "body": {{"value": 229.5, "unit": "volts"}}}},
                  "meta": {{"oemUpdatedAt": 1752104118549}}}}]}}"#
        );
        let p = SignalsPage::parse_bytes(page.as_bytes()).unwrap();
        assert_eq!(p.signals.len(), 1);
        assert_eq!(p.signals[0].code, "charge-voltage");
        assert_eq!(p.signals[0].value_num, Some(229.5));
    }

    #[test]
    fn bodies_are_kept_as_sent_and_values_are_exact() {
        let page = br#"{"data": [{"id": "odometer-traveleddistance", "type": "signal",
            "attributes": {"code": "odometer-traveleddistance", "status": {"value": "SUCCESS"},
                           "body": {"unit": "kilometers",   "value": 115071.50046584333}},
            "meta": {"retrievedAt": 1752104218549, "oemUpdatedAt": 1752104118549}}]}"#;
        let p = SignalsPage::parse_bytes(page).unwrap();
        let odo = &p.signals[0];
        assert_eq!(
            odo.value_num.map(f64::to_bits),
            Some(115071.50046584333_f64.to_bits())
        );
        assert_eq!(
            odo.body_json(),
            r#"{"unit": "kilometers",   "value": 115071.50046584333}"#
        );
        // Flat (webhook) signals too.
        let hook = br#"{"eventType": "VEHICLE_STATE", "data": {"signals": [
            {"code": "odometer-traveleddistance", "body": {"value": 0.30000000000000004},
             "meta": {"oemUpdatedAt": 1752104118549, "fetchedAt": 1752104218549}}]}}"#;
        let s = &webhook_signals(hook)[0];
        assert_eq!(s.body_json(), r#"{"value": 0.30000000000000004}"#);
        assert_eq!(s.value_num, Some(0.30000000000000004));
        assert_eq!(
            s.retrieved_at.map(|t| t.timestamp_millis()),
            Some(1752104218549)
        );
        assert!(webhook_signals(b"not json").is_empty());
        assert!(webhook_signals(br#"{"data": {"signals": 3}}"#).is_empty());
    }

    #[test]
    fn legacy_bodies_empty_meta_and_unreadable_times_are_read() {
        let s = Signal::from_value(&json!({"code": "tractionbattery-stateofcharge",
            "body": {"percentage": 75}, "meta": {"oemUpdatedAt": 1752104118549_i64}}))
        .unwrap();
        assert_eq!(s.value_num, Some(75.0));
        assert_eq!(s.unit, None);
        let s = Signal::from_value(&json!({"code": "charge-voltage",
            "body": {"value": 230, "unit": "volts"}, "meta": {}}))
        .unwrap();
        assert_eq!((s.recorded_at(), s.retrieved_at), (None, None));
        assert_eq!(s.unreadable_time, None);
        let s = Signal::from_value(&json!({"code": "charge-voltage",
            "body": {"value": 230}, "meta": {"oemUpdatedAt": "+12345-01-01T00:00:00Z"}}))
        .unwrap();
        assert!(s.unreadable_time.is_some());
    }

    #[test]
    fn json_numbers_parse_to_the_exact_double_they_denote() {
        // The reading that was stored one ulp off before `float_roundtrip`.
        let v: Value = serde_json::from_str("115071.50046584333").unwrap();
        assert_eq!(
            v.as_f64().map(f64::to_bits),
            Some(115071.50046584333_f64.to_bits())
        );
        // And a sweep of doubles written in their shortest form: each reads back bit for bit.
        let mut rng = fastrand::Rng::with_seed(12);
        for _ in 0..20_000 {
            let x = f64::from_bits(rng.u64(0x3f00_0000_0000_0000..0x4200_0000_0000_0000));
            let text = x.to_string();
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v.as_f64().map(f64::to_bits), Some(x.to_bits()), "{text}");
        }
    }
}
