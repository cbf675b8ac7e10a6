"""How one accepted OTLP request is stored in the acceptor WAL.

The WAL record's kind says the signal (traces, logs, metrics); the payload is
one encoding byte, for the current encodings the time window the request was
admitted under, and the request body exactly as received, after transport
decompression:

    0x05 <window> <incarnation> <ExportXServiceRequest protobuf bytes>
    0x06 <window> <incarnation> <OTLP/JSON bytes>
    window = <min_ns: i64 LE> <max_ns: i64 LE> <now_ns: i64 LE>   (24 bytes)
    incarnation = <u64 LE, never 0>                                (8 bytes)

Storing the body as received keeps the ack path free of conversion; the
forwarder decodes it later with the same Rust code that validated it. Storing
the window with it makes that later conversion reject exactly the items the
client was told were rejected (partial success), whatever the clock or the
settings say by then.

The incarnation is a random 64-bit value drawn at every acceptor start (see
``signaldb.acceptor.identity``) and written into every entry of that life.
The WAL's entry ids come from the directory's own history, so a restored
backup or a copy of the directory hands out ids again that an earlier life
already used; (acceptor id, incarnation, entry id) is never reused, and it is
what the writer dedupes on. A replayed entry keeps the incarnation it was
written with, so a resend is still recognised as the same entry.

Older entries are still read: 0x03 protobuf / 0x04 JSON (window, no
incarnation) and 0x01 / 0x02 (the body right after the byte, converted
without a window). They belong to the legacy incarnation 0.
"""

from __future__ import annotations

import struct

from signaldb.otlp import JSON, PROTOBUF, TimeWindow

_WINDOW = struct.Struct("<qqq")
_INCARNATION = struct.Struct("<Q")
_WINDOWED = {PROTOBUF: 0x03, JSON: 0x04}
_INCARNATED = {PROTOBUF: 0x05, JSON: 0x06}
_BY_BYTE = {0x01: PROTOBUF, 0x02: JSON, 0x03: PROTOBUF, 0x04: JSON, 0x05: PROTOBUF, 0x06: JSON}

#: The incarnation of entries written before incarnations existed (0x01-0x04).
LEGACY_INCARNATION = 0


class EntryFormatError(ValueError):
    """A WAL payload that did not come from ``encode`` (unknown encoding byte, short header)."""


def encode(body: bytes, content_type: str, window: TimeWindow, incarnation: int = LEGACY_INCARNATION) -> bytes:
    """``content_type`` is ``signaldb.otlp.PROTOBUF`` or ``JSON`` (already normalized);
    ``incarnation`` 0 writes the older 0x03/0x04 form (tests and tools only)."""
    if incarnation == LEGACY_INCARNATION:
        return bytes((_WINDOWED[content_type],)) + _WINDOW.pack(*window.as_tuple()) + body
    return (
        bytes((_INCARNATED[content_type],)) + _WINDOW.pack(*window.as_tuple()) + _INCARNATION.pack(incarnation) + body
    )


def incarnation_of(payload: bytes) -> int:
    """The acceptor life that wrote the entry (0 for entries from before incarnations)."""
    if payload and payload[0] in (0x05, 0x06):
        if len(payload) < 1 + _WINDOW.size + _INCARNATION.size:
            raise EntryFormatError(f"acceptor entry of {len(payload)} bytes is too short for its header")
        return int(_INCARNATION.unpack_from(payload, 1 + _WINDOW.size)[0])
    decode(payload)  # unknown or short: the same error as decode
    return LEGACY_INCARNATION


def decode(payload: bytes) -> tuple[str, memoryview, TimeWindow | None]:
    """Returns (content type, body, admission window or None) without copying the body."""
    if not payload or payload[0] not in _BY_BYTE:
        first = f"0x{payload[0]:02x}" if payload else "nothing"
        raise EntryFormatError(f"unknown acceptor entry encoding byte {first}")
    view = memoryview(payload)
    if payload[0] in (0x01, 0x02):
        return _BY_BYTE[payload[0]], view[1:], None
    header = 1 + _WINDOW.size + (_INCARNATION.size if payload[0] in (0x05, 0x06) else 0)
    if len(payload) < header:
        raise EntryFormatError(f"acceptor entry of {len(payload)} bytes is too short for its header")
    min_ns, max_ns, now_ns = _WINDOW.unpack_from(payload, 1)
    return _BY_BYTE[payload[0]], view[header:], TimeWindow(min_ns, max_ns, now_ns)
