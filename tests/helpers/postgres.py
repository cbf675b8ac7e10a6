"""A real PostgreSQL server for tests (Debian's ``postgresql`` package, `make system-deps`).

One server per test session (the ``postgres`` fixture in conftest.py), started only when a
test asks for it; each test gets its own database from ``create_database()``. The server
lives in a temporary directory, listens on 127.0.0.1 on a free port and keeps its unix socket
in that directory, so it never meets a system PostgreSQL or another session's server.
Authentication is ``trust``: the server is reachable from loopback only, for the tests' life.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pathlib
import pwd
import shutil
import subprocess
import time

import pytest

from helpers.net import free_port

SUPERUSER = "postgres"


def _bin_dir() -> pathlib.Path:
    """The newest Debian PostgreSQL binaries (/usr/lib/postgresql/<version>/bin).

    Not ``pg_ctl`` from PATH: Debian puts only wrappers there (pg_ctlcluster), and anything
    else found on PATH is an accident of the machine."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(pathlib.Path(p).parent.parent.name.split(".")[0]),
    )
    if not found:
        pytest.fail(
            "PostgreSQL server binaries missing (/usr/lib/postgresql/*/bin/initdb): "
            "run `make system-deps` as root (Debian package postgresql)"
        )
    return pathlib.Path(found[-1]).parent


class Postgres:
    """A PostgreSQL server in ``directory``; ``start()``/``stop()`` may be called repeatedly
    (the catalog-outage tests stop it mid-test and start it again over the same data).

    As root, ``directory`` must be reachable by the ``postgres`` OS user: pytest's base temp
    dirs are 0700 root, so the fixture uses a directory of its own under /tmp."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.bin = _bin_dir()
        self.dir = directory
        self.data = directory / "data"
        self.socket_dir = directory / "run"
        self.log = directory / "postgres.log"
        self.port = free_port()
        self._names = itertools.count(1)
        # initdb and postgres refuse to run as root: as root, run them as the `postgres` OS
        # user the Debian package creates, and hand it the directory.
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root needs the `postgres` OS user (Debian package postgresql)")
            self._as_user = ["runuser", "-u", "postgres", "--"]
            self._uid, self._gid = pw.pw_uid, pw.pw_gid

    @property
    def version(self) -> str:
        return self.bin.parent.name

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._as_user + args, capture_output=True, text=True, timeout=timeout, cwd=self.dir)

    def _chown(self, path: pathlib.Path) -> None:
        if self._as_user:
            os.chown(path, self._uid, self._gid)

    def init(self) -> None:
        """initdb into a fresh data directory (trust auth, superuser ``postgres``)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        for path in (self.dir, self.socket_dir):
            self._chown(path)
        done = self._run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--no-sync"],
            timeout=120,
        )
        if done.returncode != 0:
            pytest.fail(f"initdb failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def start(self, timeout: float = 60.0) -> None:
        """Starts the server (initdb first if there is no data directory); returns once it
        accepts connections, or fails the test after ``timeout`` seconds."""
        if not (self.data / "PG_VERSION").exists():
            self.init()
        # -w: pg_ctl waits for the server to accept connections (bounded by -t).
        done = self._run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(int(timeout)),
                "-o",
                f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                # A test server: no fsync (its data is thrown away; a killed server keeps
                # what the OS has), but synchronous_commit stays on: with it off a commit
                # the client was told about is lost when the server is killed (kill()),
                # and SignalDB rightly trusts an acknowledged catalog commit.
                "-c fsync=off -c full_page_writes=off "
                "-c max_connections=100",
                "start",
            ],
            timeout=timeout + 10,
        )
        if done.returncode != 0:
            pytest.fail(
                f"pg_ctl start failed ({done.returncode}): {done.stdout[-1000:]}{done.stderr[-1000:]}\n"
                f"{self.log_text()[-2000:]}"
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            done = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-t", "2"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if done.returncode == 0:
                return
            last = done.stdout + done.stderr
            time.sleep(0.1)
        pytest.fail(
            f"PostgreSQL not ready on 127.0.0.1:{self.port} after {timeout} s: {last}\n{self.log_text()[-2000:]}"
        )

    def running(self) -> bool:
        return self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "status"], timeout=30).returncode == 0

    def stop(self, timeout: float = 30.0) -> None:
        """``pg_ctl stop -m fast`` (disconnects clients, clean shutdown); SIGKILL of the
        postmaster if that does not finish within ``timeout`` seconds."""
        if not (self.data / "postmaster.pid").exists():
            return
        try:
            done = self._run(
                [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"],
                timeout=timeout + 10,
            )
            if done.returncode == 0:
                return
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL of the postmaster (a crash, not a shutdown); its children exit on their own."""
        pid_file = self.data / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (the form pyiceberg's SQL catalog takes as ``uri``)."""
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [
                str(self.bin / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, prefix: str = "test") -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
