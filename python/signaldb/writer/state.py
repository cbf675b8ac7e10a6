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
            "files": {path: {k: v for k, v in vars(rec).items() if k != "dead_letter" or v}
                      for path, rec in self.files.items()},
        }
        return json.dumps(body, separators=(",", ":")).encode()


def load(wal_dir: Path) -> State:
    path = Path(wal_dir) / FILE_NAME
    try:
        body = json.loads(path.read_bytes())
    except FileNotFoundError:
        return State()
    if body.get("v") != VERSION:
        raise ValueError(f"{path}: unsupported state version {body.get('v')!r}")
    files = {p: FileRecord(**rec) for p, rec in body.get("files", {}).items()}
    return State(done=body.get("done", {}), floors=body.get("floors", {}), committed=body.get("committed", []),
                 files=files)


def save(wal_dir: Path, state: State) -> None:
    replace_durably(Path(wal_dir) / FILE_NAME, state.to_json())
