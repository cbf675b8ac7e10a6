//! The exception tree, declared once, and the one conversion into it.
//!
//! Every engine error type maps to exactly one Python exception through
//! `ToPyErr`, chosen by the error's kind, never by its message text;
//! `without_gil` runs an engine call with the GIL released and converts its
//! error, for the WAL and the OTLP bindings alike.
//!
//! ```text
//! WalError(Exception)
//! ├── WalFullError          disk full: the append was rolled back, retry later
//! ├── WalPoisonedError      an fsync/write failed: fail-stop, restart to replay
//! ├── WalClosedError        the WAL was closed
//! ├── WalInUseError         another process or handle holds the directory
//! └── WalIoError(OSError)   any other I/O failure, errno/strerror/filename set;
//!     ├── WalFileNotFoundError(FileNotFoundError)
//!     ├── WalPermissionError(PermissionError)
//!     ├── WalFileExistsError(FileExistsError)
//!     ├── WalNotADirectoryError(NotADirectoryError)
//!     └── WalIsADirectoryError(IsADirectoryError)
//! ValueError: WalError::InvalidArgument; OtlpDecodeError → OtlpTooLargeError;
//!             OtlpContentTypeError
//! NativePanicError(Exception): a panic in the core, caught at the boundary
//! ```
//!
//! The `WalIoError` family follows polars' error.rs: an `io::ErrorKind` maps
//! to the matching `OSError` subclass, so `except PermissionError` works on a
//! WAL error as it does on `open()`'s. An unsupported segment format stays a
//! bare `WalError`.

use std::io;
use std::path::Path;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use signaldb_otlp::DecodeError;
use signaldb_wal::WalError as EngineError;

create_exception!(signaldb._native, WalError, PyException, "A write-ahead log operation failed.");
create_exception!(
    signaldb._native,
    WalFullError,
    WalError,
    "The WAL disk is full: the append was rolled back; retry once space is free."
);
create_exception!(
    signaldb._native,
    WalPoisonedError,
    WalError,
    "An fsync or write failed earlier: the WAL stopped acknowledging (fail-stop); restart to replay."
);
create_exception!(signaldb._native, WalClosedError, WalError, "The WAL was closed.");
create_exception!(
    signaldb._native,
    WalInUseError,
    WalError,
    "Another process (or another handle in this one) has the WAL directory open."
);

/// The `WalIoError` family: `(name, io kind, OSError subclass, doc)`. The first
/// row is the family's base, for every io kind not listed. `create_exception!`
/// takes one base only, so these are built with `type()` when the module loads.
const IO_CLASSES: [(&str, Option<io::ErrorKind>, &str, &str); 6] = [
    ("WalIoError", None, "OSError", "An I/O failure in the WAL; errno, strerror and filename as on OSError."),
    ("WalFileNotFoundError", Some(io::ErrorKind::NotFound), "FileNotFoundError", "A WAL file or directory is missing."),
    (
        "WalPermissionError",
        Some(io::ErrorKind::PermissionDenied),
        "PermissionError",
        "The WAL directory or a file in it may not be written.",
    ),
    (
        "WalFileExistsError",
        Some(io::ErrorKind::AlreadyExists),
        "FileExistsError",
        "A WAL file that must be new exists.",
    ),
    (
        "WalNotADirectoryError",
        Some(io::ErrorKind::NotADirectory),
        "NotADirectoryError",
        "A WAL path component is not a directory.",
    ),
    ("WalIsADirectoryError", Some(io::ErrorKind::IsADirectory), "IsADirectoryError", "A WAL file path is a directory."),
];

/// The classes of `IO_CLASSES`, in its order.
static IO_TYPES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

fn io_types(py: Python<'_>) -> PyResult<&Vec<Py<PyType>>> {
    IO_TYPES.get_or_try_init(py, || {
        let builtins = py.import("builtins")?;
        let type_ = py.get_type::<PyType>();
        let mut types: Vec<Py<PyType>> = Vec::with_capacity(IO_CLASSES.len());
        for (name, _, os_base, doc) in IO_CLASSES {
            let family = match types.first() {
                Some(base) => base.bind(py).clone().into_any(),
                None => py.get_type::<WalError>().into_any(),
            };
            let bases = PyTuple::new(py, [family, builtins.getattr(os_base)?])?;
            let attrs = PyDict::new(py);
            attrs.set_item("__module__", "signaldb._native")?;
            attrs.set_item("__doc__", doc)?;
            // str() stays the engine's message: OSError's own __str__ would render
            // "[Errno 13] Permission denied: 'path'" once errno and filename are set.
            attrs.set_item("__str__", builtins.getattr("BaseException")?.getattr("__str__")?)?;
            let cls = type_.call1((name, bases, attrs))?.cast_into::<PyType>()?;
            types.push(cls.unbind());
        }
        Ok(types)
    })
}

/// A `WalIoError` (or the subclass for the error's io kind) whose message is
/// `message` (as `str()` shows it) and whose `errno`, `strerror` and
/// `filename` are set as `OSError` would set them.
fn io_error(message: String, source: &io::Error, filename: Option<&Path>) -> PyErr {
    Python::attach(|py| {
        let build = || -> PyResult<PyErr> {
            let types = io_types(py)?;
            let row = IO_CLASSES.iter().position(|(_, kind, _, _)| *kind == Some(source.kind())).unwrap_or(0);
            let exc = types[row].bind(py).call1((message.clone(),))?;
            if let Some(code) = source.raw_os_error() {
                exc.setattr("errno", code)?;
                let text = io::Error::from_raw_os_error(code).to_string();
                let strerror = text.split(" (os error").next().unwrap_or(&text).to_owned();
                exc.setattr("strerror", strerror)?;
            }
            if let Some(path) = filename {
                exc.setattr("filename", path.to_string_lossy())?;
            }
            Ok(PyErr::from_value(exc))
        };
        build().unwrap_or_else(|e| e)
    })
}

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
    m.add("WalPoisonedError", py.get_type::<WalPoisonedError>())?;
    m.add("WalClosedError", py.get_type::<WalClosedError>())?;
    m.add("WalInUseError", py.get_type::<WalInUseError>())?;
    for ((name, ..), cls) in IO_CLASSES.iter().zip(io_types(py)?) {
        m.add(*name, cls.bind(py))?;
    }
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

/// The one place an engine error's kind picks its Python class; the message
/// stays the engine's `Display` (DESIGN.md: "WAL directory not writable: …").
impl ToPyErr for EngineError {
    fn to_py_err(self) -> PyErr {
        let message = self.to_string();
        match self {
            EngineError::Full(_) => WalFullError::new_err(message),
            EngineError::Poisoned(_) => WalPoisonedError::new_err(message),
            EngineError::Closed => WalClosedError::new_err(message),
            EngineError::InUse { .. } => WalInUseError::new_err(message),
            EngineError::InvalidArgument(_) => PyValueError::new_err(message),
            EngineError::NotWritable { path, source } => io_error(message, &source, Some(&path)),
            EngineError::Io { source, .. } => io_error(message, &source, None),
            EngineError::UnsupportedFormat { .. } => WalError::new_err(message),
        }
    }
}

/// For calls that cannot fail but still go through `without_gil` (to release
/// the GIL around a lock, and to turn a panic into `NativePanicError`).
impl ToPyErr for std::convert::Infallible {
    fn to_py_err(self) -> PyErr {
        match self {}
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

/// `without_gil` for an engine call that cannot fail: a lock taken, a value read.
pub fn released<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: Send + FnOnce() -> T,
    T: Send,
{
    without_gil(py, || Ok::<T, std::convert::Infallible>(f()))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".to_owned());
    format!("internal error in the Rust core: {what}")
}
