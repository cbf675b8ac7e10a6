//! Property tests of the strict reader: whatever happens to a segment's
//! bytes, a record it returns is one that was written, intact.

use proptest::prelude::*;
use signaldb_wal::format::{encode_record, encode_segment_header, Kind, SEGMENT_HEADER_LEN};
use signaldb_wal::scan::scan_records;

fn segment(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut buf = encode_segment_header(1).to_vec();
    for (i, p) in payloads.iter().enumerate() {
        encode_record(&mut buf, i as u64 + 1, i as i64, Kind::Logs, p);
    }
    buf.resize(buf.len() + 64, 0);
    buf
}

fn returned(image: &[u8], is_last: bool) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    scan_records(image, SEGMENT_HEADER_LEN, 0, is_last, |h, off| {
        let start = off + signaldb_wal::format::RECORD_HEADER_LEN;
        out.push((h.id, image[start..start + h.len as usize].to_vec()));
    });
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_segments_never_yield_wrong_payloads(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 1..12),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        truncate in prop::option::of(any::<prop::sample::Index>()),
        is_last in any::<bool>(),
    ) {
        let mut image = segment(&payloads);
        for (at, mask) in flips {
            let i = at.index(image.len());
            image[i] ^= mask.max(1);
        }
        if let Some(t) = truncate {
            let n = t.index(image.len());
            image.truncate(n);
        }
        let got = returned(&image, is_last);
        let mut last = 0;
        for (id, p) in got {
            prop_assert!(id > last, "ids strictly increase");
            last = id;
            prop_assert!(id >= 1 && id as usize <= payloads.len());
            prop_assert_eq!(&p, &payloads[id as usize - 1]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(image in prop::collection::vec(any::<u8>(), 0..2048), is_last in any::<bool>()) {
        let _ = returned(&image, is_last);
    }

    #[test]
    fn intact_segments_return_everything(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20),
    ) {
        let image = segment(&payloads);
        let got = returned(&image, true);
        prop_assert_eq!(got.len(), payloads.len());
        for (i, (id, p)) in got.into_iter().enumerate() {
            prop_assert_eq!(id, i as u64 + 1);
            prop_assert_eq!(&p, &payloads[i]);
        }
    }
}

// -- recycled segments (format v2): stale records never come back ---------------

mod recycled {
    use super::*;
    use signaldb_wal::format::{
        decode_segment_header, encode_segment_header_v2, salt_records, segment_salt, SegmentHeader, FLAG_RECYCLED,
        FLAG_SPARE, RECORD_HEADER_LEN,
    };
    use signaldb_wal::recovery::scan_rules;
    use signaldb_wal::scan::scan_records_with;

    const INDEX: u64 = 9;

    /// Records with `ids`, salted for segment `index`, payloads tagged with `tag`.
    fn records(index: u64, ids: &[u64], tag: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        for &id in ids {
            let mut p = tag.to_vec();
            p.extend_from_slice(&id.to_le_bytes());
            encode_record(&mut buf, id, 0, Kind::Logs, &p);
        }
        salt_records(&mut buf, segment_salt(index));
        buf
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        /// A recycled segment: header (intact, SPARE, torn, zero), new records, terminator, then stale
        /// records of an older use (written under another segment number, with ANY ids, even above the
        /// new ones: the salt alone must keep them out), then damage anywhere. Whatever the header and
        /// the damage, every record scanned is a new one, intact.
        #[test]
        fn stale_records_never_verify(
            new_n in 0usize..8,
            stale_ids in prop::collection::vec(1u64..1000, 0..10),
            old_index in 1u64..20,
            header_state in 0u8..4,
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            is_last in any::<bool>(),
            base in 1u64..500,
        ) {
            prop_assume!(old_index != INDEX);
            let flags = if header_state == 1 { FLAG_RECYCLED | FLAG_SPARE } else { FLAG_RECYCLED };
            let h = SegmentHeader { version: 2, flags, base_id: base, prev_last_id: 0, prev_data_end: 0 };
            let mut image = encode_segment_header_v2(&h).to_vec();
            match header_state {
                2 => image[20] ^= 0x5a, // torn: CRC fails
                3 => image[..32].fill(0), // the header never landed
                _ => {}
            }
            let new_ids: Vec<u64> = (base..base + new_n as u64).collect();
            image.extend_from_slice(&records(INDEX, &new_ids, b"new:"));
            image.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
            image.extend_from_slice(&records(old_index, &stale_ids, b"stale:"));
            image.extend_from_slice(&[0u8; 64]);
            for (at, mask) in flips {
                let i = at.index(image.len());
                image[i] ^= mask.max(1);
            }
            let header = decode_segment_header(&image);
            let (start, rules) = scan_rules(header, INDEX, None, is_last);
            if matches!(header, signaldb_wal::format::HeaderState::Valid(h) if h.spare()) {
                return Ok(()); // recovery deletes it unread
            }
            let prev = match header {
                signaldb_wal::format::HeaderState::Valid(h) => h.base_id - 1,
                _ => 0, // no predecessor: the id chain protects nothing
            };
            scan_records_with(&image, start, prev, is_last, rules, |h, off| {
                let body = &image[off + RECORD_HEADER_LEN..off + RECORD_HEADER_LEN + h.len as usize];
                assert!(body.starts_with(b"new:"), "a stale record came back: id {}", h.id);
                assert_eq!(&body[4..], &h.id.to_le_bytes());
            });
        }
    }
}
