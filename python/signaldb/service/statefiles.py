"""Checks of the small files a service reads from its WAL directory at start.

``metadata.json`` (the WAL's checkpoint), ``acceptor-id`` / ``writer-id`` (identities)
and ``writer-state.json`` must be regular files when they exist. Something else in
their place (a directory, typically from a bad volume mount or a mistaken
``mkdir``) is refused before the WAL opens, with one line naming the path and the
fix, instead of a traceback from deep inside the open. Their *content* is checked
where they are read (the WAL, ``identity``, ``writer.state``).
"""

from __future__ import annotations

import stat
from pathlib import Path


class StartupFileError(Exception):
    """A file a service reads at start is unusable; the message names it and the fix."""


_FIXES = {
    "metadata.json": (
        "remove it (rmdir); the WAL then replays every entry still in its segments, its "
        "documented fallback for an unusable metadata.json (one scan of the segments at "
        "start; the next stage deduplicates by entry id)"
    ),
    "acceptor-id": (
        "remove it only if it is empty and this WAL directory is new, else restore the file "
        "from this WAL directory's backup: the id names every entry this acceptor sent"
    ),
    "writer-id": (
        "remove it only if it is empty and this WAL directory is new, else restore the file "
        "from this WAL directory's backup: the id is in every Parquet object this writer named"
    ),
    "writer-state.json": (
        "remove it only if it is empty and this WAL directory never held a state file, "
        "else restore the file from this WAL directory's backup"
    ),
}


def check_regular_files(wal_dir: Path, names: tuple[str, ...]) -> None:
    """Raises ``StartupFileError`` when one of ``names`` in ``wal_dir`` exists and is not a regular file."""
    for name in names:
        path = Path(wal_dir) / name
        try:
            mode = path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:
            raise StartupFileError(
                f"{path} cannot be examined ({err.strerror or err}); fix its permissions or the disk"
            ) from None
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise StartupFileError(f"{path} is {kind}; {_FIXES.get(name, 'remove or restore it')}")
