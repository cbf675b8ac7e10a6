"""Iceberg tables as the commit point (the default: a SQLite catalog beside ``file://`` data).

Real writer processes, the real catalog (SQLite here; PostgreSQL and the SeaweedFS REST
catalog in test_iceberg_servers.py), read back with pyiceberg: every acked row is in the
table once — after crashes at each step around the commit, and when two writers hold the
same acceptor entries (a failover) and commit them at the same time.
"""

from __future__ import annotations

import base64
import json
import pathlib
import threading
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import iceberg
from helpers.writer import (
    Sent,
    WriterProcess,
    assert_same_rows,
    convert,
    logs_request,
    metrics_request,
    put,
    put_request,
    traces_request,
)
from signaldb.writer.claims import Claims, decode_claims, encode_claims, entries_by_partition, without_claimed
from signaldb.writer.payload import WalRecord
from signaldb.writer.tables import split_by_hour

HOUR_NS = 3_600_000_000_000
T_HOUR = 1_795_485_600_000_000_000  # 2026-11-24 02:00 UTC, an hour boundary


def _writer(
    procs: list[WriterProcess], tmp: pathlib.Path, storage: pathlib.Path, *args: str, env: dict[str, str] | None = None
) -> WriterProcess:
    """A writer with its own WAL directory under ``tmp`` and the default (embedded) catalog
    beside ``storage``."""
    tmp.mkdir(parents=True, exist_ok=True)
    w = WriterProcess(tmp, storage_url=f"file://{storage}", args=args, env={"SIGNALDB_CATALOG_URL": "", **(env or {})})
    procs.append(w)
    return w


def table_rows(storage: pathlib.Path, table: str) -> pa.Table:
    loaded = iceberg.load(storage, table)
    assert loaded is not None, f"no table {table}"
    return loaded.scan().to_arrow()


# -- claims: which rows a commit holds --------------------------------------------------


def _record(entries: list[tuple[int, list[int]]]) -> WalRecord:
    """A traces record whose entry ``eid`` has one span per hour offset in its list."""
    batches, listed = [], []
    for eid, hours in entries:
        for n, hour in enumerate(hours):
            body = traces_request(eid * 100 + n, spans=1, start_ns=T_HOUR + hour * HOUR_NS + eid)
            batches.append(convert("traces", body)["traces"])
        listed.append((eid, len(hours)))
    return WalRecord("acc-1/0000000000000001", "traces", tuple(listed), pa.concat_batches(batches))


entry_hours = st.lists(
    st.tuples(st.integers(1, 30), st.lists(st.integers(0, 3), min_size=1, max_size=4)),
    min_size=1,
    max_size=6,
    unique_by=lambda e: e[0],
)


@settings(max_examples=60, deadline=None)
@given(entries=entry_hours, claimed=st.sets(st.tuples(st.integers(0, 3), st.integers(1, 30)), max_size=10))
def test_without_claimed_drops_exactly_the_claimed_partition_rows(entries, claimed) -> None:
    record = _record(entries)
    claims = Claims()
    names = {
        h: next(
            iter(
                split_by_hour(
                    "traces", convert("traces", traces_request(0, spans=1, start_ns=T_HOUR + h * HOUR_NS))["traces"]
                )
            )
        )
        for h in range(4)
    }
    for hour, eid in claimed:
        claims.add_ranges(names[hour], record.acceptor_id, [[eid, eid]])
    kept, dropped = without_claimed(record, claims)
    want = [(eid, sum(1 for h in hours if (h, eid) not in claimed)) for eid, hours in entries]
    assert list(kept.entries) == want
    assert kept.batch.num_rows == sum(n for _, n in want)
    assert dropped == record.batch.num_rows - kept.batch.num_rows
    # What is kept claims nothing that was claimed, and every partition lists its entries.
    for partition, ids in entries_by_partition(kept).items():
        assert not any(claims.holds(partition, record.acceptor_id, i) for i in ids)


# -- one writer -----------------------------------------------------------------------


id_ranges = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4)), max_size=40).map(
    lambda steps: [[lo, lo + n] for lo, n in _spaced(steps)]
)


def _spaced(steps: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Disjoint, sorted, non-adjacent ranges from (gap, length) steps."""
    out, end = [], -2
    for gap, n in steps:
        lo = end + 2 + gap
        out.append((lo, n))
        end = lo + n
    return out


@settings(max_examples=100, deadline=None)
@given(
    ranges=st.dictionaries(
        st.sampled_from(["date=2026-12-05/hour=07", "date=2026-12-05/hour=08"]),
        st.dictionaries(st.sampled_from(["acc-1", "acc-2/life"]), id_ranges, max_size=2),
        max_size=2,
    )
)
def test_claims_encoding_round_trips_and_reads_the_older_forms(ranges) -> None:
    ranges = {p: {s: r for s, r in sources.items() if r} for p, sources in ranges.items()}
    ranges = {p: sources for p, sources in ranges.items() if sources}
    assert decode_claims(encode_claims(ranges)) == ranges
    plain = json.dumps(ranges)
    assert decode_claims(plain) == ranges  # summaries written before the z2 encoding
    assert decode_claims("z1:" + base64.b64encode(zlib.compress(plain.encode())).decode()) == ranges


def test_claims_encoding_is_small_for_the_ranges_several_writers_make() -> None:
    """One acceptor's ids spread over three writers and seven tables: a commit holds many
    short ranges. Every commit rewrites the table metadata that holds every summary."""
    spread = [[i, i + (i % 2)] for i in range(1_000_000, 1_000_000 + 4 * 400, 4)]
    ranges = {"date=2026-12-05/hour=07": {"12154d06e5e34cbfa08593d9cc415d24/ca94fe9e7acbd9eb": spread}}
    encoded = encode_claims(ranges)
    assert decode_claims(encoded) == ranges
    assert len(encoded) * 10 < len(json.dumps(ranges, separators=(",", ":")))


def test_every_table_is_an_iceberg_table_with_partitions_sort_order_and_claims(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    storage = tmp_path / "data"
    w = _writer(procs, tmp_path / "w1", storage, "--file-max-age-secs", "0.2").start()
    sent, client = Sent(), w.client()
    entry = 0
    for seed in range(3):
        for kind, body in (
            ("traces", traces_request(seed, start_ns=T_HOUR + seed * HOUR_NS)),
            ("logs", logs_request(seed)),
            ("metrics", metrics_request(seed)),
        ):
            entry += 1
            put_request(client, kind, body, entry, sent=sent)
    client.close()
    w.settled()
    for table in ("traces", "logs", "metrics_gauge", "metrics_sum", "metrics_histogram"):
        assert_same_rows(table_rows(storage, table), sent.table(table), table)
    traces = iceberg.load(storage, "traces")
    assert str(traces.spec().fields[0].transform) == "hour" and traces.sort_order().fields
    assert traces.location() == f"file://{storage}/traces"
    # Each commit says who committed which entries.
    summaries = [s.summary.additional_properties for s in traces.snapshots()]
    claimed = {}
    for summary in summaries:
        assert summary["signaldb.writer"] == w.health()["writer_id"]
        for partition, sources in decode_claims(summary["signaldb.claims"]).items():
            for source, ranges in sources.items():
                assert source == "acc-1"
                claimed.setdefault(partition, []).extend(ranges)
    assert sorted(claimed) == ["date=2026-11-24/hour=02", "date=2026-11-24/hour=03", "date=2026-11-24/hour=04"]
    # Hidden partitioning: a time filter plans only that hour's files, no date/hour predicate.
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

    hour3 = And(
        GreaterThanOrEqual("start_time", "2026-11-24T03:00:00+00:00"),
        LessThan("start_time", "2026-11-24T04:00:00+00:00"),
    )
    planned = [t.file.file_path for t in traces.scan(row_filter=hour3).plan_files()]
    assert len(planned) == 1 and "hour=03" in planned[0]
    assert traces.scan(row_filter=hour3).to_arrow().num_rows == 5
    # The data files keep the writer's names and carry a trace_id bloom filter.
    path = planned[0].removeprefix("file://")
    assert pathlib.Path(path).name.startswith(w.health()["writer_id"])
    meta = pq.ParquetFile(path).metadata.row_group(0)
    trace_id = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == "trace_id")
    assert trace_id.to_dict()["bloom_filter_offset"] is not None
    assert w.metric("signaldb_writer_catalog_commits_total") >= 3
    assert w.stop() == 0


@pytest.mark.parametrize(
    "point", ["after_plan", "after_put", "before_catalog_commit", "after_catalog_commit", "after_commit"]
)
def test_a_crash_at_each_step_around_the_commit_leaves_every_row_once(
    procs: list[WriterProcess], tmp_path: pathlib.Path, point: str
) -> None:
    storage = tmp_path / "data"
    w = _writer(procs, tmp_path / "w1", storage, "--file-max-age-secs", "0.3")
    w.start(env={"SIGNALDB_TEST_CRASH_AT": point})
    sent, bodies, client = Sent(), {}, w.client()
    for entry in range(1, 5):  # two hours per entry: an entry's rows span two files
        bodies[entry] = traces_request(entry, spans=4, start_ns=T_HOUR - 2_000_000)
        put_request(client, "traces", bodies[entry], entry, sent=sent)
    assert w.wait(timeout=20) == -9, f"the writer should have crashed at {point}"
    client.close()

    w.start()
    w.settled()
    assert_same_rows(table_rows(storage, "traces"), sent.table("traces"), "traces")
    if point == "after_catalog_commit":  # committed, but the state file did not say so: claims did
        assert w.metric("signaldb_writer_rows_committed_elsewhere_total") == 16
    # Resent entries (the acceptor never got to mark them) are acked as duplicates.
    client = w.client()
    for entry, body in bodies.items():
        assert put_request(client, "traces", body, entry) == {"traces": [entry]}
    client.close()
    assert w.stop() == 0
    assert_same_rows(table_rows(storage, "traces"), sent.table("traces"), "traces")


# -- two writers, one table --------------------------------------------------------------


def test_two_writers_holding_the_same_entries_commit_each_row_once(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    """A failover: the acceptor sent entries to writer A, lost the acks, and sent them to B.
    Both store them, both commit at about the same time to one table: each row lands once,
    and the writer that lost the race counts the rows it dropped."""
    storage = tmp_path / "data"
    a = _writer(procs, tmp_path / "a", storage, "--file-max-age-secs", "0.5").start()
    b = _writer(procs, tmp_path / "b", storage, "--file-max-age-secs", "0.5").start()
    sent = Sent()
    batches = {
        e: convert("traces", traces_request(e, spans=3, start_ns=T_HOUR + (e % 3) * HOUR_NS))["traces"]
        for e in range(1, 41)
    }
    for b_ in batches.values():
        sent.add("traces", b_)

    def feed(w: WriterProcess, ids: list[int]) -> None:
        client = w.client()
        for e in ids:
            put(client, "traces", "acc-1", [(batches[e], [(e, 3)])])
        client.close()

    # A gets 1..30, B gets 11..40: 11..30 go to both, at the same time.
    threads = [
        threading.Thread(target=feed, args=(a, list(range(1, 31)))),
        threading.Thread(target=feed, args=(b, list(range(11, 41)))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    a.settled()
    b.settled()
    rows = table_rows(storage, "traces")
    assert_same_rows(rows, sent.table("traces"), "traces")
    dropped = a.metric("signaldb_writer_rows_committed_elsewhere_total") + b.metric(
        "signaldb_writer_rows_committed_elsewhere_total"
    )
    assert dropped == 20 * 3  # every doubly held row was dropped by exactly one of them
    # Every (partition, entry) is claimed by exactly one commit.
    seen: dict[tuple[str, int], int] = {}
    for snap in iceberg.load(storage, "traces").snapshots():
        for partition, sources in decode_claims(snap.summary.additional_properties["signaldb.claims"]).items():
            for lo, hi in sources["acc-1"]:
                for i in range(lo, hi + 1):
                    seen[(partition, i)] = seen.get((partition, i), 0) + 1
    assert set(seen.values()) == {1} and len(seen) == 40
    assert a.stop() == 0 and b.stop() == 0


def test_a_writer_back_from_a_crash_drops_what_another_writer_committed_meanwhile(
    procs: list[WriterProcess], tmp_path: pathlib.Path
) -> None:
    """A stores entries and dies before its commit; the acceptor fails over to B, which commits
    them; A comes back and replays its WAL: nothing of those entries is committed twice."""
    storage = tmp_path / "data"
    a = _writer(procs, tmp_path / "a", storage, "--file-max-age-secs", "0.3")
    a.start(env={"SIGNALDB_TEST_CRASH_AT": "before_catalog_commit"})
    sent, client = Sent(), a.client()
    for e in range(1, 6):
        put_request(client, "traces", traces_request(e, spans=2, start_ns=T_HOUR), e, sent=sent)
    assert a.wait(timeout=20) == -9
    client.close()
    b = _writer(procs, tmp_path / "b", storage, "--file-max-age-secs", "0.3").start()
    client = b.client()
    for e in range(1, 6):
        put_request(client, "traces", traces_request(e, spans=2, start_ns=T_HOUR), e)
    client.close()
    b.settled()
    a.start()
    a.settled()
    assert_same_rows(table_rows(storage, "traces"), sent.table("traces"), "traces")
    assert a.metric("signaldb_writer_rows_committed_elsewhere_total") == 10
    assert a.stop() == 0 and b.stop() == 0
