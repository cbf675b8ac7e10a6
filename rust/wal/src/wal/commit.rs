//! The commit pipeline: who writes and fsyncs which records, and when they
//! count as acknowledged. See the module doc of `wal` for the protocol.
//!
//! Invariants (immediate mode):
//! - `done_id <= synced_id <= handled_id`, except for failed ids, which are
//!   decided (in `failures`) before `handled_id` passes them;
//! - a sync makes durable exactly the ids up to the `sync_target` it read
//!   before calling fdatasync (records written later wait for the next one);
//! - at most one fdatasync of the active segment is in flight (`syncing`);
//!   a rotation's fdatasync of the segment it seals may run beside it.

use super::*;

/// How long a waiter sleeps before looking again by itself. Only a safety
/// net: every sync wakes its waiters, and whoever leaves written records
/// behind hands them to the flusher.
const WAIT_RECHECK: Duration = Duration::from_millis(10);

impl Inner {
    /// Immediate mode: writes and syncs (or waits for whoever does) until
    /// `target` is decided. `flusher`: the flusher thread, which keeps driving
    /// while records wait; an appender whose own records are durable hands
    /// the rest over to it instead of paying for another sync.
    pub(super) fn commit_until(&self, mut target: u64, flusher: bool) {
        loop {
            if self.commit.done_id.load(Acquire) >= target {
                // The flusher also drives records queued behind the last sync
                // and not written yet (see below): they have callers waiting.
                match if flusher { self.queued_tail() } else { None } {
                    Some(tail) if tail > target => target = tail,
                    _ => return,
                }
            }
            // While a sync is in flight, an appender leaves its records queued:
            // whoever starts the next sync (the flusher, under load) writes
            // them all in one piece just before it. Writing each caller's
            // records as it arrives costs one pwritev per record with many
            // threads (a syscall, the inode lock and the ext4 write path each
            // time), and no sync can cover them sooner anyway.
            if flusher || !self.sync_in_flight() {
                self.write_pending();
            }
            let st = lock(&self.commit.state);
            if st.poisoned.is_some() {
                drop(st);
                // A writer may still hold our (borrowed) records: wait until it is done.
                drop(lock(&self.segments.io));
                return;
            }
            let pending = self.commit.handled_id.load(Acquire) > self.commit.synced_id.load(Acquire);
            if self.commit.done_id.load(Acquire) >= target {
                // Left behind: written records no sync covers yet, or queued ones
                // a full group left for the next round.
                let left = pending || !lock(&self.commit.queue).items.is_empty();
                if left && !st.syncing && !flusher {
                    self.hand_to_flusher(st);
                }
                return;
            }
            if pending && !st.syncing {
                self.sync_round(st, flusher);
                continue;
            }
            // A sync is in flight: the one that covers `target` is that one if
            // it reaches it, else the next (records written meanwhile).
            let seq = if st.syncing && target <= st.in_flight_upto { st.sync_seq } else { st.sync_seq + 1 };
            drop(st);
            self.wait_for_sync(seq);
        }
    }

    /// The last id queued and not yet written, if any.
    fn queued_tail(&self) -> Option<u64> {
        lock(&self.commit.queue).items.back().map(Queued::last_id)
    }

    /// A sync of the active segment is in flight: it will look at the queue
    /// when it completes (`sync_round`), so nothing queued now is stranded.
    fn sync_in_flight(&self) -> bool {
        self.commit.sync_started.load(Acquire) > self.commit.synced_id.load(Acquire)
    }

    fn hand_to_flusher(&self, mut st: MutexGuard<'_, CommitState>) {
        st.sync_wanted = true;
        self.commit.flusher_cv.notify_one();
    }

    /// One fdatasync covering everything written so far; then wakes the
    /// callers it acknowledged. Called with `state` held and no sync in flight.
    fn sync_round(&self, mut st: MutexGuard<'_, CommitState>, flusher: bool) {
        let Some((file, upto)) = lock(&self.commit.sync_target).clone() else { return };
        st.syncing = true;
        st.sync_seq += 1;
        st.in_flight_upto = upto;
        self.commit.sync_started.fetch_max(upto, AcqRel);
        let seq = st.sync_seq;
        drop(st);
        // A rotation may have synced these already (sealing the segment).
        let ok = upto <= self.commit.synced_id.load(Acquire) || self.sync_file(&file);
        if ok {
            self.commit.synced_id.fetch_max(upto, AcqRel);
            self.commit.done_id.fetch_max(upto, AcqRel);
        }
        let mut st = lock(&self.commit.state);
        st.syncing = false;
        let more = self.commit.handled_id.load(Acquire) > upto || !lock(&self.commit.queue).items.is_empty();
        if ok && more && !flusher {
            // Records written behind this sync: the flusher starts the next at
            // once, and this caller returns (its own records are durable).
            self.hand_to_flusher(st);
        } else {
            drop(st);
        }
        self.complete_slot(seq);
        self.notify_async_waiters();
    }

    /// Waits until sync `seq` completed (or a safety recheck is due).
    fn wait_for_sync(&self, seq: u64) {
        if !self.is_closed_or_poisoned() {
            self.commit.slots[(seq % 2) as usize].wait(seq, WAIT_RECHECK);
        }
    }

    fn is_closed_or_poisoned(&self) -> bool {
        self.closed.load(Acquire) || self.is_poisoned()
    }

    fn complete_slot(&self, seq: u64) {
        self.commit.slots[(seq % 2) as usize].complete(seq);
    }

    /// Wakes every waiter (poisoning, close): they look at the state again.
    pub(super) fn wake_all_waiters(&self) {
        for slot in &self.commit.slots {
            // Waking without completing: the waiters recheck and find the poison or the close.
            // SAFETY: FUTEX_WAKE on a live u32.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    slot.completed.as_ptr(),
                    libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                    i32::MAX,
                )
            };
        }
    }

    /// Immediate mode: writes whatever is queued, unless another thread holds
    /// `io` (it looks at the queue again after letting go, so nothing queued
    /// before that is left behind).
    pub(super) fn write_pending(&self) {
        loop {
            if self.commit.poisoned.load(Acquire) {
                return;
            }
            let mut io = match self.segments.io.try_lock() {
                Ok(io) => io,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            loop {
                // The next sync covers what is written above the last one started:
                // at most `max_buffer_entries` (whole calls; one bigger call goes alone).
                let behind = self.commit.sync_started.load(Acquire).max(self.commit.synced_id.load(Acquire));
                let unsynced = self.commit.handled_id.load(Acquire).saturating_sub(behind) as usize;
                let cap = self.cfg.max_buffer_entries;
                if unsynced >= cap {
                    break;
                }
                let group = if unsynced == 0 {
                    lock(&self.commit.queue).take(cap)
                } else {
                    lock(&self.commit.queue).take_within(cap - unsynced)
                };
                let Some(last) = group.last().map(Queued::last_id) else { break };
                self.write_group(&mut io, group);
                self.after_write(&io, last);
            }
            drop(io);
            if lock(&self.commit.queue).items.is_empty() {
                return;
            }
        }
    }

    /// After a group is written (or failed): the next sync covers it, readers
    /// may look at it once it is acknowledged.
    fn after_write(&self, io: &Io, last: u64) {
        if let Some(active) = io.active.as_ref() {
            *lock(&self.commit.sync_target) = Some((Arc::clone(&active.file), last));
        }
        self.commit.handled_id.fetch_max(last, AcqRel);
        self.publish_locked(io);
    }

    /// Batched mode: write everything queued (no fsync); publish; ask for an fsync when due.
    pub(super) fn write_queued(&self) {
        let mut io = lock(&self.segments.io);
        let group = lock(&self.commit.queue).take(usize::MAX);
        let Some(last) = group.last().map(Queued::last_id) else { return };
        self.write_group(&mut io, group);
        // Publish while still holding `io`: an appender whose record another
        // thread wrote must find it acknowledged once it gets `io` itself.
        self.after_write(&io, last);
        self.commit.done_id.fetch_max(last, AcqRel);
        drop(io);
        let unsynced = last.saturating_sub(self.commit.synced_id.load(Acquire));
        if unsynced >= self.cfg.max_buffer_entries as u64 {
            let mut st = lock(&self.commit.state);
            st.sync_wanted = true;
            self.commit.flusher_cv.notify_one();
        }
        self.notify_async_waiters();
    }

    /// fdatasync with timing; on failure poisons the WAL (never retried).
    pub(super) fn sync_file(&self, file: &File) -> bool {
        let t = Instant::now();
        let r = self.fault_err(FaultPoint::SegmentSync).and_then(|_| fsutil::fdatasync(file));
        let took = t.elapsed();
        self.stats.record_fsync(took);
        if took > SLOW_FSYNC {
            log::warn!(secs = took.as_secs_f64(), dir:% = self.dir.display();
                "WAL fdatasync took {:.3}s in {}", took.as_secs_f64(), self.dir.display());
        }
        match r {
            Ok(()) => {
                self.stats.record_flush_time();
                true
            }
            Err(e) => {
                self.poison(format!("fdatasync failed: {e}"));
                false
            }
        }
    }

    /// Writes `group` (whole calls, in id order) to the active segment, rotating as needed.
    /// Returns false when something failed (failures recorded, or poisoned).
    pub(super) fn write_group(&self, io: &mut Io, mut group: Vec<Queued>) -> bool {
        let max = self.cfg.max_segment_size;
        let mut c = 0;
        while c < group.len() {
            // A call's records never span segments, so a failed rotation fails
            // whole calls: an append_batch is all or nothing. A call bigger than
            // a segment gets a fresh segment to itself (it grows past the preallocation).
            let active = io.active.as_ref().expect("active segment");
            if active.has_records() && active.write_offset + group[c].bytes > max {
                if let Err(e) = self.rotate(io, group[c].first_id, group[c].bytes) {
                    return self.fail_records(&group[c..], e);
                }
            }
            // The run: this call and the following ones that still fit, in one pwritev.
            let active = io.active.as_mut().unwrap();
            let mut run_bytes = group[c].bytes;
            let mut next = c + 1;
            while next < group.len() && active.write_offset + run_bytes + group[next].bytes <= max {
                run_bytes += group[next].bytes;
                next += 1;
            }
            for call in &mut group[c..next] {
                call.set_salt(active.salt);
            }
            let mut bufs: Vec<&[u8]> = Vec::new();
            for call in &group[c..next] {
                call.push_bufs(&mut bufs);
            }
            let start = active.write_offset;
            // In a recycled segment stale records follow: a zero record header
            // after the run marks the end of the data (overwritten by the next run).
            let terminator = if active.recycled {
                active.prealloc_len.saturating_sub(start + run_bytes).min(RECORD_HEADER_LEN as u64)
            } else {
                0
            };
            if terminator > 0 {
                bufs.push(&TERMINATOR[..terminator as usize]);
            }
            if let Err(e) = self.write_run(&active.file, &bufs, start) {
                let rolled_back = self.roll_back(active, start, run_bytes + terminator);
                if is_out_of_space(&e) {
                    self.out_of_space();
                }
                let err = if is_out_of_space(&e) && rolled_back {
                    WalError::Full(format!("no space left on the WAL disk ({e})"))
                } else {
                    let why = format!("write to segment {} failed: {e}", active.index);
                    self.poison(why.clone());
                    WalError::Poisoned(why)
                };
                return self.fail_records(&group[c..], err);
            }
            active.write_offset += run_bytes;
            let avg = self.segments.group_bytes_avg.load(Relaxed);
            self.segments.group_bytes_avg.store((avg * 7 + run_bytes) / 8, Relaxed);
            active.first_id.get_or_insert(group[c].first_id);
            active.last_id = Some(group[next - 1].last_id());
            c = next;
        }
        true
    }

    /// One run of records into the segment (the `SegmentWrite` failpoint sits here).
    pub(super) fn write_run(&self, file: &File, bufs: &[&[u8]], start: u64) -> std::io::Result<()> {
        match self.fault(FaultPoint::SegmentWrite) {
            None => fsutil::write_all_vectored_at(file, bufs, start, usize::MAX),
            Some(FaultAction::Error(errno)) => Err(std::io::Error::from_raw_os_error(errno)),
            Some(FaultAction::ShortWrites { max_bytes }) => fsutil::write_all_vectored_at(file, bufs, start, max_bytes),
            Some(FaultAction::PartialThenError { bytes, errno }) => {
                fsutil::write_all_vectored_at(file, bufs, start, bytes)?;
                Err(std::io::Error::from_raw_os_error(errno))
            }
        }
    }

    /// Erases a failed write so no half record stays behind; false if that failed too.
    pub(super) fn roll_back(&self, active: &ActiveSegment, start: u64, len: u64) -> bool {
        let zero_end = (start + len).min(active.prealloc_len);
        let zeroed = zero_end <= start || fsutil::write_zeros_at(&active.file, start, zero_end - start).is_ok();
        let cut = start + len <= active.prealloc_len || active.file.set_len(active.prealloc_len.max(start)).is_ok();
        zeroed && cut
    }

    /// Records that these appends failed; their ids become gaps.
    pub(super) fn fail_records(&self, calls: &[Queued], err: WalError) -> bool {
        let (first, last) = (calls[0].first_id, calls[calls.len() - 1].last_id());
        self.stats.failed_appends.fetch_add(last - first + 1, Relaxed);
        log::warn!(first_id = first, last_id = last, error:% = err; "WAL append of ids {first}..={last} failed: {err}");
        let failure = Failure::from_error(err);
        lock(&self.marks.processed).add_gap(first, last);
        let mut st = lock(&self.commit.state);
        for id in first..=last {
            st.failures.insert(id, failure.clone());
        }
        self.commit.has_failures.store(true, Release);
        false
    }

    /// Makes the active segment's newly written records visible in the table
    /// (readers still stop at `done_id`); asks for a spare once a quarter of
    /// the segment is used and none is ready (not earlier: a WAL opened and
    /// closed with a few entries should not write a segment of zeros).
    pub(super) fn publish_locked(&self, io: &Io) {
        let Some(active) = io.active.as_ref() else { return };
        let (index, offset, first, last) = (active.index, active.write_offset, active.first_id, active.last_id);
        let mut table = self.segments.table.write().unwrap();
        if let Some(s) = table.iter_mut().rev().find(|s| s.index == index) {
            if offset > s.data_end {
                s.data_end = offset;
                s.first_id = first;
                s.last_id = last;
            }
        }
        drop(table);
        if offset * 4 > self.cfg.max_segment_size && lock(&self.segments.spare).is_none() {
            self.wake_housekeeper(|h| h.spare_wanted = true);
        }
    }

    /// Everything queued so far is written and fsynced.
    pub(super) fn flush_all(&self) -> Result<()> {
        let target = lock(&self.commit.queue).next_id - 1;
        match self.cfg.sync_mode {
            SyncMode::Immediate => self.commit_until(target, false),
            SyncMode::Batched => {
                self.write_queued();
                self.sync_written();
            }
        }
        if let Some(p) = lock(&self.commit.state).poisoned.clone() {
            return Err(WalError::Poisoned(p));
        }
        Ok(())
    }

    /// Batched mode: fdatasync what has been written.
    pub(super) fn sync_written(&self) {
        let Some((file, upto)) = lock(&self.commit.sync_target).clone() else { return };
        if upto <= self.commit.synced_id.load(Acquire) {
            return;
        }
        if self.sync_file(&file) {
            self.commit.synced_id.fetch_max(upto, AcqRel);
        }
    }
}

/// The zero record header written after each run into a recycled segment.
static TERMINATOR: [u8; RECORD_HEADER_LEN] = [0; RECORD_HEADER_LEN];
