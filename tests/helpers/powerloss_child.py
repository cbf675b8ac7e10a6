"""Appends to a WAL on a SyncFS mount until killed, reporting acknowledgements on stdout.

usage: powerloss_child.py WAL_DIR CYCLE SEED MODE PROCESS_UPTO
       powerloss_child.py --unsynced-writes WAL_DIR N   (see unsynced_writes)

MODE is the WAL's sync_mode ("immediate" or "batched"). stdout lines, each
written only after the call it reports returned:

  R             the WAL is open (recovery done)
  A <seq> <id> <k>  payload_for(CYCLE, seq) was acknowledged under <id>, kind KINDS[k]
  F <id>        (batched) flush() returned after every append up to <id> was acknowledged
  P <x>         every entry with id <= x is marked processed and flush() returned
                (PROCESS_UPTO > 0 only: exercises checkpoints and segment deletion)

Three worker threads and the main thread append at once (single appends and
batches), so the power can go during group commits, rotations and batch writes.
The parent recomputes each payload from (CYCLE, seq) alone.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import threading

KINDS = ("traces", "logs", "metrics")
SEGMENT_SIZE = 64 * 1024
# Payload sizes in bytes and their weights: mostly small, a few larger than a segment.
SIZES = (0, 10, 100, 600, 3000, 20_000, 70_000)
WEIGHTS = (4, 25, 35, 20, 10, 5, 1)
MARKER_CYCLE = 0  # cycle number of the entries the test process itself appends


def payload_for(cycle: int, seq: int) -> bytes:
    rng = random.Random(f"powerloss/{cycle}/{seq}")
    n = rng.choices(SIZES, WEIGHTS)[0]
    return f"{cycle}:{seq}:".encode() + rng.randbytes(n)


def parse_payload(payload: bytes) -> tuple[int, int]:
    """(cycle, seq) from a payload's prefix; raises ValueError on garbage."""
    cycle, seq, _ = payload.split(b":", 2)
    return int(cycle), int(seq)


_out_lock = threading.Lock()
_seq = itertools.count()
_state_lock = threading.Lock()
_max_acked = 0


def emit(text: str) -> None:
    data = text.encode()
    with _out_lock:
        while data:
            data = data[os.write(1, data) :]


def acked(lines: list[tuple[int, int, int]]) -> None:
    global _max_acked
    with _state_lock:
        _max_acked = max([_max_acked] + [eid for _s, eid, _k in lines])
    emit("".join(f"A {s} {eid} {k}\n" for s, eid, k in lines))


def worker(wal, cycle: int, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        k = rng.randrange(3)
        if rng.random() < 0.7:
            seq = next(_seq)
            eid = wal.append(payload_for(cycle, seq), kind=KINDS[k])
            acked([(seq, eid, k)])
        else:
            seqs = [next(_seq) for _ in range(rng.randint(2, 12))]
            ids = wal.append_batch([payload_for(cycle, s) for s in seqs], kind=KINDS[k])
            acked([(s, eid, k) for s, eid in zip(seqs, ids, strict=True)])


def flusher(wal, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        with _state_lock:
            upto = _max_acked
        wal.flush()
        emit(f"F {upto}\n")
        threading.Event().wait(rng.uniform(0, 0.03))


def processor(wal, upto: int, seed: int) -> None:
    threading.Event().wait(random.Random(seed).uniform(0, 0.05))
    ids = []
    for e in wal.unprocessed():
        if e.id > upto:
            break
        ids.append(e.id)
    wal.mark_processed(ids)
    wal.flush()
    emit(f"P {upto}\n")


def unsynced_writes(wal_dir: str, n: int) -> None:
    """Scripted variant (usage: powerloss_child.py --unsynced-writes WAL_DIR N).

    Batched mode, no automatic sync: appends payload_for(1, 0) and flushes it,
    then appends payload_for(1, 1..N) one by one (one write each, none synced),
    reporting each as above, prints "W" and waits to be killed.
    """
    from signaldb.wal import Wal

    wal = Wal(
        wal_dir,
        max_segment_size=SEGMENT_SIZE,
        sync_mode="batched",
        max_buffer_entries=100_000,
        flush_interval_secs=3600.0,
    )
    emit("R\n")
    acked([(0, wal.append(payload_for(1, 0), kind=KINDS[0]), 0)])
    wal.flush()
    emit(f"F {_max_acked}\n")
    for seq in range(1, n + 1):
        acked([(seq, wal.append(payload_for(1, seq), kind=KINDS[0]), 0)])
    emit("W\n")
    threading.Event().wait()


def main() -> None:
    if sys.argv[1] == "--unsynced-writes":
        unsynced_writes(sys.argv[2], int(sys.argv[3]))
        return
    from signaldb.wal import Wal

    wal_dir, cycle, seed, mode, upto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    wal = Wal(
        wal_dir, max_segment_size=SEGMENT_SIZE, sync_mode=mode, max_buffer_entries=64 if mode == "batched" else 1000
    )
    emit("R\n")
    threads = [threading.Thread(target=worker, args=(wal, cycle, seed * 100 + t + 1), daemon=True) for t in range(3)]
    if mode == "batched":
        threads.append(threading.Thread(target=flusher, args=(wal, seed * 100 + 50), daemon=True))
    if upto > 0:
        threads.append(threading.Thread(target=processor, args=(wal, upto, seed * 100 + 60), daemon=True))
    for t in threads:
        t.start()
    worker(wal, cycle, seed * 100)


if __name__ == "__main__":
    main()
