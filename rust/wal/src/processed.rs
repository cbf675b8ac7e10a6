//! Which entries the next stage has processed: a watermark plus the
//! processed ids above it, and the ids known not to exist (gaps).
//!
//! Ids are handed out in order, but not every id ends up in the log: a write
//! rolled back for lack of space, or a record lost to corruption, leaves a gap.
//! The watermark moves over gaps as if they were processed, so one missing id
//! never pins a segment forever. Marking is amortized O(1): each id enters the
//! set once and leaves it once, when the watermark passes it.

use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Default)]
pub struct Processed {
    watermark: u64,
    above: HashSet<u64>,
    /// Gap ranges above the watermark: start -> end (inclusive).
    gaps: BTreeMap<u64, u64>,
    gap_ids: u64,
    /// Changed since the last checkpoint.
    pub dirty: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Mark {
    /// Newly processed.
    New,
    /// Already processed, below the watermark or a gap: nothing to do.
    Known,
}

impl Processed {
    pub fn new(watermark: u64, above: impl IntoIterator<Item = u64>) -> Processed {
        let mut p = Processed { watermark, ..Default::default() };
        p.above.extend(above.into_iter().filter(|&id| id > watermark));
        p.advance();
        p
    }

    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Records that ids `start..=end` do not exist in the log.
    pub fn add_gap(&mut self, start: u64, end: u64) {
        // A watermark at the top of the id space (only a damaged or hostile checkpoint puts
        // it there) leaves nothing above it to be a gap.
        let Some(first_open) = self.watermark.checked_add(1) else {
            return;
        };
        let start = start.max(first_open);
        if start > end {
            return;
        }
        // Gaps come from distinct places (failed writes, damage, tails) and do not overlap,
        // but be safe: skip a range already covered.
        if let Some((&s, &e)) = self.gaps.range(..=start).next_back() {
            if s <= start && end <= e {
                return;
            }
        }
        // A processed mark for an id that turns out not to exist is dropped, so
        // that `unprocessed_count` does not subtract it twice.
        if self.above.iter().any(|&id| (start..=end).contains(&id)) {
            self.above.retain(|&id| !(start..=end).contains(&id));
        }
        self.gap_ids += end - start + 1;
        self.gaps.insert(start, end);
        self.advance();
    }

    /// Marks `id` processed. The caller has checked that it was handed out.
    pub fn mark(&mut self, id: u64) -> Mark {
        if id <= self.watermark || self.in_gap(id) || !self.above.insert(id) {
            return Mark::Known;
        }
        self.dirty = true;
        self.advance();
        Mark::New
    }

    pub fn is_processed(&self, id: u64) -> bool {
        id <= self.watermark || self.above.contains(&id)
    }

    fn in_gap(&self, id: u64) -> bool {
        self.gaps.range(..=id).next_back().is_some_and(|(_, &end)| id <= end)
    }

    fn advance(&mut self) {
        let before = self.watermark;
        // `checked_add`: a checkpoint carrying marks up to u64::MAX (found by the `open_mutated`
        // fuzz target) is now refused on open (`metadata::ids_in_range`), but this arithmetic
        // stays safe on its own: the top id has nothing above it to advance to.
        while let Some(next) = self.watermark.checked_add(1) {
            if self.above.remove(&next) {
                self.watermark = next;
            } else if let Some(end) = self.gaps.remove(&next) {
                self.gap_ids -= end - next + 1;
                self.watermark = end;
            } else {
                break;
            }
        }
        if self.watermark != before {
            self.dirty = true;
        }
    }

    /// Entries handed out (ids below `next_id`) that are neither processed nor gaps.
    pub fn unprocessed_count(&self, next_id: u64) -> u64 {
        let handed_out = next_id.saturating_sub(1);
        handed_out.saturating_sub(self.watermark).saturating_sub(self.above.len() as u64 + self.gap_ids)
    }

    /// Processed ids at or above `from`, ascending (a reader's view of the marks).
    pub fn above_from(&self, from: u64) -> Vec<u64> {
        if self.above.is_empty() {
            return Vec::new();
        }
        let mut v: Vec<u64> = self.above.iter().copied().filter(|&id| id >= from).collect();
        v.sort_unstable();
        v
    }

    /// Processed ids above the watermark, ascending (for the checkpoint).
    pub fn above_sorted(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.above.iter().copied().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_follows_contiguous_marks() {
        let mut p = Processed::new(0, []);
        assert_eq!(p.mark(2), Mark::New);
        assert_eq!(p.watermark(), 0);
        assert_eq!(p.mark(1), Mark::New);
        assert_eq!(p.watermark(), 2);
        assert_eq!(p.mark(2), Mark::Known);
        assert_eq!(p.unprocessed_count(6), 3);
    }

    #[test]
    fn gaps_do_not_pin_the_watermark() {
        let mut p = Processed::new(0, []);
        p.add_gap(2, 4);
        p.mark(1);
        assert_eq!(p.watermark(), 4);
        assert_eq!(p.mark(3), Mark::Known);
        p.add_gap(6, 6);
        p.mark(7);
        assert_eq!(p.watermark(), 4);
        assert_eq!(p.unprocessed_count(8), 1); // id 5
        p.mark(5);
        assert_eq!(p.watermark(), 7);
        assert_eq!(p.unprocessed_count(8), 0);
    }

    #[test]
    fn a_watermark_at_the_top_of_the_id_space_neither_overflows_nor_moves() {
        let mut p = Processed::new(u64::MAX - 1, [u64::MAX]);
        assert_eq!(p.watermark(), u64::MAX);
        p.add_gap(5, u64::MAX);
        // Nothing lies above the top id: no gap is recorded (a wrapped `watermark + 1` would
        // have recorded 5..=MAX below the watermark; release builds do not check overflow).
        assert!(p.gaps.is_empty() && p.gap_ids == 0);
        assert_eq!(p.mark(u64::MAX), Mark::Known);
        assert_eq!(p.unprocessed_count(u64::MAX), 0);
        let mut q = Processed::new(u64::MAX - 3, []);
        q.add_gap(u64::MAX - 1, u64::MAX);
        assert_eq!(q.mark(u64::MAX - 2), Mark::New);
        assert_eq!(q.watermark(), u64::MAX);
    }

    #[test]
    fn restored_from_checkpoint() {
        let p = Processed::new(10, [11, 12, 15]);
        assert_eq!(p.watermark(), 12);
        assert_eq!(p.above_sorted(), vec![15]);
        assert!(p.is_processed(15) && !p.is_processed(13));
    }
}
