"""Structured logs: one JSON object per line on stderr.

``log.info("forwarded", extra={"entries": 12, "writer": url})`` becomes
``{"ts": "...", "level": "info", "service": "acceptor", "logger": "...",
"msg": "forwarded", "entries": 12, "writer": "grpc://..."}``. The Rust core
logs through the same handlers (pyo3-log), so WAL recovery lines such as
``WAL corruption ...`` and ``WAL replay: N/M entries`` appear here too.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


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
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(level: str, service: str) -> None:
    """Routes all logging (Python and the Rust core) to JSON lines on stderr.

    Call before opening a WAL: the Rust side caches logger levels."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter stays at warning unless we are debugging.
    for noisy in ("aiohttp.access", "grpc", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
