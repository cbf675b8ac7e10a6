//! Read-only inspection of a WAL directory, for `signaldb-wal`.
//!
//! Never writes, never takes the lock: safe on a WAL another process has open
//! (it may then see a torn tail that is only an append in flight).

use std::io;
use std::path::Path;

use crate::format::{decode_segment_header, HeaderState, SEGMENT_HEADER_LEN};
use crate::reader::{Entry, SegmentReader, Step};
use crate::scan::{scan_records, Damage};

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

/// Scans one segment file, verifying every CRC. `is_last` decides whether
/// undecodable trailing bytes count as a torn tail or as corruption.
pub fn scan_segment_file(path: &Path, is_last: bool, above_id: u64) -> io::Result<SegmentReport> {
    let image = std::fs::read(path)?;
    let header = decode_segment_header(&image);
    let prev = match header {
        HeaderState::Valid(h) => h.base_id.saturating_sub(1),
        _ => 0,
    };
    let mut payload_bytes = 0u64;
    let mut by_kind = [0u64; 3];
    let mut entries_above = 0;
    let scan = scan_records(&image, SEGMENT_HEADER_LEN, prev, is_last, |h, _| {
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

/// Up to `limit` valid entries of a segment from `offset`; returns them and
/// the offset to continue from (damaged stretches are skipped).
pub fn read_segment_entries(path: &Path, offset: u64, limit: usize) -> io::Result<(Vec<Entry>, u64)> {
    let len = std::fs::metadata(path)?.len();
    let start = offset.max(SEGMENT_HEADER_LEN as u64);
    let mut reader = SegmentReader::open(path, start, len, 0)?;
    let mut out = Vec::new();
    while out.len() < limit {
        match reader.next_step()? {
            Step::End => break,
            Step::Damaged { .. } => continue,
            Step::Record { header, payload, .. } => out.push(Entry {
                id: header.id,
                kind: header.kind,
                timestamp_ns: header.timestamp_ns,
                payload: payload.to_vec(),
            }),
        }
    }
    Ok((out, reader.position()))
}
