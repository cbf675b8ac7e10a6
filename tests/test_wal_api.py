"""The Python API of the WAL: round trips, ids, processing, tailing, files, stats, modes, errors."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import stat
import threading
import time

import pytest

from conftest import (
    KIND_CODES,
    KINDS,
    MAGIC,
    RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
    STATS_KEYS,
    assert_strictly_increasing,
    crc32c,
    dir_size,
    entries_of,
    filler,
    parse_segment,
    parse_segment_file,
    read_all,
    record_crc_ok,
    segment_files,
    segment_salt,
    tagged_payload,
)
from signaldb import _native
from signaldb.wal import Wal, WalError

SMALL_SEG = 4096


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize("sync_mode", ["immediate", "batched"])
def test_round_trip_many_sizes_and_kinds(wal_dir, open_wal, sync_mode):
    sizes = [0, 1, 2, 27, 28, 29, 200, 4095, 4096, 65_536, 1 << 20, (1 << 20) + 1, 3 * (1 << 20)]
    written = []
    t0 = time.time_ns()
    w = open_wal(wal_dir, sync_mode=sync_mode)
    for i, n in enumerate(sizes):
        kind = KINDS[i % 3]
        payload = filler(f"rt{i}", n)
        eid = w.append(payload, kind=kind)
        assert isinstance(eid, int)
        written.append((eid, kind, payload))
    t1 = time.time_ns()
    assert_strictly_increasing([e[0] for e in written])
    assert written[0][0] >= 1

    # Read-your-writes before close, then the same after reopen.
    assert entries_of(w) == written
    for e in w.unprocessed():
        assert t0 - 1_000_000_000 <= e.timestamp_ns <= t1 + 1_000_000_000, "timestamp_ns is not 'when appended'"
        assert isinstance(e.payload, bytes)
    w.close()
    snap = read_all(wal_dir)
    assert snap.entries == written


def test_bytearray_and_memoryview_payloads(wal_dir, open_wal):
    w = open_wal(wal_dir)
    a = w.append(bytearray(b"from bytearray"), kind="logs")
    b = w.append(memoryview(b"xxfrom memoryviewxx")[2:-2], kind="metrics")
    ids = w.append_batch([bytearray(b"b1"), memoryview(b"b2")], kind="traces")
    w.close()
    assert read_all(wal_dir).entries == [
        (a, "logs", b"from bytearray"),
        (b, "metrics", b"from memoryview"),
        (ids[0], "traces", b"b1"),
        (ids[1], "traces", b"b2"),
    ]


def test_append_batch_takes_any_iterable_and_names_a_bad_payload_type(wal_dir, open_wal):
    # A list goes to the native call as it is (which checks each payload); other iterables are listed first.
    w = open_wal(wal_dir)
    ids = w.append_batch((b"t1", b"t2"))
    ids += w.append_batch(p for p in [b"g1", bytearray(b"g2")])
    ids += w.append_batch([memoryview(b"l1"), b"l2"])
    with pytest.raises(TypeError, match="WAL payload must be bytes, not str"):
        w.append_batch([b"ok", "text"])
    with pytest.raises(TypeError, match="WAL payload must be bytes, not int"):
        w.append(42)
    assert ids == list(range(1, 7))
    assert [e.payload for e in w.unprocessed()] == [b"t1", b"t2", b"g1", b"g2", b"l1", b"l2"]
    w.close()


def test_entry_bigger_than_a_segment_gets_its_own_segment(wal_dir, open_wal):
    big = filler("big", 64 << 20)
    w = open_wal(wal_dir, max_segment_size=1 << 20)
    a = w.append(b"small before", kind="logs")
    b = w.append(big, kind="traces")
    c = w.append(b"small after", kind="metrics")
    assert a < b < c
    # The lazy iterator reads in chunks of at most 8 MiB: an entry bigger than a
    # chunk must still come back, and so must the entries after it.
    got = [(e.id, e.kind, len(e.payload)) for e in w.unprocessed()]
    assert got == [(a, "logs", 12), (b, "traces", len(big)), (c, "metrics", 11)]
    tail = w.unprocessed(after_id=a, limit=1)
    assert len(tail) == 1 and tail[0].id == b and tail[0].payload == big
    w.close()

    snap = read_all(wal_dir)
    assert snap.entries == [(a, "logs", b"small before"), (b, "traces", big), (c, "metrics", b"small after")]

    segs = segment_files(wal_dir)
    holding = {}
    for p in segs:
        parsed = parse_segment_file(p)
        assert parsed.records, (
            f"segment file {p.name} holds no record (empty segment left behind): {[s.name for s in segs]}"
        )
        for r in parsed.records:
            holding[r.id] = p.name
    big_seg = holding[b]
    assert [i for i, s in holding.items() if s == big_seg] == [b], "the oversized entry shares its segment"
    assert os.path.getsize(wal_dir / "segments" / big_seg) < 2 * len(big), (
        "oversized segment is far bigger than its entry"
    )


def test_ids_monotonic_across_reopen_and_rotation(wal_dir, open_wal):
    all_ids = []
    for session in range(4):
        w = open_wal(wal_dir, max_segment_size=SMALL_SEG)
        for i in range(40):
            all_ids.append(w.append(tagged_payload(f"s{session}.{i}", 50 + 37 * i), kind=KINDS[i % 3]))
        all_ids.extend(w.append_batch([tagged_payload(f"s{session}.b{j}", 900) for j in range(9)], kind="logs"))
        w.close()
    assert_strictly_increasing(all_ids)
    assert all_ids[0] >= 1
    assert len(segment_files(wal_dir)) > 4, "4 KiB segments did not rotate: max_segment_size not applied?"
    snap = read_all(wal_dir, max_segment_size=SMALL_SEG)
    assert snap.ids == all_ids
    for _eid, _kind, payload in snap.entries:
        tag = payload.split(b":", 1)[0].decode()
        n = len(payload) - len(tag) - 1
        assert payload == tagged_payload(tag, n)


def test_ids_continue_after_everything_was_processed_and_deleted(wal_dir, open_wal):
    w = open_wal(wal_dir, max_segment_size=SMALL_SEG)
    ids = [w.append(filler(i, 1500)) for i in range(12)]
    w.mark_processed(ids)
    w.close()
    w = open_wal(wal_dir, max_segment_size=SMALL_SEG)
    assert entries_of(w) == []
    nxt = w.append(b"after")
    assert nxt > ids[-1], f"id {nxt} reused after all segments were processed (last was {ids[-1]})"
    assert w.stats()["next_id"] > nxt
    w.close()


def test_append_batch_ids_are_contiguous_and_ordered(wal_dir, open_wal):
    w = open_wal(wal_dir)
    assert w.append_batch([], kind="logs") == []
    ids = w.append_batch([b"a", b"", b"c" * 5000], kind="logs")
    assert ids == list(range(ids[0], ids[0] + 3))
    more = w.append_batch((bytes([i]) * i for i in range(1, 50)), kind="metrics")  # any iterable
    assert more == list(range(more[0], more[0] + 49)) and more[0] > ids[-1]
    got = entries_of(w)
    assert got[:3] == [(ids[0], "logs", b"a"), (ids[1], "logs", b""), (ids[2], "logs", b"c" * 5000)]
    assert got[3:] == [(eid, "metrics", bytes([i]) * i) for eid, i in zip(more, range(1, 50), strict=True)]
    w.close()


# -- processing -------------------------------------------------------------


def test_mark_processed_int_iterable_idempotent_out_of_order(wal_dir, open_wal):
    w = open_wal(wal_dir)
    ids = [w.append(f"e{i}".encode(), kind=KINDS[i % 3]) for i in range(20)]
    w.mark_processed(ids[5])  # int
    w.mark_processed([ids[3], ids[1]])  # list, out of order
    w.mark_processed(i for i in (ids[7], ids[6]))  # generator
    w.mark_processed({ids[10]})  # set
    w.mark_processed(range(ids[12], ids[14] + 1))  # range
    w.mark_processed(ids[5])  # again: idempotent
    w.mark_processed([ids[1], ids[1], ids[3]])  # duplicates
    w.mark_processed([])  # nothing
    done = {5, 3, 1, 7, 6, 10, 12, 13, 14}
    expect = [(ids[i], KINDS[i % 3], f"e{i}".encode()) for i in range(20) if i not in done]
    assert entries_of(w) == expect
    st = w.stats()
    assert st["unprocessed_entries"] == len(expect)
    assert st["processed_entries"] == len(done), "processed_entries counts repeats or misses marks"
    w.close()
    assert read_all(wal_dir).entries == expect
    # After reopen, marking the remaining ones (first one last) empties the WAL.
    w = open_wal(wal_dir)
    rest = [e[0] for e in expect]
    w.mark_processed(rest[1:])
    w.mark_processed(rest[0])
    assert entries_of(w) == []
    assert w.stats()["unprocessed_entries"] == 0
    w.close()
    assert read_all(wal_dir).entries == []


def test_mark_processed_rejects_a_string(wal_dir, open_wal):
    """A str is iterable: mark_processed("12") must not mark entries 1 and 2."""
    w = open_wal(wal_dir)
    ids = [w.append(b"s%d" % i) for i in range(3)]
    assert ids == [1, 2, 3]
    for bad in ("12", b"\x01\x02"):
        with contextlib.suppress(TypeError, ValueError):
            w.mark_processed(bad)
        left = [e.id for e in w.unprocessed()]
        assert left == ids, f"mark_processed({bad!r}) marked ids {sorted(set(ids) - set(left))} processed"
    w.close()


def test_marking_an_id_not_handed_out_never_hides_a_future_entry(wal_dir, open_wal):
    w = open_wal(wal_dir)
    first = w.append(b"one")
    future = first + 3
    # Refusing is fine; silently pre-processing a future id is not.
    with contextlib.suppress(ValueError, WalError):
        w.mark_processed(future)
    got = [w.append(f"n{i}".encode()) for i in range(5)]
    assert future in got
    assert [e.id for e in w.unprocessed()] == [first, *got], (
        f"entry {future} was born processed because mark_processed({future}) was accepted before it existed"
    )
    w.close()


def test_marking_one_entry_at_a_time_is_cheap(wal_dir, open_wal):
    """No checkpoint rewrite + fsync per processed entry (the old O(n^2) index)."""
    n = 20_000
    w = open_wal(wal_dir)
    ids = []
    for b in range(0, n, 1000):
        ids.extend(w.append_batch([b"%08d" % i for i in range(b, b + 1000)], kind="logs"))
    order = ids[1::2] + ids[0::2]  # out of order: half of them sit above the watermark for a while
    fsyncs_before = w.stats()["fsync_count"]
    t0 = time.perf_counter()
    for eid in order:
        w.mark_processed(eid)
    took = time.perf_counter() - t0
    assert took < 3.0, f"{n} single mark_processed calls took {took:.1f}s"
    assert w.stats()["fsync_count"] - fsyncs_before < 100
    assert w.stats()["unprocessed_entries"] == 0
    w.close()
    assert read_all(wal_dir).entries == []


def test_unprocessed_iterator_is_lazy_and_tail_returns_lists(wal_dir, open_wal):
    w = open_wal(wal_dir)
    ids = w.append_batch([f"p{i}".encode() for i in range(30)], kind="logs")
    it = w.unprocessed()
    assert not isinstance(it, list) and iter(it) is it, "unprocessed() without limit should be a lazy iterator"
    assert next(it).id == ids[0]
    tail = w.unprocessed(after_id=0, limit=5)
    assert isinstance(tail, list)
    assert [e.id for e in tail] == ids[:5]
    assert [e.id for e in w.unprocessed(after_id=ids[4], limit=5)] == ids[5:10]
    assert [e.id for e in w.unprocessed(after_id=ids[4], limit=1000)] == ids[5:]
    assert w.unprocessed(after_id=ids[0], limit=0) == []
    assert w.unprocessed(after_id=ids[-1], limit=10) == []
    assert w.unprocessed(after_id=ids[-1] + 1000, limit=10) == []
    assert [e.id for e in w.unprocessed(after_id=ids[10])] == ids[11:]
    with pytest.raises(ValueError):
        w.unprocessed(limit=-1)
    # Processed entries are skipped, also when after_id points into them.
    w.mark_processed(ids[10:20])
    assert [e.id for e in w.unprocessed(after_id=ids[9], limit=3)] == ids[20:23]
    assert [e.id for e in w.unprocessed(after_id=ids[14], limit=3)] == ids[20:23]
    # A forwarder's tail loop sees everything exactly once.
    seen, last = [], 0
    for _ in range(100):
        batch = w.unprocessed(after_id=last, limit=4)
        if not batch:
            break
        seen.extend(e.id for e in batch)
        last = batch[-1].id
    assert seen == ids[:10] + ids[20:]
    w.close()


def test_segments_are_deleted_once_processed(wal_dir, open_wal):
    w = open_wal(wal_dir, max_segment_size=SMALL_SEG)
    ids = []
    # Batches of 10 (~1.3 KiB) fit a 4 KiB segment; a batch never spans segments.
    for b in range(400):
        ids.extend(w.append_batch([tagged_payload(f"d{b}.{i}", 100) for i in range(10)], kind="traces"))
    assert len(ids) == 4000
    st = w.stats()
    assert st["total_segments"] > 100, st
    assert st["disk_usage_bytes"] > 100 * 1000, st
    half = ids[: len(ids) // 2]
    w.mark_processed(half)
    w.flush()
    mid = w.stats()
    assert mid["total_segments"] < 0.7 * st["total_segments"], ("processing half did not delete segments", st, mid)
    w.mark_processed(ids[len(ids) // 2 :])
    w.flush()
    end = w.stats()
    assert end["unprocessed_entries"] == 0
    assert end["unprocessed_bytes"] == 0
    assert end["total_segments"] <= 2, ("fully processed WAL keeps segments", end)
    # Up to 32 processed segments' files (32 MiB of segment size, at most 32 files, each at
    # most twice the size) are kept for reuse as spares (format v2, recycling); close deletes
    # them (checked below).
    assert end["disk_usage_bytes"] <= (4 + 64) * SMALL_SEG + 16 * 1024, end
    w.close()
    files = segment_files(wal_dir)
    assert len(files) <= 2, [p.name for p in files]
    on_disk = sum(p.stat().st_size for p in (wal_dir / "segments").iterdir())
    assert on_disk <= 4 * SMALL_SEG, f"{on_disk} bytes left under segments/"
    snap = read_all(wal_dir, max_segment_size=SMALL_SEG)
    assert snap.entries == []
    assert snap.stats["total_segments"] <= 2


def test_processed_segments_files_become_new_segments(wal_dir, open_wal):
    """Format v2 recycling: with entries processed as they come (as the services
    do), new segments are started in processed segments' files; a reopen then
    reads exactly the unprocessed entries, with no stale record, no torn tail
    and no corruption reported."""
    w = open_wal(wal_dir, max_segment_size=SMALL_SEG)
    kept = []
    for b in range(300):
        new = w.append_batch([tagged_payload(f"r{b}.{i}", 100) for i in range(10)], kind="logs")
        if b < 280:
            w.mark_processed(new)
        else:
            kept.extend(new)
        if b % 10 == 9:
            w.checkpoint()  # processed segments go to the pool; the next spares come from it
    st = w.stats()
    assert st["segments_recycled"] > 0, st
    assert st["corrupt_entries"] == 0 and st["torn_tails_truncated"] == 0, st
    w.close()
    snap = read_all(wal_dir, max_segment_size=SMALL_SEG)
    assert snap.ids == kept
    assert snap.stats["corrupt_entries"] == 0 and snap.stats["torn_tails_truncated"] == 0, snap.stats
    assert all(p.startswith(b"r28") or p.startswith(b"r29") for _, _, p in snap.entries)


# -- files ----------------------------------------------------------------------


def test_metadata_json_is_valid_json(wal_dir, open_wal):
    w = open_wal(wal_dir)
    ids = [w.append(b"m") for _ in range(3)]
    w.mark_processed(ids[0])
    w.close()
    meta_path = wal_dir / "metadata.json"
    assert meta_path.is_file()
    doc = json.loads(meta_path.read_text())
    assert isinstance(doc, dict)
    assert _native.read_metadata(str(wal_dir)) is not None
    assert not [p.name for p in wal_dir.iterdir() if p.name.endswith(".tmp")], "temp file left behind"


def test_directories_0700_files_0600(tmp_path, open_wal):
    old = os.umask(0)  # the most permissive umask: the engine must set modes itself
    try:
        wal_path = tmp_path / "nested" / "deeper" / "wal"
        w = open_wal(wal_path, max_segment_size=SMALL_SEG)
        ids = [w.append(filler(i, 1000)) for i in range(20)]
        w.mark_processed(ids[:5])
        w.flush()
        w.close()
    finally:
        os.umask(old)
    checked = 0
    for root, dirs, files in os.walk(wal_path):
        for d in dirs:
            mode = stat.S_IMODE(os.stat(os.path.join(root, d)).st_mode)
            assert mode == 0o700, f"{os.path.join(root, d)} is {oct(mode)}"
        for f in files:
            mode = stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode)
            assert mode == 0o600, f"{os.path.join(root, f)} is {oct(mode)}"
            checked += 1
    assert stat.S_IMODE(os.stat(wal_path).st_mode) == 0o700
    assert checked >= 2


def test_segment_files_follow_the_documented_format(wal_dir, open_wal):
    w = open_wal(wal_dir, max_segment_size=SMALL_SEG)
    written = []
    for i in range(30):
        payload = filler(f"fmt{i}", 17 * i)
        written.append((w.append(payload, kind=KINDS[i % 3]), KINDS[i % 3], payload))
    w.close()
    names = [p.name for p in segment_files(wal_dir)]
    assert names and names[0] == "000001.wal" and all(len(n) == 10 for n in names), names
    seen = []
    prev_last = prev_end = 0
    for p in segment_files(wal_dir):
        buf = p.read_bytes()
        seg = parse_segment(buf, int(p.stem))
        assert seg.magic == MAGIC
        # Format version 2 (the v1 header was 32 bytes, unsalted): no flags on a fresh segment.
        assert seg.version == 2 and seg.flags == 0
        assert seg.header_bytes[40:44] == b"\0\0\0\0"
        assert crc32c(buf[:44]) == seg.header_crc, f"{p.name}: header CRC is not CRC32C of bytes 0..44"
        if prev_last:
            # The header says where the segment before it ends (what a recycled one needs).
            assert (seg.prev_last_id, seg.prev_data_end) == (prev_last, prev_end), f"{p.name}: prev fields"
        if seg.records:
            assert seg.base_id == seg.records[0].id, f"{p.name}: base id {seg.base_id} != first record id"
            assert seg.base_id > prev_last
            prev_last = seg.records[-1].id
            prev_end = seg.data_end
        assert not any(buf[seg.data_end : seg.data_end + 28]), f"{p.name}: data not followed by a zero header"
        for r in seg.records:
            assert record_crc_ok(buf, r, segment_salt(int(p.stem))), f"{p.name}@{r.offset}: record CRC mismatch"
            assert buf[r.offset + 25 : r.offset + 28] == b"\0\0\0"
            seen.append((r.id, {v: k for k, v in KIND_CODES.items()}[r.kind], r.payload))
        assert seg.records or p == segment_files(wal_dir)[-1], f"{p.name} is empty"
    assert seen == written
    assert SEGMENT_HEADER_LEN == 48


# -- stats ----------------------------------------------------------------------


def _check_histogram(st):
    buckets = st["fsync_duration_buckets"]
    assert isinstance(buckets, list) and buckets
    bounds = [float(b[0]) for b in buckets]
    counts = [int(b[1]) for b in buckets]
    assert all(len(b) == 2 for b in buckets)
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)
    assert counts == sorted(counts), "bucket counts are not cumulative"
    assert math.isinf(bounds[-1]), "last bucket is not +Inf"
    assert counts[-1] == st["fsync_count"]


def test_stats_keys_types_and_counters(wal_dir, open_wal):
    w = open_wal(wal_dir, max_segment_size=SMALL_SEG)
    st = w.stats()
    assert set(st) >= STATS_KEYS, f"missing stats keys: {sorted(STATS_KEYS - set(st))}"
    assert st["next_id"] == 1
    assert st["unprocessed_entries"] == 0 and st["appended_entries"] == 0
    assert st["processed_entries"] == 0 and st["corrupt_entries"] == 0 and st["torn_tails_truncated"] == 0
    assert st["last_flush"] is None
    assert st["poisoned"] is False
    assert st["sync_mode"] == "immediate"
    assert st["unprocessed_bytes"] == 0
    _check_histogram(st)

    before = time.time()
    payloads = [filler(i, 300 * i) for i in range(1, 8)]
    ids = [w.append(p, kind="logs") for p in payloads]
    ids += w.append_batch([b"x" * 10, b"y" * 20], kind="metrics")
    after = time.time()
    st = w.stats()
    for key in (
        "unprocessed_entries",
        "total_segments",
        "disk_usage_bytes",
        "next_id",
        "appended_entries",
        "processed_entries",
        "corrupt_entries",
        "torn_tails_truncated",
        "fsync_count",
        "unprocessed_bytes",
    ):
        assert isinstance(st[key], int) and not isinstance(st[key], bool), (key, st[key])
    for key in ("fsync_seconds_total", "fsync_seconds_max"):
        assert isinstance(st[key], float), (key, st[key])
    assert st["appended_entries"] == 9
    assert st["unprocessed_entries"] == 9
    assert st["next_id"] == ids[-1] + 1
    assert st["total_segments"] >= 2, "9 entries of up to 2 KiB fit no 4 KiB segment: no rotation?"
    assert st["disk_usage_bytes"] >= sum(map(len, payloads))
    on_disk = dir_size(wal_dir)
    assert on_disk / 2 <= st["disk_usage_bytes"] <= 2 * on_disk + 65536, (st["disk_usage_bytes"], on_disk)
    assert st["unprocessed_bytes"] >= sum(map(len, payloads)) + 30
    assert st["fsync_count"] >= 8, "7 sequential appends + 1 batch in immediate mode need >= 8 fsyncs"
    assert st["fsync_seconds_max"] > 0 and st["fsync_seconds_total"] >= st["fsync_seconds_max"]
    _check_histogram(st)
    lf = st["last_flush"]
    assert isinstance(lf, str)
    parsed = dt.datetime.fromisoformat(lf.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, f"last_flush {lf!r} has no UTC offset (not RFC 3339)"
    assert before - 2 <= parsed.timestamp() <= after + 2

    ub = st["unprocessed_bytes"]
    w.mark_processed(ids[:3])
    st = w.stats()
    assert st["processed_entries"] == 3 and st["unprocessed_entries"] == 6
    # unprocessed_bytes counts the segments that still hold unprocessed entries
    # (docs/wal-format.md), so it drops only once a whole segment is processed.
    assert st["unprocessed_bytes"] <= ub
    w.close()

    w = open_wal(wal_dir, max_segment_size=SMALL_SEG)
    st = w.stats()
    assert st["unprocessed_entries"] == 6 and st["next_id"] > ids[-1]
    assert st["corrupt_entries"] == 0 and st["torn_tails_truncated"] == 0
    w.close()


# -- lifecycle --------------------------------------------------------------


def test_context_manager_and_close(wal_dir):
    with Wal(wal_dir) as w:
        assert not w.closed
        eid = w.append(b"in with")
    assert w.closed
    w.close()  # idempotent
    with pytest.raises(WalError):
        w.append(b"after close")
    with pytest.raises(WalError):
        w.append_batch([b"after close"])
    with pytest.raises(WalError):
        w.flush()
    with pytest.raises(WalError):
        asyncio.run(w.append_async(b"after close"))
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(WalError):
            asyncio.run(w.append_async(b"after close"))
    leaked = len(os.listdir("/proc/self/fd")) - fds
    assert leaked <= 2, f"20 append_async calls on a closed WAL leaked {leaked} file descriptors"

    class Boom(Exception):
        pass

    with pytest.raises(Boom), Wal(wal_dir) as w2:
        w2.append(b"then boom")
        raise Boom
    assert w2.closed
    # The lock was released: a new handle opens and sees both entries.
    assert [p for _, _, p in read_all(wal_dir).entries] == [b"in with", b"then boom"]
    assert read_all(wal_dir).ids[0] == eid


def test_another_process_cannot_open_a_wal_in_use(wal_dir, open_wal):
    import json
    import subprocess
    import sys

    from conftest import HELPERS_DIR

    w = open_wal(wal_dir)
    w.append(b"held by the parent")
    r = subprocess.run(
        [sys.executable, str(HELPERS_DIR / "open_wal_child.py"), str(wal_dir)], capture_output=True, timeout=60
    )
    out = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert not out["ok"] and out["is_wal_error"], f"a second process opened (and appended to) a WAL in use: {out}"
    w.close()
    r = subprocess.run(
        [sys.executable, str(HELPERS_DIR / "open_wal_child.py"), str(wal_dir)], capture_output=True, timeout=60
    )
    assert json.loads(r.stdout.decode().strip().splitlines()[-1])["ok"], "lock not released by close()"
    assert len(read_all(wal_dir).entries) == 2


def test_reopen_with_another_segment_size(wal_dir, open_wal):
    expect = []
    for seg, n in ((1 << 20, 3000), (SMALL_SEG, 700), (1 << 16, 2500), (SMALL_SEG, 100)):
        w = open_wal(wal_dir, max_segment_size=seg)
        for i in range(6):
            p = filler(f"{seg}.{i}", n + i)
            expect.append((w.append(p, kind="metrics"), "metrics", p))
        assert entries_of(w) == expect
        w.close()
    assert read_all(wal_dir, max_segment_size=SMALL_SEG).entries == expect


def test_second_handle_on_same_directory_is_refused(wal_dir, open_wal):
    w = open_wal(wal_dir)
    w.append(b"first")
    with pytest.raises(WalError):
        Wal(wal_dir)
    w.append(b"still works")
    w.close()
    assert len(read_all(wal_dir).entries) == 2


# -- sync modes and tuning knobs -------------------------------------------------


def test_immediate_mode_syncs_before_each_sequential_ack(wal_dir, open_wal):
    w = open_wal(wal_dir)
    base = w.stats()["fsync_count"]
    for i in range(50):
        w.append(b"seq %d" % i)
        assert w.stats()["fsync_count"] >= base + i + 1, f"append {i} returned before an fsync covered it"
    w.close()


def test_batched_mode_acks_without_fsync_and_flush_makes_durable(wal_dir, open_wal):
    w = open_wal(wal_dir, sync_mode="batched", max_buffer_entries=100_000, flush_interval_secs=3600)
    assert w.stats()["sync_mode"] == "batched"
    base = w.stats()["fsync_count"]
    ids = [w.append(b"b%d" % i, kind="logs") for i in range(200)]
    ids += w.append_batch([b"bb%d" % i for i in range(50)], kind="metrics")
    assert_strictly_increasing(ids)
    assert len(entries_of(w)) == 250, "batched appends are not readable before a flush"
    mid = w.stats()["fsync_count"]
    assert mid - base <= 5, f"batched mode did {mid - base} fsyncs for 250 appends"
    w.flush()
    st = w.stats()
    assert st["fsync_count"] > mid, "flush() did not fsync"
    assert st["last_flush"] is not None
    w.close()
    assert [e[0] for e in read_all(wal_dir).entries] == ids


def test_batched_mode_flushes_every_max_buffer_entries(wal_dir, open_wal):
    w = open_wal(wal_dir, sync_mode="batched", max_buffer_entries=10, flush_interval_secs=3600)
    # The forced fsync runs on the engine's flusher thread and may cover more
    # than 10 entries; what the knob guarantees is that 10 unsynced entries
    # trigger one without flush() and long before the 1-hour interval.
    for rnd in range(5):
        base = w.stats()["fsync_count"]
        for i in range(10):
            w.append(b"x%d.%d" % (rnd, i))
        deadline = time.monotonic() + 5
        while w.stats()["fsync_count"] == base and time.monotonic() < deadline:
            time.sleep(0.005)
        assert w.stats()["fsync_count"] > base, (
            f"round {rnd}: 10 unsynced entries (max_buffer_entries=10) did not force an fsync"
        )
    w.close()


def test_batched_mode_flushes_after_flush_interval(wal_dir, open_wal):
    w = open_wal(wal_dir, sync_mode="batched", max_buffer_entries=100_000, flush_interval_secs=0.2)
    base = w.stats()["fsync_count"]
    w.append(b"waits for the timer")
    t0 = time.monotonic()
    while w.stats()["fsync_count"] == base and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    waited = time.monotonic() - t0
    assert w.stats()["fsync_count"] > base, "flush_interval_secs=0.2 did not flush within 5 s"
    assert w.stats()["last_flush"] is not None
    assert waited < 3, f"interval flush took {waited:.2f}s for a 0.2 s interval"
    w.close()


# -- bad arguments ------------------------------------------------------------


def test_bad_arguments(wal_dir, open_wal):
    w = open_wal(wal_dir)
    for bad_kind in ("trace", "TRACES", "", "spans", None, 1):
        with pytest.raises(ValueError):
            w.append(b"x", kind=bad_kind)
        with pytest.raises(ValueError):
            w.append_batch([b"x"], kind=bad_kind)
        with pytest.raises(ValueError):
            asyncio.run(w.append_async(b"x", kind=bad_kind))
    for bad_payload in ("text", 42, None, [b"x"], 1.5):
        with pytest.raises(TypeError):
            w.append(bad_payload)
        with pytest.raises(TypeError):
            asyncio.run(w.append_async(bad_payload))
    with pytest.raises(TypeError):
        w.append_batch([b"ok", "not bytes", b"ok"])
    assert entries_of(w) == [], "a rejected call wrote something"
    assert w.stats()["next_id"] == 1 and w.stats()["appended_entries"] == 0
    w.close()
    for kwargs in (
        {"sync_mode": "sometimes"},
        {"max_segment_size": 100},
        {"max_buffer_entries": 0},
        {"flush_interval_secs": 0},
        {"flush_interval_secs": -1.0},
    ):
        with pytest.raises(ValueError):
            Wal(wal_dir, **kwargs)


def test_path_that_is_a_file_raises_walerror(tmp_path):
    p = tmp_path / "not-a-dir"
    p.write_bytes(b"hello")
    with pytest.raises(WalError):
        Wal(p)
    assert p.read_bytes() == b"hello"


# -- reading while appending -----------------------------------------------------


def test_reading_while_another_thread_appends(wal_dir, open_wal):
    w = open_wal(wal_dir, max_segment_size=SMALL_SEG)
    total = 3000
    errors: list[BaseException] = []
    done = threading.Event()

    def writer():
        try:
            seq = 0
            while seq < total:
                n = 1 + seq % 7
                if seq % 3 == 0:
                    w.append_batch([tagged_payload(f"w{seq + j}", (seq + j) % 500) for j in range(n)], kind="logs")
                    seq += n
                else:
                    w.append(tagged_payload(f"w{seq}", seq % 500), kind="logs")
                    seq += 1
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    def check(entries, what):
        ids = [e.id for e in entries]
        assert_strictly_increasing(ids, what)
        for e in entries:
            tag = e.payload.split(b":", 1)[0].decode()
            seq = int(tag[1:])
            assert e.payload == tagged_payload(tag, seq % 500), f"{what}: garbled payload for id {e.id}"
        seqs = [int(e.payload.split(b":", 1)[0][1:]) for e in entries]
        assert_strictly_increasing(seqs, f"{what} (sequence numbers)")

    t = threading.Thread(target=writer)
    t.start()
    tail_seen = []
    last = 0
    full_scans = 0
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        batch = w.unprocessed(after_id=last, limit=97)
        check(batch, "tail")
        tail_seen.extend(batch)
        if batch:
            last = batch[-1].id
        if full_scans < 30:
            check(list(w.unprocessed()), "full scan")
            full_scans += 1
        if done.is_set() and not batch:
            # One more read after the writer finished catches its last entries.
            batch = w.unprocessed(after_id=last, limit=100_000)
            check(batch, "tail")
            tail_seen.extend(batch)
            break
    t.join(timeout=30)
    assert not errors, errors
    assert done.is_set(), "writer did not finish in time"
    check(tail_seen, "everything the tail saw")
    assert len(tail_seen) == total
    w.close()


def test_reading_while_appending_and_processing(wal_dir, open_wal):
    """Segments get deleted under a reader: it must see neither garbage nor a processed entry twice."""
    w = open_wal(wal_dir, max_segment_size=SMALL_SEG)
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer():
        try:
            for b in range(150):
                w.append_batch([tagged_payload(f"x{b}.{i}", 200) for i in range(10)], kind="metrics")
        except BaseException as e:
            errors.append(e)
        finally:
            stop.set()

    t = threading.Thread(target=writer)
    t.start()
    processed = 0
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        finished = stop.is_set()
        batch = w.unprocessed(after_id=0, limit=50)
        for e in batch:
            tag = e.payload.split(b":", 1)[0].decode()
            assert e.payload == tagged_payload(tag, 200)
        ids = [e.id for e in batch]
        assert_strictly_increasing(ids)
        w.mark_processed(ids)
        processed += len(ids)
        if finished and not batch:
            break
    t.join(timeout=30)
    assert not errors, errors
    assert processed == 1500
    assert entries_of(w) == []
    w.flush()
    assert w.stats()["total_segments"] <= 2
    w.close()


# -- scale (make stress) --------------------------------------------------------


def _tail_child(path, last: int) -> dict:
    import json
    import subprocess
    import sys

    from conftest import HELPERS_DIR

    r = subprocess.run(
        [sys.executable, str(HELPERS_DIR / "tail_child.py"), str(path), str(last)], capture_output=True, timeout=600
    )
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


def _fill_small(path, n: int) -> int:
    """n tiny entries in one session (so their ids are contiguous); returns the last id."""
    last = 0
    with Wal(path) as w:
        for b in range(0, n, 1000):
            last = w.append_batch([b"%015d" % i for i in range(b, min(n, b + 1000))], kind="logs")[-1]
    return last


@pytest.mark.stress
def test_stress_tail_cost_and_memory_do_not_grow_with_entries(tmp_path):
    """Millions of unprocessed entries: opening and tailing cost what they return, memory stays flat."""
    from conftest import scaled

    n_small, n_big = 20_000, scaled(1_000_000, 5_000_000)
    small, big = tmp_path / "small", tmp_path / "big"
    s = _tail_child(small, _fill_small(small, n_small))
    b = _tail_child(big, _fill_small(big, n_big))
    assert (s["iterated"], b["iterated"]) == (n_small, n_big)
    assert b["tail_start_n"] == 500 and b["tail_end_ids"][-1] == 100
    grown_mb = (b["maxrss_kb"] - s["maxrss_kb"]) / 1024
    assert grown_mb < 40, f"RSS grew {grown_mb:.0f} MiB for {n_big} entries: memory follows entries ({s}, {b})"
    assert b["tail_end_s"] < 0.05, f"tail near the end of {n_big} entries took {b['tail_end_s'] * 1000:.0f} ms"
    assert b["tail_end_s"] < 20 * s["tail_end_s"] + 0.01, (s, b)


def _thread_cpu_seconds(prefix: str) -> float:
    """CPU time of this process's threads whose name starts with ``prefix`` (Linux /proc)."""
    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith(prefix):
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def test_background_threads_sleep_while_a_checkpoint_is_not_due(tmp_path) -> None:
    """Regression: processed marks set `checkpoint_wanted`, and the housekeeper used to spin
    until the next checkpoint was due (a whole core at steady forwarding)."""
    with Wal(tmp_path / "w") as wal:
        for _ in range(20):  # keep marking for ~1 s, as a forwarder does
            wal.mark_processed(wal.append(b"x" * 100))
            time.sleep(0.05)
        before = _thread_cpu_seconds("signaldb-wal")
        for _ in range(20):
            wal.mark_processed(wal.append(b"x" * 100))
            time.sleep(0.05)
        used = _thread_cpu_seconds("signaldb-wal") - before
    assert used < 0.2, f"WAL background threads used {used:.2f} s of CPU in ~1 s of light work"


def test_unprocessed_bytes_matches_stats_as_entries_come_and_go(tmp_path) -> None:
    with Wal(tmp_path / "w", max_segment_size=4096) as wal:
        assert wal.unprocessed_bytes() == wal.stats()["unprocessed_bytes"] == 0
        ids = [wal.append(b"x" * 1000) for _ in range(10)]  # spans several segments
        assert wal.unprocessed_bytes() == wal.stats()["unprocessed_bytes"] > 4096
        wal.mark_processed(ids[:5])
        assert wal.unprocessed_bytes() == wal.stats()["unprocessed_bytes"] > 0
        wal.mark_processed(ids[5:])
        assert wal.unprocessed_bytes() == wal.stats()["unprocessed_bytes"] == 0


def test_checkpoint_makes_processed_marks_durable_at_once(wal_dir):
    """`mark_processed` is in memory until the next once-a-second checkpoint;
    `checkpoint()` writes it now (what the acceptor's forwarder relies on)."""
    from signaldb import _native

    with Wal(wal_dir, flush_interval_secs=3600) as wal:
        ids = [wal.append(b"x%d" % i, kind="traces") for i in range(3)]
        wal.checkpoint()
        before = _native.read_metadata(str(wal_dir))["processed_watermark"]
        wal.mark_processed(ids[:2])
        wal.checkpoint()
        assert _native.read_metadata(str(wal_dir))["processed_watermark"] == ids[1] > before


def test_cli_leaves_the_spare_out_of_a_live_wal(tmp_path, capsys) -> None:
    """The next segment, made ahead (all zero), is shown as the spare, not as a segment:
    the one before it stays the newest (an append in flight there is a torn tail)."""
    from signaldb import wal_cli

    wal_dir = tmp_path / "w"
    with Wal(wal_dir, max_segment_size=4096) as w:
        for _ in range(8):  # over a quarter of the segment: the spare is made in the background
            w.append(b"x" * 300, kind="logs")
        seg_dir = wal_dir / "segments"
        deadline = time.monotonic() + 5
        while sorted(p.name for p in seg_dir.iterdir() if p.name[0].isdigit()) != ["000001.wal", "000002.wal"]:
            assert time.monotonic() < deadline, sorted(p.name for p in seg_dir.iterdir())
            time.sleep(0.01)
        view = wal_cli.load_view(wal_dir)
        assert view.spares == ["000002.wal"] and [s.name for s in view.segments] == ["000001.wal"]
        assert wal_cli.cmd_verify(view, as_json=False) == wal_cli.EXIT_OK
        wal_cli.cmd_inspect(view, as_json=False)
        assert "spare (next segment, made ahead): 000002.wal" in capsys.readouterr().out


def test_cli_dump_shows_what_the_wal_replays_from_a_sealed_recycled_segment(wal_dir, open_wal, capsys) -> None:
    """`signaldb-wal dump` reads a sealed recycled segment as recovery does: up to the end the
    next segment's header gives, not up to its first zero record header. A record header
    zeroed in the middle (a lost write-back) is corruption there, and the records after it
    are still entries: dump shows them, and the WAL replays them."""
    from signaldb import wal_cli

    w = open_wal(wal_dir, max_segment_size=SMALL_SEG)
    for b in range(300):
        new = w.append_batch([tagged_payload(f"d{b}.{i}", 100) for i in range(10)], kind="logs")
        if b < 270:
            w.mark_processed(new)
        if b % 10 == 9:
            w.checkpoint()  # processed segments go to the pool; the next spares come from it
    assert w.stats()["segments_recycled"] > 0
    w.close()
    files = segment_files(wal_dir)
    sealed_recycled = [
        (p, seg)
        for p, seg in ((p, parse_segment_file(p)) for p in files[:-1])
        if seg.flags & 1 and len(seg.records) >= 4
    ]
    assert sealed_recycled, "no sealed recycled segment with records to damage"
    path, seg = sealed_recycled[-1]
    hole = seg.records[1]  # its header zeroed: a terminator, as far as the bytes go
    data = bytearray(path.read_bytes())
    data[hole.offset : hole.offset + RECORD_HEADER_LEN] = bytes(RECORD_HEADER_LEN)
    path.write_bytes(bytes(data))
    after_hole = [r.id for r in seg.records[2:]]

    view = wal_cli.load_view(wal_dir)
    capsys.readouterr()
    assert wal_cli.cmd_dump(view, show_all=False, limit=None, payload_mode="none", width=0) == wal_cli.EXIT_OK
    dumped = [int(line.split("\t")[0]) for line in capsys.readouterr().out.splitlines()]
    assert set(after_hole) <= set(dumped), f"dump hides entries after the zeroed header: {after_hole}"

    snap = read_all(wal_dir, max_segment_size=SMALL_SEG)
    assert snap.stats["corrupt_entries"] >= 1, snap.stats
    assert set(after_hole) <= set(snap.ids)
    assert dumped == [i for i in snap.ids if i != hole.id], "dump shows what the WAL replays, but the lost one"
