"""Serving an aiohttp application on one address, for the health endpoints and OTLP/HTTP."""

from __future__ import annotations

import ssl
from typing import Any

from aiohttp import web

from signaldb.config import Address


async def start_site(app: web.Application, addr: Address, ssl_context: ssl.SSLContext | None = None,
                     **runner_kwargs: Any) -> tuple[web.AppRunner, int]:
    """Binds and serves ``app``; returns the runner (``cleanup()`` stops it) and the bound port.

    Our services handle signals themselves and log in JSON, so aiohttp's signal
    handling and access log are off."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **runner_kwargs)
    await runner.setup()
    site = web.TCPSite(runner, addr.host, addr.port, ssl_context=ssl_context, reuse_address=True)
    await site.start()
    server = site._server  # the asyncio server: the only place aiohttp exposes port 0's pick
    assert server is not None and server.sockets
    return runner, server.sockets[0].getsockname()[1]
