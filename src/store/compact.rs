//! How a sample is stored compactly (migration 0008), and why that loses nothing.
//!
//! Most bodies say nothing beyond the sample's value and unit: `{"unit":"percent","value":75}`,
//! `{"value":true}`. Storing them again costs more than the rest of the row, so such a body is
//! not stored; the row's `form` says how the `signal_samples` view writes it back. Everything
//! else (a location, the doors, a string value, an odd spacing, an exponent) is stored as sent,
//! once per distinct text, in `sample_bodies`.
//!
//! The rebuild must be the very text that was sent, so a body is left out only when it is, byte
//! for byte, `{"unit":"U","value":N}` or `{"value":N}` where
//! - `U` is plain printable ASCII without `"` or `\` (so every JSON quoting writes it the same);
//! - `N` is `true`/`false` (value 1/0), or a plain decimal (`-?digits[.digits]`, no exponent, no
//!   leading `+`, not negative zero) of at most 15 significant digits and at most 15 decimals,
//!   which is exactly what Rust's correctly rounded `{:.d}` writes for the value with `d` decimals.
//!
//! Fifteen digits is `DBL_DIG`: every decimal of at most 15 significant digits survives decimal →
//! double → decimal at that precision, so any formatter correct to 15 digits writes it back
//! identically - SQLite's `printf('%.df')` and PostgreSQL's `float8 → numeric` (which formats
//! with exactly `DBL_DIG` digits, then `round(…, d)` restores the written scale) both are. The
//! tests in `tests/it/store.rs` check the rebuild against the sent text on both backends.

use super::{NewSample, SampleSource};

/// `form >> 1` when the body is stored in `sample_bodies`.
pub const SHAPE_STORED: i16 = 0;
/// `form >> 1` for `{…"value":true|false}`.
pub const SHAPE_BOOL: i16 = 1;
/// `form >> 1` = this + d for a number written with d decimals.
pub const SHAPE_NUMBER: i16 = 2;

/// The most significant digits (and decimals) a rebuilt number may have (`DBL_DIG`).
const MAX_DIGITS: usize = 15;

/// The stored `form`: shape * 2 + source (0 poll, 1 webhook).
pub fn form(s: &NewSample) -> i16 {
    let source = match s.source {
        SampleSource::Poll => 0,
        SampleSource::Webhook => 1,
    };
    shape(s) * 2 + source
}

/// True when the body must be stored (it cannot be rebuilt from value and unit).
pub fn body_stored(form: i16) -> bool {
    form >> 1 == SHAPE_STORED
}

fn shape(s: &NewSample) -> i16 {
    let Some(v) = s.value_num else {
        return SHAPE_STORED;
    };
    let body = s.body.as_str();
    let rest = match &s.unit {
        Some(u) => {
            if !plain_unit(u) {
                return SHAPE_STORED;
            }
            body.strip_prefix("{\"unit\":\"")
                .and_then(|r| r.strip_prefix(u.as_str()))
                .and_then(|r| r.strip_prefix("\",\"value\":"))
        }
        None => body.strip_prefix("{\"value\":"),
    };
    let Some(number) = rest.and_then(|r| r.strip_suffix('}')) else {
        return SHAPE_STORED;
    };
    match number {
        "true" if v == 1.0 => SHAPE_BOOL,
        "false" if v == 0.0 => SHAPE_BOOL,
        _ => decimals(number, v).map_or(SHAPE_STORED, |d| SHAPE_NUMBER + d),
    }
}

fn plain_unit(u: &str) -> bool {
    u.bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

/// The number of decimals `text` is written with, if it is the plain rendering of `v` that the
/// views can write back (see the module docs).
fn decimals(text: &str, v: f64) -> Option<i16> {
    if !v.is_finite() || (v == 0.0 && v.is_sign_negative()) {
        return None;
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) if !f.is_empty() => (i, f),
        Some(_) => return None,
        None => (unsigned, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !(frac.is_empty() || digits(frac)) || (int.len() > 1 && int.starts_with('0'))
    {
        return None;
    }
    let significant = format!("{int}{frac}").trim_start_matches('0').len();
    if significant > MAX_DIGITS || frac.len() > MAX_DIGITS {
        return None;
    }
    let d = frac.len();
    (format!("{v:.d$}") == text).then_some(d as i16)
}

/// 64-bit FNV-1a of a body's text: the lookup key of `sample_bodies` (then compared in full, so
/// a collision only costs a comparison).
pub fn body_hash(body: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn sample(value: Option<f64>, unit: Option<&str>, body: &str) -> NewSample {
        NewSample {
            vehicle_id: "v".into(),
            code: "c".into(),
            recorded_at: Utc::now(),
            value_num: value,
            unit: unit.map(str::to_owned),
            body: body.into(),
            source: SampleSource::Poll,
        }
    }

    #[test]
    fn only_plain_value_and_unit_bodies_are_rebuilt() {
        let shape = |v, u, b| form(&sample(v, u, b)) >> 1;
        assert_eq!(
            shape(Some(12.3), Some("km"), r#"{"unit":"km","value":12.3}"#),
            3
        );
        assert_eq!(
            shape(Some(12.3), Some("km"), r#"{"unit":"km","value":12.30}"#),
            4
        );
        assert_eq!(shape(Some(75.0), None, r#"{"value":75}"#), 2);
        assert_eq!(shape(Some(-0.5), None, r#"{"value":-0.5}"#), 3);
        assert_eq!(shape(Some(1.0), None, r#"{"value":true}"#), SHAPE_BOOL);
        assert_eq!(shape(Some(0.0), None, r#"{"value":false}"#), SHAPE_BOOL);
        for (v, u, b) in [
            (Some(1.0), None, r#"{"value":false}"#),
            (Some(0.1), None, r#"{"value":0.10000000000000001}"#),
            (Some(1e21), None, r#"{"value":1e21}"#),
            (Some(100.0), None, r#"{"value":1E2}"#),
            (Some(-0.0), None, r#"{"value":-0}"#),
            (Some(0.0), None, r#"{"value":-0.0}"#),
            (Some(5.0), None, r#"{"value":05}"#),
            (Some(5.0), None, r#"{"value":5.}"#),
            (Some(5.0), None, r#"{"value": 5}"#),
            (Some(5.0), None, r#"{"value":5,"extra":1}"#),
            (Some(5.0), Some("km"), r#"{"value":5,"unit":"km"}"#),
            (Some(5.0), Some("k\"m"), r#"{"unit":"k\"m","value":5}"#),
            (Some(5.0), Some("kö"), r#"{"unit":"kö","value":5}"#),
            (Some(5.0), None, r#"{"unit":"km","value":5}"#),
            (Some(75.0), None, r#"{"percentage":75}"#),
            (None, None, r#"{"value":"NOT_CHARGING"}"#),
            (Some(6.0), None, r#"{"value":5}"#),
            (
                Some(1234567890123456.0),
                None,
                r#"{"value":1234567890123456}"#,
            ),
        ] {
            assert_eq!(shape(v, u, b), SHAPE_STORED, "{b}");
        }
    }

    #[test]
    fn the_source_is_the_low_bit() {
        let mut s = sample(Some(1.0), None, r#"{"value":true}"#);
        assert_eq!(form(&s), 2);
        s.source = SampleSource::Webhook;
        assert_eq!(form(&s), 3);
        assert!(!body_stored(form(&s)));
        s.body = r#"{"value":1}"#.into();
        assert_eq!(form(&s), 5);
    }

    #[test]
    fn fnv1a_matches_its_reference_values() {
        assert_eq!(body_hash("") as u64, 0xcbf2_9ce4_8422_2325);
        assert_eq!(body_hash("a") as u64, 0xaf63_dc4c_8601_ec8c);
    }
}
