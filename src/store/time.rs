//! The one SQLite timestamp format.
//!
//! SQLite has no timestamp type, so times are stored as TEXT in a single fixed-width UTC format
//! (`YYYY-MM-DDTHH:MM:SS.ffffffZ`). Fixed width and a fixed zone make string order equal time
//! order, so `<`, `MIN` and `ORDER BY` on the column compare times. Every SQLite timestamp goes
//! through these two functions; nothing else formats or parses them.

use chrono::{DateTime, NaiveDateTime, Utc};

use super::StoreError;

const FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// Formats `t` for a SQLite TEXT column, truncated to microseconds (as PostgreSQL stores it).
pub(crate) fn to_text(t: DateTime<Utc>) -> String {
    t.format(FORMAT).to_string()
}

/// Parses a SQLite TEXT timestamp written by [`to_text`].
pub(crate) fn from_text(s: &str) -> Result<DateTime<Utc>, StoreError> {
    NaiveDateTime::parse_from_str(s, FORMAT)
        .map(|n| n.and_utc())
        .map_err(|e| StoreError::Corrupt(format!("bad timestamp {s:?}: {e}")))
}

/// Truncates to whole microseconds: the precision both backends keep.
pub fn truncate_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let micros = t.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn round_trips_at_microsecond_precision_and_sorts_as_text() {
        let a = Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 59).unwrap()
            + chrono::Duration::nanoseconds(123_456_789);
        let text = to_text(a);
        assert_eq!(text, "2024-02-29T23:59:59.123456Z");
        assert_eq!(from_text(&text).unwrap(), truncate_micros(a));
        let b = a + chrono::Duration::microseconds(1);
        assert!(to_text(a) < to_text(b));
        assert_eq!(
            to_text(Utc.timestamp_opt(0, 0).unwrap()),
            "1970-01-01T00:00:00.000000Z"
        );
    }
}
