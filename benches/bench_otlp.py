#!/usr/bin/env python3
"""OTLP → Arrow conversion speed: spans/s on one core, Rust next to pure Python.

    .venv/bin/python benches/bench_otlp.py            # the table
    .venv/bin/python benches/bench_otlp.py --seconds 5

The request: 512 spans from the OpenTelemetry Python SDK (its OTLP encoder),
10 attributes per span (7 strings, 2 ints, 1 bool), one resource and scope.
Rows, all in one run, alternating A B B A so a slow spell hits every side:

- rust convert: `signaldb.otlp.convert` → pyarrow RecordBatch (protobuf
  parse, Arrow build, C Data Interface import; single thread);
- rust count_items: the validating walk alone, no Arrow;
- rust convert, JSON: the same request as OTLP/JSON;
- pure Python (upb): `FromString` on the upb runtime, Python loops building
  column lists, pyarrow arrays of the same schema (tests/test_otlp_reference.py,
  which the tests check gives identical batches).

Goals: rust convert >= 1,000,000 spans/s per core, and >= 20x pure Python.
Speed never fails the run (exit 0); MISS marks a goal not met.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

SPANS = 512
ATTRS = 10
GOAL_SPANS_PER_S = 1_000_000
GOAL_RATIO = 20.0


def make_request() -> bytes:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench.lib", "1.0")
    for i in range(SPANS):
        attrs = {
            "http.request.method": "GET",
            "url.path": f"/api/v1/items/{i}",
            "url.scheme": "https",
            "server.address": "shop.example.com",
            "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64)",
            "network.protocol.version": "1.1",
            "http.route": "/api/v1/items/{id}",
            "http.response.status_code": 200,
            "server.port": 443,
            "cache.hit": i % 2 == 0,
        }
        assert len(attrs) == ATTRS
        with tracer.start_as_current_span(f"GET /items/{i % 16}", kind=SpanKind.SERVER, attributes=attrs):
            pass
    provider.shutdown()
    spans = exporter.get_finished_spans()
    assert len(spans) == SPANS
    return encode_spans(spans).SerializeToString()


def measure(fn: Callable[[], object], seconds: float) -> list[float]:
    """Calls per second over ~`seconds`, as per-round rates (rounds of ~50 ms)."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    per_round = max(1, int(0.05 / one))
    rates = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(per_round):
            fn()
        rates.append(per_round / (time.perf_counter() - t0))
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="measured seconds per row and pass (2 passes)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()

    import pyarrow as pa
    from google.protobuf.internal import api_implementation
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from signaldb import otlp
    from test_otlp_reference import assert_batches_equal, reference_tables

    body = make_request()
    doc = MessageToDict(ExportTraceServiceRequest.FromString(body), use_integers_for_enums=True)
    import base64

    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in s:
                        s[k] = base64.b64decode(s[k]).hex()
    json_body = json.dumps(doc).encode()

    rust = otlp.convert("traces", body)
    schemas = {"traces": rust.tables["traces"].schema}
    py_tables, _ = reference_tables("traces", body, schemas)
    assert_batches_equal(rust.tables["traces"], py_tables["traces"])  # same output, or the race is void
    assert_batches_equal(otlp.convert("traces", json_body, "application/json").tables["traces"], py_tables["traces"])

    rows: dict[str, Callable[[], object]] = {
        "rust convert (protobuf -> pyarrow)": lambda: otlp.convert("traces", body),
        "rust count_items (validate only)": lambda: otlp.count_items("traces", body),
        "rust convert, OTLP/JSON": lambda: otlp.convert("traces", json_body, "application/json"),
        "pure Python on upb (-> pyarrow)": lambda: reference_tables("traces", body, schemas),
    }
    rates: dict[str, list[float]] = {k: [] for k in rows}
    for key in list(rows) + list(reversed(rows)):  # A B C D D C B A
        rates[key] += measure(rows[key], args.seconds)

    spans_per_s = {k: statistics.median(v) * SPANS for k, v in rates.items()}
    rust_rate = spans_per_s["rust convert (protobuf -> pyarrow)"]
    py_rate = spans_per_s["pure Python on upb (-> pyarrow)"]
    ratio = rust_rate / py_rate

    print(
        f"OTLP -> Arrow, {SPANS} spans x {ATTRS} attributes per request ({len(body)} B protobuf, "
        f"{len(json_body)} B JSON); protobuf runtime: {api_implementation.Type()}; pyarrow {pa.__version__}"
    )
    print(f"{'':40} {'spans/s':>12} {'requests/s':>11} {'us/request':>11}")
    for k, v in spans_per_s.items():
        print(f"{k:40} {v:12,.0f} {v / SPANS:11,.0f} {1e6 * SPANS / v:11.1f}")
    ok1 = "ok" if rust_rate >= GOAL_SPANS_PER_S else "MISS"
    ok2 = "ok" if ratio >= GOAL_RATIO else "MISS"
    print(f"goal: rust convert >= {GOAL_SPANS_PER_S:,} spans/s per core: {rust_rate:,.0f}  {ok1}")
    print(f"goal: rust convert >= {GOAL_RATIO:.0f}x pure Python: {ratio:.1f}x  {ok2}")
    if args.json:
        Path(args.json).write_text(json.dumps({"spans_per_s": spans_per_s, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
