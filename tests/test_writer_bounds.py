"""The writer's limits against real processes: ``writer.max_buffered_bytes`` bounds
memory (early files, then UNAVAILABLE to do_put), and a Parquet file that cannot be
built sends only its entries to dead-letter instead of wedging the flusher.

Data is fed over Flight the way the acceptor's forwarder does it: an UNAVAILABLE
answer is resent after a short backoff, any other error fails the test. Every test
checks the end result in Parquet (DuckDB): each acked row exactly once.
"""

from __future__ import annotations

import json
import pathlib
import threading
import time

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from helpers.net import http_get
from helpers.procstat import memory
from helpers.writer import HOUR_NS, T0, WriterProcess, convert, duckdb_rows, parquet_files, put, traces_request
from test_writer_process import wait_settled

MIB = 1 << 20
BASE_SPANS = 4000  # ~0.9 MB of Arrow per entry


def health(w: WriterProcess) -> dict:
    return json.loads(http_get(w.url("/health"))[1])


def metric(w: WriterProcess, line_start: str, default: float | None = None) -> float:
    text = http_get(w.url("/metrics"))[1].decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start + " ")]
    if not values and default is not None:  # a labelled counter appears with its first increment
        return default
    assert len(values) == 1, f"{line_start!r} not in /metrics"
    return values[0]


@pytest.fixture(scope="module")
def base() -> pa.RecordBatch:
    return convert("traces", traces_request(0, spans=BASE_SPANS))["traces"]


def entry_batch(base: pa.RecordBatch, entry: int, hours: int, spread: int) -> pa.RecordBatch:
    """``base``'s spans with trace id = the entry's number, spread over ``spread`` of ``hours``
    hour partitions (which ones depends on the entry): an acceptor with a wide time window."""
    n = base.num_rows
    trace_ids = pa.array([f"{entry:032x}"] * n, base.schema.field("trace_id").type)
    first = (entry * 5) % hours
    offsets = [((first + i % spread) % hours) * HOUR_NS + i * 1000 for i in range(n)]
    start = pa.array([T0 + o for o in offsets], pa.int64())
    ts_type = base.schema.field("start_time").type
    batch = base.set_column(base.schema.get_field_index("trace_id"), base.schema.field("trace_id"), trace_ids)
    batch = batch.set_column(
        batch.schema.get_field_index("start_time"), batch.schema.field("start_time"), start.cast(ts_type)
    )
    end = pa.array([T0 + o + 500 for o in offsets], pa.int64()).cast(ts_type)
    return batch.set_column(batch.schema.get_field_index("end_time"), batch.schema.field("end_time"), end)


class Sender:
    """Sends entries like the acceptor's forwarder: UNAVAILABLE is resent after a backoff."""

    def __init__(self, w: WriterProcess) -> None:
        self.client = w.client()
        self.refusals = 0
        self.acked: list[int] = []

    def send(self, entry: int, batch: pa.RecordBatch, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        backoff = 0.02
        while True:
            try:
                put(self.client, "traces", "acc-1", [(batch, [(entry, batch.num_rows)])])
                self.acked.append(entry)
                return
            except flight.FlightUnavailableError:
                self.refusals += 1
                assert time.monotonic() < deadline, f"entry {entry} refused for {timeout} s"
                time.sleep(backoff)
                backoff = min(backoff * 2, 0.5)

    def close(self) -> None:
        self.client.close()


def assert_exactly_once(root: pathlib.Path, entries: list[int], rows: int) -> None:
    """Each entry's trace id has exactly ``rows`` rows, all with distinct span ids, and nothing else."""
    got = duckdb_rows(root, "traces", "select trace_id, count(*), count(distinct span_id) from {src} group by 1")
    assert sorted(got) == sorted((f"{e:032x}", rows, rows) for e in entries)


class Sampler(threading.Thread):
    """Polls /health and /proc while a test runs: the largest buffered bytes and RSS seen."""

    def __init__(self, w: WriterProcess) -> None:
        super().__init__(daemon=True)
        self.w, self.pid = w, w.proc.pid
        self.max_buffered = self.max_rss = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.max_buffered = max(self.max_buffered, health(self.w)["writer"]["buffered_bytes"])
                self.max_rss = max(self.max_rss, memory(self.pid)["VmRSS"])
            except (OSError, KeyError, ValueError):
                pass
            self.done.wait(0.02)

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def test_many_partitions_stay_under_the_memory_bound_and_land_once(
    procs: list[WriterProcess], tmp_path: pathlib.Path, base: pa.RecordBatch
) -> None:
    """16 MiB bound, an hour-long file age, ~200 MB of Arrow over 48 hour partitions (each
    entry in 6 of them): files are written early, buffered bytes and RSS stay bounded."""
    limit, entries = 16 * MIB, 240
    w = WriterProcess(tmp_path, args=["--file-max-age-secs", "3600"], env={"WRITER_MAX_BUFFERED_BYTES": str(limit)})
    procs.append(w)
    w.start()
    batches = {e: entry_batch(base, e, hours=48, spread=6) for e in range(1, entries + 1)}
    sent_bytes = sum(b.nbytes for b in batches.values())
    sender = Sender(w)
    sender.send(0, entry_batch(base, 0, hours=48, spread=6))  # warm-up: imports, first files
    wait_settled_bytes(w)
    baseline = memory(w.proc.pid)["VmHWM"]
    sampler = Sampler(w)
    sampler.start()
    for e, batch in batches.items():
        sender.send(e, batch)
    sampler.stop()
    peak = memory(w.proc.pid)["VmHWM"]
    sender.close()
    written_early = parquet_files(tmp_path / "data", "traces")
    growth = peak - baseline
    print(
        f"limit {limit / MIB:.0f} MiB: sent {sent_bytes / MIB:.0f} MiB of Arrow; RSS peak grew "
        f"{growth / MIB:.0f} MiB over {baseline / MIB:.0f} MiB; buffered max {sampler.max_buffered / MIB:.1f} MiB; "
        f"refusals {sender.refusals}; files before stop {len(written_early)}"
    )
    assert metric(w, "signaldb_writer_buffered_bytes_limit") == limit
    assert metric(w, "signaldb_writer_early_files_total") > 0
    assert len(written_early) > 48, "files should be written early, long before their hour-long age"
    # One batch may be accepted while just under the bound.
    assert sampler.max_buffered <= limit + base.nbytes * 2, (sampler.max_buffered, limit)
    # Without the bound the buffers alone would hold every byte sent (~200 MB) for an hour
    # (measured: RSS +300 MiB with a 1 GiB bound, no file before the stop). With it: the bound plus a fixed working
    # set (a file's build, batches in flight, allocator caches): +69-82 MiB measured for 16 MiB.
    assert growth < limit + 100 * MIB, f"RSS grew {growth / MIB:.0f} MiB for {sent_bytes / MIB:.0f} MiB sent"
    assert w.stop() == 0
    assert_exactly_once(tmp_path / "data", [0, *batches], BASE_SPANS)


def wait_settled_bytes(w: WriterProcess, timeout: float = 30.0) -> None:
    """Until nothing is buffered (the warm-up file may wait for its age: that is fine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health(w)["writer"]["unprocessed_entries"] <= 1:
            return
        time.sleep(0.05)
    raise AssertionError("warm-up did not settle")


def block_store(root: pathlib.Path) -> pathlib.Path:
    """Makes a file:// store fail every write (as root, permissions would not): the root
    directory moves away and a plain file takes its place (mkdir under it: ENOTDIR)."""
    away = root.with_name(root.name + ".away")
    root.rename(away)
    root.write_text("the store is down")
    return away


def unblock_store(root: pathlib.Path, away: pathlib.Path) -> None:
    root.unlink()
    away.rename(root)


def test_store_down_pushes_back_at_the_bound_and_everything_lands_once_after(
    procs: list[WriterProcess], tmp_path: pathlib.Path, base: pa.RecordBatch
) -> None:
    limit = 4 * MIB
    w = WriterProcess(tmp_path, args=["--file-max-age-secs", "0.05"], env={"WRITER_MAX_BUFFERED_BYTES": str(limit)})
    procs.append(w)
    w.start()
    root = tmp_path / "data"
    away = block_store(root)
    batches = {e: entry_batch(base, e, hours=4, spread=2) for e in range(1, 31)}  # ~27 MB: 6× the bound
    sender = Sender(w)
    sampler = Sampler(w)
    sampler.start()
    done = threading.Event()

    def send_all() -> None:
        try:
            for e, batch in batches.items():
                sender.send(e, batch, timeout=120)
        finally:
            done.set()

    thread = threading.Thread(target=send_all, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while metric(w, 'signaldb_writer_refused_batches_total{reason="memory"}', 0.0) < 3:
        assert time.monotonic() < deadline, "the writer never pushed back"
        assert not done.is_set(), "everything was accepted with the store down"
        time.sleep(0.05)
    # Pushing back: not ready, refusing, memory at the bound, nothing written.
    status, body = http_get(w.url("/readyz"))
    assert status == 503 and "buffers at writer.max_buffered_bytes" in json.loads(body)["reasons"]
    h = health(w)
    assert limit <= h["writer"]["buffered_bytes"] <= limit + base.nbytes
    time.sleep(1.0)  # a while longer: the acked amount stays where it was
    acked_while_down = len(sender.acked)
    assert acked_while_down < len(batches)
    assert metric(w, "signaldb_writer_object_put_errors_total") > 0
    rss_down = memory(w.proc.pid)["VmRSS"]

    unblock_store(root, away)
    thread.join(120)
    assert done.is_set() and sorted(sender.acked) == list(batches)
    sampler.stop()
    sender.close()
    wait_settled(w, timeout=60)
    print(
        f"acked {acked_while_down} of {len(batches)} entries while the store was down; "
        f"{sender.refusals} refusals; buffered max {sampler.max_buffered / MIB:.1f} MiB "
        f"(limit {limit / MIB:.0f}); RSS {rss_down / MIB:.0f} MiB down, max {sampler.max_rss / MIB:.0f} MiB"
    )
    assert sampler.max_buffered <= limit + base.nbytes * 2
    assert w.stop() == 0
    assert_exactly_once(root, list(batches), BASE_SPANS)


# -- build failures ------------------------------------------------------------------


def small_batch(entry: int, hour: int, spans: int = 4, bad: bool = False) -> pa.RecordBatch:
    """``spans`` spans in hour ``hour`` after T0; ``bad``: one ``name`` is null although the
    schema says non-nullable. Flight and the WAL carry it (the schema matches), but pyarrow's
    Parquet writer refuses it: a real, deterministic build failure."""
    batch = convert("traces", traces_request(entry, spans=spans, start_ns=T0 + hour * HOUR_NS))["traces"]
    if bad:
        i = batch.schema.get_field_index("name")
        names = batch.column(i).to_pylist()
        names[1] = None
        batch = batch.set_column(i, batch.schema.field("name"), pa.array(names, pa.string()))
    return batch


def log_msgs(w: WriterProcess, run: int | None = None) -> list[dict]:
    return [line for line in w.log_lines(run) if "msg" in line]


def wait_log(w: WriterProcess, msg: str, timeout: float = 20.0, count: int = 1) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in log_msgs(w) if line["msg"] == msg]
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"no {msg!r} in the log:\n{w.log_path.read_text()[-3000:]}")


def traces_rows(root: pathlib.Path) -> list[tuple]:
    return sorted(duckdb_rows(root, "traces", "select trace_id, span_id from {src}"))


def expected_rows(batches: dict[int, pa.RecordBatch]) -> list[tuple]:
    return sorted(
        (t, s)
        for b in batches.values()
        for t, s in zip(b.column("trace_id").to_pylist(), b.column("span_id").to_pylist(), strict=True)
    )


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash_after_dead_letter"])
def test_a_file_that_cannot_be_built_dead_letters_only_its_entry(
    procs: list[WriterProcess], tmp_path: pathlib.Path, crash: bool
) -> None:
    """Entry 4 has good rows in hour 0 and a bad row in hour 1; entry 5 shares hour 1's
    file. After 3 failed builds the file is split by entry: entry 5 is written, entry 4
    goes to dead-letter (its hour-0 rows stay in Parquet, as its .json says). Meanwhile
    other files keep being written. A restart (or a crash right after the dead-letter
    files, before the state save) keeps it that way: every good row once, entry 4 once."""
    env = {"SIGNALDB_LOG_LEVEL": "debug"}
    if crash:
        env["SIGNALDB_TEST_CRASH_AT"] = "after_dead_letter"
    w = WriterProcess(tmp_path, args=["--file-max-age-secs", "0.2"], env=env)
    procs.append(w)
    root = tmp_path / "data"
    good: dict[int, pa.RecordBatch] = {e: small_batch(e, hour=0) for e in (1, 2, 3)}
    bad_hour0, bad_hour1 = small_batch(4, hour=0), small_batch(4, hour=1, bad=True)
    entry4 = pa.concat_batches([bad_hour0, bad_hour1])
    good[5] = small_batch(5, hour=1)
    # The writer now refuses such a batch at its door (writer/validate.py). What still reaches
    # the Parquet build is an entry already in its WAL (taken by an older version): so the
    # entries are in the WAL before the start. 4 and 5 share hour 1's buffer on replay.
    from signaldb.wal import Wal
    from signaldb.writer import payload

    with Wal(tmp_path / "wal") as wal:
        for e, batch in [(1, good[1]), (2, good[2]), (3, good[3]), (4, entry4), (5, good[5])]:
            record = payload.WalRecord("acc-1", "traces", ((e, batch.num_rows),), batch)
            wal.append(payload.encode(record), kind="traces")
    w.start()
    client = w.client()
    [first] = [x for x in wait_log(w, "building a Parquet file failed; will retry") if x["attempt"] == 1]
    assert "non-nullable but contains nulls" in first["error"]
    # The failing file does not hold anything up: hour 2 is written while it waits for its retries.
    good[6] = small_batch(6, hour=2)
    put(client, "traces", "acc-1", [(good[6], [(6, good[6].num_rows)])])
    client.close()
    if crash:
        assert w.wait(timeout=20) == -9
        w.env.pop("SIGNALDB_TEST_CRASH_AT")
        first_run = log_msgs(w)
        w.start()
    else:
        first_run = log_msgs(w)
    wait_settled(w, timeout=60)
    msgs = log_msgs(w) if not crash else first_run + log_msgs(w)
    order = [m["msg"] for m in msgs]
    gave_up = order.index("Parquet file could not be built; its entries moved to dead-letter")
    written_6 = [
        i for i, m in enumerate(msgs) if m["msg"] == "file written" and "/date=2026-11-24/hour=03/" in m["path"]
    ]
    assert written_6 and written_6[0] < gave_up, "hour 2's file waited behind the failing one"
    assert "building a Parquet file failed repeatedly; trying its entries one by one" in order
    [dead] = [m for m in msgs if m["msg"] == "Parquet file could not be built; its entries moved to dead-letter"][-1:]
    assert dead["level"] == "error" and dead["attempts"] == 3 and len(dead["wal_ids"]) == 1

    dl = tmp_path / "wal" / "dead-letter"
    stem = f"{dead['wal_ids'][0]:020d}.traces"  # signaldb.service.dead_letters
    assert sorted(p.name for p in dl.iterdir()) == [f"{stem}.entry", f"{stem}.json"]
    record = json.loads((dl / f"{stem}.json").read_text())
    assert record["acceptor_entry_ids"] == [4] and record["acceptor_id"] == "acc-1"
    assert record["partitions_dead_lettered"] == ["date=2026-11-24/hour=02"]
    assert record["partitions_in_parquet"] == ["date=2026-11-24/hour=01"]
    assert "non-nullable but contains nulls" in record["reason"]
    saved = payload.decode((dl / f"{stem}.entry").read_bytes())
    assert saved.entries == ((4, entry4.num_rows),) and saved.batch.equals(entry4)
    # Parquet: every good row once, and entry 4's hour-0 rows (documented: also in its payload).
    assert traces_rows(root) == expected_rows({**good, 4: bad_hour0})
    state = json.loads((tmp_path / "wal" / "writer-state.json").read_text())
    assert state["files"] == {} and state["done"] == {"acc-1": {"traces": [[1, 6]]}}
    if not crash:
        assert metric(w, "signaldb_writer_dead_letter_entries_total") == 1
        assert metric(w, "signaldb_writer_parquet_build_errors_total") == 4  # 3 together, 1 alone

    # A restart neither builds it again nor duplicates anything; a resend is a duplicate.
    assert w.stop() == 0
    w.start()
    client = w.client()
    # (resent as the valid part: the bad batch itself is refused at the door now)
    [(_, duplicates)] = put(client, "traces", "acc-1", [(bad_hour0, [(4, bad_hour0.num_rows)])])
    assert list(duplicates) == [4]
    client.close()
    wait_settled(w, timeout=60)
    assert not [m for m in log_msgs(w) if "Parquet file" in m["msg"] and m["level"] != "debug"]
    assert w.stop() == 0
    assert traces_rows(root) == expected_rows({**good, 4: bad_hour0})
    assert sorted(p.name for p in dl.iterdir()) == [f"{stem}.entry", f"{stem}.json"]
