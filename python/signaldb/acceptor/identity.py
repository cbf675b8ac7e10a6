"""The acceptor's stable identity, kept next to its WAL.

The writer dedupes by (acceptor id, entry id), so the id must survive restarts
and must differ between acceptors. It is created once (random, 128 bits),
written durably, and read back on every start.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

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
    tmp = wal_dir / f".{FILE_NAME}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (new_id + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(wal_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename must survive a power cut, or a second id would be minted
    finally:
        os.close(dir_fd)
    return new_id
