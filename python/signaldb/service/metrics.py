"""Prometheus metrics: one registry per service, plus the WAL collector.

The WAL's numbers live in the Rust core (lock-free counters and a fixed-bucket
fsync histogram); ``WalCollector`` reads ``Wal.stats()`` at scrape time, so
there is nothing to keep in sync and no cost between scrapes.

Which service a series comes from is the ``component`` label
(``acceptor``/``writer``), never ``service``: Prometheus Operator adds a
``service`` target label (the Kubernetes Service), and ours would be renamed
``exported_service`` under it, so alerts matching on it would stop matching.

Every registry also carries ``signaldb_build_info`` and prometheus_client's
standard process (``process_resident_memory_bytes``, open fds, CPU) and
platform (``python_info``) collectors, plus ``signaldb_memory_limit_bytes``
(the cgroup's limit, i.e. the pod's) to set resident memory against.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from signaldb.wal import Wal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def new_registry(component: str) -> CollectorRegistry:
    disable_created_metrics()  # `_created` series double the output and no dashboard reads them
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(_InfoCollector(component))
    return registry


class _InfoCollector(Collector):
    """``signaldb_build_info`` (constant 1, the version in labels) and the cgroup memory limit."""

    def __init__(self, component: str) -> None:
        from signaldb import __version__  # here, not at import: signaldb/__init__ imports the WAL

        self._component = component
        self._version = __version__

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "signaldb_build_info",
            "SignalDB version and runtime; always 1.",
            labels=["component", "version", "python_version"],
        )
        info.add_metric([self._component, self._version, platform.python_version()], 1.0)
        yield info
        limit = memory_limit_bytes()
        if limit is not None:
            yield GaugeMetricFamily(
                "signaldb_memory_limit_bytes",
                "The process's cgroup memory limit (a container's or pod's); absent when there is none.",
                value=limit,
            )


def memory_limit_bytes(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The cgroup v2 (or v1) memory limit, or None when unlimited or not in a cgroup."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 says "unlimited" with a huge number
            return int(text)
        return None
    return None


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class WalCollector(Collector):
    """``signaldb_wal_*`` metrics for one WAL, labelled with the component (acceptor, writer)."""

    def __init__(self, wal_of: Callable[[], Wal | None], component: str, max_backlog_bytes: int = 0) -> None:
        self._wal_of = wal_of  # the WAL may be opened after the registry exists
        self._component = component
        self._max_backlog_bytes = max_backlog_bytes

    def describe(self) -> Iterator[Metric]:
        return iter(())  # metrics exist only once the WAL is open

    def collect(self) -> Iterator[Metric]:
        wal = self._wal_of()
        if wal is None or wal.closed:
            return
        s = wal.stats()
        labels, values = ["component"], [self._component]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, value)
            return c

        yield gauge(
            "signaldb_wal_unprocessed_entries", "Entries appended but not yet processed.", s.unprocessed_entries
        )
        yield gauge(
            "signaldb_wal_unprocessed_bytes", "Bytes of segments that hold unprocessed entries.", s.unprocessed_bytes
        )
        if self._max_backlog_bytes:
            yield gauge(
                "signaldb_wal_max_backlog_bytes",
                "wal.max_backlog_bytes: above this many unprocessed bytes the service pushes back.",
                self._max_backlog_bytes,
            )
        yield gauge("signaldb_wal_segments", "Segment files in the WAL.", s.total_segments)
        try:
            vfs = os.statvfs(wal.path)
        except OSError:
            pass  # the directory went away: the WAL's own errors say so
        else:
            # The volume the WAL lives on: what an unprivileged process may still write, and its size.
            yield gauge(
                "signaldb_wal_volume_available_bytes",
                "Bytes free on the WAL's volume (for this user).",
                vfs.f_bavail * vfs.f_frsize,
            )
            yield gauge("signaldb_wal_volume_size_bytes", "Size of the WAL's volume.", vfs.f_blocks * vfs.f_frsize)
        yield gauge("signaldb_wal_disk_usage_bytes", "Bytes the WAL occupies on disk.", s.disk_usage_bytes)
        oldest = s.oldest_unprocessed_timestamp_ns
        age = max(0.0, time.time() - oldest / 1e9) if oldest else 0.0
        yield gauge(
            "signaldb_wal_oldest_unprocessed_age_seconds",
            "Age of the oldest unprocessed entry (0 when there is none).",
            age,
        )
        yield gauge(
            "signaldb_wal_poisoned", "1 after an fsync failure stopped the WAL (fail-stop).", 1.0 if s.poisoned else 0.0
        )
        yield counter("signaldb_wal_appended_entries", "Entries appended.", s.appended_entries)
        yield counter("signaldb_wal_appended_bytes", "Payload bytes appended.", s.appended_bytes)
        yield counter("signaldb_wal_processed_entries", "Entries marked processed.", s.processed_entries)
        yield counter("signaldb_wal_corrupt_entries", "Corrupt entries found and quarantined.", s.corrupt_entries)
        yield counter("signaldb_wal_torn_tails_truncated", "Torn tails cut off at open.", s.torn_tails_truncated)
        yield counter("signaldb_wal_failed_appends", "Appends that failed (disk full, I/O error).", s.failed_appends)
        yield counter("signaldb_wal_segments_created", "Segment files created.", s.segments_created)
        yield counter("signaldb_wal_segments_deleted", "Processed segment files deleted.", s.segments_deleted)
        yield counter(
            "signaldb_wal_segments_recycled",
            "Segments started in a processed segment's file (recycled) instead of a new file.",
            s.segments_recycled,
        )
        yield counter(
            "signaldb_wal_recycle_failures",
            "Processed segments' files that could not be kept or reused (deleted; a fresh segment made instead).",
            s.recycle_failures,
        )
        yield counter(
            "signaldb_wal_checkpoints_refused",
            "Checkpoints (metadata.json) refused as unusable at open: every entry was replayed.",
            s.checkpoints_refused,
        )
        hist = HistogramMetricFamily(
            "signaldb_wal_fsync_duration_seconds", "Time each WAL fsync/fdatasync took.", labels=labels
        )
        buckets = [(_le(le), count) for le, count in s.fsync_duration_buckets]
        hist.add_metric(values, buckets, s.fsync_seconds_total)
        yield hist


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
