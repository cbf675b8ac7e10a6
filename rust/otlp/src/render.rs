//! AnyValues and numbers as text: the canonical JSON of a non-string
//! AnyValue (attribute map values, log bodies), doubles as Python writes
//! them, base64, decimal and hex digits. Used by the column builders
//! (`columns`), the size admission (`admit`) and the JSON transcoder.
//!
//! Depends on `common` (the AnyValue views) only; `common` and `columns`
//! do not depend on each other through it.

use crate::common::{for_each_array_value, for_each_kvlist_value, AnyValue};
use crate::error::Result;

/// `v` in decimal into the end of `buf`, as `format!("{v}")` writes it.
#[inline]
pub fn format_i64(v: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// The two lowercase hex digits of every byte value.
pub(crate) static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
        i += 1;
    }
    t
};

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (the proto3 JSON form of `bytes`).
pub fn base64_encode(data: &[u8], out: &mut String) {
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { B64[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { B64[n as usize & 63] as char } else { '=' });
    }
}

/// Renders a non-string AnyValue as canonical JSON into `out`:
/// `true`, `42`, `1.5`, `"NaN"`/`"Infinity"`/`"-Infinity"`, bytes as a base64
/// string, arrays as `[...]`, kvlists as `{"k":...}` in wire order, an empty
/// value as `null`; no whitespace, UTF-8 unescaped beyond JSON's rules.
pub fn write_json(v: AnyValue<'_>, out: &mut String, depth: u32) -> Result<()> {
    match v {
        AnyValue::Empty => out.push_str("null"),
        AnyValue::Str(s) => write_json_string(s, out),
        AnyValue::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        AnyValue::Int(i) => {
            let mut buf = [0u8; 20];
            let digits = format_i64(i, &mut buf);
            out.push_str(std::str::from_utf8(digits).unwrap_or_default());
        }
        AnyValue::Double(d) => write_json_double(d, out),
        AnyValue::Bytes(b) => {
            out.push('"');
            base64_encode(b, out);
            out.push('"');
        }
        AnyValue::Array(b) => {
            out.push('[');
            let mut first = true;
            for_each_array_value(b, depth + 1, |item| {
                if !first {
                    out.push(',');
                }
                first = false;
                write_json(item, out, depth + 1)
            })?;
            out.push(']');
        }
        AnyValue::Kvlist(b) => {
            out.push('{');
            let mut first = true;
            for_each_kvlist_value(b, depth + 1, |kv| {
                if !first {
                    out.push(',');
                }
                first = false;
                write_json_string(kv.key, out);
                out.push(':');
                write_json(kv.value, out, depth + 1)
            })?;
            out.push('}');
        }
    }
    Ok(())
}

/// A double as Python's `json.dumps`/`repr` writes it: the shortest
/// round-trip digits, fixed notation for exponents -4..=15 (`1.0`, `0.0001`,
/// `-0.0`), otherwise `1e+16`, `1.5e-07`; non-finite values as the proto3
/// JSON strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
pub fn write_json_double(d: f64, out: &mut String) {
    if d.is_nan() {
        out.push_str("\"NaN\"");
        return;
    }
    if d.is_infinite() {
        out.push_str(if d > 0.0 { "\"Infinity\"" } else { "\"-Infinity\"" });
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{d:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let a = exp.unsigned_abs();
        if a < 10 {
            out.push('0');
        }
        out.push_str(&a.to_string());
    }
}

pub fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                const H: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(H[(b >> 4) as usize] as char);
                out.push(H[(b & 15) as usize] as char);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// The map value of an attribute (and the `body` of a log): a string as is,
/// anything else as canonical JSON, an empty AnyValue as null.
#[inline]
pub fn render<'s>(v: AnyValue<'s>, scratch: &'s mut String) -> Result<Option<&'s str>> {
    match v {
        AnyValue::Str(s) => Ok(Some(s)),
        AnyValue::Empty => Ok(None),
        other => {
            scratch.clear();
            write_json(other, scratch, 0)?;
            Ok(Some(scratch.as_str()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal() {
        let mut buf = [0u8; 20];
        for v in [0, 1, -1, 9, 10, -10, 123456789, i64::MAX, i64::MIN, i64::MIN + 1] {
            assert_eq!(format_i64(v, &mut buf), v.to_string().as_bytes());
        }
    }

    #[test]
    fn base64() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")] {
            let mut s = String::new();
            base64_encode(i.as_bytes(), &mut s);
            assert_eq!(s, o);
        }
    }

    #[test]
    fn json_strings_and_doubles() {
        let mut s = String::new();
        write_json_string("a\"b\\c\n\u{1}é", &mut s);
        assert_eq!(s, r#""a\"b\\c\n\u0001é""#);
        for (d, o) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (123.456, "123.456"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (1e-5, "1e-05"),
            (-2.5e300, "-2.5e+300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::NAN, "\"NaN\""),
            (f64::NEG_INFINITY, "\"-Infinity\""),
        ] {
            let mut s = String::new();
            write_json_double(d, &mut s);
            assert_eq!(s, o);
        }
    }
}
