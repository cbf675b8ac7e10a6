"""Container health check: exit 0 when a SignalDB health endpoint answers 200.

The slim runtime image has no curl, so the Dockerfile's HEALTHCHECK (and the
compose file) run this with the image's Python. Standard library only.

    python /usr/local/lib/signaldb/healthcheck.py                              # acceptor /livez (8080)
    python /usr/local/lib/signaldb/healthcheck.py http://127.0.0.1:8081/livez  # writer
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080/livez"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else DEFAULT_URL
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return 0 if resp.status == 200 else 1
    except (OSError, urllib.error.URLError) as err:
        print(f"healthcheck {url}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
