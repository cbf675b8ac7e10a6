//! Reading back: the unprocessed tail and the statistics snapshot.

use super::*;

impl Inner {
    pub(super) fn read_unprocessed(
        &self,
        after_id: u64,
        limit: usize,
        max_bytes: usize,
        use_cursor: bool,
    ) -> Result<Vec<Entry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut out = EntriesBuilder::default();
        let visible = self.commit.done_id.load(Acquire);
        // One look at the marks per call, not one lock per record: an entry
        // marked while we read may still be returned (it was unprocessed when asked).
        let (watermark, marked) = {
            let p = lock(&self.marks.processed);
            let w = p.watermark();
            (w, p.above_from(after_id.max(w).saturating_add(1)))
        };
        let start_id = after_id.max(watermark).saturating_add(1); // ids up to u64::MAX: see recovery
                                                                  // Counted before the table is looked at: no file of this snapshot is recycled until we are done.
        let _reading = ReadGuard::new(&self.segments.reads_in_flight);
        let table: Vec<SegmentInfo> = self
            .segments
            .table
            .read()
            .unwrap()
            .iter()
            .filter(|s| s.last_id.is_some_and(|l| l >= start_id))
            .cloned()
            .collect();
        let cursor = if use_cursor { *lock(&self.readers.cursor) } else { None };
        let mut bytes = 0usize;
        let mut last_pos = None;
        // One read buffer for every segment and call (a fresh 1 MiB per
        // segment was page faults and zeroing); a concurrent reader makes its own.
        let mut buf = self.readers.buf.try_lock().map(|mut b| std::mem::take(&mut *b)).unwrap_or_default();
        for seg in &table {
            let resume = cursor.filter(|c| c.segment == seg.index && c.after_id < start_id);
            let start = resume.map_or(seg.data_start, |c| c.offset);
            let prev = resume.map_or(seg.prev_id, |c| c.after_id);
            let mut reader =
                match SegmentReader::with_buffer(&seg.path, start, seg.data_end, prev, std::mem::take(&mut buf)) {
                    Ok(r) => r,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // deleted: all processed
                    Err(e) => return Err(WalError::io(format!("reading {}", seg.path.display()), e)),
                };
            reader.trust_until(seg.verified_end);
            reader.set_rules(seg.rules);
            let done = loop {
                let step =
                    reader.next_step().map_err(|e| WalError::io(format!("reading {}", seg.path.display()), e))?;
                match step {
                    Step::End => break false,
                    Step::Damaged { offset, .. } if seg.known_damage.contains(&offset) => {}
                    Step::Damaged { offset, next } => {
                        self.stats.corrupt_entries.fetch_add(1, Relaxed);
                        log::error!(
                            segment:% = seg.name(), offset = offset;
                            "WAL corruption in segment {} at offset {offset} found while reading; skipped to {}",
                            seg.name(),
                            next.map_or("the end of the segment".into(), |n| format!("offset {n}"))
                        );
                    }
                    Step::Record { header, payload, .. } => {
                        if header.id > visible {
                            break true;
                        }
                        if header.id < start_id || marked.binary_search(&header.id).is_ok() {
                            continue;
                        }
                        bytes += payload.len();
                        out.push(&header, payload);
                        last_pos = Some(Cursor { after_id: header.id, segment: seg.index, offset: reader.position() });
                        if out.len() >= limit || bytes >= max_bytes {
                            break true;
                        }
                    }
                }
            };
            buf = reader.into_buffer();
            if done {
                break;
            }
        }
        if let Ok(mut kept) = self.readers.buf.try_lock() {
            *kept = buf;
        }
        if use_cursor {
            if let Some(c) = last_pos {
                *lock(&self.readers.cursor) = Some(c);
            }
        }
        Ok(out.finish())
    }

    /// Timestamp of the oldest unprocessed entry (one header read).
    pub(super) fn oldest_unprocessed_timestamp(&self) -> Option<i64> {
        self.read_unprocessed(0, 1, 0, false).ok()?.first().map(|e| e.timestamp_ns)
    }

    /// Record bytes of the segments that still hold an entry above `watermark`
    /// (the backlog the services compare with `max_backlog_bytes`).
    pub(super) fn unprocessed_bytes_above(&self, watermark: u64) -> u64 {
        let table = self.segments.table.read().unwrap();
        table
            .iter()
            .filter(|s| s.last_id.is_some_and(|l| l > watermark))
            .map(|s| s.data_end.saturating_sub(s.data_start))
            .sum()
    }

    /// `unprocessed_bytes` alone: cheap enough to ask per request (two short locks).
    pub(super) fn unprocessed_bytes(&self) -> u64 {
        let watermark = lock(&self.marks.processed).watermark();
        self.unprocessed_bytes_above(watermark)
    }

    pub(super) fn stats_snapshot(&self) -> WalStats {
        let next_id = lock(&self.commit.queue).next_id;
        let (unprocessed, watermark) = {
            let p = lock(&self.marks.processed);
            (p.unprocessed_count(next_id), p.watermark())
        };
        let (segments, disk) = {
            let table = self.segments.table.read().unwrap();
            (table.len() as u64, table.iter().map(|s| s.file_len.max(s.data_end)).sum::<u64>())
        };
        let unprocessed_bytes = self.unprocessed_bytes_above(watermark);
        let spare = lock(&self.segments.spare).as_ref().map_or(0, |s| s.len)
            + lock(&self.segments.pool).len() as u64 * self.cfg.max_segment_size;
        let s = &self.stats;
        WalStats {
            unprocessed_entries: unprocessed,
            unprocessed_bytes,
            total_segments: segments,
            disk_usage_bytes: disk + spare,
            last_flush: s.last_flush_rfc3339(),
            next_id,
            processed_watermark: watermark,
            appended_entries: s.appended_entries.load(Relaxed),
            appended_bytes: s.appended_bytes.load(Relaxed),
            processed_entries: s.processed_entries.load(Relaxed),
            corrupt_entries: s.corrupt_entries.load(Relaxed),
            corrupt_bytes: s.corrupt_bytes.load(Relaxed),
            torn_tails_truncated: s.torn_tails_truncated.load(Relaxed),
            failed_appends: s.failed_appends.load(Relaxed),
            fsync_count: s.fsync_count.load(Relaxed),
            fsync_seconds_total: s.fsync_nanos_total.load(Relaxed) as f64 / 1e9,
            fsync_seconds_max: s.fsync_nanos_max.load(Relaxed) as f64 / 1e9,
            fsync_histogram: s.fsync_histogram(),
            segments_created: s.segments_created.load(Relaxed),
            segments_deleted: s.segments_deleted.load(Relaxed),
            segments_recycled: s.segments_recycled.load(Relaxed),
            recycle_failures: s.recycle_failures.load(Relaxed),
            checkpoints_refused: s.checkpoints_refused.load(Relaxed),
            metadata_writes: s.metadata_writes.load(Relaxed),
            oldest_unprocessed_timestamp_ns: if unprocessed > 0 { self.oldest_unprocessed_timestamp() } else { None },
            poisoned: lock(&self.commit.state).poisoned.clone(),
            sync_mode: self.cfg.sync_mode,
        }
    }
}

/// Counts a `read_unprocessed` call in flight (`Segments::reads_in_flight`) while it lives.
struct ReadGuard<'a>(&'a Mutex<u32>);

impl<'a> ReadGuard<'a> {
    fn new(count: &'a Mutex<u32>) -> ReadGuard<'a> {
        *lock(count) += 1;
        ReadGuard(count)
    }
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        *lock(self.0) -= 1;
    }
}
