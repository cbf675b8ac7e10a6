"""The one export path both receivers call: validate, admit, make durable, answer.

Order matters: the request is validated (fully decoded by the Rust core, the
same code the forwarder converts with) before anything is written, so nothing
is written for a refused request; it is admitted against the backlog limit;
then appended to the WAL and awaited until durable (group commit). Only then
does the receiver answer. No conversion and no network call happen here.

Validation decides, before the ack, everything the later conversion will do
with the request (``Limits``): items outside the time window or against the
OTLP rules are rejected through partial success, and a request whose rows
would pass ``max_converted_bytes`` is refused whole (400 / INVALID_ARGUMENT).
The window is stored with the entry (``entry_format``), so the forwarder's
conversion rejects the same items and, under the same size rule, never fails
for size: what is acknowledged can be converted and stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from signaldb import otlp
from signaldb.acceptor import entry_format, responses
from signaldb.acceptor.admission import RETRY_AFTER_SECS, Admission
from signaldb.acceptor.refusals import Reason, RefusalRecorder, Refused
from signaldb.acceptor.telemetry import AcceptorMetrics
from signaldb.wal import Wal, WalClosedError, WalError, WalFullError, WalPoisonedError

log = logging.getLogger(__name__)

# Validating a large body takes milliseconds: do it off the event loop.
_INLINE_VALIDATE_BYTES = 256 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request may be: its body, its rows once converted, its items' times."""

    max_request_bytes: int
    max_converted_bytes: int
    max_age_secs: float  # 0: no lower bound
    max_future_secs: float

    def window(self, now_ns: int) -> otlp.TimeWindow:
        return otlp.TimeWindow.around(now_ns, self.max_age_secs, self.max_future_secs)


@dataclass(frozen=True)
class Accepted:
    entry_id: int
    items: int
    rejected: int
    message: str  # partial-success message, "" when everything was taken


class Ingest:
    def __init__(
        self,
        wal: Wal,
        admission: Admission,
        metrics: AcceptorMetrics,
        limits: Limits,
        on_fatal: Callable[[str], None],
        on_accepted: Callable[[], None] = lambda: None,
        incarnation: int = entry_format.LEGACY_INCARNATION,
    ) -> None:
        self._wal = wal
        self._admission = admission
        self._metrics = metrics
        self.limits = limits
        # Counts and logs refusals; the receivers hand it theirs too (one place for all).
        self.refusals = RefusalRecorder(metrics)
        self._on_fatal = on_fatal
        self._on_accepted = on_accepted  # wakes the forwarder
        self._incarnation = incarnation  # written into every entry (entry_format)
        self.accepting = True

    @property
    def max_request_bytes(self) -> int:
        """The body limit the receivers enforce while reading (one value, held in ``limits``)."""
        return self.limits.max_request_bytes

    async def export(self, kind: str, body: bytes, content_type: str, transport: str) -> Accepted:
        """Takes one decompressed OTLP request; returns once it is durable, or raises ``Refused``.

        The caller (a receiver) hands a ``Refused`` to ``self.refusals.record``, with the
        ones it raised itself before the body got here."""
        accepted = await self._export(kind, body, content_type, transport)
        self._metrics.requests.labels(transport, kind, "accepted").inc()
        return accepted

    async def _export(self, kind: str, body: bytes, content_type: str, transport: str) -> Accepted:
        if not self.accepting:
            raise Refused(Reason.SHUTTING_DOWN, "acceptor is shutting down", RETRY_AFTER_SECS)
        if content_type == otlp.JSON and not body.strip():
            body = b"{}"  # an empty OTLP/JSON body is an empty request, as an empty protobuf body is
        if len(body) > self.max_request_bytes:
            raise Refused(
                Reason.TOO_LARGE,
                f"request body is {len(body)} bytes after decompression; the limit is {self.max_request_bytes}",
            )
        window = self.limits.window(time.time_ns())
        items, rejected = await self._validate(kind, body, content_type, window)
        rejected_total = sum(rejected.values())
        why = self._admission.refusal()
        if why is not None:
            reason = Reason.DISK_FULL if self._admission.disk_full else Reason.BACKPRESSURE
            self._metrics.refused[kind].labels(transport, reason.label).inc(items)
            raise Refused(reason, f"acceptor is pushing back: {why}", RETRY_AFTER_SECS)

        started = time.perf_counter()
        entry = entry_format.encode(body, content_type, window, self._incarnation)
        entry_id = await self._append(kind, entry, items, transport)
        self._metrics.ack_latency.labels(kind).observe(time.perf_counter() - started)
        self._metrics.accepted[kind].labels(transport).inc(items)
        self._metrics.request_bytes.labels(kind).inc(len(body))
        message = "; ".join(f"{n} rejected: {why}" for why, n in sorted(rejected.items()))
        for why, n in rejected.items():
            self._metrics.refused[kind].labels(transport, why).inc(n)
            self.refusals.log_sampled(
                f"items:{why}",
                "items rejected",
                {"reason": why, "signal": kind, "transport": transport, "detail": message[:300]},
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("accepted", extra={"entry_id": entry_id, "signal": kind, "items": items, "bytes": len(body)})
        return Accepted(entry_id, items, rejected_total, message)

    async def _validate(
        self, kind: str, body: bytes, content_type: str, window: otlp.TimeWindow
    ) -> tuple[int, dict[str, int]]:
        def check() -> otlp.Checked:
            return otlp.check(
                kind, body, content_type, window=window, max_converted_bytes=self.limits.max_converted_bytes
            )

        try:
            checked = check() if len(body) <= _INLINE_VALIDATE_BYTES else await asyncio.to_thread(check)
        except otlp.OtlpTooLargeError as err:
            raise Refused(Reason.CONVERTED_TOO_LARGE, f"{err} (acceptor.max_converted_bytes)") from None
        except otlp.OtlpDecodeError as err:
            raise Refused(Reason.MALFORMED, str(err), field=responses.field_of(str(err))) from None
        except otlp.NativePanicError as err:  # a bug in the core: refuse this request, keep serving
            log.error("validation failed inside the Rust core", extra={"signal": kind, "error": str(err)})
            raise Refused(Reason.MALFORMED, f"request could not be validated: {err}") from None
        return checked.items, checked.rejected

    async def _append(self, kind: str, payload: bytes, items: int, transport: str) -> int:
        try:
            entry_id = await self._wal.append_async(payload, kind)
        except WalFullError as err:
            self._admission.note_disk_full()
            self._metrics.refused[kind].labels(transport, Reason.DISK_FULL.label).inc(items)
            log.warning("WAL full: refusing requests until space frees", extra={"error": str(err)})
            raise Refused(Reason.DISK_FULL, f"acceptor disk is full: {err}", RETRY_AFTER_SECS) from None
        except WalError as err:
            self._metrics.refused[kind].labels(transport, Reason.WAL_ERROR.label).inc(items)
            if isinstance(err, WalPoisonedError | WalClosedError) or self._wal.closed:
                # Fail-stop: a failed fsync is never retried; the process restarts and replays.
                self._on_fatal(f"WAL failed: {err}")
            raise Refused(Reason.WAL_ERROR, f"acceptor WAL error: {err}", RETRY_AFTER_SECS) from None
        self._admission.note_append_ok()
        self._on_accepted()
        return entry_id
