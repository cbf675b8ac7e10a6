"""Who committed which rows: the record that makes "exactly once" a property of the table.

An acceptor entry is named forever by (source, table, entry id) (``ledger``);
its rows of one table fall into one or more hour partitions. Every commit a
writer makes to an Iceberg table carries, in its snapshot summary, a *claim*:
for each partition of the commit's files, the acceptor entry ids per source
whose rows of that partition the files hold (``signaldb.claims``, encoded by
``encode_claims``: see there).

The rule, checked against the table's claims right before every commit, on
the commit's own snapshot base (a concurrent commit makes ours fail and we
read its claims before trying again): **a (partition, source, entry id) is
committed at most once**. Rows whose triple is claimed already are dropped
(``without_claimed``), whoever claimed them: another writer the entry was sent
to after a failover, an earlier life of this writer whose commit landed before
a crash took the state save with it, or a commit whose answer was lost.

Claims are per partition, not per entry, because a writer may commit an
entry's hours in separate commits (its buffers are written by size and age);
a second writer holding the same entry then drops exactly the hours already
committed and commits the rest.

Expiring snapshots would lose their claims, so maintenance folds them into the
table property ``signaldb.claims`` first (``encode_folded``, same encoding), in
a commit of its own that precedes the expiry.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from signaldb.writer.ledger import IdSet
from signaldb.writer.payload import WalRecord
from signaldb.writer.tables import hours_of, partition_name

SUMMARY_KEY = "signaldb.claims"
FOLDED_PROPERTY = "signaldb.claims"

# {partition: {source: [entry ids]}}: what one file (or commit) holds.
ClaimMap = dict[str, dict[str, list[int]]]


class Claims:
    """The union of claims read from a table: (partition, source) -> ``IdSet``."""

    def __init__(self) -> None:
        self._sets: dict[tuple[str, str], IdSet] = {}
        self._sources: set[str] = set()  # every source with a claim (a cheap first check)

    def _set(self, partition: str, source: str) -> IdSet:
        self._sources.add(source)
        return self._sets.setdefault((partition, source), IdSet())

    def add_ranges(self, partition: str, source: str, ranges: Iterable[Iterable[int]]) -> None:
        target = self._set(partition, source)
        for lo, hi in ranges:
            target.add_range(int(lo), int(hi))

    def add_encoded(self, value: str) -> None:
        """Adds a summary's or the folded property's claims (any ``decode_claims`` reads)."""
        for partition, sources in decode_claims(value).items():
            for source, ranges in sources.items():
                self.add_ranges(partition, source, ranges)

    def add_map(self, claim: ClaimMap) -> None:
        for partition, sources in claim.items():
            for source, ids in sources.items():
                target = self._set(partition, source)
                for i in ids:
                    target.add(i)

    def holds(self, partition: str, source: str, entry_id: int) -> bool:
        found = self._sets.get((partition, source))
        return found is not None and entry_id in found

    def has_source(self, source: str) -> bool:
        return source in self._sources

    def overlap(self, claim: ClaimMap) -> ClaimMap:
        """The part of ``claim`` that is claimed already."""
        out: ClaimMap = {}
        for partition, sources in claim.items():
            for source, ids in sources.items():
                found = self._sets.get((partition, source))
                if found is None:
                    continue
                taken = [i for i in ids if i in found]
                if taken:
                    out.setdefault(partition, {})[source] = taken
        return out

    def drop_partitions_before(self, partition: str) -> None:
        """Forgets claims of partitions older than ``partition`` (names sort by time)."""
        self._sets = {k: v for k, v in self._sets.items() if k[0] >= partition}
        self._sources = {s for _, s in self._sets}

    def as_ranges(self) -> Ranges:
        out: Ranges = {}
        for (partition, source), ids in sorted(self._sets.items()):
            ranges = ids.ranges()
            if ranges:
                out.setdefault(partition, {})[source] = ranges
        return out

    def __len__(self) -> int:
        return len(self._sets)


# -- the encoding of claims -------------------------------------------------------
#
# Every snapshot's summary lives in the table's metadata JSON, which every commit
# reads and rewrites whole: its size is paid on each commit. An acceptor's entry
# ids are spread over tables and writers, so one commit's ids are many short
# ranges (a few ids, gaps of a few): as JSON ``[[lo, hi], ...]`` ~4 KB a commit
# with three writers; as deltas, zlib'd, ~15x less.

Ranges = dict[str, dict[str, list[list[int]]]]  # {partition: {source: [[lo, hi], ...]}}

_DELTAS = "z2:"  # base64(zlib(JSON {partition: {source: [lo0, hi0-lo0, lo1-hi0, hi1-lo1, ...]}}))
_ZLIB_JSON = "z1:"  # base64(zlib(JSON Ranges)): folded properties written before z2


def encode_claims(ranges: Ranges) -> str:
    """``ranges`` (sorted, disjoint ranges per source) as a summary or property value."""
    deltas: dict[str, dict[str, list[int]]] = {}
    for partition, sources in sorted(ranges.items()):
        for source, spans in sorted(sources.items()):
            flat, prev = [], 0
            for lo, hi in spans:
                flat += [lo - prev, hi - lo]
                prev = hi
            deltas.setdefault(partition, {})[source] = flat
    raw = json.dumps(deltas, separators=(",", ":")).encode()
    return _DELTAS + base64.b64encode(zlib.compress(raw, 9)).decode()


def decode_claims(value: str) -> Ranges:
    """What ``encode_claims`` wrote, or the older forms: ``z1:`` and plain JSON ranges."""
    if value.startswith(_DELTAS):
        deltas = json.loads(zlib.decompress(base64.b64decode(value[len(_DELTAS) :])))
        out: Ranges = {}
        for partition, sources in deltas.items():
            for source, flat in sources.items():
                spans, prev = [], 0
                for i in range(0, len(flat) - 1, 2):
                    lo = prev + flat[i]
                    prev = lo + flat[i + 1]
                    spans.append([lo, prev])
                out.setdefault(partition, {})[source] = spans
        return out
    if value.startswith(_ZLIB_JSON):
        value = zlib.decompress(base64.b64decode(value[len(_ZLIB_JSON) :])).decode()
    decoded: Ranges = json.loads(value) if value else {}
    return decoded


def encode_map(claim: ClaimMap) -> str:
    """A commit's claim as the summary value."""
    return encode_claims(
        {p: {s: IdSet((i, i) for i in ids).ranges() for s, ids in sources.items()} for p, sources in claim.items()}
    )


def encode_folded(claims: Claims) -> str:
    """The folded claims as the table property."""
    return encode_claims(claims.as_ranges())


def merge_maps(maps: Iterable[ClaimMap]) -> ClaimMap:
    out: dict[str, dict[str, set[int]]] = {}
    for claim in maps:
        for partition, sources in claim.items():
            for source, ids in sources.items():
                out.setdefault(partition, {}).setdefault(source, set()).update(ids)
    return {p: {s: sorted(ids) for s, ids in sources.items()} for p, sources in out.items()}


# -- rows and the entries they come from -----------------------------------------


def _row_entry_ids(record: WalRecord) -> pa.Array:
    """Each row's acceptor entry id (entries list their rows in order)."""
    runs = [(eid, rows) for eid, rows in record.entries if rows]
    ends, total = [], 0
    for _, rows in runs:
        total += rows
        ends.append(total)
    encoded = pa.RunEndEncodedArray.from_arrays(pa.array(ends, pa.int64()), pa.array([e for e, _ in runs], pa.int64()))
    return pc.run_end_decode(encoded)


def entries_by_partition(record: WalRecord) -> dict[str, list[int]]:
    """For each hour partition of the record's rows, the acceptor entry ids with rows in it."""
    if record.batch.num_rows == 0:
        return {}
    hours = hours_of(record.table, record.batch)
    distinct = pc.unique(hours).to_pylist()
    if len(distinct) == 1:
        return {partition_name(distinct[0]): [eid for eid, rows in record.entries if rows]}
    eids = _row_entry_ids(record)
    return {partition_name(h): sorted(pc.unique(eids.filter(pc.equal(hours, h))).to_pylist()) for h in distinct}


def without_claimed(record: WalRecord, claims: Claims) -> tuple[WalRecord, int]:
    """``record`` without the rows whose (partition, source, entry) ``claims`` holds, and the
    number of rows dropped. Costs a few lookups when nothing is claimed (the usual case)."""
    source = record.acceptor_id
    if record.batch.num_rows == 0 or not claims.has_source(source):
        return record, 0
    parts = entries_by_partition(record)
    taken = [(p, e) for p, ids in parts.items() for e in ids if claims.holds(p, source, e)]
    if not taken:
        return record, 0
    hours = hours_of(record.table, record.batch)
    by_name = {partition_name(h): h for h in pc.unique(hours).to_pylist()}
    eids = _row_entry_ids(record)
    drop = pa.array([False] * len(eids))
    for p, e in taken:
        drop = pc.or_(drop, pc.and_(pc.equal(hours, by_name[p]), pc.equal(eids, e)))
    keep = pc.invert(drop)
    batch = record.batch.filter(keep)
    kept_ids = eids.filter(keep)
    # Entries keep their order; their row counts shrink (to 0 when all their rows were claimed).
    counts = {v["values"]: v["counts"] for v in pc.value_counts(kept_ids).to_pylist()} if len(kept_ids) else {}
    entries = tuple((eid, int(counts.get(eid, 0))) for eid, _ in record.entries)
    return WalRecord(record.acceptor_id, record.table, entries, batch), record.batch.num_rows - batch.num_rows


__all__ = [
    "ClaimMap",
    "Claims",
    "Ranges",
    "decode_claims",
    "encode_claims",
    "encode_folded",
    "encode_map",
    "entries_by_partition",
    "merge_maps",
    "without_claimed",
]
