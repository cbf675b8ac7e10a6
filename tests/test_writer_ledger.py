"""The writer's dedupe ledger: IdSet against a plain set (hypothesis), floors, reservations."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaldb.writer.ledger import Busy, IdSet, Ledger, Reservation

ops = st.lists(
    st.one_of(st.tuples(st.just("add"), st.integers(0, 60)), st.tuples(st.just("drop_below"), st.integers(0, 60))),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_idset_behaves_like_a_set_and_stays_merged(script: list[tuple[str, int]]) -> None:
    ids, model = IdSet(), set()
    for op, value in script:
        if op == "add":
            ids.add(value)
            model.add(value)
        else:
            ids.drop_below(value)
            model = {v for v in model if v >= value}
        assert all((v in ids) == (v in model) for v in range(-1, 62))
        ranges = ids.ranges()
        assert len(ids) == len(model)
        # Sorted, disjoint and never adjacent: the most compact form.
        assert all(lo <= hi for lo, hi in ranges)
        assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ranges))
        assert IdSet(ranges).ranges() == ranges


def test_consecutive_ids_cost_one_range() -> None:
    ids = IdSet()
    for i in range(10_000, 0, -1):
        ids.add(i)
    assert ids.ranges() == [[1, 10_000]]


def test_reserve_splits_new_and_duplicates_and_refuses_ids_in_flight() -> None:
    ledger = Ledger()
    key = ("acc", "traces")
    assert ledger.reserve(key, [1, 2]) == ([1, 2], [])
    with pytest.raises(Busy):
        ledger.reserve(key, [2, 3])  # entry 2 is being appended by another stream
    ledger.release(key, [1, 2], stored=True)
    assert ledger.reserve(key, [2, 3]) == ([3], [2])
    ledger.release(key, [3], stored=False)  # its append failed: still new
    assert ledger.reserve(key, [3]) == ([3], [])
    ledger.release(key, [3], stored=True)
    ledger.complete(key, [1, 2, 3])
    assert ledger.reserve(key, [1, 2, 3]) == ([], [1, 2, 3])
    assert ledger.reserve(("acc", "logs"), [1]) == ([1], [])


def test_a_floor_forgets_done_ids_and_counts_everything_below_it_as_held() -> None:
    ledger = Ledger()
    key = ("acc", "traces")
    for i in (1, 3, 5, 7, 9):
        ledger.reserve(key, [i])
        ledger.release(key, [i], stored=True)
    ledger.complete(key, [1, 3, 5, 7, 9])
    ledger.raise_floor("acc", 6)
    assert ledger.snapshot() == ({"acc": {"traces": [[7, 7], [9, 9]]}}, {"acc": 6})
    assert ledger.reserve(key, [2, 6, 7, 8]) == ([6, 8], [2, 7])
    ledger.raise_floor("acc", 4)  # floors never go down
    again = Ledger.from_snapshot(*ledger.snapshot())
    assert again.snapshot() == ledger.snapshot()
    assert again.reserve(("acc", "logs"), [5, 6]) == ([6], [5])


def test_a_reservation_makes_stored_ids_pending_and_frees_the_rest() -> None:
    ledger = Ledger()
    key = ("acc", "traces")
    with Reservation(ledger, key, [1, 2, 3]) as res:
        assert (res.new, res.duplicates) == ([1, 2, 3], [])
        with pytest.raises(Busy):
            Reservation(ledger, key, [3])  # in flight while the batch is appended
        res.stored([1, 2])  # entry 3 had no rows: not in the WAL
    assert ledger.reserve(key, [1, 2, 3]) == ([3], [1, 2])
    ledger.release(key, [3], stored=False)
    with pytest.raises(RuntimeError), Reservation(ledger, key, [3, 4]):
        raise RuntimeError("the append failed")
    assert ledger.reserve(key, [3, 4]) == ([3, 4], [])  # nothing stored: both new again
