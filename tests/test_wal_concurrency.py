"""Many writers at once: threads, asyncio tasks, both; group commit; a responsive event loop."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import zlib

import pytest

from conftest import KINDS, assert_strictly_increasing, read_all, scaled, tagged_payload
from signaldb.wal import Wal, WalError

N_THREADS = 32
N_TASKS = 200


def _size(who: str, seq: int) -> int:
    # A spread of sizes, from empty-ish to several KiB, deterministic per (writer, seq).
    return zlib.crc32(f"{who}.{seq}".encode()) % 3000 if seq % 5 else (seq * 7919) % 17


def _payload(who: str, seq: int) -> bytes:
    return tagged_payload(f"{who}.{seq}", _size(who, seq))


def _kind(who: str, seq: int) -> str:
    return KINDS[(len(who) + seq) % 3]


def _run_threads(wal: Wal, n_threads: int, per_thread: int, results: dict, errors: list) -> list[threading.Thread]:
    barrier = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        who = f"T{t}"
        got = []
        try:
            barrier.wait(timeout=30)
            for s in range(per_thread):
                if s % 10 == 9:
                    seqs = [s * 1000 + j for j in range(3)]
                    ids = wal.append_batch([_payload(who, q) for q in seqs], kind=_kind(who, s))
                    got.extend((q, i, _kind(who, s)) for q, i in zip(seqs, ids, strict=True))
                else:
                    got.append((s, wal.append(_payload(who, s), kind=_kind(who, s)), _kind(who, s)))
        except BaseException as e:
            errors.append(e)
        results[who] = got

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    return threads


async def _run_tasks(wal: Wal, n_tasks: int, per_task: int, results: dict, prefix: str = "A") -> None:
    start = asyncio.Event()

    async def task(k: int) -> None:
        who = f"{prefix}{k}"
        got = []
        await start.wait()
        for s in range(per_task):
            got.append((s, await wal.append_async(_payload(who, s), kind=_kind(who, s)), _kind(who, s)))
        results[who] = got

    tasks = [asyncio.create_task(task(k)) for k in range(n_tasks)]
    await asyncio.sleep(0)
    start.set()
    await asyncio.gather(*tasks)


def _verify(wal_dir, results: dict, expected_writers: int, fsyncs: int) -> None:
    assert len(results) == expected_writers
    all_ids = []
    expect = {}
    for who, got in results.items():
        ids = [i for _, i, _ in got]
        assert_strictly_increasing(ids, f"ids seen by {who}")
        all_ids.extend(ids)
        for seq, eid, kind in got:
            expect[eid] = (kind, _payload(who, seq))
    assert len(set(all_ids)) == len(all_ids), "the same id was handed to two appends"
    entries = len(all_ids)
    assert fsyncs < entries, f"no group commit: {fsyncs} fsyncs for {entries} concurrent entries"
    snap = read_all(wal_dir)
    assert_strictly_increasing(snap.ids, "ids after reopen")
    got = snap.by_id
    missing = sorted(set(expect) - set(got))
    assert not missing, f"{len(missing)} acknowledged entries missing after reopen, e.g. {missing[:10]}"
    wrong = [i for i in expect if got[i] != expect[i]]
    assert not wrong, f"{len(wrong)} entries differ after reopen, e.g. ids {wrong[:10]}"
    extra = sorted(set(got) - set(expect))
    assert not extra, f"entries nobody appended: {extra[:10]}"


def test_32_threads_append_at_once(wal_dir):
    per = scaled(60, 600)
    results: dict = {}
    errors: list = []
    w = Wal(wal_dir, max_segment_size=256 * 1024)
    try:
        base = w.stats()["fsync_count"]
        threads = _run_threads(w, N_THREADS, per, results, errors)
        for th in threads:
            th.join(timeout=120)
        assert not any(th.is_alive() for th in threads), "appending threads hung"
        assert not errors, errors[:3]
        fsyncs = w.stats()["fsync_count"] - base
    finally:
        w.close()
    _verify(wal_dir, results, N_THREADS, fsyncs)


def test_200_asyncio_tasks_append_at_once(wal_dir):
    per = scaled(10, 100)
    results: dict = {}
    w = Wal(wal_dir, max_segment_size=256 * 1024)
    try:
        base = w.stats()["fsync_count"]
        asyncio.run(asyncio.wait_for(_run_tasks(w, N_TASKS, per, results), timeout=120))
        fsyncs = w.stats()["fsync_count"] - base
    finally:
        w.close()
    _verify(wal_dir, results, N_TASKS, fsyncs)


def test_threads_and_tasks_at_the_same_time(wal_dir):
    per_thread = scaled(40, 400)
    per_task = scaled(8, 80)
    results: dict = {}
    errors: list = []
    w = Wal(wal_dir, max_segment_size=128 * 1024)
    try:
        base = w.stats()["fsync_count"]
        threads = _run_threads(w, N_THREADS, per_thread, results, errors)
        asyncio.run(asyncio.wait_for(_run_tasks(w, N_TASKS, per_task, results), timeout=120))
        for th in threads:
            th.join(timeout=120)
        assert not any(th.is_alive() for th in threads), "appending threads hung"
        assert not errors, errors[:3]
        fsyncs = w.stats()["fsync_count"] - base
    finally:
        w.close()
    _verify(wal_dir, results, N_THREADS + N_TASKS, fsyncs)


def test_max_buffer_entries_caps_a_group_commit(wal_dir):
    """The knob is applied in immediate mode too: no group commit holds more than 4 entries."""
    cap, n_threads, per = 4, 16, 30
    w = Wal(wal_dir, max_buffer_entries=cap)
    ids: list[int] = []
    errors: list = []
    barrier = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        try:
            barrier.wait(timeout=30)
            for s in range(per):
                ids.append(w.append(b"cap %d %d" % (t, s)))
        except BaseException as e:
            errors.append(e)

    try:
        base = w.stats()["fsync_count"]
        ts = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=60)
        assert not errors, errors[:3]
        fsyncs = w.stats()["fsync_count"] - base
    finally:
        w.close()
    total = n_threads * per
    assert len(set(ids)) == total
    assert fsyncs >= total / cap, f"{fsyncs} fsyncs for {total} entries: groups larger than max_buffer_entries={cap}"
    assert len(read_all(wal_dir).entries) == total


def test_two_event_loops_in_two_threads(wal_dir):
    """append_async from two loops at once: each loop's futures resolve on that loop."""
    results: dict = {}
    errors: list = []
    w = Wal(wal_dir)

    def loop_thread(prefix: str) -> None:
        try:
            asyncio.run(asyncio.wait_for(_run_tasks(w, 50, 10, results, prefix=prefix), timeout=60))
        except BaseException as e:
            errors.append(e)

    try:
        base = w.stats()["fsync_count"]
        ts = [threading.Thread(target=loop_thread, args=(p,)) for p in ("L", "M")]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=90)
        assert not any(t.is_alive() for t in ts)
        assert not errors, errors
        fsyncs = w.stats()["fsync_count"] - base
    finally:
        w.close()
    _verify(wal_dir, results, 100, fsyncs)


def test_reused_wal_across_asyncio_runs(wal_dir):
    """A WAL outlives event loops: a second asyncio.run (new loop) still gets acks."""
    w = Wal(wal_dir)
    try:
        ids = []
        for _ in range(3):
            ids.append(asyncio.run(asyncio.wait_for(w.append_async(b"run"), timeout=10)))
            ids.extend(w.append_batch([b"sync"] * 3))  # group commits while no loop listens
        assert_strictly_increasing(ids)
    finally:
        w.close()
    assert read_all(wal_dir).ids == ids


def test_many_asyncio_runs_do_not_leak(wal_dir):
    """Each asyncio.run is a new loop; a closed loop's wake-up pipe must not outlive it.

    Otherwise every closed loop keeps two fds, and every group commit writes
    to one more dead pipe.
    """
    w = Wal(wal_dir)
    try:
        asyncio.run(w.append_async(b"warm-up"))
        fds = len(os.listdir("/proc/self/fd"))
        for i in range(50):
            asyncio.run(asyncio.wait_for(w.append_async(b"run %d" % i), timeout=10))
        leaked = len(os.listdir("/proc/self/fd")) - fds
    finally:
        w.close()
    assert leaked <= 4, f"50 asyncio.run calls left {leaked} more open file descriptors"


async def _ticking_while(work, tick: float = 0.001) -> tuple[float, int, float]:
    """Runs `work` (a coroutine) while a ticker measures the loop's responsiveness."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(tick)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tk = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    await work
    elapsed = time.perf_counter() - t0
    stop.set()
    await tk
    return max(gaps), len(gaps), elapsed


def test_append_async_does_not_block_the_event_loop(wal_dir):
    """Awaiting acknowledgement (write + fsync) happens off the loop: the ticker keeps ticking."""
    w = Wal(wal_dir, max_segment_size=8 << 20)
    try:
        big = tagged_payload("big", 4 << 20)

        async def work() -> None:
            results: dict = {}

            async def heavy() -> None:
                for _ in range(8):
                    await w.append_async(big, kind="traces")

            await asyncio.gather(_run_tasks(w, N_TASKS, 10, results), heavy(), heavy())

        max_gap, ticks, elapsed = asyncio.run(_ticking_while(work()))
    finally:
        w.close()
    assert max_gap < 0.1, f"event loop blocked for {max_gap * 1000:.0f} ms during append_async"
    assert ticks >= elapsed / 0.02, f"only {ticks} ticks in {elapsed:.2f}s: loop starved"


def test_append_async_of_a_large_payload_does_not_stall_the_loop(wal_dir):
    """The synchronous part of append_async must not grow with the payload.

    OTLP requests may be up to 64 MiB (DESIGN: body limit). If enqueue frames
    and checksums (copies, CRCs, page-faults) the payload on the calling
    thread, the event loop stalls for that long; the framing can happen on the
    flusher thread instead.
    """
    w = Wal(wal_dir, max_segment_size=1 << 20)
    big = tagged_payload("huge", 64 << 20)
    try:

        async def one() -> None:
            await w.append_async(big, kind="traces")

        async def main() -> float:
            await w.append_async(b"warm-up")
            gaps = []
            for _ in range(2):
                task = asyncio.create_task(one())
                t0 = time.perf_counter()
                await asyncio.sleep(0)  # the task runs up to its first suspension
                gaps.append(time.perf_counter() - t0)
                await task
            return min(gaps)

        blocked = asyncio.run(asyncio.wait_for(main(), timeout=60))
    finally:
        w.close()
    assert blocked < 0.025, f"append_async of a 64 MiB payload held the event loop for {blocked * 1000:.0f} ms"


def test_sync_appends_in_threads_do_not_block_the_event_loop(wal_dir):
    """Threads waiting for write+fsync must release the GIL, or every loop in the process stalls.

    One thread appends 64 MiB entries (each write + fsync takes 100 ms or more
    here), four others append small ones; a held GIL shows as a long tick gap.
    """
    results: dict = {}
    errors: list = []
    w = Wal(wal_dir, max_segment_size=1 << 20)
    big = tagged_payload("tb", 64 << 20)  # made here: generating it holds the GIL
    try:

        async def work() -> None:
            threads = _run_threads(w, 4, 100, results, errors)

            def big_writer() -> None:
                try:
                    for _ in range(3):
                        w.append(big)
                except BaseException as e:
                    errors.append(e)

            w_big = threading.Thread(target=big_writer)
            w_big.start()
            # Polled: threads cannot set an asyncio.Event, and these sleeps are the ticks measured.
            while any(t.is_alive() for t in threads) or w_big.is_alive():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            w_big.join()

        max_gap, ticks, elapsed = asyncio.run(_ticking_while(work()))
    finally:
        w.close()
    assert not errors, errors[:3]
    assert max_gap < 0.1, f"event loop blocked for {max_gap * 1000:.0f} ms while threads appended"
    assert ticks >= elapsed / 0.02, f"only {ticks} ticks in {elapsed:.2f}s: loop starved"


def test_close_from_another_thread_wakes_pending_append_async(tmp_path):
    """close() in thread A while a loop in thread B awaits append_async: B's awaits end promptly.

    The loop's waiters must be failed (and its reader removed) on the loop's
    own thread (call_soon_threadsafe); futures completed from another thread do
    not wake a loop that sleeps in select(), so its coroutines hang.
    """
    slow = []
    for rnd in range(6):
        w = Wal(tmp_path / f"w{rnd}", max_segment_size=64 * 1024)
        started = threading.Event()
        outcome: dict = {}

        # This round's WAL, event and outcome, bound now (the closures run in another thread).
        async def main(w: Wal = w, started: threading.Event = started) -> None:
            async def appender(k: int) -> None:
                while True:
                    try:
                        await w.append_async(b"%d" % k * 100)
                    except WalError:
                        return
                    started.set()

            await asyncio.gather(*(appender(k) for k in range(50)))

        def loop_thread(outcome: dict = outcome) -> None:
            try:
                asyncio.run(asyncio.wait_for(main(), timeout=5))  # the timer also wakes a stuck loop
                outcome["ok"] = True
            except BaseException as e:
                outcome["error"] = repr(e)

        t = threading.Thread(target=loop_thread, daemon=True)
        t.start()
        assert started.wait(timeout=30), "append_async never acknowledged"
        t0 = time.monotonic()
        w.close()
        t.join(timeout=30)
        took = time.monotonic() - t0
        assert not t.is_alive(), f"round {rnd}: event loop thread hung after close()"
        if took > 3 or "ok" not in outcome:
            slow.append((rnd, round(took, 1), outcome))
    assert not slow, f"append_async waiters not woken by close() from another thread: {slow}"


def test_cancelled_append_async_leaves_the_wal_usable(wal_dir):
    w = Wal(wal_dir)
    try:

        async def main() -> list[int]:
            tasks = [asyncio.create_task(w.append_async(b"c%d" % i)) for i in range(50)]
            await asyncio.sleep(0)
            for t in tasks[::2]:
                t.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            ok = [d for d in done if isinstance(d, int)]
            assert all(isinstance(d, (int, asyncio.CancelledError)) for d in done), done
            ok.append(await w.append_async(b"after"))
            return ok

        ok = asyncio.run(asyncio.wait_for(main(), timeout=30))
    finally:
        w.close()
    ids = read_all(wal_dir).ids
    # Cancelling the wait does not unwrite the entry; the acknowledged ones are all there.
    assert set(ok) <= set(ids)
    assert_strictly_increasing(ids)


@pytest.mark.stress
def test_stress_many_loops_and_threads(wal_dir):
    rounds = scaled(3, 20)
    for r in range(rounds):
        results: dict = {}
        errors: list = []
        w = Wal(wal_dir, max_segment_size=64 * 1024)
        try:
            base = w.stats()["fsync_count"]
            threads = _run_threads(w, N_THREADS, 100, results, errors)
            asyncio.run(asyncio.wait_for(_run_tasks(w, N_TASKS, 20, results, prefix=f"R{r}."), timeout=300))
            for th in threads:
                th.join(timeout=300)
            assert not errors, errors[:3]
            fsyncs = w.stats()["fsync_count"] - base
        finally:
            w.close()
        _verify(wal_dir, results, N_THREADS + N_TASKS, fsyncs)
        # Processing everything between rounds exercises deletion, too.
        with Wal(wal_dir, max_segment_size=64 * 1024) as w:
            w.mark_processed([e.id for e in w.unprocessed()])
        assert read_all(wal_dir).entries == []
