//! Reading records back from a segment file, in order, with bounded buffering.
//!
//! Used by the engine's `read_unprocessed` (the forwarder's tail) and by the
//! read-only inspection tools. Every record's CRC is verified on the way out
//! (a record is returned intact or not at all), except where recovery verified
//! it just before (`trust_until`): each CRC is checked once per open.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use crate::format::{decode_record_header, header_is_plausible, RecordHeader, RECORD_HEADER_LEN};
use crate::scan::{nonzero_end, resync_salted, valid_record_salted, zero_header_at, Rules, Tail};

const READ_CHUNK: usize = 1 << 20;

/// An entry as read back. The entries of one read share one buffer for
/// their payloads (see `EntriesBuilder`): keeping one alive keeps that buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    pub kind: u8,
    pub timestamp_ns: i64,
    pub payload: Bytes,
}

/// Builds the entries of one read: their payloads are copied into one
/// buffer, and each entry's payload is a slice of it.
///
/// One allocation per read instead of one per entry. A million small
/// payloads, each its own allocation and all freed together, also left
/// glibc's heap with more free memory at its top than its trim threshold:
/// it gave the pages back and faulted them in again on the next read. A
/// first read of 1M 200-byte entries in a fresh process (page cache warm)
/// took 0.17-0.19 s with 55,000 page faults; with one buffer per read,
/// 0.085-0.095 s and about 1,000 faults per read.
#[derive(Default)]
pub(crate) struct EntriesBuilder {
    payloads: Vec<u8>,
    /// id, kind, timestamp, end of the payload in `payloads`.
    entries: Vec<(u64, u8, i64, usize)>,
}

impl EntriesBuilder {
    pub fn push(&mut self, header: &RecordHeader, payload: &[u8]) {
        self.payloads.extend_from_slice(payload);
        self.entries.push((header.id, header.kind, header.timestamp_ns, self.payloads.len()));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn finish(self) -> Vec<Entry> {
        let payloads = Bytes::from(self.payloads);
        let mut start = 0;
        self.entries
            .into_iter()
            .map(|(id, kind, timestamp_ns, end)| {
                let payload = payloads.slice(start..end);
                start = end;
                Entry { id, kind, timestamp_ns, payload }
            })
            .collect()
    }
}

/// What `SegmentReader::next` found.
pub enum Step<'a> {
    Record {
        header: RecordHeader,
        offset: u64,
        payload: &'a [u8],
    },
    /// Bytes from `offset` to `next` hold no valid record (damage found at read time).
    Damaged {
        offset: u64,
        next: Option<u64>,
    },
    End,
}

/// Sequential reader over `[start, end)` of one segment file.
pub struct SegmentReader {
    file: File,
    end: u64,
    pos: u64,
    prev_id: u64,
    /// Holds `[buf_start, buf_start + filled)` of the file; longer than
    /// `filled` when reused (see `with_buffer`): never zeroed again.
    buf: Vec<u8>,
    filled: usize,
    buf_start: u64,
    /// Records ending at or before this offset were CRC-checked by recovery: not again.
    trusted_end: u64,
    /// The segment's record CRC salts, and whether stale bytes may follow a zero header.
    rules: Rules,
}

impl SegmentReader {
    pub fn open(path: &Path, start: u64, end: u64, prev_id: u64) -> io::Result<SegmentReader> {
        Self::with_buffer(path, start, end, prev_id, Vec::new())
    }

    /// `open` reading into `buf` (its contents are ignored): a reader per
    /// segment per call would otherwise allocate and zero 1 MiB each time.
    /// `into_buffer` gives it back.
    pub fn with_buffer(path: &Path, start: u64, end: u64, prev_id: u64, buf: Vec<u8>) -> io::Result<SegmentReader> {
        Ok(SegmentReader {
            file: File::open(path)?,
            end,
            pos: start,
            prev_id,
            buf,
            filled: 0,
            buf_start: start,
            trusted_end: 0,
            rules: Rules::V1,
        })
    }

    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Records that end at or before `end` are taken as verified (recovery
    /// checked their CRCs and the bytes are immutable since): framing and id
    /// order are still checked, the CRC is not computed again.
    pub fn trust_until(&mut self, end: u64) {
        self.trusted_end = end;
    }

    /// The segment's rules (salts; a recycled segment's data ends at a zero
    /// header, with stale bytes after it). Default: format v1.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn prev_id(&self) -> u64 {
        self.prev_id
    }

    /// Makes `buf` hold `[at, at + len)` (clamped to `end`); returns false if it cannot.
    fn fill(&mut self, at: u64, len: usize) -> io::Result<bool> {
        let want_end = (at + len as u64).min(self.end);
        if at >= self.buf_start && want_end <= self.buf_start + self.filled as u64 {
            return Ok(want_end == at + len as u64);
        }
        let read_len = (self.end - at).min(len.max(READ_CHUNK) as u64) as usize;
        if self.buf.len() < read_len {
            self.buf.resize(read_len, 0);
        }
        let mut done = 0;
        while done < read_len {
            let n = self.file.read_at(&mut self.buf[done..read_len], at + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        self.filled = done;
        self.buf_start = at;
        Ok(done >= (want_end - at) as usize && want_end == at + len as u64)
    }

    /// The next record (CRC verified), damage, or the end of the range.
    pub fn next_step(&mut self) -> io::Result<Step<'_>> {
        if self.pos + RECORD_HEADER_LEN as u64 > self.end || !self.fill(self.pos, RECORD_HEADER_LEN)? {
            return Ok(Step::End);
        }
        let rel = (self.pos - self.buf_start) as usize;
        let header = decode_record_header(&self.buf[rel..self.filled]);
        let rec_len = header.record_len();
        let offset = self.pos;
        if offset + rec_len as u64 <= self.end && self.fill(offset, rec_len)? {
            let rel = (offset - self.buf_start) as usize;
            let rec = &self.buf[rel..rel + rec_len];
            let trusted = offset + rec_len as u64 <= self.trusted_end
                && header.id > self.prev_id
                && header_is_plausible(&header, rec_len);
            if trusted || valid_record_salted(rec, 0, self.prev_id, self.rules.salts).is_some() {
                self.pos += rec_len as u64;
                self.prev_id = header.id;
                return Ok(Step::Record { header, offset, payload: &self.buf[rel + RECORD_HEADER_LEN..rel + rec_len] });
            }
        }
        // No valid record here: the zero fill after the data (the end), or
        // damage, with perhaps valid records after it (find the next one).
        let region_len = (self.end - offset) as usize;
        self.fill(offset, region_len)?;
        let rel = (offset - self.buf_start) as usize;
        let stale_after_zero = self.rules.tail == Tail::Stale && zero_header_at(&self.buf[..self.filled], rel);
        if stale_after_zero || nonzero_end(&self.buf[..self.filled], rel).is_none() {
            self.pos = self.end;
            return Ok(Step::End);
        }
        let next =
            resync_salted(&self.buf[rel..self.filled], 1, self.prev_id, self.rules.salts).map(|q| offset + q as u64);
        self.pos = next.unwrap_or(self.end);
        Ok(Step::Damaged { offset, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(id: u64, len: usize) -> RecordHeader {
        RecordHeader { crc: 0, len: len as u32, id, timestamp_ns: id as i64 * 10, kind: 2, reserved: [0; 3] }
    }

    #[test]
    fn entries_of_one_read_share_one_payload_buffer() {
        let payloads: [&[u8]; 4] = [b"first", b"", b"third one", b"x"];
        let mut b = EntriesBuilder::default();
        for (i, p) in payloads.iter().enumerate() {
            b.push(&header(i as u64 + 7, p.len()), p);
        }
        assert_eq!(b.len(), 4);
        let entries = b.finish();
        for (i, (e, p)) in entries.iter().zip(payloads).enumerate() {
            assert_eq!((e.id, e.kind, e.timestamp_ns), (i as u64 + 7, 2, (i as i64 + 7) * 10));
            assert_eq!(&e.payload[..], p);
        }
        // One allocation: each payload starts where the one before ends.
        let base = entries[0].payload.as_ptr() as usize;
        assert_eq!(entries[2].payload.as_ptr() as usize, base + 5);
        assert_eq!(entries[3].payload.as_ptr() as usize, base + 14);
    }

    #[test]
    fn an_empty_read_builds_no_entries() {
        assert!(EntriesBuilder::default().finish().is_empty());
    }
}
