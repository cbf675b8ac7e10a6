"""Which acceptor entries the writer already holds: the dedupe ledger.

An acceptor entry is named forever by (acceptor_id, table, entry id). The
writer holds it in one of three ways:

- *in flight*: a ``do_put`` reserved it and is appending it to the WAL;
- *pending*: it is in an unprocessed writer WAL entry (rebuilt at replay);
- *done*: its rows are durably in Parquet (loaded from the state file).

A batch's entry is a duplicate when it is pending or done. One that is in
flight in another stream is neither acked nor written: that stream's append
may still fail, so the caller is told to retry (``Busy``).

``done`` is an ``IdSet`` per (acceptor, table): sorted, merged ranges, so a
stream of consecutive ids costs one range. Acceptor ids are one sequence over
all kinds, so a table's ids have gaps where other kinds' entries sit; the
ranges stay as many as the runs of this table's ids (see docs/operations.md).

An acceptor may say, with each batch, ``min_unprocessed``: the smallest of its
entry ids it has not marked processed. It never sends a smaller id again, so
the ledger keeps a *floor* per acceptor, forgets done ids below it and counts
any id below it as done. With that, the done sets only span the acceptor's
unprocessed window instead of growing forever.

"Acceptor" here is a *source*: one acceptor life, ``flight_protocol.source_key``
(the acceptor id for entries from before incarnations, else acceptor id and
incarnation). A restored or copied acceptor directory hands out entry ids
again, but under a new incarnation, so those ids never meet the ones kept here.

A floor is a claim by whoever reaches the Flight port, so it is bounded by what
the writer has seen (``raise_floor``): never above the highest id stored from
that source plus one, nor above the smallest id of the batch that carries it
(an honest acceptor's batch holds only unprocessed ids, all at or above it).
A forged ``min_unprocessed`` alone can therefore not hide ids the writer has
not stored; the highest stored id is rebuilt at start from the done sets,
the pending ids and the floors.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence


class Busy(Exception):
    """An entry of this batch is being written by another stream right now."""


class IdSet:
    """A set of non-negative ints stored as sorted, disjoint, non-adjacent ranges."""

    def __init__(self, ranges: Iterable[Sequence[int]] = ()) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []
        for lo, hi in sorted((int(a), int(b)) for a, b in ranges):
            if self._hi and lo <= self._hi[-1] + 1:
                self._hi[-1] = max(self._hi[-1], hi)
            else:
                self._lo.append(lo)
                self._hi.append(hi)

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self._lo, value) - 1
        return i >= 0 and value <= self._hi[i]

    def add(self, value: int) -> None:
        i = bisect.bisect_right(self._lo, value) - 1  # the range starting at or before value
        if i >= 0 and value <= self._hi[i]:
            return
        joins_left = i >= 0 and self._hi[i] + 1 == value
        joins_right = i + 1 < len(self._lo) and self._lo[i + 1] - 1 == value
        if joins_left and joins_right:
            self._hi[i] = self._hi[i + 1]
            del self._lo[i + 1], self._hi[i + 1]
        elif joins_left:
            self._hi[i] = value
        elif joins_right:
            self._lo[i + 1] = value
        else:
            self._lo.insert(i + 1, value)
            self._hi.insert(i + 1, value)

    def add_range(self, lo: int, hi: int) -> None:
        """Adds every value in ``[lo, hi]``: merges the ranges it touches into one."""
        if hi < lo:
            return
        first = bisect.bisect_left(self._hi, lo - 1)  # the first range ending at or after lo - 1
        last = bisect.bisect_right(self._lo, hi + 1)  # one past the last range starting by hi + 1
        if first < last:
            lo = min(lo, self._lo[first])
            hi = max(hi, self._hi[last - 1])
        self._lo[first:last] = [lo]
        self._hi[first:last] = [hi]

    def drop_below(self, floor: int) -> None:
        """Forgets every value below ``floor``."""
        i = bisect.bisect_left(self._hi, floor)  # the first range that reaches floor
        del self._lo[:i], self._hi[:i]
        if self._lo and self._lo[0] < floor:
            self._lo[0] = floor

    def ranges(self) -> list[list[int]]:
        return [[lo, hi] for lo, hi in zip(self._lo, self._hi, strict=True)]

    def __len__(self) -> int:
        return sum(hi - lo + 1 for lo, hi in zip(self._lo, self._hi, strict=True))


Key = tuple[str, str]  # (source: flight_protocol.source_key(acceptor id, incarnation), table)


class Ledger:
    """Thread-safe: Flight handler threads reserve, the sink thread completes.

    Owned by the ``Sink`` (``signaldb.writer.sink``), which builds it from the state file,
    replays into it, completes and persists it; the Flight side reaches it only through
    ``Sink.raise_floor`` and ``Sink.reserve``. Its lock is the innermost of the writer's
    locks: nothing else is ever taken while it is held."""

    def __init__(self, done: dict[Key, IdSet] | None = None, floors: dict[str, int] | None = None) -> None:
        self._lock = threading.Lock()
        self._done: dict[Key, IdSet] = done or {}
        self._floors: dict[str, int] = floors or {}
        self._pending: dict[Key, set[int]] = {}
        self._in_flight: dict[Key, set[int]] = {}
        # Per source: the highest acceptor entry id stored (pending or done), or floor - 1.
        self._max_stored: dict[str, int] = {source: floor - 1 for source, floor in self._floors.items()}
        for (source, _), ids in self._done.items():
            ranges = ids.ranges()
            if ranges:
                self._max_stored[source] = max(self._max_stored.get(source, -1), ranges[-1][1])

    def _stored(self, source: str, entry_ids: Iterable[int]) -> None:
        top = max(entry_ids, default=-1)
        if top > self._max_stored.get(source, -1):
            self._max_stored[source] = top

    def _holds(self, key: Key, entry_id: int) -> bool:
        if entry_id < self._floors.get(key[0], 0):
            return True
        done = self._done.get(key)
        return (done is not None and entry_id in done) or entry_id in self._pending.get(key, ())

    def raise_floor(self, acceptor_id: str, min_unprocessed: int, batch_ids: Sequence[int] = ()) -> None:
        """The acceptor (a source, see above) will never resend an id below ``min_unprocessed``.

        Bounded by what this writer has seen: at most the highest id stored from it
        plus one, and at most the smallest of ``batch_ids`` (the batch carrying it)."""
        with self._lock:
            min_unprocessed = min(
                min_unprocessed, self._max_stored.get(acceptor_id, -1) + 1, min(batch_ids, default=min_unprocessed)
            )
            if min_unprocessed <= self._floors.get(acceptor_id, 0):
                return
            self._floors[acceptor_id] = min_unprocessed
            for (acceptor, _), done in self._done.items():
                if acceptor == acceptor_id:
                    done.drop_below(min_unprocessed)

    def reserve(self, key: Key, entry_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """Splits ids into (new, duplicates) and marks the new ones in flight.

        Raises ``Busy`` (nothing reserved) when another stream holds one in flight."""
        with self._lock:
            in_flight = self._in_flight.setdefault(key, set())
            if any(i in in_flight for i in entry_ids):
                raise Busy(f"entries of {key} are being written by another stream")
            new = [i for i in entry_ids if not self._holds(key, i)]
            fresh = set(new)
            duplicates = [i for i in entry_ids if i not in fresh]
            in_flight.update(fresh)
            return new, duplicates

    def release(self, key: Key, entry_ids: Iterable[int], stored: bool) -> None:
        """Ends a reservation: ``stored`` means the ids are now in the writer WAL."""
        with self._lock:
            entry_ids = list(entry_ids)
            self._in_flight[key].difference_update(entry_ids)
            if stored:
                self._pending.setdefault(key, set()).update(entry_ids)
                self._stored(key[0], entry_ids)

    def add_pending(self, key: Key, entry_ids: Iterable[int]) -> None:
        """Replay: the ids sit in an unprocessed writer WAL entry."""
        with self._lock:
            entry_ids = list(entry_ids)
            self._pending.setdefault(key, set()).update(entry_ids)
            self._stored(key[0], entry_ids)

    def complete(self, key: Key, entry_ids: Iterable[int]) -> None:
        """The ids' rows are durably in Parquet: pending becomes done."""
        with self._lock:
            pending = self._pending.get(key, set())
            done = self._done.setdefault(key, IdSet())
            for i in entry_ids:
                pending.discard(i)
                done.add(i)

    def snapshot(self) -> tuple[dict[str, dict[str, list[list[int]]]], dict[str, int]]:
        """(done sets as JSON-ready ranges {acceptor_id: {table: [[lo, hi], ...]}}, floors)."""
        with self._lock:
            out: dict[str, dict[str, list[list[int]]]] = {}
            for (acceptor, table), ids in self._done.items():
                ranges = ids.ranges()
                if ranges:
                    out.setdefault(acceptor, {})[table] = ranges
            return out, dict(self._floors)

    @classmethod
    def from_snapshot(cls, done: dict[str, dict[str, list[list[int]]]], floors: dict[str, int]) -> Ledger:
        return cls({(a, t): IdSet(r) for a, tables in done.items() for t, r in tables.items()}, dict(floors))


class Reservation:
    """One batch's hold on its acceptor entry ids while it is appended to the writer WAL.

    Built by ``Sink.reserve`` (raises ``Busy``, nothing reserved); ``new`` are in flight
    until the ``with`` block ends. ``stored(ids)`` says which of them the WAL now holds: at
    the end those become pending, every other new id is released as still new (a failed
    append, or rows dropped), so a resend of it is stored again."""

    def __init__(self, ledger: Ledger, key: Key, entry_ids: Sequence[int]) -> None:
        self.new, self.duplicates = ledger.reserve(key, entry_ids)
        self._ledger = ledger
        self._key = key
        self._in_wal: list[int] = []

    def stored(self, entry_ids: Iterable[int]) -> None:
        self._in_wal = list(entry_ids)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        in_wal = set(self._in_wal)
        self._ledger.release(self._key, self._in_wal, True)
        self._ledger.release(self._key, [i for i in self.new if i not in in_wal], False)
