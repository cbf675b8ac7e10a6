"""Named crash points for the writer's crash tests (``SIGNALDB_TEST_CRASH_AT``).

Set ``SIGNALDB_TEST_CRASH_AT=after_plan`` (or ``after_put``, ``before_rename``,
``after_commit``, ``after_dead_letter``) and the process SIGKILLs itself the first time it reaches
that point: the tests then restart the writer and check that every acked row
lands in Parquet exactly once. Unset (always, in production) it costs one
comparison. ``SIGNALDB_TEST_CRASH_SKIP=N`` passes the point N times first.
"""

from __future__ import annotations

import os
import signal

_AT = os.environ.get("SIGNALDB_TEST_CRASH_AT") or None
_skip = int(os.environ.get("SIGNALDB_TEST_CRASH_SKIP", "0") or 0)


def reached(name: str) -> None:
    global _skip
    if name != _AT:
        return
    if _skip > 0:
        _skip -= 1
        return
    os.kill(os.getpid(), signal.SIGKILL)
