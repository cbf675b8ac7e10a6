"""Type stubs for the Rust extension. Keep in step with rust/native/src/*.rs
(`make lint` runs mypy's stubtest against the built module)."""

from collections.abc import Iterator
from typing import TypedDict, final, type_check_only

__all__ = [
    "KIND_LOGS",
    "KIND_METRICS",
    "KIND_TRACES",
    "OTLP_CONVERT_CEILING",
    "Entry",
    "NativePanicError",
    "NativeWal",
    "OtlpContentTypeError",
    "OtlpDecodeError",
    "OtlpTooLargeError",
    "WalClosedError",
    "WalError",
    "WalFileExistsError",
    "WalFileNotFoundError",
    "WalFullError",
    "WalInUseError",
    "WalIoError",
    "WalIsADirectoryError",
    "WalNotADirectoryError",
    "WalPermissionError",
    "WalPoisonedError",
    "WalStats",
    "debug_panic",
    "otlp_convert",
    "otlp_count_items",
    "read_metadata",
    "read_segment",
    "scan_segment",
]

# The exception tree (rust/native/src/errors.rs): picked by the engine error's kind.
class WalError(Exception): ...
class WalFullError(WalError): ...
class WalPoisonedError(WalError): ...
class WalClosedError(WalError): ...
class WalInUseError(WalError): ...
class WalIoError(WalError, OSError): ...
class WalFileNotFoundError(WalIoError, FileNotFoundError): ...
class WalPermissionError(WalIoError, PermissionError): ...
class WalFileExistsError(WalIoError, FileExistsError): ...
class WalNotADirectoryError(WalIoError, NotADirectoryError): ...
class WalIsADirectoryError(WalIoError, IsADirectoryError): ...

KIND_TRACES: int
KIND_LOGS: int
KIND_METRICS: int

@final
class Entry:
    @property
    def id(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def timestamp_ns(self) -> int: ...
    @property
    def payload(self) -> bytes: ...

@final
class NativeWal:
    def __new__(
        cls,
        path: str,
        max_segment_size: int,
        max_buffer_entries: int,
        flush_interval_secs: float,
        sync_mode: str,
    ) -> NativeWal: ...
    def append(self, payload: bytes | bytearray | memoryview, kind: int) -> int:
        """Appends one record; a payload that is not bytes, bytearray or memoryview is a TypeError."""
    def append_batch(self, payloads: list[bytes], kind: int) -> int:
        """Appends all payloads as one group; returns the first id (ids are contiguous).
        Each payload is bytes, bytearray or memoryview (else TypeError)."""
    def enqueue(self, payload: bytes, kind: int) -> int:
        """Queues a record without waiting; the background flusher acknowledges it."""
    def done_id(self) -> int:
        """Highest id whose fate is decided (acknowledged unless `take_failure` has it)."""
    def poisoned(self) -> WalPoisonedError | None:
        """The `WalPoisonedError` every pending append fails with, once the WAL stopped."""
    def has_failures(self) -> bool: ...
    def take_failure(self, id: int) -> BaseException | None:
        """Why `id`'s async append failed, as the exception to raise; once."""
    def register_notify_fd(self, fd: int) -> None: ...
    def unregister_notify_fd(self, fd: int) -> None: ...
    def flush(self) -> None: ...
    def checkpoint(self) -> None: ...
    def mark_processed(self, ids: list[int]) -> None: ...
    def read_unprocessed(self, after_id: int, limit: int, max_bytes: int) -> list[Entry]: ...
    def stats(self) -> WalStats: ...
    def unprocessed_bytes(self) -> int: ...
    def processed_watermark(self) -> int: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...

@final
class WalStats:
    """A WAL's counters and gauges at one moment; also reads like the dict it replaces."""

    @property
    def unprocessed_entries(self) -> int: ...
    @property
    def unprocessed_bytes(self) -> int: ...
    @property
    def total_segments(self) -> int: ...
    @property
    def disk_usage_bytes(self) -> int: ...
    @property
    def last_flush(self) -> str | None: ...
    @property
    def next_id(self) -> int: ...
    @property
    def processed_watermark(self) -> int: ...
    @property
    def appended_entries(self) -> int: ...
    @property
    def appended_bytes(self) -> int: ...
    @property
    def processed_entries(self) -> int: ...
    @property
    def corrupt_entries(self) -> int: ...
    @property
    def corrupt_bytes(self) -> int: ...
    @property
    def torn_tails_truncated(self) -> int: ...
    @property
    def failed_appends(self) -> int: ...
    @property
    def fsync_count(self) -> int: ...
    @property
    def fsync_seconds_total(self) -> float: ...
    @property
    def fsync_seconds_max(self) -> float: ...
    @property
    def fsync_duration_buckets(self) -> list[tuple[float, int]]: ...
    @property
    def segments_created(self) -> int: ...
    @property
    def segments_deleted(self) -> int: ...
    @property
    def segments_recycled(self) -> int: ...
    @property
    def recycle_failures(self) -> int: ...
    @property
    def checkpoints_refused(self) -> int: ...
    @property
    def metadata_writes(self) -> int: ...
    @property
    def oldest_unprocessed_timestamp_ns(self) -> int | None: ...
    @property
    def poisoned(self) -> bool: ...
    @property
    def poisoned_reason(self) -> str | None: ...
    @property
    def sync_mode(self) -> str: ...
    def __getitem__(self, key: str, /) -> object: ...
    def get(self, key: str, default: object | None = None) -> object | None: ...
    def __contains__(self, key: str, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[str]: ...
    def keys(self) -> list[str]: ...
    def values(self) -> list[object]: ...
    def items(self) -> list[tuple[str, object]]: ...
    def to_dict(self) -> dict[str, object]: ...

@type_check_only
class WalMetadata(TypedDict):
    """`metadata.json` as `read_metadata` returns it (docs/wal-format.md)."""

    format_version: int
    next_id: int
    processed_watermark: int
    processed_ids: list[int]
    last_flush: str | None
    segments: list[tuple[int, int | None, int | None]]

@type_check_only
class SegmentScan(TypedDict):
    """What `scan_segment` found in one segment file."""

    header: str
    header_ok: bool
    file_len: int
    entries: int
    first_id: int | None
    last_id: int | None
    data_end: int
    payload_bytes: int
    entries_above_id: int
    traces: int
    logs: int
    metrics: int
    damages: list[tuple[str, int, int]]
    """(kind, offset, length) with kind "corrupt" or "torn_tail"."""

def read_metadata(wal_dir: str) -> WalMetadata | None:
    """Parses <wal_dir>/metadata.json read-only; None when absent or invalid."""

def scan_segment(path: str, is_last: bool = False, above_id: int = 0) -> SegmentScan:
    """Read-only scan of one segment file, verifying every CRC."""

def read_segment(
    path: str, offset: int, after_id: int, limit: int, is_last: bool = True
) -> tuple[list[Entry], int, int]:
    """Read-only: up to `limit` valid entries from `offset` with ids above `after_id` (0 at the
    start); returns (entries, next offset, next after_id) for the next page. `is_last`: no
    segment follows (otherwise the next one's header may say where this one's data ends)."""

# --- OTLP → Arrow (rust/native/src/otlp.rs); the public face is signaldb.otlp ---

class OtlpDecodeError(ValueError): ...
class OtlpTooLargeError(OtlpDecodeError): ...
class OtlpContentTypeError(ValueError): ...
class NativePanicError(Exception): ...

OTLP_CONVERT_CEILING: int

def otlp_convert(
    kind: str,
    body: bytes,
    content_type: str = "application/x-protobuf",
    window: tuple[int, int, int] | None = None,
    max_converted_bytes: int = ...,
) -> tuple[list[tuple[str, object, object]], list[tuple[str, int]], int]:
    """Returns (tables as (name, "arrow_schema" capsule, "arrow_array" capsule), rejected, items).
    window: (min_ns, max_ns, now_ns) or None."""

def otlp_count_items(
    kind: str,
    body: bytes,
    content_type: str = "application/x-protobuf",
    window: tuple[int, int, int] | None = None,
    max_converted_bytes: int = ...,
) -> tuple[int, list[tuple[str, int]], int]:
    """Returns (items, rejected, converted_bytes)."""

def debug_panic(message: str) -> None:
    """Panics inside the Rust core on purpose (tests of the panic boundary)."""
