"""Metrics: every metric type the OpenTelemetry Python SDK produces (sums,
gauges, explicit and exponential histograms, with exemplars), plus
hand-made summaries and a metric without data, compared with the reference."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Exemplar,
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Summary,
    SummaryDataPoint,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics._internal.exemplar import AlwaysOnExemplarFilter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from signaldb import otlp
from test_otlp_reference import check_against_reference, plain_rows


def sdk_request() -> bytes:
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": "meters"}),
        views=[View(instrument_name="latency.exp", aggregation=ExponentialBucketHistogramAggregation())],
        exemplar_filter=AlwaysOnExemplarFilter(),
    )
    meter = provider.get_meter("app.metrics", "2.0")
    tracer = TracerProvider().get_tracer("t")
    counter = meter.create_counter("requests", unit="1", description="served")
    updown = meter.create_up_down_counter("queue.depth")
    hist = meter.create_histogram("latency", unit="ms")
    exp = meter.create_histogram("latency.exp", unit="ms")
    gauge = meter.create_gauge("temperature")

    def observe(_: CallbackOptions) -> list[Observation]:
        return [Observation(0.75, {"cpu": 0}), Observation(0.25, {"cpu": 1})]

    meter.create_observable_gauge("cpu.util", callbacks=[observe])
    with tracer.start_as_current_span("work"):
        for i in range(5):
            counter.add(i + 1, {"route": "/a" if i % 2 else "/b"})
            updown.add(-i)
            hist.record(i * 10.5, {"route": "/a"})
            exp.record(0.001 * (i + 1))
        gauge.set(21.5, {"room": "lab"})
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return encode_metrics(data).SerializeToString()


def test_sdk_metrics_round_trip() -> None:
    result = check_against_reference("metrics", sdk_request())
    t = result.tables
    assert result.rejected == {}
    sums = plain_rows(t["metrics_sum"])
    requests = [r for r in sums if r["metric_name"] == "requests"]
    assert sorted(r["value"] for r in requests) == [6.0, 9.0]
    assert all(r["is_monotonic"] and r["aggregation_temporality"] == 2 for r in requests)
    assert requests[0]["value_int"] in (6, 9) and requests[0]["metric_unit"] == "1"
    assert requests[0]["exemplars"] and len(requests[0]["exemplars"][0]["trace_id"]) == 32
    depth = [r for r in sums if r["metric_name"] == "queue.depth"]
    assert depth[0]["value"] == -10.0 and not depth[0]["is_monotonic"]
    gauges = plain_rows(t["metrics_gauge"])
    assert {r["metric_name"] for r in gauges} == {"cpu.util", "temperature"}
    assert sorted(r["value"] for r in gauges if r["metric_name"] == "cpu.util") == [0.25, 0.75]
    [h] = plain_rows(t["metrics_histogram"])
    assert h["count"] == 5 and h["sum"] == 105.0 and (h["min"], h["max"]) == (0.0, 42.0)
    assert sum(h["bucket_counts"]) == 5 and len(h["bucket_counts"]) == len(h["explicit_bounds"]) + 1
    assert t["metrics_histogram"].schema.field("bucket_counts").type.value_type.id == 8  # uint64
    [e] = plain_rows(t["metrics_exponential_histogram"])
    assert e["count"] == 5 and sum(e["positive_bucket_counts"]) == 5 and sum(e["negative_bucket_counts"]) == 0
    assert e["min"] == 0.001 and e["max"] == 0.005 and e["scale"] > 0
    assert h["service_name"] == "meters" and h["scope_name"] == "app.metrics"


def test_summary_exemplar_values_and_metric_without_data() -> None:
    attrs = [KeyValue(key="q", value=AnyValue(string_value="v"))]
    summary = Metric(
        name="rpc.summary",
        summary=Summary(
            data_points=[
                SummaryDataPoint(
                    attributes=attrs,
                    start_time_unix_nano=1,
                    time_unix_nano=2,
                    count=3,
                    sum=4.5,
                    quantile_values=[
                        SummaryDataPoint.ValueAtQuantile(quantile=0.5, value=1.0),
                        SummaryDataPoint.ValueAtQuantile(quantile=0.99, value=9.0),
                    ],
                    flags=1,
                )
            ]
        ),
    )
    gauge = Metric(
        name="g",
        gauge=Gauge(
            data_points=[
                NumberDataPoint(as_int=-(2**63), exemplars=[Exemplar(as_int=7, span_id=b"\x01" * 8)]),
                NumberDataPoint(as_double=2.5, exemplars=[Exemplar(as_double=0.5)]),
                NumberDataPoint(exemplars=[Exemplar()]),
            ]
        ),
    )
    req = ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                scope_metrics=[ScopeMetrics(metrics=[summary, Metric(name="empty"), gauge, Metric(name="e2")])]
            )
        ]
    )
    body = req.SerializeToString()
    result = check_against_reference("metrics", body)
    assert result.rejected == {"metric_without_data": 2}
    assert result.items == 4
    assert otlp.count_items("metrics", body) == (4, {"metric_without_data": 2})
    [s] = plain_rows(result.tables["metrics_summary"])
    assert s["quantile_values"] == [{"quantile": 0.5, "value": 1.0}, {"quantile": 0.99, "value": 9.0}]
    assert (s["count"], s["sum"], s["flags"]) == (3, 4.5, 1)
    g = plain_rows(result.tables["metrics_gauge"])
    assert [r["value_int"] for r in g] == [-(2**63), None, None]
    assert [r["value"] for r in g] == [float(-(2**63)), 2.5, None]
    assert g[0]["exemplars"][0]["value_int"] == 7 and g[0]["exemplars"][0]["trace_id"] is None
    assert g[2]["exemplars"][0]["value"] is None
