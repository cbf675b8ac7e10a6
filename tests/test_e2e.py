"""End to end: OpenTelemetry SDK → acceptor → Flight → writer → Parquet, real processes.

Every span, log record and data point sent (gRPC and HTTP/protobuf via the SDK
exporters, OTLP/JSON via raw requests) must arrive in Parquet exactly once with
its attributes, readable by pyarrow and by DuckDB.
"""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from helpers.net import wait_until
from helpers.pipeline import Pipeline, show_logs_if_failed
from test_acceptor_bad_input import post
from test_acceptor_exporters import exporters, make_spans


@pytest.fixture
def pipeline(tmp_path, request):
    p = Pipeline(tmp_path)
    try:
        yield p.start()
    finally:
        p.kill_all()
        show_logs_if_failed(request, p)


def test_sdk_traces_logs_metrics_over_grpc_http_and_json_land_in_parquet_once(pipeline):
    acceptor = pipeline.acceptor
    sent_spans = {}
    for transport in ("grpc", "http"):
        spans = make_spans(f"e2e-{transport}", 15)
        exporter = exporters("traces", transport, acceptor)
        assert exporter.export(spans).name == "SUCCESS"
        exporter.shutdown()
        sent_spans.update({f"{s.context.span_id:016x}": s for s in spans})
        provider = LoggerProvider(resource=Resource.create({"service.name": f"e2e-{transport}"}))
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporters("logs", transport, acceptor)))
        for i in range(7):
            provider.get_logger("e2e").emit(body=f"{transport} log {i}", attributes={"n": i, "t": transport})
        provider.shutdown()
        reader = InMemoryMetricReader()
        meters = MeterProvider(resource=Resource.create({"service.name": f"e2e-{transport}"}), metric_readers=[reader])
        meters.get_meter("e2e").create_counter(f"hits_{transport}").add(3, {"t": transport})
        meters.get_meter("e2e").create_histogram(f"lat_{transport}").record(4.5)
        metrics_exporter = exporters("metrics", transport, acceptor)
        assert metrics_exporter.export(reader.get_metrics_data()).name == "SUCCESS"
        metrics_exporter.shutdown()
        meters.shutdown()
    body = json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "e2e-json"}}]},
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": "ab" * 16,
                                    "spanId": f"{i + 1:016x}",
                                    "name": f"json-{i}",
                                    "kind": 3,
                                    "startTimeUnixNano": str(1_763_000_000_000_000_000 + i),
                                    "endTimeUnixNano": 1_763_000_000_000_500_000,
                                    "attributes": [
                                        {"key": "http.route", "value": {"stringValue": "/x"}},
                                        {"key": "retries", "value": {"intValue": "3"}},
                                    ],
                                }
                                for i in range(5)
                            ]
                        }
                    ],
                }
            ]
        }
    ).encode()
    assert post(acceptor, "/v1/traces", body, "application/json")[0] == 200

    wait_until(pipeline.drained, timeout=60, what="pipeline drained")
    wait_until(lambda: pipeline.table("traces").num_rows == len(sent_spans) + 5, timeout=30, what="trace rows")
    traces = pipeline.table("traces")
    rows = {r["span_id"]: r for r in pipeline.rows("traces")}
    assert len(rows) == traces.num_rows  # exactly once
    for span_id, span in sent_spans.items():
        row = rows[span_id]
        assert row["trace_id"] == f"{span.context.trace_id:032x}" and row["name"] == span.name
        assert row["service_name"] == span.resource.attributes["service.name"]
        for key, value in (span.attributes or {}).items():
            assert dict(row["span_attributes"])[key] == (json.dumps(value) if not isinstance(value, str) else value)
    json_rows = [r for r in rows.values() if r["service_name"] == "e2e-json"]
    assert len(json_rows) == 5 and all(
        dict(r["span_attributes"]) == {"http.route": "/x", "retries": "3"} for r in json_rows
    )

    logs = pipeline.rows("logs")
    assert sorted(r["body"] for r in logs) == sorted(f"{t} log {i}" for t in ("grpc", "http") for i in range(7))
    assert {dict(r["log_attributes"])["t"] for r in logs} == {"grpc", "http"}
    sums = pipeline.rows("metrics_sum")
    assert sorted((r["metric_name"], r["value"]) for r in sums) == [("hits_grpc", 3.0), ("hits_http", 3.0)]
    hists = pipeline.rows("metrics_histogram")
    assert sorted((r["metric_name"], r["count"], r["sum"]) for r in hists) == [
        ("lat_grpc", 1, 4.5),
        ("lat_http", 1, 4.5),
    ]
    # DuckDB reads the same files, hive partitions included.
    ((count, distinct, hours),) = pipeline.duckdb(
        "select count(*), count(distinct span_id), count(distinct hour) "
        "from read_parquet('{root}/traces/**/*.parquet', hive_partitioning=true)"
    )
    assert count == distinct == len(sent_spans) + 5 and hours >= 1
    assert not pipeline.partial_files()


def test_tls_and_bearer_token_from_client_to_parquet(tmp_path, request, tls_pair):
    """TLS and the bearer token on every hop: client → acceptor (HTTPS) and acceptor → writer
    (Flight over grpc+tls, with the token the writer requires)."""
    import ssl
    import urllib.request

    from test_acceptor_bad_input import trace_request

    cert, key = tls_pair
    secure = {"SIGNALDB_TLS_CERT": str(cert), "SIGNALDB_TLS_KEY": str(key), "SIGNALDB_AUTH_TOKEN": "t0ken"}
    p = Pipeline(tmp_path, env=secure)
    p.acceptor.env["ACCEPTOR_WRITER_ENDPOINTS"] = f"grpc+tls://127.0.0.1:{p.flight_port}"
    try:
        p.start()
        url = f"https://127.0.0.1:{p.acceptor.ports['http_port']}/v1/traces"
        req = urllib.request.Request(
            url,
            data=trace_request(3, "secure"),
            headers={"Content-Type": "application/x-protobuf", "Authorization": "Bearer t0ken"},
        )
        with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(cert)), timeout=10) as resp:
            assert resp.status == 200
        wait_until(p.drained, timeout=60, what="pipeline drained")
        wait_until(
            lambda: sorted(r["name"] for r in p.rows("traces")) == ["secure-0", "secure-1", "secure-2"],
            timeout=30,
            what="rows in Parquet",
        )
        assert p.acceptor.metric("signaldb_forward_errors_total") == 0  # TLS and token accepted first time
    finally:
        p.kill_all()
        show_logs_if_failed(request, p)
