"""Connection limits shared by both services: open-files limit, per-listener caps, HTTP timeouts.

Why: every client connection is a file descriptor, and so is every WAL
segment the WAL creates or reads. Before these limits, 1,100 idle HTTP
connections took an acceptor to its 1,024-descriptor limit and 34 of 40 gRPC
exports failed with ``WAL append: creating a WAL segment: Too many open
files``. The rules now:

1. At start each service raises its ``RLIMIT_NOFILE`` soft limit to the hard
   limit (``raise_nofile_limit``) and logs both.
2. Every listener has a connection cap. The caps are planned
   (``plan_caps``) so that descriptors already open + all caps + a reserve
   (``acceptor.reserved_fds``) fit under the soft limit; configured caps
   that do not fit are scaled down, with a warning. The reserve is what the
   WAL (a new segment, the directory fd for its fsync, the metadata temp
   file, segment readers), the Flight clients, dead-letter files, log and
   grpc internals may take, so no number of client connections can make an
   append fail with EMFILE.
3. An HTTP listener enforces its cap in ``accept()`` itself
   (``_GuardedListener``): a connection over the cap is closed before any
   protocol or TLS work, counted, and logged at most once per
   ``_LOG_EVERY_SECS``. gRPC enforces its cap in grpc's core
   (``grpc.max_allowed_incoming_connections``: accepted, then closed).
4. HTTP connections get a header-read timeout (from the first byte of a
   request to the end of its headers; answered 408 and closed) and an idle
   keep-alive timeout (aiohttp's ``keepalive_timeout``, which also covers a
   connection that never sends a byte). The OTLP body has its own
   minimum-rate deadline in ``http_receiver``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_LOG_EVERY_SECS = 10.0
# Connections closed in one accept() call before giving the event loop back.
_MAX_REFUSE_PER_ACCEPT = 64
# Each health listener (both services) takes at most this many connections at once.
HEALTH_MAX_CONNECTIONS = 64
# Descriptors the receivers open for themselves after the caps are planned (grpc's epoll, event
# and wakeup fds, its listening socket, aiohttp's listener): measured 16 for an acceptor.
LATE_FDS = 32
# A cap planned below this is raised back to it (with a warning that the reserve is not whole).
MIN_CAP = 16


# --- the open-files limit -----------------------------------------------------------------------


def raise_nofile_limit(service: str) -> tuple[int, int]:
    """Raises the ``RLIMIT_NOFILE`` soft limit to the hard limit; returns (soft, hard) after.

    An unlimited hard limit is taken as the kernel's ``fs.nr_open``."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        target = _nr_open()
    soft = before
    if before == resource.RLIM_INFINITY or before >= target:
        soft = before
    else:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:
            log.warning(
                "could not raise the open-files limit",
                extra={"service": service, "soft": before, "hard": hard, "error": str(err)},
            )
    log.info(
        "open-files limit",
        extra={
            "service": service,
            "soft_before": before,
            "soft": soft,
            "hard": hard if hard != resource.RLIM_INFINITY else "unlimited",
            "open_fds": open_fds(),
        },
    )
    return soft, hard


def nofile_soft_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _nr_open() if soft == resource.RLIM_INFINITY else soft


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1 << 20


def open_fds() -> int:
    """Descriptors this process has open now (0 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself holds
    except OSError:
        return 0


def plan_caps(
    wanted: Mapping[str, int], reserve: int, limit: int | None = None, in_use: int | None = None
) -> dict[str, int]:
    """Per-listener caps that, with what is open and the reserve, fit under the soft limit.

    Configured caps that do not fit are scaled down in proportion (never below ``MIN_CAP``)."""
    limit = nofile_soft_limit() if limit is None else limit
    in_use = open_fds() if in_use is None else in_use
    available = limit - in_use - reserve
    total = sum(wanted.values())
    if total <= available:
        caps = dict(wanted)
    else:
        caps = {name: max(MIN_CAP, want * max(available, 0) // total) for name, want in wanted.items()}
        log.warning(
            "connection caps lowered to keep the descriptor reserve: raise the hard open-files "
            "limit (ulimit -Hn, LimitNOFILE=, the container runtime) to allow the configured caps",
            extra={
                "open_files_limit": limit,
                "open_fds": in_use,
                "reserved_fds": reserve,
                "configured": dict(wanted),
                "caps": caps,
                "reserve_left": limit - in_use - sum(caps.values()),
            },
        )
    log.info(
        "connection caps", extra={"caps": caps, "open_files_limit": limit, "open_fds": in_use, "reserved_fds": reserve}
    )
    return caps


# --- per-listener accounting --------------------------------------------------------------------


class ConnectionGuard:
    """Counts one listener's connections; refuses those over ``max_connections``."""

    def __init__(self, listener: str, max_connections: int) -> None:
        self.listener = listener
        self.max_connections = max_connections
        self.open = 0
        self.refused_total = 0
        self.timed_out_total: dict[str, int] = {"header": 0, "body": 0}
        self._unlogged_refused = 0
        self._last_log = 0.0

    def admit(self) -> bool:
        if self.open >= self.max_connections:
            self.refused_total += 1
            self._unlogged_refused += 1
            now = time.monotonic()
            if now - self._last_log >= _LOG_EVERY_SECS:
                log.warning(
                    "connections refused: listener at its connection cap",
                    extra={
                        "listener": self.listener,
                        "max_connections": self.max_connections,
                        "refused": self._unlogged_refused,
                        "refused_total": self.refused_total,
                    },
                )
                self._unlogged_refused, self._last_log = 0, now
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1

    def timed_out(self, phase: str) -> None:
        self.timed_out_total[phase] = self.timed_out_total.get(phase, 0) + 1


class ConnectionCollector(Collector):
    """``signaldb_connections_*`` for the guards a service owns."""

    def __init__(self, guards: Callable[[], list[ConnectionGuard]], component: str) -> None:
        self._guards = guards
        self._component = component

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        labels = ["component", "listener"]  # not "service": see signaldb.service.metrics
        opened = GaugeMetricFamily("signaldb_connections_open", "Client connections open now.", labels=labels)
        cap = GaugeMetricFamily("signaldb_connections_max", "Connection cap of the listener.", labels=labels)
        refused = CounterMetricFamily(
            "signaldb_connections_refused_total",
            "Connections closed at once because the listener was at its cap.",
            labels=labels,
        )
        timed_out = CounterMetricFamily(
            "signaldb_connections_timed_out_total",
            "HTTP connections closed by the header-read or body-read timeout.",
            labels=[*labels, "phase"],
        )
        for g in self._guards():
            values = [self._component, g.listener]
            opened.add_metric(values, g.open)
            cap.add_metric(values, g.max_connections)
            refused.add_metric(values, g.refused_total)
            for phase, n in g.timed_out_total.items():
                timed_out.add_metric([*values, phase], n)
        yield from (opened, cap, refused, timed_out)


# --- HTTP: a listener that enforces the cap in accept(), per-connection header timer -----------


class _CountedSocket(socket.socket):
    """An accepted connection; closing it gives its slot back (once)."""

    __slots__ = ("_guard_release",)
    _guard_release: Callable[[], None] | None

    def close(self) -> None:
        try:
            super().close()
        finally:
            release = getattr(self, "_guard_release", None)
            if release is not None:
                self._guard_release = None
                release()


class _GuardedListener(socket.socket):
    """A listening socket whose ``accept()`` (what asyncio calls) closes connections over the cap.

    Refusing here, before a transport, a protocol or a TLS handshake exists,
    keeps the descriptor for at most one ``accept()`` call."""

    __slots__ = ("_guard",)
    _guard: ConnectionGuard

    def accept(self) -> tuple[socket.socket, Any]:
        guard: ConnectionGuard = self._guard
        for _ in range(_MAX_REFUSE_PER_ACCEPT):
            fd, addr = self._accept()  # type: ignore[attr-defined]  # BlockingIOError when none is waiting
            if guard.admit():
                sock = _CountedSocket(self.family, self.type, self.proto, fileno=fd)
                sock._guard_release = guard.release
                if socket.getdefaulttimeout() is None and self.gettimeout():
                    sock.setblocking(True)
                return sock, addr
            os.close(fd)
        raise ConnectionAbortedError("connection cap: refused a burst; the rest on the next round")


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = HEALTH_MAX_CONNECTIONS
    header_timeout_secs: float = 10.0
    idle_timeout_secs: float = 60.0


_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class _Timed(asyncio.Protocol):
    """Wraps aiohttp's protocol: arms the header timer on a request's first byte.

    ``_track_requests`` (a middleware, so it runs once headers are parsed)
    disarms it and marks the connection busy until the handler returns."""

    def __init__(
        self, inner: asyncio.Protocol, guard: ConnectionGuard, header_timeout: float, states: dict[object, _Timed]
    ) -> None:
        self.inner = inner
        self._guard = guard
        self._header_timeout = header_timeout
        self._states = states
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._states[transport] = self
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy and self._timer is None and data:
            self._timer = asyncio.get_running_loop().call_later(self._header_timeout, self._expire)
        self.inner.data_received(data)

    def request_started(self) -> None:
        self.busy = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def request_done(self) -> None:
        self.busy = False

    def _expire(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is not None and not self.busy and not transport.is_closing():
            self._guard.timed_out("header")
            try:
                transport.write(_TIMEOUT_408)
            finally:
                transport.close()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._states.pop(self._transport, None)
        self._transport = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _request_tracker(states: dict[object, _Timed]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def track(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        conn = states.get(request.transport)
        if conn is not None:
            conn.request_started()
        try:
            return await handler(request)
        finally:
            if conn is not None:
                conn.request_done()

    return track


class GuardedSite(web.BaseSite):
    """Like aiohttp's ``SockSite``, with the guard's listener and the header timer."""

    __slots__ = ("_guard", "_header_timeout", "_name", "_sock", "_states")

    def __init__(
        self,
        runner: web.AppRunner,
        sock: socket.socket,
        guard: ConnectionGuard,
        header_timeout: float,
        states: dict[object, _Timed],
        ssl_context: Any = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sock, self._guard, self._header_timeout, self._states = sock, guard, header_timeout, states
        host, port = sock.getsockname()[:2]
        self._name = f"{'https' if ssl_context else 'http'}://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        guard, timeout, states = self._guard, self._header_timeout, self._states
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Timed(server(), guard, timeout, states),
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=timeout if self._ssl_context else None,
        )


def bind_guarded(host: str, port: int, guard: ConnectionGuard) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (every address it resolves to, as asyncio would)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen = set()
    try:
        for family, type_, proto, _, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = _GuardedListener(family, type_, proto)
            sock._guard = guard
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(socks) > 1:  # port 0: every address on the first one's port
                sockaddr = (sockaddr[0], socks[0].getsockname()[1], *sockaddr[2:])
            sock.bind(sockaddr)
            sock.setblocking(False)
    except BaseException:
        for opened in socks:
            opened.close()
        raise
    return socks


def install_tracking(app: web.Application) -> dict[object, _Timed]:
    states: dict[object, _Timed] = {}
    app.middlewares.insert(0, _request_tracker(states))
    return states
