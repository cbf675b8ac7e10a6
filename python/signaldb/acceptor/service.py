"""The acceptor process: wiring and lifecycle.

Start-up order, and why:

1. health endpoints first, so probes see ``/livez`` at once and ``/readyz``
   says "replaying" while the WAL opens (recovery verifies every unprocessed
   entry, which can take a while after a crash);
2. the WAL (replay) in a worker thread, keeping the event loop responsive;
3. the forwarder, which resends whatever is unprocessed;
4. the OTLP receivers, last: nothing is acknowledged before the WAL is ready.

Shutdown (SIGTERM/SIGINT) runs it backwards: receivers stop taking new
requests and finish in-flight ones, the forwarder stops after its current
round, the WAL is flushed and closed. Anything not yet acknowledged by the
writer stays in the WAL for the next start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any

from signaldb.acceptor import identity
from signaldb.acceptor.admission import Admission
from signaldb.acceptor.cors import CorsPolicy
from signaldb.acceptor.forwarder import Forwarder
from signaldb.acceptor.grpc_receiver import GrpcReceiver
from signaldb.acceptor.http_receiver import HttpReceiver
from signaldb.acceptor.ingest import Ingest, Limits
from signaldb.acceptor.telemetry import AcceptorMetrics
from signaldb.config import Config
from signaldb.service import metrics as service_metrics
from signaldb.service import reload as reloading
from signaldb.service.connections import HEALTH_MAX_CONNECTIONS, LATE_FDS, HttpLimits, plan_caps, raise_nofile_limit
from signaldb.service.dead_letters import DeadLetters
from signaldb.service.health import HealthServer, wal_fields
from signaldb.service.lifecycle import entries_left_at_stop
from signaldb.service.logsetup import set_level
from signaldb.service.security import read_pem_pair, server_ssl_context
from signaldb.service.statefiles import check_regular_files
from signaldb.wal import Wal

log = logging.getLogger(__name__)

# While stopping, the forwarder goes on passing what the WAL holds to the writers: until it is
# empty, or no entry went out for this long (writers down or refusing), within half the grace.
DRAIN_STALL_SECS = 2.0
DRAIN_POLL_SECS = 0.05


def failover_secs(cfg: Config) -> float:
    """``acceptor.writer_failover_secs``, or 0 (never) without a catalog: only a catalog's commit
    refuses rows another writer already committed, so only then may an entry that one writer
    may hold unacknowledged be sent to another. Said once at start when it matters."""
    configured = cfg.acceptor.writer_failover_secs
    if cfg.catalog.enabled or configured <= 0:
        return configured
    endpoints = cfg.acceptor.writer_endpoints
    if len(endpoints) > 1 or any(e.startswith("dns://") for e in endpoints):
        log.warning(
            "writer failover is off: storage.catalog_url is none, and without a catalog an entry sent "
            "to a second writer could be stored twice; entries wait for their own writer",
            extra={"writers": list(endpoints), "writer_failover_secs": configured},
        )
    return 0.0


class AcceptorService:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = service_metrics.new_registry("acceptor")
        self.metrics = AcceptorMetrics(self.registry)
        self.wal: Wal | None = None
        self.forwarder: Forwarder | None = None
        self.admission: Admission | None = None
        self.ingest: Ingest | None = None
        self.grpc: GrpcReceiver | None = None
        self.http: HttpReceiver | None = None
        self.health = HealthServer(
            config.acceptor.health_addr,
            self.registry,
            self._health,
            self._not_ready,
            service="acceptor",
            limits=HttpLimits(
                header_timeout_secs=config.acceptor.header_timeout_secs,
                idle_timeout_secs=config.acceptor.idle_timeout_secs,
            ),
        )
        self.registry.register(
            service_metrics.WalCollector(lambda: self.wal, "acceptor", config.acceptor_wal.max_backlog_bytes)
        )
        self.state = "starting"
        self.fatal: str | None = None
        self._fatal_event = asyncio.Event()
        self.started_at = time.time()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        cfg, wal_cfg = self.config, self.config.acceptor_wal
        raise_nofile_limit("acceptor")
        health_port = await self.health.start()
        log.info("health endpoints up", extra={"health_port": health_port})
        self.state = "replaying"
        started = time.monotonic()
        check_regular_files(wal_cfg.wal_dir, ("metadata.json", "acceptor-id"))
        self.wal = await asyncio.to_thread(wal_cfg.open)
        stats = self.wal.stats()
        log.info(
            "WAL open",
            extra={
                "wal_dir": str(wal_cfg.wal_dir),
                "unprocessed_entries": stats.unprocessed_entries,
                "segments": stats.total_segments,
                "open_secs": round(time.monotonic() - started, 3),
            },
        )
        acceptor_id = identity.load_or_create(wal_cfg.wal_dir)
        # This life's entries carry it: a restored or copied directory that hands out
        # entry ids again can never collide with what the writers saw (identity.py).
        self.incarnation = identity.new_incarnation()
        dead_letters = DeadLetters(cfg.acceptor.dead_letter_dir, "acceptor")
        pem = read_pem_pair(cfg.security)
        self.forwarder = Forwarder(
            self.wal,
            acceptor_id,
            cfg.acceptor.writer_endpoints,
            self.metrics,
            dead_letters,
            batch_entries=cfg.acceptor.forward_batch_entries,
            batch_bytes=cfg.acceptor.forward_batch_bytes,
            auth_token=cfg.security.auth_token,
            tls_root_certs=pem[0] if pem else None,
            failover_secs=failover_secs(cfg),
            dns_refresh_secs=cfg.acceptor.writer_dns_refresh_secs,
        )
        self.forwarder.start()
        self.admission = Admission(self.wal, wal_cfg.max_backlog_bytes)
        limits = Limits(
            max_request_bytes=cfg.acceptor.max_request_bytes,
            max_converted_bytes=cfg.acceptor.max_converted_bytes,
            max_age_secs=cfg.acceptor.max_age_secs,
            max_future_secs=cfg.acceptor.max_future_secs,
        )
        self.ingest = Ingest(
            self.wal,
            self.admission,
            self.metrics,
            limits,
            on_fatal=self._on_fatal,
            on_accepted=self.forwarder.notify,
            incarnation=self.incarnation,
        )
        a = cfg.acceptor
        # Connection caps under the open-files limit, with reserved_fds left for the WAL and the
        # forwarder (signaldb.service.connections). The health listener is already open: its
        # connections count against what is left.
        caps = plan_caps(
            {"otlp_grpc": a.grpc_max_connections, "otlp_http": a.http_max_connections},
            reserve=a.reserved_fds + HEALTH_MAX_CONNECTIONS + LATE_FDS,
        )
        self.grpc = GrpcReceiver(
            a.grpc_addr,
            self.ingest,
            cfg.security.auth_token,
            pem,
            max_header_bytes=a.max_header_bytes,
            max_concurrent_streams=a.max_concurrent_streams,
            max_connections=caps["otlp_grpc"],
            handshake_timeout_secs=a.header_timeout_secs,
            idle_timeout_secs=a.idle_timeout_secs,
            max_connection_age_secs=a.grpc_max_connection_age_secs,
            keepalive_secs=a.grpc_keepalive_secs,
        )
        self._ssl = server_ssl_context(cfg.security)
        self.http = HttpReceiver(
            a.http_addr,
            self.ingest,
            cfg.security.auth_token,
            self._ssl,
            a.shutdown_timeout_secs,
            max_header_bytes=a.max_header_bytes,
            max_header_count=a.max_header_count,
            limits=HttpLimits(
                max_connections=caps["otlp_http"],
                header_timeout_secs=a.header_timeout_secs,
                idle_timeout_secs=a.idle_timeout_secs,
            ),
            body_timeout_secs=a.body_timeout_secs,
            body_min_rate_bytes=a.body_min_rate_bytes,
            cors=_cors_policy(cfg),
        )
        self.health.guards.append(self.http.guard)
        grpc_port = await self.grpc.start()
        http_port = await self.http.start()
        self.state = "running"
        log.info(
            "listening",
            extra={
                "grpc_port": grpc_port,
                "http_port": http_port,
                "health_port": health_port,
                "acceptor_id": acceptor_id,
                "incarnation": f"{self.incarnation:016x}",
                "writers": list(cfg.acceptor.writer_endpoints),
                "writer_failover_secs": self.forwarder.failover_secs,
                "sync_mode": wal_cfg.sync_mode,
                "tls": cfg.security.tls,
                "auth": cfg.security.auth_token is not None,
                "pid": os.getpid(),
            },
        )

    async def stop(self) -> int:
        """Graceful stop; bounded by ``acceptor.shutdown_timeout_secs`` overall. Returns how many
        entries the WAL still holds unforwarded (0: drained, its volume may go; otherwise the
        next start on this volume forwards them)."""
        self.state = "stopping"
        grace = self.config.acceptor.shutdown_timeout_secs
        deadline = time.monotonic() + grace
        if self.ingest is not None:
            self.ingest.accepting = False
        # Receivers: stop listening, let in-flight requests get their (durable) answers.
        stops = [r.stop(max(0.1, grace / 2)) for r in (self.grpc,) if r is not None]
        if self.http is not None:
            stops.append(self.http.stop())
        await asyncio.gather(*stops, return_exceptions=True)
        if self.forwarder is not None:
            if self.wal is not None and not self.wal.closed:
                # Half of what is left of the grace: the rest is for the last round and the WAL.
                await asyncio.to_thread(self._drain, time.monotonic() + (deadline - time.monotonic()) / 2)
            await asyncio.to_thread(self.forwarder.stop, max(0.1, deadline - time.monotonic()))
        left = 0
        if self.wal is not None and not self.wal.closed:
            try:
                await asyncio.to_thread(self.wal.flush)
            except Exception as err:  # a poisoned WAL cannot flush; closing still releases it
                log.error("WAL flush at shutdown failed", extra={"error": str(err)})
            left = entries_left_at_stop(self.wal)
            await asyncio.to_thread(self.wal.close)
        await self.health.stop()
        self.state = "stopped"
        took = round(grace - (deadline - time.monotonic()), 3)
        log.info("stopped", extra={"took_secs": took, "unprocessed_entries": left})
        return left

    def _drain(self, until: float) -> None:
        """Lets the forwarder pass on what the WAL holds before it stops (no new requests come
        in now): returns once the WAL is empty, at ``until``, or when no entry went out for
        ``DRAIN_STALL_SECS`` (writers down or refusing: waiting longer gains nothing)."""
        assert self.wal is not None and self.forwarder is not None
        started = best_at = time.monotonic()
        best: int | None = None
        while True:
            try:
                left = self.wal.stats().unprocessed_entries
            except Exception:  # a failed WAL: nothing more goes out of it (the stop says so at close)
                return
            now = time.monotonic()
            if left == 0:
                return
            if best is None or left < best:
                best, best_at = left, now
            if now >= until or now - best_at >= DRAIN_STALL_SECS:
                log.info(
                    "stopping with entries not forwarded yet",
                    extra={"unprocessed_entries": left, "waited_secs": round(now - started, 3)},
                )
                return
            self.forwarder.notify()
            time.sleep(DRAIN_POLL_SECS)

    async def reload(self, new: Config) -> None:
        """SIGHUP: applies what can change while running; logs the rest (docs/operations.md, Signals).

        Applied: log level; the bearer token (OTLP receivers and the forwarder's calls to
        writers; turning it on or off needs a restart); TLS certificate and key, reread even
        when their paths did not change (new handshakes use them; the forwarder keeps trusting
        the certificate it started with until a restart); CORS."""
        old = self.config
        changed = reloading.changed_settings(old, new)
        applied: list[str] = []
        running = old
        if "log_level" in changed:
            set_level(new.log_level)
            running = dataclasses.replace(running, log_level=new.log_level)
            applied.append("log_level")
        if "security.auth_token" in changed and (old.security.auth_token is None) == (new.security.auth_token is None):
            token = new.security.auth_token
            for part in (self.http, self.grpc, self.forwarder):
                if part is not None:
                    part.auth_token = token
            running = dataclasses.replace(running, security=dataclasses.replace(running.security, auth_token=token))
            applied.append("security.auth_token")
        tls_paths_changed = {"security.tls_cert", "security.tls_key"} & set(changed)
        if old.security.tls and new.security.tls:
            pem = await asyncio.to_thread(read_pem_pair, new.security)  # also when rotated in place
            if self._ssl is not None and new.security.tls_cert and new.security.tls_key:
                await asyncio.to_thread(
                    self._ssl.load_cert_chain, str(new.security.tls_cert), str(new.security.tls_key)
                )
            if self.grpc is not None and pem is not None and pem != self.grpc.pem_pair:
                self.grpc.pem_pair = pem
            running = dataclasses.replace(
                running,
                security=dataclasses.replace(
                    running.security, tls_cert=new.security.tls_cert, tls_key=new.security.tls_key
                ),
            )
            applied.append("security.tls (certificate and key reread)")
            tls_paths_changed = set()
        cors_keys = {"acceptor.cors_allowed_origins", "acceptor.cors_allowed_headers", "acceptor.cors_max_age_secs"}
        if cors_keys & set(changed):
            if self.http is not None:
                self.http.cors = _cors_policy(new)
            running = dataclasses.replace(
                running,
                acceptor=dataclasses.replace(
                    running.acceptor,
                    cors_allowed_origins=new.acceptor.cors_allowed_origins,
                    cors_allowed_headers=new.acceptor.cors_allowed_headers,
                    cors_max_age_secs=new.acceptor.cors_max_age_secs,
                ),
            )
            applied += sorted(cors_keys & set(changed))
        self.config = running
        reloading.report(applied, reloading.changed_settings(running, new) or tls_paths_changed)

    async def wait_fatal(self) -> str:
        await self._fatal_event.wait()
        return self.fatal or "fatal error"

    def _on_fatal(self, reason: str) -> None:
        if self.fatal is None:
            self.fatal = reason
            log.critical("fail-stop: %s", reason)
            self._fatal_event.set()

    # -- health ----------------------------------------------------------------

    def _not_ready(self) -> list[str]:
        """Local conditions only. Writers being unreachable is not one: the WAL exists to
        take requests while they are away, and an acceptor taken out of its Service for a
        writer's restart would refuse what it can safely keep. Writer reachability is in
        /health and ``signaldb_forward_writer_up``."""
        reasons = []
        if self.state != "running":
            reasons.append(self.state)
        if self.fatal:
            reasons.append(self.fatal)
        if self.admission is not None:
            refusal = self.admission.refusal()
            if refusal:
                reasons.append(refusal)
        return reasons

    def _health(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "ok",
            "service": "acceptor",
            "state": self.state,
            "uptime_secs": round(time.time() - self.started_at, 1),
        }
        if self.wal is not None and not self.wal.closed:
            stats = self.wal.stats()
            body["wal"] = wal_fields(stats)
            if stats.poisoned:
                body["status"] = "failed"
        if self.fatal:
            body["status"] = "failed"
            body["error"] = self.fatal
        if self.forwarder is not None:
            body["forwarder"] = self.forwarder.status()
        body["ready"] = not self._not_ready()
        return body


def _cors_policy(cfg: Config) -> CorsPolicy:
    a = cfg.acceptor
    return CorsPolicy(a.cors_allowed_origins, a.cors_allowed_headers, a.cors_max_age_secs)
