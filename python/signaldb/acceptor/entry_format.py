"""How one accepted OTLP request is stored in the acceptor WAL.

The WAL record's kind says the signal (traces, logs, metrics); the payload is
one encoding byte, for the current encodings the time window the request was
admitted under, and the request body exactly as received, after transport
decompression:

    0x03 <window> <ExportXServiceRequest protobuf bytes>
    0x04 <window> <OTLP/JSON bytes>
    window = <min_ns: i64 LE> <max_ns: i64 LE> <now_ns: i64 LE>   (24 bytes)

Storing the body as received keeps the ack path free of conversion; the
forwarder decodes it later with the same Rust code that validated it. Storing
the window with it makes that later conversion reject exactly the items the
client was told were rejected (partial success), whatever the clock or the
settings say by then.

Entries written before windows existed (0x01 protobuf, 0x02 JSON: the body
right after the byte) are still read; they convert without a window.
"""

from __future__ import annotations

import struct

from signaldb.otlp import JSON, PROTOBUF, TimeWindow

_WINDOW = struct.Struct("<qqq")
_WINDOWED = {PROTOBUF: 0x03, JSON: 0x04}
_BY_BYTE = {0x01: PROTOBUF, 0x02: JSON, 0x03: PROTOBUF, 0x04: JSON}


class EntryFormatError(ValueError):
    """A WAL payload that did not come from ``encode`` (unknown encoding byte, short header)."""


def encode(body: bytes, content_type: str, window: TimeWindow) -> bytes:
    """``content_type`` is ``signaldb.otlp.PROTOBUF`` or ``JSON`` (already normalized)."""
    return bytes((_WINDOWED[content_type],)) + _WINDOW.pack(*window.as_tuple()) + body


def decode(payload: bytes) -> tuple[str, memoryview, TimeWindow | None]:
    """Returns (content type, body, admission window or None) without copying the body."""
    if not payload or payload[0] not in _BY_BYTE:
        first = f"0x{payload[0]:02x}" if payload else "nothing"
        raise EntryFormatError(f"unknown acceptor entry encoding byte {first}")
    view = memoryview(payload)
    if payload[0] in (0x01, 0x02):
        return _BY_BYTE[payload[0]], view[1:], None
    if len(payload) < 1 + _WINDOW.size:
        raise EntryFormatError(f"acceptor entry of {len(payload)} bytes is too short for its time window")
    min_ns, max_ns, now_ns = _WINDOW.unpack_from(payload, 1)
    return _BY_BYTE[payload[0]], view[1 + _WINDOW.size:], TimeWindow(min_ns, max_ns, now_ns)
