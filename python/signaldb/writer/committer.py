"""The commit: where a writer's Parquet files become rows of an Iceberg table, once.

``Committer.commit(table, files, claim)`` adds the files in one Iceberg
transaction whose snapshot summary says what it holds:

- ``signaldb.writer``, ``signaldb.life``: who committed (writer id, this start);
- ``signaldb.wal``: the writer WAL ids with rows in the files (JSON ranges);
- ``signaldb.claims``: per partition, the acceptor entry ids per source (``claims``).

Before each attempt the table is loaded fresh and the claims of every snapshot
not read yet are added to the index; a file whose claim meets the index is not
committed (``Overlap``: the sink plans its remaining rows again). The table's
own retry is off (``commit.retry.num-retries=0``): when another commit lands
between our load and our commit, the catalog refuses ours
(``CommitFailedException``), we count a conflict, load again — reading the
other commit's claims — and try again. So the check and the commit see the
same snapshot: two writers can never both commit one (partition, entry).

A commit whose outcome is unknown (an error after the request left) is safe
too: the next attempt finds its claims in the table and the rows are dropped
as already committed.

An attempt is kept short, since a commit landing inside it makes it fail: the
files' Iceberg entries (statistics from each footer: a read per file, a GET on
S3) are made once per call, not per attempt (again only if the table's schema
or partition spec changed in between). A writer that keeps losing logs a
warning every ``_CONFLICTS_WARN_EVERY`` attempts: more commits per second to a
table than the catalog turns around (docs/operations.md, Iceberg tables).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from signaldb.writer import crashpoints
from signaldb.writer.catalog import Tables
from signaldb.writer.claims import (
    FOLDED_PROPERTY,
    SUMMARY_KEY,
    ClaimMap,
    Claims,
    encode_map,
    merge_maps,
    without_claimed,
)
from signaldb.writer.ledger import IdSet
from signaldb.writer.metrics import WriterMetrics
from signaldb.writer.payload import WalRecord

log = logging.getLogger(__name__)

WRITER_KEY = "signaldb.writer"
LIFE_KEY = "signaldb.life"
WAL_KEY = "signaldb.wal"

_CONFLICT_PAUSE_MAX_SECS = 0.5
_CONFLICTS_WARN_EVERY = 20


@dataclass(frozen=True)
class FileToCommit:
    path: str  # relative to storage, as the store wrote it
    partition: str
    wal_ids: tuple[int, ...]
    claim: ClaimMap  # {partition: {source: [acceptor entry ids]}}


class TableCommitter:
    """Commits files to one table; owns that table's claims index (one thread: the sink's)."""

    def __init__(self, tables: Tables, table: str, writer_id: str, life: str, metrics: WriterMetrics) -> None:
        self._tables = tables
        self.table = table
        self._writer_id = writer_id
        self._life = life
        self._metrics = metrics
        self.claims = Claims()
        self._read: set[int] = set()  # snapshot ids whose claims are in the index
        self._folded = ""  # the folded-claims property value last read
        self._lock = threading.Lock()  # the index is read by the Flight threads (filtering)

    def refresh(self) -> Any:
        """Loads the table and reads the claims it has that the index lacks; returns the table."""
        table = self._tables.load(self.table)
        folded = table.properties.get(FOLDED_PROPERTY, "")
        new = [s for s in table.snapshots() if s.snapshot_id not in self._read]
        if folded == self._folded and not new:
            return table
        with self._lock:
            if folded != self._folded:
                self.claims.add_encoded(folded)
                self._folded = folded
            for snapshot in new:
                summary = snapshot.summary.additional_properties if snapshot.summary else {}
                text = summary.get(SUMMARY_KEY)
                if text:
                    self.claims.add_encoded(text)
                self._read.add(snapshot.snapshot_id)
        self._metrics.table_files.labels(self.table).set(_data_files(table))
        return table

    def without_claimed(self, record: WalRecord) -> tuple[WalRecord, int]:
        """``record`` without its rows claimed already (by the index as last read)."""
        with self._lock:
            return without_claimed(record, self.claims)

    def overlap(self, claim: ClaimMap) -> ClaimMap:
        with self._lock:
            return self.claims.overlap(claim)

    def commit(self, files: Sequence[FileToCommit], give_up: Any) -> list[FileToCommit]:
        """Commits the files whose claims are free, in one transaction; returns the files left
        out because their rows (some of them) are claimed already. Raises on catalog errors
        (the caller retries the whole cycle; nothing is marked processed)."""
        started = time.monotonic()
        attempt = 0
        prepared = _DataFiles(self._tables)
        while True:
            try:
                table = self.refresh()
            except Exception:
                self._metrics.commit_errors.labels(self.table).inc()
                raise
            taken = [f for f in files if self.overlap(f.claim)]
            free = [f for f in files if f not in taken]
            if not free:
                return taken
            props = self._summary(free)
            try:
                entries = prepared.for_table(table, [f.path for f in free])
                crashpoints.reached("before_catalog_commit")
                _append(table, entries, props)
            except Exception as err:
                if _is_conflict(err):
                    attempt += 1
                    self._metrics.commit_conflicts.labels(self.table).inc()
                    log.debug(
                        "commit conflict; reading the other commit's claims and trying again",
                        extra={"table": self.table, "attempt": attempt},
                    )
                    if attempt % _CONFLICTS_WARN_EVERY == 0:
                        log.warning(
                            "commit keeps meeting other commits; more commits to this table than the "
                            "catalog turns around (fewer, larger files: writer.file_max_age_secs)",
                            extra={
                                "table": self.table,
                                "attempts": attempt,
                                "secs": round(time.monotonic() - started, 3),
                            },
                        )
                    if give_up():
                        raise
                    time.sleep(random.uniform(0, min(_CONFLICT_PAUSE_MAX_SECS, 0.01 * 2 ** min(attempt, 6))))
                    continue
                self._metrics.commit_errors.labels(self.table).inc()
                raise
            crashpoints.reached("after_catalog_commit")
            with self._lock:
                for f in free:
                    self.claims.add_map(f.claim)
            self._metrics.commits.labels(self.table).inc()
            self._metrics.commit_duration.observe(time.monotonic() - started)
            log.debug("files committed", extra={"table": self.table, "files": len(free), "conflicts": attempt})
            return taken

    def _summary(self, files: Sequence[FileToCommit]) -> dict[str, str]:
        claim = merge_maps(f.claim for f in files)
        wal = IdSet((w, w) for f in files for w in f.wal_ids)
        return {
            WRITER_KEY: self._writer_id,
            LIFE_KEY: self._life,
            WAL_KEY: json.dumps(wal.ranges(), separators=(",", ":")),
            SUMMARY_KEY: encode_map(claim),
        }


class _DataFiles:
    """The Iceberg entries (``DataFile``: partition, statistics) of the files one ``commit``
    call adds, read from their footers once and reused while the table's schema and spec stay."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables
        self._made_for: tuple[int, int] | None = None
        self._by_path: dict[str, Any] = {}

    def for_table(self, table: Any, paths: Sequence[str]) -> list[Any]:
        from pyiceberg.io.pyarrow import parquet_file_to_data_file

        meta = table.metadata
        layout = (meta.current_schema_id, meta.default_spec_id)
        if layout != self._made_for:
            self._by_path, self._made_for = {}, layout
        for path in paths:
            if path not in self._by_path:
                uri = self._tables.data_file_uri(path)
                self._by_path[path] = parquet_file_to_data_file(table.io, meta, uri)
        return [self._by_path[p] for p in paths]


def _append(table: Any, entries: list[Any], props: dict[str, str]) -> None:
    """One snapshot adding ``entries``, as ``Transaction.add_files`` makes it (a merge append
    when the table asks for manifest merging, the name mapping set on first use)."""
    from pyiceberg.table import TableProperties

    with table.transaction() as tx:
        if table.metadata.name_mapping() is None:
            tx.set_properties(
                **{TableProperties.DEFAULT_NAME_MAPPING: table.metadata.schema().name_mapping.model_dump_json()}
            )
        merge = table.metadata.properties.get(TableProperties.MANIFEST_MERGE_ENABLED, "").lower() == "true"
        update = tx.update_snapshot(snapshot_properties=props)
        with update.merge_append() if merge else update.fast_append() as append:
            for entry in entries:
                append.append_data_file(entry)


def _data_files(table: Any) -> int:
    snapshot = table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return 0
    return int(snapshot.summary.additional_properties.get("total-data-files", 0) or 0)


def _is_conflict(err: Exception) -> bool:
    from pyiceberg.exceptions import CommitFailedException

    return isinstance(err, CommitFailedException)


class Committer:
    """One ``TableCommitter`` per table, made on first use."""

    def __init__(self, tables: Tables, writer_id: str, life: str, metrics: WriterMetrics) -> None:
        self.tables = tables
        self._writer_id = writer_id
        self._life = life
        self._metrics = metrics
        self._lock = threading.Lock()
        self._by_table: dict[str, TableCommitter] = {}
        self._dirs: dict[str, str] = {}

    def known_data_dir(self, table: str) -> str | None:
        """Where ``table``'s data files go, relative to storage, if known without a catalog call:
        ``<table>`` for SQL catalogs (which place tables at ``<storage>/<table>``)."""
        if not self.tables.places_tables:
            return table
        return self._dirs.get(table)

    def data_dir(self, table: str) -> str:
        """As ``known_data_dir``, asking the catalog when needed: a REST catalog places its
        tables itself, and S3 table buckets take data files only under ``<location>/data/``."""
        found = self.known_data_dir(table)
        if found is None:
            found = self._dirs[table] = self.tables.data_dir(self.tables.load(table))
        return found

    def for_table(self, table: str) -> TableCommitter:
        with self._lock:
            found = self._by_table.get(table)
            if found is None:
                found = self._by_table[table] = TableCommitter(
                    self.tables, table, self._writer_id, self._life, self._metrics
                )
            return found

    def without_claimed(self, record: WalRecord) -> tuple[WalRecord, int]:
        """``record`` without the rows its table's claims (as last read, no catalog call) hold."""
        return self.for_table(record.table).without_claimed(record)

    def refresh_all(self) -> None:
        """Reads every existing table's claims (at start, before the replay)."""
        for table in self.tables.existing():
            self.for_table(table).refresh()
