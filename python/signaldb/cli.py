"""``signaldb run``: the writer and the acceptor together on one machine, supervised.

The writer starts first (the acceptor has somewhere to forward to from its first
second), then the acceptor, pointed at the port the writer actually bound. Both
run as child processes in their own session, so Ctrl-C reaches only this
supervisor, which then stops them in order: the acceptor first (stop taking
requests, finish in-flight ones, close its WAL), then the writer (write out
open Parquet files, close its WAL). A child that dies is restarted with
backoff; one that dies more than ``MAX_RESTARTS`` times in ``RESTART_WINDOW_SECS``,
or exits with a configuration error, stops both with a message that says which
and why. Children get SIGTERM if the supervisor itself is killed (PDEATHSIG).

Their JSON log lines pass through to this process's stderr unchanged, or
rendered as text lines when this process logs text (a terminal, ``make run``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from signaldb.config import FLAGS, Config, ConfigError, add_flags, flag_dest, load
from signaldb.service.lifecycle import EXIT_CONFIG, EXIT_UNDRAINED
from signaldb.service.logsetup import render_text, resolve_format, setup_logging

_text_logs = False  # set in main(): render the children's JSON lines as text
log = logging.getLogger("signaldb.run")

MAX_RESTARTS = 5
RESTART_WINDOW_SECS = 60.0
START_TIMEOUT_SECS = 120.0  # replaying a large WAL can take a while
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the supervisor dies."""
    with contextlib.suppress(OSError):  # not Linux: children then outlive a SIGKILLed supervisor
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One supervised service process."""

    def __init__(self, name: str, argv: list[str], on_line: Callable[[Child, dict[str, Any]], None]) -> None:
        self.name = name
        self.argv = argv
        self._on_line = on_line
        self.proc: subprocess.Popen[bytes] | None = None
        self.exits: deque[float] = deque()
        self.listening = threading.Event()
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        self.listening.clear()
        # JSON logs whatever this process shows: the supervisor reads them (ports, failures).
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "SIGNALDB_LOG_FORMAT": "json"},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=self._pump, args=(self.proc,), name=f"{self.name}-log", daemon=True).start()
        log.info("child started", extra={"child": self.name, "child_pid": self.proc.pid})

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = None
            if _text_logs and isinstance(line, dict):
                # The children always log JSON (their stderr is this pipe); on a terminal we show text.
                sys.stderr.write(render_text(line) + "\n")
                sys.stderr.flush()
            else:
                sys.stderr.buffer.write(raw)
                sys.stderr.buffer.flush()
            if isinstance(line, dict):
                self._on_line(self, line)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("did not stop in time; killing it", extra={"child": self.name, "timeout_secs": timeout})
            self.proc.kill()
            return self.proc.wait()


class Supervisor:
    def __init__(self, config: Config, writer_argv: list[str], acceptor_argv: list[str]) -> None:
        self.config = config
        self.writer = Child("writer", writer_argv, self._on_line)
        self.acceptor_base = acceptor_argv
        self.acceptor = Child("acceptor", acceptor_argv, self._on_line)
        self.stop_requested = threading.Event()
        self.failure: str | None = None

    def reload(self) -> None:
        for child in (self.writer, self.acceptor):
            if child.alive():
                assert child.proc is not None
                child.proc.send_signal(signal.SIGHUP)

    def _on_line(self, child: Child, line: dict[str, Any]) -> None:
        if line.get("msg") == "listening":
            child.ports = {k: v for k, v in line.items() if k.endswith("_port") and isinstance(v, int)}
            child.listening.set()

    def run(self) -> int:
        try:
            self._start(self.writer)
            self._point_acceptor_at_writer()
            self._start(self.acceptor)
            log.info(
                "signaldb is running", extra={"writer_ports": self.writer.ports, "acceptor_ports": self.acceptor.ports}
            )
            self._watch()
        except _Stop as stop:
            self.failure = str(stop)
        finally:
            self._stop_all()
        if self.failure:
            print(f"signaldb run: {self.failure}", file=sys.stderr)
            return 1
        return 0

    def _point_acceptor_at_writer(self) -> None:
        # The writer may have picked its port (0): the acceptor forwards to the one it bound.
        if "acceptor.writer_endpoints" in _explicit_keys(self.config):
            return
        host = self.config.writer.flight_addr.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        scheme = "grpc+tls" if self.config.security.tls else "grpc"
        endpoint = f"{scheme}://{host}:{self.writer.ports['flight_port']}"
        self.acceptor.argv = [*self.acceptor_base, "--writer-endpoints", endpoint]

    def _start(self, child: Child) -> None:
        child.start()
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while not child.listening.wait(0.1):
            if self.stop_requested.is_set():
                raise _Stop("")
            if not child.alive():
                self._note_exit(child)
                child.start()
            if time.monotonic() > deadline:
                raise _Stop(f"the {child.name} did not start within {START_TIMEOUT_SECS:.0f}s")

    def _watch(self) -> None:
        while not self.stop_requested.wait(0.2):
            for child in (self.writer, self.acceptor):
                if not child.alive():
                    self._note_exit(child)
                    log.warning("restarting", extra={"child": child.name})
                    flight_port = self.writer.ports.get("flight_port")
                    self._start(child)
                    if child is self.writer and self.writer.ports.get("flight_port") != flight_port:
                        # A writer on port 0 came back elsewhere: move the acceptor with it.
                        self.acceptor.terminate(self.config.acceptor.shutdown_timeout_secs + 5)
                        self._point_acceptor_at_writer()
                        self._start(self.acceptor)

    def _note_exit(self, child: Child) -> None:
        assert child.proc is not None
        code = child.proc.returncode
        if code == EXIT_CONFIG:
            raise _Stop(f"the {child.name} refused its configuration (exit code {code}); see its message above")
        now = time.monotonic()
        child.exits.append(now)
        while child.exits and now - child.exits[0] > RESTART_WINDOW_SECS:
            child.exits.popleft()
        log.error("child exited", extra={"child": child.name, "exit_code": code, "exits_in_window": len(child.exits)})
        if len(child.exits) > MAX_RESTARTS:
            raise _Stop(
                f"the {child.name} exited {len(child.exits)} times within {RESTART_WINDOW_SECS:.0f}s "
                f"(last exit code {code}); stopping both. See its log lines above."
            )
        time.sleep(min(2 ** (len(child.exits) - 1) * 0.5, 10.0))  # backoff before the restart

    def _stop_all(self) -> None:
        # Order matters: the acceptor stops forwarding before the writer goes away.
        if self.acceptor.terminate(self.config.acceptor.shutdown_timeout_secs + 5) == EXIT_UNDRAINED:
            log.warning("the acceptor stopped with entries in its WAL; the next `signaldb run` forwards them")
        if self.writer.terminate(self.config.writer.shutdown_timeout_secs + 5) == EXIT_UNDRAINED:
            # Nothing is lost, but the data directory now holds the only copy: say so on the way out.
            log.warning("the writer stopped with entries in its WAL; the next `signaldb run` writes them")
        log.info("signaldb stopped")


class _Stop(Exception):
    pass


def _explicit_keys(config: Config) -> set[str]:
    return {key for key, source in config.sources.items() if source != "default"}


def _child_argv(module: str, command: str, args: argparse.Namespace, run_flags: dict[str, str]) -> list[str]:
    """The child's command line: the same --config plus the run flags that apply to it."""
    argv = [sys.executable, "-m", module]
    if args.config:
        argv += ["--config", args.config]
    child_flags = {key: flag for flag, key in FLAGS[command].items()}
    for flag, key in run_flags.items():
        value = getattr(args, flag_dest(flag), None)
        if value is not None and key in child_flags and key != "log_format":  # children log JSON
            argv += [f"--{child_flags[key]}", value]
    return argv


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="signaldb", description="SignalDB: durable OpenTelemetry ingest.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="writer + acceptor together on this machine, local storage",
        description="Runs signaldb-writer and signaldb-acceptor as supervised child processes. "
        "Ctrl-C stops both cleanly.",
    )
    add_flags(run, "run")
    maintain = sub.add_parser(
        "maintain",
        help="Iceberg table maintenance once (compaction, retention, "
        "snapshot expiry, orphan cleanup), e.g. as a Kubernetes CronJob",
        description="Runs writer/maintenance.py once over every table of the catalog and "
        "prints what it did as JSON. Exit code 1 when a step failed.",
    )
    add_flags(maintain, "maintain")
    maintain.add_argument("--table", action="append", default=None, help="only this table (repeatable)")
    return p


def maintain(config: Config, tables: list[str] | None) -> int:
    """``signaldb maintain``: one maintenance run; the writer id in compacted file names is
    ``maintain-<host>``."""
    import socket

    from signaldb.service.metrics import new_registry
    from signaldb.writer.maintenance import Maintenance
    from signaldb.writer.metrics import WriterMetrics

    if not config.catalog.enabled:
        print("signaldb maintain: storage.catalog_url is none: there are no tables to maintain", file=sys.stderr)
        return EXIT_CONFIG
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())[:40] or "host"
    job = Maintenance(config, f"maintain-{host}", WriterMetrics(new_registry("maintain")))
    reports = job.run_once(tables)
    print(json.dumps([r.as_dict() for r in reports], indent=1))
    return 1 if any(r.errors for r in reports) else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = load(args, args.command)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_level, args.command, config.log_format)
    if args.command == "maintain":
        return maintain(config, args.table)
    global _text_logs
    _text_logs = resolve_format(config.log_format) == "text"
    supervisor = Supervisor(
        config,
        _child_argv("signaldb.writer.main", "writer", args, FLAGS["run"]),
        _child_argv("signaldb.acceptor.main", "acceptor", args, FLAGS["run"]),
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: supervisor.stop_requested.set())
    # SIGHUP reloads (docs/operations.md, Signals): passed on to both children, which reread the file.
    signal.signal(signal.SIGHUP, lambda *_: supervisor.reload())
    log.info("starting", extra={"pid": os.getpid(), "storage": config.storage_url})
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
