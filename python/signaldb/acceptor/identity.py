"""The acceptor's identity: a stable id kept next to its WAL, and a per-start incarnation.

``<wal_dir>/acceptor-id`` names the acceptor: created once (random, 128 bits,
32 hex digits), written durably, read back on every start. It must follow the
rule the writer applies to every Flight stream (``flight_protocol.check_acceptor_id``):
a file that breaks it stops the acceptor at start with one line naming the
file, instead of an acceptor that acknowledges requests the writer then refuses.

The *incarnation* is a fresh random 64-bit value (never 0, the legacy one)
drawn at every start and never stored: every entry appended in this life
carries it (``entry_format``), and the writer dedupes on (acceptor id,
incarnation, entry id). Entry ids come from the WAL directory's history, so a
restored backup, or two acceptors started from copies of one directory, hand
out ids again; with a new incarnation per start, those new entries can never
be taken for ones the writer saw before, while a replayed entry keeps the
incarnation it was written with and is deduplicated as before.
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path

from signaldb.flight_protocol import ACCEPTOR_ID_RULE, ProtocolError, check_acceptor_id
from signaldb.service.durable import replace_durably

FILE_NAME = "acceptor-id"


class AcceptorIdError(Exception):
    """The acceptor-id file exists but is unusable."""


def load_or_create(wal_dir: Path) -> str:
    path = Path(wal_dir) / FILE_NAME
    try:
        raw: bytes | None = path.read_bytes()
    except FileNotFoundError:
        raw = None
    except OSError as err:
        raise AcceptorIdError(f"acceptor id file {path} cannot be read: {err}") from None
    if raw is not None:
        try:
            text = raw.decode("ascii").strip()
            return check_acceptor_id(text)
        except (UnicodeDecodeError, ProtocolError):
            raise AcceptorIdError(
                f"acceptor id file {path} is invalid (want {ACCEPTOR_ID_RULE}, found {raw[:64]!r}); "
                "restore it from a backup of this WAL directory, or remove it to give this "
                "directory a new acceptor id"
            ) from None
    new_id = uuid.uuid4().hex
    # Durable before use: a rename lost to a power cut would mint a second id.
    replace_durably(path, (new_id + "\n").encode())
    return new_id


def new_incarnation() -> int:
    """A random, non-zero 64-bit value: this start's incarnation."""
    while True:
        value = secrets.randbits(64)
        if value:
            return value
