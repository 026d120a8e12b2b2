//! Deterministic hashing and UUID-like ids: the fleet is a pure function of the seed, and ids are
//! stored as `u128` so a large fleet stays small in memory.

/// Tags keep the hash streams of different things apart.
pub(crate) const TAG_USER: u64 = 0x7573_6572;
pub(crate) const TAG_VEHICLE: u64 = 0x7665_6869;
pub(crate) const TAG_CONNECTION: u64 = 0x636f_6e6e;
pub(crate) const TAG_SPEC: u64 = 0x7370_6563;
pub(crate) const TAG_WEBHOOK: u64 = 0x7765_6268;
pub(crate) const TAG_REQUEST: u64 = 0x7265_7175;

/// SplitMix64 finaliser: cheap, well mixed, no state.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hash of (seed, tag, index).
pub(crate) fn h(seed: u64, tag: u64, i: u64) -> u64 {
    mix(seed ^ mix(tag ^ mix(i)))
}

/// A version-4-shaped UUID derived from (seed, tag, index).
pub(crate) fn uuid(seed: u64, tag: u64, i: u64) -> u128 {
    let hi = h(seed, tag, i) as u128;
    let lo = h(seed, tag ^ 0x5a5a_5a5a_5a5a_5a5a, i) as u128;
    let v = (hi << 64) | lo;
    // version nibble 4, variant bits 10
    (v & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}

/// A random UUID-shaped id (event ids, delivery ids).
pub(crate) fn random_uuid() -> String {
    fmt_uuid(uuid(fastrand::u64(..), TAG_REQUEST, fastrand::u64(..)))
}

pub(crate) fn fmt_uuid(u: u128) -> String {
    let s = format!("{u:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

/// Inverse of [`fmt_uuid`]; only the exact lowercase form matches, like a real id lookup.
pub(crate) fn parse_uuid(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | d as u128;
    }
    Some(v)
}

/// Random opaque bearer token: 40 hex chars.
pub(crate) fn random_token() -> String {
    format!(
        "{:016x}{:016x}{:08x}",
        fastrand::u64(..),
        fastrand::u64(..),
        fastrand::u32(..)
    )
}

/// Percent-encodes a query component (RFC 3986 unreserved characters pass).
pub(crate) fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `application/x-www-form-urlencoded` (also used for query strings). Later duplicates
/// win; malformed escapes are kept literally.
pub(crate) fn decode_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

fn decode_component(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(a), Some(c)) => {
                    out.push(a * 16 + c);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_round_trips() {
        let u = uuid(7, TAG_VEHICLE, 3);
        let s = fmt_uuid(u);
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_eq!(parse_uuid(&s), Some(u));
        assert_eq!(parse_uuid(&s.to_uppercase()), None);
    }

    #[test]
    fn form_decoding_handles_escapes() {
        let v = decode_form("a=b+c&page%5Bnumber%5D=2&x=%zz&y");
        assert_eq!(v[0], ("a".into(), "b c".into()));
        assert_eq!(v[1], ("page[number]".into(), "2".into()));
        assert_eq!(v[2], ("x".into(), "%zz".into()));
        assert_eq!(v[3], ("y".into(), "".into()));
        assert_eq!(encode_component("a b/ü"), "a%20b%2F%C3%BC");
    }
}
