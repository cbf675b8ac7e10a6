//! Sealing the active segment and starting the next one, with the
//! failpoints around each durable step.
//!
//! The next segment is made ahead of need by the housekeeper, as a *spare*:
//! a file already under its final name (`NNNNNN.wal`, the active index + 1),
//! zero-filled and fsynced, with the segments directory fsynced after the
//! rename. Order (each step durable before the next):
//!
//! 1. `.prealloc-<pid>-<n>.wal` written with zeros, `fsync` (skipped for a
//!    *bare* spare, made when groups are large: an empty file that grows);
//! 2. rename to `NNNNNN.wal` (no replace), `fsync` the directory;
//! 3. at rotation: `fdatasync` the old segment, then header + records into
//!    the spare, then the group's `fdatasync`, then acknowledge.
//!
//! So a rotation costs no directory fsync on the ack path. A power cut
//! leaves at most one trailing segment with a zero header and no records (a
//! spare, or a rotation cut before its first fdatasync); recovery removes it
//! (`recovery.rs`, decision table). Without a spare (the housekeeper was
//! late, or its last attempt failed) the rotation makes one itself, the same
//! way, on the ack path.
//!
//! Recycled spares. A checkpoint that dooms processed segments keeps up to
//! `recycle_pool_cap()` of their files (v2, half to twice `max_segment_size` long,
//! no read in flight) under temp names instead of deleting them
//! (`background.rs`). A spare is then made from one of them instead of from
//! zeros, so its writes land in allocated blocks and cached pages:
//!
//! - R1. overwrite the header with a SPARE header (flags RECYCLED|SPARE),
//!   `fdatasync`: under a segment name the file must say its contents are stale;
//! - R2. rename (no replace) to `NNNNNN.wal`, `fsync` the directory;
//! - R3. at rotation, as for any spare: the RECYCLED header (with the sealed
//!   segment's last id and data end) and a zero record header after it, then
//!   records (each write followed by a zero record header: stale bytes
//!   follow), the group's `fdatasync`, acknowledge.
//!
//! A failure in R1 or R2's rename deletes the file and falls back to a fresh
//! spare (it held only processed entries: no poison). A crash between any
//! two steps is a row of `recovery.rs`'s tables.

use super::*;

impl Inner {
    /// fsync of the segments directory; a failure poisons the WAL (never retried).
    pub(super) fn sync_seg_dir(&self) -> Result<()> {
        let r = self.fault_err(FaultPoint::DirSync).and_then(|_| fsutil::fsync_dir(&self.seg_dir));
        r.map_err(|e| {
            let why = format!("fsync of directory {} failed: {e}", self.seg_dir.display());
            self.poison(why.clone());
            WalError::Poisoned(why)
        })
    }

    fn creation_error(&self, e: std::io::Error) -> WalError {
        if is_out_of_space(&e) {
            self.out_of_space();
            WalError::Full(format!("no space for a new segment ({e})"))
        } else {
            WalError::io("creating a WAL segment", e)
        }
    }

    /// Seals the active segment (fdatasync, unless everything in it is
    /// synced already) and starts a new one at `base_id` for a call of
    /// `call_bytes`.
    pub(super) fn rotate(&self, io: &mut Io, base_id: u64, call_bytes: u64) -> Result<()> {
        let old = io.active.as_ref().expect("active segment");
        // The old segment is durable whole before the new one gets a byte:
        // recovery may then call damage in a sealed segment corruption.
        let unsynced = old.last_id.is_some_and(|last| last > self.commit.synced_id.load(Acquire));
        if unsynced && !self.sync_file(&old.file) {
            return Err(WalError::Poisoned("fdatasync failed while sealing a segment".into()));
        }
        let sealed_last = old.last_id;
        let sealed_index = old.index;
        let sealed_end = old.write_offset;
        if let Some(last) = sealed_last {
            self.commit.synced_id.fetch_max(last, AcqRel);
        }
        let index = sealed_index + 1;
        let new = {
            // Held until `active_index` moves, so the housekeeper never makes a spare for this index.
            let _creating = lock(&self.segments.spare_creation);
            let ready = lock(&self.segments.spare).take();
            let spare = match ready {
                Some(s) if s.index == index => s,
                other => {
                    if let Some(stale) = other {
                        log::warn!("WAL spare segment {} does not follow {sealed_index}; removing it", stale.index);
                        let _ = std::fs::remove_file(&stale.path);
                    }
                    // A call that fills the segment by itself overwrites every byte: zeros first would be waste.
                    let bare = call_bytes + crate::format::SEGMENT_HEADER_LEN_V2 as u64 >= self.cfg.max_segment_size
                        || !self.preallocation_pays();
                    self.make_spare(index, bare).inspect_err(|_| {
                        *lock(&self.segments.spare_retry_at) = Instant::now() + SPARE_RETRY_BACKOFF;
                    })?
                }
            };
            let seg = self.start(spare, base_id, sealed_last.unwrap_or(0), sealed_end)?;
            self.segments.active_index.store(index, Release);
            seg
        };
        let mut table = self.segments.table.write().unwrap();
        if let Some(s) = table.iter_mut().find(|s| s.index == sealed_index) {
            s.sealed = true;
            s.data_end = sealed_end;
            s.last_id = sealed_last;
            s.first_id = io.active.as_ref().unwrap().first_id;
        }
        table.push(info_of(&new, &self.seg_dir));
        drop(table);
        io.active = Some(new);
        Ok(())
    }

    /// Whether zero-filling segments ahead of time pays at the current load.
    ///
    /// An fdatasync into preallocated blocks skips the inode update (about
    /// 0.07 ms here), but the zero fill writes every byte twice. Below about
    /// 50 KB per group commit (0.07 ms at 700 MB/s) the saved latency wins;
    /// above it, bandwidth does, and segments are created bare and grow.
    pub(super) fn preallocation_pays(&self) -> bool {
        self.segments.group_bytes_avg.load(Relaxed) < LARGE_GROUP_BYTES
    }

    /// Makes segment file `index` durably, empty of records (steps 1 and 2 of
    /// the module doc; a recycled file when the pool has one). The caller holds `spare_creation`.
    pub(super) fn make_spare(&self, index: u64, bare: bool) -> Result<Spare> {
        if let Some(spare) = self.recycled_spare(index)? {
            return Ok(spare);
        }
        let path = self.seg_dir.join(crate::format::segment_file_name(index));
        let spare = if bare {
            let file = self
                .fault_err(FaultPoint::SegmentPreallocate)
                .and_then(|_| segment::create_bare(&path))
                .map_err(|e| self.creation_error(e))?;
            Spare { index, path, file, len: 0, recycled: false }
        } else {
            let tmp = self
                .fault_err(FaultPoint::SegmentPreallocate)
                .and_then(|_| segment::prepare_spare(&self.seg_dir, self.cfg.max_segment_size))
                .map_err(|e| self.creation_error(e))?;
            let renamed =
                self.fault_err(FaultPoint::SegmentRename).and_then(|_| fsutil::rename_noreplace(&tmp.path, &path));
            if let Err(e) = renamed {
                let _ = std::fs::remove_file(&tmp.path);
                return Err(WalError::io(format!("creating segment {}", path.display()), e));
            }
            Spare { index, path, file: tmp.file, len: tmp.len, recycled: false }
        };
        if let Err(e) = self.sync_seg_dir() {
            // Fail-stop (poisoned); the file goes so no one uses a name that may not be durable.
            let _ = std::fs::remove_file(&spare.path);
            return Err(e);
        }
        Ok(spare)
    }

    /// A spare made from a pooled file (recycling steps R1-R3 of the module
    /// doc), or None when the pool is empty or a step failed (the file is
    /// then deleted: it only held processed entries, so a failed write or
    /// fdatasync there loses nothing and does not poison; the caller makes
    /// a fresh spare). A failed directory fsync poisons, as for any spare.
    fn recycled_spare(&self, index: u64) -> Result<Option<Spare>> {
        let Some(pooled) = lock(&self.segments.pool).pop() else { return Ok(None) };
        let path = self.seg_dir.join(crate::format::segment_file_name(index));
        let header = crate::format::encode_segment_header_v2(&crate::format::SegmentHeader {
            version: crate::format::FORMAT_VERSION,
            flags: crate::format::FLAG_RECYCLED | crate::format::FLAG_SPARE,
            // Informative: every id handed out so far (and so every stale one) is below it.
            base_id: self.commit.handled_id.load(Acquire).saturating_add(1).clamp(1, MAX_ID - 1),
            prev_last_id: 0,
            prev_data_end: 0,
        });
        let marked = (|| -> std::io::Result<File> {
            use std::os::unix::fs::FileExt;
            self.fault_err(FaultPoint::SegmentRecycle)?;
            let file = fsutil::open_rw(&pooled, false)?;
            file.write_all_at(&header, 0)?;
            // R1 durable before R2: under a segment name, the file must say SPARE.
            self.fault_err(FaultPoint::SegmentRecycle)?;
            fsutil::fdatasync(&file)?;
            self.fault_err(FaultPoint::SegmentRecycle)?;
            fsutil::rename_noreplace(&pooled, &path)?;
            Ok(file)
        })();
        let file = match marked {
            Ok(file) => file,
            Err(e) => {
                log::warn!("WAL could not reuse a processed segment's file as segment {index} ({e}); deleting it");
                self.stats.recycle_failures.fetch_add(1, Relaxed);
                let _ = std::fs::remove_file(&pooled);
                return Ok(None);
            }
        };
        if let Err(e) = self.sync_seg_dir() {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        log::debug!("WAL made segment {index} from a processed segment's file");
        self.stats.segments_recycled.fetch_add(1, Relaxed);
        let len = file.metadata().map_or(self.cfg.max_segment_size, |m| m.len());
        Ok(Some(Spare { index, path, file, len, recycled: true }))
    }

    /// Step 3: the spare gets its header and becomes the active segment.
    fn start(&self, spare: Spare, base_id: u64, prev_last_id: u64, prev_data_end: u64) -> Result<ActiveSegment> {
        let path = spare.path.clone();
        let index = spare.index;
        match segment::start_segment(spare, index, base_id, prev_last_id, prev_data_end) {
            Ok(seg) => {
                self.stats.segments_created.fetch_add(1, Relaxed);
                Ok(seg)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(WalError::io(format!("writing the header of {}", path.display()), e))
            }
        }
    }

    /// Creates and starts segment `index` now (at open, when there is no active segment).
    pub(super) fn create_segment(&self, index: u64, base_id: u64) -> Result<ActiveSegment> {
        let _creating = lock(&self.segments.spare_creation);
        let spare = self.make_spare(index, false)?;
        // The segment before it (if any) was sealed by an earlier open: its end is not vouched for here.
        self.start(spare, base_id, 0, 0)
    }
}
