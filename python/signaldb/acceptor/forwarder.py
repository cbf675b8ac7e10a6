"""The background exporter: acceptor WAL → Arrow batches → Flight ``do_put`` → writer.

One *lane* (a thread) per writer endpoint. Every entry belongs to exactly one
lane, chosen by rendezvous hashing of (endpoint, entry id): stable across
restarts and retries, so a retried entry goes to the same writer (whose
dedupe index knows it), and adding a writer moves only ~1/n of the entries.

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

import logging
import random
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.flight as flight

from signaldb import otlp
from signaldb.acceptor import entry_format
from signaldb.acceptor.dead_letter import DeadLetters
from signaldb.acceptor.telemetry import AcceptorMetrics
from signaldb.flight_protocol import StreamHeader, bearer_header, decode_ack, encode_batch_metadata
from signaldb.wal import Entry, Wal

log = logging.getLogger(__name__)

# Most Arrow bytes per Flight batch: big enough that the writer's per-batch cost (a
# WAL append and its sync) is small per row, small enough to overlap conversion with
# the writer's work. An entry is never split: a bigger one goes in a batch of its own.
CHUNK_BYTES = 4 * 1024 * 1024
CALL_TIMEOUT_SECS = 60.0
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


def route(entry_id: int, endpoints: Sequence[str]) -> int:
    """Index of the endpoint that owns ``entry_id`` (rendezvous hashing)."""
    if len(endpoints) == 1:
        return 0
    key = entry_id.to_bytes(8, "little")
    return max(range(len(endpoints)), key=lambda i: zlib.crc32(key, zlib.crc32(endpoints[i].encode())))


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
    started: float = 0.0

    def close(self) -> None:
        """Ends the round's calls without waiting for acks (errors no longer matter)."""
        if self.streams_closed:
            return
        self.streams_closed = True
        for stream in self.streams.values():
            try:
                stream.writer.close()
            except Exception:  # the call already failed or was cancelled
                pass


@dataclass
class LaneState:
    endpoint: str
    up: bool = False
    last_error: str | None = None
    last_success: float | None = None
    retrying_entries: int = 0


class Lane:
    def __init__(self, forwarder: Forwarder, index: int, endpoint: str) -> None:
        self._fw = forwarder
        self._index = index
        self.endpoint = endpoint
        self.state = LaneState(endpoint)
        self._client: flight.FlightClient | None = None
        self._last_probe = 0.0
        self.wake = threading.Event()  # set by Forwarder.notify when entries arrive
        self._thread = threading.Thread(target=self._run, name=f"forwarder-{index}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # -- the loop ------------------------------------------------------------

    def _run(self) -> None:
        cursor = 0
        in_flight: list[_Round] = []  # streamed, acks not read yet; oldest first
        while not self._fw.stopping.is_set():
            try:
                entries = self._fw.wal.unprocessed(after_id=cursor, limit=self._fw.batch_entries,
                                                   max_bytes=self._fw.batch_bytes)
            except Exception as err:  # a closed or failed WAL: the service is going down
                if not self._fw.stopping.is_set():
                    log.error("forwarder cannot read the WAL", extra={"error": str(err)})
                    self._fw.stopping.wait(1.0)
                continue
            assert isinstance(entries, list)
            if not entries:
                if in_flight:
                    if not self._settle(in_flight, keep=0):
                        return  # stopping
                else:
                    self._idle()
                continue
            mine = [e for e in entries if route(e.id, self._fw.endpoints) == self._index]
            wait = _linger_secs(mine, len(entries) >= self._fw.batch_entries)
            if wait > 0:
                if in_flight and not self._settle(in_flight, keep=0):
                    return  # stopping
                self._fw.stopping.wait(wait)
                continue  # read again: more entries may have arrived
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
            log.info("stopping with rounds unacknowledged; they are resent after the restart",
                     extra={"writer": self.endpoint, "error": _first_line(err)})
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
            self._abandon(in_flight)
            if not again:
                return True
            refused = isinstance(err, WriterRefused)  # split and dead-lettered there, not an outage
            return self._deliver_with_retry(again, failed=None if refused else err)

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
        """Keeps ``up`` honest while there is nothing to send (for /readyz)."""
        self._last_probe = time.monotonic()
        try:
            list(self._connect().list_actions(options=self._options(timeout=5.0)))
            self._mark_up()
        except Exception as err:
            self._mark_down(err)

    def _deliver_with_retry(self, entries: list[Entry], failed: Exception | None = None) -> bool:
        """Delivers ``entries`` (or dead-letters them), one round at a time; False if
        stopped first. ``failed``: the error a first, pipelined attempt already met."""
        backoff = BACKOFF_START_SECS
        while not self._fw.stopping.is_set():
            if failed is not None:
                self._mark_down(failed)
                self.state.retrying_entries = len(entries)
                self._fw.metrics.forward_errors.labels(self.endpoint, type(failed).__name__).inc()
                log.warning("forwarding failed; will retry", extra={
                    "writer": self.endpoint, "entries": len(entries), "first_entry": entries[0].id,
                    "error": _first_line(failed),
                    "retry_in_secs": round(backoff, 2)})
                self._client = None  # reconnect: the channel may be broken
                if self._fw.stopping.wait(backoff * random.uniform(0.5, 1.0)):
                    break
                backoff = min(backoff * 2, BACKOFF_MAX_SECS)
            try:
                self._deliver(entries)
                self.state.retrying_entries = 0
                return True
            except Exception as err:  # unreachable writer, timeout, broken stream: all retryable
                failed = err
        return False

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
            log.warning("writer refused a batch; sending its entries one by one",
                        extra={"writer": self.endpoint, "entries": len(pending), "error": str(refused)})
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
        rnd.sent, rnd.started = True, time.perf_counter()
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
            self._client = flight.FlightClient(self.endpoint, **self._fw.client_kwargs)
        return self._client

    def _options(self, timeout: float = CALL_TIMEOUT_SECS) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(timeout=timeout, headers=bearer_header(self._fw.auth_token))

    def _mark_up(self) -> None:
        if not self.state.up:
            log.info("writer reachable", extra={"writer": self.endpoint})
        self.state.up, self.state.last_error, self.state.last_success = True, None, time.time()
        self._fw.metrics.writer_up.labels(self.endpoint).set(1)

    def _mark_down(self, err: Exception) -> None:
        if self.state.up or self.state.last_error is None:
            log.warning("writer unreachable", extra={"writer": self.endpoint, "error": _first_line(err)})
        self.state.up, self.state.last_error = False, str(err) or type(err).__name__
        self._fw.metrics.writer_up.labels(self.endpoint).set(0)


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
    ) -> None:
        self.wal = wal
        self.acceptor_id = acceptor_id
        self.endpoints = list(endpoints)
        self.metrics = metrics
        self._dead_letters = dead_letters
        self._dead_letter_lock = threading.Lock()
        self.batch_entries = batch_entries
        self.batch_bytes = batch_bytes
        self.auth_token = auth_token
        self.client_kwargs = {"tls_root_certs": tls_root_certs} if tls_root_certs else {}
        self.stopping = threading.Event()
        self.lanes = [Lane(self, i, ep) for i, ep in enumerate(self.endpoints)]

    def start(self) -> None:
        for lane in self.lanes:
            lane.start()

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

    def dead_letter(self, entry: Entry, reason: str) -> None:
        with self._dead_letter_lock:
            self._dead_letters.put(entry.id, entry.kind, entry.payload, reason)
        self.metrics.dead_letters.inc()
        self.wal.mark_processed(entry.id)

    def status(self) -> dict[str, object]:
        return {
            "writers": [
                {"endpoint": lane.endpoint, "up": lane.state.up, "last_error": lane.state.last_error,
                 "retrying_entries": lane.state.retrying_entries}
                for lane in self.lanes
            ],
            "dead_letter_entries": self._dead_letters.count,
        }
