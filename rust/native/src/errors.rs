//! The exception tree, declared once, and the one conversion into it.
//!
//! Every engine error type maps to exactly one Python exception through
//! `ToPyErr`; `without_gil` runs an engine call with the GIL released and
//! converts its error, for the WAL and the OTLP bindings alike.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use signaldb_otlp::DecodeError;
use signaldb_wal::WalError as EngineError;

create_exception!(signaldb._native, WalError, PyException, "A write-ahead log operation failed.");
create_exception!(
    signaldb._native,
    WalFullError,
    WalError,
    "The WAL disk is full: the append was rolled back; retry once space is free."
);
// The OTLP exceptions subclass ValueError: bad input, not a failed operation.
create_exception!(
    signaldb._native,
    OtlpDecodeError,
    PyValueError,
    "A malformed, truncated or invalid OTLP request; the message names the field."
);
create_exception!(
    signaldb._native,
    OtlpTooLargeError,
    OtlpDecodeError,
    "A well-formed OTLP request whose rows would pass the conversion's size limit."
);
// A panic is a bug, but one request or record must not take the process down
// (nor loop it on replay): it becomes this exception for that call.
create_exception!(
    signaldb._native,
    NativePanicError,
    PyException,
    "A bug in the Rust core (a panic), caught at the boundary; the message says where."
);
create_exception!(
    signaldb._native,
    OtlpContentTypeError,
    PyValueError,
    "A content type other than application/x-protobuf or application/json."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("WalError", py.get_type::<WalError>())?;
    m.add("WalFullError", py.get_type::<WalFullError>())?;
    m.add("OtlpDecodeError", py.get_type::<OtlpDecodeError>())?;
    m.add("OtlpTooLargeError", py.get_type::<OtlpTooLargeError>())?;
    m.add("OtlpContentTypeError", py.get_type::<OtlpContentTypeError>())?;
    m.add("NativePanicError", py.get_type::<NativePanicError>())?;
    m.add_function(wrap_pyfunction!(debug_panic, m)?)?;
    Ok(())
}

/// Panics inside `without_gil` on purpose: the tests' way to show a panic in
/// the core becomes `NativePanicError` instead of ending the process.
#[pyfunction]
fn debug_panic(py: Python<'_>, message: String) -> PyResult<()> {
    without_gil(py, || -> Result<(), DecodeError> { panic!("{message}") })
}

/// An engine error, as the Python exception it becomes.
pub trait ToPyErr {
    fn to_py_err(self) -> PyErr;
}

impl ToPyErr for EngineError {
    fn to_py_err(self) -> PyErr {
        match self {
            EngineError::Full(_) => WalFullError::new_err(self.to_string()),
            EngineError::InvalidArgument(_) => PyValueError::new_err(self.to_string()),
            other => WalError::new_err(other.to_string()),
        }
    }
}

impl ToPyErr for DecodeError {
    fn to_py_err(self) -> PyErr {
        if self.is_too_large() {
            OtlpTooLargeError::new_err(self.to_string())
        } else {
            OtlpDecodeError::new_err(self.to_string())
        }
    }
}

pub fn to_py_err(e: impl ToPyErr) -> PyErr {
    e.to_py_err()
}

/// An OTLP body whose HTTP Content-Type is neither protobuf nor JSON.
pub fn unsupported_content_type(content_type: &str) -> PyErr {
    OtlpContentTypeError::new_err(format!(
        "unsupported content type {content_type:?}: expected application/x-protobuf or application/json"
    ))
}

/// Runs `f` with the GIL released and converts its error. Every blocking or
/// lock-taking call into an engine goes through here. A panic inside `f`
/// becomes `NativePanicError` for this call (pyo3's own `PanicException`
/// derives from `BaseException`, which `except Exception` does not catch).
pub fn without_gil<T, E, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: Send + FnOnce() -> Result<T, E>,
    T: Send,
    E: Send + ToPyErr,
{
    match py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))) {
        Ok(result) => result.map_err(ToPyErr::to_py_err),
        Err(payload) => Err(NativePanicError::new_err(panic_message(payload.as_ref()))),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".to_owned());
    format!("internal error in the Rust core: {what}")
}
