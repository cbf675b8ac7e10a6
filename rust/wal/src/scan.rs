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

use crate::format::{decode_record_header, header_is_plausible, record_crc_ok, RecordHeader, RECORD_HEADER_LEN};

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

/// The record starting at `pos` if it is valid and its id follows `prev_id`.
pub fn valid_record_at(buf: &[u8], pos: usize, prev_id: u64) -> Option<RecordHeader> {
    let available = buf.len().checked_sub(pos)?;
    if available < RECORD_HEADER_LEN {
        return None;
    }
    let h = decode_record_header(&buf[pos..]);
    if h.id <= prev_id || !header_is_plausible(&h, available) {
        return None;
    }
    record_crc_ok(&buf[pos..pos + h.record_len()]).then_some(h)
}

/// The first position after `from` where a valid record starts.
pub fn resync(buf: &[u8], from: usize, prev_id: u64) -> Option<usize> {
    let last_start = buf.len().checked_sub(RECORD_HEADER_LEN)?;
    (from..=last_start).find(|&q| {
        // Cheap filters first (kind byte and reserved bytes) so zero and
        // random regions cost one comparison per byte, not a CRC.
        matches!(buf[q + 24], 1..=3) && buf[q + 25..q + 28] == [0, 0, 0] && valid_record_at(buf, q, prev_id).is_some()
    })
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
    mut prev_id: u64,
    is_last: bool,
    mut on_record: impl FnMut(&RecordHeader, usize),
) -> RecordScan {
    let mut scan = RecordScan { data_end: start.min(buf.len()), ..Default::default() };
    let mut pos = start;
    while pos < buf.len() {
        if let Some(h) = valid_record_at(buf, pos, prev_id) {
            on_record(&h, pos);
            scan.records += 1;
            scan.first_id.get_or_insert(h.id);
            scan.last_id = Some(h.id);
            prev_id = h.id;
            pos += h.record_len();
            scan.data_end = pos;
            continue;
        }
        let Some(end) = nonzero_end(buf, pos) else { break };
        match resync(buf, pos + 1, prev_id) {
            Some(next) => {
                scan.damages.push(Damage { kind: DamageKind::Corrupt, offset: pos, len: next - pos });
                pos = next;
            }
            None => {
                let kind = if is_last { DamageKind::TornTail } else { DamageKind::Corrupt };
                scan.damages.push(Damage { kind, offset: pos, len: end - pos });
                break;
            }
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
