"""The Flight side of the writer: ``do_put`` per ``signaldb.flight_protocol``.

For each batch of a stream: check the backlog, decode the entries, split them
into new and duplicate (the sink's dedupe ledger: ``Sink.reserve``), append the new rows to the writer WAL as
one entry, and ack once the append returned (durable in immediate mode).
pyarrow runs each call on its own thread, so the blocking append is fine here
and concurrent streams share the WAL's group commit.

Refusals: a broken descriptor, schema or batch raises ``pa.ArrowInvalid``
(gRPC INVALID_ARGUMENT: the acceptor splits the round and dead-letters the
entry refused on its own). Every batch is checked before any of it is stored
(``signaldb.writer.validate``: exact reference schema, no nulls where the
schema has none, valid Arrow with UTF-8 strings, at most
``writer.max_batch_bytes``) and must name the descriptor's acceptor. A full WAL,
a backlog over its limit, buffers at ``writer.max_buffered_bytes`` (after
waiting up to ``ROOM_WAIT_SECS`` for the flusher to free some) or an entry in
flight elsewhere raise Flight's unavailable error (retryable). Nothing of a refused batch is kept, and batches
acked before it in the same stream stay acked.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from signaldb.flight_protocol import ProtocolError, StreamHeader, decode_batch_metadata, encode_ack, source_key
from signaldb.service.security import bearer_ok
from signaldb.wal import Wal, WalError, WalFullError
from signaldb.writer import payload
from signaldb.writer.ledger import Busy, Key
from signaldb.writer.metrics import WriterMetrics
from signaldb.writer.sink import Sink
from signaldb.writer.tables import kind_of, reference_schema
from signaldb.writer.validate import BatchRefused, check_batch, schema_difference

log = logging.getLogger(__name__)

# Refusals are logged at most once per this many seconds per reason (each is counted anyway):
# a hostile or broken peer must not flood the log.
REFUSAL_LOG_INTERVAL_SECS = 10.0

# How long a batch waits for the sink's buffered bytes to drop under the bound before it is
# refused: long enough to ride out one file being written, short enough not to tie up
# Flight's handler threads while the store is down.
ROOM_WAIT_SECS = 0.5


class _BearerMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Refuses every call whose ``authorization`` header lacks the configured bearer token."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[Any]]) -> None:
        values = headers.get("authorization") or []
        value = values[0] if values else None
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not bearer_ok(self._token, value):
            raise flight.FlightUnauthenticatedError("missing or wrong bearer token")


class WriterFlightServer(flight.FlightServerBase):
    def __init__(
        self,
        location: str,
        wal: Wal,
        sink: Sink,
        metrics: WriterMetrics,
        max_backlog_bytes: int,
        auth_token: str | None = None,
        tls_pair: tuple[bytes, bytes] | None = None,
        max_batch_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        middleware = {"auth": _BearerMiddlewareFactory(auth_token)} if auth_token else None
        super().__init__(location, tls_certificates=[tls_pair] if tls_pair else None, middleware=middleware)
        self._wal = wal
        self._sink = sink
        self._metrics = metrics
        self._max_backlog = max_backlog_bytes
        self._max_batch_bytes = max_batch_bytes
        self._last_logged: dict[str, float] = {}
        self._log_lock = threading.Lock()
        self._calls_lock = threading.Lock()
        self.open_calls = 0  # do_put calls running (idle streams included)
        self.busy_calls = 0  # of those, the ones handling a batch (not waiting for the next)
        self.stopping = False  # set at shutdown: running streams end at their next batch

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        """Cheap call the acceptors use to probe reachability while idle (no actions are offered)."""
        return []

    # -- refusals --------------------------------------------------------------

    def _invalid(self, message: str, reason: str = "invalid", acceptor_id: str | None = None) -> pa.ArrowInvalid:
        """Counts and (rate-limited) logs a refusal; the returned error reaches the client as
        Flight INVALID_ARGUMENT (``pa.ArrowInvalid`` there)."""
        self._metrics.refused_batches.labels(reason).inc()
        now = time.monotonic()
        with self._log_lock:
            due = now - self._last_logged.get(reason, -REFUSAL_LOG_INTERVAL_SECS) >= REFUSAL_LOG_INTERVAL_SECS
            if due:
                self._last_logged[reason] = now
        if due:
            log.warning(
                "refused invalid Flight batch (further refusals for this reason are only counted for "
                f"{REFUSAL_LOG_INTERVAL_SECS:.0f}s: signaldb_writer_refused_batches_total)",
                extra={"reason": reason, "error": message, "acceptor_id": acceptor_id},
            )
        return pa.ArrowInvalid(f"refused ({reason}): {message}")

    def _unavailable(self, reason: str, message: str) -> flight.FlightUnavailableError:
        self._metrics.refused_batches.labels(reason).inc()
        return flight.FlightUnavailableError(message)

    def over_backlog(self) -> bool:
        return self._wal.unprocessed_bytes() > self._max_backlog

    # -- do_put ----------------------------------------------------------------

    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        with self._calls_lock:
            self.open_calls += 1
        try:
            self._put(descriptor, reader, writer)
        finally:
            with self._calls_lock:
                self.open_calls -= 1

    def _put(
        self,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        if self.stopping:
            raise flight.FlightUnavailableError("writer shutting down; retry")
        try:
            header = StreamHeader.from_descriptor(descriptor)
        except ProtocolError as err:
            raise self._invalid(str(err), "protocol") from None
        want = reference_schema(header.table)
        diff = schema_difference(reader.schema, want)
        if diff:
            raise self._invalid(f"schema does not match table {header.table!r}: {diff}", "schema", header.acceptor_id)
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                return
            with self._calls_lock:
                self.busy_calls += 1
            try:
                self._handle(header, want, chunk, writer)
            finally:
                with self._calls_lock:
                    self.busy_calls -= 1

    def _handle(
        self,
        header: StreamHeader,
        want: pa.Schema,
        chunk: flight.FlightStreamChunk,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        if self.stopping:  # this batch is not stored: the acceptor resends it (to this writer, later)
            raise flight.FlightUnavailableError("writer shutting down; retry")
        if chunk.data is None:
            raise self._invalid("a batch is required with each app_metadata", "protocol", header.acceptor_id)
        raw = chunk.app_metadata.to_pybytes() if chunk.app_metadata is not None else None
        try:
            metadata = decode_batch_metadata(raw, chunk.data.num_rows, header.acceptor_id)
        except ProtocolError as err:
            # decode_batch_metadata names the mismatch "differs from the stream's".
            reason = "acceptor_mismatch" if "differs from the stream" in str(err) else "protocol"
            raise self._invalid(str(err), reason, header.acceptor_id) from None
        try:
            batch = check_batch(chunk.data, want, self._max_batch_bytes)
        except BatchRefused as err:
            raise self._invalid(f"table {header.table!r}: {err}", err.reason, header.acceptor_id) from None
        # Entries are named by (acceptor, incarnation, table, id): a restored or copied
        # acceptor directory reuses ids, never an incarnation (flight_protocol.source_key).
        key: Key = (source_key(header.acceptor_id, metadata.incarnation), header.table)
        if metadata.min_unprocessed is not None:
            self._sink.raise_floor(key[0], metadata.min_unprocessed, [eid for eid, _ in metadata.entries])
        ack = self._store(key, metadata.entries, batch)
        writer.write(pa.py_buffer(ack))

    def _store(self, key: Key, entries: list[tuple[int, int]], batch: pa.RecordBatch) -> bytes:
        """Makes the batch's new entries durable in the WAL; returns the ack."""
        if self.over_backlog():
            raise self._unavailable("backlog", "writer WAL backlog over wal.max_backlog_bytes; retry later")
        if not self._sink.wait_for_room(ROOM_WAIT_SECS):
            raise self._unavailable(
                "memory",
                "writer buffers at writer.max_buffered_bytes (Parquet files not "
                "written fast enough, or the object store is down); retry later",
            )
        ids = [eid for eid, _ in entries]
        try:
            reservation = self._sink.reserve(key, ids)
        except Busy as err:
            raise self._unavailable("busy", f"{err}; retry") from None
        duplicates = reservation.duplicates
        stored = False
        with reservation:  # at its end: the stored ids pending, every other new id free again
            fresh = set(reservation.new)
            kept = tuple((eid, rows) for eid, rows in entries if eid in fresh and rows > 0)
            try:
                if kept:
                    record = payload.WalRecord(key[0], key[1], kept, _rows_of(entries, fresh, batch))
                    wal_id = self._wal.append(payload.encode(record), kind_of(key[1]))  # durable on return
                    stored = True
                    reservation.stored(eid for eid, _ in kept)
            except WalFullError as err:
                raise self._unavailable("wal_full", f"writer WAL full: {err}; retry later") from None
            except WalError as err:
                self._metrics.refused_batches.labels("wal_error").inc()
                raise flight.FlightInternalError(f"writer WAL failed: {err}") from None
        if stored:
            self._sink.add(wal_id, record)
            self._metrics.rows_received.labels(key[1]).inc(record.batch.num_rows)
        self._metrics.batches_received.labels(key[1]).inc()
        if duplicates:
            self._metrics.duplicate_entries.labels(key[1]).inc(len(duplicates))
        return encode_ack(ids, duplicates)


def _rows_of(entries: list[tuple[int, int]], keep: set[int], batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch's rows that belong to the kept entries (row counts give each entry's slice)."""
    if all(eid in keep for eid, _ in entries):
        return batch
    pieces, offset = [], 0
    for eid, rows in entries:
        if eid in keep and rows:
            pieces.append(batch.slice(offset, rows))
        offset += rows
    return pieces[0] if len(pieces) == 1 else pa.concat_batches(pieces)
