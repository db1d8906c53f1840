//! The JSON Canonicalization Scheme (RFC 8785): the bytes of a JSON payload
//! in the envelope's JSON form, over which `size_bytes` and `checksum` are
//! computed (PROTOCOL.md §12.3). Objects' members sorted by their names'
//! UTF-16 code units, no insignificant white space, strings with the
//! minimal escapes, numbers as ECMAScript writes a double.

use serde_json::Value;

/// The largest integer a double holds exactly (2^53): RFC 8785 numbers are
/// doubles, so a larger one could not round-trip.
const MAX_EXACT: u64 = 1 << 53;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// An integer outside ±2^53: a double cannot hold it exactly (RFC 7493
    /// §2.2), so a receiver could read another number.
    #[error(
        "the number {0} is outside ±2^53: a double cannot hold it exactly (RFC 8785 numbers are doubles)"
    )]
    InexactNumber(String),
}

/// The RFC 8785 form of `value`.
///
/// ```
/// let v: serde_json::Value = serde_json::from_str(r#"{"b": [1.50, 1e30], "a": "\u00e9\n"}"#).unwrap();
/// let bytes = anima_protocol::rcs::canonical(&v).unwrap();
/// assert_eq!(bytes, "{\"a\":\"é\\n\",\"b\":[1.5,1e+30]}".as_bytes());
/// ```
pub fn canonical(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, value)?;
    Ok(out)
}

fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n)?,
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (name, member)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, name);
                out.push(b':');
                write_value(out, member)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_number(out: &mut Vec<u8>, n: &serde_json::Number) -> Result<(), CanonicalError> {
    if let Some(u) = n.as_u64() {
        if u > MAX_EXACT {
            return Err(CanonicalError::InexactNumber(n.to_string()));
        }
        out.extend_from_slice(u.to_string().as_bytes());
    } else if let Some(i) = n.as_i64() {
        if i.unsigned_abs() > MAX_EXACT {
            return Err(CanonicalError::InexactNumber(n.to_string()));
        }
        out.extend_from_slice(i.to_string().as_bytes());
    } else {
        // serde_json holds no NaN or infinity.
        let f = n.as_f64().unwrap_or(0.0);
        out.extend_from_slice(es_number(f).as_bytes());
    }
    Ok(())
}

/// How ECMAScript's `Number.prototype.toString` writes a finite double
/// (ECMA-262 §6.1.6.1.20), from the shortest digits that round-trip.
fn es_number(f: f64) -> String {
    if f == 0.0 {
        return "0".into();
    }
    if f < 0.0 {
        return format!("-{}", es_number(-f));
    }
    // Rust's `{:e}` gives the shortest digits that round-trip ("d.ddde±x"),
    // but where two such are equally close to the double it may pick
    // either; ECMAScript takes the closest, the even one on a tie. Rounding
    // the exact value to that many digits (Rust rounds ties to even) gives
    // it, as long as that still reads back as the same double.
    let shortest = format!("{f:e}");
    let k = shortest
        .split_once('e')
        .map_or(0, |(m, _)| m.chars().filter(char::is_ascii_digit).count());
    let closest = format!("{f:.*e}", k.saturating_sub(1));
    let sci = if closest.parse::<f64>() == Ok(f) {
        closest
    } else {
        shortest
    };
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i32;
    // The value is 0.DIGITS × 10^n.
    let n = exp.parse::<i32>().unwrap_or(0) + 1;
    if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let sign = if e < 0 { '-' } else { '+' };
        let (first, rest) = digits.split_at(1);
        if rest.is_empty() {
            format!("{first}e{sign}{}", e.abs())
        } else {
            format!("{first}.{rest}e{sign}{}", e.abs())
        }
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        let v: Value = serde_json::from_str(text).expect("json");
        String::from_utf8(canonical(&v).expect("canonical")).expect("utf-8")
    }

    /// RFC 8785 §3.2.2.3's number samples (and Appendix B's).
    #[test]
    fn m2_numbers_as_ecmascript_writes_them() {
        for (bits, want) in [
            (0x0000_0000_0000_0000_u64, "0"),
            (0x8000_0000_0000_0000, "0"),
            (0x0000_0000_0000_0001, "5e-324"),
            (0x8000_0000_0000_0001, "-5e-324"),
            (0x7fef_ffff_ffff_ffff, "1.7976931348623157e+308"),
            (0xffef_ffff_ffff_ffff, "-1.7976931348623157e+308"),
            (0x4340_0000_0000_0000, "9007199254740992"),
            (0xc340_0000_0000_0000, "-9007199254740992"),
            (0x4430_0000_0000_0000, "295147905179352830000"),
            (0x44b5_2d02_c7e1_4af5, "9.999999999999997e+22"),
            (0x44b5_2d02_c7e1_4af6, "1e+23"),
            (0x44b5_2d02_c7e1_4af7, "1.0000000000000001e+23"),
            (0x444b_1ae4_d6e2_ef4e, "999999999999999700000"),
            (0x444b_1ae4_d6e2_ef4f, "999999999999999900000"),
            (0x444b_1ae4_d6e2_ef50, "1e+21"),
            (0x3eb0_c6f7_a0b5_ed8c, "9.999999999999997e-7"),
            (0x3eb0_c6f7_a0b5_ed8d, "0.000001"),
            (0x41b3_de43_5555_5553, "333333333.3333332"),
            (0x41b3_de43_5555_5554, "333333333.33333325"),
            (0x41b3_de43_5555_5555, "333333333.3333333"),
            (0x41b3_de43_5555_5556, "333333333.3333334"),
            (0x41b3_de43_5555_5557, "333333333.33333343"),
            (0xbecb_f647_612f_3696, "-0.0000033333333333333333"),
            (0x4314_3ff3_c1cb_0959, "1424953923781206.2"),
        ] {
            assert_eq!(es_number(f64::from_bits(bits)), want, "{bits:#018x}");
        }
    }

    #[test]
    fn m2_objects_sorted_by_utf16_strings_minimally_escaped() {
        // RFC 8785 §3.2.3's sorting sample: by UTF-16 code units, so U+1F600
        // (a surrogate pair, 0xD83D…) sorts before U+FB33.
        assert_eq!(
            canon(
                r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#
            ),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
        assert_eq!(
            canon("[\"\\u0001\\u001f\\\"\\\\/\", null, true, false, {}, []]"),
            "[\"\\u0001\\u001f\\\"\\\\/\",null,true,false,{},[]]"
        );
        assert_eq!(
            canon("{ \"a\" : [ 1 , 2.0 , -0.0 , 1E2 ] }"),
            "{\"a\":[1,2,0,100]}"
        );
    }

    #[test]
    fn m2_integers_a_double_cannot_hold_are_refused() {
        let v: Value = serde_json::from_str("[9007199254740993]").expect("json");
        assert!(matches!(
            canonical(&v),
            Err(CanonicalError::InexactNumber(_))
        ));
        let v: Value = serde_json::from_str("[-9007199254740992, 9007199254740992]").expect("json");
        assert!(canonical(&v).is_ok());
    }
}
