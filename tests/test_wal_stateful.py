"""Model-based test: random sequences of WAL operations against a dict."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, precondition, rule

from conftest import KINDS, STRESS, filler
from signaldb.wal import Wal

SEGMENT = 4096

kinds = st.sampled_from(KINDS)
# Mostly up to ~3000 bytes (several per 4 KiB segment, often straddling the
# rotation point), sometimes bigger than a whole segment.
small_payloads = st.binary(max_size=3000)
big_payloads = st.integers(min_value=SEGMENT - 40, max_value=3 * SEGMENT).map(lambda n: filler(f"big{n}", n))
payloads = st.one_of(small_payloads, small_payloads, small_payloads, big_payloads)


class WalMachine(RuleBasedStateMachine):
    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="signaldb-sm-")
        self.path = os.path.join(self.tmp, "wal")
        self.sync_mode = "immediate"
        self.wal = Wal(self.path, max_segment_size=SEGMENT, sync_mode=self.sync_mode)
        self.entries: dict[int, tuple[str, bytes]] = {}  # everything ever appended
        self.pending: dict[int, tuple[str, bytes]] = {}  # not yet processed
        self.max_id = 0

    def _record(self, eid: int, kind: str, payload: bytes) -> None:
        assert eid > self.max_id, f"id {eid} does not exceed the previous {self.max_id}"
        self.max_id = eid
        self.entries[eid] = (kind, payload)
        self.pending[eid] = (kind, payload)

    @rule(target=ids, payload=payloads, kind=kinds)
    def append(self, payload: bytes, kind: str) -> int:
        eid = self.wal.append(payload, kind=kind)
        self._record(eid, kind, payload)
        return eid

    @rule(target=ids, batch=st.lists(payloads, max_size=6), kind=kinds)
    def append_batch(self, batch: list[bytes], kind: str):
        ids = self.wal.append_batch(batch, kind=kind)
        assert len(ids) == len(batch)
        if ids:
            assert ids == list(range(ids[0], ids[0] + len(ids))), ids
        for eid, p in zip(ids, batch, strict=True):
            self._record(eid, kind, p)
        return multiple(*ids)

    @rule(target=ids, batch=st.lists(small_payloads, min_size=1, max_size=4), kind=kinds)
    def append_async(self, batch: list[bytes], kind: str):
        async def go() -> list[int]:
            return list(await asyncio.gather(*(self.wal.append_async(p, kind=kind) for p in batch)))

        ids = asyncio.run(asyncio.wait_for(go(), timeout=30))
        assert len(set(ids)) == len(ids)
        # Concurrent appends may be ordered either way; record them in id order.
        for eid, p in sorted(zip(ids, batch, strict=True)):
            self._record(eid, kind, p)
        return multiple(*ids)

    @rule(eid=ids)
    def mark_one(self, eid: int) -> None:
        self.wal.mark_processed(eid)
        self.pending.pop(eid, None)

    @rule(eids=st.lists(ids, max_size=8))
    def mark_many(self, eids: list[int]) -> None:
        self.wal.mark_processed(iter(eids))
        for eid in eids:
            self.pending.pop(eid, None)

    @precondition(lambda self: len(self.pending) > 0)
    @rule(data=st.data())
    def mark_oldest(self, data) -> None:
        # What a forwarder does: process a prefix of the backlog.
        n = data.draw(st.integers(min_value=1, max_value=len(self.pending)))
        oldest = sorted(self.pending)[:n]
        self.wal.mark_processed(oldest)
        for eid in oldest:
            del self.pending[eid]

    @rule()
    def flush(self) -> None:
        self.wal.flush()

    @rule(mode=st.sampled_from(["immediate", "batched"]))
    def reopen(self, mode: str) -> None:
        self.wal.close()
        self.sync_mode = mode
        self.wal = Wal(self.path, max_segment_size=SEGMENT, sync_mode=mode)
        assert self.wal.stats()["next_id"] > self.max_id

    @rule(data=st.data())
    def tail(self, data) -> None:
        after = data.draw(st.integers(min_value=0, max_value=self.max_id + 2), label="after_id")
        limit = data.draw(st.integers(min_value=0, max_value=12), label="limit")
        got = [(e.id, e.kind, e.payload) for e in self.wal.unprocessed(after_id=after, limit=limit)]
        want = [(i, *self.pending[i]) for i in sorted(self.pending) if i > after][:limit]
        assert got == want

    @invariant()
    def unprocessed_matches_model(self) -> None:
        got = [(e.id, e.kind, e.payload) for e in self.wal.unprocessed()]
        want = [(i, *self.pending[i]) for i in sorted(self.pending)]
        if got != want:
            got_ids = [g[0] for g in got]
            want_ids = [w[0] for w in want]
            missing = sorted(set(want_ids) - set(got_ids))
            extra = sorted(set(got_ids) - set(want_ids))
            wrong = [g[0] for g in got if g[0] in self.pending and (g[1], g[2]) != self.pending[g[0]]]
            raise AssertionError(
                f"unprocessed() differs from the model: missing {missing[:10]}, extra {extra[:10]}, "
                f"wrong kind/payload {wrong[:10]}, order ok: {got_ids == sorted(got_ids)}"
            )

    @invariant()
    def stats_match_model(self) -> None:
        s = self.wal.stats()
        assert s["unprocessed_entries"] == len(self.pending), (s["unprocessed_entries"], len(self.pending))
        assert s["next_id"] > self.max_id
        assert s["corrupt_entries"] == 0 and s["torn_tails_truncated"] == 0
        assert s["poisoned"] is False
        assert s["sync_mode"] == self.sync_mode

    def teardown(self) -> None:
        try:
            self.wal.close()
            # A last clean reopen: everything the model holds is on disk.
            with Wal(self.path, max_segment_size=SEGMENT) as w:
                got = [(e.id, e.kind, e.payload) for e in w.unprocessed()]
            assert got == [(i, *self.pending[i]) for i in sorted(self.pending)], "state lost by the final close"
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TestWalStateful = WalMachine.TestCase
TestWalStateful.settings = settings(max_examples=50, stateful_step_count=40, **_common)


class _StressMachine(WalMachine):
    pass


TestWalStatefulStress = pytest.mark.timeout(3600)(pytest.mark.stress(_StressMachine.TestCase))
TestWalStatefulStress.settings = settings(max_examples=500 if STRESS else 100, stateful_step_count=80, **_common)
