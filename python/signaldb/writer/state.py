"""The writer's durable state file, ``<wal_dir>/writer-state.json``.

It holds what the WAL alone cannot tell after a crash:

- ``done``: per acceptor and table, the acceptor entry ids whose rows are
  durably in Parquet (ranges), so a resend after the writer WAL entry was
  processed is still recognised as a duplicate;
- ``committed``: the writer WAL ids whose rows are all durably in Parquet
  (ranges; the writer's own ids are one dense sequence, so this stays a few
  ranges). The WAL's processed marks reach disk up to a second late, and not at
  all if its metadata is lost: a replayed entry found here is only marked;
- ``floors``: per acceptor, the id below which it never resends (see ``ledger``);
- ``files``: every Parquet file planned but not yet fully committed, with the
  writer WAL ids and partition it holds. It is saved *before* the file is
  written, so a restart rewrites exactly that file under the same name instead
  of regrouping its rows into a differently named one (which would duplicate
  them). ``written`` tells that the object is already durable; ``dead_letter``
  that the file could not be built and its entries went to dead-letter instead
  (see ``sink``).

Saved atomically: temp file, fsync, rename, fsync dir (ext4 here has no journal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signaldb.service.durable import replace_durably

FILE_NAME = "writer-state.json"
VERSION = 1


@dataclass
class FileRecord:
    table: str
    partition: str  # date=YYYY-MM-DD/hour=HH
    wal_ids: list[int]
    written: bool = False
    # Set (to the reason) once the file was given up on after repeated build failures and its
    # entries' payloads were moved to <wal_dir>/dead-letter/: settled like ``written``, never built.
    dead_letter: str = ""

    @property
    def settled(self) -> bool:
        return self.written or bool(self.dead_letter)


@dataclass
class State:
    done: dict[str, dict[str, list[list[int]]]] = field(default_factory=dict)
    floors: dict[str, int] = field(default_factory=dict)
    committed: list[list[int]] = field(default_factory=list)
    files: dict[str, FileRecord] = field(default_factory=dict)  # object path -> record

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "v": VERSION,
            "done": self.done,
            "floors": self.floors,
            "committed": self.committed,
            # dead_letter only when set: a state file without one still loads in older versions.
            "files": {
                path: {k: v for k, v in vars(rec).items() if k != "dead_letter" or v}
                for path, rec in self.files.items()
            },
        }
        return json.dumps(body, separators=(",", ":")).encode()


class StateFileError(Exception):
    """``writer-state.json`` exists but cannot be used; the message names the file and the fix."""


# What the operator can do, in every refusal (docs/operations.md, Troubleshooting).
_FIX = (
    "restore this file from a backup taken with its WAL directory; or, accepting that rows may be "
    'written twice (at-least-once for the recent window, see docs/operations.md "Troubleshooting: '
    'writer-state.json"), move it aside and start again'
)


def load(wal_dir: Path) -> State:
    """The saved state; an empty one when the file does not exist (a new writer).

    Any other problem (unreadable, a directory, not JSON, truncated, another format
    version, fields of the wrong shape) raises ``StateFileError``: the state cannot be
    rebuilt from the WAL alone without risking duplicate rows (see the module docs and
    docs/operations.md), so the writer refuses to start and says what to do."""
    path = Path(wal_dir) / FILE_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return State()
    except IsADirectoryError:
        raise StateFileError(
            f"writer state file {path} is a directory, not a file; if it is empty and this WAL "
            f"directory never held a state file, remove it; otherwise {_FIX}"
        ) from None
    except OSError as err:
        raise StateFileError(
            f"writer state file {path} cannot be read ({err.strerror or err}); fix its permissions or the disk"
        ) from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        what = "truncated" if raw and raw.lstrip()[:1] == b"{" and not raw.rstrip().endswith(b"}") else "not JSON"
        raise StateFileError(f"writer state file {path} is {what} ({len(raw)} bytes: {err}); {_FIX}") from None
    if not isinstance(body, dict):
        raise StateFileError(f"writer state file {path} is not a JSON object; {_FIX}")
    if body.get("v") != VERSION:
        raise StateFileError(
            f"writer state file {path} has format version {body.get('v')!r}, this writer reads "
            f"version {VERSION} (written by another SignalDB version? run that version, or "
            f"{_FIX})"
        )
    try:
        files = {str(p): _file_record(rec) for p, rec in _mapping(body.get("files", {})).items()}
        done = {
            str(a): {str(t): _ranges(r) for t, r in _mapping(tables).items()}
            for a, tables in _mapping(body.get("done", {})).items()
        }
        floors = {str(a): _int(f) for a, f in _mapping(body.get("floors", {})).items()}
        committed = _ranges(body.get("committed", []))
    except (TypeError, ValueError) as err:
        raise StateFileError(f"writer state file {path} has a malformed field ({err}); {_FIX}") from None
    return State(done=done, floors=floors, committed=committed, files=files)


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, found {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a non-negative integer, found {value!r}")
    return value


def _ranges(value: Any) -> list[list[int]]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list of ranges, found {type(value).__name__}")
    out = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise ValueError(f"expected [lo, hi], found {item!r}")
        lo, hi = _int(item[0]), _int(item[1])
        if lo > hi:
            raise ValueError(f"range {item!r} ends before it starts")
        out.append([lo, hi])
    return out


def _file_record(rec: Any) -> FileRecord:
    rec = _mapping(rec)
    table, partition, wal_ids = rec.get("table"), rec.get("partition"), rec.get("wal_ids")
    if not isinstance(table, str) or not isinstance(partition, str) or not isinstance(wal_ids, list):
        raise ValueError(f"file record {rec!r} needs table, partition and wal_ids")
    unknown = set(rec) - {"table", "partition", "wal_ids", "written", "dead_letter"}
    if unknown:
        raise ValueError(f"file record has unknown fields {sorted(unknown)}")
    return FileRecord(
        table=table,
        partition=partition,
        wal_ids=[_int(i) for i in wal_ids],
        written=bool(rec.get("written", False)),
        dead_letter=str(rec.get("dead_letter", "")),
    )


def save(wal_dir: Path, state: State) -> None:
    replace_durably(Path(wal_dir) / FILE_NAME, state.to_json())
