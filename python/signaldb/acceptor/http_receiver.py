"""OTLP/HTTP: ``POST /v1/traces``, ``/v1/logs``, ``/v1/metrics``.

Only transport work happens here: method, auth, content type, body size,
gzip/deflate. The bearer token is checked on the headers, before a byte of
the body is read: an unauthenticated client gets its 401 however large a
body it declares. Decompression is streamed with a hard output cap, so a gzip
bomb costs at most ``max_request_bytes`` of memory before it gets its 413.
The answer (success or ``google.rpc.Status``) uses the request's encoding.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import zlib

from aiohttp import web

from signaldb import otlp
from signaldb.acceptor import responses
from signaldb.acceptor.ingest import Ingest, Refused
from signaldb.config import Address
from signaldb.service.connections import ConnectionGuard, HttpLimits
from signaldb.service.http_site import start_site
from signaldb.service.security import bearer_ok

log = logging.getLogger(__name__)

PATHS = {"/v1/traces": "traces", "/v1/logs": "logs", "/v1/metrics": "metrics"}
_HTTP_STATUS = {"invalid": 400, "too_large": 413, "unavailable": 503, "unauthenticated": 401,
                "wrong_method": 405, "wrong_media_type": 415, "timeout": 408}
_READ_CHUNK = 256 * 1024
# Inflating big bodies takes a while; do it off the event loop.
_INLINE_INFLATE_BYTES = 64 * 1024


class HttpReceiver:
    def __init__(self, addr: Address, ingest: Ingest, auth_token: str | None,
                 ssl_context: ssl.SSLContext | None, shutdown_grace_secs: float,
                 max_header_bytes: int = 16 * 1024, max_header_count: int = 100,
                 limits: HttpLimits | None = None, body_timeout_secs: float = 10.0,
                 body_min_rate_bytes: int = 16 * 1024) -> None:
        self._addr = addr
        self._limits = limits or HttpLimits(max_connections=4096)
        self.guard = ConnectionGuard("otlp_http", self._limits.max_connections)
        self._body_timeout = body_timeout_secs
        self._body_min_rate = body_min_rate_bytes
        self._max_header_bytes = max_header_bytes
        self._max_header_count = max_header_count
        self._grace = shutdown_grace_secs
        self._ingest = ingest
        self._auth_token = auth_token
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        # We read the body ourselves with our own limit; aiohttp's own cap is set above it.
        app = web.Application(client_max_size=self._ingest.max_request_bytes + 1)
        for path in PATHS:
            app.router.add_route("*", path, self._handle)
        # auto_decompress off: we inflate ourselves, with an output cap (gzip bombs) and raw-deflate support.
        # Bounded headers: the request line and each header line up to max_header_bytes, at most
        # max_header_count fields; aiohttp answers a request over them with 400 and closes.
        self._runner, self.port = await start_site(app, self._addr, self._ssl, limits=self._limits, guard=self.guard,
                                                   shutdown_timeout=self._grace,
                                                   auto_decompress=False, max_line_size=self._max_header_bytes,
                                                   max_field_size=self._max_header_bytes,
                                                   max_headers=self._max_header_count)
        return self.port

    async def stop(self) -> None:
        """Stops listening, lets in-flight requests finish (up to the shutdown grace)."""
        if self._runner is not None:
            # AppRunner.cleanup closes the listener, then waits for running handlers.
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        kind = PATHS[request.path]
        content_type = _content_type(request.headers.get("Content-Type", ""))
        answer_type = content_type or otlp.PROTOBUF
        if request.method != "POST":
            return _error("wrong_method", f"{request.method} is not allowed on {request.path}; use POST",
                          answer_type, headers={"Allow": "POST"})
        if not bearer_ok(self._auth_token, request.headers.get("Authorization")):
            return _error("unauthenticated", "missing or wrong bearer token", answer_type,
                          headers={"WWW-Authenticate": 'Bearer realm="signaldb"'})
        if content_type is None:
            return _error("wrong_media_type", f"unsupported Content-Type {request.headers.get('Content-Type')!r}; "
                                              f"use {otlp.PROTOBUF} or {otlp.JSON}", answer_type)
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
            return _error("wrong_media_type", f"unsupported Content-Encoding {encoding!r}; use gzip or deflate",
                          answer_type)
        try:
            try:
                body = await self._read_body(request, encoding)
            except TimeoutError:
                return await self._body_timed_out(request, answer_type)
            accepted = await self._ingest.export(kind, body, content_type, "http")
        except Refused as refused:
            return _error(refused.category, refused.message, answer_type, retry_after=refused.retry_after_secs)
        body_out = responses.export_response(kind, accepted.rejected, accepted.message, content_type)
        return web.Response(body=body_out, content_type=content_type)

    async def _read_body(self, request: web.Request, encoding: str) -> bytes:
        limit = self._ingest.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Refused("too_large", f"request body is {request.content_length} bytes; the limit is {limit}")
        raw = bytearray()
        # Minimum rate: body_timeout_secs, plus a second per body_min_rate_bytes received so far.
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            deadline = started + self._body_timeout + len(raw) / self._body_min_rate
            async with asyncio.timeout_at(deadline):
                chunk = await request.content.read(_READ_CHUNK)
            if not chunk:
                break
            raw += chunk
            if len(raw) > limit:
                raise Refused("too_large", f"request body is over the limit of {limit} bytes")
        if encoding in ("identity", ""):
            return bytes(raw)
        if len(raw) <= _INLINE_INFLATE_BYTES:
            return inflate(bytes(raw), encoding, limit)
        return await asyncio.to_thread(inflate, bytes(raw), encoding, limit)


    async def _body_timed_out(self, request: web.Request, answer_type: str) -> web.StreamResponse:
        """408, sent at once, and the connection closed: no lingering over the rest of a trickle."""
        self.guard.timed_out("body")
        log.debug("request body too slow", extra={"remote": request.remote})
        response = _error("timeout", f"request body not received in time (body_timeout_secs "
                                     f"{self._body_timeout:g} + 1 s per {self._body_min_rate} bytes)", answer_type,
                          headers={"Connection": "close"})
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        if request.transport is not None:
            request.transport.close()
        return response


def inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """Decompresses gzip (all members) or deflate (zlib or raw) with an output cap."""
    if encoding == "deflate":
        # "deflate" should be zlib-wrapped (RFC 9110); some clients send raw deflate.
        wbits = zlib.MAX_WBITS if len(data) >= 2 and (data[0] * 256 + data[1]) % 31 == 0 else -zlib.MAX_WBITS
    else:
        wbits = 16 + zlib.MAX_WBITS
    out = bytearray()
    rest = data
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            pending = rest
            while pending:
                out += inflater.decompress(pending, limit + 1 - len(out))
                if len(out) > limit:
                    raise Refused("too_large", f"request body inflates to over the limit of {limit} bytes")
                pending = inflater.unconsumed_tail
                if inflater.eof:
                    break
            if not inflater.eof:
                out += inflater.flush()
                if not inflater.eof:
                    raise Refused("invalid", f"truncated {encoding} body")
        except zlib.error as err:
            raise Refused("invalid", f"malformed {encoding} body: {err}") from None
        rest = inflater.unused_data
        # gzip allows several members back to back; anything else after the end is garbage.
        if not rest or wbits != 16 + zlib.MAX_WBITS:
            if rest:
                raise Refused("invalid", f"trailing bytes after the {encoding} stream")
            return bytes(out)


def _content_type(header: str) -> str | None:
    mime = header.split(";", 1)[0].strip().lower()
    if mime in (otlp.PROTOBUF, "application/protobuf"):
        return otlp.PROTOBUF
    if mime == otlp.JSON:
        return otlp.JSON
    return None


def _error(category: str, message: str, content_type: str, headers: dict[str, str] | None = None,
           retry_after: int | None = None) -> web.Response:
    """A ``google.rpc.Status`` answer; a retry hint also becomes ``Retry-After``."""
    st = responses.status(category, message, retry_after)
    if retry_after is not None:
        headers = {**(headers or {}), "Retry-After": str(retry_after)}
    return web.Response(status=_HTTP_STATUS[category], body=responses.status_body(st, content_type),
                        content_type=content_type, headers=headers)
