"""OTLP/gRPC: ``TraceService/Export``, ``LogsService/Export``, ``MetricsService/Export``.

Requests arrive as raw bytes (no Python protobuf decoding: the Rust core
validates them); grpc itself handles ``grpc-encoding: gzip`` (and deflate)
and enforces ``max_request_bytes`` on the decompressed message
(RESOURCE_EXHAUSTED, no RetryInfo). Any other encoding, zstd included, is
refused by grpc's core before a handler runs (INTERNAL): grpcio has no hook
to decode or even count it (docs/operations.md, Compression). Retryable
refusals carry RetryInfo twice: the ``google.rpc.retryinfo-bin`` trailer the
Python exporter reads and the ``grpc-status-details-bin`` Status that
Go/.NET/Rust clients read; an invalid request's Status names the offending
field (``google.rpc.BadRequest``). Every refusal made here is counted and
logged through ``Ingest.refusals``.

Auth comes before work. grpc.aio receives (and decompresses) the whole
message of a unary method before its handler runs, so a bearer check inside
the handler would let an unauthenticated client make us take in up to
``max_request_bytes``. With a token configured, the method lookup itself
(``_AuthFirstHandler.service``, which sees the call's headers and nothing
else) checks the ``authorization`` metadata: a good token gets the normal
unary handler, anything else gets a stream-unary handler that aborts with
UNAUTHENTICATED without ever asking for the message, so grpc answers on the
headers alone and takes in no more of the body than HTTP/2 flow control
had already allowed. Without a token the lookup is grpc's own generic
handler, as fast as before.

Headers and streams are bounded per connection: ``max_header_bytes`` of
metadata (``grpc.max_metadata_size``, as both soft and hard limit) and
``max_concurrent_streams`` streams at once. Connections are bounded by grpc's
core (``_connection_options``): at most ``max_connections`` at once, a
handshake timeout, an idle timeout, keepalive pings, and a maximum age that
also bounds a call whose message trickles in.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc import aio

from signaldb import otlp
from signaldb.acceptor import responses
from signaldb.acceptor.ingest import Ingest
from signaldb.acceptor.refusals import Reason, Refused
from signaldb.config import Address
from signaldb.service.security import bearer_ok

log = logging.getLogger(__name__)

SERVICES = {
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
}
KIND_OF_METHOD = {f"/{service}/Export": kind for kind, service in SERVICES.items()}


class GrpcReceiver:
    def __init__(
        self,
        addr: Address,
        ingest: Ingest,
        auth_token: str | None,
        pem_pair: tuple[bytes, bytes] | None,
        max_header_bytes: int = 16 * 1024,
        max_concurrent_streams: int = 100,
        max_connections: int = 4096,
        handshake_timeout_secs: float = 10.0,
        idle_timeout_secs: float = 60.0,
        max_connection_age_secs: float = 1800.0,
        keepalive_secs: float = 60.0,
    ) -> None:
        self._addr = addr
        self.max_connections = max_connections
        self._handshake_timeout = handshake_timeout_secs
        self._idle_timeout = idle_timeout_secs
        self._max_age = max_connection_age_secs
        self._keepalive = keepalive_secs
        self._max_header_bytes = max_header_bytes
        self._max_concurrent_streams = max_concurrent_streams
        self._ingest = ingest
        self._auth_token = auth_token
        # Replaced on SIGHUP (AcceptorService.reload): new handshakes use the new pair, through
        # grpc's certificate fetcher; established connections keep theirs.
        self.pem_pair = pem_pair
        self._served_pair = pem_pair
        self._auth_handler: _AuthFirstHandler | None = None
        self._server: aio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        limit = self._ingest.max_request_bytes
        self._server = aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 16 * 1024 * 1024),
                ("grpc.so_reuseport", 0),  # a second acceptor on the same port must fail, not share it
                # Bounded headers: soft and hard limit alike, so a request over it is always refused
                # (between the two grpc refuses only some, at random).
                ("grpc.max_metadata_size", self._max_header_bytes),
                ("grpc.absolute_max_metadata_size", self._max_header_bytes),
                ("grpc.max_concurrent_streams", self._max_concurrent_streams),
                *self._connection_options(),
            ]
        )
        handlers = {
            f"/{service}/Export": grpc.unary_unary_rpc_method_handler(self._export_handler(kind))
            for kind, service in SERVICES.items()
        }  # raw bytes in and out
        if self._auth_token is None:
            for _kind, service in SERVICES.items():
                self._server.add_generic_rpc_handlers(
                    (grpc.method_handlers_generic_handler(service, {"Export": handlers[f"/{service}/Export"]}),)
                )
        else:
            self._auth_handler = _AuthFirstHandler(self._auth_token, handlers, self._ingest)
            self._server.add_generic_rpc_handlers((self._auth_handler,))
        target = str(self._addr)
        if self.pem_pair is not None:
            cert, key = self.pem_pair
            credentials = grpc.dynamic_ssl_server_credentials(
                grpc.ssl_server_certificate_configuration([(key, cert)]), self._fetch_certificates
            )
            self.port = self._server.add_secure_port(target, credentials)
        else:
            self.port = self._server.add_insecure_port(target)
        await self._server.start()
        return self.port

    @property
    def auth_token(self) -> str | None:
        return self._auth_token

    @auth_token.setter
    def auth_token(self, token: str | None) -> None:
        """A new token for the next calls. Turning auth on or off needs a restart (the handler
        chain is chosen at start): the caller checks ``(old is None) == (new is None)``."""
        if (token is None) != (self._auth_token is None):
            raise ValueError("turning OTLP authentication on or off needs a restart")
        self._auth_token = token
        if self._auth_handler is not None and token is not None:
            self._auth_handler.token = token

    def _fetch_certificates(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc before each TLS handshake: a new configuration when the pair changed."""
        pair = self.pem_pair
        if pair is None or pair is self._served_pair:
            return None
        self._served_pair = pair
        cert, key = pair
        return grpc.ssl_server_certificate_configuration([(key, cert)])

    def _connection_options(self) -> list[tuple[str, int]]:
        """Connection bounds, enforced by grpc's core (see the module doc and docs/operations.md)."""

        def ms(secs: float) -> int:
            return max(1, int(secs * 1000))

        options = [
            # At most this many connections: grpc accepts one over it and closes it at once.
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            # TLS and the HTTP/2 preface + SETTINGS must arrive within this (grpc's default: 120 s).
            ("grpc.server_handshake_timeout_ms", ms(self._handshake_timeout)),
            # No call in progress for this long: GOAWAY and close.
            ("grpc.max_connection_idle_ms", ms(self._idle_timeout)),
            # Dead peers: ping every keepalive_secs, close when a ping is not answered in 20 s.
            ("grpc.keepalive_time_ms", ms(self._keepalive)),
            ("grpc.keepalive_timeout_ms", 20_000),
            # Clients may ping every 10 s, even between calls, without being sent away
            # (grpc's default policy allows one ping per 5 minutes and GOAWAYs after 2 more).
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        if self._max_age > 0:
            # Bounds a call whose message trickles in, and moves long-lived clients between replicas.
            options += [("grpc.max_connection_age_ms", ms(self._max_age)), ("grpc.max_connection_age_grace_ms", 30_000)]
        return options

    async def stop(self, grace_secs: float) -> None:
        """Refuses new RPCs at once and gives running ones ``grace_secs`` to finish."""
        if self._server is not None:
            await self._server.stop(grace_secs)
            self._server = None

    def _export_handler(self, kind: str) -> Callable[[bytes, aio.ServicerContext], Awaitable[bytes]]:
        async def export(request: bytes, context: aio.ServicerContext) -> bytes:
            try:
                if not bearer_ok(self._auth_token, _metadata(context, "authorization")):
                    raise Refused(Reason.UNAUTHENTICATED, "missing or wrong bearer token")
                accepted = await self._ingest.export(kind, request, otlp.PROTOBUF, "grpc")
            except Refused as refused:
                self._ingest.refusals.record(refused, kind, "grpc", context.peer())
                await _abort(context, refused)
                raise AssertionError("unreachable: abort raises") from None
            return responses.export_response(kind, accepted.rejected, accepted.message, otlp.PROTOBUF)

        return export


class _AuthFirstHandler(grpc.GenericRpcHandler):
    """Checks the bearer token when grpc looks the method up, on the headers alone (see the module doc)."""

    def __init__(self, token: str, handlers: dict[str, grpc.RpcMethodHandler], ingest: Ingest) -> None:
        self.token = token
        self._handlers = handlers
        self._refuse = {
            method: grpc.stream_unary_rpc_method_handler(_refuser(kind, ingest))
            for method, kind in KIND_OF_METHOD.items()
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._handlers.get(handler_call_details.method)
        if handler is None:
            return None  # UNIMPLEMENTED, as before
        if bearer_ok(self.token, _find(handler_call_details.invocation_metadata, "authorization")):
            return handler
        return self._refuse[handler_call_details.method]


def _refuser(kind: str, ingest: Ingest) -> Callable[[object, aio.ServicerContext], Awaitable[bytes]]:
    async def refuse_unauthenticated(request_iterator: object, context: aio.ServicerContext) -> bytes:
        # Never touches request_iterator: grpc is not asked to receive the message.
        refused = Refused(Reason.UNAUTHENTICATED, "missing or wrong bearer token")
        ingest.refusals.record(refused, kind, "grpc", context.peer())
        await _abort(context, refused)
        raise AssertionError("unreachable: abort raises")

    return refuse_unauthenticated


def _metadata(context: aio.ServicerContext, key: str) -> str | None:
    return _find(context.invocation_metadata(), key)


def _find(metadata: object, key: str) -> str | None:
    for k, v in metadata or ():  # type: ignore[attr-defined]
        if k == key:
            if isinstance(v, str):
                return v
            # Bytes that are not UTF-8 are a wrong token (UNAUTHENTICATED), not a server error.
            text: str = v.decode("utf-8", "surrogateescape")
            return text
    return None


async def _abort(context: aio.ServicerContext, refused: Refused) -> None:
    trailers: list[tuple[str, bytes]] = []
    if refused.retry_after_secs is not None or refused.field:
        st = responses.status(refused.reason, refused.message, refused.retry_after_secs, refused.field)
        trailers = [("grpc-status-details-bin", st.SerializeToString())]
    if refused.retry_after_secs is not None:
        retry = responses.retry_info(refused.retry_after_secs).SerializeToString()
        trailers.append(("google.rpc.retryinfo-bin", retry))
    await context.abort(refused.reason.grpc_status, refused.message, trailing_metadata=tuple(trailers))
