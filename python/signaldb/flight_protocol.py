"""What the acceptor and the writer say to each other over Arrow Flight.

One ``do_put`` stream carries batches of one table from one acceptor:

- descriptor: ``FlightDescriptor.for_command`` with the JSON
  ``{"v": 1, "table": "traces", "acceptor_id": "3f2c..."}``. ``acceptor_id`` is
  the acceptor's stable identity (kept in its WAL directory), so the pair
  (acceptor_id, entry id) names one OTLP request forever.
- each batch is written with ``app_metadata`` JSON ``{"acceptor_id": "3f2c...",
  "entries": [[id, rows], ...]}``: the batch's rows come from those acceptor
  WAL entries (of that acceptor: it must match the descriptor's), in that order
  and with those row counts (they sum to ``num_rows``). Optional
  ``"min_unprocessed": n`` says every entry id below n is done for good (see
  ``encode_batch_metadata``). Optional ``"incarnation": "<16 hex digits>"``
  names the acceptor life that wrote the batch's entries (absent: the legacy
  incarnation 0, entries from before incarnations); entries are named by
  (acceptor_id, incarnation, id), and one batch holds entries of one
  incarnation (a stream may mix batches of several). A batch may hold many
  entries; an entry's rows of one table are never split across batches of one
  stream, but the rows of one entry land in several tables (metrics).
- the writer answers each batch, in order, once it is durable in the writer's
  WAL, with a ``PutResult`` whose ``app_metadata`` is JSON ``{"entries": [id,
  ...], "duplicates": [id, ...]}`` — every entry of the batch, and the subset
  it already had (acked without being written again).
- a batch the writer refuses (unknown table, wrong schema, rows that do not
  add up) ends the stream with Flight's invalid-argument status
  (``pyarrow.ArrowInvalid`` on the client); nothing of that batch is kept.
  Anything else (unavailable, internal) is retryable.

When ``SIGNALDB_AUTH_TOKEN`` is set, every Flight call carries the header
``authorization: Bearer <token>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.flight as flight

from signaldb import otlp

PROTOCOL_VERSION = 1

#: Tables the writer accepts: every table the OTLP conversion produces (``otlp.TABLES``,
#: the one list; DESIGN.md "Parquet output" names the first five).
TABLES: tuple[str, ...] = tuple(table for tables in otlp.TABLES.values() for table in tables)


class ProtocolError(ValueError):
    """A descriptor or app_metadata that does not follow this protocol."""


ACCEPTOR_ID_RULE = "1 to 128 printable ASCII characters, no space and no '/'"


def check_acceptor_id(value: object) -> str:
    """The one rule for acceptor ids, applied by the writer to every stream and by the
    acceptor to its ``acceptor-id`` file at start. No '/': ``source_key`` uses it."""
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= 128
        or not all(0x21 <= ord(c) <= 0x7E for c in value)
        or "/" in value
    ):
        raise ProtocolError(f"acceptor_id must be {ACCEPTOR_ID_RULE}; got {str(value)[:200]!r}")
    return value


def source_key(acceptor_id: str, incarnation: int) -> str:
    """The writer's name for one acceptor life: the acceptor id for the legacy incarnation 0
    (what writers stored before incarnations), else ``<acceptor id>/<16 hex digits>``."""
    return acceptor_id if incarnation == 0 else f"{acceptor_id}/{incarnation:016x}"


@dataclass(frozen=True)
class StreamHeader:
    table: str
    acceptor_id: str

    def descriptor(self) -> flight.FlightDescriptor:
        body = {"v": PROTOCOL_VERSION, "table": self.table, "acceptor_id": self.acceptor_id}
        return flight.FlightDescriptor.for_command(json.dumps(body, separators=(",", ":")))

    @classmethod
    def from_descriptor(cls, descriptor: flight.FlightDescriptor) -> StreamHeader:
        if descriptor.descriptor_type != flight.DescriptorType.CMD:
            raise ProtocolError("descriptor must be a command (FlightDescriptor.for_command)")
        body = _json_object(descriptor.command, "descriptor")
        if body.get("v") != PROTOCOL_VERSION:
            raise ProtocolError(f"unsupported protocol version {body.get('v')!r} (want {PROTOCOL_VERSION})")
        table, acceptor_id = body.get("table"), body.get("acceptor_id")
        if table not in TABLES:
            raise ProtocolError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
        return cls(table=table, acceptor_id=check_acceptor_id(acceptor_id))


def encode_batch_metadata(
    entries: Sequence[tuple[int, int]],
    acceptor_id: str | None = None,
    min_unprocessed: int | None = None,
    incarnation: int = 0,
) -> bytes:
    """``entries``: (acceptor entry id, rows of this batch from it), in row order.

    ``min_unprocessed``: every acceptor entry id below it is processed (acked
    by a writer, or dead-lettered) and will never be sent again, so the writer
    may forget the ids below it and treat any of them as a duplicate. It keeps
    the writer's dedupe index compact: the acceptor's ids are one sequence
    shared by all signals, so per-table id sets alone would be full of holes.
    The writer applies it to the batch's (acceptor, incarnation) only, and never
    beyond the highest id it has stored from it (see ``Ledger.raise_floor``).

    ``incarnation``: the acceptor life whose entries these are (0, the legacy
    one, is not written: the metadata then reads as before incarnations)."""
    body: dict[str, object] = {"entries": [[eid, rows] for eid, rows in entries]}
    if incarnation:
        body["incarnation"] = f"{incarnation:016x}"
    if acceptor_id is not None:
        body["acceptor_id"] = acceptor_id
    if min_unprocessed is not None:
        body["min_unprocessed"] = min_unprocessed
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class BatchMetadata:
    entries: list[tuple[int, int]]  # (acceptor entry id, rows), in row order
    min_unprocessed: int | None  # see encode_batch_metadata
    incarnation: int = 0  # the acceptor life that wrote the entries; 0: legacy


def decode_batch_metadata(raw: bytes | None, num_rows: int, acceptor_id: str | None = None) -> BatchMetadata:
    """Validates a batch's app_metadata; with ``acceptor_id``, a batch naming
    another acceptor than its stream's descriptor is refused."""
    if raw is None:
        raise ProtocolError("batch without app_metadata (entries and row counts)")
    body = _json_object(raw, "batch app_metadata")
    if acceptor_id is not None and body.get("acceptor_id", acceptor_id) != acceptor_id:
        raise ProtocolError(f"batch acceptor_id {body.get('acceptor_id')!r} differs from the stream's {acceptor_id!r}")
    entries = body.get("entries")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError("batch app_metadata needs a non-empty 'entries' list")
    parsed: list[tuple[int, int]] = []
    for item in entries:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
            or item[0] < 0
            or item[1] < 0
        ):
            raise ProtocolError(f"each entry must be [id, rows] with non-negative integers; got {item!r}")
        parsed.append((item[0], item[1]))
    if len({eid for eid, _ in parsed}) != len(parsed):
        raise ProtocolError("an entry id appears twice in one batch")
    total = sum(rows for _, rows in parsed)
    if total != num_rows:
        raise ProtocolError(f"entries account for {total} rows but the batch has {num_rows}")
    floor = body.get("min_unprocessed")
    if floor is not None and (not isinstance(floor, int) or isinstance(floor, bool) or floor < 0):
        raise ProtocolError(f"min_unprocessed must be a non-negative integer; got {floor!r}")
    incarnation = body.get("incarnation")
    if incarnation is None:
        return BatchMetadata(parsed, floor)
    if (
        not isinstance(incarnation, str)
        or len(incarnation) != 16
        or incarnation.strip("0123456789abcdef")
        or int(incarnation, 16) == 0
    ):
        raise ProtocolError(f"incarnation must be 16 lowercase hex digits, not all zero; got {incarnation!r}")
    return BatchMetadata(parsed, floor, int(incarnation, 16))


def encode_ack(entries: Sequence[int], duplicates: Sequence[int]) -> bytes:
    return json.dumps({"entries": list(entries), "duplicates": list(duplicates)}, separators=(",", ":")).encode()


def decode_ack(raw: bytes) -> tuple[list[int], list[int]]:
    body = _json_object(raw, "ack")
    entries, duplicates = body.get("entries"), body.get("duplicates", [])
    if not isinstance(entries, list) or not isinstance(duplicates, list):
        raise ProtocolError("ack needs 'entries' and 'duplicates' lists")
    return [int(x) for x in entries], [int(x) for x in duplicates]


def _json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f"{what} is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return body


def bearer_header(token: str | None) -> list[tuple[bytes, bytes]]:
    """Call headers for ``flight.FlightCallOptions(headers=...)``."""
    return [(b"authorization", f"Bearer {token}".encode())] if token else []
