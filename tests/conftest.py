"""Shared fixtures and helpers for the WAL test suite.

Everything here is independent of the engine's internals: the on-disk parser
below follows docs/wal-format.md, so the tests double as a check that the
engine writes what the document says.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import pathlib
import random
import re
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

TESTS_DIR = pathlib.Path(__file__).resolve().parent
HELPERS_DIR = TESTS_DIR / "helpers"
REPO_DIR = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:  # so `import helpers.x` works in every import mode
    sys.path.insert(0, str(TESTS_DIR))

KINDS = ("traces", "logs", "metrics")
KIND_CODES = {"traces": 1, "logs": 2, "metrics": 3}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}

STRESS = os.environ.get("SIGNALDB_STRESS", "") not in ("", "0")

STATS_KEYS = {
    "unprocessed_entries",
    "total_segments",
    "disk_usage_bytes",
    "last_flush",
    "next_id",
    "appended_entries",
    "processed_entries",
    "corrupt_entries",
    "torn_tails_truncated",
    "fsync_count",
    "fsync_seconds_total",
    "fsync_seconds_max",
    "fsync_duration_buckets",
    "unprocessed_bytes",
    "poisoned",
    "sync_mode",
}


def scaled(normal: int, stress: int) -> int:
    """`normal` in an ordinary run, `stress` under SIGNALDB_STRESS=1 (make stress)."""
    return stress if STRESS else normal


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stress tests run only under `make stress` (SIGNALDB_STRESS=1) or an explicit `-m stress`.

    They are deselected, not skipped, in an ordinary run so that `make test`
    stays fast and the summary shows no skips.
    """
    markexpr = config.getoption("markexpr", "") or ""
    if STRESS or "stress" in markexpr:
        return
    keep = [it for it in items if it.get_closest_marker("stress") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[it for it in items if it.get_closest_marker("stress")])
        items[:] = keep


# -- payloads ---------------------------------------------------------------


def filler(seed: str | int, n: int) -> bytes:
    """`n` deterministic pseudo-random bytes for `seed` (fast, even for 64 MiB)."""
    if n <= 0:
        return b""
    return random.Random(str(seed)).randbytes(n)


def tagged_payload(tag: str, n: int) -> bytes:
    """A self-describing payload: `tag:` followed by `n` bytes derived from the tag.

    A reader can parse the tag back and recompute the whole payload, so a wrong
    or garbled payload is always detectable, whatever id it came back under.
    """
    return tag.encode() + b":" + filler(tag, n)


def parse_tag(payload: bytes) -> str:
    return payload.split(b":", 1)[0].decode()


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


# -- opening and reading ----------------------------------------------------


@pytest.fixture
def wal_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A WAL directory path that does not exist yet (the engine creates it)."""
    return tmp_path / "wal"


@pytest.fixture
def open_wal() -> Iterator[Callable[..., object]]:
    """Factory: `open_wal(path, **kwargs)` opens a Wal that is closed at teardown.

    Tests close their WALs themselves; this only makes sure a failing test does
    not leave a handle (and its directory lock) open for the next one.
    """
    from signaldb.wal import Wal

    opened: list[Wal] = []

    def _open(path: os.PathLike[str] | str, **kwargs: object) -> Wal:
        w = Wal(path, **kwargs)
        opened.append(w)
        return w

    yield _open
    for w in opened:
        with contextlib.suppress(Exception):  # the test already failed on whatever made close fail
            w.close()


@dataclass
class Snapshot:
    """What a WAL directory holds, read by a fresh handle."""

    entries: list[tuple[int, str, bytes]]
    stats: dict[str, object]
    timestamps: dict[int, int] = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return [e[0] for e in self.entries]

    @property
    def by_id(self) -> dict[int, tuple[str, bytes]]:
        return {i: (k, p) for i, k, p in self.entries}


def read_all(path: os.PathLike[str] | str, **kwargs: object) -> Snapshot:
    """Opens the WAL at `path`, reads every unprocessed entry and the stats, closes."""
    from signaldb.wal import Wal

    with Wal(path, **kwargs) as w:
        entries = []
        timestamps = {}
        for e in w.unprocessed():
            entries.append((e.id, e.kind, e.payload))
            timestamps[e.id] = e.timestamp_ns
        stats = w.stats()
    return Snapshot(entries, stats, timestamps)


def entries_of(wal: object) -> list[tuple[int, str, bytes]]:
    """Every unprocessed entry of an open WAL as (id, kind, payload)."""
    return [(e.id, e.kind, e.payload) for e in wal.unprocessed()]  # type: ignore[attr-defined]


def assert_strictly_increasing(ids: list[int], what: str = "ids") -> None:
    bad = [(a, b) for a, b in itertools.pairwise(ids) if b <= a]
    assert not bad, f"{what} not strictly increasing, first offending pairs: {bad[:5]}"


# -- the on-disk format (docs/wal-format.md), parsed independently ------------

SEGMENT_RE = re.compile(r"^\d{6,}\.wal$")
SEGMENT_HEADER_LEN = 48  # format version 2, what the engine writes
SEGMENT_HEADER_LEN_V1 = 32  # format version 1, still read
RECORD_HEADER_LEN = 28
MAGIC = b"SIGDBWAL"
FLAG_RECYCLED = 1
FLAG_SPARE = 2


def segment_salt(index: int) -> int:
    """The v2 record CRC salt of segment `index` (murmur3's 32-bit finalizer of index mod 2^32)."""
    h = index & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli), pure Python: fine for the few KiB the format tests check."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def segment_files(wal_path: os.PathLike[str] | str) -> list[pathlib.Path]:
    seg_dir = pathlib.Path(wal_path) / "segments"
    if not seg_dir.is_dir():
        return []
    return sorted((p for p in seg_dir.iterdir() if SEGMENT_RE.match(p.name)), key=lambda p: int(p.stem))


@dataclass
class Record:
    offset: int
    length: int
    id: int
    timestamp_ns: int
    kind: int
    crc: int
    payload: bytes

    @property
    def end(self) -> int:
        return self.offset + RECORD_HEADER_LEN + self.length


@dataclass
class ParsedSegment:
    magic: bytes
    version: int
    flags: int
    base_id: int
    header_crc: int
    header_bytes: bytes
    records: list[Record]
    data_end: int
    size: int
    prev_last_id: int = 0
    prev_data_end: int = 0
    # The record CRC salt (0 in v1; segment_salt(index) in v2 when the index is known).
    salt: int = 0


def parse_segment(buf: bytes, index: int | None = None) -> ParsedSegment:
    """Parses a clean segment image per docs/wal-format.md (no recovery logic).

    Version 1 (32-byte header) or 2 (48 bytes; `index`, the file's segment number,
    gives the record CRC salt). Stops at the first all-zero record header (in a
    recycled v2 segment, stale bytes follow it) or at a record that does not fit.
    """
    version = struct.unpack_from("<I", buf.ljust(12, b"\0"), 8)[0]
    prev_last_id = prev_data_end = 0
    if version == 1 or len(buf) < SEGMENT_HEADER_LEN:
        header_len = SEGMENT_HEADER_LEN_V1
        hdr = buf[:header_len]
        _v, flags, base_id, _reserved, hcrc = struct.unpack_from("<IIQII", hdr.ljust(32, b"\0"), 8)
    else:
        header_len = SEGMENT_HEADER_LEN
        hdr = buf[:header_len]
        _v, flags, base_id, prev_last_id, prev_data_end, _reserved, hcrc = struct.unpack_from("<IIQQQII", hdr, 8)
    magic = hdr[:8]
    salt = segment_salt(index) if version == 2 and index is not None else 0
    records = []
    pos = header_len
    while pos + RECORD_HEADER_LEN <= len(buf):
        rh = buf[pos : pos + RECORD_HEADER_LEN]
        if not any(rh):
            break
        crc, length, rid, ts, kind = struct.unpack_from("<IIQqB", rh)
        end = pos + RECORD_HEADER_LEN + length
        if end > len(buf):
            break
        records.append(Record(pos, length, rid, ts, kind, crc, bytes(buf[pos + RECORD_HEADER_LEN : end])))
        pos = end
    return ParsedSegment(
        magic, version, flags, base_id, hcrc, bytes(hdr), records, pos, len(buf), prev_last_id, prev_data_end, salt
    )


def parse_segment_file(path: os.PathLike[str] | str) -> ParsedSegment:
    p = pathlib.Path(path)
    return parse_segment(p.read_bytes(), int(p.stem) if p.stem.isdigit() else None)


def record_crc_ok(seg_buf: bytes, rec: Record, salt: int = 0) -> bool:
    """The record's stored CRC is CRC32C of the bytes after it, XOR the segment's salt."""
    return crc32c(seg_buf[rec.offset + 4 : rec.end]) ^ salt == rec.crc


def dir_size(path: os.PathLike[str] | str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, f)).st_size
    return total


# --- service fixtures (acceptor and a recording Flight server) --------------------------


@pytest.fixture
def recorder():
    """A real Flight server on loopback that records what the acceptor forwards."""
    from helpers.flight_recorder import FlightRecorder

    server = FlightRecorder()
    try:
        yield server
    finally:
        server.shutdown()


@pytest.fixture
def acceptor_factory(tmp_path, request):
    """Starts real ``signaldb-acceptor`` processes; stops them (SIGKILL if stuck) after the test
    and prints their logs when the test failed."""
    from helpers.acceptor_proc import AcceptorProcess

    started: list[AcceptorProcess] = []

    def make(
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        start: bool = True,
        workdir: pathlib.Path | None = None,
    ) -> AcceptorProcess:
        proc = AcceptorProcess(workdir=workdir or tmp_path, env=dict(env or {}), args=list(args or []))
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for proc in started:
            print(f"--- acceptor log ({proc.log_path}) ---\n{proc.log_text()[-8000:]}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session")
def weed(tmp_path_factory):
    """One real SeaweedFS S3 server for the whole session (writer and end-to-end tests)."""
    from helpers.seaweed import Weed

    server = Weed(tmp_path_factory.mktemp("weed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def weed_iceberg(tmp_path_factory):
    """A second SeaweedFS for the session that also serves its Iceberg REST catalog (with an S3
    IAM config: every request signed with the test keys). Separate from ``weed``, whose users
    rely on its plain setup; started only by tests that ask for it."""
    from helpers.seaweed import Weed

    server = Weed(tmp_path_factory.mktemp("weed-iceberg"), iceberg=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the whole session, started by the first test that asks
    for it; ``postgres.create_database()`` gives each test its own database (SQLAlchemy URL)."""
    import shutil
    import tempfile

    from helpers.postgres import Postgres

    # Not under pytest's tmp dir: that is 0700 root, and as root the server runs as the
    # `postgres` OS user, which must reach its directory.
    directory = pathlib.Path(tempfile.mkdtemp(prefix="signaldb-pg-"))
    server = Postgres(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def tls_pair(tmp_path):
    """A self-signed certificate and key for localhost / 127.0.0.1 (openssl CLI)."""
    from helpers.tls import self_signed

    cert, key = self_signed(tmp_path)
    return cert, key


@pytest.fixture
def procs():
    """Writer processes a test starts (``helpers.writer.WriterProcess``), closed at its end."""
    started = []
    yield started
    for w in started:
        w.close()
