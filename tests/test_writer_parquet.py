"""How the writer lays out its bytes: rows in a Parquet file
(``signaldb.writer.parquet``: grouped by service by moving whole runs, every
row kept exactly once) and writer WAL payloads (``signaldb.writer.payload``)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.writer import T0, convert, logs_request, metrics_request, traces_request
from signaldb.writer import parquet, payload

SERVICES = st.sampled_from(["api", "checkout", "db", None])


def _batch(runs: list[tuple[str | None, int, int]]) -> pa.RecordBatch:
    """A tiny two-column batch: runs of (service, rows, first time)."""
    services, times = [], []
    for service, rows, first in runs:
        services += [service] * rows
        times += [first + i for i in range(rows)]
    return pa.record_batch(
        {"service_name": pa.array(services, pa.string()), "start_time": pa.array(times, pa.timestamp("ns", "UTC"))}
    )


def _rows(batches: list[pa.RecordBatch] | pa.Table) -> list[tuple]:
    data = batches if isinstance(batches, pa.Table) else pa.Table.from_batches(batches)
    return list(
        zip(
            data.column("service_name").to_pylist(), data.column("start_time").cast(pa.int64()).to_pylist(), strict=True
        )
    )


def _key(row: tuple) -> tuple:
    return (row[0] is None, row[0] or "")


run = st.tuples(SERVICES, st.integers(1, 300), st.integers(0, 10**6))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(run, min_size=1, max_size=6), min_size=1, max_size=6))
def test_rows_are_grouped_by_service_and_none_is_lost(batch_runs: list[list[tuple]]) -> None:
    batches = [_batch(runs) for runs in batch_runs]
    ordered = parquet.order_rows("traces", batches)
    rows = _rows(ordered)
    assert sorted(rows, key=str) == sorted(_rows(batches), key=str)  # same multiset of rows
    keys = [_key(r) for r in rows]
    assert keys == sorted(keys)  # services ascending, nulls last


def test_runs_of_one_service_follow_their_earliest_time() -> None:
    late = _batch([("api", 100, 5_000), ("db", 100, 0)])
    early = _batch([("api", 100, 1_000)])
    rows = _rows(parquet.order_rows("traces", [late, early]))
    api_times = [t for s, t in rows if s == "api"]
    assert api_times == list(range(1_000, 1_100)) + list(range(5_000, 5_100))


def test_fragmented_services_fall_back_to_a_full_sort() -> None:
    # Services alternating every row: runs of one row, so rows are sorted instead.
    batch = _batch([(s, 1, 1_000 - i) for i in range(200) for s in ("b", "a")][:400])
    ordered = parquet.order_rows("traces", [batch])
    rows = _rows(ordered)
    assert rows == sorted(rows, key=lambda r: (_key(r), r[1]))
    # One sorted chunk, not 400 one-row slices (which would give the same order, slowly).
    assert ordered.column("service_name").num_chunks == 1


def test_file_declares_its_service_order() -> None:
    body = traces_request(1, spans=600, start_ns=T0, services=("b", "a", "c"))
    data, rows = parquet.build("traces", [convert("traces", body)["traces"]])
    assert rows == 600
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    [sorting] = meta.row_group(0).sorting_columns
    assert meta.schema.column(sorting.column_index).name == "service_name"
    assert meta.row_group(0).column(0).compression == "ZSTD"


@pytest.mark.parametrize("kind", ["traces", "logs", "metrics"])
def test_wal_payload_round_trips_every_table(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bodies = {"traces": traces_request(3, spans=50), "logs": logs_request(3), "metrics": metrics_request(3)}
    for table, batch in convert(kind, bodies[kind]).items():
        record = payload.WalRecord("acc-1", table, ((7, batch.num_rows),), batch)
        encoded = payload.encode(record)
        assert payload.decode(encoded) == record
        # A short size estimate falls back to a growing buffer with the same bytes.
        monkeypatch.setattr(payload, "_IPC_SLACK", -(len(encoded) // 2))
        assert payload.encode(record) == encoded
        monkeypatch.undo()


def test_wal_payload_with_a_schema_other_than_the_tables_still_round_trips() -> None:
    """The schema's serialized size is remembered per table; a batch whose schema is larger
    (here: long metadata) takes the growing path and loses nothing."""
    batch = convert("traces", traces_request(2, spans=20))["traces"]
    payload.encode(payload.WalRecord("acc-1", "traces", ((1, batch.num_rows),), batch))  # remembered
    wide = batch.replace_schema_metadata({"padding": "x" * 100_000})
    record = payload.WalRecord("acc-1", "traces", ((2, wide.num_rows),), wide)
    decoded = payload.decode(payload.encode(record))
    assert decoded.batch.equals(wide) and decoded.entries == record.entries
