//! Timestamps as Smartcar sends them: epoch milliseconds, epoch seconds or ISO-8601, depending
//! on the source (contract §4). All three become one `DateTime<Utc>`.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

/// Epoch values at or above this are milliseconds. 1e11 seconds is the year 5138 and 1e11
/// milliseconds is March 1973, so no real reading sits on the wrong side.
const MILLIS_THRESHOLD: f64 = 1e11;

/// Parses a JSON timestamp in any of the contract's forms. `None` for null, absent or garbage.
pub fn parse_timestamp(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::Number(n) => from_epoch(n.as_f64()?),
        Value::String(s) => parse_timestamp_str(s),
        _ => None,
    }
}

/// Parses a timestamp given as text: a number (epoch s or ms) or ISO-8601 / RFC 3339.
pub fn parse_timestamp_str(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return from_epoch(n);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // ISO-8601 without an offset: Smartcar's timestamps are UTC.
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(Utc.from_utc_datetime(&t));
        }
    }
    None
}

fn from_epoch(n: f64) -> Option<DateTime<Utc>> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let millis = if n >= MILLIS_THRESHOLD { n } else { n * 1000.0 };
    // Round to whole microseconds so a value survives a round trip through the database.
    let micros = (millis * 1000.0).round() as i64;
    DateTime::from_timestamp_micros(micros)
}

/// Parses `Retry-After`: whole seconds, or an HTTP date (some servers send one).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(now + chrono::Duration::seconds(secs.min(86_400 * 31) as i64));
    }
    DateTime::parse_from_rfc2822(value)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seconds_millis_and_iso_agree() {
        let want = Utc.with_ymd_and_hms(2025, 7, 9, 23, 36, 58).single();
        assert_eq!(parse_timestamp(&json!(1752104218)), want);
        assert_eq!(parse_timestamp(&json!(1752104218000_i64)), want);
        assert_eq!(parse_timestamp(&json!("1752104218000")), want);
        assert_eq!(parse_timestamp(&json!("2025-07-09T23:36:58Z")), want);
        assert_eq!(
            parse_timestamp(&json!("2025-07-09T23:36:58.000+00:00")),
            want
        );
        assert_eq!(parse_timestamp(&json!("2025-07-09T23:36:58")), want);
        assert_eq!(parse_timestamp(&json!(null)), None);
        assert_eq!(parse_timestamp(&json!("yesterday")), None);
    }

    #[test]
    fn millisecond_precision_is_kept() {
        let t = parse_timestamp(&json!(1752104218549_i64)).map(|t| t.timestamp_millis());
        assert_eq!(t, Some(1752104218549));
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap();
        assert_eq!(
            parse_retry_after("7", now),
            Some(now + chrono::Duration::seconds(7))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:09 GMT", now),
            Some(now + chrono::Duration::seconds(9))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
