"""Kill -9 at random moments: every acknowledged append survives, byte for byte.

A child (helpers/crash_child.py) appends from four threads and reports each
acknowledged id on stdout. The parent SIGKILLs it after a random delay, reopens
the same directory in-process, and checks every acknowledged entry. Cycles run
against one directory, so each child recovers what the previous one left
(torn tails included) and appends after it.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import HELPERS_DIR, assert_strictly_increasing, scaled
from helpers.crashlib import SEGMENT_SIZE, digest, kind_for, parse_payload, payload_for
from signaldb.wal import Wal

CHILD = HELPERS_DIR / "crash_child.py"


class _Child:
    """The child process plus a thread draining its stdout (so it never blocks on a full pipe)."""

    def __init__(self, wal_dir: pathlib.Path, cycle: int, seed: int, mode: str, ids_file: pathlib.Path | None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS_DIR), env.get("PYTHONPATH")]))
        extra = [str(ids_file)] if ids_file else []
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(wal_dir), str(cycle), str(seed), mode, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.chunks: list[bytes] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            self.chunks.append(chunk)
            self.ready.set()  # "R" is the child's first line

    def kill(self) -> tuple[int, bytes, bytes]:
        self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        assert not self.reader.is_alive(), "stdout reader hung"
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()
        return rc, b"".join(self.chunks), err


def _acks(out: bytes) -> list[tuple[int, int, str]]:
    acks = []
    lines = out.split(b"\n")
    for line in lines[:-1]:  # the last piece is unterminated (or empty): the kill may have cut it
        if line.startswith(b"A "):
            _, seq, eid, dig = line.decode().split()
            acks.append((int(seq), int(eid), dig))
        else:
            assert line == b"R", f"unexpected child output line {line[:200]!r}"
    return acks


def run_crash_cycles(wal_dir: pathlib.Path, cycles: int, mode: str, seed: int, max_delay: float = 0.3) -> dict:
    rng = random.Random(seed)
    known: dict[int, tuple[str, bytes]] = {}  # every entry acknowledged or seen, not yet processed
    processed: set[int] = set()  # marked processed by the parent and closed cleanly
    max_seen = 0
    totals = {"acked": 0, "recovered_unacked": 0, "torn_tails": 0, "cycles_with_acks": 0, "child_processed": 0}
    handed: set[int] = set()  # given to the next child to mark processed
    ids_file = wal_dir.parent / "to-process.txt"

    for cycle in range(cycles):
        ids_file.write_text("".join(f"{i}\n" for i in sorted(handed)))
        child = _Child(wal_dir, cycle, seed * 1000 + cycle, mode, ids_file if handed else None)
        not_ready = False
        try:
            if rng.random() < 0.5:
                # Half the cycles time the kill from the moment the WAL is open,
                # the other half from process start (so some kills hit recovery).
                not_ready = not child.ready.wait(timeout=30)
            if not not_ready:
                time.sleep(rng.uniform(0, max_delay))  # the random kill moment, not synchronization
        finally:
            rc, out, err = child.kill()
        assert not not_ready and rc == -signal.SIGKILL, (
            f"cycle {cycle}: child {'never opened the WAL and ' if not_ready else ''}exited on its own "
            f"(status {rc}) before the kill:\n{err.decode(errors='replace')[-3000:]}"
        )

        acks = _acks(out)
        ids_this_cycle = []
        for seq, eid, dig in acks:
            want = payload_for(cycle, seq)
            assert dig == digest(want), "child and parent disagree on payloads (test bug)"
            assert eid not in known and eid not in processed, f"cycle {cycle}: id {eid} handed out twice"
            assert eid > max_seen, f"cycle {cycle}: id {eid} not above {max_seen}, the highest id of earlier cycles"
            known[eid] = (kind_for(seq), want)
            ids_this_cycle.append(eid)
        assert len(set(ids_this_cycle)) == len(ids_this_cycle), f"cycle {cycle}: duplicate ids acknowledged"
        totals["acked"] += len(acks)
        totals["cycles_with_acks"] += bool(acks)

        with Wal(wal_dir, max_segment_size=SEGMENT_SIZE) as w:
            got = {}
            order = []
            for e in w.unprocessed():
                got[e.id] = (e.kind, e.payload)
                order.append(e.id)
            st = w.stats()
            assert_strictly_increasing(order, f"cycle {cycle}: ids after recovery")

            # The child may or may not have got to the ids it was told to process
            # (and to checkpoint them) before the kill: absent now means processed.
            for i in handed:
                if i not in got:
                    del known[i]
                    processed.add(i)
                    totals["child_processed"] += 1
            missing = sorted(i for i in known if i not in got)
            assert not missing, (
                f"cycle {cycle}: {len(missing)} acknowledged (or previously recovered) entries lost after kill -9, "
                f"e.g. {missing[:10]}; this cycle acked {len(acks)}"
            )
            wrong = sorted(i for i in known if got[i] != known[i])
            assert not wrong, (
                f"cycle {cycle}: {len(wrong)} entries came back with a different payload/kind: {wrong[:10]}"
            )
            back = sorted(i for i in got if i in processed)
            assert not back, f"cycle {cycle}: entries processed before a clean close came back: {back[:10]}"
            for eid in sorted(set(got) - set(known)):
                # Written but killed before the ack reached us: allowed to survive, but must be intact.
                kind, payload = got[eid]
                try:
                    c, s = parse_payload(payload)
                except ValueError:
                    pytest.fail(f"cycle {cycle}: unacknowledged entry {eid} holds garbage {payload[:40]!r}")
                assert c == cycle, f"cycle {cycle}: entry {eid} from cycle {c} appeared only now"
                assert (kind, payload) == (kind_for(s), payload_for(c, s)), f"cycle {cycle}: entry {eid} is garbled"
                assert eid > max_seen
                known[eid] = (kind, payload)
                totals["recovered_unacked"] += 1
            assert st["corrupt_entries"] == 0, (
                f"cycle {cycle}: a crash left 'corruption' (a torn tail was not truncated before appending?): {st}"
            )
            assert st["poisoned"] is False
            totals["torn_tails"] += st["torn_tails_truncated"]
            if got:
                max_seen = max(max_seen, max(got))
            assert st["next_id"] > max_seen

            # Process a random part of the backlog (mostly old entries), so segments
            # get deleted between crashes and the directory stays small; hand
            # another part to the next child, which processes it while appending.
            ids = sorted(known)
            cut = int(len(ids) * rng.uniform(0.2, 0.6))
            done = ids[:cut] + [i for i in ids[cut:] if rng.random() < 0.1]
            w.mark_processed(done)
            for i in done:
                del known[i]
                processed.add(i)
            rest = sorted(known)
            handed = set(rest[: int(len(rest) * rng.uniform(0.2, 0.8))])

    # Everything still known is there after one last clean reopen.
    with Wal(wal_dir, max_segment_size=SEGMENT_SIZE) as w:
        got = {e.id: (e.kind, e.payload) for e in w.unprocessed()}
    assert {i: got.get(i) for i in known} == known
    assert not set(got) & processed
    return totals


def test_kill9_loses_no_acknowledged_append(wal_dir):
    cycles = 50
    totals = run_crash_cycles(wal_dir, cycles, "immediate", seed=20261123)
    # The test means something only if the kills actually landed among appends.
    assert totals["cycles_with_acks"] >= cycles // 3, totals
    assert totals["acked"] >= 20 * cycles, totals


def test_kill9_batched_mode_keeps_written_appends(wal_dir):
    """In batched mode an ack follows write(): the page cache survives a process kill."""
    cycles = 15
    totals = run_crash_cycles(wal_dir, cycles, "batched", seed=424242)
    assert totals["cycles_with_acks"] >= cycles // 3, totals


@pytest.mark.stress
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("mode", ["immediate", "batched"])
def test_stress_kill9(wal_dir, mode):
    cycles = scaled(50, 200)
    totals = run_crash_cycles(wal_dir, cycles, mode, seed=99 + len(mode))
    assert totals["cycles_with_acks"] >= cycles // 3, totals


@pytest.mark.stress
@pytest.mark.timeout(3600)
def test_stress_kill9_long_delays(wal_dir):
    """Longer runs between kills: more rotations and deletions before each crash."""
    cycles = scaled(20, 100)
    run_crash_cycles(wal_dir, cycles, "immediate", seed=7, max_delay=2.0)
