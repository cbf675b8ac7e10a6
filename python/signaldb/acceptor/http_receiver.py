"""OTLP/HTTP: ``POST /v1/traces``, ``/v1/logs``, ``/v1/metrics``.

Only transport work happens here: method, auth, content type, body size,
decompression (``decompress``: gzip, deflate, zstd, snappy) and CORS
(``cors``). The bearer token is checked on the headers, before a byte of the
body is read: an unauthenticated client gets its 401 however large a body it
declares. Decompression has a hard output cap, so a compression bomb costs at
most ``max_request_bytes`` of memory before it gets its 413. Every refusal
goes to ``Ingest.refusals`` (counted, and logged with the client's address)
before it is answered. The answer (success or ``google.rpc.Status``) uses
the request's encoding.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from aiohttp import web

from signaldb import otlp
from signaldb.acceptor import decompress, responses
from signaldb.acceptor.cors import CorsPolicy
from signaldb.acceptor.ingest import Ingest
from signaldb.acceptor.refusals import Reason, Refused
from signaldb.config import Address
from signaldb.service.connections import ConnectionGuard, HttpLimits
from signaldb.service.http_site import start_site
from signaldb.service.security import bearer_ok

log = logging.getLogger(__name__)

PATHS = {"/v1/traces": "traces", "/v1/logs": "logs", "/v1/metrics": "metrics"}
_READ_CHUNK = 256 * 1024
# Inflating big bodies takes a while; do it off the event loop.
_INLINE_INFLATE_BYTES = 64 * 1024


class HttpReceiver:
    def __init__(
        self,
        addr: Address,
        ingest: Ingest,
        auth_token: str | None,
        ssl_context: ssl.SSLContext | None,
        shutdown_grace_secs: float,
        max_header_bytes: int = 16 * 1024,
        max_header_count: int = 100,
        limits: HttpLimits | None = None,
        body_timeout_secs: float = 10.0,
        body_min_rate_bytes: int = 16 * 1024,
        cors: CorsPolicy | None = None,
    ) -> None:
        self._addr = addr
        self._limits = limits or HttpLimits(max_connections=4096)
        self.guard = ConnectionGuard("otlp_http", self._limits.max_connections)
        self._body_timeout = body_timeout_secs
        self._body_min_rate = body_min_rate_bytes
        self._max_header_bytes = max_header_bytes
        self._max_header_count = max_header_count
        self._grace = shutdown_grace_secs
        self._ingest = ingest
        # Both may be replaced while running (SIGHUP: AcceptorService.reload); read per request.
        self.auth_token = auth_token
        self.cors = cors or CorsPolicy()
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        # We read the body ourselves with our own limit; aiohttp's own cap is set above it.
        app = web.Application(client_max_size=self._ingest.max_request_bytes + 1)
        for path in PATHS:
            app.router.add_route("*", path, self._handle)
        app.on_response_prepare.append(self._add_cors_headers)
        # auto_decompress off: we inflate ourselves, with an output cap (gzip bombs) and raw-deflate support.
        # Bounded headers: the request line and each header line up to max_header_bytes, at most
        # max_header_count fields; aiohttp answers a request over them with 400 and closes.
        self._runner, self.port = await start_site(
            app,
            self._addr,
            self._ssl,
            limits=self._limits,
            guard=self.guard,
            shutdown_timeout=self._grace,
            auto_decompress=False,
            max_line_size=self._max_header_bytes,
            max_field_size=self._max_header_bytes,
            max_headers=self._max_header_count,
        )
        return self.port

    async def stop(self) -> None:
        """Stops listening, lets in-flight requests finish (up to the shutdown grace)."""
        if self._runner is not None:
            # AppRunner.cleanup closes the listener, then waits for running handlers.
            await self._runner.cleanup()
            self._runner = None

    async def _add_cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer to a browser's request, refusals included, so it can read the status."""
        cors = self.cors
        if cors.enabled and not cors.is_preflight(request.method, request.headers):
            response.headers.update(cors.response_headers(request.headers))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        cors = self.cors
        if cors.enabled and cors.is_preflight(request.method, request.headers):
            return web.Response(status=204, headers=cors.preflight_headers(request.headers))
        kind = PATHS[request.path]
        content_type = _content_type(request.headers.get("Content-Type", ""))
        answer_type = content_type or otlp.PROTOBUF
        try:
            return await self._export(request, kind, content_type)
        except Refused as refused:
            self._ingest.refusals.record(refused, kind, "http", request.remote)
            if refused.reason is Reason.BODY_TIMEOUT:
                return await self._body_timed_out(request, refused, answer_type)
            return _error(refused, answer_type, _REFUSAL_HEADERS.get(refused.reason))

    async def _export(self, request: web.Request, kind: str, content_type: str | None) -> web.Response:
        if request.method != "POST":
            raise Refused(Reason.WRONG_METHOD, f"{request.method} is not allowed on {request.path}; use POST")
        if not bearer_ok(self.auth_token, request.headers.get("Authorization")):
            raise Refused(Reason.UNAUTHENTICATED, "missing or wrong bearer token")
        if content_type is None:
            raise Refused(
                Reason.UNSUPPORTED_MEDIA_TYPE,
                f"unsupported Content-Type {request.headers.get('Content-Type')!r}; use {otlp.PROTOBUF} or {otlp.JSON}",
            )
        encoding = decompress.encoding(request.headers.get("Content-Encoding", ""))
        try:
            body = await self._read_body(request, encoding)
        except TimeoutError:
            raise Refused(
                Reason.BODY_TIMEOUT,
                f"request body not received in time (body_timeout_secs "
                f"{self._body_timeout:g} + 1 s per {self._body_min_rate} "
                f"bytes)",
            ) from None
        accepted = await self._ingest.export(kind, body, content_type, "http")
        body_out = responses.export_response(kind, accepted.rejected, accepted.message, content_type)
        return web.Response(body=body_out, content_type=content_type)

    async def _read_body(self, request: web.Request, encoding: str) -> bytes:
        limit = self._ingest.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Refused(Reason.TOO_LARGE, f"request body is {request.content_length} bytes; the limit is {limit}")
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
                raise Refused(Reason.TOO_LARGE, f"request body is over the limit of {limit} bytes")
        if encoding == "identity":
            return bytes(raw)
        if len(raw) <= _INLINE_INFLATE_BYTES:
            return decompress.decompress(bytes(raw), encoding, limit)
        return await asyncio.to_thread(decompress.decompress, bytes(raw), encoding, limit)

    async def _body_timed_out(self, request: web.Request, refused: Refused, answer_type: str) -> web.StreamResponse:
        """408, sent at once, and the connection closed: no lingering over the rest of a trickle."""
        self.guard.timed_out("body")
        response = _error(refused, answer_type, {"Connection": "close"})
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        if request.transport is not None:
            request.transport.close()
        return response


def _content_type(header: str) -> str | None:
    mime = header.split(";", 1)[0].strip().lower()
    if mime in (otlp.PROTOBUF, "application/protobuf"):
        return otlp.PROTOBUF
    if mime == otlp.JSON:
        return otlp.JSON
    return None


# Headers a refusal carries besides its status (RFC 9110: 405 names what is allowed, 401 how to authenticate).
_REFUSAL_HEADERS = {
    Reason.WRONG_METHOD: {"Allow": "POST"},
    Reason.UNAUTHENTICATED: {"WWW-Authenticate": 'Bearer realm="signaldb"'},
}


def _error(refused: Refused, content_type: str, headers: dict[str, str] | None = None) -> web.Response:
    """A ``google.rpc.Status`` answer; a retry hint also becomes ``Retry-After``."""
    st = responses.status(refused.reason, refused.message, refused.retry_after_secs, refused.field)
    if refused.retry_after_secs is not None:
        headers = {**(headers or {}), "Retry-After": str(refused.retry_after_secs)}
    return web.Response(
        status=refused.reason.http_status,
        body=responses.status_body(st, content_type),
        content_type=content_type,
        headers=headers,
    )
