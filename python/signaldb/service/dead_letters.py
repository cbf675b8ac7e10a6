"""Dead letters: entries a service sets aside instead of delivering, with the reason.

A poison entry must never block the entries behind it, and must never be
silently dropped either. Both services keep theirs in this one format (the
acceptor: entries a writer refused, or that cannot be converted; the writer:
entries it cannot read, or whose rows cannot be built into Parquet), each in
its dead-letter directory (``<wal_dir>/dead-letter/`` by default). One dead
letter is two files:

    <entry id>.<kind>.<ext>    the payload, raw bytes; ``ext`` names its format
    <entry id>.<kind>.json     the sidecar: what the payload is and why it is here

``<entry id>`` is the entry's id in the service's own WAL, 20 digits (so names
sort by id), ``<kind>`` its WAL kind (traces, logs, metrics). Payload formats:

    otlp    acceptor: the OTLP request body as taken (after decompression); replay
            it by POSTing it to ``/v1/<kind>`` with the sidecar's ``content_type``
    raw     acceptor: a WAL payload that cannot be decoded (``content_type`` null)
    entry   writer: the whole writer WAL entry (``signaldb.writer.payload``)

The sidecar is a JSON object: ``format`` (1), ``service``, ``entry_id``,
``kind``, ``reason``, ``time`` (UTC, when it was set aside), ``payload`` (the
payload file's name, null when the entry was gone from the WAL already),
``payload_bytes``, ``payload_sha256``, then the service's own fields (see
docs/operations.md, "Dead letters").

Durability, in this order: the payload is created (never overwritten: O_EXCL)
and fsynced; the sidecar is written to a temp file, fsynced and renamed; then
the directory is fsynced (and its parent, when the directory is new). So a
sidecar never names a payload that is not on disk. Files are 0600, the
directory 0700 (telemetry may hold secrets).

Create-only: a payload file is never replaced. Meeting the same name with the
same bytes is this same dead letter again (a crash between the dead letter and
the WAL's processed mark makes the service meet the entry again): its sidecar
is rewritten (it may say more now, e.g. the writer's second failing hour) and
nothing is counted twice. The same name with other bytes (a restored or copied
WAL directory hands out entry ids again) is kept, and the new dead letter is
named ``<entry id>.<kind>.<n>.<ext>``, n = 2, 3, ...

Bounds: a payload is one WAL entry (bounded by the WAL's entry size limit);
the reason is cut to ``MAX_REASON_CHARS``; a sidecar is refused (ValueError,
nothing written) over ``MAX_SIDECAR_BYTES``. ``count`` is the number of dead
letters this process set aside; the caller logs each and counts it in its metric.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from signaldb.service.durable import fsync_dir, write_file_synced, write_synced

FORMAT = 1
SIDECAR = "json"
MAX_REASON_CHARS = 2000
MAX_SIDECAR_BYTES = 1 << 20
# Names tried for one (entry id, kind) before giving up: ids reused this often mean something
# hands out ids in a loop, and the entry stays where it is (the caller's error path).
MAX_NAMES = 1000

Fields = dict[str, Any]


class DeadLetters:
    """One service's dead-letter directory. Thread-safe."""

    def __init__(self, directory: Path, service: str) -> None:
        self.directory = Path(directory)
        self._service = service
        self._lock = threading.Lock()  # one writer at a time: the name choice is check-then-create
        self.count = 0  # dead letters set aside by this process (not the ones met again)

    def put(
        self,
        entry_id: int,
        kind: str,
        payload: bytes | None,
        ext: str,
        reason: str,
        fields: Fields | Callable[[Fields | None], Fields] | None = None,
    ) -> tuple[Path, bool]:
        """Sets an entry aside durably; returns its sidecar's path and whether it is new (not
        one met again). The caller logs and counts it.

        ``payload`` None: the entry is gone already (quarantined as corrupt in the WAL); the
        sidecar alone says what it held. ``fields``: the service's own sidecar fields, or a
        function of the sidecar this same dead letter had before (None when new) returning
        them."""
        if ext == SIDECAR or not ext.isalnum():
            raise ValueError(f"payload extension {ext!r}: letters and digits, not {SIDECAR!r}")
        with self._lock:
            new_dir = not self.directory.is_dir()
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            stem, previous = self._name(entry_id, kind, payload, ext)
            own = fields(previous) if callable(fields) else dict(fields or {})
            sidecar = {
                "format": FORMAT,
                "service": self._service,
                "entry_id": entry_id,
                "kind": kind,
                "reason": reason[:MAX_REASON_CHARS],
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "payload": None if payload is None else f"{stem}.{ext}",
                "payload_bytes": None if payload is None else len(payload),
                "payload_sha256": None if payload is None else hashlib.sha256(payload).hexdigest(),
                **own,
            }
            body = json.dumps(sidecar, indent=1).encode()
            if len(body) > MAX_SIDECAR_BYTES:
                raise ValueError(f"dead-letter sidecar of entry {entry_id} is {len(body)} bytes")
            payload_path = self.directory / f"{stem}.{ext}"
            if payload is not None and not payload_path.exists():
                write_file_synced(payload_path, payload, 0o600, exclusive=True)  # first: see the module doc
            write_synced(self.directory / f"{stem}.{SIDECAR}", body)
            fsync_dir(self.directory)
            if new_dir:
                fsync_dir(self.directory.parent)
            if previous is None:
                self.count += 1
        return self.directory / f"{stem}.{SIDECAR}", previous is None

    def _name(self, entry_id: int, kind: str, payload: bytes | None, ext: str) -> tuple[str, Fields | None]:
        """The stem for this dead letter and, when it is one met again, its old sidecar."""
        base = f"{entry_id:020d}.{kind}"
        for n in range(1, MAX_NAMES + 1):
            stem = base if n == 1 else f"{base}.{n}"
            payload_path = self.directory / f"{stem}.{ext}"
            sidecar_path = self.directory / f"{stem}.{SIDECAR}"
            try:
                existing: bytes | None = payload_path.read_bytes()
            except FileNotFoundError:
                existing = None
            if existing is None and not sidecar_path.exists():
                return stem, None  # free
            if existing is not None and existing != payload:
                continue  # another entry's payload under a reused id: kept, never replaced
            if existing is None and payload is not None:
                continue  # a payload-less dead letter of another entry
            return stem, _read_sidecar(sidecar_path)
        raise FileExistsError(f"{MAX_NAMES} dead letters named {base} in {self.directory}")


def _read_sidecar(path: Path) -> Fields:
    """An existing sidecar (empty when the crash came between payload and sidecar)."""
    try:
        value = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
