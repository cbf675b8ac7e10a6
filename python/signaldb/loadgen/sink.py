"""``signaldb-loadgen sink``: a trivial OTLP server that acknowledges everything.

It answers every ``Export`` with an empty response (full success) without
decoding it, over gRPC (and OTLP/HTTP with ``--http-port``). Pointing the load
generator at it measures the load generator's own ceiling on this machine
(both share the CPU, so it is a lower bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from typing import Any

from signaldb.loadgen.payload import HTTP_PATHS, SERVICES


class Sink:
    def __init__(self, host: str = "127.0.0.1", grpc_port: int = 0, http_port: int | None = None) -> None:
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.requests = 0
        self.bytes = 0
        self._server: Any = None
        self._runner: Any = None

    async def start(self) -> None:
        import grpc
        from grpc import aio

        async def export(request: bytes, context: Any) -> bytes:
            self.requests += 1
            self.bytes += len(request)
            return b""

        self._server = aio.server(options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)])
        for service in SERVICES.values():
            handler = grpc.unary_unary_rpc_method_handler(export)  # raw bytes in and out
            self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": handler}),))
        self.grpc_port = self._server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        await self._server.start()
        if self.http_port is not None:
            from aiohttp import web

            async def post(request: web.Request) -> web.Response:
                body = await request.read()
                self.requests += 1
                self.bytes += len(body)
                return web.Response(body=b"", content_type="application/x-protobuf")

            app = web.Application(client_max_size=64 << 20)
            for path in HTTP_PATHS.values():
                app.router.add_post(path, post)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.http_port)
            await site.start()
            self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0.5)
        if self._runner is not None:
            await self._runner.cleanup()


async def serve(host: str, grpc_port: int, http_port: int | None, quiet: bool = False) -> None:
    sink = Sink(host, grpc_port, http_port)
    await sink.start()
    where = f"grpc {host}:{sink.grpc_port}" + (f", http {host}:{sink.http_port}" if http_port is not None else "")
    print(f"sink listening: {where}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    t0 = time.monotonic()
    last = (t0, 0, 0)
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 5.0)
        now = time.monotonic()
        if not quiet and sink.requests != last[1]:
            dt = now - last[0]
            print(
                f"sink: {(sink.requests - last[1]) / dt:,.0f} requests/s, "
                f"{(sink.bytes - last[2]) / dt / 1e6:,.1f} MB/s",
                file=sys.stderr,
                flush=True,
            )
        last = (now, sink.requests, sink.bytes)
    await sink.stop()
    print(f"sink: {sink.requests:,} requests, {sink.bytes:,} bytes in {time.monotonic() - t0:.1f} s", flush=True)
