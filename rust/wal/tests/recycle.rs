//! Recycled segments (format v2) through the engine, on real files: processed
//! segments' files are reused as spares, and whatever a reopen, a crash
//! snapshot, damage or a concurrent reader meets, no stale record comes back
//! and no acknowledged one is lost. The byte-level decision rows are in
//! `recovery.rs`'s tests.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signaldb_wal::format::{decode_segment_header, HeaderState, RECORD_HEADER_LEN};
use signaldb_wal::inspect::scan_segment_file;
use signaldb_wal::{Config, FaultAction, FaultInjector, FaultPoint, Kind, Wal};

const SEG: u64 = 8192;

fn cfg() -> Config {
    Config { max_segment_size: SEG, ..Config::default() }
}

fn payload(k: u64) -> Vec<u8> {
    let mut p = format!("entry-{k}-").into_bytes();
    p.resize(200 + (k % 97) as usize, b'a' + (k % 26) as u8);
    p
}

fn entries(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    wal.read_unprocessed(0, usize::MAX, usize::MAX).unwrap().into_iter().map(|e| (e.id, e.payload.to_vec())).collect()
}

fn numbered(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    v.sort();
    v
}

fn pooled(dir: &Path) -> usize {
    fs::read_dir(dir.join("segments"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_str().unwrap().starts_with(".recycled-"))
        .count()
}

fn recycled(path: &Path) -> bool {
    let bytes = fs::read(path).unwrap();
    matches!(decode_segment_header(&bytes), HeaderState::Valid(h) if h.recycled())
}

/// Rounds of appends, each marking the previous rounds processed and
/// checkpointing, so the pool keeps being filled and used. Returns the
/// unprocessed entries (the last round's).
fn churn(wal: &Wal, rounds: u64, per_round: u64, k: &mut u64) -> Vec<(u64, Vec<u8>)> {
    let mut last = Vec::new();
    for _ in 0..rounds {
        let ids: Vec<u64> = last.iter().map(|(id, _)| *id).collect();
        wal.mark_processed(&ids).unwrap();
        wal.checkpoint().unwrap();
        last.clear();
        for _ in 0..per_round {
            let p = payload(*k);
            *k += 1;
            last.push((wal.append(&p, Kind::Logs).unwrap(), p));
        }
    }
    last
}

/// The WAL at `dir` as it is now, copied elsewhere: what a crash of the
/// process (not of the machine) would leave.
fn snapshot(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    fs::create_dir_all(copy.path().join("segments")).unwrap();
    for entry in fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() && p.file_name().unwrap() != "LOCK" {
            fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    for entry in fs::read_dir(dir.join("segments")).unwrap() {
        let p = entry.unwrap().path();
        // A file renamed away meanwhile is no loss: it held nothing acknowledged.
        let _ = fs::copy(&p, copy.path().join("segments").join(p.file_name().unwrap()));
    }
    copy
}

#[test]
fn processed_segments_are_reused_and_reopen_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut k = 0;
    let wal = Wal::open(dir.path(), cfg()).unwrap();
    let expected = churn(&wal, 12, 40, &mut k);
    let files = numbered(dir.path());
    assert!(files.iter().any(|p| recycled(p)), "no segment was made from a recycled file: {files:?}");
    assert!(recycled(files.last().unwrap()), "the active segment should be a recycled file here");
    assert!(pooled(dir.path()) <= 32, "the pool is bounded");
    assert_eq!(entries(&wal), expected);

    // A process crash now: the active segment ends at its terminator, stale bytes after it.
    wal.flush().unwrap();
    let crashed = snapshot(dir.path());
    let w2 = Wal::open(crashed.path(), cfg()).unwrap();
    let st = w2.stats();
    assert_eq!((st.torn_tails_truncated, st.corrupt_entries), (0, 0));
    assert_eq!(entries(&w2), expected);
    drop(w2);

    wal.close().unwrap();
    assert_eq!(pooled(dir.path()), 0, "pooled files are deleted at close");
    let wal = Wal::open(dir.path(), cfg()).unwrap();
    let st = wal.stats();
    assert_eq!((st.torn_tails_truncated, st.corrupt_entries), (0, 0), "clean reopen");
    assert_eq!(entries(&wal), expected);
    // And appends continue over the stale bytes.
    let mut more = expected.clone();
    for _ in 0..30 {
        let p = payload(k);
        k += 1;
        more.push((wal.append(&p, Kind::Traces).unwrap(), p));
    }
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), cfg()).unwrap();
    let st = wal.stats();
    assert_eq!((st.torn_tails_truncated, st.corrupt_entries), (0, 0));
    assert_eq!(entries(&wal), more);
}

/// Marks everything appended so far processed and checkpoints: every sealed
/// segment is doomed at once.
fn process_all(wal: &Wal, upto: u64) {
    wal.mark_processed(&(1..=upto).collect::<Vec<_>>()).unwrap();
    wal.checkpoint().unwrap();
}

#[test]
fn the_pool_keeps_32_mib_of_segment_size_in_2_to_32_files() {
    // Small segments: 32 files (the upper bound), the rest of the doomed ones deleted.
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), cfg()).unwrap();
    let ids: Vec<u64> = (0..60 * SEG / 230).map(|k| wal.append(&payload(k), Kind::Logs).unwrap()).collect();
    assert!(numbered(dir.path()).len() > 40, "enough sealed segments to overflow the pool");
    process_all(&wal, *ids.last().unwrap());
    // The housekeeper may already have turned one kept file into the next spare.
    assert!((31..=32).contains(&pooled(dir.path())), "{} files kept", pooled(dir.path()));
    wal.close().unwrap();

    // 16 MiB segments: 32 MiB keeps two of them (the lower bound); a third doomed one is deleted.
    let dir = tempfile::tempdir().unwrap();
    let big = Config { max_segment_size: 16 << 20, ..Config::default() };
    let wal = Wal::open(dir.path(), big).unwrap();
    let record = vec![7u8; 1 << 20];
    let last = (0..60).map(|_| wal.append(&record, Kind::Logs).unwrap()).last().unwrap();
    assert!(numbered(dir.path()).len() >= 4);
    process_all(&wal, last);
    assert!((1..=2).contains(&pooled(dir.path())), "{} files kept", pooled(dir.path()));
    wal.close().unwrap();
}

/// The last record of a sealed recycled segment, and where it starts.
fn last_record_of_sealed_recycled(dir: &Path) -> (PathBuf, u64, u64) {
    let files = numbered(dir);
    for (i, p) in files.iter().enumerate().take(files.len().saturating_sub(1)) {
        if !recycled(p) {
            continue;
        }
        let report = scan_segment_file(p, i + 1 == files.len(), 0).unwrap();
        if let Some(last) = report.last_id {
            return (p.clone(), last, report.data_end);
        }
    }
    panic!("no sealed recycled segment with records in {files:?}");
}

#[test]
fn damage_to_the_last_record_of_a_sealed_recycled_segment_is_corruption() {
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Damage {
        Flip,
        Zero,
        /// The file cut where the last record starts: a clean record boundary.
        Truncate,
    }
    for damage in [Damage::Flip, Damage::Zero, Damage::Truncate] {
        let dir = tempfile::tempdir().unwrap();
        let mut k = 0;
        let wal = Wal::open(dir.path(), cfg()).unwrap();
        // The last round spans several segments, all unprocessed.
        churn(&wal, 8, 40, &mut k);
        let mut expected = entries(&wal);
        for _ in 0..80 {
            let p = payload(k);
            k += 1;
            expected.push((wal.append(&p, Kind::Logs).unwrap(), p));
        }
        wal.close().unwrap();
        let (path, last_id, data_end) = last_record_of_sealed_recycled(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        match damage {
            Damage::Zero => {
                // Reads like a clean end of data: the next segment's header says where the data really ends.
                let len = payload(0).len().max(1);
                let from = data_end as usize - RECORD_HEADER_LEN - 50.min(len);
                bytes[from..data_end as usize].fill(0);
            }
            Damage::Flip => bytes[data_end as usize - 5] ^= 0x20,
            Damage::Truncate => {
                // Ends like a segment whose records stop there; the next header says they went on.
                let (_, last) = expected.iter().find(|(id, _)| *id == last_id).unwrap();
                bytes.truncate(data_end as usize - RECORD_HEADER_LEN - last.len());
            }
        }
        fs::write(&path, &bytes).unwrap();
        let wal = Wal::open(dir.path(), cfg()).unwrap();
        let st = wal.stats();
        assert!(st.corrupt_entries >= 1, "damage went unnoticed ({damage:?})");
        assert_eq!(st.torn_tails_truncated, 0);
        let got = entries(&wal);
        assert!(!got.iter().any(|(id, _)| *id == last_id));
        let want: Vec<_> = expected.iter().filter(|(id, _)| *id != last_id).cloned().collect();
        if damage != Damage::Zero {
            assert_eq!(got, want);
        }
        assert!(fs::read_dir(dir.path().join("quarantine")).unwrap().count() >= 1);
    }
}

#[test]
fn torn_tail_over_stale_records_is_erased_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut k = 0;
    let wal = Wal::open(dir.path(), cfg()).unwrap();
    let mut expected = churn(&wal, 12, 40, &mut k);
    wal.close().unwrap();
    let last = numbered(dir.path()).pop().unwrap();
    assert!(recycled(&last));
    let report = scan_segment_file(&last, true, 0).unwrap();
    // An unacknowledged append that reached the disk in part: a plausible header, half its payload.
    let mut torn = Vec::new();
    signaldb_wal::format::encode_record(&mut torn, report.last_id.unwrap() + 1, 0, Kind::Logs, &payload(999));
    torn.truncate(RECORD_HEADER_LEN + 60);
    let mut bytes = fs::read(&last).unwrap();
    let at = report.data_end as usize;
    bytes[at..at + torn.len()].copy_from_slice(&torn);
    fs::write(&last, &bytes).unwrap();

    let wal = Wal::open(dir.path(), cfg()).unwrap();
    let st = wal.stats();
    assert_eq!((st.torn_tails_truncated, st.corrupt_entries), (1, 0));
    assert_eq!(entries(&wal), expected);
    let p = payload(k);
    expected.push((wal.append(&p, Kind::Metrics).unwrap(), p));
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), cfg()).unwrap();
    let st = wal.stats();
    assert_eq!((st.torn_tails_truncated, st.corrupt_entries), (0, 0));
    assert_eq!(entries(&wal), expected);
}

#[test]
fn a_failing_recycle_step_falls_back_to_a_fresh_spare() {
    for skip in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(FaultInjector::new());
        // Every recycling step after `skip` fails: pooling, SPARE header, its fdatasync, the rename.
        faults.arm(FaultPoint::SegmentRecycle, FaultAction::Error(libc::EIO), skip, None);
        let wal = Wal::open(dir.path(), Config { faults: Some(Arc::clone(&faults)), ..cfg() }).unwrap();
        let mut k = 0;
        let expected = churn(&wal, 8, 40, &mut k);
        assert!(wal.poisoned().is_none(), "a failed recycle step is no reason to stop");
        assert!(faults.hits(FaultPoint::SegmentRecycle) > skip);
        // Each failed step is counted (and logged), for the operator.
        assert!(wal.stats().recycle_failures >= 1, "{:?}", wal.stats());
        assert_eq!(entries(&wal), expected);
        wal.close().unwrap();
        let wal = Wal::open(dir.path(), cfg()).unwrap();
        let st = wal.stats();
        assert_eq!((st.torn_tails_truncated, st.corrupt_entries), (0, 0));
        assert_eq!(entries(&wal), expected);
        let left: Vec<_> = fs::read_dir(dir.path().join("segments")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.iter().all(|n| !n.to_str().unwrap().starts_with('.')), "{left:?}");
    }
}

/// Readers running while processed segments are recycled under them: every
/// entry read is the one appended under its id (a reader never gets bytes a
/// recycled file received after it looked at the table), ids increase.
#[test]
fn readers_never_see_a_recycled_file_change_under_them() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), cfg()).unwrap());
    let appended: Arc<Mutex<HashMap<u64, Vec<u8>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (wal, appended, stop) = (Arc::clone(&wal), Arc::clone(&appended), Arc::clone(&stop));
        std::thread::spawn(move || {
            let (mut reads, mut seen) = (0u64, 0u64);
            while !stop.load(Acquire) {
                let got = wal.read_unprocessed(0, 64, usize::MAX).unwrap();
                let known = appended.lock().unwrap();
                let mut prev = 0;
                for e in &got {
                    assert!(e.id > prev, "ids out of order");
                    prev = e.id;
                    let want = known.get(&e.id).expect("an id never acknowledged");
                    assert_eq!(&e.payload, want, "entry {} read with other bytes", e.id);
                }
                drop(known);
                // Consume what was read: marks make checkpoints doom (and recycle) segments.
                let ids: Vec<u64> = got.iter().map(|e| e.id).collect();
                wal.mark_processed(&ids).unwrap();
                if reads % 8 == 0 {
                    wal.checkpoint().unwrap();
                }
                reads += 1;
                seen += got.len() as u64;
            }
            (reads, seen)
        })
    };
    let started = Instant::now();
    let mut k = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        let p = payload(k);
        k += 1;
        // The map is updated before the append returns: a reader sees the id only after.
        let mut known = appended.lock().unwrap();
        let id = wal.append(&p, Kind::Logs).unwrap();
        known.insert(id, p);
    }
    stop.store(true, Release);
    let (reads, seen) = reader.join().unwrap();
    assert!(reads > 10 && seen > 100, "reader barely ran: {reads} reads, {seen} entries");
    let created = wal.stats().segments_created;
    assert!(created > 20, "too few segments to exercise recycling: {created}");
    let files = numbered(dir.path());
    assert!(files.iter().any(|p| recycled(p)), "no segment was made from a recycled file");
}

/// A full disk needs the space kept files hold: they are deleted at the first
/// ENOSPC, and processed segments are deleted (not kept) for a while after.
#[test]
fn a_full_disk_gets_the_kept_files_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultInjector::new());
    let wal = Wal::open(dir.path(), Config { faults: Some(Arc::clone(&faults)), ..cfg() }).unwrap();
    let mut k = 0;
    churn(&wal, 6, 40, &mut k);
    wal.mark_processed(&entries(&wal).iter().map(|(id, _)| *id).collect::<Vec<_>>()).unwrap();
    wal.checkpoint().unwrap();
    assert!(pooled(dir.path()) > 0, "test setup: files are kept");
    faults.arm(FaultPoint::SegmentWrite, FaultAction::Error(libc::ENOSPC), 0, Some(1));
    assert!(matches!(wal.append(&payload(k), Kind::Logs), Err(signaldb_wal::WalError::Full(_))));
    assert_eq!(pooled(dir.path()), 0, "kept files still hold space on a full disk");
    let expected = churn(&wal, 6, 40, &mut k);
    assert_eq!(pooled(dir.path()), 0, "files kept again right after the disk was full");
    assert_eq!(entries(&wal), expected);
    assert!(wal.poisoned().is_none());
}
