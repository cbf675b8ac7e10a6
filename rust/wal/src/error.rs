//! One error type for the engine; the bindings map it to Python exceptions once.

use std::io;
use std::path::PathBuf;

#[derive(Debug)]
pub enum WalError {
    /// The directory (or a file in it) cannot be created or written.
    NotWritable { path: PathBuf, source: io::Error },
    /// Another process (or another handle in this one) has the WAL open.
    InUse { path: PathBuf },
    /// The disk is full: the record was rolled back; retry once space is free.
    Full(String),
    /// An fsync (or an unrecoverable write) failed earlier: nothing more is acknowledged.
    Poisoned(String),
    /// The WAL was closed.
    Closed,
    /// A caller error: bad id, oversized payload, bad configuration.
    InvalidArgument(String),
    /// A segment written by a newer (or unknown) format.
    UnsupportedFormat { path: PathBuf, version: u32 },
    /// Any other I/O failure, with what was being done.
    Io { context: String, source: io::Error },
}

pub type Result<T> = std::result::Result<T, WalError>;

impl WalError {
    pub fn io(context: impl Into<String>, source: io::Error) -> WalError {
        WalError::Io { context: context.into(), source }
    }
}

/// The errno values that mean "out of space": the only write errors the WAL recovers from.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl std::fmt::Display for WalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalError::NotWritable { path, source } => {
                write!(f, "WAL directory not writable: {} ({source})", path.display())
            }
            WalError::InUse { path } => {
                write!(f, "WAL directory is in use by another process or handle: {}", path.display())
            }
            WalError::Full(msg) => write!(f, "WAL full: {msg}"),
            WalError::Poisoned(msg) => write!(f, "WAL failed and stopped (fail-stop): {msg}"),
            WalError::Closed => f.write_str("WAL is closed"),
            WalError::InvalidArgument(msg) => f.write_str(msg),
            WalError::UnsupportedFormat { path, version } => write!(
                f,
                "WAL segment {} has format version {version}, this build reads version {}",
                path.display(),
                crate::format::FORMAT_VERSION
            ),
            WalError::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::NotWritable { source, .. } | WalError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
