"""Replay side of the WAL, case 5: verify-scan bandwidth and reopen cost.

Both use one WAL of 1,000,000 unprocessed 200 B entries (~228 MB on disk),
written once per run by the engine itself (immediate mode, append_batch(1000)).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchlib import (
    BATCH_SIZE,
    PAYLOAD_200,
    REPLAY_ENTRIES,
    NaiveWal,
    case_params,
    engine,
    make_workdir,
    measure,
    naive_scan,
    remove_tree,
)


def build_wal(path: Path, entries: int, payload: bytes, batch_size: int = BATCH_SIZE) -> None:
    Wal = engine()
    batch = [payload] * batch_size
    with Wal(path, sync_mode="immediate") as wal:
        left = entries
        while left > 0:
            wal.append_batch(batch[: min(left, batch_size)])
            left -= batch_size
        got = wal.stats().get("unprocessed_entries")
    assert got == entries, f"built a WAL of {entries} entries, stats() says {got}"


@pytest.fixture(scope="module")
def replay_wal():
    engine()
    root = make_workdir("replay-")
    path = root / "wal"
    build_wal(path, REPLAY_ENTRIES, PAYLOAD_200)
    yield path
    remove_tree(root)


@pytest.fixture(scope="module")
def replay_wal_2k():
    engine()
    root = make_workdir("replay2k-")
    path = root / "wal"
    # 2048 B entries in batches of 400 (~830 KB: one per 1 MiB segment, as the 200 B
    # WAL has four 228 KB batches per segment): same bytes, same segment count.
    build_wal(path, REPLAY_ENTRIES // 10, PAYLOAD_200 * 10 + PAYLOAD_200[:48], batch_size=400)
    yield path
    remove_tree(root)


@pytest.fixture(scope="module")
def naive_file():
    """A naive-WAL file of the same entry count, written without syncs."""
    root = make_workdir("naive-replay-")
    path = root / "naive.wal"
    chunk = NaiveWal.frame(PAYLOAD_200) * 10_000
    with open(path, "wb") as f:
        for _ in range(REPLAY_ENTRIES // 10_000):
            f.write(chunk)
    yield path
    remove_tree(root)


def segment_files(wal_dir: Path) -> list[Path]:
    """The numbered segment files (not the .prealloc-* spare), oldest first."""
    seg = wal_dir / "segments"
    return sorted(p for p in seg.iterdir() if p.name[:1].isdigit() and p.name.endswith(".wal"))


def scan_calls(scan, files: list[Path]) -> list[tuple[str, dict]]:
    """(path, kwargs) for scan_segment over `files`, as `signaldb-wal verify` calls
    it: every CRC is checked, and only the last segment is flagged `is_last`
    (which decides torn tail vs corruption, not how much is read). Keywords are
    taken from the binding's signature, which has changed while the engine was
    written (`verify=` in one build, `is_last=` now): a positional True would
    mean different things in each."""
    sig = getattr(scan, "__text_signature__", None) or ""
    out = []
    for i, p in enumerate(files):
        kw: dict = {}
        if "verify" in sig:
            kw["verify"] = True
        if "is_last" in sig:
            kw["is_last"] = i == len(files) - 1
        out.append((str(p), kw))
    if not sig:  # no signature to read: rely on the defaults
        out = [(str(p), {}) for p in files]
    return out


def _as_count(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


# -- 5a. verify scan ---------------------------------------------------------------------


@case_params("verify")
def test_verify(benchmark, request, key, pass_no):
    if key == "naive":
        path = request.getfixturevalue("naive_file")
        size = path.stat().st_size

        def op(n: int) -> None:
            for _ in range(n):
                got = naive_scan(path)
                assert got == REPLAY_ENTRIES, got

        measure(
            benchmark,
            op,
            case="verify",
            key=key,
            pass_no=pass_no,
            entries_per_op=REPLAY_ENTRIES,
            bytes_per_op=size,
            round_s=0.0,
            min_rounds=3,
            seconds=2.0,
            note="naive file, read whole + per-frame zlib.crc32",
        )
        return

    wal_dir = request.getfixturevalue("replay_wal")
    files = segment_files(wal_dir)
    sizes = [p.stat().st_size for p in files]
    total = sum(sizes)
    benchmark.extra_info.update(segments=len(files), file_bytes=total)

    if key == "ours":
        from signaldb import _native

        scan = _native.scan_segment
        calls = scan_calls(scan, files)
        # One untimed pass: warms the page cache and checks what the scan says.
        results = [scan(p, **kw) for p, kw in calls]
        bad = [
            (p, r) for (p, _), r in zip(calls, results, strict=True) if r.get("damages") or r.get("header_ok") is False
        ]
        assert not bad, f"scan_segment reports damage in a clean WAL: {bad[:2]}"
        keys = sorted(results[0]) if results else []
        benchmark.extra_info["scan_result_keys"] = keys
        sample = {
            k: (v if isinstance(v, (int, float, str, bool, type(None))) else type(v).__name__)
            for k, v in (results[-1].items() if results else [])
        }
        benchmark.extra_info["scan_result_last"] = sample
        counts = [_as_count(r.get("entries")) for r in results]
        if all(c is not None for c in counts):
            assert sum(counts) == REPLAY_ENTRIES, f"scan_segment counted {sum(counts)} entries"

        def op(n: int) -> None:
            for _ in range(n):
                for p, kw in calls:
                    scan(p, **kw)

        measure(
            benchmark,
            op,
            case="verify",
            key=key,
            pass_no=pass_no,
            entries_per_op=REPLAY_ENTRIES,
            bytes_per_op=total,
            round_s=0.0,
            min_rounds=5,
            note=f"{len(files)} segment files, {total / 1e6:.0f} MB incl. preallocated tail",
        )
    elif key == "raw":
        names = [str(p) for p in files]
        buf = bytearray(64 << 10)  # streaming reads stay in cache: the ceiling

        def op(n: int) -> None:
            for _ in range(n):
                for p in names:
                    with open(p, "rb", buffering=0) as f:
                        while f.readinto(buf):
                            pass

        measure(
            benchmark,
            op,
            case="verify",
            key=key,
            pass_no=pass_no,
            entries_per_op=REPLAY_ENTRIES,
            bytes_per_op=total,
            round_s=0.0,
            min_rounds=5,
        )
    elif key == "iter":
        Wal = engine()
        wal = Wal(wal_dir)
        try:

            def op(n: int) -> None:
                for _ in range(n):
                    count = 0
                    for _e in wal.unprocessed():
                        count += 1
                    assert count == REPLAY_ENTRIES, count

            measure(
                benchmark,
                op,
                case="verify",
                key=key,
                pass_no=pass_no,
                entries_per_op=REPLAY_ENTRIES,
                bytes_per_op=REPLAY_ENTRIES * len(PAYLOAD_200),
                round_s=0.0,
                min_rounds=3,
                seconds=2.0,
                note="MB/s counts payload bytes; Entry objects made in bounded chunks",
            )
        finally:
            wal.close()
    else:
        raise AssertionError(key)


# -- 5b. reopen ----------------------------------------------------------------------------

# Runs in a fresh interpreter: imports first, then resets the RSS high-water mark
# (writing 5 to /proc/self/clear_refs), so VmHWM afterwards is the peak of the
# reopen alone. RSS counts what Rust allocates, which tracemalloc would miss.
REOPEN_SCRIPT = r"""
import json, sys, time

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    return out

from signaldb.wal import Wal
path, expected = sys.argv[1], int(sys.argv[2])
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    hwm_reset = True
except OSError:
    hwm_reset = False
before = status()
t0 = time.perf_counter()
wal = Wal(path)
t1 = time.perf_counter()
opened = status()
t2 = time.perf_counter()
wal.close()
t3 = time.perf_counter()
after = status()

# Second, untimed-for-the-goal open: the forwarder's first tail read and stats().
wal = Wal(path)
t4 = time.perf_counter()
tail = wal.unprocessed(after_id=0, limit=500)
t5 = time.perf_counter()
stats = wal.stats()
wal.close()
print(json.dumps({
    "open_s": t1 - t0,
    "close_s": t3 - t2,
    "reopen_s": (t1 - t0) + (t3 - t2),
    "tail500_s": t5 - t4,
    "tail_len": len(tail),
    "unprocessed": stats.get("unprocessed_entries"),
    "expected": expected,
    "hwm_reset": hwm_reset,
    "before": before, "opened": opened, "after": after,
}))
"""


def reopen_once(path: Path, expected: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", REOPEN_SCRIPT, str(path), str(expected)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise AssertionError(f"reopen subprocess failed ({proc.returncode}): {proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["unprocessed"] == expected, f"reopened WAL reports {res['unprocessed']} unprocessed"
    assert res["tail_len"] == min(500, expected), res["tail_len"]
    b, a = res["before"], res["after"]
    base = b["VmHWM"] if res["hwm_reset"] else max(b["VmHWM"], b["VmRSS"])
    res["peak_rss_growth"] = max(0, a["VmHWM"] - base)
    res["anon_growth_open"] = res["opened"]["RssAnon"] - b["RssAnon"]
    res["file_growth_open"] = res["opened"]["RssFile"] - b["RssFile"]
    return res


@case_params("reopen")
def test_reopen(benchmark, request, key, pass_no):
    if key == "ours":
        path, expected, rounds = request.getfixturevalue("replay_wal"), REPLAY_ENTRIES, 5
    else:
        path, expected, rounds = request.getfixturevalue("replay_wal_2k"), REPLAY_ENTRIES // 10, 3
    reopen_once(path, expected)  # warm-up: page cache, one-off work on first open
    results: list[dict] = []

    def op() -> None:
        results.append(reopen_once(path, expected))

    benchmark.pedantic(op, rounds=rounds, iterations=1, warmup_rounds=0)

    def med(field: str) -> float:
        return statistics.median(r[field] for r in results)

    benchmark.extra_info.update(
        case="reopen",
        key=key,
        pass_no=pass_no,
        entries=expected,
        entries_per_round=1,
        bytes_per_round=0,
        reopen_s=[r["reopen_s"] for r in results],
        open_s=[r["open_s"] for r in results],
        close_s=[r["close_s"] for r in results],
        tail500_s=[r["tail500_s"] for r in results],
        peak_rss_growth=[r["peak_rss_growth"] for r in results],
        anon_growth_open=[r["anon_growth_open"] for r in results],
        file_growth_open=[r["file_growth_open"] for r in results],
        hwm_reset=all(r["hwm_reset"] for r in results),
        segments=len(segment_files(path)),
        reopen_s_median=med("reopen_s"),
        note="timings inside the subprocess; pytest-benchmark's own stats include interpreter start",
    )
