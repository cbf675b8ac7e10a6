//! Engine-level tests: rotation, replay, torn tails, corruption, metadata,
//! oversized entries and concurrent appenders, against the real filesystem.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use signaldb_wal::format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN_V2 as SEGMENT_HEADER_LEN};
use signaldb_wal::{Config, Kind, SyncMode, Wal, WalError};

fn cfg(seg: u64) -> Config {
    Config { max_segment_size: seg, ..Config::default() }
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut p = format!("entry-{i}-").into_bytes();
    p.resize(len.max(p.len()), b'a' + (i % 26) as u8);
    p
}

fn all_entries(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    wal.read_unprocessed(0, usize::MAX, usize::MAX).unwrap().into_iter().map(|e| (e.id, e.payload.to_vec())).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().chars().next().unwrap().is_ascii_digit())
        .collect();
    v.sort();
    v
}

#[test]
fn append_reopen_round_trip_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let wal = Wal::open(dir.path(), cfg(4096)).unwrap();
        for i in 0..200u64 {
            let p = payload(i, (i as usize * 37) % 700);
            let id = wal.append(&p, Kind::Logs).unwrap();
            expected.push((id, p));
        }
        assert!(segment_files(dir.path()).len() > 10, "tiny segments rotate");
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), cfg(4096)).unwrap();
    assert_eq!(all_entries(&wal), expected);
    let ids: Vec<u64> = expected.iter().map(|e| e.0).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids are contiguous");
    // Ids keep increasing after reopen (skipping what the last run reserved but did not use).
    assert!(wal.append(b"next", Kind::Traces).unwrap() > *ids.last().unwrap());
}

#[test]
fn oversized_entry_gets_its_own_segment_and_no_empty_segments() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), cfg(4096)).unwrap();
    wal.append(b"small", Kind::Traces).unwrap();
    let big = vec![7u8; 64 << 20];
    let big_id = wal.append(&big, Kind::Metrics).unwrap();
    wal.append(b"after", Kind::Traces).unwrap();
    wal.close().unwrap();
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 3, "small | big | after: {files:?}");
    assert!(fs::metadata(&files[1]).unwrap().len() >= (64 << 20) as u64);
    let wal = Wal::open(dir.path(), cfg(4096)).unwrap();
    let entries = wal.read_unprocessed(0, 10, usize::MAX).unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[1].id, big_id);
    assert!(entries[1].payload == big);
}

#[test]
fn processed_segments_are_deleted_after_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), cfg(4096)).unwrap();
    let mut ids = Vec::new();
    for i in 0..500 {
        ids.push(wal.append(&payload(i, 200), Kind::Traces).unwrap());
    }
    let before = wal.stats().total_segments;
    assert!(before > 20);
    wal.mark_processed(&ids).unwrap();
    wal.flush().unwrap();
    let s = wal.stats();
    assert_eq!(s.unprocessed_entries, 0);
    assert_eq!(s.total_segments, 1, "only the active segment remains");
    // The active segment, and the spare made ahead for the next one (issue 17).
    assert!(segment_files(dir.path()).len() <= 2, "{:?}", segment_files(dir.path()));
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), cfg(4096)).unwrap();
    assert!(all_entries(&wal).is_empty());
    assert!(wal.append(b"x", Kind::Traces).unwrap() > 500, "ids stay monotonic after every segment is deleted");
}

#[test]
fn metadata_is_written_atomically_and_restores_marks() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
        for i in 0..10 {
            wal.append(&payload(i, 10), Kind::Traces).unwrap();
        }
        wal.mark_processed(&[1, 2, 3, 7]).unwrap();
        wal.close().unwrap();
    }
    let meta = signaldb_wal::metadata::load(dir.path()).unwrap().unwrap();
    assert_eq!(meta.processed_watermark, 3);
    assert_eq!(meta.processed_ids, vec![7]);
    assert!(meta.next_id >= 11, "next_id is the durable id reservation");
    assert!(!dir.path().join(".metadata.json.tmp").exists());
    let wal = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    let ids: Vec<u64> = all_entries(&wal).into_iter().map(|e| e.0).collect();
    assert_eq!(ids, vec![4, 5, 6, 8, 9, 10]);
}

#[test]
fn damaged_metadata_means_replay_not_loss() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
        for i in 0..5 {
            wal.append(&payload(i, 10), Kind::Traces).unwrap();
        }
        wal.mark_processed(&[1, 2]).unwrap();
        wal.close().unwrap();
    }
    let path = dir.path().join("metadata.json");
    let text = fs::read_to_string(&path).unwrap().replace("\"processed_watermark\":2", "\"processed_watermark\":4");
    fs::write(&path, text).unwrap();
    let wal = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(all_entries(&wal).len(), 5, "a tampered checkpoint is ignored: everything replays");
}

#[test]
fn torn_tail_is_truncated_and_appends_land_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    for i in 0..5 {
        wal.append(&payload(i, 100), Kind::Traces).unwrap();
    }
    wal.close().unwrap();
    let seg = segment_files(dir.path()).pop().unwrap();
    // Simulate a crash in the middle of writing record 6: half a record after record 5.
    let end = SEGMENT_HEADER_LEN + 5 * (RECORD_HEADER_LEN + 100);
    let mut torn = Vec::new();
    signaldb_wal::format::encode_record(&mut torn, 6, 0, Kind::Traces, &[9u8; 500]);
    let file = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &torn[..200], end as u64).unwrap();
    drop(file);

    let wal = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(wal.stats().torn_tails_truncated, 1);
    assert_eq!(all_entries(&wal).len(), 5);
    let id = wal.append(b"short", Kind::Logs).unwrap();
    assert!(id > 5);
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    let entries = all_entries(&wal);
    assert_eq!(entries.len(), 6);
    assert_eq!(entries[5], (id, b"short".to_vec()));
    assert_eq!(wal.stats().torn_tails_truncated, 0, "nothing left to truncate the second time");
    assert_eq!(wal.stats().corrupt_entries, 0);
}

#[test]
fn corruption_in_the_middle_is_quarantined_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    for i in 0..5 {
        wal.append(&payload(i, 100), Kind::Traces).unwrap();
    }
    wal.close().unwrap();
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let rec2 = SEGMENT_HEADER_LEN + (RECORD_HEADER_LEN + 100) + RECORD_HEADER_LEN + 10;
    bytes[rec2] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();

    for _ in 0..2 {
        // No crash loop: every open succeeds and reports the same damage.
        let wal = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(wal.stats().corrupt_entries, 1);
        let ids: Vec<u64> = all_entries(&wal).into_iter().map(|e| e.0).collect();
        assert_eq!(ids, vec![1, 3, 4, 5]);
        wal.close().unwrap();
    }
    let q: Vec<_> = fs::read_dir(dir.path().join("quarantine")).unwrap().collect();
    assert_eq!(q.len(), 1);
    // The gap left by the lost entry does not pin the watermark.
    let wal = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    wal.mark_processed(&[1, 3, 4, 5]).unwrap();
    assert_eq!(wal.stats().unprocessed_entries, 0);
    assert!(wal.stats().processed_watermark >= 5);
}

#[test]
fn every_truncation_point_keeps_complete_records() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0usize, 1, 50, 3, 120];
    {
        let wal = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            wal.append(&payload(i as u64, n), Kind::Traces).unwrap();
        }
        wal.close().unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let image = fs::read(&seg).unwrap();
    let mut ends = vec![SEGMENT_HEADER_LEN];
    for (i, &n) in sizes.iter().enumerate() {
        ends.push(ends[i] + RECORD_HEADER_LEN + payload(i as u64, n).len());
    }
    for cut in 0..=*ends.last().unwrap() + 8 {
        let copy = tempfile::tempdir().unwrap();
        fs::create_dir(copy.path().join("segments")).unwrap();
        fs::write(copy.path().join("segments").join(seg.file_name().unwrap()), &image[..cut]).unwrap();
        let wal = Wal::open(copy.path(), cfg(1 << 20)).unwrap();
        let complete = ends.iter().skip(1).filter(|&&e| e <= cut).count();
        let got = all_entries(&wal);
        assert_eq!(got.len(), complete, "cut at {cut}");
        for (i, (id, p)) in got.iter().enumerate() {
            assert_eq!((*id, p.clone()), (i as u64 + 1, payload(i as u64, sizes[i])));
        }
        let id = wal.append(b"after-cut", Kind::Logs).unwrap();
        wal.close().unwrap();
        let wal = Wal::open(copy.path(), cfg(1 << 20)).unwrap();
        let again = all_entries(&wal);
        assert_eq!(again.len(), complete + 1, "cut at {cut}: reopen, append, reopen");
        assert_eq!(again.last().unwrap(), &(id, b"after-cut".to_vec()));
    }
}

#[test]
fn concurrent_appenders_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), cfg(1 << 20)).unwrap());
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                (0..100u64)
                    .map(|i| (wal.append(&payload(t * 1000 + i, 64), Kind::Traces).unwrap(), t * 1000 + i))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<(u64, u64)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    all.sort();
    assert_eq!(all.len(), 1600);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ids unique");
    let s = wal.stats();
    assert!(s.fsync_count < 1600, "group commit shares fsyncs: {} fsyncs", s.fsync_count);
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    let by_id: std::collections::HashMap<u64, Vec<u8>> = all_entries(&wal).into_iter().collect();
    for (id, tag) in all {
        assert_eq!(by_id[&id], payload(tag, 64));
    }
}

/// 64 appenders, single records and small batches mixed: records queued
/// behind a sync in flight are written by whoever starts the next one, and
/// the callers one sync acknowledged are woken one after another (a chain):
/// every call returns, ids are unique and contiguous, and every record is
/// there after reopen.
#[test]
fn many_appenders_queue_behind_the_sync_in_flight_and_are_all_woken() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), cfg(64 << 10)).unwrap());
    let threads: Vec<_> = (0..64u64)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for i in 0..40u64 {
                    let tag = t * 1000 + i;
                    if i % 5 == 4 {
                        let batch = [payload(tag, 40), payload(tag + 500, 40)];
                        let first = wal.append_batch(batch.iter().map(|p| &p[..]), Kind::Logs).unwrap();
                        got.push((first, tag));
                        got.push((first + 1, tag + 500));
                    } else {
                        got.push((wal.append(&payload(tag, 40), Kind::Traces).unwrap(), tag));
                    }
                }
                got
            })
        })
        .collect();
    let mut all: Vec<(u64, u64)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    all.sort();
    let n = 64 * 48;
    assert_eq!(all.len(), n);
    assert!(all.iter().enumerate().all(|(i, &(id, _))| id == i as u64 + 1), "ids unique and contiguous");
    assert!(wal.stats().fsync_count < n as u64, "group commit shares fsyncs");
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), cfg(64 << 10)).unwrap();
    let by_id: std::collections::HashMap<u64, Vec<u8>> = all_entries(&wal).into_iter().collect();
    assert_eq!(by_id.len(), n);
    for (id, tag) in all {
        assert_eq!(by_id[&id], payload(tag, 40));
    }
}

#[test]
fn batched_mode_acks_after_write_and_syncs_on_flush() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config { sync_mode: SyncMode::Batched, flush_interval: Duration::from_secs(3600), ..cfg(1 << 20) };
    let wal = Wal::open(dir.path(), cfg.clone()).unwrap();
    for i in 0..10 {
        wal.append(&payload(i, 10), Kind::Traces).unwrap();
    }
    assert_eq!(wal.stats().fsync_count, 0, "batched appends do not fsync each");
    assert_eq!(all_entries(&wal).len(), 10, "acknowledged entries are readable at once");
    wal.flush().unwrap();
    assert_eq!(wal.stats().fsync_count, 1);
    wal.close().unwrap();
}

#[test]
fn batched_mode_syncs_by_interval() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config { sync_mode: SyncMode::Batched, flush_interval: Duration::from_millis(50), ..cfg(1 << 20) };
    let wal = Wal::open(dir.path(), cfg).unwrap();
    wal.append(b"x", Kind::Traces).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while wal.stats().fsync_count == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(wal.stats().fsync_count >= 1, "flush interval bounds how long an entry stays unsynced");
    assert!(wal.stats().last_flush.is_some());
}

#[test]
fn tail_reader_pages_through_with_after_id() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), cfg(4096)).unwrap();
    for i in 0..300 {
        wal.append(&payload(i, 30), Kind::Traces).unwrap();
    }
    wal.mark_processed(&[5, 6, 7]).unwrap();
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = wal.read_unprocessed(after, 17, usize::MAX).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 17);
        after = page.last().unwrap().id;
        seen.extend(page.into_iter().map(|e| e.id));
    }
    let expected: Vec<u64> = (1..=300).filter(|i| !(5..=7).contains(i)).collect();
    assert_eq!(seen, expected);
}

#[test]
fn second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), cfg(4096)).unwrap();
    assert!(matches!(Wal::open(dir.path(), cfg(4096)), Err(WalError::InUse { .. })));
    wal.close().unwrap();
    Wal::open(dir.path(), cfg(4096)).unwrap();
}

#[test]
fn permissions_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("wal");
    let wal = Wal::open(&dir, cfg(4096)).unwrap();
    wal.append(b"x", Kind::Traces).unwrap();
    wal.close().unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("segments")), 0o700);
    assert_eq!(mode(&dir.join("metadata.json")), 0o600);
    for f in segment_files(&dir) {
        assert_eq!(mode(&f), 0o600);
    }
}

#[test]
fn unknown_ids_cannot_be_marked() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), cfg(4096)).unwrap();
    wal.append(b"x", Kind::Traces).unwrap();
    assert!(matches!(wal.mark_processed(&[2]), Err(WalError::InvalidArgument(_))));
    assert!(matches!(wal.mark_processed(&[0]), Err(WalError::InvalidArgument(_))));
    wal.mark_processed(&[1, 1]).unwrap();
}

#[test]
fn ids_never_repeat_even_when_acknowledged_records_are_lost() {
    // Batched mode acknowledges after write(): a power cut may lose such
    // records. Simulate it by cutting the segment back to the synced part:
    // the next run must not hand their ids out again.
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config { sync_mode: SyncMode::Batched, flush_interval: Duration::from_secs(3600), ..cfg(1 << 20) };
    let synced_end;
    let lost_ids: Vec<u64>;
    {
        let wal = Wal::open(dir.path(), cfg.clone()).unwrap();
        wal.append(b"synced", Kind::Traces).unwrap();
        wal.flush().unwrap();
        synced_end = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 6;
        lost_ids = (0..3).map(|_| wal.append(b"acked, never synced", Kind::Traces).unwrap()).collect();
        std::mem::forget(wal); // a crash: no close, no flush
    }
    let seg = segment_files(dir.path())[0].clone(); // the one with records (a spare may follow it)
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 3 * (RECORD_HEADER_LEN + 19)], synced_end as u64).unwrap();
    drop(f);
    std::fs::remove_file(dir.path().join("LOCK")).ok(); // the forgotten handle still holds the flock
    let wal = Wal::open(dir.path(), cfg).unwrap();
    assert_eq!(all_entries(&wal).len(), 1);
    let new_id = wal.append(b"new", Kind::Traces).unwrap();
    assert!(lost_ids.iter().all(|&l| new_id > l), "id {new_id} was already handed out: {lost_ids:?}");
}

#[test]
fn copied_and_in_place_calls_interleave_in_id_order() {
    // Small records are copied into one buffer per call, large ones written
    // in place (header beside the payload): both kinds of call, from several
    // threads, in blocking and queued appends, come back intact and in order.
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), cfg(256 << 10)).unwrap());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let wal = Arc::clone(&wal);
            s.spawn(move || {
                for i in 0..40u64 {
                    let n = t * 1000 + i;
                    match i % 4 {
                        0 => {
                            let small: Vec<Vec<u8>> = (0..50).map(|j| payload(n * 100 + j, 100)).collect();
                            wal.append_batch(small.iter().map(|p| p.as_slice()), Kind::Logs).unwrap();
                        }
                        1 => {
                            let big: Vec<Vec<u8>> = (0..3).map(|j| payload(n * 100 + j, 20_000)).collect();
                            wal.append_batch(big.iter().map(|p| p.as_slice()), Kind::Logs).unwrap();
                        }
                        2 => {
                            wal.append(&payload(n, 9_000), Kind::Traces).unwrap();
                        }
                        _ => {
                            wal.enqueue(&payload(n, 30_000), Kind::Metrics).unwrap();
                        }
                    }
                }
            });
        }
    });
    wal.flush().unwrap();
    let before = all_entries(&wal);
    assert_eq!(before.len(), 4 * 10 * (50 + 3 + 1 + 1));
    assert!(before.windows(2).all(|w| w[1].0 > w[0].0), "ids increase");
    wal.close().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), cfg(256 << 10)).unwrap();
    assert_eq!(all_entries(&wal), before);
    let lens: std::collections::BTreeSet<usize> = before.iter().map(|e| e.1.len()).collect();
    assert_eq!(lens, [100, 9_000, 20_000, 30_000].into_iter().collect());
}

/// A WAL directory as the version 1 code left it (v1 segments, unsalted
/// records, a checkpoint with `format_version` 1) opens under this code with
/// its processed marks intact: only the unprocessed entries are replayed, and
/// new appends go to v2 segments after it.
#[test]
fn a_version_1_directory_upgrades_without_replaying_processed_entries() {
    use signaldb_wal::format::{encode_record, encode_segment_header};
    use signaldb_wal::metadata::{self, Metadata};
    let dir = tempfile::tempdir().unwrap();
    let seg_dir = dir.path().join("segments");
    fs::create_dir_all(&seg_dir).unwrap();
    let mut image = encode_segment_header(1).to_vec();
    for id in 1..=5u64 {
        encode_record(&mut image, id, id as i64, Kind::Logs, &payload(id, 50));
    }
    image.resize(4096, 0);
    fs::write(seg_dir.join("000001.wal"), &image).unwrap();
    let checkpoint = Metadata { format_version: 1, next_id: 6, processed_watermark: 3, ..Metadata::default() };
    metadata::store(dir.path(), &checkpoint).unwrap();

    let wal = Wal::open(dir.path(), cfg(4096)).unwrap();
    let ids: Vec<u64> = all_entries(&wal).iter().map(|e| e.0).collect();
    assert_eq!(ids, vec![4, 5], "the v1 checkpoint's marks still count");
    let stats = wal.stats();
    assert_eq!((stats.corrupt_entries, stats.torn_tails_truncated), (0, 0));
    let next = wal.append(b"after the upgrade", Kind::Traces).unwrap();
    assert!(next >= 6);
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), cfg(4096)).unwrap();
    let ids: Vec<u64> = all_entries(&wal).iter().map(|e| e.0).collect();
    assert_eq!(ids, vec![4, 5, next]);
}
