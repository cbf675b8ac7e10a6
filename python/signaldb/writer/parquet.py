"""One Parquet file's bytes from record batches of one table and hour.

Rows are grouped by ``service_name`` (queries filter on it; row-group and page
statistics then prune well). The grouping moves whole runs of rows, not single
rows: an OTLP request usually holds one service's rows, so each batch is a few
runs, and the file is those runs as zero-copy slices, ordered by service and
then by each run's earliest time. Rows inside a run keep their arrival order.
A fully fragmented input (services alternating every few rows) falls back to a
row sort by service then time. Reordering every row (``sort_by``) would copy
every column, maps included: about a third of the writer's CPU per span.

zstd level 1, statistics (flat columns but ids) and the page index on (FIELD-NOTES:
level 1–3). The file is built in memory: S3 gets one PUT, a local file is
written in one go.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from signaldb.writer import tables

ROW_GROUP_ROWS = 512 * 1024
COMPRESSION_LEVEL = 1
# Below this many rows per run on average, slicing costs more than sorting rows.
MIN_AVERAGE_RUN_ROWS = 64


# Ids are random and (nearly) unique per row: a dictionary only costs time and then
# falls back to plain, and their min/max span the whole id space, so prune nothing.
_ID_COLUMNS = {"trace_id", "span_id", "parent_span_id"}


def _options(schema: pa.Schema) -> dict[str, object]:
    """Dictionary-encode all but the id columns; statistics (min/max for pruning) on the
    flat columns but the ids: min/max of a map or list column prunes nothing either,
    and each costs a pass over the values."""
    return {
        "use_dictionary": [name for name in schema.names if name not in _ID_COLUMNS],
        "write_statistics": [f.name for f in schema if not pa.types.is_nested(f.type) and f.name not in _ID_COLUMNS],
    }


def _runs(encoded: pa.RunEndEncodedArray) -> list[tuple[int, int, str | None]]:
    """(start, length, service) of each run in a run-end encoded ``service_name``."""
    runs, start = [], 0
    for end, service in zip(encoded.run_ends.to_pylist(), encoded.values.to_pylist(), strict=True):
        runs.append((start, end - start, service))
        start = end
    return runs


def _service_key(service: str | None) -> tuple[bool, str]:
    return (service is None, service or "")  # nulls last, as sort_by places them


def order_rows(table: str, batches: Sequence[pa.RecordBatch]) -> pa.Table:
    """The rows of ``batches`` grouped by service (see the module docstring)."""
    time_column = tables.time_column(table)
    encoded = [pc.run_end_encode(b.column("service_name")) for b in batches]
    runs = sum(len(e.run_ends) for e in encoded)
    if runs and sum(b.num_rows for b in batches) / runs < MIN_AVERAGE_RUN_ROWS:
        data = pa.Table.from_batches(list(batches))  # fragmented: decided before slicing anything
        return data.sort_by([("service_name", "ascending"), (time_column, "ascending")])
    pieces = []
    for seq, (batch, services) in enumerate(zip(batches, encoded, strict=True)):
        for start, length, service in _runs(services):
            piece = batch.slice(start, length)
            earliest = pc.min(piece.column(time_column)).value
            pieces.append((_service_key(service), earliest is None, earliest or 0, seq, start, piece))
    pieces.sort(key=lambda p: p[:5])
    return pa.Table.from_batches([p[5] for p in pieces], schema=batches[0].schema)


# A bloom filter on trace_id lets a trace lookup skip files whose min/max say nothing
# (ids are random): over 40 files, 30 ms instead of 75-81 ms (issue 16). ~1.2 bytes per row.
BLOOM_FPP = 0.01


def _bloom(data: pa.Table) -> dict[str, object]:
    if "trace_id" not in data.schema.names or data.num_rows == 0:
        return {}
    return {"bloom_filter_options": {"trace_id": {"ndv": max(data.num_rows, 64), "fpp": BLOOM_FPP}}}


def build(table: str, batches: Sequence[pa.RecordBatch], storage_types: bool = False) -> tuple[bytes, int]:
    """Returns (file bytes, rows). ``storage_types``: the Iceberg table's column types
    (``catalog.to_storage``: microsecond timestamps, int64 for unsigned columns)."""
    data = order_rows(table, batches)
    if storage_types:
        from signaldb.writer.catalog import to_storage

        data = to_storage(table, data)
    sink = pa.BufferOutputStream()
    pq.write_table(
        data,
        sink,
        compression="zstd",
        compression_level=COMPRESSION_LEVEL,
        write_page_index=True,
        row_group_size=ROW_GROUP_ROWS,
        sorting_columns=pq.SortingColumn.from_ordering(data.schema, [("service_name", "ascending")], "at_end"),
        **_options(data.schema),
        **_bloom(data),
    )
    return sink.getvalue().to_pybytes(), data.num_rows
