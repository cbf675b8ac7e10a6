"""The writer's own Prometheus metrics (the WAL's come from ``WalCollector``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_PUT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class WriterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.files_written = Counter(
            "signaldb_writer_files_written", "Parquet files written.", ["table"], registry=registry
        )
        self.rows_written = Counter(
            "signaldb_writer_rows_written", "Rows written to Parquet.", ["table"], registry=registry
        )
        self.bytes_written = Counter(
            "signaldb_writer_bytes_written", "Parquet bytes written.", ["table"], registry=registry
        )
        self.batches_received = Counter(
            "signaldb_writer_batches_received", "Flight batches acked.", ["table"], registry=registry
        )
        self.rows_received = Counter(
            "signaldb_writer_rows_received", "New rows appended to the writer WAL.", ["table"], registry=registry
        )
        self.duplicate_entries = Counter(
            "signaldb_writer_duplicate_entries",
            "Acceptor entries acked as duplicates (not written again).",
            ["table"],
            registry=registry,
        )
        self.refused_batches = Counter(
            "signaldb_writer_refused_batches",
            "Flight batches refused, by reason (invalid, backlog, memory, wal_full, busy, ...).",
            ["reason"],
            registry=registry,
        )
        self.put_duration = Histogram(
            "signaldb_writer_object_put_duration_seconds",
            "Time each successful object-store PUT (or local write) took.",
            buckets=_PUT_BUCKETS,
            registry=registry,
        )
        self.put_errors = Counter(
            "signaldb_writer_object_put_errors", "Failed object-store PUTs (retried).", registry=registry
        )
        self.object_conflicts = Counter(
            "signaldb_writer_object_conflicts",
            "Puts refused because the object exists with other content (never "
            "overwritten; its rows stay in the WAL and are retried with backoff). "
            "Counts every refused attempt: alert on any increase.",
            registry=registry,
        )
        self.conflicting_files = Gauge(
            "signaldb_writer_conflicting_files",
            "Planned files currently blocked by an existing object with other content.",
            registry=registry,
        )
        self.dead_letter_entries = Counter(
            "signaldb_writer_dead_letter_entries",
            "Writer WAL entries moved to <wal_dir>/dead-letter: unreadable, or "
            "a Parquet file holding their rows could not be built.",
            registry=registry,
        )
        self.build_errors = Counter(
            "signaldb_writer_parquet_build_errors",
            "Failed attempts to build a Parquet file (retried a few times, then its entries go to dead-letter).",
            registry=registry,
        )
        self.buffered_bytes = Gauge(
            "signaldb_writer_buffered_bytes",
            "Arrow bytes held for Parquet files not yet written (open buffers and files being written or retried).",
            registry=registry,
        )
        self.buffered_bytes_limit = Gauge(
            "signaldb_writer_buffered_bytes_limit",
            "writer.max_buffered_bytes: Flight ingest pushes back at this many "
            "buffered bytes; files are written early above half of it.",
            registry=registry,
        )
        self.early_files = Counter(
            "signaldb_writer_early_files",
            "Files written before their size or age limit to keep buffered bytes "
            "under half of writer.max_buffered_bytes.",
            registry=registry,
        )
        self.open_files = Gauge("signaldb_writer_open_files", "Table/hour buffers not yet written.", registry=registry)
        # Iceberg (storage.catalog_url not none): see writer/committer.py and writer/maintenance.py.
        self.commits = Counter(
            "signaldb_writer_catalog_commits", "Iceberg commits that added files.", ["table"], registry=registry
        )
        self.commit_duration = Histogram(
            "signaldb_writer_catalog_commit_duration_seconds",
            "Time from the first attempt of an Iceberg commit to its success "
            "(refreshes and conflict retries included).",
            buckets=_PUT_BUCKETS,
            registry=registry,
        )
        self.commit_conflicts = Counter(
            "signaldb_writer_catalog_commit_conflicts",
            "Iceberg commits refused because another commit landed first (retried "
            "after reading the other commit's claims).",
            ["table"],
            registry=registry,
        )
        self.commit_errors = Counter(
            "signaldb_writer_catalog_commit_errors",
            "Iceberg commits that failed for another reason (catalog unreachable...; "
            "retried, the rows stay in the WAL).",
            ["table"],
            registry=registry,
        )
        self.claimed_elsewhere = Counter(
            "signaldb_writer_rows_committed_elsewhere",
            "Rows dropped because a commit (by another writer, or an earlier "
            "life of this one) already holds them: exactly once, decided at commit.",
            ["table"],
            registry=registry,
        )
        self.replanned_files = Counter(
            "signaldb_writer_replanned_files",
            "Files left uncommitted because a concurrent commit claimed some of "
            "their rows; their other rows were planned again.",
            ["table"],
            registry=registry,
        )
        self.table_files = Gauge(
            "signaldb_writer_table_data_files",
            "Data files in the Iceberg table's current snapshot.",
            ["table"],
            registry=registry,
        )
        self.maintenance_runs = Counter(
            "signaldb_writer_maintenance_runs",
            "Table maintenance runs by task (compaction, retention, expiry, orphans) and outcome (ok, error).",
            ["task", "outcome"],
            registry=registry,
        )
        self.compacted_files = Counter(
            "signaldb_writer_compacted_files", "Small data files replaced by compaction.", ["table"], registry=registry
        )
        self.orphans_deleted = Counter(
            "signaldb_writer_orphan_files_deleted",
            "Data files no snapshot references, deleted after storage.orphan_min_age_secs.",
            registry=registry,
        )
