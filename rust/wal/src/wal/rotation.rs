//! Sealing the active segment and starting the next one, with the
//! failpoints around each durable step.

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

    /// Writes a zero-filled spare segment file (the `SegmentPreallocate` failpoint sits here).
    pub(super) fn preallocate(&self, len: u64) -> Result<Spare> {
        self.fault_err(FaultPoint::SegmentPreallocate)
            .and_then(|_| segment::prepare_spare(&self.seg_dir, len))
            .map_err(|e| self.creation_error(e))
    }

    fn creation_error(&self, e: std::io::Error) -> WalError {
        if is_out_of_space(&e) {
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
        let unsynced = old.last_id.is_some_and(|last| last > self.synced_id.load(Acquire));
        if unsynced && !self.sync_file(&old.file) {
            return Err(WalError::Poisoned("fdatasync failed while sealing a segment".into()));
        }
        let sealed_last = old.last_id;
        let sealed_index = old.index;
        let sealed_end = old.write_offset;
        // A call that fills the segment by itself overwrites every byte: zeros first would be waste.
        let bare = call_bytes + SEGMENT_HEADER_LEN as u64 >= self.cfg.max_segment_size || !self.preallocation_pays();
        let new = self.create_segment(sealed_index + 1, base_id, bare)?;
        if let Some(last) = sealed_last {
            self.synced_id.fetch_max(last, AcqRel);
        }
        let mut table = self.table.write().unwrap();
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
        self.group_bytes_avg.load(Relaxed) < LARGE_GROUP_BYTES
    }

    /// Creates segment `index`: from the spare, a fresh preallocation, or
    /// (`bare`) an empty file that grows with its records.
    pub(super) fn create_segment(&self, index: u64, base_id: u64, bare: bool) -> Result<ActiveSegment> {
        let path = self.seg_dir.join(crate::format::segment_file_name(index));
        let spare = if bare {
            // An empty file under its final name: create → fsync(dir) → header.
            let created = self
                .fault_err(FaultPoint::SegmentPreallocate)
                .and_then(|_| segment::create_bare(&path))
                .map_err(|e| self.creation_error(e))?;
            Spare { path: path.clone(), file: created, len: 0 }
        } else {
            // One preallocation at a time (the housekeeper's or ours): on a
            // nearly full disk, two would compete for the same space.
            let creating = lock(&self.spare_creation);
            let spare = match lock(&self.spare).take() {
                Some(s) => s,
                None => self.preallocate(self.cfg.max_segment_size).inspect_err(|_| {
                    *lock(&self.spare_retry_at) = Instant::now() + SPARE_RETRY_BACKOFF;
                })?,
            };
            drop(creating);
            // rename → fsync(dir) → header: the new name is durable before anything is acknowledged in it.
            let renamed = self.fault_err(FaultPoint::SegmentRename).and_then(|_| std::fs::rename(&spare.path, &path));
            if let Err(e) = renamed {
                let _ = std::fs::remove_file(&spare.path);
                return Err(WalError::io(format!("creating segment {}", path.display()), e));
            }
            spare
        };
        self.sync_seg_dir()?;
        let seg = segment::start_segment(spare, index, base_id)
            .map_err(io_err(format!("writing the header of {}", path.display())))?;
        self.stats.segments_created.fetch_add(1, Relaxed);
        Ok(seg)
    }
}
