"""Small files that must survive a crash or a power cut: write, fsync, rename, fsync dir.

The order is the durability argument (etcd's ``wal`` spells it out the same way):
the data goes to a temp file beside the target (``.<name>.tmp``, never read as
the real thing), is fsynced, then renamed over the target, and the directory is
fsynced so the rename itself survives (this ext4 has no journal: see
FIELD-NOTES). A crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_synced(path: Path, data: bytes, mode: int = 0o600, before_rename: Callable[[], None] | None = None) -> None:
    """Writes ``data`` to a temp file, fsyncs it and renames it to ``path``.

    The directory is *not* fsynced: callers writing several files fsync it once
    (``fsync_dir``), or use ``replace_durably``."""
    temp = path.with_name(f".{path.name}.tmp")
    write_file_synced(temp, data, mode)
    if before_rename is not None:
        before_rename()
    os.replace(temp, path)


def write_file_synced(path: Path, data: bytes, mode: int, exclusive: bool = False) -> None:
    """Writes all of ``data`` to ``path`` (truncating it, or only creating it when
    ``exclusive``) and fsyncs the file. No rename, no directory fsync."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Makes the directory's entries (created, renamed, deleted files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(
    path: Path, data: bytes, mode: int = 0o600, before_rename: Callable[[], None] | None = None
) -> None:
    """``write_synced`` and then ``fsync_dir`` of its directory."""
    write_synced(path, data, mode, before_rename)
    fsync_dir(path.parent)
