"""Issue 15: the writer's Flight trust boundary and the state files, against real processes.

Every probe of the issue is here: a hostile Flight client (invalid UTF-8, a null in a
non-nullable column, a descriptor naming acceptor A with batches naming acceptor B, a
200 MiB batch), SIGTERM with idle do_put streams, an unauthenticated Flight port beyond
loopback, and damaged state files (garbage, truncated, unknown version, a directory).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest

from helpers.acceptor_proc import AcceptorProcess
from helpers.pipeline import Pipeline
from helpers.writer import WriterProcess, convert, duckdb_rows, parquet_files, put, read_table, traces_request
from signaldb.flight_protocol import StreamHeader, decode_ack, encode_batch_metadata
from signaldb.writer.tables import reference_schema

START_SECS = 30


@pytest.fixture
def wproc(tmp_path):
    w = WriterProcess(tmp_path, env={"WRITER_FILE_MAX_AGE_SECS": "0.2", "WRITER_MAX_BATCH_BYTES": str(16 << 20)})
    w.start()
    yield w
    w.close()


def refused(w: WriterProcess) -> dict[str, float]:
    with urllib.request.urlopen(w.url("/metrics"), timeout=10) as resp:
        text = resp.read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^signaldb_writer_refused_batches_total\{reason="([^"]+)"\} (\S+)$', text, re.M)
    }


def traces_batch(seed: int = 1, spans: int = 5) -> pa.RecordBatch:
    return convert("traces", traces_request(seed, spans=spans))["traces"]


def with_column(batch: pa.RecordBatch, name: str, array: pa.Array) -> pa.RecordBatch:
    i = batch.schema.get_field_index(name)
    return pa.RecordBatch.from_arrays(
        [array if j == i else c for j, c in enumerate(batch.columns)], schema=batch.schema
    )


def bad_utf8(column: pa.Array) -> pa.Array:
    """The same strings with the first byte of the first value replaced by 0xff."""
    validity, offsets, data = column.buffers()
    raw = bytearray(data.to_pybytes())
    first = int.from_bytes(offsets.to_pybytes()[4 * column.offset : 4 * column.offset + 4], "little")
    raw[first] = 0xFF
    return pa.Array.from_buffers(
        pa.string(), len(column), [validity, offsets, pa.py_buffer(bytes(raw))], offset=column.offset
    )


def with_null(column: pa.Array, row: int = 0) -> pa.Array:
    mask = pa.array([i != row for i in range(len(column))])
    _, offsets, data = column.buffers()
    return pa.Array.from_buffers(column.type, len(column), [mask.buffers()[1], offsets, data], offset=column.offset)


def assert_refused(
    w: WriterProcess, batch: pa.RecordBatch, reason: str, acceptor: str = "acc-1", metadata_acceptor: str | None = None
) -> str:
    before = refused(w).get(reason, 0)
    client = w.client()
    try:
        with pytest.raises(pa.ArrowInvalid) as err:  # Flight INVALID_ARGUMENT on the client
            writer, reader = client.do_put(StreamHeader("traces", acceptor).descriptor(), batch.schema)
            try:
                writer.write_with_metadata(batch, encode_batch_metadata([(1, batch.num_rows)], metadata_acceptor))
                writer.done_writing()
                reader.read()
            finally:
                writer.close()
    finally:
        client.close()
    assert refused(w).get(reason, 0) == before + 1, (reason, refused(w))
    return str(err.value)


def assert_good_data_flows(w: WriterProcess, entry: int = 100) -> None:
    """A valid batch after the refusals is stored and readable by pyarrow and DuckDB."""
    batch = traces_batch(seed=entry)
    client = w.client()
    try:
        [(ids, dups)] = put(client, "traces", "acc-1", [(batch, [(entry, batch.num_rows)])])
    finally:
        client.close()
    assert ids == [entry] and dups == []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not parquet_files(w.tmp / "data", "traces"):
        time.sleep(0.05)
    table = read_table(w.tmp / "data", "traces")
    assert table.num_rows == batch.num_rows
    assert duckdb_rows(w.tmp / "data", "traces", "SELECT count(*) FROM {src}") == [(batch.num_rows,)]


# --- what do_put refuses ---------------------------------------------------------------------


@pytest.mark.parametrize("column", ["service_name", "name"])
def test_invalid_utf8_is_refused_and_never_reaches_parquet(wproc, column):
    batch = traces_batch()
    message = assert_refused(wproc, with_column(batch, column, bad_utf8(batch.column(column))), "utf8")
    assert "UTF8" in message or "utf8" in message.lower()
    assert not parquet_files(wproc.tmp / "data")
    assert_good_data_flows(wproc)


def test_null_in_non_nullable_trace_id_is_refused_and_later_data_flows(wproc):
    batch = traces_batch()
    message = assert_refused(wproc, with_column(batch, "trace_id", with_null(batch.column("trace_id"))), "null")
    assert "trace_id" in message
    assert_good_data_flows(wproc)
    # Nothing held back: the writer's WAL is drained once the good batch is written.
    deadline = time.monotonic() + 20
    while json.load(urllib.request.urlopen(wproc.url("/health"), timeout=10))["wal"]["unprocessed_entries"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_null_in_a_nested_non_nullable_field_is_refused(wproc):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    from helpers.writer import T0

    spans = [
        Span(
            trace_id=bytes([1] * 16),
            span_id=bytes([2] * 7 + [i + 1]),
            name=f"op-{i}",
            start_time_unix_nano=T0,
            end_time_unix_nano=T0 + 1000,
            events=[Span.Event(time_unix_nano=T0 + 10, name=f"ev-{i}")],
        )
        for i in range(3)
    ]
    body = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])])
    batch = convert("traces", body.SerializeToString())["traces"]
    events = batch.column("events")
    struct = events.values
    struct = pa.StructArray.from_arrays(
        [with_null(struct.field(f.name)) if f.name == "name" else struct.field(f.name) for f in struct.type],
        fields=list(struct.type),
    )
    bad = pa.ListArray.from_arrays(events.offsets, struct, type=events.type)
    assert "events.item.name" in assert_refused(wproc, with_column(batch, "events", bad), "null")
    # The same null under a slice that leaves it out is fine: only stored rows count.
    ok = with_column(batch, "events", bad).slice(1)
    client = wproc.client()
    try:
        [(ids, _)] = put(client, "traces", "acc-1", [(ok, [(5, ok.num_rows)])])
    finally:
        client.close()
    assert ids == [5]


def test_schema_differences_inside_nested_types_are_refused(wproc):
    batch = traces_batch()
    want = reference_schema("traces")
    i = want.get_field_index("span_attributes")
    loose = pa.map_(pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string(), nullable=False))
    schema = want.set(i, pa.field("span_attributes", loose, nullable=False))
    assert not schema.equals(want)
    column = batch.column(i)
    mapped = pa.MapArray.from_arrays(column.offsets, column.keys, pa.array(["x"] * len(column.items)), type=loose)
    odd = pa.RecordBatch.from_arrays([mapped if j == i else c for j, c in enumerate(batch.columns)], schema=schema)
    assert "span_attributes" in assert_refused(wproc, odd, "schema")


def test_batches_naming_another_acceptor_than_the_descriptor_are_refused(wproc):
    message = assert_refused(
        wproc, traces_batch(), "acceptor_mismatch", acceptor="acceptor-A", metadata_acceptor="acceptor-B"
    )
    assert "acceptor-B" in message and "acceptor-A" in message
    assert not parquet_files(wproc.tmp / "data")


def _vm_hwm_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", text, re.M).group(1))


def test_a_200_mib_batch_is_refused_over_max_batch_bytes(wproc):
    """writer.max_batch_bytes is 16 MiB here: the batch is refused after it arrived, so the peak
    is about the batch itself (it was +1 GiB, stored, before the limit)."""
    before = _vm_hwm_kib(wproc.proc.pid)
    rows = 200
    big = pa.array(["x" * (1 << 20)] * rows)  # 200 MiB of span names
    batch = traces_batch(spans=rows)
    batch = with_column(batch, "name", big)
    message = assert_refused(wproc, batch, "too_large")
    assert "writer.max_batch_bytes" in message
    rise_mib = (_vm_hwm_kib(wproc.proc.pid) - before) / 1024
    assert rise_mib < 700, f"writer peak memory rose by {rise_mib:.0f} MiB for a refused 200 MiB batch"
    assert not (wproc.tmp / "data").exists() or not parquet_files(wproc.tmp / "data")
    assert_good_data_flows(wproc)


def test_a_refusal_reaches_the_real_acceptor_which_dead_letters_only_that_entry(tmp_path):
    """The acceptor treats INVALID_ARGUMENT as a refusal: it splits the round and dead-letters
    the refused entry, the others reach Parquet. Here the refused one is over max_batch_bytes."""
    from test_acceptor_bad_input import post

    pipe = Pipeline(tmp_path, env={"WRITER_MAX_BATCH_BYTES": str(1 << 20)})
    pipe.start()
    try:
        small = traces_request(1, spans=3)
        big = traces_request(2, spans=3000, services=("x" * 200,))
        for body in (small, big, traces_request(3, spans=3)):
            status, _, _ = post(pipe.acceptor, "/v1/traces", body)
            assert status == 200
        deadline = time.monotonic() + 30
        dead = tmp_path / "wal" / "dead-letter"
        while time.monotonic() < deadline and not (pipe.drained() and dead.is_dir() and any(dead.iterdir())):
            time.sleep(0.1)
        assert pipe.drained()
        assert any(dead.iterdir()), "the refused entry is dead-lettered on the acceptor"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if pipe.table("traces").num_rows == 6:
                    break
            except (FileNotFoundError, pa.ArrowInvalid, ValueError):
                pass
            time.sleep(0.1)
        assert pipe.table("traces").num_rows == 6
        assert "too_large" in pipe.writer.metrics()
    finally:
        pipe.stop()


# --- authentication beyond loopback ----------------------------------------------------------


def _run(module: str, env: dict[str, str], tmp: Path, timeout: float = START_SECS) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module], env={**os.environ, **env}, cwd=tmp, capture_output=True, timeout=timeout
    )


def test_writer_refuses_a_non_loopback_flight_port_without_a_token(tmp_path):
    env = {
        "WRITER_WAL_DIR": str(tmp_path / "wal"),
        "WRITER_FLIGHT_ADDR": "0.0.0.0:0",
        "WRITER_HEALTH_ADDR": "127.0.0.1:0",
        "SIGNALDB_STORAGE_URL": f"file://{tmp_path / 'data'}",
    }
    env.pop("SIGNALDB_AUTH_TOKEN", None)
    result = _run("signaldb.writer.main", {**env, "SIGNALDB_AUTH_TOKEN": ""}, tmp_path)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "writer.flight_addr" in err and "security.auth_token" in err, err
    assert not (tmp_path / "wal").exists()  # refused before anything is opened
    # With a token it starts.
    w = WriterProcess(tmp_path, args=["--flight-addr", "0.0.0.0:0"], env={"SIGNALDB_AUTH_TOKEN": "t0ken"})
    try:
        w.start()
        assert w.stop() == 0
    finally:
        w.close()


def test_acceptor_refuses_a_non_loopback_writer_endpoint_without_a_token(tmp_path):
    env = {
        "ACCEPTOR_WAL_DIR": str(tmp_path / "wal"),
        "ACCEPTOR_WRITER_ENDPOINTS": "grpc://10.1.2.3:50061",
        "ACCEPTOR_GRPC_ADDR": "127.0.0.1:0",
        "ACCEPTOR_HTTP_ADDR": "127.0.0.1:0",
        "ACCEPTOR_HEALTH_ADDR": "127.0.0.1:0",
        "SIGNALDB_AUTH_TOKEN": "",
    }
    result = _run("signaldb.acceptor.main", env, tmp_path)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "acceptor.writer_endpoints" in err and "10.1.2.3" in err, err


def test_loopback_is_recognised():
    from signaldb.config import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "writer-0.writer", "192.168.1.1"]))


# --- graceful stop with idle streams ---------------------------------------------------------


def test_sigterm_with_idle_do_put_streams_stops_within_shutdown_timeout(tmp_path):
    w = WriterProcess(tmp_path, env={"WRITER_SHUTDOWN_TIMEOUT_SECS": "3", "WRITER_FILE_MAX_AGE_SECS": "30"})
    w.start()
    clients, streams = [], []
    try:
        # Rows buffered (not yet in a file): the stop must still write them out.
        batch = traces_batch()
        client = w.client()
        clients.append(client)
        put(client, "traces", "acc-1", [(batch, [(1, batch.num_rows)])])
        for i in range(5):  # idle streams: opened, nothing sent
            c = w.client()
            clients.append(c)
            streams.append(c.do_put(StreamHeader("traces", f"acc-{i}").descriptor(), batch.schema))
        # One stream that sent a batch and then went idle.
        c = w.client()
        clients.append(c)
        writer, reader = c.do_put(StreamHeader("traces", "acc-x").descriptor(), batch.schema)
        writer.write_with_metadata(batch, encode_batch_metadata([(7, batch.num_rows)]))
        decode_ack(reader.read().to_pybytes())
        streams.append((writer, reader))
        started = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(15) == 0
        took = time.monotonic() - started
        assert took < 3 + 2, f"stop took {took:.1f}s"
        lines = w.log_lines()
        assert any(line.get("msg") == "stopped" and line.get("clean") for line in lines), lines[-5:]
        assert read_table(tmp_path / "data", "traces").num_rows == 2 * batch.num_rows
    finally:
        for c in clients:
            c.close()
        w.close()


# --- state files ------------------------------------------------------------------------------


def _write_some(w: WriterProcess) -> None:
    batch = traces_batch()
    client = w.client()
    try:
        put(client, "traces", "acc-1", [(batch, [(1, batch.num_rows)])])
    finally:
        client.close()


def _start_fails(w: WriterProcess, needle: str) -> None:
    w.runs += 1
    cmd = [
        sys.executable,
        "-m",
        "signaldb.writer",
        "--wal-dir",
        str(w.tmp / "wal"),
        "--storage-url",
        w.storage_url,
        "--flight-addr",
        "127.0.0.1:0",
        "--health-addr",
        "127.0.0.1:0",
    ]
    result = subprocess.run(cmd, cwd=w.tmp, env=w.env, capture_output=True, timeout=START_SECS)
    out = (result.stdout + result.stderr).decode()
    assert result.returncode == 1, out
    assert "Traceback" not in out, out
    errors = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"error"' in line]
    assert len(errors) == 1 and needle in errors[0]["error"], out


@pytest.mark.parametrize("damage", ["garbage", "truncated", "unknown_version", "directory", "wrong_shape"])
def test_damaged_writer_state_json_is_one_clear_line_then_the_documented_fix_works(tmp_path, damage):
    w = WriterProcess(tmp_path, env={"WRITER_FILE_MAX_AGE_SECS": "0.1"})
    w.start()
    _write_some(w)
    deadline = time.monotonic() + 20
    state = tmp_path / "wal" / "writer-state.json"
    while time.monotonic() < deadline and not (state.exists() and parquet_files(tmp_path / "data")):
        time.sleep(0.05)
    assert w.stop() == 0
    good = state.read_bytes()
    if damage == "garbage":
        state.write_bytes(b"\xff\xfe\x00garbage" * 10)
    elif damage == "truncated":
        state.write_bytes(good[: len(good) // 2])
    elif damage == "unknown_version":
        state.write_bytes(json.dumps({**json.loads(good), "v": 99}).encode())
    elif damage == "wrong_shape":
        state.write_bytes(json.dumps({**json.loads(good), "files": [1, 2]}).encode())
    else:
        state.unlink()
        state.mkdir()
    _start_fails(w, "writer-state.json")
    # The documented fixes: restore it from a backup (here: the good copy); for an empty
    # directory in a new WAL, remove it.
    if damage == "directory":
        state.rmdir()
    state.write_bytes(good)
    w.start()
    _write_some(w)  # entry 1 again: still known as done, a duplicate
    assert w.stop() == 0
    assert read_table(tmp_path / "data", "traces").num_rows == traces_batch().num_rows


@pytest.mark.parametrize("name", ["metadata.json", "writer-id"])
def test_a_directory_in_place_of_a_writer_file_is_one_clear_line(tmp_path, name):
    w = WriterProcess(tmp_path)
    w.start()
    assert w.stop() == 0
    path = tmp_path / "wal" / name
    if path.exists():
        path.unlink()
    path.mkdir()
    _start_fails(w, f"{name} is a directory")


@pytest.mark.parametrize("name", ["metadata.json", "acceptor-id"])
def test_a_directory_in_place_of_an_acceptor_file_is_one_clear_line(tmp_path, name):
    a = AcceptorProcess(workdir=tmp_path, env={"ACCEPTOR_WRITER_ENDPOINTS": "grpc://127.0.0.1:1"})
    a.start()
    assert a.stop() == 0
    path = tmp_path / "wal" / name
    if path.exists():
        path.unlink()
    path.mkdir()
    a.start(wait=False)
    assert a.proc.wait(START_SECS) == 1
    text = a.log_text()
    assert "Traceback" not in text, text
    errors = [line for line in a.log_lines() if line.get("level") == "error"]
    assert len(errors) == 1 and f"{name} is a directory" in errors[0]["error"], text
    # The documented fix for metadata.json: remove it; the WAL replays its segments.
    if name == "metadata.json":
        path.rmdir()
        a.start()
        assert a.stop() == 0
