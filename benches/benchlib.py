"""Shared pieces of the WAL benchmarks: the case registry, the timing harness,
scratch directories on the real disk, and the baseline stores.

`run.py` imports this module too (for the case titles and row labels), so it
must not import the engine at import time.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import sqlite3
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20

# Seconds of measured rounds per benchmark row (calibration comes on top).
CASE_SECONDS = float(os.environ.get("SIGNALDB_BENCH_SECONDS", "2.5"))

_rng = random.Random(20261123)
PAYLOAD_200 = _rng.randbytes(200)
PAYLOAD_MIB = _rng.randbytes(MIB)
BATCH_SIZE = 1000
THREADS = 64
REPLAY_ENTRIES = 1_000_000


# -- the case registry ---------------------------------------------------------
# One table block per case; rows in `rows` order. `order` is the execution order
# (key, pass): goal pairs run A B ... B A so that a slow spell of the VM
# drifting through the case hits both sides alike; both passes are merged.


@dataclasses.dataclass(frozen=True)
class Case:
    title: str
    rows: tuple[tuple[str, str], ...]  # (key, label)
    order: tuple[tuple[str, int], ...]  # (key, pass number)
    unit: str = "entries"  # what one "op" in the entries/s column is

    def label(self, key: str) -> str:
        return dict(self.rows)[key]

    def params(self) -> list[tuple[str, int]]:
        return list(self.order)


CASES: dict[str, Case] = {
    "single": Case(
        "1. single producer, durable per entry (200 B entries)",
        (
            ("ours", "signaldb Wal.append, sync_mode=immediate"),
            ("rocksdb", "RocksDB put, WriteOptions.sync=True"),
            ("sqlite", "SQLite WAL mode, synchronous=FULL, commit per row"),
            ("naive", "naive Python WAL: write + fdatasync per append"),
            ("raw", "raw os.write + fdatasync, 200 B, growing file"),
        ),
        (("ours", 1), ("rocksdb", 1), ("sqlite", 1), ("naive", 1), ("raw", 1), ("rocksdb", 2), ("ours", 2)),
    ),
    "threads": Case(
        f"2. {THREADS} threads, each appending durably one entry at a time (200 B)",
        (
            ("ours", f"signaldb Wal.append x {THREADS} threads (group commit)"),
            ("ours_1", "signaldb Wal.append, 1 thread (goal 2's reference)"),
            ("ours_batched", f"signaldb Wal.append x {THREADS} threads, sync_mode=batched (goal 2b's reference)"),
            ("naive", f"naive Python WAL x {THREADS} threads, one lock"),
            ("rocksdb", f"RocksDB put sync=True x {THREADS} threads (info)"),
        ),
        (
            ("ours_1", 1),
            ("ours", 1),
            ("ours_batched", 1),
            ("naive", 1),
            ("rocksdb", 1),
            ("ours", 2),
            ("ours_batched", 2),
            ("ours_1", 2),
        ),
    ),
    "batch": Case(
        f"3. batches of {BATCH_SIZE} x 200 B, one durable commit per batch",
        (
            ("ours", f"signaldb Wal.append_batch({BATCH_SIZE})"),
            ("ours_consumed", f"signaldb Wal.append_batch({BATCH_SIZE}), marked processed as it goes"),
            ("ours_seg64", f"signaldb Wal.append_batch({BATCH_SIZE}), 64 MiB segments (info)"),
            ("rocksdb", f"RocksDB WriteBatch({BATCH_SIZE}), sync=True"),
            ("sqlite", f"SQLite WAL FULL, one transaction of {BATCH_SIZE} rows"),
            ("naive", f"naive Python WAL: {BATCH_SIZE} frames, 1 write + fdatasync"),
            ("raw", "raw os.write(200 KB) + fdatasync, growing file"),
        ),
        (
            ("ours", 1),
            ("rocksdb", 1),
            ("ours_consumed", 1),
            ("sqlite", 1),
            ("naive", 1),
            ("raw", 1),
            ("ours_seg64", 1),
            ("rocksdb", 2),
            ("ours_consumed", 2),
            ("ours", 2),
        ),
    ),
    "mib": Case(
        "4. 1 MiB entries, durable per entry",
        (
            ("ours", "signaldb Wal.append, default 1 MiB segments"),
            ("ours_seg64", "signaldb Wal.append, 64 MiB segments (info)"),
            ("raw", "raw os.write(1 MiB) + fdatasync, growing file"),
            ("naive", "naive Python WAL, 1 MiB appends"),
        ),
        (("ours", 1), ("raw", 1), ("ours_seg64", 1), ("naive", 1), ("raw", 2), ("ours", 2)),
    ),
    "verify": Case(
        f"5a. verify scan from page cache ({REPLAY_ENTRIES:,} x 200 B WAL)",
        (
            ("ours", "signaldb _native.scan_segment, all segments (= wal verify)"),
            ("raw", "raw read of the same files, 64 KiB reads (info: ceiling)"),
            ("naive", "naive Python WAL scan: struct + zlib.crc32 (info)"),
            ("iter", "signaldb Wal(path).unprocessed() iterator, all entries (info)"),
        ),
        (("ours", 1), ("raw", 1), ("naive", 1), ("iter", 1), ("ours", 2)),
    ),
    "reopen": Case(
        "5b. reopen: Wal(path) + close() in a fresh process",
        (
            ("ours", f"{REPLAY_ENTRIES:,} unprocessed x 200 B"),
            ("ours_2k", f"{REPLAY_ENTRIES // 10:,} unprocessed x 2 KiB, same bytes (info)"),
        ),
        (("ours", 1), ("ours_2k", 1)),
        unit="reopens",
    ),
}


def case_params(case: str):
    import pytest

    return pytest.mark.parametrize(
        ("key", "pass_no"),
        CASES[case].params(),
        ids=[k if p == 1 else f"{k}-pass{p}" for k, p in CASES[case].order],
    )


# -- scratch space on the real disk --------------------------------------------


def bench_root() -> Path:
    root = Path(os.environ.get("SIGNALDB_BENCH_TMP") or REPO / ".bench-tmp")
    root.mkdir(parents=True, exist_ok=True)
    return root


def fs_type(path: str | os.PathLike[str]) -> str:
    """File system type of the mount holding `path` (from /proc/self/mounts)."""
    path = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def make_workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=bench_root()))


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- the engine ------------------------------------------------------------------


def engine():
    """signaldb.wal.Wal, or skip the benchmark when the engine is not built."""
    import pytest

    try:
        from signaldb.wal import Wal

        return Wal
    except Exception as e:  # ImportError, or an incomplete extension
        pytest.skip(f"engine not importable: {type(e).__name__}: {e}")


# -- timing ------------------------------------------------------------------------


def measure(
    benchmark,
    op: Callable[[int], object],
    *,
    case: str,
    key: str,
    pass_no: int = 1,
    entries_per_op: int,
    bytes_per_op: int,
    seconds: float | None = None,
    round_s: float = 0.1,
    min_rounds: int = 5,
    max_rounds: int = 400,
    note: str = "",
) -> None:
    """Times `op(n)` (n operations per call) with fixed-size pedantic rounds.

    A short calibration (which doubles as warm-up) sizes the rounds so that each
    takes about `round_s` and the benchmark about `seconds`. The rate in the
    table is entries_per_round / median round time.
    """
    seconds = CASE_SECONDS if seconds is None else seconds
    started = time.perf_counter()
    n, spent = 1, 0.0
    while True:
        t0 = time.perf_counter()
        op(n)
        dt = time.perf_counter() - t0
        spent += dt
        if dt >= min(0.1, round_s) or spent >= 0.5 or n >= 1 << 22:
            break
        n *= 2
    per_op = max(dt / n, 1e-9)
    n_round = max(1, round(round_s / per_op))
    rounds = int(min(max_rounds, max(min_rounds, round(seconds / (n_round * per_op)))))
    benchmark.extra_info.update(
        case=case,
        key=key,
        pass_no=pass_no,
        ops_per_round=n_round,
        entries_per_round=n_round * entries_per_op,
        bytes_per_round=n_round * bytes_per_op,
        calibrated_ops_per_s=1.0 / per_op,
        note=note,
    )
    benchmark.pedantic(op, args=(n_round,), rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info["wall_s"] = time.perf_counter() - started  # calibration included


class ThreadGang:
    """`nthreads` persistent workers; `gang(n)` makes each run `work(n)` once, all
    released together by a barrier, and returns when the last one is done. Thread
    creation stays out of the timed rounds."""

    def __init__(self, nthreads: int, work: Callable[[int], object]) -> None:
        self._work = work
        self._go = threading.Barrier(nthreads + 1)
        self._done = threading.Barrier(nthreads + 1)
        self._n = 0
        self._stop = False
        self._errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._run, name=f"bench-{i}", daemon=True) for i in range(nthreads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while True:
            self._go.wait()
            if self._stop:
                return
            try:
                self._work(self._n)
            except BaseException as e:  # reported to the caller
                self._errors.append(e)
            self._done.wait()

    def __call__(self, n: int) -> None:
        self._n = n
        self._go.wait()
        self._done.wait()
        if self._errors:
            raise self._errors[0]

    def close(self) -> None:
        self._stop = True
        self._go.wait(timeout=30)
        for t in self._threads:
            t.join(timeout=30)


# -- baselines -----------------------------------------------------------------------
# Every store has append(payload) and append_batch(payloads) that return once the
# data is durable, and close().


class RawFile:
    """os.write + os.fdatasync into one plain, growing file (no preallocation, so
    every sync also writes the inode: the size changed)."""

    def __init__(self, dirpath: Path) -> None:
        self.fd = os.open(dirpath / "raw.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def append(self, payload: bytes) -> None:
        os.write(self.fd, payload)
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


_FRAME = struct.Struct("<II")  # length, zlib.crc32(payload)


class NaiveWal:
    """What a first Python WAL looks like: length + crc32 framing, one growing
    file, write + fdatasync per append (a lock when shared by threads)."""

    def __init__(self, dirpath: Path, locked: bool = False) -> None:
        self.fd = os.open(dirpath / "naive.wal", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.lock = threading.Lock() if locked else None
        self.next_id = 1

    @staticmethod
    def frame(payload: bytes) -> bytes:
        return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload

    def append(self, payload: bytes) -> int:
        rec = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        if self.lock is None:
            os.write(self.fd, rec)
            os.fdatasync(self.fd)
            eid = self.next_id
            self.next_id += 1
            return eid
        with self.lock:
            os.write(self.fd, rec)
            os.fdatasync(self.fd)
            eid = self.next_id
            self.next_id += 1
            return eid

    def append_batch(self, payloads: list[bytes]) -> list[int]:
        data = b"".join([_FRAME.pack(len(p), zlib.crc32(p)) + p for p in payloads])
        os.write(self.fd, data)
        os.fdatasync(self.fd)
        first = self.next_id
        self.next_id += len(payloads)
        return list(range(first, self.next_id))

    def close(self) -> None:
        os.close(self.fd)


def naive_scan(path: Path) -> int:
    """Replays a NaiveWal file: checks every frame; returns the entry count."""
    with open(path, "rb") as f:
        buf = f.read()
    mv = memoryview(buf)
    unpack, crc32, size = _FRAME.unpack_from, zlib.crc32, _FRAME.size
    off, end, count = 0, len(buf), 0
    while off < end:
        length, crc = unpack(buf, off)
        start = off + size
        off = start + length
        if crc32(mv[start:off]) != crc:
            raise ValueError(f"naive WAL: bad crc at {start - size}")
        count += 1
    return count


class SqliteStore:
    """SQLite in WAL mode with synchronous=FULL: the WAL file is synced at every
    commit."""

    def __init__(self, dirpath: Path) -> None:
        self.conn = sqlite3.connect(dirpath / "bench.sqlite", isolation_level=None, check_same_thread=False)
        mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        assert mode == "wal", mode
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE wal (id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, payload BLOB NOT NULL)")
        self.sql = "INSERT INTO wal (kind, payload) VALUES (1, ?)"

    def append(self, payload: bytes) -> None:
        self.conn.execute(self.sql, (payload,))  # autocommit: one transaction

    def append_batch(self, payloads: list[bytes]) -> None:
        c = self.conn
        c.execute("BEGIN")
        c.executemany(self.sql, [(p,) for p in payloads])
        c.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class RocksStore:
    """RocksDB through rocksdict, raw bytes, WriteOptions.sync=True (the WAL is
    fsynced before each write returns). Keys are 8-byte big-endian counters."""

    def __init__(self, dirpath: Path) -> None:
        from rocksdict import Options, Rdict, WriteBatch, WriteOptions

        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self.db = Rdict(str(dirpath / "rocks"), opts)
        self.wo = WriteOptions()
        self.wo.sync = True
        self.WriteBatch = WriteBatch
        self.next_key = 0
        self.lock = threading.Lock()  # only guards the key counter

    def _keys(self, n: int) -> range:
        with self.lock:
            k = self.next_key
            self.next_key += n
        return range(k, k + n)

    def append(self, payload: bytes) -> None:
        (k,) = self._keys(1)
        self.db.put(k.to_bytes(8, "big"), payload, write_opt=self.wo)

    def append_batch(self, payloads: list[bytes]) -> None:
        wb = self.WriteBatch(raw_mode=True)
        for k, p in zip(self._keys(len(payloads)), payloads, strict=True):
            wb.put(k.to_bytes(8, "big"), p)
        self.db.write(wb, write_opt=self.wo)

    def close(self) -> None:
        self.db.close()


def rocksdict_version() -> str:
    try:
        from importlib.metadata import version

        return version("rocksdict")
    except Exception:
        return "?"
