//! Bindings for the WAL engine: `NativeWal`, `Entry`, and the read-only
//! inspection functions used by `signaldb-wal`.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::PyBaseException;
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyIterator, PyList, PyMemoryView};
use pyo3::IntoPyObjectExt;
use signaldb_wal::format::HeaderState;
use signaldb_wal::scan::DamageKind;
use signaldb_wal::{inspect, metadata, Config, Kind, SyncMode, Wal, WalError as EngineError};

use crate::errors::{released, to_py_err, without_gil};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeWal>()?;
    m.add_class::<PyEntry>()?;
    m.add_class::<PyWalStats>()?;
    m.add("KIND_TRACES", Kind::Traces as u8)?;
    m.add("KIND_LOGS", Kind::Logs as u8)?;
    m.add("KIND_METRICS", Kind::Metrics as u8)?;
    m.add_function(wrap_pyfunction!(read_metadata, m)?)?;
    m.add_function(wrap_pyfunction!(scan_segment, m)?)?;
    m.add_function(wrap_pyfunction!(read_segment, m)?)?;
    Ok(())
}

/// A payload for the engine: `bytes` is borrowed (the reference held keeps it
/// alive and unchanged while the GIL is released), a `bytearray` or
/// `memoryview` is copied; anything else is a `TypeError` naming its type.
fn payload_arg(obj: &Bound<'_, PyAny>) -> PyResult<PyBackedBytes> {
    // `bytes`, the common case, first: one type check and a reference, no copy.
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Ok(PyBackedBytes::from(bytes.clone()));
    }
    if obj.is_instance_of::<PyByteArray>() {
        return obj.extract::<PyBackedBytes>().map_err(Into::into);
    }
    if obj.is_instance_of::<PyMemoryView>() {
        let copy = obj.py().get_type::<PyBytes>().call1((obj,))?;
        return copy.extract::<PyBackedBytes>().map_err(Into::into);
    }
    let name = obj.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string());
    Err(PyTypeError::new_err(format!("WAL payload must be bytes, not {name}")))
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
            sync_mode: sync_mode.parse::<SyncMode>().map_err(to_py_err)?,
            faults: None,
        };
        let wal = without_gil(py, move || Wal::open(path, cfg))?;
        Ok(NativeWal { wal })
    }

    fn append(&self, py: Python<'_>, payload: &Bound<'_, PyAny>, kind: u8) -> PyResult<u64> {
        let kind = kind_of(kind)?;
        let payload = payload_arg(payload)?;
        without_gil(py, || self.wal.append(&payload, kind))
    }

    /// The payloads are checked and borrowed here, in one pass without
    /// Python calls: a list comprehension in the wrapper cost ~40 us per 1,000.
    fn append_batch(&self, py: Python<'_>, payloads: &Bound<'_, PyList>, kind: u8) -> PyResult<u64> {
        let kind = kind_of(kind)?;
        let payloads = payloads.iter().map(|p| payload_arg(&p)).collect::<PyResult<Vec<_>>>()?;
        without_gil(py, || self.wal.append_batch(payloads.iter().map(|p| &p[..]), kind))
    }

    fn enqueue(&self, py: Python<'_>, payload: PyBackedBytes, kind: u8) -> PyResult<u64> {
        let kind = kind_of(kind)?;
        without_gil(py, || self.wal.enqueue(&payload, kind))
    }

    /// Highest id whose fate is decided (acknowledged unless `take_failure` has it).
    /// An atomic load: no lock, so the GIL stays held.
    fn done_id(&self) -> u64 {
        self.wal.done_id()
    }

    fn has_failures(&self) -> bool {
        self.wal.has_failures()
    }

    /// Why `id`'s async append failed, as the exception to raise (typed by the
    /// error's kind, as a blocking append would raise it); once.
    fn take_failure(&self, py: Python<'_>, id: u64) -> PyResult<Option<Py<PyBaseException>>> {
        let failure = released(py, || self.wal.take_failure(id))?;
        Ok(failure.map(|e| to_py_err(e).into_value(py)))
    }

    /// The `WalPoisonedError` every pending append fails with, once the WAL stopped.
    fn poisoned(&self, py: Python<'_>) -> PyResult<Option<Py<PyBaseException>>> {
        let why = released(py, || self.wal.poisoned())?;
        Ok(why.map(|p| to_py_err(EngineError::Poisoned(p)).into_value(py)))
    }

    fn register_notify_fd(&self, py: Python<'_>, fd: i32) -> PyResult<()> {
        released(py, || self.wal.register_notify_fd(fd))
    }

    fn unregister_notify_fd(&self, py: Python<'_>, fd: i32) -> PyResult<()> {
        released(py, || self.wal.unregister_notify_fd(fd))
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

    fn read_unprocessed(
        &self,
        py: Python<'_>,
        after_id: u64,
        limit: usize,
        max_bytes: usize,
    ) -> PyResult<Vec<Py<PyEntry>>> {
        let entries = without_gil(py, || self.wal.read_unprocessed(after_id, limit, max_bytes))?;
        to_py_entries(py, entries)
    }

    /// Every counter and gauge; reads the oldest unprocessed record's header
    /// from disk. For one figure per request or round, use the calls below.
    fn stats(&self, py: Python<'_>) -> PyResult<PyWalStats> {
        Ok(PyWalStats::from(released(py, || self.wal.stats())?))
    }

    /// `stats().unprocessed_bytes` alone: two short locks, taken without the GIL.
    fn unprocessed_bytes(&self, py: Python<'_>) -> PyResult<u64> {
        released(py, || self.wal.unprocessed_bytes())
    }

    /// `stats().processed_watermark` alone: one short lock, taken without the GIL.
    fn processed_watermark(&self, py: Python<'_>) -> PyResult<u64> {
        released(py, || self.wal.processed_watermark())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        without_gil(py, || self.wal.close())
    }

    #[getter]
    fn closed(&self) -> bool {
        self.wal.is_closed()
    }
}

/// Declares `WalStats` (one attribute per figure, each documented once here)
/// and its read-only mapping face from one list of fields, so the attributes,
/// the keys and `to_dict()` cannot drift apart.
macro_rules! wal_stats {
    ($($(#[doc = $doc:literal])+ $name:ident: $ty:ty = |$s:ident| $value:expr;)+) => {
        /// A WAL's counters and gauges at one moment (`Wal.stats()`); see
        /// docs/wal-format.md "Statistics". Attributes are typed; the object
        /// also reads like the dict `stats()` used to return (`s["key"]`,
        /// `s.get(key)`, `keys()`, `items()`), and `to_dict()` gives that dict
        /// (the `/health` body's `"wal"` object).
        #[pyclass(name = "WalStats", module = "signaldb._native", frozen, get_all)]
        pub struct PyWalStats {
            $($(#[doc = $doc])+ $name: $ty,)+
        }

        impl From<signaldb_wal::WalStats> for PyWalStats {
            fn from(s: signaldb_wal::WalStats) -> PyWalStats {
                PyWalStats { $($name: { let $s = &s; $value },)+ }
            }
        }

        impl PyWalStats {
            const KEYS: &'static [&'static str] = &[$(stringify!($name)),+];

            fn value<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
                Ok(match key {
                    $(stringify!($name) => Some(self.$name.clone().into_bound_py_any(py)?),)+
                    _ => None,
                })
            }
        }
    };
}

wal_stats! {
    /// Entries appended and not yet marked processed.
    unprocessed_entries: u64 = |s| s.unprocessed_entries;
    /// Record bytes of the segments that still hold an unprocessed entry (the backlog).
    unprocessed_bytes: u64 = |s| s.unprocessed_bytes;
    /// Segment files in the WAL.
    total_segments: u64 = |s| s.total_segments;
    /// Bytes the WAL occupies on disk (segments and the prepared spare).
    disk_usage_bytes: u64 = |s| s.disk_usage_bytes;
    /// When the last fsync finished (RFC 3339), or None before the first.
    last_flush: Option<String> = |s| s.last_flush.clone();
    /// The id the next append gets.
    next_id: u64 = |s| s.next_id;
    /// Every id at or below it is processed.
    processed_watermark: u64 = |s| s.processed_watermark;
    /// Entries appended since open.
    appended_entries: u64 = |s| s.appended_entries;
    /// Payload bytes appended since open.
    appended_bytes: u64 = |s| s.appended_bytes;
    /// Entries marked processed since open.
    processed_entries: u64 = |s| s.processed_entries;
    /// Corrupt entries found (and skipped) since open.
    corrupt_entries: u64 = |s| s.corrupt_entries;
    /// Bytes of those corrupt entries.
    corrupt_bytes: u64 = |s| s.corrupt_bytes;
    /// Torn tails cut off at open.
    torn_tails_truncated: u64 = |s| s.torn_tails_truncated;
    /// Appends that failed (disk full, I/O error).
    failed_appends: u64 = |s| s.failed_appends;
    /// fsync/fdatasync calls since open.
    fsync_count: u64 = |s| s.fsync_count;
    /// Seconds spent in fsync since open.
    fsync_seconds_total: f64 = |s| s.fsync_seconds_total;
    /// The slowest fsync since open, in seconds.
    fsync_seconds_max: f64 = |s| s.fsync_seconds_max;
    /// Cumulative fsync histogram: `(upper bound in seconds, count)`, the last bound +Inf.
    fsync_duration_buckets: Vec<(f64, u64)> = |s| s.fsync_histogram.buckets.clone();
    /// Segment files created since open.
    segments_created: u64 = |s| s.segments_created;
    /// Processed segment files deleted since open.
    segments_deleted: u64 = |s| s.segments_deleted;
    /// Segments started in a processed segment's file (recycled) instead of a new one.
    segments_recycled: u64 = |s| s.segments_recycled;
    /// Processed segments' files that could not be kept or reused (deleted; a fresh segment made instead).
    recycle_failures: u64 = |s| s.recycle_failures;
    /// 1 when this open refused `metadata.json` as unusable (every entry replayed), else 0.
    checkpoints_refused: u64 = |s| s.checkpoints_refused;
    /// `metadata.json` checkpoints written since open.
    metadata_writes: u64 = |s| s.metadata_writes;
    /// Append time (ns since the epoch) of the oldest unprocessed entry, or None.
    oldest_unprocessed_timestamp_ns: Option<i64> = |s| s.oldest_unprocessed_timestamp_ns;
    /// True once a failed fsync or write stopped the WAL (fail-stop).
    poisoned: bool = |s| s.poisoned.is_some();
    /// Why the WAL stopped, or None.
    poisoned_reason: Option<String> = |s| s.poisoned.clone();
    /// "immediate" or "batched".
    sync_mode: &'static str = |s| if s.sync_mode == SyncMode::Immediate { "immediate" } else { "batched" };
}

#[pymethods]
impl PyWalStats {
    fn __getitem__<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        self.value(py, key)?.ok_or_else(|| PyKeyError::new_err(key.to_owned()))
    }

    #[pyo3(signature = (key, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        Ok(self.value(py, key)?.or(default))
    }

    fn __contains__(&self, key: &str) -> bool {
        Self::KEYS.contains(&key)
    }

    fn __len__(&self) -> usize {
        Self::KEYS.len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyIterator>> {
        PyList::new(py, Self::KEYS)?.try_iter()
    }

    fn keys(&self) -> Vec<&'static str> {
        Self::KEYS.to_vec()
    }

    fn values<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        Self::KEYS.iter().map(|k| Ok(self.value(py, k)?.expect("a known key"))).collect()
    }

    fn items<'py>(&self, py: Python<'py>) -> PyResult<Vec<(&'static str, Bound<'py, PyAny>)>> {
        Self::KEYS.iter().map(|k| Ok((*k, self.value(py, k)?.expect("a known key")))).collect()
    }

    /// The figures as a plain dict, key for key as `stats()` returned it before.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.items(py)? {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("WalStats({})", self.to_dict(py)?.repr()?))
    }
}

/// `<wal_dir>/metadata.json` as a dict (read-only); None when absent or invalid.
#[pyfunction]
fn read_metadata<'py>(py: Python<'py>, wal_dir: PathBuf) -> PyResult<Option<Bound<'py, PyDict>>> {
    let Some(m) = released(py, || metadata::load(&wal_dir).ok().flatten())? else { return Ok(None) };
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
    let r = without_gil(py, || {
        inspect::scan_segment_file(&path, is_last, above_id)
            .map_err(|e| EngineError::io(format!("reading {}", path.display()), e))
    })?;
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

/// Read-only: up to `limit` valid entries of a segment file from `offset`,
/// above `after_id` (the last id of the page before; 0 at the start).
/// Returns them, the offset and the id to pass for the next page. `is_last`:
/// no segment follows (else the next one's header may bound this one's data).
#[pyfunction]
#[pyo3(signature = (path, offset, after_id, limit, is_last = true))]
fn read_segment(
    py: Python<'_>,
    path: PathBuf,
    offset: u64,
    after_id: u64,
    limit: usize,
    is_last: bool,
) -> PyResult<(Vec<Py<PyEntry>>, u64, u64)> {
    let from = inspect::SegmentCursor { offset, after_id };
    let (entries, next) = without_gil(py, || {
        inspect::read_segment_entries(&path, is_last, from, limit)
            .map_err(|e| EngineError::io(format!("reading {}", path.display()), e))
    })?;
    Ok((to_py_entries(py, entries)?, next.offset, next.after_id))
}
