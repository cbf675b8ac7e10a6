//! The exception tree, declared once, and the one conversion into it.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use signaldb_wal::WalError as EngineError;

create_exception!(signaldb._native, WalError, PyException, "A write-ahead log operation failed.");
create_exception!(
    signaldb._native,
    WalFullError,
    WalError,
    "The WAL disk is full: the append was rolled back; retry once space is free."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("WalError", py.get_type::<WalError>())?;
    m.add("WalFullError", py.get_type::<WalFullError>())?;
    Ok(())
}

pub fn to_py_err(e: EngineError) -> PyErr {
    match e {
        EngineError::Full(_) => WalFullError::new_err(e.to_string()),
        EngineError::InvalidArgument(_) => PyValueError::new_err(e.to_string()),
        other => WalError::new_err(other.to_string()),
    }
}

/// Runs `f` with the GIL released and converts its error. Every blocking or
/// lock-taking call into the engine goes through here.
pub fn without_gil<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: Send + FnOnce() -> signaldb_wal::Result<T>,
    T: Send,
{
    py.detach(f).map_err(to_py_err)
}
