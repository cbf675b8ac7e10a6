"""``signaldb-loadgen``: sends pre-built OTLP requests and reports throughput and ack latency.

    signaldb-loadgen --endpoint 127.0.0.1:4317 --duration 10            # flat out, 8 streams
    signaldb-loadgen --rate 100000 --duration 30 --concurrency 16      # paced, spans/s
    signaldb-loadgen --requests 1000 --unique --ack-log acked.txt      # exactly-once checks
    signaldb-loadgen --signal logs --transport http --endpoint 127.0.0.1:4318 --gzip
    signaldb-loadgen --json ...                                        # one JSON object on stdout
    signaldb-loadgen sink --port 4317                                  # calibration server

Python API::

    from signaldb.loadgen import LoadConfig, run
    report = run(LoadConfig(endpoint="127.0.0.1:4317", duration=2, items_per_request=64))
    report.items_acknowledged, report.items_per_s, report.latency_ms["p99"], report.as_dict()

See ``payload`` for the requests (and how ``--unique`` stamps them) and
``runner`` for streams, retries and what counts as acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

from signaldb.loadgen.payload import ITEM_NAMES, SIGNALS, Prebuilt, Stamper, build_request, build_requests
from signaldb.loadgen.runner import LoadConfig, Report, Stats, percentiles, run, run_async

N = TypeVar("N", int, float)

__all__ = [
    "ITEM_NAMES",
    "LoadConfig",
    "Prebuilt",
    "Report",
    "Stamper",
    "build_request",
    "build_requests",
    "main",
    "run",
    "run_async",
]


class Progress:
    """A one-line ``\\r`` bar on a TTY, plain lines every ``interval`` seconds otherwise."""

    def __init__(self, stream: TextIO | None = None, item: str = "spans", interval: float = 2.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.item = item
        self.interval = interval
        self.last = (0.0, 0, 0)  # elapsed, items, latencies seen
        self.last_print = 0.0

    def __call__(self, stats: Stats, elapsed: float, fraction: float | None, final: bool) -> None:
        t, items, seen = self.last
        if not final and not self.tty and elapsed - self.last_print < self.interval:
            return
        dt = max(elapsed - t, 1e-9)
        rate = (stats.items - items) / dt
        recent = stats.latencies[seen:]
        p99 = percentiles(recent).get("p99") if len(recent) else None
        self.last = (elapsed, stats.items, len(stats.latencies))
        self.last_print = elapsed
        p99_text = f"p99 {p99:.1f} ms" if p99 is not None else "p99 -"
        extra = ""
        if stats.refused or stats.failed:
            extra = f"  refused {stats.refused:,}  failed {stats.failed:,}"
        if self.tty:
            width = 24
            done = int(width * (fraction or 0.0))
            bar = "#" * done + "." * (width - done)
            line = (
                f"\r[{bar}] {elapsed:5.1f}s  sent {stats.sent:,}  ok {stats.ok:,}  "
                f"{rate:,.0f} {self.item}/s  {p99_text}{extra}"
            )
            self.stream.write(line.ljust(100) + ("\n" if final else ""))
        elif not final:
            self.stream.write(
                f"loadgen: {elapsed:6.1f}s sent {stats.sent:,} ok {stats.ok:,} "
                f"{rate:,.0f} {self.item}/s {p99_text}{extra}\n"
            )
        self.stream.flush()


def _header(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {value!r}")
    return key.strip(), val.strip()


def _positive(cast: Callable[[str], N]) -> Callable[[str], N]:
    def parse(value: str) -> N:
        v = cast(value)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return v

    return parse


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="signaldb-loadgen",
        description="Send pre-built OTLP requests flat out or at a target rate; report items/s and ack latency. "
        "`signaldb-loadgen sink --help` for the calibration server.",
    )
    p.add_argument(
        "--endpoint", default=None, help="host:port (default 127.0.0.1:4317 for grpc, 127.0.0.1:4318 for http)"
    )
    p.add_argument("--transport", choices=("grpc", "http"), default="grpc")
    p.add_argument("--signal", choices=SIGNALS, default="traces")
    p.add_argument(
        "--concurrency",
        "-c",
        type=_positive(int),
        default=8,
        help="concurrent streams, one request in flight each (default 8)",
    )
    p.add_argument(
        "--channels",
        type=_positive(int),
        default=None,
        help="gRPC channels (connections) the streams share (default min(concurrency, 2))",
    )
    p.add_argument(
        "--rate", type=_positive(float), default=None, help="target spans (log records, points)/s; flat out when absent"
    )
    p.add_argument("--duration", "-d", type=_positive(float), default=None, help="seconds (default 10)")
    p.add_argument("--requests", "-n", type=_positive(int), default=None, help="stop after this many requests")
    p.add_argument(
        "--spans-per-request",
        "--items-per-request",
        dest="items",
        type=_positive(int),
        default=512,
        help="spans (log records, metric points) per request (default 512)",
    )
    p.add_argument("--attributes", type=int, default=10, help="attributes per span (default 10)")
    p.add_argument("--prebuilt", type=_positive(int), default=16, help="distinct requests built up front (16)")
    p.add_argument("--service", default="loadgen", help="service.name of the resource")
    p.add_argument(
        "--unique", action="store_true", help="stamp a fresh trace id (and loadgen.request_id) into every request sent"
    )
    p.add_argument("--ack-log", metavar="FILE", help="write the hex trace id of every acknowledged request")
    p.add_argument("--gzip", action="store_true", help="gzip request bodies")
    sec = p.add_mutually_exclusive_group()
    sec.add_argument("--insecure", action="store_true", help="plaintext (the default)")
    sec.add_argument("--tls", action="store_true", help="TLS with the system roots (or --ca-file)")
    p.add_argument("--ca-file", help="PEM CA bundle to verify the server (implies --tls)")
    p.add_argument("--server-name", help="TLS server name to verify instead of the endpoint's host")
    p.add_argument(
        "--header",
        "-H",
        dest="headers",
        type=_header,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="request header / gRPC metadata, e.g. authorization='Bearer x'",
    )
    p.add_argument("--timeout", type=_positive(float), default=30.0, help="per-request timeout, seconds")
    p.add_argument("--max-retries", type=int, default=20, help="retries of a refused request (20)")
    p.add_argument("--max-retry-delay", type=float, default=2.0, help="cap on a retry delay, seconds (2)")
    p.add_argument("--seed", type=int, default=None, help="seed for the pre-built content")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    return p


def sink_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="signaldb-loadgen sink", description="An OTLP server that acknowledges everything at once (calibration)."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4317, help="gRPC port (0: any free port)")
    p.add_argument("--http-port", type=int, default=None, help="also serve OTLP/HTTP on this port")
    p.add_argument("--quiet", "-q", action="store_true")
    return p


def config_from_args(a: argparse.Namespace) -> LoadConfig:
    default_port = 4318 if a.transport == "http" else 4317
    return LoadConfig(
        endpoint=a.endpoint or f"127.0.0.1:{default_port}",
        signal=a.signal,
        transport=a.transport,
        concurrency=a.concurrency,
        channels=a.channels or 0,
        rate=a.rate,
        duration=a.duration,
        requests=a.requests,
        items_per_request=a.items,
        attributes=a.attributes,
        prebuilt=a.prebuilt,
        service=a.service,
        unique=a.unique,
        ack_log=a.ack_log,
        gzip=a.gzip,
        tls=a.tls or bool(a.ca_file),
        ca_file=a.ca_file,
        server_name=a.server_name,
        headers=a.headers,
        timeout=a.timeout,
        max_retries=a.max_retries,
        max_retry_delay=a.max_retry_delay,
        seed=a.seed,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sink":
        from signaldb.loadgen.sink import serve

        s = sink_parser().parse_args(argv[1:])
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(s.host, s.port, s.http_port, s.quiet))
        return 0
    if argv and argv[0] == "run":
        argv = argv[1:]
    args = run_parser().parse_args(argv)
    for name in ("attributes", "max_retries", "max_retry_delay"):
        if getattr(args, name) < 0:
            run_parser().error(f"--{name.replace('_', '-')} must be >= 0")
    cfg = config_from_args(args)
    t = time.monotonic()
    prebuilt = build_requests(cfg.signal, cfg.prebuilt, cfg.items_per_request, cfg.attributes, cfg.service, cfg.seed)
    if not args.quiet:
        print(
            f"loadgen: built {len(prebuilt)} requests of {cfg.items_per_request} {ITEM_NAMES[cfg.signal]} "
            f"({len(prebuilt[0].body):,} bytes each) in {time.monotonic() - t:.2f} s; sending to {cfg.endpoint}",
            file=sys.stderr,
            flush=True,
        )
    progress = None if args.quiet else Progress(item=ITEM_NAMES[cfg.signal])
    try:
        report = run(cfg, progress, prebuilt=prebuilt, stop_on_sigint=True)  # Ctrl-C: stop, then report
    except KeyboardInterrupt:
        return 130
    print(json.dumps(report.as_dict()) if args.json else report.text(), flush=True)
    return 0 if report.requests_ok > 0 else 1


__all__ += ["Progress"]
