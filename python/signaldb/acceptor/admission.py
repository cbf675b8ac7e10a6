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

import threading
import time

from signaldb.wal import Wal

_STATS_TTL_SECS = 0.05  # stats() takes a lock in the core; read it at most 20x/s
DISK_FULL_COOLDOWN_SECS = 1.0
RETRY_AFTER_SECS = 2


class Admission:
    def __init__(self, wal: Wal, max_backlog_bytes: int) -> None:
        self._wal = wal
        self._max_backlog_bytes = max_backlog_bytes
        self._lock = threading.Lock()
        self._stats_at = 0.0
        self._backlog_bytes = 0
        self._disk_full_at: float | None = None

    def refusal(self) -> str | None:
        """Why a request would be refused now, or None to admit it."""
        now = time.monotonic()
        with self._lock:
            if self._disk_full_at is not None and now - self._disk_full_at < DISK_FULL_COOLDOWN_SECS:
                return "disk full"
            if now - self._stats_at > _STATS_TTL_SECS:
                self._backlog_bytes = int(self._wal.stats()["unprocessed_bytes"])  # type: ignore[call-overload]
                self._stats_at = now
            if self._max_backlog_bytes and self._backlog_bytes > self._max_backlog_bytes:
                return f"WAL backlog {self._backlog_bytes} bytes is over the limit of {self._max_backlog_bytes}"
        return None

    def note_disk_full(self) -> None:
        with self._lock:
            self._disk_full_at = time.monotonic()

    def note_append_ok(self) -> None:
        if self._disk_full_at is not None:
            with self._lock:
                self._disk_full_at = None

    @property
    def disk_full(self) -> bool:
        return self._disk_full_at is not None
