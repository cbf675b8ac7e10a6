//! Opening a WAL directory: read the checkpoint, scan every segment that may
//! hold unprocessed entries (verifying every CRC, once), repair what a crash
//! left, and hand the engine its starting state.
//!
//! Replay before append: nothing is written until recovery has decided where
//! the valid data ends. Each segment file goes through one step
//! (`recover_segment`), which reads it once and decides by this table
//! (`classify`; the table-driven test below mirrors it). "Trailing" files are
//! the ones after the last file holding any non-zero byte; "last" is that
//! file. Records are scanned by `scan`'s own decision table (torn tail in the
//! last segment, corruption elsewhere).
//!
//! | header      | valid records | other bytes | position | verdict        | action |
//! |-------------|---------------|-------------|----------|----------------|--------|
//! | other version | any         | any         | any      | `Refuse`       | error, change nothing |
//! | v2, SPARE   | not looked at | stale       | trailing / last | `Spare` | delete unread (a recycled file made into a spare, never used) |
//! | v2, SPARE   | not looked at | stale       | older    | `Empty`        | delete unread (a recycled file marked before its rename) |
//! | zero        | none          | all zero    | trailing | `Spare`        | delete (a spare made ahead, or a rotation cut before its first fdatasync) |
//! | zero        | none          | all zero    | older    | `Empty`        | delete (never keep an empty segment) |
//! | damaged     | none, no damage after it | | older | `Empty`       | report the header as corruption, delete |
//! | zero/damaged| none          | non-zero    | last     | `TornRotation` | delete, count a torn tail (header and first records never synced) |
//! | valid       | any           | any         | last     | `Active`       | keep; torn tail erased; appends continue in it |
//! | valid       | any           | any         | older    | `Sealed`       | keep |
//! | zero/damaged| some, or none with damage | | any    | `DamagedHeader`| quarantine the header (if damaged), keep the records, never append to it |
//!
//! A spare's name was made durable (directory fsync) before it could get a
//! record, and its first records are acknowledged only after an fdatasync of
//! the file: so a spare cut by a power loss holds either nothing (all zero)
//! or a torn tail after a valid header, never acknowledged data in a file
//! whose name may vanish.
//!
//! Recycled segments (v2 header flag RECYCLED): their bytes after the data
//! are stale records of the file's older use, which never verify (salted CRC,
//! ids below the base id). A sealed one is checked up to the data end the
//! next segment's header gives (`prev_data_end`: damage before it, even to
//! its last records, is corruption; the rest is not looked at); the last one
//! (or a sealed one whose successor does not say) ends at its zero record
//! header (`scan::Tail::Stale`). Making a recycled spare, and what a crash
//! between its steps leaves (all covered by the rows above):
//!
//! | crash after                                 | on disk                                      | recovery |
//! |---------------------------------------------|----------------------------------------------|----------|
//! | the checkpoint that dooms the segment       | a processed segment under its old name       | deleted as processed (next segment's base id), or kept and replayed if the checkpoint is lost |
//! | the SPARE header write, before its fdatasync | old header, SPARE header, or a torn mix     | SPARE: `Empty`; old: as above; torn: `DamagedHeader` over the file's own (processed) records, or deleted as processed |
//! | the fdatasync, before the rename            | SPARE header under the old name              | `Empty`: deleted unread |
//! | the rename, before the directory fsync      | SPARE header under the old or the new name   | `Empty` or `Spare`: deleted unread |
//! | the rotation's header + records, before their fdatasync | SPARE, RECYCLED or a torn mix of the two; stale bytes or some new records | SPARE: `Spare`; RECYCLED: `Active` (torn tail erased, nothing acknowledged); torn: `TornRotation`, or `DamagedHeader` if a whole new record landed (stale records never verify: salted with another segment number) |
//! | the first fdatasync                         | RECYCLED header, records, terminator, stale  | `Active`, no torn tail |
//!
//! Memory: one segment image at a time, plus the segment table.
//!
//! One pass: each record's CRC is checked once here; the segments recovery
//! verified are marked so (`SegmentInfo::verified_end`), and the first read
//! of the unprocessed entries trusts those bytes instead of checking them
//! again. The next files (8 MiB of them) are read ahead
//! (`posix_fadvise(WILLNEED)`) while the current one is checked.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::error::{Result, WalError};
use crate::format::{
    decode_segment_header, parse_segment_file_name, segment_salt, HeaderState, SEGMENT_HEADER_LEN,
    SEGMENT_HEADER_LEN_V2,
};
use crate::fsutil;
use crate::metadata::{self, Metadata};
use crate::processed::Processed;
use crate::scan::{scan_records_with, Damage, DamageKind, Rules, Tail};
use crate::segment::{SegmentInfo, SPARE_PREFIX};
use crate::stats::Stats;

pub const SEGMENTS_DIR: &str = "segments";
pub const QUARANTINE_DIR: &str = "quarantine";
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The state recovery hands to the engine.
pub struct Recovered {
    /// Oldest first. All sealed except possibly the last.
    pub segments: Vec<SegmentInfo>,
    pub next_id: u64,
    pub processed: Processed,
    /// The last segment may take more appends (its header is sound).
    pub last_is_appendable: bool,
    pub metadata_found: bool,
}

/// Lists `(index, path)` of segment files, oldest first, removing leftover temp files.
pub fn list_segments(seg_dir: &Path, remove_leftovers: bool) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let mut removed = false;
    for entry in fs::read_dir(seg_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(index) = parse_segment_file_name(name) {
            found.push((index, entry.path()));
        } else if remove_leftovers && (name.starts_with(SPARE_PREFIX) || name.starts_with('.')) {
            fs::remove_file(entry.path())?;
            removed = true;
        }
    }
    if removed {
        fsutil::fsync_dir(seg_dir)?;
    }
    found.sort_unstable_by_key(|&(i, _)| i);
    Ok(found)
}

/// Reads the whole file into `buf`, reusing its memory: a fresh 1 MiB
/// allocation per segment is fresh pages each time (page faults, zeroing by
/// the kernel), a measurable share of a cold open of hundreds of segments.
fn read_file(path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut f = File::open(path)?;
    buf.clear();
    buf.reserve(f.metadata()?.len() as usize);
    f.read_to_end(buf)?;
    Ok(())
}

/// The header of segment file `path` (v1 or v2).
pub fn read_header(path: &Path) -> io::Result<HeaderState> {
    let mut buf = [0u8; SEGMENT_HEADER_LEN_V2];
    let n = File::open(path)?.read_at(&mut buf, 0)?;
    Ok(decode_segment_header(&buf[..n]))
}

/// Loads the checkpoint; a damaged one is reported and replaced by defaults
/// (every entry is then replayed: at-least-once, never lost).
fn load_metadata(dir: &Path, stats: &Stats) -> Result<(Metadata, bool)> {
    match metadata::load(dir) {
        Ok(Some(m)) => Ok((m, true)),
        Ok(None) => Ok((Metadata::default(), false)),
        Err(metadata::LoadError::Invalid(why)) => {
            let file = dir.join(metadata::METADATA_FILE);
            log::warn!(
                file:% = file.display(), why:% = why;
                "WAL metadata {} is unusable ({why}); replaying every entry in the segments",
                file.display()
            );
            stats.checkpoints_refused.fetch_add(1, Relaxed);
            Ok((Metadata::default(), false))
        }
        Err(metadata::LoadError::Io(e)) => Err(WalError::io(format!("reading {}", dir.display()), e)),
    }
}

/// Copies a damaged byte range to `<dir>/quarantine/` (once per range).
fn quarantine(dir: &Path, seg_name: &str, image: &[u8], d: &Damage) -> Option<PathBuf> {
    let qdir = dir.join(QUARANTINE_DIR);
    let path = qdir.join(format!("{seg_name}@{}+{}.bad", d.offset, d.len));
    let attempt = || -> io::Result<()> {
        fsutil::ensure_dir(&qdir)?;
        if !path.exists() {
            // A range past the end of the file (a truncated segment, see `scan`) has no bytes left.
            let end = (d.offset + d.len).min(image.len());
            fsutil::write_atomic(&path, &image[d.offset.min(end)..end])?;
        }
        Ok(())
    };
    match attempt() {
        Ok(()) => Some(path),
        Err(e) => {
            log::error!(segment = seg_name, offset = d.offset, error:% = e;
                "WAL quarantine of {seg_name} at offset {} failed: {e}", d.offset);
            None
        }
    }
}

/// Zeroes a torn tail and cuts the file back to at most `keep_len`, durably.
fn erase_torn_tail(path: &Path, d: &Damage, file_len: u64, keep_len: u64) -> io::Result<u64> {
    let file = fsutil::open_rw(path, false)?;
    let start = d.offset as u64;
    let new_len = file_len.min(keep_len.max(start));
    if new_len < file_len {
        file.set_len(new_len)?;
    }
    let zero_end = (start + d.len as u64).min(new_len);
    if zero_end > start {
        fsutil::write_zeros_at(&file, start, zero_end - start)?;
    }
    file.sync_all()?;
    Ok(new_len)
}

struct Progress {
    started: Instant,
    last_log: Instant,
    expected: Option<u64>,
    seen: u64,
}

impl Progress {
    fn tick(&mut self) {
        self.seen += 1;
        if self.seen.is_multiple_of(4096) && self.last_log.elapsed() >= PROGRESS_EVERY {
            self.last_log = Instant::now();
            match self.expected {
                Some(m) => log::info!(entries = self.seen, expected = m; "WAL replay: {}/{m} entries", self.seen),
                None => log::info!(entries = self.seen; "WAL replay: {} entries", self.seen),
            }
        }
    }
}

/// What recovery does with one segment file (the module doc's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Refuse,
    Spare,
    Empty,
    TornRotation,
    Active,
    Sealed,
    DamagedHeader,
}

/// The decision table: `records` valid records found, `damaged` whether the
/// scan found damage, `all_zero` whether every byte is zero, `is_last` /
/// `trailing` its position (see the module doc).
pub fn classify(
    header: HeaderState,
    records: u64,
    damaged: bool,
    all_zero: bool,
    is_last: bool,
    trailing: bool,
) -> Verdict {
    match header {
        HeaderState::UnsupportedVersion(_) => Verdict::Refuse,
        // Stale contents, never scanned (`records` is 0 for it).
        HeaderState::Valid(h) if h.spare() => {
            if trailing || is_last {
                Verdict::Spare
            } else {
                Verdict::Empty
            }
        }
        HeaderState::Zero if records == 0 && all_zero => {
            if trailing {
                Verdict::Spare
            } else {
                Verdict::Empty
            }
        }
        HeaderState::Zero | HeaderState::Damaged if records == 0 && is_last => Verdict::TornRotation,
        // A damaged header over nothing at all (no records, no damage after it).
        HeaderState::Damaged if records == 0 && !damaged => Verdict::Empty,
        HeaderState::Valid(_) if is_last => Verdict::Active,
        HeaderState::Valid(_) => Verdict::Sealed,
        // Records without a sound header, or damage alone: keep what verifies.
        HeaderState::Zero | HeaderState::Damaged => Verdict::DamagedHeader,
    }
}

/// State carried from one segment to the next.
struct Walk<'a> {
    dir: &'a Path,
    seg_dir: PathBuf,
    max_segment_size: u64,
    stats: &'a Stats,
    watermark: u64,
    processed: Processed,
    /// The next id expected, for gap detection.
    expected_id: u64,
    /// The id before the next record (chains ids across segments).
    prev_id: u64,
    max_base_id: u64,
    progress: Progress,
}

fn io_err(what: &str, p: &Path, e: io::Error) -> WalError {
    WalError::io(format!("{what} {}", p.display()), e)
}

/// How far recovery reads ahead of the file it checks: several requests in
/// flight keep a virtual disk busier than one. With 1 MiB segments, 8 files
/// ahead instead of 1 took a cold recovery of 1M 200-byte entries from
/// 0.17-0.18 s to 0.15-0.17 s here.
const READ_AHEAD_BYTES: u64 = 8 << 20;

/// Files to read ahead (at least the next one).
fn read_ahead_window(max_segment_size: u64) -> usize {
    (READ_AHEAD_BYTES / max_segment_size.max(1)).max(1) as usize
}

/// Hints the kernel to read `path` now, so the disk works while we check the current file.
fn read_ahead(path: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = File::open(path) {
        // SAFETY: advice on a file descriptor we own; failure is harmless.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
    }
}

impl Walk<'_> {
    fn remove(&self, path: &Path, what: &str) -> Result<()> {
        fs::remove_file(path).map_err(|e| io_err(what, path, e))?;
        fsutil::fsync_dir(&self.seg_dir).map_err(|e| io_err("syncing", &self.seg_dir, e))
    }

    /// One segment: scan, classify, repair. Returns the segment to keep, if any.
    fn recover_segment(
        &mut self,
        index: u64,
        path: PathBuf,
        image: &[u8],
        is_last: bool,
        next_header: Option<HeaderState>,
    ) -> Result<Option<SegmentInfo>> {
        let seg_name = crate::format::segment_file_name(index);
        let header = decode_segment_header(image);
        let spare = matches!(header, HeaderState::Valid(h) if h.spare());
        if let HeaderState::Valid(h) = header {
            if !spare {
                self.prev_id = self.prev_id.max(h.base_id.saturating_sub(1));
                self.max_base_id = self.max_base_id.max(h.base_id);
            }
        }
        let chain_start = self.prev_id;
        let (start, rules) = scan_rules(header, index, next_header, is_last);
        // A SPARE file's contents are stale: never scanned.
        let image_to_scan = if spare { &image[..0] } else { image };
        let (watermark, expected_id, processed, progress) =
            (self.watermark, &mut self.expected_id, &mut self.processed, &mut self.progress);
        let scan = scan_records_with(image_to_scan, start, chain_start, is_last, rules, |h, _| {
            if h.id > watermark {
                if h.id > *expected_id {
                    processed.add_gap(*expected_id, h.id - 1);
                }
                *expected_id = h.id.saturating_add(1);
            }
            progress.tick();
        });
        let all_zero = scan.records == 0 && scan.damages.is_empty() && image.iter().all(|&b| b == 0);
        let verdict = classify(header, scan.records, !scan.damages.is_empty(), all_zero, is_last, false);
        match verdict {
            Verdict::Refuse => {
                let HeaderState::UnsupportedVersion(version) = header else { unreachable!() };
                return Err(WalError::UnsupportedFormat { path, version });
            }
            Verdict::Spare | Verdict::Empty if spare => {
                log::debug!("WAL removes recycled spare segment {seg_name} (stale contents, never used)");
                self.remove(&path, "removing spare segment")?;
                return Ok(None);
            }
            Verdict::Spare | Verdict::Empty => {
                if header == HeaderState::Damaged {
                    let d = Damage { kind: DamageKind::Corrupt, offset: 0, len: SEGMENT_HEADER_LEN.min(image.len()) };
                    report_corruption(self.dir, &seg_name, image, &d, self.stats);
                }
                self.remove(&path, "removing empty segment")?;
                return Ok(None);
            }
            Verdict::TornRotation => {
                log::warn!(
                    segment = seg_name.as_str();
                    "WAL torn tail: segment {seg_name} holds no valid header and no complete record \
                     (a rotation interrupted by a crash); removed"
                );
                self.stats.torn_tails_truncated.fetch_add(1, Relaxed);
                self.remove(&path, "removing empty segment")?;
                return Ok(None);
            }
            Verdict::DamagedHeader if header == HeaderState::Damaged => {
                let d = Damage { kind: DamageKind::Corrupt, offset: 0, len: SEGMENT_HEADER_LEN.min(image.len()) };
                report_corruption(self.dir, &seg_name, image, &d, self.stats);
            }
            Verdict::DamagedHeader | Verdict::Active | Verdict::Sealed => {}
        }
        let mut file_len = image.len() as u64;
        for d in &scan.damages {
            match d.kind {
                DamageKind::Corrupt => report_corruption(self.dir, &seg_name, image, d, self.stats),
                DamageKind::TornTail => {
                    // Keep a copy: a bit flip in the very last record reads the same as a torn write.
                    let saved = quarantine(self.dir, &seg_name, image, d);
                    log::warn!(
                        segment = seg_name.as_str(), offset = d.offset, bytes = d.len,
                        copy:% = saved.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                        "WAL torn tail in segment {seg_name} at offset {}: {} bytes of an unacknowledged \
                         write erased{}",
                        d.offset,
                        d.len,
                        saved.as_ref().map(|p| format!(" (copy in {})", p.display())).unwrap_or_default()
                    );
                    file_len = erase_torn_tail(&path, d, file_len, self.max_segment_size)
                        .map_err(|e| io_err("truncating torn tail of", &path, e))?;
                    self.stats.torn_tails_truncated.fetch_add(1, Relaxed);
                }
            }
        }
        if let Some(last) = scan.last_id {
            self.prev_id = last;
        }
        let known_damage: Vec<u64> =
            scan.damages.iter().filter(|d| d.kind == DamageKind::Corrupt).map(|d| d.offset as u64).collect();
        Ok(Some(SegmentInfo {
            index,
            path,
            first_id: scan.first_id,
            last_id: scan.last_id,
            data_end: scan.data_end as u64,
            file_len,
            sealed: verdict != Verdict::Active,
            // Every CRC up to here was checked just now; damage makes a reader re-check.
            verified_end: if known_damage.is_empty() { scan.data_end as u64 } else { 0 },
            known_damage,
            prev_id: chain_start,
            data_start: start as u64,
            // Readers stop at `data_end`; a recycled segment's stale bytes are past it.
            // They keep the rules recovery used: under `KnownEnd` a zero record
            // header before the end is damage recovery counted (found by fuzzing,
            // B8: under `Stale` the reader stopped there and never delivered the
            // records after it that recovery had counted as unprocessed).
            rules,
            recyclable: matches!(header, HeaderState::Valid(h) if h.version >= crate::format::FORMAT_VERSION),
        }))
    }
}

/// Where a segment's records start and how they are checked, from its header
/// (and, for a sealed recycled one, the next segment's header: the end of its data).
pub fn scan_rules(header: HeaderState, index: u64, next: Option<HeaderState>, is_last: bool) -> (usize, Rules) {
    match header {
        HeaderState::Valid(h) => {
            let salt = h.salt(index);
            let tail = match next {
                _ if !h.recycled() => Tail::Zeros,
                Some(HeaderState::Valid(n)) if !is_last && !n.spare() && n.prev_data_end >= h.data_start() as u64 => {
                    Tail::KnownEnd(usize::try_from(n.prev_data_end).unwrap_or(usize::MAX))
                }
                _ => Tail::Stale,
            };
            (h.data_start(), Rules { salts: [salt; 2], tail })
        }
        // Unknown version: records start at the v1 offset (v2 header bytes after it
        // read as damage), and verify under either version's salt.
        _ => (SEGMENT_HEADER_LEN, Rules { salts: [segment_salt(index), 0], tail: Tail::Zeros }),
    }
}

/// Whether every byte of the file is zero (a spare, or an empty file).
fn all_zero_file(path: &Path) -> io::Result<bool> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// Recovers `dir` (which exists and is locked by the caller).
pub fn recover(dir: &Path, max_segment_size: u64, stats: &Stats) -> Result<Recovered> {
    let seg_dir = dir.join(SEGMENTS_DIR);
    let (mut meta, metadata_found) = load_metadata(dir, stats)?;
    // New ids start above every processed mark, even one a checkpoint put at or
    // beyond its own reservation: an entry must never be born processed.
    let highest_mark = meta.processed_ids.iter().copied().max().unwrap_or(0).max(meta.processed_watermark);
    meta.next_id = meta.next_id.max(highest_mark.saturating_add(1));
    let watermark = meta.processed_watermark;
    let processed = Processed::new(watermark, meta.processed_ids.iter().copied());
    let mut files = list_segments(&seg_dir, true).map_err(|e| io_err("listing", &seg_dir, e))?;

    // Trailing spares (the `Spare` row): all-zero files after the last one with data.
    let mut spares = 0;
    while let Some((_, path)) = files.last() {
        let spare_header = matches!(read_header(path), Ok(HeaderState::Valid(h)) if h.spare());
        if !spare_header && !all_zero_file(path).map_err(|e| io_err("reading", path, e))? {
            break;
        }
        let (index, path) = files.pop().unwrap();
        log::debug!("WAL removes spare segment {} (made ahead, never used)", crate::format::segment_file_name(index));
        fs::remove_file(&path).map_err(|e| io_err("removing spare segment", &path, e))?;
        spares += 1;
    }
    if spares > 0 {
        fsutil::fsync_dir(&seg_dir).map_err(|e| io_err("syncing", &seg_dir, e))?;
    }

    // Segments wholly at or below the watermark: the next segment's base id says so.
    let mut skip = 0;
    while skip + 1 < files.len() {
        match read_header(&files[skip + 1].1).map_err(|e| io_err("reading", &files[skip + 1].1, e))? {
            // A recycled file marked SPARE (stale contents): it says nothing of its neighbours; it goes.
            HeaderState::Valid(h) if h.spare() => {
                let (_, path) = files.remove(skip + 1);
                fs::remove_file(&path).map_err(|e| io_err("removing spare segment", &path, e))?;
                fsutil::fsync_dir(&seg_dir).map_err(|e| io_err("syncing", &seg_dir, e))?;
            }
            HeaderState::Valid(h) if h.base_id.saturating_sub(1) <= watermark => skip += 1,
            _ => break,
        }
    }
    for (_, path) in files.drain(..skip) {
        fs::remove_file(&path).map_err(|e| io_err("removing processed segment", &path, e))?;
        stats.segments_deleted.fetch_add(1, Relaxed);
    }
    if skip > 0 {
        fsutil::fsync_dir(&seg_dir).map_err(|e| io_err("syncing", &seg_dir, e))?;
    }

    let unprocessed_hint = meta.next_id.checked_sub(1 + watermark).filter(|_| metadata_found);
    let mut walk = Walk {
        dir,
        seg_dir: seg_dir.clone(),
        max_segment_size,
        stats,
        watermark,
        processed,
        expected_id: watermark.saturating_add(1),
        prev_id: 0,
        max_base_id: 0,
        progress: Progress { started: Instant::now(), last_log: Instant::now(), expected: unprocessed_hint, seen: 0 },
    };
    let mut segments: Vec<SegmentInfo> = Vec::new();
    let count = files.len();
    let mut image = Vec::new();
    // The disk reads `window` files ahead while the current one is checked.
    let window = read_ahead_window(max_segment_size);
    for (_, path) in files.iter().skip(1).take(window - 1) {
        read_ahead(path);
    }
    for pos in 0..count {
        if let Some((_, next)) = files.get(pos + window) {
            read_ahead(next);
        }
        let (index, path) = files[pos].clone();
        read_file(&path, &mut image).map_err(|e| io_err("reading", &path, e))?;
        // The next segment's header says where a recycled segment's data ends
        // (read only then: on a cold open it would wait for the disk before the read-ahead).
        let recycled = matches!(decode_segment_header(&image), HeaderState::Valid(h) if h.recycled());
        let next_header = match files.get(pos + 1) {
            Some((next_index, next)) if recycled && *next_index == index + 1 => {
                Some(read_header(next).map_err(|e| io_err("reading", next, e))?)
            }
            _ => None,
        };
        if let Some(info) = walk.recover_segment(index, path, &image, pos + 1 == count, next_header)? {
            segments.push(info);
        }
    }
    let last_is_appendable = segments.last().is_some_and(|s| !s.sealed);

    let Walk { mut processed, expected_id, prev_id, max_base_id, progress, .. } = walk;
    // Saturating: damaged or hostile metadata and records may carry ids up to u64::MAX (the
    // `open_mutated` fuzz target); such a WAL must open, not panic or wrap around.
    let next_id = meta.next_id.max(prev_id.saturating_add(1)).max(max_base_id).max(watermark.saturating_add(1)).max(1);
    if next_id > expected_id {
        // Ids handed out before the crash whose records never reached the disk.
        processed.add_gap(expected_id, next_id - 1);
    }
    let unprocessed = processed.unprocessed_count(next_id);
    log::info!(
        unprocessed_entries = unprocessed, segments = segments.len(), dir:% = dir.display(),
        scanned_entries = progress.seen, secs = progress.started.elapsed().as_secs_f64();
        "WAL replay done: {unprocessed} unprocessed entries in {} segments of {} (scanned {} entries in {:.3}s)",
        segments.len(),
        dir.display(),
        progress.seen,
        progress.started.elapsed().as_secs_f64()
    );
    Ok(Recovered { segments, next_id, processed, last_is_appendable, metadata_found })
}

fn report_corruption(dir: &Path, seg_name: &str, image: &[u8], d: &Damage, stats: &Stats) {
    let saved = quarantine(dir, seg_name, image, d);
    stats.corrupt_entries.fetch_add(1, Relaxed);
    stats.corrupt_bytes.fetch_add(d.len as u64, Relaxed);
    log::error!(
        segment = seg_name, offset = d.offset, bytes = d.len,
        quarantine:% = saved.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        "WAL corruption in segment {seg_name} at offset {}: {} bytes skipped{}",
        d.offset,
        d.len,
        saved.as_ref().map(|p| format!(", copied to {}", p.display())).unwrap_or_default()
    );
}

#[cfg(test)]
mod tests {
    //! The module doc's decision table, row by row: first as `classify` sees
    //! it, then as whole files in a directory that `recover` opens.
    use super::*;
    use crate::format::{encode_record, encode_segment_header, Kind, SegmentHeader};

    const V: HeaderState =
        HeaderState::Valid(SegmentHeader { version: 1, flags: 0, base_id: 1, prev_last_id: 0, prev_data_end: 0 });

    #[test]
    fn decision_table() {
        use HeaderState::{Damaged, UnsupportedVersion, Zero};
        use Verdict::*;
        // (header, records, damaged, all_zero, is_last, trailing) -> verdict
        let rows = [
            (UnsupportedVersion(9), 3, false, false, true, false, Refuse),
            (UnsupportedVersion(9), 0, false, false, false, false, Refuse),
            (Zero, 0, false, true, true, true, Spare),
            (Zero, 0, false, true, false, false, Empty),
            (Damaged, 0, false, false, false, false, Empty),
            (Zero, 0, true, false, true, false, TornRotation),
            (Damaged, 0, true, false, true, false, TornRotation),
            (Damaged, 0, false, false, true, false, TornRotation),
            (V, 0, false, false, true, false, Active),
            (V, 5, true, false, true, false, Active),
            (V, 5, false, false, false, false, Sealed),
            (V, 0, true, false, false, false, Sealed),
            (Zero, 2, false, false, false, false, DamagedHeader),
            (Damaged, 2, true, false, true, false, DamagedHeader),
            (Damaged, 0, true, false, false, false, DamagedHeader),
        ];
        for (i, &(h, records, damaged, zero, last, trailing, want)) in rows.iter().enumerate() {
            assert_eq!(classify(h, records, damaged, zero, last, trailing), want, "row {i}");
        }
    }

    fn segment(base_id: u64, ids: &[u64], len: usize) -> Vec<u8> {
        let mut buf = encode_segment_header(base_id).to_vec();
        for &id in ids {
            encode_record(&mut buf, id, 0, Kind::Logs, &[id as u8; 40]);
        }
        buf.resize(len.max(buf.len()), 0);
        buf
    }

    /// A kept segment: index, first and last id, sealed.
    type Kept = (u64, Option<u64>, Option<u64>, bool);

    /// Files (index, bytes) as a crash left them -> (segments kept, next id,
    /// torn tails counted, files left in segments/).
    fn recover_files(files: &[(u64, Vec<u8>)]) -> (Vec<Kept>, u64, u64, Vec<String>) {
        let (kept, next, torn, _, _, left) = recover_and_read(files);
        (kept, next, torn, left)
    }

    #[test]
    fn spare_segment_without_records_is_removed() {
        // Power cut with a spare made ahead: the active segment keeps appending.
        let (kept, next, torn, left) = recover_files(&[(1, segment(1, &[1, 2, 3], 4096)), (2, vec![0; 4096])]);
        assert_eq!(kept, vec![(1, Some(1), Some(3), false)]);
        assert_eq!((next, torn), (4, 0));
        assert_eq!(left, vec!["000001.wal"]);
        // A bare spare (empty file) is a spare too.
        let (kept, _, _, left) = recover_files(&[(1, segment(1, &[1], 4096)), (2, Vec::new())]);
        assert_eq!(kept, vec![(1, Some(1), Some(1), false)]);
        assert_eq!(left, vec!["000001.wal"]);
    }

    #[test]
    fn spare_segment_with_records_is_the_active_segment() {
        // Rotation into the spare reached the disk: it is the active segment.
        let (kept, next, _, _) = recover_files(&[(1, segment(1, &[1, 2], 4096)), (2, segment(3, &[3, 4], 4096))]);
        assert_eq!(kept, vec![(1, Some(1), Some(2), true), (2, Some(3), Some(4), false)]);
        assert_eq!(next, 5);
    }

    #[test]
    fn spare_segment_with_a_torn_first_write_is_removed() {
        // Header and first records written into the spare but cut before the
        // fdatasync: part of it reached the disk (here a record, no header).
        let mut torn = vec![0u8; 4096];
        let full = segment(3, &[3], 4096);
        torn[SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + 30]
            .copy_from_slice(&full[SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + 30]);
        let (kept, next, torn_count, left) = recover_files(&[(1, segment(1, &[1, 2], 4096)), (2, torn)]);
        // Segment 1 stays sealed (the rotation fdatasynced it whole); the engine starts a new one.
        assert_eq!(kept, vec![(1, Some(1), Some(2), true)]);
        assert_eq!((next, torn_count), (3, 1));
        assert_eq!(left, vec!["000001.wal"]);
    }

    #[test]
    fn torn_tail_before_a_spare_is_a_torn_tail_not_corruption() {
        // The spare after it does not make the active segment "older".
        let mut active = segment(1, &[1, 2, 3], 4096);
        let end = SEGMENT_HEADER_LEN + 2 * (RECORD_HEADER_LEN_FOR_TEST + 40);
        active[end + 5] ^= 0xff; // record 3 torn
        let (kept, next, torn, _) = recover_files(&[(1, active), (2, vec![0; 4096])]);
        assert_eq!(kept, vec![(1, Some(1), Some(2), false)]);
        assert_eq!((next, torn), (3, 1));
    }

    const RECORD_HEADER_LEN_FOR_TEST: usize = crate::format::RECORD_HEADER_LEN;

    #[test]
    fn empty_segment_in_the_middle_is_removed() {
        let (kept, next, _, left) =
            recover_files(&[(1, segment(1, &[1], 4096)), (2, vec![0; 4096]), (3, segment(2, &[2], 4096))]);
        assert_eq!(kept, vec![(1, Some(1), Some(1), true), (3, Some(2), Some(2), false)]);
        assert_eq!(next, 3);
        assert_eq!(left, vec!["000001.wal", "000003.wal"]);
    }

    // -- format v2: recycled segments, SPARE files (the module doc's second table) --

    use crate::format::{
        encode_segment_header_v2, salt_records, segment_salt, FLAG_RECYCLED, FLAG_SPARE, SEGMENT_HEADER_LEN_V2,
    };

    /// A v2 segment `index` (records salted for it), then a terminator when
    /// `recycled`, then `stale` bytes, zero-padded to `len`.
    fn v2_segment(
        index: u64,
        flags: u32,
        base_id: u64,
        prev: (u64, u64),
        ids: &[u64],
        stale: &[u8],
        len: usize,
    ) -> Vec<u8> {
        let h = SegmentHeader { version: 2, flags, base_id, prev_last_id: prev.0, prev_data_end: prev.1 };
        let mut buf = encode_segment_header_v2(&h).to_vec();
        let mut recs = Vec::new();
        for &id in ids {
            encode_record(&mut recs, id, 0, Kind::Logs, &[id as u8; 40]);
        }
        salt_records(&mut recs, segment_salt(index));
        buf.extend_from_slice(&recs);
        if flags & FLAG_RECYCLED != 0 {
            buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN_FOR_TEST]);
        }
        buf.extend_from_slice(stale);
        buf.resize(len.max(buf.len()), 0);
        buf
    }

    /// What an older use of a file leaves: valid records of segment `old_index` with low ids.
    fn stale_bytes(old_index: u64, ids: &[u64]) -> Vec<u8> {
        let mut v = v2_segment(old_index, 0, ids[0], (0, 0), ids, &[], 0);
        v.drain(..SEGMENT_HEADER_LEN_V2);
        v
    }

    fn end_of(index: u64, ids: &[u64]) -> u64 {
        v2_segment(index, 0, 1, (0, 0), ids, &[], 0).len() as u64
    }

    /// Recovers `files` and also returns the corruption count and every id read back.
    fn recover_and_read(files: &[(u64, Vec<u8>)]) -> (Vec<Kept>, u64, u64, u64, Vec<u64>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let seg_dir = dir.path().join(SEGMENTS_DIR);
        fs::create_dir_all(&seg_dir).unwrap();
        for (index, bytes) in files {
            fs::write(seg_dir.join(crate::format::segment_file_name(*index)), bytes).unwrap();
        }
        let stats = Stats::default();
        let rec = recover(dir.path(), 4096, &stats).unwrap();
        let kept = rec.segments.iter().map(|s| (s.index, s.first_id, s.last_id, s.sealed)).collect();
        let mut ids = Vec::new();
        for s in &rec.segments {
            let mut r = crate::reader::SegmentReader::open(&s.path, s.data_start, s.data_end, s.prev_id).unwrap();
            r.set_rules(s.rules);
            loop {
                match r.next_step().unwrap() {
                    crate::reader::Step::Record { header, .. } => ids.push(header.id),
                    crate::reader::Step::Damaged { .. } => {}
                    crate::reader::Step::End => break,
                }
            }
        }
        let mut left: Vec<String> =
            fs::read_dir(&seg_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        (kept, rec.next_id, stats.torn_tails_truncated.load(Relaxed), stats.corrupt_entries.load(Relaxed), ids, left)
    }

    const SPARE_FLAGS: u32 = FLAG_RECYCLED | FLAG_SPARE;

    #[test]
    fn v2_decision_table_rows() {
        let sp = |base| {
            HeaderState::Valid(SegmentHeader {
                version: 2,
                flags: SPARE_FLAGS,
                base_id: base,
                prev_last_id: 0,
                prev_data_end: 0,
            })
        };
        let rc = HeaderState::Valid(SegmentHeader {
            version: 2,
            flags: FLAG_RECYCLED,
            base_id: 9,
            prev_last_id: 8,
            prev_data_end: 400,
        });
        // (header, records, damaged, all_zero, is_last, trailing) -> verdict
        assert_eq!(classify(sp(5), 0, false, false, true, false), Verdict::Spare);
        assert_eq!(classify(sp(5), 0, false, false, false, true), Verdict::Spare);
        assert_eq!(classify(sp(5), 0, false, false, false, false), Verdict::Empty);
        assert_eq!(classify(rc, 3, false, false, true, false), Verdict::Active);
        assert_eq!(classify(rc, 0, false, false, true, false), Verdict::Active);
        assert_eq!(classify(rc, 3, true, false, false, false), Verdict::Sealed);
    }

    #[test]
    fn recycled_last_segment_ends_at_its_terminator() {
        // Clean reopen: records, terminator, stale records of an older use: no torn tail, no corruption.
        let stale = stale_bytes(1, &[1, 2, 3, 4, 5, 6]);
        let (kept, next, torn, corrupt, ids, _) =
            recover_and_read(&[(7, v2_segment(7, FLAG_RECYCLED, 20, (0, 0), &[20, 21, 22], &stale, 4096))]);
        assert_eq!(kept, vec![(7, Some(20), Some(22), false)]);
        assert_eq!((next, torn, corrupt), (23, 0, 0));
        assert_eq!(ids, vec![20, 21, 22]);
        // No records yet: header, terminator, stale.
        let (kept, next, torn, corrupt, ids, _) =
            recover_and_read(&[(7, v2_segment(7, FLAG_RECYCLED, 20, (0, 0), &[], &stale, 4096))]);
        assert_eq!((kept, next, torn, corrupt, ids), (vec![(7, None, None, false)], 20, 0, 0, vec![]));
    }

    #[test]
    fn torn_tail_over_stale_records_is_a_torn_tail() {
        // An unsynced write landed in part: the next record's header, not its payload (stale follows).
        let mut torn = Vec::new();
        encode_record(&mut torn, 23, 0, Kind::Logs, &[9u8; 300]);
        salt_records(&mut torn, segment_salt(7));
        torn.truncate(60);
        let mut img = v2_segment(7, FLAG_RECYCLED, 20, (0, 0), &[20, 21, 22], &[], 0);
        let at = img.len() - RECORD_HEADER_LEN_FOR_TEST;
        img.truncate(at);
        img.extend_from_slice(&torn);
        img.extend_from_slice(&stale_bytes(1, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
        img.resize(4096, 0);
        let (kept, next, torn, corrupt, ids, _) = recover_and_read(&[(7, img)]);
        assert_eq!(kept, vec![(7, Some(20), Some(22), false)]);
        assert_eq!((next, torn, corrupt), (23, 1, 0));
        assert_eq!(ids, vec![20, 21, 22]);
    }

    #[test]
    fn sealed_recycled_segment_is_checked_up_to_the_end_its_successor_gives() {
        let stale = stale_bytes(1, &[1, 2, 3, 4, 5]);
        let a = v2_segment(7, FLAG_RECYCLED, 20, (0, 0), &[20, 21, 22], &stale, 4096);
        let end = end_of(7, &[20, 21, 22]);
        let b = v2_segment(8, FLAG_RECYCLED, 23, (22, end), &[23, 24], &stale, 4096);
        // Intact: stale bytes after the end are not looked at.
        let (kept, next, torn, corrupt, ids, _) = recover_and_read(&[(7, a.clone()), (8, b.clone())]);
        assert_eq!(kept, vec![(7, Some(20), Some(22), true), (8, Some(23), Some(24), false)]);
        assert_eq!((next, torn, corrupt, ids), (25, 0, 0, vec![20, 21, 22, 23, 24]));
        // A bit flip in the last record of the sealed one: corruption, not a torn tail.
        let mut flipped = a.clone();
        flipped[end as usize - 3] ^= 0x40;
        let (_, _, torn, corrupt, ids, left) = recover_and_read(&[(7, flipped), (8, b.clone())]);
        assert_eq!((torn, corrupt), (0, 1));
        assert_eq!(ids, vec![20, 21, 23, 24]);
        assert_eq!(left, vec!["000007.wal", "000008.wal"]);
        // The last record zeroed (it would read as a clean end): the successor's header says otherwise.
        let mut zeroed = a.clone();
        let last_start = end_of(7, &[20, 21]) as usize;
        zeroed[last_start..end as usize].fill(0);
        let (_, _, torn, corrupt, ids, _) = recover_and_read(&[(7, zeroed), (8, b)]);
        assert_eq!((torn, corrupt), (0, 1));
        assert_eq!(ids, vec![20, 21, 23, 24]);
    }

    #[test]
    fn spare_files_are_deleted_unread() {
        // Stale contents that would verify under the SPARE file's own number: never read.
        let spare_body = |index| {
            let mut v = v2_segment(index, SPARE_FLAGS, 30, (0, 0), &[], &[], 0);
            v.truncate(SEGMENT_HEADER_LEN_V2);
            v.extend_from_slice(&stale_bytes(index, &[1, 2, 3]));
            v.resize(4096, 0);
            v
        };
        let live = v2_segment(5, 0, 28, (0, 0), &[28, 29], &[], 4096);
        // Trailing (made into a spare, never used) and older (marked under its old name).
        let (kept, next, torn, corrupt, ids, left) =
            recover_and_read(&[(3, spare_body(3)), (5, live.clone()), (6, spare_body(6))]);
        assert_eq!(kept, vec![(5, Some(28), Some(29), false)]);
        assert_eq!((next, torn, corrupt, ids), (30, 0, 0, vec![28, 29]));
        assert_eq!(left, vec!["000005.wal"]);
        // A SPARE file alone.
        let (kept, _, torn, corrupt, _, left) = recover_and_read(&[(6, spare_body(6))]);
        assert_eq!((kept.len(), torn, corrupt, left.len()), (0, 0, 0, 0));
    }

    #[test]
    fn torn_header_over_a_spare_never_returns_stale_records() {
        // The rotation's RECYCLED header torn over the SPARE header, nothing else
        // landed, and no segment before it (deleted as processed): the stale
        // records carry ids a chain from 0 would take, but they were written under
        // another segment number and never verify.
        let mut img = v2_segment(9, SPARE_FLAGS, 30, (0, 0), &[], &[], 0);
        let good = v2_segment(9, FLAG_RECYCLED, 30, (29, 900), &[], &[], 0);
        img[16..40].copy_from_slice(&good[16..40]); // half new, half old: the CRC fails
        img.truncate(SEGMENT_HEADER_LEN_V2);
        img.extend_from_slice(&stale_bytes(2, &[3, 4, 5, 6]));
        img.resize(4096, 0);
        let (kept, next, torn, corrupt, ids, left) = recover_and_read(&[(9, img.clone())]);
        assert!(ids.is_empty(), "stale records returned: {ids:?}");
        assert_eq!((kept.len(), torn, corrupt, left.len()), (0, 1, 0, 0), "a torn rotation, removed");
        assert_eq!(next, 1);
        // Same with a first new record that landed whole: kept (as a damaged header), stale still never read.
        let mut rec = Vec::new();
        encode_record(&mut rec, 30, 0, Kind::Logs, b"new");
        salt_records(&mut rec, segment_salt(9));
        let mut img2 = img;
        img2[SEGMENT_HEADER_LEN_V2..SEGMENT_HEADER_LEN_V2 + rec.len()].copy_from_slice(&rec);
        let (_, next, _, _, ids, _) = recover_and_read(&[(9, img2)]);
        assert_eq!(ids, vec![30]);
        assert_eq!(next, 31);
    }

    #[test]
    fn v1_segments_still_read_as_before_next_to_v2_ones() {
        let v1 = segment(1, &[1, 2, 3], 4096);
        let end = v1.len() as u64; // not used by v1: its successor's prev_data_end is informative
        let v2 = v2_segment(2, 0, 4, (3, end), &[4, 5], &[], 4096);
        let (kept, next, torn, corrupt, ids, _) = recover_and_read(&[(1, v1), (2, v2)]);
        assert_eq!(kept, vec![(1, Some(1), Some(3), true), (2, Some(4), Some(5), false)]);
        assert_eq!((next, torn, corrupt, ids), (6, 0, 0, vec![1, 2, 3, 4, 5]));
    }
}
