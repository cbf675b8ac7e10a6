"""Opens a WAL, tails it at the start and at the end, iterates it all; prints JSON.

usage: tail_child.py WAL_DIR LAST_ID
Run in its own process so that ru_maxrss measures only this WAL's footprint.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from signaldb.wal import Wal


def main() -> None:
    path, last_id = sys.argv[1], int(sys.argv[2])
    out: dict[str, object] = {}
    t = time.perf_counter()
    with Wal(path) as w:
        out["open_s"] = time.perf_counter() - t
        out["rss_after_open_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        first = w.unprocessed(after_id=0, limit=500)
        out["tail_start_s"] = time.perf_counter() - t
        t = time.perf_counter()
        end = w.unprocessed(after_id=last_id - 100, limit=500)
        out["tail_end_s"] = time.perf_counter() - t
        out["tail_end_ids"] = [*[e.id for e in end][:3], len(end)]
        out["tail_start_n"] = len(first)
        n = 0
        for _ in w.unprocessed():
            n += 1
        out["iterated"] = n
    out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
