//! Lower-case hexadecimal, the one spelling of bytes as text the protocol
//! uses (checksums, trace and span ids, message ids, fingerprints).
//!
//! Written by hand from a table rather than `format!("{b:02x}")` per byte:
//! a message's checksum is spelled on every publish, and formatting each
//! byte through `core::fmt` with a `String` of its own cost more than the
//! SHA-256 it spells.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `bytes` in lower-case hex: two digits a byte, most significant first.
pub fn lower(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The value of one hex digit, either case; `None` for anything else.
fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The bytes `text` spells in hex, either case; `None` unless it is an
/// even number of hex digits and nothing else (no sign, no space, no `0x`).
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Whether `text` spells exactly `bytes` in hex, either case (the way the
/// RCS `checksum` is compared: without spelling the digest first).
pub fn spells(text: &str, bytes: &[u8]) -> bool {
    let text = text.as_bytes();
    text.len() == bytes.len() * 2
        && text.chunks_exact(2).zip(bytes).all(|(pair, &b)| {
            matches!(
                (digit(pair[0]), digit(pair[1])),
                (Some(hi), Some(lo)) if hi << 4 | lo == b
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_is_what_format_writes_for_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let formatted: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(lower(&all), formatted);
        assert_eq!(lower(&[]), "");
    }

    #[test]
    fn decode_undoes_lower_and_refuses_anything_else() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&lower(&all)), Some(all.clone()));
        assert_eq!(decode(&lower(&all).to_uppercase()), Some(all));
        assert_eq!(decode(""), Some(Vec::new()));
        for bad in ["0", "abc", "+f", "-1", " f", "0x", "zz", "é0"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn spells_takes_either_case_and_nothing_else() {
        let bytes = [0x01, 0xab, 0xcd, 0xef];
        assert!(spells("01abcdef", &bytes));
        assert!(spells("01ABCDEF", &bytes));
        assert!(spells("01AbCdEf", &bytes));
        assert!(!spells("01abcdee", &bytes));
        assert!(!spells("01abcde", &bytes));
        assert!(!spells("01abcdef0", &bytes));
        assert!(!spells("01abcdeg", &bytes));
        assert!(!spells("+1abcdef", &bytes));
        assert!(!spells(" 1abcdef", &bytes));
        assert!(spells("", &[]));
        for b in 0..=255u8 {
            assert!(spells(&format!("{b:02x}"), &[b]));
            assert!(spells(&format!("{b:02X}"), &[b]));
            assert!(!spells(&format!("{:02x}", b.wrapping_add(1)), &[b]));
        }
    }
}
