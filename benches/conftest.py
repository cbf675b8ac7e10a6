"""Fixtures for the WAL benchmarks (run them with `make bench` / benches/run.py)."""

from __future__ import annotations

import contextlib
import json
import os

import pytest

from benchlib import bench_root, make_workdir, remove_tree


@pytest.fixture
def workdir(request):
    """A fresh directory on the real disk (see benchlib.bench_root), removed after."""
    path = make_workdir(f"{request.node.originalname}-")
    yield path
    remove_tree(path)


def pytest_sessionfinish(session, exitstatus):
    root = bench_root()
    with contextlib.suppress(OSError):  # not empty: leaves anything a crashed run left behind
        root.rmdir()


def pytest_runtest_logreport(report):
    """Appends each benchmark's outcome to $SIGNALDB_BENCH_OUTCOMES (JSON lines),
    so that run.py can name skipped or failed rows even without numbers."""
    path = os.environ.get("SIGNALDB_BENCH_OUTCOMES")
    if not path:
        return
    if report.when != "call" and report.outcome == "passed":
        return
    reason = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
    elif report.failed:
        text = getattr(report, "longreprtext", "") or ""
        lines = [ln for ln in text.splitlines() if ln.startswith("E ")]
        reason = lines[0][2:].strip() if lines else text.strip().splitlines()[-1:] or [""]
        reason = reason if isinstance(reason, str) else reason[0]
    with open(path, "a") as f:
        f.write(
            json.dumps(
                {
                    "nodeid": report.nodeid,
                    "when": report.when,
                    "outcome": report.outcome,
                    "reason": reason[:300],
                }
            )
            + "\n"
        )
