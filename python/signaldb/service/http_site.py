"""Serving an aiohttp application on one address, for the health endpoints and OTLP/HTTP."""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from signaldb.config import Address
from signaldb.service.connections import ConnectionGuard, GuardedSite, HttpLimits, bind_guarded, install_tracking


async def start_site(
    app: web.Application,
    addr: Address,
    ssl_context: ssl.SSLContext | None = None,
    limits: HttpLimits | None = None,
    guard: ConnectionGuard | None = None,
    **runner_kwargs: Any,
) -> tuple[web.AppRunner, int]:
    """Binds and serves ``app``; returns the runner (``cleanup()`` stops it) and the bound port.

    Connections are bounded (``signaldb.service.connections``): at most
    ``guard.max_connections`` at once (the rest closed in ``accept()``), a
    header-read timeout from a request's first byte, and an idle keep-alive
    timeout (aiohttp's ``keepalive_timeout``, also for a connection that
    never sends a byte). Our services handle signals themselves and log in
    JSON, so aiohttp's signal handling and access log are off."""
    _quiet_client_errors()
    limits = limits or HttpLimits()
    guard = guard or ConnectionGuard("http", limits.max_connections)
    states = install_tracking(app)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=limits.idle_timeout_secs, **runner_kwargs
    )
    await runner.setup()
    try:
        socks = bind_guarded(addr.host, addr.port, guard)
        for sock in socks:
            await GuardedSite(runner, sock, guard, limits.header_timeout_secs, states, ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, socks[0].getsockname()[1]


class _ClientErrorFilter(logging.Filter):
    """aiohttp logs every request it cannot parse (a header over the limit, too many headers,
    garbage) at error level with a traceback: anyone who can connect could fill the logs with
    them. Those are the client's fault: one warning line without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500:
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
            record.msg, record.args = "malformed HTTP request refused", ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
            record.remote, record.status = remote, exc.code
            record.error = " ".join(str(exc.message).split())[:200]
        return True


_CLIENT_ERROR_FILTER = _ClientErrorFilter()


def _quiet_client_errors() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if _CLIENT_ERROR_FILTER not in server_log.filters:
        server_log.addFilter(_CLIENT_ERROR_FILTER)
