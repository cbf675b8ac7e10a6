"""Durable append throughput: signaldb's WAL against baselines, cases 1-4.

Run through benches/run.py (`make bench`), which prints the side-by-side table.
Every row reports payload entries/s and payload MB/s (10^6 bytes).
"""

from __future__ import annotations

import threading
from pathlib import Path

from benchlib import (
    BATCH_SIZE,
    MIB,
    PAYLOAD_200,
    PAYLOAD_MIB,
    THREADS,
    NaiveWal,
    RawFile,
    RocksStore,
    SqliteStore,
    ThreadGang,
    case_params,
    engine,
    measure,
)


class Counting:
    """Counts what was appended, to check the WAL kept every entry."""

    def __init__(self) -> None:
        self.entries = 0


def open_ours(workdir: Path, **kw):
    Wal = engine()
    return Wal(workdir / "wal", sync_mode="immediate", **kw)


def check_ours(benchmark, wal, expected: int, processed: int = 0) -> None:
    """The WAL kept every entry not marked processed; records its sync counters for the table."""
    stats = wal.stats()
    got = stats.get("unprocessed_entries")
    assert got == expected - processed, f"WAL holds {got} unprocessed, {expected} appended, {processed} processed"
    benchmark.extra_info.update(
        engine_segments_recycled=stats.get("segments_recycled"),
        engine_entries=expected,
        engine_fsyncs=stats.get("fsync_count"),
        engine_fsync_s=stats.get("fsync_seconds_total"),
        engine_segments_created=stats.get("segments_created"),
    )


def open_store(key: str, workdir: Path, locked: bool = False):
    if key == "ours":
        return open_ours(workdir)
    if key == "rocksdb":
        return RocksStore(workdir)
    if key == "sqlite":
        return SqliteStore(workdir)
    if key == "naive":
        return NaiveWal(workdir, locked=locked)
    if key == "raw":
        return RawFile(workdir)
    raise AssertionError(key)


# -- 1. single producer ------------------------------------------------------------


def single_producer(benchmark, workdir, store_key: str, *, case: str, key: str, pass_no: int) -> None:
    store = open_store(store_key, workdir)
    append, payload, count = store.append, PAYLOAD_200, Counting()

    def op(n: int) -> None:
        for _ in range(n):
            append(payload)
        count.entries += n

    try:
        measure(benchmark, op, case=case, key=key, pass_no=pass_no, entries_per_op=1, bytes_per_op=len(payload))
        if store_key == "ours":
            check_ours(benchmark, store, count.entries)
    finally:
        store.close()


@case_params("single")
def test_single(benchmark, workdir, key, pass_no):
    single_producer(benchmark, workdir, key, case="single", key=key, pass_no=pass_no)


# -- 2. many threads, one entry at a time -----------------------------------------------


@case_params("threads")
def test_threads(benchmark, workdir, key, pass_no):
    if key == "ours_1":  # case 1 again, next to the threaded rows it is compared with
        single_producer(benchmark, workdir, "ours", case="threads", key=key, pass_no=pass_no)
        return
    if key == "ours_batched":  # same threads, acknowledged before the fdatasync (goal 2b)
        store = engine()(workdir / "wal", sync_mode="batched")
    else:
        store = open_store(key, workdir, locked=True)
    append, payload, count = store.append, PAYLOAD_200, Counting()

    def work(n: int) -> None:
        for _ in range(n):
            append(payload)

    gang = ThreadGang(THREADS, work)

    def op(n: int) -> None:
        gang(n)
        count.entries += n * THREADS

    try:
        measure(
            benchmark,
            op,
            case="threads",
            key=key,
            pass_no=pass_no,
            entries_per_op=THREADS,
            bytes_per_op=THREADS * len(payload),
            round_s=0.25,
        )
        if key.startswith("ours"):
            check_ours(benchmark, store, count.entries)
    finally:
        gang.close()
        store.close()


# -- 3. batches ------------------------------------------------------------------------------


class Consumer:
    """Marks every appended entry processed every few milliseconds, as an acceptor does once
    a writer has an entry (and a writer once its file is committed): checkpoints then doom
    processed segments and their files are reused. The Rust wal-bench runs ours the same way."""

    TICK_S = 0.005

    def __init__(self, wal) -> None:
        self.wal = wal
        self.last_id = 0  # the last id appended (set by the producer)
        self.marked = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-consumer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.TICK_S):
            upto = self.last_id
            if upto > self.marked:
                self.wal.mark_processed(range(self.marked + 1, upto + 1))
                self.marked = upto

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@case_params("batch")
def test_batch(benchmark, workdir, key, pass_no):
    if key == "ours_seg64":
        store = open_ours(workdir, max_segment_size=64 * MIB)
    else:
        store = open_store("ours" if key == "ours_consumed" else key, workdir)
    payloads = [PAYLOAD_200] * BATCH_SIZE
    count = Counting()
    consumer = Consumer(store) if key == "ours_consumed" else None
    if consumer is not None:
        append_batch = store.append_batch

        def op(n: int) -> None:
            for _ in range(n):
                consumer.last_id = append_batch(payloads)[-1]
            count.entries += n * BATCH_SIZE
    elif key == "raw":
        blob = PAYLOAD_200 * BATCH_SIZE
        append = store.append

        def op(n: int) -> None:
            for _ in range(n):
                append(blob)
    else:
        append_batch = store.append_batch

        def op(n: int) -> None:
            for _ in range(n):
                append_batch(payloads)
            count.entries += n * BATCH_SIZE

    try:
        measure(
            benchmark,
            op,
            case="batch",
            key=key,
            pass_no=pass_no,
            entries_per_op=BATCH_SIZE,
            bytes_per_op=BATCH_SIZE * len(PAYLOAD_200),
        )
        if consumer is not None:
            consumer.stop()
            check_ours(benchmark, store, count.entries, processed=consumer.marked)
        elif key.startswith("ours"):
            check_ours(benchmark, store, count.entries)
    finally:
        if consumer is not None:
            consumer.stop()
        store.close()


# -- 4. 1 MiB entries --------------------------------------------------------------------------


@case_params("mib")
def test_mib(benchmark, workdir, key, pass_no):
    store = open_ours(workdir, max_segment_size=64 * MIB) if key == "ours_seg64" else open_store(key, workdir)
    append, payload, count = store.append, PAYLOAD_MIB, Counting()

    def op(n: int) -> None:
        for _ in range(n):
            append(payload)
        count.entries += n

    try:
        measure(benchmark, op, case="mib", key=key, pass_no=pass_no, entries_per_op=1, bytes_per_op=len(payload))
        if key.startswith("ours"):
            check_ours(benchmark, store, count.entries)
    finally:
        store.close()
