//! Opening a WAL directory: read the checkpoint, scan every segment that may
//! hold unprocessed entries (verifying every CRC), repair what a crash left,
//! and hand the engine its starting state.
//!
//! Replay before append: nothing is written until recovery has decided where
//! the valid data ends. What it repairs, per `scan`'s decision table:
//! - a torn tail in the last segment is zeroed (and the file cut back to its
//!   preallocated size), then fsynced, so appends land cleanly after it;
//! - corruption is copied to `quarantine/`, counted and logged as
//!   "WAL corruption", and skipped; the segment is left as it is (a sealed
//!   segment is deleted once everything in it is processed);
//! - a segment with a zero header and no records (crash during rotation) is
//!   removed, so there is never an empty segment.
//!
//! Memory: one segment image at a time, plus the segment table.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Result, WalError};
use crate::format::{decode_segment_header, parse_segment_file_name, HeaderState, SEGMENT_HEADER_LEN};
use crate::fsutil;
use crate::metadata::{self, Metadata};
use crate::processed::Processed;
use crate::scan::{scan_records, Damage, DamageKind};
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

fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut buf = Vec::with_capacity(f.metadata()?.len() as usize);
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

fn read_header(path: &Path) -> io::Result<HeaderState> {
    let mut buf = [0u8; SEGMENT_HEADER_LEN];
    let n = File::open(path)?.read_at(&mut buf, 0)?;
    Ok(decode_segment_header(&buf[..n]))
}

/// Loads the checkpoint; a damaged one is reported and replaced by defaults
/// (every entry is then replayed: at-least-once, never lost).
fn load_metadata(dir: &Path) -> Result<(Metadata, bool)> {
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
            fsutil::write_atomic(&path, &image[d.offset..d.offset + d.len])?;
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

/// Recovers `dir` (which exists and is locked by the caller).
pub fn recover(dir: &Path, max_segment_size: u64, stats: &Stats) -> Result<Recovered> {
    let seg_dir = dir.join(SEGMENTS_DIR);
    let (mut meta, metadata_found) = load_metadata(dir)?;
    // New ids start above every processed mark, even one a checkpoint put at or
    // beyond its own reservation: an entry must never be born processed.
    let highest_mark = meta.processed_ids.iter().copied().max().unwrap_or(0).max(meta.processed_watermark);
    meta.next_id = meta.next_id.max(highest_mark.saturating_add(1));
    let watermark = meta.processed_watermark;
    let mut processed = Processed::new(watermark, meta.processed_ids.iter().copied());
    let io_err = |what: &str, p: &Path, e| WalError::io(format!("{what} {}", p.display()), e);
    let mut files = list_segments(&seg_dir, true).map_err(|e| io_err("listing", &seg_dir, e))?;

    // Segments wholly at or below the watermark: the next segment's base id says so.
    let mut skip = 0;
    while skip + 1 < files.len() {
        match read_header(&files[skip + 1].1).map_err(|e| io_err("reading", &files[skip + 1].1, e))? {
            HeaderState::Valid(h) if h.base_id.saturating_sub(1) <= watermark => skip += 1,
            _ => break,
        }
    }
    for (_, path) in files.drain(..skip) {
        fs::remove_file(&path).map_err(|e| io_err("removing processed segment", &path, e))?;
        stats.segments_deleted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if skip > 0 {
        fsutil::fsync_dir(&seg_dir).map_err(|e| io_err("syncing", &seg_dir, e))?;
    }

    let unprocessed_hint = meta.next_id.checked_sub(1 + watermark).filter(|_| metadata_found);
    let mut progress =
        Progress { started: Instant::now(), last_log: Instant::now(), expected: unprocessed_hint, seen: 0 };
    let mut segments = Vec::new();
    let mut expected_id = watermark + 1; // the next id we expect to see, for gap detection
    let mut prev_id = 0u64;
    let mut max_base_id = 0u64;
    let mut last_is_appendable = false;
    let count = files.len();
    for (pos, (index, path)) in files.into_iter().enumerate() {
        let is_last = pos + 1 == count;
        let image = read_file(&path).map_err(|e| io_err("reading", &path, e))?;
        let seg_name = crate::format::segment_file_name(index);
        let header = decode_segment_header(&image);
        let mut header_sound = false;
        match header {
            HeaderState::Valid(h) => {
                prev_id = prev_id.max(h.base_id.saturating_sub(1));
                max_base_id = max_base_id.max(h.base_id);
                header_sound = true;
            }
            HeaderState::UnsupportedVersion(version) => {
                return Err(WalError::UnsupportedFormat { path, version })
            }
            HeaderState::Zero | HeaderState::Damaged => {}
        }
        let chain_start = prev_id;
        let mut ids_seen = 0u64;
        let scan = scan_records(&image, SEGMENT_HEADER_LEN, prev_id, is_last, |h, _| {
            if h.id > watermark {
                if h.id > expected_id {
                    processed.add_gap(expected_id, h.id - 1);
                }
                expected_id = h.id + 1;
            }
            ids_seen += 1;
            progress.tick();
        });
        if is_last && !header_sound && scan.records == 0 {
            // A rotation the crash interrupted: the header (and perhaps a first
            // record) never fully reached the disk, so nothing in it was
            // acknowledged. Remove it, as a torn tail: there is never an empty segment.
            if image.iter().any(|&b| b != 0) {
                log::warn!(
                    segment = seg_name.as_str();
                    "WAL torn tail: segment {seg_name} holds no valid header and no complete record \
                     (a rotation interrupted by a crash); removed"
                );
                stats.torn_tails_truncated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            fs::remove_file(&path).map_err(|e| io_err("removing empty segment", &path, e))?;
            fsutil::fsync_dir(&seg_dir).map_err(|e| io_err("syncing", &seg_dir, e))?;
            continue;
        }
        if header == HeaderState::Damaged {
            let d = Damage { kind: DamageKind::Corrupt, offset: 0, len: SEGMENT_HEADER_LEN.min(image.len()) };
            report_corruption(dir, &seg_name, &image, &d, stats);
        }
        let mut file_len = image.len() as u64;
        for d in &scan.damages {
            match d.kind {
                DamageKind::Corrupt => report_corruption(dir, &seg_name, &image, d, stats),
                DamageKind::TornTail => {
                    // Keep a copy: a bit flip in the very last record reads the same as a torn write.
                    let saved = quarantine(dir, &seg_name, &image, d);
                    log::warn!(
                        segment = seg_name.as_str(), offset = d.offset, bytes = d.len,
                        copy:% = saved.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                        "WAL torn tail in segment {seg_name} at offset {}: {} bytes of an unacknowledged \
                         write erased{}",
                        d.offset,
                        d.len,
                        saved.as_ref().map(|p| format!(" (copy in {})", p.display())).unwrap_or_default()
                    );
                    file_len = erase_torn_tail(&path, d, file_len, max_segment_size)
                        .map_err(|e| io_err("truncating torn tail of", &path, e))?;
                    stats.torn_tails_truncated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        if let Some(last) = scan.last_id {
            prev_id = last;
        }
        drop(image);
        if ids_seen == 0 && !header_sound && scan.damages.is_empty() {
            // Created during a rotation that never wrote anything: never keep an empty segment.
            fs::remove_file(&path).map_err(|e| io_err("removing empty segment", &path, e))?;
            fsutil::fsync_dir(&seg_dir).map_err(|e| io_err("syncing", &seg_dir, e))?;
            continue;
        }
        let known_damage =
            scan.damages.iter().filter(|d| d.kind == DamageKind::Corrupt).map(|d| d.offset as u64).collect();
        last_is_appendable = is_last && header_sound;
        segments.push(SegmentInfo {
            index,
            path,
            first_id: scan.first_id,
            last_id: scan.last_id,
            data_end: scan.data_end as u64,
            file_len,
            sealed: true,
            known_damage,
            prev_id: chain_start,
        });
    }
    if let Some(last) = segments.last_mut() {
        last.sealed = !last_is_appendable;
    }

    let next_id = meta.next_id.max(prev_id + 1).max(max_base_id).max(watermark + 1).max(1);
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
    stats.corrupt_entries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    stats.corrupt_bytes.fetch_add(d.len as u64, std::sync::atomic::Ordering::Relaxed);
    log::error!(
        segment = seg_name, offset = d.offset, bytes = d.len,
        quarantine:% = saved.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        "WAL corruption in segment {seg_name} at offset {}: {} bytes skipped{}",
        d.offset,
        d.len,
        saved.as_ref().map(|p| format!(", copied to {}", p.display())).unwrap_or_default()
    );
}
