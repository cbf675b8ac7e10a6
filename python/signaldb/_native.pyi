"""Type stubs for the Rust extension. Keep in step with rust/native/src/*.rs."""

from typing import final

class WalError(Exception): ...
class WalFullError(WalError): ...

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
    def __init__(
        self,
        path: str,
        max_segment_size: int,
        max_buffer_entries: int,
        flush_interval_secs: float,
        sync_mode: str,
    ) -> None: ...
    def append(self, payload: bytes, kind: int) -> int: ...
    def append_batch(self, payloads: list[bytes], kind: int) -> int:
        """Appends all payloads as one group; returns the first id (ids are contiguous)."""
    def enqueue(self, payload: bytes, kind: int) -> int:
        """Queues a record without waiting; the background flusher acknowledges it."""
    def acked_id(self) -> int: ...
    def poisoned(self) -> str | None: ...
    def has_failures(self) -> bool: ...
    def take_failure(self, id: int) -> str | None: ...
    def register_notify_fd(self, fd: int) -> None: ...
    def unregister_notify_fd(self, fd: int) -> None: ...
    def flush(self) -> None: ...
    def checkpoint(self) -> None: ...
    def mark_processed(self, ids: list[int]) -> None: ...
    def read_unprocessed(self, after_id: int, limit: int, max_bytes: int) -> list[Entry]: ...
    def stats(self) -> dict[str, object]: ...
    def unprocessed_bytes(self) -> int: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...

def read_metadata(wal_dir: str) -> dict[str, object] | None:
    """Parses <wal_dir>/metadata.json read-only; None when absent or invalid."""

def scan_segment(path: str, is_last: bool = False, above_id: int = 0) -> dict[str, object]:
    """Read-only scan of one segment file, verifying every CRC.

    Keys: header, header_ok, file_len, entries, first_id, last_id, data_end,
    payload_bytes, traces, logs, metrics, entries_above_id, damages (a list of
    (kind, offset, length) with kind "corrupt" or "torn_tail").
    """

def read_segment(path: str, offset: int, limit: int) -> tuple[list[Entry], int]:
    """Read-only: up to `limit` valid entries from `offset`; returns (entries, next offset)."""

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
