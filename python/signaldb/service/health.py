"""The health address: ``/health``, ``/livez``, ``/readyz`` and ``/metrics``.

Plain HTTP (probes and Prometheus scrape it) on its own port, so a flood of
OTLP traffic or a stuck receiver does not hide the service's state. The
service passes in two callables: ``health()`` returns the JSON body of
``/health`` (its ``"status"`` decides 200 or 503) and ``not_ready()`` returns
the reasons the service should get no traffic (empty when ready).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from signaldb.config import Address
from signaldb.service import metrics
from signaldb.service.connections import ConnectionCollector, ConnectionGuard, HttpLimits
from signaldb.service.http_site import start_site
from signaldb.wal import WalStats

log = logging.getLogger(__name__)


def wal_fields(stats: WalStats | Mapping[str, Any]) -> dict[str, Any]:
    """A WAL's ``stats()`` for a ``/health`` body: all of it but the fsync histogram
    (its buckets are for /metrics, and their +Inf bound is not JSON)."""
    return {k: v for k, v in stats.items() if k != "fsync_duration_buckets"}


class HealthServer:
    def __init__(
        self,
        addr: Address,
        registry: CollectorRegistry,
        health: Callable[[], dict[str, Any]],
        not_ready: Callable[[], list[str]],
        service: str = "",
        limits: HttpLimits | None = None,
    ) -> None:
        self._addr = addr
        self._registry = registry
        self._health = health
        self._not_ready = not_ready
        self._runner: web.AppRunner | None = None
        self.port: int = 0
        # Probes and scrapes need few connections; the cap keeps the health port from eating the
        # descriptors the WAL needs (signaldb.service.connections).
        self._limits = limits or HttpLimits()
        self.guard = ConnectionGuard("health", self._limits.max_connections)
        registry.register(ConnectionCollector(lambda: self.guards, service))
        self.guards: list[ConnectionGuard] = [self.guard]  # a service adds its other listeners' guards

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=1024)
        app.router.add_get("/health", self._on_health)
        app.router.add_get("/livez", self._on_livez)
        app.router.add_get("/readyz", self._on_readyz)
        app.router.add_get("/metrics", self._on_metrics)
        return app

    async def start(self) -> int:
        """Binds and serves; returns the bound port (useful with port 0)."""
        self._runner, self.port = await start_site(self._app(), self._addr, limits=self._limits, guard=self.guard)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _on_health(self, _: web.Request) -> web.Response:
        body = self._health()
        return web.json_response(body, status=200 if body.get("status") == "ok" else 503)

    async def _on_livez(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _on_readyz(self, _: web.Request) -> web.Response:
        reasons = self._not_ready()
        if reasons:
            return web.json_response({"ready": False, "reasons": reasons}, status=503)
        return web.json_response({"ready": True})

    async def _on_metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=metrics.render(self._registry), headers={"Content-Type": metrics.CONTENT_TYPE})
