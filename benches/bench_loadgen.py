#!/usr/bin/env python3
"""The load generator's own ceiling: signaldb-loadgen against its trivial sink.

    .venv/bin/python benches/bench_loadgen.py               # the table, 5 s a row
    .venv/bin/python benches/bench_loadgen.py --seconds 3 --json

The sink (`signaldb-loadgen sink`) acknowledges every request with an empty
response without decoding it; it runs in its own process on the same machine,
so each row is a lower bound of what the load generator can drive (on 2 cores
the two share the CPU, as loadgen and acceptor will). Requests: 512 spans, 10
attributes (the defaults). Rows vary transport, streams, channels and
--unique; "cpu us/span" is the load generator's own CPU per acknowledged span.
Goal: >= 200,000 spans/s with the defaults, so that loadgen is never what
limits `make bench-e2e`. Speed never fails the run (exit 0); MISS marks it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

GOAL = 200_000
ROWS = [
    ("grpc, defaults (8 streams, 2 channels)", []),
    ("grpc, 8 streams, 1 channel", ["--channels", "1"]),
    ("grpc, 8 streams, 4 channels", ["--channels", "4"]),
    ("grpc, 16 streams, 4 channels", ["--concurrency", "16", "--channels", "4"]),
    ("grpc, defaults, --unique", ["--unique"]),
    ("grpc, defaults, --gzip", ["--gzip"]),
    ("http, 8 streams", ["--transport", "http"]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    args = ap.parse_args()
    sink = subprocess.Popen(
        [sys.executable, "-m", "signaldb.loadgen", "sink", "--port", "0", "--http-port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        parts = sink.stdout.readline().split()  # sink listening: grpc H:P, http H:P
        grpc_ep, http_ep = parts[3].rstrip(","), parts[5]
        if not args.json:
            print(f"{'row':<42} {'spans/s':>10} {'MB/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'cpu us/span':>11}")
        for name, extra in ROWS:
            ep = http_ep if "http" in extra else grpc_ep
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "signaldb.loadgen",
                    "--endpoint",
                    ep,
                    "--duration",
                    str(args.seconds),
                    "--quiet",
                    "--json",
                    *extra,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            report = json.loads(out.stdout.strip().splitlines()[-1])
            if args.json:
                print(json.dumps({"row": name, **report}))
                continue
            mark = "" if report["spans_per_s"] >= GOAL or "--gzip" in extra else "  MISS"
            print(
                f"{name:<42} {report['spans_per_s']:>10,.0f} {report['mb_per_s']:>7,.0f} "
                f"{report['latency_ms'].get('p50', 0):>7.1f} {report['latency_ms'].get('p99', 0):>7.1f} "
                f"{report['cpu_us_per_item'] or 0:>11.2f}{mark}"
            )
    finally:
        sink.terminate()
        sink.communicate(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
