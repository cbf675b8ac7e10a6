"""Writer identity and create-only objects (issue 13, first slice), with real writer
processes on one shared ``file://`` store: object names carry the writer's durable id, so
two writers, or two lives of one WAL directory, never name the same object; a replay
rewrites the same name; an existing object with other content is never overwritten."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.net import http_get
from helpers.writer import (
    HOUR_NS,
    T0,
    Sent,
    WriterProcess,
    assert_same_rows,
    parquet_files,
    put_request,
    read_table,
    stray_files,
    traces_request,
)
from signaldb.service.lifecycle import EXIT_UNDRAINED
from signaldb.writer.sink import file_path
from signaldb.writer.storage import LocalStore, ObjectConflict
from test_writer_process import _fill_wal, wait_settled


def _writer(
    procs: list[WriterProcess], tmp: pathlib.Path, store: pathlib.Path, *args: str, env: dict[str, str] | None = None
) -> WriterProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    w = WriterProcess(tmp, storage_url=f"file://{store}", args=args, env=env)
    procs.append(w)
    return w


def _writer_id(w: WriterProcess) -> str:
    [line] = [line for line in w.log_lines() if line.get("msg") == "listening"]
    return line["writer_id"]


def _checksums(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in parquet_files(root)}


def _metric(w: WriterProcess, name: str) -> float:
    _, body = http_get(w.url("/metrics"))
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_two_writers_on_one_store_write_distinct_objects_and_every_row_once(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    store = tmp_path / "data"
    a = _writer(procs, tmp_path / "a", store, "--file-max-age-secs", "0.05").start()
    b = _writer(procs, tmp_path / "b", store, "--file-max-age-secs", "0.05").start()
    assert _writer_id(a) != _writer_id(b)
    assert (tmp_path / "a" / "wal" / "writer-id").read_text().strip() == _writer_id(a)
    sent = Sent()
    ca, cb = a.client(), b.client()
    for entry in range(1, 6):  # the same table and hour, the same WAL ids 1..5 in both writers
        put_request(ca, "traces", traces_request(entry), entry, acceptor_id="acc-a", sent=sent)
        put_request(cb, "traces", traces_request(100 + entry), entry, acceptor_id="acc-b", sent=sent)
    ca.close()
    cb.close()
    health_a, health_b = wait_settled(a), wait_settled(b)
    assert health_a["writer_id"] == _writer_id(a) and health_b["writer_id"] == _writer_id(b)
    files = parquet_files(store, "traces")
    by_writer = {wid: [f for f in files if f.name.startswith(wid + "-")] for wid in (_writer_id(a), _writer_id(b))}
    assert all(by_writer.values()) and sum(map(len, by_writer.values())) == len(files)
    written = _metric(a, 'signaldb_writer_files_written_total{table="traces"}') + _metric(
        b, 'signaldb_writer_files_written_total{table="traces"}'
    )
    assert written == len(files)  # no object was written twice under one name
    assert _metric(a, "signaldb_writer_object_conflicts_total") == 0
    assert a.stop() == 0 and b.stop() == 0
    assert_same_rows(read_table(store, "traces"), sent.table("traces"), "traces")
    assert stray_files(store) == []


def test_a_restart_with_the_same_wal_dir_replays_to_the_same_names(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    store = tmp_path / "data"
    w = _writer(procs, tmp_path, store, "--file-max-age-secs", "0.3")
    w.start(env={"SIGNALDB_TEST_CRASH_AT": "after_put"})  # the object is there, its plan not marked written
    first_id = _writer_id(w)
    sent = Sent()
    client = w.client()
    for entry in range(1, 5):
        put_request(client, "traces", traces_request(entry, spans=4), entry, sent=sent)
    assert w.wait(timeout=20) == -9
    client.close()
    before = _checksums(store)
    assert before and all(pathlib.Path(p).name.startswith(first_id + "-") for p in before)

    w.start()
    wait_settled(w)
    assert _writer_id(w) == first_id
    [replay] = [line for line in w.log_lines() if line.get("msg") == "replay read"]
    assert replay["files_to_rewrite"] >= 1
    after = _checksums(store)
    assert {p: after[p] for p in before} == before  # the same names, the same bytes
    assert _metric(w, "signaldb_writer_object_conflicts_total") == 0
    assert w.stop() == 0
    assert_same_rows(read_table(store, "traces"), sent.table("traces"), "traces")
    assert stray_files(store) == []


def test_a_new_empty_wal_dir_is_a_new_writer_and_overwrites_nothing(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    store = tmp_path / "data"
    w = _writer(procs, tmp_path, store, "--file-max-age-secs", "0.05").start()
    first_id = _writer_id(w)
    sent = Sent()
    client = w.client()
    for entry in range(1, 4):
        put_request(client, "traces", traces_request(entry), entry, sent=sent)
    client.close()
    wait_settled(w)
    assert w.stop() == 0
    before = _checksums(store)

    shutil.rmtree(tmp_path / "wal")  # the pod comes back with a new, empty volume
    w.start()
    second_id = _writer_id(w)
    assert second_id != first_id
    assert any(line.get("msg", "").startswith("new writer") for line in w.log_lines())
    client = w.client()
    for entry in range(1, 4):  # its WAL ids start at 1 again
        put_request(client, "traces", traces_request(50 + entry), entry, acceptor_id="acc-2", sent=sent)
    client.close()
    wait_settled(w)
    assert w.stop() == 0
    after = _checksums(store)
    assert {p: after[p] for p in before} == before
    assert any(pathlib.Path(p).name.startswith(second_id + "-") for p in after.keys() - before.keys())
    assert_same_rows(read_table(store, "traces"), sent.table("traces"), "traces")


def test_a_conflicting_object_is_never_overwritten_and_other_partitions_go_on(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    store = tmp_path / "data"
    w = _writer(
        procs, tmp_path, store, "--file-max-age-secs", "0.05", env={"WRITER_SHUTDOWN_TIMEOUT_SECS": "5"}
    ).start()
    wid = _writer_id(w)
    # Entry 1 (writer WAL id 1) alone in hour 01: its file's name is known in advance. Plant another object there.
    [life] = [line["life"] for line in w.log_lines() if line.get("msg") == "listening"]
    planted = store / file_path(wid, "traces", "date=2026-11-24/hour=01", [1], life)
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"someone else's object")
    sent = Sent()
    client = w.client()
    put_request(client, "traces", traces_request(1), 1, sent=sent)
    for entry in range(2, 6):  # hour 02: must keep being written
        put_request(client, "traces", traces_request(entry, start_ns=T0 + HOUR_NS), entry, sent=sent)
    client.close()

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, body = http_get(w.url("/health"))
        health = json.loads(body)
        if health["wal"]["unprocessed_entries"] == 1 and health["writer"]["conflicting_files"] == 1:
            break
        time.sleep(0.05)
    assert health["wal"]["unprocessed_entries"] == 1 and health["writer"]["conflicting_files"] == 1, health
    hour2 = [f for f in parquet_files(store, "traces") if "hour=02" in str(f)]
    got = pa.concat_tables([pq.read_table(f) for f in hour2])
    want = pa.Table.from_batches(sent.batches["traces"][1:])
    assert_same_rows(got, want, "traces")
    assert planted.read_bytes() == b"someone else's object"
    errors = [line for line in w.log_lines() if line.get("msg", "").startswith("object exists with other content")]
    assert errors and errors[0]["path"] == str(planted.relative_to(store))
    # Backoff, not a hot loop: a few attempts in 3 s.
    time.sleep(3)
    conflicts = _metric(w, "signaldb_writer_object_conflicts_total")
    assert 1 <= conflicts <= 4
    assert _metric(w, "signaldb_writer_conflicting_files") == 1

    # A stop does not spin on it either; the rows stay in the WAL for the next start.
    started = time.monotonic()
    assert w.stop(timeout=15) == EXIT_UNDRAINED  # the rows wait in this volume
    assert time.monotonic() - started < 5
    assert [line["clean"] for line in w.log_lines() if line.get("msg") == "stopped"] == [False]
    assert planted.read_bytes() == b"someone else's object"

    w.start()  # the replay meets it again, then the operator moves it away
    deadline = time.monotonic() + 20
    while _metric(w, "signaldb_writer_object_conflicts_total") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert planted.read_bytes() == b"someone else's object"
    planted.rename(tmp_path / "moved-away")
    wait_settled(w, timeout=30)
    assert _metric(w, "signaldb_writer_conflicting_files") == 0
    assert w.stop() == 0
    assert_same_rows(read_table(store, "traces"), sent.table("traces"), "traces")


def test_a_bad_writer_id_file_fails_startup_naming_it(tmp_path: pathlib.Path) -> None:
    (tmp_path / "wal").mkdir()
    (tmp_path / "wal" / "writer-id").write_text("not-an-id\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "signaldb.writer",
            "--wal-dir",
            str(tmp_path / "wal"),
            "--storage-url",
            f"file://{tmp_path / 'data'}",
            "--flight-addr",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1
    [failure] = [json.loads(line) for line in result.stderr.splitlines() if '"startup failed"' in line]
    assert str(tmp_path / "wal" / "writer-id") in failure["error"] and "invalid" in failure["error"]
    assert (tmp_path / "wal" / "writer-id").read_text() == "not-an-id\n"  # never replaced


def test_a_wal_dir_from_before_writer_ids_gets_one_and_keeps_its_planned_names(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    store = tmp_path / "data"
    want = _fill_wal(tmp_path / "wal", 3)
    old_name = "traces/date=2026-11-24/hour=01/1-3-0123456789ab.parquet"  # the previous version's naming
    (tmp_path / "wal" / "writer-state.json").write_text(
        json.dumps(
            {
                "v": 1,
                "done": {},
                "floors": {},
                "committed": [],
                "files": {old_name: {"table": "traces", "partition": "date=2026-11-24/hour=01", "wal_ids": [1, 2, 3]}},
            }
        )
    )
    w = _writer(procs, tmp_path, store, "--file-max-age-secs", "0.05").start()
    warnings = [line for line in w.log_lines() if line.get("msg", "").startswith("writer id created for a WAL")]
    assert [line["writer_id"] for line in warnings] == [_writer_id(w)]
    wait_settled(w)
    assert w.stop() == 0
    assert [str(p.relative_to(store)) for p in parquet_files(store)] == [old_name]
    assert_same_rows(read_table(store, "traces"), want, "traces")


def test_local_store_creates_only(tmp_path: pathlib.Path) -> None:
    """The store itself: a replay of the same content is fine, other content is refused, and a
    leftover temp name that is a hard link to the object (crash between link and unlink) is
    removed, never truncated."""
    store = LocalStore(tmp_path)
    table = pa.table({"x": [1, 2, 3]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    store.put("t/a.parquet", data)
    os.link(tmp_path / "t" / "a.parquet", tmp_path / "t" / ".a.parquet.tmp")
    store.put("t/a.parquet", data)  # a replay
    assert (tmp_path / "t" / "a.parquet").read_bytes() == data
    with pytest.raises(ObjectConflict, match="object exists with other content"):
        store.put("t/a.parquet", b"other")
    assert (tmp_path / "t" / "a.parquet").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["a.parquet"]
