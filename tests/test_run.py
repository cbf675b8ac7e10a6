"""`signaldb run`: writer + acceptor supervised together on one machine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from helpers.net import free_port, wait_until
from helpers.pipeline import Pipeline
from test_acceptor_bad_input import trace_request


class Run:
    def __init__(self, workdir: Path, extra: list[str] | None = None, flight_port: int = 0) -> None:
        self.workdir = workdir
        self.storage = workdir / "parquet"
        args = [
            "run",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--acceptor-health-addr",
            "127.0.0.1:0",
            "--writer-health-addr",
            "127.0.0.1:0",
            "--flight-addr",
            f"127.0.0.1:{flight_port}",
            "--storage-url",
            f"file://{self.storage}",
            "--acceptor-wal-dir",
            str(workdir / "wal-a"),
            "--writer-wal-dir",
            str(workdir / "wal-w"),
            *(extra or []),
        ]
        # ACCEPTOR_MAX_AGE_SECS=0: the requests carry fixed 2023 times (see helpers/acceptor_proc.py)
        env = {**os.environ, "WRITER_FILE_MAX_AGE_SECS": "0.3", "ACCEPTOR_MAX_AGE_SECS": "0"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "signaldb.cli", *args],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(10)
        self.proc.stderr.close()

    def _read(self) -> None:
        for raw in self.proc.stderr:
            text = raw.decode(errors="replace")
            self.raw.append(text)
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(text))

    def listening(self, service: str, count: int = 1) -> dict:
        wait_until(lambda: len(self._listening(service)) >= count, timeout=60, what=f"{service} listening")
        return self._listening(service)[count - 1]

    def _listening(self, service: str) -> list[dict]:
        return [ln for ln in list(self.lines) if ln.get("msg") == "listening" and ln.get("service") == service]

    def post(self, port: int, name: str) -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/traces",
            data=trace_request(2, name),
            headers={"Content-Type": "application/x-protobuf"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status

    def names(self) -> list[str]:
        p = Pipeline.__new__(Pipeline)
        p.storage_dir = self.storage
        return [r["name"] for r in p.rows("traces")] if self.storage.exists() else []


def test_run_serves_restarts_a_dead_child_and_stops_on_ctrl_c(tmp_path):
    run = Run(tmp_path, flight_port=free_port())
    try:
        acceptor = run.listening("acceptor")
        writer = run.listening("writer")
        assert run.post(acceptor["http_port"], "first") == 200
        wait_until(lambda: sorted(run.names()) == ["first-0", "first-1"], timeout=30, what="first in Parquet")

        os.kill(_child_pid(run, "writer"), signal.SIGKILL)
        restarted = run.listening("writer", count=2)
        assert restarted["flight_port"] == writer["flight_port"]
        assert run.post(acceptor["http_port"], "second") == 200  # the acceptor kept running
        wait_until(lambda: {"second-0", "second-1"} <= set(run.names()), timeout=60, what="second in Parquet")

        run.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert run.proc.wait(60) == 0
        text = "".join(run.raw)
        assert '"msg": "signaldb stopped"' in text and text.count('"msg": "stopped"') >= 2
        assert sorted(run.names()) == ["first-0", "first-1", "second-0", "second-1"]
    finally:
        run.close()


def _child_pid(run: Run, child: str) -> int:
    return next(
        int(ln["child_pid"])
        for ln in reversed(run.lines)
        if ln.get("msg") == "child started" and ln.get("child") == child
    )


def test_run_stops_both_with_a_clear_message_when_a_child_keeps_dying(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the writer's WAL directory should be")
    run = Run(tmp_path, ["--writer-wal-dir", str(blocker / "wal")])
    try:
        code = run.proc.wait(120)
    finally:
        run.close()
    text = "".join(run.raw)
    assert code == 1
    assert "signaldb run: the writer exited" in text and "stopping both" in text


def test_run_refuses_bad_configuration(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "signaldb.cli", "run", "--sync-mode", "never"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 2 and out.stderr.startswith("configuration error: wal.sync_mode:")


def test_run_passes_sighup_on_to_both_children(tmp_path):
    run = Run(tmp_path, flight_port=free_port())
    try:
        acceptor = run.listening("acceptor")
        run.listening("writer")
        run.proc.send_signal(signal.SIGHUP)

        def reloaded() -> set:
            return {ln.get("service") for ln in list(run.lines) if ln.get("msg") == "SIGHUP: configuration reloaded"}

        wait_until(lambda: reloaded() == {"acceptor", "writer"}, timeout=30, what="both children reloaded")
        assert run.proc.poll() is None
        assert run.post(acceptor["http_port"], "after-hup") == 200
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(60) == 0
    finally:
        run.close()
