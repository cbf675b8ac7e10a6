//! Small durable-filesystem helpers: every place that needs a directory fsync
//! or strict permissions goes through here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// fsync a directory so that entries created, renamed or removed in it survive a power cut.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (0700) if missing, and fsyncs its parent so the new entry is durable.
/// Returns whether it was created.
pub fn ensure_dir(dir: &Path) -> io::Result<bool> {
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {
            // The umask may have narrowed the mode; never widen beyond 0700 either.
            fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsync_dir(parent)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `dir` and any missing ancestors, each durably.
pub fn ensure_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_dir_all(parent)?;
    }
    ensure_dir(dir).map(|_| ())
}

/// Renames `from` to `to`, failing with `AlreadyExists` rather than replacing
/// a file (a segment name must never be reused over live data).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    // A filesystem without RENAME_NOREPLACE (some FUSE ones): check, then rename.
    // The WAL's own callers hold the lock that makes the check race-free.
    if fs::symlink_metadata(to).is_ok() {
        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
    }
    fs::rename(from, to)
}

/// Opens (creating 0600) a file for reading and writing.
pub fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(create).mode(FILE_MODE).open(path)
}

/// Replaces `path` with `bytes` atomically and durably:
/// temp file → write → fsync → rename → fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written.and_then(|_| fs::rename(&tmp, path)) {
        // Do not leave a partial temp file taking space on a full disk.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(dir)
}

/// Writes `len` zero bytes at `offset` (used to preallocate and to erase torn tails).
pub fn write_zeros_at(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len as usize).max(1)];
    let mut done = 0u64;
    while done < len {
        let n = zeros.len().min((len - done) as usize);
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// `pwritev` of `bufs` at `offset`, looping over short writes and the iovec limit.
/// `max_per_call` caps the bytes one system call is asked for (usize::MAX
/// normally; fault-injection tests lower it to force short writes).
pub fn write_all_vectored_at(file: &File, bufs: &[&[u8]], mut offset: u64, max_per_call: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const IOV_MAX: usize = 1024;
    let mut idx = 0; // first buffer not fully written
    let mut skip = 0; // bytes of bufs[idx] already written
    while idx < bufs.len() {
        let end = (idx + IOV_MAX).min(bufs.len());
        let mut budget = max_per_call;
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(end - idx);
        for (i, buf) in bufs.iter().enumerate().take(end).skip(idx) {
            let b = if i == idx { &buf[skip..] } else { buf };
            let n = b.len().min(budget);
            iov.push(libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: n });
            budget -= n;
            if budget == 0 {
                break;
            }
        }
        // SAFETY: every iovec points into a live slice borrowed for this call.
        let n = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), iov.len() as i32, offset as i64) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 && iov.iter().any(|v| v.iov_len > 0) {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing"));
        }
        offset += n as u64;
        let mut left = n as usize;
        while idx < bufs.len() {
            let remaining = bufs[idx].len() - skip;
            if left >= remaining {
                left -= remaining;
                idx += 1;
                skip = 0;
            } else {
                skip += left;
                break;
            }
        }
    }
    Ok(())
}

/// fdatasync: the data and the metadata needed to read it back (not mtime).
pub fn fdatasync(file: &File) -> io::Result<()> {
    file.sync_data()
}
