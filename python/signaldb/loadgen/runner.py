"""Sending: transports, pacing, retries, statistics.

Model: ``concurrency`` streams (asyncio tasks), each with one request in
flight at a time, spread round-robin over ``channels`` gRPC channels (each
its own HTTP/2 connection) or one aiohttp session. A stream takes the next
pre-built body, stamps it when ``unique``, waits for the token bucket when a
``rate`` is set, sends, and classifies the answer:

- ok: acknowledged; its items count minus any ``partial_success`` rejections;
- refused: gRPC ``UNAVAILABLE`` (also "connection refused"), or
  ``RESOURCE_EXHAUSTED`` carrying RetryInfo; HTTP 429/502/503/504. Retried after
  the server's hint (RetryInfo / Retry-After) or an exponential backoff,
  capped at ``max_retry_delay``, at most ``max_retries`` times (then the
  request is counted as given up); a retry is a new attempt with a new stamp;
- failed: anything else (not retried).

Only ok answers count as acknowledged; ack latency is the time of the
successful attempt (send to answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import signal
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from signaldb.loadgen.payload import (
    HTTP_PATHS,
    ITEM_NAMES,
    SERVICES,
    Prebuilt,
    Stamper,
    build_requests,
    parse_partial_success,
)


@dataclass
class LoadConfig:
    endpoint: str = "127.0.0.1:4317"
    signal: str = "traces"
    transport: str = "grpc"  # or "http"
    concurrency: int = 8
    channels: int = 0  # 0: automatic (min(concurrency, 2))
    rate: float | None = None  # items/s target; None = flat out
    duration: float | None = None  # seconds; default 10 when requests is None too
    requests: int | None = None  # total acknowledged-or-abandoned requests
    items_per_request: int = 512
    attributes: int = 10
    prebuilt: int = 16
    service: str = "loadgen"
    unique: bool = False
    ack_log: str | None = None
    gzip: bool = False
    tls: bool = False
    ca_file: str | None = None
    server_name: str | None = None  # TLS name override
    headers: list[tuple[str, str]] = field(default_factory=list)
    timeout: float = 30.0
    max_retries: int = 20
    max_retry_delay: float = 2.0
    seed: int | None = None

    def resolved_channels(self) -> int:
        return max(1, min(self.concurrency, self.channels or 2))


@dataclass
class Report:
    signal: str
    transport: str
    endpoint: str
    concurrency: int
    channels: int
    rate_target: float | None
    items_per_request: int
    request_bytes: int
    elapsed_s: float
    requests_ok: int
    requests_refused: int
    requests_failed: int
    requests_given_up: int
    items_acknowledged: int
    items_rejected: int
    bytes_acknowledged: int
    latency_ms: dict[str, float]
    errors: dict[str, int]
    first_error: str | None
    cpu_s: float = 0.0  # this process's CPU time over the run (all threads)

    @property
    def item(self) -> str:
        return ITEM_NAMES[self.signal]

    @property
    def items_per_s(self) -> float:
        return self.items_acknowledged / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "signal": self.signal,
            "transport": self.transport,
            "endpoint": self.endpoint,
            "concurrency": self.concurrency,
            "channels": self.channels,
            "rate_target": self.rate_target,
            "items_per_request": self.items_per_request,
            "request_bytes": self.request_bytes,
            "elapsed_s": round(self.elapsed_s, 4),
            "requests_ok": self.requests_ok,
            "requests_refused": self.requests_refused,
            "requests_failed": self.requests_failed,
            "requests_given_up": self.requests_given_up,
            "item": self.item,
            "items_acknowledged": self.items_acknowledged,
            "items_per_s": round(self.items_per_s, 1),
            "items_rejected": self.items_rejected,
            f"{self.item}_acknowledged": self.items_acknowledged,
            f"{self.item}_per_s": round(self.items_per_s, 1),
            "mb_per_s": round(self.bytes_acknowledged / self.elapsed_s / 1e6, 2) if self.elapsed_s > 0 else 0.0,
            "latency_ms": self.latency_ms,
            "errors": self.errors,
            "first_error": self.first_error,
            "cpu_s": round(self.cpu_s, 3),
            "cpu_us_per_item": (
                round(self.cpu_s / self.items_acknowledged * 1e6, 3) if self.items_acknowledged else None
            ),
        }
        return d

    def text(self) -> str:
        lat = self.latency_ms
        rate = f"{self.rate_target:,.0f} {self.item}/s target" if self.rate_target else "flat out"
        lines = [
            (
                f"signaldb-loadgen: {self.signal} over {self.transport} to {self.endpoint}, "
                f"{self.concurrency} streams on {self.channels} channel(s), {rate}, "
                f"{self.items_per_request} {self.item}/request ({self.request_bytes:,} bytes)"
            ),
            (
                f"requests:     ok {self.requests_ok:,}  refused {self.requests_refused:,}  "
                f"failed {self.requests_failed:,}  given up {self.requests_given_up:,}"
            ),
            f"acknowledged: {self.items_acknowledged:,} {self.item} in {self.elapsed_s:.2f} s = "
            f"{self.items_per_s:,.0f} {self.item}/s ({self.bytes_acknowledged / max(self.elapsed_s, 1e-9) / 1e6:,.1f}"
            f" MB/s)" + (f", {self.items_rejected:,} rejected" if self.items_rejected else ""),
            "ack latency:  "
            + (
                f"p50 {lat['p50']:.2f} ms  p90 {lat['p90']:.2f} ms  p99 {lat['p99']:.2f} ms  max {lat['max']:.2f} ms"
                if lat
                else "no acknowledged request"
            ),
        ]
        if self.items_acknowledged:
            lines.append(
                f"loadgen cpu:  {self.cpu_s:.2f} s = {self.cpu_s / self.items_acknowledged * 1e6:.2f} us/"
                f"{self.item.removesuffix('s')}"
            )
        if self.errors:
            lines.append("errors:       " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.errors.items())))
        if self.first_error:
            lines.append(f"first error:  {self.first_error}")
        return "\n".join(lines)


def percentiles(values: array[float] | list[float]) -> dict[str, float]:
    """p50/p90/p99/max in ms of latencies in seconds (nearest-rank)."""
    if not values:
        return {}
    s = sorted(values)
    n = len(s)

    def rank(p: float) -> float:
        return float(s[min(n - 1, max(0, int(p * n + 0.999999) - 1))]) * 1e3

    return {
        "p50": round(rank(0.50), 3),
        "p90": round(rank(0.90), 3),
        "p99": round(rank(0.99), 3),
        "max": round(s[-1] * 1e3, 3),
    }


class Stats:
    """Counters shared by the streams (one event loop: no locks)."""

    def __init__(self) -> None:
        self.started = 0  # requests taken (some may still wait for the rate limiter)
        self.sent = 0  # attempts put on the wire (retries included)
        self.ok = 0
        self.refused = 0
        self.failed = 0
        self.given_up = 0
        self.items = 0
        self.rejected = 0
        self.bytes = 0
        self.latencies = array("d")
        self.errors: dict[str, int] = {}
        self.first_error: str | None = None

    def error(self, key: str, message: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1
        if self.first_error is None:
            self.first_error = f"{key}: {message}"[:500]


class TokenBucket:
    """Items/s pacing shared by all streams: reservations may go negative (a FIFO of waiters)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = 0.0
        self.at = time.monotonic()

    def reserve(self, n: float) -> float:
        """Takes ``n`` tokens; returns how long to wait before using them."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= n
        return -self.tokens / self.rate if self.tokens < 0 else 0.0


@dataclass
class Outcome:
    kind: str  # ok / refused / failed
    rejected: int = 0
    retry_after: float | None = None
    key: str = ""
    message: str = ""


# -- transports ---------------------------------------------------------------------------------


class GrpcTransport:
    def __init__(self, cfg: LoadConfig) -> None:
        import grpc
        from grpc import aio

        self._grpc = grpc
        options: list[tuple[str, object]] = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.use_local_subchannel_pool", 1),
        ]  # a connection per channel, not one shared
        if cfg.server_name:
            options.append(("grpc.ssl_target_name_override", cfg.server_name))
        compression = grpc.Compression.Gzip if cfg.gzip else None
        root = None
        if cfg.ca_file:
            with open(cfg.ca_file, "rb") as f:
                root = f.read()
        self.channels = []
        for i in range(cfg.resolved_channels()):
            opts = [*options, ("signaldb.loadgen.channel", i)]
            if cfg.tls or cfg.ca_file:
                ch = aio.secure_channel(
                    cfg.endpoint, grpc.ssl_channel_credentials(root), options=opts, compression=compression
                )
            else:
                ch = aio.insecure_channel(cfg.endpoint, options=opts, compression=compression)
            self.channels.append(ch)
        method = f"/{SERVICES[cfg.signal]}/Export"
        self.calls = [
            ch.unary_unary(method, request_serializer=None, response_deserializer=None) for ch in self.channels
        ]
        self.metadata = tuple((k.lower(), v) for k, v in cfg.headers) or None
        self.timeout = cfg.timeout

    async def send(self, stream: int, body: bytes) -> Outcome:
        grpc = self._grpc
        try:
            response = await self.calls[stream % len(self.calls)](body, timeout=self.timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            hint = _grpc_retry_after(err.trailing_metadata())
            key = f"grpc {code.name}"
            if code == grpc.StatusCode.UNAVAILABLE or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint is not None):
                return Outcome("refused", retry_after=hint, key=key, message=err.details() or "")
            return Outcome("failed", key=key, message=err.details() or "")
        return Outcome("ok", rejected=parse_partial_success(response) if response else 0)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


def _grpc_retry_after(trailers: Any) -> float | None:
    """The RetryInfo delay from ``google.rpc.retryinfo-bin`` or the ``grpc-status-details-bin`` Status."""
    if not trailers:
        return None
    from google.protobuf.message import DecodeError
    from google.rpc import error_details_pb2, status_pb2

    for key, value in trailers:
        try:
            if key == "google.rpc.retryinfo-bin":
                info = error_details_pb2.RetryInfo.FromString(value)
                return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
            if key == "grpc-status-details-bin":
                for detail in status_pb2.Status.FromString(value).details:
                    info = error_details_pb2.RetryInfo()
                    if detail.Unpack(info):
                        return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
        except DecodeError:  # a malformed hint is no hint
            pass
    return None


class HttpTransport:
    def __init__(self, cfg: LoadConfig) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        scheme = "https" if (cfg.tls or cfg.ca_file) else "http"
        endpoint = cfg.endpoint if "://" not in cfg.endpoint else cfg.endpoint.split("://", 1)[1]
        self.url = f"{scheme}://{endpoint.rstrip('/')}{HTTP_PATHS[cfg.signal]}"
        ssl_ctx = None
        if scheme == "https":
            import ssl

            ssl_ctx = ssl.create_default_context(cafile=cfg.ca_file)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.concurrency, ssl=ssl_ctx if ssl_ctx else False),
            timeout=aiohttp.ClientTimeout(total=cfg.timeout),
        )
        self.server_hostname = cfg.server_name
        self.headers = {"Content-Type": "application/x-protobuf", **dict(cfg.headers)}
        if cfg.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.gzip = cfg.gzip

    async def send(self, stream: int, body: bytes) -> Outcome:
        aiohttp = self._aiohttp
        try:
            async with self.session.post(
                self.url, data=body, headers=self.headers, server_hostname=self.server_hostname
            ) as resp:
                data = await resp.read()
                if resp.status == 200:
                    return Outcome("ok", rejected=parse_partial_success(data) if data else 0)
                key = f"http {resp.status}"
                message = data[:200].decode(errors="replace")
                if resp.status in (429, 502, 503, 504):
                    hint = resp.headers.get("Retry-After")
                    try:
                        after = float(hint) if hint is not None else None
                    except ValueError:
                        after = None
                    return Outcome("refused", retry_after=after, key=key, message=message)
                return Outcome("failed", key=key, message=message)
        except (aiohttp.ClientConnectionError, ConnectionError) as err:
            return Outcome("refused", key="http connection", message=str(err))
        except (aiohttp.ClientError, TimeoutError) as err:
            return Outcome("failed", key=f"http {type(err).__name__}", message=str(err))

    async def close(self) -> None:
        await self.session.close()


# -- the run -------------------------------------------------------------------------------------


ProgressFn = Callable[[Stats, float, float | None, bool], None]


async def run_async(
    cfg: LoadConfig,
    progress: ProgressFn | None = None,
    prebuilt: list[Prebuilt] | None = None,
    progress_interval: float = 0.5,
    stop_on_sigint: bool = False,
) -> Report:
    """Runs the load described by ``cfg`` and returns its report.

    ``progress(stats, elapsed, fraction_done_or_None, final)`` is called every
    ``progress_interval`` seconds and once at the end. The run ends at the
    deadline or request count, once the requests in flight are answered
    (bounded by ``cfg.timeout``). With ``stop_on_sigint``, a first SIGINT
    (Ctrl-C) ends it the same way, early; a second one interrupts at once.
    """
    if cfg.duration is None and cfg.requests is None:
        cfg.duration = 10.0
    if cfg.transport not in ("grpc", "http"):
        raise ValueError(f"transport must be grpc or http, not {cfg.transport!r}")
    if (
        cfg.concurrency < 1
        or cfg.max_retries < 0
        or cfg.max_retry_delay < 0
        or (cfg.rate is not None and cfg.rate <= 0)
    ):
        raise ValueError("need concurrency >= 1, max_retries >= 0, max_retry_delay >= 0 and rate > 0")
    reqs = prebuilt or build_requests(
        cfg.signal, cfg.prebuilt, cfg.items_per_request, cfg.attributes, cfg.service, cfg.seed
    )
    items = reqs[0].items
    transport = GrpcTransport(cfg) if cfg.transport == "grpc" else HttpTransport(cfg)
    # Bodies for HTTP gzip are compressed per request only when stamped; otherwise once.
    http_gzip = cfg.transport == "http" and cfg.gzip
    bodies = [gzip.compress(r.body, 1) if http_gzip else r.body for r in reqs]
    stamper = Stamper()
    stats = Stats()
    bucket = TokenBucket(cfg.rate, max(float(items), cfg.rate * 0.05)) if cfg.rate else None
    # Opened off the loop; closed in the run's `finally` below.
    ack_log = await asyncio.to_thread(open, cfg.ack_log, "w") if cfg.ack_log else None
    remaining = [cfg.requests if cfg.requests is not None else -1]
    t0 = time.monotonic()
    cpu0 = time.process_time()
    deadline = t0 + cfg.duration if cfg.duration is not None else None
    next_body = [0]

    stopping = [False]

    def take() -> bool:
        if stopping[0]:
            return False
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if remaining[0] == 0:
            return False
        if remaining[0] > 0:
            remaining[0] -= 1
        return True

    async def pause(seconds: float) -> bool:
        """Sleeps, but not past the deadline; False when the deadline cut the sleep short."""
        if deadline is not None:
            left = deadline - time.monotonic()
            if seconds >= left:
                await asyncio.sleep(max(0.0, left))
                return False
        await asyncio.sleep(seconds)
        return True

    async def stream(n: int) -> None:
        while take():
            k = next_body[0]
            next_body[0] = (k + 1) % len(reqs)
            stats.started += 1
            backoff = 0.05
            for attempt in range(cfg.max_retries + 1):
                if bucket is not None:
                    wait = bucket.reserve(items)
                    if wait > 0 and not await pause(wait):
                        return
                if cfg.unique:
                    rid = stamper.next_id()
                    body = reqs[k].stamp(rid)
                    if http_gzip:
                        body = gzip.compress(body, 1)
                else:
                    rid = reqs[k].request_id
                    body = bodies[k]
                stats.sent += 1
                sent = time.perf_counter()
                out = await transport.send(n, body)
                took = time.perf_counter() - sent
                if out.kind == "ok":
                    stats.ok += 1
                    stats.items += items - out.rejected
                    stats.rejected += out.rejected
                    stats.bytes += len(body)
                    stats.latencies.append(took)
                    if ack_log is not None:
                        ack_log.write(rid.hex() + "\n")
                    break
                if out.kind == "failed":
                    stats.failed += 1
                    stats.error(out.key, out.message)
                    break
                stats.refused += 1
                stats.error(out.key, out.message)
                if attempt == cfg.max_retries:
                    stats.given_up += 1
                    break
                delay = out.retry_after if out.retry_after is not None else backoff
                backoff = min(backoff * 2, cfg.max_retry_delay)
                if not await pause(min(max(delay, 0.0), cfg.max_retry_delay)):
                    return

    def fraction(now: float) -> float | None:
        if deadline is not None and cfg.duration:
            f = (now - t0) / cfg.duration
            if cfg.requests:
                f = max(f, (stats.ok + stats.failed + stats.given_up) / cfg.requests)
            return min(1.0, f)
        if cfg.requests:
            return min(1.0, (stats.ok + stats.failed + stats.given_up) / cfg.requests)
        return None

    async def ticker() -> None:
        while True:
            await asyncio.sleep(progress_interval)
            now = time.monotonic()
            progress(stats, now - t0, fraction(now), False)  # type: ignore[misc]

    tick = asyncio.create_task(ticker()) if progress else None
    loop = asyncio.get_running_loop()
    if stop_on_sigint:

        def on_sigint() -> None:
            stopping[0] = True
            loop.remove_signal_handler(signal.SIGINT)  # the next Ctrl-C is a KeyboardInterrupt

        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        await asyncio.gather(*(stream(n) for n in range(cfg.concurrency)))
    finally:
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        if stop_on_sigint:
            loop.remove_signal_handler(signal.SIGINT)
        if tick is not None:
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick
        if ack_log is not None:
            ack_log.close()
        await transport.close()
    if progress:
        progress(stats, elapsed, 1.0, True)
    return Report(
        signal=cfg.signal,
        transport=cfg.transport,
        endpoint=cfg.endpoint,
        concurrency=cfg.concurrency,
        channels=cfg.resolved_channels() if cfg.transport == "grpc" else 1,
        rate_target=cfg.rate,
        items_per_request=items,
        request_bytes=len(reqs[0].body),
        elapsed_s=elapsed,
        requests_ok=stats.ok,
        requests_refused=stats.refused,
        requests_failed=stats.failed,
        requests_given_up=stats.given_up,
        items_acknowledged=stats.items,
        items_rejected=stats.rejected,
        bytes_acknowledged=stats.bytes,
        latency_ms=percentiles(stats.latencies),
        errors=dict(stats.errors),
        first_error=stats.first_error,
        cpu_s=cpu,
    )


def run(cfg: LoadConfig, progress: ProgressFn | None = None, **kwargs: Any) -> Report:
    """Synchronous wrapper of :func:`run_async` (its own event loop)."""
    return asyncio.run(run_async(cfg, progress, **kwargs))
