"""The one dead-letter format both services write (signaldb.service.dead_letters)."""

from __future__ import annotations

import json
import pathlib
import stat

import pytest

from signaldb.service.dead_letters import MAX_REASON_CHARS, DeadLetters


def test_payload_and_sidecar_are_written_create_only_and_private(tmp_path: pathlib.Path) -> None:
    dl = DeadLetters(tmp_path / "wal" / "dead-letter", "acceptor")
    path, new = dl.put(7, "traces", b"body", "otlp", "x" * (MAX_REASON_CHARS + 10), {"content_type": None})
    assert new and dl.count == 1
    assert sorted(p.name for p in dl.directory.iterdir()) == [
        "00000000000000000007.traces.json",
        "00000000000000000007.traces.otlp",
    ]
    sidecar = json.loads(path.read_text())
    assert sidecar["format"] == 1 and sidecar["service"] == "acceptor" and sidecar["entry_id"] == 7
    assert sidecar["payload"] == "00000000000000000007.traces.otlp" and sidecar["payload_bytes"] == 4
    assert len(sidecar["reason"]) == MAX_REASON_CHARS and sidecar["content_type"] is None
    assert stat.S_IMODE(dl.directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in dl.directory.iterdir())


def test_the_same_entry_again_updates_its_sidecar_and_another_entry_under_a_reused_id_is_kept(
    tmp_path: pathlib.Path,
) -> None:
    dl = DeadLetters(tmp_path, "writer")
    dl.put(3, "logs", b"one", "entry", "first", lambda previous: {"hours": [1], "before": previous})
    # Met again (a crash before the WAL mark): same name, the sidecar sees what it said before.
    path, new = dl.put(3, "logs", b"one", "entry", "second", lambda previous: {"hours": [*previous["hours"], 2]})
    assert not new and dl.count == 1 and json.loads(path.read_text())["hours"] == [1, 2]
    # The id handed out again (restored WAL directory) with other bytes: never replaces the first.
    path, new = dl.put(3, "logs", b"two", "entry", "third")
    assert new and path.name == "00000000000000000003.logs.2.json"
    assert (tmp_path / "00000000000000000003.logs.entry").read_bytes() == b"one"
    assert (tmp_path / "00000000000000000003.logs.2.entry").read_bytes() == b"two"
    # An entry gone from the WAL already: the sidecar alone says what it held.
    path, _ = dl.put(9, "logs", None, "entry", "gone", {"acceptor_id": "acc"})
    assert json.loads(path.read_text())["payload"] is None
    assert not (tmp_path / "00000000000000000009.logs.entry").exists()


def test_a_payload_extension_must_not_be_the_sidecars(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError):
        DeadLetters(tmp_path, "writer").put(1, "logs", b"x", "json", "r")
