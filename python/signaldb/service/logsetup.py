"""Logs: JSON lines for machines, one readable line per record on a terminal.

``log.info("forwarded", extra={"entries": 12, "writer": url})`` becomes
``{"ts": "...", "level": "info", "service": "acceptor", "logger": "...",
"msg": "forwarded", "entries": 12, "writer": "grpc://..."}`` on stderr, or,
when stderr is a terminal (``make run``), ``12:00:01.234 INFO  acceptor
forwarded entries=12 writer=grpc://...``. ``SIGNALDB_LOG_FORMAT`` (setting
``log_format``) forces ``json`` or ``text``; ``auto`` (the default) picks by
the terminal. The Rust core logs through the same handlers (pyo3-log), so WAL
recovery lines such as ``WAL corruption ...`` appear here too, with their
values as fields (``segment``, ``offset``, ...).

gRPC's C core (grpcio, and the copy inside pyarrow's Flight) writes its own
plain-text lines to stderr (``E1205 ... hpack_parser.cc:1048] Error parsing
'grpc-encoding' metadata``), which would break a JSON-lines stream. With JSON
logs, ``quiet_grpc_core`` sets ``GRPC_VERBOSITY=NONE`` before grpc is first
imported (it reads the variable once, at import), unless the operator set
``GRPC_VERBOSITY`` themselves (then they get its lines, in its format).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

FORMATS = ("auto", "json", "text")

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


def resolve_format(setting: str | None = None) -> str:
    """``json`` or ``text``: the setting (or $SIGNALDB_LOG_FORMAT), ``auto`` by the terminal."""
    fmt = (setting or os.environ.get("SIGNALDB_LOG_FORMAT") or "auto").strip().lower()
    if fmt == "auto":
        try:
            return "text" if sys.stderr.isatty() else "json"
        except (AttributeError, ValueError):  # no stderr, or a closed one
            return "json"
    return fmt if fmt in ("json", "text") else "json"


def quiet_grpc_core() -> None:
    """Keeps gRPC's C-core lines out of a JSON log stream (see the module doc). Must run
    before ``import grpc`` anywhere in the process: the service packages call it first."""
    if "GRPC_VERBOSITY" not in os.environ and resolve_format() == "json":
        os.environ["GRPC_VERBOSITY"] = "NONE"


# Loggers of the Rust core (pyo3-log names them after the crate and module).
_RUST_LOGGERS = ("signaldb_wal", "signaldb_otlp", "signaldb_native")


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {}
    rust = record.name.startswith(_RUST_LOGGERS)
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            # pyo3-log hands the Rust core's key-values over as strings: numbers become numbers again.
            fields[key] = _number(value) if rust and isinstance(value, str) else value
    return fields


def _number(text: str) -> object:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text) if any(c.isdigit() for c in text) else text
    except ValueError:
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def render_text(line: dict[str, object]) -> str:
    """One JSON log line (as a dict) as a human line: time, level, service, message, key=value."""
    ts = str(line.get("ts", ""))
    try:
        when = datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        when = ts
    level = str(line.get("level", "")).upper()
    head = f"{when} {level:<7} {line.get('service', '')} {line.get('msg', '')}"
    rest = []
    error = None
    for key, value in line.items():
        if key in ("ts", "level", "service", "logger", "msg"):
            continue
        if key == "error" and isinstance(value, str) and "\n" in value:
            error = value  # a traceback: below the line, as Python prints it
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if isinstance(value, str) and (not value or any(c in value for c in ' "=')):
            text = json.dumps(value)
        rest.append(f"{key}={text}")
    out = " ".join([head, *rest])
    return f"{out}\n{error}" if error else out


class TextFormatter(JsonFormatter):
    """The same record as ``JsonFormatter``, rendered for a person."""

    def format(self, record: logging.LogRecord) -> str:
        return render_text(json.loads(super().format(record)))


def setup_logging(level: str, service: str, fmt: str | None = None) -> None:
    """Routes all logging (Python and the Rust core) to stderr, as JSON lines or text lines.

    Call before opening a WAL: the Rust side caches logger levels."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter(service) if resolve_format(fmt) == "text" else JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    """Sets the log level (at start, and again on SIGHUP)."""
    logging.getLogger().setLevel(level.upper())
    # Third-party chatter stays at warning unless we are debugging.
    for noisy in ("aiohttp.access", "grpc", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
