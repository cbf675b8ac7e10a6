//! The engine: appends with group commit, acknowledgement, processed marks,
//! checkpoints, segment rotation and deletion, and the tail reader.
//!
//! # Threads and locks
//!
//! Appenders encode their records and queue them (`queue` lock: ids are handed
//! out in queue order). Whoever holds `io` drains the queue in order and
//! writes it; so records reach the file in id order.
//!
//! In `immediate` mode one appender at a time is the *leader*: it drains up to
//! `max_buffer_entries` records, writes them with one `pwritev` and one
//! `fdatasync`, publishes the result and wakes everyone. Appenders that queued
//! meanwhile wait, and the first to wake leads the next group. A lone writer
//! leads its own group at once (no timer, no hand-off); under load the groups
//! grow to whatever arrived during the previous fsync. `append_async` callers
//! cannot block, so the *flusher* thread leads on their behalf.
//!
//! In `batched` mode appenders write their own records (page cache) and
//! return; the flusher fsyncs when `max_buffer_entries` entries are unsynced
//! or `flush_interval` has passed.
//!
//! The *housekeeper* thread prepares the next segment file ahead of rotation,
//! writes the checkpoint (`metadata.json`) at most every
//! `CHECKPOINT_INTERVAL` when processed marks changed, and then deletes sealed
//! segments whose entries are all processed: after the checkpoint that allows
//! it is durable.
//!
//! Lock order: `io` → `queue`; `io` → `table`; `ack` is never held while
//! taking another lock except `queue` (for a cheap length check).
//!
//! # Durability ordering (immediate mode)
//!
//! write(records) → fdatasync(segment) → publish `done_id` → wake waiters.
//! At rotation: fdatasync(old segment) → rename spare → fsync(dir) → write
//! header + records → fdatasync(new segment). An fsync error poisons the WAL:
//! it is never retried, nothing more is acknowledged (fail-stop).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{is_out_of_space, Result, WalError};
use crate::faults::{FaultAction, FaultInjector, FaultPoint};
use crate::format::{encode_record, Kind, MAX_PAYLOAD_LEN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::fsutil;
use crate::metadata::{self, Metadata, SegmentMeta};
use crate::processed::{Mark, Processed};
use crate::reader::{Entry, SegmentReader, Step};
use crate::recovery::{self, QUARANTINE_DIR, SEGMENTS_DIR};
use crate::segment::{self, ActiveSegment, SegmentInfo, Spare};
use crate::stats::{self, Stats};

const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
const HOUSEKEEPING_TICK: Duration = Duration::from_millis(200);
const SPARE_RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// An fsync slower than this is logged (etcd warns at one second too).
const SLOW_FSYNC: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Acknowledge after fdatasync (group commit).
    Immediate,
    /// Acknowledge after write(); fdatasync by buffer size and interval.
    Batched,
}

impl std::str::FromStr for SyncMode {
    type Err = WalError;
    fn from_str(s: &str) -> Result<SyncMode> {
        match s {
            "immediate" => Ok(SyncMode::Immediate),
            "batched" => Ok(SyncMode::Batched),
            _ => Err(WalError::InvalidArgument(format!("sync_mode must be 'immediate' or 'batched', not {s:?}"))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub max_segment_size: u64,
    pub max_buffer_entries: usize,
    pub flush_interval: Duration,
    pub sync_mode: SyncMode,
    /// Failpoints for fault-injection tests; None in production.
    pub faults: Option<Arc<FaultInjector>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_segment_size: 1 << 20,
            max_buffer_entries: 1000,
            flush_interval: Duration::from_secs(10),
            sync_mode: SyncMode::Immediate,
            faults: None,
        }
    }
}

impl Config {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(WalError::InvalidArgument(m.to_string()));
        if self.max_segment_size < 4096 {
            return bad("max_segment_size must be at least 4096 bytes");
        }
        if self.max_segment_size > u32::MAX as u64 {
            return bad("max_segment_size must be below 4 GiB");
        }
        if self.max_buffer_entries == 0 {
            return bad("max_buffer_entries must be at least 1");
        }
        if self.flush_interval.is_zero() {
            return bad("flush_interval must be positive");
        }
        Ok(())
    }
}

/// A point-in-time view for `stats()`.
#[derive(Clone, Debug)]
pub struct WalStats {
    pub unprocessed_entries: u64,
    pub unprocessed_bytes: u64,
    pub total_segments: u64,
    pub disk_usage_bytes: u64,
    pub last_flush: Option<String>,
    pub next_id: u64,
    pub processed_watermark: u64,
    pub appended_entries: u64,
    pub appended_bytes: u64,
    pub processed_entries: u64,
    pub corrupt_entries: u64,
    pub corrupt_bytes: u64,
    pub torn_tails_truncated: u64,
    pub failed_appends: u64,
    pub fsync_count: u64,
    pub fsync_seconds_total: f64,
    pub fsync_seconds_max: f64,
    pub fsync_histogram: stats::FsyncHistogram,
    pub segments_created: u64,
    pub segments_deleted: u64,
    pub metadata_writes: u64,
    pub oldest_unprocessed_timestamp_ns: Option<i64>,
    pub poisoned: Option<String>,
    pub sync_mode: SyncMode,
}

/// An encoded record waiting to be written.
struct Queued {
    id: u64,
    /// First record of an append call (one waiting caller per such record).
    starts_call: bool,
    bytes: Vec<u8>,
}

struct Queue {
    next_id: u64,
    items: VecDeque<Queued>,
    /// Append calls with records in `items`.
    callers: usize,
    /// A leader is waiting for more callers to join its group.
    leader_gathering: bool,
}

/// `[start, end)` index ranges of the append calls in a group, in order.
fn call_bounds(group: &[Queued]) -> Vec<(usize, usize)> {
    let mut bounds: Vec<(usize, usize)> = Vec::new();
    for (i, r) in group.iter().enumerate() {
        match bounds.last_mut() {
            Some(last) if !r.starts_call => last.1 = i + 1,
            _ => bounds.push((i, i + 1)),
        }
    }
    bounds
}

impl Queue {
    /// Takes up to `max` records, oldest first, never splitting an append
    /// call (a batch larger than `max` is a group of its own); returns them
    /// and how many callers they serve.
    fn take(&mut self, max: usize) -> (Vec<Queued>, usize) {
        let mut n = self.items.len().min(max.max(1));
        while n < self.items.len() && !self.items[n].starts_call {
            n += 1;
        }
        let group: Vec<Queued> = self.items.drain(..n).collect();
        let callers = group.iter().filter(|r| r.starts_call).count();
        self.callers -= callers;
        (group, callers)
    }
}

struct Io {
    active: Option<ActiveSegment>,
    /// Highest id written to the OS.
    written_id: u64,
}

/// Why an append failed: out of space (retry later) or the WAL stopped.
#[derive(Clone, Debug)]
struct Failure {
    kind: FailKind,
    detail: String,
}

#[derive(Clone, Copy, Debug)]
enum FailKind {
    Full,
    Poisoned,
    Io,
}

impl Failure {
    fn into_error(self) -> WalError {
        match self.kind {
            FailKind::Full => WalError::Full(self.detail),
            FailKind::Poisoned => WalError::Poisoned(self.detail),
            FailKind::Io => WalError::io("WAL append", std::io::Error::other(self.detail)),
        }
    }
}

#[derive(Default)]
struct AckState {
    /// A leader is writing/syncing a group.
    leader_busy: bool,
    /// Ids whose append failed (rolled back), with the reason.
    failures: HashMap<u64, Failure>,
    poisoned: Option<String>,
    /// Highest id an async appender waits for (the flusher leads until it is done).
    async_wanted: u64,
    /// Batched mode: an fsync is due (buffer threshold reached).
    sync_wanted: bool,
    shutdown: bool,
}

#[derive(Default)]
struct HouseState {
    spare_wanted: bool,
    checkpoint_wanted: bool,
    shutdown: bool,
}

/// Where the last `read_unprocessed` stopped, so the next one resumes there.
#[derive(Clone, Copy)]
struct Cursor {
    after_id: u64,
    segment: u64,
    offset: u64,
}

struct Inner {
    dir: PathBuf,
    seg_dir: PathBuf,
    cfg: Config,
    /// The directory lock; released (dropped) at close.
    dir_lock: Mutex<Option<File>>,
    queue: Mutex<Queue>,
    /// Signalled when a caller queues while a leader is gathering its group.
    arrivals_cv: Condvar,
    /// Callers served by the previous group commit: how many to expect back.
    last_group_callers: AtomicU64,
    last_fsync_nanos: AtomicU64,
    io: Mutex<Io>,
    table: RwLock<Vec<SegmentInfo>>,
    spare: Mutex<Option<Spare>>,
    ack: Mutex<AckState>,
    ack_cv: Condvar,
    flusher_cv: Condvar,
    /// Highest id whose fate is decided: acknowledged, or failed (see `failures`).
    done_id: AtomicU64,
    synced_id: AtomicU64,
    has_failures: AtomicBool,
    /// The last spare preallocation failed (logged once per episode).
    spare_failing: AtomicBool,
    /// When the housekeeper may try preallocating again after a failure.
    spare_retry_at: Mutex<Instant>,
    processed: Mutex<Processed>,
    checkpoint_lock: Mutex<Instant>,
    house: Mutex<HouseState>,
    house_cv: Condvar,
    notify_fds: Mutex<Vec<RawFd>>,
    cursor: Mutex<Option<Cursor>>,
    stats: Stats,
    closed: AtomicBool,
}

/// The write-ahead log. Cheap to share across threads (`&Wal` is enough).
pub struct Wal {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another thread must not take the WAL down with a second panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> WalError {
    move |e| WalError::io(context, e)
}

/// Opens the directory lock, mapping permission problems to `NotWritable`.
fn take_dir_lock(dir: &Path) -> Result<File> {
    use std::os::fd::AsRawFd;
    let not_writable = |e: std::io::Error| WalError::NotWritable { path: dir.to_path_buf(), source: e };
    fsutil::ensure_dir_all(dir).map_err(not_writable)?;
    // access(2) answers for the real uid, so root in a read-only mount is caught too.
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| WalError::InvalidArgument("WAL path contains a NUL byte".into()))?;
    // SAFETY: c_path is a valid NUL-terminated string.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(not_writable(std::io::Error::last_os_error()));
    }
    let file = fsutil::open_rw(&dir.join("LOCK"), true).map_err(not_writable)?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(WalError::InUse { path: dir.to_path_buf() });
    }
    Ok(file)
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir` and replays its state.
    pub fn open(dir: impl AsRef<Path>, cfg: Config) -> Result<Wal> {
        cfg.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let lock_file = take_dir_lock(&dir)?;
        let seg_dir = dir.join(SEGMENTS_DIR);
        let not_writable = |e| WalError::NotWritable { path: seg_dir.clone(), source: e };
        fsutil::ensure_dir(&seg_dir).map_err(not_writable)?;
        let stats = Stats::default();
        let rec = recovery::recover(&dir, cfg.max_segment_size, &stats)?;

        let mut table = rec.segments;
        let mut active = None;
        if rec.last_is_appendable {
            let last = table.last_mut().expect("appendable last segment exists");
            active = Some(reopen_active(last, cfg.max_segment_size)?);
        }
        let written_id = rec.next_id - 1;
        let inner = Arc::new(Inner {
            dir: dir.clone(),
            seg_dir,
            dir_lock: Mutex::new(Some(lock_file)),
            queue: Mutex::new(Queue {
                next_id: rec.next_id,
                items: VecDeque::new(),
                callers: 0,
                leader_gathering: false,
            }),
            arrivals_cv: Condvar::new(),
            last_group_callers: AtomicU64::new(0),
            last_fsync_nanos: AtomicU64::new(0),
            io: Mutex::new(Io { active: None, written_id }),
            table: RwLock::new(Vec::new()),
            spare: Mutex::new(None),
            ack: Mutex::new(AckState::default()),
            ack_cv: Condvar::new(),
            flusher_cv: Condvar::new(),
            done_id: AtomicU64::new(written_id),
            synced_id: AtomicU64::new(written_id),
            has_failures: AtomicBool::new(false),
            spare_failing: AtomicBool::new(false),
            spare_retry_at: Mutex::new(Instant::now()),
            processed: Mutex::new(rec.processed),
            checkpoint_lock: Mutex::new(Instant::now()),
            house: Mutex::new(HouseState::default()),
            house_cv: Condvar::new(),
            notify_fds: Mutex::new(Vec::new()),
            cursor: Mutex::new(None),
            stats,
            closed: AtomicBool::new(false),
            cfg,
        });
        if active.is_none() {
            let index = table.last().map_or(1, |s| s.index + 1);
            active = Some(inner.create_segment(index, rec.next_id)?);
            table.push(info_of(active.as_ref().unwrap(), &inner.seg_dir));
        }
        lock(&inner.io).active = active;
        *inner.table.write().unwrap() = table;
        // Persist what recovery learned (gaps, removed segments) before appending.
        inner.checkpoint()?;

        let wal = Wal { inner, threads: Mutex::new(Vec::new()) };
        wal.start_threads()?;
        Ok(wal)
    }

    fn start_threads(&self) -> Result<()> {
        let mut threads = lock(&self.threads);
        for (name, body) in [("signaldb-wal-flusher", Inner::flusher_loop as fn(&Inner)), ("signaldb-wal-house", Inner::housekeeper_loop)] {
            let inner = Arc::clone(&self.inner);
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || body(&inner))
                .map_err(io_err(format!("starting thread {name}")))?;
            threads.push(handle);
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Appends one record; returns its id once acknowledged.
    pub fn append(&self, payload: &[u8], kind: Kind) -> Result<u64> {
        let id = self.inner.enqueue(std::iter::once(payload), kind)?;
        self.inner.await_ids(id, id)?;
        Ok(id)
    }

    /// Appends records as one group; returns the first id (ids are contiguous).
    pub fn append_batch<'a>(&self, payloads: impl ExactSizeIterator<Item = &'a [u8]>, kind: Kind) -> Result<u64> {
        let n = payloads.len() as u64;
        if n == 0 {
            return Err(WalError::InvalidArgument("append_batch needs at least one payload".into()));
        }
        let first = self.inner.enqueue(payloads, kind)?;
        self.inner.await_ids(first, first + n - 1)?;
        Ok(first)
    }

    /// Queues a record without waiting. The flusher acknowledges it; watch
    /// `done_id`, `take_failure` and `poisoned`, or register a notify fd.
    pub fn enqueue(&self, payload: &[u8], kind: Kind) -> Result<u64> {
        let id = self.inner.enqueue(std::iter::once(payload), kind)?;
        let mut st = lock(&self.inner.ack);
        st.async_wanted = st.async_wanted.max(id);
        self.inner.flusher_cv.notify_one();
        Ok(id)
    }

    /// Highest id whose fate is decided: acknowledged unless `take_failure` says otherwise.
    pub fn done_id(&self) -> u64 {
        self.inner.done_id.load(Acquire)
    }

    pub fn has_failures(&self) -> bool {
        self.inner.has_failures.load(Acquire)
    }

    /// The reason `id`'s append failed, once (the entry is forgotten after).
    pub fn take_failure(&self, id: u64) -> Option<WalError> {
        let mut st = lock(&self.inner.ack);
        let r = st.failures.remove(&id).map(Failure::into_error);
        if st.failures.is_empty() {
            self.inner.has_failures.store(false, Release);
        }
        r
    }

    pub fn poisoned(&self) -> Option<String> {
        lock(&self.inner.ack).poisoned.clone()
    }

    /// `fd` gets one byte written after every group commit (async wake-ups).
    pub fn register_notify_fd(&self, fd: RawFd) {
        lock(&self.inner.notify_fds).push(fd);
    }

    pub fn unregister_notify_fd(&self, fd: RawFd) {
        lock(&self.inner.notify_fds).retain(|&f| f != fd);
    }

    /// Makes everything appended so far durable, then checkpoints processed
    /// marks and deletes fully processed segments.
    pub fn flush(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.flush_all()?;
        self.inner.checkpoint()
    }

    /// Marks entries processed (idempotent). Unknown ids are an error.
    pub fn mark_processed(&self, ids: &[u64]) -> Result<()> {
        self.inner.check_open()?;
        let next_id = lock(&self.inner.queue).next_id;
        if let Some(&bad) = ids.iter().find(|&&id| id == 0 || id >= next_id) {
            return Err(WalError::InvalidArgument(format!(
                "mark_processed: no WAL entry has id {bad} (ids so far are 1..{next_id})"
            )));
        }
        let mut p = lock(&self.inner.processed);
        let before = p.watermark();
        let mut new = 0;
        for &id in ids {
            if p.mark(id) == Mark::New {
                new += 1;
            }
        }
        let advanced = p.watermark() != before;
        drop(p);
        self.inner.stats.processed_entries.fetch_add(new, Relaxed);
        if advanced {
            self.inner.wake_housekeeper(|h| h.checkpoint_wanted = true);
        }
        Ok(())
    }

    /// Up to `limit` unprocessed entries with ids above `after_id`, oldest
    /// first, stopping early once `max_bytes` of payload are gathered (at
    /// least one entry is returned when any exists).
    pub fn read_unprocessed(&self, after_id: u64, limit: usize, max_bytes: usize) -> Result<Vec<Entry>> {
        self.inner.check_open()?;
        self.inner.read_unprocessed(after_id, limit, max_bytes, true)
    }

    pub fn stats(&self) -> WalStats {
        self.inner.stats_snapshot()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Acquire)
    }

    /// Writes and syncs what is queued, checkpoints, stops the threads. Idempotent.
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.load(Acquire) {
            return Ok(());
        }
        let result = if lock(&self.inner.ack).poisoned.is_none() { self.inner.flush_all() } else { Ok(()) };
        if let Err(e) = self.inner.checkpoint() {
            // Entries are durable in the segments; a missed checkpoint only means a replay.
            log::warn!("WAL checkpoint at close failed: {e}");
        }
        self.inner.closed.store(true, Release);
        {
            let mut st = lock(&self.inner.ack);
            st.shutdown = true;
            self.inner.ack_cv.notify_all();
            self.inner.flusher_cv.notify_all();
        }
        self.inner.wake_housekeeper(|h| h.shutdown = true);
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        self.inner.notify_async_waiters();
        if let Some(spare) = lock(&self.inner.spare).take() {
            let _ = std::fs::remove_file(&spare.path);
            let _ = fsutil::fsync_dir(&self.inner.seg_dir);
        }
        lock(&self.inner.io).active = None; // closes the segment file
        lock(&self.inner.dir_lock).take(); // releases the flock: the directory may be reopened
        result
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            log::error!("closing WAL {}: {e}", self.inner.dir.display());
        }
    }
}

fn info_of(a: &ActiveSegment, seg_dir: &Path) -> SegmentInfo {
    SegmentInfo {
        index: a.index,
        path: seg_dir.join(crate::format::segment_file_name(a.index)),
        first_id: a.first_id,
        last_id: a.last_id,
        data_end: a.write_offset,
        file_len: a.prealloc_len.max(a.write_offset),
        sealed: false,
    }
}

/// Reopens the last segment for appending after recovery.
fn reopen_active(info: &mut SegmentInfo, max_segment_size: u64) -> Result<ActiveSegment> {
    let file = fsutil::open_rw(&info.path, false).map_err(io_err(format!("opening {}", info.path.display())))?;
    if info.file_len < max_segment_size {
        // Restore the zero-filled preallocation (a torn tail may have cut it, or an old file).
        fsutil::write_zeros_at(&file, info.file_len, max_segment_size - info.file_len)
            .and_then(|_| file.sync_all())
            .map_err(io_err(format!("preallocating {}", info.path.display())))?;
        info.file_len = max_segment_size;
    }
    Ok(ActiveSegment {
        index: info.index,
        file: Arc::new(file),
        write_offset: info.data_end,
        prealloc_len: info.file_len,
        first_id: info.first_id,
        last_id: info.last_id,
    })
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Acquire) {
            Err(WalError::Closed)
        } else {
            Ok(())
        }
    }

    fn acked_threshold_reached(&self, id: u64) -> bool {
        self.done_id.load(Acquire) >= id
    }

    /// Encodes and queues records; returns the first id.
    fn enqueue<'a>(&self, payloads: impl Iterator<Item = &'a [u8]>, kind: Kind) -> Result<u64> {
        self.check_open()?;
        if let Some(p) = &lock(&self.ack).poisoned {
            return Err(WalError::Poisoned(p.clone()));
        }
        let now = stats::unix_nanos_now();
        let mut q = lock(&self.queue);
        let first = q.next_id;
        let mut bytes_total = 0;
        for payload in payloads {
            if payload.len() > MAX_PAYLOAD_LEN {
                // Nothing of this call was queued yet beyond earlier items: drop them.
                let n = q.next_id - first;
                for _ in 0..n {
                    q.items.pop_back();
                }
                q.next_id = first;
                return Err(WalError::InvalidArgument(format!(
                    "WAL entry of {} bytes exceeds the maximum of {MAX_PAYLOAD_LEN}",
                    payload.len()
                )));
            }
            let id = q.next_id;
            let mut bytes = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
            encode_record(&mut bytes, id, now, kind, payload);
            bytes_total += payload.len() as u64;
            q.items.push_back(Queued { id, starts_call: id == first, bytes });
            q.next_id += 1;
        }
        let n = q.next_id - first;
        if n > 0 {
            q.callers += 1;
            if q.leader_gathering {
                self.arrivals_cv.notify_one();
            }
        }
        drop(q);
        self.stats.appended_entries.fetch_add(n, Relaxed);
        self.stats.appended_bytes.fetch_add(bytes_total, Relaxed);
        Ok(first)
    }

    /// Waits until ids `first..=last` are decided; errors if any failed.
    fn await_ids(&self, first: u64, last: u64) -> Result<()> {
        match self.cfg.sync_mode {
            SyncMode::Immediate => self.commit_until(last),
            SyncMode::Batched => {
                self.write_queued();
                let st = lock(&self.ack);
                if st.sync_wanted {
                    self.flusher_cv.notify_one();
                }
            }
        }
        self.outcome(first, last)
    }

    fn outcome(&self, first: u64, last: u64) -> Result<()> {
        let mut st = lock(&self.ack);
        let mut failure = None;
        if self.has_failures.load(Acquire) {
            for id in first..=last {
                if let Some(f) = st.failures.remove(&id) {
                    failure.get_or_insert(f);
                }
            }
            if st.failures.is_empty() {
                self.has_failures.store(false, Release);
            }
        }
        if let Some(f) = failure {
            return Err(f.into_error());
        }
        if self.done_id.load(Acquire) >= last {
            return Ok(());
        }
        match &st.poisoned {
            Some(p) => Err(WalError::Poisoned(p.clone())),
            None if self.closed.load(Acquire) => Err(WalError::Closed),
            None => Err(WalError::Poisoned("entry was not acknowledged".into())),
        }
    }

    /// Immediate mode: leads or joins group commits until `target` is decided.
    fn commit_until(&self, target: u64) {
        let mut st = lock(&self.ack);
        loop {
            if self.acked_threshold_reached(target) || st.poisoned.is_some() {
                return;
            }
            if !st.leader_busy {
                st.leader_busy = true;
                drop(st);
                self.lead_group();
                st = lock(&self.ack);
                st.leader_busy = false;
                self.ack_cv.notify_all();
                self.flusher_cv.notify_one();
                continue;
            }
            st = self.ack_cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Takes the next group from the queue. If the previous group served
    /// several callers, they are likely on their way back with their next
    /// record (threads that just woke up, re-taking the GIL): wait for them a
    /// little, at most about one fsync, so they share the next fsync instead
    /// of each paying for one. A lone writer (previous group of one) never waits.
    fn gather_group(&self) -> Vec<Queued> {
        let cap = self.cfg.max_buffer_entries;
        let expected = self.last_group_callers.load(Relaxed) as usize;
        let mut q = lock(&self.queue);
        if expected > 1 && q.callers < expected && q.items.len() < cap {
            let wait = Duration::from_nanos(self.last_fsync_nanos.load(Relaxed).clamp(20_000, 1_000_000));
            let deadline = Instant::now() + wait;
            q.leader_gathering = true;
            while q.callers < expected && q.items.len() < cap {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                q = self.arrivals_cv.wait_timeout(q, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
            }
            q.leader_gathering = false;
        }
        let (group, callers) = q.take(cap);
        self.last_group_callers.store(callers as u64, Relaxed);
        group
    }

    /// One group commit: gather up to `max_buffer_entries`, write, fdatasync, publish.
    fn lead_group(&self) {
        let mut io = lock(&self.io);
        let group = self.gather_group();
        let last = group.last().map(|r| r.id);
        // Records written before a failure in this group still need their fsync.
        self.write_group(&mut io, group);
        let file = io.active.as_ref().map(|a| Arc::clone(&a.file));
        let written = io.written_id;
        drop(io);
        if written > self.synced_id.load(Acquire) && !self.is_poisoned() {
            if let Some(file) = file {
                if !self.sync_file(&file) {
                    return; // poisoned: waiters wake and fail
                }
                self.synced_id.fetch_max(written, AcqRel);
            }
        }
        self.publish_active();
        if let Some(last) = last {
            self.done_id.fetch_max(last, AcqRel);
        }
        self.notify_async_waiters();
    }

    /// Batched mode: write everything queued (no fsync); publish; ask for an fsync when due.
    fn write_queued(&self) {
        let mut io = lock(&self.io);
        let (group, _) = lock(&self.queue).take(usize::MAX);
        let Some(last) = group.last().map(|r| r.id) else { return };
        self.write_group(&mut io, group);
        let unsynced = io.written_id.saturating_sub(self.synced_id.load(Acquire));
        // Publish while still holding `io`: an appender whose record another
        // thread wrote must find it acknowledged once it gets `io` itself.
        self.publish_locked(&io);
        self.done_id.fetch_max(last, AcqRel);
        drop(io);
        if unsynced >= self.cfg.max_buffer_entries as u64 {
            let mut st = lock(&self.ack);
            st.sync_wanted = true;
            self.flusher_cv.notify_one();
        }
        self.notify_async_waiters();
    }

    /// fdatasync with timing; on failure poisons the WAL (never retried).
    fn sync_file(&self, file: &File) -> bool {
        let t = Instant::now();
        let r = self.fault_err(FaultPoint::SegmentSync).and_then(|_| fsutil::fdatasync(file));
        let took = t.elapsed();
        self.stats.record_fsync(took);
        self.last_fsync_nanos.store(took.as_nanos() as u64, Relaxed);
        if took > SLOW_FSYNC {
            log::warn!("WAL fdatasync took {:.3}s in {}", took.as_secs_f64(), self.dir.display());
        }
        match r {
            Ok(()) => {
                self.stats.record_flush_time();
                true
            }
            Err(e) => {
                self.poison(format!("fdatasync failed: {e}"));
                false
            }
        }
    }

    fn poison(&self, why: String) {
        log::error!("WAL {} stops accepting writes (fail-stop): {why}", self.dir.display());
        let mut st = lock(&self.ack);
        if st.poisoned.is_none() {
            st.poisoned = Some(why);
        }
        let mut q = lock(&self.queue);
        q.items.clear();
        q.callers = 0;
        drop(q);
        self.ack_cv.notify_all();
        self.flusher_cv.notify_all();
        drop(st);
        self.notify_async_waiters();
    }

    /// Writes `group` (in id order) to the active segment, rotating as needed.
    /// Returns false when something failed (failures recorded, or poisoned).
    fn write_group(&self, io: &mut Io, group: Vec<Queued>) -> bool {
        let calls = call_bounds(&group);
        let bytes_of = |a: usize, b: usize| group[a..b].iter().map(|r| r.bytes.len() as u64).sum::<u64>();
        let max = self.cfg.max_segment_size;
        let mut c = 0;
        while c < calls.len() {
            // A call's records never span segments, so a failed rotation fails
            // whole calls: an append_batch is all or nothing. A call bigger than
            // a segment gets a fresh segment to itself (it grows past the preallocation).
            let (first, _) = calls[c];
            let active = io.active.as_ref().expect("active segment");
            if active.has_records() && active.write_offset + bytes_of(calls[c].0, calls[c].1) > max {
                if let Err(e) = self.rotate(io, group[first].id) {
                    return self.fail_records(&group[first..], e);
                }
            }
            // The run: this call and the following ones that still fit, in one pwritev.
            let active = io.active.as_mut().unwrap();
            let mut run_bytes = bytes_of(calls[c].0, calls[c].1);
            let mut next = c + 1;
            while next < calls.len() && active.write_offset + run_bytes + bytes_of(calls[next].0, calls[next].1) <= max {
                run_bytes += bytes_of(calls[next].0, calls[next].1);
                next += 1;
            }
            let last = calls[next - 1].1;
            let bufs: Vec<&[u8]> = group[first..last].iter().map(|r| r.bytes.as_slice()).collect();
            let start = active.write_offset;
            if let Err(e) = self.write_run(&active.file, &bufs, start) {
                let rolled_back = self.roll_back(active, start, run_bytes);
                let err = if is_out_of_space(&e) && rolled_back {
                    WalError::Full(format!("no space left on the WAL disk ({e})"))
                } else {
                    let why = format!("write to segment {} failed: {e}", active.index);
                    self.poison(why.clone());
                    WalError::Poisoned(why)
                };
                return self.fail_records(&group[first..], err);
            }
            active.write_offset += run_bytes;
            active.first_id.get_or_insert(group[first].id);
            active.last_id = Some(group[last - 1].id);
            io.written_id = group[last - 1].id;
            c = next;
        }
        true
    }

    /// One run of records into the segment (the `SegmentWrite` failpoint sits here).
    fn write_run(&self, file: &File, bufs: &[&[u8]], start: u64) -> std::io::Result<()> {
        match self.fault(FaultPoint::SegmentWrite) {
            None => fsutil::write_all_vectored_at(file, bufs, start, usize::MAX),
            Some(FaultAction::Error(errno)) => Err(std::io::Error::from_raw_os_error(errno)),
            Some(FaultAction::ShortWrites { max_bytes }) => fsutil::write_all_vectored_at(file, bufs, start, max_bytes),
            Some(FaultAction::PartialThenError { bytes, errno }) => {
                fsutil::write_all_vectored_at(file, bufs, start, bytes)?;
                Err(std::io::Error::from_raw_os_error(errno))
            }
        }
    }

    /// The failpoint check: `Some` when a test armed `point`.
    fn fault(&self, point: FaultPoint) -> Option<FaultAction> {
        self.cfg.faults.as_ref()?.check(point)
    }

    /// An armed failpoint as an I/O error (points that only fail, never write partially).
    fn fault_err(&self, point: FaultPoint) -> std::io::Result<()> {
        match self.fault(point) {
            Some(FaultAction::Error(errno) | FaultAction::PartialThenError { errno, .. }) => {
                Err(std::io::Error::from_raw_os_error(errno))
            }
            _ => Ok(()),
        }
    }

    /// fsync of the segments directory; a failure poisons the WAL (never retried).
    fn sync_seg_dir(&self) -> Result<()> {
        let r = self.fault_err(FaultPoint::DirSync).and_then(|_| fsutil::fsync_dir(&self.seg_dir));
        r.map_err(|e| {
            let why = format!("fsync of directory {} failed: {e}", self.seg_dir.display());
            self.poison(why.clone());
            WalError::Poisoned(why)
        })
    }

    /// Writes a zero-filled spare segment file (the `SegmentPreallocate` failpoint sits here).
    fn preallocate(&self) -> Result<Spare> {
        self.fault_err(FaultPoint::SegmentPreallocate)
            .and_then(|_| segment::prepare_spare(&self.seg_dir, self.cfg.max_segment_size))
            .map_err(|e| {
                if is_out_of_space(&e) {
                    WalError::Full(format!("no space for a new segment ({e})"))
                } else {
                    WalError::io("preallocating a WAL segment", e)
                }
            })
    }

    /// Erases a failed write so no half record stays behind; false if that failed too.
    fn roll_back(&self, active: &ActiveSegment, start: u64, len: u64) -> bool {
        let zero_end = (start + len).min(active.prealloc_len);
        let zeroed = zero_end <= start || fsutil::write_zeros_at(&active.file, start, zero_end - start).is_ok();
        let cut = start + len <= active.prealloc_len || active.file.set_len(active.prealloc_len.max(start)).is_ok();
        zeroed && cut
    }

    /// Records that these appends failed; their ids become gaps.
    fn fail_records(&self, recs: &[Queued], err: WalError) -> bool {
        let (first, last) = (recs[0].id, recs[recs.len() - 1].id);
        self.stats.failed_appends.fetch_add(recs.len() as u64, Relaxed);
        log::warn!("WAL append of ids {first}..={last} failed: {err}");
        let failure = match err {
            WalError::Full(detail) => Failure { kind: FailKind::Full, detail },
            WalError::Poisoned(detail) => Failure { kind: FailKind::Poisoned, detail },
            other => Failure { kind: FailKind::Io, detail: other.to_string() },
        };
        lock(&self.processed).add_gap(first, last);
        let mut st = lock(&self.ack);
        for r in recs {
            st.failures.insert(r.id, failure.clone());
        }
        self.has_failures.store(true, Release);
        false
    }

    /// Seals the active segment (fdatasync) and starts a new one at `base_id`.
    fn rotate(&self, io: &mut Io, base_id: u64) -> Result<()> {
        let old = io.active.as_ref().expect("active segment");
        if !self.sync_file(&old.file) {
            return Err(WalError::Poisoned("fdatasync failed while sealing a segment".into()));
        }
        let sealed_last = old.last_id;
        let sealed_index = old.index;
        let sealed_end = old.write_offset;
        let new = self.create_segment(sealed_index + 1, base_id)?;
        if let Some(last) = sealed_last {
            self.synced_id.fetch_max(last, AcqRel);
        }
        let mut table = self.table.write().unwrap();
        if let Some(s) = table.iter_mut().find(|s| s.index == sealed_index) {
            s.sealed = true;
            s.data_end = sealed_end;
            s.last_id = sealed_last;
            s.first_id = io.active.as_ref().unwrap().first_id;
        }
        table.push(info_of(&new, &self.seg_dir));
        drop(table);
        io.active = Some(new);
        Ok(())
    }

    /// Creates segment `index` from the spare (or a fresh preallocation).
    fn create_segment(&self, index: u64, base_id: u64) -> Result<ActiveSegment> {
        let spare = match lock(&self.spare).take() {
            Some(s) => s,
            None => self.preallocate()?,
        };
        // rename → fsync(dir) → header: the new name is durable before anything is acknowledged in it.
        let path = self.seg_dir.join(crate::format::segment_file_name(index));
        let renamed = self.fault_err(FaultPoint::SegmentRename).and_then(|_| std::fs::rename(&spare.path, &path));
        if let Err(e) = renamed {
            let _ = std::fs::remove_file(&spare.path);
            return Err(WalError::io(format!("creating segment {}", path.display()), e));
        }
        self.sync_seg_dir()?;
        let seg = segment::start_segment(spare, index, base_id)
            .map_err(io_err(format!("writing the header of {}", path.display())))?;
        self.stats.segments_created.fetch_add(1, Relaxed);
        Ok(seg)
    }

    fn is_poisoned(&self) -> bool {
        lock(&self.ack).poisoned.is_some()
    }

    /// Makes the active segment's newly written records visible to readers.
    fn publish_active(&self) {
        let io = lock(&self.io);
        self.publish_locked(&io);
    }

    fn publish_locked(&self, io: &Io) {
        let Some(active) = io.active.as_ref() else { return };
        let (index, offset, first, last) = (active.index, active.write_offset, active.first_id, active.last_id);
        let mut table = self.table.write().unwrap();
        if let Some(s) = table.iter_mut().rev().find(|s| s.index == index) {
            if offset > s.data_end {
                s.data_end = offset;
                s.first_id = first;
                s.last_id = last;
            }
        }
        drop(table);
        if offset * 2 > self.cfg.max_segment_size && lock(&self.spare).is_none() {
            self.wake_housekeeper(|h| h.spare_wanted = true);
        }
    }

    fn notify_async_waiters(&self) {
        let fds = lock(&self.notify_fds);
        for &fd in fds.iter() {
            // SAFETY: writing one byte from a valid buffer; a full pipe (EAGAIN) already has a wake-up.
            unsafe { libc::write(fd, [1u8].as_ptr() as *const libc::c_void, 1) };
        }
    }

    /// Everything queued so far is written and fsynced.
    fn flush_all(&self) -> Result<()> {
        let target = lock(&self.queue).next_id - 1;
        match self.cfg.sync_mode {
            SyncMode::Immediate => self.commit_until(target),
            SyncMode::Batched => {
                self.write_queued();
                self.sync_written();
            }
        }
        if let Some(p) = lock(&self.ack).poisoned.clone() {
            return Err(WalError::Poisoned(p));
        }
        Ok(())
    }

    /// Batched mode: fdatasync what has been written.
    fn sync_written(&self) {
        let (file, written) = {
            let io = lock(&self.io);
            (io.active.as_ref().map(|a| Arc::clone(&a.file)), io.written_id)
        };
        if written <= self.synced_id.load(Acquire) {
            return;
        }
        if let Some(file) = file {
            if self.sync_file(&file) {
                self.synced_id.fetch_max(written, AcqRel);
            }
        }
    }

    fn flusher_loop(&self) {
        let mut last_sync = Instant::now();
        let mut st = lock(&self.ack);
        loop {
            if st.shutdown {
                return;
            }
            let interval_due = last_sync.elapsed() >= self.cfg.flush_interval;
            let async_due = st.async_wanted > self.done_id.load(Acquire) && st.poisoned.is_none();
            let sync_due = st.sync_wanted;
            if !(async_due || sync_due || interval_due) {
                let timeout = self.cfg.flush_interval.saturating_sub(last_sync.elapsed());
                st = self.flusher_cv.wait_timeout(st, timeout).unwrap_or_else(|p| p.into_inner()).0;
                continue;
            }
            st.sync_wanted = false;
            let target = st.async_wanted;
            drop(st);
            match self.cfg.sync_mode {
                SyncMode::Immediate => {
                    let pending = lock(&self.queue).next_id - 1;
                    self.commit_until(if interval_due { pending } else { target });
                }
                SyncMode::Batched => {
                    self.write_queued();
                    if sync_due || interval_due {
                        self.sync_written();
                    }
                }
            }
            if sync_due || interval_due {
                last_sync = Instant::now();
            }
            st = lock(&self.ack);
        }
    }

    fn wake_housekeeper(&self, f: impl FnOnce(&mut HouseState)) {
        let mut h = lock(&self.house);
        f(&mut h);
        self.house_cv.notify_one();
    }

    fn housekeeper_loop(&self) {
        loop {
            let (spare_wanted, checkpoint_wanted) = {
                let mut h = lock(&self.house);
                if !h.shutdown && !h.spare_wanted && !h.checkpoint_wanted {
                    h = self.house_cv.wait_timeout(h, HOUSEKEEPING_TICK).unwrap_or_else(|p| p.into_inner()).0;
                }
                if h.shutdown {
                    return;
                }
                (std::mem::take(&mut h.spare_wanted), h.checkpoint_wanted)
            };
            if spare_wanted {
                self.prepare_spare();
            }
            let due = lock(&self.checkpoint_lock).elapsed() >= CHECKPOINT_INTERVAL;
            if checkpoint_wanted && due {
                lock(&self.house).checkpoint_wanted = false;
                if let Err(e) = self.checkpoint() {
                    log::warn!("WAL checkpoint failed (will retry): {e}");
                    lock(&self.house).checkpoint_wanted = true;
                }
            }
        }
    }

    fn prepare_spare(&self) {
        if lock(&self.spare).is_some() || Instant::now() < *lock(&self.spare_retry_at) {
            return;
        }
        match self.preallocate() {
            Ok(s) => {
                if self.spare_failing.swap(false, Relaxed) {
                    log::info!("WAL preallocates segments again in {}", self.seg_dir.display());
                }
                let mut slot = lock(&self.spare);
                if slot.is_none() {
                    *slot = Some(s);
                } else {
                    // A rotation prepared its own meanwhile: ours is surplus.
                    drop(slot);
                    let _ = std::fs::remove_file(&s.path);
                }
            }
            Err(e) => {
                // On a full disk, do not write and delete a segment's worth of zeros per append.
                *lock(&self.spare_retry_at) = Instant::now() + SPARE_RETRY_BACKOFF;
                if !self.spare_failing.swap(true, Relaxed) {
                    log::warn!("WAL could not preallocate the next segment (will retry at rotation): {e}");
                }
                return;
            }
        }
    }

    /// Writes metadata.json durably, then deletes sealed segments it shows are processed.
    fn checkpoint(&self) -> Result<()> {
        let mut last = lock(&self.checkpoint_lock);
        let next_id = lock(&self.queue).next_id;
        let (watermark, processed_ids) = {
            let mut p = lock(&self.processed);
            p.dirty = false;
            (p.watermark(), p.above_sorted())
        };
        let table: Vec<SegmentInfo> = self.table.read().unwrap().clone();
        let meta = Metadata {
            next_id,
            processed_watermark: watermark,
            processed_ids,
            segments: table
                .iter()
                .map(|s| SegmentMeta { index: s.index, first_id: s.first_id, last_id: s.last_id })
                .collect(),
            last_flush: self.stats.last_flush_rfc3339(),
            ..Default::default()
        };
        let stored = self.fault_err(FaultPoint::MetadataWrite).and_then(|_| metadata::store(&self.dir, &meta));
        stored.map_err(|e| {
            lock(&self.processed).dirty = true;
            WalError::io(format!("writing {}", self.dir.join(metadata::METADATA_FILE).display()), e)
        })?;
        self.stats.metadata_writes.fetch_add(1, Relaxed);
        *last = Instant::now();
        // The checkpoint saying these are processed is durable: now they may go.
        let doomed: Vec<SegmentInfo> = table
            .into_iter()
            .filter(|s| s.sealed && s.last_id.is_none_or(|l| l <= watermark))
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        self.table.write().unwrap().retain(|s| !doomed.iter().any(|d| d.index == s.index));
        for s in &doomed {
            if let Err(e) = std::fs::remove_file(&s.path) {
                log::warn!("WAL could not delete processed segment {}: {e}", s.path.display());
            } else {
                self.stats.segments_deleted.fetch_add(1, Relaxed);
                log::debug!("WAL deleted processed segment {}", s.name());
            }
        }
        self.sync_seg_dir()
    }

    fn read_unprocessed(&self, after_id: u64, limit: usize, max_bytes: usize, use_cursor: bool) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let visible = self.done_id.load(Acquire);
        let watermark = lock(&self.processed).watermark();
        let start_id = after_id.max(watermark) + 1;
        let table: Vec<SegmentInfo> = self
            .table
            .read()
            .unwrap()
            .iter()
            .filter(|s| s.last_id.is_some_and(|l| l >= start_id))
            .cloned()
            .collect();
        let cursor = if use_cursor { *lock(&self.cursor) } else { None };
        let mut bytes = 0usize;
        let mut last_pos = None;
        'segments: for seg in &table {
            let resume = cursor.filter(|c| c.segment == seg.index && c.after_id < start_id);
            let start = resume.map_or(SEGMENT_HEADER_LEN as u64, |c| c.offset);
            let prev = resume.map_or(0, |c| c.after_id);
            let mut reader = match SegmentReader::open(&seg.path, start, seg.data_end, prev) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // deleted: all processed
                Err(e) => return Err(WalError::io(format!("reading {}", seg.path.display()), e)),
            };
            loop {
                let step = reader.next_step().map_err(io_err(format!("reading {}", seg.path.display())))?;
                match step {
                    Step::End => break,
                    Step::Damaged { offset, next } => {
                        self.stats.corrupt_entries.fetch_add(1, Relaxed);
                        log::error!(
                            "WAL corruption in segment {} at offset {offset} found while reading; skipped to {}",
                            seg.name(),
                            next.map_or("the end of the segment".into(), |n| format!("offset {n}"))
                        );
                    }
                    Step::Record { header, payload, .. } => {
                        if header.id > visible {
                            break 'segments;
                        }
                        if header.id < start_id || lock(&self.processed).is_processed(header.id) {
                            continue;
                        }
                        bytes += payload.len();
                        out.push(Entry {
                            id: header.id,
                            kind: header.kind,
                            timestamp_ns: header.timestamp_ns,
                            payload: payload.to_vec(),
                        });
                        last_pos = Some(Cursor { after_id: header.id, segment: seg.index, offset: reader.position() });
                        if out.len() >= limit || bytes >= max_bytes {
                            break 'segments;
                        }
                    }
                }
            }
        }
        if use_cursor {
            if let Some(c) = last_pos {
                *lock(&self.cursor) = Some(c);
            }
        }
        Ok(out)
    }

    /// Timestamp of the oldest unprocessed entry (one header read).
    fn oldest_unprocessed_timestamp(&self) -> Option<i64> {
        self.read_unprocessed(0, 1, 0, false).ok()?.first().map(|e| e.timestamp_ns)
    }

    fn stats_snapshot(&self) -> WalStats {
        let next_id = lock(&self.queue).next_id;
        let (unprocessed, watermark) = {
            let p = lock(&self.processed);
            (p.unprocessed_count(next_id), p.watermark())
        };
        let (segments, disk, unprocessed_bytes) = {
            let table = self.table.read().unwrap();
            let disk: u64 = table.iter().map(|s| s.file_len.max(s.data_end)).sum();
            let backlog: u64 = table
                .iter()
                .filter(|s| s.last_id.is_some_and(|l| l > watermark))
                .map(|s| s.data_end.saturating_sub(SEGMENT_HEADER_LEN as u64))
                .sum();
            (table.len() as u64, disk, backlog)
        };
        let spare = lock(&self.spare).as_ref().map_or(0, |s| s.len);
        let s = &self.stats;
        WalStats {
            unprocessed_entries: unprocessed,
            unprocessed_bytes,
            total_segments: segments,
            disk_usage_bytes: disk + spare,
            last_flush: s.last_flush_rfc3339(),
            next_id,
            processed_watermark: watermark,
            appended_entries: s.appended_entries.load(Relaxed),
            appended_bytes: s.appended_bytes.load(Relaxed),
            processed_entries: s.processed_entries.load(Relaxed),
            corrupt_entries: s.corrupt_entries.load(Relaxed),
            corrupt_bytes: s.corrupt_bytes.load(Relaxed),
            torn_tails_truncated: s.torn_tails_truncated.load(Relaxed),
            failed_appends: s.failed_appends.load(Relaxed),
            fsync_count: s.fsync_count.load(Relaxed),
            fsync_seconds_total: s.fsync_nanos_total.load(Relaxed) as f64 / 1e9,
            fsync_seconds_max: s.fsync_nanos_max.load(Relaxed) as f64 / 1e9,
            fsync_histogram: s.fsync_histogram(),
            segments_created: s.segments_created.load(Relaxed),
            segments_deleted: s.segments_deleted.load(Relaxed),
            metadata_writes: s.metadata_writes.load(Relaxed),
            oldest_unprocessed_timestamp_ns: if unprocessed > 0 { self.oldest_unprocessed_timestamp() } else { None },
            poisoned: lock(&self.ack).poisoned.clone(),
            sync_mode: self.cfg.sync_mode,
        }
    }
}

/// The quarantine directory of a WAL.
pub fn quarantine_dir(dir: &Path) -> PathBuf {
    dir.join(QUARANTINE_DIR)
}
