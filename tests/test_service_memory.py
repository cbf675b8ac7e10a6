"""``signaldb.service.memory``: large buffers are reused, not mapped afresh each time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Allocates 300 buffers of 1–20 MiB (a few alive at a time, like request bodies and
# WAL payloads) and reports the minor page faults it took.
_WORKLOAD = """
import json, random, resource, sys
from signaldb.service.memory import keep_large_buffers
tuned = keep_large_buffers() if sys.argv[1] == "tuned" else False
rng, src, keep = random.Random(1), bytes(32 << 20), []
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(300):
    keep.append(src[:rng.randrange(1 << 20, 20 << 20)])
    if len(keep) > 3:
        keep.pop(0)
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _run(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _WORKLOAD, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def test_large_buffers_are_reused() -> None:
    default, tuned = _run("default"), _run("tuned")
    assert tuned["tuned"] is True
    # ~215,000 faults with glibc's defaults against ~27,000 here: each fresh mapping
    # faults in (and zero-fills) every page again.
    assert tuned["faults"] * 3 < default["faults"], (default, tuned)


def test_an_operators_malloc_settings_win() -> None:
    assert _run("tuned", MALLOC_TRIM_THRESHOLD_="1048576")["tuned"] is False
