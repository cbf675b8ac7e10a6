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
    OtlpContentTypeError,
    PyValueError,
    "A content type other than application/x-protobuf or application/json."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("WalError", py.get_type::<WalError>())?;
    m.add("WalFullError", py.get_type::<WalFullError>())?;
    m.add("OtlpDecodeError", py.get_type::<OtlpDecodeError>())?;
    m.add("OtlpContentTypeError", py.get_type::<OtlpContentTypeError>())?;
    Ok(())
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
        OtlpDecodeError::new_err(self.to_string())
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
/// lock-taking call into an engine goes through here.
pub fn without_gil<T, E, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: Send + FnOnce() -> Result<T, E>,
    T: Send,
    E: Send + ToPyErr,
{
    py.detach(f).map_err(ToPyErr::to_py_err)
}
