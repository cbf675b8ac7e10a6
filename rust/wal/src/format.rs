//! The bytes of a segment: header and record framing (format version 1).
//!
//! ```text
//! segment := header record* zero-fill
//! header  := magic "SIGDBWAL" | version u32 | flags u32 | base_id u64 | reserved u32 | crc u32
//!            (32 bytes; crc = CRC32C of the 28 bytes before it)
//! record  := crc u32 | len u32 | id u64 | timestamp_ns i64 | kind u8 | reserved [u8; 3] | payload
//!            (28-byte header; crc = CRC32C of everything after the crc field, payload included)
//! ```
//!
//! All integers are little-endian. Records are packed back to back with no
//! alignment padding: the disk is written in group-sized runs, so alignment
//! buys nothing, and packing keeps small records small.
//!
//! Segments are preallocated with zeros, so the data ends at the first record
//! header that is entirely zero: a valid record never has one, since ids start
//! at 1 and the kind is never 0. `docs/wal-format.md` is the same description
//! for readers who do not read Rust.

use std::fmt;

/// First 8 bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SIGDBWAL";
/// The format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the first record of a segment.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Bytes before a record's payload.
pub const RECORD_HEADER_LEN: usize = 28;
/// Ids stay below this (2^63). Appending cannot get near it (at a million
/// entries a second, 292,000 years), so an id, base id or checkpoint mark at or
/// above it can only come from damage or a crafted file, and is treated as such:
/// a record is not valid, a segment header is damaged, a checkpoint is unusable.
/// The headroom also keeps `id + n` arithmetic far from overflow.
pub const MAX_ID: u64 = 1 << 63;
/// A payload must fit the u32 length field with its header.
pub const MAX_PAYLOAD_LEN: usize = u32::MAX as usize - RECORD_HEADER_LEN;

/// What an entry holds: the OTLP signal of its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Traces = 1,
    Logs = 2,
    Metrics = 3,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Traces),
            2 => Some(Kind::Logs),
            3 => Some(Kind::Metrics),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Traces => "traces",
            Kind::Logs => "logs",
            Kind::Metrics => "metrics",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fixed part of a record, as decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub crc: u32,
    pub len: u32,
    pub id: u64,
    pub timestamp_ns: i64,
    pub kind: u8,
    pub reserved: [u8; 3],
}

impl RecordHeader {
    /// Total bytes of the record this header starts.
    pub fn record_len(&self) -> usize {
        RECORD_HEADER_LEN + self.len as usize
    }
}

/// The 28-byte header of the record holding `payload`; its CRC covers the
/// payload too, so header and payload can be written from separate buffers.
pub fn encode_record_header(id: u64, timestamp_ns: i64, kind: Kind, payload: &[u8]) -> [u8; RECORD_HEADER_LEN] {
    assert!(payload.len() <= MAX_PAYLOAD_LEN, "payload length checked by the caller");
    assert!(id != 0, "record ids start at 1");
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h[16..24].copy_from_slice(&timestamp_ns.to_le_bytes());
    h[24] = kind as u8;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[4..]), payload);
    h[0..4].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Appends one framed record to `out`.
pub fn encode_record(out: &mut Vec<u8>, id: u64, timestamp_ns: i64, kind: Kind, payload: &[u8]) {
    assert!(payload.len() <= MAX_PAYLOAD_LEN, "payload length checked by the caller");
    assert!(id != 0, "record ids start at 1");
    let start = out.len();
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&[0u8; 4]); // crc, filled in below
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&timestamp_ns.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&[0u8; 3]);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the 28 header bytes at the start of `buf` (which must hold them).
pub fn decode_record_header(buf: &[u8]) -> RecordHeader {
    let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
    RecordHeader {
        crc: u32_at(0),
        len: u32_at(4),
        id: u64_at(8),
        timestamp_ns: u64_at(16) as i64,
        kind: buf[24],
        reserved: [buf[25], buf[26], buf[27]],
    }
}

/// Whether the header fields are plausible, before paying for a CRC.
pub fn header_is_plausible(h: &RecordHeader, available: usize) -> bool {
    // Ids at or above MAX_ID are never handed out (room for a next id, always).
    h.id != 0 && h.id < MAX_ID && Kind::from_u8(h.kind).is_some() && h.reserved == [0; 3] && h.record_len() <= available
}

/// CRC over a complete record in `rec` (header + payload) matches its crc field.
pub fn record_crc_ok(rec: &[u8]) -> bool {
    let stored = u32::from_le_bytes(rec[0..4].try_into().unwrap());
    crc32c::crc32c(&rec[4..]) == stored
}

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u32,
    pub flags: u32,
    pub base_id: u64,
}

pub fn encode_segment_header(base_id: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&base_id.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// How a segment header reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderState {
    Valid(SegmentHeader),
    /// All zero: the segment was created but its header never reached the disk.
    Zero,
    /// Wrong magic or checksum.
    Damaged,
    /// A well-formed header of a format this code does not know.
    UnsupportedVersion(u32),
}

pub fn decode_segment_header(buf: &[u8]) -> HeaderState {
    if buf.len() < SEGMENT_HEADER_LEN {
        return if buf.iter().all(|&b| b == 0) { HeaderState::Zero } else { HeaderState::Damaged };
    }
    let h = &buf[..SEGMENT_HEADER_LEN];
    if h.iter().all(|&b| b == 0) {
        return HeaderState::Zero;
    }
    let stored = u32::from_le_bytes(h[28..32].try_into().unwrap());
    if h[0..8] != SEGMENT_MAGIC || crc32c::crc32c(&h[..28]) != stored {
        return HeaderState::Damaged;
    }
    let version = u32::from_le_bytes(h[8..12].try_into().unwrap());
    if version != FORMAT_VERSION {
        return HeaderState::UnsupportedVersion(version);
    }
    let base_id = u64::from_le_bytes(h[16..24].try_into().unwrap());
    if base_id == 0 || base_id >= MAX_ID {
        return HeaderState::Damaged;
    }
    HeaderState::Valid(SegmentHeader {
        version,
        flags: u32::from_le_bytes(h[12..16].try_into().unwrap()),
        base_id: u64::from_le_bytes(h[16..24].try_into().unwrap()),
    })
}

/// `000042.wal` for segment 42.
pub fn segment_file_name(index: u64) -> String {
    format!("{index:06}.wal")
}

/// The index of a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, 123_456, Kind::Logs, b"hello");
        assert_eq!(buf.len(), RECORD_HEADER_LEN + 5);
        let h = decode_record_header(&buf);
        assert_eq!((h.id, h.timestamp_ns, h.kind, h.len), (7, 123_456, 2, 5));
        assert!(header_is_plausible(&h, buf.len()));
        assert!(record_crc_ok(&buf));
        assert_eq!(&buf[RECORD_HEADER_LEN..], b"hello");
    }

    #[test]
    fn header_alone_matches_the_whole_record() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 9, -3, Kind::Metrics, b"split across two buffers");
        assert_eq!(encode_record_header(9, -3, Kind::Metrics, b"split across two buffers"), buf[..RECORD_HEADER_LEN]);
    }

    #[test]
    fn crc_covers_every_byte() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, -5, Kind::Traces, b"payload bytes");
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            assert!(!record_crc_ok(&bad), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn zero_header_is_never_plausible() {
        let zero = [0u8; RECORD_HEADER_LEN];
        assert!(!header_is_plausible(&decode_record_header(&zero), 1 << 20));
    }

    #[test]
    fn segment_header_states() {
        let h = encode_segment_header(42);
        match decode_segment_header(&h) {
            HeaderState::Valid(s) => assert_eq!(s.base_id, 42),
            other => panic!("{other:?}"),
        }
        assert_eq!(decode_segment_header(&[0u8; 32]), HeaderState::Zero);
        let mut bad = h;
        bad[17] ^= 1;
        assert_eq!(decode_segment_header(&bad), HeaderState::Damaged);
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_file_name(1), "000001.wal");
        assert_eq!(segment_file_name(1234567), "1234567.wal");
        assert_eq!(parse_segment_file_name("000042.wal"), Some(42));
        assert_eq!(parse_segment_file_name(".prealloc.wal"), None);
        assert_eq!(parse_segment_file_name("42.wal"), None);
    }
}
