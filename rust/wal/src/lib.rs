//! SignalDB's write-ahead log engine.
//!
//! A WAL directory holds numbered segment files of CRC32C-framed records and
//! a `metadata.json` checkpoint of what has been processed:
//!
//! ```text
//! <wal_dir>/LOCK               held (flock) by the process that has the WAL open
//! <wal_dir>/metadata.json      checkpoint, replaced atomically
//! <wal_dir>/segments/000001.wal
//! <wal_dir>/quarantine/        copies of corrupt byte ranges
//! ```
//!
//! Module map, in reading order:
//! - [`format`]: the bytes of segments and records (the format, in one file);
//! - [`scan`]: the strict reader and its decision table for damage;
//! - [`recovery`]: opening a directory: checkpoint, scan, repair;
//! - [`wal`]: appends, group commit, acknowledgement, checkpoints, deletion;
//! - [`reader`]: reading records back; [`inspect`]: read-only tools;
//! - [`metadata`], [`processed`], [`segment`], [`stats`], [`fsutil`]: parts.
//!
//! Durability rules this crate keeps: acknowledge only after fdatasync (in
//! immediate mode); fsync a directory after creating, renaming or deleting in
//! it; never retry a failed fsync (the WAL is poisoned instead); never trust a
//! file's size over its checksums. `docs/wal-format.md` documents the bytes.

mod crc;
pub mod error;
pub mod faults;
pub mod format;
pub mod fsutil;
pub mod inspect;
pub mod metadata;
pub mod processed;
pub mod reader;
pub mod recovery;
pub mod scan;
pub mod segment;
pub mod stats;
pub mod wal;

pub use error::{Result, WalError};
pub use faults::{FaultAction, FaultInjector, FaultPoint};
pub use format::Kind;
pub use reader::Entry;
pub use wal::{Config, SyncMode, Wal, WalStats};
