//! The two background threads: the flusher (async appends, batched-mode
//! fsyncs, the flush interval) and the housekeeper (spare segments,
//! checkpoints, deleting processed segments).

use super::*;

impl Inner {
    pub(super) fn flusher_loop(&self) {
        let mut last_sync = Instant::now();
        let mut st = lock(&self.commit.state);
        loop {
            if st.shutdown {
                return;
            }
            let interval_due = last_sync.elapsed() >= self.cfg.flush_interval;
            let async_due = st.async_wanted > self.commit.done_id.load(Acquire) && st.poisoned.is_none();
            let sync_due = st.sync_wanted;
            if !(async_due || sync_due || interval_due) {
                let timeout = self.cfg.flush_interval.saturating_sub(last_sync.elapsed());
                st = self.commit.flusher_cv.wait_timeout(st, timeout).unwrap_or_else(|p| p.into_inner()).0;
                continue;
            }
            st.sync_wanted = false;
            let target = st.async_wanted;
            drop(st);
            match self.cfg.sync_mode {
                SyncMode::Immediate => {
                    // Drive until nothing written waits for a sync: under load
                    // this thread keeps one fdatasync in flight back to back.
                    let mut target = target.max(self.commit.handled_id.load(Acquire));
                    if interval_due {
                        target = target.max(lock(&self.commit.queue).next_id - 1);
                    }
                    loop {
                        self.commit_until(target, true);
                        let handled = self.commit.handled_id.load(Acquire);
                        if handled <= target || self.is_poisoned() || self.closed.load(Acquire) {
                            break;
                        }
                        target = handled;
                    }
                }
                SyncMode::Batched => {
                    self.write_queued();
                    if sync_due || interval_due {
                        self.sync_written();
                    }
                }
            }
            if sync_due || interval_due {
                last_sync = Instant::now();
            }
            st = lock(&self.commit.state);
        }
    }

    pub(super) fn wake_housekeeper(&self, f: impl FnOnce(&mut HouseState)) {
        let mut h = lock(&self.house.state);
        f(&mut h);
        self.house.cv.notify_one();
    }

    pub(super) fn housekeeper_loop(&self) {
        batch_priority();
        loop {
            // A wanted checkpoint waits until CHECKPOINT_INTERVAL after the last one: sleep
            // until then (not spin: processed marks keep `checkpoint_wanted` set meanwhile).
            let until_due = CHECKPOINT_INTERVAL.saturating_sub(lock(&self.marks.checkpoint_lock).elapsed());
            let (spare_wanted, checkpoint_wanted) = {
                let mut h = lock(&self.house.state);
                let checkpoint_now = h.checkpoint_wanted && until_due.is_zero();
                if !h.shutdown && !h.spare_wanted && !checkpoint_now {
                    let timeout =
                        if h.checkpoint_wanted { until_due.min(HOUSEKEEPING_TICK) } else { HOUSEKEEPING_TICK };
                    h = self.house.cv.wait_timeout(h, timeout).unwrap_or_else(|p| p.into_inner()).0;
                }
                if h.shutdown {
                    return;
                }
                (std::mem::take(&mut h.spare_wanted), h.checkpoint_wanted)
            };
            if spare_wanted {
                self.prepare_spare();
            }
            // Reserve the next block of ids ahead of need, off the append path.
            let next_id = lock(&self.commit.queue).next_id;
            if self.marks.id_reserved.load(Acquire).saturating_sub(next_id) < ID_RESERVATION_BLOCK / 2 {
                if let Err(e) = self.checkpoint_reserving(next_id.saturating_add(ID_RESERVATION_BLOCK)) {
                    log::warn!("WAL could not reserve ids ahead (will retry): {e}");
                }
            }
            let due = lock(&self.marks.checkpoint_lock).elapsed() >= CHECKPOINT_INTERVAL;
            if checkpoint_wanted && due {
                lock(&self.house.state).checkpoint_wanted = false;
                if let Err(e) = self.checkpoint() {
                    log::warn!("WAL checkpoint failed (will retry): {e}");
                    lock(&self.house.state).checkpoint_wanted = true;
                }
            }
        }
    }

    /// Makes the spare for the segment after the active one, if none is ready.
    pub(super) fn prepare_spare(&self) {
        // A recycled file is worth a checkpoint: when few are kept but processed
        // segments wait for the once-a-second checkpoint, write it now (at most
        // every RECYCLE_CHECKPOINT_GAP), so their files are kept and reused.
        if lock(&self.segments.pool).len() < self.recycle_pool_cap() / 2
            && lock(&self.marks.checkpoint_lock).elapsed() >= RECYCLE_CHECKPOINT_GAP
            && self.processed_segments_waiting()
        {
            if let Err(e) = self.checkpoint() {
                log::warn!("WAL checkpoint failed (will retry): {e}");
            }
        }
        // Blocks while a rotation takes the spare and moves `active_index`.
        let _creating = lock(&self.segments.spare_creation);
        if lock(&self.segments.spare).is_some()
            || Instant::now() < *lock(&self.segments.spare_retry_at)
            || self.is_poisoned()
            || self.closed.load(Acquire)
        {
            return;
        }
        let index = self.segments.active_index.load(Acquire) + 1;
        match self.make_spare(index, !self.preallocation_pays()) {
            Ok(s) => {
                if self.segments.spare_failing.swap(false, Relaxed) {
                    log::info!("WAL preallocates segments again in {}", self.seg_dir.display());
                }
                *lock(&self.segments.spare) = Some(s);
            }
            Err(e) => {
                // On a full disk, do not write and delete a segment's worth of zeros per append.
                *lock(&self.segments.spare_retry_at) = Instant::now() + SPARE_RETRY_BACKOFF;
                if !self.segments.spare_failing.swap(true, Relaxed) {
                    log::warn!("WAL could not preallocate the next segment (will retry at rotation): {e}");
                }
            }
        }
    }

    /// The disk is full: kept files go (their space is what appends need
    /// back), and none is kept for `RECYCLE_PAUSE_WHEN_FULL`, so processed
    /// segments are deleted again as they were before recycling.
    pub(super) fn out_of_space(&self) {
        *lock(&self.segments.recycle_paused_until) = Instant::now() + RECYCLE_PAUSE_WHEN_FULL;
        let pool = std::mem::take(&mut *lock(&self.segments.pool));
        for path in &pool {
            // A temp name: if the deletion is lost in a crash, recovery removes it.
            let _ = std::fs::remove_file(path);
        }
        if !pool.is_empty() {
            log::info!("WAL disk full: {} processed segment files kept for reuse deleted", pool.len());
        }
    }

    /// Whether a sealed segment's entries are all processed (in memory; not yet checkpointed).
    fn processed_segments_waiting(&self) -> bool {
        let watermark = lock(&self.marks.processed).watermark();
        self.segments.table.read().unwrap().iter().any(|s| s.sealed && s.last_id.is_none_or(|l| l <= watermark))
    }

    /// Writes metadata.json durably, then deletes sealed segments it shows are processed.
    pub(super) fn checkpoint(&self) -> Result<()> {
        self.checkpoint_reserving(0)
    }

    /// A checkpoint that also reserves ids below `reserve` (if above the current reservation).
    pub(super) fn checkpoint_reserving(&self, reserve: u64) -> Result<()> {
        let mut last = lock(&self.marks.checkpoint_lock);
        // Never past the id space: a checkpoint with next_id above MAX_ID is refused on open.
        let next_id = self.marks.id_reserved.load(Acquire).max(reserve).min(MAX_ID);
        let (watermark, processed_ids) = {
            let mut p = lock(&self.marks.processed);
            p.dirty = false;
            (p.watermark(), p.above_sorted())
        };
        let table: Vec<SegmentInfo> = self.segments.table.read().unwrap().clone();
        let meta = Metadata {
            next_id,
            processed_watermark: watermark,
            processed_ids,
            segments: table
                .iter()
                .map(|s| SegmentMeta { index: s.index, first_id: s.first_id, last_id: s.last_id })
                .collect(),
            last_flush: self.stats.last_flush_rfc3339(),
            ..Default::default()
        };
        let stored = self.fault_err(FaultPoint::MetadataWrite).and_then(|_| metadata::store(&self.dir, &meta));
        stored.map_err(|e| {
            lock(&self.marks.processed).dirty = true;
            WalError::io(format!("writing {}", self.dir.join(metadata::METADATA_FILE).display()), e)
        })?;
        self.stats.metadata_writes.fetch_add(1, Relaxed);
        self.marks.id_reserved.fetch_max(next_id, AcqRel);
        *last = Instant::now();
        // The checkpoint saying these are processed is durable: now they may go.
        // Only the oldest ones, in order: a sealed segment left with no record
        // (all damaged) counts as processed, but while an older segment stays,
        // its header may be the one that gives that older recycled segment's
        // data end (`prev_data_end`); deleting it first made the next open read
        // the older segment by other rules (found by fuzzing, B8).
        let doomed: Vec<SegmentInfo> =
            table.into_iter().take_while(|s| s.sealed && s.last_id.is_none_or(|l| l <= watermark)).collect();
        if doomed.is_empty() {
            return Ok(());
        }
        self.segments.table.write().unwrap().retain(|s| !doomed.iter().any(|d| d.index == s.index));
        // Readers that start from now on do not see the doomed segments; one
        // already reading may hold any of them: then none is recycled.
        let recycling = *lock(&self.segments.reads_in_flight) == 0;
        let mut deleted = false;
        for s in &doomed {
            if recycling && self.pool_file(s) {
                self.stats.segments_deleted.fetch_add(1, Relaxed);
                continue;
            }
            deleted = true;
            if let Err(e) = std::fs::remove_file(&s.path) {
                log::warn!(path:% = s.path.display(), error:% = e;
                    "WAL could not delete processed segment {}: {e}", s.path.display());
            } else {
                self.stats.segments_deleted.fetch_add(1, Relaxed);
                log::debug!("WAL deleted processed segment {}", s.name());
            }
        }
        if deleted {
            self.sync_seg_dir()?;
        }
        Ok(())
    }

    /// How many processed segments' files the pool keeps: `RECYCLE_POOL_BYTES`
    /// of segment size (32 at the default 1 MiB; 2 from 16 MiB up, where
    /// segments are sealed seldom), so at most 64 MiB of disk, or four
    /// segments' worth for larger segments (a kept file is up to twice the size).
    pub(super) fn recycle_pool_cap(&self) -> usize {
        let files = RECYCLE_POOL_BYTES / self.cfg.max_segment_size.max(1);
        files.clamp(*RECYCLE_POOL_FILES.start(), *RECYCLE_POOL_FILES.end()) as usize
    }

    /// Keeps a processed segment's file for reuse as a spare, if the pool has
    /// room and the file qualifies: v2 (its records are salted, so they stay
    /// stale in the next use whatever happens to the header), and from half
    /// to twice `max_segment_size` long (allocated and cached: the whole
    /// point; a segment made bare for large groups ends a little short of
    /// the size, one that took a record alone a little past it). It
    /// moves to a temp name (no directory fsync: under either name it is a
    /// processed segment recovery deletes). False: delete it instead.
    fn pool_file(&self, s: &SegmentInfo) -> bool {
        if !s.recyclable
            || lock(&self.segments.pool).len() >= self.recycle_pool_cap()
            || self.closed.load(Acquire)
            || Instant::now() < *lock(&self.segments.recycle_paused_until)
        {
            return false;
        }
        let max = self.cfg.max_segment_size;
        if !std::fs::metadata(&s.path).is_ok_and(|m| (max / 2..=2 * max).contains(&m.len())) {
            return false;
        }
        let n = RECYCLE_COUNTER.fetch_add(1, Relaxed);
        let pooled = self.seg_dir.join(format!("{RECYCLE_PREFIX}{}-{n}.wal", std::process::id()));
        let moved = self.fault_err(FaultPoint::SegmentRecycle).and_then(|_| fsutil::rename_noreplace(&s.path, &pooled));
        if let Err(e) = moved {
            log::warn!("WAL could not keep processed segment {} for reuse ({e}); deleting it", s.name());
            self.stats.recycle_failures.fetch_add(1, Relaxed);
            return false;
        }
        log::debug!("WAL keeps processed segment {} for reuse as a spare", s.name());
        lock(&self.segments.pool).push(pooled);
        true
    }
}

/// Shortest gap between two checkpoints written to refill the pool of recycled files.
const RECYCLE_CHECKPOINT_GAP: Duration = Duration::from_millis(20);

/// Temp names of pooled files (recovery removes every file whose name starts with a dot).
const RECYCLE_PREFIX: &str = ".recycled-";
static RECYCLE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Puts the calling thread in `SCHED_BATCH`: same share of the CPU, but its
/// wake-ups do not preempt the running thread. An appender wakes the
/// housekeeper (a spare is wanted) just before it calls fdatasync; with the
/// default policy the housekeeper often took that CPU first (creating a
/// file costs hundreds of microseconds here), delaying the fdatasync that
/// acknowledges the record: 0.5-0.8 ms per 1 MiB record, measured with
/// strace. Off the ack path, the housekeeper can wait for the appender to
/// block in fdatasync. Best effort: a failure only costs that delay.
fn batch_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        log::debug!("WAL housekeeper stays in the default scheduling policy: {}", std::io::Error::last_os_error());
    }
}
