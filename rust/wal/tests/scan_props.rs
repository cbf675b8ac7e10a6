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
