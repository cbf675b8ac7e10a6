//! Counters the WAL keeps for `stats()` and Prometheus: lock-free atomics,
//! plus an fsync latency histogram with fixed buckets.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds (seconds) of the fsync histogram buckets; +Inf is implied.
pub const FSYNC_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

#[derive(Debug, Default)]
pub struct Stats {
    pub appended_entries: AtomicU64,
    pub appended_bytes: AtomicU64,
    pub processed_entries: AtomicU64,
    pub corrupt_entries: AtomicU64,
    pub corrupt_bytes: AtomicU64,
    pub torn_tails_truncated: AtomicU64,
    pub failed_appends: AtomicU64,
    pub fsync_count: AtomicU64,
    pub fsync_nanos_total: AtomicU64,
    pub fsync_nanos_max: AtomicU64,
    fsync_buckets: [AtomicU64; FSYNC_BUCKETS.len() + 1],
    pub segments_created: AtomicU64,
    pub segments_deleted: AtomicU64,
    /// Segments made from a processed segment's file (recycled) rather than a fresh one.
    pub segments_recycled: AtomicU64,
    /// Processed segments' files that could not be kept or reused (a rename,
    /// write or fdatasync failed): deleted instead, and a fresh spare made.
    pub recycle_failures: AtomicU64,
    /// Checkpoints (`metadata.json`) refused at open as unusable: every
    /// entry in the segments was then replayed (at-least-once).
    pub checkpoints_refused: AtomicU64,
    pub metadata_writes: AtomicU64,
    /// Unix nanoseconds of the last successful fsync of entries; 0 = never.
    pub last_flush_unix_nanos: AtomicU64,
}

/// A point-in-time copy of the fsync histogram (cumulative counts per bucket).
#[derive(Clone, Debug)]
pub struct FsyncHistogram {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Stats {
    pub fn record_fsync(&self, took: Duration) {
        let nanos = took.as_nanos() as u64;
        self.fsync_count.fetch_add(1, Relaxed);
        self.fsync_nanos_total.fetch_add(nanos, Relaxed);
        self.fsync_nanos_max.fetch_max(nanos, Relaxed);
        let secs = took.as_secs_f64();
        let bucket = FSYNC_BUCKETS.iter().position(|&le| secs <= le).unwrap_or(FSYNC_BUCKETS.len());
        self.fsync_buckets[bucket].fetch_add(1, Relaxed);
    }

    pub fn record_flush_time(&self) {
        self.last_flush_unix_nanos.store(unix_nanos_now() as u64, Relaxed);
    }

    pub fn fsync_histogram(&self) -> FsyncHistogram {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(FSYNC_BUCKETS.len() + 1);
        for (i, &le) in FSYNC_BUCKETS.iter().chain(std::iter::once(&f64::INFINITY)).enumerate() {
            cumulative += self.fsync_buckets[i].load(Relaxed);
            buckets.push((le, cumulative));
        }
        FsyncHistogram { buckets, count: cumulative, sum_seconds: self.fsync_nanos_total.load(Relaxed) as f64 / 1e9 }
    }

    pub fn last_flush_rfc3339(&self) -> Option<String> {
        match self.last_flush_unix_nanos.load(Relaxed) {
            0 => None,
            n => Some(rfc3339_from_unix_nanos(n as i64)),
        }
    }
}

pub fn unix_nanos_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// `2026-11-23T21:54:13.123456Z` (UTC, microseconds).
pub fn rfc3339_from_unix_nanos(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let micros = nanos.rem_euclid(1_000_000_000) / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_from_unix_nanos(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_from_unix_nanos(1_795_470_853_123_456_789), "2026-11-23T21:54:13.123456Z");
        assert_eq!(rfc3339_from_unix_nanos(951_782_400_000_000_000), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn histogram_is_cumulative() {
        let s = Stats::default();
        s.record_fsync(Duration::from_micros(50));
        s.record_fsync(Duration::from_millis(3));
        s.record_fsync(Duration::from_secs(10));
        let h = s.fsync_histogram();
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], (0.0001, 1));
        assert_eq!(h.buckets.last().unwrap().1, 3);
        assert_eq!(h.buckets[FSYNC_BUCKETS.len() - 1].1, 2);
    }
}
