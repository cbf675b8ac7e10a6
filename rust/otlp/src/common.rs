//! Views of the messages every signal shares (AnyValue, KeyValue, Resource,
//! InstrumentationScope), parsed in place, plus the id checks and the
//! canonical-JSON rendering of AnyValue.
//!
//! Protobuf semantics kept: a scalar that appears twice takes its last value;
//! a singular embedded message that appears twice is merged (its repeated
//! fields concatenate). One simplification: an AnyValue oneof that appears
//! twice keeps only the last member (two `array_value`s are not merged).

use crate::error::{Context, DecodeError, Result};
use crate::wire::{Reader, MAX_DEPTH};

/// An AnyValue, validated all the way down. Arrays and kvlists keep their raw
/// bytes and are re-walked when rendered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AnyValue<'a> {
    Empty,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    Array(&'a [u8]),
    Kvlist(&'a [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyValue<'a> {
    pub key: &'a str,
    pub value: AnyValue<'a>,
}

pub fn parse_any_value(buf: &[u8], depth: u32) -> Result<AnyValue<'_>> {
    let mut v = AnyValue::Empty;
    parse_any_value_into(buf, depth, &mut v)?;
    Ok(v)
}

/// Parses into `out` (an out-parameter: returning the enum by value through
/// a `Result` made the compiler copy it with stalling partial loads).
#[inline]
pub fn parse_any_value_into<'a>(buf: &'a [u8], depth: u32, out: &mut AnyValue<'a>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::new(format!("AnyValue nested more than {MAX_DEPTH} deep")));
    }
    let mut r = Reader::new(buf);
    while let Some((f, val)) = r.next()? {
        *out = match f {
            1 => AnyValue::Str(val.string().within("string_value")?),
            2 => AnyValue::Bool(val.boolean().within("bool_value")?),
            3 => AnyValue::Int(val.int64().within("int_value")?),
            4 => AnyValue::Double(val.double().within("double_value")?),
            5 => {
                let b = val.bytes().within("array_value")?;
                validate_array(b, depth + 1).within("array_value")?;
                AnyValue::Array(b)
            }
            6 => {
                let b = val.bytes().within("kvlist_value")?;
                validate_kvlist(b, depth + 1).within("kvlist_value")?;
                AnyValue::Kvlist(b)
            }
            7 => AnyValue::Bytes(val.bytes().within("bytes_value")?),
            _ => continue, // string_value_strindex (profiles only) and unknown fields
        };
    }
    Ok(())
}

fn validate_array(buf: &[u8], depth: u32) -> Result<()> {
    for_each_array_value(buf, depth, |_| Ok(()))
}

fn validate_kvlist(buf: &[u8], depth: u32) -> Result<()> {
    for_each_kvlist_value(buf, depth, |_| Ok(()))
}

/// Calls `f` on each element of an ArrayValue.
pub fn for_each_array_value<'a>(
    buf: &'a [u8],
    depth: u32,
    mut f: impl FnMut(AnyValue<'a>) -> Result<()>,
) -> Result<()> {
    let mut r = Reader::new(buf);
    let mut i = 0;
    while let Some((field, val)) = r.next()? {
        if field == 1 {
            let b = val.bytes().at("values", i)?;
            f(parse_any_value(b, depth).at("values", i)?)?;
            i += 1;
        }
    }
    Ok(())
}

/// Calls `f` on each entry of a KeyValueList.
pub fn for_each_kvlist_value<'a>(
    buf: &'a [u8],
    depth: u32,
    mut f: impl FnMut(KeyValue<'a>) -> Result<()>,
) -> Result<()> {
    let mut r = Reader::new(buf);
    let mut i = 0;
    while let Some((field, val)) = r.next()? {
        if field == 1 {
            let b = val.bytes().at("values", i)?;
            f(parse_key_value(b, depth).at("values", i)?)?;
            i += 1;
        }
    }
    Ok(())
}

pub fn parse_key_value(buf: &[u8], depth: u32) -> Result<KeyValue<'_>> {
    let mut kv = KeyValue { key: "", value: AnyValue::Empty };
    parse_key_value_into(buf, depth, &mut kv)?;
    Ok(kv)
}

#[inline]
fn parse_key_value_into<'a>(buf: &'a [u8], depth: u32, kv: &mut KeyValue<'a>) -> Result<()> {
    let mut r = Reader::new(buf);
    while let Some((f, val)) = r.next()? {
        match f {
            1 => kv.key = val.string().within("key")?,
            2 => {
                kv.value = AnyValue::Empty;
                parse_any_value_into(val.bytes().within("value")?, depth + 1, &mut kv.value).within("value")?
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parses one `repeated KeyValue` element (the `i`th) onto the end of `out`.
#[inline]
pub fn push_attribute<'a>(
    out: &mut Vec<KeyValue<'a>>,
    val: crate::wire::Value<'a>,
    name: &'static str,
    i: usize,
) -> Result<()> {
    let b = val.bytes().at(name, i)?;
    if let Some(kv) = key_value_fast(b) {
        out.push(kv);
        return Ok(());
    }
    out.push(KeyValue { key: "", value: AnyValue::Empty });
    let last = out.len() - 1;
    parse_key_value_into(b, 0, &mut out[last]).at(name, i)
}

/// A KeyValue in the layout every SDK writes: `key`, then `value` holding one
/// scalar member (string, bool, int, double or bytes), nothing else. Reads it
/// without the general field loop and its per-field dispatch; `None` for any
/// other layout and for invalid input, which then take the general path
/// (`parse_key_value_into`, which also builds the error). Where it returns
/// `Some`, the general path would give the same KeyValue: with exactly one
/// occurrence of each field, "last one wins" and merging change nothing.
#[inline(always)]
fn key_value_fast(buf: &[u8]) -> Option<KeyValue<'_>> {
    let (key, rest) = length_delimited(buf, 0x0a)?; // field 1, wire type 2
    let (val, rest) = length_delimited(rest, 0x12)?; // field 2, wire type 2
    if !rest.is_empty() {
        return None;
    }
    let key = utf8_opt(key)?;
    let value = match *val.first()? {
        0x0a => {
            let (s, rest) = length_delimited(val, 0x0a)?; // string_value
            if !rest.is_empty() {
                return None;
            }
            AnyValue::Str(utf8_opt(s)?)
        }
        0x10 if val.len() == 2 && val[1] < 0x80 => AnyValue::Bool(val[1] != 0), // bool_value
        0x18 => {
            // int_value
            let mut r = Reader::new(&val[1..]);
            let v = r.varint().ok()?;
            if !r.at_end() {
                return None;
            }
            AnyValue::Int(v as i64)
        }
        0x21 if val.len() == 9 => AnyValue::Double(f64::from_le_bytes(val[1..9].try_into().ok()?)), // double_value
        0x3a => {
            let (b, rest) = length_delimited(val, 0x3a)?; // bytes_value
            if !rest.is_empty() {
                return None;
            }
            AnyValue::Bytes(b)
        }
        _ => return None,
    };
    Some(KeyValue { key, value })
}

/// `buf` starting with the one-byte tag `tag` and a length of one or two
/// bytes: (payload, rest). `None` otherwise or when truncated.
#[inline(always)]
fn length_delimited(buf: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *buf.first()? != tag {
        return None;
    }
    let b1 = *buf.get(1)?;
    let (len, start) = if b1 < 0x80 {
        (b1 as usize, 2)
    } else {
        let b2 = *buf.get(2)?;
        if b2 >= 0x80 {
            return None;
        }
        ((b1 & 0x7f) as usize | (b2 as usize) << 7, 3)
    };
    let payload = buf.get(start..start + len)?;
    Some((payload, &buf[start + len..]))
}

#[inline(always)]
fn utf8_opt(b: &[u8]) -> Option<&str> {
    crate::wire::utf8(b).ok()
}

/// Resource, merged over every occurrence in its ResourceX message.
#[derive(Debug, Default)]
pub struct Resource<'a> {
    pub attributes: Vec<KeyValue<'a>>,
    pub dropped_attributes_count: u32,
    pub schema_url: &'a str,
}

impl<'a> Resource<'a> {
    pub fn clear(&mut self) {
        self.attributes.clear();
        self.dropped_attributes_count = 0;
        self.schema_url = "";
    }

    pub fn merge(&mut self, buf: &'a [u8]) -> Result<()> {
        let mut r = Reader::new(buf);
        while let Some((f, val)) = r.next()? {
            match f {
                1 => {
                    let i = self.attributes.len();
                    push_attribute(&mut self.attributes, val, "attributes", i)?;
                }
                2 => self.dropped_attributes_count = val.uint32().within("dropped_attributes_count")?,
                _ => {} // entity_refs and unknown fields
            }
        }
        Ok(())
    }

    /// The `service.name` attribute (last one wins), rendered like any attribute value.
    pub fn service_name(&self) -> Option<&KeyValue<'a>> {
        self.attributes.iter().rev().find(|kv| kv.key == "service.name")
    }
}

/// InstrumentationScope, merged over every occurrence, plus its container's schema_url.
#[derive(Debug, Default)]
pub struct Scope<'a> {
    /// Changes each time a new ScopeX message starts (lets sinks share the
    /// resource/scope columns of a group's rows).
    pub group: u64,
    pub name: &'a str,
    pub version: &'a str,
    pub attributes: Vec<KeyValue<'a>>,
    pub dropped_attributes_count: u32,
    pub schema_url: &'a str,
}

impl<'a> Scope<'a> {
    pub fn clear(&mut self) {
        self.group += 1;
        self.name = "";
        self.version = "";
        self.attributes.clear();
        self.dropped_attributes_count = 0;
        self.schema_url = "";
    }

    pub fn merge(&mut self, buf: &'a [u8]) -> Result<()> {
        let mut r = Reader::new(buf);
        while let Some((f, val)) = r.next()? {
            match f {
                1 => self.name = val.string().within("name")?,
                2 => self.version = val.string().within("version")?,
                3 => {
                    let i = self.attributes.len();
                    push_attribute(&mut self.attributes, val, "attributes", i)?;
                }
                4 => self.dropped_attributes_count = val.uint32().within("dropped_attributes_count")?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// The field names of one signal's resource → scope → item nesting, for
/// error paths: `resource_spans`, `scope_spans`, `spans` and so on.
pub struct Nesting {
    pub resources: &'static str,
    pub scopes: &'static str,
    pub items: &'static str,
}

/// The walk every signal shares. The three export requests nest alike:
///
/// ```text
/// Export*ServiceRequest { repeated ResourceX resources = 1; }
/// ResourceX { Resource resource = 1; repeated ScopeX scopes = 2; string schema_url = 3; }
/// ScopeX    { InstrumentationScope scope = 1; repeated Item items = 2; string schema_url = 3; }
/// ```
///
/// Calls `item` on each item's bytes (a span, a log record, a metric) with its
/// resource and scope, parsed and merged over the whole ResourceX/ScopeX
/// first (protobuf allows them after the items). An error from `item` gets
/// the item's path prepended.
#[inline]
pub fn walk_items<'a, F>(buf: &'a [u8], names: &Nesting, mut item: F) -> Result<()>
where
    F: FnMut(&'a [u8], &Resource<'a>, &Scope<'a>) -> Result<()>,
{
    let mut res = Resource::default();
    let mut scope = Scope::default();
    let mut r = Reader::new(buf);
    let mut i = 0;
    while let Some((f, v)) = r.next()? {
        if f == 1 {
            let b = v.bytes().at(names.resources, i)?;
            walk_resource(b, names, &mut res, &mut scope, &mut item).at(names.resources, i)?;
            i += 1;
        }
    }
    Ok(())
}

/// How many items (field 2 of field 2 of field 1) a request holds, from its
/// framing alone: item bodies are skipped, not parsed. A capacity hint for
/// the column builders; stops at the first malformed field (the real walk
/// reports it).
pub fn count_items_hint(buf: &[u8]) -> usize {
    fn fields(buf: &[u8], want: u32, mut each: impl FnMut(&[u8])) {
        let mut r = Reader::new(buf);
        while let Ok(Some((f, v))) = r.next() {
            if f == want {
                match v.bytes() {
                    Ok(b) => each(b),
                    Err(_) => return,
                }
            }
        }
    }
    let mut n = 0;
    fields(buf, 1, |resource| fields(resource, 2, |scope| fields(scope, 2, |_| n += 1)));
    n
}

#[inline]
fn walk_resource<'a, F>(
    buf: &'a [u8],
    names: &Nesting,
    res: &mut Resource<'a>,
    scope: &mut Scope<'a>,
    item: &mut F,
) -> Result<()>
where
    F: FnMut(&'a [u8], &Resource<'a>, &Scope<'a>) -> Result<()>,
{
    res.clear();
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match f {
            1 => res.merge(v.bytes().within("resource")?).within("resource")?,
            3 => res.schema_url = v.string().within("schema_url")?,
            _ => {}
        }
    }
    let mut r = Reader::new(buf);
    let mut j = 0;
    while let Some((f, v)) = r.next()? {
        if f == 2 {
            let b = v.bytes().at(names.scopes, j)?;
            walk_scope(b, names, res, scope, item).at(names.scopes, j)?;
            j += 1;
        }
    }
    Ok(())
}

#[inline]
fn walk_scope<'a, F>(
    buf: &'a [u8],
    names: &Nesting,
    res: &Resource<'a>,
    scope: &mut Scope<'a>,
    item: &mut F,
) -> Result<()>
where
    F: FnMut(&'a [u8], &Resource<'a>, &Scope<'a>) -> Result<()>,
{
    scope.clear();
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match f {
            1 => scope.merge(v.bytes().within("scope")?).within("scope")?,
            3 => scope.schema_url = v.string().within("schema_url")?,
            _ => {}
        }
    }
    let mut r = Reader::new(buf);
    let mut k = 0;
    while let Some((f, v)) = r.next()? {
        if f == 2 {
            let b = v.bytes().at(names.items, k)?;
            item(b, res, scope).at(names.items, k)?;
            k += 1;
        }
    }
    Ok(())
}

/// A trace id that may be absent (logs, exemplars): empty or 16 bytes.
pub fn optional_trace_id(b: &[u8]) -> Result<&[u8]> {
    match b.len() {
        0 | 16 => Ok(b),
        n => Err(DecodeError::new(format!("trace id must be 16 bytes or empty, got {n}"))),
    }
}

/// A span id that may be absent: empty or 8 bytes.
pub fn optional_span_id(b: &[u8]) -> Result<&[u8]> {
    match b.len() {
        0 | 8 => Ok(b),
        n => Err(DecodeError::new(format!("span id must be 8 bytes or empty, got {n}"))),
    }
}

/// A required id: exactly `len` bytes and not all zero (the OTLP spec calls
/// both other cases invalid).
pub fn required_id(b: &[u8], len: usize, what: &str) -> Result<()> {
    if b.len() != len {
        return Err(DecodeError::new(format!("{what} must be {len} bytes, got {}", b.len())));
    }
    if b.iter().all(|&x| x == 0) {
        return Err(DecodeError::new(format!("{what} is all zeroes (invalid)")));
    }
    Ok(())
}

/// Nanoseconds since the epoch, as Arrow's signed timestamp.
#[inline]
pub fn timestamp(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| DecodeError::new(format!("timestamp {v} ns is beyond year 2262")))
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
            let digits = crate::columns::format_i64(i, &mut buf);
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

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn field(tag: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    #[test]
    fn item_count_hint_reads_framing_only() {
        // two resources: one with scopes of 2 and 1 items, one with 3; an
        // unknown field 4 and a schema_url between them; the items are junk
        let scope = |n: usize| {
            let mut b = Vec::new();
            field(0x0a, b"scope", &mut b);
            for _ in 0..n {
                field(0x12, &[0xff, 0xff], &mut b);
            }
            b
        };
        let mut r1 = Vec::new();
        field(0x12, &scope(2), &mut r1);
        field(0x1a, b"url", &mut r1);
        field(0x12, &scope(1), &mut r1);
        let mut r2 = Vec::new();
        field(0x12, &scope(3), &mut r2);
        let mut req = Vec::new();
        field(0x0a, &r1, &mut req);
        field(0x22, b"x", &mut req);
        field(0x0a, &r2, &mut req);
        assert_eq!(count_items_hint(&req), 6);
        assert_eq!(count_items_hint(&req[..req.len() - 1]), 3); // truncated: counts what it could read
        assert_eq!(count_items_hint(&[]), 0);
    }

    proptest::proptest! {
        /// Wherever the KeyValue fast path answers, it agrees with the general parser.
        #[test]
        fn key_value_fast_agrees(
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            ascii_key in proptest::prelude::any::<bool>(),
            kind in 0u8..8,
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            n in proptest::prelude::any::<u64>(),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            mangle in 0u8..4,
        ) {
            let key: Vec<u8> = if ascii_key { key.iter().map(|b| b & 0x7f).collect() } else { key };
            let mut value = Vec::new();
            match kind {
                0 => field(0x0a, &payload, &mut value),
                1 => field(0x0a, &payload.iter().map(|b| b & 0x7f).collect::<Vec<_>>(), &mut value),
                2 => { value.push(0x10); varint(n % 3, &mut value); }
                3 => { value.push(0x18); varint(n, &mut value); }
                4 => { value.push(0x21); value.extend_from_slice(&n.to_le_bytes()); }
                5 => field(0x3a, &payload, &mut value),
                6 => value.extend_from_slice(&payload),
                _ => {}
            }
            let mut kv = Vec::new();
            field(0x0a, &key, &mut kv);
            field(0x12, &value, &mut kv);
            match mangle {
                1 => kv.truncate(cut.index(kv.len() + 1)),
                2 => kv.extend_from_slice(&payload[..payload.len().min(3)]),
                3 => { let i = cut.index(kv.len()); kv[i] ^= 0x80; }
                _ => {}
            }
            let general = parse_key_value(&kv, 0);
            if let Some(fast) = key_value_fast(&kv) {
                // (compared as text: a NaN double is not equal to itself)
                proptest::prop_assert_eq!(format!("{:?}", Ok::<_, DecodeError>(fast)), format!("{general:?}"));
            } else if mangle == 0 && ascii_key && matches!(kind, 1..=5) && key.len() + value.len() < 16000 {
                proptest::prop_assert!(false, "canonical KeyValue missed the fast path: {kv:?}");
            }
        }
    }

}
