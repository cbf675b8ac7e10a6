"""A Flight server for tests that speaks the writer's side of
``signaldb.flight_protocol`` and records what it receives.

It is a real ``pyarrow.flight`` server on loopback (the acceptor talks real
Flight to it); it just keeps batches in memory instead of writing Parquet.
Knobs: ``refuse_if`` (a predicate on a batch: refuse it as invalid),
``fail_next`` (answer N streams with UNAVAILABLE), ``fail_streams`` (the
numbers of streams, counted from 1, to answer with UNAVAILABLE), ``ack_delay``.
``max_active`` records how many streams were open at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.flight as flight

from helpers.net import wait_until
from signaldb.flight_protocol import StreamHeader, decode_batch_metadata, encode_ack
from test_otlp_reference import plain_rows


@dataclass
class Received:
    acceptor_id: str
    table: str
    entries: list[tuple[int, int]]
    batch: pa.RecordBatch
    headers: dict


class FlightRecorder(flight.FlightServerBase):
    def __init__(self, port: int = 0, host: str = "127.0.0.1", scheme: str = "grpc", **kwargs) -> None:
        super().__init__(f"{scheme}://{host}:{port}", **kwargs)
        self.host, self.scheme = host, scheme
        self.received: list[Received] = []
        self.streams = 0
        self.lock = threading.Lock()
        self.refuse_if: Callable[[str, pa.RecordBatch], bool] | None = None
        self.fail_next = 0
        self.fail_streams: set[int] = set()
        self.active = 0
        self.max_active = 0
        self.ack_delay = 0.0
        self.seen: set[tuple[str, str, int]] = set()
        self.duplicates = 0

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def do_put(self, context, descriptor, reader, writer):
        header = StreamHeader.from_descriptor(descriptor)
        with self.lock:
            self.streams += 1
            if self.fail_next > 0 or self.streams in self.fail_streams:
                self.fail_next = max(0, self.fail_next - 1)
                raise flight.FlightUnavailableError("recorder told to fail this stream")
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self._record(context, header, reader, writer)
        finally:
            with self.lock:
                self.active -= 1

    def _record(self, context, header, reader, writer):
        for chunk in reader:
            batch = chunk.data
            entries = decode_batch_metadata(
                chunk.app_metadata.to_pybytes() if chunk.app_metadata else None, batch.num_rows, header.acceptor_id
            ).entries
            if self.refuse_if is not None and self.refuse_if(header.table, batch):
                raise pa.ArrowInvalid("recorder refuses this batch")
            if self.ack_delay:
                time.sleep(self.ack_delay)
            dups = []
            with self.lock:
                for eid, _ in entries:
                    key = (header.acceptor_id, header.table, eid)
                    if key in self.seen:
                        dups.append(eid)
                    self.seen.add(key)
                self.duplicates += len(dups)
                self.received.append(
                    Received(
                        header.acceptor_id,
                        header.table,
                        entries,
                        batch,
                        dict(context.headers if hasattr(context, "headers") else {}),
                    )
                )
            writer.write(pa.py_buffer(encode_ack([e for e, _ in entries], dups)))

    def list_actions(self, context):
        return []

    # -- what tests look at --------------------------------------------------

    def rows(self, table: str) -> list[dict]:
        with self.lock:
            out = []
            for r in self.received:
                if r.table == table:
                    out.extend(plain_rows(r.batch))
            return out

    def entry_ids(self) -> set[int]:
        with self.lock:
            return {eid for r in self.received for eid, _ in r.entries}

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        try:
            wait_until(predicate, timeout)
        except AssertionError as err:
            raise AssertionError(f"{err}; received {len(self.received)} batches") from None
