"""How one accepted OTLP request is stored in the acceptor WAL.

The WAL record's kind says the signal (traces, logs, metrics); the payload is
one encoding byte followed by the request body exactly as received, after
transport decompression:

    0x01 <ExportXServiceRequest protobuf bytes>
    0x02 <OTLP/JSON bytes>

Storing the body as received keeps the ack path free of conversion; the
forwarder decodes it later with the same Rust code that validated it.
"""

from __future__ import annotations

from signaldb.otlp import JSON, PROTOBUF

_BY_CONTENT_TYPE = {PROTOBUF: b"\x01", JSON: b"\x02"}
_BY_BYTE = {0x01: PROTOBUF, 0x02: JSON}


class EntryFormatError(ValueError):
    """A WAL payload that did not come from ``encode`` (unknown encoding byte)."""


def encode(body: bytes, content_type: str) -> bytes:
    """``content_type`` is ``signaldb.otlp.PROTOBUF`` or ``JSON`` (already normalized)."""
    return _BY_CONTENT_TYPE[content_type] + body


def decode(payload: bytes) -> tuple[str, memoryview]:
    """Returns (content type, body) without copying the body."""
    if not payload or payload[0] not in _BY_BYTE:
        first = f"0x{payload[0]:02x}" if payload else "nothing"
        raise EntryFormatError(f"unknown acceptor entry encoding byte {first}")
    return _BY_BYTE[payload[0]], memoryview(payload)[1:]
