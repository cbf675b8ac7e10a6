#!/usr/bin/env python3
"""Runs the WAL benchmark suites in one pytest process and prints one table.

    .venv/bin/python benches/run.py              # what `make bench` runs
    .venv/bin/python benches/run.py -k single    # extra arguments go to pytest
    .venv/bin/python benches/run.py --json out.json   # keep pytest-benchmark's JSON
    .venv/bin/python benches/run.py --from-json out.json  # only print the table

Speed never fails the run: a goal that is not met shows MISS and the exit
status stays 0. The exit status is non-zero only when a benchmark could not run
(an error, not a skip) or pytest itself failed. See benches/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchlib import CASES, REPO, bench_root, fs_type, rocksdict_version  # noqa: E402

SUITES = ["bench_append.py", "bench_replay.py"]
TMPFS_LIKE = {"tmpfs", "ramfs", "overlay", "devtmpfs"}


# -- results ---------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    case: str
    key: str
    rates: list[float] = dataclasses.field(default_factory=list)  # entries/s per round
    bws: list[float] = dataclasses.field(default_factory=list)  # bytes/s per round
    rounds: list[int] = dataclasses.field(default_factory=list)  # per pass
    extra: list[dict] = dataclasses.field(default_factory=list)  # extra_info per pass
    status: str = ""  # "", "skipped: ...", "FAILED: ..."

    @property
    def ok(self) -> bool:
        return bool(self.rates) or any("reopen_s" in e for e in self.extra)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def bw(self) -> float:
        return statistics.median(self.bws)

    @property
    def spread(self) -> float:
        if len(self.rates) < 4:
            return float("nan")
        q = statistics.quantiles(self.rates, n=4)
        return (q[2] - q[0]) / self.rate

    def per_sync(self) -> str:
        """Engine rows: entries per fdatasync and mean fdatasync time (whole row,
        calibration included), from the WAL's own stats()."""
        fs = [e for e in self.extra if e.get("engine_fsyncs")]
        if not fs:
            return ""
        n = sum(e["engine_fsyncs"] for e in fs)
        per = sum(e["engine_entries"] for e in fs) / n
        sync_s = sum(e.get("engine_fsync_s") or 0.0 for e in fs)
        ms = sync_s / n * 1e3
        wall = sum(e.get("wall_s") or 0.0 for e in fs)
        busy = f" {min(sync_s / wall, 9.99) * 100:3.0f}%" if wall else ""
        return (f"{per:.1f}" if per < 100 else f"{per:.0f}") + f" @{ms:.2f}ms{busy}"

    def values(self, field: str) -> list[float]:
        return [v for e in self.extra for v in e.get(field, [])]


def split_id(nodeid_or_name: str) -> tuple[str, str] | None:
    """'benches/bench_append.py::test_single[ours-pass2]' -> ('single', 'ours')"""
    name = nodeid_or_name.split("::")[-1]
    if not name.startswith("test_") or "[" not in name:
        return None
    func, param = name[5:].split("[", 1)
    key = param.rstrip("]").split("-pass")[0]
    return func, key


def collect(report: dict, outcomes: list[dict]) -> dict[tuple[str, str], Row]:
    rows: dict[tuple[str, str], Row] = {}
    for name, case in CASES.items():
        for key, _ in case.rows:
            rows[(name, key)] = Row(name, key)
    for b in report.get("benchmarks", []):
        info = b.get("extra_info", {})
        ident = (info.get("case"), info.get("key")) if "case" in info else split_id(b["fullname"])
        if ident not in rows:
            continue
        row = rows[ident]
        data = b["stats"].get("data") or []
        if info.get("entries_per_round") and info.get("case") != "reopen":
            row.rates += [info["entries_per_round"] / t for t in data if t > 0]
            row.bws += [info["bytes_per_round"] / t for t in data if t > 0]
        row.rounds.append(len(data))
        row.extra.append(info)
    for o in outcomes:
        ident = split_id(o["nodeid"])
        if ident not in rows or o["outcome"] == "passed":
            continue
        row = rows[ident]
        if o["outcome"] == "skipped" and not row.status:
            row.status = "skipped: " + o["reason"].removeprefix("Skipped: ")
        elif o["outcome"] == "failed" and not row.status.startswith("FAILED"):
            row.status = f"FAILED ({o['when']}): {o['reason']}"  # the first failure says why
    return rows


# -- formatting ---------------------------------------------------------------------


def fmt_rate(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x" if x < 10 else f"{x:.1f}x"


def trunc(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


LABEL_W = 62


def print_rate_case(name: str, rows: dict[tuple[str, str], Row]) -> None:
    case = CASES[name]
    print(f"\n{case.title}")
    if not any(rows[(name, k)].ok or rows[(name, k)].status for k, _ in case.rows):
        print("  (not run)")
        return
    print(
        f"  {'row':<{LABEL_W}} {'entries/s':>12} {'MB/s':>9} {'spread':>7} {'rounds':>8} {'ours is':>9}"
        f"  {'entries/sync':>22}"
    )
    ours = rows.get((name, "ours"))
    for key, label in case.rows:
        row = rows[(name, key)]
        if not row.ok:
            status = row.status or "not run"
            print(f"  {trunc(label, LABEL_W):<{LABEL_W}} {trunc(status, 80)}")
            continue
        spread = "" if row.spread != row.spread else f"{row.spread * 100:.0f}%"
        vs = "—"
        if key != "ours" and ours is not None and ours.ok:
            vs = fmt_ratio(ours.rate / row.rate)
        rounds = "+".join(str(r) for r in row.rounds)
        print(
            f"  {trunc(label, LABEL_W):<{LABEL_W}} {fmt_rate(row.rate):>12} "
            f"{fmt_rate(row.bw / 1e6):>9} {spread:>7} {rounds:>8} {vs:>9}  {row.per_sync():>22}"
        )
        if row.status:
            print(f"  {'':<{LABEL_W}} {trunc(row.status, 80)}")


def print_reopen_case(rows: dict[tuple[str, str], Row]) -> None:
    case = CASES["reopen"]
    print(f"\n{case.title}")
    if not any(rows[("reopen", k)].ok or rows[("reopen", k)].status for k, _ in case.rows):
        print("  (not run)")
        return
    print(
        f"  {'row':<{LABEL_W - 14}} {'reopen s':>9} {'open+close s':>14} {'peak RSS +MB':>13} "
        f"{'anon/file +MB at open':>22} {'tail(500) ms':>13} {'segs':>5}"
    )
    for key, label in case.rows:
        row = rows[("reopen", key)]
        if not row.ok:
            print(f"  {trunc(label, LABEL_W - 14):<{LABEL_W - 14}} {trunc(row.status or 'not run', 90)}")
            continue
        med = statistics.median
        e = row.extra[-1]
        reopen = med(row.values("reopen_s"))
        oc = f"{med(row.values('open_s')):.3f}+{med(row.values('close_s')):.3f}"
        peak = max(row.values("peak_rss_growth")) / 1e6
        anon = med(row.values("anon_growth_open")) / 1e6
        filep = med(row.values("file_growth_open")) / 1e6
        tail = med(row.values("tail500_s")) * 1e3
        print(
            f"  {trunc(label, LABEL_W - 14):<{LABEL_W - 14}} {reopen:>9.3f} {oc:>14} {peak:>13.1f} "
            f"{f'{anon:.1f} / {filep:.1f}':>22} {tail:>13.2f} {e.get('segments', '?'):>5}"
        )
        if not e.get("hwm_reset", True):
            print("  (could not reset VmHWM: peak growth is measured from the pre-open high-water mark)")


@dataclasses.dataclass
class Goal:
    ident: str
    text: str
    num: tuple[str, str]
    den: tuple[str, str] | None
    target: float
    metric: str = "rate"  # "rate" (entries/s) or "bw" (bytes/s)
    as_percent: bool = False


GOALS = [
    Goal("1", "single producer vs RocksDB put sync, per record", ("single", "ours"), ("single", "rocksdb"), 1.3),
    Goal("2", "64 threads (group commit) vs our single producer", ("threads", "ours"), ("threads", "ours_1"), 15.0),
    Goal(
        "2b", "64 threads immediate vs the same threads batched", ("threads", "ours"), ("threads", "ours_batched"), 0.9
    ),
    Goal("3", "append_batch(1000) vs RocksDB WriteBatch(1000) sync", ("batch", "ours"), ("batch", "rocksdb"), 2.0),
    Goal(
        "3s",
        "the same, entries marked processed as the services do",
        ("batch", "ours_consumed"),
        ("batch", "rocksdb"),
        2.0,
    ),
    Goal(
        "4",
        "1 MiB entries vs raw write+fdatasync of 1 MiB",
        ("mib", "ours"),
        ("mib", "raw"),
        0.8,
        metric="bw",
        as_percent=True,
    ),
    Goal("5a", "verify scan (scan_segment) from page cache", ("verify", "ours"), None, 1e9, metric="bw"),
]

NOISY_SPREAD = 0.5  # IQR/median of per-round rates above which a verdict is flagged
REOPEN_LIMIT_S = 1.0
REOPEN_RSS_LIMIT = 64e6  # bytes of peak RSS growth for 1,000,000 entries
PER_ENTRY_LIMIT = 4.0  # bytes per entry (1M x 200 B vs 100k x 2 KiB, same bytes)


def print_goals(rows: dict[tuple[str, str], Row]) -> int:
    print("\nGOALS (ratios within this run; MISS never fails the run)")
    print(f"  {'':<3} {'goal':<52} {'measured':<48} {'target':<24} result")
    missed = 0

    noisy_seen = False

    def line(ident, text, measured, target, ok, noisy=False):
        nonlocal missed, noisy_seen
        result = "n/a" if ok is None else ("PASS" if ok else "MISS")
        if noisy and ok is not None:
            result += " (noisy)"
            noisy_seen = True
        missed += ok is False
        print(f"  {ident:<3} {text:<52} {measured:<48} {target:<24} {result}")

    for g in GOALS:
        num = rows[g.num]
        den = rows[g.den] if g.den else None
        val = (lambda r: r.rate) if g.metric == "rate" else (lambda r: r.bw)
        unit = "entries/s" if g.metric == "rate" else "MB/s"
        scale = 1.0 if g.metric == "rate" else 1e-6
        if not num.ok or (den is not None and not den.ok):
            line(g.ident, g.text, "not measured", "", None)
            continue
        noisy = any(r.spread > NOISY_SPREAD for r in (num, den) if r is not None)
        if den is None:  # absolute bandwidth
            gbs = val(num) / 1e9
            line(g.ident, g.text, f"{gbs:.2f} GB/s", f">= {g.target / 1e9:g} GB/s", val(num) >= g.target, noisy)
            continue
        ratio = val(num) / val(den)
        shown = f"{ratio * 100:.0f}%" if g.as_percent else fmt_ratio(ratio)
        measured = f"{fmt_rate(val(num) * scale)} / {fmt_rate(val(den) * scale)} {unit} = {shown}"
        target = f">= {g.target * 100:.0f}%" if g.as_percent else f">= {g.target:g}x"
        line(g.ident, g.text, measured, target, ratio >= g.target, noisy)

    big, small = rows[("reopen", "ours")], rows[("reopen", "ours_2k")]
    if big.ok:
        reopen = statistics.median(big.values("reopen_s"))
        line(
            "5b",
            "reopen, 1,000,000 unprocessed entries: time",
            f"{reopen:.3f} s (median)",
            f"<= {REOPEN_LIMIT_S:g} s",
            reopen <= REOPEN_LIMIT_S,
        )
        peak = max(big.values("peak_rss_growth"))
        measured = f"peak RSS +{peak / 1e6:.1f} MB"
        ok = peak <= REOPEN_RSS_LIMIT
        target = f"<= {REOPEN_RSS_LIMIT / 1e6:.0f} MB"
        if small.ok:
            n_big, n_small = big.extra[-1]["entries"], small.extra[-1]["entries"]
            per_entry = (peak - max(small.values("peak_rss_growth"))) / (n_big - n_small)
            measured += f"; {per_entry:+.1f} B/entry vs 100k x 2KiB"
            target += f", <= {PER_ENTRY_LIMIT:g} B/entry"
            ok = ok and per_entry <= PER_ENTRY_LIMIT
        line("5b", "reopen, 1,000,000 unprocessed entries: memory", measured, target, ok)
    else:
        line("5b", "reopen, 1,000,000 unprocessed entries", "not measured", "", None)
    if noisy_seen:
        print(
            f"  (noisy) = a compared row's spread exceeds {NOISY_SPREAD:.0%}: the VM was busy "
            f"during it; rerun before trusting that verdict."
        )
    return missed


def pressure() -> str:
    """CPU and IO pressure (PSI, share of the last 60 s that some task stalled):
    other work on the machine shows up here, and in the spread column."""
    out = []
    for res in ("cpu", "io"):
        try:
            with open(f"/proc/pressure/{res}") as f:
                some = f.readline().split()
            avg60 = dict(kv.split("=") for kv in some[1:])["avg60"]
            out.append(f"{res} {float(avg60):.0f}%")
        except (OSError, KeyError, ValueError, IndexError):
            pass
    return "stall pressure (avg60) " + ", ".join(out) if out else "no PSI"


def environment(root: Path) -> list[str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return [
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"rocksdict {rocksdict_version()}",
        f"scratch dir {root} on {fs_type(root)}; at start: load average {load}, {pressure()}",
    ]


def print_table(report: dict, outcomes: list[dict], header: list[str]) -> int:
    rows = collect(report, outcomes)
    when = report.get("datetime", "")[:19].replace("T", " ")
    print("\n" + "=" * 118)
    print(f"SignalDB WAL benchmarks, {when} UTC (pytest-benchmark {report.get('version', '?')})")
    for h in header:
        print(h)
    print(
        "entries/s and MB/s (payload bytes, 1 MB = 10^6 B) are medians over rounds, both passes "
        "merged; spread = IQR/median;\n'ours is' = our rate / that row's rate; entries/sync = "
        "entries per fdatasync @ mean fdatasync, and the share of\nthe row's time spent in "
        "fdatasync (engine rows, from the WAL's stats()). "
        "Durable rows return only after fdatasync/fsync."
    )
    for name in CASES:
        if name == "reopen":
            print_reopen_case(rows)
        else:
            print_rate_case(name, rows)
    missed = print_goals(rows)
    print("=" * 118)
    return missed


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="keep pytest-benchmark's JSON report at this path")
    ap.add_argument("--from-json", help="print the table of an earlier --json report; run nothing")
    args, pytest_args = ap.parse_known_args(argv)

    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        print_table(report, report.get("signaldb_outcomes", []), [])
        return 0

    root = bench_root()
    kind = fs_type(root)
    if kind in TMPFS_LIKE:
        print(
            f"warning: scratch dir {root} is on {kind}, not a real disk: fsync costs nothing "
            f"there. Set SIGNALDB_BENCH_TMP to a directory on the disk.",
            file=sys.stderr,
        )
    header = environment(root)

    fd, json_path = tempfile.mkstemp(prefix="signaldb-bench-", suffix=".json")
    os.close(fd)
    fd, outcomes_path = tempfile.mkstemp(prefix="signaldb-bench-outcomes-", suffix=".jsonl")
    os.close(fd)
    env = dict(os.environ, SIGNALDB_BENCH_TMP=str(root), SIGNALDB_BENCH_OUTCOMES=outcomes_path)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *[str(HERE / s) for s in SUITES],
        "-o",
        "python_files=bench_*.py",
        "-p",
        "no:cacheprovider",
        "-v",
        "--tb=short",
        "--benchmark-quiet",
        f"--benchmark-json={json_path}",
        *pytest_args,
    ]
    try:
        rc = subprocess.call(cmd, cwd=REPO, env=env)
        outcomes = []
        with open(outcomes_path) as f:
            outcomes = [json.loads(line) for line in f if line.strip()]
        try:
            report = json.loads(Path(json_path).read_text())
        except (OSError, ValueError):
            report = {}
        if args.json and report:
            report["signaldb_outcomes"] = outcomes
            Path(args.json).write_text(json.dumps(report, indent=1))
    finally:
        for p in (json_path, outcomes_path):
            with contextlib.suppress(OSError):
                os.unlink(p)

    if not report:
        print(f"\npytest exited with status {rc} and wrote no benchmark report (crashed?): no table.", file=sys.stderr)
        return 1
    header.append(
        f"{'':>{len(str(root)) + 12}}at end:   load average "
        f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}, {pressure()}"
    )
    print_table(report, outcomes, header)
    if rc not in (0, 5):
        print(
            f"\npytest exited with status {rc}: some benchmarks could not run (see above). "
            f"Speed misses alone never cause this.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
