"""The acceptor with the real OpenTelemetry Python exporters as clients.

gRPC and HTTP/protobuf exporters send traces, logs and metrics to a real
``signaldb-acceptor`` process; the acceptor forwards over real Flight to a
recording server. Asserts: every export succeeds, every span / log record /
data point arrives as an Arrow row with the right values, entries are marked
processed, and the per-signal counters add up.
"""

from __future__ import annotations

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def make_spans(service: str, count: int):
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test-scope", "1.2.3")
    for i in range(count):
        with tracer.start_as_current_span(f"op-{i}", attributes={"i": i, "flag": True}) as span:
            span.add_event("evt", {"n": i})
            with tracer.start_as_current_span(f"child-{i}"):
                pass
    provider.shutdown()
    return memory.get_finished_spans()


def exporters(kind: str, transport: str, acceptor):
    if transport == "grpc":
        endpoint = f"http://{acceptor.grpc_target}"
        return {"traces": GrpcSpanExporter, "logs": GrpcLogExporter, "metrics": GrpcMetricExporter}[kind](
            endpoint=endpoint, insecure=True
        )
    path = {"traces": "/v1/traces", "logs": "/v1/logs", "metrics": "/v1/metrics"}[kind]
    return {"traces": HttpSpanExporter, "logs": HttpLogExporter, "metrics": HttpMetricExporter}[kind](
        endpoint=acceptor.http_url(path)
    )


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_spans_from_sdk_exporter_arrive_as_rows(transport, recorder, acceptor_factory):
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url})
    spans = make_spans(f"svc-{transport}", 20)
    exporter = exporters("traces", transport, acceptor)
    for i in range(0, len(spans), 10):
        assert exporter.export(spans[i : i + 10]) == SpanExportResult.SUCCESS
    exporter.shutdown()

    recorder.wait_for(lambda: len(recorder.rows("traces")) == len(spans))
    rows = {r["name"]: r for r in recorder.rows("traces")}
    assert set(rows) == {s.name for s in spans}
    for span in spans:
        row = rows[span.name]
        assert row["trace_id"] == f"{span.context.trace_id:032x}"
        assert row["span_id"] == f"{span.context.span_id:016x}"
        assert row["service_name"] == f"svc-{transport}"
        assert row["scope_name"] == "test-scope" and row["scope_version"] == "1.2.3"
        if span.name.startswith("op-"):
            assert dict(row["span_attributes"])["flag"] == "true"
            assert [e["name"] for e in row["events"]] == ["evt"]
        else:
            assert row["parent_span_id"] == f"{span.parent.span_id:016x}"
    # Acked by the writer => processed in the acceptor WAL.
    recorder.wait_for(lambda: acceptor.health()["wal"]["unprocessed_entries"] == 0)
    assert acceptor.metric("signaldb_receiver_accepted_spans_total", transport=transport) == len(spans)
    assert acceptor.metric("signaldb_forward_entries_total") == len(spans) // 10  # one WAL entry per export
    assert acceptor.stop() == 0


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_logs_from_sdk_exporter_arrive_as_rows(transport, recorder, acceptor_factory):
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url})
    provider = LoggerProvider(resource=Resource.create({"service.name": "logsvc"}))
    exporter = exporters("logs", transport, acceptor)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("log-scope")
    bodies = ["plain text", {"structured": 1}, 42, True, ["a", 2]]
    for i, body in enumerate(bodies):
        logger.emit(body=body, severity_number=SeverityNumber.WARN, severity_text="WARN", attributes={"i": i})
    provider.shutdown()

    recorder.wait_for(lambda: len(recorder.rows("logs")) == len(bodies))
    rows = sorted(recorder.rows("logs"), key=lambda r: int(dict(r["log_attributes"])["i"]))
    assert [r["body"] for r in rows] == ["plain text", '{"structured":1}', "42", "true", '["a",2]']
    assert all(r["severity_number"] == SeverityNumber.WARN.value and r["service_name"] == "logsvc" for r in rows)
    assert acceptor.metric("signaldb_receiver_accepted_log_records_total", transport=transport) == len(bodies)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_metrics_from_sdk_exporter_arrive_as_rows(transport, recorder, acceptor_factory):
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url})
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=Resource.create({"service.name": "metricsvc"}), metric_readers=[reader])
    meter = provider.get_meter("meter-scope")
    meter.create_counter("requests").add(5, {"route": "/a"})
    meter.create_up_down_counter("inflight").add(-2)
    meter.create_histogram("latency").record(12.5)
    meter.create_gauge("temperature").set(21.5)
    data = reader.get_metrics_data()
    exporter = exporters("metrics", transport, acceptor)
    assert exporter.export(data).name == "SUCCESS"
    exporter.shutdown()
    provider.shutdown()

    recorder.wait_for(
        lambda: (
            len(recorder.rows("metrics_sum")) == 2
            and len(recorder.rows("metrics_histogram")) == 1
            and len(recorder.rows("metrics_gauge")) == 1
        )
    )
    sums = {r["metric_name"]: r for r in recorder.rows("metrics_sum")}
    assert sums["requests"]["value"] == 5 and sums["requests"]["is_monotonic"] is True
    assert sums["inflight"]["value"] == -2 and sums["inflight"]["is_monotonic"] is False
    hist = recorder.rows("metrics_histogram")[0]
    assert hist["count"] == 1 and hist["sum"] == 12.5 and hist["service_name"] == "metricsvc"
    assert recorder.rows("metrics_gauge")[0]["value"] == 21.5
    assert acceptor.metric("signaldb_receiver_accepted_metric_points_total", transport=transport) == 4
