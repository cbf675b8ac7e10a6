"""Why the acceptor refuses a whole request: one enum, its answers on both transports, its record.

Every refusal names a ``Reason``. The reason decides everything that follows
from it, in one table: the HTTP status, the ``google.rpc.Code`` (the gRPC
status and the code inside an HTTP ``google.rpc.Status`` body), and the
``outcome`` label of ``signaldb_receiver_requests_total`` (the status class,
kept from before reasons existed). Receivers raise ``Refused(Reason.X, msg)``
and hand every refusal, wherever it arose (their own transport checks or the
shared ingest path), to ``RefusalRecorder.record``, which counts it
(``signaldb_receiver_refused_requests_total{transport, signal, reason}``) and
logs it: one warning per reason per ``LOG_EVERY_SECS`` with the client's
address, the first bytes of the message and how many were not logged since.

Items rejected inside an accepted request (partial success) are a different
thing with their own reasons (``time_too_old`` and the others from the Rust
core's ``admit::Reason``): they are counted per item, not here.

What this cannot see: refusals grpc's core makes before a handler runs (a
message over ``grpc.max_receive_message_length`` is refused with
RESOURCE_EXHAUSTED; a ``grpc-encoding`` grpc does not know, e.g. zstd, with
INTERNAL). docs/operations.md, "Compression", says what clients see then.
"""

from __future__ import annotations

import enum
import logging
import time

import grpc
from google.rpc import code_pb2

from signaldb.acceptor.telemetry import AcceptorMetrics

log = logging.getLogger("signaldb.acceptor.refusals")

# At most one log line per reason per this many seconds (a hostile or broken client must
# not flood the log); the counters count every refusal.
LOG_EVERY_SECS = 10.0
_DETAIL_CHARS = 300


class Reason(enum.Enum):
    """``(label, HTTP status, google.rpc.Code, outcome)``; the label is the metric's ``reason``."""

    # The request cannot be used as sent: a client bug, retrying does not help.
    MALFORMED = ("malformed", 400, code_pb2.INVALID_ARGUMENT, "invalid")  # protobuf, JSON, ids
    BAD_COMPRESSION = ("bad_compression", 400, code_pb2.INVALID_ARGUMENT, "invalid")
    CONVERTED_TOO_LARGE = ("converted_too_large", 400, code_pb2.INVALID_ARGUMENT, "invalid")
    TOO_LARGE = ("too_large", 413, code_pb2.RESOURCE_EXHAUSTED, "too_large")  # no RetryInfo: permanent
    UNAUTHENTICATED = ("unauthenticated", 401, code_pb2.UNAUTHENTICATED, "unauthenticated")
    # HTTP only (grpc frames these itself):
    WRONG_METHOD = ("wrong_method", 405, code_pb2.UNIMPLEMENTED, "wrong_method")
    UNSUPPORTED_MEDIA_TYPE = ("unsupported_media_type", 415, code_pb2.INVALID_ARGUMENT, "wrong_media_type")
    UNSUPPORTED_ENCODING = ("unsupported_encoding", 415, code_pb2.INVALID_ARGUMENT, "wrong_media_type")
    BODY_TIMEOUT = ("body_timeout", 408, code_pb2.DEADLINE_EXCEEDED, "timeout")
    # Retryable: the acceptor cannot take it now (503 + Retry-After / UNAVAILABLE + RetryInfo).
    BACKPRESSURE = ("backpressure", 503, code_pb2.UNAVAILABLE, "unavailable")
    DISK_FULL = ("disk_full", 503, code_pb2.UNAVAILABLE, "unavailable")
    WAL_ERROR = ("wal_error", 503, code_pb2.UNAVAILABLE, "unavailable")
    SHUTTING_DOWN = ("shutting_down", 503, code_pb2.UNAVAILABLE, "unavailable")

    def __init__(self, label: str, http_status: int, rpc_code: int, outcome: str) -> None:
        self.label = label
        self.http_status = http_status
        self.rpc_code = rpc_code
        self.outcome = outcome

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return _GRPC_STATUS_BY_CODE[self.rpc_code]

    @property
    def retryable(self) -> bool:
        return self.http_status == 503


_GRPC_STATUS_BY_CODE = {s.value[0]: s for s in grpc.StatusCode}


class Refused(Exception):
    """A request the acceptor does not take, and why (``reason`` picks the status)."""

    def __init__(
        self, reason: Reason, message: str, retry_after_secs: int | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after_secs = retry_after_secs
        self.field = field  # the offending field's path (a google.rpc.BadRequest detail)


class RefusalRecorder:
    """Counts every refusal and logs a sample of them (see the module doc)."""

    def __init__(self, metrics: AcceptorMetrics, every_secs: float = LOG_EVERY_SECS) -> None:
        self._metrics = metrics
        self._every = every_secs
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def record(self, refused: Refused, kind: str, transport: str, peer: str | None) -> None:
        reason = refused.reason
        self._metrics.requests.labels(transport, kind, reason.outcome).inc()
        self._metrics.refused_requests.labels(transport, kind, reason.label).inc()
        self.log_sampled(
            reason.label,
            "request refused",
            {
                "reason": reason.label,
                "status": reason.http_status if transport == "http" else reason.grpc_status.name,
                "signal": kind,
                "transport": transport,
                "client": peer,
                "detail": refused.message[:_DETAIL_CHARS],
            },
        )

    def log_sampled(self, key: str, msg: str, fields: dict[str, object]) -> None:
        """One warning per ``key`` per interval, carrying how many were left out since the last one."""
        now = time.monotonic()
        if now - self._last_logged.get(key, -self._every) < self._every:
            self._unlogged[key] = self._unlogged.get(key, 0) + 1
            return
        self._last_logged[key] = now
        fields["unlogged_since_last"] = self._unlogged.pop(key, 0)
        log.warning(msg, extra=fields)
