"""Service configuration: one table of settings, four layers.

Precedence (DESIGN.md): defaults < TOML file < environment < command-line flags.
Every setting is declared once in ``SETTINGS`` with its TOML key, its
environment variable, its type and its check; ``load()`` resolves the layers
and returns a typed, frozen ``Config``. An unknown TOML key, an unparsable or
out-of-range value, or a bad combination is a ``ConfigError`` whose message
starts with the key (e.g. ``wal.sync_mode: must be one of immediate,
batched; got 'sometimes'``), and the services turn it into a startup error.

```python
from signaldb.config import load, add_flags
parser = argparse.ArgumentParser(); add_flags(parser, "acceptor")
cfg = load(parser.parse_args(), service="acceptor")
cfg.acceptor.grpc_addr        # Address(host='127.0.0.1', port=4317)
cfg.wal_for("acceptor")       # WalConfig with the acceptor's wal_dir
```
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signaldb.wal import Wal


class ConfigError(ValueError):
    """A configuration value (or combination) that the services refuse to start with."""


@dataclass(frozen=True)
class Address:
    """A ``host:port`` listen or connect address; port 0 picks a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --- value parsers: each takes the raw value (TOML type or string) and returns the typed one ---


def _int(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError(f"must be an integer; got {raw!r}")
        if isinstance(raw, str):
            try:
                raw = int(raw.strip().replace("_", ""), 10)
            except ValueError:
                raise ValueError(f"must be an integer; got {raw!r}") from None
        if not isinstance(raw, int):
            raise ValueError(f"must be an integer; got {raw!r}")
        if raw < minimum or (maximum is not None and raw > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise ValueError(f"must be {bound}; got {raw}")
        return raw

    return parse


def _float(minimum: float, maximum: float) -> Callable[[Any], float]:
    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError(f"must be a number; got {raw!r}")
        try:
            value = float(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number; got {raw!r}") from None
        if not (minimum <= value <= maximum):  # also refuses NaN
            raise ValueError(f"must be between {minimum:g} and {maximum:g}; got {raw!r}")
        return value

    return parse


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower() if isinstance(raw, str) else raw
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {raw!r}")
        return value

    return parse


def _string(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"must be a string; got {raw!r}")
    return raw


def _optional_string(raw: Any) -> str | None:
    value = _string(raw)
    return value if value != "" else None


def _path(raw: Any) -> Path:
    value = _string(raw)
    if not value.strip():
        raise ValueError("must not be empty")
    return Path(value)


def _address(raw: Any) -> Address:
    value = _string(raw).strip()
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be HOST:PORT; got {raw!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bad IPv6 address in {raw!r}") from None
    elif ":" in host:
        raise ValueError(f"IPv6 hosts go in brackets ([::1]:4317); got {raw!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0-65535; got {raw!r}")
    return Address(host, int(port_text))


# dns://name:port: every address the name resolves to is a writer (signaldb.acceptor.writer_set).
ENDPOINT_SCHEMES = ("grpc://", "grpc+tcp://", "grpc+tls://", "dns://")


def _endpoints(raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ValueError(f"must be a list of grpc:// URLs or a comma-separated string; got {raw!r}")
    endpoints: list[str] = []
    for item in items:
        url = _string(item).strip()
        if not url.startswith(ENDPOINT_SCHEMES):
            raise ValueError(f"each endpoint must start with {', '.join(ENDPOINT_SCHEMES)}; got {item!r}")
        address = _address(url.split("://", 1)[1])
        if url.startswith("dns://") and address.port == 0:
            raise ValueError(f"a dns:// endpoint needs the writers' port; got {item!r}")
        endpoints.append(url)
    if not endpoints:
        raise ValueError("needs at least one endpoint")
    if len(set(endpoints)) != len(endpoints):
        raise ValueError(f"lists an endpoint twice: {raw!r}")
    return tuple(endpoints)


def _origins(raw: Any) -> tuple[str, ...]:
    """CORS origins: ``scheme://host[:port]``, one ``*`` wildcard in the host, or ``*`` alone."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ValueError(f"must be a list of origins or a comma-separated string; got {raw!r}")
    origins = tuple(_string(item).strip() for item in items if _string(item).strip())
    for origin in origins:
        if origin != "*" and (not re.fullmatch(r"https?://[^/?#\s]+", origin) or origin.count("*") > 1):
            raise ValueError(
                f"each origin must be * or http(s)://host[:port] (one * allowed in the host); got {origin!r}"
            )
    return origins


def _header_names(raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ValueError(f"must be a list of header names or a comma-separated string; got {raw!r}")
    names = tuple(_string(item).strip().lower() for item in items if _string(item).strip())
    for name in names:
        if name != "*" and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9a-z-]+", name):
            raise ValueError(f"not a header name: {name!r}")
    return names


def _catalog_url(raw: Any) -> str:
    url = _string(raw).strip()
    if url in ("", "none") or url.startswith(
        ("sqlite:///", "postgresql://", "postgresql+psycopg2://", "http://", "https://")
    ):
        return url
    raise ValueError(f"must be sqlite:///PATH, postgresql://..., http(s)://... or none; got {raw!r:.200}")


def _storage_url(raw: Any) -> str:
    url = _string(raw).strip()
    if url.startswith("file://"):
        if not url[len("file://") :]:
            raise ValueError("file:// needs a path, e.g. file://.data or file:///var/lib/signaldb")
    elif url.startswith("s3://"):
        bucket = url[len("s3://") :].split("/", 1)[0]
        if not bucket:
            raise ValueError(f"s3:// needs a bucket, e.g. s3://bucket/prefix; got {raw!r}")
    else:
        raise ValueError(f"must start with file:// or s3://; got {raw!r}")
    return url


@dataclass(frozen=True)
class Setting:
    key: str  # dotted TOML key; also the name used in error messages
    default: Any
    parse: Callable[[Any], Any]
    env: str | None = None
    help: str = ""


MIB = 1 << 20

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "log_level",
        "info",
        _choice("debug", "info", "warning", "error"),
        "SIGNALDB_LOG_LEVEL",
        "log verbosity; debug shows per-entry WAL activity",
    ),
    Setting(
        "log_format",
        "auto",
        _choice("auto", "json", "text"),
        "SIGNALDB_LOG_FORMAT",
        "json: JSON lines; text: one readable line per record; auto: text on a terminal, else json",
    ),
    Setting("wal.max_segment_size", MIB, _int(4096, 1 << 31), "WAL_MAX_SEGMENT_SIZE", "max bytes per segment file"),
    Setting(
        "wal.max_buffer_entries",
        1000,
        _int(1, 1_000_000),
        "WAL_MAX_BUFFER_ENTRIES",
        "max entries per group commit / buffered before a forced flush",
    ),
    Setting(
        "wal.flush_interval_secs",
        10.0,
        _float(0.001, 86400),
        "WAL_FLUSH_INTERVAL_SECS",
        "longest an entry nobody waits on stays unflushed",
    ),
    Setting(
        "wal.sync_mode",
        "immediate",
        _choice("immediate", "batched"),
        "WAL_SYNC_MODE",
        "immediate: ack after fsync; batched: ack after write",
    ),
    Setting(
        "wal.max_backlog_bytes",
        1 << 30,
        _int(0),
        "WAL_MAX_BACKLOG_BYTES",
        "unprocessed bytes above which the service pushes back (503 / UNAVAILABLE)",
    ),
    Setting("wal.acceptor.wal_dir", ".wal/acceptor", _path, "ACCEPTOR_WAL_DIR", "acceptor WAL directory"),
    Setting("wal.writer.wal_dir", ".wal/writer", _path, "WRITER_WAL_DIR", "writer WAL directory"),
    Setting("acceptor.grpc_addr", "127.0.0.1:4317", _address, "ACCEPTOR_GRPC_ADDR", "OTLP/gRPC listen address"),
    Setting("acceptor.http_addr", "127.0.0.1:4318", _address, "ACCEPTOR_HTTP_ADDR", "OTLP/HTTP listen address"),
    Setting(
        "acceptor.health_addr", "127.0.0.1:8080", _address, "ACCEPTOR_HEALTH_ADDR", "health and metrics listen address"
    ),
    Setting(
        "acceptor.writer_endpoints",
        "grpc://127.0.0.1:50061",
        _endpoints,
        "ACCEPTOR_WRITER_ENDPOINTS",
        "comma-separated writer Flight endpoints: grpc://, grpc+tls://, or dns://NAME:PORT (every address of NAME)",
    ),
    Setting(
        "acceptor.writer_failover_secs",
        300.0,
        _float(0, 30 * 86400),
        "ACCEPTOR_WRITER_FAILOVER_SECS",
        "after this long unreachable, a writer's entries go to the next writer (needs a catalog); 0: never",
    ),
    Setting(
        "acceptor.writer_dns_refresh_secs",
        30.0,
        _float(1, 86400),
        "ACCEPTOR_WRITER_DNS_REFRESH_SECS",
        "how often dns://name:port writer endpoints are resolved again",
    ),
    Setting(
        "acceptor.max_request_bytes",
        64 * MIB,
        _int(1024, 1 << 31),
        "ACCEPTOR_MAX_REQUEST_BYTES",
        "largest OTLP request body after decompression",
    ),
    Setting(
        "acceptor.max_converted_bytes",
        256 * MIB,
        _int(MIB, 1 << 30),
        "ACCEPTOR_MAX_CONVERTED_BYTES",
        "largest size a request's rows may reach once resource/scope fields are repeated on each row",
    ),
    Setting(
        "acceptor.max_future_secs",
        3600.0,
        _float(0, 10 * 365 * 86400),
        "ACCEPTOR_MAX_FUTURE_SECS",
        "items timed further in the future are rejected (partial success)",
    ),
    Setting(
        "acceptor.max_age_secs",
        7 * 86400.0,
        _float(0, 100 * 365 * 86400),
        "ACCEPTOR_MAX_AGE_SECS",
        "items older than this are rejected (partial success); 0 accepts any age",
    ),
    Setting(
        "acceptor.forward_batch_entries",
        500,
        _int(1, 100_000),
        "ACCEPTOR_FORWARD_BATCH_ENTRIES",
        "WAL entries the forwarder converts and sends per round",
    ),
    Setting(
        "acceptor.forward_batch_bytes",
        8 * MIB,
        _int(1024, 1 << 30),
        "ACCEPTOR_FORWARD_BATCH_BYTES",
        "raw request bytes the forwarder takes per round (at least one entry)",
    ),
    Setting(
        "acceptor.dead_letter_dir",
        "",
        _optional_string,
        "ACCEPTOR_DEAD_LETTER_DIR",
        "where entries the writer rejects go (default: <acceptor wal_dir>/dead-letter)",
    ),
    Setting(
        "acceptor.shutdown_timeout_secs",
        20.0,
        _float(0.1, 3600),
        "ACCEPTOR_SHUTDOWN_TIMEOUT_SECS",
        "longest SIGTERM waits for in-flight requests before closing",
    ),
    Setting(
        "acceptor.max_header_bytes",
        16 * 1024,
        _int(1024, 1 << 20),
        "ACCEPTOR_MAX_HEADER_BYTES",
        "largest request headers: gRPC metadata in all, OTLP/HTTP each header line",
    ),
    Setting(
        "acceptor.max_header_count",
        100,
        _int(8, 10_000),
        "ACCEPTOR_MAX_HEADER_COUNT",
        "most header fields in one OTLP/HTTP request",
    ),
    Setting(
        "acceptor.max_concurrent_streams",
        100,
        _int(1, 100_000),
        "ACCEPTOR_MAX_CONCURRENT_STREAMS",
        "most gRPC calls at once on one connection",
    ),
    Setting(
        "acceptor.http_max_connections",
        4096,
        _int(1, 1_000_000),
        "ACCEPTOR_HTTP_MAX_CONNECTIONS",
        "most OTLP/HTTP connections open at once; more are closed at accept (lowered to fit the open-files limit)",
    ),
    Setting(
        "acceptor.grpc_max_connections",
        4096,
        _int(1, 1_000_000),
        "ACCEPTOR_GRPC_MAX_CONNECTIONS",
        "most OTLP/gRPC connections open at once; more are closed at accept (lowered to fit the open-files limit)",
    ),
    Setting(
        "acceptor.header_timeout_secs",
        10.0,
        _float(0.1, 3600),
        "ACCEPTOR_HEADER_TIMEOUT_SECS",
        "OTLP/HTTP: longest from a request's first byte to the end of its headers (408, closed); "
        "gRPC and TLS: longest handshake",
    ),
    Setting(
        "acceptor.body_timeout_secs",
        10.0,
        _float(0.1, 3600),
        "ACCEPTOR_BODY_TIMEOUT_SECS",
        "OTLP/HTTP: time allowed for a body, plus 1 s per body_min_rate_bytes received (408, closed)",
    ),
    Setting(
        "acceptor.body_min_rate_bytes",
        16 * 1024,
        _int(1, 1 << 30),
        "ACCEPTOR_BODY_MIN_RATE_BYTES",
        "OTLP/HTTP: bytes per second a body must keep up, after body_timeout_secs",
    ),
    Setting(
        "acceptor.idle_timeout_secs",
        60.0,
        _float(0.1, 86400),
        "ACCEPTOR_IDLE_TIMEOUT_SECS",
        "a connection with no request in progress is closed after this long (HTTP keep-alive, gRPC idle)",
    ),
    Setting(
        "acceptor.grpc_max_connection_age_secs",
        1800.0,
        _float(0, 30 * 86400),
        "ACCEPTOR_GRPC_MAX_CONNECTION_AGE_SECS",
        "gRPC connections are closed (GOAWAY, 30 s grace for running calls) after this long; 0: never",
    ),
    Setting(
        "acceptor.grpc_keepalive_secs",
        60.0,
        _float(1, 86400),
        "ACCEPTOR_GRPC_KEEPALIVE_SECS",
        "the acceptor pings gRPC clients this often and closes a connection whose ping goes unanswered 20 s",
    ),
    Setting(
        "acceptor.cors_allowed_origins",
        (),
        _origins,
        "ACCEPTOR_CORS_ALLOWED_ORIGINS",
        "OTLP/HTTP: browser origins allowed to send (CORS), e.g. https://app.example.com or "
        "https://*.example.com; empty: CORS off",
    ),
    Setting(
        "acceptor.cors_allowed_headers",
        (),
        _header_names,
        "ACCEPTOR_CORS_ALLOWED_HEADERS",
        "OTLP/HTTP CORS: request headers allowed besides Accept(-Language), Content-Type, Content-Language, "
        "Content-Encoding, X-Requested-With (list Authorization to send a token); * allows any",
    ),
    Setting(
        "acceptor.cors_max_age_secs",
        0,
        _int(0, 86400),
        "ACCEPTOR_CORS_MAX_AGE_SECS",
        "OTLP/HTTP CORS: how long a browser may cache a preflight answer; 0: no Access-Control-Max-Age",
    ),
    Setting(
        "acceptor.reserved_fds",
        256,
        _int(16, 1_000_000),
        "ACCEPTOR_RESERVED_FDS",
        "descriptors kept free of client connections for the WAL, Flight clients and files",
    ),
    Setting("writer.flight_addr", "127.0.0.1:50061", _address, "WRITER_FLIGHT_ADDR", "Flight listen address"),
    Setting(
        "writer.health_addr", "127.0.0.1:8081", _address, "WRITER_HEALTH_ADDR", "health and metrics listen address"
    ),
    Setting(
        "writer.file_max_bytes",
        128 * MIB,
        _int(1024, 1 << 34),
        "WRITER_FILE_MAX_BYTES",
        "Arrow bytes buffered per table and hour before a Parquet file is written",
    ),
    Setting(
        "writer.file_max_age_secs",
        60.0,
        _float(0.01, 86400),
        "WRITER_FILE_MAX_AGE_SECS",
        "longest rows wait before their Parquet file is written",
    ),
    Setting(
        "writer.shutdown_timeout_secs",
        30.0,
        _float(0.1, 3600),
        "WRITER_SHUTDOWN_TIMEOUT_SECS",
        "longest SIGTERM waits to write out open files",
    ),
    Setting(
        "writer.max_buffered_bytes",
        512 * MIB,
        _int(MIB, 1 << 40),
        "WRITER_MAX_BUFFERED_BYTES",
        "Arrow bytes held in memory for Parquet files not yet written, over all tables and hours",
    ),
    Setting(
        "writer.max_batch_bytes",
        512 * MIB,
        _int(MIB, 1 << 34),
        "WRITER_MAX_BATCH_BYTES",
        "largest Flight batch (Arrow buffer bytes) the writer stores; bigger ones are refused "
        "(keep it above acceptor.max_converted_bytes: an entry is never split across batches)",
    ),
    Setting(
        "storage.url",
        "file://.data",
        _storage_url,
        "SIGNALDB_STORAGE_URL",
        "where Parquet goes: file://PATH or s3://BUCKET/PREFIX",
    ),
    Setting(
        "storage.catalog_url",
        "",
        _catalog_url,
        "SIGNALDB_CATALOG_URL",
        "Iceberg catalog: sqlite:///PATH, postgresql://..., http(s)://... (REST) or none (plain Parquet "
        "files); default: sqlite file catalog.db beside file:// data, none for s3:// storage",
    ),
    Setting(
        "storage.retention_hours",
        0,
        _int(0, 100 * 365 * 24),
        "SIGNALDB_RETENTION_HOURS",
        "hours of data kept in the Iceberg tables (by the rows' time); 0 keeps everything",
    ),
    Setting(
        "storage.compaction_target_bytes",
        128 * MIB,
        _int(MIB, 1 << 36),
        "SIGNALDB_COMPACTION_TARGET_BYTES",
        "compaction rewrites a closed hour's small files into files of about this size",
    ),
    Setting(
        "storage.maintenance_interval_secs",
        600.0,
        _float(0, 7 * 86400),
        "SIGNALDB_MAINTENANCE_INTERVAL_SECS",
        "how often a writer runs compaction, retention, snapshot expiry and orphan cleanup; 0: never",
    ),
    Setting(
        "storage.snapshot_max_age_secs",
        3600.0,
        _float(0, 365 * 86400),
        "SIGNALDB_SNAPSHOT_MAX_AGE_SECS",
        "snapshots older than this are expired (their exactly-once claims are kept in a table property)",
    ),
    Setting(
        "storage.orphan_min_age_secs",
        86400.0,
        _float(0, 365 * 86400),
        "SIGNALDB_ORPHAN_MIN_AGE_SECS",
        "data files no snapshot references are deleted once this old (longer than any writer takes to commit)",
    ),
    Setting(
        "security.auth_token",
        "",
        _optional_string,
        "SIGNALDB_AUTH_TOKEN",
        "when set, OTLP and Flight requests need Authorization: Bearer <token>",
    ),
    Setting("security.tls_cert", "", _optional_string, "SIGNALDB_TLS_CERT", "PEM certificate: serve TLS"),
    Setting("security.tls_key", "", _optional_string, "SIGNALDB_TLS_KEY", "PEM private key for tls_cert"),
)

_BY_KEY = {s.key: s for s in SETTINGS}

# Command-line flags per command: flag name -> setting key. Shared flags first.
_COMMON_FLAGS = {
    "log-level": "log_level",
    "log-format": "log_format",
    "sync-mode": "wal.sync_mode",
    "max-segment-size": "wal.max_segment_size",
    "max-buffer-entries": "wal.max_buffer_entries",
    "flush-interval-secs": "wal.flush_interval_secs",
    "max-backlog-bytes": "wal.max_backlog_bytes",
    "auth-token": "security.auth_token",
    "tls-cert": "security.tls_cert",
    "tls-key": "security.tls_key",
}
_ACCEPTOR_FLAGS = {
    "wal-dir": "wal.acceptor.wal_dir",
    "grpc-addr": "acceptor.grpc_addr",
    "http-addr": "acceptor.http_addr",
    "health-addr": "acceptor.health_addr",
    "writer-endpoints": "acceptor.writer_endpoints",
    "max-request-bytes": "acceptor.max_request_bytes",
}
_WRITER_FLAGS = {
    "wal-dir": "wal.writer.wal_dir",
    "flight-addr": "writer.flight_addr",
    "health-addr": "writer.health_addr",
    "storage-url": "storage.url",
    "catalog-url": "storage.catalog_url",
    "file-max-bytes": "writer.file_max_bytes",
    "file-max-age-secs": "writer.file_max_age_secs",
}
_RUN_FLAGS = {
    "acceptor-wal-dir": "wal.acceptor.wal_dir",
    "writer-wal-dir": "wal.writer.wal_dir",
    "grpc-addr": "acceptor.grpc_addr",
    "http-addr": "acceptor.http_addr",
    "acceptor-health-addr": "acceptor.health_addr",
    "writer-health-addr": "writer.health_addr",
    "flight-addr": "writer.flight_addr",
    "storage-url": "storage.url",
}
# signaldb maintain: table maintenance once (writer/maintenance.py); the writer's storage settings.
_MAINTAIN_FLAGS = {
    "log-level": "log_level",
    "storage-url": "storage.url",
    "catalog-url": "storage.catalog_url",
    "file-max-age-secs": "writer.file_max_age_secs",
}
FLAGS: dict[str, dict[str, str]] = {
    "acceptor": {**_COMMON_FLAGS, **_ACCEPTOR_FLAGS},
    "writer": {**_COMMON_FLAGS, **_WRITER_FLAGS},
    "run": {**_COMMON_FLAGS, **_RUN_FLAGS},
    "maintain": _MAINTAIN_FLAGS,
}


# --- the typed result ---


@dataclass(frozen=True)
class WalConfig:
    wal_dir: Path
    max_segment_size: int
    max_buffer_entries: int
    flush_interval_secs: float
    sync_mode: str
    max_backlog_bytes: int

    def open(self) -> Wal:
        """Opens (creating it durably, 0700, if missing) and replays the WAL these settings describe."""
        return Wal(
            self.wal_dir,
            max_segment_size=self.max_segment_size,
            max_buffer_entries=self.max_buffer_entries,
            flush_interval_secs=self.flush_interval_secs,
            sync_mode=self.sync_mode,  # type: ignore[arg-type]  # checked by _choice when loaded
        )


@dataclass(frozen=True)
class AcceptorConfig:
    grpc_addr: Address
    http_addr: Address
    health_addr: Address
    writer_endpoints: tuple[str, ...]
    max_request_bytes: int
    max_converted_bytes: int
    max_future_secs: float
    max_age_secs: float
    forward_batch_entries: int
    forward_batch_bytes: int
    dead_letter_dir: Path
    shutdown_timeout_secs: float
    max_header_bytes: int = 16 * 1024
    max_header_count: int = 100
    max_concurrent_streams: int = 100
    http_max_connections: int = 4096
    grpc_max_connections: int = 4096
    header_timeout_secs: float = 10.0
    body_timeout_secs: float = 10.0
    body_min_rate_bytes: int = 16 * 1024
    idle_timeout_secs: float = 60.0
    grpc_max_connection_age_secs: float = 1800.0
    grpc_keepalive_secs: float = 60.0
    reserved_fds: int = 256
    writer_failover_secs: float = 300.0
    writer_dns_refresh_secs: float = 30.0
    cors_allowed_origins: tuple[str, ...] = ()
    cors_allowed_headers: tuple[str, ...] = ()
    cors_max_age_secs: int = 0


@dataclass(frozen=True)
class WriterConfig:
    flight_addr: Address
    health_addr: Address
    file_max_bytes: int
    file_max_age_secs: float
    shutdown_timeout_secs: float
    max_buffered_bytes: int
    max_batch_bytes: int = 512 * MIB


@dataclass(frozen=True)
class CatalogConfig:
    """Where the Iceberg tables are committed (``url`` ``none``: plain Parquet files) and how
    the writers look after them. ``url`` may carry a password: never log it (``redacted``)."""

    url: str = field(repr=False)  # may hold a password
    retention_hours: int = 0
    compaction_target_bytes: int = 128 * MIB
    maintenance_interval_secs: float = 600.0
    snapshot_max_age_secs: float = 3600.0
    orphan_min_age_secs: float = 86400.0

    @property
    def enabled(self) -> bool:
        return self.url != "none"

    @property
    def redacted(self) -> str:
        return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", self.url)


def default_catalog_url(storage_url: str) -> str:
    """The embedded default: a SQLite catalog file beside ``file://`` data; ``none`` for S3
    (several writers need a shared catalog: PostgreSQL or REST, set explicitly)."""
    if storage_url.startswith("file://"):
        return f"sqlite:///{(Path(storage_url[len('file://') :]) / 'catalog.db').absolute()}"
    return "none"


@dataclass(frozen=True)
class SecurityConfig:
    auth_token: str | None
    tls_cert: Path | None
    tls_key: Path | None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


@dataclass(frozen=True)
class Config:
    log_level: str
    acceptor_wal: WalConfig
    writer_wal: WalConfig
    acceptor: AcceptorConfig
    writer: WriterConfig
    storage_url: str
    security: SecurityConfig
    sources: Mapping[str, str]  # key -> "default" | "toml" | "env" | "flag", for the startup log
    catalog: CatalogConfig = CatalogConfig("none")
    log_format: str = "auto"

    def wal_for(self, service: str) -> WalConfig:
        return self.acceptor_wal if service == "acceptor" else self.writer_wal


# --- loading ---


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Adds ``--config`` and the command's setting flags to ``parser``."""
    parser.add_argument("--config", metavar="PATH", help="TOML file (also $SIGNALDB_CONFIG)")
    for flag, key in FLAGS[command].items():
        setting = _BY_KEY[key]
        env = f" (${setting.env})" if setting.env else ""
        parser.add_argument(
            f"--{flag}",
            dest=flag_dest(flag),
            metavar="VALUE",
            default=None,
            help=f"{setting.help}; TOML {key}{env}; default {setting.default!r}",
        )


def flag_dest(flag: str) -> str:
    """The argparse attribute holding a setting flag's value."""
    return "setting_" + flag.replace("-", "_")


def load(
    args: argparse.Namespace | None = None,
    command: str = "acceptor",
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolves defaults < TOML < environment < flags into a ``Config``."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {s.key: s.default for s in SETTINGS}
    sources = {s.key: "default" for s in SETTINGS}

    config_path = getattr(args, "config", None) or environ.get("SIGNALDB_CONFIG")
    if config_path:
        for key, value in _read_toml(Path(config_path)).items():
            raw[key], sources[key] = value, "toml"
    for setting in SETTINGS:
        if setting.env and setting.env in environ:
            raw[setting.key], sources[setting.key] = environ[setting.env], "env"
    if args is not None:
        for flag, key in FLAGS.get(command, {}).items():
            value = getattr(args, flag_dest(flag), None)
            if value is not None:
                raw[key], sources[key] = value, "flag"

    values = {}
    for setting in SETTINGS:
        try:
            values[setting.key] = setting.parse(raw[setting.key])
        except ValueError as err:
            origin = {
                "env": f" (from ${setting.env})",
                "flag": " (from the command line)",
                "toml": f" (in {config_path})",
            }.get(sources[setting.key], "")
            raise ConfigError(f"{setting.key}: {err}{origin}") from None
    cfg = _build(values, sources)
    check_flight_auth(cfg, command)
    return cfg


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1); any other name or
    address (``0.0.0.0`` included) can be reached from elsewhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_flight_auth(cfg: Config, command: str) -> None:
    """Flight between acceptor and writer is authenticated whenever it leaves loopback.

    The writer stores whatever its Flight port is sent (forged data, or batches naming
    another acceptor's entries): bound beyond loopback it needs ``security.auth_token``,
    and an acceptor sending to a writer beyond loopback needs it too (it sends the token
    with every call). TLS alone encrypts but does not tell who the peer is."""
    if cfg.security.auth_token:
        return
    fix = (
        "set security.auth_token ($SIGNALDB_AUTH_TOKEN, the same value on acceptors and writers; "
        "docs/operations.md, Security) or use a loopback address"
    )
    if command in ("writer", "run"):
        addr = cfg.writer.flight_addr
        if not is_loopback(addr.host):
            raise ConfigError(
                f"writer.flight_addr: {addr} is not a loopback address and Flight "
                f"would accept batches from anyone who can reach it; {fix}"
            )
    if command in ("acceptor", "run"):
        for endpoint in cfg.acceptor.writer_endpoints:
            host = endpoint.split("://", 1)[1].rpartition(":")[0]
            if not is_loopback(host):
                raise ConfigError(
                    f"acceptor.writer_endpoints: {endpoint} is not on loopback and Flight to it "
                    f"would be unauthenticated; {fix}"
                )


def _read_toml(path: Path) -> dict[str, Any]:
    """Flattens the TOML file into dotted keys, refusing unknown ones."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    flat: dict[str, Any] = {}

    def walk(table: Mapping[str, Any], prefix: str) -> None:
        for name, value in table.items():
            key = f"{prefix}{name}"
            if isinstance(value, dict):
                if not any(k.startswith(key + ".") for k in _BY_KEY):
                    raise ConfigError(f"{key}: unknown table in {path}")
                walk(value, key + ".")
            elif key in _BY_KEY:
                flat[key] = value
            else:
                raise ConfigError(f"{key}: unknown key in {path}")

    walk(document, "")
    return flat


def _build(v: Mapping[str, Any], sources: Mapping[str, str]) -> Config:
    def wal(service: str) -> WalConfig:
        return WalConfig(
            wal_dir=v[f"wal.{service}.wal_dir"],
            max_segment_size=v["wal.max_segment_size"],
            max_buffer_entries=v["wal.max_buffer_entries"],
            flush_interval_secs=v["wal.flush_interval_secs"],
            sync_mode=v["wal.sync_mode"],
            max_backlog_bytes=v["wal.max_backlog_bytes"],
        )

    cert, key = v["security.tls_cert"], v["security.tls_key"]
    if (cert is None) != (key is None):
        missing = "security.tls_key" if key is None else "security.tls_cert"
        raise ConfigError(f"{missing}: TLS needs both security.tls_cert and security.tls_key")
    for name, value in (("security.tls_cert", cert), ("security.tls_key", key)):
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{name}: no such file: {value}")
    acceptor_wal, writer_wal = wal("acceptor"), wal("writer")
    if acceptor_wal.wal_dir.resolve() == writer_wal.wal_dir.resolve():
        raise ConfigError("wal.writer.wal_dir: must differ from wal.acceptor.wal_dir")
    dead_letter = v["acceptor.dead_letter_dir"]
    return Config(
        log_level=v["log_level"],
        log_format=v["log_format"],
        acceptor_wal=acceptor_wal,
        writer_wal=writer_wal,
        acceptor=AcceptorConfig(
            grpc_addr=v["acceptor.grpc_addr"],
            http_addr=v["acceptor.http_addr"],
            health_addr=v["acceptor.health_addr"],
            writer_endpoints=v["acceptor.writer_endpoints"],
            max_request_bytes=v["acceptor.max_request_bytes"],
            max_converted_bytes=v["acceptor.max_converted_bytes"],
            max_future_secs=v["acceptor.max_future_secs"],
            max_age_secs=v["acceptor.max_age_secs"],
            forward_batch_entries=v["acceptor.forward_batch_entries"],
            forward_batch_bytes=v["acceptor.forward_batch_bytes"],
            dead_letter_dir=Path(dead_letter) if dead_letter else acceptor_wal.wal_dir / "dead-letter",
            shutdown_timeout_secs=v["acceptor.shutdown_timeout_secs"],
            max_header_bytes=v["acceptor.max_header_bytes"],
            max_header_count=v["acceptor.max_header_count"],
            max_concurrent_streams=v["acceptor.max_concurrent_streams"],
            http_max_connections=v["acceptor.http_max_connections"],
            grpc_max_connections=v["acceptor.grpc_max_connections"],
            header_timeout_secs=v["acceptor.header_timeout_secs"],
            body_timeout_secs=v["acceptor.body_timeout_secs"],
            body_min_rate_bytes=v["acceptor.body_min_rate_bytes"],
            idle_timeout_secs=v["acceptor.idle_timeout_secs"],
            grpc_max_connection_age_secs=v["acceptor.grpc_max_connection_age_secs"],
            grpc_keepalive_secs=v["acceptor.grpc_keepalive_secs"],
            reserved_fds=v["acceptor.reserved_fds"],
            writer_failover_secs=v["acceptor.writer_failover_secs"],
            writer_dns_refresh_secs=v["acceptor.writer_dns_refresh_secs"],
            cors_allowed_origins=v["acceptor.cors_allowed_origins"],
            cors_allowed_headers=v["acceptor.cors_allowed_headers"],
            cors_max_age_secs=v["acceptor.cors_max_age_secs"],
        ),
        writer=WriterConfig(
            flight_addr=v["writer.flight_addr"],
            health_addr=v["writer.health_addr"],
            file_max_bytes=v["writer.file_max_bytes"],
            file_max_age_secs=v["writer.file_max_age_secs"],
            shutdown_timeout_secs=v["writer.shutdown_timeout_secs"],
            max_buffered_bytes=v["writer.max_buffered_bytes"],
            max_batch_bytes=v["writer.max_batch_bytes"],
        ),
        storage_url=v["storage.url"],
        security=SecurityConfig(
            auth_token=v["security.auth_token"],
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if key else None,
        ),
        sources=dict(sources),
        catalog=CatalogConfig(
            url=v["storage.catalog_url"] or default_catalog_url(v["storage.url"]),
            retention_hours=v["storage.retention_hours"],
            compaction_target_bytes=v["storage.compaction_target_bytes"],
            maintenance_interval_secs=v["storage.maintenance_interval_secs"],
            snapshot_max_age_secs=v["storage.snapshot_max_age_secs"],
            orphan_min_age_secs=v["storage.orphan_min_age_secs"],
        ),
    )
