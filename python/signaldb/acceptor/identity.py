"""The acceptor's stable identity, kept next to its WAL.

The writer dedupes by (acceptor id, entry id), so the id must survive restarts
and must differ between acceptors. It is created once (random, 128 bits),
written durably, and read back on every start.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from signaldb.service.durable import replace_durably

FILE_NAME = "acceptor-id"


def load_or_create(wal_dir: Path) -> str:
    path = wal_dir / FILE_NAME
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        return text
    new_id = uuid.uuid4().hex
    # Durable before use: a rename lost to a power cut would mint a second id.
    replace_durably(path, (new_id + "\n").encode())
    return new_id
