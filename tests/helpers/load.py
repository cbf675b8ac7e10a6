"""Client load from background threads, for tests that check what was acknowledged."""

from __future__ import annotations

import threading


class ThreadedLoad:
    """``threads`` threads each running ``self._run(n)`` for the length of a ``with`` block.

    Subclasses write ``_run``, loop while ``not self.stopping`` and keep what was
    acknowledged under ``self._lock``. An exception in a thread stops all of them and
    is raised again when the block ends, so a failed assertion in a client is a failed
    test, not a silent thread death."""

    def __init__(self, threads: int) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._guarded, args=(n,), daemon=True) for n in range(threads)]

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        if self.errors and exc[0] is None:
            raise self.errors[0]

    def _guarded(self, n: int) -> None:
        try:
            self._run(n)
        except BaseException as err:
            self.errors.append(err)
            self._stop.set()

    def _run(self, n: int) -> None:
        raise NotImplementedError
