//! Timestamps as Smartcar sends them: epoch milliseconds, epoch seconds or ISO-8601, depending
//! on the source (contract §4). All three become one `DateTime<Utc>`.

use std::sync::atomic::{AtomicBool, Ordering};

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

/// The earliest reading time accepted: nothing Smartcar serves predates it, and a year-0 or
/// negative time is a broken clock or a parse of garbage.
pub fn earliest_plausible() -> DateTime<Utc> {
    DateTime::from_timestamp(946_684_800, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// How far ahead of our clock a reading time may be (clock skew between car, Smartcar and us).
pub const MAX_FUTURE_SKEW: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// Whether `t` can be a real reading time: not before 2000-01-01 and not more than
/// [`MAX_FUTURE_SKEW`] ahead of `now`. A year-9999 reading would otherwise stay "latest" forever,
/// and on SQLite a year beyond 9999 breaks the fixed-width text that makes string order time order.
pub fn plausible_reading_time(t: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    t >= earliest_plausible() && t <= now + MAX_FUTURE_SKEW
}

/// The hard ceiling on any `Retry-After` cap.
const MAX_CAP: std::time::Duration = std::time::Duration::from_secs(366 * 86_400);

/// `Retry-After` numbers at or above this are an absolute epoch time (seconds from 2001-09-09,
/// milliseconds from [`MILLIS_THRESHOLD`]); below it they are a delay in seconds.
const RETRY_AFTER_EPOCH_SECONDS: f64 = 1e9;

/// The oddities of a `Retry-After` header worth one log line each per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum RetryAfterOddity {
    /// Neither a number nor a date: the caller's default wait applies.
    Unreadable = 0,
    /// An epoch time (seconds or milliseconds) rather than a delay.
    Epoch = 1,
    /// A delay or date beyond the configured cap (`queue.max_retry_after`).
    OverCap = 2,
    /// Fractional seconds, or a date in a format other than the IMF-fixdate.
    Unusual = 3,
}

static ODDITY_LOGGED: [AtomicBool; 4] = [const { AtomicBool::new(false) }; 4];

/// True the first time `kind` is noted in this process, false after: an odd header repeated on
/// every call is logged once, not once per call.
pub fn note_oddity(kind: RetryAfterOddity) -> bool {
    !ODDITY_LOGGED[kind as usize].swap(true, Ordering::Relaxed)
}

fn odd(kind: RetryAfterOddity, value: &str) {
    if note_oddity(kind) {
        tracing::warn!(
            retry_after = value,
            oddity = ?kind,
            "unusual Retry-After header (read as well as possible; logged once per process)"
        );
    }
}

/// Parses `Retry-After` in every form seen: whole seconds (the standard), fractional seconds,
/// an epoch time in seconds or milliseconds (read as an absolute time), an HTTP date (IMF-fixdate,
/// RFC 850 or asctime) or an ISO-8601 time. The wait is capped at `cap` from `now`, and a time in
/// the past means "now". `None` when the header cannot be read at all; the caller then applies
/// its default. Odd forms are logged once per process.
pub fn parse_retry_after(
    value: &str,
    now: DateTime<Utc>,
    cap: std::time::Duration,
) -> Option<DateTime<Utc>> {
    let value = value.trim();
    // No wait beyond a year, whatever the configuration says (and no overflow near it).
    let cap = chrono::Duration::from_std(cap.min(MAX_CAP)).unwrap_or(chrono::Duration::days(31));
    let at = if let Ok(n) = value.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            odd(RetryAfterOddity::Unreadable, value);
            return None;
        }
        if n >= RETRY_AFTER_EPOCH_SECONDS {
            odd(RetryAfterOddity::Epoch, value);
            from_epoch(n)?
        } else {
            if n.fract() != 0.0 || !value.bytes().all(|b| b.is_ascii_digit()) {
                odd(RetryAfterOddity::Unusual, value);
            }
            // Whole milliseconds, rounded up: never earlier than asked.
            let ms = (n * 1000.0).ceil();
            now + chrono::Duration::milliseconds(ms.min(cap.num_milliseconds() as f64 + 1.0) as i64)
        }
    } else if let Ok(t) = DateTime::parse_from_rfc2822(value) {
        t.with_timezone(&Utc)
    } else if let Some(t) = other_http_date(value) {
        odd(RetryAfterOddity::Unusual, value);
        t
    } else if let Some(t) = parse_timestamp_str(value) {
        odd(RetryAfterOddity::Unusual, value);
        t
    } else {
        odd(RetryAfterOddity::Unreadable, value);
        return None;
    };
    if at > now + cap {
        odd(RetryAfterOddity::OverCap, value);
        return Some(now + cap);
    }
    Some(at.max(now))
}

/// The two obsolete HTTP date formats RFC 9110 still asks recipients to accept.
fn other_http_date(value: &str) -> Option<DateTime<Utc>> {
    // RFC 850: `Sunday, 06-Nov-94 08:49:37 GMT`
    if let Some(rest) = value.strip_suffix(" GMT")
        && let Some((_, date)) = rest.split_once(", ")
        && let Ok(t) = NaiveDateTime::parse_from_str(date, "%d-%b-%y %H:%M:%S")
    {
        return Some(Utc.from_utc_datetime(&t));
    }
    // asctime: `Sun Nov  6 08:49:37 1994`
    let squeezed = value.split_whitespace().collect::<Vec<_>>().join(" ");
    NaiveDateTime::parse_from_str(&squeezed, "%a %b %e %H:%M:%S %Y")
        .or_else(|_| NaiveDateTime::parse_from_str(&squeezed, "%a %b %d %H:%M:%S %Y"))
        .ok()
        .map(|t| Utc.from_utc_datetime(&t))
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

    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap();
        assert_eq!(
            parse_retry_after("7", now, HOUR),
            Some(now + chrono::Duration::seconds(7))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:09 GMT", now, HOUR),
            Some(now + chrono::Duration::seconds(9))
        );
        assert_eq!(parse_retry_after("soon", now, HOUR), None);
        assert_eq!(parse_retry_after("-5", now, HOUR), None);
    }

    #[test]
    fn retry_after_in_every_form_is_read_and_capped() {
        let now = Utc.with_ymd_and_hms(2024, 11, 18, 10, 30, 0).unwrap();
        let secs = |s: i64| Some(now + chrono::Duration::seconds(s));
        // Epoch milliseconds and epoch seconds are absolute times.
        let at = Utc.with_ymd_and_hms(2024, 11, 18, 10, 35, 0).unwrap();
        assert_eq!(parse_retry_after("1731926100000", now, HOUR), Some(at));
        assert_eq!(parse_retry_after("1731926100", now, HOUR), Some(at));
        // A large delay is seconds, capped.
        assert_eq!(parse_retry_after("12345", now, HOUR), secs(3600));
        assert_eq!(
            parse_retry_after("12345", now, std::time::Duration::from_secs(86_400)),
            secs(12345)
        );
        // Fractional seconds round up.
        assert_eq!(
            parse_retry_after("1.5", now, HOUR),
            Some(now + chrono::Duration::milliseconds(1500))
        );
        // HTTP dates in all three RFC 9110 formats, and ISO-8601.
        for d in [
            "Mon, 18 Nov 2024 10:35:00 GMT",
            "Monday, 18-Nov-24 10:35:00 GMT",
            "Mon Nov 18 10:35:00 2024",
            "2024-11-18T10:35:00Z",
        ] {
            assert_eq!(parse_retry_after(d, now, HOUR), Some(at), "{d}");
        }
        // A date in the past is now; a far one is capped.
        assert_eq!(
            parse_retry_after("Mon, 18 Nov 2024 09:00:00 GMT", now, HOUR),
            Some(now)
        );
        assert_eq!(
            parse_retry_after("Mon, 18 Nov 2030 09:00:00 GMT", now, HOUR),
            secs(3600)
        );
        // An epoch far ahead (8e15 ms) is capped, never a wait of centuries.
        assert_eq!(parse_retry_after("8000000000000000", now, HOUR), secs(3600));
    }

    #[test]
    fn an_odd_header_is_noted_once() {
        // Another test may have noted it first; either way it is noted at most once more.
        let _ = note_oddity(RetryAfterOddity::Unusual);
        assert!(!note_oddity(RetryAfterOddity::Unusual));
        assert!(!note_oddity(RetryAfterOddity::Unusual));
    }

    #[test]
    fn reading_times_outside_2000_to_tomorrow_are_implausible() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert!(plausible_reading_time(now, now));
        assert!(plausible_reading_time(
            now + chrono::Duration::hours(23),
            now
        ));
        assert!(!plausible_reading_time(
            now + chrono::Duration::hours(25),
            now
        ));
        assert!(!plausible_reading_time(
            Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap(),
            now
        ));
        let far = parse_timestamp(&json!(8e15)).unwrap();
        assert!(!plausible_reading_time(far, now));
        let y9999 = parse_timestamp(&json!("9999-12-31T23:59:59Z")).unwrap();
        assert!(!plausible_reading_time(y9999, now));
    }
}
