"""The write-ahead log, as Python sees it.

A thin face over the Rust engine in ``signaldb._native``: the engine frames,
writes, group-commits and replays; this module validates arguments, maps kinds,
and connects acknowledgements to asyncio without a thread per call.

How ``append_async`` works: the coroutine queues its record in the engine
(non-blocking) and parks on a future. The engine's flusher thread, after each
group commit, writes one byte to a pipe the event loop watches. The loop's
reader callback then resolves, in id order, every parked future whose id is now
acknowledged. One wake-up per group commit, not per entry.
"""

from __future__ import annotations

import asyncio
import collections
import operator
import os
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Literal

from signaldb import _native
from signaldb._native import (
    Entry,
    WalClosedError,
    WalError,
    WalFileExistsError,
    WalFileNotFoundError,
    WalFullError,
    WalInUseError,
    WalIoError,
    WalIsADirectoryError,
    WalNotADirectoryError,
    WalPermissionError,
    WalPoisonedError,
    WalStats,
)

__all__ = [
    "KINDS",
    "Entry",
    "SyncMode",
    "Wal",
    "WalClosedError",
    "WalError",
    "WalFileExistsError",
    "WalFileNotFoundError",
    "WalFullError",
    "WalInUseError",
    "WalIoError",
    "WalIsADirectoryError",
    "WalNotADirectoryError",
    "WalPermissionError",
    "WalPoisonedError",
    "WalStats",
]

SyncMode = Literal["immediate", "batched"]
KINDS: dict[str, int] = {
    "traces": _native.KIND_TRACES,
    "logs": _native.KIND_LOGS,
    "metrics": _native.KIND_METRICS,
}

# How much one read from the engine returns while iterating; bounds memory.
_READ_CHUNK_ENTRIES = 1024
_READ_CHUNK_BYTES = 8 << 20
_UNBOUNDED_BYTES = 1 << 62
# append_async frames payloads at least this large off the event loop.
_ENQUEUE_IN_EXECUTOR_BYTES = 256 << 10


def _kind_code(kind: str) -> int:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown WAL kind {kind!r}; expected one of {sorted(KINDS)}") from None


def _as_bytes(payload: bytes | bytearray | memoryview) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"WAL payload must be bytes, not {type(payload).__name__}")


class _LoopWaiters:
    """Futures of one event loop waiting for acknowledgement, in id order."""

    def __init__(self, wal: Wal, loop: asyncio.AbstractEventLoop) -> None:
        self._native = wal._native
        self._loop = loop
        self._waiting: collections.deque[tuple[int, asyncio.Future[int]]] = collections.deque()
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        loop.add_reader(self._rfd, self._on_wakeup)
        self._native.register_notify_fd(self._wfd)

    def park(self, eid: int) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = self._loop.create_future()
        if self._waiting and eid < self._waiting[-1][0]:
            # Rare: a large payload framed in the executor got its id after later small ones.
            items = sorted([*self._waiting, (eid, fut)], key=lambda item: item[0])
            self._waiting = collections.deque(items)
        else:
            self._waiting.append((eid, fut))
        # The record may have been acknowledged before we parked: settle now.
        self._resolve()
        return fut

    def _on_wakeup(self) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
        self._resolve()

    def _resolve(self) -> None:
        # The engine hands over failures as exceptions already typed by their kind
        # (WalFullError, WalPoisonedError, WalIoError, ...): nothing is read from the text.
        poisoned = self._native.poisoned()
        done = self._native.done_id()
        check_failures = self._native.has_failures()
        while self._waiting:
            eid, fut = self._waiting[0]
            failure = self._native.take_failure(eid) if check_failures else None
            if failure is None and eid > done:
                if poisoned is None:
                    break
                failure = type(poisoned)(*poisoned.args)  # one instance per waiter: tracebacks differ
            self._waiting.popleft()
            if fut.done():  # cancelled by its caller; the entry is still in the WAL
                continue
            if failure is None:
                fut.set_result(eid)
            else:
                fut.set_exception(failure)

    def close_soon(self) -> None:
        """Closes from any thread: in the loop's own thread, or scheduled into it."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop or self._loop.is_closed():
            self.close()
        else:
            try:
                self._loop.call_soon_threadsafe(self.close)
            except RuntimeError:  # the loop closed meanwhile
                self.close()

    def close(self, error: Exception | None = None) -> None:
        if self._rfd < 0:
            return
        if not self._loop.is_closed():
            self._resolve()  # what close() flushed is acknowledged: settle it first
        self._native.unregister_notify_fd(self._wfd)
        if not self._loop.is_closed():
            self._loop.remove_reader(self._rfd)
        os.close(self._rfd)
        os.close(self._wfd)
        self._rfd = self._wfd = -1
        for _, fut in self._waiting:
            if not fut.done() and not self._loop.is_closed():
                fut.set_exception(error or WalClosedError("WAL closed"))
        self._waiting.clear()


class Wal:
    """A durable, append-only log of OTLP requests (or any bytes), by kind.

    ``sync_mode="immediate"``: an append returns once its record is fsynced;
    concurrent appends share one write + fdatasync (group commit).
    ``sync_mode="batched"``: an append returns once its record is written to the
    OS; fsync happens every ``max_buffer_entries`` entries or
    ``flush_interval_secs`` seconds, and on ``flush()``/``close()``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_segment_size: int = 1 << 20,
        max_buffer_entries: int = 1000,
        flush_interval_secs: float = 10.0,
        sync_mode: SyncMode = "immediate",
    ) -> None:
        if sync_mode not in ("immediate", "batched"):
            raise ValueError(f"sync_mode must be 'immediate' or 'batched', not {sync_mode!r}")
        if max_segment_size < 4096:
            raise ValueError("max_segment_size must be at least 4096 bytes")
        if max_buffer_entries < 1:
            raise ValueError("max_buffer_entries must be at least 1")
        if not flush_interval_secs > 0:
            raise ValueError("flush_interval_secs must be positive")
        self.path = os.fspath(path)
        self.sync_mode = sync_mode
        self._native = _native.NativeWal(
            self.path,
            int(max_segment_size),
            int(max_buffer_entries),
            float(flush_interval_secs),
            sync_mode,
        )
        self._loops: dict[asyncio.AbstractEventLoop, _LoopWaiters] = {}
        self._loops_lock = threading.Lock()

    # -- appending -------------------------------------------------------

    def append(self, payload: bytes, kind: str = "traces") -> int:
        """Appends one record; returns its id once acknowledged (see class doc)."""
        # The native call checks the payload's type (bytes, bytearray, memoryview).
        return self._native.append(payload, _kind_code(kind))

    def append_batch(self, payloads: Iterable[bytes], kind: str = "traces") -> list[int]:
        """Appends records as one group commit; returns their ids, in order."""
        code = _kind_code(kind)
        # A list goes to the native call as it is: it checks and borrows each payload.
        items = payloads if type(payloads) is list else list(payloads)
        if not items:
            return []
        first = self._native.append_batch(items, code)
        return list(range(first, first + len(items)))

    async def append_async(self, payload: bytes, kind: str = "traces") -> int:
        """Like ``append`` but awaits acknowledgement without blocking the loop."""
        code = _kind_code(kind)
        data = _as_bytes(payload)
        if self.closed:
            raise WalClosedError("WAL is closed")
        loop = asyncio.get_running_loop()
        waiters = self._waiters_for(loop)
        if len(data) >= _ENQUEUE_IN_EXECUTOR_BYTES:
            # Framing copies and checksums the payload: for a large one that is
            # milliseconds, so it runs on the default executor, not the loop.
            eid = await loop.run_in_executor(None, self._native.enqueue, data, code)
        else:
            eid = self._native.enqueue(data, code)
        return await waiters.park(eid)

    def _waiters_for(self, loop: asyncio.AbstractEventLoop) -> _LoopWaiters:
        waiters = self._loops.get(loop)
        if waiters is None:
            with self._loops_lock:
                # Loops that were closed since (asyncio.run per call) give their pipes back.
                for old in [lp for lp in self._loops if lp.is_closed()]:
                    self._loops.pop(old).close()
                waiters = self._loops.get(loop)
                if waiters is None:
                    waiters = self._loops[loop] = _LoopWaiters(self, loop)
        return waiters

    def flush(self) -> None:
        """Makes everything appended so far durable."""
        self._native.flush()

    # -- consuming -------------------------------------------------------

    def checkpoint(self) -> None:
        """Makes the processed marks so far durable now (``metadata.json``), without
        waiting for appends; otherwise they reach disk within a second."""
        self._native.checkpoint()

    def mark_processed(self, ids: int | Iterable[int]) -> None:
        """Records that entries were handled by the next stage (idempotent)."""
        if isinstance(ids, int):
            self._native.mark_processed([ids])
        elif isinstance(ids, (str, bytes, bytearray)):
            raise TypeError(f"mark_processed takes an int or an iterable of ints, not {type(ids).__name__}")
        else:
            self._native.mark_processed([operator.index(i) for i in ids])

    def unprocessed(
        self, after_id: int | None = None, limit: int | None = None, max_bytes: int | None = None
    ) -> list[Entry] | Iterator[Entry]:
        """Unprocessed entries, oldest first.

        With ``limit`` the result is a list of at most that many entries after
        ``after_id``: the forwarder's tail, costing what it returns.
        ``max_bytes`` also bounds the payload bytes returned (the first entry is
        returned whatever its size). Without ``limit``, a lazy iterator over
        everything unprocessed, read in bounded chunks.
        """
        start = 0 if after_id is None else int(after_id)
        if limit is not None:
            if limit < 0:
                raise ValueError("limit must be >= 0")
            byte_cap = _UNBOUNDED_BYTES if max_bytes is None else max(1, int(max_bytes))
            return self._native.read_unprocessed(start, int(limit), byte_cap)
        return self._iter_unprocessed(start)

    def _iter_unprocessed(self, after_id: int) -> Iterator[Entry]:
        while True:
            chunk = self._native.read_unprocessed(after_id, _READ_CHUNK_ENTRIES, _READ_CHUNK_BYTES)
            if not chunk:
                return
            yield from chunk
            after_id = chunk[-1].id

    # -- state -------------------------------------------------------------

    def stats(self) -> WalStats:
        """Counters and gauges as typed attributes (``stats().unprocessed_entries``);
        see docs/wal-format.md "Statistics". Also reads like a dict (``stats()["next_id"]``,
        ``.get``, ``.items()``; ``.to_dict()`` for JSON). Reads the oldest unprocessed
        record from disk: for one figure per request or round, use the calls below."""
        return self._native.stats()

    def unprocessed_bytes(self) -> int:
        """``stats().unprocessed_bytes`` alone, cheap enough to check per request."""
        return self._native.unprocessed_bytes()

    def processed_watermark(self) -> int:
        """``stats().processed_watermark`` alone: every id at or below it is processed."""
        return self._native.processed_watermark()

    @property
    def closed(self) -> bool:
        return self._native.closed

    def close(self) -> None:
        """Flushes, syncs and releases the WAL. Idempotent."""
        try:
            self._native.close()
        finally:
            with self._loops_lock:
                loops, self._loops = self._loops, {}
            for waiters in loops.values():
                waiters.close_soon()

    def __enter__(self) -> Wal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Wal({self.path!r}, sync_mode={self.sync_mode!r}, {state})"
