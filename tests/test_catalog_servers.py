"""The Iceberg catalogs SignalDB supports, as real servers, driven by real pyiceberg.

Proves the test harness (tests/helpers/postgres.py, the Iceberg REST catalog of
tests/helpers/seaweed.py) and measures what the writer's design rests on: per-commit latency
of each catalog, concurrent commits from two processes with pyiceberg's own retry off
(``commit.retry.num-retries=0``: the loser gets CommitFailedException, refreshes, commits
again, and every commit lands exactly once), ``add_files`` of a Parquet file we wrote
ourselves, and a PostgreSQL outage in the middle of a run. Figures are printed (``-s``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import uuid

import pyarrow.parquet as pq
import pytest

from helpers.catalog_child import ARROW_SCHEMA, HOUR, rows

pytest.importorskip("pyiceberg")  # a runtime dependency (pyproject.toml): present after `make venv`

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import HourTransform
from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

CHILD = pathlib.Path(__file__).parent / "helpers" / "catalog_child.py"
NAMESPACE = "signaldb"
SCHEMA = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "ts", TimestamptzType(), required=True),
    NestedField(3, "worker", StringType(), required=True),
)
SPEC = PartitionSpec(PartitionField(source_id=2, field_id=1000, transform=HourTransform(), name="ts_hour"))
# SignalDB owns the retry (it re-checks entries before committing again), so pyiceberg's is off.
TABLE_PROPS = {"commit.retry.num-retries": "0"}


@pytest.fixture(params=["sqlite", "postgres", "rest"])
def catalog_props(request, tmp_path) -> dict:
    """pyiceberg catalog properties for a fresh, empty catalog of each kind."""
    if request.param == "sqlite":
        return {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/warehouse"}
    if request.param == "postgres":
        pg = request.getfixturevalue("postgres")
        return {"type": "sql", "uri": pg.create_database("iceberg"), "warehouse": f"file://{tmp_path}/warehouse"}
    weed = request.getfixturevalue("weed_iceberg")
    bucket = f"t{uuid.uuid4().hex[:12]}"  # one table bucket (catalog) per test
    weed.create_table_bucket(bucket)
    return weed.catalog_properties(bucket)


def kind(props: dict) -> str:
    return "rest" if props["type"] == "rest" else props["uri"].split(":", 1)[0].split("+", 1)[0]


def open_catalog(props: dict) -> Catalog:
    return load_catalog("test", **props)


def create_table(catalog: Catalog, name: str) -> Table:
    catalog.create_namespace_if_not_exists(NAMESPACE)
    return catalog.create_table(f"{NAMESPACE}.{name}", schema=SCHEMA, partition_spec=SPEC, properties=TABLE_PROPS)


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
    return f"median {statistics.median(values) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, n={len(values)}"


def run_children(
    props: dict, table: str, workers: list[str], commits: int, n_rows: int, go_file: pathlib.Path | None
) -> list[dict]:
    procs = []
    for worker in workers:
        arg = json.dumps(
            {
                "catalog": props,
                "table": f"{NAMESPACE}.{table}",
                "worker": worker,
                "commits": commits,
                "rows": n_rows,
                "go_file": str(go_file) if go_file else None,
            }
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(CHILD), arg],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(os.environ),
            )
        )
    if go_file is not None:
        go_file.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"child failed ({proc.returncode}): {err[-3000:]}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_hour_partitioned_table_and_concurrent_commits(catalog_props, tmp_path):
    """Namespace ``signaldb``, a table partitioned by hour(ts); one process alone (latency),
    then two processes racing: each commit lands exactly once, the row count is exact."""
    catalog = open_catalog(catalog_props)
    table = create_table(catalog, "race")
    assert [f.transform for f in table.spec().fields] == [HourTransform()]
    assert (NAMESPACE,) in catalog.list_namespaces()

    solo_commits, commits, n_rows = 10, 12, 20
    solo = run_children(catalog_props, "race", ["solo"], solo_commits, n_rows, None)[0]
    assert solo["failed"] == []  # alone, nothing to conflict with

    results = run_children(catalog_props, "race", ["a", "b"], commits, n_rows, tmp_path / "go")
    conflicts = sum(len(r["failed"]) for r in results)

    table = open_catalog(catalog_props).load_table(f"{NAMESPACE}.race")
    total = (solo_commits + 2 * commits) * n_rows
    assert table.scan().to_arrow().num_rows == total
    landed = [
        (s.summary.additional_properties.get("test.worker"), s.summary.additional_properties.get("test.seq"))
        for s in table.snapshots()
    ]
    expected = [("solo", str(i)) for i in range(solo_commits)] + [
        (w, str(i)) for w in ("a", "b") for i in range(commits)
    ]
    # A commit that raised CommitFailedException did not land; one that returned landed once.
    assert sorted(landed) == sorted(expected)
    # Hidden partitioning: every data file is in the one hour the rows fall in.
    hours = {t.file.partition[0] for t in table.scan().plan_files()}
    assert hours == {int((HOUR - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds() // 3600)}

    print(
        f"\n[{kind(catalog_props)}] commit latency alone: {ms(solo['ok'])}; "
        f"2 processes racing: ok {ms([t for r in results for t in r['ok']])}, "
        f"conflicts {conflicts} (failed attempts {ms([t for r in results for t in r['failed']])})"
    )


def test_add_files_of_our_own_parquet(catalog_props):
    """A Parquet file written by us (zstd, statistics, a bloom filter on a column) into the
    table's location, then ``add_files`` in one commit: referenced in place, rows readable,
    summary kept. Through the REST catalog the file is an s3:// object in the table bucket."""
    catalog = open_catalog(catalog_props)
    table = create_table(catalog, "added")
    data = rows("ours", 0, 1000)
    paths = []
    for i in range(2):
        path = f"{table.location()}/data/ts_hour=2026-12-01-10/ours-{i}-{uuid.uuid4().hex}.parquet"
        with (
            table.io.new_output(path).create() as stream,
            pq.ParquetWriter(
                stream,
                ARROW_SCHEMA,
                compression="zstd",
                compression_level=3,
                write_statistics=True,
                write_page_index=True,
                bloom_filter_options={"worker": {"ndv": 10, "fpp": 0.01}},
            ) as writer,
        ):
            writer.write_table(data)
        paths.append(path)

    start = time.perf_counter()
    table.add_files(paths, snapshot_properties={"test.flush": "1"}, check_duplicate_files=False)
    took = time.perf_counter() - start

    table = open_catalog(catalog_props).load_table(f"{NAMESPACE}.added")
    assert table.scan().to_arrow().num_rows == 2 * data.num_rows
    assert sorted(t.file.file_path for t in table.scan().plan_files()) == sorted(paths)  # referenced in place
    assert table.current_snapshot().summary.additional_properties["test.flush"] == "1"
    with table.io.new_input(paths[0]).open() as f:
        meta = pq.ParquetFile(f).metadata
        assert meta.row_group(0).column(2).bloom_filter_offset is not None  # our bloom filter survives
    print(f"\n[{kind(catalog_props)}] add_files of 2 own Parquet files in one commit: {took * 1000:.0f} ms")


def test_postgres_outage_mid_run(postgres, tmp_path):
    """The catalog stops between two commits: the commit fails (nothing lands), and after the
    server is back the same table object commits again."""
    props = {"type": "sql", "uri": postgres.create_database("outage"), "warehouse": f"file://{tmp_path}/warehouse"}
    catalog = open_catalog(props)
    table = create_table(catalog, "outage")
    table.append(rows("w", 0, 10))
    postgres.stop()
    try:
        assert not postgres.running()
        with pytest.raises(Exception) as failed:
            table.append(rows("w", 1, 10))
        assert not isinstance(failed.value, CommitFailedException)  # an outage, not a lost race
        print(f"\n[postgres] commit during outage raised {type(failed.value).__module__}.{type(failed.value).__name__}")
    finally:
        postgres.start()
    table.refresh()
    table.append(rows("w", 1, 10))
    table = open_catalog(props).load_table(f"{NAMESPACE}.outage")
    assert table.scan().to_arrow().num_rows == 20
    assert len(table.snapshots()) == 2  # the failed commit left no snapshot
