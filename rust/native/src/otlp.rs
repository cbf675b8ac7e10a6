//! Bindings for the OTLP → Arrow engine (`signaldb_otlp`).
//!
//! Batches cross into Python through the Arrow C Data Interface: each table
//! is a pair of PyCapsules named "arrow_schema" and "arrow_array" (a struct
//! array = a record batch), which `pyarrow.RecordBatch._import_from_c_capsule`
//! imports without copying. The conversion runs with the GIL released; its
//! exceptions (`OtlpDecodeError`, `OtlpContentTypeError`) are declared with
//! the others in errors.rs.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyCapsule;
use signaldb_otlp::{Encoding, Policy, Signal, TimeWindow, CONVERT_CEILING};

use crate::errors::{unsupported_content_type, without_gil};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(otlp_convert, m)?)?;
    m.add_function(wrap_pyfunction!(otlp_count_items, m)?)?;
    m.add("OTLP_CONVERT_CEILING", CONVERT_CEILING)?;
    Ok(())
}

fn args(kind: &str, content_type: &str) -> PyResult<(Signal, Encoding)> {
    let signal = Signal::parse(kind).ok_or_else(|| {
        PyValueError::new_err(format!("unknown OTLP kind {kind:?}: expected traces, logs or metrics"))
    })?;
    let enc = Encoding::from_content_type(content_type).ok_or_else(|| unsupported_content_type(content_type))?;
    Ok((signal, enc))
}

/// `window` is `(min_ns, max_ns, now_ns)` or None.
fn policy(window: Option<(i64, i64, i64)>, max_converted_bytes: u64) -> PyResult<Policy> {
    if max_converted_bytes > CONVERT_CEILING {
        return Err(PyValueError::new_err(format!(
            "max_converted_bytes {max_converted_bytes} is over the ceiling of {CONVERT_CEILING}"
        )));
    }
    let window = window.map(|(min_ns, max_ns, now_ns)| TimeWindow { min_ns, max_ns, now_ns });
    Ok(Policy { window, max_converted_bytes })
}

/// `(items, rejected by reason, converted bytes)`.
type CountsOut = (u64, Vec<(&'static str, u64)>, u64);

type Exported =
    (Vec<(&'static str, signaldb_otlp::FFI_ArrowSchema, signaldb_otlp::FFI_ArrowArray)>, Vec<(&'static str, u64)>, u64);

/// Converts one export request. Returns `(tables, rejected, items)` where
/// tables is a list of `(name, schema_capsule, array_capsule)`.
#[pyfunction]
#[pyo3(signature = (kind, body, content_type = "application/x-protobuf", window = None, max_converted_bytes = CONVERT_CEILING))]
#[allow(clippy::type_complexity)]
fn otlp_convert<'py>(
    py: Python<'py>,
    kind: &str,
    body: PyBackedBytes,
    content_type: &str,
    window: Option<(i64, i64, i64)>,
    max_converted_bytes: u64,
) -> PyResult<(Vec<(&'static str, Bound<'py, PyCapsule>, Bound<'py, PyCapsule>)>, Vec<(&'static str, u64)>, u64)> {
    let (signal, enc) = args(kind, content_type)?;
    let policy = policy(window, max_converted_bytes)?;
    let (tables, rejected, items): Exported = without_gil(py, || {
        let conv = signaldb_otlp::convert_with(signal, &body, enc, &policy)?;
        let mut out = Vec::with_capacity(conv.tables.len());
        for (name, batch) in conv.tables {
            let (schema, array) = signaldb_otlp::export_batch(batch)?;
            out.push((name, schema, array));
        }
        Ok::<_, signaldb_otlp::DecodeError>((out, conv.rejected, conv.items))
    })?;
    let mut out = Vec::with_capacity(tables.len());
    for (name, schema, array) in tables {
        let s = PyCapsule::new_with_value(py, schema, c"arrow_schema")?;
        let a = PyCapsule::new_with_value(py, array, c"arrow_array")?;
        out.push((name, s, a));
    }
    Ok((out, rejected, items))
}

/// Validates a request as `otlp_convert` would under the same policy and
/// counts its items without building arrays. Returns `(items, rejected,
/// converted_bytes)`.
#[pyfunction]
#[pyo3(signature = (kind, body, content_type = "application/x-protobuf", window = None, max_converted_bytes = CONVERT_CEILING))]
fn otlp_count_items(
    py: Python<'_>,
    kind: &str,
    body: PyBackedBytes,
    content_type: &str,
    window: Option<(i64, i64, i64)>,
    max_converted_bytes: u64,
) -> PyResult<CountsOut> {
    let (signal, enc) = args(kind, content_type)?;
    let policy = policy(window, max_converted_bytes)?;
    let counts = without_gil(py, || signaldb_otlp::count_items_with(signal, &body, enc, &policy))?;
    Ok((counts.items, counts.rejected, counts.converted_bytes))
}
