"""Backup, restore and copies of WAL directories, run as docs/operations.md says.

The shell blocks of "Backup and restore" in docs/operations.md are read from
the doc and run as written (only ``WAL_DIR`` and ``BACKUP`` point into the
test's directory), against real acceptor and writer processes; stopping and
starting are SIGTERM and a new process, as the doc says. Every acknowledged
span must be in Parquet exactly once. Before incarnations, the acceptor
restore lost 5 of 12 requests (the restored directory handed out ids the
writer had seen) and two acceptors from copies of one directory lost half.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.flight as flight
import pytest

from helpers.acceptor_proc import AcceptorProcess
from helpers.load import ThreadedLoad
from helpers.net import free_port, wait_until
from helpers.pipeline import Pipeline, WriterProcess, show_logs_if_failed
from signaldb import otlp
from signaldb.acceptor import entry_format, identity
from signaldb.flight_protocol import (
    ProtocolError,
    StreamHeader,
    check_acceptor_id,
    decode_ack,
    decode_batch_metadata,
    encode_batch_metadata,
    source_key,
)
from signaldb.otlp import TimeWindow
from signaldb.writer.ledger import Ledger
from test_hostile_requests import WINDOW_ENV, spans_request

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "operations.md"
BIN = Path(sys.executable).parent


# -- the doc's commands ----------------------------------------------------------


def doc_blocks() -> list[str]:
    """The ```sh blocks of "## Backup and restore", in order: backup, writer drain check, restore."""
    text = DOC.read_text()
    section = text[text.index("## Backup and restore") :]
    section = section[: section.index("\n## ", 5)]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def run_doc_block(index: int, wal_dir: Path, backup: Path) -> subprocess.CompletedProcess:
    """Runs block ``index`` as written; only the WAL_DIR=/BACKUP= lines give way to the test's paths."""
    lines = [ln for ln in doc_blocks()[index].splitlines() if not re.match(r"(WAL_DIR|BACKUP)=", ln)]
    env = {
        **os.environ,
        "WAL_DIR": str(wal_dir),
        "BACKUP": str(backup),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def backup(wal_dir: Path, dest: Path) -> None:
    result = run_doc_block(0, wal_dir, dest)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "verify" in doc_blocks()[0] and (dest / "metadata.json").exists()


def writer_drained_check(wal_dir: Path) -> int:
    return run_doc_block(1, wal_dir, Path("/nonexistent")).returncode


def restore(wal_dir: Path, src: Path) -> None:
    result = run_doc_block(2, wal_dir, src)
    assert result.returncode == 0, result.stderr + result.stdout


def test_the_doc_has_the_three_blocks_this_test_runs() -> None:
    blocks = doc_blocks()
    assert len(blocks) == 3
    assert 'cp -a "$WAL_DIR" "$BACKUP"' in blocks[0] and 'signaldb-wal verify "$BACKUP"' in blocks[0]
    assert "signaldb-wal inspect" in blocks[1]
    assert 'cp -a "$BACKUP" "$WAL_DIR"' in blocks[2] and 'signaldb-wal verify "$WAL_DIR"' in blocks[2]


# -- clients -----------------------------------------------------------------------

SPANS = 3


def send(http_port: int, name: str) -> bool:
    """One request of SPANS spans named f"{name}-{i}", current timestamps; True when acknowledged."""
    now = time.time_ns()
    body = spans_request(name, [(now, now + 1000)] * SPANS)
    req = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status == 200
    except (urllib.error.HTTPError, OSError):
        return False


class Load(ThreadedLoad):
    """Unique requests from a few threads to fixed HTTP ports (round robin), acks remembered."""

    def __init__(self, ports: list[int], threads: int = 3) -> None:
        super().__init__(threads)
        self.ports = ports
        self.acked: list[str] = []

    def _run(self, n: int) -> None:
        i = 0
        while not self.stopping:
            name = f"load{n}r{i}"
            if send(self.ports[i % len(self.ports)], name):
                with self._lock:
                    self.acked.append(name)
            else:
                time.sleep(0.05)
            i += 1
            time.sleep(0.005)


def assert_exactly_once(p: Pipeline, acked: list[str], only_acked: bool = False) -> None:
    want = {f"{name}-{i}" for name in acked for i in range(SPANS)}
    got = p.counts_once_present(want, timeout=60)
    missing = want - set(got)
    assert not missing, f"{len(missing)} of {len(want)} acknowledged spans missing, e.g. {sorted(missing)[:5]}"
    twice = {name: n for name, n in got.items() if n > 1 and (name in want or not only_acked)}
    assert not twice, f"{len(twice)} spans more than once, e.g. {list(twice.items())[:5]}"
    assert not p.partial_files()


def drained(*procs: AcceptorProcess) -> bool:
    try:
        return all(proc.health()["wal"]["unprocessed_entries"] == 0 for proc in procs)
    except (OSError, KeyError, ValueError):
        return False


@pytest.fixture
def pipeline(tmp_path, request):
    http_port = free_port()
    p = Pipeline(tmp_path, env={**WINDOW_ENV, "ACCEPTOR_HTTP_ADDR": f"127.0.0.1:{http_port}"})
    p.http_port = http_port
    try:
        yield p
    finally:
        p.kill_all()
        show_logs_if_failed(request, p)


def acceptor_wal(p: Pipeline) -> Path:
    return p.workdir / "wal"


def writer_wal(p: Pipeline) -> Path:
    return p.workdir / "writer-wal"


# -- acceptor ------------------------------------------------------------------------


def test_acceptor_backup_and_restore_as_written_loses_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    """The issue's probe: stop, back up, start, send 5, stop, restore, start, send 7: all 12 land once
    (before incarnations: 7 acknowledged, 2 landed)."""
    p = pipeline.start()
    acked = [n for n in (f"first{i}" for i in range(3)) if send(p.http_port, n)]
    wait_until(p.drained, timeout=60, what="drained")
    p.acceptor.stop()
    backup(acceptor_wal(p), tmp_path / "backup" / "acceptor")
    p.acceptor.start()
    acked += [n for n in (f"after-backup{i}" for i in range(5)) if send(p.http_port, n)]
    wait_until(p.drained, timeout=60, what="drained")
    p.acceptor.stop()
    restore(acceptor_wal(p), tmp_path / "backup" / "acceptor")
    assert (p.workdir / "wal.before-restore").is_dir()
    p.acceptor.start()
    acked += [n for n in (f"after-restore{i}" for i in range(7)) if send(p.http_port, n)]
    assert len(acked) == 15
    wait_until(p.drained, timeout=60, what="drained")
    assert_exactly_once(p, acked)
    # The restored directory handed out the same ids again, under a new incarnation.
    incarnations = {
        line["incarnation"]
        for n in (1, 2, 3)
        for line in _log(p.workdir / f"acceptor-{n}.log")
        if line.get("msg") == "listening"
    }
    assert len(incarnations) == 3
    p.stop()


def test_acceptor_backup_under_load_restored_onto_a_new_machine(pipeline: Pipeline, tmp_path: Path) -> None:
    """The backup holds unprocessed entries (the writer was away while the load ran); after the
    backup the pipeline forwards them, the directory is lost, the backup is restored at another
    path (the new machine) and replays them: each is deduplicated, nothing acknowledged is lost."""
    p = pipeline.start()
    new_wal = tmp_path / "new-machine" / "data" / "wal" / "acceptor"
    with Load([p.http_port]) as load:
        time.sleep(1.0)
        p.writer.stop()  # the acceptor keeps acking into its WAL
        time.sleep(1.5)
        p.acceptor.stop()
        backup(acceptor_wal(p), tmp_path / "backup" / "acceptor")
        held = json.loads(
            subprocess.run(
                [str(BIN / "signaldb-wal"), "inspect", "--json", str(tmp_path / "backup" / "acceptor")],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )["unprocessed_entries"]
        assert held > 0, "the backup should hold unprocessed entries"
        p.writer.start()
        p.acceptor.start()
        time.sleep(2.0)
        p.acceptor.stop()
        # As the doc says: the directory is still readable, so it drains first, out of the
        # clients' way (another HTTP port), or what it acked and had not forwarded is lost with it.
        p.acceptor.env["ACCEPTOR_HTTP_ADDR"] = "127.0.0.1:0"
        p.acceptor.start()
        wait_until(lambda: drained(p.acceptor), timeout=60, what="old acceptor drained")
        p.acceptor.stop()
        p.acceptor.env["ACCEPTOR_HTTP_ADDR"] = f"127.0.0.1:{p.http_port}"
        # The machine is lost. A new one: the backup restored where its service keeps its WAL.
        shutil.rmtree(acceptor_wal(p))
        new_wal.parent.mkdir(parents=True)
        restore(new_wal, tmp_path / "backup" / "acceptor")
        p.acceptor.env["ACCEPTOR_WAL_DIR"] = str(new_wal)
        p.acceptor.start()
        time.sleep(2.0)
    assert len(load.acked) > 50, "the load barely ran"
    wait_until(p.drained, timeout=120, what="drained")
    assert_exactly_once(p, load.acked)
    assert p.writer.metric("signaldb_writer_duplicate_entries_total", table="traces") >= held
    p.stop()


def test_two_acceptors_from_copies_of_one_directory_both_deliver(pipeline: Pipeline, tmp_path: Path) -> None:
    """Both copies hold the same unprocessed entries (each reaches Parquet once) and take new
    requests under their own incarnations (before: 1 of 2 landed)."""
    p = pipeline.start()
    p.writer.stop()
    acked = [n for n in (f"before-copy{i}" for i in range(5)) if send(p.http_port, n)]
    p.acceptor.stop()
    backup(acceptor_wal(p), tmp_path / "copy")
    second = AcceptorProcess(
        workdir=tmp_path,
        env={**p.acceptor.env, **AcceptorProcess.ephemeral_addrs(), "ACCEPTOR_WAL_DIR": str(tmp_path / "copy")},
    )
    second.name = "acceptor2"
    try:
        p.acceptor.start()
        second.start()
        ids = {
            ln["acceptor_id"]
            for proc in (p.acceptor, second)
            for ln in proc.log_lines()
            if ln.get("msg") == "listening"
        }
        for i in range(10):
            for port, tag in ((p.http_port, "one"), (second.ports["http_port"], "two")):
                name = f"{tag}-{i}"
                if send(port, name):
                    acked.append(name)
        assert len(acked) == 25
        p.writer.start()
        wait_until(lambda: drained(p.acceptor, second, p.writer), timeout=60, what="drained")
        assert_exactly_once(p, acked)
        assert len(ids) == 1  # one acceptor id, two incarnations: both copies delivered
        second.stop()
    finally:
        if second.proc is not None and second.proc.poll() is None:
            second.kill()
    p.stop()


def _startup_failure(module: str, env: dict[str, str], cwd: Path) -> tuple[int, list[dict]]:
    result = subprocess.run(
        [sys.executable, "-m", module],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        check=False,
    )
    lines = [json.loads(ln) for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("{")]
    return result.returncode, lines


@pytest.mark.parametrize("content", ["a" * 129 + "\n", "has space\n", "slash/in/it\n", "\n", "caf\xe9\n"])
def test_a_bad_acceptor_id_file_is_one_startup_error_naming_it(tmp_path: Path, content: str) -> None:
    wal = tmp_path / "wal"
    wal.mkdir(mode=0o700)
    (wal / "acceptor-id").write_bytes(content.encode("latin-1"))
    code, lines = _startup_failure(
        "signaldb.acceptor.main",
        {
            "ACCEPTOR_WAL_DIR": str(wal),
            "ACCEPTOR_GRPC_ADDR": "127.0.0.1:0",
            "ACCEPTOR_HTTP_ADDR": "127.0.0.1:0",
            "ACCEPTOR_HEALTH_ADDR": "127.0.0.1:0",
        },
        tmp_path,
    )
    assert code == 1
    [failure] = [ln for ln in lines if ln.get("msg") == "startup failed"]
    assert str(wal / "acceptor-id") in failure["error"] and "invalid" in failure["error"]
    assert "Traceback" not in failure["error"]
    assert (wal / "acceptor-id").read_bytes() == content.encode("latin-1")  # never replaced


def test_a_bad_writer_id_file_is_one_startup_error_without_traceback(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    wal.mkdir(mode=0o700)
    (wal / "writer-id").write_text("x" * 32 + "\n")
    code, lines = _startup_failure(
        "signaldb.writer.main",
        {
            "WRITER_WAL_DIR": str(wal),
            "SIGNALDB_STORAGE_URL": f"file://{tmp_path / 'data'}",
            "WRITER_FLIGHT_ADDR": "127.0.0.1:0",
            "WRITER_HEALTH_ADDR": "127.0.0.1:0",
        },
        tmp_path,
    )
    assert code == 1
    [failure] = [ln for ln in lines if ln.get("msg") == "startup failed"]
    assert str(wal / "writer-id") in failure["error"] and "Traceback" not in failure["error"]


# -- writer ----------------------------------------------------------------------------


def _log(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.startswith("{")]


def _objects(p: Pipeline) -> dict[str, bytes]:
    return {
        str(f.relative_to(p.storage_dir)): f.read_bytes()
        for f in p.storage_dir.rglob("*.parquet")
        if not f.name.startswith(".")
    }


def test_writer_backup_and_restore_as_written(pipeline: Pipeline, tmp_path: Path) -> None:
    """One request at a time, each drained into its own file, so the restored directory plans
    files of exactly the writer WAL ids the life after the backup used (before per-start lives:
    the same names with other content, refused by the create-only store and stuck in the WAL)."""
    p = pipeline.start()

    def one(name: str) -> list[str]:
        ok = send(p.http_port, name)
        wait_until(lambda: p.drained() and p.writer.health()["drained"], timeout=60, what="drained")
        return [name] if ok else []

    acked = [n for i in range(3) for n in one(f"first{i}")]
    p.writer.stop()
    assert writer_drained_check(writer_wal(p)) == 0
    backup(writer_wal(p), tmp_path / "backup" / "writer")
    p.writer.start()
    acked += [n for i in range(5) for n in one(f"after-backup{i}")]
    p.writer.stop()
    seen = _objects(p)
    restore(writer_wal(p), tmp_path / "backup" / "writer")
    p.writer.start()
    acked += [n for i in range(7) for n in one(f"after-restore{i}")]
    assert len(acked) == 15
    assert_exactly_once(p, acked)
    after = _objects(p)
    assert {k: after[k] for k in seen} == seen and len(after) >= len(seen) + 7
    assert p.writer.metric("signaldb_writer_object_conflicts_total") == 0
    p.stop()


def test_writer_backup_and_restore_as_written_under_load(pipeline: Pipeline, tmp_path: Path) -> None:
    """Stop the writer under load, check it drained, back it up, start, let it write files
    (writer WAL ids the restored directory hands out again), stop, restore, start: every
    acknowledged span once, no object conflict, no object ever changed."""
    p = pipeline.start()
    seen: dict[str, bytes] = {}
    with Load([p.http_port]) as load:
        time.sleep(1.0)
        p.writer.stop()
        assert writer_drained_check(writer_wal(p)) == 0
        backup(writer_wal(p), tmp_path / "backup" / "writer")
        p.writer.start()
        time.sleep(2.0)
        p.writer.stop()
        seen.update(_objects(p))
        restore(writer_wal(p), tmp_path / "backup" / "writer")
        p.writer.start()
        time.sleep(2.0)
    assert len(load.acked) > 50, "the load barely ran"
    wait_until(p.drained, timeout=120, what="drained")
    assert_exactly_once(p, load.acked)
    after = _objects(p)
    assert {k: after[k] for k in seen} == seen, "an object changed"
    assert p.writer.metric("signaldb_writer_object_conflicts_total") == 0
    p.stop()


def test_the_writer_drain_check_fails_on_an_undrained_wal(tmp_path: Path) -> None:
    from signaldb.wal import Wal

    with Wal(tmp_path / "w") as wal:
        wal.append(b"x", kind="traces")
    assert writer_drained_check(tmp_path / "w") != 0
    with Wal(tmp_path / "w") as wal:
        wal.mark_processed(1)
    assert writer_drained_check(tmp_path / "w") == 0


def test_two_writers_from_copies_of_one_drained_directory_both_write(pipeline: Pipeline, tmp_path: Path) -> None:
    """Same writer id, different lives: their file names never collide (before: the second
    writer's files met the first's names with other content and stayed in its WAL)."""
    p = pipeline.start()
    acked = [n for n in (f"first{i}" for i in range(5)) if send(p.http_port, n)]
    wait_until(p.drained, timeout=60, what="drained")
    p.acceptor.stop()
    p.writer.stop()
    assert writer_drained_check(writer_wal(p)) == 0
    backup(writer_wal(p), tmp_path / "writer-copy")
    second_port = free_port()
    second = WriterProcess(
        workdir=tmp_path,
        env={
            **p.writer.env,
            **WriterProcess.ephemeral_addrs(),
            "WRITER_WAL_DIR": str(tmp_path / "writer-copy"),
            "WRITER_FLIGHT_ADDR": f"127.0.0.1:{second_port}",
        },
    )
    second.name = "writer2"
    p.acceptor.env["ACCEPTOR_WRITER_ENDPOINTS"] = f"grpc://127.0.0.1:{p.flight_port},grpc://127.0.0.1:{second_port}"
    try:
        p.writer.start()
        second.start()
        p.acceptor.start()
        acked += [n for n in (f"second{i}" for i in range(40)) if send(p.http_port, n)]
        wait_until(lambda: drained(p.acceptor, p.writer, second), timeout=60, what="drained")
        assert_exactly_once(p, acked)
        for w in (p.writer, second):
            assert w.metric("signaldb_writer_object_conflicts_total") == 0
            assert w.metric("signaldb_writer_files_written_total") >= 1
        second.stop()
    finally:
        if second.proc is not None and second.proc.poll() is None:
            second.kill()
    p.stop()


# -- min_unprocessed cannot hide data ----------------------------------------------------


def test_a_forged_min_unprocessed_hides_nothing(pipeline: Pipeline) -> None:
    """issue 15: one do_put naming the acceptor with min_unprocessed = 2^62 made every later
    request of it a 'duplicate'. Now the floor stops at what the writer has stored."""
    p = pipeline.start()
    assert send(p.http_port, "before")
    wait_until(p.drained, timeout=60, what="drained")
    acceptor_id = (acceptor_wal(p) / "acceptor-id").read_text().strip()
    incarnation = int([ln for ln in p.acceptor.log_lines() if ln.get("msg") == "listening"][-1]["incarnation"], 16)
    now = time.time_ns()
    batch = otlp.convert("traces", spans_request("forged", [(now, now + 1)]), otlp.PROTOBUF).tables["traces"]
    client = flight.FlightClient(f"grpc://127.0.0.1:{p.flight_port}")
    for inc in (0, incarnation):
        writer, reader = client.do_put(StreamHeader("traces", acceptor_id).descriptor(), batch.schema)
        writer.write_with_metadata(batch, encode_batch_metadata([(1 << 40, batch.num_rows)], acceptor_id, 1 << 62, inc))
        decode_ack(reader.read().to_pybytes())
        writer.close()
    client.close()
    acked = ["before"] + [n for n in (f"after{i}" for i in range(5)) if send(p.http_port, n)]
    assert len(acked) == 6
    wait_until(p.drained, timeout=60, what="drained")
    assert_exactly_once(p, acked, only_acked=True)  # the forged rows are stored: not a loss
    p.stop()


# -- units ----------------------------------------------------------------------------


def test_entry_format_carries_the_incarnation_and_still_reads_older_entries() -> None:
    window = TimeWindow(1, 2, 3)
    for ct in (otlp.PROTOBUF, otlp.JSON):
        payload = entry_format.encode(b"body", ct, window, 0xDEADBEEF)
        assert payload[0] in (0x05, 0x06)
        content_type, body, got = entry_format.decode(payload)
        assert (content_type, bytes(body), got.as_tuple()) == (ct, b"body", (1, 2, 3))
        assert entry_format.incarnation_of(payload) == 0xDEADBEEF
    legacy = entry_format.encode(b"body", otlp.PROTOBUF, window)
    assert legacy[0] == 0x03 and entry_format.incarnation_of(legacy) == 0
    assert entry_format.incarnation_of(b"\x02{}") == 0
    for bad in (b"\x05" + bytes(30), b"\x07body", b""):
        with pytest.raises(entry_format.EntryFormatError):
            entry_format.incarnation_of(bad)


def test_incarnations_are_random_and_never_zero() -> None:
    values = {identity.new_incarnation() for _ in range(1000)}
    assert len(values) == 1000 and 0 not in values and all(v < 1 << 64 for v in values)


def test_batch_metadata_names_the_incarnation_and_stays_compatible() -> None:
    raw = encode_batch_metadata([(7, 2)], "acc", 5, 0xAB)
    assert json.loads(raw)["incarnation"] == "00000000000000ab"
    assert decode_batch_metadata(raw, 2, "acc").incarnation == 0xAB
    legacy = encode_batch_metadata([(7, 2)], "acc", 5)
    assert "incarnation" not in json.loads(legacy) and decode_batch_metadata(legacy, 2).incarnation == 0
    for bad in ("ab", "0" * 16, "G" * 16, 5, "00000000000000AB"):
        body = json.dumps({"entries": [[7, 2]], "incarnation": bad}).encode()
        with pytest.raises(ProtocolError):
            decode_batch_metadata(body, 2)
    assert source_key("acc", 0) == "acc" and source_key("acc", 0xAB) == "acc/00000000000000ab"


@pytest.mark.parametrize("bad", ["", "a" * 129, "a b", "a/b", "é", "a\n", None, 5])
def test_acceptor_id_rule(bad: object) -> None:
    with pytest.raises(ProtocolError):
        check_acceptor_id(bad)
    assert check_acceptor_id("a" * 128) == "a" * 128 and check_acceptor_id("acc-1.x_y:z") == "acc-1.x_y:z"


def holds(ledger: Ledger, key: tuple[str, str], entry_id: int) -> bool:
    """Whether the ledger counts ``entry_id`` as stored (a duplicate), asked as a batch would."""
    new, duplicates = ledger.reserve(key, [entry_id])
    ledger.release(key, new, stored=False)
    return bool(duplicates)


def test_floors_never_pass_what_the_writer_stored() -> None:
    ledger = Ledger()
    key = ("acc/00000000000000ab", "traces")
    ledger.raise_floor(key[0], 1 << 62, [1])  # nothing stored yet: no floor
    assert ledger.reserve(key, [5]) == ([5], [])
    ledger.release(key, [5], stored=True)
    ledger.complete(key, [5])
    ledger.raise_floor(key[0], 1 << 62, [1 << 40])  # at most highest stored + 1
    assert ledger.reserve(key, [6, 5, 4]) == ([6], [5, 4])
    ledger.release(key, [6], stored=False)
    ledger.raise_floor(key[0], 100, [3])  # never above the batch's smallest id
    assert holds(ledger, key, 3) and not holds(ledger, key, 6) and not holds(ledger, key, 7)
    # Another incarnation of the same acceptor is another source: untouched.
    assert not holds(ledger, ("acc", "traces"), 4) and not holds(ledger, ("acc/00000000000000cd", "traces"), 5)
    # Rebuilt from a snapshot: the bound survives a restart.
    done, floors = ledger.snapshot()
    again = Ledger.from_snapshot(done, floors)
    again.raise_floor(key[0], 1 << 62, [1 << 40])
    assert not holds(again, key, 6) and not holds(again, key, 7)
