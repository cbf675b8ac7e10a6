//! OTLP/JSON → protobuf wire bytes, driven by a schema table, so JSON then
//! takes exactly the protobuf path (same validation, same batches).
//!
//! The OTLP/JSON rules (OTLP spec, "JSON Protobuf Encoding"):
//! - keys are lowerCamelCase; the original snake_case names are accepted too;
//!   unknown keys are ignored; `null` means absent;
//! - trace and span ids are hex strings (not base64), any case; `""` is an
//!   empty id;
//! - 64-bit integers may be numbers or decimal strings; so may 32-bit ones;
//! - enums are integers (their proto names are accepted too);
//! - doubles are numbers or "NaN", "Infinity", "-Infinity" (or a numeric string);
//! - other `bytes` (AnyValue.bytesValue) are base64, standard or URL-safe,
//!   padding optional.

use serde_json::{Map, Value};

use crate::error::{DecodeError, Result};
use crate::Signal;

#[derive(Clone, Copy)]
enum T {
    Msg(fn() -> &'static [F]),
    Str,
    Bytes,
    TraceId,
    SpanId,
    Fixed64,
    Sfixed64,
    Int64,
    Uint64,
    Fixed32,
    Uint32,
    Sint32,
    Enum(&'static [(&'static str, i32)]),
    Bool,
    Double,
}

struct F {
    json: &'static str,
    snake: &'static str,
    num: u32,
    t: T,
    rep: bool,
}

const fn f(json: &'static str, snake: &'static str, num: u32, t: T) -> F {
    F { json, snake, num, t, rep: false }
}
const fn r(json: &'static str, snake: &'static str, num: u32, t: T) -> F {
    F { json, snake, num, t, rep: true }
}

const SPAN_KIND: &[(&str, i32)] = &[
    ("SPAN_KIND_UNSPECIFIED", 0),
    ("SPAN_KIND_INTERNAL", 1),
    ("SPAN_KIND_SERVER", 2),
    ("SPAN_KIND_CLIENT", 3),
    ("SPAN_KIND_PRODUCER", 4),
    ("SPAN_KIND_CONSUMER", 5),
];
const STATUS_CODE: &[(&str, i32)] = &[("STATUS_CODE_UNSET", 0), ("STATUS_CODE_OK", 1), ("STATUS_CODE_ERROR", 2)];
const TEMPORALITY: &[(&str, i32)] = &[
    ("AGGREGATION_TEMPORALITY_UNSPECIFIED", 0),
    ("AGGREGATION_TEMPORALITY_DELTA", 1),
    ("AGGREGATION_TEMPORALITY_CUMULATIVE", 2),
];
const SEVERITY: &[(&str, i32)] = &[
    ("SEVERITY_NUMBER_UNSPECIFIED", 0),
    ("SEVERITY_NUMBER_TRACE", 1),
    ("SEVERITY_NUMBER_TRACE2", 2),
    ("SEVERITY_NUMBER_TRACE3", 3),
    ("SEVERITY_NUMBER_TRACE4", 4),
    ("SEVERITY_NUMBER_DEBUG", 5),
    ("SEVERITY_NUMBER_DEBUG2", 6),
    ("SEVERITY_NUMBER_DEBUG3", 7),
    ("SEVERITY_NUMBER_DEBUG4", 8),
    ("SEVERITY_NUMBER_INFO", 9),
    ("SEVERITY_NUMBER_INFO2", 10),
    ("SEVERITY_NUMBER_INFO3", 11),
    ("SEVERITY_NUMBER_INFO4", 12),
    ("SEVERITY_NUMBER_WARN", 13),
    ("SEVERITY_NUMBER_WARN2", 14),
    ("SEVERITY_NUMBER_WARN3", 15),
    ("SEVERITY_NUMBER_WARN4", 16),
    ("SEVERITY_NUMBER_ERROR", 17),
    ("SEVERITY_NUMBER_ERROR2", 18),
    ("SEVERITY_NUMBER_ERROR3", 19),
    ("SEVERITY_NUMBER_ERROR4", 20),
    ("SEVERITY_NUMBER_FATAL", 21),
    ("SEVERITY_NUMBER_FATAL2", 22),
    ("SEVERITY_NUMBER_FATAL3", 23),
    ("SEVERITY_NUMBER_FATAL4", 24),
];

// --- common ---
fn any_value() -> &'static [F] {
    static S: &[F] = &[
        f("stringValue", "string_value", 1, T::Str),
        f("boolValue", "bool_value", 2, T::Bool),
        f("intValue", "int_value", 3, T::Int64),
        f("doubleValue", "double_value", 4, T::Double),
        f("arrayValue", "array_value", 5, T::Msg(array_value)),
        f("kvlistValue", "kvlist_value", 6, T::Msg(kvlist)),
        f("bytesValue", "bytes_value", 7, T::Bytes),
    ];
    S
}
fn array_value() -> &'static [F] {
    static S: &[F] = &[r("values", "values", 1, T::Msg(any_value))];
    S
}
fn kvlist() -> &'static [F] {
    static S: &[F] = &[r("values", "values", 1, T::Msg(key_value))];
    S
}
fn key_value() -> &'static [F] {
    static S: &[F] = &[f("key", "key", 1, T::Str), f("value", "value", 2, T::Msg(any_value))];
    S
}
const fn attrs(num: u32) -> F {
    r("attributes", "attributes", num, T::Msg(key_value))
}
const fn dropped(num: u32) -> F {
    f("droppedAttributesCount", "dropped_attributes_count", num, T::Uint32)
}
fn resource() -> &'static [F] {
    static S: &[F] = &[attrs(1), dropped(2)];
    S
}
fn scope() -> &'static [F] {
    static S: &[F] = &[f("name", "name", 1, T::Str), f("version", "version", 2, T::Str), attrs(3), dropped(4)];
    S
}
const RESOURCE: F = f("resource", "resource", 1, T::Msg(resource));
const SCOPE: F = f("scope", "scope", 1, T::Msg(scope));
const SCHEMA_URL: F = f("schemaUrl", "schema_url", 3, T::Str);
const START: F = f("startTimeUnixNano", "start_time_unix_nano", 2, T::Fixed64);
const TIME: F = f("timeUnixNano", "time_unix_nano", 3, T::Fixed64);

// --- traces ---
fn traces_request() -> &'static [F] {
    static S: &[F] = &[r("resourceSpans", "resource_spans", 1, T::Msg(resource_spans))];
    S
}
fn resource_spans() -> &'static [F] {
    static S: &[F] = &[RESOURCE, r("scopeSpans", "scope_spans", 2, T::Msg(scope_spans)), SCHEMA_URL];
    S
}
fn scope_spans() -> &'static [F] {
    static S: &[F] = &[SCOPE, r("spans", "spans", 2, T::Msg(span)), SCHEMA_URL];
    S
}
fn span() -> &'static [F] {
    static S: &[F] = &[
        f("traceId", "trace_id", 1, T::TraceId),
        f("spanId", "span_id", 2, T::SpanId),
        f("traceState", "trace_state", 3, T::Str),
        f("parentSpanId", "parent_span_id", 4, T::SpanId),
        f("flags", "flags", 16, T::Fixed32),
        f("name", "name", 5, T::Str),
        f("kind", "kind", 6, T::Enum(SPAN_KIND)),
        f("startTimeUnixNano", "start_time_unix_nano", 7, T::Fixed64),
        f("endTimeUnixNano", "end_time_unix_nano", 8, T::Fixed64),
        attrs(9),
        dropped(10),
        r("events", "events", 11, T::Msg(event)),
        f("droppedEventsCount", "dropped_events_count", 12, T::Uint32),
        r("links", "links", 13, T::Msg(link)),
        f("droppedLinksCount", "dropped_links_count", 14, T::Uint32),
        f("status", "status", 15, T::Msg(status)),
    ];
    S
}
fn event() -> &'static [F] {
    static S: &[F] =
        &[f("timeUnixNano", "time_unix_nano", 1, T::Fixed64), f("name", "name", 2, T::Str), attrs(3), dropped(4)];
    S
}
fn link() -> &'static [F] {
    static S: &[F] = &[
        f("traceId", "trace_id", 1, T::TraceId),
        f("spanId", "span_id", 2, T::SpanId),
        f("traceState", "trace_state", 3, T::Str),
        attrs(4),
        dropped(5),
        f("flags", "flags", 6, T::Fixed32),
    ];
    S
}
fn status() -> &'static [F] {
    static S: &[F] = &[f("message", "message", 2, T::Str), f("code", "code", 3, T::Enum(STATUS_CODE))];
    S
}

// --- logs ---
fn logs_request() -> &'static [F] {
    static S: &[F] = &[r("resourceLogs", "resource_logs", 1, T::Msg(resource_logs))];
    S
}
fn resource_logs() -> &'static [F] {
    static S: &[F] = &[RESOURCE, r("scopeLogs", "scope_logs", 2, T::Msg(scope_logs)), SCHEMA_URL];
    S
}
fn scope_logs() -> &'static [F] {
    static S: &[F] = &[SCOPE, r("logRecords", "log_records", 2, T::Msg(log_record)), SCHEMA_URL];
    S
}
fn log_record() -> &'static [F] {
    static S: &[F] = &[
        f("timeUnixNano", "time_unix_nano", 1, T::Fixed64),
        f("observedTimeUnixNano", "observed_time_unix_nano", 11, T::Fixed64),
        f("severityNumber", "severity_number", 2, T::Enum(SEVERITY)),
        f("severityText", "severity_text", 3, T::Str),
        f("body", "body", 5, T::Msg(any_value)),
        attrs(6),
        dropped(7),
        f("flags", "flags", 8, T::Fixed32),
        f("traceId", "trace_id", 9, T::TraceId),
        f("spanId", "span_id", 10, T::SpanId),
        f("eventName", "event_name", 12, T::Str),
    ];
    S
}

// --- metrics ---
fn metrics_request() -> &'static [F] {
    static S: &[F] = &[r("resourceMetrics", "resource_metrics", 1, T::Msg(resource_metrics))];
    S
}
fn resource_metrics() -> &'static [F] {
    static S: &[F] = &[RESOURCE, r("scopeMetrics", "scope_metrics", 2, T::Msg(scope_metrics)), SCHEMA_URL];
    S
}
fn scope_metrics() -> &'static [F] {
    static S: &[F] = &[SCOPE, r("metrics", "metrics", 2, T::Msg(metric)), SCHEMA_URL];
    S
}
fn metric() -> &'static [F] {
    static S: &[F] = &[
        f("name", "name", 1, T::Str),
        f("description", "description", 2, T::Str),
        f("unit", "unit", 3, T::Str),
        f("gauge", "gauge", 5, T::Msg(gauge)),
        f("sum", "sum", 7, T::Msg(sum)),
        f("histogram", "histogram", 9, T::Msg(histogram)),
        f("exponentialHistogram", "exponential_histogram", 10, T::Msg(exp_histogram)),
        f("summary", "summary", 11, T::Msg(summary)),
        r("metadata", "metadata", 12, T::Msg(key_value)),
    ];
    S
}
const TEMPORALITY_F: F = f("aggregationTemporality", "aggregation_temporality", 2, T::Enum(TEMPORALITY));
fn gauge() -> &'static [F] {
    static S: &[F] = &[r("dataPoints", "data_points", 1, T::Msg(number_point))];
    S
}
fn sum() -> &'static [F] {
    static S: &[F] = &[
        r("dataPoints", "data_points", 1, T::Msg(number_point)),
        TEMPORALITY_F,
        f("isMonotonic", "is_monotonic", 3, T::Bool),
    ];
    S
}
fn histogram() -> &'static [F] {
    static S: &[F] = &[r("dataPoints", "data_points", 1, T::Msg(histogram_point)), TEMPORALITY_F];
    S
}
fn exp_histogram() -> &'static [F] {
    static S: &[F] = &[r("dataPoints", "data_points", 1, T::Msg(exp_point)), TEMPORALITY_F];
    S
}
fn summary() -> &'static [F] {
    static S: &[F] = &[r("dataPoints", "data_points", 1, T::Msg(summary_point))];
    S
}
fn exemplar() -> &'static [F] {
    static S: &[F] = &[
        r("filteredAttributes", "filtered_attributes", 7, T::Msg(key_value)),
        f("timeUnixNano", "time_unix_nano", 2, T::Fixed64),
        f("asDouble", "as_double", 3, T::Double),
        f("spanId", "span_id", 4, T::SpanId),
        f("traceId", "trace_id", 5, T::TraceId),
        f("asInt", "as_int", 6, T::Sfixed64),
    ];
    S
}
fn number_point() -> &'static [F] {
    static S: &[F] = &[
        attrs(7),
        START,
        TIME,
        f("asDouble", "as_double", 4, T::Double),
        f("asInt", "as_int", 6, T::Sfixed64),
        r("exemplars", "exemplars", 5, T::Msg(exemplar)),
        f("flags", "flags", 8, T::Uint32),
    ];
    S
}
fn histogram_point() -> &'static [F] {
    static S: &[F] = &[
        attrs(9),
        START,
        TIME,
        f("count", "count", 4, T::Fixed64),
        f("sum", "sum", 5, T::Double),
        r("bucketCounts", "bucket_counts", 6, T::Fixed64),
        r("explicitBounds", "explicit_bounds", 7, T::Double),
        r("exemplars", "exemplars", 8, T::Msg(exemplar)),
        f("flags", "flags", 10, T::Uint32),
        f("min", "min", 11, T::Double),
        f("max", "max", 12, T::Double),
    ];
    S
}
fn buckets() -> &'static [F] {
    static S: &[F] = &[f("offset", "offset", 1, T::Sint32), r("bucketCounts", "bucket_counts", 2, T::Uint64)];
    S
}
fn exp_point() -> &'static [F] {
    static S: &[F] = &[
        attrs(1),
        START,
        TIME,
        f("count", "count", 4, T::Fixed64),
        f("sum", "sum", 5, T::Double),
        f("scale", "scale", 6, T::Sint32),
        f("zeroCount", "zero_count", 7, T::Fixed64),
        f("positive", "positive", 8, T::Msg(buckets)),
        f("negative", "negative", 9, T::Msg(buckets)),
        f("flags", "flags", 10, T::Uint32),
        r("exemplars", "exemplars", 11, T::Msg(exemplar)),
        f("min", "min", 12, T::Double),
        f("max", "max", 13, T::Double),
        f("zeroThreshold", "zero_threshold", 14, T::Double),
    ];
    S
}
fn summary_point() -> &'static [F] {
    static S: &[F] = &[
        attrs(7),
        START,
        TIME,
        f("count", "count", 4, T::Fixed64),
        f("sum", "sum", 5, T::Double),
        r("quantileValues", "quantile_values", 6, T::Msg(quantile)),
        f("flags", "flags", 8, T::Uint32),
    ];
    S
}
fn quantile() -> &'static [F] {
    static S: &[F] = &[f("quantile", "quantile", 1, T::Double), f("value", "value", 2, T::Double)];
    S
}

/// Transcodes an OTLP/JSON export request to its protobuf encoding.
pub fn to_protobuf(signal: Signal, body: &[u8]) -> Result<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).map_err(|e| DecodeError::new(format!("malformed JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(DecodeError::new("the body must be a JSON object"));
    };
    let schema = match signal {
        Signal::Traces => traces_request(),
        Signal::Logs => logs_request(),
        Signal::Metrics => metrics_request(),
    };
    let mut out = Vec::with_capacity(body.len() / 2);
    message(&obj, schema, &mut out)?;
    Ok(out)
}

fn message(obj: &Map<String, Value>, schema: &'static [F], out: &mut Vec<u8>) -> Result<()> {
    for (k, v) in obj {
        let Some(fd) = schema.iter().find(|fd| fd.json == k || fd.snake == k) else {
            continue; // unknown fields are ignored
        };
        if v.is_null() {
            continue;
        }
        if fd.rep {
            let Value::Array(items) = v else {
                return Err(DecodeError::new("expected a JSON array").key(k));
            };
            for (i, item) in items.iter().enumerate() {
                if item.is_null() {
                    return Err(DecodeError::new("null inside a repeated field").at(fd.json, i));
                }
                field(fd, item, out).map_err(|e| e.at(fd.json, i))?;
            }
        } else {
            field(fd, v, out).map_err(|e| e.key(k))?;
        }
    }
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, num: u32, wt: u8) {
    put_varint(out, (u64::from(num) << 3) | u64::from(wt));
}

fn put_len(out: &mut Vec<u8>, num: u32, bytes: &[u8]) {
    put_tag(out, num, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn field(fd: &F, v: &Value, out: &mut Vec<u8>) -> Result<()> {
    let num = fd.num;
    match fd.t {
        T::Msg(schema) => {
            let Value::Object(obj) = v else {
                return Err(DecodeError::new("expected a JSON object"));
            };
            let mut sub = Vec::new();
            message(obj, schema(), &mut sub)?;
            put_len(out, num, &sub);
        }
        T::Str => put_len(out, num, string(v)?.as_bytes()),
        T::Bytes => put_len(out, num, &base64_decode(string(v)?)?),
        T::TraceId => put_len(out, num, &hex_id(string(v)?, 16)?),
        T::SpanId => put_len(out, num, &hex_id(string(v)?, 8)?),
        T::Fixed64 => {
            put_tag(out, num, 1);
            out.extend_from_slice(&uint(v, u64::MAX)?.to_le_bytes());
        }
        T::Sfixed64 => {
            put_tag(out, num, 1);
            out.extend_from_slice(&int(v, i64::MIN, i64::MAX)?.to_le_bytes());
        }
        T::Int64 => {
            put_tag(out, num, 0);
            put_varint(out, int(v, i64::MIN, i64::MAX)? as u64);
        }
        T::Uint64 => {
            put_tag(out, num, 0);
            put_varint(out, uint(v, u64::MAX)?);
        }
        T::Fixed32 => {
            put_tag(out, num, 5);
            out.extend_from_slice(&(uint(v, u64::from(u32::MAX))? as u32).to_le_bytes());
        }
        T::Uint32 => {
            put_tag(out, num, 0);
            put_varint(out, uint(v, u64::from(u32::MAX))?);
        }
        T::Sint32 => {
            let i = int(v, i64::from(i32::MIN), i64::from(i32::MAX))? as i32;
            put_tag(out, num, 0);
            put_varint(out, u64::from(((i << 1) ^ (i >> 31)) as u32));
        }
        T::Enum(names) => {
            let i = match v {
                Value::String(s) => match names.iter().find(|(n, _)| *n == s) {
                    Some(&(_, i)) => i,
                    None => int(v, i64::from(i32::MIN), i64::from(i32::MAX))
                        .map_err(|_| DecodeError::new(format!("unknown enum value {s:?}")))?
                        as i32,
                },
                _ => int(v, i64::from(i32::MIN), i64::from(i32::MAX))? as i32,
            };
            put_tag(out, num, 0);
            put_varint(out, i as i64 as u64); // negative int32: 10-byte varint, as protobuf does
        }
        T::Bool => {
            let Value::Bool(b) = v else {
                return Err(DecodeError::new("expected true or false"));
            };
            put_tag(out, num, 0);
            put_varint(out, u64::from(*b));
        }
        T::Double => {
            put_tag(out, num, 1);
            out.extend_from_slice(&double(v)?.to_bits().to_le_bytes());
        }
    }
    Ok(())
}

fn string(v: &Value) -> Result<&str> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(DecodeError::new("expected a JSON string")),
    }
}

fn uint(v: &Value, max: u64) -> Result<u64> {
    let n = match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u
            } else if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 18446744073709551616.0)
            {
                f as u64
            } else {
                return Err(DecodeError::new(format!("expected an unsigned integer, got {n}")));
            }
        }
        Value::String(s) => {
            s.trim().parse::<u64>().map_err(|_| DecodeError::new(format!("expected an unsigned integer, got {s:?}")))?
        }
        _ => return Err(DecodeError::new("expected an unsigned integer (number or string)")),
    };
    if n > max {
        return Err(DecodeError::new(format!("{n} is out of range (max {max})")));
    }
    Ok(n)
}

fn int(v: &Value, min: i64, max: i64) -> Result<i64> {
    let n = match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i
            } else if let Some(f) =
                n.as_f64().filter(|f| f.fract() == 0.0 && *f >= -9223372036854775808.0 && *f < 9223372036854775808.0)
            {
                f as i64
            } else {
                return Err(DecodeError::new(format!("expected an integer, got {n}")));
            }
        }
        Value::String(s) => {
            s.trim().parse::<i64>().map_err(|_| DecodeError::new(format!("expected an integer, got {s:?}")))?
        }
        _ => return Err(DecodeError::new("expected an integer (number or string)")),
    };
    if n < min || n > max {
        return Err(DecodeError::new(format!("{n} is out of range ({min}..={max})")));
    }
    Ok(n)
}

fn double(v: &Value) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| DecodeError::new(format!("bad number {n}"))),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            other => other
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| DecodeError::new(format!("expected a number, got {other:?}"))),
        },
        _ => Err(DecodeError::new("expected a number")),
    }
}

fn hex_id(s: &str, len: usize) -> Result<Vec<u8>> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let what = if len == 16 { "trace id" } else { "span id" };
    if s.len() != 2 * len {
        return Err(DecodeError::new(format!(
            "{what} must be {} hex digits, got {} characters",
            2 * len,
            s.chars().count()
        )));
    }
    let nib = |c: u8| -> Result<u8> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(DecodeError::new(format!("{what} is not hex: {s:?}"))),
        }
    };
    let b = s.as_bytes();
    (0..len).map(|i| Ok((nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?)).collect()
}

fn base64_decode(s: &str) -> Result<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return Err(DecodeError::new(format!("invalid base64 character {:?}", c as char))),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return Err(DecodeError::new("invalid base64 length"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            let mut enc = String::new();
            crate::render::base64_encode(s.as_bytes(), &mut enc);
            assert_eq!(base64_decode(&enc).unwrap(), s.as_bytes());
            assert_eq!(base64_decode(enc.trim_end_matches('=')).unwrap(), s.as_bytes());
        }
        assert!(base64_decode("Z").is_err());
        assert!(base64_decode("Zm9v!").is_err());
    }

    #[test]
    fn ids() {
        assert_eq!(hex_id("0102030405060708", 8).unwrap(), vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(hex_id("ABCDEFabcdef0000", 8).unwrap()[0], 0xab);
        assert!(hex_id("010203", 8).unwrap_err().to_string().contains("16 hex digits"));
        assert!(hex_id("zz02030405060708", 8).unwrap_err().to_string().contains("not hex"));
    }

    #[test]
    fn numbers() {
        assert_eq!(uint(&serde_json::json!("18446744073709551615"), u64::MAX).unwrap(), u64::MAX);
        assert_eq!(uint(&serde_json::json!(12), u64::MAX).unwrap(), 12);
        assert!(uint(&serde_json::json!(-1), u64::MAX).is_err());
        assert!(uint(&serde_json::json!(1.5), u64::MAX).is_err());
        assert_eq!(int(&serde_json::json!("-5"), i64::MIN, i64::MAX).unwrap(), -5);
        assert!(double(&serde_json::json!("NaN")).unwrap().is_nan());
        assert!(double(&serde_json::json!(true)).is_err());
    }
}
