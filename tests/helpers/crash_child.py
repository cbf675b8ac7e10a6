"""Appends to a WAL until killed, reporting each acknowledged append on stdout.

usage: crash_child.py WAL_DIR CYCLE SEED SYNC_MODE [IDS_FILE]

stdout lines (each written only after the call that produced it returned):
  R                      the WAL is open
  A <seq> <id> <digest>  payload_for(CYCLE, seq) was acknowledged under <id>
Three worker threads and the main thread append at once (single appends and
batches), so a kill lands during group commits, rotations and batch writes.
With IDS_FILE (one id per line), one more thread marks those ids processed in
small chunks, flushing after each, so kills also land during checkpoints and
segment deletions.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import threading

from crashlib import SEGMENT_SIZE, digest, kind_for, payload_for

from signaldb.wal import Wal

_out_lock = threading.Lock()
_seq = itertools.count()
_seq_lock = threading.Lock()


def emit(text: str) -> None:
    data = text.encode()
    with _out_lock:
        while data:
            n = os.write(1, data)
            data = data[n:]


def next_seqs(n: int) -> list[int]:
    with _seq_lock:
        return [next(_seq) for _ in range(n)]


def worker(wal: Wal, cycle: int, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        r = rng.random()
        if r < 0.6:
            (seq,) = next_seqs(1)
            p = payload_for(cycle, seq)
            eid = wal.append(p, kind=kind_for(seq))
            emit(f"A {seq} {eid} {digest(p)}\n")
        else:
            # A batch shares one kind: use seqs of the same kind class.
            n = rng.randint(2, 12)
            seqs = [s for s in next_seqs(3 * n) if s % 3 == 0][:n]
            # seqs not used are simply never written (gaps in seq are fine).
            ps = [payload_for(cycle, s) for s in seqs]
            ids = wal.append_batch(ps, kind=kind_for(0))
            emit("".join(f"A {s} {i} {digest(p)}\n" for s, i, p in zip(seqs, ids, ps, strict=True)))


def processor(wal: Wal, ids: list[int], seed: int) -> None:
    rng = random.Random(seed)
    i = 0
    while i < len(ids):
        n = rng.randint(1, 40)
        wal.mark_processed(ids[i : i + n])
        wal.flush()
        i += n


def main() -> None:
    wal_dir, cycle, seed, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ids = []
    if len(sys.argv) > 5:
        with open(sys.argv[5]) as f:
            ids = [int(line) for line in f if line.strip()]
    wal = Wal(wal_dir, max_segment_size=SEGMENT_SIZE, sync_mode=mode)
    emit("R\n")
    if ids:
        threading.Thread(target=processor, args=(wal, ids, seed), daemon=True).start()
    for t in range(3):
        threading.Thread(target=worker, args=(wal, cycle, seed * 100 + t + 1), daemon=True).start()
    worker(wal, cycle, seed * 100)


if __name__ == "__main__":
    main()
