"""Prometheus metrics: one registry per service, plus the WAL collector.

The WAL's numbers live in the Rust core (lock-free counters and a fixed-bucket
fsync histogram); ``WalCollector`` reads ``Wal.stats()`` at scrape time, so
there is nothing to keep in sync and no cost between scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from signaldb.wal import Wal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def new_registry() -> CollectorRegistry:
    disable_created_metrics()  # `_created` series double the output and no dashboard reads them
    return CollectorRegistry(auto_describe=True)


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class WalCollector(Collector):
    """``signaldb_wal_*`` metrics for one WAL, labelled with the service name."""

    def __init__(self, wal_of: Callable[[], Wal | None], service: str) -> None:
        self._wal_of = wal_of  # the WAL may be opened after the registry exists
        self._service = service

    def describe(self) -> Iterator[Metric]:
        return iter(())  # metrics exist only once the WAL is open

    def collect(self) -> Iterator[Metric]:
        wal = self._wal_of()
        if wal is None or wal.closed:
            return
        s = wal.stats()
        labels, values = ["service"], [self._service]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, value)
            return c

        yield gauge("signaldb_wal_unprocessed_entries", "Entries appended but not yet processed.",
                    s.unprocessed_entries)
        yield gauge("signaldb_wal_unprocessed_bytes", "Bytes of segments that hold unprocessed entries.",
                    s.unprocessed_bytes)
        yield gauge("signaldb_wal_segments", "Segment files in the WAL.", s.total_segments)
        yield gauge("signaldb_wal_disk_usage_bytes", "Bytes the WAL occupies on disk.", s.disk_usage_bytes)
        oldest = s.oldest_unprocessed_timestamp_ns
        age = max(0.0, time.time() - oldest / 1e9) if oldest else 0.0
        yield gauge("signaldb_wal_oldest_unprocessed_age_seconds",
                    "Age of the oldest unprocessed entry (0 when there is none).", age)
        yield gauge("signaldb_wal_poisoned", "1 after an fsync failure stopped the WAL (fail-stop).",
                    1.0 if s.poisoned else 0.0)
        yield counter("signaldb_wal_appended_entries", "Entries appended.", s.appended_entries)
        yield counter("signaldb_wal_appended_bytes", "Payload bytes appended.", s.appended_bytes)
        yield counter("signaldb_wal_processed_entries", "Entries marked processed.", s.processed_entries)
        yield counter("signaldb_wal_corrupt_entries", "Corrupt entries found and quarantined.", s.corrupt_entries)
        yield counter("signaldb_wal_torn_tails_truncated", "Torn tails cut off at open.", s.torn_tails_truncated)
        yield counter("signaldb_wal_failed_appends", "Appends that failed (disk full, I/O error).",
                      s.failed_appends)
        yield counter("signaldb_wal_segments_created", "Segment files created.", s.segments_created)
        yield counter("signaldb_wal_segments_deleted", "Processed segment files deleted.", s.segments_deleted)
        hist = HistogramMetricFamily("signaldb_wal_fsync_duration_seconds",
                                     "Time each WAL fsync/fdatasync took.", labels=labels)
        buckets = [(_le(le), count) for le, count in s.fsync_duration_buckets]
        hist.add_metric(values, buckets, s.fsync_seconds_total)
        yield hist


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
