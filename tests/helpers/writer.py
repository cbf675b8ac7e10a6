"""Helpers for the writer tests: real OTLP requests, a real Flight client, a writer
process, and Parquet read back with pyarrow and DuckDB.

Requests are built with opentelemetry-proto and converted with
``signaldb.otlp.convert``, exactly as the acceptor does it.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from helpers import iceberg
from signaldb import otlp
from signaldb.flight_protocol import StreamHeader, decode_ack, encode_batch_metadata
from signaldb.writer.catalog import to_storage
from signaldb.writer.tables import TABLES

REPO = pathlib.Path(__file__).resolve().parents[2]
HOUR_NS = 3_600_000_000_000
# 2026-11-24T01:00:00Z: a fixed hour, so partitions are predictable.
T0 = 1_795_482_000_000_000_000


def _resource(service: str) -> Resource:
    return Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])


def _id(seed: int, size: int) -> bytes:
    return (seed + 1).to_bytes(size, "big")


# -- OTLP requests -------------------------------------------------------------


def traces_request(
    seed: int,
    spans: int = 5,
    start_ns: int = T0,
    services: Sequence[str] = ("checkout", "api"),
    spacing_ns: int = 1_000_000,
) -> bytes:
    """``spans`` spans with unique ids derived from ``seed``, spread over ``services``."""
    groups = []
    for s, service in enumerate(services):
        group = [
            Span(
                trace_id=_id(seed * 1000 + i, 16),
                span_id=_id(seed * 1000 + i, 8),
                name=f"op-{seed}-{i}",
                kind=2,
                start_time_unix_nano=start_ns + i * spacing_ns,
                end_time_unix_nano=start_ns + i * spacing_ns + 500,
                attributes=[KeyValue(key="i", value=AnyValue(int_value=i))],
            )
            for i in range(spans)
            if i % len(services) == s
        ]
        groups.append(
            ResourceSpans(
                resource=_resource(service),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="t", version="1"), spans=group)],
            )
        )
    return ExportTraceServiceRequest(resource_spans=groups).SerializeToString()


def logs_request(seed: int, records: int = 4, start_ns: int = T0) -> bytes:
    """Log records; every other one leaves ``time`` unset (the writer falls back to observed_time)."""
    logs = [
        LogRecord(
            time_unix_nano=0 if i % 2 else start_ns + i,
            observed_time_unix_nano=start_ns + i + 7,
            severity_number=9,
            severity_text="INFO",
            body=AnyValue(string_value=f"log {seed}/{i}"),
            attributes=[KeyValue(key="seed", value=AnyValue(int_value=seed))],
        )
        for i in range(records)
    ]
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=_resource("logger"), scope_logs=[ScopeLogs(log_records=logs)])]
    ).SerializeToString()


def metrics_request(seed: int, points: int = 3, start_ns: int = T0) -> bytes:
    """A gauge, a sum and a histogram metric, ``points`` points each."""

    def numbers(offset: float) -> list[NumberDataPoint]:
        return [
            NumberDataPoint(time_unix_nano=start_ns + i, start_time_unix_nano=start_ns, as_double=seed + offset + i)
            for i in range(points)
        ]

    histograms = [
        HistogramDataPoint(
            time_unix_nano=start_ns + i,
            start_time_unix_nano=start_ns,
            count=3,
            sum=6.0,
            bucket_counts=[1, 2],
            explicit_bounds=[1.0],
        )
        for i in range(points)
    ]
    metrics = [
        Metric(name=f"g{seed}", gauge=Gauge(data_points=numbers(0.5))),
        Metric(name=f"s{seed}", sum=Sum(data_points=numbers(0.25), is_monotonic=True, aggregation_temporality=2)),
        Metric(name=f"h{seed}", histogram=Histogram(data_points=histograms, aggregation_temporality=2)),
    ]
    return ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(resource=_resource("meter"), scope_metrics=[ScopeMetrics(metrics=metrics)])]
    ).SerializeToString()


def convert(kind: str, body: bytes) -> dict[str, pa.RecordBatch]:
    return otlp.convert(kind, body).tables


# -- Flight client -------------------------------------------------------------


@dataclass
class Sent:
    """What a test sent and had acked, per table: the rows the writer now owes Parquet."""

    batches: dict[str, list[pa.RecordBatch]] = field(default_factory=dict)

    def add(self, table: str, batch: pa.RecordBatch) -> None:
        self.batches.setdefault(table, []).append(batch)

    def table(self, table: str) -> pa.Table:
        return pa.Table.from_batches(self.batches.get(table, []), schema=self._schema(table))

    def _schema(self, table: str) -> pa.Schema:
        from signaldb.writer.tables import reference_schema

        return reference_schema(table)


def put(
    client: flight.FlightClient,
    table: str,
    acceptor_id: str,
    batches: Iterable[tuple[pa.RecordBatch, Sequence[tuple[int, int]]]],
    token: str | None = None,
) -> list[tuple[list[int], list[int]]]:
    """Sends batches (each with its [(entry id, rows)]) on one stream; returns the acks."""
    from signaldb.flight_protocol import bearer_header

    options = flight.FlightCallOptions(headers=bearer_header(token), timeout=30)
    batches = list(batches)
    schema = batches[0][0].schema
    writer, reader = client.do_put(StreamHeader(table, acceptor_id).descriptor(), schema, options=options)
    acks = []
    try:
        for batch, entries in batches:
            writer.write_with_metadata(batch, encode_batch_metadata(entries))
            acks.append(decode_ack(reader.read().to_pybytes()))
        writer.done_writing()
    finally:
        writer.close()
    return acks


def put_request(
    client: flight.FlightClient,
    kind: str,
    body: bytes,
    entry_id: int,
    acceptor_id: str = "acc-1",
    sent: Sent | None = None,
) -> dict[str, list[int]]:
    """Sends one OTLP request (one acceptor entry) like the acceptor would; returns duplicates per table."""
    duplicates = {}
    for table, batch in convert(kind, body).items():
        if batch.num_rows == 0:
            continue
        [(_, dups)] = put(client, table, acceptor_id, [(batch, [(entry_id, batch.num_rows)])])
        duplicates[table] = dups
        if sent is not None and not dups:
            sent.add(table, batch)
    return duplicates


# -- reading Parquet back ------------------------------------------------------


def parquet_files(root: pathlib.Path, table: str | None = None) -> list[pathlib.Path]:
    """The data files: with the embedded catalog, those its tables reference now (see
    helpers/iceberg.py); without, every complete Parquet file under the root."""
    if table is not None:
        committed = iceberg.committed_files(root, table)
        if committed is not None:
            return committed
    elif iceberg.catalog_of(root) is not None:
        return sorted(f for t in TABLES for f in iceberg.committed_files(root, t) or [])
    base = root / table if table else root
    return sorted(p for p in base.rglob("*.parquet") if not p.name.startswith("."))


def stray_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Anything under the storage root that is not a complete Parquet file (temp files, leftovers);
    the catalog database and the tables' metadata are not strays."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and (p.name.startswith(".") or p.suffix != ".parquet") and not iceberg.is_catalog_file(root, p)
    )


def read_table(root: pathlib.Path, table: str) -> pa.Table:
    """Every row of ``table`` under a file:// root, read file by file with pyarrow."""
    from signaldb.writer.tables import reference_schema

    files = parquet_files(root, table)
    if not files:
        return reference_schema(table).empty_table()
    return pa.concat_tables([pq.read_table(f) for f in files])


KEYS = {
    "traces": ["trace_id", "span_id"],
    "logs": ["body", "observed_time"],
    "metrics_gauge": ["metric_name", "time", "value"],
    "metrics_sum": ["metric_name", "time", "value"],
    "metrics_histogram": ["metric_name", "time"],
}


def assert_same_rows(got: pa.Table, want: pa.Table, table: str) -> None:
    """Exactly the rows sent: same schema, same multiset of rows (order aside). Rows read from
    an Iceberg table have its column types (microseconds, int64): ``want`` is compared in those."""
    keys = [(k, "ascending") for k in KEYS[table]]
    if any(pa.types.is_timestamp(f.type) and f.type.unit == "us" for f in got.schema):
        want = to_storage(table, want)
    got = got.select(want.schema.names).cast(want.schema)
    assert got.num_rows == want.num_rows, f"{table}: {got.num_rows} rows in Parquet, {want.num_rows} sent"
    assert got.sort_by(keys).equals(want.sort_by(keys)), f"{table}: rows differ"


def duckdb_rows(root: pathlib.Path, table: str, query: str) -> list[tuple]:
    """Runs ``query`` in DuckDB with ``{src}`` standing for the table's Parquet files (hive
    partitioning on: ``date`` and ``hour`` are columns). With a catalog, the files its table
    references (a glob would also see uncommitted files)."""
    committed = iceberg.committed_files(root, table)
    source = (
        repr([str(f) for f in committed]) if committed is not None else repr(str(root / table / "**" / "*.parquet"))
    )
    with duckdb.connect() as con:
        return con.execute(query.format(src=f"read_parquet({source}, hive_partitioning = true)")).fetchall()


# -- a writer process ----------------------------------------------------------


class WriterProcess:
    """``python -m signaldb.writer`` with its own WAL and storage, ports picked by the OS."""

    def __init__(
        self,
        tmp: pathlib.Path,
        storage_url: str | None = None,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.tmp = tmp
        self.storage_url = storage_url or f"file://{tmp / 'data'}"
        # Plain files unless the test names a catalog: these tests pin the file layout.
        self.env = {**os.environ, "SIGNALDB_CATALOG_URL": "none", **(env or {})}
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.flight_port = self.health_port = 0
        self.runs = 0

    @property
    def log_path(self) -> pathlib.Path:
        return self.tmp / f"writer-{self.runs}.log"

    def start(
        self, timeout: float = 60.0, env: dict[str, str] | None = None, until: str = "listening", launch: bool = True
    ) -> WriterProcess:
        """Starts the process and waits for the log line ``until`` (``listening`` gives the ports);
        ``launch=False`` only waits, for a process already started."""
        if launch:
            self.runs += 1
            cmd = [
                sys.executable,
                "-m",
                "signaldb.writer",
                "--wal-dir",
                str(self.tmp / "wal"),
                "--storage-url",
                self.storage_url,
                "--flight-addr",
                "127.0.0.1:0",
                "--health-addr",
                "127.0.0.1:0",
                *self.args,
            ]
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp, env={**self.env, **(env or {})}
                )
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if line.get("msg") == until:
                    if until == "listening":
                        self.flight_port, self.health_port = line["flight_port"], line["health_port"]
                    return self
            if self.proc.poll() is not None:
                raise AssertionError(f"writer exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            time.sleep(0.01)
        raise AssertionError(f"writer did not start in {timeout} s:\n{self.log_path.read_text()}")

    def log_lines(self, run: int | None = None) -> list[dict]:
        path = self.tmp / f"writer-{run or self.runs}.log"
        lines = []
        for raw in path.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"raw": raw})
        return lines

    def health(self) -> dict:
        from helpers.net import http_get

        return json.loads(http_get(self.url("/health"))[1])

    def settled(self, timeout: float = 60.0) -> dict:
        """Waits until nothing is unprocessed in the WAL or held by the sink; returns /health."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.health()
            if body["wal"]["unprocessed_entries"] == 0 and body["writer"]["unprocessed_entries"] == 0:
                return body
            time.sleep(0.05)
        raise AssertionError(f"writer did not settle: {body}")

    def metric(self, name: str) -> float:
        """The sum of every sample of ``name`` (all labels) on /metrics."""
        from helpers.net import http_get

        text = http_get(self.url("/metrics"))[1].decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )

    def client(self) -> flight.FlightClient:
        return flight.connect(f"grpc://127.0.0.1:{self.flight_port}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.health_port}{path}"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
