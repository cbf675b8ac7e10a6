"""The writer service as an object: start (health, WAL, replay, Flight) and stop.

``main.py`` wraps it in a process; ``signaldb run`` and in-process tests can
use it directly. Start order matters: the health port comes first so probes
see ``/readyz`` 503 while the WAL replays; Flight opens only after the replay,
because the dedupe ledger is complete only then.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from typing import Any

from signaldb.config import Config
from signaldb.service.connections import raise_nofile_limit
from signaldb.service.health import HealthServer, wal_fields
from signaldb.service.lifecycle import entries_left_at_stop
from signaldb.service.metrics import WalCollector, new_registry
from signaldb.service.security import read_pem_pair
from signaldb.service.statefiles import check_regular_files
from signaldb.wal import Wal, WalStats
from signaldb.writer import identity, state
from signaldb.writer.catalog import Tables
from signaldb.writer.committer import Committer
from signaldb.writer.ingest import WriterFlightServer
from signaldb.writer.maintenance import Maintenance
from signaldb.writer.metrics import WriterMetrics
from signaldb.writer.sink import Sink
from signaldb.writer.storage import open_store

log = logging.getLogger(__name__)

# Longest a stop waits for batches being stored when it closes Flight (at most a third of
# writer.shutdown_timeout_secs): an append takes milliseconds, idle streams are not waited for.
FLIGHT_DRAIN_SECS = 5.0
# Longest a stop waits for a maintenance run to notice it (reading or writing one file).
MAINTENANCE_STOP_SECS = 5.0


class WriterService:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.registry = new_registry("writer")
        self.metrics = WriterMetrics(self.registry)
        self.wal: Wal | None = None
        self.sink: Sink | None = None
        self.flight: WriterFlightServer | None = None
        self.health: HealthServer | None = None
        self.replaying = True
        self.stopping = False
        self.committer: Committer | None = None  # None: storage.catalog_url none (plain files)
        self.maintenance: Maintenance | None = None  # table maintenance thread (writer/maintenance.py)
        self.writer_id = ""  # <wal_dir>/writer-id, read (or created) when the WAL opens
        self.flight_left_open = 0  # Flight calls the stop could not end (see _stop_flight)
        # Drawn at every start, never stored: in the hash of every file name planned in this
        # life, so a restored or copied WAL directory, which hands out writer WAL ids again,
        # never plans a name an earlier life used (sink.file_path, docs/operations.md).
        self.life = secrets.token_hex(8)
        self.registry.register(WalCollector(lambda: self.wal, "writer", cfg.writer_wal.max_backlog_bytes))

    @property
    def flight_port(self) -> int:
        return self.flight.port if self.flight is not None else 0

    @property
    def health_port(self) -> int:
        return self.health.port if self.health is not None else 0

    async def start(self) -> None:
        raise_nofile_limit("writer")  # Flight streams, Parquet files and the WAL all need descriptors
        self.health = HealthServer(
            self.cfg.writer.health_addr, self.registry, self._health, self._not_ready, service="writer"
        )
        await self.health.start()
        log.info("health listening", extra={"health_port": self.health_port})  # probes work during replay
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._open_and_replay)
        if self.stopping:
            return
        self.flight = await loop.run_in_executor(None, self._start_flight)
        if self.committer is not None and self.cfg.catalog.maintenance_interval_secs > 0 and not self.stopping:
            self.maintenance = Maintenance(self.cfg, self.writer_id, self.metrics)
            self.maintenance.start()
        log.info(
            "listening",
            extra={
                "flight_port": self.flight_port,
                "health_port": self.health_port,
                "writer_id": self.writer_id,
                "life": self.life,
                "storage": self.cfg.storage_url,
            },
        )

    def _open_and_replay(self) -> None:
        wcfg = self.cfg.wal_for("writer")
        log.info("opening writer WAL", extra={"wal_dir": str(wcfg.wal_dir), "storage": self.cfg.storage_url})
        had_data = identity.dir_has_data(wcfg.wal_dir)
        check_regular_files(wcfg.wal_dir, ("metadata.json", identity.FILE_NAME, state.FILE_NAME))
        self.wal = wcfg.open()
        # After the open: the WAL's directory lock keeps a second process away from the id too.
        self.writer_id, _ = identity.load_or_create(wcfg.wal_dir, had_data)
        log.info("writer id", extra={"writer_id": self.writer_id, "wal_dir": str(wcfg.wal_dir)})
        saved = state.load(wcfg.wal_dir)
        self.committer = None
        if self.cfg.catalog.enabled:
            log.info("Iceberg catalog", extra={"catalog": self.cfg.catalog.redacted})
            self.committer = Committer(
                Tables(self.cfg.catalog, self.cfg.storage_url), self.writer_id, self.life, self.metrics
            )
        self.sink = Sink(
            self.wal,
            wcfg.wal_dir,
            self.writer_id,
            open_store(self.cfg.storage_url),
            saved,
            self.metrics,
            self.cfg.writer.file_max_bytes,
            self.cfg.writer.file_max_age_secs,
            self.cfg.writer.max_buffered_bytes,
            life=self.life,
            committer=self.committer,
            max_uncommitted_secs=self.cfg.catalog.orphan_min_age_secs / 2,
        )
        self.sink.start()
        if self.stopping:
            self.sink.abort_replay()
        pending = self.wal.stats()["unprocessed_entries"]
        log.info("replay starting", extra={"unprocessed_entries": pending, "planned_files": len(saved.files)})
        replayed = self.sink.replay()
        self.replaying = False
        log.info("replay done", extra={"entries": replayed, "interrupted": self.stopping})

    def _start_flight(self) -> WriterFlightServer:
        addr, security = self.cfg.writer.flight_addr, self.cfg.security
        scheme = "grpc+tls" if security.tls else "grpc"
        assert self.wal is not None and self.sink is not None
        return WriterFlightServer(
            f"{scheme}://{addr}",
            self.wal,
            self.sink,
            self.metrics,
            self.cfg.writer_wal.max_backlog_bytes,
            security.auth_token,
            read_pem_pair(security),
            self.cfg.writer.max_batch_bytes,
        )

    def cancel_start(self) -> None:
        """A stop asked for while ``start`` runs: the replay ends at its next entry (what it has
        not re-read stays in the WAL) and Flight never opens. Safe from any thread."""
        self.stopping = True
        if self.sink is not None:
            self.sink.abort_replay()

    async def stop(self) -> int:
        """Stops accepting, writes out open files, closes the WAL. Returns how many entries the WAL
        still holds unprocessed (0: drained, its volume may go; otherwise the next start on this
        volume writes them)."""
        self.cancel_start()
        budget = self.cfg.writer.shutdown_timeout_secs
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        if self.maintenance is not None:  # checks between files and steps; a cut run leaves only orphans
            await loop.run_in_executor(None, self.maintenance.stop, min(budget / 3, MAINTENANCE_STOP_SECS))
        if self.flight is not None:
            await self._stop_flight(min(budget / 3, FLIGHT_DRAIN_SECS))
        clean = True
        if self.sink is not None:
            clean = await loop.run_in_executor(None, self.sink.close, max(0.1, deadline - loop.time() - 0.5))
        left = 0
        if self.wal is not None:
            left = entries_left_at_stop(self.wal)
            await loop.run_in_executor(None, self.wal.close)
        if self.health is not None:
            await self.health.stop()
        log.info("stopped", extra={"clean": clean and left == 0, "unprocessed_entries": left})
        return left

    async def _stop_flight(self, wait: float) -> None:
        """Stops taking batches: new calls are refused, running streams end (UNAVAILABLE) at their
        next batch, and batches being stored finish. A stream that stays idle cannot be ended from
        here (gRPC's shutdown waits for it, and pyarrow offers no deadline): the shutdown then runs
        on in a daemon thread, ``flight_left_open`` says so, and ``signaldb-writer`` ends the
        process without waiting for it once the WAL is closed (nothing of such a stream is
        unacknowledged-and-stored: its acceptor resends)."""
        flight = self.flight
        assert flight is not None
        flight.stopping = True
        done = threading.Event()

        def shutdown() -> None:
            try:
                flight.shutdown()
            finally:
                done.set()

        threading.Thread(target=shutdown, name="flight-shutdown", daemon=True).start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        # Polled, not awaited: `done` is a threading.Event set by the shutdown thread, and
        # busy_calls is a counter the Flight threads change.
        while not done.is_set() and flight.busy_calls > 0 and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # batches being stored finish; idle streams are not waited for
        await asyncio.sleep(0.05)
        if not done.is_set():
            self.flight_left_open = flight.open_calls or 1
            log.warning(
                "Flight streams still open at shutdown (idle clients, or a batch still arriving); "
                "they are cut when the process exits, their acceptors resend",
                extra={"streams": flight.open_calls, "busy": flight.busy_calls},
            )

    # -- health ------------------------------------------------------------------

    def _wal_stats(self) -> WalStats | None:
        wal = self.wal
        if wal is None or wal.closed:
            return None
        return wal.stats()

    def _health(self) -> dict[str, Any]:
        stats = self._wal_stats()
        body: dict[str, Any] = {"status": "ok", "replaying": self.replaying}
        if stats is not None:
            body["wal"] = wal_fields(stats)
            if stats["poisoned"]:
                body["status"] = "wal_poisoned"
        if self.sink is not None:
            body["writer"] = self.sink.stats()
        body["drained"] = self._drained(stats)
        body["storage"] = self.cfg.storage_url
        body["catalog"] = self.cfg.catalog.redacted
        if self.writer_id:
            body["writer_id"] = self.writer_id
        return body

    def _drained(self, wal_stats: WalStats | None) -> bool:
        """Everything this writer acknowledged is in storage: nothing unprocessed in its WAL,
        nothing buffered, planned or blocked. The signal to wait for before removing a writer
        (docs/operations.md, Scaling writers)."""
        if self.replaying or wal_stats is None or self.sink is None:
            return False
        sink = self.sink.stats()
        return (
            wal_stats.unprocessed_entries == 0
            and sink["unprocessed_entries"] == 0
            and sink["open_files"] == 0
            and sink["files_to_retry"] == 0
            and sink["conflicting_files"] == 0
        )

    def _not_ready(self) -> list[str]:
        reasons = []
        if self.replaying:
            reasons.append("replaying the writer WAL")
        if self.stopping:
            reasons.append("shutting down")
        stats = self._wal_stats()
        if stats is not None:
            if stats.poisoned:
                reasons.append(f"WAL stopped after a failed fsync: {stats.poisoned_reason}")
            if stats.unprocessed_bytes > self.cfg.writer_wal.max_backlog_bytes:
                reasons.append("WAL backlog over wal.max_backlog_bytes")
        if self.sink is not None and self.sink.over_limit():
            reasons.append("buffers at writer.max_buffered_bytes")
        return reasons
