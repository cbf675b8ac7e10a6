"""SignalDB: durable OpenTelemetry ingest.

The public face of the project. The Rust core lives in the private
``signaldb._native`` extension; import from here or from ``signaldb.wal``.
"""

from signaldb.wal import (
    Entry,
    Wal,
    WalClosedError,
    WalError,
    WalFullError,
    WalInUseError,
    WalIoError,
    WalPoisonedError,
    WalStats,
)

__all__ = [
    "Entry",
    "Wal",
    "WalClosedError",
    "WalError",
    "WalFullError",
    "WalInUseError",
    "WalIoError",
    "WalPoisonedError",
    "WalStats",
]
__version__ = "0.1.0"
