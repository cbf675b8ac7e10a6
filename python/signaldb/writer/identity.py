"""The writer's durable identity, ``<wal_dir>/writer-id``.

Every Parquet object name carries it (``sink.file_path``), so two writers on one
storage URL, or two lives of one writer's WAL directory, never name the same
object, while a replay by the same writer rewrites the same name.

Rules, checked at every start (after the WAL is open, so the WAL's directory
lock makes this single-process):

- the file holds 32 lowercase hex digits (128 random bits) and a newline; any
  other content, or a file that cannot be read, is a startup error naming it
  (never silently replaced: a new id under an old WAL would be harmless for
  names, but a damaged file is worth a look);
- missing in a new, empty WAL directory: this is a new writer, an id is created;
- missing in a WAL directory that already holds data (written by a version
  without writer ids, or the id was removed): an id is created too and a
  warning says so. Plans saved in the state file keep the names they were
  planned with, so rows planned before the id existed are rewritten under
  their old names.

Created durably before first use (temp, fsync, rename, fsync dir): a rename lost
to a power cut would mint a second id for the same directory.
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

from signaldb.service.durable import replace_durably

log = logging.getLogger(__name__)

FILE_NAME = "writer-id"
_VALID = re.compile(r"[0-9a-f]{32}")


class WriterIdError(Exception):
    """The writer-id file exists but is unusable."""


def load_or_create(wal_dir: Path, had_data: bool) -> tuple[str, bool]:
    """Returns ``(writer id, created)``. ``had_data``: the WAL directory held files before
    this start opened it (decides only how a creation is logged)."""
    path = Path(wal_dir) / FILE_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = None
    except OSError as err:
        raise WriterIdError(f"writer id file {path} cannot be read: {err}") from err
    if raw is not None:
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            text = ""
        if not _VALID.fullmatch(text):
            raise WriterIdError(
                f"writer id file {path} is invalid (want 32 lowercase hex digits, found {raw[:64]!r}); "
                "restore it from a backup of this WAL directory, or remove it only if no object in "
                "storage can carry this directory's id"
            )
        return text, False
    new_id = uuid.uuid4().hex
    replace_durably(path, (new_id + "\n").encode(), 0o644)
    if had_data:
        log.warning(
            "writer id created for a WAL directory that already holds data (written by a version "
            "without writer ids); files planned before keep their names",
            extra={"writer_id": new_id, "path": str(path)},
        )
    else:
        log.info("new writer: writer id created with its WAL directory", extra={"writer_id": new_id, "path": str(path)})
    return new_id, True


def dir_has_data(wal_dir: Path) -> bool:
    """True when ``wal_dir`` exists and holds any entry (checked before the WAL opens it)."""
    try:
        return any(Path(wal_dir).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # unreadable: the WAL open reports it; never claim "new"
