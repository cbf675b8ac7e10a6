//! Named failpoints around every write, fsync, rename and preallocation of
//! the engine (in the spirit of etcd's gofail), for fault-injection tests.
//!
//! A `FaultInjector` belongs to one `Wal` (through `Config::faults`), so tests
//! running in parallel do not disturb each other. Without one, a check is a
//! single `Option` test.

use std::collections::HashMap;
use std::sync::Mutex;

/// Where a fault can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// `pwritev` of records into the active segment.
    SegmentWrite,
    /// `fdatasync` of a segment (group commit, or sealing at rotation).
    SegmentSync,
    /// Writing the zero-filled spare for the next segment.
    SegmentPreallocate,
    /// Renaming the spare to its segment number.
    SegmentRename,
    /// `fsync` of the segments directory (after a rename or deletions).
    DirSync,
    /// Writing `metadata.json`.
    MetadataWrite,
    /// Recycling a processed segment's file, at each of its steps: the move
    /// into the pool, the SPARE header write, its fdatasync, the rename to the
    /// next segment number (the directory fsync after it is `DirSync`).
    SegmentRecycle,
}

/// What happens at an armed point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// The call fails with this errno (e.g. `libc::EIO`, `libc::ENOSPC`).
    Error(i32),
    /// Writes only: the first `bytes` bytes reach the file, then the call fails with `errno`.
    PartialThenError { bytes: usize, errno: i32 },
    /// Writes only: each underlying write call takes at most `max_bytes` (short writes).
    ShortWrites { max_bytes: usize },
}

#[derive(Debug)]
struct Rule {
    point: FaultPoint,
    action: FaultAction,
    /// Calls to let through before the fault fires.
    skip: u64,
    /// How many times it fires (None: every time).
    times: Option<u64>,
}

#[derive(Debug, Default)]
pub struct FaultInjector {
    rules: Mutex<Vec<Rule>>,
    hits: Mutex<HashMap<FaultPoint, u64>>,
}

impl FaultInjector {
    pub fn new() -> FaultInjector {
        FaultInjector::default()
    }

    /// Arms `point`: after `skip` calls pass, the next `times` calls (all, if None) get `action`.
    pub fn arm(&self, point: FaultPoint, action: FaultAction, skip: u64, times: Option<u64>) {
        self.rules.lock().unwrap().push(Rule { point, action, skip, times });
    }

    /// Disarms every point.
    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// How many times `point` was reached (armed or not).
    pub fn hits(&self, point: FaultPoint) -> u64 {
        self.hits.lock().unwrap().get(&point).copied().unwrap_or(0)
    }

    /// Called by the engine at `point`: the action to take, if one is armed.
    pub fn check(&self, point: FaultPoint) -> Option<FaultAction> {
        *self.hits.lock().unwrap().entry(point).or_default() += 1;
        let mut rules = self.rules.lock().unwrap();
        let idx = rules.iter().position(|r| r.point == point)?;
        let rule = &mut rules[idx];
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        let action = rule.action;
        if let Some(t) = rule.times.as_mut() {
            *t -= 1;
            if *t == 0 {
                rules.remove(idx);
            }
        }
        Some(action)
    }
}
