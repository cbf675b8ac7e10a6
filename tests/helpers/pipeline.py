"""The whole pipeline as real processes: ``signaldb-writer`` + ``signaldb-acceptor``
on free ports, Parquet on a local directory (or S3), read back with pyarrow and DuckDB.

Used by the end-to-end and whole-pipeline crash tests. The acceptor is pointed
at the writer's fixed Flight port, so either can be killed and restarted on its
own while the other keeps running.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from helpers import iceberg
from helpers.acceptor_proc import AcceptorProcess
from helpers.net import free_port


class WriterProcess(AcceptorProcess):
    """``signaldb-writer`` as a subprocess; same conventions as ``AcceptorProcess``."""

    module = "signaldb.writer.main"
    port_keys = ("flight_port", "health_port")
    addr_env = ("WRITER_FLIGHT_ADDR", "WRITER_HEALTH_ADDR")
    wal_env = "WRITER_WAL_DIR"
    name = "writer"


@dataclass
class Pipeline:
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    storage_url: str | None = None
    writer: WriterProcess | None = None
    acceptor: AcceptorProcess | None = None

    def __post_init__(self) -> None:
        self.flight_port = free_port()
        self.storage_dir = self.workdir / "parquet"
        if self.storage_url is None:
            self.storage_url = f"file://{self.storage_dir}"

        # Every listener gets a fixed port for the pipeline's life, not port 0 at each start: the
        # crash tests restart one service while the other's port is free, and a port-0 bind may be
        # handed exactly that port (a restarted writer's health server once took its own Flight
        # port, and the writer could not start).
        def fixed(proc: type[AcceptorProcess]) -> dict[str, str]:
            return {key: f"127.0.0.1:{free_port()}" for key in proc.addr_env}

        base = {"SIGNALDB_STORAGE_URL": self.storage_url, "WRITER_FILE_MAX_AGE_SECS": "0.5", **self.env}
        self.writer = WriterProcess(
            workdir=self.workdir,
            env={**fixed(WriterProcess), **base, "WRITER_FLIGHT_ADDR": f"127.0.0.1:{self.flight_port}"},
        )
        self.acceptor = AcceptorProcess(
            workdir=self.workdir,
            env={**fixed(AcceptorProcess), **base, "ACCEPTOR_WRITER_ENDPOINTS": f"grpc://127.0.0.1:{self.flight_port}"},
        )

    def start(self) -> Pipeline:
        self.writer.start()
        self.acceptor.start()
        return self

    def stop(self) -> None:
        for proc in (self.acceptor, self.writer):
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop()

    def kill_all(self) -> None:
        for proc in (self.acceptor, self.writer):
            if proc.proc is not None and proc.proc.poll() is None:
                proc.kill()

    def drained(self) -> bool:
        """Everything acknowledged has gone all the way into Parquet."""
        try:
            a = self.acceptor.health()["wal"]["unprocessed_entries"]
            w = self.writer.health()["wal"]["unprocessed_entries"]
        except (OSError, KeyError, ValueError):
            return False
        return a == 0 and w == 0

    # -- reading Parquet back ----------------------------------------------------

    def table(self, name: str) -> pa.Table:
        """Every row of table ``name``: with the embedded catalog, of the files its current
        snapshot references (helpers/iceberg.py), else of every complete file."""
        root = self.storage_dir / name
        committed = iceberg.committed_files(self.storage_dir, name)
        if committed is not None:
            files = committed
        else:
            files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith(".")) if root.exists() else []
        if not files:
            return pa.table({})
        return ds.dataset([str(f) for f in files], format="parquet", partitioning="hive").to_table()

    def rows(self, name: str) -> list[dict]:
        """Rows as dicts, timestamps as int nanoseconds (datetime would truncate them)."""
        from test_otlp_reference import plain_rows

        return [row for batch in self.table(name).to_batches() for row in plain_rows(batch)]

    def count_by(self, table: str, column: str) -> Counter:
        t = self.table(table)
        return Counter(t.column(column).to_pylist()) if t.num_rows else Counter()

    def counts_once_present(
        self, want: set[str], table: str = "traces", column: str = "name", timeout: float = 30.0
    ) -> Counter:
        """``count_by(table, column)`` once every value of ``want`` is there (files of the
        last rows may still be on their way), or after ``timeout`` seconds, whichever is first."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.count_by(table, column)
            if want <= set(got) or time.monotonic() >= deadline:
                return got
            time.sleep(0.2)

    def duckdb(self, sql: str) -> list[tuple]:
        import duckdb

        con = duckdb.connect()
        try:
            return con.execute(sql.replace("{root}", str(self.storage_dir))).fetchall()
        finally:
            con.close()

    def partial_files(self) -> list[Path]:
        """Temp files left behind (names starting with '.')."""
        if not self.storage_dir.exists():
            return []
        return [p for p in self.storage_dir.rglob("*") if p.is_file() and p.name.startswith(".")]


def show_logs_if_failed(request, pipeline: Pipeline, tail: int = 5000) -> None:
    """In a fixture's or test's teardown: print both services' logs when the test failed."""
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for proc in (pipeline.writer, pipeline.acceptor):
            print(f"--- {proc.name} log (start {proc.starts}) ---\n{proc.log_text()[-tail:]}")


def python() -> str:
    return sys.executable


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, **kwargs)
