"""What the writer knows about each table: its schema, WAL kind, and time column.

The reference schemas are the ones ``signaldb.otlp`` produces, taken from
converting empty requests, so they can never drift from the Rust conversion.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from signaldb import otlp
from signaldb.flight_protocol import TABLES

__all__ = ["TABLES", "hours_of", "kind_of", "partition_name", "reference_schema", "split_by_hour", "time_column"]

_NS_PER_HOUR = 3_600_000_000_000


def kind_of(table: str) -> str:
    """The WAL kind (traces, logs, metrics) whose requests produce ``table``."""
    for kind, tables in otlp.TABLES.items():
        if table in tables:
            return kind
    raise ValueError(f"unknown table {table!r}")


@functools.cache
def _reference_schemas() -> dict[str, pa.Schema]:
    schemas: dict[str, pa.Schema] = {}
    for kind in otlp.TABLES:
        for name, batch in otlp.convert(kind, b"").tables.items():
            schemas[name] = batch.schema
    return schemas


def reference_schema(table: str) -> pa.Schema:
    return _reference_schemas()[table]


def time_column(table: str) -> str:
    """The column a table's rows are placed in time by (partitions, sort order)."""
    return "start_time" if table == "traces" else "time"


def _row_times_ns(table: str, batch: pa.RecordBatch) -> pa.Array:
    """Nanoseconds since the epoch that place each row in an hour partition.

    OTLP times are unsigned and the conversion refuses any past 2262, so they
    are never negative: integer division is the floor."""
    times = batch.column(time_column(table)).cast(pa.int64())
    if table == "logs":
        # A log record may leave `time` unset (0); its observed time is the next best clock.
        observed = batch.column("observed_time").cast(pa.int64())
        times = pc.if_else(pc.equal(times, 0), observed, times)
    return times


def partition_name(hour: int) -> str:
    """``date=YYYY-MM-DD/hour=HH`` for an hour number (hours since the epoch)."""
    start = datetime.fromtimestamp(hour * 3600, UTC)
    return f"date={start:%Y-%m-%d}/hour={start:%H}"


def hours_of(table: str, batch: pa.RecordBatch) -> pa.Array:
    """Each row's hour partition, as hours since the epoch."""
    return pc.divide(_row_times_ns(table, batch), _NS_PER_HOUR)


def split_by_hour(table: str, batch: pa.RecordBatch) -> dict[str, pa.RecordBatch]:
    """The batch's rows grouped by hour partition, each group in its original order."""
    if batch.num_rows == 0:
        return {}
    hours = hours_of(table, batch)
    distinct = pc.unique(hours).to_pylist()
    if len(distinct) == 1:  # the usual case: one request, one hour
        return {partition_name(distinct[0]): batch}
    return {partition_name(h): batch.filter(pc.equal(hours, h)) for h in sorted(distinct)}
