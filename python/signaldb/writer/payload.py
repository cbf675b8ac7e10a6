"""The bytes of one writer WAL entry.

::

    b"SDW1" | header length (u32, little endian) | header JSON | Arrow IPC stream

The header is ``{"acceptor_id": str, "table": str, "entries": [[id, rows], ...]}``
(``acceptor_id`` is the source, ``flight_protocol.source_key``: the acceptor id,
followed by ``/<incarnation>`` for entries of acceptor lives with one):
the acceptor entries whose rows the batch holds, in row order (duplicates already
removed, so every listed id is new to this writer). The IPC stream carries the
schema and exactly one record batch. The WAL's CRC covers all of it; the magic
guards against reading a payload of some future format as this one.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import pyarrow as pa

MAGIC = b"SDW1"
_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class WalRecord:
    acceptor_id: str
    table: str
    entries: tuple[tuple[int, int], ...]  # (acceptor entry id, rows), in row order
    batch: pa.RecordBatch

    @property
    def entry_ids(self) -> list[int]:
        return [eid for eid, _ in self.entries]


# Room for what the size estimate leaves out: the end-of-stream marker and padding.
_IPC_SLACK = 64


def encode(record: WalRecord) -> bytes:
    header = json.dumps(
        {"acceptor_id": record.acceptor_id, "table": record.table, "entries": [list(e) for e in record.entries]},
        separators=(",", ":"),
    ).encode()
    prefix = MAGIC + _LEN.pack(len(header)) + header
    # The IPC body is the bulk of the bytes: write it once into a buffer of the right
    # size. A growing stream reallocates (and zero-fills) it several times over,
    # which cost twice as much as the encoding itself.
    estimate = len(prefix) + _schema_bytes(record.table, record.batch.schema)
    estimate += pa.ipc.get_record_batch_size(record.batch) + _IPC_SLACK
    buffer = pa.allocate_buffer(estimate)
    sink = pa.FixedSizeBufferWriter(buffer)
    try:
        _write(sink, prefix, record.batch)
    except (pa.ArrowInvalid, OSError):  # the estimate was short (never seen): grow as needed
        growing = pa.BufferOutputStream()
        _write(growing, prefix, record.batch)
        grown: bytes = growing.getvalue().to_pybytes()
        return grown
    encoded: bytes = buffer.slice(0, sink.tell()).to_pybytes()
    return encoded


# Serialized schema size per table: serializing it for every entry cost ~4 % of an ingesting
# writer's time. A batch's schema is its table's reference schema (``validate.check_batch``);
# should one differ, a short estimate only takes the growing path above.
_SCHEMA_BYTES: dict[str, int] = {}


def _schema_bytes(table: str, schema: pa.Schema) -> int:
    size = _SCHEMA_BYTES.get(table)
    if size is None:
        size = _SCHEMA_BYTES[table] = schema.serialize().size
    return size


def _write(sink: pa.NativeFile, prefix: bytes, batch: pa.RecordBatch) -> None:
    sink.write(prefix)
    with pa.ipc.new_stream(sink, batch.schema) as stream:
        stream.write_batch(batch)


def decode(payload: bytes) -> WalRecord:
    if payload[:4] != MAGIC:
        raise ValueError(f"not a writer WAL payload (magic {payload[:4]!r})")
    (length,) = _LEN.unpack_from(payload, 4)
    start = 4 + _LEN.size
    header = json.loads(payload[start : start + length])
    reader = pa.ipc.open_stream(pa.py_buffer(payload)[start + length :])
    batches = list(reader)
    batch = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
    return WalRecord(
        acceptor_id=header["acceptor_id"],
        table=header["table"],
        entries=tuple((int(i), int(r)) for i, r in header["entries"]),
        batch=batch,
    )
