//! Identifiers that come from outside: user, vehicle, connection and event ids.
//!
//! Smartcar's ids are UUIDs. Every id the daemon accepts (from a webhook, the Connect redirect,
//! the command line or an API answer) is checked here before it is stored, logged or sent back
//! in a header. An id with a CR/LF could forge a log line; one with a NUL or a non-ASCII byte is
//! not a valid HTTP header value, so every later call carrying it as `sc-user-id` would fail
//! forever. The rule is deliberately narrow: ASCII letters, digits, `-`, `_` and `.`, 1 to
//! [`MAX_ID_LEN`] characters. That admits every UUID and every id the simulator issues, and
//! nothing that can change the meaning of a log line, a header, HTML or a URL path.

use std::fmt;

/// Longest id accepted. A UUID is 36 characters; the margin admits prefixed ids.
pub const MAX_ID_LEN: usize = 128;

/// Whether `id` is an acceptable external identifier (see the module docs).
pub fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks `id`, naming what it is in the error (`user id`, `vehicle id`, …).
pub fn check(what: &str, id: &str) -> Result<(), InvalidId> {
    if is_valid(id) {
        Ok(())
    } else {
        Err(InvalidId {
            what: what.to_owned(),
            shown: Escaped(id).to_string(),
        })
    }
}

/// An id that failed [`check`]. Its message shows the id escaped and cut short, so it is safe
/// to log and to print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {shown} is not valid: ids are 1 to 128 characters of A-Z a-z 0-9 - _ .")]
pub struct InvalidId {
    what: String,
    shown: String,
}

/// Displays untrusted text for a log line or a message: quoted, control characters and
/// non-ASCII escaped (`\n`, `\u{0}`), at most 80 characters. Use it for anything a client sent
/// that was not validated.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for (i, c) in self.0.chars().enumerate() {
            if i == 80 {
                f.write_str("…")?;
                break;
            }
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_ascii_graphic() || c == ' ' => write!(f, "{c}")?,
                c => write!(f, "{}", c.escape_default())?,
            }
        }
        f.write_str("\"")
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_pass_and_anything_that_can_break_a_line_or_a_header_fails() {
        assert!(is_valid("3f1c7a2e-0b9d-4e8a-9c51-2d7f6b3a1e90"));
        assert!(is_valid("user_1.a"));
        for bad in [
            "",
            "a\nb",
            "a\r\nX-Injected: 1",
            "nul\0",
            "space d",
            "<script>",
            "ünïcode",
            "a/b",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn escaped_text_stays_on_one_line_and_is_bounded() {
        let s = Escaped("evil\nlevel=ERROR msg=\"forged\"\0").to_string();
        assert!(!s.contains('\n') && !s.contains('\0'), "{s}");
        assert_eq!(s, "\"evil\\nlevel=ERROR msg=\\\"forged\\\"\\u{0}\"");
        assert!(Escaped(&"y".repeat(1000)).to_string().chars().count() < 90);
        let e = check("user id", "bad\nid").unwrap_err().to_string();
        assert!(e.starts_with("user id \"bad\\nid\" is not valid"), "{e}");
    }
}
