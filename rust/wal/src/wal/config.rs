//! WAL settings (the `[wal]` keys of DESIGN.md) and their validation.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Result, WalError};
use crate::faults::FaultInjector;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Acknowledge after fdatasync (group commit).
    Immediate,
    /// Acknowledge after write(); fdatasync by buffer size and interval.
    Batched,
}

impl std::str::FromStr for SyncMode {
    type Err = WalError;
    fn from_str(s: &str) -> Result<SyncMode> {
        match s {
            "immediate" => Ok(SyncMode::Immediate),
            "batched" => Ok(SyncMode::Batched),
            _ => Err(WalError::InvalidArgument(format!("sync_mode must be 'immediate' or 'batched', not {s:?}"))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub max_segment_size: u64,
    pub max_buffer_entries: usize,
    pub flush_interval: Duration,
    pub sync_mode: SyncMode,
    /// Failpoints for fault-injection tests; None in production.
    pub faults: Option<Arc<FaultInjector>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_segment_size: 1 << 20,
            max_buffer_entries: 1000,
            flush_interval: Duration::from_secs(10),
            sync_mode: SyncMode::Immediate,
            faults: None,
        }
    }
}

impl Config {
    pub(super) fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(WalError::InvalidArgument(m.to_string()));
        if self.max_segment_size < 4096 {
            return bad("max_segment_size must be at least 4096 bytes");
        }
        if self.max_segment_size > u32::MAX as u64 {
            return bad("max_segment_size must be below 4 GiB");
        }
        if self.max_buffer_entries == 0 {
            return bad("max_buffer_entries must be at least 1");
        }
        if self.flush_interval.is_zero() {
            return bad("flush_interval must be positive");
        }
        Ok(())
    }
}
