"""Lines from the Rust core carry their values as fields, not only inside the message."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import RECORD_HEADER_LEN, parse_segment_file, segment_files
from signaldb.service.logsetup import render_text
from signaldb.wal import Wal


def test_wal_corruption_and_replay_lines_have_fields(tmp_path):
    path = tmp_path / "wal"
    with Wal(path, sync_mode="immediate") as wal:
        for i in range(5):
            wal.append(b"payload %d" % i * 20, kind="traces")
    seg = segment_files(path)[0]
    record = parse_segment_file(seg).records[2]
    data = bytearray(seg.read_bytes())
    data[record.offset + RECORD_HEADER_LEN + 3] ^= 0x5A
    seg.write_bytes(bytes(data))

    # A process of its own: the Rust side caches logger levels at first use (pyo3-log).
    script = (
        "import sys; from signaldb.service.logsetup import setup_logging; from signaldb.wal import Wal\n"
        "setup_logging('info', 'test', 'json')\n"
        "with Wal(sys.argv[1], sync_mode='immediate') as wal:\n"
        "    assert len(list(wal.unprocessed())) == 4\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = run.stderr
    lines = [json.loads(line) for line in out.splitlines()]
    corruption = next(line for line in lines if line["msg"].startswith("WAL corruption in segment"))
    assert corruption["logger"].startswith("signaldb_wal")
    assert corruption["segment"] == seg.name
    assert corruption["offset"] == record.offset and isinstance(corruption["offset"], int)
    assert corruption["bytes"] > 0 and corruption["quarantine"].endswith(".bad")
    replay = next(line for line in lines if line["msg"].startswith("WAL replay done"))
    assert replay["unprocessed_entries"] == 4 and replay["segments"] >= 1
    assert replay["dir"] == str(path) and isinstance(replay["secs"], float)
    # The text format shows the same fields.
    assert f"offset={record.offset}" in render_text(corruption)
