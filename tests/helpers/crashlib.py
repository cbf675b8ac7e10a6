"""What the crash child writes, recomputable by the parent from (cycle, seq) alone."""

from __future__ import annotations

import hashlib
import random

KINDS = ("traces", "logs", "metrics")
# Sizes in bytes and their weights: mostly small, some bigger than a 64 KiB segment.
SIZES = (0, 8, 100, 700, 3000, 20_000, 100_000)
WEIGHTS = (5, 25, 35, 20, 10, 4, 1)
SEGMENT_SIZE = 64 * 1024


def payload_for(cycle: int, seq: int) -> bytes:
    rng = random.Random(f"{cycle}/{seq}")
    n = rng.choices(SIZES, WEIGHTS)[0]
    return f"{cycle}:{seq}:".encode() + rng.randbytes(n)


def kind_for(seq: int) -> str:
    return KINDS[seq % 3]


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def parse_payload(payload: bytes) -> tuple[int, int]:
    """(cycle, seq) from a payload's prefix; raises ValueError on garbage."""
    cycle, seq, _ = payload.split(b":", 2)
    return int(cycle), int(seq)
