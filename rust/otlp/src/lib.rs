//! OTLP export requests (protobuf or OTLP/JSON) → Arrow record batches.
//!
//! The ingest path's conversion engine, free of pyo3; `signaldb._native`
//! wraps it (rust/native/src/otlp.rs) and `signaldb.otlp` is the Python face.
//!
//! # How it works
//!
//! - Protobuf is read in place (`wire`): no intermediate message structs;
//!   strings and ids are borrowed from the request bytes and copied once,
//!   into the Arrow builders.
//! - Each signal has a walker (`traces::walk`, `logs::walk`,
//!   `metrics::walk`, all on the shared resource → scope → item walk
//!   `common::walk_items`) that parses and validates, and hands each item
//!   (span, log record, data point) with its resource and scope to a sink: a
//!   counter (`count_items`) or the Arrow table builders (`convert`).
//! - The builders (`columns`) append into plain buffers (hex ids and numbers
//!   written in place; for traces, reserved from a framing-only count of the
//!   spans); the resource/scope columns are built once per group and
//!   repeated at the end.
//! - OTLP/JSON is transcoded to the protobuf wire form first (`json`), then
//!   takes the same walk: both encodings give identical batches by
//!   construction, and the tests assert it.
//! - Any error aborts the whole request: no partial batch is ever returned.
//!   Errors name the field path (`resource_spans[0].scope_spans[1].spans[3].span_id:
//!   span id must be 8 bytes, got 3`).
//!
//! # Tables and columns
//!
//! Documented in `python/signaldb/otlp.py` (the module docstring) and
//! DESIGN.md "Parquet output". In short: ids are lowercase hex (absent → null),
//! times `timestamp[ns, UTC]`, attributes `map<string, string>` where a
//! string stays as is and any other AnyValue becomes canonical JSON
//! (`render::write_json`), events/links/exemplars/quantiles are lists of
//! structs, enums stay integers.

pub mod admit;
pub mod columns;
pub mod common;
pub mod error;
pub mod json;
pub mod logs;
pub mod metrics;
pub mod render;
pub mod traces;
pub mod wire;

pub use admit::{Policy, TimeWindow, CONVERT_CEILING};
pub use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
pub use arrow_array::RecordBatch;
pub use error::{DecodeError, Result};

use std::borrow::Cow;

/// Which export request a body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
    Metrics,
}

impl Signal {
    pub fn parse(s: &str) -> Option<Signal> {
        match s {
            "traces" => Some(Signal::Traces),
            "logs" => Some(Signal::Logs),
            "metrics" => Some(Signal::Metrics),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }

    fn request_name(self) -> &'static str {
        match self {
            Signal::Traces => "ExportTraceServiceRequest",
            Signal::Logs => "ExportLogsServiceRequest",
            Signal::Metrics => "ExportMetricsServiceRequest",
        }
    }

    /// The tables a conversion of this signal returns, always all of them,
    /// in this order (some may have no rows).
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Signal::Traces => &["traces"],
            Signal::Logs => &["logs"],
            Signal::Metrics => metrics::TABLES,
        }
    }
}

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// From an HTTP Content-Type (parameters such as `; charset=utf-8` ignored).
    pub fn from_content_type(ct: &str) -> Option<Encoding> {
        let base = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match base.as_str() {
            "application/x-protobuf" | "application/protobuf" | "application/grpc" | "application/grpc+proto" => {
                Some(Encoding::Protobuf)
            }
            "application/json" => Some(Encoding::Json),
            _ => None,
        }
    }
}

/// A converted request.
#[derive(Debug)]
pub struct Conversion {
    /// Every table of the signal (`Signal::tables`), in order; some may be empty.
    pub tables: Vec<(&'static str, RecordBatch)>,
    /// Items that could not become rows, by reason (e.g. `metric_without_data`).
    /// Never silently dropped: each is counted here.
    pub rejected: Vec<(&'static str, u64)>,
    /// Spans, log records or metric data points converted (= rows over all tables).
    pub items: u64,
}

/// Item counts of a request, from a validating walk that builds no arrays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub items: u64,
    pub rejected: Vec<(&'static str, u64)>,
    /// What the admitted items' rows cost (`admit`): the figure
    /// `Policy::max_converted_bytes` limits.
    pub converted_bytes: u64,
}

fn to_protobuf(signal: Signal, body: &[u8], enc: Encoding) -> Result<Cow<'_, [u8]>> {
    match enc {
        Encoding::Protobuf => Ok(Cow::Borrowed(body)),
        Encoding::Json => json::to_protobuf(signal, body)
            .map(Cow::Owned)
            .map_err(|e| DecodeError::new(format!("invalid OTLP/JSON {}: {e}", signal.request_name()))),
    }
}

fn wrap(signal: Signal, e: DecodeError) -> DecodeError {
    if e.is_too_large() {
        DecodeError::too_large(format!("{} too large: {e}", signal.request_name()))
    } else {
        DecodeError::new(format!("invalid {}: {e}", signal.request_name()))
    }
}

/// Converts one export request into record batches with the default policy
/// (no time window, `CONVERT_CEILING`). All or nothing.
pub fn convert(signal: Signal, body: &[u8], enc: Encoding) -> Result<Conversion> {
    convert_with(signal, body, enc, &Policy::default())
}

/// Converts one export request into record batches; items the policy rejects
/// are counted in `rejected`, not converted. All or nothing otherwise.
pub fn convert_with(signal: Signal, body: &[u8], enc: Encoding, policy: &Policy) -> Result<Conversion> {
    let pb = to_protobuf(signal, body, enc)?;
    let mut admit = admit::Admit::new(*policy);
    convert_protobuf(signal, &pb, &mut admit).map_err(|e| wrap(signal, e))
}

fn convert_protobuf(signal: Signal, pb: &[u8], admit: &mut admit::Admit) -> Result<Conversion> {
    let (tables, items) = match signal {
        Signal::Traces => {
            let mut t = traces::Table::default();
            traces::walk(pb, &mut t, admit)?;
            let items = t.rows() as u64;
            (vec![("traces", t.finish()?)], items)
        }
        Signal::Logs => {
            let mut t = logs::Table::default();
            logs::walk(pb, &mut t, admit)?;
            let items = t.rows() as u64;
            (vec![("logs", t.finish()?)], items)
        }
        Signal::Metrics => {
            let mut t = metrics::Tables::default();
            metrics::walk(pb, &mut t, admit)?;
            let items = t.rows();
            (t.finish()?, items)
        }
    };
    Ok(Conversion { tables, rejected: admit.rejected(), items })
}

/// `count_items_with` the default policy.
pub fn count_items(signal: Signal, body: &[u8], enc: Encoding) -> Result<Counts> {
    count_items_with(signal, body, enc, &Policy::default())
}

/// Validates a request exactly as `convert_with` does under the same policy
/// and counts its items, without building Arrow arrays.
pub fn count_items_with(signal: Signal, body: &[u8], enc: Encoding, policy: &Policy) -> Result<Counts> {
    let pb = to_protobuf(signal, body, enc)?;
    let mut admit = admit::Admit::new(*policy);
    let items = match signal {
        Signal::Traces => {
            let mut c = traces::Counter::default();
            traces::walk(&pb, &mut c, &mut admit).map(|_| c.0)
        }
        Signal::Logs => {
            let mut c = logs::Counter::default();
            logs::walk(&pb, &mut c, &mut admit).map(|_| c.0)
        }
        Signal::Metrics => {
            let mut c = metrics::Counter::default();
            metrics::walk(&pb, &mut c, &mut admit).map(|_| c.0)
        }
    };
    let items = items.map_err(|e| wrap(signal, e))?;
    Ok(Counts { items, rejected: admit.rejected(), converted_bytes: admit.converted_bytes() })
}

/// Exports a batch through the Arrow C Data Interface (as a struct array):
/// no copy, the buffers move to the importer.
pub fn export_batch(batch: RecordBatch) -> Result<(FFI_ArrowSchema, FFI_ArrowArray)> {
    let data = arrow_array::StructArray::from(batch).into();
    let (array, schema) = arrow_array::ffi::to_ffi(&data)?;
    Ok((schema, array))
}
