"""No request can take ingest down: hostile and careless OTLP against real
acceptor + writer processes, with Parquet read back.

- a small request that names tens of gigabytes of rows (resource attributes
  repeated on every span) is refused before the ack, and the pipeline goes on;
- one under the limit is acknowledged and stored, in bounded memory;
- such an entry already in a WAL (taken by an older version) is dead-lettered,
  never a crash loop, and the entries behind it are forwarded;
- items outside the time window, or against the OTLP rules, are rejected
  through partial success; the rest of the request is stored exactly once;
- a request naming 20,000 hours touches at most the window's hours.
"""

from __future__ import annotations

import gzip
import json
import math
import time

import grpc
import pyarrow as pa
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Histogram,
    HistogramDataPoint,
    Metric,
    ResourceMetrics,
    ScopeMetrics,
    Summary,
    SummaryDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from conftest import scaled
from helpers.load import ThreadedLoad
from helpers.net import wait_until
from helpers.pipeline import Pipeline, show_logs_if_failed
from helpers.procstat import MIB, memory
from signaldb import _native, otlp
from signaldb.acceptor import entry_format
from signaldb.wal import Wal
from test_acceptor_bad_input import grpc_export, post

HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS
WINDOW_ENV = {"ACCEPTOR_MAX_AGE_SECS": str(7 * 86400), "ACCEPTOR_MAX_FUTURE_SECS": "3600"}


def resource(service: str, attr_bytes: int = 0) -> Resource:
    """``service.name`` plus ``attr_bytes`` of other attributes (1,000-byte values)."""
    attrs = [KeyValue(key="service.name", value=AnyValue(string_value=service))]
    attrs += [KeyValue(key=f"k{i}", value=AnyValue(string_value="x" * 1000)) for i in range(attr_bytes // 1000)]
    return Resource(attributes=attrs)


def spans_request(service: str, times: list[tuple[int, int]], attr_bytes: int = 0, trace: int = 1) -> bytes:
    spans = [
        Span(
            trace_id=trace.to_bytes(16, "big"),
            span_id=(i + 1).to_bytes(8, "big"),
            name=f"{service}-{i}",
            start_time_unix_nano=start,
            end_time_unix_nano=end,
        )
        for i, (start, end) in enumerate(times)
    ]
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource(service, attr_bytes), scope_spans=[ScopeSpans(spans=spans)])]
    ).SerializeToString()


def amplified(spans: int, attr_bytes: int, service: str = "amplified") -> bytes:
    """A request whose rows repeat ``attr_bytes`` of resource attributes ``spans`` times."""
    now = time.time_ns()
    return spans_request(service, [(now, now + 1000)] * spans, attr_bytes)


def peak_rss_mib(proc) -> float:
    """The process's peak resident memory so far."""
    return memory(proc.proc.pid)["VmHWM"] / MIB


@pytest.fixture
def pipeline_factory(tmp_path, request):
    started: list[Pipeline] = []

    def make(env: dict[str, str] | None = None, start: bool = True) -> Pipeline:
        p = Pipeline(tmp_path / f"p{len(started)}", env={**WINDOW_ENV, **(env or {})})
        p.workdir.mkdir()
        started.append(p)
        return p.start() if start else p

    yield make
    for p in started:
        p.kill_all()
        show_logs_if_failed(request, p)


def names(pipeline: Pipeline) -> list[str]:
    return sorted(pipeline.count_by("traces", "name").elements())


def test_amplification_pill_is_refused_before_the_ack_and_ingest_goes_on(pipeline_factory):
    pipeline = pipeline_factory()
    acceptor = pipeline.acceptor
    body = amplified(spans=50_000, attr_bytes=800_000)  # ~40 GB of rows from ~3 MiB
    assert len(body) < 4 << 20
    with pytest.raises(otlp.OtlpTooLargeError):
        otlp.check("traces", body)  # even the 1 GiB ceiling refuses it
    before = acceptor.health()["wal"]["appended_entries"]
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(acceptor, body)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_converted_bytes" in err.value.details() and "repeated on every row" in err.value.details()
    status, _, out = post(acceptor, "/v1/traces", body)
    assert status == 400 and b"max_converted_bytes" in out
    assert acceptor.health()["wal"]["appended_entries"] == before  # nothing written for it
    assert acceptor.metric("signaldb_receiver_requests_total", outcome="invalid") == 2
    assert any(line.get("msg") == "request refused" for line in acceptor.log_lines())
    # Still serving; the next request goes all the way.
    now = time.time_ns()
    assert post(acceptor, "/v1/traces", spans_request("after", [(now, now + 5)]))[0] == 200
    wait_until(pipeline.drained, timeout=30, what="pipeline drained")
    wait_until(lambda: names(pipeline) == ["after-0"], timeout=30, what="the good span in Parquet")
    assert acceptor.proc.poll() is None and pipeline.writer.proc.poll() is None
    assert peak_rss_mib(acceptor) < 600, peak_rss_mib(acceptor)


def test_a_request_under_the_limit_is_acked_stored_once_in_bounded_memory(pipeline_factory):
    limit = 96 << 20
    pipeline = pipeline_factory({"ACCEPTOR_MAX_CONVERTED_BYTES": str(limit), "WRITER_FILE_MAX_AGE_SECS": "0.5"})
    acceptor = pipeline.acceptor
    body = amplified(spans=4000, attr_bytes=20_000, service="heavy")  # ~85 MiB of rows from ~0.2 MiB
    converted = otlp.check("traces", body).converted_bytes
    assert limit * 0.75 < converted < limit, converted
    response, call = grpc_export(acceptor, body)
    assert call.code() == grpc.StatusCode.OK
    assert ExportTraceServiceResponse.FromString(response) == ExportTraceServiceResponse()
    # Twice the spans is twice the rows: over the limit, refused whole.
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(acceptor, amplified(spans=8000, attr_bytes=20_000, service="heavier"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    wait_until(pipeline.drained, timeout=60, what="pipeline drained")
    counts = pipeline.count_by("traces", "service_name")
    assert counts == {"heavy": 4000}
    attrs = pipeline.table("traces").column("resource_attributes")[0].as_py()
    assert len(attrs) == 21
    acceptor_mib, writer_mib = peak_rss_mib(acceptor), peak_rss_mib(pipeline.writer)
    print(f"rows {converted / 2**20:.0f} MiB: acceptor peak {acceptor_mib:.0f} MiB, writer peak {writer_mib:.0f} MiB")
    # Documented bound (docs/operations.md, Sizing): a few times the request's rows each.
    assert acceptor_mib < 200 + 4 * limit / 2**20 and writer_mib < 200 + 6 * limit / 2**20


def test_an_oversized_entry_already_in_the_wal_is_dead_lettered_not_a_crash_loop(pipeline_factory):
    """An entry taken by an older version (no window, no size check) whose rows would take
    ~40 GB: the forwarder must set it aside and forward what is behind it."""
    pipeline = pipeline_factory(start=False)
    wal_dir = pipeline.workdir / "wal"
    now = time.time_ns()
    with Wal(wal_dir) as wal:
        wal.append(b"\x01" + spans_request("before", [(now, now + 5)]), kind="traces")
        wal.append(b"\x01" + amplified(spans=50_000, attr_bytes=800_000), kind="traces")
        wal.append(b"\x01" + spans_request("behind", [(now, now + 5)], trace=2), kind="traces")
    pipeline.start()  # the acceptor's WAL is <workdir>/wal
    wait_until(pipeline.drained, timeout=60, what="pipeline drained")
    wait_until(lambda: names(pipeline) == ["before-0", "behind-0"], timeout=30, what="both good spans in Parquet")
    dead = list((wal_dir / "dead-letter").glob("*.json"))
    assert len(dead) == 1
    info = json.loads(dead[0].read_text())
    assert info["entry_id"] == 2 and "too large" in info["reason"] and info["content_type"] == "application/x-protobuf"
    assert pipeline.acceptor.proc.poll() is None and pipeline.acceptor.starts == 1  # no crash, no restart
    assert pipeline.acceptor.metric("signaldb_forward_dead_letter_entries_total") == 1
    assert peak_rss_mib(pipeline.acceptor) < 600


def test_items_outside_the_time_window_are_rejected_by_partial_success(pipeline_factory):
    pipeline = pipeline_factory()
    acceptor = pipeline.acceptor
    now = time.time_ns()
    times = [
        (now - HOUR_NS, now - HOUR_NS + 5),  # kept
        (now - 8 * DAY_NS, now - 8 * DAY_NS + 5),  # older than 7 days
        (now + 2 * HOUR_NS, now + 2 * HOUR_NS + 5),  # more than 1 h ahead
        (0, 0),  # no time at all
        (now, now - 1),  # ends before it starts
        (now - 6 * DAY_NS, now - 6 * DAY_NS + 5),  # kept
    ]
    response, _ = grpc_export(acceptor, spans_request("window", times))
    partial = ExportTraceServiceResponse.FromString(response).partial_success
    assert partial.rejected_spans == 4
    for reason in ("time_too_old", "time_in_future", "time_missing", "span_end_before_start"):
        assert f"1 rejected: {reason}" in partial.error_message
    body = json.dumps(
        {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": "ab" * 16,
                                    "spanId": f"{i + 1:016x}",
                                    "name": f"json-{i}",
                                    "startTimeUnixNano": str(t),
                                    "endTimeUnixNano": str(t + 5),
                                }
                                for i, t in enumerate([now, now - 30 * DAY_NS])
                            ]
                        }
                    ]
                }
            ]
        }
    ).encode()
    status, _, out = post(acceptor, "/v1/traces", body, "application/json")
    assert status == 200 and json.loads(out)["partialSuccess"]["rejectedSpans"] == "1"
    wait_until(pipeline.drained, timeout=30, what="pipeline drained")
    wait_until(lambda: names(pipeline) == ["json-0", "window-0", "window-5"], timeout=30, what="kept spans")
    assert acceptor.metric("signaldb_receiver_refused_spans_total", reason="time_too_old") == 2
    assert acceptor.metric("signaldb_receiver_refused_spans_total", reason="span_end_before_start") == 1
    assert acceptor.metric("signaldb_receiver_accepted_spans_total") == 3
    assert any(line.get("msg") == "items rejected" for line in acceptor.log_lines())


def test_a_request_naming_20000_hours_touches_only_the_windows_hours(pipeline_factory):
    pipeline = pipeline_factory({"WRITER_FILE_MAX_AGE_SECS": "0.2"})
    now = time.time_ns()
    times = [(now - h * HOUR_NS, now - h * HOUR_NS + 5) for h in range(20_000)]
    body = spans_request("hours", times)
    assert len(body) < 2 << 20
    started = time.monotonic()
    response, _ = grpc_export(pipeline.acceptor, body)
    kept = 7 * 24 + 1  # hours 0..168 back are inside the 7-day window (the 168th only just)
    rejected = ExportTraceServiceResponse.FromString(response).partial_success.rejected_spans
    assert 20_000 - kept - 1 <= rejected <= 20_000 - kept + 1
    wait_until(pipeline.drained, timeout=60, what="pipeline drained")
    drained_in = time.monotonic() - started
    stored = pipeline.table("traces").num_rows
    assert stored == 20_000 - rejected
    files = list((pipeline.storage_dir / "traces").rglob("*.parquet"))
    hours = {f.parent for f in files}
    assert len(hours) <= kept + 2 and len(files) < 2 * (kept + 2)  # at most a couple of files per hour
    print(f"{stored} spans in {len(hours)} hours, {len(files)} files, drained in {drained_in:.1f}s")
    # Another client is not held back for long meanwhile.
    t = time.time_ns()
    assert post(pipeline.acceptor, "/v1/traces", spans_request("other", [(t, t + 5)], trace=3))[0] == 200
    wait_until(lambda: pipeline.count_by("traces", "service_name")["other"] == 1, timeout=20, what="other client")


def histogram_point(t: int, count: int, buckets: list[int], bounds: list[float]) -> HistogramDataPoint:
    return HistogramDataPoint(time_unix_nano=t, count=count, bucket_counts=buckets, explicit_bounds=bounds)


def test_invalid_metric_points_are_rejected_and_valid_ones_kept(pipeline_factory):
    pipeline = pipeline_factory()
    now = time.time_ns()
    histogram = Metric(
        name="h",
        histogram=Histogram(
            aggregation_temporality=2,
            data_points=[
                histogram_point(now, 3, [1, 2], [10.0]),  # valid
                histogram_point(now, 3, [1, 2], []),  # buckets not bounds + 1
                histogram_point(now, 4, [1, 2], [10.0]),  # count is not the buckets' sum
                histogram_point(now, 3, [1, 1, 1], [5.0, 5.0]),  # bounds not strictly increasing
                histogram_point(now, 3, [1, 1, 1], [1.0, math.nan]),  # NaN bound
                histogram_point(now, 7, [], []),  # no buckets at all: valid
            ],
        ),
    )
    summary = Metric(
        name="s",
        summary=Summary(
            data_points=[
                SummaryDataPoint(
                    time_unix_nano=now,
                    count=1,
                    quantile_values=[SummaryDataPoint.ValueAtQuantile(quantile=0.5, value=1.0)],
                ),  # valid
                SummaryDataPoint(
                    time_unix_nano=now,
                    count=1,
                    quantile_values=[SummaryDataPoint.ValueAtQuantile(quantile=1.5, value=1.0)],
                ),
                SummaryDataPoint(
                    time_unix_nano=now,
                    count=1,
                    quantile_values=[SummaryDataPoint.ValueAtQuantile(quantile=math.nan, value=1.0)],
                ),
                SummaryDataPoint(
                    time_unix_nano=now,
                    count=1,
                    quantile_values=[SummaryDataPoint.ValueAtQuantile(quantile=0.9, value=-1.0)],
                ),
            ]
        ),
    )
    buckets = ExponentialHistogramDataPoint.Buckets
    exp = Metric(
        name="e",
        exponential_histogram=ExponentialHistogram(
            aggregation_temporality=2,
            data_points=[
                ExponentialHistogramDataPoint(
                    time_unix_nano=now, scale=3, count=6, zero_count=1, positive=buckets(offset=0, bucket_counts=[2, 3])
                ),  # valid
                ExponentialHistogramDataPoint(time_unix_nano=now, scale=21, count=1, zero_count=1),
                ExponentialHistogramDataPoint(
                    time_unix_nano=now, scale=0, count=9, zero_count=1, negative=buckets(offset=0, bucket_counts=[2])
                ),
            ],
        ),
    )
    request = ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=resource("metrics-svc"), scope_metrics=[ScopeMetrics(metrics=[histogram, summary, exp])]
            )
        ]
    )
    status, _, out = post(pipeline.acceptor, "/v1/metrics", request.SerializeToString())
    assert status == 200
    partial = ExportMetricsServiceResponse.FromString(out).partial_success
    assert partial.rejected_data_points == 4 + 3 + 2
    for reason, n in [
        ("histogram_bucket_counts_not_bounds_plus_one", 1),
        ("histogram_count_not_sum_of_buckets", 1),
        ("histogram_bounds_not_increasing", 2),
        ("summary_quantile_out_of_range", 2),
        ("summary_value_invalid", 1),
        ("exponential_histogram_scale_out_of_range", 1),
        ("exponential_histogram_count_not_sum_of_buckets", 1),
    ]:
        assert f"{n} rejected: {reason}" in partial.error_message, partial.error_message
    wait_until(pipeline.drained, timeout=30, what="pipeline drained")
    wait_until(lambda: pipeline.table("metrics_summary").num_rows == 1, timeout=30, what="summary row")
    assert sorted(pipeline.table("metrics_histogram").column("count").to_pylist()) == [3, 7]
    assert pipeline.table("metrics_exponential_histogram").column("count").to_pylist() == [6]
    assert (
        pipeline.acceptor.metric(
            "signaldb_receiver_refused_metric_points_total", reason="histogram_bounds_not_increasing"
        )
        == 2
    )


def test_a_log_record_without_any_time_is_stamped_when_taken(pipeline_factory):
    pipeline = pipeline_factory()
    before = time.time_ns()
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=resource("logs-svc"),
                scope_logs=[
                    ScopeLogs(
                        log_records=[
                            LogRecord(body=AnyValue(string_value="no clock")),
                            LogRecord(time_unix_nano=before - 30 * DAY_NS, body=AnyValue(string_value="old")),
                        ]
                    )
                ],
            )
        ]
    )
    status, _, _ = post(pipeline.acceptor, "/v1/logs", request.SerializeToString())
    assert status == 200
    wait_until(pipeline.drained, timeout=30, what="pipeline drained")
    wait_until(lambda: pipeline.table("logs").num_rows == 1, timeout=30, what="log row")
    # The Iceberg table (the default) stores microseconds and files the record under its
    # observed time in `time` too (docs/operations.md, Iceberg tables); plain files keep time 0.
    logs = pipeline.table("logs")
    [(body, logged, observed)] = zip(
        *(
            logs.column(c).cast(pa.timestamp("ns", "UTC")).cast(pa.int64()).to_pylist()
            if c != "body"
            else logs.column(c).to_pylist()
            for c in ("body", "time", "observed_time")
        ),
        strict=True,
    )
    assert body == "no clock" and logged in (0, observed)
    assert before // 1000 * 1000 <= observed <= time.time_ns()


def test_a_panic_in_the_core_is_an_exception_not_the_end_of_the_process():
    with pytest.raises(otlp.NativePanicError, match="boom"):
        _native.debug_panic("boom")
    assert otlp.count_items("traces", b"") == (0, {})  # and the core keeps working


def test_window_is_stored_with_the_entry_and_old_entries_still_read():
    window = otlp.TimeWindow(1, 2, 3)
    content_type, body, got = entry_format.decode(entry_format.encode(b"abc", otlp.JSON, window))
    assert (content_type, bytes(body), got) == (otlp.JSON, b"abc", window)
    content_type, body, got = entry_format.decode(b"\x01xyz")
    assert (content_type, bytes(body), got) == (otlp.PROTOBUF, b"xyz", None)
    with pytest.raises(entry_format.EntryFormatError):
        entry_format.decode(b"\x03short")


# -- hostile requests mixed with good traffic -----------------------------------------


class Traffic(ThreadedLoad):
    """Good clients and a hostile one against one pipeline. Every span a client was told
    was accepted (its request acknowledged, minus what partial success rejected) is
    remembered by name, to be found in Parquet exactly once."""

    def __init__(self, pipeline: Pipeline, good_threads: int = 2) -> None:
        super().__init__(good_threads + 1)
        self.acceptor = pipeline.acceptor
        self.good_threads = good_threads
        self.expected: set[str] = set()
        self.hostile_sent = 0

    def run(self, seconds: float) -> None:
        with self:
            self._stop.wait(seconds)

    def _run(self, n: int) -> None:
        if n < self.good_threads:
            self._good(n)
        else:
            self._hostile()

    def _accepted(self, names: list[str]) -> None:
        with self._lock:
            assert not self.expected & set(names)
            self.expected.update(names)

    def _good(self, n: int) -> None:
        i = 0
        while not self.stopping:
            prefix, i = f"g{n}r{i}", i + 1
            now = time.time_ns()
            status, _, _ = post(self.acceptor, "/v1/traces", spans_request(prefix, [(now, now + 5)] * 5, trace=n + 1))
            if status == 200:
                self._accepted([f"{prefix}-{j}" for j in range(5)])
            else:
                time.sleep(0.05)  # pushed back: retry later with a new request

    def _hostile(self) -> None:
        bomb = gzip.compress(b"\0" * (80 << 20))
        pill = amplified(spans=50_000, attr_bytes=800_000)
        i = 0
        while not self.stopping:
            i += 1
            now = time.time_ns()
            case = i % 6
            if case == 0:
                with pytest.raises(grpc.RpcError):
                    grpc_export(self.acceptor, pill)
            elif case == 1:
                assert post(self.acceptor, "/v1/traces", pill)[0] == 400
            elif case == 2:  # a window request: only its in-window spans may land
                prefix = f"w{i}"
                times = [(now, now + 5), (now - 30 * DAY_NS, now), (now + 5 * HOUR_NS, now + 5 * HOUR_NS), (0, 0)]
                response, _ = grpc_export(self.acceptor, spans_request(prefix, times))
                assert ExportTraceServiceResponse.FromString(response).partial_success.rejected_spans == 3
                self._accepted([f"{prefix}-0"])
            elif case == 3:
                assert post(self.acceptor, "/v1/traces", b"\x0a\xff\xff\xff")[0] == 400
            elif case == 4:
                assert post(self.acceptor, "/v1/traces", bomb, headers={"Content-Encoding": "gzip"})[0] == 413
            else:  # many hours: only the window's land
                prefix = f"h{i}"
                # half an hour off the hour, so no span sits on the window's edge
                times = [(now - h * HOUR_NS - HOUR_NS // 2, now - h * HOUR_NS) for h in range(0, 2000, 7)]
                response, _ = grpc_export(self.acceptor, spans_request(prefix, times))
                rejected = ExportTraceServiceResponse.FromString(response).partial_success.rejected_spans
                kept = [f"{prefix}-{j}" for j, (t, _) in enumerate(times) if t >= now - 7 * DAY_NS]
                assert rejected == len(times) - len(kept)
                self._accepted(kept)
            self.hostile_sent += 1


def check_mixed_traffic(pipeline: Pipeline, seconds: float) -> None:
    traffic = Traffic(pipeline)
    traffic.run(seconds)
    assert pipeline.acceptor.proc.poll() is None and pipeline.writer.proc.poll() is None
    wait_until(pipeline.drained, timeout=120, what="pipeline drained")
    want = traffic.expected
    got = pipeline.counts_once_present(want)
    assert not want - set(got), f"{len(want - set(got))} accepted spans missing"
    assert not set(got) - want, f"{len(set(got) - want)} spans stored that were not accepted"
    assert [name for name, n in got.items() if n > 1] == []
    assert traffic.hostile_sent >= 6
    print(f"{len(want)} accepted spans exactly once beside {traffic.hostile_sent} hostile requests in {seconds}s")


def test_hostile_requests_mixed_with_good_traffic_good_traffic_lands_exactly_once(pipeline_factory):
    check_mixed_traffic(pipeline_factory({"WRITER_FILE_MAX_AGE_SECS": "0.3"}), seconds=6)


@pytest.mark.stress
def test_hostile_requests_mixed_with_good_traffic_long(pipeline_factory):
    check_mixed_traffic(pipeline_factory({"WRITER_FILE_MAX_AGE_SECS": "1"}), seconds=scaled(30, 180))
