//! Bindings for the WAL engine: `NativeWal`, `Entry`, and the read-only
//! inspection functions used by `signaldb-wal`.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyList};
use signaldb_wal::format::HeaderState;
use signaldb_wal::scan::DamageKind;
use signaldb_wal::{inspect, metadata, Config, Kind, SyncMode, Wal, WalError as EngineError};

use crate::errors::without_gil;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeWal>()?;
    m.add_class::<PyEntry>()?;
    m.add("KIND_TRACES", Kind::Traces as u8)?;
    m.add("KIND_LOGS", Kind::Logs as u8)?;
    m.add("KIND_METRICS", Kind::Metrics as u8)?;
    m.add_function(wrap_pyfunction!(read_metadata, m)?)?;
    m.add_function(wrap_pyfunction!(scan_segment, m)?)?;
    m.add_function(wrap_pyfunction!(read_segment, m)?)?;
    Ok(())
}

fn kind_of(code: u8) -> PyResult<Kind> {
    Kind::from_u8(code).ok_or_else(|| PyValueError::new_err(format!("unknown WAL kind code {code}")))
}

fn kind_name(code: u8) -> &'static str {
    Kind::from_u8(code).map_or("unknown", Kind::as_str)
}

/// One WAL entry as read back.
#[pyclass(name = "Entry", module = "signaldb._native", frozen)]
pub struct PyEntry {
    #[pyo3(get)]
    id: u64,
    #[pyo3(get)]
    kind: &'static str,
    #[pyo3(get)]
    timestamp_ns: i64,
    #[pyo3(get)]
    payload: Py<PyBytes>,
}

#[pymethods]
impl PyEntry {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Entry(id={}, kind={:?}, timestamp_ns={}, payload=<{} bytes>)",
            self.id,
            self.kind,
            self.timestamp_ns,
            self.payload.bind(py).as_bytes().len()
        )
    }
}

fn to_py_entries(py: Python<'_>, entries: Vec<signaldb_wal::Entry>) -> PyResult<Vec<Py<PyEntry>>> {
    entries
        .into_iter()
        .map(|e| {
            Py::new(
                py,
                PyEntry {
                    id: e.id,
                    kind: kind_name(e.kind),
                    timestamp_ns: e.timestamp_ns,
                    payload: PyBytes::new(py, &e.payload).unbind(),
                },
            )
        })
        .collect()
}

#[pyclass(module = "signaldb._native", frozen)]
pub struct NativeWal {
    wal: Wal,
}

#[pymethods]
impl NativeWal {
    #[new]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        max_segment_size: u64,
        max_buffer_entries: usize,
        flush_interval_secs: f64,
        sync_mode: &str,
    ) -> PyResult<NativeWal> {
        if !(flush_interval_secs.is_finite() && flush_interval_secs > 0.0) {
            return Err(PyValueError::new_err("flush_interval_secs must be a positive number"));
        }
        let cfg = Config {
            max_segment_size,
            max_buffer_entries,
            flush_interval: Duration::from_secs_f64(flush_interval_secs),
            sync_mode: sync_mode.parse::<SyncMode>().map_err(crate::errors::to_py_err)?,
            faults: None,
        };
        let wal = without_gil(py, move || Wal::open(path, cfg))?;
        Ok(NativeWal { wal })
    }

    fn append(&self, py: Python<'_>, payload: PyBackedBytes, kind: u8) -> PyResult<u64> {
        let kind = kind_of(kind)?;
        without_gil(py, || self.wal.append(&payload, kind))
    }

    fn append_batch(&self, py: Python<'_>, payloads: Vec<PyBackedBytes>, kind: u8) -> PyResult<u64> {
        let kind = kind_of(kind)?;
        without_gil(py, || self.wal.append_batch(payloads.iter().map(|p| &p[..]), kind))
    }

    fn enqueue(&self, py: Python<'_>, payload: PyBackedBytes, kind: u8) -> PyResult<u64> {
        let kind = kind_of(kind)?;
        without_gil(py, || self.wal.enqueue(&payload, kind))
    }

    fn acked_id(&self) -> u64 {
        self.wal.done_id()
    }

    fn has_failures(&self) -> bool {
        self.wal.has_failures()
    }

    fn take_failure(&self, py: Python<'_>, id: u64) -> Option<String> {
        py.detach(|| self.wal.take_failure(id)).map(|e| e.to_string())
    }

    fn poisoned(&self, py: Python<'_>) -> Option<String> {
        py.detach(|| self.wal.poisoned())
            .map(|p| EngineError::Poisoned(p).to_string())
    }

    fn register_notify_fd(&self, py: Python<'_>, fd: i32) {
        py.detach(|| self.wal.register_notify_fd(fd))
    }

    fn unregister_notify_fd(&self, py: Python<'_>, fd: i32) {
        py.detach(|| self.wal.unregister_notify_fd(fd))
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        without_gil(py, || self.wal.flush())
    }

    fn checkpoint(&self, py: Python<'_>) -> PyResult<()> {
        without_gil(py, || self.wal.checkpoint())
    }

    fn mark_processed(&self, py: Python<'_>, ids: Vec<u64>) -> PyResult<()> {
        without_gil(py, || self.wal.mark_processed(&ids))
    }

    fn read_unprocessed(&self, py: Python<'_>, after_id: u64, limit: usize, max_bytes: usize) -> PyResult<Vec<Py<PyEntry>>> {
        let entries = without_gil(py, || self.wal.read_unprocessed(after_id, limit, max_bytes))?;
        to_py_entries(py, entries)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| self.wal.stats());
        let d = PyDict::new(py);
        d.set_item("unprocessed_entries", s.unprocessed_entries)?;
        d.set_item("unprocessed_bytes", s.unprocessed_bytes)?;
        d.set_item("total_segments", s.total_segments)?;
        d.set_item("disk_usage_bytes", s.disk_usage_bytes)?;
        d.set_item("last_flush", s.last_flush)?;
        d.set_item("next_id", s.next_id)?;
        d.set_item("processed_watermark", s.processed_watermark)?;
        d.set_item("appended_entries", s.appended_entries)?;
        d.set_item("appended_bytes", s.appended_bytes)?;
        d.set_item("processed_entries", s.processed_entries)?;
        d.set_item("corrupt_entries", s.corrupt_entries)?;
        d.set_item("corrupt_bytes", s.corrupt_bytes)?;
        d.set_item("torn_tails_truncated", s.torn_tails_truncated)?;
        d.set_item("failed_appends", s.failed_appends)?;
        d.set_item("fsync_count", s.fsync_count)?;
        d.set_item("fsync_seconds_total", s.fsync_seconds_total)?;
        d.set_item("fsync_seconds_max", s.fsync_seconds_max)?;
        let buckets: Vec<(f64, u64)> = s.fsync_histogram.buckets.clone();
        d.set_item("fsync_duration_buckets", PyList::new(py, buckets.iter().map(|&(le, c)| vec![le, c as f64]))?)?;
        d.set_item("segments_created", s.segments_created)?;
        d.set_item("segments_deleted", s.segments_deleted)?;
        d.set_item("metadata_writes", s.metadata_writes)?;
        d.set_item("oldest_unprocessed_timestamp_ns", s.oldest_unprocessed_timestamp_ns)?;
        d.set_item("poisoned", s.poisoned.is_some())?;
        d.set_item("poisoned_reason", s.poisoned)?;
        d.set_item("sync_mode", if s.sync_mode == SyncMode::Immediate { "immediate" } else { "batched" })?;
        Ok(d)
    }

    fn unprocessed_bytes(&self) -> u64 {
        self.wal.unprocessed_bytes()
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        without_gil(py, || self.wal.close())
    }

    #[getter]
    fn closed(&self) -> bool {
        self.wal.is_closed()
    }
}

/// `<wal_dir>/metadata.json` as a dict (read-only); None when absent or invalid.
#[pyfunction]
fn read_metadata<'py>(py: Python<'py>, wal_dir: PathBuf) -> PyResult<Option<Bound<'py, PyDict>>> {
    let Ok(Some(m)) = py.detach(|| metadata::load(&wal_dir)) else { return Ok(None) };
    let d = PyDict::new(py);
    d.set_item("format_version", m.format_version)?;
    d.set_item("next_id", m.next_id)?;
    d.set_item("processed_watermark", m.processed_watermark)?;
    d.set_item("processed_ids", m.processed_ids)?;
    d.set_item("last_flush", m.last_flush)?;
    let segs: Vec<(u64, Option<u64>, Option<u64>)> =
        m.segments.iter().map(|s| (s.index, s.first_id, s.last_id)).collect();
    d.set_item("segments", segs)?;
    Ok(Some(d))
}

/// Read-only scan of one segment file, verifying every CRC.
#[pyfunction]
#[pyo3(signature = (path, is_last = false, above_id = 0))]
fn scan_segment<'py>(py: Python<'py>, path: PathBuf, is_last: bool, above_id: u64) -> PyResult<Bound<'py, PyDict>> {
    let r = py
        .detach(|| inspect::scan_segment_file(&path, is_last, above_id))
        .map_err(|e| crate::errors::to_py_err(EngineError::io(format!("reading {}", path.display()), e)))?;
    let d = PyDict::new(py);
    let header = match r.header {
        HeaderState::Valid(h) => format!("valid (version {}, base id {})", h.version, h.base_id),
        HeaderState::Zero => "zero".into(),
        HeaderState::Damaged => "damaged".into(),
        HeaderState::UnsupportedVersion(v) => format!("unsupported version {v}"),
    };
    d.set_item("header", header)?;
    d.set_item("header_ok", matches!(r.header, HeaderState::Valid(_)))?;
    d.set_item("file_len", r.file_len)?;
    d.set_item("entries", r.entries)?;
    d.set_item("first_id", r.first_id)?;
    d.set_item("last_id", r.last_id)?;
    d.set_item("data_end", r.data_end)?;
    d.set_item("payload_bytes", r.payload_bytes)?;
    d.set_item("entries_above_id", r.entries_above)?;
    d.set_item("traces", r.by_kind[0])?;
    d.set_item("logs", r.by_kind[1])?;
    d.set_item("metrics", r.by_kind[2])?;
    let damages: Vec<(&str, usize, usize)> = r
        .damages
        .iter()
        .map(|x| (if x.kind == DamageKind::Corrupt { "corrupt" } else { "torn_tail" }, x.offset, x.len))
        .collect();
    d.set_item("damages", damages)?;
    Ok(d)
}

/// Read-only: up to `limit` valid entries of a segment file from `offset`.
#[pyfunction]
fn read_segment(py: Python<'_>, path: PathBuf, offset: u64, limit: usize) -> PyResult<(Vec<Py<PyEntry>>, u64)> {
    let (entries, next) = py
        .detach(|| inspect::read_segment_entries(&path, offset, limit))
        .map_err(|e| crate::errors::to_py_err(EngineError::io(format!("reading {}", path.display()), e)))?;
    Ok((to_py_entries(py, entries)?, next))
}
