//! Segment files: the table of segments the WAL holds, and the files new
//! segments are made from.
//!
//! A new segment is preallocated with zeros and fsynced *before* it is used:
//! an fdatasync into already-written blocks need not update the inode, which
//! on this class of disk gives 1.66x the syncs per second of appending to a
//! growing file. The order in which a spare becomes a segment (temp file,
//! rename, directory fsync, header) is in `wal/rotation.rs`; a crash at any
//! point leaves either a `.prealloc-*` temp file or a trailing segment with a
//! zero header and no records, and recovery removes both.
//!
//! A spare may also be a *recycled* file: a processed segment's file, kept
//! instead of deleted (its blocks are allocated and its pages cached, so
//! writes into it update no extent and its fdatasyncs no inode). It is
//! marked SPARE in its header (durably) before it is renamed to the next
//! segment number; the header written at rotation marks it RECYCLED. The
//! steps, and what a crash between each pair of them leaves, are in
//! `wal/rotation.rs` and `recovery.rs`.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::{
    encode_segment_header_v2, segment_file_name, segment_salt, SegmentHeader, FLAG_RECYCLED, FORMAT_VERSION,
    SEGMENT_HEADER_LEN_V2,
};
use crate::fsutil;
use crate::scan::Rules;

/// Names of zero-filled segments prepared ahead of rotation start with this
/// (a counter follows: the housekeeper and a rotation may prepare one each).
pub const SPARE_PREFIX: &str = ".prealloc-";

static SPARE_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What the WAL knows of one segment file.
#[derive(Clone, Debug)]
pub struct SegmentInfo {
    pub index: u64,
    pub path: PathBuf,
    pub first_id: Option<u64>,
    pub last_id: Option<u64>,
    /// Bytes from 0 up to the end of the last record written and published.
    pub data_end: u64,
    /// Size of the file on disk.
    pub file_len: u64,
    /// Complete and fsynced; no more records go in.
    pub sealed: bool,
    /// Records before this offset were CRC-checked by recovery and the bytes
    /// have not changed since (a sealed segment, or the active one below its
    /// first new write): the first read trusts them. 0: check everything.
    pub verified_end: u64,
    /// Offsets of damaged ranges recovery already reported (readers skip them quietly).
    pub known_damage: Vec<u64>,
    /// The id before this segment's first record, as recovery chained it:
    /// readers start their id chain here too, so they follow the same records.
    pub prev_id: u64,
    /// Where the records start (the header's length: 32 in v1, 48 in v2).
    pub data_start: u64,
    /// CRC salts and tail rule for readers of this segment.
    pub rules: Rules,
    /// A v2 segment: its file may be recycled once processed (a v1 file's
    /// unsalted records could verify again under a damaged header).
    pub recyclable: bool,
}

impl SegmentInfo {
    pub fn name(&self) -> String {
        segment_file_name(self.index)
    }
}

/// The segment appends currently go to.
#[derive(Debug)]
pub struct ActiveSegment {
    pub index: u64,
    pub file: Arc<File>,
    pub write_offset: u64,
    /// Bytes preallocated with zeros; writes beyond this grow the file.
    pub prealloc_len: u64,
    pub first_id: Option<u64>,
    pub last_id: Option<u64>,
    /// The id before the first record this segment may hold.
    pub prev_id: u64,
    /// XORed into each record's CRC (the segment number; 0 for a v1 segment).
    pub salt: u32,
    /// Stale bytes may follow the data: every write carries a zero record header after it.
    pub recycled: bool,
    /// The segment's format version (a reopened v1 segment stays v1).
    pub version: u32,
}

impl ActiveSegment {
    pub fn has_records(&self) -> bool {
        self.last_id.is_some()
    }
}

/// A zero-filled, fsynced file waiting to become the next segment.
#[derive(Debug)]
pub struct Spare {
    /// The segment number it is named for (0 while it still has its temp name).
    pub index: u64,
    pub path: PathBuf,
    pub file: File,
    pub len: u64,
    /// A processed segment's file: stale records follow whatever is written.
    pub recycled: bool,
}

/// Writes a spare of `len` zero bytes into `seg_dir` under a temp name, fsynced.
pub fn prepare_spare(seg_dir: &Path, len: u64) -> io::Result<Spare> {
    let n = SPARE_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = seg_dir.join(format!("{SPARE_PREFIX}{}-{n}.wal", std::process::id()));
    let file = fsutil::open_rw(&path, true)?;
    file.set_len(0)?;
    if let Err(e) = fsutil::write_zeros_at(&file, 0, len).and_then(|_| file.sync_all()) {
        // Do not leave a half-written spare taking space on a full disk.
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(Spare { index: 0, path, file, len, recycled: false })
}

/// A segment created empty under its final name (no preallocation): for a
/// call that fills it alone, or when groups are large enough that zero-filling
/// costs more bandwidth than it saves in latency. The caller fsyncs the directory.
pub fn create_bare(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().read(true).write(true).create_new(true).mode(fsutil::FILE_MODE).open(path)
}

/// A spare already named segment `index` (and its directory fsynced) gets
/// its (v2) header and becomes the active segment. The header reaches the
/// disk with the first group's fdatasync. `prev_last_id` and `prev_data_end`
/// describe the segment before it as the rotation sealed it (0: unknown).
pub fn start_segment(
    spare: Spare,
    index: u64,
    base_id: u64,
    prev_last_id: u64,
    prev_data_end: u64,
) -> io::Result<ActiveSegment> {
    let header = SegmentHeader {
        version: FORMAT_VERSION,
        flags: if spare.recycled { FLAG_RECYCLED } else { 0 },
        base_id,
        prev_last_id,
        prev_data_end,
    };
    let mut bytes = encode_segment_header_v2(&header).to_vec();
    if spare.recycled {
        // The terminator: stale bytes follow, the data (none yet) ends here.
        bytes.extend_from_slice(&[0u8; crate::format::RECORD_HEADER_LEN]);
    }
    spare.file.write_all_at(&bytes, 0)?;
    Ok(ActiveSegment {
        index,
        file: Arc::new(spare.file),
        write_offset: SEGMENT_HEADER_LEN_V2 as u64,
        prealloc_len: spare.len,
        first_id: None,
        last_id: None,
        prev_id: base_id.saturating_sub(1),
        salt: segment_salt(index),
        recycled: spare.recycled,
        version: FORMAT_VERSION,
    })
}
