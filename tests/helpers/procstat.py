"""Memory of a running process, read from /proc, for tests that bound it."""

from __future__ import annotations

from pathlib import Path

MIB = 1 << 20


def memory(pid: int) -> dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (peak resident so far) of ``pid``, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    if len(out) != 2:
        raise AssertionError(f"/proc/{pid}/status has no VmRSS/VmHWM")
    return out
