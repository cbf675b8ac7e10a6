"""The writer as a process (``python -m signaldb.writer``): signals, crashes, restarts
and its HTTP endpoints. Every test checks the end result in Parquet."""

from __future__ import annotations

import json
import pathlib
import random
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import scaled
from helpers.net import http_get, wait_until
from helpers.writer import (
    Sent,
    WriterProcess,
    assert_same_rows,
    convert,
    parquet_files,
    put,
    put_request,
    read_table,
    stray_files,
    traces_request,
)
from signaldb.service.lifecycle import EXIT_UNDRAINED
from signaldb.wal import Wal


def wait_settled(w: WriterProcess, timeout: float = 30.0) -> dict:
    """Until /health shows no unprocessed WAL entry and no open file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, body = http_get(w.url("/health"))
        health = json.loads(body)
        if health["wal"]["unprocessed_entries"] == 0 and health["writer"]["open_files"] == 0:
            return health
        time.sleep(0.05)
    raise AssertionError(f"writer did not settle: {health}")


def _writer(
    procs: list[WriterProcess], tmp: pathlib.Path, *args: str, env: dict[str, str] | None = None
) -> WriterProcess:
    w = WriterProcess(tmp, args=args, env=env)
    procs.append(w)
    return w


def test_sigterm_writes_open_files_and_exits_zero_in_time(procs: list[WriterProcess], tmp_path: pathlib.Path) -> None:
    w = _writer(procs, tmp_path, "--file-max-age-secs", "3600", env={"WRITER_SHUTDOWN_TIMEOUT_SECS": "5"}).start()
    sent = Sent()
    client = w.client()
    for entry in range(1, 6):
        put_request(client, "traces", traces_request(entry), entry, sent=sent)
    client.close()
    assert parquet_files(tmp_path / "data") == []  # still buffered: the age limit is an hour
    started = time.monotonic()
    assert w.stop(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert_same_rows(read_table(tmp_path / "data", "traces"), sent.table("traces"), "traces")
    msgs = [line.get("msg") for line in w.log_lines()]
    assert "stopping" in msgs and "stopped" in msgs
    assert [line["clean"] for line in w.log_lines() if line.get("msg") == "stopped"] == [True]


def test_duplicates_are_recognised_after_a_restart(procs: list[WriterProcess], tmp_path: pathlib.Path) -> None:
    w = _writer(procs, tmp_path, "--file-max-age-secs", "0.05").start()
    sent = Sent()
    bodies = {entry: traces_request(entry) for entry in range(1, 6)}
    client = w.client()
    for entry, body in bodies.items():
        put_request(client, "traces", body, entry, sent=sent)
    wait_settled(w)
    client.close()
    assert w.stop() == 0
    files = {p: p.stat().st_mtime_ns for p in parquet_files(tmp_path / "data")}

    w.start()
    client = w.client()
    for entry, body in bodies.items():
        assert put_request(client, "traces", body, entry) == {"traces": [entry]}
    put_request(client, "traces", traces_request(6), 6, sent=sent)
    wait_settled(w)
    client.close()
    after = {p: p.stat().st_mtime_ns for p in parquet_files(tmp_path / "data")}
    assert {p: after[p] for p in files} == files  # old files untouched
    assert len(after) == len(files) + 1
    assert_same_rows(read_table(tmp_path / "data", "traces"), sent.table("traces"), "traces")


@pytest.mark.parametrize("point", ["after_plan", "before_rename", "after_put", "after_commit"])
def test_a_crash_at_each_step_of_a_file_write_loses_and_duplicates_nothing(
    procs: list[WriterProcess], tmp_path: pathlib.Path, point: str
) -> None:
    # Two hours per entry, so an entry's rows span two files, and several entries per file.
    w = _writer(procs, tmp_path, "--file-max-age-secs", "0.3")
    w.start(env={"SIGNALDB_TEST_CRASH_AT": point})
    sent = Sent()
    bodies = {}
    client = w.client()
    for entry in range(1, 5):
        bodies[entry] = traces_request(entry, spans=4, start_ns=1_795_485_600_000_000_000 - 2_000_000)
        put_request(client, "traces", bodies[entry], entry, sent=sent)
    assert w.wait(timeout=20) == -9, f"the writer should have crashed at {point}"
    client.close()

    w.start()
    wait_settled(w)
    [replay] = [line for line in w.log_lines() if line.get("msg") == "replay read"]
    if point == "after_commit":  # committed, not yet marked: marked at replay, nothing rewritten
        assert replay["already_committed"] == 4 and replay["files_to_rewrite"] == 0
    else:  # the planned files are rewritten under their planned names
        assert replay["already_committed"] == 0 and replay["files_to_rewrite"] >= 1
    assert stray_files(tmp_path / "data") == []
    assert_same_rows(read_table(tmp_path / "data", "traces"), sent.table("traces"), "traces")
    # What the acceptor resends after the crash (it never got to mark them) is acked as duplicates.
    client = w.client()
    for entry, body in bodies.items():
        assert put_request(client, "traces", body, entry) == {"traces": [entry]}
    client.close()
    assert w.stop() == 0
    assert_same_rows(read_table(tmp_path / "data", "traces"), sent.table("traces"), "traces")
    state = json.loads((tmp_path / "wal" / "writer-state.json").read_text())
    assert state["files"] == {} and state["done"] == {"acc-1": {"traces": [[1, 4]]}}


@pytest.mark.parametrize("seed", range(scaled(1, 20)))
def test_sigkill_while_writing_then_restart_and_resend(
    procs: list[WriterProcess], tmp_path: pathlib.Path, seed: int
) -> None:
    """Like an acceptor: send continuously, lose the writer mid-flight, restart it, resend everything
    that was not acked (and some that was). Every entry ends up in Parquet exactly once.
    (`make stress` runs 20 kill points.)"""
    w = _writer(procs, tmp_path, "--file-max-age-secs", "0.02", "--file-max-bytes", "4096").start()
    rng = random.Random(7 + seed)
    batches = {entry: convert("traces", traces_request(entry, spans=3))["traces"] for entry in range(1, 401)}
    acked: list[int] = []
    stop = threading.Event()

    def sender() -> None:
        client = w.client()
        try:
            for entry, batch in batches.items():
                if stop.is_set():
                    return
                put(client, "traces", "acc-1", [(batch, [(entry, batch.num_rows)])])
                acked.append(entry)
        except flight.FlightError:
            return  # the writer died under us
        finally:
            client.close()

    thread = threading.Thread(target=sender)
    thread.start()
    while len(acked) < 80 + rng.randrange(60):
        time.sleep(0.005)
    w.kill()
    stop.set()
    thread.join(30)
    assert acked, "nothing was acked before the kill"

    w.start()
    client = w.client()
    # Resend in batches of several entries, overlapping the acked ones.
    resend = list(range(max(1, len(acked) - 20), 401))
    for i in range(0, len(resend), 5):
        chunk = resend[i : i + 5]
        acks = put(
            client, "traces", "acc-1", [(pa.concat_batches([batches[e] for e in chunk]), [(e, 3) for e in chunk])]
        )
        assert all(e in acks[0][1] for e in chunk if e in acked)
    client.close()
    wait_settled(w, timeout=60)
    assert w.stop() == 0
    assert stray_files(tmp_path / "data") == []
    want = pa.Table.from_batches(list(batches.values()))
    assert_same_rows(read_table(tmp_path / "data", "traces"), want, "traces")


def test_health_readiness_and_metrics_endpoints(procs: list[WriterProcess], tmp_path: pathlib.Path) -> None:
    w = _writer(procs, tmp_path, "--file-max-age-secs", "0.05").start()
    client = w.client()
    put_request(client, "traces", traces_request(1), 1)
    put_request(client, "traces", traces_request(1), 1)  # a duplicate
    client.close()
    health = wait_settled(w)
    assert health["status"] == "ok" and health["replaying"] is False
    assert {"unprocessed_entries", "total_segments", "disk_usage_bytes", "last_flush"} <= set(health["wal"])
    assert http_get(w.url("/livez"))[0] == 200
    assert http_get(w.url("/readyz")) == (200, b'{"ready": true}')
    status, body = http_get(w.url("/metrics"))
    text = body.decode()
    assert status == 200
    for line in (
        'signaldb_writer_files_written_total{table="traces"} 1.0',
        'signaldb_writer_rows_written_total{table="traces"} 5.0',
        'signaldb_writer_duplicate_entries_total{table="traces"} 1.0',
        "signaldb_writer_object_put_duration_seconds_count 1.0",
        "signaldb_writer_object_put_errors_total 0.0",
        'signaldb_wal_unprocessed_entries{component="writer"} 0.0',
    ):
        assert line in text, line
    for name in (
        "signaldb_writer_bytes_written_total",
        "signaldb_wal_fsync_duration_seconds_bucket",
        "signaldb_wal_segments",
        "signaldb_wal_disk_usage_bytes",
        "signaldb_wal_corrupt_entries_total",
    ):
        assert name in text, name
    assert w.stop() == 0


def test_a_bad_configuration_exits_2_naming_the_key(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "signaldb.writer", "--storage-url", "ftp://x"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert "storage.url" in result.stderr


def _fill_wal(wal_dir: pathlib.Path, entries: int, spans: int = 2) -> pa.Table:
    """Writes ``entries`` writer WAL entries as ``do_put`` would have (acceptor ids 1..entries);
    returns their rows. The writer then finds them unprocessed: a crash before any file."""
    from signaldb.writer import payload

    batches = []
    with Wal(wal_dir, max_segment_size=4 << 20) as wal:
        chunk = []
        for entry in range(1, entries + 1):
            batch = convert("traces", traces_request(entry, spans=spans))["traces"]
            batches.append(batch)
            chunk.append(payload.encode(payload.WalRecord("acc-1", "traces", ((entry, batch.num_rows),), batch)))
            if len(chunk) == 500 or entry == entries:
                wal.append_batch(chunk, kind="traces")
                chunk = []
    return pa.Table.from_batches(batches)


def test_replay_writes_every_unprocessed_entry_and_keeps_dedupe(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    want = _fill_wal(tmp_path / "wal", 3000, spans=1)
    w = _writer(procs, tmp_path, "--file-max-age-secs", "0.05").start(until="replay starting")
    [health_port] = [line["health_port"] for line in w.log_lines() if line.get("msg") == "health listening"]
    status, body = http_get(f"http://127.0.0.1:{health_port}/readyz")
    assert (status, json.loads(body)) == (503, {"ready": False, "reasons": ["replaying the writer WAL"]})
    w.start(until="listening", launch=False)
    wait_settled(w)
    msgs = {line.get("msg"): line for line in w.log_lines()}
    assert msgs["replay starting"]["unprocessed_entries"] == 3000
    assert msgs["replay done"]["entries"] == 3000
    client = w.client()
    assert put_request(client, "traces", traces_request(17, spans=2), 17) == {"traces": [17]}
    client.close()
    assert w.stop() == 0
    assert_same_rows(read_table(tmp_path / "data", "traces"), want, "traces")


def test_sigterm_during_replay_says_keep_the_volume_and_loses_nothing(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    want = _fill_wal(tmp_path / "wal", 4000, spans=1)
    w = _writer(procs, tmp_path, "--file-max-age-secs", "3600", env={"WRITER_SHUTDOWN_TIMEOUT_SECS": "10"})
    w.start(until="replay starting")
    # An orderly stop, but not a drained one: the status tells whoever scales writers down
    # that this volume must be kept.
    assert w.stop(timeout=15) == EXIT_UNDRAINED
    msgs = [line.get("msg") for line in w.log_lines()]
    assert "listening" not in msgs and "stopped" in msgs
    (stopped,) = [line for line in w.log_lines() if line.get("msg") == "stopped"]
    assert stopped["clean"] is False and stopped["unprocessed_entries"] > 0
    with Wal(tmp_path / "wal") as wal:
        assert wal.stats().unprocessed_entries == stopped["unprocessed_entries"]
    # The next start writes whatever the interrupted one did not.
    w.args = ["--file-max-age-secs", "0.05"]
    w.start()
    wait_settled(w, timeout=60)
    assert w.stop() == 0
    assert_same_rows(read_table(tmp_path / "data", "traces"), want, "traces")


def test_an_unreadable_wal_entry_goes_to_dead_letter_instead_of_a_crash_loop(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    want = _fill_wal(tmp_path / "wal", 3)

    with Wal(tmp_path / "wal") as wal:
        bad = wal.append(b"SDW9 not a writer payload", kind="traces")
    w = _writer(procs, tmp_path, "--file-max-age-secs", "0.05").start()
    wait_settled(w)
    dl, stem = tmp_path / "wal" / "dead-letter", f"{bad:020d}.traces"  # signaldb.service.dead_letters
    assert (dl / f"{stem}.entry").read_bytes() == b"SDW9 not a writer payload"
    assert "cannot be read" in json.loads((dl / f"{stem}.json").read_text())["reason"]
    assert [line["wal_id"] for line in w.log_lines() if line.get("level") == "error"] == [bad]
    assert w.stop() == 0
    assert_same_rows(read_table(tmp_path / "data", "traces"), want, "traces")


def test_an_unwritable_wal_directory_fails_startup_with_one_clear_line(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "signaldb.writer",
            "--wal-dir",
            str(blocker / "wal"),
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
    assert "WAL directory not writable" in failure["error"] and str(blocker) in failure["error"]


def test_health_says_drained_only_once_everything_acked_is_in_storage(procs, tmp_path):
    """The signal an operator waits for before removing a writer (operations.md, Scaling writers)."""
    w = _writer(procs, tmp_path, "--file-max-age-secs", "1.5").start()
    assert json.loads(http_get(w.url("/health"))[1])["drained"] is True  # nothing taken yet
    client = w.client()
    put_request(client, "traces", traces_request(1), 1)
    health = json.loads(http_get(w.url("/health"))[1])
    assert health["drained"] is False and health["writer"]["open_files"] == 1  # acked, only buffered
    wait_until(lambda: json.loads(http_get(w.url("/health"))[1])["drained"], timeout=30, what="drained")
    assert len(parquet_files(tmp_path / "data")) == 1
    client.close()
