//! Read-only inspection of a WAL directory, for `signaldb-wal`.
//!
//! Never writes, never takes the lock: safe on a WAL another process has open
//! (it may then see a torn tail that is only an append in flight).

use std::io;
use std::path::Path;

use crate::format::{decode_segment_header, parse_segment_file_name, segment_file_name, HeaderState};
use crate::reader::{EntriesBuilder, Entry, SegmentReader, Step};
use crate::recovery::{read_header, scan_rules};
use crate::scan::{scan_records_with, Damage, Rules, Tail};

/// What a segment holds, as scanned.
#[derive(Clone, Debug)]
pub struct SegmentReport {
    pub header: HeaderState,
    pub file_len: u64,
    pub entries: u64,
    pub first_id: Option<u64>,
    pub last_id: Option<u64>,
    pub data_end: u64,
    pub payload_bytes: u64,
    pub damages: Vec<Damage>,
    /// Entries by kind: traces, logs, metrics.
    pub by_kind: [u64; 3],
    /// Entries with an id above the `above_id` asked for (e.g. the processed watermark).
    pub entries_above: u64,
}

/// Where `path`'s records start and how they are checked, as recovery
/// decides it (version, salt from the file's segment number, stale tail of a
/// recycled segment: the next segment's header gives its end). A SPARE file
/// (stale contents only) reads as holding nothing.
fn rules_of(path: &Path, header: HeaderState, is_last: bool, len: usize) -> (usize, Rules) {
    let index = path.file_name().and_then(|n| n.to_str()).and_then(parse_segment_file_name).unwrap_or(0);
    let next = (!is_last).then(|| path.with_file_name(segment_file_name(index + 1))).and_then(|p| read_header(&p).ok());
    let (start, rules) = scan_rules(header, index, next, is_last);
    if matches!(header, HeaderState::Valid(h) if h.spare()) {
        return (len.max(start), rules);
    }
    (start, rules)
}

/// Scans one segment file, verifying every CRC. `is_last` decides whether
/// undecodable trailing bytes count as a torn tail or as corruption.
pub fn scan_segment_file(path: &Path, is_last: bool, above_id: u64) -> io::Result<SegmentReport> {
    let image = std::fs::read(path)?;
    let header = decode_segment_header(&image);
    let prev = match header {
        HeaderState::Valid(h) => h.base_id.saturating_sub(1),
        _ => 0,
    };
    let (start, rules) = rules_of(path, header, is_last, image.len());
    let mut payload_bytes = 0u64;
    let mut by_kind = [0u64; 3];
    let mut entries_above = 0;
    let scan = scan_records_with(&image, start, prev, is_last, rules, |h, _| {
        payload_bytes += h.len as u64;
        by_kind[(h.kind - 1) as usize] += 1;
        entries_above += u64::from(h.id > above_id);
    });
    Ok(SegmentReport {
        header,
        file_len: image.len() as u64,
        entries: scan.records,
        first_id: scan.first_id,
        last_id: scan.last_id,
        data_end: scan.data_end as u64,
        payload_bytes,
        damages: scan.damages,
        by_kind,
        entries_above,
    })
}

/// Where a paged read of one segment goes on: the offset to read from and the
/// id of the last entry returned. A record counts only above the one before
/// it (the id chain recovery follows), so a page must start from the
/// previous page's last id, not from 0: otherwise a replayed copy of an
/// earlier record right after the cut would be returned again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentCursor {
    pub offset: u64,
    pub after_id: u64,
}

/// Up to `limit` valid entries of a segment from `from` (`SegmentCursor::default()`:
/// the start); returns them and the cursor to continue from (damaged
/// stretches are skipped). Pages read this way give exactly one read's entries.
/// `is_last`: no segment follows. Otherwise the next segment's header may
/// give where this one's data ends (a sealed recycled segment): the records
/// are read up to there, as recovery reads them, not up to a terminator.
pub fn read_segment_entries(
    path: &Path,
    is_last: bool,
    from: SegmentCursor,
    limit: usize,
) -> io::Result<(Vec<Entry>, SegmentCursor)> {
    let len = std::fs::metadata(path)?.len();
    let header = read_header(path)?;
    let (data_start, rules) = rules_of(path, header, is_last, len as usize);
    let end = match rules.tail {
        Tail::KnownEnd(e) => len.min(e as u64),
        Tail::Zeros | Tail::Stale => len,
    };
    let start = from.offset.max(data_start as u64);
    let mut reader = SegmentReader::open(path, start, end, from.after_id)?;
    reader.set_rules(rules);
    let mut out = EntriesBuilder::default();
    while out.len() < limit {
        match reader.next_step()? {
            Step::End => break,
            Step::Damaged { .. } => continue,
            Step::Record { header, payload, .. } => out.push(&header, payload),
        }
    }
    Ok((out.finish(), SegmentCursor { offset: reader.position(), after_id: reader.prev_id() }))
}
