//! Group commit: who writes and fsyncs which records, and when they count as
//! acknowledged. See the module doc of `wal` for the protocol.

use super::*;

impl Inner {
    /// Immediate mode: leads or joins group commits until `target` is decided.
    pub(super) fn commit_until(&self, target: u64) {
        let mut st = lock(&self.ack);
        loop {
            if self.acked_threshold_reached(target) || st.poisoned.is_some() {
                return;
            }
            if !st.leader_busy {
                st.leader_busy = true;
                drop(st);
                self.lead_group();
                st = lock(&self.ack);
                st.leader_busy = false;
                self.ack_cv.notify_all();
                self.flusher_cv.notify_one();
                continue;
            }
            st = self.ack_cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Takes the next group from the queue. If the previous group served
    /// several callers, they are likely on their way back with their next
    /// record (threads that just woke up, re-taking the GIL): wait for them a
    /// little, at most about one fsync, so they share the next fsync instead
    /// of each paying for one. A lone writer (previous group of one) never waits.
    pub(super) fn gather_group(&self) -> Vec<Queued> {
        let cap = self.cfg.max_buffer_entries;
        let expected = self.last_group_callers.load(Relaxed) as usize;
        let mut q = lock(&self.queue);
        if expected > 1 && q.callers < expected && q.items.len() < cap {
            let wait = Duration::from_nanos(self.last_fsync_nanos.load(Relaxed).clamp(20_000, 1_000_000));
            let deadline = Instant::now() + wait;
            q.leader_gathering = true;
            while q.callers < expected && q.items.len() < cap {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                q = self.arrivals_cv.wait_timeout(q, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
            }
            q.leader_gathering = false;
        }
        let (group, callers) = q.take(cap);
        self.last_group_callers.store(callers as u64, Relaxed);
        group
    }

    /// One group commit: gather up to `max_buffer_entries`, write, fdatasync, publish.
    pub(super) fn lead_group(&self) {
        let mut io = lock(&self.io);
        let group = self.gather_group();
        let last = group.last().map(|r| r.id);
        // Records written before a failure in this group still need their fsync.
        self.write_group(&mut io, group);
        let file = io.active.as_ref().map(|a| Arc::clone(&a.file));
        let written = io.written_id;
        drop(io);
        if written > self.synced_id.load(Acquire) && !self.is_poisoned() {
            if let Some(file) = file {
                if !self.sync_file(&file) {
                    return; // poisoned: waiters wake and fail
                }
                self.synced_id.fetch_max(written, AcqRel);
            }
        }
        self.publish_active();
        if let Some(last) = last {
            self.done_id.fetch_max(last, AcqRel);
        }
        self.notify_async_waiters();
    }

    /// Batched mode: write everything queued (no fsync); publish; ask for an fsync when due.
    pub(super) fn write_queued(&self) {
        let mut io = lock(&self.io);
        let (group, _) = lock(&self.queue).take(usize::MAX);
        let Some(last) = group.last().map(|r| r.id) else { return };
        self.write_group(&mut io, group);
        let unsynced = io.written_id.saturating_sub(self.synced_id.load(Acquire));
        // Publish while still holding `io`: an appender whose record another
        // thread wrote must find it acknowledged once it gets `io` itself.
        self.publish_locked(&io);
        self.done_id.fetch_max(last, AcqRel);
        drop(io);
        if unsynced >= self.cfg.max_buffer_entries as u64 {
            let mut st = lock(&self.ack);
            st.sync_wanted = true;
            self.flusher_cv.notify_one();
        }
        self.notify_async_waiters();
    }

    /// fdatasync with timing; on failure poisons the WAL (never retried).
    pub(super) fn sync_file(&self, file: &File) -> bool {
        let t = Instant::now();
        let r = self.fault_err(FaultPoint::SegmentSync).and_then(|_| fsutil::fdatasync(file));
        let took = t.elapsed();
        self.stats.record_fsync(took);
        self.last_fsync_nanos.store(took.as_nanos() as u64, Relaxed);
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

    /// Writes `group` (in id order) to the active segment, rotating as needed.
    /// Returns false when something failed (failures recorded, or poisoned).
    pub(super) fn write_group(&self, io: &mut Io, group: Vec<Queued>) -> bool {
        let calls = call_bounds(&group);
        let bytes_of = |a: usize, b: usize| group[a..b].iter().map(|r| r.bytes.len() as u64).sum::<u64>();
        let max = self.cfg.max_segment_size;
        let mut c = 0;
        while c < calls.len() {
            // A call's records never span segments, so a failed rotation fails
            // whole calls: an append_batch is all or nothing. A call bigger than
            // a segment gets a fresh segment to itself (it grows past the preallocation).
            let (first, _) = calls[c];
            let active = io.active.as_ref().expect("active segment");
            if active.has_records() && active.write_offset + bytes_of(calls[c].0, calls[c].1) > max {
                if let Err(e) = self.rotate(io, group[first].id, bytes_of(calls[c].0, calls[c].1)) {
                    return self.fail_records(&group[first..], e);
                }
            }
            // The run: this call and the following ones that still fit, in one pwritev.
            let active = io.active.as_mut().unwrap();
            let mut run_bytes = bytes_of(calls[c].0, calls[c].1);
            let mut next = c + 1;
            while next < calls.len() && active.write_offset + run_bytes + bytes_of(calls[next].0, calls[next].1) <= max {
                run_bytes += bytes_of(calls[next].0, calls[next].1);
                next += 1;
            }
            let last = calls[next - 1].1;
            let bufs: Vec<&[u8]> = group[first..last].iter().map(|r| r.bytes.as_slice()).collect();
            let start = active.write_offset;
            if let Err(e) = self.write_run(&active.file, &bufs, start) {
                let rolled_back = self.roll_back(active, start, run_bytes);
                let err = if is_out_of_space(&e) && rolled_back {
                    WalError::Full(format!("no space left on the WAL disk ({e})"))
                } else {
                    let why = format!("write to segment {} failed: {e}", active.index);
                    self.poison(why.clone());
                    WalError::Poisoned(why)
                };
                return self.fail_records(&group[first..], err);
            }
            active.write_offset += run_bytes;
            let avg = self.group_bytes_avg.load(Relaxed);
            self.group_bytes_avg.store((avg * 7 + run_bytes) / 8, Relaxed);
            active.first_id.get_or_insert(group[first].id);
            active.last_id = Some(group[last - 1].id);
            io.written_id = group[last - 1].id;
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
    pub(super) fn fail_records(&self, recs: &[Queued], err: WalError) -> bool {
        let (first, last) = (recs[0].id, recs[recs.len() - 1].id);
        self.stats.failed_appends.fetch_add(recs.len() as u64, Relaxed);
        log::warn!(first_id = first, last_id = last, error:% = err; "WAL append of ids {first}..={last} failed: {err}");
        let failure = Failure::from_error(err);
        lock(&self.processed).add_gap(first, last);
        let mut st = lock(&self.ack);
        for r in recs {
            st.failures.insert(r.id, failure.clone());
        }
        self.has_failures.store(true, Release);
        false
    }

    /// Makes the active segment's newly written records visible to readers.
    pub(super) fn publish_active(&self) {
        let io = lock(&self.io);
        self.publish_locked(&io);
    }

    pub(super) fn publish_locked(&self, io: &Io) {
        let Some(active) = io.active.as_ref() else { return };
        let (index, offset, first, last) = (active.index, active.write_offset, active.first_id, active.last_id);
        let mut table = self.table.write().unwrap();
        if let Some(s) = table.iter_mut().rev().find(|s| s.index == index) {
            if offset > s.data_end {
                s.data_end = offset;
                s.first_id = first;
                s.last_id = last;
            }
        }
        drop(table);
        if offset * 2 > self.cfg.max_segment_size && self.preallocation_pays() && lock(&self.spare).is_none() {
            self.wake_housekeeper(|h| h.spare_wanted = true);
        }
    }

    /// Everything queued so far is written and fsynced.
    pub(super) fn flush_all(&self) -> Result<()> {
        let target = lock(&self.queue).next_id - 1;
        match self.cfg.sync_mode {
            SyncMode::Immediate => self.commit_until(target),
            SyncMode::Batched => {
                self.write_queued();
                self.sync_written();
            }
        }
        if let Some(p) = lock(&self.ack).poisoned.clone() {
            return Err(WalError::Poisoned(p));
        }
        Ok(())
    }

    /// Batched mode: fdatasync what has been written.
    pub(super) fn sync_written(&self) {
        let (file, written) = {
            let io = lock(&self.io);
            (io.active.as_ref().map(|a| Arc::clone(&a.file)), io.written_id)
        };
        if written <= self.synced_id.load(Acquire) {
            return;
        }
        if let Some(file) = file {
            if self.sync_file(&file) {
                self.synced_id.fetch_max(written, AcqRel);
            }
        }
    }
}
