"""OTLP/HTTP ``Content-Encoding``: gzip, deflate/zlib, zstd, snappy; every one capped on output.

The encodings are the ones the OpenTelemetry Collector's HTTP server decodes
(``confighttp``) and SDKs send: ``gzip`` (the OTLP default), ``deflate`` and
``zlib`` (zlib-wrapped or raw deflate: clients differ), ``zstd`` (Rust, Go and
Java SDKs offer it) and ``snappy``: the block format, or the framing format
(also as ``x-snappy-framed``), told apart by the stream identifier the framing
format starts with, as the Collector does since it accepted both.

Every decoder stops at ``limit + 1`` bytes of output: the size limit applies
after decompression, and a small bomb costs at most ``limit`` bytes of memory
before it gets its 413. Anything not decodable is a 400 (``bad_compression``),
an encoding not listed here a 415 (``unsupported_encoding``).
"""

from __future__ import annotations

import zlib

import cramjam
import zstandard

from signaldb.acceptor.refusals import Reason, Refused

ENCODINGS = ("gzip", "deflate", "zstd", "snappy")
_ALIASES = {
    "": "identity",
    "identity": "identity",
    "gzip": "gzip",
    "x-gzip": "gzip",
    "deflate": "deflate",
    "zlib": "deflate",
    "zstd": "zstd",
    "snappy": "snappy",
    "x-snappy-framed": "snappy",
}
_SNAPPY_STREAM_ID = b"\xff\x06\x00\x00sNaPpY"
_SNAPPY_MAX_CHUNK = 65536  # framing format: at most 64 KiB of data per chunk


def encoding(header: str) -> str:
    """The encoding a ``Content-Encoding`` header names, or ``Refused`` (415)."""
    names = [n.strip().lower() for n in header.split(",") if n.strip().lower() not in ("", "identity")]
    if not names:
        return "identity"
    if len(names) == 1 and names[0] in _ALIASES:
        return _ALIASES[names[0]]
    raise Refused(
        Reason.UNSUPPORTED_ENCODING,
        f"unsupported Content-Encoding {header.strip()!r}; use one of {', '.join(ENCODINGS)}",
    )


def decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """Decodes ``data``; ``Refused`` when it is malformed or decodes to over ``limit`` bytes."""
    try:
        if encoding == "zstd":
            return _zstd(data, limit)
        if encoding == "snappy":
            return _snappy(data, limit)
        return _inflate(data, encoding, limit)
    except (zlib.error, zstandard.ZstdError, cramjam.DecompressionError) as err:
        raise Refused(Reason.BAD_COMPRESSION, f"malformed {encoding} body: {err}") from None


def _too_large(limit: int) -> Refused:
    return Refused(Reason.TOO_LARGE, f"request body decompresses to over the limit of {limit} bytes")


def _inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """gzip (all members) or deflate (zlib or raw)."""
    if encoding == "deflate":
        # "deflate" should be zlib-wrapped (RFC 9110); some clients send raw deflate.
        wbits = zlib.MAX_WBITS if len(data) >= 2 and (data[0] * 256 + data[1]) % 31 == 0 else -zlib.MAX_WBITS
    else:
        wbits = 16 + zlib.MAX_WBITS
    out = bytearray()
    rest = data
    while True:
        inflater = zlib.decompressobj(wbits)
        pending = rest
        while pending:
            out += inflater.decompress(pending, limit + 1 - len(out))
            if len(out) > limit:
                raise _too_large(limit)
            pending = inflater.unconsumed_tail
            if inflater.eof:
                break
        if not inflater.eof:
            out += inflater.flush()
            if not inflater.eof:
                raise Refused(Reason.BAD_COMPRESSION, f"truncated {encoding} body")
        rest = inflater.unused_data
        # gzip allows several members back to back; anything else after the end is garbage.
        if not rest or wbits != 16 + zlib.MAX_WBITS:
            if rest:
                raise Refused(Reason.BAD_COMPRESSION, f"trailing bytes after the {encoding} stream")
            return bytes(out)


# zstd's densest block (RLE: 4 bytes of input) is 128 KiB of output: at most this ratio.
_ZSTD_MAX_RATIO = 32768


def _zstd(data: bytes, limit: int) -> bytes:
    """Every frame (a body may hold several back to back). Input is fed in pieces no bigger
    than the output budget left divided by zstd's largest expansion, so a bomb stops within
    a few blocks of ``limit`` whatever sizes its frames declare."""
    out = bytearray()
    rest = memoryview(data)
    while rest:
        frame = zstandard.ZstdDecompressor().decompressobj()
        pos = 0
        while not frame.eof and pos < len(rest):
            step = max(64, (limit + 1 - len(out)) // _ZSTD_MAX_RATIO)
            out += frame.decompress(rest[pos : pos + step])
            pos += step
            if len(out) > limit:
                raise _too_large(limit)
        if not frame.eof:
            raise Refused(Reason.BAD_COMPRESSION, "truncated zstd body")
        rest = memoryview(frame.unused_data)
    return bytes(out)


def _snappy_block_size(block: bytes) -> int:
    """The uncompressed length a snappy block declares (a varint up front)."""
    size = 0
    for i, byte in enumerate(block[:5]):
        size |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return size
    raise Refused(Reason.BAD_COMPRESSION, "malformed snappy body: bad length header")


def _snappy(data: bytes, limit: int) -> bytes:
    if data.startswith(_SNAPPY_STREAM_ID):
        return _snappy_framed(data, limit)
    if _snappy_block_size(data) > limit:  # checked before a byte is decoded
        raise _too_large(limit)
    return bytes(cramjam.snappy.decompress_raw(data))


def _snappy_framed(data: bytes, limit: int) -> bytes:
    """The framing format, chunk by chunk (each at most 64 KiB decoded, so the cap holds);
    CRCs are not checked: the Rust core validates the whole request right after."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        kind = data[pos]
        length = int.from_bytes(data[pos + 1 : pos + 4], "little")
        chunk = data[pos + 4 : pos + 4 + length]
        if pos + 4 > len(data) or len(chunk) != length:
            raise Refused(Reason.BAD_COMPRESSION, "malformed snappy body: truncated chunk")
        pos += 4 + length
        if kind == 0x00:  # compressed data: 4-byte masked CRC32C, then a snappy block
            if _snappy_block_size(chunk[4:]) > _SNAPPY_MAX_CHUNK:
                raise Refused(Reason.BAD_COMPRESSION, "malformed snappy body: chunk over 64 KiB")
            out += cramjam.snappy.decompress_raw(chunk[4:])
        elif kind == 0x01:  # uncompressed data: 4-byte CRC, then the bytes
            out += chunk[4:]
        elif not (kind == 0xFF or 0x80 <= kind <= 0xFE):  # stream identifier, padding: skipped
            raise Refused(Reason.BAD_COMPRESSION, f"malformed snappy body: reserved chunk type {kind:#x}")
        if len(out) > limit:
            raise _too_large(limit)
    return bytes(out)
