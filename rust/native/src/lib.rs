//! `signaldb._native`: the PyO3 boundary over the Rust engines.
//!
//! Deliberately thin: argument conversion, GIL release around every call into
//! an engine (`without_gil`), and one mapping from engine errors to Python
//! exceptions (`to_py_err`). Behaviour lives in the engine crates, which have
//! their own tests; the Python package `signaldb` is the public face.

use pyo3::prelude::*;

mod errors;
mod otlp;
mod wal;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Route Rust `log` records to Python's `logging` (logger names start with "signaldb_wal").
    pyo3_log::init();
    errors::register(m)?;
    wal::register(m)?;
    otlp::register(m)?;
    Ok(())
}
