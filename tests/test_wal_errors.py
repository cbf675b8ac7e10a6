"""The WAL's exceptions are typed by the engine error's kind, never by message text.

rust/native/src/errors.rs declares the tree once: WalFullError, WalPoisonedError,
WalClosedError, WalInUseError, and WalIoError, which is also the OSError subclass
its io kind maps to (errno set, ``str()`` the engine's message). Async appends get
the same classes as blocking ones (their failures cross the boundary as exceptions).
"""

from __future__ import annotations

import asyncio
import errno

import pytest

from signaldb import wal as wal_mod
from signaldb.wal import (
    Wal,
    WalClosedError,
    WalError,
    WalFileExistsError,
    WalFileNotFoundError,
    WalFullError,
    WalInUseError,
    WalIoError,
    WalIsADirectoryError,
    WalNotADirectoryError,
    WalPermissionError,
    WalPoisonedError,
    WalStats,
)


def test_the_tree() -> None:
    for cls in (WalFullError, WalPoisonedError, WalClosedError, WalInUseError, WalIoError):
        assert issubclass(cls, WalError), cls
        assert cls.__module__ == "signaldb._native"
        assert cls.__doc__, f"{cls.__name__} has no docstring"
    assert issubclass(WalIoError, OSError)
    assert not issubclass(WalFullError, OSError) and not issubclass(WalPoisonedError, OSError)
    for cls, base in (
        (WalFileNotFoundError, FileNotFoundError),
        (WalPermissionError, PermissionError),
        (WalFileExistsError, FileExistsError),
        (WalNotADirectoryError, NotADirectoryError),
        (WalIsADirectoryError, IsADirectoryError),
    ):
        assert issubclass(cls, WalIoError) and issubclass(cls, base), cls
    assert set(wal_mod.__all__) >= {"WalPoisonedError", "WalClosedError", "WalIoError", "WalStats"}


def test_a_path_that_is_a_file_is_an_oserror_with_errno_and_the_engines_message(tmp_path) -> None:
    p = tmp_path / "file"
    p.write_bytes(b"x")
    with pytest.raises(WalIoError) as info:
        Wal(p)
    e = info.value
    assert isinstance(e, WalError) and isinstance(e, OSError)
    assert isinstance(e, WalFileExistsError | WalNotADirectoryError), type(e)
    assert e.errno in (errno.EEXIST, errno.ENOTDIR), e.errno
    assert e.strerror and e.filename == str(p)
    # str() stays the engine's Display (DESIGN.md), not OSError's "[Errno 17] ...".
    assert str(e).startswith("WAL directory not writable:") and str(p) in str(e), str(e)


def test_a_second_handle_gets_walinuseerror(tmp_path) -> None:
    with Wal(tmp_path / "w") as w:
        w.append(b"x")
        with pytest.raises(WalInUseError, match="in use"):
            Wal(tmp_path / "w")


def test_a_closed_wal_raises_walclosederror_for_every_call(tmp_path) -> None:
    w = Wal(tmp_path / "w")
    w.close()
    for call in (
        lambda: w.append(b"x"),
        lambda: w.append_batch([b"x"]),
        w.flush,
        w.checkpoint,
        lambda: w.mark_processed(1),
        lambda: asyncio.run(w.append_async(b"x")),
    ):
        with pytest.raises(WalClosedError):
            call()


def test_waiters_pending_at_close_get_walclosederror_or_their_id(tmp_path) -> None:
    async def main() -> list[object]:
        w = Wal(tmp_path / "w", sync_mode="batched", flush_interval_secs=60)
        tasks = [asyncio.ensure_future(w.append_async(b"x" * 10)) for _ in range(20)]
        await asyncio.sleep(0)
        w.close()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, (int, WalClosedError)) for r in results), results


def test_stats_is_typed_and_reads_like_the_dict_it_was(tmp_path) -> None:
    with Wal(tmp_path / "w", max_segment_size=4096) as w:
        ids = [w.append(b"y" * 500, kind="logs") for _ in range(12)]
        w.mark_processed(ids[:4])
        s = w.stats()
        assert isinstance(s, WalStats)
        assert s.unprocessed_entries == s["unprocessed_entries"] == 8
        assert s.processed_watermark == w.processed_watermark() == ids[3]
        assert s.unprocessed_bytes == w.unprocessed_bytes()
        assert s.poisoned is False and s.poisoned_reason is None and s.sync_mode == "immediate"
        assert s.get("no such key") is None and s.get("no such key", 7) == 7
        with pytest.raises(KeyError):
            s["no such key"]
        d = s.to_dict()
        assert list(d) == list(s) == s.keys() and len(s) == len(d) and "next_id" in s
        assert d == dict(s.items()) and list(d.values()) == s.values()
        assert all(getattr(s, k) == v for k, v in d.items())
        assert repr(s).startswith("WalStats({")
