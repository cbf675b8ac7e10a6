"""Run ``signaldb-acceptor`` as a real subprocess for tests.

Ports are 0 (the service picks free ones) and learned from its ``listening``
log line; the log is kept in a file and shown when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class AcceptorProcess:
    """``signaldb-acceptor`` as a subprocess (``WriterProcess`` reuses all of it)."""

    module = "signaldb.acceptor.main"
    port_keys = ("grpc_port", "http_port", "health_port")
    addr_env = ("ACCEPTOR_GRPC_ADDR", "ACCEPTOR_HTTP_ADDR", "ACCEPTOR_HEALTH_ADDR")
    wal_env = "ACCEPTOR_WAL_DIR"
    name = "acceptor"

    workdir: Path
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)
    log_path: Path | None = None
    starts: int = 0
    prefix: list[str] = field(default_factory=list)  # e.g. ["prlimit", "--nofile=512:512", "--"]

    @classmethod
    def ephemeral_addrs(cls) -> dict[str, str]:
        """Port 0 for every listener: for a second process made from another's env."""
        return {key: "127.0.0.1:0" for key in cls.addr_env}

    def start(self, wait: bool = True, timeout: float = 30.0) -> AcceptorProcess:
        self.starts += 1
        self.log_path = self.workdir / f"{self.name}-{self.starts}.log"
        env = {**os.environ, **self.env}
        for key in self.addr_env:
            env.setdefault(key, "127.0.0.1:0")
        env.setdefault(self.wal_env, str(self.workdir / ("wal" if self.name == "acceptor" else f"{self.name}-wal")))
        # Most fixtures carry fixed 2023 timestamps, older than the default 7-day window:
        # no lower bound unless a test sets one (the time-window tests do).
        env.setdefault("ACCEPTOR_MAX_AGE_SECS", "0")
        with open(self.log_path, "wb") as log:  # the child has its own descriptor
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", self.module, *self.args],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_listening(timeout)
        return self

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if line.get("msg") == "listening" and all(k in line for k in self.port_keys):
                    self.ports = {k: line[k] for k in self.port_keys}
                    return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not start within {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_lines(self) -> list[dict]:
        lines = []
        for raw in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
        return lines

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports['grpc_port']}"

    def http_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['http_port']}{path}"

    def health_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['health_port']}{path}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.health_url(path), timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def health(self) -> dict:
        return json.loads(self.get("/health")[1])

    def metrics(self) -> str:
        return self.get("/metrics")[1].decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric_name = head.split("{", 1)[0]
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    # Past the services' own shutdown budgets (writer 30 s, acceptor 20 s by default): a stop
    # that uses all of its budget still ends in time.
    def stop(self, sig: int = signal.SIGTERM, timeout: float = 45.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not stop within {timeout}s:\n{self.log_text()}") from None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
