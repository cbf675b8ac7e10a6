//! Views of the messages every signal shares (AnyValue, KeyValue, Resource,
//! InstrumentationScope), parsed in place, the shared resource → scope → item
//! walk, and the id checks. Rendering values as text lives in `render`.
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
            walk_level(b, &mut res, names.scopes, |scopes, res| {
                walk_level(scopes, &mut scope, names.items, |it, scope| item(it, res, scope))
            })
            .at(names.resources, i)?;
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

/// A Resource or an InstrumentationScope: the head of one nesting level,
/// merged from field 1 of its container, with the container's schema_url (field 3).
trait Head<'a> {
    /// The field name in error paths.
    const FIELD: &'static str;
    fn reset(&mut self);
    fn merge_from(&mut self, buf: &'a [u8]) -> Result<()>;
    fn set_schema_url(&mut self, url: &'a str);
}

impl<'a> Head<'a> for Resource<'a> {
    const FIELD: &'static str = "resource";
    fn reset(&mut self) {
        self.clear()
    }
    fn merge_from(&mut self, buf: &'a [u8]) -> Result<()> {
        self.merge(buf)
    }
    fn set_schema_url(&mut self, url: &'a str) {
        self.schema_url = url;
    }
}

impl<'a> Head<'a> for Scope<'a> {
    const FIELD: &'static str = "scope";
    fn reset(&mut self) {
        self.clear()
    }
    fn merge_from(&mut self, buf: &'a [u8]) -> Result<()> {
        self.merge(buf)
    }
    fn set_schema_url(&mut self, url: &'a str) {
        self.schema_url = url;
    }
}

/// One level of the walk (a ResourceX or a ScopeX message): merges its head
/// over the whole message first (protobuf allows it after the children), then
/// calls `child` on each field 2 with the head; a child's error gets
/// `children[i]` prepended.
#[inline]
fn walk_level<'a, H, F>(buf: &'a [u8], head: &mut H, children: &'static str, mut child: F) -> Result<()>
where
    H: Head<'a>,
    F: FnMut(&'a [u8], &H) -> Result<()>,
{
    head.reset();
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match f {
            1 => head.merge_from(v.bytes().within(H::FIELD)?).within(H::FIELD)?,
            3 => head.set_schema_url(v.string().within("schema_url")?),
            _ => {}
        }
    }
    let mut r = Reader::new(buf);
    let mut i = 0;
    while let Some((f, v)) = r.next()? {
        if f == 2 {
            let b = v.bytes().at(children, i)?;
            child(b, head).at(children, i)?;
            i += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

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
