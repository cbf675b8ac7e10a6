//! The bytes of a segment: header and record framing (format versions 1 and 2).
//!
//! ```text
//! segment   := header record* (zero-fill | terminator stale-bytes)
//! header v1 := magic "SIGDBWAL" | version u32 = 1 | flags u32 = 0 | base_id u64 | reserved u32 | crc u32
//!              (32 bytes; crc = CRC32C of the 28 bytes before it)
//! header v2 := magic "SIGDBWAL" | version u32 = 2 | flags u32 | base_id u64 | prev_last_id u64
//!              | prev_data_end u64 | reserved u32 | crc u32
//!              (48 bytes; crc = CRC32C of the 44 bytes before it)
//! record    := crc u32 | len u32 | id u64 | timestamp_ns i64 | kind u8 | reserved [u8; 3] | payload
//!              (28-byte header; crc = CRC32C of everything after the crc field, payload included,
//!              XOR the segment's salt: 0 in v1, the segment number mod 2^32 in v2)
//! ```
//!
//! All integers are little-endian. Records are packed back to back with no
//! alignment padding: the disk is written in group-sized runs, so alignment
//! buys nothing, and packing keeps small records small.
//!
//! Fresh segments are preallocated with zeros, so the data ends at the first
//! record header that is entirely zero: a valid record never has one, since
//! ids start at 1 and the kind is never 0. Version 2 adds *recycled*
//! segments: files of processed segments reused for new ones, whose bytes
//! after the data are stale records of an older use. Three things keep those
//! apart from data: every write into a recycled segment is followed by a zero
//! record header (the *terminator*, overwritten by the next write), so the
//! data still ends at a zero header; the record CRC is salted with the
//! segment number, so a stale record (written under another number) never
//! verifies, whatever the header says; and the next segment's header records
//! where this one's data ends (`prev_data_end`). `docs/wal-format.md` is the
//! same description for readers who do not read Rust.

use std::fmt;

/// First 8 bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SIGDBWAL";
/// The format this code writes (it reads version 1 too).
pub const FORMAT_VERSION: u32 = 2;
/// The first format: 32-byte header, no flags, unsalted record CRCs.
pub const FORMAT_VERSION_1: u32 = 1;
/// Bytes before the first record of a version 1 segment.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Bytes before the first record of a version 2 segment.
pub const SEGMENT_HEADER_LEN_V2: usize = 48;
/// v2 flag: the file held an older segment; bytes after the data end are stale.
pub const FLAG_RECYCLED: u32 = 1;
/// v2 flag: a recycled file on its way to becoming a spare; all its contents
/// are stale and recovery deletes it unread.
pub const FLAG_SPARE: u32 = 2;
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
    let start = out.len();
    out.reserve(RECORD_HEADER_LEN + payload.len());
    push_record_without_crc(out, id, timestamp_ns, kind, payload);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Appends one record to `out` with its crc field zero (the caller fills it in).
fn push_record_without_crc(out: &mut Vec<u8>, id: u64, timestamp_ns: i64, kind: Kind, payload: &[u8]) {
    assert!(payload.len() <= MAX_PAYLOAD_LEN, "payload length checked by the caller");
    assert!(id != 0, "record ids start at 1");
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&timestamp_ns.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&[0u8; 3]);
    out.extend_from_slice(payload);
}

/// Appends one framed record per payload to `out`, with ids from `first_id`:
/// the bytes `encode_record` gives for each, with the CRCs computed three
/// records at a time (`crc::crc32c_x3`).
pub fn encode_records(out: &mut Vec<u8>, first_id: u64, timestamp_ns: i64, kind: Kind, payloads: &[&[u8]]) {
    let mut starts = Vec::with_capacity(payloads.len() + 1);
    for (id, payload) in (first_id..).zip(payloads) {
        starts.push(out.len());
        push_record_without_crc(out, id, timestamp_ns, kind, payload);
    }
    starts.push(out.len());
    // Record j's CRC covers its bytes after the crc field.
    let covered = |j: usize| starts[j] + 4..starts[j + 1];
    let n = payloads.len();
    let mut i = 0;
    while i + 3 <= n {
        let crcs = crate::crc::crc32c_x3(&out[covered(i)], &out[covered(i + 1)], &out[covered(i + 2)]);
        for (j, crc) in (i..).zip(crcs) {
            out[starts[j]..starts[j] + 4].copy_from_slice(&crc.to_le_bytes());
        }
        i += 3;
    }
    for j in i..n {
        let crc = crc32c::crc32c(&out[covered(j)]);
        out[starts[j]..starts[j] + 4].copy_from_slice(&crc.to_le_bytes());
    }
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
    record_crc_matches(rec, [0, 0])
}

/// The record CRC matches under either salt (the stored field is the CRC XOR
/// the segment's salt). Two salts: a segment whose header is unreadable may
/// be of either version.
pub fn record_crc_matches(rec: &[u8], salts: [u32; 2]) -> bool {
    let stored = u32::from_le_bytes(rec[0..4].try_into().unwrap());
    let crc = crc32c::crc32c(&rec[4..]);
    stored == crc ^ salts[0] || stored == crc ^ salts[1]
}

/// The CRC salt of records in v2 segment `index`: its number mod 2^32, mixed
/// (murmur3's finalizer, a bijection on u32: distinct numbers, distinct salts;
/// never 0 below 2^32 segments, so v2 records never verify as v1 ones). A
/// recycled file's stale records were written under another number: they
/// never verify in their new segment, whatever its header says. Mixed, so
/// that the salt is not a likely damage pattern: under a damaged header
/// either salt (this one or v1's 0) is accepted, and a salt of 1 would let
/// a flipped low bit of a CRC through.
pub fn segment_salt(index: u64) -> u32 {
    let mut h = index as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// XORs `salt` into the crc field of every record in `buf` (records back to
/// back from its start): salts an encoded run for its segment at write time
/// (records are encoded before their segment is known). Applying the same
/// salt twice undoes it.
pub fn salt_records(buf: &mut [u8], salt: u32) {
    if salt == 0 {
        return;
    }
    let mut pos = 0;
    while pos + RECORD_HEADER_LEN <= buf.len() {
        let len = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().unwrap()) as usize;
        salt_record_header(&mut buf[pos..pos + RECORD_HEADER_LEN], salt);
        pos += RECORD_HEADER_LEN + len;
    }
}

/// XORs `salt` into one record header's crc field.
pub fn salt_record_header(h: &mut [u8], salt: u32) {
    let crc = u32::from_le_bytes(h[0..4].try_into().unwrap()) ^ salt;
    h[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u32,
    pub flags: u32,
    pub base_id: u64,
    /// v2: the id of the previous segment's last record and the end of its
    /// data, as the rotation that sealed it knew them (0: not known, e.g. the
    /// first segment of an open). v1: 0.
    pub prev_last_id: u64,
    pub prev_data_end: u64,
}

impl SegmentHeader {
    /// Where this segment's records start.
    pub fn data_start(&self) -> usize {
        header_len(self.version)
    }

    /// The CRC salt of this segment's records (`index`: its number).
    pub fn salt(&self, index: u64) -> u32 {
        if self.version == FORMAT_VERSION_1 {
            0
        } else {
            segment_salt(index)
        }
    }

    pub fn recycled(&self) -> bool {
        self.flags & FLAG_RECYCLED != 0
    }

    pub fn spare(&self) -> bool {
        self.flags & FLAG_SPARE != 0
    }
}

/// Bytes of a segment header of `version`.
pub fn header_len(version: u32) -> usize {
    if version == FORMAT_VERSION_1 {
        SEGMENT_HEADER_LEN
    } else {
        SEGMENT_HEADER_LEN_V2
    }
}

/// A version 1 header (no longer written by the engine; tests and tools
/// build v1 segments with it to check they are still read as before).
pub fn encode_segment_header(base_id: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION_1.to_le_bytes());
    h[16..24].copy_from_slice(&base_id.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A version 2 header.
pub fn encode_segment_header_v2(h: &SegmentHeader) -> [u8; SEGMENT_HEADER_LEN_V2] {
    let mut b = [0u8; SEGMENT_HEADER_LEN_V2];
    b[0..8].copy_from_slice(&SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&h.flags.to_le_bytes());
    b[16..24].copy_from_slice(&h.base_id.to_le_bytes());
    b[24..32].copy_from_slice(&h.prev_last_id.to_le_bytes());
    b[32..40].copy_from_slice(&h.prev_data_end.to_le_bytes());
    let crc = crc32c::crc32c(&b[..44]);
    b[44..48].copy_from_slice(&crc.to_le_bytes());
    b
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

/// Reads a v1 or v2 header from the start of `buf` (which may be short).
pub fn decode_segment_header(buf: &[u8]) -> HeaderState {
    let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
    let head = &buf[..buf.len().min(SEGMENT_HEADER_LEN)];
    if head.iter().all(|&b| b == 0) {
        // The first 32 bytes: a header that never reached the disk (v1's whole
        // header; for v2, the part holding magic, version, flags and base id).
        return HeaderState::Zero;
    }
    if buf.len() < SEGMENT_HEADER_LEN || buf[0..8] != SEGMENT_MAGIC {
        return HeaderState::Damaged;
    }
    let crc_ok = |len: usize| buf.len() >= len && crc32c::crc32c(&buf[..len - 4]) == u32_at(len - 4);
    let version = u32_at(8);
    let (v1_ok, v2_ok) = (crc_ok(SEGMENT_HEADER_LEN), crc_ok(SEGMENT_HEADER_LEN_V2));
    let h = match version {
        FORMAT_VERSION_1 if v1_ok => {
            SegmentHeader { version, flags: u32_at(12), base_id: u64_at(16), prev_last_id: 0, prev_data_end: 0 }
        }
        FORMAT_VERSION if v2_ok => SegmentHeader {
            version,
            flags: u32_at(12),
            base_id: u64_at(16),
            prev_last_id: u64_at(24),
            prev_data_end: u64_at(32),
        },
        FORMAT_VERSION_1 | FORMAT_VERSION => return HeaderState::Damaged,
        // A checksummed header of another version (in either known layout): refuse, do not guess.
        other if v1_ok || v2_ok => return HeaderState::UnsupportedVersion(other),
        _ => return HeaderState::Damaged,
    };
    // Unknown flags, or a SPARE that is not RECYCLED, are not something this code wrote.
    let known = if h.version == FORMAT_VERSION_1 { 0 } else { FLAG_RECYCLED | FLAG_SPARE };
    if h.flags & !known != 0 || (h.spare() && !h.recycled()) {
        return HeaderState::Damaged;
    }
    if h.base_id == 0 || h.base_id >= MAX_ID {
        return HeaderState::Damaged;
    }
    HeaderState::Valid(h)
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

    proptest::proptest! {
        #[test]
        fn encode_records_gives_the_bytes_of_encode_record_each(
            payloads in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..12),
            first_id in 1u64..u64::MAX / 2,
            ts in proptest::prelude::any::<i64>(),
            prefix in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..9),
        ) {
            let slices: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
            let mut batch = prefix.clone();
            encode_records(&mut batch, first_id, ts, Kind::Logs, &slices);
            let mut one_by_one = prefix;
            for (id, p) in (first_id..).zip(&slices) {
                encode_record(&mut one_by_one, id, ts, Kind::Logs, p);
            }
            proptest::prop_assert_eq!(batch, one_by_one);
        }
    }

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
    fn v2_header_round_trip_and_damage() {
        let want =
            SegmentHeader { version: 2, flags: FLAG_RECYCLED, base_id: 77, prev_last_id: 76, prev_data_end: 4000 };
        let b = encode_segment_header_v2(&want);
        assert_eq!(decode_segment_header(&b), HeaderState::Valid(want));
        assert_eq!(want.data_start(), SEGMENT_HEADER_LEN_V2);
        for i in 0..SEGMENT_HEADER_LEN_V2 {
            let mut bad = b;
            bad[i] ^= 0x04;
            assert!(!matches!(decode_segment_header(&bad), HeaderState::Valid(_)), "flip at {i} went unnoticed");
        }
        // Cut short (a torn write at the end of a file), and SPARE without RECYCLED.
        assert_eq!(decode_segment_header(&b[..40]), HeaderState::Damaged);
        let odd = SegmentHeader { flags: FLAG_SPARE, ..want };
        assert_eq!(decode_segment_header(&encode_segment_header_v2(&odd)), HeaderState::Damaged);
        // A future version in the v2 layout is refused, not taken for damage.
        let mut future = b;
        future[8] = 3;
        let crc = crc32c::crc32c(&future[..44]);
        future[44..48].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_segment_header(&future), HeaderState::UnsupportedVersion(3));
    }

    #[test]
    fn salted_records_verify_only_under_their_salt() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 5, 0, Kind::Logs, b"abc");
        encode_record(&mut buf, 6, 0, Kind::Logs, b"defgh");
        let (s7, s8) = (segment_salt(7), segment_salt(8));
        assert!(s7 != 0 && s8 != 0 && s7 != s8 && s7.count_ones() > 4);
        salt_records(&mut buf, s7);
        let second = RECORD_HEADER_LEN + 3;
        for rec in [&buf[..second], &buf[second..]] {
            assert!(record_crc_matches(rec, [s7, s7]));
            assert!(record_crc_matches(rec, [s7, 0]));
            assert!(!record_crc_matches(rec, [0, 0]), "a v2 record verifies as v1");
            assert!(!record_crc_matches(rec, [s8, 0]), "a record verifies in another segment");
        }
        salt_records(&mut buf, s7);
        assert!(record_crc_ok(&buf[..second]));
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
