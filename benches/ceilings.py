#!/usr/bin/env python3
"""What this machine allows for goals 1 and 2b.

    .venv/bin/python benches/ceilings.py            # three alternating rounds

Goal 1 (single producer / RocksDB sync >= 1.3x): the cheapest durable 200 B
append there is, `os.pwrite` of a 216 B record into a zero-filled, fsynced
file + `os.fdatasync` (no engine at all), against RocksDB `put(sync=True)` in
the same round. The engine cannot beat that first figure, so `raw/rocks` is
goal 1's ceiling.

Goal 2b (64 threads immediate / the same threads batched >= 0.9x): in
`immediate` mode every call waits for an fdatasync, so every call puts its
thread to sleep and wakes it again, and the thread takes the GIL back from
another one; `batched` calls return at once and a thread keeps the GIL for
many calls in a row. The script measures the process's CPU time per append
in both modes (64 threads, our engine) and the cores that 0.9x the batched
rate would need at the immediate CPU cost: above the machine's cores, the
goal is out of reach whatever the disk does; below, the limit is the latency
of those wake-ups and GIL hand-offs, not the CPU. Speed never fails this
script.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchlib import THREADS, RocksStore, ThreadGang, bench_root  # noqa: E402

SECONDS = 1.5
RECORD = os.urandom(216)  # 200 B payload + our 16 B header


def raw_prealloc(root: Path) -> float:
    fd = os.open(root / "raw.bin", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"\0" * (16 << 20), 0)
        os.fsync(fd)
        n, off, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < SECONDS:
            os.pwrite(fd, RECORD, off)
            os.fdatasync(fd)
            off += len(RECORD)
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        os.close(fd)


def rocks(root: Path) -> float:
    store = RocksStore(root)
    try:
        payload, n, t0 = RECORD[:200], 0, time.perf_counter()
        while time.perf_counter() - t0 < SECONDS:
            store.append(payload)
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        store.close()


def threads_cpu(root: Path, mode: str) -> tuple[float, float]:
    """64 threads appending 200 B in `mode`: (entries/s, process CPU us per entry)."""
    from signaldb.wal import Wal

    wal = Wal(root / f"wal-{mode}", sync_mode=mode)
    append, payload = wal.append, RECORD[:200]

    def work(n: int) -> None:
        for _ in range(n):
            append(payload)

    gang = ThreadGang(THREADS, work)
    try:
        gang(20)
        r0, t0, n = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
        while time.perf_counter() - t0 < SECONDS:
            gang(20)
            n += 20 * THREADS
        dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
        return n / dt, cpu / n * 1e6
    finally:
        gang.close()
        wal.close()


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    for i in range(3):
        root = Path(tempfile.mkdtemp(prefix="ceilings-", dir=bench_root()))
        try:
            a = raw_prealloc(root)
            b = rocks(root)
            imm, imm_cpu = threads_cpu(root, "immediate")
            bat, bat_cpu = threads_cpu(root, "batched")
        finally:
            shutil.rmtree(root, ignore_errors=True)
        need = 0.9 * bat * imm_cpu / 1e6
        print(
            f"round {i + 1}: goal 1 ceiling: raw pwrite+fdatasync (zero-filled) {a:,.0f}/s"
            f" / RocksDB put sync {b:,.0f}/s = {a / b:.2f}x\n"
            f"  goal 2b: immediate {imm:,.0f}/s at {imm_cpu:.1f} us CPU/entry, batched {bat:,.0f}/s at"
            f" {bat_cpu:.1f} us; 0.9x batched at the immediate cost needs {need:.2f} cores of {cores}",
            flush=True,
        )


if __name__ == "__main__":
    main()
