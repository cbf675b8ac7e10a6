"""From writer WAL entries to Parquet files, and back to ``mark_processed``.

Rows wait in one buffer per (table, hour partition). A buffer becomes a file
when it holds ``file_max_bytes`` of Arrow data or its oldest rows are
``file_max_age_secs`` old. One flusher thread writes files, in cycles:

1. *plan*: take the due buffers; each becomes a file named after the writer's
   id (``identity``), this start's life and the writer WAL ids it holds
   (id-first-last-hash, see ``file_path``); save
   the plans in the state file;
2. *write*: build each file and put it (retrying until the store takes it);
3. *commit*: an entry whose every partition is now in a written file is
   complete: its acceptor ids move to the ledger's done set, its writer WAL
   id joins ``committed``, the state file is saved, and only then is the entry
   marked processed in the WAL.

Crash anywhere and the restart (``replay``) finds each unprocessed entry's
partitions in one of three places: a written file (nothing to do), a planned
file (written again whole, same name, same rows: if the first put got through,
the store finds the object there with the same content and leaves it), or
nowhere (buffered again). An entry in the state's ``committed`` set was
committed but its mark did not reach disk: it is marked. A failed plan is retried as it is, never regrouped,
for the same reason (the one exception, a plan that was never built, is under "Build failures").

Objects are only ever created (``storage``): a put that meets an object of
the same name with other content (another writer's, which identity makes
impossible unless ids or names were tampered with) raises ``ObjectConflict``.
The plan is then neither written nor released: it is logged (``object exists
with other content``), counted, and retried with a pause growing to
``CONFLICT_RETRY_MAX_SECS``; its entries stay unprocessed in the WAL, and every
other plan is written meanwhile. A shutdown leaves it for the next start.

Memory bound (``max_buffered_bytes``): every byte of Arrow data held for a file
not yet written counts, from the moment it is buffered until its file is
written (or dead-lettered): open buffers, plans being written and plans waiting
for a retry. Above half the bound the flusher also takes the *oldest* buffers,
however small or young, until the rest is under half again (``early_files``);
these are ordinary plans, named and saved like any other. At the bound the
Flight side refuses new batches (``wait_for_room``, UNAVAILABLE: the acceptor
resends), and the replay waits before buffering more. So the store being down
(the flusher stuck in a PUT) stops intake at the bound instead of growing.

Build failures: a store failure is retried for ever inside the PUT (the store
comes back), but ``parquet.build`` raising is taken as deterministic (the data
itself is refused). A plan whose build fails ``BUILD_ATTEMPTS`` times is split
into one plan per entry, each tried once more, so that one bad entry does not
take the others in its file down with it (only a plan made in this life: it was
never built, so no object of its name exists; the old plan and the new ones
swap in one state save; a plan re-read at replay may have been PUT before the
crash and is never split). A single-entry plan (or a replayed one) that still
fails is given up: each of its entries' whole WAL payload is set aside in
``<wal_dir>/dead-letter/`` (``signaldb.service.dead_letters``: ``.entry`` payload,
``.json`` sidecar with the reason, the partitions dead-lettered and the
entry's other partitions), then the
plan is saved as ``dead_letter`` in the state file (from then on it counts as
settled, like a written file, also after a restart), and the entries complete
as usual. Other plans are written meanwhile: a failing plan waits
``BUILD_RETRY_PAUSE_SECS`` between attempts without holding anything up.
What ends where, for an entry with rows in several hours: the rows of the
dead-lettered partition(s) are in dead-letter only; its rows in other
partitions go to Parquet as usual (their files may hold other entries), so
those rows are *also* in the dead-letter payload, which holds the whole entry.
The sidecar lists both sets (``partitions_dead_lettered``,
``partitions_in_parquet``): re-ingest only the rows of the former. The entry's
acceptor ids count as done: a resend is acked as a duplicate. A MemoryError
while building is not counted (it is not the data's fault): the plan is retried.

With a catalog (``committer``), a written file counts only once its commit
landed (``_commit_files``): see docs/operations.md, "Iceberg tables".

The dedupe ledger (``ledger.Ledger``: which acceptor entries this writer holds)
is the sink's alone: built here from the state file, filled by the replay
(pending ids), completed in step 3 and persisted with every state save. The
Flight side asks it through two narrow calls, ``raise_floor`` and ``reserve``
(a ``ledger.Reservation``: in flight while the batch is appended, then pending),
and the service never touches it.

Locks, in the only order they are ever nested: ``_state_lock`` (the state file
and ``_committed``) before ``_cond`` (entries, buffers, retries, held bytes;
``_room`` shares its lock), and either of them before the ledger's own lock,
the innermost (taken under ``_state_lock`` only by ``snapshot`` in
``_save_state``; every other ledger call is made with neither held, and the
ledger calls out to nothing). The committer's own lock is never taken while
either is held (claims are checked outside them).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from signaldb.service.dead_letters import DeadLetters
from signaldb.wal import Entry, Wal
from signaldb.writer import crashpoints, parquet, payload, state
from signaldb.writer.claims import ClaimMap, entries_by_partition
from signaldb.writer.committer import Committer, FileToCommit
from signaldb.writer.ledger import IdSet, Key, Ledger, Reservation
from signaldb.writer.metrics import WriterMetrics
from signaldb.writer.storage import ObjectConflict, ObjectStore, StoreAborted, put_with_retry
from signaldb.writer.tables import kind_of, split_by_hour

log = logging.getLogger(__name__)

_REPLAY_LOG_EVERY_SECS = 5.0
DEAD_LETTER_DIR = "dead-letter"
_FAILED_CYCLE_PAUSE_SECS = 1.0
BUILD_ATTEMPTS = 3
BUILD_RETRY_PAUSE_SECS = 0.5
_REPLAY_ROOM_WAIT_SECS = 0.5
CONFLICT_RETRY_START_SECS = 1.0
CONFLICT_RETRY_MAX_SECS = 60.0


@dataclass
class _Entry:
    """An unprocessed writer WAL entry."""

    key: Key
    acceptor_ids: list[int]
    partitions: tuple[str, ...]  # every partition the entry has rows in
    outstanding: set[str]  # partitions whose rows are not yet in a written (or dead-lettered) file
    # With a catalog: per partition, the acceptor entry ids with rows in it (the claim its file makes).
    part_ids: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class _Buffer:
    table: str
    partition: str
    opened: float  # monotonic time of the oldest rows
    parts: list[tuple[int, pa.RecordBatch]] = field(default_factory=list)  # (wal id, rows)
    nbytes: int = 0


@dataclass
class _Plan:
    path: str
    table: str
    partition: str
    wal_ids: list[int]
    batches: list[pa.RecordBatch]
    nbytes: int = 0  # counted in the sink's held bytes until released
    build_failures: int = 0
    not_before: float = 0.0  # monotonic time before which a failed build is not retried
    released: bool = False
    # Planned in this life, so never PUT by any life: may be split up (see _build_failed).
    # A plan re-read at replay may have been PUT before the crash and is only ever rewritten whole.
    splittable: bool = True
    superseded: bool = False  # split up: its entry plans replaced it in the state file
    conflicts: int = 0  # puts refused: the object exists with other content (see _conflict)
    put_done: bool = False  # with a catalog: the object is durable, the commit still to come
    put_at: float = 0.0  # monotonic time of the put (a file left uncommitted too long is planned again)


def file_path(
    writer_id: str, table: str, partition: str, wal_ids: list[int], life: str = "", directory: str | None = None
) -> str:
    """``<table>/date=.../hour=../<writer id>-<first>-<last>-<hash>.parquet``. The hash also
    covers ``life``, a random value drawn at every writer start: writer WAL ids come from the
    directory's history, so a restored backup of it, or a second writer started from a copy,
    hands out ids again that an earlier life already named files with; the life keeps those
    names apart. A replay rewrites a planned file under the name saved in the state file,
    never a recomputed one, so a name is needed in one life only. Names of plans saved by an
    older version (no writer id: ``<first>-<last>-<hash>``) are kept as they are too."""
    key = f"{writer_id}/{table}/{partition}:{','.join(map(str, wal_ids))}" + (f"@{life}" if life else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{directory or table}/{partition}/{writer_id}-{wal_ids[0]}-{wal_ids[-1]}-{digest}.parquet"


def _plan(
    writer_id: str,
    table: str,
    partition: str,
    parts: Iterable[tuple[int, pa.RecordBatch]],
    life: str = "",
    directory: str | None = None,
) -> _Plan:
    ordered = sorted(parts, key=lambda p: p[0])  # wal id order: a rewrite holds the same rows
    wal_ids = [wid for wid, _ in ordered]
    batches = [b for _, b in ordered]
    return _Plan(
        file_path(writer_id, table, partition, wal_ids, life, directory),
        table,
        partition,
        wal_ids,
        batches,
        sum(b.nbytes for b in batches),
    )


class Sink:
    def __init__(
        self,
        wal: Wal,
        wal_dir: Path,
        writer_id: str,
        store: ObjectStore,
        saved: state.State,
        metrics: WriterMetrics,
        file_max_bytes: int,
        file_max_age_secs: float,
        max_buffered_bytes: int = 512 << 20,
        life: str = "",
        committer: Committer | None = None,
        max_uncommitted_secs: float = 43200.0,
    ) -> None:
        self._wal = wal
        self._life = life  # this start's random value, in the names it plans (file_path)
        self._committer = committer  # None: plain files (storage.catalog_url none)
        self._max_uncommitted_secs = max_uncommitted_secs  # see _commit_files
        self._replans = 0  # plans made again after a commit found rows claimed (see _replan)
        self._wal_dir = Path(wal_dir)
        self._dead_letters = DeadLetters(self._wal_dir / DEAD_LETTER_DIR, "writer")
        self._writer_id = writer_id
        self._store = store
        self._ledger = Ledger.from_snapshot(saved.done, saved.floors)  # owned here (module doc)
        self._state = saved
        self._metrics = metrics
        self._max_bytes = file_max_bytes
        self._max_age = file_max_age_secs
        self._limit = max_buffered_bytes
        self._flush_mark = max_buffered_bytes // 2
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # guards entries, buffers, retry, held and the flags below
        self._room = threading.Condition(lock)  # notified when held bytes drop
        self._held = 0  # Arrow bytes in buffers and in plans not yet released
        self._state_lock = threading.Lock()  # guards self._state and its saves
        self._entries: dict[int, _Entry] = {}
        self._committed = IdSet(saved.committed)  # writer WAL ids fully in Parquet
        self._buffers: dict[tuple[str, str], _Buffer] = {}
        self._retry: list[_Plan] = []  # plans saved in the state file whose write failed
        self._conflicting: set[str] = set()  # paths whose put met an object with other content
        self._instant: list[int] = []  # entries whose rows were all committed elsewhere: just complete them
        self._replayed = False
        self._abort_replay = False
        self._stopping = False
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="writer-sink", daemon=True)
        metrics.buffered_bytes_limit.set(max_buffered_bytes)

    # -- feeding ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def add(self, wal_id: int, record: payload.WalRecord) -> None:
        """Buffers a durable writer WAL entry's rows."""
        record, part_ids = self._unclaimed(record)
        parts = split_by_hour(record.table, record.batch)
        with self._cond:
            self._entries[wal_id] = _Entry(
                (record.acceptor_id, record.table), record.entry_ids, tuple(parts), set(parts), part_ids
            )
            self._buffer(wal_id, record.table, parts.items())
            if not parts:  # every row committed already (by another writer): nothing to write
                self._instant.append(wal_id)
                self._cond.notify()

    # -- the dedupe ledger, for the Flight side ------------------------------------

    def raise_floor(self, source: str, min_unprocessed: int, batch_ids: list[int]) -> None:
        """A batch's ``min_unprocessed`` (``Ledger.raise_floor``: bounded by what was stored)."""
        self._ledger.raise_floor(source, min_unprocessed, batch_ids)

    def reserve(self, key: Key, entry_ids: list[int]) -> Reservation:
        """Splits a batch's ids into new and duplicate and holds the new ones while the batch is
        appended (``Reservation``); raises ``ledger.Busy`` when another stream holds one."""
        return Reservation(self._ledger, key, entry_ids)

    def _unclaimed(self, record: payload.WalRecord) -> tuple[payload.WalRecord, dict[str, list[int]]]:
        """With a catalog: the record without rows already committed (``claims``), and the
        acceptor entry ids per partition its files will claim. Without: as it is."""
        if self._committer is None:
            return record, {}
        record, dropped = self._committer.without_claimed(record)
        if dropped:
            self._metrics.claimed_elsewhere.labels(record.table).inc(dropped)
            log.info(
                "rows already committed are not written again",
                extra={"table": record.table, "source": record.acceptor_id, "rows": dropped},
            )
        return record, entries_by_partition(record)

    def _buffer(self, wal_id: int, table: str, parts: Iterable[tuple[str, pa.RecordBatch]]) -> None:
        now = time.monotonic()
        for partition, batch in parts:
            buf = self._buffers.get((table, partition))
            if buf is None:
                buf = self._buffers[(table, partition)] = _Buffer(table, partition, now)
                self._cond.notify()  # the flusher may be sleeping past this buffer's deadline
            buf.parts.append((wal_id, batch))
            buf.nbytes += batch.nbytes
            self._held += batch.nbytes
            if buf.nbytes >= self._max_bytes:
                self._cond.notify()
        if self._held > self._flush_mark:
            self._cond.notify()  # time to write the oldest buffers early
        self._update_gauges()

    def _update_gauges(self) -> None:
        self._metrics.open_files.set(len(self._buffers))
        self._metrics.buffered_bytes.set(self._held)

    # -- the memory bound --------------------------------------------------------

    def wait_for_room(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for the held bytes to be under the bound; False if
        they are not (the caller refuses the batch: UNAVAILABLE, retried by the acceptor)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._held >= self._limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.notify()  # the flusher may be asleep with buffers to write early
                self._room.wait(left)
            return True

    def over_limit(self) -> bool:
        return self._held >= self._limit

    def _release(self, plan: _Plan) -> None:
        """The plan's rows are in a durable file (or dead-letter): their bytes no longer count.
        Idempotent (a plan may be retried after a failed cycle). Call with ``_cond`` held."""
        if plan.released:
            return
        plan.released = True
        plan.batches = []  # a settled plan is never built again; drop the rows now, not at the cycle's end
        self._held -= plan.nbytes
        self._update_gauges()
        self._room.notify_all()

    # -- replay ----------------------------------------------------------------

    def replay(self) -> int:
        """Re-reads every unprocessed entry (call once, before ingest starts); returns their number."""
        if self._committer is not None:
            self._catalog_replay_start()
        with self._state_lock:
            covered = {(wid, rec.partition): path for path, rec in self._state.files.items() for wid in rec.wal_ids}
        rewrite: dict[str, list[tuple[int, pa.RecordBatch]]] = {}
        already_done: list[int] = []
        complete: list[int] = []
        seen = 0
        last_log = time.monotonic()
        for entry in self._wal.unprocessed():
            if self._abort_replay:  # stopping: what is not re-read stays in the WAL
                log.warning("replay interrupted by shutdown", extra={"entries": seen})
                break
            seen += 1
            try:
                record = payload.decode(entry.payload)
                record, part_ids = self._unclaimed(record)
                parts = split_by_hour(record.table, record.batch)
            except Exception as err:  # CRC-valid but unreadable: a bug or version skew, never a crash loop
                self._dead_letter(entry, err)
                already_done.append(entry.id)
                continue
            key = (record.acceptor_id, record.table)
            with self._state_lock:  # the flusher may be adding to it
                committed = entry.id in self._committed
            if committed:
                already_done.append(entry.id)  # committed before the crash; the mark did not reach disk
                continue
            self._ledger.add_pending(key, record.entry_ids)
            outstanding, free = set(), []
            for partition, batch in parts.items():
                path = covered.get((entry.id, partition))
                if path is None:
                    free.append((partition, batch))
                    outstanding.add(partition)
                elif not self._state.files[path].settled:
                    rewrite.setdefault(path, []).append((entry.id, batch))
                    outstanding.add(partition)
            with self._cond:
                # The memory bound holds during replay too: wait while the flusher writes
                # the oldest buffers out (or the store comes back). Only buffers can be
                # written before the replay ends, so only wait while there are some.
                while self._held >= self._limit and self._buffers and not self._abort_replay:
                    self._cond.notify()
                    self._room.wait(_REPLAY_ROOM_WAIT_SECS)
                self._entries[entry.id] = _Entry(key, record.entry_ids, tuple(parts), outstanding, part_ids)
                self._buffer(entry.id, record.table, free)
            if not outstanding:
                complete.append(entry.id)
            if time.monotonic() - last_log >= _REPLAY_LOG_EVERY_SECS:
                log.info("replay progress", extra={"entries": seen})
                last_log = time.monotonic()
        if already_done:
            self._wal.mark_processed(already_done)
        if self._abort_replay:
            # No rewrites and no pruning of the state file: entries not re-read would look
            # complete. The next start replays them.
            return seen
        plans = []
        for path, planned_parts in rewrite.items():
            rec = self._state.files[path]
            plan = _plan(self._writer_id, rec.table, rec.partition, planned_parts, life=self._life)
            if plan.wal_ids != sorted(rec.wal_ids):  # an entry vanished from the WAL (quarantined as corrupt)
                log.error(
                    "planned file lost entries; rewriting what remains under its name",
                    extra={"path": path, "had": rec.wal_ids, "found": plan.wal_ids},
                )
            plan.path = path  # always the saved name: also a plan saved by a version without writer ids
            plan.splittable = False
            plans.append(plan)
        log.info(
            "replay read",
            extra={"entries": seen, "already_committed": len(already_done), "files_to_rewrite": len(plans)},
        )
        with self._cond:
            self._retry.extend(plans)  # the flusher writes these first, exactly as planned
            self._held += sum(p.nbytes for p in plans)  # bounded by the last life's limit
            self._update_gauges()
            self._replayed = True
            self._cond.notify()
        if complete:
            self._commit(complete)
        return seen

    def _catalog_replay_start(self) -> None:
        """With a catalog, before the replay: read every table's claims (retrying while the
        catalog is unreachable: the replay's decisions depend on them), and forget the plans
        that were never committed. A file no commit references is invisible to the table, so
        its rows are simply planned again, under new names; the old object is an orphan that
        maintenance deletes. (Without a catalog a planned file must be rewritten under its
        saved name instead: a reader of the files may already see it.)"""
        assert self._committer is not None
        delay = 0.5
        while not self._abort_replay:
            try:
                self._committer.refresh_all()
                break
            except Exception as err:
                self._metrics.commit_errors.labels("*").inc()
                log.warning(
                    "catalog unreachable at start; retrying before the replay",
                    extra={"error": str(err)[:500], "retry_in_secs": delay},
                )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        with self._state_lock:
            stale = [path for path, rec in self._state.files.items() if not rec.settled]
            for path in stale:
                del self._state.files[path]
            if stale:
                self._save_state()
        if stale:
            log.info("uncommitted files from the last run are planned again", extra={"files": len(stale)})

    def _dead_letter(self, entry: Entry, err: Exception) -> None:
        """Sets an unreadable entry's payload aside in ``<wal_dir>/dead-letter/`` before it is marked."""
        reason = f"writer WAL entry cannot be read: {err!r}"
        path, new = self._dead_letters.put(entry.id, entry.kind, bytes(entry.payload), "entry", reason)
        if new:
            self._metrics.dead_letter_entries.inc()
        log.error(
            "unreadable writer WAL entry moved to dead-letter",
            extra={"wal_id": entry.id, "path": str(path), "error": repr(err)},
        )

    # -- the flusher -----------------------------------------------------------

    def abort_replay(self) -> None:
        self._abort_replay = True

    def close(self, timeout: float) -> bool:
        """Writes out every buffer within ``timeout`` seconds; True when all of it is committed."""
        with self._cond:
            self._stopping = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(max(0.0, self._deadline - time.monotonic()) + 1.0)
        with self._cond:
            return not self._thread.is_alive() and not self._buffers and not self._retry and not self._entries

    def _give_up(self) -> bool:
        return self._stopping and time.monotonic() >= self._deadline

    def _name_salt(self) -> str:
        """The life in new file names; after a replan, also the replan count, so that a plan
        made again from the same WAL ids never gets the name of the one it replaces."""
        return self._life if not self._replans else f"{self._life}.{self._replans}"

    def _table_dir(self, table: str) -> str | None:
        """Where ``table``'s files go, relative to storage; None while not known yet (a REST
        catalog places its tables itself: ``_resolve_table_dirs``)."""
        return table if self._committer is None else self._committer.known_data_dir(table)

    def _resolve_table_dirs(self) -> None:
        """Learns the data directory of every buffered table that lacks one (a catalog call,
        so outside the lock; a failure is retried at the next cycle)."""
        if self._committer is None:
            return
        with self._cond:
            tables = {t for t, _ in self._buffers}
        for table in tables:
            if self._committer.known_data_dir(table) is None:
                try:
                    self._committer.data_dir(table)
                except Exception as err:
                    self._metrics.commit_errors.labels(table).inc()
                    log.warning(
                        "catalog unreachable; the table's files wait", extra={"table": table, "error": str(err)[:500]}
                    )
                    time.sleep(_FAILED_CYCLE_PAUSE_SECS)

    def _unresolved(self) -> bool:
        """A buffered table's data directory is still unknown (call with ``_cond`` held)."""
        return any(self._table_dir(t) is None for t, _ in self._buffers)

    def _run(self) -> None:
        while True:
            self._resolve_table_dirs()
            with self._cond:
                plans = self._next_plans()
                while not plans and not self._instant and not self._stopping and not self._unresolved():
                    self._cond.wait(self._wait_secs())
                    plans = self._next_plans()
                instant, self._instant = self._instant, []
                if not plans and not instant and self._stopping:
                    return  # (a table whose directory is unknown keeps its rows in the WAL)
            if instant:
                self._commit(instant)
            if not plans:
                continue
            try:
                self._write(plans)
            except StoreAborted as err:
                log.warning(
                    "shutdown deadline reached; unwritten rows stay in the WAL for the next start",
                    extra={"error": str(err)},
                )
                return
            except Exception:
                log.exception("writing Parquet failed; retrying the same files")
                with self._cond:
                    queued = {id(p) for p in self._retry}  # failed builds are queued already
                    self._retry[:0] = [p for p in plans if id(p) not in queued and not p.superseded]
                if self._give_up():
                    return
                time.sleep(_FAILED_CYCLE_PAUSE_SECS)

    def _wait_secs(self) -> float:
        deadlines = []
        if self._buffers:
            deadlines.append(min(b.opened for b in self._buffers.values()) + self._max_age)
        if self._retry:
            deadlines.append(min(p.not_before for p in self._retry))
        if not deadlines:
            return 1.0
        return max(0.005, min(1.0, min(deadlines) - time.monotonic()))

    def _next_plans(self) -> list[_Plan]:
        """Failed plans (as they were) whose pause is over, the buffers that are due, and,
        while the held bytes are over half the bound, the oldest of the other buffers."""
        now = time.monotonic()

        # At shutdown everything is tried at once, except plans blocked by a conflicting object:
        # they would only meet it again (and spin); they stay in the WAL for the next start.
        def take(p: _Plan) -> bool:
            return (self._stopping and not p.conflicts) or p.not_before <= now

        plans = [p for p in self._retry if take(p)]
        if plans:
            self._retry = [p for p in self._retry if not take(p)]
        due = [
            k
            for k, b in self._buffers.items()
            if self._table_dir(k[0]) is not None
            and (self._stopping or b.nbytes >= self._max_bytes or now - b.opened >= self._max_age)
        ]
        plans += [
            _plan(
                self._writer_id, *k, self._buffers.pop(k).parts, life=self._name_salt(), directory=self._table_dir(k[0])
            )
            for k in due
        ]
        # Everything planned now is released once written: flush early until the rest is under the mark.
        left = self._held - sum(p.nbytes for p in plans if not p.released)
        early = 0
        if left > self._flush_mark:
            for k in sorted(self._buffers, key=lambda k: self._buffers[k].opened):
                if left <= self._flush_mark:
                    break
                if self._table_dir(k[0]) is None:
                    continue
                plan = _plan(
                    self._writer_id,
                    *k,
                    self._buffers.pop(k).parts,
                    life=self._name_salt(),
                    directory=self._table_dir(k[0]),
                )
                plans.append(plan)
                left -= plan.nbytes
                early += 1
        if early:
            self._metrics.early_files.inc(early)
            log.debug(
                "writing buffers early: buffered bytes over half of writer.max_buffered_bytes",
                extra={"files": early, "buffered_bytes": self._held, "limit": self._limit},
            )
        if plans:
            self._update_gauges()
        return plans

    def _write(self, plans: list[_Plan]) -> None:
        with self._state_lock:
            new = [p for p in plans if p.path not in self._state.files]
            for p in new:
                self._state.files[p.path] = state.FileRecord(p.table, p.partition, p.wal_ids)
            if new:
                self._save_state()  # step 1: the plan is durable before any byte of the file
        crashpoints.reached("after_plan")
        settled = []
        to_commit = []  # with a catalog: plans whose object is durable, to add to their table
        for p in plans:
            with self._state_lock:
                already = self._state.files[p.path].settled
            if p.put_done and not already:
                to_commit.append(p)  # a cycle that failed at the commit: the object is there
                continue
            if not already:
                try:
                    data, rows = parquet.build(p.table, p.batches, storage_types=self._committer is not None)
                except Exception as err:  # the data itself (or memory): never the store
                    again = self._build_failed(p, err)
                    if again:
                        with self._cond:
                            self._retry.extend(again)  # at once: a later failure in this cycle must not lose them
                        continue
                else:
                    try:
                        put_with_retry(self._store, p.path, data, self._metrics, self._give_up)  # step 2
                    except ObjectConflict as conflict:
                        self._conflict(p, conflict)
                        continue
                    crashpoints.reached("after_put")
                    if p.conflicts:
                        self._resolved(p)
                    self._metrics.files_written.labels(p.table).inc()
                    self._metrics.rows_written.labels(p.table).inc(rows)
                    self._metrics.bytes_written.labels(p.table).inc(len(data))
                    log.debug("file written", extra={"path": p.path, "rows": rows, "bytes": len(data)})
                    if self._committer is not None:
                        p.put_done, p.put_at = True, time.monotonic()  # settled once committed
                        to_commit.append(p)
                        with self._cond:
                            self._release(p)  # the rows are durable in the object (and the WAL)
                        continue
                    with self._state_lock:
                        self._state.files[p.path].written = True
            settled.append(p)
            with self._cond:
                self._release(p)
        complete: list[int] = []
        if to_commit:
            settled += self._commit_files(to_commit, complete)
        with self._cond:
            for p in settled:
                for wid in p.wal_ids:
                    entry = self._entries.get(wid)
                    if entry is not None and p.partition in entry.outstanding:
                        entry.outstanding.discard(p.partition)
                        if not entry.outstanding:
                            complete.append(wid)
        self._commit(complete)

    # -- the catalog commit (storage.catalog_url not none) --------------------------

    def _commit_files(self, plans: list[_Plan], complete: list[int]) -> list[_Plan]:
        """Adds the written files to their tables, one commit per table; returns the plans
        committed (now settled). A file whose rows another commit claimed already is left out
        and its other rows are planned again (``_replan``); entries that thereby complete are
        appended to ``complete``. Catalog errors propagate: the cycle is retried as it is."""
        assert self._committer is not None
        by_table: dict[str, list[_Plan]] = {}
        now = time.monotonic()
        for p in plans:
            if now - p.put_at > self._max_uncommitted_secs:
                # Maintenance deletes files no snapshot references once storage.orphan_min_age_secs
                # old: a file whose commit waited half that long (a long catalog outage) is not
                # committed any more; its rows are planned again into a new one.
                complete += self._replan(p, "its commit waited longer than half of storage.orphan_min_age_secs")
                continue
            by_table.setdefault(p.table, []).append(p)
        committed = []
        for table, group in by_table.items():
            files = [FileToCommit(p.path, p.partition, tuple(p.wal_ids), self._claim_of(p)) for p in group]
            taken = {f.path for f in self._committer.for_table(table).commit(files, self._give_up)}
            for p in group:
                if p.path in taken:
                    complete += self._replan(p, "another commit holds some of its rows")
                else:
                    committed.append(p)
            with self._state_lock:
                for p in group:
                    if p.path not in taken:
                        self._state.files[p.path].written = True
        return committed

    def _claim_of(self, p: _Plan) -> ClaimMap:
        """{partition: {source: acceptor entry ids}} of the rows in ``p``."""
        sources: dict[str, list[int]] = {}
        with self._cond:
            for wid in p.wal_ids:
                entry = self._entries.get(wid)
                if entry is not None:
                    sources.setdefault(entry.key[0], []).extend(entry.part_ids.get(p.partition, ()))
        return {p.partition: sources}

    def _replan(self, p: _Plan, reason: str) -> list[int]:
        """``p``'s file stays uncommitted (an orphan, deleted by maintenance): some of its rows
        were committed by another commit, or it waited too long for its commit. Its entries'
        rows of that partition are read again from the WAL, the claimed ones dropped, and the
        rest buffered again (new names: ``_name_salt``).
        Returns the entries this completes (nothing of theirs left to write)."""
        p.superseded = True  # never retried as it is (a failure later in this cycle must not revive it)
        with self._state_lock:
            self._state.files.pop(p.path, None)
            self._save_state()
        self._replans += 1
        self._metrics.replanned_files.labels(p.table).inc()
        log.warning(
            "file not committed; planning its rows again",
            extra={"reason": reason, "path": p.path, "table": p.table, "partition": p.partition, "wal_ids": p.wal_ids},
        )
        complete: list[int] = []
        for wid in p.wal_ids:
            data = self._read_payload(wid)
            rows = None
            if data is not None:
                record, part_ids = self._unclaimed(payload.decode(data))
                rows = split_by_hour(record.table, record.batch).get(p.partition)
            with self._cond:
                entry = self._entries.get(wid)
                if entry is None:
                    continue
                if rows is None:
                    entry.outstanding.discard(p.partition)
                    if not entry.outstanding:
                        complete.append(wid)
                    continue
                entry.part_ids[p.partition] = part_ids.get(p.partition, [])
                self._buffer(wid, p.table, [(p.partition, rows)])
        return complete

    def _conflict(self, p: _Plan, err: ObjectConflict) -> None:
        """The object ``p`` names exists with other content: never overwritten. The plan keeps
        its rows (held, not settled), so its entries stay unprocessed in the WAL; it is retried
        with a growing pause (an operator may move the other object away) while every other
        plan goes on being written."""
        p.conflicts += 1
        delay = min(CONFLICT_RETRY_MAX_SECS, CONFLICT_RETRY_START_SECS * 2 ** min(p.conflicts - 1, 16))
        p.not_before = time.monotonic() + delay
        self._metrics.object_conflicts.inc()
        with self._cond:
            self._conflicting.add(p.path)
            self._metrics.conflicting_files.set(len(self._conflicting))
            self._retry.append(p)  # at once: a later failure in this cycle must not lose it
        log.error(
            "object exists with other content; not overwritten, its rows stay in the WAL",
            extra={
                "path": p.path,
                "store": err.url,
                "table": p.table,
                "partition": p.partition,
                "wal_ids": p.wal_ids,
                "attempt": p.conflicts,
                "retry_in_secs": delay,
            },
        )

    def _resolved(self, p: _Plan) -> None:
        with self._cond:
            self._conflicting.discard(p.path)
            self._metrics.conflicting_files.set(len(self._conflicting))
        log.warning("object conflict resolved; file written", extra={"path": p.path, "attempts": p.conflicts})

    def _build_failed(self, p: _Plan, err: Exception) -> list[_Plan]:
        """A build of ``p`` raised: the plans to retry later ([p], or p split up), or []
        once ``p`` went to dead-letter."""
        self._metrics.build_errors.inc()
        p.not_before = time.monotonic() + BUILD_RETRY_PAUSE_SECS
        if isinstance(err, MemoryError):  # not the data's fault: retried, never dead-lettered
            log.warning(
                "building a Parquet file ran out of memory; will retry", extra={"path": p.path, "error": repr(err)}
            )
            return [p]
        p.build_failures += 1
        if p.build_failures < BUILD_ATTEMPTS:
            log.warning(
                "building a Parquet file failed; will retry",
                extra={"path": p.path, "attempt": p.build_failures, "error": repr(err)},
            )
            return [p]
        if p.splittable and len(p.wal_ids) > 1:
            return self._split(p, err)
        self._dead_letter_plan(p, err)
        return []

    def _split(self, p: _Plan, err: Exception) -> list[_Plan]:
        """Replaces ``p`` by one plan per entry, so that only the entries whose rows cannot be
        built go to dead-letter. Safe because ``p`` was planned in this life and never built,
        so no object of that name exists; the swap is one state save (old plan or new ones)."""
        subs = [
            _plan(
                self._writer_id,
                p.table,
                p.partition,
                [(wid, batch)],
                life=self._name_salt(),
                directory=self._table_dir(p.table),
            )
            for wid, batch in zip(p.wal_ids, p.batches, strict=True)
        ]
        for sub in subs:
            sub.build_failures = BUILD_ATTEMPTS - 1  # the rows already failed together: one try each
        with self._state_lock:
            del self._state.files[p.path]
            for sub in subs:
                self._state.files[sub.path] = state.FileRecord(sub.table, sub.partition, sub.wal_ids)
            self._save_state()
        p.released, p.superseded, p.batches = True, True, []  # its bytes are the subs' now (same batches)
        log.warning(
            "building a Parquet file failed repeatedly; trying its entries one by one",
            extra={"path": p.path, "wal_ids": p.wal_ids, "attempts": p.build_failures, "error": repr(err)},
        )
        return subs

    def _dead_letter_plan(self, p: _Plan, err: Exception) -> None:
        """Gives ``p`` up: its entries' payloads go to dead-letter (durably), then the plan is
        saved as dead-lettered. A crash in between builds it again on restart, fails again and
        meets the same dead letters again (same payload: only the sidecar is rewritten, nothing counted twice)."""
        reason = f"Parquet build failed {p.build_failures} times: {err!r}"
        with self._cond:
            entries = {wid: self._entries.get(wid) for wid in p.wal_ids}
        new = 0
        for wid, entry in entries.items():

            def fields(previous: dict[str, Any] | None, entry: _Entry | None = entry) -> dict[str, Any]:
                # The same entry dead-lettered before for another hour: the sidecar lists both.
                previous = previous or {}
                dead = sorted({*previous.get("partitions_dead_lettered", []), p.partition})
                partitions = list(entry.partitions) if entry is not None else previous.get("partitions", dead)
                return {
                    "table": p.table,
                    "file": p.path,
                    "acceptor_id": entry.key[0] if entry is not None else previous.get("acceptor_id"),
                    "acceptor_entry_ids": entry.acceptor_ids
                    if entry is not None
                    else previous.get("acceptor_entry_ids"),
                    "partitions": partitions,
                    "partitions_dead_lettered": dead,
                    "partitions_in_parquet": [x for x in partitions if x not in dead],
                    "note": "the .entry file holds the whole writer WAL entry; only its rows in "
                    "partitions_dead_lettered are missing from Parquet, its rows in "
                    "partitions_in_parquet are written to Parquet as usual (re-ingest only the former)",
                }

            _, fresh = self._dead_letters.put(wid, kind_of(p.table), self._read_payload(wid), "entry", reason, fields)
            new += fresh
        directory = self._dead_letters.directory
        self._metrics.dead_letter_entries.inc(new)
        log.error(
            "Parquet file could not be built; its entries moved to dead-letter",
            extra={
                "path": p.path,
                "wal_ids": p.wal_ids,
                "partition": p.partition,
                "dead_letter_dir": str(directory),
                "attempts": p.build_failures,
                "error": repr(err),
            },
        )
        crashpoints.reached("after_dead_letter")
        with self._state_lock:
            self._state.files[p.path].dead_letter = reason
            self._save_state()  # from here on the plan is settled, also for a restart

    def _read_payload(self, wal_id: int) -> bytes | None:
        for entry in self._wal.unprocessed(after_id=wal_id - 1, limit=1):
            if entry.id == wal_id:
                return bytes(entry.payload)
        return None  # gone (quarantined as corrupt): the .json still says what it held

    def _commit(self, wal_ids: list[int]) -> None:
        """Step 3: complete entries become done (state saved), then processed in the WAL."""
        with self._cond:
            entries = [(wid, self._entries[wid]) for wid in wal_ids]
            replayed = self._replayed
        for _, entry in entries:
            self._ledger.complete(entry.key, entry.acceptor_ids)
        with self._state_lock:
            for wid in wal_ids:
                self._committed.add(wid)
            with self._cond:
                for wid in wal_ids:
                    self._entries.pop(wid, None)
                live = set(self._entries)
            if replayed:  # before that, an entry not yet re-read would look complete
                for path in [p for p, r in self._state.files.items() if r.settled and not live.intersection(r.wal_ids)]:
                    del self._state.files[path]
            self._save_state()
        if wal_ids:
            crashpoints.reached("after_commit")
            self._wal.mark_processed(wal_ids)

    def _save_state(self) -> None:
        self._state.done, self._state.floors = self._ledger.snapshot()
        self._state.committed = self._committed.ranges()
        state.save(self._wal_dir, self._state)

    # -- introspection ---------------------------------------------------------

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "open_files": len(self._buffers),
                "buffered_bytes": self._held,
                "buffered_bytes_limit": self._limit,
                "unprocessed_entries": len(self._entries),
                "files_to_retry": len(self._retry),
                "conflicting_files": len(self._conflicting),
            }
