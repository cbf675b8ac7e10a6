"""The background exporter: acceptor WAL → Arrow batches → Flight ``do_put`` → writer.

One *lane* (a thread) per writer. Every entry belongs to exactly one lane,
chosen by rendezvous hashing of (writer, entry id) (``routing``): stable across
restarts and retries, so a retried entry goes to the same writer (whose
dedupe index knows it), and adding a writer moves only ~1/n of the entries.

The writers are the static endpoints plus the addresses of ``dns://`` names,
resolved again every ``writer_dns_refresh_secs`` (``writer_set``); a writer
unreachable for ``writer_failover_secs`` (only with a catalog, whose commit
refuses rows another writer already committed) is *failed over* and its
entries go to the next writer in rendezvous order. Whenever the writers or the
failed-over set change, the forwarder publishes a new ``RoutingTable`` (a new
epoch) and every lane reads the unprocessed part of the WAL again from the
start. An entry is *claimed* by the lane that puts it in a round, until it is
acked (marked processed), dead-lettered, or given up after a failed attempt
because it now routes elsewhere: a lane never sends an entry another lane has
in flight, so a change of routes never puts one entry on two writers at once,
and nothing is marked processed without its writer's ack.

A lane repeats *rounds*: read its next unprocessed entries from the WAL (at
most ``batch_entries`` / ``batch_bytes``; a small round first lingers, see
``LINGER_SECS``), convert them to Arrow with the Rust core and stream them,
one ``do_put`` per table (see ``signaldb.flight_protocol``), a batch of up to
``CHUNK_BYTES`` at a time, so the writer stores one batch while the next is
being converted (converting a whole round first left the writer idle for that
long, and this lane idle while the writer stored it). While the writer acks a
round, the lane already reads and streams the next one: two rounds in flight
at most. Only when every table of a round is acked are its entries marked
processed. After any failure, every round in flight is retried, one round at a
time, to the same writer with exponential backoff; the writer drops what it
already has. If the writer says a batch is invalid, the round is split entry
by entry and an entry that is refused on its own goes to the dead-letter
directory, so one poison entry never blocks the others.

Each entry carries the incarnation of the acceptor life that wrote it
(``entry_format``); a batch holds entries of one incarnation and says which
(``flight_protocol``), so after a restart the replayed entries of earlier
lives and the new ones travel in separate batches of the same stream.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from signaldb import otlp
from signaldb.acceptor import entry_format
from signaldb.acceptor.routing import RoutingTable, route
from signaldb.acceptor.telemetry import AcceptorMetrics
from signaldb.acceptor.writer_set import UNRESOLVED_RETRY_SECS, Resolver, Writer, WriterSet, system_resolve
from signaldb.flight_protocol import StreamHeader, bearer_header, decode_ack, encode_batch_metadata
from signaldb.service.dead_letters import DeadLetters
from signaldb.wal import Entry, Wal

log = logging.getLogger(__name__)

# Most Arrow bytes per Flight batch: big enough that the writer's per-batch cost (a
# WAL append and its sync) is small per row, small enough to overlap conversion with
# the writer's work. An entry is never split: a bigger one goes in a batch of its own.
CHUNK_BYTES = 4 * 1024 * 1024
CALL_TIMEOUT_SECS = 60.0
# With failover on, a call may take at most the failover time (but this long at least): a
# writer that hangs (stopped, or a network that drops packets) must fail its call by then,
# or it would hold its entries for a full CALL_TIMEOUT_SECS before failover could start.
MIN_FAILOVER_CALL_TIMEOUT_SECS = 5.0
IDLE_WAIT_SECS = 0.5
PROBE_INTERVAL_SECS = 5.0
BACKOFF_START_SECS = 0.1
BACKOFF_MAX_SECS = 10.0
# A round smaller than this waits until its oldest entry is LINGER_SECS old, so that
# a moderate stream of requests travels in a few large rounds rather than one small
# round per request (each round costs a Flight call and a writer WAL sync: at 100k
# spans/s, rounds of one or two requests doubled the forwarding CPU per span). The
# entries are already durable and acknowledged: only the way to Parquet waits.
LINGER_BYTES = 2 * 1024 * 1024
LINGER_SECS = 0.1

__all__ = ["Forwarder", "route"]  # route: re-exported from routing for the tests and tools that import it here


class WriterRefused(Exception):
    """The writer called a batch invalid: retrying the same bytes cannot help."""


@dataclass
class _TableStream:
    """One table's ``do_put`` within a round: batches written as they fill up,
    the writer's acks read once everything is written."""

    writer: flight.FlightStreamWriter
    reader: flight.FlightMetadataReader
    sent: list[list[tuple[int, int]]] = field(default_factory=list)  # per batch: [(entry id, rows)]
    pending: list[tuple[int, pa.RecordBatch]] = field(default_factory=list)
    pending_bytes: int = 0
    incarnation: int = 0  # of the pending entries: a batch holds one incarnation
    rows: int = 0


@dataclass
class _Round:
    """Entries sent together: a stream per table, acks awaited together."""

    pending: list[Entry]  # not yet acked or dead-lettered
    streams: dict[str, _TableStream] = field(default_factory=dict)
    sent: bool = False
    streams_closed: bool = False
    started: float = 0.0  # perf_counter, for the latency histogram
    started_mono: float = 0.0  # monotonic, for "unreachable since"

    def close(self) -> None:
        """Ends the round's calls without waiting for acks (errors no longer matter)."""
        if self.streams_closed:
            return
        self.streams_closed = True
        for stream in self.streams.values():
            with contextlib.suppress(Exception):  # the call already failed or was cancelled
                stream.writer.close()


@dataclass
class LaneState:
    endpoint: str
    up: bool = False
    last_error: str | None = None
    last_success: float | None = None
    retrying_entries: int = 0
    down_since: float | None = None  # monotonic start of the first failed call since the last success
    down_since_wall: float | None = None


class Lane:
    def __init__(self, forwarder: Forwarder, index: int, writer: Writer) -> None:
        self._fw = forwarder
        self._index = index
        self.endpoint = writer.url
        self._tls_hostname = writer.tls_hostname
        self.state = LaneState(writer.url)
        self._client: flight.FlightClient | None = None
        self._last_probe = 0.0
        self._last_ok = 0.0  # monotonic time of the last successful call
        self.wake = threading.Event()  # set by Forwarder.notify when entries arrive
        self._thread = threading.Thread(target=self._run, name=f"forwarder-{index}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # -- the loop ------------------------------------------------------------

    def _run(self) -> None:
        cursor, epoch = 0, -1
        in_flight: list[_Round] = []  # streamed, acks not read yet; oldest first
        while not self._fw.stopping.is_set():
            table = self._fw.table
            if self.endpoint not in table.writers:
                # Gone from the writer set (its address left the DNS answer): finish what is in
                # flight (entries that fail are given up to their new owners), then stop.
                if in_flight and not self._settle(in_flight, keep=0):
                    return  # stopping
                if self._fw.retire(self):
                    return
                continue
            if self.endpoint in table.failed_over and time.monotonic() - self._last_probe > PROBE_INTERVAL_SECS:
                self._probe()  # nothing routes here meanwhile: the probe tells when it is back
                continue
            if table.epoch != epoch:
                # Routes changed: entries of other writers (failed over, removed) may be ours now,
                # at any position in the WAL. Read it again from the start; claims keep what is
                # in flight anywhere from being sent twice.
                cursor, epoch = 0, table.epoch
            self._fw.begin_read(self.endpoint)
            try:
                entries = self._fw.wal.unprocessed(
                    after_id=cursor, limit=self._fw.batch_entries, max_bytes=self._fw.batch_bytes
                )
            except Exception as err:  # a closed or failed WAL: the service is going down
                self._fw.end_read(self.endpoint)
                if not self._fw.stopping.is_set():
                    log.error("forwarder cannot read the WAL", extra={"error": str(err)})
                    self._fw.stopping.wait(1.0)
                continue
            assert isinstance(entries, list)
            if not entries:
                self._fw.end_read(self.endpoint)
                if in_flight:
                    if not self._settle(in_flight, keep=0):
                        return  # stopping
                else:
                    self._idle()
                continue
            mine = [e for e in entries if table.owner(e.id) == self.endpoint]
            wait = _linger_secs(mine, len(entries) >= self._fw.batch_entries)
            if wait > 0:
                self._fw.end_read(self.endpoint)
                if in_flight and not self._settle(in_flight, keep=0):
                    return  # stopping
                self._fw.stopping.wait(wait)
                continue  # read again: more entries may have arrived
            # Minus what any lane has in flight (this one too) or marked processed since the read.
            mine = self._fw.claim(mine, self.endpoint)
            if mine:
                in_flight.append(_Round(pending=mine))
                if not self._settle(in_flight, keep=1):
                    return  # stopping
            cursor = entries[-1].id
        self._finish_quietly(in_flight)

    def _finish_quietly(self, in_flight: list[_Round]) -> None:
        """On the way out: rounds whose acks are on their way are marked processed (no
        resend after the restart); any failure just leaves the rest unprocessed."""
        try:
            for rnd in in_flight:
                self._finish(rnd)
        except Exception as err:
            log.info(
                "stopping with rounds unacknowledged; they are resent after the restart",
                extra={"writer": self.endpoint, "error": _first_line(err)},
            )
        finally:
            self._abandon(in_flight)

    def _settle(self, in_flight: list[_Round], keep: int) -> bool:
        """Streams the newest round if it is not yet sent, then finishes older rounds
        until at most ``keep`` are in flight: while the writer stores the newest
        round, this lane reads and converts the next one. On any failure every
        round in flight is delivered again the patient way (``_deliver_with_retry``);
        the writer drops what it already has. False if stopped first."""
        try:
            if in_flight and not in_flight[-1].sent:
                self._start(in_flight[-1])
            while len(in_flight) > keep:
                self._finish(in_flight[0])
                in_flight.pop(0)
            return True
        except Exception as err:
            again = [e for rnd in in_flight for e in rnd.pending]
            since = min((rnd.started_mono for rnd in in_flight if rnd.started_mono), default=time.monotonic())
            self._abandon(in_flight)
            if not again:
                return True
            refused = isinstance(err, WriterRefused)  # split and dead-lettered there, not an outage
            return self._deliver_with_retry(again, failed=None if refused else err, since=since)

    def _abandon(self, in_flight: list[_Round]) -> None:
        """Closes the streams of rounds that will not be finished (their entries stay unprocessed)."""
        for rnd in in_flight:
            rnd.close()
        in_flight.clear()

    def _idle(self) -> None:
        if time.monotonic() - self._last_probe > PROBE_INTERVAL_SECS:
            self._probe()
        self.wake.wait(IDLE_WAIT_SECS)
        self.wake.clear()  # before the next read of the WAL, so no new entry is missed

    def _probe(self) -> None:
        """Keeps ``up`` honest while there is nothing to send (for /health), and tells when a
        failed-over writer is back (its lane has nothing to send meanwhile)."""
        self._last_probe = started = time.monotonic()
        try:
            list(self._connect().list_actions(options=self._options(timeout=5.0)))
            self._mark_up()
        except Exception as err:
            self._client = None  # reconnect next time: the channel may be broken
            self._mark_down(err, started)

    def _deliver_with_retry(
        self, entries: list[Entry], failed: Exception | None = None, since: float | None = None
    ) -> bool:
        """Delivers ``entries`` (or dead-letters them), one round at a time; False if
        stopped first. ``failed``: the error a first, pipelined attempt already met,
        in a call started at ``since`` (monotonic). Entries that route to another writer
        by now (failover, a changed writer set) are given up to it between attempts: only
        after a failed attempt, so no entry is ever in flight on two writers at once."""
        backoff = BACKOFF_START_SECS
        while not self._fw.stopping.is_set():
            if failed is not None:
                self._mark_down(failed, since if since is not None else time.monotonic(), entries)
            entries = self._keep_mine(entries)
            if not entries:
                self.state.retrying_entries = 0
                return True
            if failed is not None:
                self.state.retrying_entries = len(entries)
                self._fw.metrics.forward_errors.labels(self.endpoint, type(failed).__name__).inc()
                log.warning(
                    "forwarding failed; will retry",
                    extra={
                        "writer": self.endpoint,
                        "entries": len(entries),
                        "first_entry": entries[0].id,
                        "error": _first_line(failed),
                        "retry_in_secs": round(backoff, 2),
                    },
                )
                self._client = None  # reconnect: the channel may be broken
                if self._fw.stopping.wait(backoff * random.uniform(0.5, 1.0)):
                    break
                backoff = min(backoff * 2, BACKOFF_MAX_SECS)
                entries = self._keep_mine(entries)  # routes may have changed while waiting
                if not entries:
                    self.state.retrying_entries = 0
                    return True
            since = time.monotonic()
            try:
                self._deliver(entries)
                self.state.retrying_entries = 0
                return True
            except Exception as err:  # unreachable writer, timeout, broken stream: all retryable
                failed = err
        return False

    def _keep_mine(self, entries: list[Entry]) -> list[Entry]:
        """``entries`` that still route to this lane; the others are released to their new owner."""
        given_up = self._fw.give_up(self.endpoint, entries)
        if not given_up:
            return entries
        log.info(
            "entries handed to other writers",
            extra={"writer": self.endpoint, "entries": len(given_up), "first_entry": min(given_up)},
        )
        return [e for e in entries if e.id not in given_up]

    def _deliver(self, pending: list[Entry]) -> None:
        """One round over ``pending``, removing entries from it as they are finished
        (acked or dead-lettered), so a retry after a transient error resends only
        the rest. On a refusal the round is split, so only the refused entry is
        dead-lettered."""
        rnd = _Round(pending=pending)
        try:
            self._start(rnd)
            self._finish(rnd)
        except WriterRefused as refused:
            rnd.close()
            if len(pending) == 1:
                self._fw.dead_letter(pending[0], f"writer {self.endpoint} refused it: {refused}")
                pending.clear()
                return
            log.warning(
                "writer refused a batch; sending its entries one by one",
                extra={"writer": self.endpoint, "entries": len(pending), "error": str(refused)},
            )
            for entry in list(pending):
                self._deliver([entry])
                pending.remove(entry)
        except BaseException:
            rnd.close()
            raise

    def _start(self, rnd: _Round) -> None:
        """Converts the round's entries and streams them to the writer, a chunk at a
        time, without waiting for acks. Entries that cannot be converted are
        dead-lettered and leave ``rnd.pending``."""
        rnd.sent, rnd.started, rnd.started_mono = True, time.perf_counter(), time.monotonic()
        client = self._connect()
        # Every id at or below the watermark is acked or dead-lettered: the writer may forget them.
        min_unprocessed = self._fw.wal.processed_watermark() + 1
        try:
            for entry in list(rnd.pending):
                converted = self._convert(entry)
                if converted is None:
                    rnd.pending.remove(entry)
                    continue
                incarnation, tables = converted
                for table, batch in tables.items():
                    stream = rnd.streams.get(table)
                    if stream is None:
                        stream = rnd.streams[table] = self._open(client, table, batch.schema)
                    if stream.pending_bytes + batch.nbytes > CHUNK_BYTES or incarnation != stream.incarnation:
                        # Full, or another acceptor life's entries: out it goes first.
                        self._write(stream, min_unprocessed)
                    stream.incarnation = incarnation
                    stream.pending.append((entry.id, batch))
                    stream.pending_bytes += batch.nbytes
            for stream in rnd.streams.values():
                self._write(stream, min_unprocessed)
                stream.writer.done_writing()
        except pa.ArrowInvalid as err:
            raise WriterRefused(str(err)) from None

    def _finish(self, rnd: _Round) -> None:
        """Waits for the writer's acks of a started round, then marks its entries processed."""
        try:
            for table, stream in rnd.streams.items():
                _check_acks(table, stream)
                stream.writer.close()
        except pa.ArrowInvalid as err:
            raise WriterRefused(str(err)) from None
        rnd.streams_closed = True
        ids = [e.id for e in rnd.pending]
        if ids:
            self._fw.wal.mark_processed(ids)
            self._fw.release(ids)  # processed first: no other lane may read them as unclaimed and unprocessed
            # The marks are made durable now, not at the WAL's next once-a-second checkpoint: a
            # crash of this acceptor must not resend what a writer already acknowledged, because
            # that writer may be gone by then (replaced with an empty volume, its dedupe memory
            # with it) and its successor would store the rows a second time. One metadata write
            # per round (~1 ms here); rounds carry many requests.
            self._fw.wal.checkpoint()
            self._fw.metrics.forwarded_entries.labels(self.endpoint).inc(len(ids))
        if rnd.streams:
            self._fw.metrics.forward_latency.labels(self.endpoint).observe(time.perf_counter() - rnd.started)
            for table, stream in rnd.streams.items():
                self._fw.metrics.forwarded_rows.labels(self.endpoint, table).inc(stream.rows)
        self._mark_up()
        rnd.pending.clear()

    def _convert(self, entry: Entry) -> tuple[int, dict[str, pa.RecordBatch]] | None:
        """The entry's incarnation and non-empty tables; None (and the entry dead-lettered)
        if it cannot be converted."""
        try:
            content_type, body, window = entry_format.decode(entry.payload)
            incarnation = entry_format.incarnation_of(entry.payload)
            # The window the request was admitted under: the items the client was told
            # were rejected are rejected again, the rest converts. The ingest check ran
            # with a size limit at or below the ceiling, so an entry it took fits.
            result = otlp.convert(entry.kind, bytes(body), content_type, window=window)
        except (ValueError, otlp.NativePanicError) as err:
            # Validated at ingest, so this is a bug, a damaged entry or one taken by an
            # older version under other rules: set aside, never retried in a loop.
            self._fw.dead_letter(entry, f"conversion failed: {err}")
            return None
        return incarnation, {table: batch for table, batch in result.tables.items() if batch.num_rows}

    def _open(self, client: flight.FlightClient, table: str, schema: pa.Schema) -> _TableStream:
        header = StreamHeader(table=table, acceptor_id=self._fw.acceptor_id)
        writer, reader = client.do_put(header.descriptor(), schema, options=self._options())
        return _TableStream(writer, reader)

    def _write(self, stream: _TableStream, min_unprocessed: int) -> None:
        """Sends the stream's pending rows as one batch (nothing if there are none)."""
        if not stream.pending:
            return
        entries = [(eid, b.num_rows) for eid, b in stream.pending]
        batches = [b for _, b in stream.pending]
        batch = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
        stream.pending, stream.pending_bytes = [], 0
        metadata = encode_batch_metadata(entries, self._fw.acceptor_id, min_unprocessed, stream.incarnation)
        stream.writer.write_with_metadata(batch, metadata)
        stream.sent.append(entries)
        stream.rows += batch.num_rows

    # -- connection and state -------------------------------------------------

    def _connect(self) -> flight.FlightClient:
        if self._client is None:
            kwargs: dict[str, Any] = dict(self._fw.client_kwargs)
            if self._tls_hostname:  # an address from a dns:// name: the certificate names the name
                kwargs["override_hostname"] = self._tls_hostname
            self._client = flight.FlightClient(self.endpoint, **kwargs)
        return self._client

    def _options(self, timeout: float | None = None) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(
            timeout=timeout or self._fw.call_timeout, headers=bearer_header(self._fw.auth_token)
        )

    def _mark_up(self) -> None:
        if not self.state.up:
            log.info("writer reachable", extra={"writer": self.endpoint})
        self.state.up, self.state.last_error, self.state.last_success = True, None, time.time()
        self.state.down_since = self.state.down_since_wall = None
        self._last_ok = time.monotonic()
        self._fw.metrics.writer_up.labels(self.endpoint).set(1)
        self._fw.writer_back(self)

    def _mark_down(self, err: Exception, since: float, entries: Sequence[Entry] = ()) -> None:
        """Records a failed call that started at ``since`` (monotonic); fails the writer over
        once nothing has succeeded for ``writer_failover_secs``."""
        if self.state.up or self.state.last_error is None:
            log.warning("writer unreachable", extra={"writer": self.endpoint, "error": _first_line(err)})
        self.state.up, self.state.last_error = False, str(err) or type(err).__name__
        since = max(since, self._last_ok)  # a call started before the last success did not outlast it
        if self.state.down_since is None or since < self.state.down_since:
            self.state.down_since = since
            self.state.down_since_wall = time.time() - (time.monotonic() - since)
        self._fw.metrics.writer_up.labels(self.endpoint).set(0)
        self._fw.check_failover(self, entries)


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _linger_secs(mine: list[Entry], full: bool) -> float:
    """How long to wait for more entries before sending ``mine`` (0: send now)."""
    if not mine or full or sum(len(e.payload) for e in mine) >= LINGER_BYTES:
        return 0.0
    age = (time.time_ns() - mine[0].timestamp_ns) / 1e9
    if age < 0 or age >= LINGER_SECS:  # old enough, or the clock went back: never stall on it
        return 0.0
    return LINGER_SECS - age


def _check_acks(table: str, stream: _TableStream) -> None:
    """Reads one ack per batch sent; each must name exactly that batch's entries."""
    for entries in stream.sent:
        ack = stream.reader.read()
        if ack is None:
            stream.writer.close()  # raises the writer's error, if it ended the call with one
            raise flight.FlightServerError(f"writer closed the stream before acking {table}")
        acked, _duplicates = decode_ack(ack.to_pybytes())
        if sorted(acked) != sorted(eid for eid, _ in entries):
            raise flight.FlightServerError(f"writer acked {acked}, expected {[e for e, _ in entries]}")


class Forwarder:
    def __init__(
        self,
        wal: Wal,
        acceptor_id: str,
        endpoints: Sequence[str],
        metrics: AcceptorMetrics,
        dead_letters: DeadLetters,
        batch_entries: int,
        batch_bytes: int,
        auth_token: str | None = None,
        tls_root_certs: bytes | None = None,
        failover_secs: float = 0.0,
        dns_refresh_secs: float = 30.0,
        resolve: Resolver = system_resolve,
    ) -> None:
        """``failover_secs``: 0 never fails a writer over; the service passes 0 without a catalog.
        ``resolve``: how ``dns://`` names become addresses (the system resolver)."""
        self.wal = wal
        self.acceptor_id = acceptor_id
        self.endpoints = list(endpoints)
        self.metrics = metrics
        self._dead_letters = dead_letters
        self.batch_entries = batch_entries
        self.batch_bytes = batch_bytes
        self.auth_token = auth_token
        self.client_kwargs = {"tls_root_certs": tls_root_certs} if tls_root_certs else {}
        self.failover_secs = failover_secs
        self.call_timeout = (
            min(CALL_TIMEOUT_SECS, max(failover_secs, MIN_FAILOVER_CALL_TIMEOUT_SECS))
            if failover_secs > 0
            else CALL_TIMEOUT_SECS
        )
        self.dns_refresh_secs = dns_refresh_secs
        self.stopping = threading.Event()
        # Writers serve TLS exactly when a certificate is configured (the same one is trusted here).
        self.writer_set = WriterSet(self.endpoints, tls=tls_root_certs is not None, metrics=metrics, resolve=resolve)
        self._lock = threading.Lock()  # guards table, _lanes and _claims
        writers = self.writer_set.current()  # the static endpoints; dns:// names resolve in their thread
        self.table = RoutingTable(tuple(w.url for w in writers))
        self._lane_count = 0
        self._lanes: dict[str, Lane] = {w.url: self._new_lane(w) for w in writers}
        self._claims: dict[int, str] = {}  # entry id -> the writer whose lane has it in flight
        # Entries marked processed while some lane was between reading the WAL and claiming:
        # that lane's read may still list them. Kept until every read older than them is over.
        self._released = 0  # how many times entries were marked processed (a clock for the reads)
        self._reading: dict[str, int] = {}  # writer -> _released when its lane began its current read
        self._done: set[int] = set()
        self._done_log: deque[tuple[int, list[int]]] = deque()
        self._resolver: threading.Thread | None = None
        if self.writer_set.dynamic:
            self._resolver = threading.Thread(target=self._resolve_loop, name="forwarder-dns", daemon=True)

    @property
    def lanes(self) -> list[Lane]:
        with self._lock:
            return list(self._lanes.values())

    def _new_lane(self, writer: Writer) -> Lane:
        self._lane_count += 1
        return Lane(self, self._lane_count - 1, writer)

    def start(self) -> None:
        if self.metrics is not None:
            self.metrics.writers.set(len(self.table.writers))
        for lane in self.lanes:
            lane.start()
        if self._resolver is not None:
            self._resolver.start()

    def notify(self) -> None:
        """New entries are in the WAL: idle lanes look now instead of at their next poll.
        One event per lane: with a shared one, the first lane to wake cleared it for all."""
        for lane in self.lanes:
            lane.wake.set()

    def stop(self, timeout: float) -> None:
        """Stops after the current round; unacked entries stay unprocessed for the next start."""
        self.stopping.set()
        self.notify()
        deadline = time.monotonic() + timeout
        for lane in self.lanes:
            lane.join(max(0.0, deadline - time.monotonic()))
        if self._resolver is not None and self._resolver.is_alive():
            self._resolver.join(max(0.0, deadline - time.monotonic()))

    # -- claims: an entry is in flight on one lane at most ---------------------------

    def begin_read(self, writer: str) -> None:
        """``writer``'s lane is about to read the WAL; ``claim`` or ``end_read`` ends the read."""
        with self._lock:
            self._reading[writer] = self._released

    def end_read(self, writer: str) -> None:
        with self._lock:
            self._reading.pop(writer, None)
            self._trim_done()

    def claim(self, entries: list[Entry], writer: str) -> list[Entry]:
        """The ``entries`` (read since ``begin_read``) that ``writer``'s lane may put in a round
        now: those it owns under the current routes, that nobody has in flight (itself included:
        after a new epoch a lane reads its own rounds in flight again) and that were not marked
        processed since the read (another lane acked them meanwhile, under the old routes)."""
        with self._lock:
            table, claims, done = self.table, self._claims, self._done
            mine = [e for e in entries if e.id not in claims and e.id not in done and table.owner(e.id) == writer]
            for e in mine:
                claims[e.id] = writer
            self._reading.pop(writer, None)
            self._trim_done()
        return mine

    def release(self, ids: Iterable[int]) -> None:
        """Entries now marked processed (acked or dead-lettered): no longer in flight anywhere,
        and never to be claimed again from a read that began before."""
        with self._lock:
            ids = list(ids)
            for eid in ids:
                self._claims.pop(eid, None)
            self._released += 1
            if self._reading:  # a read in progress may list them
                self._done.update(ids)
                self._done_log.append((self._released, ids))

    def _trim_done(self) -> None:
        """Forgets processed ids that no read in progress can list (lock held)."""
        oldest = min(self._reading.values(), default=self._released)
        while self._done_log and self._done_log[0][0] <= oldest:
            self._done.difference_update(self._done_log.popleft()[1])

    def give_up(self, writer: str, entries: list[Entry]) -> set[int]:
        """Releases ``writer``'s claims on those of ``entries`` that now route elsewhere (called
        between attempts, when none of them is in flight) and makes every lane read the WAL
        again so their new owners find them. Returns their ids."""
        with self._lock:
            table = self.table
            gone = {e.id for e in entries if table.owner(e.id) != writer}
            if not gone:
                return gone
            for eid in gone:
                if self._claims.get(eid) == writer:
                    del self._claims[eid]
            self.table = table.next_epoch()
        self.notify()
        return gone

    # -- the writer set and failover ------------------------------------------------

    def _resolve_loop(self) -> None:
        """Resolves the dns:// names now and every ``dns_refresh_secs``; a name that never
        resolved is tried every second meanwhile."""
        while not self.stopping.is_set():
            try:
                if self.writer_set.refresh():
                    self.set_writers(self.writer_set.current())
            except Exception:  # a bug must not end resolution for the life of the process
                log.exception("writer DNS refresh failed")
            wait = UNRESOLVED_RETRY_SECS if self.writer_set.unresolved else self.dns_refresh_secs
            self.stopping.wait(wait)

    def set_writers(self, writers: list[Writer]) -> None:
        """Routes over ``writers`` from now on: lanes start for new ones; the lanes of writers
        gone finish what they have in flight and stop (``retire``)."""
        with self._lock:
            urls = tuple(w.url for w in writers)
            if urls == self.table.writers:
                return
            old = set(self.table.writers)
            self.table = self.table.with_writers(urls)
            started = []
            for w in writers:
                if w.url not in self._lanes:
                    lane = self._lanes[w.url] = self._new_lane(w)
                    started.append(lane)
            failed_over = len(self.table.failed_over)
        log.info(
            "writer set changed",
            extra={"writers": list(urls), "added": sorted(set(urls) - old), "removed": sorted(old - set(urls))},
        )
        if self.metrics is not None:
            self.metrics.writers.set(len(urls))
            self.metrics.writers_failed_over.set(failed_over)
        for lane in started:
            lane.start()
        self.notify()

    def retire(self, lane: Lane) -> bool:
        """True (and the lane forgotten) if its writer is still out of the writer set."""
        with self._lock:
            if lane.endpoint in self.table.writers:
                return False
            if self._lanes.get(lane.endpoint) is lane:
                del self._lanes[lane.endpoint]
        log.info("writer removed from the writer set; its lane stopped", extra={"writer": lane.endpoint})
        if self.metrics is not None:
            with contextlib.suppress(KeyError):  # never reported
                self.metrics.writer_up.remove(lane.endpoint)
        return True

    def check_failover(self, lane: Lane, entries: Sequence[Entry] = ()) -> None:
        """Fails ``lane``'s writer over once it has been unreachable for ``failover_secs``."""
        since = lane.state.down_since
        if self.failover_secs <= 0 or since is None:
            return
        down_for = time.monotonic() - since
        if down_for < self.failover_secs:
            return
        with self._lock:
            table = self.table
            if lane.endpoint in table.failed_over or lane.endpoint not in table.writers:
                return
            self.table = table = table.with_failed_over(table.failed_over | {lane.endpoint})
        owners = {table.owner(e.id) for e in entries} if entries else set(table.writers) - table.failed_over
        log.warning(
            "writer failed over",
            extra={
                "writer": lane.endpoint,
                "unreachable_since": _iso(lane.state.down_since_wall),
                "unreachable_secs": round(down_for, 1),
                "next_writers": sorted(w for w in owners if w),
                "failed_over_writers": sorted(table.failed_over),
                "error": lane.state.last_error,
            },
        )
        if self.metrics is not None:
            self.metrics.failovers.labels(lane.endpoint).inc()
            self.metrics.writers_failed_over.set(len(table.failed_over))
        self.notify()

    def writer_back(self, lane: Lane) -> None:
        """A failed-over writer answered again: new entries go to it again."""
        if lane.endpoint not in self.table.failed_over:  # the common case, without the lock
            return
        with self._lock:
            table = self.table
            if lane.endpoint not in table.failed_over:
                return
            self.table = table = table.with_failed_over(table.failed_over - {lane.endpoint})
        log.info("writer back after failover; its entries go to it again", extra={"writer": lane.endpoint})
        if self.metrics is not None:
            self.metrics.writers_failed_over.set(len(table.failed_over))
        self.notify()

    # -- the rest -------------------------------------------------------------------

    def dead_letter(self, entry: Entry, reason: str) -> None:
        """Sets ``entry`` aside (``signaldb.service.dead_letters``: the request body as taken,
        replayable with any OTLP client) and marks it processed."""
        try:
            content_type, body, window = entry_format.decode(entry.payload)
            data, ext = bytes(body), "otlp"
        except entry_format.EntryFormatError:
            content_type, data, window, ext = None, bytes(entry.payload), None, "raw"
        fields = {
            "content_type": content_type,
            "acceptor_id": self.acceptor_id,
            "window": None
            if window is None
            else {"min_ns": window.min_ns, "max_ns": window.max_ns, "now_ns": window.now_ns},
        }
        path, new = self._dead_letters.put(entry.id, entry.kind, data, ext, reason, fields)
        if new:
            self.metrics.dead_letters.inc()
        log.error(
            "entry moved to dead-letter directory",
            extra={"entry_id": entry.id, "signal": entry.kind, "reason": reason, "path": str(path)},
        )
        self.wal.mark_processed(entry.id)
        self.release([entry.id])

    def status(self) -> dict[str, object]:
        table = self.table
        return {
            "writers": [
                {
                    "endpoint": lane.endpoint,
                    "up": lane.state.up,
                    "last_error": lane.state.last_error,
                    "retrying_entries": lane.state.retrying_entries,
                    "failed_over": lane.endpoint in table.failed_over,
                    "unreachable_since": _iso(lane.state.down_since_wall),
                }
                for lane in self.lanes
            ],
            "failover_secs": self.failover_secs,
            "dead_letter_entries": self._dead_letters.count,
        }


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"
