"""Entries a writer refuses as invalid: kept on disk with the reason, out of the way.

A poison entry must never block the entries behind it, and must never be
silently dropped either. Each one becomes two files in the dead-letter
directory, written durably (temp file, fsync, rename, fsync dir):

    <entry id>.<kind>.otlp   the request body as the acceptor took it (after decompression)
    <entry id>.<kind>.json   {"entry_id", "kind", "content_type", "reason", "time", "acceptor_id",
                              "window": {"min_ns", "max_ns", "now_ns"} or null}

An operator can inspect them, fix the cause and replay them with any OTLP
client: POST the ``.otlp`` file to ``/v1/<kind>`` with its ``content_type``.
(An entry whose WAL payload cannot be decoded keeps the raw payload, with
``content_type`` null.)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from signaldb.acceptor import entry_format
from signaldb.service.durable import fsync_dir, write_synced

log = logging.getLogger(__name__)


class DeadLetters:
    def __init__(self, directory: Path, acceptor_id: str) -> None:
        self.directory = directory
        self._acceptor_id = acceptor_id
        self.count = 0

    def put(self, entry_id: int, kind: str, payload: bytes, reason: str) -> None:
        """``payload``: the WAL entry's payload (``entry_format``)."""
        try:
            content_type, body, window = entry_format.decode(payload)
        except entry_format.EntryFormatError:
            content_type, body, window = None, memoryview(payload), None
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        stem = f"{entry_id:020d}.{kind}"
        info = {
            "entry_id": entry_id,
            "kind": kind,
            "content_type": content_type,
            "reason": reason,
            "acceptor_id": self._acceptor_id,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "window": None
            if window is None
            else {"min_ns": window.min_ns, "max_ns": window.max_ns, "now_ns": window.now_ns},
        }
        # The payload first: a .json without its .otlp would describe nothing.
        write_synced(self.directory / f"{stem}.otlp", bytes(body))
        write_synced(self.directory / f"{stem}.json", json.dumps(info, indent=1).encode())
        fsync_dir(self.directory)
        self.count += 1
        log.error(
            "entry moved to dead-letter directory",
            extra={"entry_id": entry_id, "signal": kind, "reason": reason, "dir": str(self.directory)},
        )
