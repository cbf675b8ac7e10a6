"""Every bad input gets its clear 4xx / gRPC status, nothing is written for it,
and the acceptor keeps serving: raw HTTP and gRPC requests against a real process."""

from __future__ import annotations

import gzip
import json
import urllib.request
import zlib

import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, ResourceMetrics, ScopeMetrics
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

LIMIT = 256 * 1024  # a small body limit keeps the oversize cases cheap


def trace_request(n: int = 3, name: str = "op") -> bytes:
    spans = [
        Span(
            trace_id=bytes([1] * 16),
            span_id=bytes([2] * 7 + [i + 1]),
            name=f"{name}-{i}",
            start_time_unix_nano=1_700_000_000_000_000_000,
            end_time_unix_nano=1_700_000_000_000_001_000,
        )
        for i in range(n)
    ]
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    ).SerializeToString()


def trace_json(n: int = 2) -> bytes:
    spans = [
        {
            "traceId": "01" * 16,
            "spanId": f"{i + 1:016x}",
            "name": f"json-{i}",
            "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": 1700000000000001000,
            "kind": 2,
            "someUnknownField": {"x": 1},
        }
        for i in range(n)
    ]
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}]},
                    "scopeSpans": [{"spans": spans}],
                }
            ]
        }
    ).encode()


def post(
    acceptor,
    path: str,
    body: bytes,
    content_type: str = "application/x-protobuf",
    method: str = "POST",
    headers: dict | None = None,
) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(
        acceptor.http_url(path),
        data=body if method != "GET" else None,
        method=method,
        headers={"Content-Type": content_type, **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture
def acceptor(recorder, acceptor_factory):
    return acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url, "ACCEPTOR_MAX_REQUEST_BYTES": str(LIMIT)})


def appended(acceptor) -> int:
    return acceptor.health()["wal"]["appended_entries"]


def assert_still_serving(acceptor) -> None:
    status, _, _ = post(acceptor, "/v1/traces", trace_request(1, "alive"))
    assert status == 200


def test_good_requests_in_every_encoding(acceptor, recorder):
    body = trace_request(3)
    cases = [
        (body, {}, "application/x-protobuf"),
        (gzip.compress(body), {"Content-Encoding": "gzip"}, "application/x-protobuf"),
        (zlib.compress(body), {"Content-Encoding": "deflate"}, "application/x-protobuf"),
        (trace_json(), {}, "application/json"),
        (gzip.compress(trace_json()), {"Content-Encoding": "gzip"}, "application/json; charset=utf-8"),
    ]
    for data, headers, content_type in cases:
        status, resp_headers, out = post(acceptor, "/v1/traces", data, content_type, headers=headers)
        assert status == 200, out
        # The answer has the request's encoding.
        if content_type.startswith("application/json"):
            assert resp_headers["Content-Type"].startswith("application/json")
            assert json.loads(out) == {}
        else:
            assert resp_headers["Content-Type"].startswith("application/x-protobuf")
            assert ExportTraceServiceResponse.FromString(out) == ExportTraceServiceResponse()
    assert appended(acceptor) == len(cases)
    recorder.wait_for(lambda: len(recorder.rows("traces")) == 3 * 3 + 2 * 2)
    json_rows = [r for r in recorder.rows("traces") if r["name"].startswith("json-")]
    assert {r["service_name"] for r in json_rows} == {"json-svc"}
    assert {r["kind"] for r in json_rows} == {2}


BOMB = gzip.compress(b"\0" * (64 * LIMIT))  # 16 MiB of zeroes in ~16 KiB


@pytest.mark.parametrize(
    "name,path,body,content_type,headers,method,want",
    [
        ("malformed protobuf", "/v1/traces", b"\x0a\xff\xff\xff", "application/x-protobuf", {}, "POST", 400),
        ("truncated protobuf", "/v1/traces", trace_request(3)[:-5], "application/x-protobuf", {}, "POST", 400),
        (
            "bad span id",
            "/v1/traces",
            ExportTraceServiceRequest(
                resource_spans=[
                    ResourceSpans(scope_spans=[ScopeSpans(spans=[Span(trace_id=b"\1" * 16, span_id=b"\2" * 3)])])
                ]
            ).SerializeToString(),
            "application/x-protobuf",
            {},
            "POST",
            400,
        ),
        ("invalid json", "/v1/traces", b'{"resourceSpans": [', "application/json", {}, "POST", 400),
        (
            "json base64 ids",
            "/v1/traces",
            b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"AQEBAQEBAQEBAQEBAQEBAQ==",'
            b'"spanId":"AgICAgICAgI="}]}]}]}',
            "application/json",
            {},
            "POST",
            400,
        ),
        (
            "malformed gzip",
            "/v1/traces",
            b"\x1f\x8b\x08\x00garbage",
            "application/x-protobuf",
            {"Content-Encoding": "gzip"},
            "POST",
            400,
        ),
        (
            "truncated gzip",
            "/v1/traces",
            gzip.compress(trace_request(50))[:-20],
            "application/x-protobuf",
            {"Content-Encoding": "gzip"},
            "POST",
            400,
        ),
        ("gzip bomb", "/v1/traces", BOMB, "application/x-protobuf", {"Content-Encoding": "gzip"}, "POST", 413),
        ("oversize body", "/v1/logs", b"\0" * (LIMIT + 1), "application/x-protobuf", {}, "POST", 413),
        ("wrong method", "/v1/traces", b"", "application/x-protobuf", {}, "GET", 405),
        ("wrong method put", "/v1/metrics", trace_request(1), "application/x-protobuf", {}, "PUT", 405),
        ("wrong content type", "/v1/traces", trace_request(1), "text/plain", {}, "POST", 415),
        (
            "unknown encoding",
            "/v1/traces",
            trace_request(1),
            "application/x-protobuf",
            {"Content-Encoding": "br"},
            "POST",
            415,
        ),
    ],
)
def test_bad_http_input_is_refused_and_nothing_written(acceptor, name, path, body, content_type, headers, method, want):
    before = appended(acceptor)
    status, resp_headers, out = post(acceptor, path, body, content_type, method=method, headers=headers)
    assert status == want, (name, out)
    if content_type == "application/json":
        err = json.loads(out)
        assert err["message"] and isinstance(err["code"], int)
    elif content_type == "application/x-protobuf":
        st = status_pb2.Status.FromString(out)
        assert st.message, name
    if want == 405:
        assert resp_headers["Allow"] == "POST"
    assert appended(acceptor) == before, f"{name}: something was written for a refused request"
    assert_still_serving(acceptor)


def test_error_messages_name_the_problem(acceptor):
    _, _, out = post(
        acceptor,
        "/v1/traces",
        ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(scope_spans=[ScopeSpans(spans=[Span(trace_id=b"\1" * 16, span_id=b"\2" * 3)])])
            ]
        ).SerializeToString(),
    )
    assert "span_id" in status_pb2.Status.FromString(out).message
    _, _, out = post(acceptor, "/v1/traces", BOMB, headers={"Content-Encoding": "gzip"})
    assert "limit" in status_pb2.Status.FromString(out).message


def test_partial_success_for_metric_without_data(acceptor, recorder):
    request = ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[Metric(name="no-data")])])]
    ).SerializeToString()
    status, _, out = post(acceptor, "/v1/metrics", request)
    assert status == 200
    response = ExportMetricsServiceResponse.FromString(out)
    assert response.partial_success.rejected_data_points == 1
    assert "metric_without_data" in response.partial_success.error_message
    status, _, out = post(
        acceptor,
        "/v1/metrics",
        json.dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "no-data"}]}]}]}).encode(),
        "application/json",
    )
    assert status == 200 and json.loads(out)["partialSuccess"]["rejectedDataPoints"] == "1"


def grpc_export(acceptor, body: bytes, service: str = "trace.v1.TraceService", compression=None):
    channel = grpc.insecure_channel(acceptor.grpc_target, options=[("grpc.max_send_message_length", 64 << 20)])
    call = channel.unary_unary(
        f"/opentelemetry.proto.collector.{service}/Export", request_serializer=None, response_deserializer=None
    )
    try:
        return call.with_call(body, timeout=30, compression=compression)
    finally:
        channel.close()


def test_grpc_bad_input(acceptor):
    before = appended(acceptor)
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(acceptor, b"\x0a\xff\xff\xff")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(acceptor, trace_request(3)[:-5])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "truncated" in err.value.details() or "invalid" in err.value.details()
    for compression in (None, grpc.Compression.Gzip):
        with pytest.raises(grpc.RpcError) as err:
            grpc_export(acceptor, b"\0" * (LIMIT + 10), compression=compression)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        keys = {k for k, _ in err.value.trailing_metadata() or ()}
        assert "google.rpc.retryinfo-bin" not in keys and "grpc-status-details-bin" not in keys
    assert appended(acceptor) == before
    # Still serving, gzip included.
    response, call = grpc_export(acceptor, trace_request(2), compression=grpc.Compression.Gzip)
    assert call.code() == grpc.StatusCode.OK and response == b""
