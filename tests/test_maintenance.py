"""Table maintenance (writer/maintenance.py) against real writers and the real embedded catalog.

Writer processes commit to the default SQLite catalog on file:// storage; maintenance runs
in-process (as ``signaldb maintain`` does) or as the writer's own thread; pyiceberg reads.
The central property: a reader of the table never sees a row twice or misses one, at any
snapshot, while compaction replaces files and writers keep committing.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pyarrow.compute as pc
import pytest

from helpers import iceberg
from helpers.net import http_get
from helpers.writer import WriterProcess, convert, put, put_request, traces_request
from signaldb.config import load
from signaldb.service.metrics import new_registry
from signaldb.writer import parquet
from signaldb.writer.catalog import Tables
from signaldb.writer.claims import FOLDED_PROPERTY, Claims, decode_claims
from signaldb.writer.maintenance import Maintenance, _Live, plan_groups
from signaldb.writer.metrics import WriterMetrics
from signaldb.writer.storage import open_store
from signaldb.writer.tables import partition_name

HOUR_NS = 3_600_000_000_000
T_HOUR = 1_795_485_600_000_000_000  # 2026-11-24 02:00 UTC: long closed
SPANS = 4  # spans per request


@pytest.fixture
def procs() -> Iterator[list[WriterProcess]]:
    started: list[WriterProcess] = []
    yield started
    for w in started:
        w.close()


def _writer(
    procs: list[WriterProcess], tmp: pathlib.Path, storage: pathlib.Path, *args: str, env: dict[str, str] | None = None
) -> WriterProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    w = WriterProcess(
        tmp,
        storage_url=f"file://{storage}",
        args=args,
        env={"SIGNALDB_CATALOG_URL": "", "SIGNALDB_MAINTENANCE_INTERVAL_SECS": "0", **(env or {})},
    )
    procs.append(w)
    return w


def _maintenance(storage: pathlib.Path, writer_id: str = "maint-test", **settings: str) -> Maintenance:
    """The job as ``signaldb maintain`` builds it, with settings given as environment variables."""
    cfg = load(None, "maintain", environ={"SIGNALDB_STORAGE_URL": f"file://{storage}", **settings})
    return Maintenance(cfg, writer_id, WriterMetrics(new_registry("maintain")))


def _health(w: WriterProcess) -> dict:
    return json.loads(http_get(w.url("/health"))[1])


def _settled(w: WriterProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = _health(w)
        if body["wal"]["unprocessed_entries"] == 0 and body["writer"]["unprocessed_entries"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"writer did not settle: {body}")


def _metric(w: WriterProcess, name: str, match: str = "") -> float:
    text = http_get(w.url("/metrics"))[1].decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and match in line and not line.startswith("#")
    )


def _span_ids(entry: int) -> set[str]:
    """The span ids (hex) of request ``entry`` (traces_request derives them from its seed)."""
    return {f"{entry * 1000 + i + 1:016x}" for i in range(SPANS)}


def _claimed_entries(table, snapshot) -> set[int]:
    """The acc-1 entries the commits in ``snapshot``'s lineage claim (plus folded claims)."""
    out: set[int] = set()
    folded = table.properties.get(FOLDED_PROPERTY)
    if folded:
        for sources in decode_claims(folded).values():
            for lo, hi in sources.get("acc-1", []):
                out.update(range(lo, hi + 1))
    while snapshot is not None:
        text = snapshot.summary.additional_properties.get("signaldb.claims") if snapshot.summary else None
        if text:
            for sources in decode_claims(text).values():
                for lo, hi in sources.get("acc-1", []):
                    out.update(range(lo, hi + 1))
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return out


def _check_snapshot(table, snapshot) -> int:
    """The rows a reader sees at ``snapshot`` are exactly those its lineage's commits claim,
    each once; returns their number."""
    rows = table.scan(snapshot_id=snapshot.snapshot_id, selected_fields=("span_id",)).to_arrow()
    ids = rows.column("span_id").to_pylist()
    assert len(ids) == len(set(ids)), f"snapshot {snapshot.snapshot_id}: {len(ids) - len(set(ids))} rows twice"
    want: set[str] = set()
    for e in _claimed_entries(table, snapshot):
        want |= _span_ids(e)
    assert set(ids) == want, (
        f"snapshot {snapshot.snapshot_id} ({snapshot.summary.operation}): "
        f"{len(want - set(ids))} rows missing, {len(set(ids) - want)} unexpected: "
        f"{sorted(want ^ set(ids))[:12]}"
    )
    return len(ids)


def _live_paths(storage: pathlib.Path, table: str = "traces") -> list[pathlib.Path]:
    return iceberg.committed_files(storage, table) or []


# -- planning --------------------------------------------------------------------------


def test_plan_groups_bins_small_files_of_closed_hours_only() -> None:
    def f(path: str, hour: int, size: int) -> _Live:
        return _Live(None, path, hour, size, 1)

    files = [
        f("t/h10/a", 10, 30),
        f("t/h10/b", 10, 30),
        f("t/h10/c", 10, 50),
        f("t/h10/big", 10, 60),
        f("t/h11/a", 11, 10),
        f("t/h11/b", 11, 10),  # hour 11 is open
        f("t/h9/a", 9, 10),  # alone in its hour: nothing to merge
        f("t/h5/a", 5, 10),
        f("t/h5/b", 5, 10),
    ]  # about to be dropped by retention
    groups = plan_groups(files, target_bytes=100, closed_before_hour=11, keep_from_hour=6)
    assert [[x.path for x in g] for g in groups] == [["t/h10/a", "t/h10/b"]]  # c would pass 100; big is not small
    groups = plan_groups(files, target_bytes=200, closed_before_hour=12)
    assert [[x.path for x in g] for g in groups] == [
        ["t/h5/a", "t/h5/b"],
        ["t/h10/a", "t/h10/b", "t/h10/big", "t/h10/c"],
        ["t/h11/a", "t/h11/b"],
    ]  # 60 < 200 / 2: small now


# -- compaction -----------------------------------------------------------------------


def test_compaction_while_a_writer_commits_and_a_reader_scans_is_exact_at_every_snapshot(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    """The writer keeps committing small files into the very hour being compacted (late data
    for a closed hour: the hardest case, every compaction races a commit); a reader scans the
    current snapshot in a loop. At every snapshot the reader sees — and at every snapshot in
    the history afterwards — the rows are exactly those the writers' commits claim, once."""
    storage = tmp_path / "data"
    w = _writer(procs, tmp_path / "w", storage, "--file-max-age-secs", "0.25").start()
    client = w.client()
    now_ns = time.time_ns()
    for e in (1, 2, 3):  # the open (current) hour: three files, never compacted
        put_request(client, "traces", traces_request(e, spans=SPANS, start_ns=now_ns + e), e)
        time.sleep(0.5)
    _settled(w)
    open_files = len(_live_paths(storage))
    assert open_files == 3

    job = _maintenance(storage, SIGNALDB_COMPACTION_TARGET_BYTES=str(1 << 20))
    # A second maintenance job (another writer's) races the first for the same groups.
    other = _maintenance(storage, "maint-other", SIGNALDB_COMPACTION_TARGET_BYTES=str(1 << 20))
    done = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []
    runs = []

    def feed() -> None:
        try:
            for e in range(10, 250):
                put(
                    client,
                    "traces",
                    "acc-1",
                    [
                        (
                            convert("traces", traces_request(e, spans=SPANS, start_ns=T_HOUR + e * 1000))["traces"],
                            [(e, SPANS)],
                        )
                    ],
                )
                time.sleep(0.01)
        except BaseException as err:
            errors.append(err)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set():
                table = iceberg.load(storage, "traces")
                snapshot = table.current_snapshot()
                seen.append(_check_snapshot(table, snapshot))
        except BaseException as err:
            errors.append(err)

    def maintain(m: Maintenance, pause: float) -> None:
        try:
            while not done.is_set():
                runs.extend(m.run_once(["traces"]))
                time.sleep(pause)
        except BaseException as err:
            errors.append(err)

    threads = [
        threading.Thread(target=feed),
        threading.Thread(target=read),
        threading.Thread(target=maintain, args=(job, 0.2)),
        threading.Thread(target=maintain, args=(other, 0.3)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    _settled(w)
    runs.extend(job.run_once(["traces"]))  # and once more with everything committed

    table = iceberg.load(storage, "traces")
    for snapshot in table.snapshots():
        _check_snapshot(table, snapshot)
    assert _check_snapshot(table, table.current_snapshot()) == (3 + 240) * SPANS
    assert not any(r.errors for r in runs), [r.errors for r in runs if r.errors]
    compactions = [s for s in table.snapshots() if "signaldb.compaction" in s.summary.additional_properties]
    assert compactions and sum(r.compacted_files for r in runs) >= 10
    # The closed hour ends up in one file; the open hour's three files are untouched.
    closed = [p for p in _live_paths(storage) if partition_name(T_HOUR // HOUR_NS) in str(p)]
    assert len(closed) == 1 and "-compact-" in closed[0].name
    assert len(_live_paths(storage)) == 1 + open_files
    conflicts = sum(m.metrics.commit_conflicts.labels("traces")._value.get() for m in (job, other))
    given_up = sum(r.compaction_given_up for r in runs)
    print(
        f"\nreader checked {len(seen)} snapshots while {len(compactions)} compactions landed "
        f"({sum(r.compacted_files for r in runs)} files); {conflicts:.0f} conflicts, {given_up} groups given up; "
        f"{len(table.snapshots())} snapshots in history all exact"
    )
    client.close()
    assert w.stop() == 0


def test_signaldb_maintain_compacts_keeping_the_writer_options(
    tmp_path: pathlib.Path, procs: list[WriterProcess]
) -> None:
    """``signaldb maintain`` compacts; the new file is ordered by service, zstd, with the trace_id
    bloom filter."""
    import pyarrow.parquet as pq

    storage = tmp_path / "data"
    w = _writer(procs, tmp_path / "w", storage, "--file-max-age-secs", "0.1").start()
    client = w.client()
    for e in range(1, 6):
        put_request(
            client, "traces", traces_request(e, spans=SPANS, start_ns=T_HOUR + e, services=("b-svc", "a-svc")), e
        )
        time.sleep(0.25)
    _settled(w)
    assert len(_live_paths(storage)) >= 2
    # As a CronJob would run it.
    done = subprocess.run(
        [sys.executable, "-m", "signaldb.cli", "maintain", "--storage-url", f"file://{storage}", "--table", "traces"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SIGNALDB_CATALOG_URL": ""},
    )
    assert done.returncode == 0, done.stderr
    [report] = json.loads(done.stdout)
    assert report["table"] == "traces" and report["compacted_files"] >= 2 and not report["errors"]
    [path] = _live_paths(storage)
    assert path.name.startswith("maintain-")
    meta = pq.ParquetFile(path).metadata
    column = meta.row_group(0).column(meta.schema.names.index("trace_id"))
    assert column.compression == "ZSTD"
    assert column.bloom_filter_offset is not None
    services = pq.read_table(path, columns=["service_name"]).column(0).to_pylist()
    assert services == sorted(services)
    assert len(iceberg.load(storage, "traces").scan().to_arrow()) == 5 * SPANS
    client.close()
    assert w.stop() == 0


def test_the_writer_runs_maintenance_in_the_background_and_stops_promptly(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    storage = tmp_path / "data"
    w = _writer(
        procs, tmp_path / "w", storage, "--file-max-age-secs", "0.1", env={"SIGNALDB_MAINTENANCE_INTERVAL_SECS": "0.5"}
    ).start()
    client = w.client()
    for e in range(1, 8):
        put_request(client, "traces", traces_request(e, spans=SPANS, start_ns=T_HOUR + e), e)
        time.sleep(0.2)
    client.close()
    _settled(w)
    deadline = time.monotonic() + 30
    while len(_live_paths(storage)) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_live_paths(storage)) == 1
    assert _metric(w, "signaldb_writer_compacted_files_total") >= 2
    assert _metric(w, "signaldb_writer_maintenance_runs_total", 'outcome="ok",task="compaction"') >= 1
    assert _metric(w, "signaldb_writer_maintenance_runs_total", 'outcome="error"') == 0
    assert any(line.get("msg") == "compaction: files replaced" for line in w.log_lines())
    assert len(iceberg.load(storage, "traces").scan().to_arrow()) == 7 * SPANS
    started = time.monotonic()
    assert w.stop() == 0
    assert time.monotonic() - started < 10


# -- retention --------------------------------------------------------------------------


def test_retention_drops_old_hours_only_and_their_folded_claims(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    storage = tmp_path / "data"
    w = _writer(procs, tmp_path / "w", storage, "--file-max-age-secs", "0.1").start()
    client = w.client()
    recent = time.time_ns() - HOUR_NS  # an hour ago: kept by a 24-hour retention
    for e in range(1, 4):
        put_request(client, "traces", traces_request(e, spans=SPANS, start_ns=T_HOUR + e), e)  # days old
        put_request(client, "traces", traces_request(100 + e, spans=SPANS, start_ns=recent + e), 100 + e)
        time.sleep(0.2)
    client.close()
    _settled(w)
    old_partition = partition_name(T_HOUR // HOUR_NS)
    assert any(old_partition in str(p) for p in _live_paths(storage))
    job = _maintenance(
        storage, SIGNALDB_RETENTION_HOURS="24", SIGNALDB_SNAPSHOT_MAX_AGE_SECS="0", SIGNALDB_ORPHAN_MIN_AGE_SECS="0"
    )
    [report] = job.run_once()
    assert not report.errors and report.retention_files >= 1
    table = iceberg.load(storage, "traces")
    ids = set(table.scan(selected_fields=("span_id",)).to_arrow().column("span_id").to_pylist())
    assert ids == set().union(*(_span_ids(100 + e) for e in range(1, 4)))  # the recent hour, whole
    assert not any(old_partition in str(p) for p in _live_paths(storage))
    # The old hour's claims are gone from the folded property; the recent hour's are there.
    folded = decode_claims(table.properties[FOLDED_PROPERTY])
    assert old_partition not in folded and len(folded) >= 1
    # Dropped files were referenced by expired snapshots only: deleted, with their directory.
    assert not (storage / "traces" / old_partition).exists()
    assert w.stop() == 0


# -- expiry keeps the exactly-once record -----------------------------------------------


def test_expiry_keeps_claims_so_a_resend_to_another_writer_is_still_dropped(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    storage = tmp_path / "data"
    a = _writer(procs, tmp_path / "a", storage, "--file-max-age-secs", "0.1").start()
    client = a.client()
    for e in range(1, 6):
        put_request(client, "traces", traces_request(e, spans=SPANS, start_ns=T_HOUR + e), e)
        time.sleep(0.2)
    client.close()
    _settled(a)
    assert a.stop() == 0
    before = len(iceberg.load(storage, "traces").snapshots())
    [report] = _maintenance(storage, SIGNALDB_SNAPSHOT_MAX_AGE_SECS="0").run_once()
    assert not report.errors and report.expired_snapshots >= before - 1
    table = iceberg.load(storage, "traces")
    # No snapshot left carries the claims of entries 1..5: only the property does.
    summaries = [s.summary.additional_properties for s in table.snapshots()]
    assert not any(
        "acc-1" in sources
        for summary in summaries
        for sources in decode_claims(summary.get("signaldb.claims", "")).values()
    )
    claims = Claims()
    claims.add_encoded(table.properties[FOLDED_PROPERTY])
    assert all(claims.holds(partition_name(T_HOUR // HOUR_NS), "acc-1", e) for e in range(1, 6))
    # A failover: writer B gets entries 3..7 from acc-1; 3..5 are committed already.
    b = _writer(procs, tmp_path / "b", storage, "--file-max-age-secs", "0.1").start()
    client = b.client()
    for e in range(3, 8):
        put_request(client, "traces", traces_request(e, spans=SPANS, start_ns=T_HOUR + e), e)
    client.close()
    _settled(b)
    assert _metric(b, "signaldb_writer_rows_committed_elsewhere_total") == 3 * SPANS
    ids = iceberg.load(storage, "traces").scan(selected_fields=("span_id",)).to_arrow().column("span_id")
    assert len(ids) == 7 * SPANS and pc.count_distinct(ids).as_py() == 7 * SPANS
    assert b.stop() == 0


# -- orphans ------------------------------------------------------------------------------


def test_orphan_cleanup_deletes_old_unreferenced_files_only(procs: list[WriterProcess], tmp_path: pathlib.Path) -> None:
    storage = tmp_path / "data"
    w = _writer(procs, tmp_path / "w", storage, "--file-max-age-secs", "0.1").start()
    client = w.client()
    for e in range(1, 5):
        put_request(client, "traces", traces_request(e, spans=SPANS, start_ns=T_HOUR + e), e)
        time.sleep(0.2)
    client.close()
    _settled(w)
    assert w.stop() == 0
    referenced = _live_paths(storage)
    directory = referenced[0].parent
    time.sleep(3)  # the table is older than the orphans' minimum age
    old = time.time() - 2.5
    stray_old = directory / "w-crashed-before-commit.parquet"
    stray_young = directory / "w-committing-now.parquet"
    temp_old = directory / ".w-half-written.parquet.tmp"
    before_table = directory / "plain-file-from-before-the-catalog.parquet"
    for p in (stray_old, stray_young, temp_old, before_table):
        p.write_bytes(referenced[0].read_bytes())
    for p in (stray_old, temp_old, *referenced):  # referenced files are old too: kept for the reference
        os.utime(p, (old, old))
    os.utime(before_table, (old - 2 * 86400, old - 2 * 86400))
    metadata_before = sorted((storage / "traces" / "metadata").iterdir())
    settings = {"SIGNALDB_ORPHAN_MIN_AGE_SECS": "2", "SIGNALDB_COMPACTION_TARGET_BYTES": str(1 << 20)}
    [report] = _maintenance(storage, **settings).run_once()
    assert not report.errors and report.orphans_deleted == 2
    assert not stray_old.exists() and not temp_old.exists()
    assert stray_young.exists()
    assert before_table.exists()  # older than the table: plain-file data, never an orphan
    # Compaction replaced the referenced files, but older snapshots still reference them: kept.
    assert report.compacted_files == len(referenced)
    assert all(p.exists() for p in referenced)
    assert set(metadata_before) <= set((storage / "traces" / "metadata").iterdir())  # never touched
    # Once those snapshots are expired the replaced files are orphans too, and go.
    os.utime(stray_young, None)  # still young (say, a writer's file being committed right now)
    [report] = _maintenance(storage, SIGNALDB_SNAPSHOT_MAX_AGE_SECS="0", **settings).run_once()
    assert not report.errors and report.orphans_deleted == len(referenced)
    assert not any(p.exists() for p in referenced) and stray_young.exists() and before_table.exists()
    assert len(iceberg.load(storage, "traces").scan().to_arrow()) == 4 * SPANS
    assert (storage / "catalog.db").exists()


# -- measured ---------------------------------------------------------------------------


def test_compaction_throughput(tmp_path: pathlib.Path) -> None:
    """Compaction time for N files of a closed hour (files written the writer's way and added
    to the table directly); prints the figures."""
    storage = tmp_path / "data"
    files, spans = int(os.environ.get("MAINT_BENCH_FILES", "40")), int(os.environ.get("MAINT_BENCH_SPANS", "2000"))
    cfg = load(None, "maintain", environ={"SIGNALDB_STORAGE_URL": f"file://{storage}"})
    tables, store = Tables(cfg.catalog, cfg.storage_url), open_store(cfg.storage_url)
    uris, size = [], 0
    for i in range(files):
        batch = convert(
            "traces",
            traces_request(i, spans=spans, start_ns=T_HOUR + i, spacing_ns=1000, services=("checkout", "api", "db")),
        )["traces"]
        data, _ = parquet.build("traces", [batch], storage_types=True)
        path = f"traces/{partition_name(T_HOUR // HOUR_NS)}/w-{i}.parquet"
        store.put(path, data)
        uris.append(tables.data_file_uri(path))
        size += len(data)
    table = tables.load("traces")
    with table.transaction() as tx:
        tx.add_files(uris, check_duplicate_files=False)
    import pyarrow as pa

    job = _maintenance(storage, SIGNALDB_COMPACTION_TARGET_BYTES=str(max(1 << 20, 4 * size)))
    pool = pa.default_memory_pool()
    pool.release_unused()
    base = pool.bytes_allocated()
    started = time.monotonic()
    [report] = job.run_once()
    secs = time.monotonic() - started
    peak = pool.max_memory() - base
    arrow_bytes = tables.load("traces").scan().to_arrow().nbytes
    assert report.compacted_files == files and report.compacted_rows == files * spans
    assert len(tables.load("traces").scan().to_arrow()) == files * spans
    print(
        f"\ncompaction: {files} files, {files * spans} rows, {size / 1e6:.1f} MB in -> "
        f"{report.compacted_bytes_out / 1e6:.1f} MB out: {report.secs['compaction']:.2f} s "
        f"({files * spans / report.secs['compaction']:,.0f} rows/s); whole run {secs:.2f} s; "
        f"rows in Arrow {arrow_bytes / 1e6:.0f} MB, Arrow pool peak {peak / 1e6:.0f} MB"
    )


# -- the stores' listing and deletion (orphan cleanup) on S3 -------------------------------


def test_s3_store_lists_and_deletes_objects_for_orphan_cleanup(weed) -> None:
    """What orphan cleanup needs from S3 (SeaweedFS): every object under a table's prefix with its
    size and Last-Modified, and a delete that is quiet about an object already gone."""
    from helpers.seaweed import BUCKET, S3_ENV
    from signaldb.writer.storage import S3Store

    saved = dict(os.environ)
    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": weed.endpoint})
    try:
        store = S3Store(f"s3://{BUCKET}/maint")
        before = time.time() - 5
        store.put("traces/date=2026-11-24/hour=02/a.parquet", b"a" * 10)
        store.put("traces/date=2026-11-24/hour=02/.b.parquet.tmp", b"b")
        store.put("traces/metadata/v1.metadata.json", b"{}")
        store.put("traces_other/x.parquet", b"x")  # another prefix sharing the name's start
        found = {o.path: o for o in store.list("traces/")}
        assert set(found) == {
            "traces/date=2026-11-24/hour=02/a.parquet",
            "traces/date=2026-11-24/hour=02/.b.parquet.tmp",
            "traces/metadata/v1.metadata.json",
        }
        a = found["traces/date=2026-11-24/hour=02/a.parquet"]
        assert a.size == 10 and before <= a.modified <= time.time() + 5
        store.delete(a.path)
        store.delete(a.path)  # gone already: fine
        assert a.path not in {o.path for o in store.list("traces/")}
        assert not store.remove_empty_dir("traces/date=2026-11-24/hour=02")  # no directories on S3
    finally:
        os.environ.clear()
        os.environ.update(saved)
