"""Opens a WAL and appends one entry; prints a JSON line describing the outcome.

usage: open_wal_child.py WAL_DIR
Run as an unprivileged user by test_wal_faults.py to see permission errors as root.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    path = sys.argv[1]
    out: dict[str, object] = {"uid": os.getuid()}
    try:
        from signaldb.wal import Wal, WalError
    except Exception as e:
        out.update(ok=False, stage="import", type=type(e).__name__, message=str(e))
        print(json.dumps(out), flush=True)
        return
    try:
        w = Wal(path)
        try:
            w.append(b"written by an unprivileged user")
        finally:
            w.close()
        out.update(ok=True)
    except Exception as e:
        out.update(ok=False, stage="wal", type=type(e).__name__, is_wal_error=isinstance(e, WalError), message=str(e))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
