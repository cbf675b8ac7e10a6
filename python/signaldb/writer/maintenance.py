"""Table maintenance: compaction, retention, snapshot expiry and orphan cleanup.

Runs per existing Iceberg table, in this order (each step its own commit(s);
an error in one step is logged and counted, and the next step still runs):

1. **retention** (``storage.retention_hours`` > 0): the data files of hour
   partitions that ended more than that long ago are removed from the table in
   one commit (whole files: a file holds one hour, so nothing is rewritten).
2. **compaction**: in every *closed* hour (ended more than
   ``closed_hour_grace`` ago), the data files smaller than half of
   ``storage.compaction_target_bytes`` are binned into groups of up to about
   that size; each group of two or more is read, its rows ordered
   (``parquet.build``: the writer's own options, bloom filter included) and
   written as ONE new file, create-only, in the same partition directory,
   named ``<writer id>-compact-<hash of the input names>.parquet``; then ONE
   overwrite commit removes the inputs and adds the new file. The commit
   asserts the table's head did not move (``commit.retry.num-retries=0``, our
   tables' setting: pyiceberg would otherwise rebuild the commit on a newer
   head by itself). On a conflict the table is loaded again: if every input
   is still live the commit is tried again (bounded), else the group is given
   up and its new file is an orphan (step 4). A reader of the table therefore
   sees, at every snapshot, either the inputs or the new file, never both or
   neither: no row twice, none missing, whatever writers commit meanwhile.
3. **expiry**: snapshots that stopped being the current one more than
   ``storage.snapshot_max_age_secs`` ago (never the current one, never a
   branch or tag head) are expired; their ``signaldb.claims`` are folded into
   the table property ``signaldb.claims`` IN THE SAME COMMIT (union with what
   is there; claims of partitions older than the retention are dropped), so
   the exactly-once record can never lose a claim — not even to a crash. The
   commit also adds an empty snapshot (``signaldb.maintenance``), so that it
   asserts the head like a data commit does: two maintenance runs folding at
   once (several writers) cannot overwrite each other's property value, the
   second one fails and starts over (a property change alone carries no
   requirement in the Iceberg commit protocol).
   "Stopped being current" (the time its first child was committed), not the
   snapshot's own age: a snapshot current until a compaction minutes ago keeps
   the compacted-away files readable for ``snapshot_max_age_secs`` more, for
   scans planned on it.
4. **orphans**: objects under ``<storage>/<table>/`` (never ``metadata/``,
   never the catalog database) that no snapshot references — all snapshots,
   not only the current — and whose modification time is older than
   ``storage.orphan_min_age_secs`` are deleted; so are leftover temp files
   (names starting with ``.``). The objects are listed *before* the table is
   loaded, so a file committed between the two is seen as referenced. The
   minimum age must exceed the longest time any writer may take from writing
   a file to committing it (a catalog outage included; see docs/operations.md).

The job runs in every writer (``WriterService`` starts it when the catalog is
enabled and ``storage.maintenance_interval_secs`` > 0; each wait is jittered
so writers do not run in lockstep) and once by ``signaldb maintain``. Runs in
several writers at once are safe: every change is an Iceberg commit that fails
when the table moved underneath, and file deletion only ever touches objects
no snapshot references.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from signaldb.config import Config
from signaldb.writer import parquet
from signaldb.writer.catalog import Tables, storage_root_uri, storage_schema
from signaldb.writer.claims import FOLDED_PROPERTY, SUMMARY_KEY, Claims, encode_folded
from signaldb.writer.metrics import WriterMetrics
from signaldb.writer.storage import ObjectConflict, ObjectStore, StoreAborted, open_store, put_with_retry
from signaldb.writer.tables import partition_name, time_column

log = logging.getLogger(__name__)

COMPACTION_KEY = "signaldb.compaction"
RETENTION_KEY = "signaldb.retention"
MAINTENANCE_KEY = "signaldb.maintenance"
WRITER_KEY = "signaldb.writer"
ORPHANS_SINCE_PROPERTY = "signaldb.orphans-since-ms"
# A writer puts its first file of a table before the commit that creates the table: files up
# to this long before the table's earliest trace still count as the table's own.
PRE_TABLE_MARGIN_SECS = 60.0

# A closed hour is one no writer should still be adding files to in the normal course: its
# end lies more than this far back. Late data for it is still committed (compaction is correct
# either way: it conflicts and retries), but compacting an hour that keeps growing would only
# rewrite it again and again.
CLOSED_HOUR_GRACE_MIN_SECS = 600.0
# A group is held in Arrow while it is rewritten: its uncompressed size (Parquet footers) is
# kept under this many times storage.compaction_target_bytes, whatever its compressed size
# (telemetry compresses 5-20x: a full target of compressed input could need gigabytes).
GROUP_ARROW_BYTES_PER_TARGET = 4
# Attempts of one compaction/retention/expiry commit that conflict with other commits.
MAX_COMMIT_ATTEMPTS = 8
_CONFLICT_PAUSE_MAX_SECS = 1.0
_HOUR_SECS = 3600


def closed_hour_grace(file_max_age_secs: float) -> float:
    """How long after its end an hour counts as closed: two file ages (a writer's last buffer
    of the hour is written and committed by then), and never less than 10 minutes."""
    return max(2.0 * file_max_age_secs, CLOSED_HOUR_GRACE_MIN_SECS)


def _is_conflict(err: BaseException) -> bool:
    from pyiceberg.exceptions import CommitFailedException

    return isinstance(err, CommitFailedException)


@dataclass
class TableReport:
    """What one run did to one table (logged, and printed by ``signaldb maintain``)."""

    table: str
    compacted_groups: int = 0
    compacted_files: int = 0
    compacted_rows: int = 0
    compacted_bytes_in: int = 0
    compacted_bytes_out: int = 0
    compaction_given_up: int = 0
    retention_files: int = 0
    expired_snapshots: int = 0
    orphans_deleted: int = 0
    orphan_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    secs: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class _Live:
    """A data file of the current snapshot."""

    data_file: Any  # pyiceberg DataFile
    path: str  # relative to storage (None-free: files outside the storage root are skipped)
    hour: int
    size: int
    rows: int


def plan_groups(
    files: Iterable[_Live], target_bytes: int, closed_before_hour: int, keep_from_hour: int | None = None
) -> list[list[_Live]]:
    """Groups of small files to compact: per (hour, directory) of a closed hour (an hour number
    below ``closed_before_hour``, and not about to be dropped by retention: ``keep_from_hour``),
    the files under ``target_bytes / 2`` in name order, binned first-fit up to ``target_bytes``;
    only groups of two or more."""
    small: dict[tuple[int, str], list[_Live]] = {}
    for f in files:
        if f.hour >= closed_before_hour or (keep_from_hour is not None and f.hour < keep_from_hour):
            continue
        if f.size >= target_bytes // 2:
            continue
        small.setdefault((f.hour, f.path.rsplit("/", 1)[0]), []).append(f)
    groups = []
    for key in sorted(small):
        current: list[_Live] = []
        size = 0
        for f in sorted(small[key], key=lambda f: f.path):
            if current and size + f.size > target_bytes:
                groups.append(current)
                current, size = [], 0
            current.append(f)
            size += f.size
        groups.append(current)
    return [g for g in groups if len(g) >= 2]


def _is_maintenance_snapshot(snapshot: Any) -> bool:
    summary = snapshot.summary.additional_properties if snapshot.summary else {}
    return MAINTENANCE_KEY in summary and SUMMARY_KEY not in summary


def compacted_path(writer_id: str, inputs: Sequence[str]) -> str:
    """``<partition dir>/<writer id>-compact-<hash of the input names>.parquet``: a retried
    compaction of the same inputs writes the same name (create-only: same content, kept)."""
    digest = hashlib.sha256("\n".join(sorted(inputs)).encode()).hexdigest()[:16]
    return f"{inputs[0].rsplit('/', 1)[0]}/{writer_id}-compact-{digest}.parquet"


class Maintenance:
    """The maintenance job for every table of one catalog (see the module doc)."""

    def __init__(
        self,
        cfg: Config,
        writer_id: str,
        metrics: WriterMetrics,
        tables: Tables | None = None,
        store: ObjectStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.catalog_cfg = cfg.catalog
        self.writer_id = writer_id
        self.metrics = metrics
        # Its own catalog client and store: the sink's are used from the flusher thread.
        self.tables = tables or Tables(cfg.catalog, cfg.storage_url)
        self.store = store or open_store(cfg.storage_url)
        self.root = storage_root_uri(cfg.storage_url).rstrip("/") + "/"
        self.grace = closed_hour_grace(cfg.writer.file_max_age_secs)
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the background thread ---------------------------------------------------

    def start(self) -> None:
        interval = self.catalog_cfg.maintenance_interval_secs
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="writer-maintenance", daemon=True)
        self._thread.start()
        log.info("table maintenance scheduled", extra={"interval_secs": interval})

    def stop(self, timeout: float) -> bool:
        """Asks the job to stop (it checks between files and steps); True when it ended in time.
        A run cut short leaves at most an orphan file behind (deleted by a later run)."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "table maintenance still running at shutdown; left to end with the process",
                extra={"waited_secs": timeout},
            )
            return False
        return True

    def _loop(self, interval: float) -> None:
        # The first run comes after a random part of the interval, later ones after 0.75-1.25
        # intervals: writers started together drift apart instead of all compacting at once.
        delay = random.uniform(0.5, 1.0) * interval
        while not self._stop.wait(delay):
            try:
                self.run_once()
            except Exception:  # never let the writer lose its maintenance thread
                log.exception("table maintenance run failed")
            delay = interval * random.uniform(0.75, 1.25)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- one run --------------------------------------------------------------------

    def run_once(self, only: Sequence[str] | None = None) -> list[TableReport]:
        """One pass over every existing table (or ``only`` those); returns what it did."""
        started = time.monotonic()
        reports = []
        try:
            names = self.tables.existing()
        except Exception as err:
            for task in ("retention", "compaction", "expiry", "orphans"):
                self.metrics.maintenance_runs.labels(task, "error").inc()
            log.error("table maintenance: catalog unreachable", extra={"error": str(err)[:500]})
            return [TableReport("*", errors=[f"catalog: {err}"])]
        for name in names:
            if only and name not in only:
                continue
            if self.stopping:
                break
            reports.append(self._run_table(name))
        log.info(
            "table maintenance run done",
            extra={
                "tables": len(reports),
                "secs": round(time.monotonic() - started, 3),
                "errors": sum(len(r.errors) for r in reports),
            },
        )
        return reports

    def _run_table(self, name: str) -> TableReport:
        report = TableReport(name)
        steps: list[tuple[str, Callable[[str, TableReport], None]]] = [
            ("retention", self._retention),
            ("compaction", self._compaction),
            ("expiry", self._expiry),
            ("orphans", self._orphans),
        ]
        for task, step in steps:
            if self.stopping:
                break
            started = time.monotonic()
            try:
                step(name, report)
            except Exception as err:
                self.metrics.maintenance_runs.labels(task, "error").inc()
                report.errors.append(f"{task}: {err!r}"[:1000])
                log.error(
                    "table maintenance step failed",
                    exc_info=True,
                    extra={"table": name, "task": task, "error": str(err)[:500]},
                )
            else:
                self.metrics.maintenance_runs.labels(task, "ok").inc()
            report.secs[task] = round(time.monotonic() - started, 3)
        try:
            table = self.tables.load(name)
            snapshot = table.current_snapshot()
            if snapshot is not None and snapshot.summary is not None:
                files = int(snapshot.summary.additional_properties.get("total-data-files", 0) or 0)
                self.metrics.table_files.labels(name).set(files)
        except Exception:  # the gauge only; the steps logged any real trouble
            pass
        log.info("table maintenance", extra=report.as_dict())
        return report

    # -- what the table holds ---------------------------------------------------------

    def _relative(self, uri: str) -> str | None:
        """A data file's path relative to the storage root; None when it lies elsewhere."""
        if uri.startswith(self.root):
            return uri[len(self.root) :]
        return None

    def _hour_index(self, table: Any) -> tuple[int, int] | None:
        """(spec id, position of the hour field) of the table's default spec."""
        spec = table.spec()
        for i, f in enumerate(spec.fields):
            if f.name == f"{time_column(table.name()[-1])}_hour":
                return spec.spec_id, i
        return None

    def _live_files(self, table: Any) -> list[_Live]:
        """The data files of the current snapshot that lie under the storage root."""
        snapshot = table.current_snapshot()
        found = self._hour_index(table)
        if snapshot is None or found is None:
            return []
        spec_id, index = found
        out = []
        for manifest in snapshot.manifests(table.io):
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                df = entry.data_file
                rel = self._relative(df.file_path)
                if rel is None or df.spec_id != spec_id or df.partition[index] is None:
                    continue
                out.append(_Live(df, rel, int(df.partition[index]), int(df.file_size_in_bytes), int(df.record_count)))
        return out

    def _referenced(self, table: Any) -> set[str]:
        """Every data file any snapshot references (relative paths)."""
        seen: set[str] = set()
        out: set[str] = set()
        for snapshot in table.snapshots():
            for manifest in snapshot.manifests(table.io):
                if manifest.manifest_path in seen:
                    continue
                seen.add(manifest.manifest_path)
                for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                    rel = self._relative(entry.data_file.file_path)
                    if rel is not None:
                        out.add(rel)
        return out

    def _retention_hour(self) -> int | None:
        """The first hour kept by ``storage.retention_hours`` (hours before it end more than
        that long ago); None when everything is kept."""
        hours = self.catalog_cfg.retention_hours
        if hours <= 0:
            return None
        return int((self.clock() - hours * _HOUR_SECS) // _HOUR_SECS)

    def _commit_loop(self, name: str, attempt_once: Callable[[Any], bool | None]) -> bool | None:
        """Runs ``attempt_once(fresh table)`` until it returns without a commit conflict
        (its result), at most ``MAX_COMMIT_ATTEMPTS`` times (then raises the conflict)."""
        for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
            table = self.tables.load(name)
            try:
                return attempt_once(table)
            except Exception as err:
                if not _is_conflict(err) or attempt == MAX_COMMIT_ATTEMPTS:
                    raise
                self.metrics.commit_conflicts.labels(name).inc()
                log.debug(
                    "maintenance commit conflict; loading the table again", extra={"table": name, "attempt": attempt}
                )
                # Short: the next attempt must fit between the other writers' commits.
                time.sleep(random.uniform(0, min(_CONFLICT_PAUSE_MAX_SECS, 0.005 * 2**attempt)))
        return None

    def _check_own_retry(self, table: Any) -> None:
        # With pyiceberg's own commit retry on, a conflicting overwrite would be rebuilt on the
        # newer head without our check that its inputs are still live (a compaction racing
        # another could then add its rows a second time). Our tables are created with 0.
        if table.properties.get("commit.retry.num-retries") != "0":
            raise RuntimeError(
                f"table {table.name()} has commit.retry.num-retries="
                f"{table.properties.get('commit.retry.num-retries')!r}; maintenance needs 0"
            )

    # -- 1. retention -------------------------------------------------------------------

    def _retention(self, name: str, report: TableReport) -> None:
        keep_from = self._retention_hour()
        if keep_from is None:
            return

        def attempt(table: Any) -> bool:
            self._check_own_retry(table)
            old = [f for f in self._live_files(table) if f.hour < keep_from]
            if not old:
                return False
            props = {
                RETENTION_KEY: json.dumps({"before": partition_name(keep_from), "files": len(old)}),
                WRITER_KEY: self.writer_id,
            }
            with table.transaction() as tx, tx.update_snapshot(snapshot_properties=props).overwrite() as ow:
                for f in old:
                    ow.delete_data_file(f.data_file)
            report.retention_files += len(old)
            log.info(
                "retention: old hours dropped",
                extra={
                    "table": name,
                    "files": len(old),
                    "rows": sum(f.rows for f in old),
                    "before": partition_name(keep_from),
                },
            )
            return True

        self._commit_loop(name, attempt)

    # -- 2. compaction ------------------------------------------------------------------

    def _compaction(self, name: str, report: TableReport) -> None:
        table = self.tables.load(name)
        self._check_own_retry(table)
        closed_before = int((self.clock() - self.grace) // _HOUR_SECS)  # hours ending before now - grace
        groups = plan_groups(
            self._live_files(table), self.catalog_cfg.compaction_target_bytes, closed_before, self._retention_hour()
        )
        limit = GROUP_ARROW_BYTES_PER_TARGET * self.catalog_cfg.compaction_target_bytes
        for planned in groups:
            for group in self._split_by_memory(table, planned, limit):
                if self.stopping:
                    return
                self._compact_group(name, table, group, report)

    def _split_by_memory(self, table: Any, group: list[_Live], limit: int) -> list[list[_Live]]:
        """``group`` cut into runs whose uncompressed size (Parquet footers) stays under ``limit``:
        the rewrite holds a group in Arrow, several times its compressed size."""
        sizes = []
        for f in group:
            with table.io.new_input(f.data_file.file_path).open() as stream:
                meta = pq.read_metadata(stream)
            sizes.append(sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)))
        out: list[list[_Live]] = [[]]
        held = 0
        for f, size in zip(group, sizes, strict=True):
            if out[-1] and held + size > limit:
                out.append([])
                held = 0
            out[-1].append(f)
            held += size
        return [g for g in out if len(g) >= 2]

    def _compact_group(self, name: str, table: Any, group: list[_Live], report: TableReport) -> None:
        started = time.monotonic()
        inputs = sorted(f.path for f in group)
        uris = {f.path: f.data_file.file_path for f in group}
        schema = storage_schema(name)
        data = []
        for path in inputs:
            with table.io.new_input(uris[path]).open() as stream:
                # The files hold the storage types already; the cast only normalises field
                # nullability/metadata so that the batches share one schema.
                data.append(pq.read_table(stream).select(schema.names).cast(schema))
        expected = sum(f.rows for f in group)
        merged = pa.concat_tables(data)
        if merged.num_rows != expected:
            raise RuntimeError(
                f"compaction read {merged.num_rows} rows from {len(inputs)} files of {name}, the table lists {expected}"
            )
        body, rows = parquet.build(name, merged.to_batches())  # ordered, the writer's options
        read_secs = time.monotonic() - started
        path = compacted_path(self.writer_id, inputs)
        try:
            put_with_retry(self.store, path, body, self.metrics, lambda: self.stopping)
        except (ObjectConflict, StoreAborted) as err:
            report.compaction_given_up += 1
            log.warning(
                "compaction: output not written; group left as it is",
                extra={"table": name, "path": path, "error": str(err)},
            )
            return
        uri = f"{self.root}{path}"
        props = {COMPACTION_KEY: json.dumps({"files": len(inputs), "rows": rows}), WRITER_KEY: self.writer_id}

        from pyiceberg.io.pyarrow import parquet_file_to_data_file

        # The DataFile (partition, column statistics) of a Parquet file we wrote ourselves, so
        # that our name and bloom filter stay: the public call add_files (and the committer)
        # use. Built once: it depends on the schema and spec only, which maintenance never changes.
        new_file = parquet_file_to_data_file(table.io, table.metadata, uri)

        def attempt(fresh: Any) -> bool:
            self._check_own_retry(fresh)
            if (
                fresh.metadata.current_schema_id != table.metadata.current_schema_id
                or fresh.metadata.default_spec_id != table.metadata.default_spec_id
            ):
                return False  # evolved meanwhile: leave the group to the next run
            live = {f.path: f for f in self._live_files(fresh)}
            if path in live:
                return True  # an earlier attempt landed (its answer was lost)
            if any(p not in live for p in inputs):
                return False  # another compaction or retention took some inputs
            with fresh.transaction() as tx, tx.update_snapshot(snapshot_properties=props).overwrite() as ow:
                for p in inputs:
                    ow.delete_data_file(live[p].data_file)
                ow.append_data_file(new_file)
            return True

        try:
            done = self._commit_loop(name, attempt)
        except Exception as err:
            if not _is_conflict(err):
                raise
            done = False
        if not done:
            report.compaction_given_up += 1
            log.info(
                "compaction: inputs changed meanwhile or conflicts persisted; group given up "
                "(its new file is an orphan)",
                extra={"table": name, "path": path, "inputs": len(inputs)},
            )
            return
        in_bytes = sum(f.size for f in group)
        report.compacted_groups += 1
        report.compacted_files += len(inputs)
        report.compacted_rows += rows
        report.compacted_bytes_in += in_bytes
        report.compacted_bytes_out += len(body)
        self.metrics.compacted_files.labels(name).inc(len(inputs))
        secs = time.monotonic() - started
        log.info(
            "compaction: files replaced",
            extra={
                "table": name,
                "partition": partition_name(group[0].hour),
                "files": len(inputs),
                "rows": rows,
                "bytes_in": in_bytes,
                "bytes_out": len(body),
                "path": path,
                "read_build_secs": round(read_secs, 3),
                "secs": round(secs, 3),
            },
        )

    # -- 3. expiry ------------------------------------------------------------------------

    def _expirable(self, table: Any) -> list[Any]:
        """Snapshots that stopped being current more than ``snapshot_max_age_secs`` ago."""
        current = table.current_snapshot()
        if current is None:
            return []
        cutoff_ms = (self.clock() - self.catalog_cfg.snapshot_max_age_secs) * 1000
        protected = {ref.snapshot_id for ref in table.metadata.refs.values()}
        superseded: dict[int, int] = {}
        for s in table.snapshots():
            if s.parent_snapshot_id is not None:
                at = superseded.get(s.parent_snapshot_id)
                superseded[s.parent_snapshot_id] = s.timestamp_ms if at is None else min(at, s.timestamp_ms)
        out = []
        for s in table.snapshots():
            if s.snapshot_id in protected:
                continue
            # A snapshot without a child (a dead branch) was never current for long: its own age.
            if superseded.get(s.snapshot_id, s.timestamp_ms) < cutoff_ms:
                out.append(s)
        return out

    def _expiry(self, name: str, report: TableReport) -> None:
        keep_from = self._retention_hour()

        def attempt(table: Any) -> bool:
            from pyiceberg.table.update.snapshot import ExpireSnapshots

            expire = self._expirable(table)
            folded = table.properties.get(FOLDED_PROPERTY, "")
            claims = Claims()
            if folded:
                claims.add_encoded(folded)
            for s in expire:
                text = s.summary.additional_properties.get(SUMMARY_KEY) if s.summary else None
                if text:
                    claims.add_encoded(text)
            if keep_from is not None:
                claims.drop_partitions_before(partition_name(keep_from))
            value = encode_folded(claims)
            unchanged = value == folded or (not folded and not len(claims))
            # Only our own earlier expiry snapshots are due: leave them for the next time real
            # ones are (expiring them now would add another, one per run on an idle table).
            if unchanged and all(_is_maintenance_snapshot(s) for s in expire):
                return False
            props = {
                MAINTENANCE_KEY: json.dumps({"expired": len(expire), "claims_folded": len(claims)}),
                WRITER_KEY: self.writer_id,
            }
            with table.transaction() as tx:
                tx.set_properties({FOLDED_PROPERTY: value})
                if expire:
                    ExpireSnapshots(tx).by_ids([s.snapshot_id for s in expire]).commit()
                # The empty snapshot makes this commit assert the head (see the module doc).
                with tx.update_snapshot(snapshot_properties=props).fast_append():
                    pass
            report.expired_snapshots += len(expire)
            log.info(
                "expiry: snapshots expired, their claims folded into the table property",
                extra={
                    "table": name,
                    "snapshots": len(expire),
                    "folded_partition_sources": len(claims),
                    "property_bytes": len(value),
                },
            )
            return True

        self._commit_loop(name, attempt)

    def _orphans_since(self, name: str, table: Any) -> float:
        """Seconds since the epoch before which no file can be an orphan of this table: the
        table's earliest trace, kept in the table property ``signaldb.orphans-since-ms`` (set
        on the first run). Files under ``<storage>/<table>/`` older than that were there before
        the table (plain Parquet written with ``storage.catalog_url=none`` by an earlier version
        or setup): they hold data no commit knows about and are never deleted."""
        value = table.properties.get(ORPHANS_SINCE_PROPERTY)
        if value is not None:
            return int(value) / 1000
        md = table.metadata
        times = [
            md.last_updated_ms,
            *(s.timestamp_ms for s in md.snapshots),
            *(e.timestamp_ms for e in md.snapshot_log),
            *(e.timestamp_ms for e in md.metadata_log),
        ]
        earliest = min(times)

        def attempt(fresh: Any) -> bool:
            with fresh.transaction() as tx:
                tx.set_properties({ORPHANS_SINCE_PROPERTY: str(earliest)})
            return True

        self._commit_loop(name, attempt)
        log.info(
            "orphan cleanup: files older than the table are never deleted", extra={"table": name, "since_ms": earliest}
        )
        return float(earliest) / 1000

    # -- 4. orphans -----------------------------------------------------------------------

    def _orphans(self, name: str, report: TableReport) -> None:
        min_age = self.catalog_cfg.orphan_min_age_secs
        # List first, then load: a file committed in between is in the table we read.
        objects = [o for o in self.store.list(f"{name}/") if not o.path.startswith(f"{name}/metadata/")]
        table = self.tables.load(name)
        referenced = self._referenced(table)
        since = self._orphans_since(name, table)
        now = self.clock()
        emptied: set[str] = set()
        older = 0
        for obj in objects:
            if self.stopping:
                return
            base = obj.path.rsplit("/", 1)[-1]
            if now - obj.modified < min_age or obj.path in referenced:
                continue
            if obj.modified < since - PRE_TABLE_MARGIN_SECS:
                older += 1  # from before the table: plain-file data, never ours to delete
                continue
            if not (base.endswith(".parquet") or base.startswith(".")):
                continue  # not ours: left alone
            self.store.delete(obj.path)
            emptied.add(obj.path.rsplit("/", 1)[0])
            report.orphans_deleted += 1
            report.orphan_bytes += obj.size
            self.metrics.orphans_deleted.inc()
            log.info(
                "orphan file deleted",
                extra={"table": name, "path": obj.path, "bytes": obj.size, "age_secs": round(now - obj.modified)},
            )
        if older:
            log.warning(
                "unreferenced files older than the table are left alone (plain Parquet files written "
                "before the catalog was used?); see docs/operations.md, Table maintenance",
                extra={"table": name, "files": older, "table_since": since},
            )
        # Hour directories this emptied go too (retention leaves them behind, hour by hour); a
        # writer putting a file into one at that moment meets ENOENT and its put is retried
        # (put makes missing directories).
        for d in sorted(emptied, key=len, reverse=True):
            while d.startswith(f"{name}/") and self.store.remove_empty_dir(d):
                d = d.rsplit("/", 1)[0]
