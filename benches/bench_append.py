"""Durable append throughput: signaldb's WAL against baselines, cases 1-4.

Run through benches/run.py (`make bench`), which prints the side-by-side table.
Every row reports payload entries/s and payload MB/s (10^6 bytes).
"""

from __future__ import annotations

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


def check_ours(benchmark, wal, expected: int) -> None:
    """The WAL kept every entry; records its sync counters for the table."""
    stats = wal.stats()
    got = stats.get("unprocessed_entries")
    assert got == expected, f"WAL holds {got} unprocessed entries, {expected} were appended"
    benchmark.extra_info.update(
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


@case_params("batch")
def test_batch(benchmark, workdir, key, pass_no):
    store = open_ours(workdir, max_segment_size=64 * MIB) if key == "ours_seg64" else open_store(key, workdir)
    payloads = [PAYLOAD_200] * BATCH_SIZE
    count = Counting()
    if key == "raw":
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
        if key.startswith("ours"):
            check_ours(benchmark, store, count.entries)
    finally:
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
