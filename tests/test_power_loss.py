"""Power-loss tests: the WAL on SyncFS, a filesystem that forgets what was not fsynced.

A SIGKILL leaves the page cache intact, so kill tests (test_wal_crash.py)
cannot catch a missing or misplaced fsync. Here the WAL lives on SyncFS
(tests/powerloss/syncfs.py, a FUSE filesystem): writes stay volatile until
fsync/fdatasync of the file, directory entries until fsync of the directory,
and a "power cut" drops everything volatile, optionally tearing the last
unsynced write at a random byte.

* Unit tests of SyncFS itself: it drops what it must, keeps what it must.
* The power-loss test: a child appends through the WAL and reports every
  acknowledged id; the test SIGKILLs it at a random point, cuts the power,
  reopens the WAL and checks that every acknowledged entry is there,
  byte-identical, that nothing else is garbage or duplicated, and that appends
  continue with higher ids. 40 cycles normally, 200 under `make stress`.
* The negative control: the same child with fsync disabled (Debian's
  libeatmydata via LD_PRELOAD) must lose acknowledged entries in a power cut,
  and must not in a mere SIGKILL: proof that this harness can fail.
* A scripted case (a lost unsynced write followed by a kept one) pinning a
  bug the random cycles found (fixed in 34be8b9).

SIGNALDB_POWERLOSS_SEED=N repeats a run's random choices (not its timing);
SIGNALDB_POWERLOSS_MODES=immediate leaves out the batched-mode cycles.

Needs root, /dev/fuse, fusermount3 (Debian fuse3), mfusepy (PyPI) and, for the
negative control, Debian's eatmydata. If one is missing the tests fail (never
skip) and say what to install.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import math
import os
import pathlib
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from conftest import FLAG_RECYCLED, FLAG_SPARE, HELPERS_DIR, MAGIC, crc32c, parse_segment_file
from helpers.powerloss_child import KINDS, MARKER_CYCLE, SEGMENT_SIZE, parse_payload, payload_for
from powerloss import SyncFsMount, eatmydata_library, fuse_problems

CHILD = HELPERS_DIR / "powerloss_child.py"
BASE_SEED = int(os.environ.get("SIGNALDB_POWERLOSS_SEED", str(time.time_ns() % 1_000_000)))
# Which sync modes the random cycles use (a quarter batched by default); e.g. "immediate" to bisect.
MODES = os.environ.get("SIGNALDB_POWERLOSS_MODES", "immediate,batched").split(",")


# -- fixtures and small helpers ------------------------------------------------


def _require_fuse() -> None:
    problems = fuse_problems()
    if problems:
        pytest.fail("power-loss tests need FUSE: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def syncfs(tmp_path: pathlib.Path) -> Iterator[SyncFsMount]:
    """A fresh SyncFS mounted at tmp_path/mnt for one test."""
    _require_fuse()
    fs = SyncFsMount(tmp_path / "mnt", tmp_path / "syncfs.log").start()
    try:
        yield fs
    finally:
        fs.stop()


def fsync_path(path: os.PathLike[str] | str) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: pathlib.Path, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def durable_dir(fs: SyncFsMount, name: str) -> pathlib.Path:
    """A directory that survives power cuts (created, then its parent fsynced)."""
    d = fs.path / name
    d.mkdir()
    fsync_path(fs.path)
    return d


# -- SyncFS itself ---------------------------------------------------------------


def test_fuse_is_available() -> None:
    """Says plainly what is missing, instead of failing deep inside a mount."""
    assert fuse_problems() == [], "power-loss tests need FUSE: " + "; ".join(fuse_problems())


def test_unsynced_file_data_is_dropped_and_synced_data_kept(syncfs: SyncFsMount) -> None:
    d = durable_dir(syncfs, "d")
    f, g = d / "f", d / "g"
    write_file(f, b"A" * 100, sync=True)
    write_file(g, b"G" * 10, sync=False)
    fsync_path(d)
    fd = os.open(f, os.O_RDWR)
    os.pwrite(fd, b"C", 0)  # overwrite, unsynced
    os.pwrite(fd, b"B" * 50, 100)  # grow, unsynced
    os.close(fd)
    assert f.read_bytes() == b"C" + b"A" * 99 + b"B" * 50  # visible before the cut

    report = syncfs.power_cut(tear=False)
    assert f.read_bytes() == b"A" * 100 and f.stat().st_size == 100
    assert g.exists() and g.read_bytes() == b"", "a durable name whose data was never synced comes back empty"
    assert report["files_reverted"] == 2 and report["torn"] is None

    fd = os.open(f, os.O_RDWR)
    os.pwrite(fd, b"D" * 20, 100)
    os.fdatasync(fd)  # fdatasync counts like fsync: data and size
    os.ftruncate(fd, 10)  # unsynced shrink
    os.close(fd)
    syncfs.power_cut(tear=False)
    assert f.read_bytes() == b"A" * 100 + b"D" * 20


def test_unsynced_new_file_entry_is_dropped(syncfs: SyncFsMount) -> None:
    d = durable_dir(syncfs, "d")
    write_file(d / "new", b"data", sync=True)  # the file's data is synced, its name is not
    (d / "sub").mkdir()  # nor is this directory's
    syncfs.power_cut(tear=False)
    assert sorted(os.listdir(d)) == [], "new names vanish unless their directory is fsynced"

    write_file(d / "new", b"data", sync=True)
    fsync_path(d)
    syncfs.power_cut(tear=False)
    assert os.listdir(d) == ["new"] and (d / "new").read_bytes() == b"data"

    # A directory whose own entry is durable but which was never fsynced comes back empty.
    (d / "sub").mkdir()
    fsync_path(d)
    write_file(d / "sub" / "x", b"x", sync=True)
    syncfs.power_cut(tear=False)
    assert (d / "sub").is_dir() and os.listdir(d / "sub") == []

    # The WAL's own parent: a directory created in the root needs the root fsynced.
    (syncfs.path / "nodurable").mkdir()
    syncfs.power_cut(tear=False)
    assert not (syncfs.path / "nodurable").exists()


def test_rename_without_directory_fsync_reverts(syncfs: SyncFsMount) -> None:
    d = durable_dir(syncfs, "d")
    write_file(d / "a", b"old-a", sync=True)
    write_file(d / "target", b"old-target", sync=True)
    fsync_path(d)

    os.rename(d / "a", d / "b")
    os.rename(d / "target", d / "c")
    write_file(d / ".tmp", b"new-target", sync=True)
    os.rename(d / ".tmp", d / "c")  # replaces, like metadata.json's atomic rewrite
    assert sorted(os.listdir(d)) == ["b", "c"]
    syncfs.power_cut(tear=False)
    assert sorted(os.listdir(d)) == ["a", "target"]
    assert (d / "a").read_bytes() == b"old-a" and (d / "target").read_bytes() == b"old-target"

    os.rename(d / "a", d / "b")
    fsync_path(d)
    syncfs.power_cut(tear=False)
    assert sorted(os.listdir(d)) == ["b", "target"] and (d / "b").read_bytes() == b"old-a"


def test_unlink_without_directory_fsync_comes_back(syncfs: SyncFsMount) -> None:
    d = durable_dir(syncfs, "d")
    write_file(d / "f", b"keep", sync=True)
    fsync_path(d)
    fd = os.open(d / "f", os.O_RDWR)
    os.unlink(d / "f")
    assert not (d / "f").exists()
    os.pwrite(fd, b"KEEP", 0)  # still writable through the open handle
    os.fsync(fd)  # ... and syncable: its data is durable, its unlink is not
    assert os.pread(fd, 10, 0) == b"KEEP"
    os.close(fd)
    syncfs.power_cut(tear=False)
    assert (d / "f").read_bytes() == b"KEEP"

    os.unlink(d / "f")
    fsync_path(d)
    syncfs.power_cut(tear=False)
    assert not (d / "f").exists()


def test_torn_write_keeps_a_prefix_of_the_last_unsynced_write(syncfs: SyncFsMount) -> None:
    d = durable_dir(syncfs, "d")
    pattern = bytes(range(1, 201)) * 5  # 1000 bytes, no zero byte
    kept = set()
    for seed in range(12):
        write_file(d / "f", bytes(4096), sync=True)  # preallocated zeros, like a WAL segment
        write_file(d / "other", b"x", sync=True)
        fsync_path(d)
        fd = os.open(d / "other", os.O_RDWR)
        os.pwrite(fd, b"EARLIER", 0)  # an earlier unsynced write: dropped whole
        os.close(fd)
        fd = os.open(d / "f", os.O_RDWR)
        os.pwrite(fd, pattern, 100)  # the last unsynced write: torn
        os.close(fd)
        report = syncfs.power_cut(tear=True, seed=BASE_SEED + seed)
        torn = report["torn"]
        assert torn is not None and torn["offset"] == 100 and torn["length"] == len(pattern)
        k = torn["kept"]
        data = (d / "f").read_bytes()
        assert len(data) == 4096
        assert data[100 : 100 + k] == pattern[:k], "the torn write keeps exactly a prefix"
        assert data[:100] == bytes(100) and data[100 + k :] == bytes(4096 - 100 - k)
        assert (d / "other").read_bytes() == b"x"
        kept.add(k)
    assert len(kept) >= 3, f"tears should land at varied bytes, got {sorted(kept)}"

    # A torn write that extended the file extends it only by the kept prefix.
    write_file(d / "g", b"", sync=True)
    fsync_path(d)
    fd = os.open(d / "g", os.O_WRONLY | os.O_APPEND)
    os.write(fd, pattern)
    os.close(fd)
    k = syncfs.power_cut(tear=True, seed=BASE_SEED)["torn"]["kept"]
    assert (d / "g").read_bytes() == pattern[:k]


def test_the_operations_the_wal_uses_work(syncfs: SyncFsMount) -> None:
    d = durable_dir(syncfs, "ops")
    f = d / "f"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o600)
    # flock is handled by the kernel: a second open file description conflicts.
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fd2 = os.open(f, os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd2)
    # permissions
    os.chmod(d, 0o700)
    os.chmod(f, 0o600)
    assert d.stat().st_mode & 0o777 == 0o700 and f.stat().st_mode & 0o777 == 0o600
    # pwrite beyond the end, ftruncate both ways, posix_fallocate, pwritev
    os.pwrite(fd, b"xy", 10)
    assert os.pread(fd, 100, 0) == bytes(10) + b"xy"
    os.ftruncate(fd, 4)
    os.ftruncate(fd, 8)
    assert os.pread(fd, 100, 0) == bytes(8)
    os.posix_fallocate(fd, 0, 64)
    assert os.fstat(fd).st_size == 64
    assert os.pwritev(fd, [b"ab", b"cd"], 2) == 4
    assert os.pread(fd, 6, 0) == b"\0\0abcd"
    os.close(fd)
    # O_APPEND
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"END")
    os.close(fd)
    assert f.read_bytes()[-3:] == b"END" and f.stat().st_size == 67

    # The WAL opens, appends, closes and reopens on it; its directory lock works.
    from signaldb.wal import Wal, WalError

    wal_dir = syncfs.path / "wal"
    with Wal(wal_dir, max_segment_size=SEGMENT_SIZE) as w:
        ids = [w.append(payload_for(1, s), kind="logs") for s in range(40)]
        with pytest.raises(WalError, match="in use"):
            Wal(wal_dir, max_segment_size=SEGMENT_SIZE)
    assert oct(wal_dir.stat().st_mode & 0o777) == oct(0o700)
    with Wal(wal_dir, max_segment_size=SEGMENT_SIZE) as w:
        got = [(e.id, e.payload) for e in w.unprocessed()]
    assert got == [(i, payload_for(1, s)) for i, s in zip(ids, range(40), strict=True)]
    syncfs.power_cut(tear=True, seed=BASE_SEED)  # everything was acknowledged: nothing lost
    with Wal(wal_dir, max_segment_size=SEGMENT_SIZE) as w:
        assert [e.id for e in w.unprocessed()] == ids


def test_handles_from_before_a_power_cut_are_dead(syncfs: SyncFsMount) -> None:
    d = durable_dir(syncfs, "d")
    write_file(d / "f", b"x", sync=True)
    fsync_path(d)
    fd = os.open(d / "f", os.O_RDWR)
    try:
        syncfs.power_cut(tear=False)
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"late", 0)
        assert e.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert (d / "f").read_bytes() == b"x"


def test_a_write_error_under_an_open_wal_is_walpoisonederror_sync_and_async(syncfs: SyncFsMount) -> None:
    """A power cut kills the open WAL's file handles: its next write fails with EIO and
    poisons it (fail-stop). The async waiter and later blocking appends get
    WalPoisonedError: typed by the engine error's kind, not read from its message."""
    import asyncio

    from signaldb.wal import Wal, WalError, WalPoisonedError

    w = Wal(syncfs.path / "wal", max_segment_size=SEGMENT_SIZE)
    try:
        w.append(b"before the cut")
        syncfs.power_cut(tear=False)
        with pytest.raises(WalPoisonedError):
            asyncio.run(asyncio.wait_for(w.append_async(b"async, after the cut"), timeout=30))
        with pytest.raises(WalPoisonedError):
            w.append(b"blocking, after the cut")
        s = w.stats()
        assert s.poisoned and s.poisoned_reason, s
    finally:
        with contextlib.suppress(WalError):
            w.close()


# -- the WAL under power cuts ------------------------------------------------------


@dataclass
class ChildRun:
    """One appender child, from spawn to SIGKILL, and what it reported."""

    acks: list[tuple[int, int, int]] = field(default_factory=list)  # (seq, id, kind index)
    flushed_upto: int = 0  # batched mode: acknowledged ids <= this were flushed
    processed_upto: int = 0  # "P x": ids <= x processed, checkpoint durable
    ready: bool = False
    exited_by_itself: int | None = None
    stderr: str = ""
    plan: str = ""
    target_acks: int | None = None
    acks_seen: int = 0  # A lines read so far, while the child runs


def run_child(
    wal_dir: pathlib.Path,
    cycle: int,
    seed: int,
    mode: str,
    process_upto: int,
    rng: random.Random,
    log_dir: pathlib.Path,
    env_extra: dict[str, str] | None = None,
    min_acks: int | None = None,
) -> ChildRun:
    """Starts the appender, SIGKILLs it at a random point (or after `min_acks` acks), returns its report."""
    env = dict(os.environ, **(env_extra or {}))
    err_path = log_dir / f"child-{cycle}.stderr"
    run = ChildRun()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(wal_dir), str(cycle), str(seed), mode, str(process_upto)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    lines: list[bytes] = []
    cond = threading.Condition()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with cond:
                lines.append(line)
                run.acks_seen += line.startswith(b"A ")
                cond.notify_all()
        with cond:
            lines.append(b"")  # EOF
            cond.notify_all()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        _wait_and_kill(proc, lines, cond, run, rng, min_acks)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        t.join(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    run.stderr = err_path.read_text(errors="replace")[-3000:]
    for ln in lines:
        if not ln.endswith(b"\n"):
            continue  # the last line may be cut by the kill: not reported, not counted
        parts = ln.split()
        if parts[0] == b"R":
            run.ready = True
        elif parts[0] == b"A":
            run.acks.append((int(parts[1]), int(parts[2]), int(parts[3])))
        elif parts[0] == b"F":
            run.flushed_upto = max(run.flushed_upto, int(parts[1]))
        elif parts[0] == b"P":
            run.processed_upto = max(run.processed_upto, int(parts[1]))
    if run.exited_by_itself is not None:
        raise AssertionError(f"the appender exited by itself with {run.exited_by_itself}:\n{run.stderr}")
    if run.target_acks is not None and len(run.acks) < run.target_acks:
        raise AssertionError(f"the appender stopped before {run.target_acks} acks (plan: {run.plan}):\n{run.stderr}")
    return run


def _wait_and_kill(
    proc: subprocess.Popen[bytes],
    lines: list[bytes],
    cond: threading.Condition,
    run: ChildRun,
    rng: random.Random,
    min_acks: int | None,
) -> None:
    """Waits for the kill point the plan draws, then SIGKILLs the child."""

    def eof() -> bool:
        return bool(lines) and lines[-1] == b""

    if min_acks is not None:
        target_acks, delay, early = min_acks, 0.0, None
    elif rng.random() < 0.12:  # sometimes during start-up and recovery
        target_acks, delay, early = None, 0.0, rng.uniform(0.0, 0.6)
    else:  # log-uniform: many cuts soon after open, some after hundreds of appends
        target_acks, delay, early = int(math.exp(rng.uniform(0, math.log(400)))), rng.uniform(0, 0.01), None
    run.target_acks = target_acks
    run.plan = (
        f"kill after {early:.3f}s" if early is not None else f"kill after {target_acks} acks + {delay * 1000:.1f}ms"
    )
    with cond:
        if early is not None:
            cond.wait_for(eof, timeout=early)
        else:
            cond.wait_for(lambda: run.acks_seen >= target_acks or eof(), timeout=60)
    if delay:
        time.sleep(delay)
    run.exited_by_itself = proc.poll()
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@dataclass
class Ledger:
    """What the WAL must hold after a power cut, from every acknowledgement so far."""

    must_survive: dict[int, tuple[int, int, str]] = field(default_factory=dict)  # id -> (cycle, seq, kind)
    max_durable_id: int = 0  # highest id acknowledged as durable (immediate, or flushed when batched)
    max_acked_id: int = 0  # any acknowledgement, durable or not (batched)
    reused_batched_ids: list[str] = field(default_factory=list)  # see check_wal
    process_requested: int = 0  # ids <= this may be gone: a child was asked to process them
    process_confirmed: int = 0  # ids <= this are processed durably: they must not come back
    markers: int = 0

    def add_child(self, cycle: int, mode: str, run: ChildRun) -> None:
        for seq, eid, k in run.acks:
            self.max_acked_id = max(self.max_acked_id, eid)
            if mode == "immediate" or eid <= run.flushed_upto:
                self.must_survive[eid] = (cycle, seq, KINDS[k])
                self.max_durable_id = max(self.max_durable_id, eid)
        if run.processed_upto:
            self.process_confirmed = max(self.process_confirmed, run.processed_upto)
            self.must_survive = {i: v for i, v in self.must_survive.items() if i > self.process_confirmed}


@dataclass
class CheckResult:
    problems: list[str]
    ids: list[int]
    stats: dict[str, object]
    marker_id: int | None = None


def check_wal(wal_dir: pathlib.Path, ledger: Ledger, append_marker: bool) -> CheckResult:
    """Opens the WAL as the next process would and checks it against the ledger.

    Returns problems instead of asserting, so the negative control can use the
    very same check and require that it finds something.
    """
    from signaldb.wal import Wal

    problems: list[str] = []
    try:
        w = Wal(wal_dir, max_segment_size=SEGMENT_SIZE)
    except Exception as e:  # the WAL must always open after a power cut
        return CheckResult([f"the WAL failed to open after the power cut: {e!r}"], [], {})
    marker_id = None
    try:
        entries = [(e.id, e.kind, e.payload) for e in w.unprocessed()]
        ids = [e[0] for e in entries]
        bad_order = [(a, b) for a, b in itertools.pairwise(ids) if b <= a]
        if bad_order:
            problems.append(f"ids not strictly increasing: {bad_order[:5]}")
        by_id = {}
        seen: dict[tuple[int, int], int] = {}
        for eid, kind, payload in entries:
            try:
                cycle, seq = parse_payload(payload)
            except ValueError:
                problems.append(f"entry {eid} is garbage: {payload[:40]!r}")
                continue
            if payload != payload_for(cycle, seq):
                problems.append(f"entry {eid} (cycle {cycle} seq {seq}) is not byte-identical to what was appended")
            if (cycle, seq) in seen:
                problems.append(f"entry cycle {cycle} seq {seq} appears twice, as {seen[(cycle, seq)]} and {eid}")
            seen[(cycle, seq)] = eid
            by_id[eid] = (cycle, seq, kind)
        missing = []
        for eid, want in sorted(ledger.must_survive.items()):
            if eid <= ledger.process_requested:
                continue  # a child may have processed it before the power went
            got = by_id.get(eid)
            if got is None:
                missing.append(eid)
            elif got != want:
                problems.append(f"acknowledged id {eid} should be cycle/seq/kind {want}, the WAL has {got}")
        if missing:
            c, s, _k = ledger.must_survive[missing[0]]
            problems.append(
                f"{len(missing)} acknowledged entries are missing, ids {missing[:10]}"
                f"{'...' if len(missing) > 10 else ''} (first: cycle {c} seq {s})"
            )
        back = [i for i in ids if i <= ledger.process_confirmed]
        if back:
            problems.append(f"entries processed before a durable checkpoint came back: {back[:10]}")
        stats = w.stats()
        if stats.get("poisoned"):
            problems.append(f"the recovered WAL is poisoned: {stats.get('poisoned_reason')}")
        if append_marker and not problems:
            ledger.markers += 1
            payload = payload_for(MARKER_CYCLE, ledger.markers)
            marker_id = w.append(payload, kind="metrics")
            highest = max([ledger.max_durable_id, *ids])
            if marker_id <= highest:
                problems.append(f"after recovery an append got id {marker_id}, not above {highest}")
            elif marker_id <= ledger.max_acked_id:
                # Batched mode acknowledges before fsync (documented), so such an entry may be
                # lost; its id is then handed out again. Not a lost promise, but the id of an
                # entry that readers may have seen now names another entry: reported, not failed.
                ledger.reused_batched_ids.append(
                    f"id {marker_id} handed out again after a power cut (batched acks reached {ledger.max_acked_id})"
                )
            ledger.must_survive[marker_id] = (MARKER_CYCLE, ledger.markers, "metrics")
            ledger.max_durable_id = max(ledger.max_durable_id, marker_id)
            ledger.max_acked_id = max(ledger.max_acked_id, marker_id)
            ids.append(marker_id)
    finally:
        w.close()
    return CheckResult(problems, ids, stats, marker_id)


def preserve(wal_dir: pathlib.Path, dest: pathlib.Path) -> str:
    """Copies the WAL as it is after the cut, for the bug report."""
    try:
        shutil.copytree(wal_dir, dest, dirs_exist_ok=True)
        return str(dest)
    except OSError as e:
        return f"(could not copy the WAL: {e})"


@pytest.mark.parametrize(
    "cycles",
    [
        pytest.param(40, id="40-cycles"),
        pytest.param(200, id="stress-200-cycles", marks=[pytest.mark.stress, pytest.mark.timeout(3600)]),
    ],
)
def test_power_loss_keeps_every_acknowledged_entry(cycles: int, syncfs: SyncFsMount, tmp_path: pathlib.Path) -> None:
    rng = random.Random(BASE_SEED)
    wal_dir = syncfs.path / "wal"
    ledger = Ledger()
    torn = reverted = torn_tails = recovery_cuts = corrupt = recycled_seen = 0
    history: list[str] = []
    for cycle in range(1, cycles + 1):
        mode = "batched" if rng.random() < 0.25 else "immediate"
        mode = mode if mode in MODES else MODES[0]
        tear = rng.random() < 0.8
        # Now and then let the child process (and so delete) everything verified so far.
        # (rng drawn only when there is something to process: the cycle sequence stays the same)
        if (ids_so_far := [i for i in ledger.must_survive if i > ledger.process_confirmed]) and rng.random() < 0.4:
            ledger.process_requested = max(ledger.process_requested, max(ids_so_far))
        process_upto = ledger.process_requested if ledger.process_requested > ledger.process_confirmed else 0
        run = run_child(wal_dir, cycle, BASE_SEED * 1000 + cycle, mode, process_upto, rng, tmp_path)
        recovery_cuts += not run.ready
        ledger.add_child(cycle, mode, run)
        cut = syncfs.power_cut(tear=tear, seed=BASE_SEED * 1000 + cycle)
        torn += cut["torn"] is not None
        reverted += bool(cut["files_reverted"] or cut["names_reverted"])
        result = check_wal(wal_dir, ledger, append_marker=True)
        torn_tails += int(result.stats.get("torn_tails_truncated", 0) or 0)
        # Segments written into recycled files (format v2): the cycles must exercise them too.
        seg_dir = wal_dir / "segments"
        recycled_seen += sum(_recycled(seg_dir / n) for n in _segment_names(seg_dir))
        corrupt = int(result.stats.get("corrupt_entries", 0) or 0)  # every open reports all regions again
        history.append(
            f"cycle {cycle}: {mode}, {run.plan}, {len(run.acks)} acks, ready={run.ready}, "
            f"processed_upto={run.processed_upto or '-'}, cut={cut}"
        )
        if result.problems:
            copy = preserve(wal_dir, tmp_path / f"wal-after-cycle-{cycle}")
            pytest.fail(
                f"power cut {cycle}/{cycles} (SIGNALDB_POWERLOSS_SEED={BASE_SEED}) broke the WAL's promise:\n  "
                + "\n  ".join(result.problems)
                + f"\nWAL copied to {copy}\nrecent cycles:\n  "
                + "\n  ".join(history[-5:])
                + f"\nchild stderr:\n{run.stderr}",
                pytrace=False,
            )
    # The harness must have had something to drop, or the test proved nothing.
    assert reverted >= cycles // 4, f"only {reverted}/{cycles} cuts dropped anything:\n" + "\n".join(history)
    assert recycled_seen > 0, "no cycle left a segment written into a recycled file:\n" + "\n".join(history)
    assert torn >= 1, "no cut tore a write"
    assert len(ledger.must_survive) > cycles, "too few acknowledged entries to check"
    print(
        f"\n{cycles} power cuts (seed {BASE_SEED}): {reverted} dropped unsynced state, {torn} tore a write, "
        f"{recovery_cuts} hit start-up/recovery, recovery truncated {torn_tails} torn tails, the last open "
        f"reported {corrupt} corrupt regions; {len(ledger.must_survive)} acknowledged entries checked at the end; "
        f"{recycled_seen} segments seen written into recycled files"
    )
    if ledger.reused_batched_ids:
        print("batched mode: " + "; ".join(ledger.reused_batched_ids[:3]))


def test_negative_control_without_fsync_acknowledged_entries_are_lost(
    syncfs: SyncFsMount, tmp_path: pathlib.Path
) -> None:
    """With fsync turned into a no-op (libeatmydata), a kill loses nothing but a power cut must.

    Proves both that kill-only tests cannot see a missing fsync and that this
    harness can: the very check that passes above fails here.
    """
    lib = eatmydata_library()
    if lib is None:
        pytest.fail("the negative control needs Debian's eatmydata (apt-get install -y eatmydata)", pytrace=False)
    eat = {"LD_PRELOAD": lib}
    rng = random.Random(BASE_SEED)
    wal_dir = syncfs.path / "wal-eatmydata"
    from signaldb.wal import Wal

    with Wal(wal_dir, max_segment_size=SEGMENT_SIZE) as w:  # created durably, without eatmydata
        w.append(payload_for(MARKER_CYCLE, 0), kind="metrics")

    # 1. SIGKILL alone: the page cache survives, every acknowledged entry is there.
    ledger = Ledger()
    before = syncfs.stats()
    run = run_child(wal_dir, 1, BASE_SEED, "immediate", 0, rng, tmp_path, env_extra=eat, min_acks=100)
    after = syncfs.stats()
    syncs = sum(int(after[k]) - int(before[k]) for k in ("fsyncs", "fdatasyncs", "fsyncdirs"))
    assert syncs == 0, f"LD_PRELOAD={lib} did not stop the child's fsyncs ({syncs} reached the filesystem)"
    assert len(run.acks) >= 100
    ledger.add_child(1, "immediate", run)
    result = check_wal(wal_dir, ledger, append_marker=False)
    assert result.problems == [], f"a SIGKILL without a power cut must lose nothing: {result.problems}"

    # 2. A power cut: acknowledged entries are gone, and the check says so.
    found: list[str] = []
    for attempt in range(2, 7):
        ledger = Ledger()  # only this child's acknowledgements: its fsyncs were the ones skipped
        run = run_child(
            wal_dir, attempt, BASE_SEED + attempt, "immediate", 0, rng, tmp_path, env_extra=eat, min_acks=100
        )
        ledger.add_child(attempt, "immediate", run)
        syncfs.power_cut(tear=rng.random() < 0.5, seed=BASE_SEED + attempt)
        found = check_wal(wal_dir, ledger, append_marker=False).problems
        if any("acknowledged entries are missing" in p for p in found):
            break
    assert any("acknowledged entries are missing" in p for p in found), (
        f"with fsync disabled, 5 power cuts lost no acknowledged entry: the harness cannot see a missing "
        f"fsync (last check: {found})"
    )
    print(f"\nnegative control: power cut {attempt - 1} with fsync disabled: " + "; ".join(found))


def test_a_lost_write_followed_by_a_kept_one_hides_no_acknowledged_entry(
    syncfs: SyncFsMount, tmp_path: pathlib.Path
) -> None:
    """Scripted: batched appends 1..3 unsynced; the cut drops 1 and 2 and keeps 3 whole.

    A disk may write back a later page and not an earlier one, so the segment
    holds: synced records, zeros, a valid record. Recovery calls the zeros
    corruption and goes on; an entry appended (and fsynced) after recovery must
    then be readable. (Found by the random cycles: the reader used to take the
    zeroed hole for the end of the data and hid the rest of the segment.)
    """
    wal_dir = syncfs.path / "wal"
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), "--unsynced-writes", str(wal_dir), "3"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    run = ChildRun()
    for line in proc.stdout:
        parts = line.split()
        if parts[0] == b"A":
            run.acks.append((int(parts[1]), int(parts[2]), int(parts[3])))
        elif parts[0] == b"F":
            run.flushed_upto = int(parts[1])
        elif parts[0] == b"W":
            break
    proc.kill()
    proc.wait()
    proc.stdout.close()
    assert len(run.acks) == 4 and run.flushed_upto == run.acks[0][1]
    cut = syncfs.power_cut(tear=True, keep=1 << 40)  # the last write survives whole, the two before it do not
    assert cut["torn"] is not None and cut["torn"]["kept"] == cut["torn"]["length"]

    ledger = Ledger()
    ledger.add_child(1, "batched", run)  # only the flushed first entry must survive
    first = check_wal(wal_dir, ledger, append_marker=True)
    assert first.problems == [] and first.marker_id is not None
    second = check_wal(wal_dir, ledger, append_marker=False)
    assert second.problems == [], (
        f"entry {first.marker_id}, appended and acknowledged after recovery, is not returned by "
        f"unprocessed() after a reopen: {second.problems} (the WAL returns ids {second.ids})"
    )


# -- spare segments (issue 17): the on-disk states they add ----------------------

_SPARE_CHILD = """
import sys, time
from signaldb.wal import Wal
wal_dir, n = sys.argv[1], int(sys.argv[2])
w = Wal(wal_dir, max_segment_size=int(sys.argv[3]))
for i in range(n):
    print("A", w.append(b"%06d:" % i + b"s" * 300, kind="logs"), i, flush=True)
print("W", flush=True)
time.sleep(120)
"""


def _run_child(script: str, args: list[str], wal_dir: pathlib.Path, filler: bytes, wait_for: object):
    """Runs a child script that appends entries and reports them on stdout (`A id seq`:
    acknowledged, `U id seq`: written, not synced, `W`: done), waits until `wait_for(seg_dir)`
    holds (the housekeeper works in the background), SIGKILLs it. Returns (acknowledged,
    unsynced) entries with their payloads (`seq:` then 300 filler bytes)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert proc.stdout is not None
    acked: dict[int, bytes] = {}
    unsynced: dict[int, bytes] = {}
    try:
        for line in proc.stdout:
            parts = line.split()
            if parts[0] in (b"A", b"U"):
                (acked if parts[0] == b"A" else unsynced)[int(parts[1])] = b"%06d:" % int(parts[2]) + filler * 300
            elif parts[0] == b"W":
                break
        deadline = time.monotonic() + 10
        while wait_for is not None and not wait_for(wal_dir / "segments"):  # type: ignore[operator]
            assert time.monotonic() < deadline, f"never reached: {sorted(os.listdir(wal_dir / 'segments'))}"
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return acked, unsynced


def _spare_child(wal_dir: pathlib.Path, n: int, wait_for: object = None) -> dict[int, bytes]:
    """Appends `n` entries (immediate mode) in a child, SIGKILLed once `wait_for(seg_dir)`
    holds; returns the acknowledged entries."""
    acked, _ = _run_child(_SPARE_CHILD, [str(wal_dir), str(n), str(SEGMENT_SIZE)], wal_dir, b"s", wait_for)
    assert len(acked) == n
    return acked


def _segment_names(seg_dir: pathlib.Path) -> list[str]:
    return sorted(n for n in os.listdir(seg_dir) if n[0].isdigit())


def _all_zero(path: pathlib.Path) -> bool:
    return not path.read_bytes().strip(b"\0")


def _has_zero_spare(seg_dir: pathlib.Path) -> bool:
    names = _segment_names(seg_dir)
    return len(names) >= 2 and _all_zero(seg_dir / names[-1])


def _check_after_cut(wal_dir: pathlib.Path, acked: dict[int, bytes]) -> None:
    """Every acknowledged entry is back, byte for byte, with no damage reported; appends go on."""
    from signaldb.wal import Wal

    for _ in range(2):  # and again after appending, as the next life would
        with Wal(wal_dir, max_segment_size=SEGMENT_SIZE) as w:
            got = {e.id: e.payload for e in w.unprocessed()}
            assert {i: got.get(i) for i in acked} == acked
            stats = w.stats()
            assert stats["corrupt_entries"] == 0, stats
            assert not [n for n in os.listdir(wal_dir / "segments") if n.startswith(".")]
            names = _segment_names(wal_dir / "segments")
            assert not _all_zero(wal_dir / "segments" / names[-1]), f"a spare survived recovery: {names}"
            eid = w.append(b"after the cut", kind="traces")
            assert eid > max(acked)
            acked = {**acked, eid: b"after the cut"}


def test_power_cut_with_a_spare_segment_holding_no_records(syncfs: SyncFsMount) -> None:
    """A spare made ahead (zero-filled, renamed, directory fsynced) is on disk at the cut."""
    wal_dir = syncfs.path / "wal"
    acked = _spare_child(wal_dir, 60, _has_zero_spare)  # ~20 KB of a 64 KiB segment: the spare is made
    syncfs.power_cut(tear=True, seed=1)
    names = _segment_names(wal_dir / "segments")
    assert len(names) == 2 and _all_zero(wal_dir / "segments" / names[1]), f"the spare is durable: {names}"
    _check_after_cut(wal_dir, acked)


def test_power_cut_with_a_spare_segment_holding_records(syncfs: SyncFsMount) -> None:
    """The rotation went into the spare: its header and records were acknowledged after an fdatasync."""
    wal_dir = syncfs.path / "wal"

    def rotated(seg_dir: pathlib.Path) -> bool:
        names = _segment_names(seg_dir)
        return len(names) >= 2 and not _all_zero(seg_dir / names[1])

    acked = _spare_child(wal_dir, 260, rotated)  # ~86 KB: segment 2 (the former spare) holds records
    syncfs.power_cut(tear=True, seed=2)
    _check_after_cut(wal_dir, acked)


def test_power_cut_between_a_spare_rename_and_the_directory_fsync(syncfs: SyncFsMount) -> None:
    """The housekeeper's steps, cut after the rename and before the directory fsync: the
    rename is undone (the temp file is back) and recovery removes the leftover."""
    wal_dir = syncfs.path / "wal"
    acked = _spare_child(wal_dir, 10)
    seg_dir = wal_dir / "segments"
    tmp = seg_dir / ".prealloc-99-0.wal"
    write_file(tmp, bytes(SEGMENT_SIZE), sync=True)
    fsync_path(seg_dir)  # the temp file itself is durable
    os.rename(tmp, seg_dir / "000002.wal")  # step 2 ... and the power goes before fsync(dir)
    syncfs.power_cut(tear=True, seed=3)
    assert sorted(os.listdir(seg_dir)) == [".prealloc-99-0.wal", "000001.wal"]
    _check_after_cut(wal_dir, acked)


# -- recycled segments (issue 17, format v2): the on-disk states they add ---------

_RECYCLE_CHILD = """
import sys, time
from signaldb.wal import Wal
wal_dir, mode = sys.argv[1], sys.argv[4]
rounds, per, tail, seg = (int(a) for a in (sys.argv[2], sys.argv[3], sys.argv[5], sys.argv[6]))
w = Wal(wal_dir, max_segment_size=seg, sync_mode=mode, max_buffer_entries=100000, flush_interval_secs=3600.0)
i, last = 0, []
for r in range(rounds):
    # The previous round is processed and checkpointed: its sealed segments are doomed, two files are kept
    # and made into spares, so the next rounds write into recycled files over stale records.
    w.mark_processed([eid for eid, _ in last])
    w.checkpoint()
    last = []
    for _ in range(per):
        last.append((w.append(b"%06d:" % i + b"r" * 300, kind="logs"), i))
        i += 1
    w.flush()
print("".join("A %d %d\\n" % pair for pair in last), end="", flush=True)
for _ in range(tail):  # batched mode: written, never synced
    print("U", w.append(b"%06d:" % i + b"r" * 300, kind="logs"), i, flush=True)
    i += 1
print("W", flush=True)
time.sleep(120)
"""


def _recycle_child(
    wal_dir: pathlib.Path, rounds: int, per: int, mode: str = "immediate", tail: int = 0, wait_for: object = None
) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Rounds of appends, each processing the round before it (so files are recycled); SIGKILLed once
    `wait_for(seg_dir)` holds. Returns the unprocessed durable entries and the unsynced ones."""
    args = [str(wal_dir), str(rounds), str(per), mode, str(tail), str(SEGMENT_SIZE)]
    acked, unsynced = _run_child(_RECYCLE_CHILD, args, wal_dir, b"r", wait_for)
    assert len(acked) == per and len(unsynced) == tail
    return acked, unsynced


def _recycled(path: pathlib.Path) -> bool:
    seg = parse_segment_file(path)
    return seg.version == 2 and bool(seg.flags & FLAG_RECYCLED)


def _last_is_recycled(seg_dir: pathlib.Path) -> bool:
    names = _segment_names(seg_dir)
    return bool(names) and _recycled(seg_dir / names[-1])


def _spare_header(base_id: int) -> bytes:
    """A v2 SPARE header (flags RECYCLED|SPARE), as the housekeeper writes over a kept file."""
    body = struct.pack("<8sIIQQQI", MAGIC, 2, FLAG_RECYCLED | FLAG_SPARE, base_id, 0, 0, 0)
    return body + struct.pack("<I", crc32c(body))


def _check_recycled_after_cut(wal_dir: pathlib.Path, acked: dict[int, bytes], maybe: dict[int, bytes]) -> None:
    """As `_check_after_cut`, and nothing else comes back: no stale record of a recycled file, no
    processed entry; unsynced entries may or may not."""
    from signaldb.wal import Wal

    with Wal(wal_dir, max_segment_size=SEGMENT_SIZE) as w:
        got = {e.id: e.payload for e in w.unprocessed()}
    extra = {i: p for i, p in got.items() if i not in acked and maybe.get(i) != p}
    assert not extra, f"entries that were never unprocessed and durable came back: {sorted(extra)[:10]}"
    _check_after_cut(wal_dir, acked)


def test_power_cut_with_a_recycled_spare_segment_holding_records(syncfs: SyncFsMount) -> None:
    """The active segment is a recycled file: header, records and terminator over stale records."""
    wal_dir = syncfs.path / "wal"
    acked, _ = _recycle_child(wal_dir, 10, 150, wait_for=_last_is_recycled)
    assert _last_is_recycled(wal_dir / "segments")
    syncfs.power_cut(tear=True, seed=4)
    _check_recycled_after_cut(wal_dir, acked, {})


def test_power_cut_with_a_torn_tail_over_stale_records(syncfs: SyncFsMount) -> None:
    """Batched appends in flight into a recycled active segment: the cut tears them over stale bytes."""
    for seed in (5, 6, 7):
        wal_dir = syncfs.path / f"wal-{seed}"
        acked, unsynced = _recycle_child(wal_dir, 10, 150, mode="batched", tail=6, wait_for=_last_is_recycled)
        cut = syncfs.power_cut(tear=True, seed=seed)
        assert cut["files_reverted"] or cut["torn"], f"the cut dropped nothing: {cut}"
        _check_recycled_after_cut(wal_dir, acked, unsynced)


def test_power_cut_after_a_spare_header_before_the_rename(syncfs: SyncFsMount) -> None:
    """A kept file got its SPARE header (fdatasynced) and the power went before the rename: under
    its temp name, or, when the move into the pool was not durable either, under its old segment
    number. Either way its stale contents (records that verify under that number) are never read."""
    wal_dir = syncfs.path / "wal"
    acked, _ = _recycle_child(wal_dir, 6, 150)
    seg_dir = wal_dir / "segments"
    names = _segment_names(seg_dir)
    first, last = int(names[0].split(".")[0]), int(names[-1].split(".")[0])
    live = (seg_dir / names[-1]).read_bytes()
    stale_under_old_name = seg_dir / f"{first - 1:06d}.wal"
    for path in (seg_dir / ".recycled-99-0.wal", stale_under_old_name):
        # Stale records of segment `first - 1`, as that file held them before it was processed.
        body = bytearray(live)
        write_file(path, _spare_header(last * 1000) + bytes(body[48:]), sync=True)
    fsync_path(seg_dir)
    syncfs.power_cut(tear=True, seed=8)
    assert stale_under_old_name.exists(), "test setup: the SPARE file is durable"
    _check_recycled_after_cut(wal_dir, acked, {})
    assert not stale_under_old_name.exists()


def test_power_cut_after_a_recycled_spare_rename_before_the_directory_fsync(syncfs: SyncFsMount) -> None:
    """R2 of a recycled spare, cut before (the rename is undone) and after (the spare is durable,
    trailing, with a SPARE header over stale bytes) the directory fsync."""
    for durable in (False, True):
        wal_dir = syncfs.path / f"wal-{durable}"
        acked, _ = _recycle_child(wal_dir, 6, 150)
        seg_dir = wal_dir / "segments"
        names = _segment_names(seg_dir)
        last = int(names[-1].split(".")[0])
        tmp = seg_dir / ".recycled-99-0.wal"
        write_file(tmp, _spare_header(last * 1000) + (seg_dir / names[-1]).read_bytes()[48:], sync=True)
        fsync_path(seg_dir)
        os.rename(tmp, seg_dir / f"{last + 1:06d}.wal")
        if durable:
            fsync_path(seg_dir)
        syncfs.power_cut(tear=True, seed=9)
        want = [f"{last + 1:06d}.wal"] if durable else [".recycled-99-0.wal"]
        assert [n for n in os.listdir(seg_dir) if n not in names] == want
        _check_recycled_after_cut(wal_dir, acked, {})
