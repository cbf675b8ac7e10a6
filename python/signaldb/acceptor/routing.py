"""Which writer owns an acceptor WAL entry: rendezvous hashing, with failover.

Every writer scores every entry id (a CRC of the writer's URL and the id); the
writer with the highest score owns the entry. The order is stable across
restarts and retries, so a retried entry goes back to the writer that may
already hold it, and adding or removing a writer moves only the entries whose
best writer changed (~1/n of them).

A writer that has been unreachable for ``acceptor.writer_failover_secs`` is
*failed over*: its entries go to the next writer in that same order that is not
failed over itself. When every writer is failed over, each entry stays with its
first choice (there is nowhere better to go). A ``RoutingTable`` is immutable;
the forwarder swaps in a new one (with a new ``epoch``) whenever the writer set
or the failed-over set changes.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field


def _score(entry_key: bytes, writer: str) -> int:
    return zlib.crc32(entry_key, zlib.crc32(writer.encode()))


def route(entry_id: int, endpoints: Sequence[str]) -> int:
    """Index of the endpoint that owns ``entry_id`` (rendezvous hashing, no failover)."""
    if len(endpoints) == 1:
        return 0
    key = entry_id.to_bytes(8, "little")
    return max(range(len(endpoints)), key=lambda i: _score(key, endpoints[i]))


def ranked(entry_id: int, writers: Sequence[str]) -> list[str]:
    """``writers`` in rendezvous order for ``entry_id``: the owner first, then the next choice..."""
    key = entry_id.to_bytes(8, "little")
    return sorted(writers, key=lambda w: _score(key, w), reverse=True)


@dataclass(frozen=True)
class RoutingTable:
    writers: tuple[str, ...]  # every writer currently known (static endpoints and resolved dns:// addresses)
    failed_over: frozenset[str] = field(default_factory=frozenset)
    epoch: int = 0

    def owner(self, entry_id: int) -> str | None:
        """The writer ``entry_id`` goes to now; None while no writer is known."""
        writers = self.writers
        if not writers:
            return None
        if len(writers) == 1:
            return writers[0]
        key = entry_id.to_bytes(8, "little")
        if not self.failed_over:
            return max(writers, key=lambda w: _score(key, w))
        live = [w for w in writers if w not in self.failed_over]
        return max(live or writers, key=lambda w: _score(key, w))

    def with_writers(self, writers: Sequence[str]) -> RoutingTable:
        kept = frozenset(w for w in self.failed_over if w in writers)
        return RoutingTable(tuple(writers), kept, self.epoch + 1)

    def with_failed_over(self, failed_over: frozenset[str]) -> RoutingTable:
        return RoutingTable(self.writers, failed_over, self.epoch + 1)

    def next_epoch(self) -> RoutingTable:
        """The same routes under a new epoch: lanes read their part of the WAL again (entries
        another lane gave up are unclaimed now)."""
        return RoutingTable(self.writers, self.failed_over, self.epoch + 1)
