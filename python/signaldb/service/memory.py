"""Keep big buffers instead of handing them back to the kernel after every use.

The services move megabytes per call: request bodies and WAL payloads as
Python ``bytes``, Arrow chunks, conversion buffers in the Rust core (the last
two partly through glibc malloc). With glibc's defaults, a freed block at the
top of the heap is trimmed, and blocks above the (adaptive) mmap threshold get
their own mapping, so the next buffer of that size is fresh memory again: page
faults and zero-filled pages on every round. Measured here under full load:
3–8% of the acceptor's and writer's CPU. Raising both thresholds keeps such
blocks in the heap for reuse; the cost is up to ``TRIM_THRESHOLD`` of free
heap kept by an idle process.

An operator's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` win;
on a libc other than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MMAP_THRESHOLD = 64 * MIB  # larger than any buffer the services use per call
TRIM_THRESHOLD = 128 * MIB
_M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_large_buffers() -> bool:
    """Sets glibc's malloc thresholds (see the module docstring); True if they were set."""
    if any(name in os.environ for name in _OPERATOR_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: other libcs' mallopt differ  # noqa: B018
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    if not ok:
        log.warning("could not set malloc thresholds; large buffers are mapped afresh each time")
    return ok
