"""Backpressure: whether the acceptor takes a new request right now.

Two reasons to refuse, both retryable for the client (UNAVAILABLE + RetryInfo
/ 503 + Retry-After): the WAL backlog (bytes not yet forwarded) is over
``wal.max_backlog_bytes``, or the disk was found full. Both clear by
themselves: the backlog shrinks as the forwarder catches up and processed
segments are deleted; after a disk-full refusal, requests are refused for a
short cool-down and then one is let through to probe whether space came back.
Nothing acknowledged is ever dropped to make room.
"""

from __future__ import annotations

import time

from signaldb.wal import Wal

DISK_FULL_COOLDOWN_SECS = 1.0
RETRY_AFTER_SECS = 2


class Admission:
    """Used from the event loop only (receivers and /readyz), so it needs no lock."""

    def __init__(self, wal: Wal, max_backlog_bytes: int) -> None:
        self._wal = wal
        self._max_backlog_bytes = max_backlog_bytes
        self._disk_full_at: float | None = None

    @property
    def disk_full(self) -> bool:
        """True during the cool-down after an append found the disk full."""
        return self._disk_full_at is not None and time.monotonic() - self._disk_full_at < DISK_FULL_COOLDOWN_SECS

    @property
    def max_backlog_bytes(self) -> int:
        return self._max_backlog_bytes

    def refusal(self) -> str | None:
        """Why a request would be refused now, or None to admit it."""
        if self.disk_full:
            return "disk full"
        backlog = self._wal.unprocessed_bytes()
        if self._max_backlog_bytes and backlog > self._max_backlog_bytes:
            return f"WAL backlog {backlog} bytes is over the limit of {self._max_backlog_bytes}"
        return None

    def note_disk_full(self) -> None:
        self._disk_full_at = time.monotonic()

    def note_append_ok(self) -> None:
        self._disk_full_at = None
