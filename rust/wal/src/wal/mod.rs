//! The engine: appends with group commit, acknowledgement, processed marks,
//! checkpoints, segment rotation and deletion, and the tail reader.
//!
//! # Threads and locks
//!
//! Appenders encode their records and queue them (`commit.queue`: ids are
//! handed out in queue order). Whoever holds `segments.io` drains the queue in
//! order and writes it; so records reach the file in id order. An appender
//! that finds `io` taken leaves its records to the holder, which looks at the
//! queue again after letting go (nothing is stranded).
//!
//! In `immediate` mode the commit is a two-stage pipeline: records queue while
//! the previous group's `fdatasync` is in flight, and are written (page cache)
//! in one piece by whoever starts the next; one `fdatasync` at a time makes
//! everything written before it started durable. An appender that finds no
//! sync in flight writes the queue and starts that sync itself (a lone writer
//! pays one write and one fdatasync, no hand-off); otherwise it waits for the
//! sync that covers it, on the wait slot of that sync's parity, so a finished
//! sync wakes the callers it acknowledged (one after another, see `WaitSlot`).
//! A sync that finds more records written behind it when it completes is
//! followed at once by the next: the flusher thread drives those (an appender
//! whose own records are durable hands over and returns), so under load the
//! disk always has a sync in flight. `append_async` callers cannot block, so
//! the flusher drives on their behalf too.
//!
//! In `batched` mode appenders write their own records (page cache) and
//! return; the flusher fsyncs when `max_buffer_entries` entries are unsynced
//! or `flush_interval` has passed.
//!
//! The *housekeeper* thread (in `SCHED_BATCH`: its wake-ups do not preempt
//! an appender on its way to fdatasync) creates the next segment durably ahead of
//! rotation (a *spare*: see `rotation.rs`), writes the checkpoint
//! (`metadata.json`) at most every `CHECKPOINT_INTERVAL` when processed marks
//! changed, and then deletes sealed segments whose entries are all processed:
//! after the checkpoint that allows it is durable.
//!
//! The lock order is on [`Inner`].
//!
//! # Durability ordering (immediate mode)
//!
//! write(records) → fdatasync(segment) → publish `done_id` → wake waiters.
//! Ahead of time (housekeeper): spare zero-filled → fsync → rename to the next
//! segment number → fsync(dir). At rotation: fdatasync(old segment) → header +
//! records into the spare → fdatasync(new segment) → acknowledge. An fsync
//! error poisons the WAL: it is never retried, nothing more is acknowledged
//! (fail-stop).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{is_out_of_space, Result, WalError};
use crate::faults::{FaultAction, FaultPoint};
use crate::format::{
    encode_record_header, encode_records, Kind, MAX_ID, MAX_PAYLOAD_LEN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::fsutil;
use crate::metadata::{self, Metadata, SegmentMeta};
use crate::processed::{Mark, Processed};
use crate::reader::{EntriesBuilder, Entry, SegmentReader, Step};
use crate::recovery::{self, SEGMENTS_DIR};
use crate::segment::{self, ActiveSegment, SegmentInfo, Spare};
use crate::stats::{self, Stats};

mod background;
mod commit;
mod config;
mod reading;
mod rotation;

pub use config::{Config, SyncMode};

const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes per group commit above which segments are not zero-filled ahead (see `preallocation_pays`).
const LARGE_GROUP_BYTES: u64 = 64 << 10;
/// Ids reserved per checkpoint. A restart skips what was reserved but unused.
const ID_RESERVATION_BLOCK: u64 = 1 << 20;
const HOUSEKEEPING_TICK: Duration = Duration::from_millis(200);
const SPARE_RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// How long recycling stays off after the disk was full.
const RECYCLE_PAUSE_WHEN_FULL: Duration = Duration::from_secs(60);
/// Bytes of segment size the pool of processed segments' files kept for
/// reuse as spares may hold (the rest are deleted); see `recycle_pool_cap`.
/// The pool must cover the segments sealed between two refill checkpoints
/// (`RECYCLE_CHECKPOINT_GAP`, 20 ms, and a consumer's own rhythm): with
/// batches of 1,000 records and 1 MiB segments one is sealed every 1.5 ms,
/// and a pool of 8 files gave only 60 % of new segments a recycled file,
/// 16 files 90 %, 32 files 99 % (wal-bench workload 3, alternated runs).
const RECYCLE_POOL_BYTES: u64 = 32 << 20;
/// Bounds on the number of files kept, whatever the segment size.
const RECYCLE_POOL_FILES: std::ops::RangeInclusive<u64> = 2..=32;
/// An fsync slower than this is logged (etcd warns at one second too).
const SLOW_FSYNC: Duration = Duration::from_secs(1);

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
    /// Segments made from a processed segment's file.
    pub segments_recycled: u64,
    /// Processed segments' files that could not be kept or reused (deleted instead).
    pub recycle_failures: u64,
    /// `metadata.json` refused at open as unusable (every entry replayed).
    pub checkpoints_refused: u64,
    pub metadata_writes: u64,
    pub oldest_unprocessed_timestamp_ns: Option<i64>,
    pub poisoned: Option<String>,
    pub sync_mode: SyncMode,
}

/// One append call waiting to be written: its records, encoded, with
/// contiguous ids `first_id ..= last_id()`. Calls are the queue's unit: a
/// group commit takes whole calls, so an `append_batch` is never split.
struct Queued {
    first_id: u64,
    /// Number of records (at least one).
    n: u64,
    /// Bytes on disk: headers and payloads.
    bytes: u64,
    data: CallData,
    /// The CRC salt the records carry now (0 as encoded; set for the segment they are written to).
    salt: u32,
}

/// A call's records as they go to the file.
///
/// Small records are copied, headers and payloads back to back, into one
/// buffer written as one piece: the kernel then copies one run of bytes
/// instead of two iovecs per record (2.2x faster for 1,000 records of 200 B
/// here), and the CRC runs over each record in one pass. Large payloads are
/// not copied (the copy would cost more than an iovec): each keeps its
/// header beside it and is written in place.
enum CallData {
    Encoded(Vec<u8>),
    Pieces(Vec<([u8; RECORD_HEADER_LEN], Payload)>),
}

/// Average payload size up to which a call's records are copied into one buffer.
const ENCODE_MAX_AVG_PAYLOAD: usize = 4 << 10;

impl Queued {
    fn last_id(&self) -> u64 {
        self.first_id + self.n - 1
    }

    /// Salts the records' CRCs for the segment they go to (see
    /// `format::segment_salt`): records are encoded before their segment is known.
    fn set_salt(&mut self, salt: u32) {
        let delta = self.salt ^ salt;
        if delta == 0 {
            return;
        }
        match &mut self.data {
            CallData::Encoded(buf) => crate::format::salt_records(buf, delta),
            CallData::Pieces(pieces) => {
                for (header, _) in pieces.iter_mut() {
                    crate::format::salt_record_header(header, delta);
                }
            }
        }
        self.salt = salt;
    }

    /// The pieces to write, in order.
    fn push_bufs<'a>(&'a self, out: &mut Vec<&'a [u8]>) {
        match &self.data {
            CallData::Encoded(buf) => out.push(buf),
            CallData::Pieces(pieces) => {
                for (header, payload) in pieces {
                    out.push(header);
                    out.push(payload.as_slice());
                }
            }
        }
    }
}

/// A large record's payload: a copy (`Wal::enqueue`, whose caller returns
/// at once), or the caller's own bytes (`append`, `append_batch`: no copy).
enum Payload {
    Owned(Vec<u8>),
    /// Valid while the appender waits. It waits until its ids are decided,
    /// which happens only after the writer is done with its records; when it
    /// stops waiting early (poisoned), it first takes `segments.io` once, so
    /// no writer still holds its records, and `poison` has emptied the queue.
    Borrowed {
        ptr: *const u8,
        len: usize,
    },
}

// SAFETY: a borrowed payload is only read while its appender is blocked
// waiting (see `Payload::Borrowed`); the bytes are immutable meanwhile.
unsafe impl Send for Payload {}

impl Payload {
    fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Owned(v) => v,
            // SAFETY: see `Payload::Borrowed`.
            Payload::Borrowed { ptr, len } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

struct Queue {
    next_id: u64,
    /// Append calls, in id order.
    items: VecDeque<Queued>,
}

impl Queue {
    /// Takes whole calls, oldest first, until they hold at least `max`
    /// records or the queue is empty (so a batch larger than `max` is a
    /// group of its own, and the last call taken may pass `max`).
    fn take(&mut self, max: usize) -> Vec<Queued> {
        let (mut calls, mut records) = (0, 0u64);
        while calls < self.items.len() && (calls == 0 || records < max as u64) {
            records += self.items[calls].n;
            calls += 1;
        }
        self.items.drain(..calls).collect()
    }

    /// Whole calls, oldest first, as many as fit in `room` records (none if
    /// the first does not fit: it waits for a group of its own).
    fn take_within(&mut self, room: usize) -> Vec<Queued> {
        let (mut calls, mut records) = (0, 0u64);
        while calls < self.items.len() && records + self.items[calls].n <= room as u64 {
            records += self.items[calls].n;
            calls += 1;
        }
        self.items.drain(..calls).collect()
    }
}

/// The active segment; held (`Segments::io`) by whoever writes records.
struct Io {
    active: Option<ActiveSegment>,
}

/// Why an append failed: out of space (retry later) or the WAL stopped.
#[derive(Clone, Debug)]
struct Failure {
    kind: FailKind,
    detail: String,
}

/// `Io` keeps the errno (or the io kind) so that an async caller gets the
/// same typed error (an `OSError` subclass in Python) as a synchronous one.
#[derive(Clone, Debug)]
enum FailKind {
    Full,
    Poisoned,
    /// `context` is empty for an engine error that is not an `Io` one.
    Io {
        context: String,
        errno: Option<i32>,
        kind: std::io::ErrorKind,
    },
}

impl Failure {
    fn from_error(err: WalError) -> Failure {
        match err {
            WalError::Full(detail) => Failure { kind: FailKind::Full, detail },
            WalError::Poisoned(detail) => Failure { kind: FailKind::Poisoned, detail },
            WalError::Io { context, source } => Failure {
                kind: FailKind::Io { context, errno: source.raw_os_error(), kind: source.kind() },
                detail: source.to_string(),
            },
            other => Failure {
                kind: FailKind::Io { context: String::new(), errno: None, kind: std::io::ErrorKind::Other },
                detail: other.to_string(),
            },
        }
    }

    fn into_error(self) -> WalError {
        match self.kind {
            FailKind::Full => WalError::Full(self.detail),
            FailKind::Poisoned => WalError::Poisoned(self.detail),
            FailKind::Io { context, errno, kind } => {
                let source = match errno {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(kind, self.detail),
                };
                let context =
                    if context.is_empty() { "WAL append".to_owned() } else { format!("WAL append: {context}") };
                WalError::io(context, source)
            }
        }
    }
}

/// Who is syncing, what failed, and the flusher's orders (`Commit::state`).
#[derive(Default)]
struct CommitState {
    /// An fdatasync is in flight (one at a time).
    syncing: bool,
    /// Number of syncs started; the one in flight (if `syncing`) is this one.
    sync_seq: u64,
    /// The sync in flight makes ids up to this durable.
    in_flight_upto: u64,
    /// Ids whose append failed (rolled back), with the reason.
    failures: HashMap<u64, Failure>,
    poisoned: Option<String>,
    /// Highest id an async appender waits for (the flusher drives until it is done).
    async_wanted: u64,
    /// Immediate mode: written records wait for a sync nobody drives (the flusher takes over).
    /// Batched mode: an fsync is due (buffer threshold reached).
    sync_wanted: bool,
    shutdown: bool,
}

/// Waiters for the syncs of one parity: sync `n` wakes the callers whose
/// records it made durable (`slots[n % 2]`), not the ones waiting for the
/// next sync. A futex word, not a mutex and condvar: the woken callers do not
/// queue up again on a mutex to leave.
///
/// They are woken one after the other, not all at once: a completed sync
/// wakes one, and each woken caller wakes the next as it leaves. Woken all
/// at once, ~30 callers on a 2-vCPU machine crowd out the thread that drives
/// the next fdatasync, and Python callers pile up on the GIL's mutex. With
/// 64 producers the chain kept fdatasync in flight 88-89 % of the time
/// instead of 72-80 % (Rust), at about the same records/s, and Python
/// callers needed fewer context switches per append.
#[derive(Default)]
struct WaitSlot {
    /// Low 32 bits of the last sync of this parity that completed.
    completed: std::sync::atomic::AtomicU32,
    /// Threads in (or about to enter) `wait`: a sync nobody waits for (a lone
    /// appender that synced its own record) skips the FUTEX_WAKE syscall.
    sleepers: std::sync::atomic::AtomicU32,
}

impl WaitSlot {
    /// Whether sync `seq` (of this slot's parity) has completed, given the word's value.
    fn reached(word: u32, seq: u64) -> bool {
        // Wrapping comparison: the word holds seq's low bits; waiters are never 2^31 syncs behind.
        (word.wrapping_sub(seq as u32) as i32) >= 0
    }

    /// Sleeps until sync `seq` completed, `timeout` passed, or a spurious wake-up.
    fn wait(&self, seq: u64, timeout: Duration) {
        // SeqCst on both sides (here and in `complete`): either this thread
        // sees the completed word, or `complete` sees it counted and wakes it.
        self.sleepers.fetch_add(1, SeqCst);
        let slept = self.wait_counted(seq, timeout);
        let others = self.sleepers.fetch_sub(1, SeqCst) - 1;
        // Acknowledged: pass the wake-up on to the next sleeper. A thread
        // woken here for the sync after (same parity) does not: the chain
        // ends there, so it never cycles among the ones still waiting. The
        // kernel queues a futex's sleepers in order, so the acknowledged
        // ones come first; should one be left behind, the next completion
        // on this slot or WAIT_RECHECK picks it up.
        if slept && others > 0 && Self::reached(self.completed.load(SeqCst), seq) {
            self.wake_one();
        }
    }

    /// True when this thread went to sleep (woken, timed out or interrupted),
    /// false when the word had already moved.
    fn wait_counted(&self, seq: u64, timeout: Duration) -> bool {
        let word = self.completed.load(SeqCst);
        if Self::reached(word, seq) {
            return false;
        }
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: FUTEX_WAIT on a live u32 we own; it returns at once if the word changed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.completed.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                word,
                &ts as *const libc::timespec,
            )
        };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
    }

    /// Sync `seq` completed: wake the first sleeper on this slot (it wakes the next).
    fn complete(&self, seq: u64) {
        self.completed.fetch_max_wrapping(seq as u32);
        if self.sleepers.load(SeqCst) == 0 {
            return;
        }
        self.wake_one();
    }

    fn wake_one(&self) {
        // SAFETY: FUTEX_WAKE on a live u32 we own.
        unsafe {
            libc::syscall(libc::SYS_futex, self.completed.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1)
        };
    }
}

/// `fetch_max` in wrapping (serial number) order for the slot words.
trait FetchMaxWrapping {
    fn fetch_max_wrapping(&self, v: u32);
}

impl FetchMaxWrapping for std::sync::atomic::AtomicU32 {
    fn fetch_max_wrapping(&self, v: u32) {
        let mut cur = self.load(Acquire);
        while !WaitSlot::reached(cur, v as u64) {
            match self.compare_exchange_weak(cur, v, SeqCst, Acquire) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }
}

/// The commit pipeline (immediate mode): appenders write their records (under
/// `Segments::io`), then one fdatasync at a time makes everything written so far
/// durable while the next records are being written.
struct Commit {
    queue: Mutex<Queue>,
    state: Mutex<CommitState>,
    slots: [WaitSlot; 2],
    /// The flusher waits here (with `state`).
    flusher_cv: Condvar,
    /// What the next sync covers: the active segment's file and the highest id
    /// written (or failed) in it; set by writers under `Segments::io`.
    sync_target: Mutex<Option<(Arc<File>, u64)>>,
    /// Highest id written to the OS or failed (its fate is known but for the sync).
    handled_id: AtomicU64,
    /// The `upto` of the last sync started: the next sync covers ids above it,
    /// and writers keep that to `max_buffer_entries` (a group commit's cap).
    sync_started: AtomicU64,
    synced_id: AtomicU64,
    /// Highest id whose fate is decided: acknowledged, or failed (see `failures`).
    done_id: AtomicU64,
    has_failures: AtomicBool,
    /// Set by `poison` before it empties the queue; `enqueue` checks it under
    /// the queue lock, so no record is queued after the queue was emptied.
    poisoned: AtomicBool,
}

/// The segment files: the active one, the table readers see, the spare.
struct Segments {
    io: Mutex<Io>,
    table: RwLock<Vec<SegmentInfo>>,
    /// The next segment, created durably ahead of rotation (see `rotation.rs`).
    spare: Mutex<Option<Spare>>,
    /// Held while a spare is being created (one at a time), and by a rotation
    /// while it takes the spare and moves `active_index`.
    spare_creation: Mutex<()>,
    /// Index of the active segment (the spare is made for the one after it).
    active_index: AtomicU64,
    /// The last spare preallocation failed (logged once per episode).
    spare_failing: AtomicBool,
    /// When the housekeeper may try preallocating again after a failure.
    spare_retry_at: Mutex<Instant>,
    /// Moving average of bytes per write run: decides whether preallocation pays.
    group_bytes_avg: AtomicU64,
    /// Files of processed segments kept to be reused as spares (under temp
    /// names), at most `recycle_pool_cap()`: see `rotation.rs`.
    pool: Mutex<Vec<PathBuf>>,
    /// `read_unprocessed` calls in flight. While any is, no file is recycled:
    /// a reader may hold a segment file open, or open it by its path from its
    /// snapshot of the table, and a recycled file gets new bytes (deleting is
    /// safe for an open file; overwriting is not).
    reads_in_flight: Mutex<u32>,
    /// No file is kept for recycling before this: the disk was full lately
    /// (kept files hold space that a full disk needs back).
    recycle_paused_until: Mutex<Instant>,
}

/// Processed marks, the checkpoint, and the id reservation.
struct Marks {
    processed: Mutex<Processed>,
    checkpoint_lock: Mutex<Instant>,
    /// Ids below this are durably reserved (metadata.json's `next_id`): a
    /// restart continues from here, so ids never repeat.
    id_reserved: AtomicU64,
}

/// The housekeeper's orders.
struct House {
    state: Mutex<HouseState>,
    cv: Condvar,
}

/// Consumers: the tail cursor and the async wake-up fds.
struct Readers {
    notify_fds: Mutex<Vec<RawFd>>,
    cursor: Mutex<Option<Cursor>>,
    /// `read_unprocessed`'s read buffer, kept between calls (taken with try_lock: a leaf).
    buf: Mutex<Vec<u8>>,
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

/// The engine, one struct per concern. Lock order (a lock may be taken
/// while holding the ones to its left, never the other way):
///
/// `segments.io` → `marks.processed` → `commit.state` → `commit.queue` / `commit.sync_target`;
/// `segments.io` → `segments.spare_creation` → `segments.spare`;
/// `segments.io` → `segments.table`; `marks.checkpoint_lock` → `marks.processed`, `segments.table`.
/// `commit.slots[_]`, `house.state`, `readers.*`, `segments.pool`, `segments.reads_in_flight`
/// and `stats` are leaves.
struct Inner {
    dir: PathBuf,
    seg_dir: PathBuf,
    cfg: Config,
    /// The directory lock; released (dropped) at close.
    dir_lock: Mutex<Option<File>>,
    commit: Commit,
    segments: Segments,
    marks: Marks,
    house: House,
    readers: Readers,
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
            commit: Commit {
                queue: Mutex::new(Queue { next_id: rec.next_id, items: VecDeque::new() }),
                state: Mutex::new(CommitState::default()),
                slots: Default::default(),
                flusher_cv: Condvar::new(),
                sync_target: Mutex::new(None),
                handled_id: AtomicU64::new(written_id),
                sync_started: AtomicU64::new(written_id),
                synced_id: AtomicU64::new(written_id),
                done_id: AtomicU64::new(written_id),
                has_failures: AtomicBool::new(false),
                poisoned: AtomicBool::new(false),
            },
            segments: Segments {
                io: Mutex::new(Io { active: None }),
                table: RwLock::new(Vec::new()),
                spare: Mutex::new(None),
                spare_creation: Mutex::new(()),
                active_index: AtomicU64::new(0),
                spare_failing: AtomicBool::new(false),
                spare_retry_at: Mutex::new(Instant::now()),
                group_bytes_avg: AtomicU64::new(0),
                pool: Mutex::new(Vec::new()),
                reads_in_flight: Mutex::new(0),
                recycle_paused_until: Mutex::new(Instant::now()),
            },
            marks: Marks {
                processed: Mutex::new(rec.processed),
                checkpoint_lock: Mutex::new(Instant::now()),
                id_reserved: AtomicU64::new(rec.next_id),
            },
            house: House { state: Mutex::new(HouseState::default()), cv: Condvar::new() },
            readers: Readers {
                notify_fds: Mutex::new(Vec::new()),
                cursor: Mutex::new(None),
                buf: Mutex::new(Vec::new()),
            },
            stats,
            closed: AtomicBool::new(false),
            cfg,
        });
        if active.is_none() {
            let index = table.last().map_or(1, |s| s.index + 1);
            active = Some(inner.create_segment(index, rec.next_id)?);
            table.push(info_of(active.as_ref().unwrap(), &inner.seg_dir));
        }
        let active = active.expect("active segment");
        inner.segments.active_index.store(active.index, Relaxed);
        *lock(&inner.commit.sync_target) = Some((Arc::clone(&active.file), written_id));
        lock(&inner.segments.io).active = Some(active);
        *inner.segments.table.write().unwrap() = table;
        // Persist what recovery learned (gaps, removed segments) and reserve ids before appending.
        inner.checkpoint_reserving(rec.next_id.saturating_add(ID_RESERVATION_BLOCK))?;

        let wal = Wal { inner, threads: Mutex::new(Vec::new()) };
        wal.start_threads()?;
        Ok(wal)
    }

    fn start_threads(&self) -> Result<()> {
        let mut threads = lock(&self.threads);
        for (name, body) in [
            ("signaldb-wal-flusher", Inner::flusher_loop as fn(&Inner)),
            ("signaldb-wal-house", Inner::housekeeper_loop),
        ] {
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
        let id = self.inner.enqueue(std::iter::once(payload), kind, true)?;
        self.inner.await_ids(id, id)?;
        Ok(id)
    }

    /// Appends records as one group; returns the first id (ids are contiguous).
    pub fn append_batch<'a>(&self, payloads: impl ExactSizeIterator<Item = &'a [u8]>, kind: Kind) -> Result<u64> {
        let n = payloads.len() as u64;
        if n == 0 {
            return Err(WalError::InvalidArgument("append_batch needs at least one payload".into()));
        }
        let first = self.inner.enqueue(payloads, kind, true)?;
        self.inner.await_ids(first, first + n - 1)?;
        Ok(first)
    }

    /// Queues a record without waiting. The flusher acknowledges it; watch
    /// `done_id`, `take_failure` and `poisoned`, or register a notify fd.
    pub fn enqueue(&self, payload: &[u8], kind: Kind) -> Result<u64> {
        let id = self.inner.enqueue(std::iter::once(payload), kind, false)?;
        let mut st = lock(&self.inner.commit.state);
        st.async_wanted = st.async_wanted.max(id);
        self.inner.commit.flusher_cv.notify_one();
        Ok(id)
    }

    /// Highest id whose fate is decided: acknowledged unless `take_failure` says otherwise.
    pub fn done_id(&self) -> u64 {
        self.inner.commit.done_id.load(Acquire)
    }

    pub fn has_failures(&self) -> bool {
        self.inner.commit.has_failures.load(Acquire)
    }

    /// The reason `id`'s append failed, once (the entry is forgotten after).
    pub fn take_failure(&self, id: u64) -> Option<WalError> {
        let mut st = lock(&self.inner.commit.state);
        let r = st.failures.remove(&id).map(Failure::into_error);
        if st.failures.is_empty() {
            self.inner.commit.has_failures.store(false, Release);
        }
        r
    }

    pub fn poisoned(&self) -> Option<String> {
        lock(&self.inner.commit.state).poisoned.clone()
    }

    /// `fd` gets one byte written after every group commit (async wake-ups).
    pub fn register_notify_fd(&self, fd: RawFd) {
        lock(&self.inner.readers.notify_fds).push(fd);
    }

    pub fn unregister_notify_fd(&self, fd: RawFd) {
        lock(&self.inner.readers.notify_fds).retain(|&f| f != fd);
    }

    /// Makes everything appended so far durable, then checkpoints processed
    /// marks and deletes fully processed segments.
    pub fn flush(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.flush_all()?;
        self.inner.checkpoint()
    }

    /// Makes the processed marks so far durable (writes the checkpoint now instead
    /// of at the next once-a-second one), without waiting for appends. For a
    /// consumer that must not see an acknowledged entry again after a crash.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.checkpoint()
    }

    /// Marks entries processed (idempotent). Unknown ids are an error.
    pub fn mark_processed(&self, ids: &[u64]) -> Result<()> {
        self.inner.check_open()?;
        let next_id = lock(&self.inner.commit.queue).next_id;
        if let Some(&bad) = ids.iter().find(|&&id| id == 0 || id >= next_id) {
            return Err(WalError::InvalidArgument(format!(
                "mark_processed: no WAL entry has id {bad} (ids so far are 1..{next_id})"
            )));
        }
        let mut p = lock(&self.inner.marks.processed);
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

    /// `stats().unprocessed_bytes` without assembling the rest (for per-request backpressure).
    pub fn unprocessed_bytes(&self) -> u64 {
        self.inner.unprocessed_bytes()
    }

    /// `stats().processed_watermark` alone: every id at or below it is processed.
    /// One short lock, no disk I/O (the forwarder asks once per round).
    pub fn processed_watermark(&self) -> u64 {
        lock(&self.inner.marks.processed).watermark()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Acquire)
    }

    /// Writes and syncs what is queued, checkpoints, stops the threads. Idempotent.
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.load(Acquire) {
            return Ok(());
        }
        let result = if lock(&self.inner.commit.state).poisoned.is_none() { self.inner.flush_all() } else { Ok(()) };
        if let Err(e) = self.inner.checkpoint() {
            // Entries are durable in the segments; a missed checkpoint only means a replay.
            log::warn!("WAL checkpoint at close failed: {e}");
        }
        self.inner.closed.store(true, Release);
        {
            let mut st = lock(&self.inner.commit.state);
            st.shutdown = true;
            self.inner.commit.flusher_cv.notify_all();
        }
        self.inner.wake_all_waiters();
        self.inner.wake_housekeeper(|h| h.shutdown = true);
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        self.inner.notify_async_waiters();
        let spare = {
            let _creating = lock(&self.inner.segments.spare_creation);
            lock(&self.inner.segments.spare).take()
        };
        let pool = std::mem::take(&mut *lock(&self.inner.segments.pool));
        if let Some(spare) = &spare {
            // Not needed: a spare left behind (a crash) is removed by recovery just the same.
            let _ = std::fs::remove_file(&spare.path);
        }
        for path in &pool {
            // Temp names: recovery would remove them too.
            let _ = std::fs::remove_file(path);
        }
        if spare.is_some() || !pool.is_empty() {
            let _ = fsutil::fsync_dir(&self.inner.seg_dir);
        }
        lock(&self.inner.segments.io).active = None; // closes the segment file
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
    let tail = if a.recycled { crate::scan::Tail::Stale } else { crate::scan::Tail::Zeros };
    SegmentInfo {
        index: a.index,
        path: seg_dir.join(crate::format::segment_file_name(a.index)),
        first_id: a.first_id,
        last_id: a.last_id,
        data_end: a.write_offset,
        file_len: a.prealloc_len.max(a.write_offset),
        sealed: false,
        verified_end: 0,
        known_damage: Vec::new(),
        prev_id: a.prev_id,
        data_start: crate::format::header_len(a.version) as u64,
        rules: crate::scan::Rules { salts: [a.salt; 2], tail },
        recyclable: a.version >= crate::format::FORMAT_VERSION,
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
        prev_id: info.prev_id,
        salt: info.rules.salts[0],
        recycled: info.rules.tail != crate::scan::Tail::Zeros,
        version: if info.data_start == SEGMENT_HEADER_LEN as u64 {
            crate::format::FORMAT_VERSION_1
        } else {
            crate::format::FORMAT_VERSION
        },
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

    /// Makes ids below `wanted` (and a block more) durable as reserved.
    fn reserve_ids(&self, wanted: u64) -> Result<()> {
        if self.marks.id_reserved.load(Acquire) >= wanted {
            return Ok(());
        }
        self.checkpoint_reserving(wanted.saturating_add(ID_RESERVATION_BLOCK))
    }

    /// Encodes and queues records; returns the first id. `borrow`: the
    /// caller waits for the outcome (`await_ids`), so its bytes are not copied.
    fn enqueue<'a>(&self, payloads: impl Iterator<Item = &'a [u8]>, kind: Kind, borrow: bool) -> Result<u64> {
        self.check_open()?;
        if let Some(p) = &lock(&self.commit.state).poisoned {
            return Err(WalError::Poisoned(p.clone()));
        }
        let payloads: Vec<&[u8]> = payloads.collect();
        if let Some(big) = payloads.iter().find(|p| p.len() > MAX_PAYLOAD_LEN) {
            return Err(WalError::InvalidArgument(format!(
                "WAL entry of {} bytes exceeds the maximum of {MAX_PAYLOAD_LEN}",
                big.len()
            )));
        }
        let now = stats::unix_nanos_now();
        let mut q = lock(&self.commit.queue);
        if self.commit.poisoned.load(Acquire) {
            drop(q);
            let why = lock(&self.commit.state).poisoned.clone().unwrap_or_default();
            return Err(WalError::Poisoned(why));
        }
        // Hand out only ids below the durable reservation, so that no id is
        // ever handed out twice, even if acknowledged entries die in a power
        // cut (batched mode) before their records reach the disk.
        let Some(end) = q.next_id.checked_add(payloads.len() as u64).filter(|&e| e < MAX_ID) else {
            return Err(WalError::InvalidArgument("WAL ids are exhausted (next id near 2^64)".into()));
        };
        while end > self.marks.id_reserved.load(Acquire) {
            let wanted = end;
            drop(q);
            self.reserve_ids(wanted)?;
            q = lock(&self.commit.queue);
        }
        let first = q.next_id;
        let n = payloads.len() as u64;
        let payload_bytes: usize = payloads.iter().map(|p| p.len()).sum();
        let bytes = (payload_bytes + payloads.len() * RECORD_HEADER_LEN) as u64;
        let data = if payload_bytes <= payloads.len() * ENCODE_MAX_AVG_PAYLOAD {
            let mut buf = Vec::with_capacity(bytes as usize);
            encode_records(&mut buf, first, now, kind, &payloads);
            CallData::Encoded(buf)
        } else {
            let pieces = (first..).zip(&payloads).map(|(id, payload)| {
                let header = encode_record_header(id, now, kind, payload);
                let payload = if borrow {
                    Payload::Borrowed { ptr: payload.as_ptr(), len: payload.len() }
                } else {
                    Payload::Owned(payload.to_vec())
                };
                (header, payload)
            });
            CallData::Pieces(pieces.collect())
        };
        q.items.push_back(Queued { first_id: first, n, bytes, data, salt: 0 });
        q.next_id += n;
        drop(q);
        self.stats.appended_entries.fetch_add(n, Relaxed);
        self.stats.appended_bytes.fetch_add(payload_bytes as u64, Relaxed);
        Ok(first)
    }

    /// Waits until ids `first..=last` are decided; errors if any failed.
    fn await_ids(&self, first: u64, last: u64) -> Result<()> {
        match self.cfg.sync_mode {
            SyncMode::Immediate => self.commit_until(last, false),
            SyncMode::Batched => {
                self.write_queued();
                let st = lock(&self.commit.state);
                if st.sync_wanted {
                    self.commit.flusher_cv.notify_one();
                }
            }
        }
        self.outcome(first, last)
    }

    fn outcome(&self, first: u64, last: u64) -> Result<()> {
        // Acknowledged and no failure anywhere: no lock (the callers one sync
        // woke leave together; a lock here would queue them up again). A
        // failure is recorded before `done_id` passes its id, so `done_id`
        // is read first.
        if self.commit.done_id.load(Acquire) >= last && !self.commit.has_failures.load(Acquire) {
            return Ok(());
        }
        let mut st = lock(&self.commit.state);
        let mut failure = None;
        if self.commit.has_failures.load(Acquire) {
            for id in first..=last {
                if let Some(f) = st.failures.remove(&id) {
                    failure.get_or_insert(f);
                }
            }
            if st.failures.is_empty() {
                self.commit.has_failures.store(false, Release);
            }
        }
        if let Some(f) = failure {
            return Err(f.into_error());
        }
        if self.commit.done_id.load(Acquire) >= last {
            return Ok(());
        }
        match &st.poisoned {
            Some(p) => Err(WalError::Poisoned(p.clone())),
            None if self.closed.load(Acquire) => Err(WalError::Closed),
            None => Err(WalError::Poisoned("entry was not acknowledged".into())),
        }
    }

    fn poison(&self, why: String) {
        log::error!(dir:% = self.dir.display(), error = why.as_str();
            "WAL {} stops accepting writes (fail-stop): {why}", self.dir.display());
        let mut st = lock(&self.commit.state);
        if st.poisoned.is_none() {
            st.poisoned = Some(why);
        }
        self.commit.poisoned.store(true, Release);
        lock(&self.commit.queue).items.clear();
        self.commit.flusher_cv.notify_all();
        drop(st);
        self.wake_all_waiters();
        self.notify_async_waiters();
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

    fn is_poisoned(&self) -> bool {
        lock(&self.commit.state).poisoned.is_some()
    }

    fn notify_async_waiters(&self) {
        let fds = lock(&self.readers.notify_fds);
        for &fd in fds.iter() {
            // SAFETY: writing one byte from a valid buffer; a full pipe (EAGAIN) already has a wake-up.
            unsafe { libc::write(fd, [1u8].as_ptr() as *const libc::c_void, 1) };
        }
    }
}
