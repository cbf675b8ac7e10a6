"""The writer in-process: a real Flight client against the real server, real WAL,
real Parquet on a local directory, read back with pyarrow and DuckDB."""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from helpers.tls import self_signed
from helpers.writer import (
    HOUR_NS,
    T0,
    Sent,
    assert_same_rows,
    convert,
    duckdb_rows,
    logs_request,
    metrics_request,
    parquet_files,
    put,
    put_request,
    read_table,
    stray_files,
    traces_request,
)
from signaldb import config
from signaldb.flight_protocol import StreamHeader, decode_ack, encode_batch_metadata
from signaldb.writer.service import WriterService


class InProcessWriter:
    """A WriterService on its own event loop thread, as a test fixture. Plain files by default
    (these tests pin the file layout); ``--catalog-url`` in ``flags`` overrides it."""

    def __init__(self, tmp: pathlib.Path, *flags: str) -> None:
        parser = argparse.ArgumentParser()
        config.add_flags(parser, "writer")
        args = parser.parse_args(
            [
                "--catalog-url",
                "none",
                "--wal-dir",
                str(tmp / "wal"),
                "--storage-url",
                f"file://{tmp / 'data'}",
                "--flight-addr",
                "127.0.0.1:0",
                "--health-addr",
                "127.0.0.1:0",
                *flags,
            ]
        )
        self.root = tmp / "data"
        self.service = WriterService(config.load(args, "writer", environ={}))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(60)
        self.client = flight.connect(f"grpc://127.0.0.1:{self.service.flight_port}")

    def stop(self) -> int:
        """Stops the service; returns the entries it left unprocessed in its WAL."""
        self.client.close()
        left = asyncio.run_coroutine_threadsafe(self.service.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        return left

    def settled(self, timeout: float = 20.0) -> None:
        """Waits until every acked row is in Parquet and marked processed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sink = self.service.sink
            assert sink is not None and self.service.wal is not None
            if sink.stats()["unprocessed_entries"] == 0 and self.service.wal.stats()["unprocessed_entries"] == 0:
                return
            time.sleep(0.02)
        raise AssertionError(f"writer did not settle: {self.service.sink.stats()}")

    def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.service.health_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()


@pytest.fixture
def writer(tmp_path: pathlib.Path) -> Iterator[InProcessWriter]:
    w = InProcessWriter(tmp_path, "--file-max-age-secs", "0.1")
    yield w
    w.stop()


def test_every_table_round_trips_to_parquet(writer: InProcessWriter) -> None:
    sent = Sent()
    entry = 0
    for seed in range(4):
        for kind, body in (
            ("traces", traces_request(seed)),
            ("logs", logs_request(seed)),
            ("metrics", metrics_request(seed)),
        ):
            entry += 1
            assert put_request(writer.client, kind, body, entry, sent=sent) != {}
    writer.settled()
    for table in ("traces", "logs", "metrics_gauge", "metrics_sum", "metrics_histogram"):
        assert_same_rows(read_table(writer.root, table), sent.table(table), table)
    # DuckDB reads the same rows, with the hive partition columns (hour keeps its two digits).
    rows = duckdb_rows(
        writer.root, "traces", "SELECT count(*), count(DISTINCT span_id), min(date)::VARCHAR, min(hour) FROM {src}"
    )
    assert rows == [(20, 20, "2026-11-24", "01")]
    assert duckdb_rows(writer.root, "metrics_histogram", "SELECT sum(count), sum(bucket_counts[2]) FROM {src}") == [
        (36, 24)
    ]
    # Row by row through DuckDB too.
    want = sent.table("traces")
    expected = sorted(
        zip(
            want.column("trace_id").to_pylist(),
            want.column("span_id").to_pylist(),
            want.column("name").to_pylist(),
            want.column("service_name").to_pylist(),
            want.column("start_time").cast(pa.int64()).to_pylist(),
            want.column("duration_ns").to_pylist(),
            strict=True,
        )
    )
    assert (
        duckdb_rows(
            writer.root,
            "traces",
            "SELECT trace_id, span_id, name, service_name, epoch_ns(start_time), duration_ns FROM {src} ORDER BY ALL",
        )
        == expected
    )
    want = sent.table("metrics_gauge")
    expected = sorted(
        zip(
            want.column("metric_name").to_pylist(),
            want.column("time").cast(pa.int64()).to_pylist(),
            want.column("value").to_pylist(),
            strict=True,
        )
    )
    assert (
        duckdb_rows(writer.root, "metrics_gauge", "SELECT metric_name, epoch_ns(time), value FROM {src} ORDER BY ALL")
        == expected
    )
    # A log without `time` is placed by its observed_time; none of them is lost.
    assert duckdb_rows(
        writer.root, "logs", "SELECT count(*), count(*) FILTER (WHERE epoch_ns(time) = 0) FROM {src}"
    ) == [(16, 8)]
    assert stray_files(writer.root) == []


def test_rows_are_grouped_by_service_in_time_order(writer: InProcessWriter) -> None:
    put_request(writer.client, "traces", traces_request(1, spans=12, services=("b", "a", "c")), 1)
    writer.settled()
    [path] = parquet_files(writer.root, "traces")
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    keys = list(zip(table.column("service_name").to_pylist(), table.column("start_time").to_pylist(), strict=True))
    assert keys == sorted(keys)
    meta = pq.ParquetFile(path).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    columns = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i) for i in range(meta.num_columns)}
    assert columns["service_name"].statistics is not None
    assert columns["start_time"].statistics is not None
    assert columns["trace_id"].statistics is None  # random ids: min/max would prune nothing


def test_an_entry_spanning_two_hours_lands_in_both_partitions(writer: InProcessWriter) -> None:
    sent = Sent()
    body = traces_request(7, spans=6, start_ns=T0 + HOUR_NS - 3 * 1_000_000, services=("one",))
    put_request(writer.client, "traces", body, 1, sent=sent)
    writer.settled()
    files = parquet_files(writer.root, "traces")
    assert [f.parent.relative_to(writer.root).as_posix() for f in files] == [
        "traces/date=2026-11-24/hour=01",
        "traces/date=2026-11-24/hour=02",
    ]
    by_hour = duckdb_rows(writer.root, "traces", "SELECT hour::INTEGER, count(*) FROM {src} GROUP BY ALL ORDER BY ALL")
    assert by_hour == [(1, 3), (2, 3)]
    assert_same_rows(read_table(writer.root, "traces"), sent.table("traces"), "traces")


def test_duplicates_are_acked_and_not_written_again(writer: InProcessWriter) -> None:
    batches = [convert("traces", traces_request(seed, spans=3))["traces"] for seed in range(3)]
    sent = Sent()
    # Entries 1 and 2 in one batch.
    acks = put(writer.client, "traces", "acc-1", [(pa.concat_batches(batches[:2]), [(1, 3), (2, 3)])])
    assert acks == [([1, 2], [])]
    sent.add("traces", batches[0])
    sent.add("traces", batches[1])
    # Entry 2 again (still in the WAL) mixed with new entry 3: only entry 3's rows are kept.
    acks = put(writer.client, "traces", "acc-1", [(pa.concat_batches(batches[1:]), [(2, 3), (3, 3)])])
    assert acks == [([2, 3], [2])]
    sent.add("traces", batches[2])
    writer.settled()
    files = parquet_files(writer.root)
    # Once in Parquet, every entry is still a duplicate (the done set), and nothing new is written.
    acks = put(writer.client, "traces", "acc-1", [(pa.concat_batches(batches), [(1, 3), (2, 3), (3, 3)])])
    assert acks == [([1, 2, 3], [1, 2, 3])]
    # The same ids from another acceptor, or for another table, are new.
    assert put(writer.client, "traces", "acc-2", [(batches[0], [(1, 3)])]) == [([1], [])]
    sent.add("traces", batches[0])
    writer.settled()
    assert set(files) < set(parquet_files(writer.root))
    assert_same_rows(read_table(writer.root, "traces"), sent.table("traces"), "traces")
    state = json.loads((writer.root.parent / "wal" / "writer-state.json").read_text())
    assert state["done"] == {"acc-1": {"traces": [[1, 3]]}, "acc-2": {"traces": [[1, 1]]}}
    assert state["files"] == {}


def _refused(
    writer: InProcessWriter, descriptor: flight.FlightDescriptor, batch: pa.RecordBatch, metadata: bytes | None
) -> str:
    w, r = writer.client.do_put(descriptor, batch.schema)
    with pytest.raises(pa.ArrowInvalid) as info:
        if metadata is None:
            w.write_batch(batch)
        else:
            w.write_with_metadata(batch, metadata)
        r.read()
        w.done_writing()
        w.close()
    return str(info.value)


def test_invalid_batches_are_refused_and_the_server_keeps_serving(writer: InProcessWriter) -> None:
    traces = convert("traces", traces_request(1, spans=4))["traces"]
    logs = convert("logs", logs_request(1))["logs"]
    good = StreamHeader("traces", "acc-1").descriptor()
    cases = {
        "rows do not add up": (good, traces, encode_batch_metadata([(1, 3)]), "entries account for 3 rows"),
        "no metadata": (good, traces, None, "without app_metadata"),
        "metadata not JSON": (good, traces, b"{nope", "not JSON"),
        "wrong schema": (
            StreamHeader("logs", "acc-1").descriptor(),
            traces,
            encode_batch_metadata([(1, 4)]),
            "schema does not match table 'logs'",
        ),
        "unknown table": (
            flight.FlightDescriptor.for_command(b'{"v":1,"table":"spans","acceptor_id":"a"}'),
            traces,
            encode_batch_metadata([(1, 4)]),
            "unknown table 'spans'",
        ),
        "path descriptor": (
            flight.FlightDescriptor.for_path("traces"),
            traces,
            encode_batch_metadata([(1, 4)]),
            "must be a command",
        ),
        "repeated id": (good, traces, encode_batch_metadata([(1, 2), (1, 2)]), "appears twice"),
    }
    for name, (descriptor, batch, metadata, message) in cases.items():
        assert message in _refused(writer, descriptor, batch, metadata), name
    # A retyped column is a schema mismatch too.
    retyped = logs.set_column(
        logs.schema.get_field_index("severity_number"),
        "severity_number",
        logs.column("severity_number").cast(pa.int64()),
    )
    assert "severity_number" in _refused(
        writer, StreamHeader("logs", "acc-1").descriptor(), retyped, encode_batch_metadata([(1, logs.num_rows)])
    )
    # Nothing of the refused batches was kept; entry 1 is still new.
    assert put(writer.client, "traces", "acc-1", [(traces, [(1, 4)])]) == [([1], [])]
    writer.settled()
    assert read_table(writer.root, "traces").num_rows == 4
    _, body = writer.get("/metrics")
    # Refusals are counted by reason (protocol, schema, acceptor_mismatch, null, utf8, ...): 8 in all.
    import re

    assert (
        sum(
            float(v)
            for v in re.findall(rb'^signaldb_writer_refused_batches_total\{reason="[^"]+"\} (\S+)$', body, re.M)
        )
        == 8.0
    )


def test_a_refused_batch_keeps_earlier_acks_of_its_stream(writer: InProcessWriter) -> None:
    traces = convert("traces", traces_request(1, spans=4))["traces"]
    w, r = writer.client.do_put(StreamHeader("traces", "acc-1").descriptor(), traces.schema)
    w.write_with_metadata(traces, encode_batch_metadata([(1, 4)]))
    assert r.read() is not None
    with pytest.raises(pa.ArrowInvalid):
        w.write_with_metadata(traces, encode_batch_metadata([(2, 1)]))
        r.read()
        w.close()
    writer.settled()
    assert read_table(writer.root, "traces").num_rows == 4


def test_concurrent_streams_share_the_wal(writer: InProcessWriter) -> None:
    sent = Sent()
    lock = threading.Lock()

    def sender(worker: int) -> None:
        client = flight.connect(f"grpc://127.0.0.1:{writer.service.flight_port}")
        for i in range(10):
            local = Sent()
            put_request(client, "traces", traces_request(worker * 100 + i, spans=2), worker * 100 + i, sent=local)
            with lock:
                for b in local.batches["traces"]:
                    sent.add("traces", b)
        client.close()

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    writer.settled()
    assert_same_rows(read_table(writer.root, "traces"), sent.table("traces"), "traces")


def test_backlog_limit_refuses_with_unavailable(tmp_path: pathlib.Path) -> None:
    w = InProcessWriter(tmp_path, "--file-max-age-secs", "3600", "--max-backlog-bytes", "1")
    try:
        batch = convert("traces", traces_request(1))["traces"]
        assert put(w.client, "traces", "acc-1", [(batch, [(1, batch.num_rows)])]) == [([1], [])]
        with pytest.raises(flight.FlightUnavailableError):
            put(w.client, "traces", "acc-1", [(batch, [(2, batch.num_rows)])])
        status, body = w.get("/readyz")
        assert status == 503 and b"backlog" in body
    finally:
        assert w.stop() == 0  # SIGTERM-style stop writes the open file out: nothing left
    assert read_table(tmp_path / "data", "traces").num_rows == batch.num_rows


def test_bearer_token_is_required_when_configured(tmp_path: pathlib.Path) -> None:
    w = InProcessWriter(tmp_path, "--file-max-age-secs", "0.1", "--auth-token", "s3cret")
    try:
        batch = convert("logs", logs_request(1))["logs"]
        with pytest.raises(flight.FlightUnauthenticatedError):
            put(w.client, "logs", "acc-1", [(batch, [(1, batch.num_rows)])])
        with pytest.raises(flight.FlightUnauthenticatedError):
            put(w.client, "logs", "acc-1", [(batch, [(1, batch.num_rows)])], token="wrong")
        assert put(w.client, "logs", "acc-1", [(batch, [(1, batch.num_rows)])], token="s3cret") == [([1], [])]
        w.settled()
    finally:
        w.stop()
    assert read_table(tmp_path / "data", "logs").num_rows == batch.num_rows


def test_flight_serves_tls_when_a_certificate_is_configured(tmp_path: pathlib.Path) -> None:
    cert, key = self_signed(tmp_path)
    w = InProcessWriter(tmp_path, "--file-max-age-secs", "0.1", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        batch = convert("logs", logs_request(1))["logs"]
        client = flight.connect(f"grpc+tls://127.0.0.1:{w.service.flight_port}", tls_root_certs=cert.read_bytes())
        assert put(client, "logs", "acc-1", [(batch, [(1, batch.num_rows)])]) == [([1], [])]
        client.close()
        # A plaintext client gets nowhere.
        with pytest.raises(flight.FlightError):
            put(w.client, "logs", "acc-1", [(batch, [(2, batch.num_rows)])])
        w.settled()
    finally:
        w.stop()
    assert read_table(tmp_path / "data", "logs").num_rows == batch.num_rows


def test_min_unprocessed_bounds_the_dedupe_index(writer: InProcessWriter) -> None:
    """An acceptor that reports the smallest id it has not marked processed lets the
    writer forget the done ids below it (optional batch metadata ``min_unprocessed``)."""
    batches = {e: convert("traces", traces_request(e, spans=2))["traces"] for e in range(1, 9)}
    for e in range(1, 6):
        put(writer.client, "traces", "acc-1", [(batches[e], [(e, 2)])])
    writer.settled()

    def put_with_floor(entry: int, floor: object) -> list[tuple[list[int], list[int]]]:
        w, r = writer.client.do_put(StreamHeader("traces", "acc-1").descriptor(), batches[entry].schema)
        try:
            w.write_with_metadata(
                batches[entry], json.dumps({"entries": [[entry, 2]], "min_unprocessed": floor}).encode()
            )
            return [decode_ack(r.read().to_pybytes())]
        finally:
            w.close()

    assert put_with_floor(7, 6) == [([7], [])]
    writer.settled()
    state = json.loads((writer.root.parent / "wal" / "writer-state.json").read_text())
    assert state["done"] == {"acc-1": {"traces": [[7, 7]]}} and state["floors"] == {"acc-1": 6}
    assert put(writer.client, "traces", "acc-1", [(batches[3], [(3, 2)])]) == [([3], [3])]
    assert put(writer.client, "traces", "acc-1", [(batches[6], [(6, 2)])]) == [([6], [])]
    with pytest.raises(pa.ArrowInvalid, match="min_unprocessed"):
        put_with_floor(8, "soon")
    writer.settled()
    assert read_table(writer.root, "traces").num_rows == 14
