//! The strict reader: walks the records of one segment held in memory,
//! verifying every CRC, and classifies whatever does not verify.
//!
//! Decision table, for the first byte position `p` where no valid record starts
//! (a valid record has a plausible header, a matching CRC and an id above the
//! previous one):
//!
//! | bytes from `p` on                           | segment   | verdict                   |
//! |---------------------------------------------|-----------|---------------------------|
//! | all zero                                    | any       | clean end of data         |
//! | non-zero, a valid record starts later at q  | any       | corruption `[p, q)`, go on at q |
//! | non-zero, no valid record after             | last      | torn tail `[p, end)`      |
//! | non-zero, no valid record after             | not last  | corruption `[p, end)`     |
//!
//! A torn tail is what a crash during an unsynced append leaves; it was never
//! acknowledged, so the WAL zeroes it and appends over it. Corruption in the
//! middle (or in a sealed segment, which was fsynced whole before the next one
//! got its first byte) is damage to acknowledged data: the WAL copies it to
//! quarantine, counts it and goes on. `tests` below mirror this table.
//!
//! Recycled segments (format v2, `Tail::Stale` and `Tail::KnownEnd`): the
//! bytes after the data are stale records of the file's older use. Stale
//! records never verify (their CRC is salted with another segment number, and
//! their ids are below the segment's base id), and the data is followed by a
//! zero record header (the terminator every write into a recycled segment
//! carries). So:
//!
//! | bytes from `p` on                                  | tail rule  | verdict |
//! |----------------------------------------------------|------------|---------|
//! | a zero record header                               | `Stale`    | end of data; what follows is stale, not looked at |
//! | non-zero, a valid record starts later at q         | any        | corruption `[p, q)`, go on at q |
//! | non-zero, no valid record after                    | `Stale`, last | torn tail `[p, p + that record's length)` (at least a header) |
//! | non-zero, no valid record after                    | `Stale`, not last | corruption, same range |
//! | anything before `e`, the end the next segment's header gives | `KnownEnd(e)` | as `Zeros` on `[start, e)` (not last); zeros before `e` = corruption `[p, e)`; bytes after `e` are stale, not looked at |
//! | the end of the file, at a record boundary before `e` | `KnownEnd(e)` | corruption `[file length, e)` (truncated: records lost, no bytes left to copy) |

use crate::format::{decode_record_header, header_is_plausible, record_crc_matches, RecordHeader, RECORD_HEADER_LEN};

/// Which row of the decision table a damaged region falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DamageKind {
    Corrupt,
    TornTail,
}

/// A byte range of a segment holding no valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damage {
    pub kind: DamageKind,
    pub offset: usize,
    pub len: usize,
}

/// What follows a segment's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// Zeros to the end of the file (v1, and v2 segments made from fresh files).
    Zeros,
    /// Stale bytes after a zero record header (a recycled segment whose end is not known).
    Stale,
    /// Stale bytes after this offset (a recycled segment: the next segment's header says where its data ends).
    KnownEnd(usize),
}

/// How one segment's records are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// The record CRC salts accepted (the same twice when the header is known).
    pub salts: [u32; 2],
    pub tail: Tail,
}

impl Rules {
    /// Format version 1: unsalted, zero fill after the data.
    pub const V1: Rules = Rules { salts: [0, 0], tail: Tail::Zeros };
}

/// The outcome of scanning one segment's records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordScan {
    pub records: u64,
    pub first_id: Option<u64>,
    pub last_id: Option<u64>,
    /// End of the last valid record: where the next append goes.
    pub data_end: usize,
    pub damages: Vec<Damage>,
}

/// The record starting at `pos` if it is valid and its id follows `prev_id` (v1: unsalted).
pub fn valid_record_at(buf: &[u8], pos: usize, prev_id: u64) -> Option<RecordHeader> {
    valid_record_salted(buf, pos, prev_id, [0, 0])
}

/// `valid_record_at` for records whose CRC is salted with one of `salts`.
pub fn valid_record_salted(buf: &[u8], pos: usize, prev_id: u64, salts: [u32; 2]) -> Option<RecordHeader> {
    let available = buf.len().checked_sub(pos)?;
    if available < RECORD_HEADER_LEN {
        return None;
    }
    let h = decode_record_header(&buf[pos..]);
    if h.id <= prev_id || !header_is_plausible(&h, available) {
        return None;
    }
    record_crc_matches(&buf[pos..pos + h.record_len()], salts).then_some(h)
}

/// The first position after `from` where a valid record starts (v1: unsalted).
pub fn resync(buf: &[u8], from: usize, prev_id: u64) -> Option<usize> {
    resync_salted(buf, from, prev_id, [0, 0])
}

/// `resync` for records salted with one of `salts`.
pub fn resync_salted(buf: &[u8], from: usize, prev_id: u64, salts: [u32; 2]) -> Option<usize> {
    let last_start = buf.len().checked_sub(RECORD_HEADER_LEN)?;
    (from..=last_start).find(|&q| {
        // Cheap filters first (kind byte and reserved bytes) so zero and
        // random regions cost one comparison per byte, not a CRC.
        matches!(buf[q + 24], 1..=3)
            && buf[q + 25..q + 28] == [0, 0, 0]
            && valid_record_salted(buf, q, prev_id, salts).is_some()
    })
}

/// Whether a zero record header (or fewer than a header's bytes, all zero) starts at `pos`.
pub fn zero_header_at(buf: &[u8], pos: usize) -> bool {
    buf[pos..buf.len().min(pos + RECORD_HEADER_LEN)].iter().all(|&b| b == 0)
}

/// End of the last non-zero byte in `buf[from..]`, or None when all zero.
pub fn nonzero_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..].iter().rposition(|&b| b != 0).map(|i| from + i + 1)
}

/// Scans the records of a segment image `buf` from `start` (just after the
/// segment header). `prev_id` is the id before the first record this segment
/// may hold; `is_last` selects the torn-tail row of the table. `on_record`
/// sees each valid record with its offset.
pub fn scan_records(
    buf: &[u8],
    start: usize,
    prev_id: u64,
    is_last: bool,
    on_record: impl FnMut(&RecordHeader, usize),
) -> RecordScan {
    scan_records_with(buf, start, prev_id, is_last, Rules::V1, on_record)
}

/// `scan_records` under `rules` (salts and tail: the module doc's second table).
pub fn scan_records_with(
    buf: &[u8],
    start: usize,
    mut prev_id: u64,
    is_last: bool,
    rules: Rules,
    mut on_record: impl FnMut(&RecordHeader, usize),
) -> RecordScan {
    // A known end: the records are checked up to it, the stale rest is not looked at.
    let file_len = buf.len();
    let buf = match rules.tail {
        Tail::KnownEnd(e) => &buf[..e.clamp(start.min(buf.len()), buf.len())],
        _ => buf,
    };
    let salts = rules.salts;
    let mut scan = RecordScan { data_end: start.min(buf.len()), ..Default::default() };
    let mut pos = start;
    while pos < buf.len() {
        if let Some(h) = valid_record_salted(buf, pos, prev_id, salts) {
            on_record(&h, pos);
            scan.records += 1;
            scan.first_id.get_or_insert(h.id);
            scan.last_id = Some(h.id);
            prev_id = h.id;
            pos += h.record_len();
            scan.data_end = pos;
            continue;
        }
        if rules.tail == Tail::Stale && zero_header_at(buf, pos) {
            break; // the terminator: stale bytes follow
        }
        let Some(end) = nonzero_end(buf, pos) else {
            if let Tail::KnownEnd(_) = rules.tail {
                // The next segment's header says records went on to here: lost, not absent.
                scan.damages.push(Damage { kind: DamageKind::Corrupt, offset: pos, len: buf.len() - pos });
            }
            break;
        };
        match resync_salted(buf, pos + 1, prev_id, salts) {
            Some(next) => {
                scan.damages.push(Damage { kind: DamageKind::Corrupt, offset: pos, len: next - pos });
                pos = next;
            }
            None => {
                let kind = if is_last { DamageKind::TornTail } else { DamageKind::Corrupt };
                let len = match rules.tail {
                    // Damage up to the last non-zero byte: the rest of the zero fill, or the known end.
                    Tail::Zeros => end - pos,
                    Tail::KnownEnd(_) => buf.len() - pos,
                    // Stale bytes follow: only the record that starts here (at least its header).
                    Tail::Stale => {
                        let claimed = if buf.len() - pos >= RECORD_HEADER_LEN {
                            decode_record_header(&buf[pos..]).record_len()
                        } else {
                            0
                        };
                        claimed.max(RECORD_HEADER_LEN).min(buf.len() - pos)
                    }
                };
                scan.damages.push(Damage { kind, offset: pos, len });
                break;
            }
        }
    }
    if let Tail::KnownEnd(e) = rules.tail {
        // The file ends, at a record boundary, before the end the next segment's
        // header gives (a truncation): the records that were there are lost, not
        // absent. Nothing of them is left to copy (found by fuzzing).
        if pos >= buf.len() && e > file_len {
            scan.damages.push(Damage { kind: DamageKind::Corrupt, offset: file_len, len: e - file_len });
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_record, Kind};

    fn image(ids: &[u64], tail_zeros: usize) -> (Vec<u8>, Vec<usize>) {
        let mut buf = vec![0u8; 32];
        let mut offsets = Vec::new();
        for &id in ids {
            offsets.push(buf.len());
            encode_record(&mut buf, id, id as i64, Kind::Traces, format!("payload-{id}").as_bytes());
        }
        buf.resize(buf.len() + tail_zeros, 0);
        (buf, offsets)
    }

    fn ids_of(buf: &[u8], is_last: bool) -> (Vec<u64>, RecordScan) {
        let mut ids = Vec::new();
        let scan = scan_records(buf, 32, 0, is_last, |h, _| ids.push(h.id));
        (ids, scan)
    }

    #[test]
    fn clean_segment_ends_at_zero_fill() {
        let (buf, _) = image(&[1, 2, 3], 500);
        let (ids, scan) = ids_of(&buf, true);
        assert_eq!(ids, vec![1, 2, 3]);
        assert!(scan.damages.is_empty());
        assert_eq!(scan.data_end, buf.len() - 500);
    }

    #[test]
    fn corruption_in_the_middle_is_skipped() {
        let (mut buf, offs) = image(&[1, 2, 3, 4], 100);
        buf[offs[1] + 30] ^= 0xff; // payload of record 2
        for is_last in [true, false] {
            let (ids, scan) = ids_of(&buf, is_last);
            assert_eq!(ids, vec![1, 3, 4]);
            assert_eq!(
                scan.damages,
                vec![Damage { kind: DamageKind::Corrupt, offset: offs[1], len: offs[2] - offs[1] }]
            );
        }
    }

    #[test]
    fn damaged_last_record_is_torn_tail_only_in_last_segment() {
        let (mut buf, offs) = image(&[1, 2, 3], 100);
        let end = buf.len() - 100;
        buf[offs[2] + 29] ^= 0x10;
        let (ids, scan) = ids_of(&buf, true);
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(scan.damages, vec![Damage { kind: DamageKind::TornTail, offset: offs[2], len: end - offs[2] }]);
        assert_eq!(scan.data_end, offs[2]);
        let (_, scan) = ids_of(&buf, false);
        assert_eq!(scan.damages[0].kind, DamageKind::Corrupt);
    }

    #[test]
    fn truncated_record_is_torn_tail() {
        let (buf, offs) = image(&[1, 2, 3], 0);
        let cut = &buf[..offs[2] + 10];
        let (ids, scan) = ids_of(cut, true);
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(scan.damages.len(), 1);
        assert_eq!(scan.damages[0].kind, DamageKind::TornTail);
    }

    #[test]
    fn stale_record_with_lower_id_is_not_valid() {
        // A record whose id does not increase (e.g. left over from older data) ends the valid run.
        let (buf, _) = image(&[5, 6, 2], 0);
        let (ids, scan) = ids_of(&buf, true);
        assert_eq!(ids, vec![5, 6]);
        assert_eq!(scan.damages[0].kind, DamageKind::TornTail);
    }

    #[test]
    fn garbage_in_zero_fill_is_detected() {
        let (mut buf, _) = image(&[1, 2], 64);
        let n = buf.len();
        buf[n - 10] = 0x55;
        let (ids, scan) = ids_of(&buf, false);
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(scan.damages.len(), 1);
        assert_eq!(scan.damages[0].offset + scan.damages[0].len, n - 9);
    }
}
