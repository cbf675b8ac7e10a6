"""Faults from the filesystem: a directory the process may not write, a full disk.

These tests need root (they run as root here and in CI): root ignores file
permissions, so the permission test runs a child as `nobody` via setpriv; the
disk-full tests mount a small tmpfs. Without root they fail with a clear
message instead of being skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

from conftest import HELPERS_DIR, REPO_DIR, read_all, scaled, tagged_payload
from signaldb.wal import Wal, WalError, WalFullError

NOBODY = 65534
CHILD = HELPERS_DIR / "open_wal_child.py"


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"{what} needs root (uid 0); this run has uid {os.geteuid()}. Run the suite as root (as CI does).")


# -- unwritable directory --------------------------------------------------------


def _as_nobody(path: str) -> dict:
    _need_root("the permission test")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is required to run a child as nobody")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR / "python"), env.get("PYTHONPATH")]))
    env["HOME"] = "/"
    r = subprocess.run(
        [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, str(CHILD), path],
        capture_output=True,
        timeout=60,
        cwd="/",
        env=env,
    )
    lines = r.stdout.decode().strip().splitlines()
    assert r.returncode == 0 and lines, f"child failed (status {r.returncode}):\n{r.stderr.decode()[-3000:]}"
    out = json.loads(lines[-1])
    assert out["uid"] == NOBODY
    assert out.get("stage") != "import", f"child could not import signaldb as nobody: {out}"
    return out


@pytest.fixture
def public_tmp():
    """A root-owned 0755 directory under /tmp that `nobody` can traverse (tmp_path is 0700)."""
    d = tempfile.mkdtemp(prefix="signaldb-perm-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_control_nobody_can_create_a_wal_where_it_may_write(public_tmp):
    """Control for the tests below: the child works as nobody when permissions allow."""
    d = os.path.join(public_tmp, "open")
    os.mkdir(d)
    os.chmod(d, 0o777)
    out = _as_nobody(os.path.join(d, "wal"))
    assert out["ok"], out


@pytest.mark.parametrize(
    "layout", ["missing dir in root-owned parent", "existing root-owned 0755 dir", "existing root-owned WAL"]
)
def test_unwritable_directory_raises_walerror_naming_the_path(public_tmp, layout):
    wal_path = os.path.join(public_tmp, "wal")
    if layout == "existing root-owned 0755 dir":
        os.mkdir(wal_path)
        os.chmod(wal_path, 0o755)
    elif layout == "existing root-owned WAL":
        with Wal(wal_path) as w:
            w.append(b"root's entry")
        os.chmod(wal_path, 0o755)  # readable, not writable, by nobody
    out = _as_nobody(wal_path)
    assert not out["ok"], f"nobody opened a WAL in {layout}: {out}"
    assert out["is_wal_error"], f"expected a WalError, got {out['type']}: {out['message']}"
    assert out["type"] == "WalPermissionError", out  # typed by its io kind: also a PermissionError
    msg = out["message"]
    assert msg.startswith("WAL directory not writable:"), msg
    assert wal_path in msg, f"message does not name {wal_path}: {msg}"
    if layout == "existing root-owned WAL":
        assert [p for _, _, p in read_all(wal_path).entries] == [b"root's entry"]


# -- disk full --------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB tmpfs: writes past it fail with a real ENOSPC."""
    _need_root("mounting a tmpfs for the disk-full test")
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {mnt} (needed for ENOSPC): {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


PAYLOAD = 16 * 1024


def _fill(call, what: str, limit: int = 3000) -> tuple[list, WalFullError]:
    """Calls `call(i)` until it raises WalFullError; returns the results before that."""
    results = []
    for i in range(limit):
        try:
            results.append(call(i))
        except WalFullError as e:
            return results, e
    pytest.fail(f"{what}: no WalFullError after {limit} appends on an 8 MiB filesystem")


def test_disk_full_raises_walfullerror_and_recovers(small_fs):
    spare = small_fs / "spare"
    spare.write_bytes(b"\xee" * (2 << 20))  # space we free later
    wal_path = small_fs / "wal"
    acked: dict[int, bytes] = {}
    w = Wal(wal_path, max_segment_size=256 * 1024)
    try:

        def one(i):
            p = tagged_payload(f"a{i}", PAYLOAD)
            acked[w.append(p, kind="logs")] = p

        _, err = _fill(one, "append")
        assert str(err), "WalFullError without a message"
        st = w.stats()
        assert st["poisoned"] is False, f"ENOSPC poisoned the WAL (it is recoverable): {st}"
        assert len(acked) > 50, f"only {len(acked)} entries fit in ~6 MiB"

        def via_async(i):
            p = tagged_payload(f"c{i}", PAYLOAD // 8)
            acked[asyncio.run(asyncio.wait_for(w.append_async(p, kind="logs"), timeout=30))] = p

        _fill(via_async, "append_async")

        # Exactly the acknowledged entries are there: nothing partial from the failed appends.
        got = {e.id: e.payload for e in w.unprocessed()}
        assert set(got) == set(acked), (sorted(set(got) - set(acked))[:10], sorted(set(acked) - set(got))[:10])
        assert all(got[i] == acked[i] for i in acked)
        assert w.stats()["unprocessed_entries"] == len(acked)
        assert w.stats()["poisoned"] is False

        spare.unlink()
        after = []
        for i in range(20):
            p = tagged_payload(f"d{i}", PAYLOAD)
            eid = w.append(p, kind="metrics")
            after.append(eid)
            acked[eid] = p
        assert min(after) > max(i for i in acked if i not in after)
        w.flush()
    finally:
        w.close()
    snap = read_all(wal_path, max_segment_size=256 * 1024)
    assert snap.by_id.keys() == acked.keys()
    assert all(snap.by_id[i][1] == acked[i] for i in acked), "payloads changed after reopen"
    assert snap.stats["corrupt_entries"] == 0, snap.stats


def test_close_on_a_full_disk_loses_nothing(small_fs):
    spare = small_fs / "spare"
    spare.write_bytes(b"\xee" * (1 << 20))
    wal_path = small_fs / "wal"
    acked: dict[int, bytes] = {}
    w = Wal(wal_path, max_segment_size=128 * 1024)

    def one(i):
        p = tagged_payload(f"e{i}", PAYLOAD)
        acked[w.append(p)] = p

    try:
        _fill(one, "append")
        half = sorted(acked)[: len(acked) // 2]
        try:
            w.mark_processed(half)  # the checkpoint may not fit: an error is fine, a loss is not
        except WalError:
            half = []
    finally:
        with contextlib.suppress(WalError):  # e.g. metadata could not be written; segments are the truth
            w.close()
    spare.unlink()
    snap = read_all(wal_path, max_segment_size=128 * 1024)
    missing = [i for i in acked if i not in snap.by_id and i not in half]
    assert not missing, f"{len(missing)} acknowledged entries lost after closing on a full disk: {missing[:10]}"
    assert all(snap.by_id[i][1] == acked[i] for i in snap.by_id), "payload changed"
    assert snap.stats["corrupt_entries"] == 0, snap.stats
    with Wal(wal_path, max_segment_size=128 * 1024) as w:
        assert w.append(b"space again") > max(acked)


@pytest.mark.parametrize("sync_mode", ["immediate", "batched"])
def test_append_batch_on_a_full_disk_is_all_or_nothing(small_fs, sync_mode):
    """A batch that raises WalFullError must leave none of its entries behind.

    The caller gets no ids with the exception, so it cannot mark a partial
    prefix processed; it retries the whole batch, and the prefix would be
    forwarded twice under different ids (downstream dedupes by id).
    """
    wal_path = small_fs / "wal"
    acked: dict[int, bytes] = {}
    failed_batches: list[list[bytes]] = []
    w = Wal(wal_path, max_segment_size=256 * 1024, sync_mode=sync_mode)
    try:

        def one(i):
            p = tagged_payload(f"a{i}", PAYLOAD)
            acked[w.append(p, kind="logs")] = p

        _fill(one, "append")
        for rnd in range(50):  # batches of shrinking entries, so that some partly fit
            ps = [tagged_payload(f"b{rnd}.{j}", max(64, (PAYLOAD // 4) >> (rnd // 5))) for j in range(4)]
            try:
                ids = w.append_batch(ps, kind="logs")
            except WalFullError:
                failed_batches.append(ps)
                continue
            acked.update(zip(ids, ps, strict=True))
        assert failed_batches, "no batch failed: test setup did not reach a full disk"
        got = {e.id: e.payload for e in w.unprocessed()}
    finally:
        w.close()
    leaked = {i: p for i, p in got.items() if i not in acked}
    failed = {p for b in failed_batches for p in b}
    assert all(p in failed for p in leaked.values()), "entries that nobody appended"
    if leaked:
        pytest.fail(
            f"append_batch raised WalFullError but {len(leaked)} of its entries stay in the WAL "
            f"(ids {sorted(leaked)[:10]}): a partial batch the caller cannot see or mark processed"
        )


@pytest.mark.parametrize("sync_mode", ["immediate", "batched"])
def test_threads_hitting_disk_full_together(small_fs, sync_mode):
    spare = small_fs / "spare"
    spare.write_bytes(b"\xee" * (2 << 20))
    wal_path = small_fs / "wal"
    acked: dict[int, bytes] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    full_seen = []
    w = Wal(wal_path, max_segment_size=256 * 1024, sync_mode=sync_mode)

    def worker(t: int) -> None:
        try:
            for i in range(2000):
                p = tagged_payload(f"t{t}.{i}", 4000 + 1000 * t)
                try:
                    eid = w.append(p, kind="traces")
                except WalFullError:
                    full_seen.append(t)
                    return
                with lock:
                    acked[eid] = p
        except BaseException as e:
            errors.append(e)

    try:
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        assert not any(th.is_alive() for th in threads)
        assert not errors, f"appends failed with something other than WalFullError: {errors[:3]}"
        assert len(full_seen) == 8
        assert w.stats()["poisoned"] is False
        spare.unlink()
        extra = w.append(b"after freeing space")
        assert extra > max(acked)
        w.flush()
    finally:
        w.close()
    snap = read_all(wal_path, max_segment_size=256 * 1024)
    missing = [i for i in acked if i not in snap.by_id]
    assert not missing, f"{len(missing)} acknowledged entries lost: {sorted(missing)[:10]}"
    assert all(snap.by_id[i][1] == acked[i] for i in acked)
    assert set(snap.by_id) == set(acked) | {extra}, "entries that failed with WalFullError are in the WAL"
    assert snap.stats["corrupt_entries"] == 0, snap.stats


@pytest.mark.stress
def test_stress_repeated_full_and_free(small_fs):
    """Fill, free by processing, fill again: space comes back through segment deletion."""
    wal_path = small_fs / "wal"
    spare = small_fs / "spare"
    spare.write_bytes(b"\xee" * (512 << 10))
    with Wal(wal_path, max_segment_size=128 * 1024) as w:
        for rnd in range(scaled(3, 30)):
            got = []

            def one(i, got=got, rnd=rnd):
                got.append(w.append(tagged_payload(f"r{rnd}.{i}", PAYLOAD)))

            _fill(one, f"round {rnd}")
            assert len(got) > 20, f"round {rnd}: processing did not give space back ({len(got)} appends fit)"
            spare.unlink()  # room for the checkpoint that lets segments go
            w.mark_processed([e.id for e in w.unprocessed()])
            w.flush()
            spare.write_bytes(b"\xee" * (512 << 10))
