"""A process that commits appends to one Iceberg table, for the concurrent-commit tests.

    python catalog_child.py '<json: catalog, table, worker, commits, rows, go_file>'

``catalog`` is the pyiceberg catalog properties (``type`` sql or rest). The table has
``commit.retry.num-retries=0``, so a commit that lost a race raises CommitFailedException
here; the child then refreshes the table and commits again (what SignalDB's writer does, with
its own checks in between). Each commit carries ``test.worker``/``test.seq`` in its snapshot
summary, so the test can check every commit landed exactly once. Prints one JSON line: the
latency of every successful commit call, of every failed one, and the conflicts counted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time

import pyarrow as pa
from pyiceberg.catalog import load_catalog
from pyiceberg.exceptions import CommitFailedException

# The hour every row falls in: one partition, so one data file per commit.
HOUR = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)

ARROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("worker", pa.string(), nullable=False),
    ]
)


def rows(worker: str, seq: int, n: int) -> pa.Table:
    base = seq * n
    return pa.table(
        {
            "id": [base + i for i in range(n)],
            "ts": [HOUR + dt.timedelta(seconds=(base + i) % 3600) for i in range(n)],
            "worker": [worker] * n,
        },
        schema=ARROW_SCHEMA,
    )


def main() -> None:
    args = json.loads(sys.argv[1])
    props = dict(args["catalog"])
    catalog = load_catalog("test", **props)
    table = catalog.load_table(args["table"])
    go_file = args.get("go_file")
    if go_file:  # start together with the other children: the commits should race
        deadline = time.monotonic() + 60
        while not os.path.exists(go_file):
            if time.monotonic() > deadline:
                raise SystemExit("go file never appeared")
            time.sleep(0.005)
    ok: list[float] = []
    failed: list[float] = []
    for seq in range(args["commits"]):
        data = rows(args["worker"], seq, args["rows"])
        while True:
            start = time.perf_counter()
            try:
                table.append(data, snapshot_properties={"test.worker": args["worker"], "test.seq": str(seq)})
                ok.append(time.perf_counter() - start)
                break
            except CommitFailedException:
                failed.append(time.perf_counter() - start)
                table.refresh()  # the other writer's snapshot is now the parent; commit on top
    print(json.dumps({"worker": args["worker"], "ok": ok, "failed": failed}), flush=True)


if __name__ == "__main__":
    main()
